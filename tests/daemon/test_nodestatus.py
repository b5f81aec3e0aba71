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


# ---- the heartbeat: keepalives, the record written on change, its read-back --------------

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_agent(record):
    import threading

    from prometheus_client import CollectorRegistry

    from overlay.daemon.nodestatus import AgentMetrics, NodeAgent
    from tests.fakes import FakeObjectStore

    store, clock, current = FakeObjectStore(), Clock(), [record]
    agent = NodeAgent(store, "node1", ME, lambda: current[0], threading.Event(),  # type: ignore[arg-type]
                      AgentMetrics.on(CollectorRegistry()), 5.0, 10.0, refresh=300.0,
                      clock=clock)
    agent.claim()
    return agent, store, clock, current


def beat(agent, clock, times=1):
    """What ``run_heartbeat`` does every period."""
    for _ in range(times):
        agent._beat()
        agent.sync()
        clock.now += agent.period


MINE = NodeRecord("node1", ME.public_ip, IPv4Network("10.244.1.0/24"), ME.vtep_mac, "0.2.0",
                  datetime(2026, 12, 3, tzinfo=UTC), True)


def test_a_steady_node_sends_keepalives_and_writes_its_record_once():
    agent, store, clock, _ = make_agent(MINE)
    assert store.writes() == 1 and store.calls["create"] == 1  # the heartbeat key
    beat(agent, clock, 50)  # 250 s: before the first read-back
    assert store.calls["keepalive"] == 50  # one per period, nothing else
    assert store.writes() == 2  # + the record, once
    assert store.calls["grant"] == 1
    assert store.kvs["/overlay/network/nodes/node1"].value == MINE.encode()


def test_the_record_is_rewritten_when_its_content_changes_only():
    agent, store, clock, current = make_agent(MINE)
    beat(agent, clock, 3)
    writes = store.writes()
    from dataclasses import replace
    current[0] = replace(MINE, ready=False, reason="subnet.env not written")
    beat(agent, clock, 3)
    assert store.writes() == writes + 1 and store.calls["replace"] == 1
    held = store.kvs["/overlay/network/nodes/node1"].value
    assert json.loads(held)["reason"] == "subnet.env not written"


def test_a_lost_heartbeat_lease_is_granted_again_and_the_record_rewritten():
    agent, store, clock, _ = make_agent(MINE)
    beat(agent, clock, 2)
    store.expire(agent.lease_id)  # keepalives stopped reaching etcd for over the TTL
    del store.kvs["/overlay/network/nodes/node1"]  # e.g. `nodes delete --force`
    beat(agent, clock)
    assert store.calls["grant"] == 2
    assert "/overlay/network/heartbeats/node1" in store.kvs
    assert store.kvs["/overlay/network/nodes/node1"].value == MINE.encode()


def test_the_record_is_read_back_slowly_and_repaired_only_when_lost():
    agent, store, clock, _ = make_agent(MINE)
    beat(agent, clock)
    reads, writes = store.calls["get"], store.writes()
    beat(agent, clock, 59)  # 295 s after the write: no read-back yet
    assert (store.calls["get"], store.writes()) == (reads, writes)
    beat(agent, clock)  # 300 s: one read, intact, no write
    assert (store.calls["get"], store.writes()) == (reads + 1, writes)
    del store.kvs["/overlay/network/nodes/node1"]  # deleted by hand, heartbeat alive
    beat(agent, clock, 59)
    assert "/overlay/network/nodes/node1" not in store.kvs  # noticed at the next read-back
    beat(agent, clock)
    assert store.kvs["/overlay/network/nodes/node1"].value == MINE.encode()
    store.put("/overlay/network/nodes/node1", b'{"overwritten": true}')  # changed by hand
    beat(agent, clock, 60)
    assert store.kvs["/overlay/network/nodes/node1"].value == MINE.encode()


def mesh(total, reachable=None, broken=()):
    from overlay.cluster.mesh import MeshSummary
    return MeshSummary(total, total if reachable is None else reachable, broken,
                       datetime(2026, 12, 3, tzinfo=UTC))


def test_a_join_seen_by_a_large_mesh_is_written_late_a_broken_peer_at_once():
    """1000 peers: a change of the counts alone waits 50 s after the last write (every
    node sees a join: N writes at once otherwise); a newly broken peer does not wait."""
    from overlay.cluster.mesh import BrokenPeer
    agent, store, clock, _ = make_agent(MINE)
    agent.mesh = mesh(1000)
    beat(agent, clock)
    writes = store.writes()
    agent.mesh = mesh(1001)  # a node joined
    beat(agent, clock, 9)  # 45 s
    assert store.writes() == writes
    beat(agent, clock, 2)  # 55 s: past the 50 s
    assert store.writes() == writes + 1
    assert json.loads(store.kvs["/overlay/network/nodes/node1"].value)["mesh"][
        "peers_total"] == 1001
    broken = (BrokenPeer(IPv4Network("10.244.9.0/24"), IPv4Address("192.168.1.19"),
                         "no-answer", datetime(2026, 12, 3, tzinfo=UTC)),)
    agent.mesh = mesh(1001, 1000, broken)
    beat(agent, clock)
    assert store.writes() == writes + 2


def test_a_small_mesh_writes_a_join_at_the_next_beat():
    agent, store, clock, _ = make_agent(MINE)
    agent.mesh = mesh(2)
    beat(agent, clock)
    writes = store.writes()
    agent.mesh = mesh(3)
    beat(agent, clock)
    assert store.writes() == writes + 1
