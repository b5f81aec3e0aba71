"""The IPv6 VXLAN data plane against a real kernel, in throwaway namespaces ``ovd-v6-*``.

What is checked is read back with iproute2 (``ip -6 -j``, ``bridge -j``), not with the
code under test; the last test sends pod traffic through two ``overlay-v6.1`` devices.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from ipaddress import IPv6Address, IPv6Interface, IPv6Network

import pytest

from overlay.netlink.netns import netns_path, thread_in_netns
from overlay.vxlan.device import Underlay6, VXLANDevice, VXLANSpec, find_underlay6, open_netlink
from overlay.vxlan.entries import FDB, Neigh, Op, Route

pytestmark = pytest.mark.integration

DEV = "overlay-v6.1"


def ip(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "-n", ns, *args], capture_output=True, text=True, check=check)


def ipj(ns: str, *args: str) -> list[dict]:
    out = ip(ns, "-j", *args).stdout
    return json.loads(out) if out.strip() else []


def sysctl(ns: str, key: str, value: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", f"{key}={value}"],
                   check=True)


def kernel_entries6(ns: str, dev: str = DEV) -> set:
    """The IPv6 device's remote entries as iproute2 reads them: permanent neighbours, FDB
    entries with a destination, and proto 111 IPv6 routes."""
    out: set = set()
    for n in ipj(ns, "-6", "neigh", "show", "dev", dev, "nud", "permanent"):
        out.add(Neigh(IPv6Address(n["dst"]), n["lladdr"]))
    fdb = subprocess.run(["bridge", "-n", ns, "-j", "fdb", "show", "dev", dev],
                         capture_output=True, text=True, check=True).stdout
    for f in json.loads(fdb) if fdb.strip() else []:
        if f.get("dst"):
            out.add(FDB(f["mac"], IPv6Address(f["dst"])))
    for r in ipj(ns, "-6", "route", "show", "proto", "111"):
        out.add(Route(IPv6Network(r["dst"]), IPv6Address(r["gateway"]),
                      direct=r["dev"] != dev))
    return out


@contextmanager
def namespaces(count: int) -> Iterator[list[str]]:
    names = [f"ovd-v6-{secrets.token_hex(3)}" for _ in range(count)]
    try:
        for name in names:
            subprocess.run(["ip", "netns", "add", name], check=True)
            ip(name, "link", "set", "lo", "up")
        yield names
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def node(ns: str, ipv6: str, ipv4: str | None = None) -> None:
    """``eth0`` (a veth; the peer is wired by the caller) with an IPv6 underlay address."""
    ip(ns, "addr", "add", f"{ipv6}/64", "dev", "eth0", "nodad")
    if ipv4:
        ip(ns, "addr", "add", f"{ipv4}/24", "dev", "eth0")
    ip(ns, "link", "set", "eth0", "up")


@pytest.fixture
def netns():
    with namespaces(1) as (name,):
        ip(name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
        ip(name, "link", "set", "eth1", "up")
        node(name, "fd00:192:168:1::11", "192.168.1.11")
        yield name


def spec6(ns: str, **kw) -> VXLANSpec:
    nl = open_netlink(ns)
    try:
        u = find_underlay6(nl, "eth0", None)
    finally:
        nl.close()
    assert isinstance(u, Underlay6), u
    base = VXLANSpec(name=DEV, vni=1, port=8472, local=u.address.ip, underlay_index=u.index,
                     mtu=u.mtu - 70, mac="0e:00:00:00:06:11")
    return dataclasses.replace(base, **kw)


@pytest.fixture
def device6(netns):
    d = VXLANDevice(spec6(netns), netns)
    d.ensure()
    d.ensure_address(IPv6Interface("fd00:10:244:1::/128"))
    try:
        yield d
    finally:
        d.close()


def test_ipv6_underlay_is_the_ipv4_underlays_global_address(netns):
    nl = open_netlink(netns)
    try:
        u = find_underlay6(nl, "eth0", None)
        assert isinstance(u, Underlay6)
        assert (u.name, u.address) == ("eth0", IPv6Interface("fd00:192:168:1::11/64"))
        given = find_underlay6(nl, "eth0", IPv6Address("fd00:192:168:1::11"))
        assert isinstance(given, Underlay6) and given.address == u.address
        # only a link-local address: no IPv6 underlay, and the reason says what to do
        ip(netns, "addr", "del", "fd00:192:168:1::11/64", "dev", "eth0")
        why = find_underlay6(nl, "eth0", None)
        assert isinstance(why, str) and "no global IPv6 address" in why
    finally:
        nl.close()


def test_ipv6_device_settings_mtu_and_usable_address(device6, netns):
    link = ipj(netns, "-d", "link", "show", DEV)[0]
    info = link["linkinfo"]["info_data"]
    assert info["id"] == 1 and info["port"] == 8472 and info["local6"] == "fd00:192:168:1::11"
    assert info["learning"] is False and info["link"] == "eth0"
    # IPv6 encapsulation costs 70 bytes, not IPv4's 50 (flannel#1781)
    assert link["mtu"] == 1500 - 70 and link["address"] == "0e:00:00:00:06:11"
    addrs = [a for a in ipj(netns, "-6", "addr", "show", "dev", DEV)[0]["addr_info"]
             if a.get("scope") == "global"]
    assert [(a["local"], a["prefixlen"]) for a in addrs] == [("fd00:10:244:1::", 128)]
    assert not addrs[0].get("tentative")  # usable at once: no DAD wait


def test_ipv6_address_added_even_when_new_devices_start_with_ipv6_off(netns):
    sysctl(netns, "net.ipv6.conf.default.disable_ipv6", "1")
    d = VXLANDevice(spec6(netns), netns)
    try:
        d.ensure()
        d.ensure_address(IPv6Interface("fd00:10:244:7::/128"))
        d.ensure_address(IPv6Interface("fd00:10:244:8::/128"))  # replaced, not added
    finally:
        d.close()
    addrs = ipj(netns, "-6", "addr", "show", "dev", DEV)[0]["addr_info"]
    assert [a["local"] for a in addrs if a.get("scope") == "global"] == ["fd00:10:244:8::"]


def test_ipv6_program_dump_roundtrip_and_delete(device6, netns):
    gw = IPv6Address("fd00:10:244:2::")
    ops = [Op(True, Neigh(gw, "0e:00:00:00:06:02")),
           Op(True, FDB("0e:00:00:00:06:02", IPv6Address("fd00:192:168:1::12"))),
           Op(True, Route(IPv6Network("fd00:10:244:2::/64"), gw)),
           Op(True, Route(IPv6Network("fd00:10:244:3::/64"), IPv6Address("fd00:192:168:1::13"),
                          direct=True))]
    assert device6.program(ops) == [0, 0, 0, 0]
    assert kernel_entries6(netns) == {op.entry for op in ops}
    assert set(device6.dump().all()) == {op.entry for op in ops}
    routes = {r["dst"]: r for r in ipj(netns, "-6", "route", "show")}
    assert routes["fd00:10:244:2::/64"]["dev"] == DEV
    assert "onlink" in routes["fd00:10:244:2::/64"]["flags"]
    assert routes["fd00:10:244:3::/64"]["dev"] == "eth0"
    # the kernel's own IPv6 routes (fe80::/64, the /128) are not ours
    assert all(r.protocol != "111" for r in device6.dump().others.values())
    dels = [Op(False, op.entry) for op in reversed(ops)]
    assert device6.program(dels) == [0, 0, 0, 0]
    assert device6.program(dels) == [0, 0, 0, 0]
    assert kernel_entries6(netns) == set() and len(device6.dump()) == 0


def test_ipv6_masquerade_table_loads_and_is_replaced_atomically(netns):
    from ipaddress import IPv4Network

    from overlay.masq.nft import Masquerade
    fd = os.open(netns_path(netns), os.O_RDONLY)
    try:
        with thread_in_netns(fd):
            m = Masquerade(IPv4Network("10.244.0.0/16"), IPv4Network("10.244.1.0/24"), True)
            m.set_ipv6(IPv6Network("fd00:10:244::/56"), IPv6Network("fd00:10:244:1::/64"))
            assert m.ensure() is True and m.ensure() is False
            listing = m.current("ip6")
            assert listing is not None and m.intact(listing, "ip6")
            m.set_ipv6(None, None)
            assert m.ensure() is True and m.current("ip6") is None
            assert m.current("ip") is not None  # the IPv4 table stays
    finally:
        os.close(fd)


def two_nodes_with_pods(a: str, b: str, pa: str, pb: str, pod_mtu: int = 1500) -> None:
    """Nodes ``a`` and ``b`` on one veth underlay (fd00:192:168:1::11/12), each with a
    bridge holding its IPv6 subnet's gateway and one pod (``pa``, ``pb``) on it."""
    ip(a, "link", "add", "eth0", "type", "veth", "peer", "name", "ovd-peer")
    ip(a, "link", "set", "ovd-peer", "netns", b)
    ip(b, "link", "set", "ovd-peer", "name", "eth0")
    for ns, n, pod in ((a, 1, pa), (b, 2, pb)):
        node(ns, f"fd00:192:168:1::1{n}")
        sysctl(ns, "net.ipv6.conf.all.forwarding", "1")
        ip(ns, "link", "add", "br0", "type", "bridge")
        ip(ns, "addr", "add", f"fd00:10:244:{n}::1/64", "dev", "br0", "nodad")
        ip(ns, "link", "set", "br0", "up")
        ip(ns, "link", "add", "veth0", "mtu", str(pod_mtu), "type", "veth", "peer", "name", "eth0",
           "netns", pod)
        ip(ns, "link", "set", "veth0", "master", "br0", "up")
        ip(pod, "link", "set", "eth0", "up")
        ip(pod, "addr", "add", f"fd00:10:244:{n}::5/64", "dev", "eth0", "nodad")
        ip(pod, "-6", "route", "add", "default", "via", f"fd00:10:244:{n}::1")


def ping6(ns: str, dst: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, "ping", "-6", "-n", "-c", "2", "-i", "0.2",
                           "-W", "2", *args, dst], capture_output=True, text=True)


def test_ping6_between_pods_through_overlay_v6_at_exactly_its_mtu():
    """The data plane before the lab: each node's overlay-v6.1 (made and programmed by
    our code) carries pod-to-pod IPv6; the largest packet that crosses is the device's
    MTU, 1500 - 70, and one byte more is refused (with IPv4's 50 it would be lost)."""
    with namespaces(4) as (a, b, pa, pb):
        two_nodes_with_pods(a, b, pa, pb)
        devices = []
        for ns, n, peer in ((a, 1, 2), (b, 2, 1)):
            d = VXLANDevice(spec6(ns, mac=f"0e:00:00:00:06:0{n}"), ns)
            devices.append(d)
            d.ensure()
            d.ensure_address(IPv6Interface(f"fd00:10:244:{n}::/128"))
            gw = IPv6Address(f"fd00:10:244:{peer}::")
            mac = f"0e:00:00:00:06:0{peer}"
            assert d.program([Op(True, Neigh(gw, mac)),
                              Op(True, FDB(mac, IPv6Address(f"fd00:192:168:1::1{peer}"))),
                              Op(True, Route(IPv6Network(f"fd00:10:244:{peer}::/64"), gw))]) \
                == [0, 0, 0]
        try:
            r = ping6(pa, "fd00:10:244:2::5")
            assert r.returncode == 0, r.stdout + r.stderr
            # 1430 = 1382 payload + 8 ICMPv6 + 40 IPv6: fits; 1431 does not
            fits = ping6(pa, "fd00:10:244:2::5", "-M", "do", "-s", "1382")
            assert fits.returncode == 0, fits.stdout + fits.stderr
            too_big = ping6(pa, "fd00:10:244:2::5", "-M", "do", "-s", "1383")
            assert too_big.returncode != 0 and "mtu=1430" in too_big.stdout + too_big.stderr, \
                too_big.stdout + too_big.stderr
            # diagnose's DF probe of the peer's IPv6 VTEP: answered at 1430, refused above
            from overlay.diagnose.probe import echo_many6
            vtep = IPv6Address("fd00:10:244:2::")
            with inside(a):
                fits6 = echo_many6([vtep], 1430 - 48, 2, 1.0)[vtep]
                over6 = echo_many6([vtep], 1431 - 48, 1, 0.5)[vtep]
            assert (fits6.sent, fits6.received, fits6.error) == (2, 2, "")
            assert over6.received == 0 and "message too long (1431 bytes" in over6.error
        finally:
            for d in devices:
                d.close()


@contextmanager
def inside(ns: str) -> Iterator[None]:
    """This thread in ``ns``: sockets made meanwhile (the data plane's) stay there."""
    fd = os.open(netns_path(ns), os.O_RDONLY)
    try:
        with thread_in_netns(fd):
            yield
    finally:
        os.close(fd)


def dual_config(**backend: object):
    from overlay.config import parse_network_config
    return parse_network_config({"Network": "10.244.0.0/16", "EnableIPv6": True,
                                 "IPv6Network": "fd00:10:244::/56",
                                 "Backend": {"Type": "vxlan", **backend}})


def setup_in(ns: str, state_dir: str, config=None, public_ipv6: str | None = None):
    from overlay.vxlan.setup import NodeOptions, setup_data_plane
    opts = NodeOptions(None, None, "", state_dir,
                       IPv6Address(public_ipv6) if public_ipv6 else None)
    with inside(ns):
        return setup_data_plane(config or dual_config(), opts)


def test_setup_dual_stack_mtus_lease_attrs_and_mac_kept_across_restart_and_deletion(
        netns, tmp_path):
    ip(netns, "route", "add", "default", "via", "192.168.1.1")
    plane = setup_in(netns, str(tmp_path))
    assert plane.v6 is not None
    v4 = ipj(netns, "link", "show", "overlay.1")[0]
    v6 = ipj(netns, "link", "show", DEV)[0]
    assert (v4["mtu"], v6["mtu"], plane.mtu) == (1450, 1430, 1430)  # pod MTU: the smaller
    a = plane.attrs
    assert a.public_ipv6 == IPv6Address("fd00:192:168:1::11") and a.v6_vni == 1
    assert a.v6_vtep_mac == v6["address"] != v4["address"]
    mac6 = v6["address"]
    # restart: the same MAC; the device deleted by hand and set up again: the same MAC
    assert setup_in(netns, str(tmp_path)).attrs.v6_vtep_mac == mac6
    ip(netns, "link", "del", DEV)
    assert setup_in(netns, str(tmp_path)).attrs.v6_vtep_mac == mac6
    assert ipj(netns, "link", "show", DEV)[0]["address"] == mac6
    # the device deleted while running: repair brings it back with that MAC
    ip(netns, "link", "del", DEV)
    with inside(netns):
        plane.repair_device()
    assert ipj(netns, "link", "show", DEV)[0]["address"] == mac6
    # Backend.MTU is the outer MTU: each family takes its own overhead off
    plane = setup_in(netns, str(tmp_path), dual_config(MTU=1400))
    assert ipj(netns, "link", "show", DEV)[0]["mtu"] == 1330
    assert ipj(netns, "link", "show", "overlay.1")[0]["mtu"] == 1350 and plane.mtu == 1330
    # more than the underlay carries: the underlay's MTU is the outer one
    plane = setup_in(netns, str(tmp_path), dual_config(MTU=9000))
    assert (ipj(netns, "link", "show", "overlay.1")[0]["mtu"],
            ipj(netns, "link", "show", DEV)[0]["mtu"], plane.mtu) == (1450, 1430, 1430)


def test_setup_without_ipv6_underlay_keeps_ipv4_and_says_why(netns, tmp_path, caplog):
    ip(netns, "route", "add", "default", "via", "192.168.1.1")
    ip(netns, "addr", "del", "fd00:192:168:1::11/64", "dev", "eth0")
    caplog.set_level("WARNING", logger="overlay.vxlan.setup")
    plane = setup_in(netns, str(tmp_path))
    assert plane.v6 is None and plane.attrs.public_ipv6 is None
    assert plane.attrs.v6_vtep_mac is None and plane.mtu == 1450
    assert "IPv6 is off on this node" in caplog.text and "no global IPv6 address" in caplog.text
    assert DEV not in {ln["ifname"] for ln in ipj(netns, "link", "show")}


def test_dual_stack_backend_entries_for_remote_leases_and_reconcile_removes_only_ours(
        netns, tmp_path):
    from dataclasses import replace as dc_replace
    from ipaddress import IPv4Address, IPv4Network

    from overlay.lease import Lease, LeaseAttrs

    ip(netns, "route", "add", "default", "via", "192.168.1.1")
    plane = setup_in(netns, str(tmp_path))
    assert plane.v6 is not None

    def lease(n: int, v6: bool = True) -> Lease:
        attrs = LeaseAttrs(IPv4Address(f"192.168.1.{10 + n}"), "vxlan", 1,
                           f"0e:00:00:00:04:{n:02x}")
        if not v6:
            return Lease(IPv4Network(f"10.244.{n}.0/24"), attrs)
        attrs = dc_replace(attrs, public_ipv6=IPv6Address(f"fd00:192:168:1::{10 + n}"),
                           v6_vni=1, v6_vtep_mac=f"0e:00:00:00:06:{n:02x}")
        return Lease(IPv4Network(f"10.244.{n}.0/24"), attrs,
                     ipv6_subnet=IPv6Network(f"fd00:10:244:{n}::/64"))

    def want6(*ns: int) -> set:
        out: set = set()
        for n in ns:
            gw, mac = IPv6Address(f"fd00:10:244:{n}::"), f"0e:00:00:00:06:{n:02x}"
            out |= {Neigh(gw, mac), FDB(mac, IPv6Address(f"fd00:192:168:1::{10 + n}")),
                    Route(IPv6Network(f"fd00:10:244:{n}::/64"), gw)}
        return out

    # the data plane's sockets were made in netns: its reconciles work on it from here
    res = plane.backend.reconcile([lease(2), lease(3), lease(4, v6=False)])
    assert res.added == 9 + 6 and not res.failed
    assert kernel_entries6(netns) == want6(2, 3)
    # what diagnose reads of the device (read only): the same entries, its MTU, its underlay
    from overlay.vxlan.device import read_device
    view = read_device(DEV, netns)
    assert view is not None and set(view.entries.all()) == want6(2, 3)
    assert (view.mtu, view.underlay_mtu, view.local) == (1430, 1500, IPv6Address(
        "fd00:192:168:1::11"))
    assert view.underlay_address == IPv6Interface("fd00:192:168:1::11/64")
    # somebody else's IPv6 route and neighbour on the device stay; our stale ones go
    ip(netns, "-6", "route", "add", "fd00:77::/64", "dev", DEV, "proto", "static")
    ip(netns, "-6", "neigh", "add", "fd00:10:244:9::", "lladdr", "0e:00:00:00:06:09", "dev", DEV,
       "nud", "permanent")
    ip(netns, "-6", "route", "del", "fd00:10:244:3::/64")
    res = plane.backend.reconcile([lease(2), lease(3), lease(4, v6=False)])
    assert (res.added, res.removed) == (1, 1)
    assert kernel_entries6(netns) == want6(2, 3)
    assert [r["dst"] for r in ipj(netns, "-6", "route", "show", "proto", "static")] == \
        ["fd00:77::/64"]
    # lease 3 goes: only its entries go
    plane.backend.reconcile([lease(2), lease(4, v6=False)])
    assert kernel_entries6(netns) == want6(2)


def test_overlayd_dual_stack_node_and_a_node_without_ipv6(tmp_path):
    """Two overlayd nodes, a dual-stack config; n1 has an IPv6 underlay, n2 none: n1
    runs overlay-v6.1 (its IPv6 subnet's /128 on it, the ip6 masquerade table for it) and
    publishes its IPv6 attributes, n2 says why IPv6 is off and
    keeps IPv4; a hand-written Flannel-format dual-stack lease reaches n1's IPv6 device
    (and only the IPv4 device of n2), and its removal removes it."""
    from .support.ovd_topology import Topology, wait_for

    topo = Topology(2)
    try:
        topo.setup({"Network": "10.244.0.0/16", "EnableIPv6": True,
                    "IPv6Network": "fd00:10:244::/56", "Backend": {"Type": "vxlan", "VNI": 1}})
        n1, n2 = topo.nodes
        ip(topo.underlay, "addr", "add", "fd00:192:168:1::1/64", "dev", "br0", "nodad")
        ip(n1.ns, "addr", "add", "fd00:192:168:1::11/64", "dev", "eth0", "nodad")
        n1.extra_args = ["--ip-masq"]
        for n in topo.nodes:
            n.start()
        for n in topo.nodes:
            n.wait_ready()
        assert ipj(n1.ns, "link", "show", DEV)[0]["mtu"] == 1430
        assert DEV not in {ln["ifname"] for ln in ipj(n2.ns, "link", "show")}
        assert "IPv6 is off on this node" in n2.log()
        with open(n1.subnet_file) as f:
            env = f.read()
        assert "OVERLAY_MTU=1430\n" in env
        # n1's own IPv6 subnet: its network address /128 on the device, usable at once, and
        # the ip6 masquerade table (--ip-masq) for it
        sub6 = IPv6Interface(env.split("OVERLAY_IPV6_SUBNET=", 1)[1].split()[0]).network
        addrs = [a for a in ipj(n1.ns, "-6", "addr", "show", "dev", DEV)[0]["addr_info"]
                 if a.get("scope") == "global"]
        assert [(a["local"], a["prefixlen"]) for a in addrs] == [
            (str(sub6.network_address), 128)] and not addrs[0].get("tentative")
        table = subprocess.run(["ip", "netns", "exec", n1.ns, "nft", "list", "table", "ip6",
                                "overlay"], capture_output=True, text=True, check=True).stdout
        assert f"ip6 daddr {sub6} return" in table and table.count("masquerade") == 2
        mac6 = ipj(n1.ns, "link", "show", DEV)[0]["address"]
        values = {json.dumps(v) for v in topo.leases().values()}
        assert any('"PublicIPv6": "fd00:192:168:1::11"' in v and mac6 in v for v in values)
        # a remote dual-stack node, written by hand in Flannel's format
        key = "/overlay/network/subnets/10.244.250.0-24&fd00:10:244:fa::-64"
        value = json.dumps({"PublicIP": "192.168.1.99", "PublicIPv6": "fd00:192:168:1::99",
                            "BackendType": "vxlan",
                            "BackendData": {"VNI": 1, "VtepMAC": "0e:fa:00:00:04:01"},
                            "BackendV6Data": {"VNI": 1, "VtepMAC": "0e:fa:00:00:06:01"}})
        topo.etcdctl("put", key, value)
        gw = IPv6Address("fd00:10:244:fa::")
        want = {Neigh(gw, "0e:fa:00:00:06:01"),
                FDB("0e:fa:00:00:06:01", IPv6Address("fd00:192:168:1::99")),
                Route(IPv6Network("fd00:10:244:fa::/64"), gw)}
        wait_for(lambda: kernel_entries6(n1.ns) == want, 5, what="the IPv6 half on n1")
        wait_for(lambda: "10.244.250.0/24" in {r["dst"] for r in ipj(
            n2.ns, "route", "show", "proto", "111")}, 5, what="the IPv4 half on n2")
        assert not ipj(n2.ns, "-6", "route", "show", "proto", "111")
        topo.etcdctl("del", key)
        wait_for(lambda: kernel_entries6(n1.ns) == set(), 5, what="the IPv6 half removed")
    finally:
        topo.cleanup()


def test_ipv6_direct_routing_for_a_peer_on_the_same_link(netns, tmp_path):
    from ipaddress import IPv4Address, IPv4Network

    from overlay.lease import Lease, LeaseAttrs

    ip(netns, "route", "add", "default", "via", "192.168.1.1")
    plane = setup_in(netns, str(tmp_path), dual_config(DirectRouting=True))

    def lease(n: int, public6: str) -> Lease:
        return Lease(IPv4Network(f"10.244.{n}.0/24"),
                     LeaseAttrs(IPv4Address(f"192.168.1.{10 + n}"), "vxlan", 1,
                                f"0e:00:00:00:04:{n:02x}", public_ipv6=IPv6Address(public6),
                                v6_vni=1, v6_vtep_mac=f"0e:00:00:00:06:{n:02x}"),
                     ipv6_subnet=IPv6Network(f"fd00:10:244:{n}::/64"))
    res = plane.backend.reconcile([lease(2, "fd00:192:168:1::12"), lease(3, "fd00:99::3")])
    assert not res.failed
    gw3 = IPv6Address("fd00:10:244:3::")
    assert kernel_entries6(netns) == {
        Route(IPv6Network("fd00:10:244:2::/64"), IPv6Address("fd00:192:168:1::12"), direct=True),
        Neigh(gw3, "0e:00:00:00:06:03"), FDB("0e:00:00:00:06:03", IPv6Address("fd00:99::3")),
        Route(IPv6Network("fd00:10:244:3::/64"), gw3)}
    direct = ipj(netns, "-6", "route", "show", "fd00:10:244:2::/64")[0]
    assert (direct["dev"], direct["gateway"]) == ("eth0", "fd00:192:168:1::12")


def test_firewall_drops_of_vxlan_over_ipv6_are_found_on_a_dual_stack_node(netns):
    """diagnose's firewall check reads ip6 nft tables and ip6tables when IPv6 is on."""
    from overlay.diagnose.firewall import read_firewall
    subprocess.run(["ip", "netns", "exec", netns, "ip6tables", "-A", "INPUT", "-p", "udp",
                    "--dport", "8472", "-j", "DROP"], check=True)
    subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", "-"], check=True, text=True,
                   input="table ip6 ovdtest {\n chain filter_in {\n"
                         "  type filter hook input priority 0;\n  udp dport 8472 drop\n }\n}\n")
    with inside(netns):
        v4_only = read_firewall(8472)
        dual = read_firewall(8472, ipv6=True)
    assert v4_only.drops == []
    found = {(r.source, r.where) for r in dual.drops}
    assert ("ip6tables", "filter INPUT") in found and ("nft", "ip6 ovdtest filter_in") in found
    fixes = {r.fix for r in dual.drops}
    assert "ip6tables -t filter -D INPUT -p udp -m udp --dport 8472 -j DROP" in fixes
