#!/usr/bin/env python3
"""Compile and load a node's NetworkPolicy table: 250 local pods, 10 000 in the cluster,
100 and 1000 policies (target: compile + apply < 1 s).

The table is loaded with ``nft -f`` into a namespace this script makes (``polb-<pid>``,
holding one veth per local pod, as the source check hooks each pod's veth) and removed
afterwards. Each round compiles from scratch and replaces the whole table (the daemon's
worst case: everything changed). The policies are shaped like a real cluster's: 50
namespaces, pods labelled app/role, each policy selecting one app of its namespace,
ingress from a namespace selector AND a role, a named and a numeric port, and egress to
an ipBlock with an except and to UDP 53. ``--distinct`` gives every policy peers of its
own (no address set shared: the worst case for the table's size).

    sudo .venv/bin/python bench/bench_policy_compile.py [--rounds 5] [--distinct] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from ipaddress import IPv4Address

from overlay.cluster.pods import Port
from overlay.policy.model import NetworkPolicy, parse_policy
from overlay.policy.nft import LocalPod, apply_table, compile_table
from overlay.policy.semantics import Pod

NAMESPACES = 50


def cluster(n: int) -> list[Pod]:
    ports = (Port("http", 8080), Port("metrics", 9090))
    return [Pod(f"ns{i % NAMESPACES}", f"pod{i}",
                (IPv4Address(f"10.{244 + i // 65536}.{i // 250 % 256}.{2 + i % 250}"),),
                {"app": f"app{i % 20}", "role": f"role{i % 7}", "slot": f"s{i % 1000}"}, ports,
                f"node{i // 250}")
            for i in range(n)]


def _peer(i: int, distinct: bool) -> dict:
    """Shared: 35 (team, role) peer sets in all; distinct: each policy its own 30 pods."""
    if distinct:
        return {"namespaceSelector": {}, "podSelector": {"matchExpressions": [
            {"key": "slot", "operator": "In",
             "values": [f"s{(i + k) % 1000}" for k in (0, 7, 13)]}]}}
    return {"namespaceSelector": {"matchLabels": {"team": f"t{i % 5}"}},
            "podSelector": {"matchLabels": {"role": f"role{i % 7}"}}}


def policies(n: int, distinct: bool = False) -> list[NetworkPolicy]:
    out = []
    for i in range(n):
        out.append(parse_policy({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": f"pol{i}", "namespace": f"ns{i % NAMESPACES}"},
            "spec": {"podSelector": {"matchLabels": {"app": f"app{i % 20}"}},
                     "policyTypes": ["Ingress", "Egress"],
                     "ingress": [{"from": [_peer(i, distinct)],
                         "ports": [{"port": "http"}, {"port": 9000 + i % 50}]}],
                     "egress": [{"to": [{"ipBlock": {"cidr": "172.16.0.0/12",
                                                     "except": [f"172.16.{i % 256}.0/24"]}}]},
                                {"ports": [{"port": 53, "protocol": "UDP"}]}]}}))
    return out


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True)


def make_node(netns: str, veths: list[str]) -> None:
    sh("ip", "netns", "add", netns)
    batch = "".join(f"link add {v} type veth peer name {v}p\n" for v in veths)
    subprocess.run(["ip", "-n", netns, "-batch", "-"], input=batch, check=True,
                   capture_output=True, text=True)


def measure(local: list[LocalPod], pods: list[Pod], pols: list[NetworkPolicy], netns: str,
            rounds: int) -> dict:
    namespaces = {f"ns{i}": {"team": f"t{i % 5}"} for i in range(NAMESPACES)}
    compile_s, apply_s, rules, size = [], [], 0, 0
    for _ in range(rounds):
        t0 = time.perf_counter()
        table = compile_table(local, pods, namespaces, pols)
        t1 = time.perf_counter()
        apply_table(table, netns=netns)
        t2 = time.perf_counter()
        compile_s.append(t1 - t0)
        apply_s.append(t2 - t1)
        size = len(table.text)
        rules = sum(1 for line in table.text.splitlines() if line.startswith("\t\t"))
    total = [c + a for c, a in zip(compile_s, apply_s, strict=True)]
    return {"policies": len(pols), "local_pods": len(local), "cluster_pods": len(pods),
            "compile_median_s": round(statistics.median(compile_s), 3),
            "apply_median_s": round(statistics.median(apply_s), 3),
            "total_median_s": round(statistics.median(total), 3),
            "rule_lines": rules, "table_bytes": size}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cluster-pods", type=int, default=10000)
    ap.add_argument("--local-pods", type=int, default=250)
    ap.add_argument("--policies", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--distinct", action="store_true",
                    help="every policy selects its own peers (no set is shared)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    pods = cluster(args.cluster_pods)
    veths = [f"polb{i}" for i in range(args.local_pods)]
    local = [LocalPod(p, v) for p, v in zip(pods[:args.local_pods], veths, strict=True)]
    netns = f"polb-{os.getpid()}"
    make_node(netns, veths)
    try:
        results = [measure(local, pods, policies(n, args.distinct), netns, args.rounds)
                   for n in args.policies]
    finally:
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            print(f"{r['policies']:5d} policies, {r['local_pods']} local / "
                  f"{r['cluster_pods']} pods: compile {r['compile_median_s']:.3f} s + apply "
                  f"{r['apply_median_s']:.3f} s = {r['total_median_s']:.3f} s (target < 1 s); "
                  f"{r['rule_lines']} rule lines, {r['table_bytes'] // 1024} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
