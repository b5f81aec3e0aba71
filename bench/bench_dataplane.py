#!/usr/bin/env python3
"""Data-plane benchmark (issue 15): the project's overlay against a hand-built Flannel one.

In one run, on two underlays of the same shape (veth into a bridge in its own namespace):

* A, the project's lab (``overlay-lab`` with prefix ``ovlb``: etcd, overlayd per node,
  pods attached by the CNI plugin), and
* B, the anchor: ``bench/lab-by-hand.sh`` (prefix ``ovlbh``), Flannel's VXLAN data plane
  built with iproute2 alone (``flannel.1``, ``cni0``, veth pods, permanent neigh/FDB/routes).

Each lab's figure is relative to its own underlay: pod-to-pod across nodes over
node-to-node, for bulk TCP (one stream), parallel TCP (``--streams``), TCP
request/response latency (sockperf ping-pong; node latency / pod latency) and the rate of
64-byte UDP packets received.  The labs are measured in interleaved blocks, ABBA then BAAB,
so a drift in the machine's load hits both alike; a block's figure is A's geometric mean
over B's.  The result per metric is the median over blocks with a 90 % bootstrap interval;
control blocks (B against itself, B B' B' B) show how far that statistic strays when
nothing differs.  Met when bulk TCP's median >= 1.0 and its interval's low end >= 0.98.
The run stops by itself: no block starts that would end past ``--budget`` seconds.

``--policies N`` compares the project's lab with N NetworkPolicies in force against a
second project lab (prefix ``ovlbq``) with none, instead of the anchor (issue 13's target:
pod-to-pod TCP with 100 policies >= 0.95 x with none). The policies select the measured
pods (namespace ``default``, every pod) and one of them allows the benchmark's flows; the
others mix namespace and pod selectors, ipBlocks and ports. "overlay/anchor" is then
"with N policies / with none". Such a run measures bulk TCP alone (``--metrics``: the
budget buys more blocks of what is judged), discards a 1 s bulk run before each slot's
figures (``--warmup``), and is judged on the pod path's own throughput, the labs' pod-to-pod
Gbit/s with policies over without ("pod-to-pod alone"), met when its median and its
interval's low end are both >= 0.95. The pod/node figure is shown beside it but is not the
verdict here: the policy table turns conntrack on for the whole node, so the node path of
the lab with policies slows as well, and dividing by it credits the policies with part of
their own cost. (The two labs are alike and measured in turn, so their pod figures compare
directly.) ``--from PATH`` reports a run saved with ``--save`` again, with this code's
statistics.

    sudo .venv/bin/python bench/bench_dataplane.py [--budget 540] [--json]
    sudo .venv/bin/python bench/bench_dataplane.py --compare   # kernel state, no timing
    sudo .venv/bin/python bench/bench_dataplane.py --policies 100 [--budget 540]
    .venv/bin/python bench/bench_dataplane.py --from bench/results/dataplane_policies.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from overlay.lab.lab import Lab
from overlay.lab.spec import LabSpec
from overlay.lab.system import in_netns, run
from overlay.util.fsutil import atomic_write

LAB_PREFIX = "ovlb"
ANCHOR_PREFIX = "ovlbh"
ANCHOR_SCRIPT = Path(__file__).resolve().with_name("lab-by-hand.sh")
IPERF_PORT, SOCKPERF_PORT = 5301, 11111
TARGET_MEDIAN, TARGET_LOW = 1.0, 0.98


@dataclass(frozen=True)
class Path_:
    """Two namespaces and the address the client sends to."""
    label: str
    src_ns: str
    dst_ns: str
    dst_ip: str


@dataclass(frozen=True)
class Arm:
    """One lab as the benchmark sees it: its underlay path and its overlay path."""
    name: str
    node: Path_
    pod: Path_


# --- the two labs ----------------------------------------------------------------------
def anchor_script(action: str, udpcsum: str = "") -> None:
    run(["bash", str(ANCHOR_SCRIPT), action], timeout=60,
        env={**os.environ, "PREFIX": ANCHOR_PREFIX, "NODES": "2", "UDPCSUM": udpcsum})


def anchor_arm(prefix: str = ANCHOR_PREFIX) -> Arm:
    """The paths through lab-by-hand.sh's namespaces (the addresses its header names)."""
    return Arm("anchor",
               Path_("anchor node-to-node", f"{prefix}-node1", f"{prefix}-node2", "192.168.1.12"),
               Path_("anchor pod-to-pod", f"{prefix}-pod1", f"{prefix}-pod2", "10.245.2.2"))


def lab_arm(lab: Lab) -> Arm:
    if lab.state is None:
        raise RuntimeError("the overlay lab is not up")
    a, b = lab.state.pods_of("node1")[0], lab.state.pods_of("node2")[0]
    if b.ip is None:
        raise RuntimeError(f"pod {b.name} has no address")
    return Arm("overlay",
               Path_("overlay node-to-node", lab.spec.node_ns("node1"), lab.spec.node_ns("node2"),
                     str(lab.spec.node_ip("node2"))),
               Path_("overlay pod-to-pod", lab.spec.pod_ns(a.name), lab.spec.pod_ns(b.name),
                     b.ip))


@contextmanager
def both_labs(anchor_udpcsum: str = "") -> Iterator[tuple[Arm, Arm]]:
    """The project's lab and the anchor, up for the block and removed after it."""
    base = tempfile.mkdtemp(prefix=f"{LAB_PREFIX}-labdir-")
    lab = Lab(LabSpec(LAB_PREFIX, base), progress=lambda m: print(f"  {m}", file=sys.stderr))
    try:
        print("bringing up the overlay lab (2 nodes, 1 pod each) and the hand-built anchor",
              file=sys.stderr)
        lab.up(nodes=2, pods_per_node=1)
        anchor_script("up", anchor_udpcsum)
        yield lab_arm(lab), anchor_arm()
    finally:
        anchor_script("down")
        if lab.state is not None:
            lab.down()
        shutil.rmtree(base, ignore_errors=True)


NO_POLICY_PREFIX = "ovlbq"
POLICY_TARGET = 0.95


def dataplane_policies(n: int) -> list[dict[str, Any]]:
    """``n`` policies selecting every pod of ``default``; the first allows the benchmark's
    flows (iperf3, sockperf, ping) both ways, the others allow other peers and ports."""
    allow = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
             "metadata": {"name": "bench-flows", "namespace": "default"},
             "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
                      "ingress": [{"from": [{"podSelector": {}}]}],
                      "egress": [{"to": [{"podSelector": {}}]}]}}
    out = [allow]
    for i in range(1, n):
        out.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                    "metadata": {"name": f"pol{i}", "namespace": "default"},
                    "spec": {"podSelector": {} if i % 2 else {"matchExpressions": [
                        {"key": "tier", "operator": "DoesNotExist"}]},
                             "policyTypes": ["Ingress", "Egress"],
                             "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {
                                 "team": f"t{i % 5}"}}, "podSelector": {"matchLabels": {
                                     "role": f"r{i % 7}"}}}, {"ipBlock": {
                                         "cidr": f"172.{16 + i % 16}.0.0/16",
                                         "except": [f"172.{16 + i % 16}.{i % 256}.0/24"]}}],
                                          "ports": [{"port": 9000 + i}, {"port": "http"}]}],
                             "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}],
                                         "ports": [{"port": 53, "protocol": "UDP"},
                                                   {"port": 8000 + i % 100}]}]}})
    return out


def policy_counters(lab: Lab, node: str) -> int:
    proc = subprocess.run(in_netns(lab.spec.node_ns(node), ["nft", "-j", "list", "counters",
                                                            "table", "inet", "overlay-policy"]),
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return 0
    return sum(1 for item in json.loads(proc.stdout)["nftables"] if "counter" in item)


@contextmanager
def policy_labs(n: int) -> Iterator[tuple[Arm, Arm]]:
    """Two project labs alike, the first with ``n`` policies in force."""
    bases = [tempfile.mkdtemp(prefix=f"{p}-labdir-") for p in (LAB_PREFIX, NO_POLICY_PREFIX)]
    labs = [Lab(LabSpec(p, b), progress=lambda m: print(f"  {m}", file=sys.stderr))
            for p, b in zip((LAB_PREFIX, NO_POLICY_PREFIX), bases, strict=True)]
    try:
        print(f"bringing up two overlay labs (2 nodes, 1 pod each), {n} policies in the first",
              file=sys.stderr)
        for lab in labs:
            lab.up(nodes=2, pods_per_node=1)
        manifest = os.path.join(bases[0], "policies.json")
        atomic_write(manifest, json.dumps({"apiVersion": "v1", "kind": "List",
                                           "items": dataplane_policies(n)}))
        labs[0].overlayctl("policy", "apply", "-f", manifest)
        deadline = time.monotonic() + 60
        while min(policy_counters(labs[0], node) for node in ("node1", "node2")) < 4 * n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {n} policies never reached both nodes' tables")
            time.sleep(0.2)
        with_policies, without = lab_arm(labs[0]), lab_arm(labs[1])
        yield with_policies, Arm("no-policy",
                                 dataclasses.replace(without.node, label="no-policy node-to-node"),
                                 dataclasses.replace(without.pod, label="no-policy pod-to-pod"))
    finally:
        for lab, base in zip(labs, bases, strict=True):
            if lab.state is not None:
                lab.down()
            shutil.rmtree(base, ignore_errors=True)


# --- measurements ----------------------------------------------------------------------
@contextmanager
def servers(paths: list[Path_], sockperf: bool = True) -> Iterator[None]:
    """An iperf3 and (``sockperf``) a sockperf server at every destination, for the whole
    run (the IPv6 benchmark runs iperf3 alone: Debian's sockperf has no IPv6)."""
    procs = []
    try:
        for p in paths:
            argvs = [["iperf3", "-s", "-p", str(IPERF_PORT), "-B", p.dst_ip]]
            if sockperf:
                argvs.append(["sockperf", "server", "--tcp", "-i", p.dst_ip, "-p",
                              str(SOCKPERF_PORT)])
            for argv in argvs:
                procs.append(subprocess.Popen(in_netns(p.dst_ns, argv),
                                              stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL))
        for p in paths:
            wait_listening(p, IPERF_PORT)
            if sockperf:
                wait_listening(p, SOCKPERF_PORT)
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_listening(path: Path_, port: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        probe = subprocess.run(in_netns(path.dst_ns, ["ss", "-Hltn", f"sport = :{port}"]),
                               capture_output=True, text=True)
        if probe.stdout.strip():
            return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {path.dst_ip}:{port} in {path.dst_ns}")


def iperf3(path: Path_, seconds: int, *extra: str) -> dict[str, Any]:
    cp = subprocess.run(in_netns(path.src_ns, ["iperf3", "-c", path.dst_ip, "-p",
                                               str(IPERF_PORT), "-t", str(seconds), "-J",
                                               *extra]),
                        capture_output=True, text=True, timeout=seconds + 20)
    data: dict[str, Any] = json.loads(cp.stdout)
    if "error" in data:
        raise RuntimeError(f"iperf3 {path.label}: {data['error']}")
    return data


def bulk_gbps(path: Path_, seconds: int, streams: int = 1) -> float:
    """TCP throughput in Gbit/s, receiver side."""
    data = iperf3(path, seconds, "-P", str(streams))
    return float(data["end"]["sum_received"]["bits_per_second"]) / 1e9


def small_kpps(path: Path_, seconds: int) -> float:
    """64-byte UDP datagrams the receiver got per second, in thousands (sent flat out)."""
    s = iperf3(path, seconds, "-u", "-b", "0", "-l", "64")["end"]["sum"]
    return (int(s["packets"]) - int(s["lost_packets"])) / float(s["seconds"]) / 1e3


def rr_us(path: Path_, seconds: int) -> float:
    """TCP request/response: sockperf ping-pong's median round trip, in microseconds (the
    median: a descheduled moment on this shared machine moves the mean by tens of us)."""
    cp = subprocess.run(in_netns(path.src_ns, ["sockperf", "ping-pong", "--tcp", "-i",
                                               path.dst_ip, "-p", str(SOCKPERF_PORT), "-t",
                                               str(seconds), "-m", "64"]),
                        capture_output=True, text=True, timeout=seconds + 20)
    m = re.search(r"percentile 50\.000 = +([\d.]+)", cp.stdout)
    if m is None:
        raise RuntimeError(f"sockperf {path.label}: {(cp.stdout + cp.stderr)[-300:]}")
    # sockperf reports half the round trip
    return 2 * float(m.group(1))


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    higher_is_better: bool
    measure: Callable[[Path_, argparse.Namespace], float]


METRICS = (
    Metric("bulk TCP", "Gbit/s", True, lambda p, a: bulk_gbps(p, a.seconds)),
    Metric("parallel TCP", "Gbit/s", True, lambda p, a: bulk_gbps(p, a.seconds, a.streams)),
    Metric("TCP req/resp", "us", False, lambda p, a: rr_us(p, a.short)),
    Metric("64 B UDP rate", "kpps", True, lambda p, a: small_kpps(p, a.short)),
)
METRIC_KEYS = dict(zip(("bulk", "parallel", "rr", "udp"), METRICS, strict=True))
# issue 13's target is pod-to-pod TCP: by default a --policies run measures bulk TCP alone,
# so its budget buys more blocks (a narrower interval) of what is judged
POLICY_METRICS = "bulk"


def chosen(args: argparse.Namespace) -> tuple[Metric, ...]:
    """The metrics this run measures (bulk TCP, the verdict's, always first)."""
    return tuple(METRIC_KEYS[k] for k in args.metrics)


def measure_arm(arm: Arm, args: argparse.Namespace, flip: bool) -> dict[str, dict[str, float]]:
    """Every metric on the arm's pod path and node path back to back; ``rel`` is the pod's
    share of the node's performance (pod/node for rates, node/pod for latency)."""
    out = {}
    if args.warmup:  # a first transfer after an idle spell reads low: not counted
        bulk_gbps(arm.pod, args.warmup)
    for m in chosen(args):
        order = (arm.node, arm.pod) if flip else (arm.pod, arm.node)
        got = {p.label: m.measure(p, args) for p in order}
        pod, node = got[arm.pod.label], got[arm.node.label]
        out[m.name] = {"pod": pod, "node": node,
                       "rel": pod / node if m.higher_is_better else node / pod}
    return out


# --- the schedule and the statistics ---------------------------------------------------
# A block's slots: (arm, side) with side "x" (the tested) or "y" (the reference).
BLOCKS = {"ABBA": (("ours", "x"), ("anchor", "y"), ("anchor", "y"), ("ours", "x")),
          "BAAB": (("anchor", "y"), ("ours", "x"), ("ours", "x"), ("anchor", "y")),
          "control": (("anchor", "y"), ("anchor", "x"), ("anchor", "x"), ("anchor", "y"))}
CYCLE = ("ABBA", "BAAB", "control")


def geomean(xs: list[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def block_ratio(slots: list[dict[str, Any]], metric: str, figure: str = "rel") -> float:
    """The tested side's geometric mean of ``figure`` (``rel``, or the ``pod`` path's
    own) over the reference side's."""
    x = [s["figures"][metric][figure] for s in slots if s["side"] == "x"]
    y = [s["figures"][metric][figure] for s in slots if s["side"] == "y"]
    return geomean(x) / geomean(y)


def bootstrap_median(xs: list[float], level: float = 0.90, draws: int = 4000,
                     seed: int = 1) -> tuple[float, float]:
    """Percentile bootstrap interval of the median (blocks resampled with replacement);
    a fixed seed so a report can be recomputed from its JSON."""
    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(xs, k=len(xs))) for _ in range(draws))
    tail = (1 - level) / 2
    return meds[int(tail * draws)], meds[min(draws - 1, int((1 - tail) * draws))]


def summarize(blocks: list[dict[str, Any]], kind: str, metrics: tuple[Metric, ...] = METRICS,
              figure: str = "rel") -> dict[str, dict[str, Any]]:
    out = {}
    for m in metrics:
        ratios = [block_ratio(b["slots"], m.name, figure) for b in blocks
                  if (b["kind"] == "control") == (kind == "control")]
        if not ratios:
            continue
        low, high = bootstrap_median(ratios)
        out[m.name] = {"median": statistics.median(ratios), "low": low, "high": high,
                       "blocks": ratios}
    return out


def run_blocks(arms: dict[str, Arm], args: argparse.Namespace,
               started: float) -> list[dict[str, Any]]:
    """Blocks in CYCLE order until the next would end past the budget (at least two
    tested blocks, so there is a median to give)."""
    blocks: list[dict[str, Any]] = []
    longest = 0.0
    for n in range(10_000):
        kind = CYCLE[n % len(CYCLE)]
        elapsed = time.monotonic() - started
        tested = sum(b["kind"] != "control" for b in blocks)
        if tested >= 2 and elapsed + longest > args.budget:
            break
        t0 = time.monotonic()
        slots = []
        for i, (arm, side) in enumerate(BLOCKS[kind]):
            slots.append({"arm": arm, "side": side,
                          "figures": measure_arm(arms[arm], args, flip=bool((n + i) % 2))})
        longest = max(longest, time.monotonic() - t0)
        blocks.append({"kind": kind, "slots": slots})
        pods = (f", pod-to-pod alone {block_ratio(slots, METRICS[0].name, 'pod'):.3f}"
                if args.policies else "")
        print(f"  block {n + 1} ({kind}) in {time.monotonic() - t0:.0f} s: bulk "
              f"{block_ratio(slots, METRICS[0].name):.3f}{pods}", file=sys.stderr)
    return blocks


# --- kernel state, side by side --------------------------------------------------------
LINK_KEYS = ("mtu", "qdisc", "txqlen", "promiscuity", "num_tx_queues", "num_rx_queues",
             "gso_max_size", "gso_max_segs", "gro_max_size", "tso_max_size", "tso_max_segs")
# Attributes that name or number a thing rather than set how it behaves.
IGNORED = {"id", "local", "link", "port", "no", "root_id", "bridge_id", "designated_root",
           "designated_bridge", "designated_port", "designated_cost", "port_id", "port_no",
           "hello_timer", "topology_change_timer", "gc_timer", "message_age_timer",
           "forward_delay_timer", "hold_timer", "config_pending", "group_addr",
           "root_port", "root_path_cost", "topology_change", "topology_change_detected",
           "tcn_timer"}


def link_state(ns: str) -> dict[str, dict[str, Any]]:
    """Each link's behaviour-setting attributes by role (not by name: the labs name their
    devices differently), with ``ethtool -k``'s features."""
    links = json.loads(run(["ip", "-n", ns, "-d", "-j", "link", "show"]).stdout)
    kinds = {ln["ifname"]: ln.get("linkinfo", {}).get("info_kind", "") for ln in links}
    out = {}
    for ln in links:
        info = ln.get("linkinfo", {})
        kind = info.get("info_kind", "")
        master = ln.get("master")
        role = ("lo" if ln["ifname"] == "lo" else kind if kind in ("vxlan", "bridge")
                else f"veth on {kinds.get(master, '')}" if master else
                "eth0" if ln["ifname"] == "eth0" else ln["ifname"])
        attrs: dict[str, Any] = {k: ln.get(k) for k in LINK_KEYS}
        for section in ("info_data", "info_slave_data"):
            for k, v in info.get(section, {}).items():
                if k not in IGNORED:
                    attrs[f"{section}.{k}"] = v
        features = run(in_netns(ns, ["ethtool", "-k", ln["ifname"]]), check=False).stdout
        for line in features.splitlines()[1:]:
            name, _, value = line.strip().partition(": ")
            attrs[f"ethtool.{name}"] = value
        out[role] = attrs
    return out


SYSCTLS = ("net/ipv4/ip_forward", "net/bridge/bridge-nf-call-iptables",
           "net/bridge/bridge-nf-call-arptables", "net/ipv4/conf/all/rp_filter",
           "net/ipv4/conf/default/rp_filter", "net/core/netdev_max_backlog",
           "net/ipv4/tcp_congestion_control")


def ns_state(ns: str) -> dict[str, Any]:
    state: dict[str, Any] = {f"link {role}": v for role, v in link_state(ns).items()}
    sysctls = run(in_netns(ns, ["sysctl", "-e", *[s.replace("/", ".") for s in SYSCTLS]]),
                  check=False).stdout
    state["sysctl"] = dict(line.split(" = ", 1) for line in sysctls.splitlines()
                           if " = " in line)
    rules = run(in_netns(ns, ["nft", "list", "ruleset"]), check=False).stdout
    state["nft hooks"] = sorted(re.findall(r"type \w+ hook \w+", rules))
    state["conntrack entries"] = run(in_netns(ns, ["sh", "-c", "cat /proc/sys/net/netfilter/"
                                                   "nf_conntrack_count 2>/dev/null || true"]),
                                     check=False).stdout.strip()
    return state


def diff_states(ours: dict[str, Any], anchor: dict[str, Any]) -> list[str]:
    """``key: ours | anchor`` for every setting the two labs hold differently."""
    lines = []
    for part in sorted(set(ours) | set(anchor)):
        a, b = ours.get(part), anchor.get(part)
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                if a.get(k) != b.get(k):
                    lines.append(f"{part}: {k}: {a.get(k)} | {b.get(k)}")
        elif a != b:
            lines.append(f"{part}: {a} | {b}")
    return lines


def compare(arms: dict[str, Arm]) -> dict[str, tuple[int, list[str]]]:
    """Per namespace pair (node 1's, pod 1's): how many settings were compared, and the
    differences."""
    ours, anchor = arms["ours"], arms["anchor"]
    pairs = {"node": (ours.node.src_ns, anchor.node.src_ns),
             "pod": (ours.pod.src_ns, anchor.pod.src_ns)}
    out = {}
    for where, (a, b) in pairs.items():
        sa, sb = ns_state(a), ns_state(b)
        count = sum(len(v) if isinstance(v, dict) else 1 for v in sa.values())
        out[where] = (count, diff_states(sa, sb))
    return out


# --- knobs, tried on the project's lab only ---------------------------------------------
def links(ns: str) -> list[dict[str, Any]]:
    return list(json.loads(run(["ip", "-n", ns, "-d", "-j", "link", "show"]).stdout))


def ethtool_k(ns: str, dev: str, *features: str) -> None:
    run(in_netns(ns, ["ethtool", "-K", dev, *features]))


def veths_gro(arm: Arm) -> None:
    """GRO on every veth end the network made (node side and pod side): NAPI on veth."""
    for ns in {arm.node.src_ns, arm.node.dst_ns, arm.pod.src_ns, arm.pod.dst_ns}:
        for ln in links(ns):
            if ln.get("linkinfo", {}).get("info_kind") == "veth" and (
                    ln.get("master") or ns in (arm.pod.src_ns, arm.pod.dst_ns)):
                ethtool_k(ns, ln["ifname"], "gro", "on")


def vxlan_tx_csum_off(arm: Arm) -> None:
    """Flannel's NAT workaround (flannel#1929): no TX checksum offload on the VXLAN device."""
    for ns in (arm.node.src_ns, arm.node.dst_ns):
        for ln in links(ns):
            if ln.get("linkinfo", {}).get("info_kind") == "vxlan":
                ethtool_k(ns, ln["ifname"], "tx-checksum-ip-generic", "off")


TWEAKS: dict[str, Callable[[Arm], None]] = {"veth-gro": veths_gro,
                                           "vxlan-tx-csum-off": vxlan_tx_csum_off}


# --- main ------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=float, default=540.0,
                    help="seconds the whole run may take, set-up included (default 540)")
    ap.add_argument("--seconds", type=int, default=1, help="length of one TCP run")
    ap.add_argument("--short", type=int, default=1,
                    help="length of one latency or small-packet run")
    ap.add_argument("--streams", type=int, default=4, help="streams of the parallel run")
    ap.add_argument("--tweak", action="append", default=[], choices=sorted(TWEAKS),
                    help="apply a knob to the project's lab only (repeatable)")
    ap.add_argument("--anchor-udpcsum", choices=("on", "off"), default="",
                    help="the anchor's flannel.1 with (or without) outer UDP checksums")
    ap.add_argument("--compare", action="store_true",
                    help="print how the two labs' kernel state differs, and stop")
    ap.add_argument("--policies", type=int, default=0, metavar="N",
                    help="compare the lab with N policies against one with none "
                         "(instead of the anchor)")
    ap.add_argument("--metrics", default="",
                    help="comma-separated subset of bulk,parallel,rr,udp (default: all; "
                         f"with --policies {POLICY_METRICS})")
    ap.add_argument("--warmup", type=int, default=-1, metavar="SECONDS",
                    help="a discarded bulk run on the pod path before each slot's figures "
                         "(default 0; with --policies 1)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--save", metavar="PATH", help="also write the figures as JSON to PATH")
    ap.add_argument("--from", dest="saved", metavar="PATH",
                    help="report a run saved with --save again (no lab, no timing)")
    args = ap.parse_args()
    if args.saved:
        rereport(args)
        return
    if args.budget <= 0 or args.seconds < 1 or args.short < 1 or args.streams < 1:
        sys.exit("error: --budget, --seconds, --short and --streams must be positive")
    keys = (args.metrics or (POLICY_METRICS if args.policies else ",".join(METRIC_KEYS)))
    named = {k.strip() for k in keys.split(",") if k.strip()}
    if unknown := sorted(named - METRIC_KEYS.keys()):
        sys.exit(f"error: --metrics {','.join(unknown)}: not one of {','.join(METRIC_KEYS)}")
    if "bulk" not in named:
        sys.exit("error: --metrics must include bulk (the verdict is bulk TCP's)")
    args.metrics = [k for k in METRIC_KEYS if k in named]  # each once, bulk first
    if args.warmup < 0:
        args.warmup = 1 if args.policies else 0
    missing = [t for t in ("iperf3", "sockperf", "ethtool") if shutil.which(t) is None]
    if missing:
        sys.exit(f"error: {', '.join(missing)} not installed (run cmd/bootstrap.sh --test)")
    started = time.monotonic()
    with ExitStack() as stack:
        ours, anchor = stack.enter_context(policy_labs(args.policies) if args.policies else
                                           both_labs(args.anchor_udpcsum))
        arms = {"ours": ours, "anchor": anchor}
        for name in args.tweak:
            TWEAKS[name](ours)
        for arm in arms.values():  # warm up neighbour caches and check each path works
            for p in (arm.node, arm.pod):
                run(in_netns(p.src_ns, ["ping", "-c", "2", "-i", "0.2", "-W", "1", p.dst_ip]))
        if args.compare:
            for where, (count, lines) in compare(arms).items():
                print(f"{where}: {len(lines)} difference(s) in {count} settings "
                      "(overlay | anchor)")
                for line in lines:
                    print(f"  {line}")
            return
        stack.enter_context(servers([p for a in arms.values() for p in (a.node, a.pod)]))
        blocks = run_blocks(arms, args, started)
    report(blocks, args, time.monotonic() - started)


def rereport(args: argparse.Namespace) -> None:
    """``--from``: the saved run's blocks and settings, reported by :func:`report`."""
    try:
        with open(args.saved, encoding="utf-8") as f:
            saved = json.load(f)
        blocks = saved["blocks"]
        for key in ("seconds", "short", "warmup", "streams", "policies", "anchor_udpcsum"):
            setattr(args, key, saved[key])
        args.tweak = saved["tweaks"]
        args.metrics = [k for k, m in METRIC_KEYS.items() if m.name in saved["metrics"]]
        took = float(saved["took_s"])
        if not any(b["kind"] != "control" for b in blocks) or "bulk" not in args.metrics:
            raise ValueError("no tested block of bulk TCP")
    except (OSError, ValueError, KeyError, TypeError) as e:
        sys.exit(f"error: {args.saved}: not a saved run ({e})")
    if args.save:
        sys.exit("error: --from reports a saved run; it saves nothing (no --save)")
    report(blocks, args, took, loadavg=saved.get("loadavg"))


def report(blocks: list[dict[str, Any]], args: argparse.Namespace, took: float,
           loadavg: list[str] | None = None) -> None:
    metrics = chosen(args)
    tested = summarize(blocks, "tested", metrics)
    control = summarize(blocks, "control", metrics)
    bulk = tested[METRICS[0].name]
    met = bulk["median"] >= TARGET_MEDIAN and bulk["low"] >= TARGET_LOW
    pod_alone: dict[str, dict[str, Any]] = {}
    if args.policies:  # issue 13: pod-to-pod with N policies >= 0.95 x with none, its interval too
        pod_alone = {kind: got[METRICS[0].name] for kind in ("tested", "control")
                     if (got := summarize(blocks, kind, metrics, "pod"))}
        judged = pod_alone["tested"]
        met = judged["median"] >= POLICY_TARGET and judged["low"] >= POLICY_TARGET
    absolute: dict[str, dict[str, float]] = {}
    for m in metrics:
        for arm in ("ours", "anchor"):
            for side in ("pod", "node"):
                vals = [s["figures"][m.name][side] for b in blocks for s in b["slots"]
                        if s["arm"] == arm]
                absolute.setdefault(m.name, {})[f"{arm} {side}"] = statistics.median(vals)
    summary = {"blocks": blocks, "tested": tested, "control": control, "absolute": absolute,
               "tweaks": args.tweak, "anchor_udpcsum": args.anchor_udpcsum,
               "seconds": args.seconds, "short": args.short, "warmup": args.warmup,
               "metrics": [m.name for m in metrics],
               "streams": args.streams, "policies": args.policies,
               "took_s": took,
               "loadavg": loadavg or Path("/proc/loadavg").read_text().split()[:3],
               "target": ({"median": POLICY_TARGET, "low": POLICY_TARGET} if args.policies else
                          {"median": TARGET_MEDIAN, "low": TARGET_LOW}), "met": met}
    if pod_alone:
        summary["pod_alone"] = pod_alone
    if args.save:
        atomic_write(args.save, json.dumps(summary, indent=2) + "\n")
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    n_t = sum(b["kind"] != "control" for b in blocks)
    if args.tweak:
        print(f"knobs on the project's lab only: {', '.join(args.tweak)}")
    if args.anchor_udpcsum:
        print(f"the anchor's flannel.1 with udpcsum {args.anchor_udpcsum}")
    if args.policies:
        print(f"'anchor' is the project's lab with no policy; 'overlay' has {args.policies}")
    print(f"{n_t} tested blocks (ABBA/BAAB) and {len(blocks) - n_t} control blocks (anchor vs "
          f"itself) in {took:.0f} s; TCP runs {args.seconds} s, latency/small-packet runs "
          f"{args.short} s, warm-up {args.warmup} s; load average "
          f"{' '.join(summary['loadavg'])}")
    print(f"{'metric':<16}{'overlay/anchor':>15}{'90% interval':>16}{'control':>9}"
          f"{'its interval':>16}   medians: overlay pod/node, anchor pod/node")
    for m in metrics:
        t, c = tested[m.name], control.get(m.name)
        a = absolute[m.name]
        ctl = (f"{c['median']:>9.3f}{c['low']:>8.3f}-{c['high']:<7.3f}" if c else f"{'-':>9}"
               f"{'-':>16}")
        print(f"{m.name:<16}{t['median']:>15.3f}{t['low']:>8.3f}-{t['high']:<7.3f}{ctl}   "
              f"{a['ours pod']:.3g}/{a['ours node']:.3g}, {a['anchor pod']:.3g}/"
              f"{a['anchor node']:.3g} {m.unit}")
    if pod_alone:
        for kind, label in (("tested", "with/none"), ("control", "control")):
            if (p := pod_alone.get(kind)) is None:
                continue
            print(f"bulk TCP, pod-to-pod alone ({label}): {p['median']:.3f} "
                  f"({p['low']:.3f}-{p['high']:.3f})")
        judged = pod_alone["tested"]
        print(f"bulk TCP pod-to-pod alone: median {judged['median']:.3f}, interval low "
              f"{judged['low']:.3f}: target (median >= {POLICY_TARGET}, low >= "
              f"{POLICY_TARGET}) {'met' if met else 'NOT met'}")
        return
    print(f"bulk TCP: median {bulk['median']:.3f}, interval low {bulk['low']:.3f}: target "
          f"(median >= {TARGET_MEDIAN}, low >= {TARGET_LOW}) {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
