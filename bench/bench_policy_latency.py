#!/usr/bin/env python3
"""NetworkPolicy change -> enforced on every node of a 3-node lab, measured by probing.

A lab (prefix ``ovplt``: etcd, overlayd per node) with pods x/a on node1, x/c on node2,
x/e on node3 (the policy's targets) and x/b on node1 (the prober). Each round:
``overlayctl policy apply`` of a policy denying ingress to a, c and e, then b probes all
three at once (TCP 80, 50 ms timeout, every 10 ms) until each probe of each target fails;
then ``policy delete`` and the same until each passes again. A round's figure is the
later node's first enforced probe, counted from overlayctl's return (its etcd write is
committed; the CLI's own start-up is not the daemon's latency) to when that probe was
sent. Target (issue 13): median < 200 ms for the put. The probes' resolution is ~10 ms.

    sudo .venv/bin/python bench/bench_policy_latency.py [--rounds 20] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from overlay.lab.lab import Lab
from overlay.lab.spec import LabError, LabSpec

PREFIX = "ovplt"
TARGET_MS = 200.0
PROBE_TIMEOUT = 0.05
TARGETS = ("x/a", "x/c", "x/e")
DENY = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "deny-ace", "namespace": "x"},
        "spec": {"podSelector": {"matchExpressions": [
            {"key": "pod", "operator": "In", "values": ["a", "c", "e"]}]},
                 "policyTypes": ["Ingress"]}}


def first_send(cond: Callable[[], bool], since: float, timeout: float = 10.0) -> float:
    """Seconds from ``since`` to the start of the first probe for which ``cond`` held."""
    while time.monotonic() - since < timeout:
        sent = time.monotonic()
        if cond():
            return sent - since
        time.sleep(0.01)
    raise RuntimeError(f"not enforced within {timeout} s")


def on_one(lab: Lab, dst: str, want_pass: bool, since: float,
           timeout: float = PROBE_TIMEOUT) -> float:
    """When x/b's probes of ``dst`` first came out as wanted."""
    return first_send(lambda: lab.probe("x/b", dst, 80, "tcp", timeout=timeout).ok
                      == want_pass, since)


def on_every_node(lab: Lab, want_pass: bool, since: float) -> float:
    with ThreadPoolExecutor(len(TARGETS)) as pool:
        return max(pool.map(lambda d: on_one(lab, d, want_pass, since), TARGETS))


def summary(xs: list[float]) -> dict:
    ms = sorted(x * 1000 for x in xs)
    return {"median_ms": round(statistics.median(ms), 1),
            "p90_ms": round(ms[min(len(ms) - 1, int(0.9 * len(ms)))], 1),
            "max_ms": round(ms[-1], 1), "min_ms": round(ms[0], 1), "n": len(ms)}


def measure(lab: Lab, rounds: int, manifest: str) -> dict:
    for dst in TARGETS:  # everything passes before the first round
        on_one(lab, dst, True, time.monotonic(), 0.3)
    enforced, lifted = [], []
    for _ in range(rounds):
        lab.overlayctl("policy", "apply", "-f", manifest)
        enforced.append(on_every_node(lab, False, time.monotonic()))
        lab.overlayctl("policy", "delete", "x/deny-ace")
        lifted.append(on_every_node(lab, True, time.monotonic()))
    put = summary(enforced)
    return {"put_to_denied_on_every_node": put,
            "delete_to_allowed_on_every_node": summary(lifted),
            "rounds": rounds, "nodes": 3, "target_median_ms": TARGET_MS,
            "met": put["median_ms"] < TARGET_MS}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not 1 <= args.rounds <= 200:
        ap.error("--rounds must be 1..200")
    if os.geteuid() != 0:
        print("bench_policy_latency needs root (network namespaces)", file=sys.stderr)
        return 1
    base = tempfile.mkdtemp(prefix=f"{PREFIX}-labdir-")
    lab = Lab(LabSpec(PREFIX, base), progress=lambda m: print(f"  {m}", file=sys.stderr))
    try:
        lab.up(nodes=3, pods_per_node=0)
        for name, node in (("a", "node1"), ("b", "node1"), ("c", "node2"), ("e", "node3")):
            lab.add_pod(name, node, "x", {"pod": name})
        manifest = os.path.join(base, "deny.json")
        with open(manifest, "w") as f:
            json.dump(DENY, f)
        result = measure(lab, args.rounds, manifest)
    except (LabError, RuntimeError) as e:
        print(f"bench_policy_latency: {e}", file=sys.stderr)
        return 1
    finally:
        try:
            if lab.state is not None:
                lab.down()
        finally:
            shutil.rmtree(base, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for what in ("put_to_denied_on_every_node", "delete_to_allowed_on_every_node"):
        r = result[what]
        print(f"{what:34} median {r['median_ms']:6.1f} ms, p90 {r['p90_ms']:6.1f} ms, "
              f"max {r['max_ms']:6.1f} ms (n={r['n']})")
    print(f"target: median put -> denied < {TARGET_MS:.0f} ms: "
          f"{'met' if result['met'] else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
