"""End-to-end tests of a dual-stack lab (issue 14 items 5 and 6).

Real etcd, real overlayd per node, pods attached by the real CNI plugin, real VXLAN over
the lab's IPv6 underlay (fd00:192:168:1::/64, only inside the lab's namespaces).  The
module's dual-stack lab has 2 nodes, 2 pods each.  Its tests run in file order and each
leaves every node ready.  Run under the integration lock:

    flock /tmp/overlay-integration.lock env OVERLAY_VENV=... ./cmd/run-tests \\
        tests/integration/test_lab_dualstack.py
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from overlay.lab.cli import endpoints
from overlay.lab.matrix import ping, reachability
from overlay.lab.probe import Target, probe
from overlay.lab.spec import POD_NETWORK6, RESPONDER_PORTS
from overlay.lab.system import in_netns, ip

from .support.lab_ipv6 import (
    V6_DEVICE,
    assert_echo_crosses_as_vxlan6,
    device_mac,
    failed,
    fdb,
    peer_has_fdb,
    pod_addrs,
)
from .support.labfixture import (
    TEST_PREFIX,
    keep_logs,
    poll,
    running_lab,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LAB = os.path.join(os.path.dirname(sys.executable), "overlay-lab")
UNDERLAY_MTU = 1500
V6_OVERHEAD = 70          # outer IPv6 40 + UDP 8 + VXLAN 8 + inner Ethernet 14
ICMP6_HEADERS = 48        # IPv6 40 + ICMPv6 8: ping -s N sends N + 48 bytes
ICMP4_HEADERS = 28        # IPv4 20 + ICMP 8
READY = 30.0


@pytest.fixture(scope="module")
def lab(request):
    failed_before = request.session.testsfailed
    with running_lab(nodes=2, pods_per_node=2, families="dual") as lab:
        yield lab
        if request.session.testsfailed > failed_before:
            warnings.warn(f"dual-stack lab failed: its logs are kept in {keep_logs(lab)}",
                          stacklevel=1)


def _cross_pair(lab):
    return lab.state.pods_of("node1")[0], lab.state.pods_of("node2")[0]


def _mtu(ns, device):
    return json.loads(ip("-j", "link", "show", "dev", device, ns=ns).stdout)[0]["mtu"]


# --------------------------------------------------------------------- the IPv6 anchor
ANCHOR = Path(__file__).resolve().parents[2] / "bench" / "lab-by-hand-v6.sh"


def test_the_hand_built_ipv6_anchor_carries_pods_over_flannel_v6_and_leaves_nothing():
    prefix = "ovlt6h" + TEST_PREFIX[4:6]
    env = {**os.environ, "PREFIX": prefix, "NODES": "2"}

    def script(action):
        return subprocess.run(["bash", str(ANCHOR), action], capture_output=True, text=True,
                              env=env, timeout=60)

    def ours():
        out = ip("netns", "list").stdout
        return sorted(line.split()[0] for line in out.splitlines()
                      if line.startswith(f"{prefix}-"))
    assert ours() == []
    try:
        up = script("up")
        assert up.returncode == 0, up.stderr
        again = script("up")
        assert again.returncode == 1 and "exists already" in again.stderr
        pod1 = f"{prefix}-pod1"
        assert poll(lambda: ping(pod1, "fd00:10:245:2::2", wait=1), 10.0) is not None
        assert ping(pod1, "fd00:10:245:2::2", size=1430 - ICMP6_HEADERS, dont_fragment=True)
        assert not ping(pod1, "fd00:10:245:2::2", size=1431 - ICMP6_HEADERS,
                        dont_fragment=True)
        stats = json.loads(ip("-s", "-j", "link", "show", "flannel-v6.1",
                              ns=f"{prefix}-node1").stdout)[0]
        assert stats["stats64"]["tx"]["packets"] >= 2 and stats["mtu"] == 1430
    finally:
        down = script("down")
    assert down.returncode == 0, down.stderr
    assert ours() == []
    bad = subprocess.run(["bash", str(ANCHOR), "up"], capture_output=True, text=True,
                         env={**env, "NODES": "1"}, timeout=10)
    assert bad.returncode == 1 and "NODES must be" in bad.stderr


def test_underlay_carries_ipv6_inside_the_lab_only(lab):
    for node in lab.state.nodes:
        out = ip("-6", "-o", "addr", "show", "dev", "eth0", ns=lab.spec.node_ns(node)).stdout
        assert f"{lab.spec.node_interface6(node)}" in out, out
        fwd = subprocess.run(in_netns(lab.spec.node_ns(node), [
            "sysctl", "-n", "net.ipv6.conf.all.forwarding"]), capture_output=True, text=True)
        assert fwd.stdout.strip() == "1"
    assert ping(lab.spec.node_ns("node1"), str(lab.spec.node_ip6("node2")), wait=1, attempts=2)
    assert "fd00:192:168:1:" not in ip("-6", "addr", "show").stdout     # not on the host
    config = lab.overlayctl("-o", "json", "config", "get").stdout
    assert POD_NETWORK6 in config, config


def test_every_pod_has_an_address_of_each_family_in_its_nodes_subnets(lab):
    pods = list(lab.state.pods.values())
    assert len(pods) == 4 and len({p.ip6 for p in pods}) == 4
    for pod in pods:
        subnet, subnet6 = lab.node_subnet(pod.node), lab.node_subnet6(pod.node)
        assert subnet and subnet6, (pod.node, subnet, subnet6)
        assert ipaddress.ip_address(pod.ip) in ipaddress.ip_network(subnet)
        assert ipaddress.ip_address(pod.ip6) in ipaddress.ip_network(subnet6)
        assert ipaddress.IPv6Network(subnet6).subnet_of(ipaddress.IPv6Network(POD_NETWORK6))
        assert pod_addrs(lab, pod, 4) == [pod.ip] and pod_addrs(lab, pod, 6) == [pod.ip6]


def test_every_pod_reaches_every_pod_over_both_families(lab):
    for family in (4, 6):
        eps = endpoints(lab, family)
        assert len(eps) == 4
        m = reachability(eps, attempts=2)
        assert len(m) == 12 and not failed(m), (family, failed(m))
    # TCP and UDP to every pod's responder over IPv6 (the matrix's probe, in parallel)
    refs = {p.key: p.ref for p in lab.state.pods.values()}
    for protocol in ("tcp", "udp"):
        def responder(a, b, protocol=protocol):
            return probe(a.netns, Target(refs[b.name], b.ip), RESPONDER_PORTS[1], protocol).ok
        m = reachability(endpoints(lab, 6), check=responder)
        assert not failed(m), (protocol, failed(m))


def test_ipv6_crosses_the_underlay_as_vxlan_with_the_pods_own_addresses(lab):
    a, b = _cross_pair(lab)
    assert_echo_crosses_as_vxlan6(lab, a, b)


def test_largest_df_payload_is_the_ipv6_overlay_mtus(lab):
    a, b = _cross_pair(lab)
    n1 = lab.spec.node_ns("node1")
    overlay_mtu = UNDERLAY_MTU - V6_OVERHEAD                       # 1430
    assert _mtu(n1, "eth0") == UNDERLAY_MTU
    assert _mtu(n1, V6_DEVICE) == overlay_mtu
    assert _mtu(lab.spec.pod_ns(a.key), "eth0") == overlay_mtu      # min(1450, 1430)
    src = lab.spec.pod_ns(a.key)
    biggest = overlay_mtu - ICMP6_HEADERS                          # 1382
    assert ping(src, b.ip6, wait=2, size=biggest, dont_fragment=True, attempts=2)
    assert not ping(src, b.ip6, wait=1, size=biggest + 1, dont_fragment=True)
    # The node's own packets into the overlay meet overlay-v6.1's MTU, not the pod's.
    assert ping(n1, b.ip6, wait=2, size=biggest, dont_fragment=True, attempts=2)
    assert not ping(n1, b.ip6, wait=1, size=biggest + 1, dont_fragment=True)
    # IPv4 shares the pod's one MTU, so its largest DF payload is 1430's as well.
    assert ping(src, b.ip, wait=2, size=overlay_mtu - ICMP4_HEADERS, dont_fragment=True,
                attempts=2)
    assert not ping(src, b.ip, wait=1, size=overlay_mtu - ICMP4_HEADERS + 1,
                    dont_fragment=True)


def test_ipv6_vtep_mac_survives_an_overlayd_restart_and_a_device_deletion(lab):
    node, peer = "node2", "node1"
    mac = device_mac(lab, node)
    assert peer_has_fdb(lab, node, peer, mac), fdb(lab, peer)
    old = lab.daemon_pid(node)
    lab.stop_daemon(node, signal.SIGKILL)
    ip("link", "del", V6_DEVICE, ns=lab.spec.node_ns(node))   # a reboot loses the device
    lab.start_daemon(node)
    lab.wait_ready([node], timeout=READY)
    assert lab.daemon_pid(node) not in (None, old)
    assert poll(lambda: ip("link", "show", "dev", V6_DEVICE, ns=lab.spec.node_ns(node),
                           check=False).returncode == 0, 10.0) is not None
    assert device_mac(lab, node) == mac
    # deleted under a running overlayd: it puts the device back, with the same MAC
    ip("link", "del", V6_DEVICE, ns=lab.spec.node_ns(node))
    assert poll(lambda: ip("link", "show", "dev", V6_DEVICE, ns=lab.spec.node_ns(node),
                           check=False).returncode == 0, 15.0) is not None
    assert device_mac(lab, node) == mac
    assert peer_has_fdb(lab, node, peer, mac), fdb(lab, peer)
    a, b = _cross_pair(lab)

    def both_ways():
        return (ping(lab.spec.pod_ns(a.key), b.ip6, wait=0.5)
                and ping(lab.spec.pod_ns(b.key), a.ip6, wait=0.5))
    assert poll(both_ways, 15.0, interval=0) is not None


def test_node_without_ipv6_keeps_ipv4_for_all_and_says_why(lab):
    node = lab.add_node(pods_per_node=1, no_ipv6=True)
    try:
        assert not lab.state.node_has_ipv6(node)
        ns = lab.spec.node_ns(node)
        assert "inet6 fd00:" not in ip("-6", "addr", "show", "dev", "eth0", ns=ns).stdout
        pod = lab.state.pods_of(node)[0]
        assert pod.ip and pod.ip6 is None and pod_addrs(lab, pod, 6) == []
        m = reachability(endpoints(lab, 4), attempts=2)           # all six pods, IPv4
        assert len(m) == 20 and not failed(m), failed(m)
        m6 = reachability(endpoints(lab, 6), attempts=2)          # the others, IPv6
        assert len(m6) == 12 and not failed(m6), failed(m6)
        st = lab.node_status(node)
        assert st.ready and st.public_ipv6 is None and st.ipv6_subnet is None
        assert st.ipv6_missing and "no IPv6 address" in st.ipv6_missing
        with open(lab.daemon_log(node)) as f:
            log = f.read()
        assert re.search(r"ipv6", log, re.I), "overlayd's log does not say why IPv6 is off"
        cp = subprocess.run([LAB, "status", "--name", lab.spec.prefix, "--lab-dir",
                             lab.spec.base_dir], capture_output=True, text=True, timeout=60)
        assert cp.returncode == 0 and f"{node}: no IPv6:" in cp.stdout, cp.stdout + cp.stderr
    finally:
        lab.remove_node(node)


def test_cli_probe_matrix_and_status_per_family(lab):
    args = ["--name", lab.spec.prefix, "--lab-dir", lab.spec.base_dir]
    a, b = _cross_pair(lab)

    def run(*argv):
        return subprocess.run([LAB, *argv, *args], capture_output=True, text=True, timeout=60)
    for family, addr in (("4", b.ip), ("6", b.ip6)):
        cp = run("probe", a.name, b.name, "--family", family)
        assert cp.returncode == 0 and f"({addr})" in cp.stdout, cp.stdout + cp.stderr
    cp = run("matrix", "--family", "6", "--protocol", "udp")
    assert cp.returncode == 0 and "over IPv6" in cp.stdout and "over IPv4" not in cp.stdout
    assert "all 12 pairs reachable" in cp.stdout, cp.stdout
    cp = run("matrix")
    assert cp.returncode == 0 and cp.stdout.count("all 12 pairs reachable") == 2, cp.stdout
    st = json.loads(run("status", "-o", "json").stdout)
    assert st["families"] == "dual"
    assert all(n["public_ipv6"] and n["ipv6_subnet"] for n in st["nodes"]), st["nodes"]
    assert all(p["ipv6"] for p in st["pods"]), st["pods"]
    table = run("status").stdout
    assert "PUBLIC-IPV6" in table and str(lab.spec.node_ip6("node1")) in table
