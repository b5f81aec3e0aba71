"""The cluster objects' schema version, recorded in etcd at ``<prefix>/schema``.

Nodes of different releases share one etcd. A node writes ``nodes/``, ``heartbeats/`` and
``pods/`` (and later kinds) only while the recorded version is one it knows: a node that
finds a newer version (or a value it cannot read) says so once and leaves those objects
alone, while its subnet lease and data plane go on as before (``subnets/`` is Flannel's
format and versioned by nobody). An absent record is created with ours; an older one is
raised to ours (compare-and-swap, so two upgrading nodes agree).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from overlay.cluster.keys import schema_key
from overlay.cluster.store import ObjectStore
from overlay.util import jsontext

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class SchemaStatus:
    """What etcd records (``found``: None when unreadable) against what we know."""
    found: int | None
    ours: int = SCHEMA_VERSION
    problem: str = ""

    @property
    def writable(self) -> bool:
        return not self.problem

    def describe(self) -> str:
        return self.problem or f"schema version {self.found}"


def parse_schema(value: bytes) -> int | None:
    """The version in a schema record; None if it is not ``{"version": <int >= 1>}``."""
    try:
        obj = jsontext.loads(value)
    except ValueError:
        return None
    v = obj.get("version") if isinstance(obj, dict) else None
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 1 else None


def _judge(found: int | None, raw: bytes) -> SchemaStatus:
    if found is None:
        return SchemaStatus(None, problem=f"the cluster's schema record is unreadable "
                            f"({raw[:60]!r}); not writing cluster objects")
    if found > SCHEMA_VERSION:
        return SchemaStatus(found, problem=f"the cluster's schema version is {found}, newer "
                            f"than this node's {SCHEMA_VERSION}: upgrade this node; not "
                            "writing cluster objects meanwhile")
    return SchemaStatus(found)


def ensure_schema(store: ObjectStore) -> SchemaStatus:
    """Create or raise the schema record to ours, unless it is newer or unreadable."""
    key = schema_key(store.prefix)
    ours = json.dumps({"version": SCHEMA_VERSION}).encode()
    for _ in range(5):  # lost races only
        created, held = store.create(key, ours)
        if created:
            log.info("recorded cluster schema version %d", SCHEMA_VERSION)
            return SchemaStatus(SCHEMA_VERSION)
        if held is None:
            continue  # deleted meanwhile: create again
        found = parse_schema(held.value)
        if found is not None and found < SCHEMA_VERSION:
            if store.replace(key, ours, held.mod_revision):
                log.info("raised cluster schema version %d -> %d", found, SCHEMA_VERSION)
                return SchemaStatus(SCHEMA_VERSION)
            continue
        status = _judge(found, held.value)
        if status.problem:
            log.warning("%s", status.problem)
        return status
    return read_schema(store)


def read_schema(store: ObjectStore) -> SchemaStatus:
    """The recorded version, judged, without writing (for overlayctl and diagnose)."""
    held = store.get(schema_key(store.prefix))
    if held is None:
        return SchemaStatus(None, problem="no schema version is recorded yet (no overlayd of "
                            "this release has started)")
    return _judge(parse_schema(held.value), held.value)
