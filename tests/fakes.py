"""The fakes the unit tests share: one per interface, each checked against its Protocol
(tests/test_fakes.py), so a method added to the interface cannot be forgotten here."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from ipaddress import IPv6Network
from typing import Any

from overlay.cni.ipam import Attachment, IPAddress
from overlay.config import NetworkConfig, parse_network_config
from overlay.errors import ConfigNotFound, LeaseConflict, LeaseExists, RegistryError
from overlay.lease import IPNetwork, Lease, LeaseAttrs, Rejection
from overlay.subnet.registry import WATCH_PROGRESS_INTERVAL, LeaseListing, WatchUpdate

PREFIX = "/overlay/network"


class FakeRegistry:
    """In-memory ``Registry`` with etcd's semantics (create-if-absent, revision-checked
    update, keys with no etcd lease are reservations).

    ``before_write`` runs before every create/update and may change the store, which is
    how a test makes the manager lose a race to another node.  ``garbage`` holds keys
    whose value is not a lease (listed as rejected, never creatable).  ``fail``, when
    set, is raised by every request (etcd down).  Watch updates are what a test puts
    on ``events``; config values what it puts on ``config_events``.
    """

    subnets_prefix = PREFIX + "/subnets/"

    def __init__(self, config: bytes | None = b'{"Network": "10.244.0.0/16"}'):
        self.lock = threading.RLock()
        self.leases: dict[IPNetwork, Lease] = {}
        self.garbage: dict[IPNetwork, bytes] = {}
        self.config = config
        self.rev = 1
        self.next_id = 100
        self.before_write: Callable[[IPNetwork], None] | None = None
        self.fail: RegistryError | None = None
        self.creates = 0
        self.closed = False
        self.events: queue.Queue[WatchUpdate] = queue.Queue()
        self.config_events: queue.Queue[tuple[bytes | None, int]] = queue.Queue()

    # -- helpers for tests -------------------------------------------------------------
    def _check(self) -> None:
        if self.fail is not None:
            raise self.fail

    def _expires(self, ttl: int | None) -> datetime | None:
        return datetime.now(UTC) + timedelta(seconds=ttl) if ttl else None

    def put(self, subnet: IPNetwork, attrs: LeaseAttrs, ttl: int | None = None,
            ipv6_subnet: IPv6Network | None = None) -> Lease:
        with self.lock:
            self.rev += 1
            lease_id = 0
            if ttl:
                self.next_id += 1
                lease_id = self.next_id
            lease = Lease(subnet, attrs, self._expires(ttl), lease_id, self.rev, ttl,
                          create_revision=self.rev, ipv6_subnet=ipv6_subnet)
            self.leases[subnet] = lease
            return lease

    def delete(self, subnet: IPNetwork) -> Lease:
        with self.lock:
            self.rev += 1
            return self.leases.pop(subnet)

    def _rejected(self) -> list[Rejection]:
        return [Rejection(self.subnets_prefix + f"{s.network_address}-{s.prefixlen}",
                          "bad-value", "x", self.rev, s) for s in self.garbage]

    # -- the Registry ------------------------------------------------------------------
    def get_config(self) -> NetworkConfig:
        value, _ = self.get_config_value()
        if value is None:
            raise ConfigNotFound(f"no network config at {PREFIX}/config")
        return parse_network_config(value)

    def get_config_value(self) -> tuple[bytes | None, int]:
        self._check()
        return self.config, self.rev

    def watch_config(self, start_revision: int, stop: threading.Event,
                     on_error: Callable[[RegistryError], None] | None = None
                     ) -> Iterator[tuple[bytes | None, int]]:
        while not stop.is_set():
            with contextlib.suppress(queue.Empty):
                yield self.config_events.get(timeout=0.05)

    def list_leases(self, with_expiration: bool = True) -> tuple[list[Lease], int]:
        listing = self.list_subnets(with_expiration)
        return listing.leases, listing.revision

    def list_subnets(self, with_expiration: bool = True) -> LeaseListing:
        self._check()
        with self.lock:
            return LeaseListing(list(self.leases.values()), self._rejected(), self.rev)

    def get_lease(self, subnet: IPNetwork) -> Lease | None:
        self._check()
        with self.lock:
            return self.leases.get(subnet)

    def create_lease(self, subnet: IPNetwork, attrs: LeaseAttrs, ttl: int | None,
                     ipv6_subnet: IPv6Network | None = None) -> Lease:
        self._check()
        if self.before_write:
            self.before_write(subnet)
        with self.lock:
            self.creates += 1
            if subnet in self.leases or subnet in self.garbage:
                raise LeaseExists(f"subnet {subnet} is already taken")
            return self.put(subnet, attrs, ttl, ipv6_subnet)

    def update_lease(self, old: Lease, attrs: LeaseAttrs, ttl: int | None) -> Lease:
        self._check()
        if self.before_write:
            self.before_write(old.subnet)
        with self.lock:
            cur = self.leases.get(old.subnet)
            if cur is None or cur.mod_revision != old.mod_revision:
                raise LeaseConflict(f"lease of {old.subnet} changed")
            new = self.put(old.subnet, attrs, ttl, old.ipv6_subnet)
            # an update keeps the key's create_revision, as etcd does
            new = replace(new, create_revision=cur.create_revision)
            self.leases[old.subnet] = new
            return new

    def rekey_lease(self, old: Lease, ipv6_subnet: IPv6Network | None,
                    attrs: LeaseAttrs) -> Lease:
        self._check()
        with self.lock:
            cur = self.leases.get(old.subnet)
            if cur is None or cur.mod_revision != old.mod_revision:
                raise LeaseConflict(f"lease of {old.subnet} changed")
            self.rev += 1
            new = replace(cur, attrs=attrs, ipv6_subnet=ipv6_subnet, mod_revision=self.rev,
                          create_revision=self.rev)
            self.leases[old.subnet] = new
            return new

    def renew_lease(self, lease: Lease) -> Lease:
        self._check()
        with self.lock:
            cur = self.leases.get(lease.subnet)
            if cur is None or cur.etcd_lease_id != lease.etcd_lease_id:
                raise LeaseConflict(f"lease of {lease.subnet} was deleted")
            new = replace(cur, expiration=self._expires(cur.ttl))
            self.leases[lease.subnet] = new
            return new

    def delete_lease(self, subnet: IPNetwork, expect_revision: int | None = None,
                     ipv6_subnet: IPv6Network | None = None) -> bool:
        self._check()
        with self.lock:
            cur = self.leases.get(subnet)
            if cur is None or (expect_revision is not None
                               and cur.mod_revision != expect_revision):
                return False
            self.delete(subnet)
            return True

    def watch_leases(self, start_revision: int, stop: threading.Event,
                     on_error: Callable[[RegistryError], None] | None = None,
                     on_progress: Callable[[int], None] | None = None,
                     progress_interval: float = WATCH_PROGRESS_INTERVAL
                     ) -> Iterator[WatchUpdate]:
        while not stop.is_set():
            try:
                update = self.events.get(timeout=0.05)
            except queue.Empty:
                continue
            if on_progress is not None:
                on_progress(update.revision)
            yield update

    def close(self) -> None:
        self.closed = True


class FakeStore:
    """In-memory IPAM ``Store`` with the disk store's contract, for the allocator's tests."""

    def __init__(self) -> None:
        self.ips: dict[IPAddress, Attachment] = {}
        self.last: dict[int, IPAddress] = {}  # by range index
        self._lock = threading.Lock()

    @contextmanager
    def lock(self) -> Iterator[None]:
        with self._lock:
            yield

    def reserve(self, container_id: str, ifname: str, ip: IPAddress, range_id: int = 0) -> bool:
        if ip in self.ips:
            return False
        self.ips[ip] = (container_id, ifname)
        self.last[range_id] = ip
        return True

    def last_reserved(self, range_id: int = 0) -> IPAddress | None:
        return self.last.get(range_id)

    def reservations(self) -> dict[IPAddress, Attachment]:
        return dict(self.ips)

    def release(self, ip: IPAddress) -> None:
        self.ips.pop(ip, None)


class FakeObjectStore:
    """The ``ObjectStore`` calls the node agent and the pod publisher make (heartbeat
    leases, records, listings), in memory, with each call counted: their tests count what
    would reach etcd (``listed``: every prefix listed, in order)."""

    def __init__(self, prefix: str = PREFIX) -> None:
        from collections import Counter
        from types import SimpleNamespace

        from overlay.cluster.store import KV
        self._KV = KV
        self.prefix = prefix
        self.registry = SimpleNamespace(subnets_prefix=f"{prefix}/subnets/")
        self.listed: list[str] = []
        self.kvs: dict[str, KV] = {}
        self.leases: dict[int, set[str]] = {}  # live etcd leases -> their keys
        self.calls: Counter[str] = Counter()
        self.revision = 1

    def _set(self, key: str, value: bytes, lease: int) -> int:
        self.revision += 1
        self.kvs[key] = self._KV(key, value, self.revision, lease=lease)
        if lease:
            self.leases[lease].add(key)
        return self.revision

    def expire(self, lease_id: int) -> None:
        """The lease runs out (keepalives stopped): its keys go."""
        for key in self.leases.pop(lease_id, set()):
            self.kvs.pop(key, None)

    def grant(self, ttl: int) -> int:
        self.calls["grant"] += 1
        lease_id = max(self.leases, default=0) + 1
        self.leases[lease_id] = set()
        return lease_id

    def keepalive(self, lease_id: int) -> int:
        self.calls["keepalive"] += 1
        return 10 if lease_id in self.leases else 0

    def revoke(self, lease_id: int) -> None:
        self.calls["revoke"] += 1
        self.expire(lease_id)

    def get(self, key: str):  # -> KV | None
        self.calls["get"] += 1
        return self.kvs.get(key)

    def get_many(self, keys):  # -> list[KV]
        self.calls["get_many"] += 1
        self.calls["keys_read"] += len(keys)
        return [self.kvs[k] for k in keys if k in self.kvs]

    def list(self, base: str):  # -> tuple[list[KV], int]
        self.calls["list"] += 1
        self.listed.append(base)
        return [kv for k, kv in sorted(self.kvs.items()) if k.startswith(base)], self.revision

    def delete(self, key: str, mod_revision: int | None = None) -> bool:
        self.calls["delete"] += 1
        held = self.kvs.get(key)
        if held is None or (mod_revision and held.mod_revision != mod_revision):
            return False
        self.revision += 1
        del self.kvs[key]
        return True

    def put(self, key: str, value: bytes, lease: int = 0) -> int:
        self.calls["put"] += 1
        return self._set(key, value, lease)

    def create(self, key: str, value: bytes, lease: int = 0):  # -> tuple[bool, KV | None]
        self.calls["create"] += 1
        if key in self.kvs:
            return False, self.kvs[key]
        self._set(key, value, lease)
        return True, None

    def replace(self, key: str, value: bytes, mod_revision: int, lease: int = 0) -> bool:
        self.calls["replace"] += 1
        held = self.kvs.get(key)
        if held is None or held.mod_revision != mod_revision:
            return False
        self._set(key, value, lease)
        return True

    def writes(self) -> int:
        return self.calls["put"] + self.calls["create"] + self.calls["replace"]


def attachments_of_records(agent: Any, node: str) -> Callable[..., dict[str, Any]]:
    """A policy agent's ``attachments`` for unit tests of its decisions: the pods its pod
    watch holds that name ``node`` inside the node's subnets stand for the node's disk
    (the real one is ``overlay.cni.attachments.scan_local``, tested on files)."""
    from overlay.cluster.pods import PodValueError, decode_pod
    from overlay.cni.attachments import LocalPod, PodIdentity
    from overlay.daemon.policyagent import PODS

    def attached(subnet: IPNetwork | None, ipv6: IPv6Network | None = None
                 ) -> dict[str, Any]:
        out = {}
        for kv in list(agent._kvs[PODS].values()):
            try:
                r = decode_pod(kv.value)
            except PodValueError:
                continue
            own = [s for s in (subnet, ipv6) if s is not None]
            if r.node == node and own and all(any(ip in s for s in own) for ip in r.ips):
                out[r.container_id] = LocalPod(r.container_id, r.ifname, tuple(r.ips),
                                               PodIdentity(r.namespace, r.name,
                                                           r.label_values(), r.ports))
        return out
    return attached
