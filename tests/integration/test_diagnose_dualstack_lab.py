"""diagnose, trace and Backend.MTU on a real dual-stack lab (prefix ovdg6): two nodes,
one pod each, IPv4 and IPv6 over VXLAN, overlayd and the CNI plugin as on the ovdg lab.

Each breakage is made on node1 and undone in the same test; the MTU test comes last
(it changes the network config and restarts both daemons).  Run under the lock:

    flock /tmp/overlay-integration.lock env OVERLAY_VENV=... ./cmd/run-tests \\
        tests/integration/test_diagnose_dualstack_lab.py
"""

from __future__ import annotations

import ipaddress
import json
import os

import pytest

from overlay.lab.lab import Lab
from overlay.lab.matrix import ping
from overlay.lab.system import ip

from .support.labfixture import running_lab
from .test_diagnose_lab import OVERLAYCTL, LabNode, check, failed, sh

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PREFIX = "ovdg6"
V6_DEVICE = "overlay-v6.1"
ICMP4, ICMP6 = 28, 48  # IPv4 20 + ICMP 8; IPv6 40 + ICMPv6 8


@pytest.fixture(scope="module")
def lab():
    with running_lab(nodes=2, pods_per_node=1, prefix=PREFIX, families="dual") as lab:
        yield lab


@pytest.fixture
def n1(lab):
    return LabNode(lab, "node1")


def pods(lab: Lab):
    """node1's pod, node2's pod."""
    assert lab.state is not None
    return lab.state.pods_of("node1")[0], lab.state.pods_of("node2")[0]


def not_passing(report: dict) -> dict[str, str]:
    return {c["name"]: c["found"] for c in report["checks"] if c["status"] != "pass"}


def mtu(ns: str, device: str) -> int:
    return json.loads(ip("-j", "link", "show", "dev", device, ns=ns).stdout)[0]["mtu"]


def test_healthy_dual_stack_nodes_pass_every_check(lab):
    for node in lab.state.nodes:
        rc, report = LabNode(lab, node).diagnose()
        assert not_passing(report) == {} and rc == 0
        assert check(report, "ipv6-pod-ips")["found"] == "1 IPv6 address(es), 1 bridge port(s)"
        # one pod MTU for both families: the IPv6 device's, the smaller
        assert "OVERLAY_MTU 1430 (the smaller" in check(report, "mtu")["expected"]
        assert "answered 1382-byte DF pings over IPv6" in check(report, "ipv6-data-plane")["found"]


def test_a_leaked_ipv6_address_fails_ipv6_pod_ips_alone(lab, n1):
    subnet6 = ipaddress.IPv6Network(lab.node_subnet6("node1"))
    leaked = subnet6.network_address + 0x99
    path = os.path.join(lab.spec.node_file("node1", "ipam"), "overlay", str(leaked))
    with open(path, "w", newline="") as f:  # what a runtime that never sent DEL leaves
        f.write("ovdg6leak\r\neth0")
    try:
        rc, report = n1.diagnose()
    finally:
        os.remove(path)
    assert rc == 1 and failed(report) == ["ipv6-pod-ips"], not_passing(report)
    c = check(report, "ipv6-pod-ips")
    assert f"leaked (no pod interface on the bridge): {leaked} (container ovdg6leak, eth0, " \
           "no IPv4 address)" in c["found"]
    assert path in c["fix"]
    rc, report = n1.diagnose()
    assert rc == 0 and check(report, "ipv6-pod-ips")["status"] == "pass"


def ip6_drops(ns: str) -> dict[str, tuple[list[list[str]], list[list[str]], str]]:
    """name -> (add the drop, remove it, what the firewall check's fix must say)."""
    nft = ["ip", "netns", "exec", ns, "nft"]
    ipt = ["ip", "netns", "exec", ns, "ip6tables", "-w"]
    rule = ["INPUT", "-p", "udp", "--dport", "8472", "-j", "DROP"]
    return {
        "nft": ([nft + ["add", "table", "ip6", "ovdg6"],
                 nft + ["add", "chain", "ip6", "ovdg6", "input",
                        "{ type filter hook input priority 0; }"],
                 nft + ["add", "rule", "ip6", "ovdg6", "input", "udp", "dport", "8472", "drop"]],
                [nft + ["delete", "table", "ip6", "ovdg6"]],
                "nft delete rule ip6 ovdg6 input handle"),
        "ip6tables": ([ipt + ["-A", *rule]], [ipt + ["-D", *rule]],
                      "ip6tables -t filter -D INPUT -p udp -m udp --dport 8472 -j DROP"),
    }


@pytest.mark.parametrize("how", ["nft", "ip6tables"])
def test_udp_8472_dropped_over_ipv6_fails_the_firewall_and_the_ipv6_probes(lab, n1, how):
    do, undo, fix = ip6_drops(n1.ns)[how]
    try:
        for cmd in do:
            sh(*cmd)
        rc, report = n1.diagnose()
    finally:
        for cmd in undo:
            sh(*cmd, check=False)
    # IPv4's VXLAN is untouched; the IPv6 peers' replies are what the rule drops
    assert rc == 1 and failed(report) == ["firewall", "ipv6-data-plane"], not_passing(report)
    assert check(report, "firewall")["fix"].startswith(fix)
    assert "UDP 8472 over IPv6" in check(report, "ipv6-data-plane")["fix"]
    assert check(report, "peer-vteps")["status"] == "pass"
    rc, report = n1.diagnose()
    assert rc == 0, not_passing(report)


def trace(n1: LabNode, src: str, dst: str) -> tuple[int, dict]:
    p = n1.run(OVERLAYCTL, "-o", "json", "trace", src, dst, check=False)
    assert p.stdout, p.stderr
    return p.returncode, json.loads(p.stdout)


def test_trace_over_ipv6_shows_every_hop_to_the_remote_vtep(lab, n1):
    a, b = pods(lab)
    rc, result = trace(n1, a.ip6, b.ip6)
    assert rc == 0 and result["ok"], result
    hops = {h["name"]: h for h in result["hops"]}
    assert [h["status"] for h in result["hops"]] == ["ok"] * 8
    node2_ip6 = str(lab.spec.node_ip6("node2"))
    gw6 = str(ipaddress.IPv6Network(lab.node_subnet6("node2")).network_address)
    assert hops["route"]["detail"] == f"{b.ip6} via {gw6} dev {V6_DEVICE}"
    assert hops["vxlan-device"]["detail"].startswith(
        f"{V6_DEVICE} VNI 1 port 8472 local {lab.spec.node_ip6('node1')} mtu 1430")
    assert f"-> {node2_ip6} (UDP 8472" in hops["remote-public-ip"]["detail"]
    assert hops["underlay"]["detail"] == f"{node2_ip6} via direct dev eth0"
    rc4, result4 = trace(n1, a.ip, b.ip)  # IPv4 on the same lab, as before
    assert rc4 == 0 and "dev overlay.1" in result4["hops"][2]["detail"]
    p = n1.run(OVERLAYCTL, "trace", a.ip, b.ip6, check=False)
    assert p.returncode != 0 and "different families" in p.stderr, p.stderr


def test_trace_over_ipv6_names_a_missing_fdb_entry_and_its_fix(lab, n1):
    a, b = pods(lab)
    node2_ip6 = str(lab.spec.node_ip6("node2"))
    fdb = sh("ip", "netns", "exec", n1.ns, "bridge", "fdb", "show", "dev", V6_DEVICE).stdout
    mac = next(line.split()[0] for line in fdb.splitlines() if f"dst {node2_ip6} " in line)
    with n1.frozen():
        sh("ip", "netns", "exec", n1.ns, "bridge", "fdb", "del", mac, "dev", V6_DEVICE,
           "dst", node2_ip6, "self")
        rc, result = trace(n1, a.ip6, b.ip6)
        hop = next(h for h in result["hops"] if h["name"] == "remote-public-ip")
        assert rc == 1 and hop["status"] == "missing", result
        assert hop["fix"] == (f"bridge fdb replace {mac} dev {V6_DEVICE} dst {node2_ip6} "
                              "self permanent")
        sh("ip", "netns", "exec", n1.ns, *hop["fix"].split())  # the fix, as printed
        rc, result = trace(n1, a.ip6, b.ip6)
    assert rc == 0 and result["ok"], result


def set_backend_mtu(lab: Lab, value: int) -> None:
    config = json.loads(lab.overlayctl("-o", "json", "config", "get").stdout)
    config.setdefault("Backend", {})["MTU"] = value
    lab.overlayctl("config", "set", "-f", "-", input=json.dumps(config))
    assert lab.state is not None
    for node in lab.state.nodes:
        lab.stop_daemon(node)
        lab.start_daemon(node)
    lab.wait_ready(lab.state.nodes, timeout=30)


def test_backend_mtu_is_the_outer_mtu_of_both_families(lab):
    """Backend.MTU 1400: overlay.1 1350, overlay-v6.1 1330; the largest DF payload that
    crosses from node1 into the overlay is exactly each device's, and a new pod's MTU is
    the smaller one for both families."""
    set_backend_mtu(lab, 1400)
    n1 = lab.spec.node_ns("node1")
    assert (mtu(n1, "overlay.1"), mtu(n1, V6_DEVICE), mtu(n1, "eth0")) == (1350, 1330, 1500)
    _, b = pods(lab)
    for dst, size in ((b.ip, 1350 - ICMP4), (b.ip6, 1330 - ICMP6)):
        assert ping(n1, dst, wait=2, size=size, dont_fragment=True, attempts=2), dst
        assert not ping(n1, dst, wait=1, size=size + 1, dont_fragment=True), dst
    with open(lab.spec.node_file("node1", "subnet.env")) as f:
        assert "OVERLAY_MTU=1330\n" in f.read()
    new = lab.add_pod("mtu-new", "node1")
    src = lab.spec.pod_ns(new.key)
    assert mtu(src, "eth0") == 1330
    for dst, size in ((b.ip, 1330 - ICMP4), (b.ip6, 1330 - ICMP6)):
        assert ping(src, dst, wait=2, size=size, dont_fragment=True, attempts=2), dst
        assert not ping(src, dst, wait=1, size=size + 1, dont_fragment=True), dst
    rc, report = LabNode(lab, "node1").diagnose()
    # the pod attached before keeps its 1430 until re-created: diagnose says so
    assert failed(report) == ["mtu"] and "recreate the pods" in check(report, "mtu")["fix"]
    assert "1330" in check(report, "mtu")["found"]
    assert check(report, "ipv6-data-plane")["status"] == "pass"
