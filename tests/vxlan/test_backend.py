"""VXLANBackend policy against a fake data plane (no root, no kernel)."""

from __future__ import annotations

import errno
import logging
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest

from overlay.lease import Lease, LeaseAttrs, LeaseBatch
from overlay.vxlan.backend import BackendSettings, VXLANBackend
from overlay.vxlan.entries import FDB, Entries, Neigh, Op, OtherRoute, Route


class FakeDataPlane:
    """Keeps entries like the kernel would; can be told to fail chosen adds.  ``others``:
    routes of other protocols, which a route add never overwrites (EEXIST, like
    ``VXLANDevice``) and a delete never touches."""

    def __init__(self):
        self.state = Entries()
        self.log: list[Op] = []
        self.fail: set = set()  # entries whose add fails with EINVAL
        self.others: dict = {}

    def program(self, ops):
        out = []
        for op in ops:
            self.log.append(op)
            e = op.entry
            if op.add:
                if e in self.fail:
                    out.append(errno.EINVAL)
                    continue
                if isinstance(e, Route) and e.dst in self.others:
                    out.append(errno.EEXIST)
                    continue
                if isinstance(e, Route) and not e.direct:
                    # route last: its gateway must already resolve through a neigh
                    assert e.gateway in self.state.neighs, f"route before neigh: {e}"
                self.state.add(e)
            else:
                if isinstance(e, Neigh):
                    self.state.neighs.pop(e.ip, None)
                elif isinstance(e, FDB):
                    self.state.fdb.discard(e)
                else:
                    self.state.routes.pop(e.dst, None)
            out.append(0)
        return out

    def dump(self):
        s = Entries()
        for e in self.state.all():
            s.add(e)
        s.others = dict(self.others)
        return s

    def diff(self, want):
        want.see_all(self.dump())
        return dict(self.others)

    def other_routes(self):
        return dict(self.others)


def lease(n: int, mac: str | None = None, public: str | None = None, vni: int = 1,
          btype: str = "vxlan") -> Lease:
    return Lease(IPv4Network(f"10.244.{n}.0/24"),
                 LeaseAttrs(IPv4Address(public or f"192.168.1.{10 + n}"), btype, vni,
                            mac or f"0e:00:00:00:00:{n:02x}"))


def entries(n: int, mac: str | None = None, public: str | None = None) -> set:
    mac = mac or f"0e:00:00:00:00:{n:02x}"
    gw = IPv4Address(f"10.244.{n}.0")
    return {Neigh(gw, mac), FDB(mac, IPv4Address(public or f"192.168.1.{10 + n}")),
            Route(IPv4Network(f"10.244.{n}.0/24"), gw)}


SETTINGS = BackendSettings(vni=1, public_ip=IPv4Address("192.168.1.11"),
                           underlay=IPv4Interface("192.168.1.11/24"))


@pytest.fixture
def dp():
    return FakeDataPlane()


@pytest.fixture
def backend(dp):
    return VXLANBackend(dp, SETTINGS)


def test_added_lease_programs_neigh_fdb_then_route(backend, dp):
    res = backend.apply_batch(LeaseBatch(added=(lease(2),)))
    assert set(dp.state.all()) == entries(2)
    assert res.added == 3 and not res.failed
    kinds = [type(op.entry) for op in dp.log]
    assert kinds.index(Route) > kinds.index(Neigh) and kinds.index(Route) > kinds.index(FDB)


def test_removed_lease_removes_all_three(backend, dp):
    backend.apply_batch(LeaseBatch(added=(lease(2), lease(3))))
    backend.apply_batch(LeaseBatch(removed=(lease(2),)))
    assert set(dp.state.all()) == entries(3)


def test_changed_mac_leaves_no_stale_fdb(backend, dp):
    old, new = lease(2), lease(2, mac="0e:aa:00:00:00:02")
    backend.apply_batch(LeaseBatch(added=(old,)))
    backend.apply_batch(LeaseBatch(changed=((old, new),)))
    assert set(dp.state.all()) == entries(2, mac="0e:aa:00:00:00:02")


def test_changed_public_ip_replaces_fdb(backend, dp):
    old, new = lease(2), lease(2, public="192.168.1.99")
    backend.apply_batch(LeaseBatch(added=(old,)))
    backend.apply_batch(LeaseBatch(changed=((old, new),)))
    assert set(dp.state.all()) == entries(2, public="192.168.1.99")


def test_other_vni_and_backend_skipped(backend, dp, caplog):
    backend.apply_batch(LeaseBatch(added=(lease(2, vni=7), lease(3, btype="host-gw"), lease(4))))
    assert set(dp.state.all()) == entries(4)
    assert "skipping lease 10.244.2.0/24" in caplog.text
    assert "skipping lease 10.244.3.0/24" in caplog.text


def test_failed_route_undoes_neigh_and_fdb_and_retries(backend, dp):
    bad = Route(IPv4Network("10.244.2.0/24"), IPv4Address("10.244.2.0"))
    dp.fail.add(bad)
    res = backend.apply_batch(LeaseBatch(added=(lease(2), lease(3))))
    assert res.failed == (IPv4Network("10.244.2.0/24"),)
    assert set(dp.state.all()) == entries(3)  # nothing half-programmed for .2
    assert backend.failed == {IPv4Network("10.244.2.0/24")}
    dp.fail.clear()
    res = backend.reconcile()
    assert not res.failed and not backend.failed
    assert set(dp.state.all()) == entries(2) | entries(3)


def test_failed_fdb_means_no_route(backend, dp):
    dp.fail.add(FDB("0e:00:00:00:00:02", IPv4Address("192.168.1.12")))
    backend.apply_batch(LeaseBatch(added=(lease(2),)))
    assert set(dp.state.all()) == set()


def test_reconcile_removes_stale_and_adds_missing_only(backend, dp):
    for e in entries(5):  # a peer that vanished while we were down
        dp.state.add(e)
    for e in entries(2):
        dp.state.add(e)
    dp.log.clear()
    res = backend.reconcile([lease(2), lease(3)])
    assert set(dp.state.all()) == entries(2) | entries(3)
    assert res.removed == 3 and res.added == 3
    touched = {op.entry for op in dp.log}
    assert not touched & entries(2), "entries already right must not be touched"


def test_reconcile_in_sync_does_nothing(backend, dp):
    backend.reconcile([lease(2), lease(3)])
    dp.log.clear()
    res = backend.reconcile()
    assert dp.log == [] and res.added == 0 and res.removed == 0


def test_reconcile_repairs_wrong_mac(backend, dp):
    for e in entries(2, mac="0e:bb:00:00:00:02"):
        dp.state.add(e)
    backend.reconcile([lease(2)])
    assert set(dp.state.all()) == entries(2)


def test_direct_routing_same_l2_only(dp):
    b = VXLANBackend(dp, BackendSettings(1, IPv4Address("192.168.1.11"),
                                         IPv4Interface("192.168.1.11/24"), direct_routing=True))
    b.apply_batch(LeaseBatch(added=(lease(2), lease(3, public="192.168.7.5"))))
    assert Route(IPv4Network("10.244.2.0/24"), IPv4Address("192.168.1.12"), direct=True) \
        in dp.state
    assert not any(isinstance(e, Neigh) and e.ip == IPv4Address("10.244.2.0")
                   for e in dp.state.all())
    assert entries(3, public="192.168.7.5") <= set(dp.state.all())


def test_own_public_ip_and_missing_mac_skipped(backend, dp):
    own = lease(2, public="192.168.1.11")
    nomac = Lease(IPv4Network("10.244.3.0/24"), LeaseAttrs(IPv4Address("192.168.1.13")))
    backend.apply_batch(LeaseBatch(added=(own, nomac)))
    assert dp.state.all() == []


def test_a_lease_without_mac_is_logged_skipped_once_never_added(backend, dp, caplog):
    nomac = Lease(IPv4Network("10.244.3.0/24"), LeaseAttrs(IPv4Address("192.168.1.13")))
    with caplog.at_level(logging.INFO, logger="overlay.vxlan.backend"):
        backend.apply_batch(LeaseBatch(added=(nomac,)))
        backend.apply_batch(LeaseBatch(changed=((nomac, nomac),)))
        assert dp.state.all() == []
        backend.apply_batch(LeaseBatch(added=(lease(4),)))  # a lease with a MAC is "added"
    lines = [r.getMessage() for r in caplog.records if "10.244.3.0/24" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("skipping lease 10.244.3.0/24"), lines
    assert any(r.getMessage().startswith("remote 10.244.4.0/24 added") for r in caplog.records)


def test_thousand_remotes_in_three_program_calls(backend, dp):
    calls = []
    orig = dp.program

    def counting(ops):
        calls.append(len(ops))
        return orig(ops)
    dp.program = counting
    leases = [Lease(IPv4Network(f"10.{200 + i // 256}.{i % 256}.0/24"),
                    LeaseAttrs(IPv4Address("192.168.2.0") + i, "vxlan", 1,
                               f"0e:00:00:00:{i // 256:02x}:{i % 256:02x}"))
              for i in range(1000)]
    backend.reconcile(leases)
    assert len(dp.state) == 3000
    assert [c for c in calls if c] == [2000, 1000]


def test_a_batch_costs_what_it_changes_not_what_is_known(backend, dp):
    backend.reconcile([lease(n) for n in range(2, 200)])
    calls = []
    orig = backend.entries_for

    def counting(remote):
        calls.append(remote.subnet)
        return orig(remote)
    backend.entries_for = counting
    dp.log.clear()
    backend.apply_batch(LeaseBatch(added=(lease(5),)))  # a repeat: filtered to nothing
    assert calls == [] and dp.log == []
    backend.apply_batch(LeaseBatch(added=(lease(230),)))
    backend.apply_batch(LeaseBatch(removed=(lease(7),)))
    assert backend.entry_count() == 3 * 198
    assert calls == [IPv4Network("10.244.230.0/24")]  # lease 7's entries came from the cache
    assert entries(230) <= set(dp.state.all()) and not entries(7) & set(dp.state.all())


def test_removing_one_of_two_leases_sharing_an_fdb_entry_keeps_it(backend, dp):
    a = lease(2, mac="0e:00:00:00:00:aa", public="192.168.1.50")
    b = lease(3, mac="0e:00:00:00:00:aa", public="192.168.1.50")
    backend.apply_batch(LeaseBatch(added=(a, b)))
    assert backend.entry_count() == 5  # one FDB entry for both
    backend.apply_batch(LeaseBatch(removed=(a,)))
    assert set(dp.state.all()) == entries(3, "0e:00:00:00:00:aa", "192.168.1.50")
    assert backend.entry_count() == 3


# ---- routes of other protocols: never replaced, the remote left unprogrammed -------------

S2 = IPv4Network("10.244.2.0/24")
KERNEL_ROUTE = OtherRoute(S2, "kernel", "eth0")


def test_reconcile_leaves_a_remote_whose_subnet_another_route_holds_unprogrammed(
        backend, dp, caplog):
    dp.others[S2] = KERNEL_ROUTE
    res = backend.reconcile([lease(2), lease(3)])
    assert res.conflicts == (S2,) and not res.failed
    assert set(dp.state.all()) == entries(3)
    assert not [op for op in dp.log if op.add and op.entry in entries(2)], \
        "no neigh, FDB or route of a conflicting remote is even tried"
    assert backend.conflicts == {S2: KERNEL_ROUTE} and not backend.failed
    assert backend.entry_count() == 3
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and "10.244.2.0/24" in
                r.getMessage()]
    assert len(warnings) == 1 and "10.244.2.0/24 dev eth0 proto kernel" in warnings[0].getMessage()
    backend.reconcile()
    backend.reconcile()
    assert len([r for r in caplog.records if r.levelname == "WARNING"]) == 1, "logged once"
    assert backend.conflicts == {S2: KERNEL_ROUTE}


def test_conflict_clears_at_the_reconcile_after_the_other_route_goes(backend, dp, caplog):
    caplog.set_level(logging.INFO, "overlay.vxlan.backend")
    dp.others[S2] = KERNEL_ROUTE
    backend.reconcile([lease(2), lease(3)])
    del dp.others[S2]
    res = backend.reconcile()
    assert not res.conflicts and not backend.conflicts
    assert set(dp.state.all()) == entries(2) | entries(3)
    assert backend.entry_count() == 6
    assert "no other protocol's route holds its subnet any more" in caplog.text


def test_route_met_on_a_watch_event_undoes_neigh_and_fdb(backend, dp):
    backend.reconcile([lease(3)])
    dp.others[S2] = OtherRoute(S2, "static", "eth0")  # made after the last dump
    res = backend.apply_batch(LeaseBatch(added=(lease(2),)))
    assert res.conflicts == (S2,) and not res.failed and not backend.failed
    assert set(dp.state.all()) == entries(3), "neigh and FDB of .2 undone"
    assert backend.conflicts == {S2: OtherRoute(S2, "static", "eth0")}


def test_watch_event_for_a_subnet_known_to_conflict_tries_nothing(backend, dp):
    dp.others[S2] = KERNEL_ROUTE
    backend.reconcile([lease(3)])
    dp.log.clear()
    res = backend.apply_batch(LeaseBatch(added=(lease(2),)))
    assert res.conflicts == (S2,) and dp.log == []
    assert backend.conflicts == {S2: KERNEL_ROUTE}


def test_our_route_is_withdrawn_when_another_protocol_routes_the_subnet(backend, dp):
    backend.reconcile([lease(2), lease(3)])
    # e.g. an address added later whose connected route the kernel appends behind ours,
    # or a static route with another metric: ours (metric 0) would shadow it
    dp.others[S2] = OtherRoute(S2, "static", "eth0", metric=100)
    res = backend.reconcile()
    assert res.conflicts == (S2,)
    assert set(dp.state.all()) == entries(3)
    assert dp.others == {S2: OtherRoute(S2, "static", "eth0", metric=100)}


def test_removing_a_conflicting_lease_forgets_the_conflict(backend, dp):
    dp.others[S2] = KERNEL_ROUTE
    backend.reconcile([lease(2), lease(3)])
    res = backend.apply_batch(LeaseBatch(removed=(lease(2),)))
    assert not res.conflicts and not backend.conflicts
    assert dp.others == {S2: KERNEL_ROUTE}
    assert set(dp.state.all()) == entries(3)


def test_changed_lease_into_a_conflict_loses_its_entries(backend, dp):
    old = lease(2)
    backend.reconcile([old, lease(3)])
    dp.others[S2] = KERNEL_ROUTE
    backend.reconcile()  # withdrawn, and the other route now known
    new = lease(2, mac="0e:aa:00:00:00:02")
    res = backend.apply_batch(LeaseBatch(changed=((old, new),)))
    assert res.conflicts == (S2,)
    assert set(dp.state.all()) == entries(3)


def test_a_failure_is_not_a_conflict(backend, dp):
    dp.fail.add(Route(S2, IPv4Address("10.244.2.0")))
    res = backend.apply_batch(LeaseBatch(added=(lease(2),)))
    assert res.failed == (S2,) and not res.conflicts and not backend.conflicts


def test_a_failing_remote_that_then_conflicts_leaves_failed(backend, dp, caplog):
    caplog.set_level(logging.INFO, "overlay.vxlan.backend")
    dp.fail.add(Route(S2, IPv4Address("10.244.2.0")))
    backend.apply_batch(LeaseBatch(added=(lease(2),)))
    assert backend.failed == {S2}
    dp.fail.clear()
    dp.others[S2] = KERNEL_ROUTE
    res = backend.reconcile()
    assert res.conflicts == (S2,) and not res.failed and not backend.failed
    assert "programmed after earlier failures" not in caplog.text


def test_a_conflict_whose_other_route_cannot_be_read_is_still_a_conflict(backend, dp):
    from overlay.errors import NetlinkOpError

    def broken():
        raise NetlinkOpError("rtnetlink receive: no buffer space", errno.ENOBUFS)
    dp.others[S2] = KERNEL_ROUTE
    dp.other_routes = broken
    res = backend.apply_batch(LeaseBatch(added=(lease(2),)))
    assert res.conflicts == (S2,) and str(backend.conflicts[S2]) == "10.244.2.0/24 proto unknown"
    assert set(dp.state.all()) == set()


def test_a_lease_without_vni_is_ours(backend, dp):
    """Flannel wrote no VNI before v0.13: such a lease is programmed, not skipped."""
    base = lease(2)
    backend.apply_batch(LeaseBatch(added=(Lease(base.subnet, LeaseAttrs(
        base.attrs.public_ip, "vxlan", None, base.attrs.vtep_mac)),)))
    assert set(dp.state.all()) == entries(2)


def test_entries_for_is_the_rule_and_says_why_it_skips():
    from overlay.vxlan.entries import entries_for, skip_reason
    direct = BackendSettings(1, IPv4Address("192.168.1.11"), IPv4Interface("192.168.1.11/24"),
                             direct_routing=True)
    gw = IPv4Address("10.244.2.0")
    assert entries_for(lease(2), SETTINGS) == [
        Neigh(gw, "0e:00:00:00:00:02"), FDB("0e:00:00:00:00:02", IPv4Address("192.168.1.12")),
        Route(IPv4Network("10.244.2.0/24"), gw)]
    assert skip_reason(lease(2), SETTINGS) is None
    nomac = Lease(IPv4Network("10.244.2.0/24"), LeaseAttrs(IPv4Address("192.168.1.12")))
    assert entries_for(nomac, SETTINGS) == [] and skip_reason(nomac, SETTINGS) == \
        "no VtepMAC in the lease"
    # a DirectRouting peer on our L2 needs no VTEP MAC; one off it does
    assert entries_for(nomac, direct) == [
        Route(IPv4Network("10.244.2.0/24"), IPv4Address("192.168.1.12"), direct=True)]
    assert skip_reason(nomac, direct) is None
    assert len(entries_for(lease(3, public="192.168.7.5"), direct)) == 3
    why = skip_reason(lease(2, vni=7), SETTINGS)
    assert why is not None and "VNI 7" in why
    assert entries_for(lease(2, vni=7), direct) == []
    assert skip_reason(lease(2, public="192.168.1.11"), SETTINGS) == \
        "public IP 192.168.1.11 is our own"
