"""diagnose and trace over IPv6 on made-up state (no root): the ipv6-data-plane check (the
IPv6 device's MTU and exactly the entries of the remote leases' IPv6 halves), the pod MTU
of a dual-stack node, the IPAM store's IPv6 range, UDP 8472 dropped over IPv6, and trace
between two IPv6 pod addresses."""

from __future__ import annotations

import json
from dataclasses import replace
from ipaddress import IPv6Address, IPv6Interface, IPv6Network

import pytest

from overlay.config import parse_network_config
from overlay.diagnose import checks as dg, firewall as fw_mod, state as st
from overlay.vxlan.entries import FDB, DeviceView, Entries, Neigh, Route

from .test_diagnose import PEERS, healthy, statuses

DEV = "overlay-v6.1"
MY6 = IPv6Address("fd00:192:168:1::11")


def dual_stack(device: bool = True, mtu: int = 1430, own_v6: bool = True):
    """``healthy()``'s cluster with IPv6 on: every lease has an IPv6 half, and the node an
    overlay-v6.1 holding exactly the peers' IPv6 entries."""
    node, cluster = healthy()
    cluster.config = parse_network_config({"Network": "10.244.0.0/16", "EnableIPv6": True,
                                           "IPv6Network": "fd00:10:244::/56"})
    leases = []
    entries = Entries()
    for i, lease in enumerate(cluster.leases, start=1):
        public6 = IPv6Address(f"fd00:192:168:1::{10 + i}")
        mac6 = f"0e:00:00:00:06:{i:02x}"
        if i == 1 and not own_v6:
            leases.append(lease)
            continue
        leases.append(replace(lease, ipv6_subnet=IPv6Network(f"fd00:10:244:{i}::/64"),
                              attrs=replace(lease.attrs, public_ipv6=public6, v6_vni=1,
                                            v6_vtep_mac=mac6)))
        if i > 1:
            gw = IPv6Address(f"fd00:10:244:{i}::")
            for e in (Neigh(gw, mac6), FDB(mac6, public6),
                      Route(IPv6Network(f"fd00:10:244:{i}::/64"), gw)):
                entries.add(e)
    cluster.leases = leases
    if device:
        node.ipv6_device = DeviceView(DEV, mtu, "0e:00:00:00:06:01", MY6, 1500,
                                      IPv6Interface(f"{MY6}/64"), entries)
    return node, cluster


def check(node, cluster) -> st.CheckResult:
    checks, _ = statuses(node, cluster)
    return checks["ipv6-data-plane"]


def test_ipv4_only_cluster_passes():
    node, cluster = healthy()
    assert check(node, cluster).status == st.PASS


def test_healthy_dual_stack_node_passes():
    node, cluster = dual_stack()
    c = check(node, cluster)
    assert c.status == st.PASS, c.found
    assert f"{len(PEERS)} peer(s)" in c.expected


def test_ipv6_device_mtu_of_ipv4_is_a_failure():
    node, cluster = dual_stack(mtu=1450)  # flannel#1781's MTU
    c = check(node, cluster)
    assert c.status == st.FAIL and "MTU 1450, want 1430" in c.found
    assert f"ip link set {DEV} mtu 1430" in c.fix


def test_missing_and_stale_ipv6_entries_are_named():
    node, cluster = dual_stack()
    assert node.ipv6_device is not None
    es = node.ipv6_device.entries
    del es.routes[IPv6Network("fd00:10:244:3::/64")]
    es.add(Neigh(IPv6Address("fd00:10:244:9::"), "0e:00:00:00:06:09"))
    c = check(node, cluster)
    assert c.status == st.FAIL
    assert "missing: route fd00:10:244:3::/64 via fd00:10:244:3:: onlink" in c.found
    assert "stale (no lease): neigh fd00:10:244:9:: lladdr 0e:00:00:00:06:09" in c.found


def test_no_ipv6_device_fails_and_no_ipv6_half_warns():
    node, cluster = dual_stack(device=False)
    c = check(node, cluster)
    assert c.status == st.FAIL and f"no IPv6 VXLAN device {DEV}" in c.found
    node, cluster = dual_stack(device=False, own_v6=False)
    c = check(node, cluster)
    assert c.status == st.WARN and "no IPv6 half" in c.found and "--public-ipv6" in c.fix


def test_check_runs_from_run_checks_only_once():
    node, cluster = dual_stack()
    report = dg.run_checks(node, cluster, st.DiagnoseOptions())
    assert [c.name for c in report.checks].count("ipv6-data-plane") == 1


def test_ipv6_df_probes_pass_or_name_the_path_mtu_problem():
    node, cluster = dual_stack()
    peers = [(IPv6Network(f"fd00:10:244:{i}::/64"), IPv6Address(f"fd00:10:244:{i}::"))
             for i in (2, 3)]
    node.probes6 = [st.Probe6Result(s, t, 1382, 2, 2) for s, t in peers]
    c = check(node, cluster)
    assert c.status == st.PASS and "2 peer(s) answered 1382-byte DF pings over IPv6" in c.found
    node.probes6 = [st.Probe6Result(*peers[0], 1382, 2, 2),
                    st.Probe6Result(*peers[1], 1382, 2, 0, small_received=1)]
    c = check(node, cluster)
    assert c.status == st.FAIL and "fd00:10:244:3:: (fd00:10:244:3::/64) answers only small" \
        in c.found and "below 1430" in c.found and "Backend.MTU" in c.fix
    node.probes6 = [st.Probe6Result(*peers[1], 1382, 2, 0, small_received=0)]
    c = check(node, cluster)
    assert c.status == st.FAIL and "does not answer" in c.found and "8472" in c.fix


def test_probe_peers6_pings_the_programmed_ipv6_vteps_at_the_device_mtu():
    from overlay.diagnose.gather import probe_peers6
    from overlay.diagnose.probe import Echo
    node, cluster = dual_stack()
    assert node.ipv6_device is not None
    calls = []

    def echo(targets, size, count, timeout):
        calls.append((list(targets), size))
        return {t: Echo(count, count if size == 56 or str(t).startswith("fd00:10:244:2:")
                        else 0) for t in targets}
    got = probe_peers6(cluster.leases, node.ipv6_device, 2, 1.0, echo)
    assert calls[0] == ([IPv6Address("fd00:10:244:2::"), IPv6Address("fd00:10:244:3::")], 1382)
    assert calls[1] == ([IPv6Address("fd00:10:244:3::")], 56)
    assert [(p.received, p.small_received) for p in got] == [(2, None), (0, 1)]


def _dual_env(node, mtu):
    node.subnet_env = node.subnet_env._replace(
        mtu=mtu, ipv6_network=IPv6Network("fd00:10:244::/56"),
        ipv6_subnet=IPv6Interface("fd00:10:244:1::1/64"))


def test_pod_mtu_of_a_dual_stack_node_is_the_smaller_devices():
    node, cluster = dual_stack()
    links = [ln._replace(mtu=1430) if ln.name in ("cni0", "veth1234") else ln
             for ln in node.kernel.links]
    node.kernel = replace(node.kernel, links=links)
    _dual_env(node, 1430)
    checks, _ = statuses(node, cluster)
    assert checks["mtu"].status == st.PASS, checks["mtu"].found
    assert "OVERLAY_MTU 1430 (the smaller of both families')" in checks["mtu"].expected
    _dual_env(node, 1450)  # the IPv4 device's: too big for IPv6
    checks, _ = statuses(node, cluster)
    assert checks["mtu"].status == st.FAIL and "OVERLAY_MTU 1450 != 1430" in checks["mtu"].found


def test_backend_mtu_gives_the_ipv6_device_the_outer_mtu_less_70():
    node, cluster = dual_stack(mtu=1330)
    cluster.config = replace(cluster.config, backend=replace(cluster.config.backend, mtu=1400))
    assert check(node, cluster).status == st.PASS
    node, cluster = dual_stack(mtu=1400)  # Backend.MTU given to the device as is: #1781
    cluster.config = replace(cluster.config, backend=replace(cluster.config.backend, mtu=1400))
    c = check(node, cluster)
    assert c.status == st.FAIL and "MTU 1400, want 1330" in c.found


# --- ipv6-pod-ips: the IPv6 range of the IPAM store ----------------------------------------

def _with_pod6(node, ip="fd00:10:244:1::2", cid="c0ffee", ifname="eth0"):
    """The healthy node's pod (veth of c0ffee/eth0 on cni0) holding an IPv6 address too."""
    from overlay.netlink.pod import host_veth_name
    node.kernel = replace(node.kernel, links=[
        ln._replace(name=host_veth_name("c0ffee", "eth0")) if ln.name == "veth1234" else ln
        for ln in node.kernel.links])
    node.reservations6 = [st.Reservation6(IPv6Address(ip), cid, ifname, f"/x/{ip}")]
    return node


def ipam6(node, cluster) -> st.CheckResult:
    checks, _ = statuses(node, cluster)
    return checks["ipv6-pod-ips"]


def test_ipv6_reservations_of_the_pods_on_the_bridge_pass():
    node, cluster = dual_stack()
    c = ipam6(_with_pod6(node), cluster)
    assert c.status == st.PASS and "1 IPv6 address(es), 1 bridge port(s)" in c.found
    assert "fd00:10:244:1::/64" in c.expected
    node, cluster = healthy()
    assert ipam6(node, cluster).status == st.PASS  # IPv4-only: nothing to judge


def test_leaked_ipv6_reservation_fails_with_its_file():
    node, cluster = dual_stack()
    node = _with_pod6(node)
    node.reservations6.append(st.Reservation6(IPv6Address("fd00:10:244:1::9"), "deadbeef",
                                              "eth0", "/x/fd00:10:244:1::9"))
    c = ipam6(node, cluster)
    assert c.status == st.FAIL
    assert ("leaked (no pod interface on the bridge): fd00:10:244:1::9 (container deadbeef, "
            "eth0, no IPv4 address)") in c.found
    assert "CNI GC" in c.fix and "/x/fd00:10:244:1::9" in c.fix


def test_ipv6_reservation_outside_the_nodes_ipv6_subnet_or_on_its_gateway_fails():
    for ip in ("fd00:10:244:7::2", "fd00:10:244:1::1", "fd00:10:244:1::"):
        node, cluster = dual_stack()
        c = ipam6(_with_pod6(node, ip), cluster)
        assert c.status == st.FAIL and "outside fd00:10:244:1::/64" in c.found, ip
        assert ip in c.found and f"/x/{ip}" in c.fix


def test_ipv6_reservations_on_a_node_without_an_ipv6_subnet_fail():
    node, cluster = dual_stack(own_v6=False)
    c = ipam6(_with_pod6(node), cluster)
    assert c.status == st.FAIL and "this node has no IPv6 subnet" in c.found


def test_ipv6_subnet_comes_from_subnet_env_without_etcd():
    node, cluster = dual_stack()
    _dual_env(node, 1430)
    c = ipam6(_with_pod6(node, "fd00:10:244:7::2"), st.ClusterState(error="etcd down"))
    assert c.status == st.FAIL and "outside fd00:10:244:1::/64" in c.found


# --- firewall: UDP 8472 dropped over IPv6 (nft -j / ip6tables-save as this machine prints) --

NFT_V6 = json.dumps({"nftables": [
    {"table": {"family": "ip6", "name": "f6", "handle": 1}},
    {"chain": {"family": "ip6", "table": "f6", "name": "input", "handle": 1, "type": "filter",
               "hook": "input", "prio": 0, "policy": "accept"}},
    {"rule": {"family": "ip6", "table": "f6", "chain": "input", "handle": 2, "expr": [
        {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}},
                   "right": 8472}},
        {"counter": {"packets": 0, "bytes": 0}}, {"drop": None}]}},
    {"table": {"family": "inet", "name": "fi", "handle": 2}},
    {"chain": {"family": "inet", "table": "fi", "name": "input", "handle": 1, "type": "filter",
               "hook": "input", "prio": 0, "policy": "accept"}},
    {"rule": {"family": "inet", "table": "fi", "chain": "input", "handle": 2, "expr": [
        {"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": "ipv6"}},
        {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}},
                   "right": 8472}},
        {"drop": None}]}}]})
IP6TABLES_SAVE = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p udp -m udp --dport 8472 -j DROP
COMMIT
"""


def test_nft_drops_of_vxlan_over_ipv6_are_found_in_ip6_and_inet_tables():
    fw = fw_mod.parse_nft_ruleset(NFT_V6, 8472, families=("ip", "inet", "ip6"))
    assert [r.fix for r in fw.drops] == ["nft delete rule ip6 f6 input handle 2",
                                         "nft delete rule inet fi input handle 2"]
    # an IPv4-only node's VXLAN never runs over IPv6: neither rule drops it
    assert fw_mod.parse_nft_ruleset(NFT_V6, 8472).drops == []
    ipv4_only = NFT_V6.replace('"right": "ipv6"', '"right": "ipv4"')
    fw = fw_mod.parse_nft_ruleset(ipv4_only, 8472, families=("ip", "inet", "ip6"))
    assert [r.where for r in fw.drops] == ["ip6 f6 input", "inet fi input"]


def test_ip6tables_drop_fails_the_firewall_check_with_its_delete_command():
    node, cluster = dual_stack()
    node.firewall = fw_mod.parse_iptables_save(IP6TABLES_SAVE, 8472, "ip6tables")
    checks, _ = statuses(node, cluster)
    c = checks["firewall"]
    assert c.status == st.FAIL and "ip6tables filter INPUT" in c.found
    assert c.fix == "ip6tables -t filter -D INPUT -p udp -m udp --dport 8472 -j DROP"


# --- trace over IPv6 ------------------------------------------------------------------------

V6DEV, ETH_IX, BR_IX = 8, 2, 6
SRC6, DST6 = IPv6Address("fd00:10:244:1::2"), IPv6Address("fd00:10:244:2::5")
PEER6, PEER_MAC6 = IPv6Address("fd00:192:168:1::12"), "0e:00:00:00:06:02"


def ipv6_kernel(node, fdb=True, neigh=True):
    """The node's IPv6 side as ``read_ipv6_state`` gives it: overlay-v6.1 over eth0, the
    bridge's IPv6 gateway, node2's IPv6 VTEP entries."""
    from overlay.netlink.addr import Addr6
    from overlay.netlink.kernel_state import KernelState, NeighInfo
    from overlay.netlink.link import Link, VXLANInfo
    from overlay.netlink.rtnl import AF_BRIDGE
    links = [*node.kernel.links, Link(
        V6DEV, "overlay-v6.1", "vxlan", True, "UNKNOWN", 1430, "0e:00:00:00:06:01",
        vxlan=VXLANInfo(1, 8472, None, ETH_IX, False, MY6))]
    addrs: list = [Addr6(BR_IX, IPv6Interface("fd00:10:244:1::1/64")),
             Addr6(ETH_IX, IPv6Interface(f"{MY6}/64"))]
    neighs = [NeighInfo(IPv6Address("fd00:10:244:2::"), PEER_MAC6, V6DEV, 0x80)] if neigh else []
    fdbs = [NeighInfo(PEER6, PEER_MAC6, V6DEV, 0xC0, family=AF_BRIDGE)] if fdb else []
    return KernelState(links, addrs, [], neighs, fdbs)


def route6_reply(gateway, oif, onlink=False):
    from overlay.netlink import rtnl
    body = rtnl.RTMSG.pack(10, 128, 0, 0, 254, 0, 0, 1, rtnl.RTNH_F_ONLINK if onlink else 0)
    if gateway is not None:
        body += rtnl.attr(rtnl.RTA_GATEWAY, IPv6Address(gateway).packed)
    return body + rtnl.attr_u32(rtnl.RTA_OIF, oif)


def trace6(monkeypatch, kernel, cluster, forwarding=True):
    from overlay.diagnose import trace as trace_mod
    from overlay.netlink import kernel_state, rtnl
    from overlay.subnet.etcdconf import make_etcd_options
    sent = []

    class Kernel:  # one rtnetlink socket answering IPv6 route gets as the node would
        def __init__(self, netns=None):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        def batch(self, msgs):
            sent.append(msgs)
            out = []
            for m in msgs:
                a = rtnl.attrs(m.body, rtnl.RTMSG.size)
                dst = IPv6Address(a[rtnl.RTA_DST])
                if dst == PEER6:
                    out.append(([route6_reply(None, ETH_IX)], 0))
                elif rtnl.RTA_IIF in a and not forwarding:
                    out.append(([], 113))
                else:
                    out.append(([route6_reply("fd00:10:244:2::", V6DEV, onlink=True)], 0))
            return out

    monkeypatch.setattr(kernel_state, "open_rtnl", Kernel)
    monkeypatch.setattr(kernel_state, "read_ipv6_state", lambda: kernel)
    monkeypatch.setattr(kernel_state, "dump_kernel_state", lambda: pytest.fail("IPv4 read"))
    return trace_mod.trace_path(SRC6, DST6, make_etcd_options(), cluster=cluster), sent


def test_trace_over_ipv6_walks_overlay_v6_to_the_remote_vtep(monkeypatch):
    node, cluster = dual_stack()
    t, sent = trace6(monkeypatch, ipv6_kernel(node), cluster)
    assert [(h.name, h.status) for h in t.hops] == [
        ("source-node", "ok"), ("source-bridge", "ok"), ("route", "ok"), ("vxlan-device", "ok"),
        ("remote-vtep-mac", "ok"), ("remote-public-ip", "ok"), ("underlay", "ok"),
        ("destination-node", "ok")], t.hops
    hops = {h.name: h.detail for h in t.hops}
    assert hops["source-node"] == f"{SRC6} in fd00:10:244:1::/64, node {MY6}"
    assert "fd00:10:244:1::1/64" in hops["source-bridge"]
    assert hops["route"] == f"{DST6} via fd00:10:244:2:: dev overlay-v6.1"
    assert f"overlay-v6.1 VNI 1 port 8472 local {MY6} mtu 1430 up" == hops["vxlan-device"]
    assert hops["remote-vtep-mac"] == f"fd00:10:244:2:: -> {PEER_MAC6}"
    assert hops["remote-public-ip"].startswith(f"{PEER_MAC6} -> {PEER6}")
    assert hops["underlay"] == f"{PEER6} via direct dev eth0"
    assert t.to_dict()["src"] == str(SRC6)
    forwarded, plain, underlay = sent[0]  # the three route gets in one send, all IPv6
    assert all(m.body[0] == 10 for m in (forwarded, plain, underlay))


def test_trace_over_ipv6_names_a_missing_fdb_entry_and_forwarding_off(monkeypatch):
    node, cluster = dual_stack()
    t, _ = trace6(monkeypatch, ipv6_kernel(node, fdb=False), cluster, forwarding=False)
    hops = {h.name: h for h in t.hops}
    assert hops["forwarding"].fix == "sysctl -w net.ipv6.conf.all.forwarding=1"
    assert hops["remote-public-ip"].status == "missing"
    assert hops["remote-public-ip"].fix == (f"bridge fdb replace {PEER_MAC6} dev overlay-v6.1 "
                                            f"dst {PEER6} self permanent")
    assert not t.ok
    t, _ = trace6(monkeypatch, ipv6_kernel(node, neigh=False), cluster)
    hop = next(h for h in t.hops if h.name == "remote-vtep-mac")
    assert hop.status == "missing" and hop.fix == (
        f"ip neigh replace fd00:10:244:2:: lladdr {PEER_MAC6} dev overlay-v6.1 nud permanent")


def test_trace_over_ipv6_on_an_ipv6_only_cluster_uses_its_leases_as_they_are(monkeypatch):
    from overlay.lease import Lease, LeaseAttrs
    node, dual = dual_stack()
    cfg = parse_network_config({"EnableIPv4": False, "EnableIPv6": True,
                                "IPv6Network": "fd00:10:244::/56"})
    leases = [Lease(IPv6Network(f"fd00:10:244:{i}::/64"),
                    LeaseAttrs(public_ip=IPv6Address(f"fd00:192:168:1::{10 + i}"), vni=1,
                               vtep_mac=f"0e:00:00:00:06:{i:02x}"))
              for i in (1, 2, 3)]
    cluster = st.ClusterState(config=cfg, leases=leases, now=dual.now)
    t, _ = trace6(monkeypatch, ipv6_kernel(node), cluster)
    assert t.ok and [h.status for h in t.hops] == ["ok"] * 8, t.hops
    assert t.hops[-1].detail == f"{DST6} in fd00:10:244:2::/64, node {PEER6} VTEP {PEER_MAC6}"
    # its IPAM: the lease's subnet is the IPv6 one; a leak names no missing IPv4 address
    node.kernel = replace(node.kernel, links=[ln for ln in node.kernel.links
                                              if ln.name != "overlay.1"])
    node.subnet_env = node.subnet_env._replace(
        network=None, subnet=None, ipv6_network=IPv6Network("fd00:10:244::/56"),
        ipv6_subnet=IPv6Interface("fd00:10:244:1::1/64"))
    node.reservations, node.reservations6 = [], [st.Reservation6(
        IPv6Address("fd00:10:244:1::9"), "gone", "eth0", "/x/fd00:10:244:1::9")]
    c = dg.check_ipv6_pod_ips(node, cluster, dg.derive_facts(node, cluster, st.DiagnoseOptions()))
    assert c.status == st.FAIL and "fd00:10:244:1::/64" in c.expected
    assert "(container gone, eth0)" in c.found
    dg.run_checks(node, cluster, st.DiagnoseOptions())  # and no check raises on such a node
