"""overlayctl diagnose/trace run inside a node namespace against hand-made node state.

Two nodes (``ovdg-n1``, ``ovdg-n2``) on an underlay bridge in ``ovdg-u``; each holds what
overlayd and the CNI plugin would have made (VXLAN device, neigh/FDB/route for the peer,
bridge cni0 with a pod) and a real etcd runs inside ``ovdg-u`` with the config and both
leases.  The tests break one thing at a time on node 1, run ``overlayctl diagnose`` as an
operator would (``ip netns exec ovdg-n1 overlayctl ...``), and restore it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from .support.etcd_server import EtcdServer

pytestmark = pytest.mark.integration

UNDERLAY = "ovdg-u"
OVERLAYCTL = os.path.join(os.path.dirname(sys.executable), "overlayctl")
PREFIX = "/overlay/network"


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(list(args), capture_output=True, text=True, timeout=30)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {p.stderr.strip()}")
    return p


def nsx(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return sh("ip", "netns", "exec", ns, *args, check=check)


# GET /health from inside a namespace (no curl on a fresh machine).
HEALTH = ("import sys, urllib.request\n"
          "try: print(urllib.request.urlopen(sys.argv[1] + '/health', timeout=0.5)"
          ".read().decode())\n"
          "except OSError as e: print(e)")


class NSEtcd(EtcdServer):
    """etcd inside the underlay namespace, on its bridge address (nodes reach it there)."""

    def __init__(self, ns: str, host: str, data_dir: str):
        os.makedirs(data_dir, exist_ok=True)
        super().__init__(name="ovdg", client_port=2379, peer_port=2380, host=host,
                         data_dir=data_dir)
        self.ns = ns

    def args(self) -> list[str]:
        return ["ip", "netns", "exec", self.ns] + super().args()

    def healthy(self) -> bool:
        p = sh("ip", "netns", "exec", self.ns, sys.executable, "-c", HEALTH, self.endpoint,
               check=False)
        return '"true"' in p.stdout

    def ctl(self, *args: str) -> str:
        p = nsx(self.ns, "etcdctl", "--endpoints", self.endpoint, *args)
        return p.stdout

    def start(self, wait: bool = True) -> NSEtcd:  # typed as this class: ctl() is used
        super().start(wait)
        return self


@dataclass
class Node:
    ns: str
    index: int
    dir: str

    @property
    def public_ip(self) -> str:
        return f"192.168.1.{10 + self.index}"

    @property
    def subnet(self) -> str:
        return f"10.244.{self.index}.0/24"

    @property
    def vtep_mac(self) -> str:
        return f"0e:0d:0a:00:00:{self.index:02x}"

    @property
    def pod_ns(self) -> str:
        return f"{self.ns}-pod"

    @property
    def pod_ip(self) -> str:
        return f"10.244.{self.index}.2"

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh("ip", "-n", self.ns, *args, check=check)


def make_underlay() -> None:
    sh("ip", "netns", "add", UNDERLAY)
    sh("ip", "-n", UNDERLAY, "link", "set", "lo", "up")
    sh("ip", "-n", UNDERLAY, "link", "add", "br0", "type", "bridge")
    sh("ip", "-n", UNDERLAY, "addr", "add", "192.168.1.1/24", "dev", "br0")
    sh("ip", "-n", UNDERLAY, "link", "set", "br0", "up")


def make_node(node: Node) -> None:
    ns = node.ns
    sh("ip", "netns", "add", ns)
    node.ip("link", "set", "lo", "up")
    # Created inside the underlay namespace, one end moved into the node: never on the host.
    sh("ip", "-n", UNDERLAY, "link", "add", f"u{node.index}", "type", "veth", "peer", "name",
       "eth0", "netns", ns)
    sh("ip", "-n", UNDERLAY, "link", "set", f"u{node.index}", "master", "br0", "up")
    node.ip("addr", "add", f"{node.public_ip}/24", "dev", "eth0")
    node.ip("link", "set", "eth0", "up")
    nsx(ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    make_vxlan(node)
    make_bridge(node)
    sh("ip", "netns", "add", node.pod_ns)
    node.ip("link", "add", "vethpod", "mtu", "1450", "type", "veth", "peer", "name", "eth0",
            "netns", node.pod_ns)
    node.ip("link", "set", "vethpod", "master", "cni0", "up")
    sh("ip", "-n", node.pod_ns, "addr", "add", f"{node.pod_ip}/24", "dev", "eth0")
    sh("ip", "-n", node.pod_ns, "link", "set", "eth0", "up")
    sh("ip", "-n", node.pod_ns, "route", "add", "default", "via", f"10.244.{node.index}.1")
    write_files(node)


def make_vxlan(node: Node) -> None:
    node.ip("link", "add", "overlay.1", "address", node.vtep_mac, "type", "vxlan", "id", "1",
            "dstport", "8472", "local", node.public_ip, "dev", "eth0", "nolearning")
    node.ip("addr", "add", f"10.244.{node.index}.0/32", "dev", "overlay.1")
    node.ip("link", "set", "overlay.1", "up")


def make_bridge(node: Node) -> None:
    node.ip("link", "add", "cni0", "type", "bridge")
    node.ip("addr", "add", f"10.244.{node.index}.1/24", "dev", "cni0")
    node.ip("link", "set", "cni0", "up")


def program_peer(node: Node, peer: Node) -> None:
    """What overlayd does per remote lease: neigh, FDB, then the route."""
    gw = f"10.244.{peer.index}.0"
    node.ip("neigh", "replace", gw, "lladdr", peer.vtep_mac, "dev", "overlay.1", "nud", "permanent")
    sh("bridge", "-n", node.ns, "fdb", "replace", peer.vtep_mac, "dev", "overlay.1", "dst",
       peer.public_ip, "self", "permanent")
    node.ip("route", "replace", peer.subnet, "via", gw, "dev", "overlay.1", "onlink",
            "proto", "111")


def conflist(node: Node) -> dict:
    return {"cniVersion": "1.1.0", "name": "overlay", "plugins": [
        {"type": "overlay", "bridge": "cni0", "subnetFile": os.path.join(node.dir, "subnet.env"),
         "dataDir": os.path.join(node.dir, "ipam"), "hairpinMode": True,
         "isDefaultGateway": True}]}


def write_files(node: Node) -> None:
    for d in ("net.d", "bin", "ipam/overlay"):
        os.makedirs(os.path.join(node.dir, d), exist_ok=True)
    with open(os.path.join(node.dir, "subnet.env"), "w") as f:
        f.write(f"OVERLAY_NETWORK=10.244.0.0/16\nOVERLAY_SUBNET=10.244.{node.index}.1/24\n"
                "OVERLAY_MTU=1450\nOVERLAY_IPMASQ=false\n")
    write_conflist(node)
    binary = os.path.join(node.dir, "bin", "overlay")
    with open(binary, "w") as f:
        f.write("#!/bin/sh\nexit 0\n")
    os.chmod(binary, 0o755)
    with open(os.path.join(node.dir, "ipam", "overlay", node.pod_ip), "w") as f:
        f.write("ovdg-container-1\r\neth0")


def write_conflist(node: Node) -> None:
    with open(os.path.join(node.dir, "net.d", "10-overlay.conflist"), "w") as f:
        json.dump(conflist(node), f)


def remove_namespaces(names: list[str]) -> None:
    for name in names:
        if os.path.exists(f"/var/run/netns/{name}"):
            sh("ip", "netns", "del", name, check=False)


@dataclass
class Cluster:
    etcd: NSEtcd
    n1: Node
    n2: Node

    def diagnose(self, *extra: str, node: Node | None = None, endpoint: str | None = None,
                 probe: bool = True) -> tuple[int, dict]:
        node = node or self.n1
        args = [OVERLAYCTL, "--etcd-endpoints", endpoint or self.etcd.endpoint, "-o", "json",
                "diagnose", "--cni-conf-dir", os.path.join(node.dir, "net.d"),
                "--cni-bin-dir", os.path.join(node.dir, "bin"),
                "--subnet-file", os.path.join(node.dir, "subnet.env"), *extra]
        if not probe:
            args.append("--no-probe")
        p = nsx(node.ns, *args, check=False)
        assert p.stdout, p.stderr
        return p.returncode, json.loads(p.stdout)

    def overlayctl(self, *args: str, node: Node | None = None) -> subprocess.CompletedProcess:
        return nsx((node or self.n1).ns, OVERLAYCTL, "--etcd-endpoints", self.etcd.endpoint,
                   *args, check=False)


@pytest.fixture(scope="module")
def cluster():
    base = tempfile.mkdtemp(prefix="ovdg-")
    nodes = [Node("ovdg-n1", 1, os.path.join(base, "n1")),
             Node("ovdg-n2", 2, os.path.join(base, "n2"))]
    names = [UNDERLAY] + [n for node in nodes for n in (node.ns, node.pod_ns)]
    remove_namespaces(names)  # leftovers of an interrupted run of this very module
    etcd = None
    try:
        make_underlay()
        for node in nodes:
            make_node(node)
        program_peer(nodes[0], nodes[1])
        program_peer(nodes[1], nodes[0])
        etcd = NSEtcd(UNDERLAY, "192.168.1.1", os.path.join(base, "etcd")).start()
        etcd.ctl("put", f"{PREFIX}/config", json.dumps(
            {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 1, "Port": 8472}}))
        for node in nodes:
            lease_id = etcd.ctl("lease", "grant", "600").split()[1]
            etcd.ctl("put", f"{PREFIX}/subnets/10.244.{node.index}.0-24", json.dumps(
                {"PublicIP": node.public_ip, "BackendType": "vxlan",
                 "BackendData": {"VNI": 1, "VtepMAC": node.vtep_mac}}), f"--lease={lease_id}")
        yield Cluster(etcd, nodes[0], nodes[1])
    finally:
        if etcd is not None:
            etcd.cleanup()
        remove_namespaces(names)
        shutil.rmtree(base, ignore_errors=True)


def failed(report: dict) -> list[str]:
    return sorted(c["name"] for c in report["checks"] if c["status"] == "fail")


def check(report: dict, name: str) -> dict:
    return next(c for c in report["checks"] if c["name"] == name)


def test_healthy_node_passes_every_check(cluster):
    quick_probe = ("--probe-count", "1", "--probe-timeout", "0.5")
    for node, extra in ((cluster.n1, ()), (cluster.n2, quick_probe)):
        rc, report = cluster.diagnose(*extra, node=node)
        bad = {c["name"]: c["found"] for c in report["checks"] if c["status"] != "pass"}
        assert bad == {"daemon": "no overlayd process found"}  # hand-made: no daemon here
        assert rc == 0
        assert report["node"]["public_ip"] == node.public_ip
        assert "answered 1422-byte DF pings" in check(report, "peer-vteps")["found"]


@contextmanager
def broken(undo: list[tuple[str, ...]]):
    try:
        yield
    finally:
        for cmd in undo:
            sh(*cmd)


N1 = ("ip", "-n", "ovdg-n1")


# (what breaks, commands to break, commands to restore, the check it fails, fix must contain,
#  whether the peer across the overlay becomes unreachable too)
BREAKAGES = [
    ("route", [N1 + ("route", "del", "10.244.2.0/24")],
     [N1 + ("route", "replace", "10.244.2.0/24", "via", "10.244.2.0", "dev", "overlay.1", "onlink",
            "proto", "111")],
     "routes", "ip route replace 10.244.2.0/24 via 10.244.2.0 dev overlay.1 onlink", True),
    ("fdb", [("bridge", "-n", "ovdg-n1", "fdb", "del", "0e:0d:0a:00:00:02", "dev", "overlay.1",
              "dst", "192.168.1.12", "self")],
     [("bridge", "-n", "ovdg-n1", "fdb", "replace", "0e:0d:0a:00:00:02", "dev", "overlay.1",
       "dst", "192.168.1.12", "self", "permanent")],
     "fdb", "bridge fdb replace 0e:0d:0a:00:00:02 dev overlay.1 dst 192.168.1.12 self permanent",
     True),
    ("neigh", [N1 + ("neigh", "del", "10.244.2.0", "dev", "overlay.1")],
     [N1 + ("neigh", "replace", "10.244.2.0", "lladdr", "0e:0d:0a:00:00:02", "dev", "overlay.1",
            "nud", "permanent")],
     "neigh", "ip neigh replace 10.244.2.0 lladdr 0e:0d:0a:00:00:02 dev overlay.1 nud permanent",
     True),
    ("ip_forward", [("ip", "netns", "exec", "ovdg-n1", "sysctl", "-qw", "net.ipv4.ip_forward=0")],
     [("ip", "netns", "exec", "ovdg-n1", "sysctl", "-qw", "net.ipv4.ip_forward=1")],
     "ip-forward", "sysctl -w net.ipv4.ip_forward=1", False),
    ("firewall", [("ip", "netns", "exec", "ovdg-n1", "iptables", "-A", "INPUT", "-p", "udp",
                   "--dport", "8472", "-j", "DROP")],
     [("ip", "netns", "exec", "ovdg-n1", "iptables", "-D", "INPUT", "-p", "udp", "--dport",
       "8472", "-j", "DROP")],
     "firewall", "iptables -t filter -D INPUT -p udp -m udp --dport 8472 -j DROP", True),
    ("mtu", [N1 + ("link", "set", "overlay.1", "mtu", "1400")],
     [N1 + ("link", "set", "overlay.1", "mtu", "1450")],
     "mtu", "ip link set overlay.1 mtu 1450", False),
    ("stale fdb", [("bridge", "-n", "ovdg-n1", "fdb", "append", "0e:0d:0a:00:00:09", "dev",
                    "overlay.1", "dst", "192.168.1.19", "self", "permanent")],
     [("bridge", "-n", "ovdg-n1", "fdb", "del", "0e:0d:0a:00:00:09", "dev", "overlay.1", "dst",
       "192.168.1.19", "self")],
     "fdb", "bridge fdb del 0e:0d:0a:00:00:09 dev overlay.1 dst 192.168.1.19 self", False),
]


@pytest.mark.parametrize("what,do,undo,name,fix,unreachable", BREAKAGES,
                         ids=[b[0] for b in BREAKAGES])
def test_one_breakage_fails_exactly_its_check(cluster, what, do, undo, name, fix, unreachable):
    with broken(undo):
        for cmd in do:
            sh(*cmd)
        rc, report = cluster.diagnose()
    assert rc == 1
    # A data-path breakage makes the peer unreachable: the active probe must say so too.
    assert failed(report) == sorted([name] + (["peer-vteps"] if unreachable else []))
    assert fix in check(report, name)["fix"]
    rc, report = cluster.diagnose(probe=False)
    assert rc == 0, failed(report)


def test_bridge_deleted(cluster):
    n1 = cluster.n1
    try:
        n1.ip("link", "del", "cni0")
        rc, report = cluster.diagnose()
        assert rc == 1 and failed(report) == ["bridge"]
        assert "no link cni0" in check(report, "bridge")["found"]
        assert "ip addr add 10.244.1.1/24 dev cni0" in check(report, "bridge")["fix"]
    finally:
        if n1.ip("link", "show", "cni0", check=False).returncode != 0:
            make_bridge(n1)
        n1.ip("link", "set", "vethpod", "master", "cni0")
    assert cluster.diagnose(probe=False)[0] == 0


def test_cni_config_removed(cluster):
    path = os.path.join(cluster.n1.dir, "net.d", "10-overlay.conflist")
    os.unlink(path)
    try:
        rc, report = cluster.diagnose(probe=False)
        assert rc == 1 and failed(report) == ["cni-config"]
        assert check(report, "cni-config")["fix"].startswith("overlayctl install-cni --conf-dir")
    finally:
        write_conflist(cluster.n1)


def test_nft_drop_rule_named_with_handle(cluster):
    n1 = cluster.n1
    nsx(n1.ns, "nft", "add", "table", "inet", "ovdg_fw")
    try:
        nsx(n1.ns, "nft", "add", "chain", "inet", "ovdg_fw", "in",
            "{ type filter hook input priority 0 ; policy accept ; }")
        nsx(n1.ns, "nft", "add", "rule", "inet", "ovdg_fw", "in", "udp", "dport", "8472", "drop")
        rc, report = cluster.diagnose(probe=False)
        assert failed(report) == ["firewall"]
        fix = check(report, "firewall")["fix"]
        assert fix.startswith("nft delete rule inet ovdg_fw in handle ")
    finally:
        nsx(n1.ns, "nft", "delete", "table", "inet", "ovdg_fw")


def test_etcd_unreachable_checks_local_and_names_skipped(cluster):
    rc, report = cluster.diagnose(endpoint="http://192.168.1.1:1")
    assert rc == 1 and failed(report) == ["etcd"]
    assert {"lease", "routes", "fdb", "neigh", "peer-vteps"} <= set(report["skipped"])
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    for local in ("bridge", "ip-forward", "firewall", "mtu", "cni-config", "cni-binary",
                  "pod-ips", "cidr-overlap"):
        assert statuses[local] == "pass", check(report, local)


def test_table_output_and_service_cidr_overlap(cluster):
    p = nsx(cluster.n1.ns, OVERLAYCTL, "--etcd-endpoints", cluster.etcd.endpoint, "diagnose",
            "--cni-conf-dir", os.path.join(cluster.n1.dir, "net.d"),
            "--cni-bin-dir", os.path.join(cluster.n1.dir, "bin"),
            "--subnet-file", os.path.join(cluster.n1.dir, "subnet.env"),
            "--service-cidr", "10.240.0.0/12", "--no-probe", check=False)
    assert p.returncode == 1
    assert "FAIL cidr-overlap" in p.stdout and "service CIDR 10.240.0.0/12" in p.stdout
    p = cluster.overlayctl("diagnose", "--service-cidr", "nonsense")
    assert p.returncode == 2 and "not an IPv4 CIDR" in p.stderr and "Traceback" not in p.stderr


def test_trace_healthy_and_with_a_missing_fdb_entry(cluster):
    p = cluster.overlayctl("-o", "json", "trace", "10.244.1.2", "10.244.2.2")
    result = json.loads(p.stdout)
    assert p.returncode == 0, result
    assert [h["name"] for h in result["hops"]] == [
        "source-node", "source-bridge", "route", "vxlan-device", "remote-vtep-mac",
        "remote-public-ip", "underlay", "destination-node"]
    assert "0e:0d:0a:00:00:02 -> 192.168.1.12" in result["hops"][5]["detail"]
    with broken([("bridge", "-n", "ovdg-n1", "fdb", "replace", "0e:0d:0a:00:00:02", "dev",
                  "overlay.1", "dst", "192.168.1.12", "self", "permanent")]):
        sh("bridge", "-n", "ovdg-n1", "fdb", "del", "0e:0d:0a:00:00:02", "dev", "overlay.1",
           "dst", "192.168.1.12", "self")
        p = cluster.overlayctl("trace", "10.244.1.2", "10.244.2.2")
    assert p.returncode == 1
    assert "remote-public-ip   missing" in p.stdout
    p = cluster.overlayctl("trace", "10.244.1.2", "not-an-ip")  # a pod name: none such
    assert p.returncode == 1 and p.stderr.strip().splitlines() == [
        'error: DST: pods "not-an-ip" not found in namespace "default" (see '
        "`overlayctl pods -A`)"]
    p = cluster.overlayctl("trace", "10.244.1.2", "Not_An_IP")
    assert p.returncode == 1 and "give a pod IP, NAMESPACE/NAME or NAME" in p.stderr
    assert "Traceback" not in p.stderr


def test_path_mtu_problem_found_by_the_probe(cluster):
    """The underlay port of node 2 takes only 1400-byte frames: big DF pings die, small pass."""
    with broken([("ip", "-n", UNDERLAY, "link", "set", "u2", "mtu", "1500")]):
        sh("ip", "-n", UNDERLAY, "link", "set", "u2", "mtu", "1400")
        rc, report = cluster.diagnose()
    assert rc == 1 and failed(report) == ["peer-vteps"]
    probe = check(report, "peer-vteps")
    assert "path MTU below 1450" in probe["found"] and "MTU" in probe["fix"]


PROBE_SCRIPT = """
import json, sys, time
from ipaddress import IPv4Address
from overlay.diagnose.probe import echo_many
targets = [IPv4Address(a) for a in sys.argv[1:]]
t0 = time.monotonic()
res = echo_many(targets, 1422, 2, 1.0)
print(json.dumps({"seconds": time.monotonic() - t0,
                  "res": {str(k): [v.sent, v.received, v.error] for k, v in res.items()}}))
"""


def test_echo_many_probes_many_peers_in_one_timeout(cluster):
    n1 = cluster.n1
    n1.ip("route", "add", "10.244.200.0/24", "via", "10.244.200.0", "dev", "overlay.1", "onlink")
    try:
        silent = [f"10.244.200.{i}" for i in range(1, 41)]  # routed into the overlay, nobody there
        p = nsx(n1.ns, sys.executable, "-c", PROBE_SCRIPT, "10.244.2.0", "10.244.2.1",
                "192.0.2.1", *silent)
    finally:
        n1.ip("route", "del", "10.244.200.0/24")
    out = json.loads(p.stdout)
    res = out["res"]
    assert res["10.244.2.0"][:2] == [2, 2] and res["10.244.2.1"][:2] == [2, 2]
    assert res["192.0.2.1"][1] == 0 and "unreachable" in res["192.0.2.1"][2].lower()
    assert all(res[a][1] == 0 for a in silent)
    assert out["seconds"] < 2.5  # one timeout for all 43, not one per peer


def test_kernel_dump_matches_iproute2(cluster):
    from overlay.netlink.kernel_state import dump_kernel_state

    ns = cluster.n1.ns
    k = dump_kernel_state(ns)

    def j(*args: str) -> list:
        return json.loads(sh(*args).stdout or "[]")

    # looked up by optional indexes (a link's master, a route's oif): None finds nothing
    name: dict[int | None, str] = {link.index: link.name for link in k.links}
    want_links = {(link["ifname"], link["mtu"], link.get("master"), "UP" in link["flags"])
                  for link in j("ip", "-n", ns, "-j", "link", "show")}
    assert {(link.name, link.mtu, name.get(link.master), link.up)
            for link in k.links} == want_links
    vx_link = k.link("overlay.1")
    assert vx_link is not None and vx_link.vxlan is not None, "the device and its VXLAN info"
    vx = vx_link.vxlan
    assert (vx.vni, vx.port, str(vx.local), name[vx.link], vx.learning) == (
        1, 8472, "192.168.1.11", "eth0", False)
    want_addrs = {(a["ifname"], f"{ai['local']}/{ai['prefixlen']}")
                  for a in j("ip", "-n", ns, "-j", "-4", "addr", "show") for ai in a["addr_info"]}
    assert {(name[a.index], str(a.interface)) for a in k.addrs} == want_addrs
    want_routes = {(r["dst"], r.get("gateway"), r["dev"], "onlink" in r.get("flags", []))
                   for r in j("ip", "-n", ns, "-j", "route", "show", "table", "main")}
    assert {(str(r.dst), r.gateway and str(r.gateway), name[r.oif], r.onlink)
            for r in k.routes} == want_routes
    want_neigh = {(n["dst"], n.get("lladdr"), n["dev"], "PERMANENT" in n.get("state", []))
                  for n in j("ip", "-n", ns, "-j", "-4", "neigh", "show", "nud", "all")}
    assert {(str(n.dst), n.mac, name[n.ifindex], n.permanent) for n in k.neigh} == want_neigh
    want_fdb = {(f["mac"], f["dst"]) for f in j("bridge", "-n", ns, "-j", "fdb", "show",
                                                  "dev", "overlay.1") if "dst" in f}
    assert {(f.mac, str(f.dst)) for f in k.fdb if f.dst is not None} == want_fdb


def test_find_daemons_only_in_this_namespace(cluster):
    fake = subprocess.Popen(["ip", "netns", "exec", cluster.n1.ns, "bash", "-c",
                             "exec -a overlayd sleep 30"])
    try:
        script = "from overlay.diagnose.gather import find_daemons; print(find_daemons())"
        for _ in range(50):  # until the exec happened
            if f"{fake.pid}" in nsx(cluster.n1.ns, sys.executable, "-c", script).stdout:
                break
            time.sleep(0.05)
        assert nsx(cluster.n1.ns, sys.executable, "-c", script).stdout.strip() == f"[{fake.pid}]"
        assert nsx(cluster.n2.ns, sys.executable, "-c", script).stdout.strip() == "[]"
    finally:
        fake.kill()
        fake.wait()


def test_trace_names_forwarding_off(cluster):
    with broken([("ip", "netns", "exec", "ovdg-n1", "sysctl", "-qw", "net.ipv4.ip_forward=1")]):
        nsx("ovdg-n1", "sysctl", "-qw", "net.ipv4.ip_forward=0")
        p = cluster.overlayctl("-o", "json", "trace", "10.244.1.2", "10.244.2.2")
    result = json.loads(p.stdout)
    hops = {h["name"]: h for h in result["hops"]}
    assert p.returncode == 1 and hops["forwarding"]["status"] == "wrong"
    assert hops["forwarding"]["fix"] == "sysctl -w net.ipv4.ip_forward=1"
    assert hops["route"]["status"] == "ok"  # the route itself is there


def test_trace_with_etcd_unreachable_marks_lease_hops_unknown(cluster):
    p = nsx(cluster.n1.ns, OVERLAYCTL, "--etcd-endpoints", "http://192.168.1.1:1", "-o", "json",
            "trace", "10.244.1.2", "10.244.2.2", check=False)
    result = json.loads(p.stdout)
    hops = {h["name"]: h["status"] for h in result["hops"]}
    assert hops["source-node"] == "unknown" and hops["destination-node"] == "unknown"
    assert hops["vxlan-device"] == "ok" and "etcd unreachable" in result["note"]
    assert p.returncode == 0  # nothing found wrong in what could be checked
