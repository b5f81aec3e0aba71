"""The node record: codec round trip, the one acceptance rule, and the STATUS rule."""

import json
from dataclasses import replace
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv4Network

import pytest

from overlay.cluster.mesh import BrokenPeer, MeshSummary
from overlay.cluster.nodes import (
    MAX_RECORD_BYTES,
    NodeRecord,
    NodeRejection,
    NodeStatus,
    Reason,
    judge_node,
)
from overlay.lease import Lease, LeaseAttrs

PREFIX = "/overlay/network"
KEY = f"{PREFIX}/nodes/node1"
T0 = datetime(2026, 12, 2, 14, 0, 0, tzinfo=UTC)

RECORD = NodeRecord(
    "node1", IPv4Address("192.168.1.11"), IPv4Network("10.244.1.0/24"), "0e:00:00:00:00:01",
    "0.1.0", T0, True, "", 10, 10.0,
    MeshSummary(2, 1, (BrokenPeer(IPv4Network("10.244.3.0/24"), IPv4Address("192.168.1.13"),
                                  "no-answer", T0, "no answer"),), T0))


def value(**changes) -> bytes:
    d = RECORD.to_dict()
    d.update(changes)
    return json.dumps(d).encode()


def test_round_trip_keeps_everything():
    assert judge_node(KEY, RECORD.encode(), PREFIX) == RECORD
    no_mesh = replace(RECORD, mesh=None, ready=False, reason="no subnet lease yet")
    assert judge_node(KEY, no_mesh.encode(), PREFIX) == no_mesh


@pytest.mark.parametrize("key", [f"{PREFIX}/nodes/Node1", f"{PREFIX}/nodes/a/b",
                                 f"{PREFIX}/nodes/", f"{PREFIX}/nodesX/node1",
                                 f"{PREFIX}/nodes/node1\n"])
def test_a_bad_key_is_rejected(key):
    got = judge_node(key, RECORD.encode(), PREFIX)
    assert isinstance(got, NodeRejection) and got.reason == Reason.BAD_KEY


@pytest.mark.parametrize(("changes", "reason"), [
    ({"name": "node2"}, Reason.NAME_MISMATCH),
    ({"public_ip": "127.0.0.1"}, Reason.PUBLIC_IP_UNUSABLE),
    ({"public_ip": "224.0.0.1"}, Reason.PUBLIC_IP_UNUSABLE),
    ({"public_ip": "169.254.169.254"}, Reason.PUBLIC_IP_UNUSABLE),
    ({"public_ip": "1.2.3"}, Reason.BAD_VALUE),
    ({"subnet": "10.244.1.1/24"}, Reason.BAD_VALUE),
    ({"vtep_mac": "01:00:5e:00:00:01"}, Reason.VTEP_MAC_UNUSABLE),
    ({"vtep_mac": "00:00:00:00:00:00"}, Reason.VTEP_MAC_UNUSABLE),
    ({"vtep_mac": "zz"}, Reason.VTEP_MAC_UNUSABLE),
    ({"ready": 1}, Reason.BAD_VALUE),
    ({"heartbeat_ttl": True}, Reason.BAD_VALUE),
    ({"heartbeat_ttl": 0}, Reason.BAD_VALUE),
    ({"version": "x" * 300}, Reason.BAD_VALUE),
    ({"version": "1.0\x1b[2J"}, Reason.BAD_VALUE),  # an escape sequence for the terminal
    ({"reason": "ok\rReady"}, Reason.BAD_VALUE),
    ({"reason": "two\nlines"}, Reason.BAD_VALUE),
    ({"started_at": "yesterday"}, Reason.BAD_VALUE),
    ({"started_at": "2026-12-02T14:00:00"}, Reason.BAD_VALUE),
    ({"mesh": {"peers_total": 1, "peers_reachable": 2, "broken": [], "since": "x"}},
     Reason.BAD_VALUE),
    ({"mesh": {"peers_total": 2, "peers_reachable": 2, "since": "2026-12-02T14:00:00Z",
               "broken": [{"subnet": "10.244.3.0/24", "public_ip": "192.168.1.13",
                           "cause": "no-answer", "since": "2026-12-02T14:00:00Z",
                           "detail": ""}]}}, Reason.BAD_VALUE),
    ({"mesh": {"peers_total": 2, "peers_reachable": 1, "since": "2026-12-02T14:00:00Z",
               "broken": [{"subnet": "10.244.3.0/24", "public_ip": "192.168.1.13",
                           "cause": "gremlins", "since": "2026-12-02T14:00:00Z",
                           "detail": ""}]}}, Reason.BAD_VALUE),
])
def test_each_bad_field_is_rejected_with_its_reason(changes, reason):
    got = judge_node(KEY, value(**changes), PREFIX, mod_revision=7)
    assert isinstance(got, NodeRejection), got
    assert (got.reason, got.mod_revision) == (reason, 7)
    assert "\n" not in got.detail


@pytest.mark.parametrize("raw", [b"", b"[]", b"{", b"\xff", b"[" * 60000, b"null"])
def test_garbage_is_rejected_never_raised(raw):
    got = judge_node(KEY, raw, PREFIX)
    assert isinstance(got, NodeRejection) and got.reason == Reason.BAD_VALUE


def test_a_huge_value_is_rejected_before_decoding():
    got = judge_node(KEY, b" " * (MAX_RECORD_BYTES + 1), PREFIX)
    assert isinstance(got, NodeRejection) and got.reason == Reason.VALUE_TOO_LARGE


def lease(subnet: str, ip: str) -> Lease:
    return Lease(IPv4Network(subnet), LeaseAttrs(IPv4Address(ip), vtep_mac="0e:00:00:00:00:09"))


def test_a_record_claiming_another_nodes_lease_is_rejected():
    leases = {lease.subnet: lease for lease in [lease("10.244.1.0/24", "192.168.1.99")]}
    got = judge_node(KEY, RECORD.encode(), PREFIX, leases)
    assert isinstance(got, NodeRejection) and got.reason == Reason.SUBNET_TAKEN
    ours = {lease.subnet: lease for lease in [lease("10.244.1.0/24", "192.168.1.11")]}
    assert judge_node(KEY, RECORD.encode(), PREFIX, ours) == RECORD
    assert judge_node(KEY, RECORD.encode(), PREFIX, {}) == RECORD  # lease expired: kept


def test_ready_needs_the_record_and_the_heartbeat():
    assert NodeStatus(RECORD, heartbeat=True).status == "Ready"
    assert NodeStatus(RECORD, heartbeat=True).reason == ""
    dead = NodeStatus(RECORD, heartbeat=False)
    assert (dead.status, dead.reason) == ("NotReady", "no heartbeat for over 10s")
    stopped = NodeStatus(replace(RECORD, ready=False, reason="overlayd stopped"), False)
    assert (stopped.status, stopped.reason) == ("NotReady", "overlayd stopped")
    starting = NodeStatus(replace(RECORD, ready=False, reason="no subnet lease yet"), True)
    assert (starting.status, starting.reason) == ("NotReady", "no subnet lease yet")
