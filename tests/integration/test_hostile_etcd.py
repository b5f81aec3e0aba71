"""A rogue etcd writer against two real overlayd nodes (issue 9: everything in etcd is untrusted).

Two nodes (A, B) on an underlay bridge reach each other over VXLAN; then a rogue writer
puts every hostile kind of key and value the issue lists under ``<prefix>/subnets/``: keys
naming the underlay or half the address space, half of A's own subnet, aliases of B's key,
a copy of B's VTEP MAC, unusable public IPs and MACs, foreign VNIs and backends, and
values that are not leases at all.  Every one carries exactly one defect, so the
acceptance rule must reject each alone.  The module then checks, on the real kernels and
the real processes, that nothing of it reached the data plane, that the nodes kept
reaching each other and answering ``/readyz`` 200, that a valid lease written after the
garbage is still programmed within 1 s, that deleting the garbage (the aliases above all)
leaves B's real entries alone, and that a restarted overlayd becomes ready among it all.

One two-node set-up serves the whole module (start-up is the slow part); the tests run
in file order and the later ones rely on the earlier ones' writes.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

import pytest

from .support.ovd_topology import OVERLAYD, Node, Topology, nsx, wait_for
from .support.rogue_etcd import Op, run_ops

pytestmark = pytest.mark.integration

DEV = "overlay.1"
PREFIX = "/overlay/network/subnets/"
NETWORK = IPv4Network("10.244.0.0/16")
UNDERLAY = IPv4Network("192.168.1.0/24")
OVERLAYCTL = OVERLAYD.replace("overlayd", "overlayctl")
VALID_MAC = "0e:77:00:00:00:01"      # the fake third node put after the garbage
ROGUE_IP = "192.168.1.66"           # where a hijack would send B's traffic
BAD_DSTS = {"127.0.0.1", "224.0.0.1", "0.0.0.0", "255.255.255.255"}


def lease_value(public_ip, mac, vni=1, backend="vxlan") -> bytes:
    return json.dumps({"PublicIP": public_ip, "BackendType": backend,
                       "BackendData": {"VNI": vni, "VtepMAC": mac}}).encode()


@dataclass(frozen=True)
class Garbage:
    """One hostile key; ``mac`` is set when the value carries a VTEP MAC unique to it."""

    name: str
    key: bytes
    value: bytes
    mac: str | None = None

    def log_patterns(self) -> list[re.Pattern]:
        """What names this key in a log line: its subnet (as key or CIDR), its whole key when
        printable, its unique MAC.  Aliases of B's key are named by the last two only."""
        text = self.key.decode(errors="replace")
        out = []
        m = re.fullmatch(re.escape(PREFIX) + r"(\d+\.\d+\.\d+\.\d+)-(\d+)", text)
        if m:
            out.append(re.compile(re.escape(m.group(1)) + r"[-/]" + m.group(2) + r"(?!\d)"))
        elif text.isprintable():
            out.append(re.compile(re.escape(text) + r"(?![\w./])"))
        if self.mac:
            out.append(re.compile(re.escape(self.mac)))
        return out


@dataclass
class Lab:
    topo: Topology
    a: Node
    b: Node
    a_net: IPv4Network
    b_net: IPv4Network
    a_mac: str
    b_mac: str
    pod_a: str
    pod_b: str
    garbage: list[Garbage] = field(default_factory=list)
    valid_net: IPv4Network | None = None
    valid_latency: float | None = None   # seconds from put to route on A; None: never
    log_marks: dict[str, int] = field(default_factory=dict)
    pinger: subprocess.Popen | None = None
    ready_watch: ReadyWatch | None = None

    def key(self, net: IPv4Network) -> bytes:
        return f"{PREFIX}{net.network_address}-{net.prefixlen}".encode()

    def etcd(self, ops: list[Op]) -> list[int]:
        return run_ops(self.topo.underlay, self.topo.etcd.endpoint, ops)


class ReadyWatch:
    """Polls ``/readyz`` of the nodes in a thread and records every answer that was not 200."""

    def __init__(self, nodes: list[Node]):
        self.nodes = nodes
        self.failures: list[str] = []
        self.paused: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="readyz-watch")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            for n in self.nodes:
                if n.ns in self.paused:
                    continue
                status, body = n.http("/readyz")
                if status != 200 and n.ns not in self.paused:
                    self.failures.append(f"{time.strftime('%H:%M:%S')} {n.ns}: {status} "
                                         f"{body.strip()[:200]}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# ---- what the kernel holds ----------------------------------------------------------

def routes(node: Node) -> list[dict]:
    return node.ip_json("route", "show", "table", "main")


def vxlan_routes(node: Node) -> dict[str, dict]:
    return {r["dst"]: r for r in routes(node) if r.get("dev") == DEV}


def fdb(node: Node) -> list[dict]:
    out = nsx(node.ns, "bridge", "-j", "fdb", "show", "dev", DEV).stdout
    return json.loads(out) if out.strip() else []


def neighs(node: Node) -> list[dict]:
    return node.ip_json("neigh", "show", "dev", DEV)


def net_of(dst: str) -> IPv4Network:
    return IPv4Network(dst if "/" in dst else f"{dst}/32", strict=False)


def has_peer(node: Node, net: IPv4Network, mac: str, public: str) -> bool:
    gw = str(net.network_address)
    route = vxlan_routes(node).get(str(net))
    return (route is not None and route.get("gateway") == gw
            and any(n["dst"] == gw and n.get("lladdr") == mac for n in neighs(node))
            and any(f["mac"] == mac and f.get("dst") == public for f in fdb(node)))


def ping(ns: str, dst: str, count: int = 3) -> tuple[int, int]:
    r = nsx(ns, "ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "1", "-w", "8", dst,
            check=False, timeout=20)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", r.stdout)
    assert m, f"ping {dst} from {ns} printed no summary: {r.stdout}{r.stderr}"
    return int(m.group(1)), int(m.group(2))


def vtep_mac(node: Node) -> str:
    return node.ip_json("link", "show", DEV)[0]["address"]


# ---- the garbage --------------------------------------------------------------------

def key_net(key: bytes) -> IPv4Network:
    """The subnet a well-formed key names (``.../10.244.5.0-24`` -> 10.244.5.0/24)."""
    return IPv4Network(key.decode().rsplit("/", 1)[1].replace("-", "/"))


def free_subnets(lab: Lab):
    """/24s inside Network far from the ones nodes pick (the lowest free ones)."""
    for third in range(100, 250):
        net = IPv4Network(f"10.244.{third}.0/24")
        if net not in (lab.a_net, lab.b_net):
            yield net


def hostile_kinds(lab: Lab) -> list[Garbage]:
    """Every hostile kind of issue 9's "Why", one defect each, in free subnets."""
    free = free_subnets(lab)
    out: list[Garbage] = []
    macs = (f"0e:66:00:00:00:{i:02x}" for i in range(1, 250))

    def put(name: str, key: bytes, public_ip, **kw) -> None:
        mac = next(macs)
        out.append(Garbage(name, key, lease_value(public_ip, mac, **kw), mac))

    def in_free(name: str, value: bytes, mac: str | None = None) -> None:
        out.append(Garbage(name, lab.key(next(free)), value, mac))

    b_key = lab.key(lab.b_net)
    b_seg = b_key.decode().rsplit("/", 1)[1]            # "10.244.N.0-24"
    b_third = lab.b_net.network_address.packed[2]
    put("key naming the underlay network", lab.key(UNDERLAY), "192.168.1.250")
    put("key 128.0.0.0-1", f"{PREFIX}128.0.0.0-1".encode(), "192.168.1.251")
    for half in lab.a_net.subnets(1):
        put(f"half of node A's own subnet ({half})", lab.key(half), "192.168.1.252")
    put("a /25 inside Network", lab.key(IPv4Network("10.244.99.128/25")), "192.168.1.253")
    aliases = {
        "B's key + newline": b_key + b"\n",
        "B's key after an extra segment": f"{PREFIX}x/{b_seg}".encode(),
        "B's key with an extra segment": b_key + b"/x",
        "B's key with leading zeros": f"{PREFIX}10.244.{b_third:03d}.000-24".encode(),
        "B's key with a leading space": f"{PREFIX} {b_seg}".encode(),
        "B's key with a trailing tab": b_key + b"\t",
        "B's key with length 024": f"{PREFIX}{lab.b_net.network_address}-024".encode(),
        "B's key + a non-UTF-8 byte": b_key + b"\xff",
    }
    for name, key in aliases.items():
        put(f"alias: {name}", key, ROGUE_IP)
    in_free("a second lease with B's VTEP MAC", lease_value("192.168.1.77", lab.b_mac))
    for ip in ["127.0.0.1", "224.0.0.1", "0.0.0.0", "255.255.255.255", "10.244.5.5", lab.a.ip]:
        put(f"public IP {ip}", lab.key(next(free)), ip)
    for ip, bad in [("192.168.1.80", "00:00:00:00:00:00"), ("192.168.1.78", "ff:ff:ff:ff:ff:ff"),
                    ("192.168.1.79", "01:00:5e:00:00:01")]:
        in_free(f"VTEP MAC {bad}", lease_value(ip, bad), bad)
    put("another VNI", lab.key(next(free)), "192.168.1.81", vni=2)
    put("BackendType host-gw", lab.key(next(free)), "192.168.1.82", backend="host-gw")
    put("BackendType nonsense", lab.key(next(free)), "192.168.1.83", backend="nonsense")
    for name, value in malformed_values(macs).items():
        in_free(f"malformed value: {name}", value)
    return out


def malformed_values(macs) -> dict[str, bytes]:
    return {
        "VNI 1e400": ('{"PublicIP": "192.168.1.84", "BackendType": "vxlan", '
                      '"BackendData": {"VNI": 1e400, "VtepMAC": "' + next(macs) + '"}}').encode(),
        "100000 nested [": b"[" * 100_000,
        "20000 nested [ (under any size bound)": b"[" * 20_000,
        "10000 nested { in BackendData": (b'{"PublicIP": "192.168.1.85", "BackendData": '
                                          + b'{"a":' * 10_000 + b"1" + b"}" * 10_001),
        "non-UTF-8 bytes": b'{"PublicIP": "192.168.1.86", "x": "\xff\xfe\xc3"}',
        "1 MiB value": lease_value("192.168.1.87", next(macs))[:-1]
        + b', "pad": "' + b"x" * (1 << 20) + b'"}',
        "null": b"null", "[]": b"[]", "a number": b"42", "a string": b'"lease"',
        "empty value": b"",
        "PublicIP a number": lease_value(5, next(macs)),
        "PublicIP a list": lease_value(["192.168.1.88"], next(macs)),
        "PublicIP not an address": lease_value("192.168.1.300", next(macs)),
        "BackendData a string": json.dumps({"PublicIP": "192.168.1.89", "BackendType": "vxlan",
                                            "BackendData": "x"}).encode(),
        "VNI a string": lease_value("192.168.1.90", next(macs), vni="1"),
        "VNI negative": lease_value("192.168.1.91", next(macs), vni=-1),
        "VNI 2**64": lease_value("192.168.1.92", next(macs), vni=2 ** 64),
        "VtepMAC a number": lease_value("192.168.1.93", 7),
        "VtepMAC not a MAC": lease_value("192.168.1.94", "zz:zz:zz:zz:zz:zz"),
    }


# ---- the module's set-up ------------------------------------------------------------

def start_pinger(lab: Lab) -> subprocess.Popen:
    """Pod A -> pod B every 50 ms for at most 60 s; SIGINT prints the summary."""
    return subprocess.Popen(["ip", "netns", "exec", lab.a.pod_ns, "ping", "-n", "-q",
                             "-i", "0.05", "-W", "1", "-w", "60", lab.pod_b],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def put_valid_and_time(lab: Lab) -> None:
    """The fake third node written right after the garbage: time until A routes it."""
    lab.valid_net = next(n for n in free_subnets(lab)
                         if lab.key(n) not in {g.key for g in lab.garbage})
    lab.etcd([Op("put", lab.key(lab.valid_net), lease_value("192.168.1.99", VALID_MAC))])
    t0 = time.monotonic()
    while time.monotonic() - t0 < 5:
        if str(lab.valid_net) in vxlan_routes(lab.a):
            lab.valid_latency = time.monotonic() - t0
            return
        time.sleep(0.02)


@pytest.fixture(scope="module")
def lab():
    topo = Topology(2).setup()
    state: Lab | None = None
    try:
        a, b = topo.nodes
        for n in (a, b):
            n.start()
        for n in (a, b):
            n.wait_ready()
        state = Lab(topo, a, b, a.subnet().network, b.subnet().network, vtep_mac(a),
                    vtep_mac(b), a.add_pod(), b.add_pod())
        wait_for(lambda: has_peer(a, state.b_net, state.b_mac, b.ip)
                 and has_peer(b, state.a_net, state.a_mac, a.ip), 5, what="A and B programmed")
        assert ping(a.pod_ns, state.pod_b) == (3, 3), "no pod-to-pod traffic before the garbage"
        state.ready_watch = ReadyWatch([a, b])
        state.pinger = start_pinger(state)
        state.garbage = hostile_kinds(state)
        state.log_marks = {n.ns: len(n.log()) for n in (a, b)}
        state.etcd([Op("put", g.key, g.value) for g in state.garbage])
        put_valid_and_time(state)
        settle(state)
        yield state
    finally:
        if state is not None:
            if state.ready_watch is not None:
                state.ready_watch.stop()
            if state.pinger is not None and state.pinger.poll() is None:
                state.pinger.kill()
                state.pinger.wait()
        topo.cleanup()   # etcd with every rogue key goes with the topology's namespaces


def settle(lab: Lab, seconds: float = 2.5) -> None:
    """Let at least one reconcile (interval 2 s) run over the garbage: what a repeated retry
    or a late reconcile does shows only over time, so this wait is deliberate."""
    time.sleep(seconds)


# ---- the checks, in order -----------------------------------------------------------

def test_valid_lease_after_the_garbage_programmed_within_1s(lab):
    assert lab.valid_latency is not None, (
        f"a valid lease ({lab.valid_net}) put after the garbage never reached node A's kernel "
        f"within 5 s: the lease watch died or stalled on a hostile value.\nnode A log tail:\n"
        + lab.a.log()[-2500:])
    assert lab.valid_latency < 1.0, (
        f"valid lease programmed on A after {lab.valid_latency:.2f} s (bound 1 s)")
    wait_for(lambda: has_peer(lab.b, lab.valid_net, VALID_MAC, "192.168.1.99"), 1,
             what=f"the valid lease {lab.valid_net} fully programmed on node B")


def underlay_routes(node: Node) -> list[tuple]:
    return [(r.get("protocol"), r.get("dev")) for r in routes(node) if r["dst"] == str(UNDERLAY)]


@pytest.mark.parametrize("which", ["a", "b"])
def test_underlay_connected_route_stays_the_kernels(lab, which):
    node = getattr(lab, which)
    assert underlay_routes(node) == [("kernel", "eth0")], (
        f"{node.ns}: the connected underlay route {UNDERLAY} must stay 'proto kernel dev eth0' "
        f"(a lease key naming the underlay must not replace it): "
        f"{[r for r in routes(node) if r['dst'] == str(UNDERLAY)]}")


@pytest.mark.parametrize("which", ["a", "b"])
def test_no_vxlan_route_outside_network(lab, which):
    node = getattr(lab, which)
    bad = [dst for dst in vxlan_routes(node) if not net_of(dst).subnet_of(NETWORK)]
    assert not bad, f"{node.ns}: routes via {DEV} outside {NETWORK}: {bad}"


@pytest.mark.parametrize("which", ["a", "b"])
def test_no_vxlan_route_into_own_subnet(lab, which):
    node = getattr(lab, which)
    own = lab.a_net if which == "a" else lab.b_net
    bad = [dst for dst in vxlan_routes(node) if net_of(dst).overlaps(own)]
    assert not bad, f"{node.ns}: routes via {DEV} into its own subnet {own}: {bad}"


@pytest.mark.parametrize("which", ["a", "b"])
def test_only_the_valid_leases_are_routed(lab, which):
    node = getattr(lab, which)
    peer_net = lab.b_net if which == "a" else lab.a_net
    expected = {str(peer_net), str(lab.valid_net)}
    if which == "b":
        # A lease naming node A's public IP is hostile to A (its own address) but, seen from
        # B, it is a second subnet of A's (harmless: A's device drops frames to a MAC not its
        # own). Rejecting "a public IP with two VTEP MACs" would cut off a node that lost
        # its state and leased anew while its old lease lives, so B programs it.
        twin = next(g for g in lab.garbage if g.name == f"public IP {lab.a.ip}")
        expected.add(str(key_net(twin.key)))
    assert set(vxlan_routes(node)) == expected, (
        f"{node.ns}: every hostile lease must be rejected; routes via {DEV}: "
        f"{sorted(vxlan_routes(node))}, expected only {sorted(expected)}")


def test_peer_fdb_entry_still_points_to_the_peer(lab):
    entries = [f for f in fdb(lab.a) if f["mac"] == lab.b_mac]
    assert [f.get("dst") for f in entries] == [lab.b.ip], (
        f"A's FDB for B's VTEP MAC {lab.b_mac} must be exactly -> {lab.b.ip} (a second lease "
        f"with B's MAC or an alias of B's key must not re-point it): {entries}")


def test_peer_neigh_entry_still_points_to_the_peer_mac(lab):
    gw = str(lab.b_net.network_address)
    assert [n.get("lladdr") for n in neighs(lab.a) if n["dst"] == gw] == [lab.b_mac], (
        f"A's neigh for B's VTEP {gw} must stay -> {lab.b_mac} (an alias of B's key must not "
        f"re-point it): {[n for n in neighs(lab.a) if n['dst'] == gw]}")


def is_group_mac(mac: str) -> bool:
    return int(mac.split(":")[0], 16) & 1 == 1 or mac == "00:00:00:00:00:00"


@pytest.mark.parametrize("which", ["a", "b"])
def test_no_fdb_entry_for_unusable_public_ips(lab, which):
    node = getattr(lab, which)
    own_ip = lab.a.ip if which == "a" else lab.b.ip
    bad = [f for f in fdb(node) if f.get("dst") in BAD_DSTS | {own_ip}
           or (f.get("dst") and IPv4Address(f["dst"]) in NETWORK)]
    assert not bad, (f"{node.ns}: FDB entries for loopback/multicast/unspecified/broadcast, "
                     f"in-Network or own public IPs: {bad}")


@pytest.mark.parametrize("which", ["a", "b"])
def test_no_fdb_or_neigh_entry_with_zero_broadcast_or_multicast_mac(lab, which):
    node = getattr(lab, which)
    bad_fdb = [f for f in fdb(node) if "dst" in f and is_group_mac(f["mac"])]
    bad_neigh = [n for n in neighs(node) if is_group_mac(n.get("lladdr", "00:00:00:00:00:00"))]
    assert not bad_fdb and not bad_neigh, (
        f"{node.ns}: entries with a zero/broadcast/multicast VTEP MAC: fdb {bad_fdb}, "
        f"neigh {bad_neigh}")


@pytest.mark.parametrize("src, dst", [("pod A", "pod B"), ("node A", "B's VTEP"),
                                      ("pod B", "pod A")])
def test_nodes_still_reach_each_other(lab, src, dst):
    where = {"pod A": lab.a.pod_ns, "node A": lab.a.ns, "pod B": lab.b.pod_ns}[src]
    addr = {"pod B": lab.pod_b, "pod A": lab.pod_a,
            "B's VTEP": str(lab.b_net.network_address)}[dst]
    assert ping(where, addr) == (3, 3), f"{src} cannot reach {dst} ({addr}) over VXLAN"


def test_readyz_200_on_both_throughout(lab):
    for n in (lab.a, lab.b):
        assert n.http("/readyz")[0] == 200, f"{n.ns}: /readyz {n.http('/readyz')}"
    assert not lab.ready_watch.failures, (
        "/readyz was not 200 while the garbage was present:\n"
        + "\n".join(lab.ready_watch.failures[:20]))


@pytest.mark.parametrize("which", ["a", "b"])
def test_log_has_no_traceback(lab, which):
    node = getattr(lab, which)
    text = node.log()[lab.log_marks[node.ns]:]
    assert "Traceback" not in text, (
        f"{node.ns}: traceback in overlayd's log after the garbage:\n"
        + text[text.find("Traceback") - 300:][:3000])


@pytest.mark.parametrize("which", ["a", "b"])
def test_log_does_not_repeat_rejections(lab, which):
    node = getattr(lab, which)
    mark = len(node.log())
    settle(lab, 2.5)  # one more reconcile run with no change in etcd
    later = [line for line in node.log()[mark:].splitlines()
             if " WARNING " in line or " ERROR " in line]
    assert len(later) <= 2, (
        f"{node.ns}: {len(later)} warnings/errors in 2.5 s with no change in etcd (a bad key "
        f"is logged once per revision, not per retry or reconcile):\n" + "\n".join(later[:12]))


@pytest.mark.parametrize("which", ["a", "b"])
def test_log_names_each_bad_key_at_most_twice(lab, which):
    node = getattr(lab, which)
    lines = node.log()[lab.log_marks[node.ns]:].splitlines()
    noisy = {}
    for g in lab.garbage:
        patterns = g.log_patterns()
        count = sum(1 for line in lines if any(p.search(line) for p in patterns))
        if count > 2:
            noisy[g.name] = count
    assert not noisy, (f"{node.ns}: bad keys named in more than two log lines "
                       f"(kind: lines): {noisy}")


@pytest.mark.parametrize("args", [["leases", "list"], ["-o", "json", "leases", "list"],
                                  ["config", "get"], ["-o", "json", "config", "get"]],
                         ids=["leases-list", "leases-list-json", "config-get", "config-get-json"])
def test_overlayctl_works_with_the_garbage_present(lab, args):
    # run beside etcd, not on a node: what is checked is the CLI's decoding, not a node's routes
    r = nsx(lab.topo.underlay, OVERLAYCTL, "--etcd-endpoints", lab.topo.etcd.endpoint, *args,
            check=False, timeout=30)
    cmd = "overlayctl " + " ".join(args)
    out = r.stderr + r.stdout
    assert "Traceback" not in out, f"{cmd}: traceback\n{out[out.find('Traceback'):][:3000]}"
    assert r.returncode == 0, (f"{cmd} exited {r.returncode} with the garbage present:\n"
                               f"{r.stderr[-2000:]}")
    if "json" in args:
        json.loads(r.stdout)
    if args[-2:] == ["leases", "list"]:
        for net in (lab.a_net, lab.b_net, lab.valid_net):
            assert str(net) in r.stdout, f"{cmd} does not list the real lease {net}"


def count_subnet_keys(lab: Lab) -> int:
    out = lab.topo.etcdctl("get", "--prefix", PREFIX, "--keys-only", "-w", "json").stdout
    return len(json.loads(out).get("kvs", []))


def test_restarted_node_becomes_ready_with_the_garbage_present(lab):
    a = lab.a
    keys_before = count_subnet_keys(lab)
    assert keys_before >= len(lab.garbage) + 3, "the garbage is not all in etcd"
    lab.ready_watch.paused.add(a.ns)
    mark = len(a.log())
    assert a.stop(signal.SIGTERM) == 0, f"overlayd A did not exit 0 on SIGTERM:\n{a.log()[mark:]}"
    a.start()
    try:
        a.wait_ready(timeout=15)
    except AssertionError as e:
        text = a.log()[mark:]
        raise AssertionError(f"restarted node A not ready within 15 s with the garbage "
                             f"present: {str(e)[:300]}\nlog since restart:\n{text[-3000:]}"
                             ) from None
    lab.ready_watch.paused.discard(a.ns)
    text = a.log()[mark:]
    assert "Traceback" not in text, f"traceback after restart:\n{text[-3000:]}"
    assert a.subnet().network == lab.a_net, (
        f"A must take its own lease {lab.a_net} back after a restart (not a rogue lease naming "
        f"its public IP): subnet.env says {a.subnet()}")
    wait_for(lambda: has_peer(a, lab.b_net, lab.b_mac, lab.b.ip), 3,
             what="B's entries on A after A's restart")
    assert set(vxlan_routes(a)) == {str(lab.b_net), str(lab.valid_net)}, (
        f"after the restart A routes hostile leases: {sorted(vxlan_routes(a))}")
    assert count_subnet_keys(lab) == keys_before, "the restart changed the keys in etcd"


def test_deleting_the_garbage_leaves_real_entries(lab):
    doomed = [g for g in lab.garbage
              if g.name.startswith(("alias", "key ", "half", "a /25", "a second lease"))]
    lab.etcd([Op("del", g.key) for g in doomed])
    # a sentinel after the deletes: once it is routed, A has seen every delete event
    sentinel = next(n for n in free_subnets(lab)
                    if lab.key(n) not in {g.key for g in lab.garbage} and n != lab.valid_net)
    lab.etcd([Op("put", lab.key(sentinel), lease_value("192.168.1.98", "0e:77:00:00:00:02"))])
    wait_for(lambda: str(sentinel) in vxlan_routes(lab.a), 3,
             what=f"sentinel lease {sentinel} routed on A after the deletes")
    lab.etcd([Op("del", lab.key(sentinel))])
    wait_for(lambda: str(sentinel) not in vxlan_routes(lab.a), 3,
             what=f"sentinel lease {sentinel} removed on A")
    settle(lab, 2.5)  # and a reconcile over what is left
    assert has_peer(lab.a, lab.b_net, lab.b_mac, lab.b.ip), (
        f"deleting aliases of B's key removed or changed B's real entries on A: routes "
        f"{sorted(vxlan_routes(lab.a))}, neighs {neighs(lab.a)}, fdb {fdb(lab.a)}")
    for n in (lab.a, lab.b):
        assert underlay_routes(n) == [("kernel", "eth0")], (
            f"{n.ns}: after deleting the underlay key the connected route is "
            f"{underlay_routes(n)}, not the kernel's")
    assert ping(lab.a.pod_ns, lab.pod_b) == (3, 3), "pod A cannot reach pod B after the deletes"


def test_pods_reached_each_other_throughout(lab):
    lab.pinger.send_signal(signal.SIGINT)
    out, _ = lab.pinger.communicate(timeout=10)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m, f"pinger printed no summary: {out}"
    sent, received = int(m.group(1)), int(m.group(2))
    # the SIGINT can come between a request and its reply: one packet in flight is not a loss
    assert sent > 50 and received >= sent - 1, (
        f"pod A -> pod B (every 50 ms) lost {sent - received} of {sent} packets while the "
        f"garbage was put, A restarted and the garbage partly deleted")
    assert not lab.ready_watch.failures, (
        "/readyz was not 200 at some point:\n" + "\n".join(lab.ready_watch.failures[:20]))
