"""The etcd v3 client: connection, authentication, failover across endpoints, TLS, and
the translation of every client error into the project's errors.

With ``overlay.subnet.registry`` and ``overlay.cluster.store`` (storage on top of it),
the only user of ``overlay.subnet.etcdhttp``, the stdlib speaker of etcd's v3 JSON
gateway.  ``EtcdClient.call`` runs a request on the endpoint in use through an
``EtcdAPI``; an endpoint that does not answer is left for the next one at once (no
blacklist: the next failure moves on again, round the list).  Failures are
``EtcdUnavailable`` (nothing answered; the message names the endpoints) or
``RegistryError`` (refused: auth, TLS, bad request).  Safe to share between threads.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from overlay.errors import ConfigError, EtcdUnavailable, RegistryError
from overlay.subnet import etcdhttp as gw
from overlay.subnet.etcdconf import EtcdOptions
from overlay.subnet.etcdhttp import Endpoint, GatewayError, KeyValue, TooLarge, Unreachable

T = TypeVar("T")

# Codes meaning "this endpoint did not answer": try the next one.
_UNAVAILABLE_CODES = (gw.UNAVAILABLE, gw.DEADLINE_EXCEEDED)
_AUTH_CODES = (gw.UNAUTHENTICATED, gw.PERMISSION_DENIED)
PAGE_KEYS = 1000  # keys per page of a listing (etcd reads them at one revision)
# A listing is read in pieces at once (``range_all``'s ``splits``) of at least this many
# keys, at most this many pieces.
PIECE_KEYS, MOST_PIECES = 1000, 4


def split_keys(kvs: Sequence[KeyValue]) -> tuple[bytes, ...]:
    """Keys cutting a listing like ``kvs`` into pieces of about equal size, for the next
    ``range_all`` of the same prefix (none for a small one)."""
    pieces = min(MOST_PIECES, len(kvs) // PIECE_KEYS)
    return tuple(kvs[len(kvs) * i // pieces].key for i in range(1, pieces))


def op_put(key: bytes | str, value: bytes | str, lease: int = 0) -> dict[str, Any]:
    return {"request_put": {"key": gw.b64(key), "value": gw.b64(value), "lease": str(lease)}}


def op_range(key: bytes | str) -> dict[str, Any]:
    return {"request_range": {"key": gw.b64(key)}}


def op_delete(key: bytes | str, prev_kv: bool = False) -> dict[str, Any]:
    return {"request_delete_range": {"key": gw.b64(key), "prev_kv": prev_kv}}


class TxnResult:
    """A txn's answer: ``succeeded``, the store ``revision``, and per request op the kvs
    it read (a range) or deleted (a delete with ``prev_kv``)."""

    __slots__ = ("succeeded", "revision", "kvs")

    def __init__(self, d: dict[str, Any]):
        self.succeeded = bool(d.get("succeeded", False))
        self.revision = gw.revision_of(d)
        self.kvs: list[list[KeyValue]] = []
        for r in d.get("responses", []):
            body = r.get("response_range") or r.get("response_delete_range") or {}
            self.kvs.append(gw.parse_kvs({"kvs": body.get("kvs", body.get("prev_kvs", []))}))


class EtcdAPI:
    """etcd's calls on one endpoint (what ``EtcdClient.call`` hands its function)."""

    def __init__(self, endpoint: Endpoint):
        self.endpoint = endpoint

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.endpoint.post(path, body)

    # -- keys ------------------------------------------------------------------------
    def range(self, key: bytes | str, range_end: bytes | None = None, revision: int = 0,
              limit: int = 0, **flags: Any) -> tuple[list[KeyValue], int, bool]:
        """(kvs, store revision, more) of ``[key, range_end)`` (one key without it)."""
        k = key.encode() if isinstance(key, str) else key
        body: dict[str, Any] = {"key": gw.b64(k), **flags}
        if range_end is not None:
            body["range_end"] = gw.b64(range_end)
        if revision:
            body["revision"] = str(revision)
        if limit:
            body["limit"] = str(limit)
        d = self.post("/v3/kv/range", body)
        try:
            return gw.parse_kvs(d), gw.revision_of(d), bool(d.get("more", False))
        except ValueError as e:
            raise gw.decode_error(e) from e

    def get_response(self, key: bytes | str) -> tuple[list[KeyValue], int]:
        kvs, rev, _ = self.range(key)
        return kvs, rev

    def get(self, key: bytes | str) -> tuple[bytes | None, KeyValue | None]:
        kvs, _ = self.get_response(key)
        return (kvs[0].value, kvs[0]) if kvs else (None, None)

    def range_all(self, prefix: bytes | str, page: int = PAGE_KEYS,
                  splits: Sequence[bytes] = ()) -> tuple[list[KeyValue], int]:
        """Every key under ``prefix`` at one revision, read ``page`` keys at a time so no
        answer holds the whole prefix; a page too large to read (hostile values) is read
        again in smaller pages, down to one key.

        ``splits`` (keys under ``prefix``, e.g. from the last listing) cut the range into
        pieces read at once on connections of their own, all at the revision a count-only
        request read first: etcd encodes an answer in JSON at ~10 us per key, and pieces
        let it do that on several cores while we wait (any keys partition the range
        correctly; good ones only balance it)."""
        start = prefix.encode() if isinstance(prefix, str) else prefix
        end = gw.prefix_range_end(start)
        bounds = [start, *sorted({k for k in splits if start < k < end}), end]
        if len(bounds) == 2:
            return self._pages(start, end, 0, page)
        _, revision, _ = self.range(start, end, count_only=True)
        pieces = list(zip(bounds[:-1], bounds[1:], strict=True))
        got: list[list[KeyValue] | BaseException] = [[] for _ in pieces]

        def read(i: int) -> None:
            try:
                got[i] = self._pages(*pieces[i], revision, page)[0]
            except BaseException as e:  # noqa: BLE001 - raised again in the caller's thread
                got[i] = e
        threads = [threading.Thread(target=read, args=(i,), name="etcd-range", daemon=True)
                   for i in range(1, len(pieces))]
        for t in threads:
            t.start()
        read(0)
        for t in threads:
            t.join()
        out: list[KeyValue] = []
        for piece in got:
            if isinstance(piece, BaseException):
                raise piece
            out.extend(piece)
        return out, revision

    def _pages(self, start: bytes, end: bytes, revision: int, page: int
               ) -> tuple[list[KeyValue], int]:
        """``[start, end)`` in pages at ``revision`` (0: the first page's)."""
        out: list[KeyValue] = []
        while True:
            try:
                kvs, rev, more = self.range(start, end, revision, page)
            except TooLarge:
                if page == 1:
                    raise
                page = max(1, page // 16)
                continue
            revision = revision or rev
            out.extend(kvs)
            if not more or not kvs:
                return out, revision
            start = kvs[-1].key + b"\0"

    def get_prefix(self, prefix: bytes | str) -> list[tuple[bytes, KeyValue]]:
        return [(kv.value, kv) for kv in self.range_all(prefix)[0]]

    def put(self, key: bytes | str, value: bytes | str, lease: int = 0) -> int:
        body = {"key": gw.b64(key), "value": gw.b64(value), "lease": str(lease)}
        return gw.revision_of(self.post("/v3/kv/put", body))

    def delete(self, key: bytes | str) -> bool:
        d = self.post("/v3/kv/deleterange", {"key": gw.b64(key)})
        return gw.num(d, "deleted") > 0

    def delete_prefix(self, prefix: bytes | str) -> int:
        k = prefix.encode() if isinstance(prefix, str) else prefix
        d = self.post("/v3/kv/deleterange", {"key": gw.b64(k),
                                             "range_end": gw.b64(gw.prefix_range_end(k))})
        return gw.num(d, "deleted")

    def txn(self, compare: list[dict[str, Any]], success: list[dict[str, Any]],
            failure: list[dict[str, Any]] | None = None) -> TxnResult:
        d = self.post("/v3/kv/txn", {"compare": compare, "success": success,
                                     "failure": failure or []})
        try:
            return TxnResult(d)
        except (ValueError, AttributeError) as e:
            raise gw.decode_error(e) from e

    def compact(self, revision: int) -> None:
        self.post("/v3/kv/compaction", {"revision": str(revision), "physical": True})

    # -- leases ----------------------------------------------------------------------
    def grant(self, ttl: int, lease_id: int = 0) -> int:
        d = self.post("/v3/lease/grant", {"TTL": str(ttl), "ID": str(lease_id)})
        return gw.num(d, "ID")

    def revoke_lease(self, lease_id: int) -> None:
        self.post("/v3/lease/revoke", {"ID": str(lease_id)})

    def keepalive(self, lease_id: int) -> int:
        """Refresh ``lease_id``; its new TTL, 0 if it is gone."""
        d = self.post("/v3/lease/keepalive", {"ID": str(lease_id)})
        result = d.get("result", {})
        return gw.num(result, "TTL") if isinstance(result, dict) else 0

    def time_to_live(self, lease_id: int) -> tuple[int, int]:
        """(remaining, granted) seconds; remaining -1 if the lease is gone."""
        d = self.post("/v3/lease/timetolive", {"ID": str(lease_id)})
        return gw.num(d, "TTL"), gw.num(d, "grantedTTL")

    def status(self) -> dict[str, Any]:
        return self.post("/v3/maintenance/status", {})


class EtcdClient:
    """One lazily authenticated client for ``opts``' endpoints, with failover."""

    def __init__(self, opts: EtcdOptions):
        self.opts = opts
        self._lock = threading.Lock()
        self._endpoints: list[Endpoint] | None = None
        self._active = 0
        self._closed = False

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not self.opts.secure:
            return None
        for path in (self.opts.cafile, self.opts.certfile, self.opts.keyfile):
            read_file(path)  # a missing file is a ConfigError naming it
        try:
            ctx = ssl.create_default_context(cafile=self.opts.cafile or None)
            if self.opts.certfile:
                ctx.load_cert_chain(self.opts.certfile, self.opts.keyfile or None)
        except (ssl.SSLError, OSError) as e:
            raise ConfigError(f"etcd TLS files (--etcd-cafile/--etcd-certfile/"
                              f"--etcd-keyfile) cannot be used: {e}") from e
        return ctx

    def endpoints(self) -> list[Endpoint]:
        with self._lock:
            if self._closed:
                raise RegistryError("registry is closed")
            if self._endpoints is None:
                ctx = self._ssl_context()
                self._endpoints = [Endpoint(e.host, e.port, ctx, self.opts.timeout)
                                   for e in self.opts.endpoints]
            return self._endpoints

    def active(self) -> Endpoint:
        eps = self.endpoints()
        return eps[self._active % len(eps)]

    def fail_over(self, failed: Endpoint) -> None:
        """Leave ``failed`` for the next endpoint (if it is still the one in use)."""
        with self._lock:
            eps = self._endpoints or []
            if eps and eps[self._active % len(eps)] is failed:
                self._active = (self._active + 1) % len(eps)
        failed.close()

    def api(self) -> EtcdAPI:
        """The endpoint in use, authenticated (for requests ``call`` does not cover:
        a watch, tests)."""
        ep = self.active()
        if self.opts.username and ep.token is None:
            self._authenticate(ep)
        return EtcdAPI(ep)

    def _authenticate(self, ep: Endpoint) -> None:
        ep.token = None
        d = ep.post("/v3/auth/authenticate", {"name": self.opts.username,
                                              "password": self.opts.password or ""})
        token = d.get("token")
        if not isinstance(token, str) or not token or len(token) > 4096:
            raise GatewayError(gw.UNAUTHENTICATED, "etcd returned no usable auth token")
        ep.token = token

    def forget_token(self, ep: Endpoint) -> None:
        ep.token = None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            eps, self._endpoints = self._endpoints or [], None
        for ep in eps:
            ep.close()

    # -- error translation ----------------------------------------------------------

    def translate(self, exc: BaseException | None, what: str) -> RegistryError:
        where = self.opts.describe()
        if isinstance(exc, RegistryError):
            return exc
        if isinstance(exc, Unreachable) or (isinstance(exc, GatewayError)
                                            and exc.code in _UNAVAILABLE_CODES):
            detail = str(exc)
            low = detail.lower()
            if self.opts.secure and any(w in low for w in ("tls", "ssl", "handshake",
                                                           "certificate", "reset")):
                hint = (" (TLS handshake failed: the server may require a client certificate "
                        "(--etcd-certfile/--etcd-keyfile) or --etcd-cafile does not match it)")
            elif self.opts.secure:
                hint = " (is it up? also check --etcd-cafile/--etcd-certfile/--etcd-keyfile)"
            else:
                hint = " (is etcd running? if it serves TLS use https:// and --etcd-cafile)"
            return EtcdUnavailable(f"etcd unreachable at {where} while {what}: "
                                   f"{detail or 'no endpoint answered'}{hint}")
        if isinstance(exc, GatewayError):
            detail = exc.message
            if exc.code in _AUTH_CODES or (exc.code == gw.INVALID_ARGUMENT and (
                    "authentication failed" in detail or "user name is empty" in detail)):
                return RegistryError(f"etcd at {where} refused {what}: {detail} "
                                     "(check --etcd-username/--etcd-password and the user's "
                                     "role)")
            return RegistryError(f"etcd at {where} failed {what}: {exc.code_name}: {detail}")
        return RegistryError(f"etcd at {where} failed {what}: {exc!r}")

    def call(self, what: str, fn: Callable[[EtcdAPI], T]) -> T:
        """Run ``fn(api)``; on an unavailable endpoint fail over to the next one; after
        a refused token (etcd restarted and forgot it) authenticate once more.

        Only use for requests that are safe to repeat (reads, compare-and-swap txns).
        """
        attempts = max(2, len(self.opts.endpoints) + 1)
        last: BaseException | None = None
        reauthed = False
        for _ in range(attempts):
            ep = self.active()
            try:
                if self.opts.username and ep.token is None:
                    self._authenticate(ep)
                return fn(EtcdAPI(ep))
            except Unreachable as e:
                last = e
                self.fail_over(ep)
            except GatewayError as e:
                last = e
                if e.code in _UNAVAILABLE_CODES:
                    self.fail_over(ep)
                elif (e.code == gw.UNAUTHENTICATED and self.opts.username and ep.token
                      and not reauthed):
                    reauthed = True
                    self.forget_token(ep)
                else:
                    break
        raise self.translate(last, what) from last


def read_file(path: str | None) -> bytes | None:
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"cannot read etcd TLS file {path}: {e.strerror}") from e
