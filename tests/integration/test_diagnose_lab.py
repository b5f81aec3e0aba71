"""overlayctl diagnose and trace on a real lab (overlayd + the CNI plugin + etcd), prefix ovdg.

Each breakage is made on node1 with its overlayd frozen (SIGSTOP), so the daemon's
reconcile loop cannot repair it before diagnose looks, then undone and the daemon
resumed.  Diagnose runs inside the node namespace with no flags, as an operator runs it
there with ``overlay-lab exec NODE -- overlayctl diagnose``: the lab's exec environment
names only the node's runtime file, which the node's overlayd wrote.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import pytest

from overlay.lab.lab import Lab

from .support.labfixture import running_lab, vtep_mac

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OVERLAYCTL = os.path.join(os.path.dirname(sys.executable), "overlayctl")
PREFIX = "ovdg"


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(list(args), capture_output=True, text=True, timeout=60)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {p.stderr.strip()}")
    return p


@dataclass
class LabNode:
    lab: Lab
    node: str

    @property
    def ns(self) -> str:
        return self.lab.spec.node_ns(self.node)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """``args`` in the node's namespace, with ``overlay-lab exec``'s environment."""
        env = self.lab.exec_env(self.ns, os.environ)
        p = subprocess.run(["ip", "netns", "exec", self.ns, *args], capture_output=True,
                           text=True, timeout=60, env=env)
        if check and p.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: {p.stderr.strip()}")
        return p

    def diagnose(self, *extra: str) -> tuple[int, dict]:
        p = self.run(OVERLAYCTL, "-o", "json", "diagnose", *extra, check=False)
        assert p.stdout, p.stderr
        return p.returncode, json.loads(p.stdout)

    def diagnose_frozen(self) -> tuple[int, dict]:
        """diagnose while overlayd is frozen: a stopped daemon answers no /readyz, so the
        daemon check looks for its process instead (the one flag these runs need)."""
        return self.diagnose("--healthz-addr", "")

    @contextmanager
    def frozen(self):
        """The node's overlayd stopped (not killed) so it repairs nothing meanwhile."""
        pid = self.lab.daemon_pid(self.node)
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(pid, signal.SIGCONT)


@pytest.fixture(scope="module")
def lab():
    with running_lab(nodes=2, pods_per_node=1, prefix=PREFIX) as lab:
        yield lab


@pytest.fixture
def n1(lab):
    return LabNode(lab, "node1")


@pytest.fixture
def n2(lab):
    return LabNode(lab, "node2")


def failed(report: dict) -> list[str]:
    return sorted(c["name"] for c in report["checks"] if c["status"] == "fail")


def check(report: dict, name: str) -> dict:
    return next(c for c in report["checks"] if c["name"] == name)


def peer(lab: Lab) -> tuple[str, str, str]:
    """node2's subnet, VTEP MAC and public IP."""
    subnet = lab.node_subnet("node2")
    assert subnet is not None, "node2 has a subnet.env (the lab is up)"
    return subnet, vtep_mac(lab, "node2"), str(lab.spec.node_ip("node2"))


def test_healthy_lab_every_check_passes_with_no_flags(lab):
    for node in lab.state.nodes:
        rc, report = LabNode(lab, node).diagnose()
        bad = {c["name"]: c["found"] for c in report["checks"] if c["status"] != "pass"}
        assert bad == {} and rc == 0
        assert report["node"]["peers"] == len(lab.state.nodes) - 1
        assert report["node"]["public_ip"] == str(lab.spec.node_ip(node))
        assert check(report, "daemon")["found"] == "200"  # the runtime file's healthz address
        assert check(report, "local-pods")["found"] == "1 pod(s) answered over cni0"
        assert "answered 1422-byte DF pings" in check(report, "peer-vteps")["found"]


def breakages(lab: Lab) -> dict[str, tuple[list[list[str]], list[list[str]], str, str, bool]]:
    """name -> (break, undo, failing check, text its fix must hold, peer unreachable too)."""
    subnet, mac, pub = peer(lab)
    gw = subnet.split("/")[0]
    ns = lab.spec.node_ns("node1")
    ip = ["ip", "-n", ns]
    br = ["bridge", "-n", ns]
    nsx = ["ip", "netns", "exec", ns]
    route = ["route", "replace", subnet, "via", gw, "dev", "overlay.1", "onlink", "proto", "111"]
    drop_vxlan = ["-p", "udp", "--dport", "8472", "-j", "DROP"]
    neigh_ok = ["neigh", "replace", gw, "lladdr", mac, "dev", "overlay.1", "nud", "permanent"]
    return {
        "route": ([ip + ["route", "del", subnet]], [ip + route], "routes",
                  f"ip route replace {subnet} via {gw} dev overlay.1 onlink", True),
        "fdb": ([br + ["fdb", "del", mac, "dev", "overlay.1", "dst", pub, "self"]],
                [br + ["fdb", "replace", mac, "dev", "overlay.1", "dst", pub, "self", "permanent"]],
                "fdb", f"bridge fdb replace {mac} dev overlay.1 dst {pub} self permanent", True),
        "neigh": ([ip + ["neigh", "del", gw, "dev", "overlay.1"]], [ip + neigh_ok],
                  "neigh", f"ip neigh replace {gw} lladdr {mac} dev overlay.1 nud permanent", True),
        "neigh_wrong": ([ip + ["neigh", "replace", gw, "lladdr", "0e:0d:0a:00:00:98", "dev",
                               "overlay.1", "nud", "permanent"]], [ip + neigh_ok],
                        "neigh", f"ip neigh replace {gw} lladdr {mac} dev overlay.1 nud permanent",
                        True),
        "ip_forward": ([nsx + ["sysctl", "-qw", "net.ipv4.ip_forward=0"]],
                       [nsx + ["sysctl", "-qw", "net.ipv4.ip_forward=1"]],
                       "ip-forward", "sysctl -w net.ipv4.ip_forward=1", False),
        "firewall": ([nsx + ["iptables", "-A", "INPUT", *drop_vxlan]],
                     [nsx + ["iptables", "-D", "INPUT", *drop_vxlan]],
                     "firewall", "iptables -t filter -D INPUT -p udp -m udp --dport 8472 -j DROP",
                     True),
        "mtu": ([ip + ["link", "set", "overlay.1", "mtu", "1400"]],
                [ip + ["link", "set", "overlay.1", "mtu", "1450"]],
                "mtu", "ip link set overlay.1 mtu 1450", False),
        "stale": ([br + ["fdb", "append", "0e:0d:0a:00:00:99", "dev", "overlay.1", "dst",
                         "192.168.1.99", "self", "permanent"]],
                  [br + ["fdb", "del", "0e:0d:0a:00:00:99", "dev", "overlay.1", "dst",
                         "192.168.1.99", "self"]],
                  "fdb", "bridge fdb del 0e:0d:0a:00:00:99 dev overlay.1 dst 192.168.1.99 self",
                  False),
    }


@pytest.mark.parametrize("what", ["route", "fdb", "neigh", "neigh_wrong", "ip_forward",
                                  "firewall", "mtu", "stale"])
def test_one_breakage_on_a_lab_node(lab, n1, what):
    do, undo, name, fix, unreachable = breakages(lab)[what]
    with n1.frozen():
        try:
            for cmd in do:
                sh(*cmd)
            rc, report = n1.diagnose_frozen()
        finally:
            for cmd in undo:
                sh(*cmd)
    assert rc == 1
    assert failed(report) == sorted([name] + (["peer-vteps"] if unreachable else []))
    assert fix in check(report, name)["fix"]


def more_breakages(lab: Lab) -> dict[str, tuple[list[list[str]], list[list[str]], str, bool]]:
    """The other checks' breakages: name -> (break, undo, failing check, overlayd frozen)."""
    spec = lab.spec
    env = spec.node_file("node1", "subnet.env")
    plugin = os.path.join(spec.cni_bin_dir, "overlay")
    stray = os.path.join(spec.node_file("node1", "ipam"), "overlay", "10.244.250.9")
    etcdctl = ["ip", "netns", "exec", spec.underlay_ns, "etcdctl", "--endpoints",
               spec.etcd_endpoint]
    bogus = "/overlay/network/subnets/ovdg-not-a-subnet"
    addr = ["ip", "-n", spec.node_ns("node1"), "addr"]
    return {
        # a frozen overlayd answers no /readyz: that alone fails
        "daemon": ([], [], "daemon", True),
        "subnet_env": ([["mv", env, env + ".ovdg"]], [["mv", env + ".ovdg", env]],
                       "subnet-env", True),
        "cni_binary": ([["mv", plugin, plugin + ".ovdg"]], [["mv", plugin + ".ovdg", plugin]],
                       "cni-binary", False),
        "pod_ips": ([["sh", "-c", f"printf 'ovdg0stray\\r\\neth0' > {stray}"]], [["rm", stray]],
                    "pod-ips", False),
        "rejected": ([etcdctl + ["put", bogus, "{}"]], [etcdctl + ["del", bogus]],
                     "rejected-leases", False),
        "cidr_overlap": ([addr + ["add", "10.244.255.254/32", "dev", "eth0"]],
                         [addr + ["del", "10.244.255.254/32", "dev", "eth0"]],
                         "cidr-overlap", False),
    }


@pytest.mark.parametrize("what", ["daemon", "subnet_env", "cni_binary", "pod_ips", "rejected",
                                  "cidr_overlap"])
def test_each_other_check_catches_its_breakage(lab, n1, what):
    do, undo, name, freeze = more_breakages(lab)[what]
    with n1.frozen() if freeze else nullcontext():
        try:
            for cmd in do:
                sh(*cmd)
            rc, report = n1.diagnose_frozen() if what != "daemon" and freeze else n1.diagnose()
        finally:
            for cmd in undo:
                sh(*cmd)
    assert rc == 1 and failed(report) == [name], {c["name"]: c["found"]
                                                  for c in report["checks"]
                                                  if c["status"] == "fail"}


def test_a_pod_veth_down_fails_local_pods_alone(lab, n1):
    ports = sh("ip", "-n", n1.ns, "-o", "link", "show", "master", "cni0").stdout
    veth = ports.splitlines()[0].split(": ")[1].split("@")[0]
    pod_ip = next(p.ip for p in lab.state.pods.values() if p.node == "node1").split("/")[0]
    # overlayd leaves pods' links alone: no need to freeze it
    sh("ip", "-n", n1.ns, "link", "set", veth, "down")
    try:
        rc, report = n1.diagnose()
    finally:
        sh("ip", "-n", n1.ns, "link", "set", veth, "up")
    assert rc == 1 and failed(report) == ["local-pods"], report
    assert pod_ip in check(report, "local-pods")["found"]


def test_vxlan_dropped_on_the_peer_fails_peer_vteps_alone(lab, n1, n2):
    """The breakage is on node2 (its firewall drops VXLAN): node1's own checks all pass,
    only reaching node2's VTEP across the overlay fails."""
    drop = ["INPUT", "-p", "udp", "--dport", "8472", "-j", "DROP"]
    n2.run("iptables", "-A", *drop)
    try:
        rc, report = n1.diagnose()
    finally:
        n2.run("iptables", "-D", *drop)
    assert rc == 1 and failed(report) == ["peer-vteps"], report
    subnet, _, _ = peer(lab)
    probe = check(report, "peer-vteps")
    assert subnet in probe["found"] and "firewall (UDP 8472)" in probe["fix"]
    assert n1.diagnose()[0] == 0  # and it passes again once the rule is gone


def test_bridge_deleted_on_a_lab_node(lab, n1):
    ns = n1.ns
    ports = sh("ip", "-n", ns, "-o", "link", "show", "master", "cni0").stdout
    names = [line.split(": ")[1].split("@")[0] for line in ports.splitlines()]
    addrs = sh("ip", "-n", ns, "-o", "-4", "addr", "show", "dev", "cni0").stdout.split()
    gw = addrs[addrs.index("inet") + 1]
    with n1.frozen():
        try:
            sh("ip", "-n", ns, "link", "del", "cni0")
            rc, report = n1.diagnose_frozen()
        finally:
            if sh("ip", "-n", ns, "link", "show", "cni0", check=False).returncode != 0:
                sh("ip", "-n", ns, "link", "add", "cni0", "type", "bridge")
                sh("ip", "-n", ns, "addr", "add", gw, "dev", "cni0")
                sh("ip", "-n", ns, "link", "set", "cni0", "up")
            for port in names:
                sh("ip", "-n", ns, "link", "set", port, "master", "cni0")
    assert rc == 1 and failed(report) == ["bridge"]
    assert f"ip addr add {gw} dev cni0" in check(report, "bridge")["fix"]


def test_cni_config_removed_on_a_lab_node(lab, n1):
    conf_dir = lab.spec.cni_conf_dir("node1")
    names = os.listdir(conf_dir)
    moved = os.path.join(lab.spec.node_dir("node1"), "ovdg-moved")
    os.makedirs(moved)
    try:
        for n in names:
            os.rename(os.path.join(conf_dir, n), os.path.join(moved, n))
        # The runtime file still names subnet.env: no flag needed without the conflist.
        rc, report = n1.diagnose()
    finally:
        for n in names:
            os.rename(os.path.join(moved, n), os.path.join(conf_dir, n))
        os.rmdir(moved)
    assert rc == 1 and failed(report) == ["cni-config"]


def test_trace_between_pods_on_a_lab(lab, n1):
    pods = sorted(lab.state.pods.values(), key=lambda p: p.node)
    src = next(p for p in pods if p.node == "node1")
    dst = next(p for p in pods if p.node == "node2")
    p = n1.run(OVERLAYCTL, "-o", "json", "trace", src.ip.split("/")[0], dst.ip.split("/")[0],
               check=False)
    result = json.loads(p.stdout)
    assert p.returncode == 0 and result["ok"], result
    assert [h["status"] for h in result["hops"]] == ["ok"] * 8
    assert str(lab.spec.node_ip("node2")) in result["hops"][-1]["detail"]

