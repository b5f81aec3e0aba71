"""The health mesh's cause rule, its summary (rewritten only on change) and the matrix."""

from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv4Network

from overlay.cluster.mesh import (
    MAX_BROKEN_LISTED,
    MTU,
    NO_ANSWER,
    STALE_VTEP,
    MeshMember,
    PeerCheck,
    broken_pairs,
    cause_of,
    kernel_vtep_problem,
    matrix,
    record_vtep_problem,
    summarize,
)
from overlay.vxlan.entries import FDB, Entries, Neigh, Route

T0 = datetime(2026, 12, 2, 14, 0, 0, tzinfo=UTC)
MAC = "0e:00:00:00:00:02"
NET = IPv4Network("10.244.2.0/24")
PUB = IPv4Address("192.168.1.12")


def check(net=NET, full=True, small=None, vtep=None, i=0) -> PeerCheck:
    return PeerCheck(net, IPv4Address(int(PUB) + i), 1422, full, small, "", vtep)


def cause(c: PeerCheck) -> str:
    found = cause_of(c)
    assert found is not None
    return found[0]


def text(problem: str | None) -> str:
    assert problem is not None
    return problem


def test_causes_most_specific_first():
    assert cause_of(check()) is None
    assert cause(check(full=False, small=True)) == MTU
    assert cause(check(full=False, small=False)) == NO_ANSWER
    assert cause(check(full=True, vtep="neighbour differs")) == STALE_VTEP
    assert cause(check(full=False, small=False, vtep="x")) == STALE_VTEP


def want() -> list:
    return [Neigh(NET.network_address, MAC), FDB(MAC, PUB), Route(NET, NET.network_address)]


def test_kernel_vtep_problem_compares_neigh_and_fdb_with_the_lease():
    good = Entries()
    for e in want():
        good.add(e)
    assert kernel_vtep_problem(want(), good) is None
    wrong_neigh = Entries()
    wrong_neigh.add(Neigh(NET.network_address, "0e:00:00:00:00:99"))
    wrong_neigh.add(FDB(MAC, PUB))
    assert "0e:00:00:00:00:99" in text(kernel_vtep_problem(want(), wrong_neigh))
    wrong_fdb = Entries()
    wrong_fdb.add(Neigh(NET.network_address, MAC))
    wrong_fdb.add(FDB(MAC, IPv4Address("192.168.1.50")))
    assert "192.168.1.50" in text(kernel_vtep_problem(want(), wrong_fdb))
    assert "missing" in text(kernel_vtep_problem(want(), Entries()))
    # a DirectRouting peer wants a route only: nothing to compare
    assert kernel_vtep_problem([Route(NET, PUB, direct=True)], Entries()) is None


def test_record_vtep_problem():
    assert record_vtep_problem(MAC, MAC) is None
    assert record_vtep_problem(MAC, None) is None
    assert "0e:00:00:00:00:07" in text(record_vtep_problem(MAC, "0e:00:00:00:00:07"))


def test_summary_keeps_since_and_is_the_same_object_when_unchanged():
    s1 = summarize([check(), check(IPv4Network("10.244.3.0/24"), full=False, small=False)],
                   None, T0)
    assert (s1.peers_total, s1.peers_reachable) == (2, 1)
    assert [(str(b.subnet), b.cause, b.since) for b in s1.broken] == [
        ("10.244.3.0/24", NO_ANSWER, T0)]
    later = T0 + timedelta(seconds=10)
    s2 = summarize([check(), check(IPv4Network("10.244.3.0/24"), full=False, small=False)],
                   s1, later)
    assert s2 is s1  # nothing to write
    s3 = summarize([check(), check(IPv4Network("10.244.3.0/24"), full=False, small=True)],
                   s2, later)
    assert s3 is not s1 and s3.broken[0].cause == MTU and s3.broken[0].since == later
    s4 = summarize([check(), check(IPv4Network("10.244.3.0/24"))], s3, later)
    assert (s4.peers_reachable, s4.broken, s4.since) == (2, (), later)


def test_summary_lists_a_bounded_number_of_broken_peers():
    checks = [check(IPv4Network(f"10.{i // 256}.{i % 256}.0/24"), full=False, small=False, i=i)
              for i in range(1000)]
    s = summarize(checks, None, T0)
    assert (s.peers_total, s.peers_reachable, len(s.broken)) == (1000, 0, MAX_BROKEN_LISTED)


def member(name: str, third: int, live=True, broken=(), vtep=None) -> MeshMember:
    checks = [check(IPv4Network(f"10.244.{t}.0/24"), full=t not in broken, small=False)
              for t in (1, 2, 3) if t != third]
    return MeshMember(name, IPv4Network(f"10.244.{third}.0/24"), live,
                      summarize(checks, None, T0), vtep)


def test_matrix_names_the_broken_pairs_and_unknown_for_dead_probers():
    found = [member("node1", 1, broken=(3,)), member("node2", 2, broken=(3,)),
             member("node3", 3, broken=(1, 2))]
    cells, pairs = matrix(found), broken_pairs(found)
    assert cells["node1"]["node2"].state == "ok" and cells["node1"]["node3"].state == "broken"
    assert "node1" not in cells["node1"]
    assert {(p.source, p.target) for p in pairs} == {
        ("node1", "node3"), ("node2", "node3"), ("node3", "node1"), ("node3", "node2")}
    found = [member("node1", 1), member("node2", 2, live=False, broken=(1,))]
    cells, pairs = matrix(found), broken_pairs(found)
    assert cells["node2"]["node1"].state == "unknown" and pairs == []


def test_broken_pairs_are_exactly_the_broken_cells():
    found = [member("node1", 1, broken=(2, 3)), member("node2", 2, broken=(1,)),
             member("node3", 3, live=False, broken=(1,), vtep="stale")]
    cells = matrix(found)
    from_cells = {(s, t, c.cause) for s, row in cells.items() for t, c in row.items()
                  if c.state == "broken"}
    assert {(p.source, p.target, p.cause) for p in broken_pairs(found)} == from_cells
    assert ("node1", "node3", STALE_VTEP) in from_cells


def test_matrix_marks_a_stale_record_mac_as_stale_vtep_from_everyone():
    found = [member("node1", 1), member("node2", 2, vtep="record differs")]
    cells, pairs = matrix(found), broken_pairs(found)
    assert cells["node1"]["node2"].cause == STALE_VTEP
    assert [(p.source, p.target, p.cause) for p in pairs] == [("node1", "node2", STALE_VTEP)]
