"""Raw access to the cluster's JSON objects in etcd (nodes, heartbeats, pods, ...):
list, get, create, compare-and-swap, delete, short leases, and a resumed prefix watch.

Storage only, like ``overlay.subnet.registry`` whose etcd client, error translation and
re-watch loop it reuses: values are bytes, and every caller decodes and validates them by
its kind's one rule (``overlay.cluster.keys`` for the key, the kind's module for the
value). Errors are ``EtcdUnavailable`` / ``RegistryError`` as everywhere.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pyetcd
from pyetcd import etcdrpc
from pyetcd.client import MultiEndpointEtcd3Client
from pyetcd.etcdrpc import kv_pb2

from overlay.errors import RegistryError
from overlay.subnet.registry import EtcdRegistry, _WatchStream

log = logging.getLogger(__name__)

# Larger values are never decoded: a record of ours is a few hundred bytes, a
# NetworkPolicy a few KiB; anything past this is somebody's garbage (counted, rejected).
MAX_OBJECT_BYTES = 256 * 1024


@dataclass(frozen=True)
class KV:
    key: str
    value: bytes
    mod_revision: int
    create_revision: int = 0
    lease: int = 0


@dataclass(frozen=True)
class Change:
    """One key's change in a watch: ``value`` None when it was deleted (``prev`` is what
    it held, when etcd still had it)."""
    key: str
    value: bytes | None
    mod_revision: int
    prev: bytes | None = None


@dataclass
class ChangeBatch:
    """One watch answer. After a compaction the prefix is re-listed: ``snapshot`` holds
    every key then, and ``changes`` is empty."""
    revision: int
    changes: list[Change] = field(default_factory=list)
    snapshot: list[KV] | None = None


def _kv(raw: object) -> KV:
    k = raw  # a kv_pb2.KeyValue
    return KV(k.key.decode("utf-8", "surrogateescape"), bytes(k.value),  # type: ignore[attr-defined]
              int(k.mod_revision), int(k.create_revision), int(k.lease))  # type: ignore[attr-defined]


class ObjectStore:
    """The cluster's objects, through ``registry``'s client (shared, thread-safe)."""

    def __init__(self, registry: EtcdRegistry):
        self.registry = registry
        self.prefix = registry.prefix
        self.etcd = registry.etcd

    def _txn(self, what: str, compare: list[object], success: list[object],
             failure: list[object] | None = None) -> etcdrpc.TxnResponse:
        def op(c: MultiEndpointEtcd3Client) -> etcdrpc.TxnResponse:
            txn = etcdrpc.TxnRequest(compare=[cmp.build_message() for cmp in compare],  # type: ignore[attr-defined]
                                     success=success, failure=failure or [])
            return c.kvstub.Txn(txn, c.timeout, credentials=c.call_credentials,
                                metadata=c.metadata)
        return self.etcd.call(what, op)

    # -- reads --------------------------------------------------------------------
    def list(self, base: str) -> tuple[list[KV], int]:
        """Every key under ``base`` and the store revision they were read at."""
        def op(c: MultiEndpointEtcd3Client) -> tuple[list[KV], int]:
            resp = c.get_prefix_response(base)
            return [_kv(k) for k in resp.kvs], int(resp.header.revision)
        return self.etcd.call(f"listing {base}", op)

    def get(self, key: str) -> KV | None:
        def op(c: MultiEndpointEtcd3Client) -> KV | None:
            resp = c.get_response(key)
            return _kv(resp.kvs[0]) if resp.kvs else None
        return self.etcd.call(f"reading {key}", op)

    # -- writes -------------------------------------------------------------------
    def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Write unconditionally; the new revision."""
        resp = self._txn(f"writing {key}", [], [etcdrpc.RequestOp(
            request_put=etcdrpc.PutRequest(key=key.encode(), value=value, lease=lease))])
        return int(resp.header.revision)

    def create(self, key: str, value: bytes, lease: int = 0) -> tuple[bool, KV | None]:
        """Write only if ``key`` is absent: (True, None), or (False, what it holds)."""
        resp = self._txn(
            f"creating {key}", [pyetcd.transactions.Version(key) == 0],
            [etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(key=key.encode(), value=value,
                                                              lease=lease))],
            [etcdrpc.RequestOp(request_range=etcdrpc.RangeRequest(key=key.encode()))])
        if resp.succeeded:
            return True, None
        kvs = list(resp.responses[0].response_range.kvs)
        return False, (_kv(kvs[0]) if kvs else None)

    def replace(self, key: str, value: bytes, mod_revision: int, lease: int = 0) -> bool:
        """Write only if ``key`` is unchanged since ``mod_revision`` (compare-and-swap)."""
        resp = self._txn(
            f"updating {key}", [pyetcd.transactions.Mod(key) == mod_revision],
            [etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(key=key.encode(), value=value,
                                                              lease=lease))])
        return bool(resp.succeeded)

    def delete(self, key: str, mod_revision: int | None = None) -> bool:
        """Delete ``key`` (only if unchanged since ``mod_revision`` when given); False when
        there was nothing, or nothing unchanged, to delete."""
        compare = (pyetcd.transactions.Mod(key) == mod_revision if mod_revision
                   else pyetcd.transactions.Version(key) > 0)
        resp = self._txn(f"deleting {key}", [compare], [etcdrpc.RequestOp(
            request_delete_range=etcdrpc.DeleteRangeRequest(key=key.encode()))])
        return bool(resp.succeeded)

    # -- short leases (heartbeats) ------------------------------------------------
    def grant(self, ttl: int) -> int:
        """A new etcd lease of ``ttl`` seconds (ID chosen here, retry-safe)."""
        return self.registry._grant(ttl, f"granting a {ttl}s etcd lease")

    def keepalive(self, lease_id: int) -> int:
        """Refresh ``lease_id``; its remaining TTL, 0 if it is gone."""
        def op(c: MultiEndpointEtcd3Client) -> int:
            return max((int(r.TTL) for r in c.refresh_lease(lease_id)), default=0)
        return self.etcd.call(f"refreshing etcd lease {lease_id:x}", op)

    def revoke(self, lease_id: int) -> None:
        self.registry._revoke_quietly(lease_id)

    # -- watch --------------------------------------------------------------------
    def watch(self, base: str, start_revision: int, stop: threading.Event,
              on_error: Callable[[RegistryError], None] | None = None
              ) -> Iterator[ChangeBatch]:
        """Changes under ``base`` from ``start_revision`` on, until ``stop`` is set; a
        broken stream is resumed, a compacted one re-listed (``snapshot``)."""
        key = base.encode()

        def batches(stream: _WatchStream) -> Iterator[tuple[ChangeBatch, int]]:
            for resp in stream.responses(f"watching {base}"):
                changes = []
                rev = 0
                for ev in resp.events:
                    kv = ev.kv
                    rev = max(rev, int(kv.mod_revision))
                    name = kv.key.decode("utf-8", "surrogateescape")
                    if ev.type == kv_pb2.Event.PUT:
                        changes.append(Change(name, bytes(kv.value), int(kv.mod_revision)))
                    else:
                        prev = bytes(ev.prev_kv.value) if ev.HasField("prev_kv") else None
                        changes.append(Change(name, None, int(kv.mod_revision), prev))
                if changes:
                    yield ChangeBatch(rev, changes), rev

        def relist(stream: _WatchStream, next_rev: int) -> tuple[ChangeBatch, int]:
            kvs, rev = self.list(base)
            log.warning("watch of %s: revision %d was compacted; re-listed %d keys at %d",
                        base, next_rev, len(kvs), rev)
            return ChangeBatch(rev, snapshot=kvs), rev

        return self.registry._resumed_watch(
            f"watch of {base}", start_revision, stop, on_error,
            lambda rev: _WatchStream(self.registry, rev, stop, key=key,
                                     range_end=pyetcd.utils.prefix_range_end(key)),
            batches, relist)
