"""Hand-packed rtnetlink messages parse back to what was packed (no root, no kernel)."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from overlay.netlink import addr, link, neigh, route, rtnl


def test_neigh_message_round_trip():
    m = neigh.neigh_msg(True, 7, IPv4Address("10.244.2.0"), "0e:00:00:00:00:02")
    assert m.type == rtnl.RTM_NEWNEIGH and m.flags & rtnl.NLM_F_REPLACE
    n = neigh.parse(m.body)
    assert (n.family, n.ifindex, n.state) == (rtnl.AF_INET, 7, rtnl.NUD_PERMANENT)
    assert n.dst == IPv4Address("10.244.2.0") and n.mac == "0e:00:00:00:00:02"
    d = neigh.neigh_msg(False, 7, IPv4Address("10.244.2.0"), None)
    assert d.type == rtnl.RTM_DELNEIGH and neigh.parse(d.body).mac is None


def test_fdb_message_round_trip():
    m = neigh.fdb_msg(True, 9, "0e:aa:bb:cc:dd:ee", IPv4Address("192.168.1.12"))
    n = neigh.parse(m.body)
    assert n.family == rtnl.AF_BRIDGE and n.flags == rtnl.NTF_SELF
    assert n.mac == "0e:aa:bb:cc:dd:ee" and n.dst == IPv4Address("192.168.1.12")


def test_route_message_round_trip():
    m = route.msg(True, IPv4Network("10.244.3.0/24"), IPv4Address("10.244.3.0"), 5, onlink=True)
    r = route.parse(m.body)
    assert r is not None
    assert r.dst == IPv4Network("10.244.3.0/24") and r.gateway == IPv4Address("10.244.3.0")
    assert r.oif == 5 and r.protocol == route.RTPROT_OVERLAY and r.onlink and r.kind == "unicast"
    assert r.table == rtnl.RT_TABLE_MAIN


def test_vxlan_link_message_parses_as_a_link_record():
    m = link.vxlan_add_msg("overlay.1", 42, 8472, IPv4Address("192.168.1.11"), 3,
                           "0e:00:00:00:00:01", 1450)
    rec = link.parse(m.body)
    assert rec.name == "overlay.1" and rec.mtu == 1450 and rec.mac == "0e:00:00:00:00:01"
    assert rec.kind == "vxlan"
    assert rec.vxlan == link.VXLANInfo(vni=42, port=8472, local=IPv4Address("192.168.1.11"),
                                       link=3, learning=False)


def test_attributes_are_4_byte_aligned():
    m = link.vxlan_add_msg("a", 1, 8472, IPv4Address("1.2.3.4"), 1, "0e:00:00:00:00:01", 1400)
    assert len(m.body) % 4 == 0
    off, kinds = 16, []
    while off < len(m.body):
        n, kind = struct.unpack_from("=HH", m.body, off)
        kinds.append(kind & 0x3FFF)
        off += (n + 3) & ~3
    assert off == len(m.body) and kinds == [rtnl.IFLA_IFNAME, rtnl.IFLA_MTU,
                                            rtnl.IFLA_ADDRESS, rtnl.IFLA_LINKINFO]


def test_addr_message():
    m = addr.msg(True, 4, IPv4Interface("10.244.1.0/32"))
    family, plen, _, _, index = struct.unpack_from("=BBBBi", m.body, 0)
    assert (family, plen, index) == (rtnl.AF_INET, 32, 4)
    assert IPv4Address("10.244.1.0").packed in m.body


def test_walk_stops_on_garbage():
    hdr = struct.pack("=LHHLL", 20, rtnl.NLMSG_ERROR, 0, 7, 0) + struct.pack("=i", -2)
    assert [(t, s) for t, _, s, _, _ in rtnl.walk(hdr + b"\0\0\0")] == [(rtnl.NLMSG_ERROR, 7)]
    assert list(rtnl.walk(struct.pack("=LHHLL", 3, 2, 0, 1, 0))) == []


def test_rtnl_is_the_bottom_and_the_package_has_no_import_cycle():
    import ast
    import pathlib

    import overlay.netlink as pkg
    root = pathlib.Path(pkg.__file__).parent
    deps = {}
    for f in root.glob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if (isinstance(node, ast.ImportFrom) and node.module
                    and node.module.startswith("overlay")):
                names.add(node.module)
        deps[f.stem] = {n.rsplit(".", 1)[-1] for n in names if n.startswith("overlay.netlink.")}
        if f.stem == "rtnl":
            assert names == {"overlay.errors"}
    seen: list[str] = []

    def visit(mod: str, path: tuple[str, ...]) -> None:
        assert mod not in path, f"import cycle: {' -> '.join(path + (mod,))}"
        for dep in deps.get(mod, ()):
            visit(dep, path + (mod,))
        seen.append(mod)
    for mod in deps:
        visit(mod, ())


def test_one_address_builder_with_or_without_broadcast():
    a = IPv4Interface("10.244.1.1/24")
    with_brd = addr.msg(True, 4, a, broadcast=True)
    plain = addr.msg(True, 4, a)
    assert IPv4Address("10.244.1.255").packed in with_brd.body
    assert rtnl.IFA_BROADCAST not in rtnl.attrs(plain.body, rtnl.IFADDR.size)
    assert addr.parse(plain.body) == addr.Addr(4, a) == addr.parse(with_brd.body)
    assert addr.msg(False, 4, a).type == rtnl.RTM_DELADDR


def test_route_builder_serves_daemon_and_pod():
    ours = route.msg(True, IPv4Network("10.244.3.0/24"), IPv4Address("10.244.3.0"), 5,
                     onlink=True, replace=True)
    assert ours.flags & rtnl.NLM_F_REPLACE and not ours.flags & rtnl.NLM_F_EXCL
    pod = route.msg(True, IPv4Network("0.0.0.0/0"), IPv4Address("10.244.1.1"), 2,
                    protocol=rtnl.RTPROT_BOOT, metric=1002)
    r = route.parse(pod.body)
    assert r is not None
    assert (r.dst, r.protocol, r.metric, r.onlink, r.ours) == (
        IPv4Network("0.0.0.0/0"), rtnl.RTPROT_BOOT, 1002, False, False)
    assert rtnl.RTA_DST not in rtnl.attrs(pod.body, rtnl.RTMSG.size)  # a default route
    d = route.msg(False, IPv4Network("10.244.3.0/24"), IPv4Address("10.244.3.0"), 5)
    deleted = route.parse(d.body)
    assert deleted is not None
    assert d.type == rtnl.RTM_DELROUTE and deleted.protocol == route.RTPROT_OVERLAY


def test_link_set_changes_only_what_is_asked():
    m = link.set_msg(3, up=True, promisc=None)
    _, _, index, flags, change = rtnl.IFINFO.unpack_from(m.body)
    assert (index, flags, change) == (3, rtnl.IFF_UP, rtnl.IFF_UP)
    down = link.set_msg(name="veth0", up=False)
    _, _, index, flags, change = rtnl.IFINFO.unpack_from(down.body)
    assert (index, flags, change) == (0, 0, rtnl.IFF_UP)
    assert link.parse(down.body).name == "veth0"
    assert link.parse(link.set_msg(3, mtu=1400, mac="0e:00:00:00:00:01").body).mtu == 1400


def test_diagnose_snapshot_comes_from_the_pyroute2_adapter(monkeypatch):
    from ipaddress import IPv4Interface as I

    from overlay.netlink import kernel_state, pyroute2_adapter
    from overlay.netlink.link import Link
    from overlay.netlink.neigh import Neigh
    from overlay.netlink.route import Route
    seen = []

    def read(netns=None):
        seen.append(netns)
        other = Route(IPv4Network("10.9.0.0/16"), None, 2, table=100)
        black = Route(IPv4Network("10.8.0.0/16"), None, None, kind="blackhole")
        plain = Route(IPv4Network("10.7.0.0/16"), None, 2)
        return ([Link(2, "eth0", "veth", True, "UP", 1500, None)], [addr.Addr(2, I("10.0.0.1/24"))],
                [other, black, plain], [Neigh(None, "0e:00:00:00:00:01", 2, 0x80)],
                [Neigh(None, None, 2, 0x80, rtnl.AF_BRIDGE)])
    monkeypatch.setattr(pyroute2_adapter, "read", read)
    k = kernel_state.dump_kernel_state("ns1")
    assert seen == ["ns1"] and [ln.name for ln in k.links] == ["eth0"]
    assert [r.dst for r in k.routes] == [IPv4Network("10.7.0.0/16")]  # main table only
    assert [r.kind for r in k.typed_routes] == ["blackhole"]
    assert k.neigh == [] and k.fdb == []  # no IP / no MAC: not entries


def test_one_struct_requests_are_the_attribute_by_attribute_bytes():
    """The resync's IPv4 neighbour, FDB and route requests are packed by one struct each;
    they must be exactly what the general builders pack (and describe the same)."""
    ip, mac = IPv4Address("10.244.7.0"), "0e:12:34:56:78:9a"
    vtep, net = IPv4Address("192.168.1.13"), IPv4Network("10.244.7.0/24")
    fast = neigh.neigh_msg(True, 11, ip, mac)
    assert fast == neigh._neigh_msg(True, 11, ip, mac)
    assert str(fast.what) == "neigh 10.244.7.0 -> 0e:12:34:56:78:9a"
    assert neigh.fdb_msg(True, 11, mac, vtep).body == neigh._fdb_body(11, mac, vtep)
    for onlink in (True, False):
        r = route.msg(True, net, ip, 11, onlink=onlink)
        assert r.body == route._body(net, ip, 11, route.RTPROT_OVERLAY,
                                     rtnl.RTNH_F_ONLINK if onlink else 0, 0)
    assert str(route.msg(True, net, ip, 11, onlink=True).what) == (
        "route 10.244.7.0/24 via 10.244.7.0 dev #11 onlink")
    assert str(route.msg(False, net, ip, 11, metric=7).what) == (
        "route 10.244.7.0/24 via 10.244.7.0 dev #11 metric 7")


def test_a_lazy_description_reads_as_its_text():
    lazy = rtnl.Lazy("neigh %s -> %s", IPv4Address("10.244.2.0"), "0e:00:00:00:00:02")
    assert lazy == "neigh 10.244.2.0 -> 0e:00:00:00:00:02" and f"{lazy}: x" == (
        "neigh 10.244.2.0 -> 0e:00:00:00:00:02: x")
