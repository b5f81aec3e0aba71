"""diagnose checks and trace on made-up state: healthy passes; each breakage fails one check."""

from __future__ import annotations

import contextlib
import http.server
import json
import subprocess
import sys
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest

from overlay.config import parse_network_config
from overlay.diagnose import checks as dg, firewall as fw_mod, gather as ga, state as st
from overlay.diagnose.probe import Echo, _checksum, echo_request, parse_echo_reply
from overlay.diagnose.trace import build_trace
from overlay.errors import SubnetEnvError
from overlay.lease import Lease, LeaseAttrs
from overlay.netlink.kernel_state import (
    AddrInfo,
    KernelState,
    LinkInfo,
    NeighInfo,
    RouteInfo,
    VXLANInfo,
)
from overlay.netlink.rtnl import AF_BRIDGE
from overlay.subnet.etcdconf import make_etcd_options
from overlay.subnetenv import SubnetEnv


def FDBInfo(mac, dst, ifindex, state):
    """An FDB entry: a neighbour record of family AF_BRIDGE."""
    return NeighInfo(dst, mac, ifindex, state, family=AF_BRIDGE)


NOW = datetime(2026, 1, 1, tzinfo=UTC)
MY_IP = IPv4Address("192.168.1.11")
MY_MAC = "0e:00:00:00:00:01"
PEERS = {  # subnet -> (public IP, VTEP MAC)
    IPv4Network("10.244.2.0/24"): (IPv4Address("192.168.1.12"), "0e:00:00:00:00:02"),
    IPv4Network("10.244.3.0/24"): (IPv4Address("192.168.1.13"), "0e:00:00:00:00:03"),
}
OWN = IPv4Network("10.244.1.0/24")
VX, BR, ETH, POD = 5, 6, 2, 7


def lease(subnet, ip, mac, expires=NOW + timedelta(hours=1)):
    return Lease(subnet, LeaseAttrs(public_ip=ip, vni=1, vtep_mac=mac), expiration=expires,
                 etcd_lease_id=42)


def healthy():
    cfg = parse_network_config({"Network": "10.244.0.0/16"})
    leases = [lease(OWN, MY_IP, MY_MAC)] + [lease(s, ip, mac) for s, (ip, mac) in PEERS.items()]
    cluster = st.ClusterState(config=cfg, leases=leases, now=NOW)
    links = [
        LinkInfo(1, "lo", "", True, "UNKNOWN", 65536, "00:00:00:00:00:00"),
        LinkInfo(ETH, "eth0", "veth", True, "UP", 1500, "aa:00:00:00:00:01"),
        LinkInfo(VX, "overlay.1", "vxlan", True, "UNKNOWN", 1450, MY_MAC,
                 vxlan=VXLANInfo(1, 8472, MY_IP, ETH, False)),
        LinkInfo(BR, "cni0", "bridge", True, "UP", 1450, "aa:00:00:00:00:02"),
        LinkInfo(POD, "veth1234", "veth", True, "UP", 1450, "aa:00:00:00:00:03", master=BR),
    ]
    addrs = [AddrInfo(1, IPv4Interface("127.0.0.1/8")),
             AddrInfo(ETH, IPv4Interface("192.168.1.11/24")),
             AddrInfo(VX, IPv4Interface("10.244.1.0/32")),
             AddrInfo(BR, IPv4Interface("10.244.1.1/24"))]
    routes = [RouteInfo(IPv4Network("192.168.1.0/24"), None, ETH),
              RouteInfo(OWN, None, BR)]
    neigh, fdb = [], []
    for s, (ip, mac) in PEERS.items():
        routes.append(RouteInfo(s, s.network_address, VX, onlink=True))
        neigh.append(NeighInfo(s.network_address, mac, VX, 0x80))
        fdb.append(FDBInfo(mac, ip, VX, 0xC0))
    fdb.append(FDBInfo("33:33:00:00:00:01", None, BR, 0x80))  # bridge-local: ignored
    kernel = KernelState(links, addrs, routes, neigh, fdb)
    conf = st.CNIConfigFile("/etc/cni/net.d/10-overlay.conflist", "overlay", (
        {"type": "overlay", "bridge": "cni0", "subnetFile": "/run/overlay/subnet.env",
         "dataDir": "/var/lib/cni/networks"}, {"type": "portmap"}))
    node = st.NodeState(
        kernel=kernel, ip_forward="1",
        subnet_env=SubnetEnv(IPv4Network("10.244.0.0/16"), IPv4Interface("10.244.1.1/24"), 1450),
        cni_files=[conf], cni_bins={"overlay": True, "portmap": True},
        reservations=[st.Reservation(IPv4Address("10.244.1.2"), "c0ffee", "eth0", "/x/10.244.1.2")],
        ipam_dir="/var/lib/cni/networks/overlay",
        probes=[st.ProbeResult(s, s.network_address, 1422, 2, 2) for s in PEERS],
        pod_probes=[st.PodProbe(IPv4Address("10.244.1.2"), "c0ffee", "eth0", 2, 2)],
        daemon_pids=[4242],
    )
    return node, cluster


OPTS = st.DiagnoseOptions()


def statuses(node, cluster, opts=OPTS):
    report = dg.run_checks(node, cluster, opts, "http://127.0.0.1:2379")
    return {c.name: c for c in report.checks}, report


def only_failure(node, cluster, name, opts=OPTS):
    checks, report = statuses(node, cluster, opts)
    failed = sorted(n for n, c in checks.items() if c.status == st.FAIL)
    assert failed == [name], {n: checks[n].found for n in failed}
    assert report.failed
    c = checks[name]
    assert c.fix and c.expected and c.found
    return c


def test_healthy_node_passes_every_check():
    node, cluster = healthy()
    checks, report = statuses(node, cluster)
    assert {n: c.status for n, c in checks.items() if c.status != st.PASS} == {}
    assert not report.failed
    assert report.to_dict()["node"]["peers"] == 2
    json.dumps(report.to_dict())


def kernel_without(node, **changes):
    node.kernel = replace(node.kernel, **changes)
    return node


def test_missing_route_named_with_fix():
    node, cluster = healthy()
    k = node.kernel
    kernel_without(node, routes=[r for r in k.routes if r.dst != IPv4Network("10.244.3.0/24")])
    c = only_failure(node, cluster, "routes")
    assert "missing: 10.244.3.0/24" in c.found
    assert c.fix.startswith("ip route replace 10.244.3.0/24 via 10.244.3.0 dev overlay.1 onlink"
                            " proto 111")


def test_route_via_wrong_gateway():
    node, cluster = healthy()
    s = IPv4Network("10.244.2.0/24")
    routes = [r for r in node.kernel.routes if r.dst != s] + [
        RouteInfo(s, IPv4Address("192.168.1.99"), ETH)]
    c = only_failure(kernel_without(node, routes=routes), cluster, "routes")
    assert "wrong: 10.244.2.0/24 via 192.168.1.99 dev eth0" in c.found


def test_missing_fdb_entry():
    node, cluster = healthy()
    fdb = [e for e in node.kernel.fdb if e.mac != "0e:00:00:00:00:02"]
    c = only_failure(kernel_without(node, fdb=fdb), cluster, "fdb")
    assert "missing: 0e:00:00:00:00:02 -> 192.168.1.12" in c.found
    assert "bridge fdb replace 0e:00:00:00:00:02 dev overlay.1 dst 192.168.1.12" in c.fix


def test_fdb_entry_pointing_at_old_public_ip_is_wrong():
    node, cluster = healthy()
    fdb = [e for e in node.kernel.fdb if e.mac != "0e:00:00:00:00:02"] + [
        FDBInfo("0e:00:00:00:00:02", IPv4Address("192.168.1.50"), VX, 0xC0)]
    c = only_failure(kernel_without(node, fdb=fdb), cluster, "fdb")
    assert "wrong: 0e:00:00:00:00:02 -> 192.168.1.50" in c.found
    assert c.fix.startswith("bridge fdb del 0e:00:00:00:00:02 dev overlay.1 dst 192.168.1.50")


def test_missing_neigh_entry():
    node, cluster = healthy()
    neigh = [n for n in node.kernel.neigh if n.dst != IPv4Address("10.244.2.0")]
    c = only_failure(kernel_without(node, neigh=neigh), cluster, "neigh")
    assert "missing: 10.244.2.0 -> 0e:00:00:00:00:02" in c.found
    assert ("ip neigh replace 10.244.2.0 lladdr 0e:00:00:00:00:02 dev overlay.1 nud permanent"
            in c.fix)


def test_neigh_with_old_mac_is_wrong():
    node, cluster = healthy()
    neigh = [n for n in node.kernel.neigh if n.dst != IPv4Address("10.244.2.0")] + [
        NeighInfo(IPv4Address("10.244.2.0"), "0e:00:00:00:00:99", VX, 0x80)]
    c = only_failure(kernel_without(node, neigh=neigh), cluster, "neigh")
    assert "wrong: 10.244.2.0 -> 0e:00:00:00:00:99" in c.found


def test_stale_entries_for_vanished_peer_fail_three_checks():
    node, cluster = healthy()
    gone = IPv4Network("10.244.9.0/24")
    k = node.kernel
    stale_mac = "0e:00:00:00:00:09"
    kernel_without(node, routes=k.routes + [RouteInfo(gone, gone.network_address, VX, True)],
                   neigh=k.neigh + [NeighInfo(gone.network_address, stale_mac, VX, 0x80)],
                   fdb=k.fdb + [FDBInfo(stale_mac, IPv4Address("192.168.1.19"), VX, 0xC0)])
    checks, _ = statuses(node, cluster)
    assert sorted(n for n, c in checks.items() if c.status == st.FAIL) == ["fdb", "neigh", "routes"]
    assert "stale (no lease): 10.244.9.0/24" in checks["routes"].found
    assert checks["routes"].fix.startswith("ip route del 10.244.9.0/24 dev overlay.1")
    assert "stale (no lease): 0e:00:00:00:00:09 -> 192.168.1.19" in checks["fdb"].found
    assert checks["neigh"].fix.startswith("ip neigh del 10.244.9.0 dev overlay.1")


def test_stale_fdb_only():
    node, cluster = healthy()
    fdb = node.kernel.fdb + [FDBInfo("0e:00:00:00:00:09", IPv4Address("192.168.1.19"), VX, 0xC0)]
    only_failure(kernel_without(node, fdb=fdb), cluster, "fdb")


def test_bridge_missing():
    node, cluster = healthy()
    k = node.kernel
    kernel_without(node, links=[link for link in k.links if link.index not in (BR, POD)],
                   addrs=[a for a in k.addrs if a.index != BR])
    c = only_failure(node, cluster, "bridge")
    assert "no link cni0" in c.found
    assert "ip addr add 10.244.1.1/24 dev cni0" in c.fix


def test_bridge_down_and_without_gateway():
    node, cluster = healthy()
    k = node.kernel
    links = [link._replace(up=False) if link.index == BR else link for link in k.links]
    c = only_failure(kernel_without(node, links=links, addrs=[a for a in k.addrs if a.index != BR]),
                     cluster, "bridge")
    assert c.fix == "ip link set cni0 up && ip addr add 10.244.1.1/24 dev cni0"


def test_ip_forward_off():
    node, cluster = healthy()
    node.ip_forward = "0"
    assert "ip_forward=1" in only_failure(node, cluster, "ip-forward").fix


def test_cni_config_missing_and_other_network_first():
    node, cluster = healthy()
    node.cni_files = []
    c = only_failure(node, cluster, "cni-config")
    assert c.fix.endswith("overlayctl install-cni --conf-dir /etc/cni/net.d")
    node, cluster = healthy()
    other = st.CNIConfigFile("/etc/cni/net.d/05-bridge.conflist", "podman", ({"type": "bridge"},))
    node.cni_files = [other] + node.cni_files
    checks, _ = statuses(node, cluster)
    assert checks["cni-config"].status == st.WARN
    assert "05-bridge.conflist" in checks["cni-config"].fix


def test_cni_binaries_missing():
    node, cluster = healthy()
    node.cni_bins = {"overlay": False, "portmap": True}
    assert "overlayctl install-cni --bin-dir" in only_failure(node, cluster, "cni-binary").fix
    node.cni_bins = {"overlay": True, "portmap": False}
    assert "portmap" in only_failure(node, cluster, "cni-binary").fix


def test_wrong_device_mtu():
    node, cluster = healthy()
    links = [link._replace(mtu=1400) if link.index == VX else link
             for link in node.kernel.links]
    c = only_failure(kernel_without(node, links=links), cluster, "mtu")
    assert "overlay.1 MTU 1400 != 1450" in c.found
    assert c.fix.startswith("ip link set overlay.1 mtu 1450")


def test_subnet_env_mtu_and_subnet_mismatch():
    node, cluster = healthy()
    node.subnet_env = node.subnet_env._replace(mtu=1500)
    c = only_failure(node, cluster, "mtu")
    assert "OVERLAY_MTU 1500 != 1450" in c.found
    node, cluster = healthy()
    node.subnet_env = node.subnet_env._replace(subnet=IPv4Interface("10.244.7.1/24"))
    c = only_failure(node, cluster, "subnet-env")
    assert "10.244.7.1/24 != lease 10.244.1.1/24" in c.found


def test_subnet_env_missing():
    node, cluster = healthy()
    node.subnet_env, node.subnet_env_error = None, "/run/overlay/subnet.env does not exist"
    only_failure(node, cluster, "subnet-env")


def test_no_lease_for_this_node():
    node, cluster = healthy()
    cluster.leases = cluster.leases[1:]
    c = only_failure(node, cluster, "lease")
    assert "no lease for 192.168.1.11" in c.found


def test_lease_with_other_vtep_mac():
    node, cluster = healthy()
    cluster.leases[0] = lease(OWN, MY_IP, "0e:00:00:00:00:77")
    assert "VtepMAC 0e:00:00:00:00:77" in only_failure(node, cluster, "lease").found


def without_vxlan_device(node):
    """The node's kernel state with the VXLAN device and everything on it gone."""
    k = node.kernel
    kernel_without(node, links=[link for link in k.links if link.index != VX],
                   addrs=[a for a in k.addrs if a.index != VX],
                   routes=[r for r in k.routes if r.oif != VX], neigh=[],
                   fdb=[f for f in k.fdb if f.ifindex != VX])


def test_vxlan_device_missing_fails_device_check():
    node, cluster = healthy()
    without_vxlan_device(node)
    checks, _ = statuses(node, replace(cluster), st.DiagnoseOptions(public_ip=MY_IP))
    assert checks["vxlan-device"].status == st.FAIL
    assert "restart overlayd" in checks["vxlan-device"].fix


def test_vxlan_device_down_and_learning():
    node, cluster = healthy()
    links = [link._replace(up=False) if link.index == VX else link
             for link in node.kernel.links]
    c = only_failure(kernel_without(node, links=links), cluster, "vxlan-device")
    assert c.fix == "ip link set overlay.1 up"
    node, cluster = healthy()
    links = [link._replace(vxlan=link.vxlan._replace(learning=True))
             if link.index == VX and link.vxlan else link for link in node.kernel.links]
    assert "learning on" in only_failure(kernel_without(node, links=links), cluster,
                                         "vxlan-device").found


def test_cidr_overlap_with_node_and_service():
    node, cluster = healthy()
    opts = st.DiagnoseOptions(service_cidrs=(IPv4Network("10.244.128.0/17"),))
    assert "service CIDR 10.244.128.0/17" in only_failure(node, cluster, "cidr-overlap", opts).found
    node, cluster = healthy()
    node.kernel.addrs.append(AddrInfo(ETH, IPv4Interface("10.244.200.5/24")))
    assert "node 10.244.200.5/24 on eth0" in only_failure(node, cluster, "cidr-overlap").found


def test_pod_ip_outside_subnet():
    node, cluster = healthy()
    node.reservations.append(st.Reservation(IPv4Address("10.244.5.9"), "deadbeef", "eth0", "/x/y"))
    c = only_failure(node, cluster, "pod-ips")
    assert "10.244.5.9" in c.found


def test_probe_failures_and_mtu_diagnosis():
    node, cluster = healthy()
    s = IPv4Network("10.244.2.0/24")
    node.probes[0] = st.ProbeResult(s, s.network_address, 1422, 2, 0, small_received=1)
    c = only_failure(node, cluster, "peer-vteps")
    assert "path MTU below 1450" in c.found and "MTU" in c.fix
    node.probes[0] = st.ProbeResult(s, s.network_address, 1422, 2, 0, small_received=0)
    assert "firewall" in only_failure(node, cluster, "peer-vteps").fix


def answered_pods(reservations, count, timeout):
    """probe_local_pods as if every pod answered (unit tests send no packet)."""
    return [st.PodProbe(r.ip, r.container_id, r.ifname, count, count) for r in reservations]


def test_a_silent_local_pod_fails_local_pods_alone():
    node, cluster = healthy()
    node.pod_probes = [st.PodProbe(IPv4Address("10.244.1.2"), "c0ffee0123456789", "eth0", 2, 0)]
    c = only_failure(node, cluster, "local-pods")
    assert "10.244.1.2 (container c0ffee012345, eth0): 0/2 replies" in c.found
    assert "ip link show master cni0" in c.fix


@pytest.mark.parametrize("change, words", [
    (lambda n: None, "not run (--no-probe)"),
    (lambda n: n.cni_files.clear(), "no overlay CNI config"),
])
def test_local_pods_not_probed_says_why(change, words):
    node, cluster = healthy()
    node.pod_probes = None
    change(node)
    checks, _ = statuses(node, cluster)
    assert checks["local-pods"].status == st.SKIP and words in checks["local-pods"].found


def test_no_local_pods_passes():
    node, cluster = healthy()
    node.pod_probes = []
    checks, _ = statuses(node, cluster)
    assert checks["local-pods"].status == st.PASS and checks["local-pods"].found == "no local pods"


def test_local_pods_are_pinged_all_at_once_from_the_host():
    calls = []

    def echo(targets, size, count, timeout):
        calls.append((list(targets), size, count, timeout))
        return {t: Echo(count, 0 if t.packed[-1] == 3 else count) for t in targets}
    res = [st.Reservation(IPv4Address(f"10.244.1.{i}"), f"c{i}", "eth0", "/x") for i in (2, 3)]
    got = ga.probe_local_pods(res, 2, 0.5, echo)
    assert calls == [([r.ip for r in res], 56, 2, 0.5)]
    assert [(p.ip.packed[-1], p.received) for p in got] == [(2, 2), (3, 0)]
    assert ga.probe_local_pods([], 2, 0.5, echo) == [] and len(calls) == 1


def test_etcd_unreachable_checks_local_and_names_skips():
    node, cluster = healthy()
    cluster = st.ClusterState(error="etcd unreachable at http://127.0.0.1:1")
    checks, report = statuses(node, cluster)
    assert checks["etcd"].status == st.FAIL
    skipped = set(report.skipped())
    assert {"lease", "routes", "fdb", "neigh", "peer-vteps"} <= skipped
    for local in ("bridge", "ip-forward", "firewall", "mtu", "cni-config", "cni-binary",
                  "cidr-overlap"):
        assert checks[local].status == st.PASS, checks[local]
    assert checks["vxlan-device"].status == st.WARN


def test_kernel_unreadable_skips_kernel_checks():
    node, cluster = healthy()
    node.kernel, node.kernel_error = None, "cannot open netlink"
    checks, _ = statuses(node, cluster)
    assert checks["bridge"].status == st.SKIP and checks["routes"].status == st.SKIP


# -- firewall parsing -----------------------------------------------------------------


def nft(rules, chain_hook="input", policy="accept", family="ip", table="t"):
    items = [{"chain": {"family": family, "table": table, "name": "c", "hook": chain_hook,
                        "policy": policy}}]
    items += [{"rule": {"family": family, "table": table, "chain": "c", "handle": i + 2,
                        "expr": e}} for i, e in enumerate(rules)]
    return json.dumps({"nftables": items})


UDP_DPORT = {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}},
                       "right": 8472}}


def test_nft_explicit_drop_found_with_delete_command():
    fw = fw_mod.parse_nft_ruleset(nft([[UDP_DPORT, {"counter": {}}, {"drop": None}]]), 8472)
    assert [r.fix for r in fw.drops] == ["nft delete rule ip t c handle 2"]


@pytest.mark.parametrize("right,dropped", [
    (8472, True), (53, False), ({"set": [53, 8472]}, True), ({"range": [8000, 9000]}, True),
    ({"set": [{"range": [1, 100]}]}, False)])
def test_nft_port_expressions(right, dropped):
    m = {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}},
                   "right": right}}
    assert bool(fw_mod.parse_nft_ruleset(nft([[m, {"drop": None}]]), 8472).drops) is dropped


def test_nft_harmless_rules_not_reported():
    tcp = {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}}
    ct = {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "invalid"}}
    text = nft([[tcp, {"drop": None}], [ct, {"drop": None}], [UDP_DPORT, {"accept": None}]])
    fw = fw_mod.parse_nft_ruleset(text, 8472)
    assert fw.drops == [] and fw.policy_drops == []


def test_nft_unconditional_drop_and_policy_drop():
    assert fw_mod.parse_nft_ruleset(nft([[{"drop": None}]]), 8472).drops
    fw = fw_mod.parse_nft_ruleset(nft([], policy="drop"), 8472)
    assert fw.policy_drops and "udp dport 8472 accept" in fw.policy_drops[0].fix
    fw = fw_mod.parse_nft_ruleset(nft([[UDP_DPORT, {"accept": None}]], policy="drop"), 8472)
    assert fw.policy_drops == []


def test_nft_skips_tables_iptables_reports():
    text = nft([[UDP_DPORT, {"drop": None}]], table="filter")
    assert fw_mod.parse_nft_ruleset(text, 8472, skip_tables=[("ip", "filter")]).drops == []


def test_nft_policy_table_drops_are_not_vxlan_drops():
    """overlayd's NetworkPolicy chains drop forwarded pod connections, never VXLAN."""
    text = nft([[{"drop": None}]], chain_hook=None, family="inet", table="overlay-policy")
    assert fw_mod.parse_nft_ruleset(text, 8472).drops == []
    other = nft([[{"drop": None}]], chain_hook=None, family="inet", table="other")
    assert fw_mod.parse_nft_ruleset(other, 8472).drops  # a regular chain elsewhere counts


def test_iptables_save_parsing():
    text = """*filter
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p udp -m udp --dport 8472 -j DROP
-A INPUT -p tcp -m tcp --dport 8472 -j DROP
-A INPUT -p udp -m udp ! --dport 8472 -j DROP
-A OUTPUT -p udp -m multiport --dports 53,8000:9000 -j REJECT --reject-with icmp-port-unreachable
-A INPUT -s 10.0.0.0/8 -j ACCEPT
COMMIT
*nat
-A POSTROUTING -j DROP
COMMIT
"""
    fw = fw_mod.parse_iptables_save(text, 8472)
    assert [r.where for r in fw.drops] == ["filter INPUT", "filter OUTPUT"]
    assert fw.drops[0].fix == "iptables -t filter -D INPUT -p udp -m udp --dport 8472 -j DROP"
    assert fw.policy_drops == []


def test_iptables_policy_drop():
    text = "*filter\n:INPUT DROP [0:0]\n-A INPUT -i lo -j ACCEPT\nCOMMIT\n"
    fw = fw_mod.parse_iptables_save(text, 8472)
    assert fw.policy_drops and "-I INPUT -p udp --dport 8472 -j ACCEPT" in fw.policy_drops[0].fix
    text = "*filter\n:INPUT DROP [0:0]\n-A INPUT -p udp --dport 8472 -j ACCEPT\nCOMMIT\n"
    assert fw_mod.parse_iptables_save(text, 8472).policy_drops == []


def test_firewall_check_fails_on_drop():
    node, cluster = healthy()
    node.firewall = fw_mod.parse_iptables_save(
        "*filter\n-A INPUT -p udp --dport 8472 -j DROP\nCOMMIT\n", 8472)
    c = only_failure(node, cluster, "firewall")
    assert c.fix == "iptables -t filter -D INPUT -p udp --dport 8472 -j DROP"


# -- file readers ---------------------------------------------------------------------


def test_cni_dir_and_reservations(tmp_path):
    conf = tmp_path / "net.d"
    conf.mkdir()
    (conf / "10-overlay.conflist").write_text(json.dumps(
        {"cniVersion": "1.1.0", "name": "overlay",
         "plugins": [{"type": "overlay", "bridge": "cni0"}, {"type": "portmap"}]}))
    (conf / "20-broken.conf").write_text("{nope")
    # libcni goes by the extension: a .json is one plugin's configuration, never a list.
    (conf / "30-list.json").write_text(json.dumps(
        {"cniVersion": "1.1.0", "name": "other", "plugins": [{"type": "bridge"}]}))
    (conf / "README").write_text("ignored")
    files, err = ga.read_cni_conf_dir(str(conf))
    assert err == "" and [f.name for f in files] == ["overlay", "", ""]
    assert files[1].error and "a list of plugins is a .conflist" in files[2].error
    assert "does not exist" in ga.read_cni_conf_dir(str(tmp_path / "absent"))[1]
    ipam = tmp_path / "overlay"
    ipam.mkdir()
    (ipam / "10.244.1.2").write_text("abc\r\neth0")
    (ipam / "10.244.1.10").write_text("def\r\neth1")
    (ipam / "fd00:10:244:1::2").write_text("abc\r\neth0")
    (ipam / "last_reserved_ip.0").write_text("10.244.1.2")
    (ipam / "lock").write_text("")
    res, res6 = ga.read_reservations(str(tmp_path), "overlay")
    assert [(str(r.ip), r.container_id, r.ifname, r.path) for r in res] == [
        ("10.244.1.2", "abc", "eth0", str(ipam / "10.244.1.2")),
        ("10.244.1.10", "def", "eth1", str(ipam / "10.244.1.10"))]
    assert [(str(r.ip), r.container_id, r.ifname, r.path) for r in res6] == [
        ("fd00:10:244:1::2", "abc", "eth0", str(ipam / "fd00:10:244:1::2"))]
    assert ga.read_reservations(str(tmp_path), "absent") == ([], [])
    bins = tmp_path / "bin"
    bins.mkdir()
    (bins / "overlay").write_text("#!/bin/sh\n")
    (bins / "overlay").chmod(0o755)
    (bins / "portmap").write_text("")
    assert ga.read_cni_bins(str(bins), ["overlay", "portmap"]) == {
        "overlay": True, "portmap": False}


def test_probe_peers_retries_small_on_failure():
    calls = []

    def echo(targets, size, count, timeout):
        calls.append(([str(t) for t in targets], size))
        return {t: Echo(count, 0 if size > 100 else count) for t in targets}

    remotes = [lease(s, ip, mac) for s, (ip, mac) in PEERS.items()]
    res = ga.probe_peers(remotes, 1450, 2, 1.0, echo=echo)
    assert [(p.size, p.received, p.small_received) for p in res] == [(1422, 0, 1), (1422, 0, 1)]
    assert calls == [(["10.244.2.0", "10.244.3.0"], 1422), (["10.244.2.0", "10.244.3.0"], 56)]
    assert ga.probe_peers([], 1450, 2, 1.0, echo=echo) == []


def test_icmp_echo_codec():
    pkt = echo_request(0x1234, 7, 56)
    assert len(pkt) == 64 and pkt[0] == 8
    assert _checksum(pkt) == 0  # a valid checksum sums to zero
    ip_header = bytes([0x45]) + bytes(19)
    reply = ip_header + bytes([0]) + pkt[1:]
    assert parse_echo_reply(reply) == (0x1234, 7)
    assert parse_echo_reply(ip_header + pkt) is None  # a request, not a reply


# -- trace ----------------------------------------------------------------------------


def test_trace_healthy_path():
    node, cluster = healthy()
    route = RouteInfo(IPv4Network("10.244.2.5/32"), IPv4Address("10.244.2.0"), VX)
    t = build_trace(IPv4Address("10.244.1.2"), IPv4Address("10.244.2.5"), node.kernel, route,
                    cluster, vxlan_name="overlay.1", bridge_name="cni0", local_public_ip=MY_IP,
                    forwarding=True,
                    underlay_route=RouteInfo(IPv4Network("192.168.1.12/32"), None, ETH))
    assert [(h.name, h.status) for h in t.hops] == [
        ("source-node", "ok"), ("source-bridge", "ok"), ("route", "ok"), ("vxlan-device", "ok"),
        ("remote-vtep-mac", "ok"), ("remote-public-ip", "ok"), ("underlay", "ok"),
        ("destination-node", "ok")]
    assert t.ok
    assert t.hops[6].detail == "192.168.1.12 via direct dev eth0"
    assert "0e:00:00:00:00:02 -> 192.168.1.12" in t.hops[5].detail


def test_trace_marks_missing_fdb_and_forwarding():
    node, cluster = healthy()
    fdb = [e for e in node.kernel.fdb if e.mac != "0e:00:00:00:00:02"]
    kernel_without(node, fdb=fdb)
    route = RouteInfo(IPv4Network("10.244.2.5/32"), IPv4Address("10.244.2.0"), VX)
    t = build_trace(IPv4Address("10.244.1.2"), IPv4Address("10.244.2.5"), node.kernel, route,
                    cluster, vxlan_name="overlay.1", bridge_name="cni0", local_public_ip=MY_IP,
                    forwarding=False)
    st = {h.name: h.status for h in t.hops}
    assert st["forwarding"] == "wrong" and st["remote-public-ip"] == "missing"
    assert st["underlay"] == "missing"
    assert not t.ok


def test_trace_missing_route_and_same_node():
    node, cluster = healthy()
    t = build_trace(IPv4Address("10.244.1.2"), IPv4Address("10.244.3.4"), node.kernel, None,
                    cluster, vxlan_name="overlay.1", bridge_name="cni0", local_public_ip=MY_IP)
    hop = next(h for h in t.hops if h.name == "route")
    assert hop.status == "missing" and "10.244.3.0/24 via 10.244.3.0" in hop.fix
    route = RouteInfo(IPv4Network("10.244.1.3/32"), None, BR)
    t = build_trace(IPv4Address("10.244.1.2"), IPv4Address("10.244.1.3"), node.kernel, route,
                    cluster, vxlan_name="overlay.1", bridge_name="cni0", local_public_ip=MY_IP)
    assert t.ok and [h.name for h in t.hops] == ["source-node", "source-bridge", "route",
                                                 "destination-node"]


def route_reply(gateway, oif, onlink=False):
    """What the kernel answers to RTM_GETROUTE: an RTM_NEWROUTE payload."""
    from overlay.netlink import rtnl

    body = rtnl.RTMSG.pack(2, 32, 0, 0, 254, 0, 0, 1, rtnl.RTNH_F_ONLINK if onlink else 0)
    if gateway is not None:
        body += rtnl.attr(rtnl.RTA_GATEWAY, IPv4Address(gateway).packed)
    return body + rtnl.attr_u32(rtnl.RTA_OIF, oif)


def test_trace_asks_every_route_in_one_send_on_one_socket(monkeypatch):
    from overlay.diagnose import trace as trace_mod
    from overlay.netlink import kernel_state, rtnl

    node, cluster = healthy()
    sockets, sent = [], []
    forwarding_on = True

    class Kernel:  # stands for one rtnetlink socket; answers route gets like the node
        def __init__(self, netns=None):
            sockets.append(netns)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        def batch(self, msgs):
            sent.append(msgs)
            out = []
            for m in msgs:
                a = rtnl.attrs(m.body, rtnl.RTMSG.size)
                dst = IPv4Address(a[rtnl.RTA_DST])
                if dst == IPv4Address("192.168.1.12"):
                    out.append(([route_reply(None, ETH)], 0))
                elif rtnl.RTA_IIF in a and not forwarding_on:
                    out.append(([], 113))  # EHOSTUNREACH: not forwarded
                else:
                    out.append(([route_reply("10.244.2.0", VX, onlink=True)], 0))
            return out

    monkeypatch.setattr(kernel_state, "open_rtnl", Kernel)
    monkeypatch.setattr(kernel_state, "dump_kernel_state", lambda: node.kernel)
    monkeypatch.setattr(trace_mod, "gather_cluster", lambda etcd: cluster)
    src, dst = IPv4Address("10.244.1.2"), IPv4Address("10.244.2.5")
    t = trace_mod.trace_path(src, dst, make_etcd_options())
    assert t.ok and len(sockets) == 1 and len(sent) == 1
    forwarded, plain, underlay = sent[0]
    fa = rtnl.attrs(forwarded.body, rtnl.RTMSG.size)
    assert (fa[rtnl.RTA_SRC], rtnl.u32(fa[rtnl.RTA_IIF])) == (src.packed, BR)
    assert rtnl.RTA_IIF not in rtnl.attrs(plain.body, rtnl.RTMSG.size)
    assert t.hops[2].detail == "10.244.2.5 via 10.244.2.0 dev overlay.1"
    assert t.hops[6].detail == "192.168.1.12 via direct dev eth0"
    forwarding_on = False
    t = trace_mod.trace_path(src, dst, make_etcd_options())
    st = {h.name: h.status for h in t.hops}
    assert st["forwarding"] == "wrong" and st["route"] == "ok" and len(sockets) == 2


def test_route_get_reads_the_kernel_without_pyroute2():
    script = ("import sys; from ipaddress import IPv4Address as A\n"
              "from overlay.netlink.kernel_state import RouteQuery, routes_get\n"
              "lo = routes_get([RouteQuery(A('127.0.0.1')), RouteQuery(A('127.0.0.1'),"
              " A('10.255.255.1'), 1)])\n"
              "print(lo[0].oif, lo[0].gateway, lo[0].prefsrc, lo[1], 'pyroute2' in sys.modules)")
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=30)
    # lo is ifindex 1 in every namespace; a martian source arriving on lo is not routed.
    assert p.stdout.split() == ["1", "None", "127.0.0.1", "None", "False"], p.stderr


def direct_routing_state():
    node, cluster = healthy()
    cluster.config = parse_network_config({"Network": "10.244.0.0/16",
                                           "Backend": {"Type": "vxlan", "DirectRouting": True}})
    # Both peers share the node's underlay /24: the backend routes to them directly.
    k = node.kernel
    kernel_without(node, routes=[r for r in k.routes if r.oif != VX] + [
        RouteInfo(s, ip, ETH) for s, (ip, _) in PEERS.items()], neigh=[],
        fdb=[e for e in k.fdb if e.ifindex != VX])
    return node, cluster


def test_direct_routing_peers_need_only_a_route_via_public_ip():
    node, cluster = direct_routing_state()
    checks, report = statuses(node, cluster)
    assert not report.failed, {n: c.found for n, c in checks.items() if c.status == st.FAIL}
    routes = [r for r in node.kernel.routes if r.dst != IPv4Network("10.244.2.0/24")]
    c = only_failure(kernel_without(node, routes=routes), cluster, "routes")
    assert c.fix.startswith("ip route replace 10.244.2.0/24 via 192.168.1.12 proto 111;")


def test_probe_unreachable_points_at_routes():
    node, cluster = healthy()
    s = IPv4Network("10.244.2.0/24")
    node.probes[0] = st.ProbeResult(s, s.network_address, 1422, 2, 0, 0,
                                    "ping: connect: Network is unreachable")
    assert "routes check" in only_failure(node, cluster, "peer-vteps").fix


@contextlib.contextmanager
def loopback_http(handler):
    """``handler`` served on a free loopback port for the block; the address, then closed."""
    srv = http.server.HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def test_read_readyz_against_a_local_server():

    class H(http.server.BaseHTTPRequestHandler):
        status = 200

        def do_GET(self):
            self.send_response(H.status if self.path == "/readyz" else 404)
            self.end_headers()
            self.wfile.write(b"not ready: no lease" if H.status != 200 else b"ok")

        def log_message(self, *a):
            pass

    with loopback_http(H) as addr:
        assert ga.read_readyz(addr) == (200, "ok")
        H.status = 503
        node, cluster = healthy()
        node.readyz = ga.read_readyz(addr)
        c = only_failure(node, cluster, "daemon", st.DiagnoseOptions(healthz_addr=addr))
        assert c.found == "503: not ready: no lease"
    status, detail = ga.read_readyz(addr, timeout=0.5)
    assert status is None and "refused" in detail.lower()


def test_device_deleted_still_finds_own_lease_from_subnet_env():
    node, cluster = healthy()
    without_vxlan_device(node)
    node.probes = None
    checks, _ = statuses(node, cluster)
    assert checks["lease"].status == st.PASS
    assert checks["vxlan-device"].status == st.FAIL and checks["vxlan-device"].found == "missing"
    assert "missing: 10.244.2.0/24, 10.244.3.0/24" in checks["routes"].found


def test_cni_bins_searched_along_a_path(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    for d, n in ((a, "overlay"), (b, "portmap")):
        (d / n).write_text("#!/bin/sh\n")
        (d / n).chmod(0o755)
    assert ga.read_cni_bins(f"{a}:{b}", ["overlay", "portmap", "bridge"]) == {
        "overlay": True, "portmap": True, "bridge": False}


def test_subnet_file_other_than_the_cni_configs_is_a_warning():
    node, cluster = healthy()
    checks, _ = statuses(node, cluster, st.DiagnoseOptions(subnet_file="/elsewhere/subnet.env"))
    assert checks["cni-config"].status == st.WARN
    assert "--subnet-file /run/overlay/subnet.env" in checks["cni-config"].fix


def test_gather_node_reads_subnet_env_named_by_the_conflist(tmp_path, monkeypatch):
    conf = tmp_path / "net.d"
    conf.mkdir()
    env = tmp_path / "node1-subnet.env"
    env.write_text("OVERLAY_NETWORK=10.244.0.0/16\nOVERLAY_SUBNET=10.244.1.1/24\nOVERLAY_MTU=1450\n")
    (conf / "10-overlay.conflist").write_text(json.dumps(
        {"cniVersion": "1.1.0", "name": "overlay", "plugins": [
            {"type": "overlay", "subnetFile": str(env), "dataDir": str(tmp_path / "ipam")}]}))
    monkeypatch.setattr("overlay.netlink.kernel_state.dump_kernel_state", lambda: KernelState())
    node = ga.gather_node(st.DiagnoseOptions(cni_conf_dir=str(conf), cni_bin_dir=str(tmp_path)))
    assert node.subnet_file == str(env)
    assert node.subnet_env is not None and str(node.subnet_env.subnet) == "10.244.1.1/24"
    assert node.ipam_dir == str(tmp_path / "ipam" / "overlay")


def test_no_daemon_process_is_a_warning():
    node, cluster = healthy()
    node.daemon_pids = []
    checks, report = statuses(node, cluster)
    assert checks["daemon"].status == st.WARN and not report.failed


def test_find_daemons_matches_name_and_network_namespace(tmp_path):
    proc = tmp_path / "proc"

    def fake(pid, argv, ns):
        d = proc / str(pid)
        (d / "ns").mkdir(parents=True)
        (d / "cmdline").write_bytes(b"\0".join(argv) + b"\0")
        (d / "ns" / "net").write_text(ns)  # its inode stands for the namespace
        return d

    me = fake("self", [b"overlayctl"], "mine")
    (proc / "10").symlink_to(me)  # shares our namespace file -> same inode
    fake(11, [b"/x/.venv/bin/python", b"/x/.venv/bin/overlayd", b"-v"], "other")
    d = fake(12, [b"/x/.venv/bin/python", b"/x/.venv/bin/overlayd"], "x")
    (d / "ns" / "net").unlink()
    (d / "ns" / "net").hardlink_to(me / "ns" / "net")
    fake(13, [b"/usr/bin/overlayd-helper"], "x")
    assert ga.find_daemons(str(proc)) == [12]
    assert ga.find_daemons(str(tmp_path / "absent")) is None


def test_run_quiet_never_raises_for_a_program_that_cannot_run(tmp_path):
    from overlay.util.proc import run_quiet

    plain = tmp_path / "nft"
    plain.write_text("#!/bin/sh\necho hi\n")  # not executable: EACCES, even for root
    garbage = tmp_path / "iptables-save"
    garbage.write_bytes(b"\x7fELF nonsense")
    garbage.chmod(0o755)  # executable, but no format the kernel runs: ENOEXEC
    rc, out, err = run_quiet([str(plain)])
    assert (rc, out) == (126, "") and err.startswith(f"cannot run {plain}: ")
    rc, out, err = run_quiet([str(garbage)])
    assert (rc, out) == (126, "") and "cannot run" in err
    assert run_quiet([str(tmp_path / "absent")])[0] == 127


def test_diagnose_derives_the_facts_once(monkeypatch):
    node, cluster = healthy()
    node.probes = None
    derived, probed = [], []
    derive = dg.derive_facts
    monkeypatch.setattr(ga, "gather_node", lambda opts: node)
    monkeypatch.setattr(ga, "gather_cluster", lambda etcd, local_ips: cluster)
    monkeypatch.setattr(ga, "read_firewall", lambda *a, **kw: fw_mod.FirewallState())

    def derive_once(*a):
        derived.append(a)
        return derive(*a)

    def probe_all_answer(remotes, mtu, *a):
        probed.append((len(remotes), mtu))
        return [st.ProbeResult(peer.subnet, peer.subnet.network_address, mtu - 28, 2, 2)
                for peer in remotes]
    monkeypatch.setattr(ga, "derive_facts", derive_once)
    monkeypatch.setattr(ga, "probe_peers", probe_all_answer)
    monkeypatch.setattr(ga, "probe_local_pods", answered_pods)
    report = ga.diagnose(OPTS, make_etcd_options(endpoints="http://127.0.0.1:1"))
    assert len(derived) == 1 and probed == [(2, 1450)]
    own = report.facts.own
    assert not report.failed and own is not None and own.subnet == OWN


def test_diagnose_probes_only_the_peers_overlayd_programs(monkeypatch):
    node, cluster = healthy()
    node.probes = None
    nomac = Lease(IPv4Network("10.244.9.0/24"), LeaseAttrs(IPv4Address("192.168.7.9")))
    cluster.leases.append(nomac)  # no VTEP MAC, not DirectRouting: no entries, no route
    probed = []
    monkeypatch.setattr(ga, "gather_node", lambda opts: node)
    monkeypatch.setattr(ga, "gather_cluster", lambda etcd, local_ips: cluster)
    monkeypatch.setattr(ga, "read_firewall", lambda *a, **kw: fw_mod.FirewallState())

    def probe_all_answer(remotes, mtu, *a):
        probed.append(sorted(str(peer.subnet) for peer in remotes))
        return [st.ProbeResult(peer.subnet, peer.subnet.network_address, mtu - 28, 2, 2)
                for peer in remotes]
    monkeypatch.setattr(ga, "probe_peers", probe_all_answer)
    monkeypatch.setattr(ga, "probe_local_pods", answered_pods)
    report = ga.diagnose(OPTS, make_etcd_options(endpoints="http://127.0.0.1:1"))
    assert probed == [["10.244.2.0/24", "10.244.3.0/24"]]
    probe = next(c for c in report.checks if c.name == "peer-vteps")
    assert probe.status == st.PASS and probe.expected.startswith("each of 2 peer VTEP(s)")
    assert len(report.facts.remotes) == 3


# ---- a peer's subnet held by a route of another protocol (overlayd leaves the peer alone) --

S2 = IPv4Network("10.244.2.0/24")


def conflicting(node, *others, typed=(), keep_ours=False):
    """Peer .2's subnet routed by ``others``; overlayd left .2 unprogrammed (no neigh, FDB)."""
    k = node.kernel
    mac = PEERS[S2][1]
    routes = [r for r in k.routes if keep_ours or r.dst != S2] + list(others)
    return kernel_without(node, routes=routes, typed_routes=list(typed),
                          neigh=[n for n in k.neigh if n.mac != mac],
                          fdb=[e for e in k.fdb if e.mac != mac])


def test_peer_subnet_held_by_a_kernel_route_fails_route_conflicts_only():
    node, cluster = healthy()
    conflicting(node, RouteInfo(S2, None, ETH, protocol=2))
    c = only_failure(node, cluster, "route-conflicts")
    assert c.found == ("peer 10.244.2.0/24 (public IP 192.168.1.12) left unprogrammed: "
                       "10.244.2.0/24 dev eth0 proto kernel")
    assert "ip route del 10.244.2.0/24 dev eth0 proto kernel" in c.fix
    assert "ip route replace" not in c.fix


def test_static_route_in_another_metric_beside_ours_is_a_conflict():
    node, cluster = healthy()
    conflicting(node, RouteInfo(S2, IPv4Address("192.168.1.1"), ETH, protocol=4, metric=100),
                keep_ours=True)
    c = only_failure(node, cluster, "route-conflicts")
    assert "10.244.2.0/24 via 192.168.1.1 dev eth0 proto static metric 100" in c.found


def test_blackhole_route_for_a_peer_is_a_conflict():
    node, cluster = healthy()
    conflicting(node, typed=[RouteInfo(S2, None, None, protocol=3, kind="blackhole")])
    c = only_failure(node, cluster, "route-conflicts")
    assert "blackhole 10.244.2.0/24 proto boot" in c.found


def test_our_own_route_is_no_conflict():
    node, cluster = healthy()
    routes = [r._replace(protocol=111) if r.dst == S2 else r for r in node.kernel.routes]
    checks, _ = statuses(kernel_without(node, routes=routes), cluster)
    assert checks["route-conflicts"].status == st.PASS


# ---- the network config changed in etcd after overlayd started --------------------------

def test_config_changed_reported_by_overlayd_fails_with_restart_every_node():
    node, cluster = healthy()
    node.config_changed = False
    assert statuses(node, cluster)[0]["config-current"].status == st.PASS
    node.config_changed = True
    c = only_failure(node, cluster, "config-current")
    assert "overlay_config_changed" in c.found and "restart overlayd on every node" in c.fix


def test_config_changed_seen_from_the_node_without_overlayd():
    node, cluster = healthy()
    cluster.config = parse_network_config({"Network": "10.244.0.0/16", "SubnetLen": 23})
    checks, _ = statuses(node, cluster)
    c = checks["config-current"]
    assert c.status == st.FAIL and "is not a /23" in c.found
    assert "restart overlayd on every node" in c.fix
    cluster.error = "etcd unreachable"
    assert statuses(node, cluster)[0]["config-current"].status == st.SKIP


def test_read_config_changed_from_metrics():

    class H(http.server.BaseHTTPRequestHandler):
        body = b"# HELP x\noverlay_ready 1.0\noverlay_config_changed 1.0\n"

        def do_GET(self):
            self.send_response(200 if self.path == "/metrics" else 404)
            self.end_headers()
            self.wfile.write(H.body)

        def log_message(self, *a):
            pass

    with loopback_http(H) as addr:
        assert ga.read_config_changed(addr) is True
        H.body = b"overlay_config_changed 0.0\n"
        assert ga.read_config_changed(addr) is False
        H.body = b"overlay_ready 1.0\n"
        assert ga.read_config_changed(addr) is None
    assert ga.read_config_changed(addr, timeout=0.5) is None


def test_rejected_keys_fail_one_check_with_the_exact_delete_command():
    from overlay.lease import Rejection
    node, cluster = healthy()
    prefix = "/overlay/network/subnets/"
    cluster.subnets_prefix = prefix
    alias = prefix + "10.244.2.0-24\n"
    cluster.rejected = [Rejection(alias, "bad-key", "not a subnet key", 9)]
    # A thief of a peer's VTEP MAC, created later: diagnose uses overlayd's rule.
    thief = Lease(IPv4Network("10.244.9.0/24"), LeaseAttrs(IPv4Address("192.168.1.99"), vni=1,
                  vtep_mac="0e:00:00:00:00:02"), create_revision=99, mod_revision=99)
    cluster.leases.append(thief)
    c = only_failure(node, cluster, "rejected-leases")
    assert "10.244.2.0-24\\n: bad-key" in c.found
    assert f"{prefix}10.244.9.0-24: vtep-mac-claimed" in c.found
    assert "--endpoints=http://127.0.0.1:2379 del" in c.fix and "\\012" in c.fix
    assert f"del '{prefix}10.244.9.0-24'" in c.fix


def test_a_peer_without_vni_is_expected_programmed_and_a_foreign_vni_is_not():
    node, cluster = healthy()
    s = IPv4Network("10.244.2.0/24")
    ip, mac = PEERS[s]
    cluster.leases = [peer if peer.subnet != s else Lease(s, LeaseAttrs(ip, vni=None, vtep_mac=mac))
                      for peer in cluster.leases]
    checks, _ = statuses(node, cluster)
    assert checks["routes"].status == st.PASS and checks["rejected-leases"].status == st.PASS
    cluster.leases = [peer if peer.subnet != s else Lease(s, LeaseAttrs(ip, vni=7, vtep_mac=mac))
                      for peer in cluster.leases]
    checks, _ = statuses(node, cluster)
    assert checks["rejected-leases"].status == st.FAIL
    assert "vni-mismatch" in checks["rejected-leases"].found


# ---- the checks are pure: gather does every read ------------------------------------------

IO_MODULES = ("os", "io", "socket", "subprocess", "urllib", "http", "shutil", "select",
              "concurrent", "threading", "pyroute2", "overlay.util.proc", "overlay.util.fsutil",
              "overlay.util.backoff", "overlay.util.version", "overlay.subnet",
              "overlay.cni.ipam", "overlay.cni.conflist", "overlay.diagnose.gather",
              "overlay.diagnose.probe", "overlay.diagnose.firewall", "overlay.diagnose.trace")
PURE_MODULES = ("overlay.diagnose.state", "overlay.lease", "overlay.config",
                "overlay.vxlan.entries", "overlay.util.text")
# a table lookup in the netlink codec; the plugin's naming rule for a pod's host veth
PURE_FUNCTIONS = {"protocol_name", "host_veth_name"}


def test_checks_import_nothing_that_does_io():
    import ast
    import importlib
    from pathlib import Path

    tree = ast.parse(Path(dg.__file__).read_text())
    seen = []
    for node in ast.walk(tree):
        imports: list[tuple[str, str | None]]
        if isinstance(node, ast.Import):
            imports = [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.module is not None, "imports are absolute"
            imports = [(node.module, a.name) for a in node.names]
        else:
            continue
        for mod, name in imports:
            seen.append(mod)
            assert not any(mod == m or mod.startswith(m + ".") for m in IO_MODULES), mod
            if name is None or not mod.startswith("overlay.") or mod in PURE_MODULES:
                continue
            # from another overlay module: only its types, constants and pure helpers
            obj = getattr(importlib.import_module(mod), name)
            assert isinstance(obj, (type, str, int)) or name in PURE_FUNCTIONS, (mod, name)
    assert "overlay.diagnose.state" in seen  # the test reads the real file


def test_checks_run_with_every_read_and_process_forbidden(monkeypatch):
    import builtins
    import os
    import socket

    def forbidden(*a, **kw):
        raise AssertionError("a check did I/O")
    node, cluster = healthy()
    states = [healthy(), (node, st.ClusterState(error="etcd down")),
              (kernel_without(healthy()[0], routes=[], neigh=[], fdb=[]), healthy()[1])]
    for mod, name in ((builtins, "open"), (socket, "socket"), (subprocess, "Popen"),
                      (os, "stat"), (os, "listdir"), (os, "access"), (os, "scandir")):
        monkeypatch.setattr(mod, name, forbidden)
    for n, c in states:
        report = dg.run_checks(n, c, OPTS, "http://127.0.0.1:2379")
        assert len(report.checks) == 23


# ---- one rule: diagnose expects exactly what the backend programs --------------------------

def _kernel_of(node, programmed):
    """``node``'s kernel holding what a data plane was left with (VX the VXLAN device)."""
    from overlay.vxlan.entries import FDB, Neigh, Route

    k = node.kernel
    routes = [r for r in k.routes if r.oif != VX]
    neigh, fdb = [], [e for e in k.fdb if e.ifindex != VX]
    for e in programmed:
        if isinstance(e, Neigh):
            neigh.append(NeighInfo(e.ip, e.mac, VX, 0x80))
        elif isinstance(e, FDB):
            fdb.append(FDBInfo(e.mac, e.dst, VX, 0xC0))
        elif isinstance(e, Route):
            assert isinstance(e.dst, IPv4Network) and isinstance(e.gateway, IPv4Address)
            routes.append(RouteInfo(e.dst, e.gateway, ETH if e.direct else VX,
                                    onlink=not e.direct, protocol=111))
    return kernel_without(node, routes=routes, neigh=neigh, fdb=fdb)


@pytest.mark.parametrize("direct_routing", [False, True])
def test_backend_programs_exactly_what_diagnose_expects(direct_routing):
    from overlay.lease import LeaseBatch
    from overlay.vxlan.backend import BackendSettings, VXLANBackend
    from overlay.vxlan.entries import FDB, Neigh, Route
    from tests.vxlan.test_backend import FakeDataPlane

    def peer(n, ip, mac, vni=1):
        return Lease(IPv4Network(f"10.244.{n}.0/24"), LeaseAttrs(IPv4Address(ip), vni=vni,
                     vtep_mac=mac), expiration=NOW + timedelta(hours=1), etcd_lease_id=42)
    remotes = [peer(2, "192.168.1.12", "0e:00:00:00:00:02", vni=None),  # no VNI: ours
               peer(3, "192.168.1.13", "0e:00:00:00:00:03", vni=7),  # another VNI
               peer(4, "192.168.7.5", "0e:00:00:00:00:04"),  # off our L2 (192.168.1.0/24)
               peer(5, "192.168.1.15", None),  # no VTEP MAC, on our L2
               peer(6, "192.168.7.6", None)]  # no VTEP MAC, off our L2
    dp = FakeDataPlane()
    backend = VXLANBackend(dp, BackendSettings(1, MY_IP, IPv4Interface("192.168.1.11/24"),
                                               direct_routing))
    backend.apply_batch(LeaseBatch(added=tuple(remotes)))
    programmed = set(dp.state.all())

    node, cluster = healthy()
    cluster.config = parse_network_config({"Network": "10.244.0.0/16", "Backend": {
        "Type": "vxlan", "DirectRouting": direct_routing}})
    cluster.leases = [cluster.leases[0], *remotes]
    checks, report = statuses(_kernel_of(node, programmed), cluster)
    expected = {e for es in report.facts.entries.values() for e in es}
    assert expected == programmed
    kinds = {"routes": Route, "fdb": FDB, "neigh": Neigh}
    for name, kind in kinds.items():
        n = sum(isinstance(e, kind) for e in programmed)
        assert (checks[name].status, checks[name].found) == (
            st.PASS, f"all {n} present, none stale"), checks[name]
    assert checks["route-conflicts"].status == st.PASS
    by = {s: {type(e) for e in es} for s, es in report.facts.entries.items() if es}
    vxlan = {Neigh, FDB, Route}
    if direct_routing:
        assert by == {IPv4Network("10.244.2.0/24"): {Route}, IPv4Network("10.244.4.0/24"): vxlan,
                      IPv4Network("10.244.5.0/24"): {Route}}
    else:
        assert by == {IPv4Network("10.244.2.0/24"): vxlan, IPv4Network("10.244.4.0/24"): vxlan}


# -- fixes that are safe: an assumed default path is named before any command writing there


def test_cni_config_missing_in_the_default_dir_says_it_was_assumed_first():
    node, cluster = healthy()
    node.cni_files = []
    fix = only_failure(node, cluster, "cni-config").fix
    assert fix.startswith("/etc/cni/net.d is the default, assumed")
    install = fix.index("overlayctl install-cni --conf-dir /etc/cni/net.d")
    assert fix.index("--cni-conf-dir DIR") < install and fix.index("--runtime-file FILE") < install


def test_cni_config_missing_in_a_given_dir_proposes_the_install_alone():
    node, cluster = healthy()
    node.cni_files = []
    opts = st.DiagnoseOptions(cni_conf_dir="/srv/lab/node1/cni/net.d")
    fix = only_failure(node, cluster, "cni-config", opts).fix
    assert fix == "overlayctl install-cni --conf-dir /srv/lab/node1/cni/net.d"


def test_cni_binary_missing_in_the_default_dir_says_it_was_assumed_first():
    node, cluster = healthy()
    node.cni_bins = {"overlay": False, "portmap": True}
    fix = only_failure(node, cluster, "cni-binary").fix
    assert fix.startswith("/opt/cni/bin is the default, assumed")
    assert fix.index("--cni-bin-dir DIR") < fix.index("overlayctl install-cni --bin-dir")
    opts = st.DiagnoseOptions(cni_bin_dir="/srv/lab/bin")
    assert only_failure(node, cluster, "cni-binary", opts).fix == \
        "overlayctl install-cni --bin-dir /srv/lab/bin"


def test_subnet_env_missing_at_an_assumed_path_says_how_to_point_at_the_right_one():
    node, cluster = healthy()
    node.cni_files = [replace(node.cni_files[0], plugins=tuple(
        {k: v for k, v in p.items() if k != "subnetFile"} for p in node.cni_files[0].plugins))]
    node.subnet_env, node.subnet_env_error = None, "/run/overlay/subnet.env does not exist"
    fix = only_failure(node, cluster, "subnet-env").fix
    assert fix.startswith(f"{node.subnet_file} is the default, assumed")
    assert fix.index("--subnet-file FILE") < fix.index("restart overlayd")
    assert fix.index("--runtime-file FILE") < fix.index("restart overlayd")
    opts = st.DiagnoseOptions(subnet_file=node.subnet_file)
    assert only_failure(node, cluster, "subnet-env", opts).fix.startswith("restart overlayd")


def test_missing_subnet_env_does_not_send_diagnose_back_to_diagnose(tmp_path):
    with pytest.raises(SubnetEnvError) as e:
        ga.read_subnet_env(str(tmp_path / "subnet.env"))
    assert "does not exist" in str(e.value) and "diagnose" not in str(e.value)
    node, cluster = healthy()
    node.subnet_env, node.subnet_env_error = None, str(e.value)
    node.cni_files, node.cni_bins = [], {"overlay": False, "portmap": False}
    checks, _ = statuses(node, cluster)
    for c in checks.values():
        assert "overlayctl diagnose" not in c.fix + c.found + c.expected, c


def test_trace_on_the_wrong_node_stops_at_run_this_on_node_x():
    """Run on node 192.168.1.12 for a source pod of MY_IP's node: the hops after that
    describe the wrong node's path, and an `ip route replace` would send this node's own
    subnet into the tunnel."""
    node, cluster = healthy()
    other = cluster.leases[1]
    route = RouteInfo(IPv4Network("10.244.2.5/32"), None, BR)
    t = build_trace(IPv4Address("10.244.1.2"), IPv4Address("10.244.2.5"), node.kernel, route,
                    cluster, vxlan_name="overlay.1", bridge_name="cni0",
                    local_public_ip=other.attrs.public_ip, forwarding=True)
    assert [(h.name, h.status) for h in t.hops] == [("source-node", "wrong")]
    assert t.hops[0].fix.startswith(f"run this on node {MY_IP}")
    assert "ip route" not in " ".join(h.fix for h in t.hops) + t.note
    assert f"this node is {other.attrs.public_ip}" in t.hops[0].detail and not t.ok


def test_trace_to_a_second_lease_of_this_node_never_routes_it_into_the_tunnel():
    node, cluster = healthy()
    second = IPv4Network("10.244.9.0/24")
    cluster.leases = cluster.leases + [lease(second, MY_IP, MY_MAC)]
    route = RouteInfo(IPv4Network("10.244.9.5/32"), None, ETH)
    t = build_trace(IPv4Address("10.244.1.2"), IPv4Address("10.244.9.5"), node.kernel, route,
                    cluster, vxlan_name="overlay.1", bridge_name="cni0", local_public_ip=MY_IP,
                    forwarding=True)
    hop = next(h for h in t.hops if h.name == "route")
    assert hop.status == "wrong" and "two leases" in hop.fix
    assert "ip route" not in " ".join(h.fix for h in t.hops)
    assert "vxlan-device" not in [h.name for h in t.hops]


def test_lease_times_are_rfc3339_whole_seconds():
    """One time format in every output: no microseconds, UTC with Z (issue 12)."""
    node, cluster = healthy()
    when = NOW + timedelta(hours=1, microseconds=123456)
    cluster.leases = [lease(OWN, MY_IP, MY_MAC, expires=when)] + cluster.leases[1:]
    checks, _ = statuses(node, cluster)
    assert "expires 2026-01-01T01:00:00Z" in checks["lease"].found, checks["lease"].found
    cluster.leases = [lease(OWN, MY_IP, MY_MAC, expires=NOW - timedelta(microseconds=5))] \
        + cluster.leases[1:]
    checks, _ = statuses(node, cluster)
    assert "expired at 2025-12-31T23:59:59Z" in checks["lease"].found, checks["lease"].found


def test_backend_mtu_is_the_outer_mtu_and_a_device_at_the_old_meaning_fails():
    node, cluster = healthy()
    cluster.config = parse_network_config({"Network": "10.244.0.0/16",
                                           "Backend": {"MTU": 1400}})
    # overlayd before Backend.MTU became the outer MTU set the device to 1400 itself
    links = [link._replace(mtu=1400) if link.index in (VX, BR, POD) else link
             for link in node.kernel.links]
    node.subnet_env = node.subnet_env._replace(mtu=1400)
    c = only_failure(kernel_without(node, links=links), cluster, "mtu")
    assert "overlay.1 MTU 1350 ((Backend.MTU 1400, at most underlay eth0 1500) - 50)" \
        in c.expected
    assert "overlay.1 MTU 1400 != 1350" in c.found and "OVERLAY_MTU 1400 != 1350" in c.found
    assert "pod veth(s) veth1234 1400 > 1350" in c.found
    assert c.fix.startswith("ip link set overlay.1 mtu 1350")
    # after the upgrade: the device and subnet.env at 1350, an old pod still at 1400
    links = [link._replace(mtu=1350) if link.index in (VX, BR) else link for link in links]
    node.subnet_env = node.subnet_env._replace(mtu=1350)
    c = only_failure(kernel_without(node, links=links), cluster, "mtu")
    assert c.found.endswith("pod veth(s) veth1234 1400 > 1350")
    assert "recreate the pods on cni0" in c.fix


def test_backend_mtu_above_the_underlays_expects_the_underlays():
    node, cluster = healthy()
    cluster.config = parse_network_config({"Network": "10.244.0.0/16",
                                           "Backend": {"MTU": 9000}})
    checks, _ = statuses(node, cluster)
    assert checks["mtu"].status == st.PASS, checks["mtu"].found
    assert "overlay.1 MTU 1450" in checks["mtu"].expected
