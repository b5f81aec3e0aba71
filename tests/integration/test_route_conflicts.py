"""Routes that are not ours are never replaced or deleted (real kernel, ``ovd-vx-*`` netns).

The namespace's underlay is ``eth0`` with ``192.168.1.11/24`` (so the kernel's connected
route ``192.168.1.0/24 dev eth0 proto kernel``) and a default route via ``192.168.1.1``.
Kernel state is read with ``ip -j route`` here, never with the project's own codec.
"""

from __future__ import annotations

import json
import subprocess
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest

from overlay.lease import Lease, LeaseAttrs, LeaseBatch
from overlay.vxlan.backend import BackendSettings, VXLANBackend
from overlay.vxlan.entries import Op, Route
from tests.integration.test_vxlan import device, ip, ipj, netns  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration

UNDERLAY = IPv4Network("192.168.1.0/24")
S7 = IPv4Network("10.244.7.0/24")
S8 = IPv4Network("10.244.8.0/24")


def lease(subnet: IPv4Network, n: int) -> Lease:
    return Lease(subnet, LeaseAttrs(IPv4Address(f"192.168.1.{20 + n}"), "vxlan", 1,
                                    f"0e:00:00:00:00:{n:02x}"))


@pytest.fixture
def backend(device):  # noqa: F811 (the fixture imported above)
    return VXLANBackend(device, BackendSettings(1, IPv4Address("192.168.1.11"),
                                                IPv4Interface("192.168.1.11/24")))


def routes_to(ns: str, subnet: IPv4Network) -> list[dict]:
    return [r for r in ipj(ns, "route", "show", "table", "main") if r["dst"] == str(subnet)]


def neighs(ns: str) -> set[str]:
    return {n["dst"] for n in ipj(ns, "neigh", "show", "dev", "overlay.1")}


def fdb_macs(ns: str) -> set[str]:
    out = subprocess.run(["bridge", "-n", ns, "-j", "fdb", "show", "dev", "overlay.1"],
                         capture_output=True, text=True, check=True).stdout
    return {e["mac"] for e in (json.loads(out) if out.strip() else []) if e.get("dst")}


def assert_ours(ns: str, subnet: IPv4Network) -> None:
    rs = routes_to(ns, subnet)
    assert len(rs) == 1, rs
    assert rs[0]["dev"] == "overlay.1" and rs[0]["protocol"] == "111"
    assert rs[0]["gateway"] == str(subnet.network_address) and "onlink" in rs[0]["flags"]


def test_connected_underlay_route_is_not_replaced_at_reconcile(backend, netns):  # noqa: F811
    res = backend.reconcile([lease(UNDERLAY, 2), lease(S8, 8)])
    assert res.conflicts == (UNDERLAY,) and not res.failed
    rs = routes_to(netns, UNDERLAY)
    assert [(r["dev"], r["protocol"]) for r in rs] == [("eth0", "kernel")]
    assert "192.168.1.0" not in neighs(netns) and "0e:00:00:00:00:02" not in fdb_macs(netns)
    assert str(backend.conflicts[UNDERLAY]) == "192.168.1.0/24 dev eth0 proto kernel"
    assert_ours(netns, S8)


def test_connected_route_met_on_a_watch_event_undoes_neigh_and_fdb(backend, netns):  # noqa: F811
    res = backend.apply_batch(LeaseBatch(added=(lease(UNDERLAY, 2), lease(S8, 8))))
    assert res.conflicts == (UNDERLAY,) and not res.failed and not backend.failed
    assert [(r["dev"], r["protocol"]) for r in routes_to(netns, UNDERLAY)] == [("eth0", "kernel")]
    assert "192.168.1.0" not in neighs(netns), "the conflicting remote's neigh was undone"
    assert "0e:00:00:00:00:02" not in fdb_macs(netns), "and its FDB entry"
    assert backend.conflicts[UNDERLAY].protocol == "kernel"
    assert_ours(netns, S8)


@pytest.mark.parametrize("route, shown", [
    (["10.244.7.0/24", "via", "192.168.1.1", "proto", "static"], "static"),
    (["10.244.7.0/24", "via", "192.168.1.1", "proto", "static", "metric", "100"], "static"),
    (["blackhole", "10.244.7.0/24"], None),
], ids=["static", "static-metric-100", "blackhole"])
def test_other_route_kept_then_remote_programmed_once_it_goes(backend, netns, route, shown):  # noqa: F811
    ip(netns, "route", "add", *route)
    before = routes_to(netns, S7)
    # overlayd's first listing is a reconcile: its dump tells the watch's events (which
    # do not dump) about routes in another metric, which an add would not meet
    backend.reconcile([])
    for batch in (True, False):  # the watch's way in, then the reconcile's
        res = (backend.apply_batch(LeaseBatch(added=(lease(S7, 7),))) if batch
               else backend.reconcile())
        assert res.conflicts == (S7,)
        assert routes_to(netns, S7) == before, "the other route is untouched, none added"
        assert "10.244.7.0" not in neighs(netns)
    assert backend.conflicts[S7].protocol == (shown or "boot")
    ip(netns, "route", "del", *route)
    res = backend.reconcile()
    assert not res.conflicts and not backend.conflicts
    assert_ours(netns, S7)
    assert "10.244.7.0" in neighs(netns)


def test_our_route_withdrawn_when_another_protocol_routes_the_subnet(backend, netns):  # noqa: F811
    backend.reconcile([lease(S7, 7)])
    assert_ours(netns, S7)
    # a route with another metric can be added beside ours, which would shadow it
    ip(netns, "route", "add", "10.244.7.0/24", "via", "192.168.1.1", "proto", "static",
       "metric", "100")
    res = backend.reconcile()
    assert res.conflicts == (S7,)
    rs = routes_to(netns, S7)
    assert [(r["protocol"], r.get("metric")) for r in rs] == [("static", 100)]


def test_deleting_a_lease_deletes_only_our_route(backend, netns):  # noqa: F811
    backend.reconcile([lease(S7, 7)])
    ip(netns, "route", "add", "10.244.7.0/24", "via", "192.168.1.1", "proto", "static",
       "metric", "100")
    backend.apply_batch(LeaseBatch(removed=(lease(S7, 7),)))
    rs = routes_to(netns, S7)
    assert [(r["protocol"], r["gateway"], r.get("metric")) for r in rs] == [
        ("static", "192.168.1.1", 100)]


def test_our_delete_never_matches_a_static_route_to_the_same_destination(device, netns):  # noqa: F811
    ip(netns, "route", "add", "10.244.7.0/24", "via", "10.244.7.0", "dev", "overlay.1", "onlink",
       "proto", "static")
    # the very route we would program, but not ours: "already gone" for our delete
    assert device.program([Op(False, Route(S7, IPv4Address("10.244.7.0")))]) == [0]
    rs = routes_to(netns, S7)
    assert [(r["protocol"], r["dev"]) for r in rs] == [("static", "overlay.1")]


def test_reconcile_leaves_other_protocols_routes_inside_the_network_alone(backend, netns):  # noqa: F811
    ip(netns, "route", "add", "10.244.50.0/24", "via", "192.168.1.1", "proto", "static")
    ip(netns, "route", "add", "10.244.51.0/24", "via", "10.244.51.0", "dev", "overlay.1",
       "onlink", "proto", "boot")
    res = backend.reconcile([lease(S7, 7)])
    assert res.removed == 0
    assert [r["protocol"] for r in routes_to(netns, IPv4Network("10.244.50.0/24"))] == ["static"]
    # ip -j leaves out the default protocol "boot"
    assert [r.get("protocol", "boot") for r in routes_to(netns, IPv4Network("10.244.51.0/24"))
            ] == ["boot"]


def test_our_stale_route_is_still_replaced_and_removed(backend, device, netns):  # noqa: F811
    # ours from an earlier run: a wrong gateway for a leased subnet, and one with no lease
    ip(netns, "route", "add", "10.244.7.0/24", "via", "192.168.1.77", "dev", "eth0",
       "proto", "111")
    ip(netns, "route", "add", "10.244.60.0/24", "via", "192.168.1.78", "dev", "eth0",
       "proto", "111")
    res = backend.reconcile([lease(S7, 7)])
    assert not res.conflicts and not res.failed
    assert_ours(netns, S7)
    assert routes_to(netns, IPv4Network("10.244.60.0/24")) == []
    # and an add that meets our own route with its key replaces it in place
    ip(netns, "route", "replace", "10.244.8.0/24", "via", "192.168.1.79", "dev", "eth0",
       "proto", "111")
    gw = IPv4Address("10.244.8.0")
    ip(netns, "neigh", "add", str(gw), "lladdr", "0e:00:00:00:00:08", "dev", "overlay.1",
       "nud", "permanent")
    assert device.program([Op(True, Route(S8, gw))]) == [0]
    assert_ours(netns, S8)


def test_address_added_later_gets_its_connected_route_back(backend, netns):  # noqa: F811
    s = IPv4Network("172.20.5.0/24")
    backend.reconcile([lease(s, 5)])
    assert_ours(netns, s)
    # the kernel appends the connected route behind ours (same key): ours shadows it
    ip(netns, "addr", "add", "172.20.5.1/24", "dev", "eth0")
    assert [r["protocol"] for r in routes_to(netns, s)] == ["111", "kernel"]
    res = backend.reconcile()
    assert res.conflicts == (s,)
    assert [(r["protocol"], r["dev"]) for r in routes_to(netns, s)] == [("kernel", "eth0")]
