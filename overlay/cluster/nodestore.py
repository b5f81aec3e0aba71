"""Node records and heartbeats in etcd, over the ``ObjectStore``: read them all (judged by
``overlay.cluster.nodes.judge_node``) and delete one node's objects.

Shared by ``overlayctl nodes`` / ``connectivity`` and the benchmark; the daemon's agent
(``overlay.daemon.nodestatus``) writes its own node's objects.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from overlay.cluster.keys import (
    heartbeat_key,
    heartbeats_prefix,
    node_key,
    nodes_prefix,
    split_single,
)
from overlay.cluster.nodes import NodeRecord, NodeRejection, NodeStatus, judge_node
from overlay.errors import OverlayError
from overlay.lease import IPNetwork, Lease

if TYPE_CHECKING:  # the etcd client loads only where etcd is opened
    from overlay.cluster.store import ObjectStore

log = logging.getLogger(__name__)


class NodeNameInUse(OverlayError):
    """Another live node holds this node name."""


class NodeNotFound(OverlayError):
    pass


class NodeAlive(OverlayError):
    """A node whose heartbeat is alive cannot be deleted without force."""


@dataclass
class NodeListing:
    statuses: list[NodeStatus] = field(default_factory=list)  # by name
    rejected: list[NodeRejection] = field(default_factory=list)  # by key
    heartbeats: set[str] = field(default_factory=set)  # names with a live heartbeat


def read_heartbeats(store: ObjectStore) -> set[str]:
    """The names whose heartbeat key exists (a key that is not a node name is ignored)."""
    base = heartbeats_prefix(store.prefix)
    kvs, _ = store.list(base)
    return {name for kv in kvs if (name := split_single(kv.key, base)) is not None}


def read_nodes(store: ObjectStore,
               leases: Mapping[IPNetwork, Lease] | None = None) -> NodeListing:
    """Every node record, judged, with its liveness."""
    kvs, _ = store.list(nodes_prefix(store.prefix))
    out = NodeListing(heartbeats=read_heartbeats(store))
    for kv in kvs:
        got = judge_node(kv.key, kv.value, store.prefix, leases, kv.mod_revision)
        if isinstance(got, NodeRecord):
            out.statuses.append(NodeStatus(got, got.name in out.heartbeats))
        else:
            out.rejected.append(got)
    out.statuses.sort(key=lambda s: s.record.name)
    out.rejected.sort(key=lambda r: r.key)
    return out


def delete_node(store: ObjectStore, name: str, force: bool = False) -> tuple[list[str], int]:
    """Delete a node gone for good: its record and heartbeat (the keys deleted) and its
    pods' records (how many).  Refused while its heartbeat is alive unless ``force``;
    forced, the heartbeat's etcd lease is revoked too, so an overlayd still running
    notices at its next keepalive and registers again."""
    from overlay.cluster.pods import delete_pods_of_node

    hb_key, rec_key = heartbeat_key(store.prefix, name), node_key(store.prefix, name)
    hb = store.get(hb_key)
    if hb is not None and not force:
        raise NodeAlive(f"node {name} is alive (its heartbeat is renewed); stop its overlayd "
                        "first, or pass --force")
    deleted = [rec_key] if store.delete(rec_key) else []
    if hb is not None:
        if hb.lease:
            store.revoke(hb.lease)  # the key goes with its lease
        store.delete(hb_key)  # (a heartbeat written without a lease)
        deleted.append(hb_key)
    pods = delete_pods_of_node(store, name)
    if not deleted and not pods:
        raise NodeNotFound(f"no node {name} (see `overlayctl nodes`)")
    log.info("deleted node %s (%s; %d pod record(s))", name, ", ".join(deleted) or "no keys",
             pods)
    return deleted, pods
