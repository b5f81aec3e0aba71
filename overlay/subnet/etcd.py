"""The etcd v3 client: connection, authentication, failover across endpoints, TLS, and
the translation of every grpc / client error into the project's errors.

With ``overlay.subnet.registry`` (storage on top of it), the only module that imports
the etcd client: ``pyetcd`` from PyPI ``etcd-sdk-python``, the maintained fork of
python-etcd3 with current generated protobuf code (``etcd3`` 0.12 no longer imports).
Failures are ``EtcdUnavailable`` (nothing answered; the message names the endpoints)
or ``RegistryError`` (refused: auth, TLS, bad request).  Safe to share between threads.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from typing import TypeVar

# grpc's C core logs TLS failures on stderr itself; we report them as one clear error.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import grpc
from pyetcd import (
    etcdrpc,
    exceptions as etcd_exc,
)
from pyetcd.client import (
    Endpoint as ClientEndpoint,
    MultiEndpointEtcd3Client,
)

from overlay.errors import ConfigError, EtcdUnavailable, RegistryError
from overlay.subnet.etcdconf import EtcdOptions

# gRPC's default reconnect backoff grows to 120 s, so after a 30 s etcd outage a node
# would notice etcd's return only ~15 s late; cap it at 1 s (measured: first call after
# etcd returns 15.1 s -> 1.0 s).
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
]

T = TypeVar("T")

# Codes meaning "this endpoint did not answer": try the next one.
_UNAVAILABLE_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
_AUTH_CODES = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


class EtcdClient:
    """One lazily connected, re-authenticating client for ``opts``' endpoints."""

    def __init__(self, opts: EtcdOptions):
        self.opts = opts
        self._lock = threading.Lock()
        self._client: MultiEndpointEtcd3Client | None = None
        self._closed = False

    def _credentials(self) -> grpc.ChannelCredentials | None:
        if not self.opts.secure:
            return None
        ca, key, cert = (read_file(p) for p in (self.opts.cafile, self.opts.keyfile,
                                                 self.opts.certfile))
        return grpc.ssl_channel_credentials(ca, key, cert)

    def _make_client(self) -> MultiEndpointEtcd3Client:
        creds = self._credentials()
        endpoints = [ClientEndpoint(e.host, e.port, secure=creds is not None, creds=creds,
                                    time_retry=1, opts=_CHANNEL_OPTIONS)
                     for e in self.opts.endpoints]
        client = MultiEndpointEtcd3Client(endpoints, timeout=self.opts.timeout, failover=True)
        if self.opts.username:
            try:
                self._authenticate(client)
            except BaseException:
                client.close()
                raise
        return client

    def _authenticate(self, client: MultiEndpointEtcd3Client) -> None:
        """Get an auth token from the first endpoint that answers.

        Done here rather than by the client's constructor, which asks one random endpoint
        and so fails whenever that one member is down.  The token travels as plain
        metadata (grpc refuses call credentials on plaintext channels; etcd needs only
        the metadata).
        """
        request = etcdrpc.AuthenticateRequest(name=self.opts.username,
                                              password=self.opts.password)
        last: grpc.RpcError | None = None
        for ep in client.endpoints.values():
            try:
                resp = etcdrpc.AuthStub(ep.channel).Authenticate(request, self.opts.timeout)
            except grpc.RpcError as e:
                last = e
                if e.code() in _UNAVAILABLE_CODES:
                    continue
                break
            client.metadata = (("token", resp.token),)
            client.call_credentials = None
            return
        raise self.translate(last, "authenticating") from last

    def client(self) -> MultiEndpointEtcd3Client:
        with self._lock:
            if self._closed:
                raise RegistryError("registry is closed")
            if self._client is None:
                self._client = self._make_client()
            return self._client

    def reset_client(self, old: MultiEndpointEtcd3Client) -> None:
        """Drop a client whose auth token expired; the next call authenticates again."""
        with self._lock:
            dropped = self._client is old  # a bool: `is` would narrow `old` to the field's type
            if dropped:
                self._client = None
                # closing a broken channel must not mask the real error
                with contextlib.suppress(Exception):
                    old.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            client, self._client = self._client, None
        if client is not None:
            client.close()

    # -- error translation ----------------------------------------------------------

    def translate(self, exc: BaseException | None, what: str) -> RegistryError:
        where = self.opts.describe()
        rpc = exc if isinstance(exc, grpc.RpcError) else getattr(exc, "__context__", None)
        detail = ""
        code = None
        if isinstance(rpc, grpc.RpcError) and hasattr(rpc, "code"):
            code = rpc.code()
            detail = (rpc.details() or "").strip()
        if code in _AUTH_CODES or (code is grpc.StatusCode.INVALID_ARGUMENT
                                   and ("authentication failed" in detail
                                        or "user name is empty" in detail)):
            return RegistryError(f"etcd at {where} refused {what}: {detail or code.name} "
                                 "(check --etcd-username/--etcd-password and the user's role)")
        if isinstance(exc, (etcd_exc.ConnectionFailedError, etcd_exc.ConnectionTimeoutError,
                            etcd_exc.NoServerAvailableError)) or code in _UNAVAILABLE_CODES:
            low = detail.lower()
            if self.opts.secure and any(w in low for w in ("ssl", "handshake", "certificate",
                                                            "tsi_", "unwrap")):
                hint = (" (TLS handshake failed: the server may require a client certificate "
                        "(--etcd-certfile/--etcd-keyfile) or --etcd-cafile does not match it)")
            elif self.opts.secure:
                hint = (" (is it up? also check --etcd-cafile/--etcd-certfile/--etcd-keyfile)")
            else:
                hint = " (is etcd running? if it serves TLS use https:// and --etcd-cafile)"
            return EtcdUnavailable(f"etcd unreachable at {where} while {what}: "
                                   f"{detail or 'no endpoint answered'}{hint}")
        if code is not None:
            return RegistryError(f"etcd at {where} failed {what}: {code.name}: {detail}")
        return RegistryError(f"etcd at {where} failed {what}: {exc!r}")

    def recover(self, client: MultiEndpointEtcd3Client, e: grpc.RpcError) -> str:
        """What a failed request on ``client`` calls for, done already: "reauth" (the
        token was refused, e.g. etcd restarted and forgot it: the client is dropped and
        the next request authenticates again), "failover" (the endpoint did not answer:
        marked failed, the next request goes to another one) or "" (nothing helps)."""
        code = e.code() if hasattr(e, "code") else None
        if code is grpc.StatusCode.UNAUTHENTICATED and self.opts.username:
            self.reset_client(client)
            return "reauth"
        if code in _UNAVAILABLE_CODES:
            fail_endpoint(client)
            return "failover"
        return ""

    def call(self, what: str, fn: Callable[[MultiEndpointEtcd3Client], T]) -> T:
        """Run ``fn(client)``; on an unavailable endpoint fail over to the next one.

        Only use for requests that are safe to repeat (reads, compare-and-swap txns).
        """
        attempts = max(2, len(self.opts.endpoints) + 1)
        last: BaseException | None = None
        for attempt in range(attempts):
            client = self.client()
            try:
                return fn(client)
            except (etcd_exc.ConnectionFailedError, etcd_exc.ConnectionTimeoutError,
                    etcd_exc.NoServerAvailableError) as e:
                # Keep the error that carries grpc's details (the first failure).
                if last is None or isinstance(e.__context__, grpc.RpcError):
                    last = e
                if isinstance(e, etcd_exc.NoServerAvailableError):
                    break
            except etcd_exc.Etcd3Exception as e:
                raise self.translate(e, what) from e
            except grpc.RpcError as e:
                last = e
                action = self.recover(client, e)
                if not action or (action == "reauth" and attempt > 0):
                    break
            except ValueError as e:  # the client raises it when no endpoint can be used
                last = e
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


def fail_endpoint(client: MultiEndpointEtcd3Client) -> None:
    """Mark the endpoint in use as failed so the next request goes to another one."""
    try:
        ep = client.endpoint_in_use
        if ep is not None and len(client.endpoints) > 1:
            ep.fail()
            client._clear_old_stubs()
    except Exception:  # noqa: BLE001 (bookkeeping only; the caller reports the real error)
        pass
