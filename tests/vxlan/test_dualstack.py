"""The dual-stack backend: IPv6 halves of leases, their entries, batches and reconciles
(fake data planes, no root)."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)

from overlay.lease import Lease, LeaseAttrs, LeaseBatch
from overlay.vxlan.backend import BackendSettings, VXLANBackend
from overlay.vxlan.dualstack import DualStackBackend, v6_batch
from overlay.vxlan.entries import FDB, Neigh, Route, entries_for, skip_reason, v6_half

from .test_backend import FakeDataPlane

S4 = BackendSettings(1, IPv4Address("192.168.1.11"), IPv4Interface("192.168.1.11/24"))
S6 = BackendSettings(1, IPv6Address("fd00:192:168:1::11"),
                     IPv6Interface("fd00:192:168:1::11/64"))


def dual(n: int, mac6: str | None = None, public6: str | None = None, v6: bool = True) -> Lease:
    """Node ``n``'s lease: 10.244.n.0/24 and, with ``v6``, fd00:10:244:n::/64."""
    attrs = LeaseAttrs(IPv4Address(f"192.168.1.{10 + n}"), "vxlan", 1, f"0e:00:00:00:04:{n:02x}")
    sub6 = None
    if v6:
        attrs = replace(attrs, public_ipv6=IPv6Address(public6 or f"fd00:192:168:1::{10 + n}"),
                        v6_vni=1, v6_vtep_mac=mac6 or f"0e:00:00:00:06:{n:02x}")
        sub6 = IPv6Network(f"fd00:10:244:{n}::/64")
    return Lease(IPv4Network(f"10.244.{n}.0/24"), attrs, ipv6_subnet=sub6)


def backends() -> tuple[DualStackBackend, FakeDataPlane, FakeDataPlane]:
    dp4, dp6 = FakeDataPlane(), FakeDataPlane()
    return DualStackBackend(dp4, S4, VXLANBackend(dp6, S6)), dp4, dp6


def v6_entries(n: int, mac: str | None = None, public: str | None = None) -> set:
    gw = IPv6Address(f"fd00:10:244:{n}::")
    mac = mac or f"0e:00:00:00:06:{n:02x}"
    return {Neigh(gw, mac), FDB(mac, IPv6Address(public or f"fd00:192:168:1::{10 + n}")),
            Route(IPv6Network(f"fd00:10:244:{n}::/64"), gw)}


def test_entries_of_a_dual_stack_lease_ipv6_half():
    """Contract D: neigh VTEP address -> v6 MAC, FDB v6 MAC -> PublicIPv6, route of the
    IPv6 subnet via the VTEP address, in that order (route last)."""
    half = v6_half(dual(2))
    assert half is not None
    es = entries_for(half, S6)
    assert es == [Neigh(IPv6Address("fd00:10:244:2::"), "0e:00:00:00:06:02"),
                  FDB("0e:00:00:00:06:02", IPv6Address("fd00:192:168:1::12")),
                  Route(IPv6Network("fd00:10:244:2::/64"), IPv6Address("fd00:10:244:2::"))]
    # the IPv4 half is untouched by the dual-stack fields
    assert {type(e.ip if isinstance(e, Neigh) else e.dst) for e in entries_for(dual(2), S4)
            if not isinstance(e, FDB)} <= {IPv4Address, IPv4Network}


def test_no_ipv6_half_no_ipv6_entries():
    assert v6_half(dual(3, v6=False)) is None
    no_public = replace(dual(3), attrs=replace(dual(3).attrs, public_ipv6=None))
    assert v6_half(no_public) is None


def test_ipv6_direct_routing_on_the_same_link_and_own_public_ipv6_skipped():
    s6 = replace(S6, direct_routing=True)
    near, far = v6_half(dual(2)), v6_half(dual(3, public6="fd00:99::3"))
    assert near is not None and far is not None
    assert entries_for(near, s6) == [Route(IPv6Network("fd00:10:244:2::/64"),
                                           IPv6Address("fd00:192:168:1::12"), direct=True)]
    assert len(entries_for(far, s6)) == 3  # another link: through overlay-v6
    mine = v6_half(dual(4, public6="fd00:192:168:1::11"))
    assert mine is not None and entries_for(mine, S6) == []
    assert "our own" in (skip_reason(mine, S6) or "")


def test_ipv6_half_of_another_vni_is_skipped():
    lease = dual(2)
    other = replace(lease, attrs=replace(lease.attrs, v6_vni=7))
    half = v6_half(other)
    assert half is not None and entries_for(half, S6) == []


def test_dual_stack_reconcile_programs_both_devices_and_removes_only_stale():
    b, dp4, dp6 = backends()
    res = b.reconcile([dual(2), dual(3), dual(4, v6=False)])
    assert res.added == 9 + 6 and not res.failed
    assert set(dp6.state.all()) == v6_entries(2) | v6_entries(3)
    assert len(dp4.state) == 9 and b.entry_count() == 15
    # drift on the IPv6 device: a stale neighbour of a vanished peer, a missing route
    stale = Neigh(IPv6Address("fd00:10:244:9::"), "0e:00:00:00:06:09")
    dp6.state.add(stale)
    del dp6.state.routes[IPv6Network("fd00:10:244:3::/64")]
    res = b.reconcile()
    assert (res.added, res.removed) == (1, 1)
    assert set(dp6.state.all()) == v6_entries(2) | v6_entries(3)
    assert b.reconcile().added == 0


def test_batches_ipv6_half_added_changed_and_removed():
    b, dp4, dp6 = backends()
    b.reconcile([dual(2, v6=False)])
    assert len(dp6.state) == 0
    # IPv6 enabled on a running cluster: the same IPv4 subnet gains its IPv6 half
    b.apply_batch(LeaseBatch(changed=((dual(2, v6=False), dual(2)),)))
    assert set(dp6.state.all()) == v6_entries(2) and len(dp4.state) == 3
    ops4 = len(dp4.log)
    # only the IPv6 VTEP MAC changes: IPv4 untouched, the v6 neigh and FDB follow
    new_mac = "0e:00:00:00:06:f2"
    b.apply_batch(LeaseBatch(changed=((dual(2), dual(2, mac6=new_mac)),)))
    assert set(dp6.state.all()) == v6_entries(2, mac=new_mac)
    assert len(dp4.log) == ops4
    # the lease goes: both halves' entries go
    b.apply_batch(LeaseBatch(removed=(dual(2, mac6=new_mac),)))
    assert len(dp6.state) == 0 and len(dp4.state) == 0


def test_v6_batch_maps_each_kind_of_change():
    a, b_ = dual(2), dual(3)
    moved = replace(a, ipv6_subnet=IPv6Network("fd00:10:244:99::/64"))
    batch = v6_batch(LeaseBatch(added=(a, dual(4, v6=False)), removed=(b_,),
                                changed=((dual(5), dual(5, v6=False)), (a, moved),
                                         (dual(6), replace(dual(6), mod_revision=9)))))
    assert [h.subnet for h in batch.added] == [IPv6Network("fd00:10:244:2::/64"),
                                               IPv6Network("fd00:10:244:99::/64")]
    assert sorted(str(h.subnet) for h in batch.removed) == [
        "fd00:10:244:2::/64", "fd00:10:244:3::/64", "fd00:10:244:5::/64"]
    assert batch.changed == ()  # dual(6): the IPv6 half did not change


def test_failures_and_conflicts_of_either_family_are_the_backends():
    """The reconcile loop retries within 1 s while ``failed`` is non-empty and the gauges
    count ``failed``/``conflicts``: an IPv6 remote that fails counts, and clears."""
    from overlay.vxlan.entries import OtherRoute
    b, dp4, dp6 = backends()
    bad = Route(IPv6Network("fd00:10:244:3::/64"), IPv6Address("fd00:10:244:3::"))
    dp6.fail.add(bad)
    dp6.others[IPv6Network("fd00:10:244:2::/64")] = OtherRoute(
        IPv6Network("fd00:10:244:2::/64"), "static")
    res = b.reconcile([dual(2), dual(3)])
    assert res.failed == (IPv6Network("fd00:10:244:3::/64"),)
    assert b.failed == {IPv6Network("fd00:10:244:3::/64")}
    assert set(b.conflicts) == {IPv6Network("fd00:10:244:2::/64")}
    assert len(dp4.state) == 6  # IPv4 unaffected
    # an IPv4 failure is counted beside it, and neither leaks into the other family
    dp4.fail.add(Route(IPv4Network("10.244.4.0/24"), IPv4Address("10.244.4.0")))
    b.reconcile([dual(2), dual(3), dual(4, v6=False)])
    assert b.failed == {IPv6Network("fd00:10:244:3::/64"), IPv4Network("10.244.4.0/24")}
    assert b.v6.failed == {IPv6Network("fd00:10:244:3::/64")}
    dp6.fail.clear()
    dp4.fail.clear()
    del dp6.others[IPv6Network("fd00:10:244:2::/64")]
    b.reconcile()
    assert b.failed == set() and b.conflicts == {}
    assert set(dp6.state.all()) == v6_entries(2) | v6_entries(3)
