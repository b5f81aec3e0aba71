"""Raw access to the cluster's JSON objects in etcd (nodes, heartbeats, pods, ...):
list, get, create, compare-and-swap, delete, short leases, and a resumed prefix watch.

Storage only, like ``overlay.subnet.registry`` whose etcd client, error translation and
re-watch loop it reuses: values are bytes, and every caller decodes and validates them by
its kind's one rule (``overlay.cluster.keys`` for the key, the kind's module for the
value). Errors are ``EtcdUnavailable`` / ``RegistryError`` as everywhere.
"""

from __future__ import annotations

import builtins
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from overlay.errors import RegistryError
from overlay.subnet import etcdhttp as gw
from overlay.subnet.etcd import EtcdAPI, TxnResult, op_delete, op_put, op_range
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


def _kv(k: gw.KeyValue) -> KV:
    return KV(k.key.decode("utf-8", "surrogateescape"), k.value, k.mod_revision,
              k.create_revision, k.lease)


GET_MANY = 64  # keys per txn (etcd refuses a txn of more than --max-txn-ops, 128 by default)


class ObjectStore:
    """The cluster's objects, through ``registry``'s client (shared, thread-safe)."""

    def __init__(self, registry: EtcdRegistry):
        self.registry = registry
        self.prefix = registry.prefix
        self.etcd = registry.etcd

    def _txn(self, what: str, compare: list[dict[str, Any]], success: list[dict[str, Any]],
             failure: list[dict[str, Any]] | None = None) -> TxnResult:
        return self.etcd.call(what, lambda c: c.txn(compare, success, failure))

    # -- reads --------------------------------------------------------------------
    def list(self, base: str) -> tuple[list[KV], int]:
        """Every key under ``base`` and the store revision they were read at."""
        def op(c: EtcdAPI) -> tuple[list[KV], int]:
            kvs, rev = c.range_all(base)
            return [_kv(k) for k in kvs], rev
        return self.etcd.call(f"listing {base}", op)

    def get(self, key: str) -> KV | None:
        def op(c: EtcdAPI) -> KV | None:
            kvs, _ = c.get_response(key)
            return _kv(kvs[0]) if kvs else None
        return self.etcd.call(f"reading {key}", op)

    def get_many(self, keys: Sequence[str]) -> builtins.list[KV]:
        """The keys of ``keys`` that exist, in that order: one read-only txn per GET_MANY
        keys (a round trip and a request for etcd, instead of one per key)."""
        out: builtins.list[KV] = []
        for i in range(0, len(keys), GET_MANY):
            chunk = keys[i:i + GET_MANY]
            resp = self._txn(f"reading {len(chunk)} key(s) from {chunk[0]}", [],
                             [op_range(k) for k in chunk])
            out += [_kv(kvs[0]) for kvs in resp.kvs if kvs]
        return out

    # -- writes -------------------------------------------------------------------
    def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Write unconditionally; the new revision."""
        return self._txn(f"writing {key}", [], [op_put(key, value, lease)]).revision

    def create(self, key: str, value: bytes, lease: int = 0) -> tuple[bool, KV | None]:
        """Write only if ``key`` is absent: (True, None), or (False, what it holds)."""
        resp = self._txn(f"creating {key}", [gw.compare(key, "VERSION", 0)],
                         [op_put(key, value, lease)], [op_range(key)])
        if resp.succeeded:
            return True, None
        kvs = resp.kvs[0] if resp.kvs else []
        return False, (_kv(kvs[0]) if kvs else None)

    def replace(self, key: str, value: bytes, mod_revision: int, lease: int = 0) -> bool:
        """Write only if ``key`` is unchanged since ``mod_revision`` (compare-and-swap)."""
        resp = self._txn(f"updating {key}", [gw.compare(key, "MOD", mod_revision)],
                         [op_put(key, value, lease)])
        return bool(resp.succeeded)

    def delete(self, key: str, mod_revision: int | None = None) -> bool:
        """Delete ``key`` (only if unchanged since ``mod_revision`` when given); False when
        there was nothing, or nothing unchanged, to delete."""
        compare = (gw.compare(key, "MOD", mod_revision) if mod_revision
                   else gw.compare(key, "VERSION", 0, "GREATER"))
        resp = self._txn(f"deleting {key}", [compare], [op_delete(key)])
        return bool(resp.succeeded)

    # -- short leases (heartbeats) ------------------------------------------------
    def grant(self, ttl: int) -> int:
        """A new etcd lease of ``ttl`` seconds (ID chosen here, retry-safe)."""
        return self.registry._grant(ttl, f"granting a {ttl}s etcd lease")

    def keepalive(self, lease_id: int) -> int:
        """Refresh ``lease_id``; its remaining TTL, 0 if it is gone."""
        return self.etcd.call(f"refreshing etcd lease {lease_id:x}",
                              lambda c: c.keepalive(lease_id))

    def lease_ttl(self, lease_id: int) -> tuple[int, int]:
        """(remaining, granted) seconds of etcd lease ``lease_id``; remaining -1 if gone."""
        return self.etcd.call(f"reading etcd lease {lease_id:x}",
                              lambda c: c.time_to_live(lease_id))

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
            for events in stream.responses(f"watching {base}"):
                changes = []
                rev = 0
                for ev in events:
                    kv = ev.kv
                    rev = max(rev, kv.mod_revision)
                    name = kv.key.decode("utf-8", "surrogateescape")
                    if ev.type == "PUT":
                        changes.append(Change(name, kv.value, kv.mod_revision))
                    else:
                        prev = ev.prev_kv.value if ev.prev_kv is not None else None
                        changes.append(Change(name, None, kv.mod_revision, prev))
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
                                     range_end=gw.prefix_range_end(key)),
            batches, relist)
