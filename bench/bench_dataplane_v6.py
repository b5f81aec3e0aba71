#!/usr/bin/env python3
"""IPv6 data-plane benchmark (issue 14 item 7): the project's IPv6 pods against a
hand-built IPv6 VXLAN overlay, in one run.

bench_dataplane.py's method, for IPv6, with its helpers imported (iperf3 runs, the
ABBA/BAAB/control schedule, the bootstrap):

* A, the project's dual-stack lab (``overlay-lab up --dual-stack``, prefix ``ovlb6``: etcd,
  overlayd per node with ``--public-ipv6``, pods attached by the CNI plugin), measured on
  its IPv6 half: pod IPv6 to pod IPv6 across nodes (overlay-v6.1), over node IPv6 to node
  IPv6 (the underlay);
* B, the anchor: ``bench/lab-by-hand-v6.sh`` (prefix ``ovlbh6``), Flannel's IPv6 VXLAN
  data plane (flannel-v6.1, MTU 1430) built with iproute2 alone, the same ratio.

Metrics: bulk TCP (one stream) and parallel TCP (``--streams``), iperf3, receiver side.
(sockperf 3.7, Debian's, has no IPv6, so the latency metric of bench_dataplane.py is not
here.)  A block's figure is A's geometric mean of pod/node over B's; the result is the
median over blocks with a 90 % bootstrap interval, and control blocks (B against itself)
show the statistic's spread when nothing differs.  Met when bulk TCP's median >= 0.97
(the issue's bound: the project's IPv6 pods keep 97 % of what the anchor's keep).

    sudo .venv/bin/python bench/bench_dataplane_v6.py [--budget 420] [--json] [--save F]
"""

from __future__ import annotations

import argparse
import json
import os
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench_dataplane import (  # noqa: E402  (a sibling: bench/ is on sys.path)
    BLOCKS,
    CYCLE,
    Arm,
    Path_,
    bootstrap_median,
    bulk_gbps,
    geomean,
    servers,
)

from overlay.lab.lab import Lab  # noqa: E402
from overlay.lab.spec import LabSpec  # noqa: E402
from overlay.lab.system import in_netns, run  # noqa: E402
from overlay.util.fsutil import atomic_write  # noqa: E402

LAB_PREFIX = "ovlb6"
ANCHOR_PREFIX = "ovlbh6"
ANCHOR_SCRIPT = Path(__file__).resolve().with_name("lab-by-hand-v6.sh")
TARGET = 0.97
WARM_UP_TIMEOUT = 15.0


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    measure: Callable[[Path_, argparse.Namespace], float]


METRICS = (
    Metric("bulk TCP", "Gbit/s", lambda p, a: bulk_gbps(p, a.seconds)),
    Metric("parallel TCP", "Gbit/s", lambda p, a: bulk_gbps(p, a.seconds, a.streams)),
)


# --- the two labs ----------------------------------------------------------------------
def anchor_script(action: str) -> None:
    run(["bash", str(ANCHOR_SCRIPT), action], timeout=60,
        env={**os.environ, "PREFIX": ANCHOR_PREFIX, "NODES": "2"})


def anchor_arm(prefix: str = ANCHOR_PREFIX) -> Arm:
    """The IPv6 paths through lab-by-hand-v6.sh's namespaces (its header's addresses)."""
    return Arm("anchor",
               Path_("anchor node-to-node v6", f"{prefix}-node1", f"{prefix}-node2",
                     "fd00:192:168:1::12"),
               Path_("anchor pod-to-pod v6", f"{prefix}-pod1", f"{prefix}-pod2",
                     "fd00:10:245:2::2"))


def lab_arm(lab: Lab) -> Arm:
    """The lab's IPv6 paths: node1 to node2's IPv6 underlay address, pod to pod IPv6."""
    if lab.state is None:
        raise RuntimeError("the overlay lab is not up")
    a, b = lab.state.pods_of("node1")[0], lab.state.pods_of("node2")[0]
    if b.ip6 is None:
        raise RuntimeError(f"pod {b.name} has no IPv6 address (is the lab dual-stack?)")
    return Arm("overlay",
               Path_("overlay node-to-node v6", lab.spec.node_ns("node1"),
                     lab.spec.node_ns("node2"), str(lab.spec.node_ip6("node2"))),
               Path_("overlay pod-to-pod v6", lab.spec.pod_ns(a.key), lab.spec.pod_ns(b.key),
                     b.ip6))


@contextmanager
def both_labs() -> Iterator[tuple[Arm, Arm]]:
    base = tempfile.mkdtemp(prefix=f"{LAB_PREFIX}-labdir-")
    lab = Lab(LabSpec(LAB_PREFIX, base), progress=lambda m: print(f"  {m}", file=sys.stderr))
    try:
        print("bringing up the dual-stack overlay lab (2 nodes, 1 pod each) and the "
              "hand-built IPv6 anchor", file=sys.stderr)
        lab.up(nodes=2, pods_per_node=1, families="dual")
        anchor_script("up")
        yield lab_arm(lab), anchor_arm()
    finally:
        anchor_script("down")
        if lab.state is not None:
            lab.down()
        shutil.rmtree(base, ignore_errors=True)


def warm_up(path: Path_, timeout: float = WARM_UP_TIMEOUT) -> None:
    """Ping until the path answers (neighbour discovery on a fresh IPv6 link can drop the
    first packets), so no timed run pays for it; bounded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ok = subprocess.run(in_netns(path.src_ns, ["ping", "-c", "1", "-W", "1", path.dst_ip]),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if ok.returncode == 0:
            return
    raise RuntimeError(f"{path.label}: {path.dst_ip} does not answer ping after {timeout:g} s")


# --- the schedule ----------------------------------------------------------------------
def measure_arm(arm: Arm, args: argparse.Namespace, flip: bool) -> dict[str, dict[str, float]]:
    out = {}
    for m in METRICS:
        order = (arm.node, arm.pod) if flip else (arm.pod, arm.node)
        got = {p.label: m.measure(p, args) for p in order}
        pod, node = got[arm.pod.label], got[arm.node.label]
        out[m.name] = {"pod": pod, "node": node, "rel": pod / node}
    return out


def block_ratio(slots: list[dict[str, Any]], metric: str) -> float:
    x = [s["figures"][metric]["rel"] for s in slots if s["side"] == "x"]
    y = [s["figures"][metric]["rel"] for s in slots if s["side"] == "y"]
    return geomean(x) / geomean(y)


def run_blocks(arms: dict[str, Arm], args: argparse.Namespace,
               started: float) -> list[dict[str, Any]]:
    """Blocks in CYCLE order until the next would end past the budget (at least
    ``--min-blocks`` tested ones)."""
    blocks: list[dict[str, Any]] = []
    longest = 0.0
    for n in range(10_000):
        kind = CYCLE[n % len(CYCLE)]
        tested = sum(b["kind"] != "control" for b in blocks)
        if tested >= args.min_blocks and time.monotonic() - started + longest > args.budget:
            break
        t0 = time.monotonic()
        slots = [{"arm": arm, "side": side,
                  "figures": measure_arm(arms[arm], args, flip=bool((n + i) % 2))}
                 for i, (arm, side) in enumerate(BLOCKS[kind])]
        longest = max(longest, time.monotonic() - t0)
        blocks.append({"kind": kind, "slots": slots})
        print(f"  block {n + 1} ({kind}) in {time.monotonic() - t0:.0f} s: bulk "
              f"{block_ratio(slots, METRICS[0].name):.3f}", file=sys.stderr)
    return blocks


def summarize(blocks: list[dict[str, Any]], control: bool) -> dict[str, dict[str, Any]]:
    out = {}
    for m in METRICS:
        ratios = [block_ratio(b["slots"], m.name) for b in blocks
                  if (b["kind"] == "control") == control]
        if ratios:
            low, high = bootstrap_median(ratios)
            out[m.name] = {"median": statistics.median(ratios), "low": low, "high": high,
                           "blocks": ratios}
    return out


def report(blocks: list[dict[str, Any]], args: argparse.Namespace, took: float) -> None:
    tested, control = summarize(blocks, False), summarize(blocks, True)
    bulk = tested[METRICS[0].name]
    absolute = {m.name: {f"{arm} {side}": statistics.median(
        s["figures"][m.name][side] for b in blocks for s in b["slots"] if s["arm"] == arm)
        for arm in ("ours", "anchor") for side in ("pod", "node")} for m in METRICS}
    summary = {"family": 6, "blocks": blocks, "tested": tested, "control": control,
               "absolute": absolute, "seconds": args.seconds, "streams": args.streams,
               "took_s": took, "loadavg": Path("/proc/loadavg").read_text().split()[:3],
               "target": TARGET, "met": bulk["median"] >= TARGET}
    if args.save:
        atomic_write(args.save, json.dumps(summary, indent=2) + "\n")
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    n_t = sum(b["kind"] != "control" for b in blocks)
    print(f"IPv6: {n_t} tested blocks (ABBA/BAAB) and {len(blocks) - n_t} control blocks in "
          f"{took:.0f} s; TCP runs {args.seconds} s; load average "
          f"{' '.join(summary['loadavg'])}")
    print(f"{'metric':<16}{'overlay/anchor':>15}{'90% interval':>16}{'control':>9}"
          f"{'its interval':>16}   medians: overlay pod/node, anchor pod/node")
    for m in METRICS:
        t, c, a = tested[m.name], control.get(m.name), absolute[m.name]
        ctl = (f"{c['median']:>9.3f}{c['low']:>8.3f}-{c['high']:<7.3f}" if c
               else f"{'-':>9}{'-':>16}")
        print(f"{m.name:<16}{t['median']:>15.3f}{t['low']:>8.3f}-{t['high']:<7.3f}{ctl}   "
              f"{a['ours pod']:.3g}/{a['ours node']:.3g}, {a['anchor pod']:.3g}/"
              f"{a['anchor node']:.3g} {m.unit}")
    print(f"bulk TCP over IPv6: median {bulk['median']:.3f} (interval {bulk['low']:.3f}-"
          f"{bulk['high']:.3f}): target median >= {TARGET} "
          f"{'met' if summary['met'] else 'NOT met'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=float, default=420.0,
                    help="seconds the whole run may take, set-up included (default 420)")
    ap.add_argument("--seconds", type=int, default=1, help="length of one TCP run")
    ap.add_argument("--streams", type=int, default=4, help="streams of the parallel run")
    ap.add_argument("--min-blocks", type=int, default=4,
                    help="tested blocks to run even past the budget (default 4)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--save", metavar="PATH", help="also write the figures as JSON to PATH")
    args = ap.parse_args()
    if args.budget <= 0 or args.seconds < 1 or args.streams < 1 or args.min_blocks < 2:
        sys.exit("error: --budget, --seconds, --streams must be positive, --min-blocks >= 2")
    if shutil.which("iperf3") is None:
        sys.exit("error: iperf3 not installed (run cmd/bootstrap.sh --test)")
    if os.geteuid() != 0:
        sys.exit("error: run as root (it creates network namespaces)")
    started = time.monotonic()
    with ExitStack() as stack:
        ours, anchor = stack.enter_context(both_labs())
        arms = {"ours": ours, "anchor": anchor}
        for arm in arms.values():
            for p in (arm.node, arm.pod):
                warm_up(p)
        stack.enter_context(servers([p for a in arms.values() for p in (a.node, a.pod)],
                                    sockperf=False))
        blocks = run_blocks(arms, args, started)
    report(blocks, args, time.monotonic() - started)


if __name__ == "__main__":
    main()
