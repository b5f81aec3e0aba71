"""End-to-end tests of an IPv6-only lab (EnableIPv4 false): 3 nodes, 1 pod each.

Real etcd (on the underlay's IPv4 side, as in the dual-stack lab: it is infrastructure,
not the pod network), real overlayd per node with only ``overlay-v6.1``, pods attached by
the real CNI plugin with one IPv6 address each, VXLAN over the lab's IPv6 underlay
(fd00:192:168:1::/64, only inside the lab's namespaces).  Tests run in file order and
each leaves every node ready.  Run under the integration lock:

    flock /tmp/overlay-integration.lock env OVERLAY_VENV=... ./cmd/run-tests \\
        tests/integration/test_lab_ipv6only.py
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import warnings

import pytest

from overlay.lab.cli import endpoints
from overlay.lab.matrix import ping, reachability
from overlay.lab.probe import Target, probe
from overlay.lab.spec import ETCD_KEY_PREFIX, ETCD_PORT, POD_NETWORK6, RESPONDER_PORTS
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
from .support.labfixture import TEST_PREFIX, keep_logs, poll, running_lab

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LAB = os.path.join(os.path.dirname(sys.executable), "overlay-lab")
PREFIX = "ovl6" + TEST_PREFIX[4:]
NODES = ("node1", "node2", "node3")
READY = 30.0


@pytest.fixture(scope="module")
def lab(request):
    failed_before = request.session.testsfailed
    with running_lab(nodes=3, pods_per_node=1, prefix=PREFIX, families="ipv6") as lab:
        yield lab
        if request.session.testsfailed > failed_before:
            warnings.warn(f"IPv6-only lab failed: its logs are kept in {keep_logs(lab)}",
                          stacklevel=1)


def nsx(ns, *argv, check=True):
    return subprocess.run(in_netns(ns, list(argv)), capture_output=True, text=True,
                          check=check, timeout=30)


def etcdctl(lab, *args):
    env = ["env", "ETCDCTL_API=3", "etcdctl", f"--endpoints=http://127.0.0.1:{ETCD_PORT}"]
    return nsx(lab.spec.underlay_ns, *env, *args)


def metric(lab, node, name):
    """The sum of ``name``'s samples in overlayd's /metrics on ``node``."""
    out = nsx(lab.spec.node_ns(node), "curl", "-sf", "http://127.0.0.1:9099/metrics").stdout
    return sum(float(line.rsplit(" ", 1)[1]) for line in out.splitlines()
               if line.startswith(name) and not line.startswith("#"))


def all_reach(lab):
    m = reachability(endpoints(lab, 6), attempts=2)
    return len(m) == 6 and not failed(m), failed(m)


# --------------------------------------------------------------------- the nodes
def test_each_node_has_overlay_v6_only_and_writes_the_ipv6_pair_alone(lab):
    config = json.loads(lab.overlayctl("-o", "json", "config", "get").stdout)
    assert config.get("EnableIPv4") is False and "Network" not in config, config
    for i, node in enumerate(NODES, 1):
        ns = lab.spec.node_ns(node)
        links = {x["ifname"] for x in json.loads(ip("-j", "link", "show", ns=ns).stdout)}
        assert V6_DEVICE in links and "overlay.1" not in links, links
        with open(lab.spec.node_file(node, "subnet.env")) as f:
            env = f.read()
        assert "OVERLAY_NETWORK=" not in env and "OVERLAY_SUBNET=" not in env, env
        assert f"OVERLAY_IPV6_NETWORK={POD_NETWORK6}\n" in env
        assert f"OVERLAY_IPV6_SUBNET=fd00:10:244:{i:x}::1/64\n" in env   # its reservation
        assert "OVERLAY_MTU=1430\n" in env                               # 1500 - 70
        assert nsx(ns, "nft", "list", "table", "ip", "overlay", check=False).returncode != 0
        # no IPv4 route into the overlay, and the v6 device's MTU
        assert "10.244." not in ip("-4", "route", "show", ns=ns).stdout
        assert json.loads(ip("-j", "link", "show", "dev", V6_DEVICE, ns=ns).stdout)[0][
            "mtu"] == 1430
    leases = json.loads(lab.overlayctl("-o", "json", "leases", "list").stdout)
    text = json.dumps(leases)
    for i in range(1, 4):
        assert f"fd00:10:244:{i:x}::/64" in text, text
    assert "10.244." not in text


def test_every_pod_reaches_every_pod_over_ipv6_and_has_no_ipv4(lab):
    pods = sorted(lab.state.pods.values(), key=lambda p: p.key)
    assert len(pods) == 3
    for pod in pods:
        assert pod.ip6 and pod.address(4) is None, pod
        assert pod_addrs(lab, pod, 4) == [] and pod_addrs(lab, pod, 6) == [pod.ip6]
        subnet6 = lab.node_subnet6(pod.node)
        assert subnet6 and ipaddress.ip_address(pod.ip6) in ipaddress.ip_network(subnet6)
        assert "default via" in ip("-6", "route", "show", ns=lab.spec.pod_ns(pod.key)).stdout
        assert ip("-4", "route", "show", ns=lab.spec.pod_ns(pod.key)).stdout.strip() == ""
    ok, bad = all_reach(lab)
    assert ok, bad
    refs = {p.key: p.ref for p in pods}
    for protocol in ("tcp", "udp"):
        def responder(a, b, protocol=protocol):
            return probe(a.netns, Target(refs[b.name], b.ip), RESPONDER_PORTS[0], protocol).ok
        m = reachability(endpoints(lab, 6), check=responder)
        assert not failed(m), (protocol, failed(m))


def test_the_underlay_carries_ipv6_udp_8472_with_the_pods_own_addresses(lab):
    a, b = lab.state.pods_of("node1")[0], lab.state.pods_of("node2")[0]
    assert_echo_crosses_as_vxlan6(lab, a, b)


def test_the_cluster_tables_show_ipv6_only(lab):
    nodes = lab.overlayctl("nodes").stdout
    for node in NODES:
        assert str(lab.spec.node_ip6(node)) in nodes, nodes
    assert "192.168.1." not in nodes and "10.244." not in nodes, nodes
    pods = poll(lambda: all(p.ip6 in lab.overlayctl("pods").stdout
                            for p in lab.state.pods.values()), 15.0)
    assert pods is not None, lab.overlayctl("pods").stdout
    st = json.loads(subprocess.run([LAB, "status", "-o", "json", "--name", lab.spec.prefix,
                                    "--lab-dir", lab.spec.base_dir], capture_output=True,
                                   text=True, timeout=60).stdout)
    assert st["families"] == "ipv6"
    assert all(n["ipv6_subnet"] for n in st["nodes"]), st["nodes"]
    diag = nsx(lab.spec.node_ns("node1"), "env",
               f"OVERLAYCTL_RUNTIME_FILE={lab.spec.node_file('node1', 'overlayd.json')}",
               os.path.join(os.path.dirname(sys.executable), "overlayctl"), "diagnose",
               check=False)
    assert "Traceback" not in diag.stderr, diag.stderr
    assert "lease" in diag.stdout and "fd00:10:244:1::/64" in diag.stdout, diag.stdout


# --------------------------------------------------------------------- hostile values
def test_hostile_leases_are_rejected_alone_and_the_others_keep_working(lab):
    base = f"{ETCD_KEY_PREFIX}/subnets/"
    victim_mac = device_mac(lab, "node2")
    hostile = {
        # claims node2's VTEP MAC for another address: must not steal node2's FDB entry
        "fd00:10:244:77::-64": {"PublicIP": "0.0.0.0", "PublicIPv6": "fd00:192:168:1::77",
                                "BackendType": "vxlan",
                                "BackendV6Data": {"VNI": 1, "VtepMAC": victim_mac}},
        # aims VXLAN at a multicast group
        "fd00:10:244:78::-64": {"PublicIP": "0.0.0.0", "PublicIPv6": "ff02::1",
                                "BackendType": "vxlan",
                                "BackendV6Data": {"VNI": 1, "VtepMAC": "0e:00:00:00:00:78"}},
        # an IPv4 key in an IPv6-only store
        "10.244.9.0-24": {"PublicIP": "192.168.1.99", "BackendType": "vxlan",
                          "BackendData": {"VNI": 1, "VtepMAC": "0e:00:00:00:00:99"}},
    }
    before = metric(lab, "node1", "overlay_leases_rejected_total")
    try:
        for key, value in hostile.items():
            etcdctl(lab, "put", base + key, json.dumps(value))
        assert poll(lambda: metric(lab, "node1", "overlay_leases_rejected_total")
                    >= before + 3, 10.0) is not None
        listing = lab.overlayctl("leases", "list").stdout
        for reason in ("vtep-mac-claimed", "public-ip-unusable", "family-mismatch"):
            assert f"rejected: {reason}" in listing, listing
        for node in NODES:
            ns = lab.spec.node_ns(node)
            routes = ip("-6", "route", "show", ns=ns).stdout
            assert "fd00:10:244:77::" not in routes and "fd00:10:244:78::" not in routes
            assert "10.244.9." not in ip("-4", "route", "show", ns=ns).stdout
        assert peer_has_fdb(lab, "node2", "node1", victim_mac), fdb(lab, "node1")
        assert "fd00:192:168:1::77" not in fdb(lab, "node1")
        ok, bad = all_reach(lab)
        assert ok, bad
        assert "family-mismatch" in lab.overlayctl("-o", "json", "leases", "list").stdout
    finally:
        for key in hostile:
            etcdctl(lab, "del", base + key)
    lab.wait_ready(list(NODES), timeout=READY)


# --------------------------------------------------------------------- restarts
def test_an_overlayd_restart_keeps_the_subnet_and_the_v6_vtep_mac(lab):
    node, peer = "node3", "node1"
    mac, subnet = device_mac(lab, node), lab.node_subnet6(node)
    assert peer_has_fdb(lab, node, peer, mac), fdb(lab, peer)
    old = lab.daemon_pid(node)
    lab.stop_daemon(node, signal.SIGKILL)
    ip("link", "del", V6_DEVICE, ns=lab.spec.node_ns(node))   # a reboot loses the device
    lab.start_daemon(node)
    lab.wait_ready([node], timeout=READY)
    assert lab.daemon_pid(node) not in (None, old)
    assert device_mac(lab, node) == mac and lab.node_subnet6(node) == subnet
    assert peer_has_fdb(lab, node, peer, mac), fdb(lab, peer)
    a, b = lab.state.pods_of(node)[0], lab.state.pods_of(peer)[0]

    def both_ways():
        return (ping(lab.spec.pod_ns(a.key), b.ip6, wait=0.5)
                and ping(lab.spec.pod_ns(b.key), a.ip6, wait=0.5))
    assert poll(both_ways, 15.0, interval=0) is not None
