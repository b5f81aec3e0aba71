"""The reconcile's streaming diff (``overlay.vxlan.drift.Wanted``), no kernel: what a dump
marks off, what is left missing and what is stale."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address

from overlay.vxlan.drift import Wanted, ip_of, net_of
from overlay.vxlan.entries import FDB, Entries, Neigh, Route

GW = IPv4Address("10.244.2.0")
NET = IPv4Network("10.244.2.0/24")
PUB = IPv4Address("192.168.1.12")
MAC = "0e:00:00:00:00:02"
MINE = [Neigh(GW, MAC), FDB(MAC, PUB), Route(NET, GW)]


def wanted(entries=MINE) -> Wanted:
    w = Wanted()
    for e in entries:
        w.add(e)
    return w


def seen(w: Wanted, *entries) -> Wanted:
    have = Entries()
    for e in entries:
        have.add(e)
    w.see_all(have)
    return w


def test_everything_in_place_leaves_nothing_to_do():
    w = seen(wanted(), *MINE)
    assert w.missing() == ([], []) and w.stale == []


def test_empty_kernel_misses_everything_in_programming_order():
    first, routes = wanted().missing()
    assert first == MINE[:2] and routes == [MINE[2]]


def test_unwanted_entries_are_stale_and_deleted_routes_first():
    other = [Route(IPv4Network("10.244.9.0/24"), IPv4Address("10.244.9.0")),
             FDB("0e:00:00:00:00:09", IPv4Address("192.168.1.19")),
             Neigh(IPv4Address("10.244.9.0"), "0e:00:00:00:00:09")]
    w = seen(wanted(), *MINE, *reversed(other))
    assert w.missing() == ([], [])
    assert w.stale_in_order() == other


def test_neighbour_with_another_mac_is_replaced_not_deleted():
    w = seen(wanted(), Neigh(GW, "0e:00:00:00:00:99"), *MINE[1:])
    assert w.missing() == ([MINE[0]], []) and w.stale == []


def test_fdb_to_another_vtep_is_stale_and_the_right_one_missing():
    wrong = FDB(MAC, IPv4Address("192.168.1.99"))
    w = seen(wanted(), MINE[0], wrong, MINE[2])
    assert w.missing() == ([MINE[1]], []) and w.stale == [wrong]


def test_route_via_another_gateway_or_device_is_stale_and_missing():
    for wrong in (Route(NET, IPv4Address("10.244.2.1")), Route(NET, GW, direct=True)):
        w = seen(wanted(), *MINE[:2], wrong)
        assert w.missing() == ([], [MINE[2]]) and w.stale == [wrong]


def test_route_key_has_the_prefix_length():
    wider = Route(IPv4Network("10.244.0.0/16"), GW)
    w = seen(wanted([Route(IPv4Network("10.244.0.0/24"), GW)]), wider)
    assert w.stale == [wider] and len(w.missing()[1]) == 1


def test_a_second_route_of_ours_to_a_matched_destination_is_left_alone():
    w = wanted()
    w.see_route(NET.network_address.packed, 24, GW.packed, False)
    w.see_route(NET.network_address.packed, 24, IPv4Address("10.244.2.7").packed, False)
    assert w.stale == [] and w.missing()[1] == []


def test_fdb_shared_by_two_leases_is_one_entry():
    net3 = IPv4Network("10.244.3.0/24")
    w = wanted([*MINE, Neigh(net3.network_address, MAC), FDB(MAC, PUB),
                Route(net3, net3.network_address)])
    assert len(w.fdb) == 1
    w = seen(w, *MINE)
    first, routes = w.missing()
    assert first == [Neigh(net3.network_address, MAC)] and len(routes) == 1


def test_raw_forms_of_both_families():
    assert ip_of(bytes([10, 244, 2, 0])) == GW
    assert ip_of(IPv6Address("fd00::1").packed) == IPv6Address("fd00::1")
    assert net_of(bytes([10, 244, 2, 0]), 24) == NET
    assert str(net_of(IPv6Address("fd00:10:244:2::").packed, 64)) == "fd00:10:244:2::/64"
