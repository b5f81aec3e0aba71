"""The etcd v3 registry: raw, revision-aware storage of the network config and leases.

Storage only, no policy (the subnet manager decides).  The client beneath it
(connection, auth, failover, TLS, error translation) is ``overlay.subnet.etcd``, on
``overlay.subnet.etcdhttp`` (etcd's JSON gateway over ``http.client``).

Layout (Flannel-compatible)::

    <prefix>/config                   network config JSON
    <prefix>/subnets/10.244.1.0-24    lease JSON, attached to an etcd lease (TTL);
                                      no etcd lease = a reservation
    <prefix>/subnets/10.244.1.0-24&fd00:10:244:1::-64   a dual-stack lease

A lease is found by its IPv4 subnet whichever form its key has (``get_lease``);
``rekey_lease`` moves a lease between the two forms in one transaction.

Every client error comes out as ``EtcdUnavailable`` (nothing answered; the
message names the endpoints) or ``RegistryError`` (refused: auth, TLS, bad request).
Calls are synchronous; the object is safe to share between threads.

``Registry`` (below) is the interface the manager and the daemon type against; they
import it for type checking only, so importing them does not load the etcd client.
"""

from __future__ import annotations

import functools
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv6Network
from typing import Any, Protocol, TypeVar

from overlay.config import NetworkConfig, parse_network_config
from overlay.errors import (
    ConfigError,
    ConfigNotFound,
    LeaseConflict,
    LeaseExists,
    RegistryError,
)
from overlay.lease import (
    EventType,
    IPNetwork,
    Lease,
    LeaseAttrs,
    LeaseEvent,
    Rejection,
    SubnetKeyName,
    decode_kv,
    key_to_name,
    subnet_to_key,
)
from overlay.subnet import etcdhttp as gw
from overlay.subnet.etcd import EtcdAPI, EtcdClient, op_delete, op_put, op_range, split_keys
from overlay.subnet.etcdconf import EtcdOptions
from overlay.util.backoff import Backoff

log = logging.getLogger(__name__)
T = TypeVar("T")

# A public IP that cannot be a node's: used for REMOVED events whose value etcd no longer has.
UNKNOWN_IP = IPv4Address("0.0.0.0")
WATCH_BACKOFF_MIN = 0.05
CACHED_VALUE_BYTES = 4096  # lease values larger than this are decoded every time
CACHED_VALUES = 4096  # values decoded; a larger listing bypasses the cache (see _parse_kv)
WATCH_BACKOFF_MAX = 2.0
# How often an open watch asks etcd for a progress notification, so a silent stream
# (etcd frozen, a half-open connection) shows as lag rather than as "all quiet".  Only a
# watch whose caller listens (``on_progress``) asks, and only after a silent interval (an
# event answers as well): six streams per node asking every 5 s were 1200 requests/s at
# 1000 nodes, each answered by etcd.
WATCH_PROGRESS_INTERVAL = 5.0


@dataclass(frozen=True)
class WatchUpdate:
    """One step of a lease watch.

    Either ``events`` (in revision order) or, after a compaction forced a re-list,
    ``snapshot`` (the complete set of leases at ``revision``; ``events`` is empty and
    the consumer calls ``LeaseView.reset(snapshot)``).
    """

    events: list[LeaseEvent] = field(default_factory=list)
    snapshot: list[Lease] | None = None
    revision: int = 0
    # Keys put with something that is not a lease under a key that is not a subnet key
    # (those under a subnet key come as REMOVED events carrying their rejection), and,
    # with a snapshot, every rejected key at that revision.
    rejected: list[Rejection] = field(default_factory=list)
    cleared: list[str] = field(default_factory=list)  # rejected keys that were deleted


@dataclass(frozen=True)
class LeaseListing:
    """Every key under ``subnets/`` at ``revision``: leases, and what was rejected."""

    leases: list[Lease]
    rejected: list[Rejection]
    revision: int


class Registry(Protocol):
    """The storage the subnet manager and the daemon work against (``EtcdRegistry``
    implements it; ``tests/fakes.FakeRegistry`` is the one fake).  Raw and
    revision-aware: no policy.  Failures are ``RegistryError``s."""

    subnets_prefix: str  # the key prefix of leases, to name rejected keys in full

    def get_config(self) -> NetworkConfig: ...
    def get_config_value(self) -> tuple[bytes | None, int]: ...
    def watch_config(self, start_revision: int, stop: threading.Event,
                     on_error: Callable[[RegistryError], None] | None = None
                     ) -> Iterator[tuple[bytes | None, int]]: ...
    def list_leases(self, with_expiration: bool = True) -> tuple[list[Lease], int]: ...
    def list_subnets(self, with_expiration: bool = True) -> LeaseListing: ...
    def get_lease(self, subnet: IPNetwork) -> Lease | None: ...
    def create_lease(self, subnet: IPNetwork, attrs: LeaseAttrs, ttl: int | None,
                     ipv6_subnet: IPv6Network | None = None) -> Lease: ...
    def update_lease(self, old: Lease, attrs: LeaseAttrs, ttl: int | None) -> Lease: ...
    def rekey_lease(self, old: Lease, ipv6_subnet: IPv6Network | None,
                    attrs: LeaseAttrs) -> Lease: ...
    def renew_lease(self, lease: Lease) -> Lease: ...
    def watch_leases(self, start_revision: int, stop: threading.Event,
                     on_error: Callable[[RegistryError], None] | None = None,
                     on_progress: Callable[[int], None] | None = None,
                     progress_interval: float = WATCH_PROGRESS_INTERVAL
                     ) -> Iterator[WatchUpdate]: ...
    def close(self) -> None: ...


class EtcdRegistry:
    """Leases and config under ``opts.prefix`` in etcd v3."""

    def __init__(self, opts: EtcdOptions):
        self.opts = opts
        self.prefix = opts.prefix.rstrip("/")
        self.config_key = f"{self.prefix}/config"
        self.subnets_prefix = f"{self.prefix}/subnets/"
        self.etcd = EtcdClient(opts)
        self._raw: Any = None  # client()'s
        self._raw_lock = threading.Lock()
        # whether decoding goes through _parse_kv: until a listing is larger than it
        self._cache = True
        # where the last listing of subnets/ would be cut to be read in pieces at once
        self._splits: tuple[bytes, ...] = ()

    def api(self) -> EtcdAPI:
        """etcd's calls on the endpoint in use (authenticated, no failover), for
        requests the registry's helpers do not cover."""
        return self.etcd.api()

    def client(self) -> Any:
        """A python-etcd3 client (``pyetcd``, from the ``test`` extra) on the same
        endpoints, for tests and benchmarks that write raw keys through a client other
        than the project's; overlayd, overlayctl and the CNI plugin never call it."""
        with self._raw_lock:
            if self._raw is None:
                from pyetcd.client import Endpoint, MultiEndpointEtcd3Client
                self._raw = MultiEndpointEtcd3Client(
                    [Endpoint(e.host, e.port, secure=False, time_retry=1)
                     for e in self.opts.endpoints], timeout=self.opts.timeout, failover=True)
            return self._raw

    def close(self) -> None:
        self.etcd.close()
        with self._raw_lock:
            raw, self._raw = self._raw, None
        if raw is not None:
            raw.close()

    def __enter__(self) -> EtcdRegistry:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- config ---------------------------------------------------------------------

    def get_config(self) -> NetworkConfig:
        value, _ = self.etcd.call("reading the network config", lambda c: c.get(self.config_key))
        if value is None:
            raise ConfigNotFound(
                f"no network config at {self.config_key} in etcd {self.opts.describe()}: "
                "set one with `overlayctl config set --network 10.244.0.0/16`")
        try:
            return parse_network_config(value)
        except ConfigError as e:
            raise ConfigError(f"network config at {self.config_key} is invalid: {e}") from e
        except Exception as e:  # etcd is untrusted: deep nesting, bad bytes
            raise ConfigError(f"network config at {self.config_key} is invalid: "
                              f"{type(e).__name__}") from e

    def get_config_value(self) -> tuple[bytes | None, int]:
        """The config key's raw value (None: absent) and the store revision it was read
        at; for watching the key from the next revision."""
        kvs, rev = self.etcd.call("reading the network config",
                                  lambda c: c.get_response(self.config_key))
        return (kvs[0].value if kvs else None), rev

    def watch_config(self, start_revision: int, stop: threading.Event,
                     on_error: Callable[[RegistryError], None] | None = None
                     ) -> Iterator[tuple[bytes | None, int]]:
        """(value, revision) for every change of the config key from ``start_revision``
        on (None: deleted), until ``stop`` is set.  Re-watched like the leases; after a
        compaction the key is read again (a change may have been compacted away)."""
        key = self.config_key.encode()

        def changes(stream: _WatchStream) -> Iterator[tuple[tuple[bytes | None, int], int]]:
            for events in stream.responses("watching the network config"):
                for ev in events:
                    rev = ev.kv.mod_revision
                    yield ((ev.kv.value if ev.type == "PUT" else None), rev), rev

        def reread(_stream: _WatchStream, _next_rev: int) -> tuple[tuple[bytes | None, int], int]:
            value, rev = self.get_config_value()
            return (value, rev), rev

        return self._resumed_watch(
            "network config watch", start_revision, stop, on_error,
            lambda rev: _WatchStream(self, rev, stop, key=key, range_end=b""), changes, reread)

    def put_config(self, cfg: NetworkConfig) -> None:
        self.etcd.call("writing the network config",
                       lambda c: c.put(self.config_key, cfg.to_json()))
        log.info("network config written to %s: %s", self.config_key, cfg.to_json())

    # -- leases ---------------------------------------------------------------------

    def key_for(self, subnet: IPNetwork, ipv6_subnet: IPv6Network | None = None) -> str:
        return self.subnets_prefix + subnet_to_key(subnet, ipv6_subnet)

    def _kv_of(self, c: EtcdAPI, subnet: IPNetwork) -> Any:
        """The key/value holding ``subnet`` in either form (``X`` or ``X&<IPv6>``), or
        None; of two such keys the one created first (the rule's holder)."""
        found = []
        for kv in c.range_all(self.key_for(subnet))[0]:
            try:
                name = key_to_name(kv.key.decode(), self.subnets_prefix)
            except (ValueError, UnicodeDecodeError):
                continue  # e.g. 10.244.1.0-240: not a key of this subnet
            if name.subnet == subnet:
                found.append(kv)
        return min(found, key=lambda kv: (kv.create_revision, kv.key), default=None)

    def _lease_from_kv(self, kv: Any, expiration: datetime | None = None,
                       ttl: int | None = None) -> Lease | None:
        judged = self._judge_kv(kv, expiration, ttl)
        return judged if isinstance(judged, Lease) else None

    def _judge_kv(self, kv: Any, expiration: datetime | None = None,
                  ttl: int | None = None) -> Lease | Rejection:
        """The lease a key/value holds, or why it is not one (never raises)."""
        # A hostile value (up to etcd's 1.5 MiB) must not be kept alive by the cache: a
        # real lease is ~150 bytes, and 4096 cached 64 KiB values would pin 256 MiB.
        parse = (_parse_kv if self._cache and len(kv.value) <= CACHED_VALUE_BYTES
                 else decode_kv)
        parsed = parse(self.subnets_prefix, kv.key, kv.value)
        if len(parsed) == 3:
            reason, detail, subnet = parsed
            return Rejection(kv.key.decode("utf-8", "surrogateescape"), reason, detail,
                             int(kv.mod_revision), subnet)
        name, attrs = parsed
        return Lease(subnet=name.subnet, attrs=attrs, expiration=expiration,
                     etcd_lease_id=kv.lease, mod_revision=kv.mod_revision, ttl=ttl,
                     create_revision=kv.create_revision, ipv6_subnet=name.ipv6)

    def _use_cache(self, listed: int) -> None:
        """Decode through the cache only while a whole listing fits in it."""
        fits = listed <= CACHED_VALUES
        if self._cache and not fits:
            _parse_kv.cache_clear()  # what it holds would only be evicted unused
        self._cache = fits

    def _lease_ttl(self, client: EtcdAPI, lease_id: int) -> tuple[int, int]:
        """(remaining, granted) seconds of an etcd lease; remaining -1 if it is gone."""
        return client.time_to_live(lease_id)

    def _with_expiry(self, client: EtcdAPI, kv: Any) -> Lease | None:
        judged = self._judged_with_expiry(client, kv)
        return judged if isinstance(judged, Lease) else None

    def _judged_with_expiry(self, client: EtcdAPI,
                            kv: Any) -> Lease | Rejection | None:
        judged = self._judge_kv(kv)
        if not kv.lease or not isinstance(judged, Lease):
            return judged
        remaining, granted = self._lease_ttl(client, kv.lease)
        if remaining < 0:  # expired between the read and now
            return None
        return replace(judged, expiration=_expires_in(remaining), ttl=granted)

    def list_leases(self, with_expiration: bool = True) -> tuple[list[Lease], int]:
        """All leases and reservations, and the store revision they were read at.

        ``with_expiration`` asks etcd for each lease's remaining TTL (one request per
        lease); pass False where only subnets and attributes matter (the data plane).
        Keys that hold no lease are left out: ``list_subnets`` has them.
        """
        listing = self.list_subnets(with_expiration)
        return listing.leases, listing.revision

    def list_subnets(self, with_expiration: bool = True) -> LeaseListing:
        """Like ``list_leases``, with every rejected key beside the leases."""
        def op(c: EtcdAPI) -> LeaseListing:
            kvs, revision = c.range_all(self.subnets_prefix, splits=self._splits)
            self._splits = split_keys(kvs)
            self._use_cache(len(kvs))
            leases, rejected = [], []
            for kv in kvs:
                got = (self._judged_with_expiry(c, kv) if with_expiration
                       else self._judge_kv(kv))
                if isinstance(got, Lease):
                    leases.append(got)
                elif got is not None:
                    rejected.append(got)
            return LeaseListing(leases, rejected, revision)
        return self.etcd.call("listing leases", op)

    def get_subnet(self, subnet: IPNetwork) -> Lease | Rejection | None:
        """What the key of ``subnet`` holds: a lease, why it is not one, or nothing."""
        def op(c: EtcdAPI) -> Lease | Rejection | None:
            kv = self._kv_of(c, subnet)
            return self._judged_with_expiry(c, kv) if kv is not None else None
        return self.etcd.call(f"reading the lease of {subnet}", op)

    def get_lease(self, subnet: IPNetwork) -> Lease | None:
        def op(c: EtcdAPI) -> Lease | None:
            kv = self._kv_of(c, subnet)
            return self._with_expiry(c, kv) if kv is not None else None
        return self.etcd.call(f"reading the lease of {subnet}", op)

    def _grant(self, ttl: int | None, what: str) -> int:
        """A new etcd lease of ``ttl`` seconds (0 for a reservation).

        The ID is chosen here, so a retry after a timeout whose grant went through is
        refused as a duplicate (FAILED_PRECONDITION) instead of granting a second lease
        that nothing would ever revoke."""
        if ttl is None:
            return 0
        if ttl < 1:
            raise ConfigError(f"lease TTL must be at least 1 second, got {ttl}")
        lease_id = secrets.randbits(62) | 1
        sent = []

        def grant(c: EtcdAPI) -> int:
            try:
                sent.append(lease_id)
                return c.grant(ttl, lease_id)
            except gw.GatewayError as e:
                if e.code == gw.FAILED_PRECONDITION and len(sent) > 1:
                    return lease_id  # an earlier attempt of ours was granted
                raise
        return self.etcd.call(what, grant)

    def _revoke_quietly(self, lease_id: int) -> None:
        if not lease_id:
            return
        try:
            self.etcd.call("revoking an etcd lease", lambda c: c.revoke_lease(lease_id))
        except RegistryError as e:  # it expires by itself anyway
            log.debug("could not revoke etcd lease %x: %s", lease_id, e)

    def _put_txn(self, key: str, attrs: LeaseAttrs, lease_id: int,
                 compare: dict[str, Any], what: str) -> tuple[bool, int, Any]:
        """Put the lease if ``compare`` holds; else read the key. (ok, revision, kv or None)."""

        def op(c: EtcdAPI) -> tuple[bool, int, Any]:
            resp = c.txn([compare], [op_put(key, attrs.to_json(), lease_id)], [op_range(key)])
            kvs = [] if resp.succeeded or not resp.kvs else resp.kvs[0]
            return resp.succeeded, resp.revision, (kvs[0] if kvs else None)
        return self.etcd.call(what, op)

    def create_lease(self, subnet: IPNetwork, attrs: LeaseAttrs, ttl: int | None,
                     ipv6_subnet: IPv6Network | None = None) -> Lease:
        """Create the lease only if the key is absent (one txn).  ``ttl`` None: a reservation.
        With ``ipv6_subnet`` the key is the dual-stack one.

        Raises ``LeaseExists`` (naming the holder) when the key exists.
        """
        what = f"creating the lease of {subnet}"
        lease_id = self._grant(ttl, what)
        key = self.key_for(subnet, ipv6_subnet)
        compare = gw.compare(key, "CREATE", 0)
        try:
            ok, rev, kv = self._put_txn(key, attrs, lease_id, compare, what)
        except BaseException:
            self._revoke_quietly(lease_id)
            raise
        if not ok and kv is not None and lease_id and kv.lease == lease_id:
            ok, rev = True, kv.mod_revision  # our own put, answered after a failover retry
        if not ok:
            self._revoke_quietly(lease_id)
            holder = self._lease_from_kv(kv) if kv is not None else None
            who = f" by {holder.attrs.public_ip}" if holder else ""
            raise LeaseExists(f"subnet {subnet} is already taken{who}")
        log.debug("created %s for %s (ttl %s, rev %d)", key, attrs.public_ip, ttl, rev)
        return Lease(subnet, attrs, _expires_in(ttl) if ttl else None, lease_id, rev, ttl,
                     create_revision=rev, ipv6_subnet=ipv6_subnet)

    def update_lease(self, old: Lease, attrs: LeaseAttrs, ttl: int | None) -> Lease:
        """Replace ``old``'s value (and TTL) only if the key is unchanged since ``old`` was read.

        ``ttl`` None makes (or keeps) the key a reservation.  Raises ``LeaseConflict``.
        """
        what = f"updating the lease of {old.subnet}"
        lease_id = self._grant(ttl, what)
        key = self.key_for(old.subnet, old.ipv6_subnet)
        compare = gw.compare(key, "MOD", old.mod_revision)
        try:
            ok, rev, kv = self._put_txn(key, attrs, lease_id, compare, what)
        except BaseException:
            self._revoke_quietly(lease_id)
            raise
        if not ok and kv is not None and lease_id and kv.lease == lease_id:
            ok, rev = True, kv.mod_revision
        if not ok:
            self._revoke_quietly(lease_id)
            state = "was deleted" if kv is None else f"changed (revision {kv.mod_revision})"
            raise LeaseConflict(f"lease of {old.subnet} {state} since it was read "
                                f"(revision {old.mod_revision})")
        if old.etcd_lease_id and old.etcd_lease_id != lease_id:
            self._revoke_quietly(old.etcd_lease_id)
        return Lease(old.subnet, attrs, _expires_in(ttl) if ttl else None, lease_id, rev, ttl,
                     create_revision=old.create_revision, ipv6_subnet=old.ipv6_subnet)

    def rekey_lease(self, old: Lease, ipv6_subnet: IPv6Network | None,
                    attrs: LeaseAttrs) -> Lease:
        """Move ``old`` to the key of ``(old.subnet, ipv6_subnet)`` in ONE transaction:
        delete the old key and put the new one on the same etcd lease, only if the old
        key is unchanged since it was read and the new one is absent.  A watcher sees a
        DELETE and a PUT of one revision; both keys name the same IPv4 subnet, so it is
        one lease, changed (``LeaseView``), and no route is removed.

        Raises ``LeaseConflict`` when the old key changed or the new key exists.
        """
        old_key = self.key_for(old.subnet, old.ipv6_subnet)
        new_key = self.key_for(old.subnet, ipv6_subnet)
        what = f"re-keying the lease of {old.subnet} to {new_key}"
        cmp = [gw.compare(old_key, "MOD", old.mod_revision), gw.compare(new_key, "CREATE", 0)]

        def op(c: EtcdAPI) -> tuple[bool, int]:
            resp = c.txn(cmp, [op_delete(old_key),
                               op_put(new_key, attrs.to_json(), old.etcd_lease_id)])
            return resp.succeeded, resp.revision
        ok, rev = self.etcd.call(what, op)
        if not ok:
            raise LeaseConflict(f"could not re-key the lease of {old.subnet}: {old_key} "
                                f"changed since revision {old.mod_revision} or {new_key} "
                                "exists")
        log.info("re-keyed lease %s -> %s (revision %d)", old_key, new_key, rev)
        return replace(old, attrs=attrs, mod_revision=rev, create_revision=rev,
                       ipv6_subnet=ipv6_subnet)

    def renew_lease(self, lease: Lease) -> Lease:
        """Refresh the TTL of our lease.  ``LeaseConflict`` if the key or etcd lease is gone
        or the key now belongs to someone else."""
        what = f"renewing the lease of {lease.subnet}"
        remaining, granted = -1, lease.ttl
        if lease.etcd_lease_id:
            remaining = self.etcd.call(what, lambda c: c.keepalive(lease.etcd_lease_id))
            if remaining <= 0:
                raise LeaseConflict(f"lease of {lease.subnet} expired (etcd lease "
                                    f"{lease.etcd_lease_id:x} is gone)")
        key = self.key_for(lease.subnet, lease.ipv6_subnet)
        kvs, _ = self.etcd.call(what, lambda c: c.get_response(key))
        kv = kvs[0] if kvs else None
        if kv is None:
            self._revoke_quietly(lease.etcd_lease_id)
            raise LeaseConflict(f"lease of {lease.subnet} was deleted")
        if kv.lease != lease.etcd_lease_id:
            self._revoke_quietly(lease.etcd_lease_id)  # ours holds nothing any more
            raise LeaseConflict(f"lease of {lease.subnet} now belongs to another etcd lease "
                                f"({kv.lease:x}, ours {lease.etcd_lease_id:x})")
        current = self._lease_from_kv(kv)
        if current is None or current.attrs.public_ip != lease.attrs.public_ip:
            raise LeaseConflict(f"lease of {lease.subnet} was rewritten by someone else")
        expiration = _expires_in(remaining) if lease.etcd_lease_id else None
        return Lease(lease.subnet, current.attrs, expiration, lease.etcd_lease_id,
                     kv.mod_revision, granted or remaining, kv.create_revision,
                     lease.ipv6_subnet)

    def delete_lease(self, subnet: IPNetwork, expect_revision: int | None = None,
                     ipv6_subnet: IPv6Network | None = None) -> bool:
        """Delete a lease or reservation; with ``expect_revision`` only if unchanged.

        Returns False when there was nothing (or, with ``expect_revision``, nothing
        unchanged) to delete.  The etcd lease behind it is revoked.  The key is the one
        of ``(subnet, ipv6_subnet)``; without ``ipv6_subnet``, whichever key holds
        ``subnet`` (``get_lease``).
        """
        key = self.key_for(subnet, ipv6_subnet)
        if ipv6_subnet is None:
            kv = self.etcd.call(f"reading the lease of {subnet}",
                                lambda c: self._kv_of(c, subnet))
            if kv is not None:
                key = kv.key.decode()

        def op(c: EtcdAPI) -> tuple[bool, int]:
            compare = (gw.compare(key, "MOD", expect_revision) if expect_revision
                       else gw.compare(key, "VERSION", 0, "GREATER"))
            resp = c.txn([compare], [op_delete(key, prev_kv=True)])
            if not resp.succeeded:
                return False, 0
            prev = resp.kvs[0] if resp.kvs else []
            return bool(prev), (prev[0].lease if prev else 0)
        deleted, lease_id = self.etcd.call(f"deleting the lease of {subnet}", op)
        if lease_id:
            self._revoke_quietly(lease_id)
        if deleted:
            log.info("deleted lease of %s", subnet)
        return deleted

    def compact(self, revision: int | None = None) -> int:
        """Compact the store's history up to ``revision`` (default: now); for tests and ops."""
        def op(c: EtcdAPI) -> int:
            rev = revision or c.get_response(self.config_key)[1]
            c.compact(rev)
            return rev
        return self.etcd.call("compacting", op)

    # -- watch ----------------------------------------------------------------------

    def watch_leases(self, start_revision: int, stop: threading.Event,
                     on_error: Callable[[RegistryError], None] | None = None,
                     on_progress: Callable[[int], None] | None = None,
                     progress_interval: float = WATCH_PROGRESS_INTERVAL
                     ) -> Iterator[WatchUpdate]:
        """Lease events from ``start_revision`` on, until ``stop`` is set.

        ``on_error`` is told of every interruption that is retried (for metrics).
        ``on_progress`` is told the store revision of every answer etcd sends on the
        stream as it is read (events, and progress notifications requested after every
        ``progress_interval`` seconds without an answer): how recently the watch was known
        to be live.  Without ``on_progress`` no progress is requested.
        A broken stream (etcd restarted, member down) is re-opened from the last
        delivered revision + 1 with a capped backoff, on the next endpoint.  If that
        revision was compacted away, the leases are re-listed and yielded as a snapshot.
        Returns within about 0.2 s of ``stop`` being set.
        """
        def updates(stream: _WatchStream) -> Iterator[tuple[WatchUpdate, int]]:
            for update in stream.updates():
                yield update, update.revision

        def relist(stream: _WatchStream, next_rev: int) -> tuple[WatchUpdate, int]:
            listing = self.list_subnets(with_expiration=False)
            rev = listing.revision
            log.warning("watch revision %d was compacted (compacted up to %d); "
                        "re-listed %d leases at revision %d",
                        next_rev, stream.compacted, len(listing.leases), rev)
            return WatchUpdate(events=[], snapshot=listing.leases, revision=rev,
                               rejected=listing.rejected), rev

        return self._resumed_watch(
            "lease watch", start_revision, stop, on_error,
            lambda rev: _WatchStream(self, rev, stop, on_progress=on_progress,
                                     progress_interval=progress_interval), updates, relist)

    def _resumed_watch(self, what: str, start_revision: int, stop: threading.Event,
                       on_error: Callable[[RegistryError], None] | None,
                       open_stream: Callable[[int], _WatchStream],
                       items: Callable[[_WatchStream], Iterator[tuple[T, int]]],
                       after_compaction: Callable[[_WatchStream, int], tuple[T, int]]
                       ) -> Iterator[T]:
        """The one re-watch loop of both watches: ``items`` of a stream opened at the next
        revision, each with its revision; a broken stream is re-opened from the last
        revision + 1 with a capped backoff (``on_error`` told); a compacted one is replaced
        by ``after_compaction`` (a fresh read) and watched on from its revision + 1."""
        next_rev = start_revision
        backoff = Backoff(WATCH_BACKOFF_MIN, WATCH_BACKOFF_MAX)
        while not stop.is_set():
            stream = open_stream(next_rev)
            try:
                for item, rev in items(stream):
                    backoff.reset()
                    next_rev = rev + 1
                    yield item
                if stream.compacted:
                    item, rev = after_compaction(stream, next_rev)
                    next_rev = rev + 1
                    yield item
                    continue
            except RegistryError as e:
                if stop.is_set():
                    return
                if on_error is not None:
                    on_error(e)
                log.warning("%s interrupted (%s); re-watching from revision %d in %.2fs",
                            what, e, next_rev, backoff.delay)
            finally:
                stream.close()
            if backoff.wait(stop):
                return

    def _event_to_lease_event(self, ev: Any) -> LeaseEvent | Rejection | str | None:
        """A watch event as a lease event; a ``Rejection`` (a put of a key that holds no
        lease and names no subnet) or the key (such a key deleted)."""
        kv = ev.kv
        if ev.type == "PUT":
            judged = self._judge_kv(kv)
            if isinstance(judged, Lease):
                return LeaseEvent(EventType.ADDED, judged, kv.mod_revision)
            if judged.subnet is None:
                return judged
            # Garbage under a subnet's key: whatever lease it held is gone.
            name = key_to_name(kv.key.decode(), self.subnets_prefix)
            return LeaseEvent(EventType.REMOVED, Lease(judged.subnet, LeaseAttrs(UNKNOWN_IP),
                                                       mod_revision=kv.mod_revision,
                                                       ipv6_subnet=name.ipv6),
                              kv.mod_revision, rejection=judged)
        try:
            # Whole-string: an alias (extra segments, a newline) of another node's key
            # must not remove that node's lease.
            name = key_to_name(kv.key.decode(), self.subnets_prefix)
        except (ValueError, UnicodeDecodeError):
            return kv.key.decode("utf-8", "surrogateescape")
        prev = self._lease_from_kv(ev.prev_kv) if ev.prev_kv is not None else None
        # The key's IPv6 half names which of two keys with one IPv4 subnet went away.
        lease = Lease(name.subnet, prev.attrs if prev else LeaseAttrs(UNKNOWN_IP),
                      etcd_lease_id=prev.etcd_lease_id if prev else 0,
                      mod_revision=kv.mod_revision, ipv6_subnet=name.ipv6)
        return LeaseEvent(EventType.REMOVED, lease, kv.mod_revision)


def _watch_update(registry: EtcdRegistry, raw_events: Any) -> WatchUpdate | None:
    """One watch response as a ``WatchUpdate`` (None if it holds nothing)."""
    events: list[LeaseEvent] = []
    rejected: list[Rejection] = []
    cleared: list[str] = []
    revision = 0
    for ev in raw_events:
        got = registry._event_to_lease_event(ev)
        if isinstance(got, LeaseEvent):
            events.append(got)
        elif isinstance(got, Rejection):
            rejected.append(got)
        elif isinstance(got, str):
            cleared.append(got)
        revision = max(revision, int(ev.kv.mod_revision))
    if not (events or rejected or cleared):
        return None
    return WatchUpdate(events=events, revision=revision, rejected=rejected, cleared=cleared)


class _WatchStream:
    """One watch stream on a key or prefix (default: the subnets), on its own HTTP
    connection; cancelled promptly when ``stop`` is set.

    etcd's gateway takes a watch's request whole, so no progress request can follow it
    on the stream.  Instead, whenever the stream has been silent for ``progress_interval``
    seconds, the guard asks the stream's own member a request that costs etcd one index
    lookup (a count of the watched key alone); when it answers, ``on_progress`` hears the
    last revision the stream delivered.  A frozen or vanished member answers nothing, so
    it shows as lag as a missed progress notification would; a half-open stream to a
    member that still answers is broken by TCP keepalive in about 10 s, and re-watched.
    Unlike etcd's progress notification, an answer does not prove the stream has sent
    every event up to the store's revision (a range that could tell costs etcd a read of
    every key under the prefix, per node per interval).
    """

    def __init__(self, registry: EtcdRegistry, start_revision: int, stop: threading.Event,
                 key: bytes | None = None, range_end: bytes | None = None,
                 on_progress: Callable[[int], None] | None = None,
                 progress_interval: float | None = WATCH_PROGRESS_INTERVAL):
        self.registry = registry
        self.start_revision = start_revision
        self.stop = stop
        self.key = key if key is not None else registry.subnets_prefix.encode()
        self.range_end = (range_end if range_end is not None
                          else gw.prefix_range_end(self.key))
        self.on_progress = on_progress
        # no progress is asked for when nobody listens for it
        self.progress_interval = progress_interval if on_progress is not None else None
        self.compacted = 0
        self._done = threading.Event()
        self._call: gw.WatchCall | None = None
        self._seen = start_revision - 1  # the stream is current up to this revision
        self._heard = time.monotonic()  # when it last said anything
        self._guard = threading.Thread(target=self._guard_stream, daemon=True,
                                       name="overlay-watch-guard")

    def _create_request(self) -> dict[str, Any]:
        req: dict[str, Any] = {"key": gw.b64(self.key), "prev_kv": True,
                               "start_revision": str(self.start_revision),
                               "progress_notify": True}
        if self.range_end:
            req["range_end"] = gw.b64(self.range_end)
        return req

    def _guard_stream(self) -> None:
        interval = self.progress_interval
        tick = 0.2 if interval is None else min(0.2, interval)
        while not self._done.wait(tick):
            if self.stop.is_set():
                break
            if interval is not None and time.monotonic() - self._heard >= interval:
                self._check_progress()
        call = self._call
        if call is not None:
            call.cancel()

    def _check_progress(self) -> None:
        call = self._call
        if call is None:
            return
        try:
            # one key, counted: an index lookup for etcd, whatever the prefix holds
            EtcdAPI(call.endpoint).range(self.key, count_only=True)
        except (gw.Unreachable, gw.GatewayError):
            return  # not heard: the lag grows, which is the point
        if self._done.is_set() or self.stop.is_set():
            return
        if self.on_progress is not None:
            self._heard = time.monotonic()
            self.on_progress(self._seen)

    def close(self) -> None:
        self._done.set()
        call = self._call
        if call is not None:
            call.close()

    def updates(self) -> Iterator[WatchUpdate]:
        reg = self.registry
        for events in self.responses("watching leases"):
            update = _watch_update(reg, events)
            if update is not None:
                yield update

    def responses(self, what: str) -> Iterator[list[gw.Event]]:
        """The events of each of etcd's watch responses on this stream (``on_progress``
        told of each one); returns at a compaction (``compacted`` set) or stop, raises
        RegistryError when the stream fails or etcd cancels it."""
        reg = self.registry
        create = self._create_request()
        self._call = call = reg.etcd.call(
            f"opening the watch ({what})", lambda c: gw.WatchCall(c.endpoint, create))
        self._guard.start()
        try:
            for resp in call.messages():
                events, revision = self._parse(resp, what, call)
                if events is None:
                    return
                self._heard = time.monotonic()
                self._seen = max(self._seen, revision)
                if self.on_progress is not None:
                    self.on_progress(revision)
                yield events
        except gw.Unreachable as e:
            if self.stop.is_set() or call.cancelled:
                return
            reg.etcd.fail_over(call.endpoint)
            raise reg.etcd.translate(e, what) from e
        except gw.GatewayError as e:
            if self.stop.is_set() or call.cancelled:
                return
            raise reg.etcd.translate(e, what) from e
        if not self.stop.is_set() and not call.cancelled:
            raise RegistryError(f"etcd closed the watch stream ({what})")

    def _parse(self, resp: dict[str, Any], what: str, call: gw.WatchCall
               ) -> tuple[list[gw.Event] | None, int]:
        """(events, revision) of one watch response; (None, 0) at a compaction."""
        reg = self.registry
        try:
            compacted = gw.num(resp, "compact_revision")
            if compacted:
                self.compacted = compacted
                return None, 0
            if resp.get("canceled"):
                if reg.opts.username:  # e.g. "permission denied": a token etcd forgot
                    reg.etcd.forget_token(call.endpoint)
                raise RegistryError(f"etcd cancelled the watch ({what}): "
                                    f"{str(resp.get('cancel_reason', ''))[:200]}")
            raw = resp.get("events", [])
            if not isinstance(raw, list):
                raise ValueError("events is not a list")
            return [gw.parse_event(e) for e in raw], gw.revision_of(resp)
        except ValueError as e:
            raise reg.etcd.translate(gw.decode_error(e), what) from e


@functools.lru_cache(maxsize=CACHED_VALUES)
def _parse_kv(prefix: str, key: bytes, value: bytes
              ) -> tuple[SubnetKeyName, LeaseAttrs] | tuple[str, str, IPNetwork | None]:
    """``decode_kv``, cached: every listing re-reads every lease, and most of them have
    not changed (a daemon lists twice as it starts: to acquire, then to watch).
    Each entry pins the raw key and value, and an LRU smaller than a listing misses
    every time (it evicts in key order), so a registry whose last listing did not fit
    decodes without it (``EtcdRegistry._cache``): 2 MB less RSS at 5000 leases."""
    return decode_kv(prefix, key, value)


def _expires_in(seconds: int | float | None) -> datetime | None:
    if seconds is None:
        return None
    return datetime.now(UTC) + timedelta(seconds=seconds)
