"""A node record as overlayd's node agent writes it, for tests that play a node without
running overlayd: readers believe a pod record only inside the subnet of the node record
it names (``overlay.cluster.pods.PodRules.with_nodes``)."""

from __future__ import annotations

from datetime import UTC, datetime

from overlay.cluster.keys import node_key
from overlay.cluster.nodes import NodeRecord
from overlay.lease import IPNetwork, LeaseAttrs


def put_node_record(store, name: str, subnet: IPNetwork, attrs: LeaseAttrs) -> None:
    record = NodeRecord(name, attrs.public_ip, subnet, attrs.vtep_mac or "02:00:00:00:00:01",
                        "test", datetime(2026, 12, 1, tzinfo=UTC), True)
    store.put(node_key(store.prefix, name), record.encode())
