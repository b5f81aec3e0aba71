"""Who holds a live heartbeat: the rule behind refusing a node name in use."""

import json
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv4Network

from overlay.cluster.nodes import NodeRecord
from overlay.daemon.nodestatus import Identity, holder_of

ME = Identity(IPv4Address("192.168.1.11"), "0e:00:00:00:00:01")
RECORD = NodeRecord("node1", IPv4Address("192.168.1.12"), IPv4Network("10.244.2.0/24"),
                    "0e:00:00:00:00:02", "0.1.0", datetime(2026, 12, 2, tzinfo=UTC), True)


def test_the_heartbeat_says_who_holds_it():
    assert holder_of(ME.encode(), None, "node1") == ME
    assert holder_of(ME.encode(), RECORD.encode(), "node1") == ME  # the live key wins


def test_an_unreadable_heartbeat_falls_back_to_the_record_then_to_nobody():
    other = Identity(RECORD.public_ip, RECORD.vtep_mac)
    assert holder_of(b"{}", RECORD.encode(), "node1") == other
    assert holder_of(b"\xff", RECORD.encode(), "node1") == other
    assert holder_of(json.dumps({"public_ip": "nope", "vtep_mac": "x"}).encode(), None,
                     "node1") is None
    assert holder_of(b"{}", b"garbage", "node1") is None
    assert holder_of(b"{}", RECORD.encode(), "node2") is None  # not that name's record


def test_a_round_probes_full_size_then_small_only_the_silent():
    from overlay.daemon.nodestatus import check_peers
    from overlay.diagnose.probe import Echo
    from overlay.lease import Lease, LeaseAttrs
    from overlay.vxlan.entries import Entries

    leases = [Lease(IPv4Network(f"10.244.{i}.0/24"),
                    LeaseAttrs(IPv4Address(f"192.168.1.{10 + i}"))) for i in (2, 3, 4)]
    calls = []

    def echo(targets, size, count, timeout):
        calls.append((sorted(str(t) for t in targets), size, count))
        answers = {"10.244.2.0": 2, "10.244.3.0": 0 if size > 56 else 1, "10.244.4.0": 0}
        return {t: Echo(count, min(count, answers[str(t)])) for t in targets}

    checks = check_peers(leases, 1450, lambda lease: [], Entries(), echo)
    assert calls == [(["10.244.2.0", "10.244.3.0", "10.244.4.0"], 1422, 2),
                     (["10.244.3.0", "10.244.4.0"], 56, 1)]
    assert [(c.full_answered, c.small_answered) for c in checks] == [
        (True, None), (False, True), (False, False)]
