"""diagnose on an IPv6-only node (EnableIPv4 false), on made-up state: the IPv4 checklist
run over the IPv6 data plane (overlay-v6.1, its /128 address and MTU, the bridge's IPv6
gateway, every remote lease's route, neighbour and FDB entry, IPv6 forwarding, ip6
firewall rules, the IPAM store's IPv6 range, DF probes over ICMPv6).  A healthy node
passes every check; each breakage fails exactly its check."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta
from ipaddress import IPv6Address, IPv6Interface, IPv6Network
from typing import Any, cast

from overlay.config import parse_network_config
from overlay.diagnose import checks as dg, firewall as fw_mod, gather as ga, state as st
from overlay.diagnose.probe import Echo
from overlay.lease import Lease, LeaseAttrs
from overlay.netlink.addr import Addr6
from overlay.netlink.kernel_state import (
    AddrInfo,
    KernelState,
    LinkInfo,
    NeighInfo,
    RouteInfo,
    VXLANInfo,
)
from overlay.netlink.pod import host_veth_name
from overlay.netlink.route import Route6
from overlay.netlink.rtnl import AF_BRIDGE
from overlay.subnet.etcdconf import make_etcd_options
from overlay.subnetenv import SubnetEnv

from .test_diagnose import NOW, OPTS

DEV = "overlay-v6.1"
VX, BR, ETH = 5, 6, 2
MY6 = IPv6Address("fd00:192:168:1::11")
MY_MAC = "0e:00:00:00:06:01"
OWN6 = IPv6Network("fd00:10:244:1::/64")
POD6 = IPv6Address("fd00:10:244:1::2")
PEERS6 = {  # subnet -> (public IPv6, VTEP MAC)
    IPv6Network("fd00:10:244:2::/64"): (IPv6Address("fd00:192:168:1::12"), "0e:00:00:00:06:02"),
    IPv6Network("fd00:10:244:3::/64"): (IPv6Address("fd00:192:168:1::13"), "0e:00:00:00:06:03"),
}
S2 = IPv6Network("fd00:10:244:2::/64")
KERNEL, OURS = 2, 111  # route protocols


def lease6(subnet, ip, mac):
    return Lease(subnet, LeaseAttrs(ip, "vxlan", 1, mac), expiration=NOW + timedelta(hours=1),
                 etcd_lease_id=42)


def ipv6_only():
    """A healthy IPv6-only node: the IPv6 kernel state as ``read_ipv6_state`` gives it."""
    cfg = parse_network_config({"EnableIPv4": False, "EnableIPv6": True,
                                "IPv6Network": "fd00:10:244::/56"})
    leases = [lease6(OWN6, MY6, MY_MAC)] + [lease6(s, ip, m) for s, (ip, m) in PEERS6.items()]
    cluster = st.ClusterState(config=cfg, leases=leases, now=NOW)
    veth = host_veth_name("c0ffee", "eth0")
    links = [
        LinkInfo(1, "lo", "", True, "UNKNOWN", 65536, "00:00:00:00:00:00"),
        LinkInfo(ETH, "eth0", "veth", True, "UP", 1500, "aa:00:00:00:00:01"),
        LinkInfo(VX, DEV, "vxlan", True, "UNKNOWN", 1430, MY_MAC,
                 vxlan=VXLANInfo(1, 8472, None, ETH, False, MY6)),
        LinkInfo(BR, "cni0", "bridge", True, "UP", 1430, "aa:00:00:00:00:02"),
        LinkInfo(7, veth, "veth", True, "UP", 1430, "aa:00:00:00:00:03", master=BR),
    ]
    addrs = [Addr6(1, IPv6Interface("::1/128")),
             Addr6(ETH, IPv6Interface(f"{MY6}/64")),
             Addr6(ETH, IPv6Interface("fe80::a800:ff:fe00:1/64")),
             Addr6(VX, IPv6Interface("fd00:10:244:1::/128")),
             Addr6(VX, IPv6Interface("fe80::c00:ff:fe00:601/64")),
             Addr6(BR, IPv6Interface("fd00:10:244:1::1/64"))]
    routes = [Route6(IPv6Network("fd00:192:168:1::/64"), None, ETH, protocol=KERNEL),
              Route6(OWN6, None, BR, protocol=KERNEL),
              # the kernel's route for the device's own /128: inside our subnet, not stale
              Route6(IPv6Network("fd00:10:244:1::/128"), None, VX, protocol=KERNEL),
              Route6(IPv6Network("fe80::/64"), None, VX, protocol=KERNEL)]
    neigh, fdb = [], []
    for s, (ip, mac) in PEERS6.items():
        routes.append(Route6(s, s.network_address, VX, onlink=True, protocol=OURS))
        neigh.append(NeighInfo(s.network_address, mac, VX, 0x80))
        fdb.append(NeighInfo(ip, mac, VX, 0xC0, family=AF_BRIDGE))
    # read_ipv6_state's records: KernelState's shapes holding IPv6 values (its casts)
    kernel = KernelState(links, cast(list[AddrInfo], addrs), cast(list[RouteInfo], routes),
                         neigh, fdb)
    conf = st.CNIConfigFile("/etc/cni/net.d/10-overlay.conflist", "overlay", (
        {"type": "overlay", "bridge": "cni0", "subnetFile": "/run/overlay/subnet.env",
         "dataDir": "/var/lib/cni/networks"},))
    node = st.NodeState(
        kernel=kernel, ip_forward="0", ip6_forward="1",
        subnet_env=SubnetEnv(None, None, 1430, ipv6_network=IPv6Network("fd00:10:244::/56"),
                             ipv6_subnet=IPv6Interface("fd00:10:244:1::1/64")),
        cni_files=[conf], cni_bins={"overlay": True},
        reservations6=[st.Reservation6(POD6, "c0ffee", "eth0", f"/x/{POD6}")],
        ipam_dir="/var/lib/cni/networks/overlay",
        probes=[st.ProbeResult(s, s.network_address, 1382, 2, 2) for s in PEERS6],
        pod_probes=[st.PodProbe(POD6, "c0ffee", "eth0", 2, 2)],
        daemon_pids=[4242])
    return node, cluster


def statuses(node, cluster):
    report = dg.run_checks(node, cluster, OPTS, "http://127.0.0.1:2379")
    return {c.name: c for c in report.checks}, report


def only(node, cluster, *names):
    checks, report = statuses(node, cluster)
    failed = sorted(n for n, c in checks.items() if c.status == st.FAIL)
    assert failed == sorted(names), {n: checks[n].found for n in failed}
    return checks[names[0]]


def with_kernel(node, **changes):
    node.kernel = replace(node.kernel, **changes)
    return node


def test_healthy_ipv6_only_node_passes_every_check():
    node, cluster = ipv6_only()
    checks, report = statuses(node, cluster)
    assert {n: c.found for n, c in checks.items() if c.status != st.PASS} == {}
    assert "pod-ips" not in checks and "ipv6-data-plane" not in checks
    assert report.facts.vxlan_name == DEV and report.facts.public_ip == MY6
    assert report.to_dict()["node"]["peers"] == 2
    assert "fd00:10:244:1::/128" in checks["vxlan-device"].found
    assert f"local {MY6} " in checks["vxlan-device"].found
    assert "fd00:10:244:1::1/64" in checks["bridge"].found
    assert checks["ip-forward"].expected == "net.ipv6.conf.all.forwarding = 1"
    assert "- 70)" in checks["mtu"].expected and "MTU 1430" in checks["mtu"].expected
    assert "over IPv6" in checks["firewall"].expected
    assert checks["routes"].found == "all 2 present, none stale"


def test_a_deleted_route_fails_routes_with_its_ipv6_fix():
    node, cluster = ipv6_only()
    with_kernel(node, routes=[r for r in node.kernel.routes if r.dst != S2])
    c = only(node, cluster, "routes")
    assert "missing: fd00:10:244:2::/64" in c.found
    assert c.fix.startswith(f"ip route replace {S2} via fd00:10:244:2:: dev {DEV} onlink "
                            "proto 111")


def test_a_deleted_fdb_entry_fails_fdb():
    node, cluster = ipv6_only()
    mac = PEERS6[S2][1]
    with_kernel(node, fdb=[e for e in node.kernel.fdb if e.mac != mac])
    c = only(node, cluster, "fdb")
    assert c.fix.startswith(f"bridge fdb replace {mac} dev {DEV} dst fd00:192:168:1::12 self "
                            "permanent")


def test_a_deleted_neighbour_fails_neigh():
    node, cluster = ipv6_only()
    with_kernel(node, neigh=[n for n in node.kernel.neigh if n.dst != S2.network_address])
    c = only(node, cluster, "neigh")
    assert c.fix.startswith(f"ip neigh replace fd00:10:244:2:: lladdr {PEERS6[S2][1]} dev "
                            f"{DEV} nud permanent")


def test_ipv6_forwarding_off_fails_ip_forward_and_ipv4s_does_not_count():
    node, cluster = ipv6_only()
    assert node.ip_forward == "0"  # an IPv6-only node need not forward IPv4
    node.ip6_forward = "0"
    c = only(node, cluster, "ip-forward")
    assert c.fix.startswith("sysctl -w net.ipv6.conf.all.forwarding=1")


def test_device_mtu_changed_fails_mtu():
    node, cluster = ipv6_only()
    links = [ln._replace(mtu=1400) if ln.index == VX else ln for ln in node.kernel.links]
    with_kernel(node, links=links)
    c = only(node, cluster, "mtu")
    assert f"{DEV} MTU 1400 != 1430" in c.found
    assert c.fix.startswith(f"ip link set {DEV} mtu 1430")


def test_device_without_its_128_address_fails_vxlan_device():
    node, cluster = ipv6_only()
    with_kernel(node, addrs=[a for a in node.kernel.addrs
                             if a.interface != IPv6Interface("fd00:10:244:1::/128")])
    c = only(node, cluster, "vxlan-device")
    assert "address missing" in c.found


def test_device_mac_not_the_leases_fails_lease():
    node, cluster = ipv6_only()
    links = [ln._replace(mac="0e:00:00:00:06:99") if ln.index == VX else ln
             for ln in node.kernel.links]
    with_kernel(node, links=links)
    c = only(node, cluster, "lease")
    assert f"VtepMAC {MY_MAC} != {DEV} MAC 0e:00:00:00:06:99" in c.found


def test_bridge_without_its_ipv6_gateway_fails_bridge():
    node, cluster = ipv6_only()
    with_kernel(node, addrs=[a for a in node.kernel.addrs
                             if a.interface != IPv6Interface("fd00:10:244:1::1/64")])
    c = only(node, cluster, "bridge")
    assert c.fix == "ip addr add fd00:10:244:1::1/64 dev cni0"


def test_a_stale_ipv6_route_on_the_device_fails_routes():
    node, cluster = ipv6_only()
    gone = IPv6Network("fd00:10:244:9::/64")
    stale = cast(RouteInfo, Route6(gone, gone.network_address, VX, True, protocol=OURS))
    with_kernel(node, routes=[*node.kernel.routes, stale])
    c = only(node, cluster, "routes")
    assert f"stale (no lease): {gone}" in c.found


def test_silent_ipv6_peer_fails_peer_vteps_with_the_ipv6_header_size():
    node, cluster = ipv6_only()
    node.probes = [st.ProbeResult(S2, S2.network_address, 1382, 2, 0, small_received=1),
                   *node.probes[1:]]
    c = only(node, cluster, "peer-vteps")
    assert "path MTU below 1430" in c.found and "subnet's ::" in c.expected


def test_ipv6_pod_outside_the_subnet_fails_ipv6_pod_ips():
    node, cluster = ipv6_only()
    node.reservations6 = [st.Reservation6(IPv6Address("fd00:10:244:7::2"), "c0ffee", "eth0",
                                          "/x/stray")]
    only(node, cluster, "ipv6-pod-ips")


def test_ip6_drop_fails_the_firewall_and_an_ipv4_only_drop_does_not():
    rule: dict[str, Any] = {"family": "inet", "table": "t", "chain": "in", "handle": 3, "expr": [
        {"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": "ipv4"}},
        {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}},
                   "right": 8472}}, {"drop": None}]}
    chain = {"family": "inet", "table": "t", "name": "in", "hook": "input", "policy": "accept"}
    text = '{"nftables": [{"chain": %s}, {"rule": %s}]}'
    v4only = text % (json.dumps(chain), json.dumps(rule))
    assert fw_mod.parse_nft_ruleset(v4only, 8472, families=("inet", "ip6")).drops == []
    assert fw_mod.parse_nft_ruleset(v4only, 8472, families=("ip", "inet")).drops
    rule6 = {**rule, "family": "ip6", "table": "x", "expr": rule["expr"][1:]}
    chain6 = {**chain, "family": "ip6", "table": "x"}
    v6 = text % (json.dumps(chain6), json.dumps(rule6))
    state = fw_mod.parse_nft_ruleset(v6, 8472, families=("inet", "ip6"))
    assert [r.fix for r in state.drops] == ["nft delete rule ip6 x in handle 3"]
    node, cluster = ipv6_only()
    node.firewall = state
    c = only(node, cluster, "firewall")
    assert c.fix == "nft delete rule ip6 x in handle 3"


def test_probe_peers_pings_ipv6_only_peers_over_icmpv6_at_the_device_mtu():
    _, cluster = ipv6_only()
    remotes = cluster.leases[1:]
    asked = []

    def echo6(targets, size, count, timeout):
        asked.append((list(targets), size))
        return {t: Echo(count, count if t != S2.network_address or size == 56 else 0)
                for t in targets}

    def echo4(*a):
        raise AssertionError("IPv4 echo for IPv6 peers")

    out = ga.probe_peers(remotes, 1430, 2, 1.0, echo=echo4, echo6=echo6)
    assert asked[0] == ([s.network_address for s in PEERS6], 1382)
    assert asked[1] == ([S2.network_address], 56)  # the silent one, small
    assert [(p.target, p.received, p.small_received) for p in out] == [
        (S2.network_address, 0, 1), (IPv6Address("fd00:10:244:3::"), 2, None)]


def test_probe_local_pods6_pings_the_ipv6_reservations():
    node, _ = ipv6_only()
    got = ga.probe_local_pods6(node.reservations6, 2, 1.0,
                               echo=lambda ts, size, n, t: {x: Echo(n, n) for x in ts})
    assert [(p.ip, p.received) for p in got] == [(POD6, 2)]


def test_diagnose_reads_the_ipv6_kernel_state_and_probes_over_ipv6(monkeypatch):
    """The wiring: the IPv6 kernel state replaces the IPv4 one once the config is read,
    the firewall is read for IPv6 alone, and both probes go over ICMPv6."""
    healthy_node, cluster = ipv6_only()
    first = st.NodeState(**{**healthy_node.__dict__, "kernel": KernelState(),
                            "probes": None, "pod_probes": None})
    calls: dict[str, Any] = {}

    def fake_cluster(etcd, local_ips):
        calls["local_ips"] = set(local_ips(cluster.config))
        return cluster

    monkeypatch.setattr(ga, "gather_node", lambda opts: first)
    monkeypatch.setattr(ga, "gather_cluster", fake_cluster)
    monkeypatch.setattr("overlay.netlink.kernel_state.read_ipv6_state",
                        lambda: healthy_node.kernel)

    def firewall(port, ipv6=False, ipv4=True):
        calls["firewall"] = (port, ipv6, ipv4)
        return fw_mod.FirewallState()

    monkeypatch.setattr(ga, "read_firewall", firewall)
    monkeypatch.setattr(ga, "probe_peers6", lambda *a: (_ for _ in ()).throw(AssertionError))
    real_probe = ga.probe_peers
    monkeypatch.setattr(ga, "probe_peers", lambda remotes, mtu, count, timeout: real_probe(
        remotes, mtu, count, timeout, echo6=lambda ts, size, n, t: {x: Echo(n, n) for x in ts}))
    monkeypatch.setattr(ga, "probe_local_pods6", lambda rs, n, t: [
        st.PodProbe(r.ip, r.container_id, r.ifname, n, n) for r in rs])
    monkeypatch.setattr(ga, "read_pods", lambda etcd, cluster: ga.PodsState())
    monkeypatch.setattr(ga, "check_policy_table", lambda *a, **_kw: st.CheckResult(
        "policy-table", st.PASS, "", ""))
    report = ga.diagnose(OPTS, make_etcd_options(endpoints="http://127.0.0.1:1"))
    assert MY6 in calls["local_ips"] and calls["firewall"] == (8472, True, False)
    checks = {c.name: c for c in report.checks}
    assert {n: c.found for n, c in checks.items() if c.status != st.PASS} == {}
    assert "answered 1382-byte DF pings" in checks["peer-vteps"].found
    assert checks["local-pods"].found == "1 pod(s) answered over cni0"


def test_etcd_unreachable_ipv6_only_node_still_checks_its_ipv6_device():
    """No config: subnet.env's IPv6 pair alone says IPv6-only, so the local checks read
    overlay-v6.1 (not a missing overlay.1) and the lease-dependent ones are skipped."""
    node, _ = ipv6_only()
    checks, report = statuses(node, st.ClusterState(error="connection refused", now=NOW))
    assert report.facts.vxlan_name == DEV and report.facts.public_ip == MY6
    assert sorted(n for n, c in checks.items() if c.status == st.FAIL) == ["etcd"]
    assert checks["vxlan-device"].status == st.WARN  # VNI/port not compared
    assert checks["ip-forward"].expected == "net.ipv6.conf.all.forwarding = 1"
    assert checks["routes"].status == st.SKIP and "pod-ips" not in checks


def test_a_cni_ipv6_range_other_than_the_leases_fails_ipv6_pod_ips():
    node, cluster = ipv6_only()
    conf = node.cni_files[0]
    plugin = {**conf.plugins[0], "ipv6Subnet": "fd00:10:244:9::/64"}
    node.cni_files = [replace(conf, plugins=(plugin,))]
    c = only(node, cluster, "ipv6-pod-ips")
    assert "ipv6Subnet 'fd00:10:244:9::/64', not this node's IPv6 subnet" in c.found
    assert c.fix.startswith(f'remove "ipv6Subnet" from {conf.path}')
    node.cni_files = [replace(conf, plugins=({**plugin, "ipv6Subnet": str(OWN6)},))]
    assert statuses(node, cluster)[0]["ipv6-pod-ips"].status == st.PASS
