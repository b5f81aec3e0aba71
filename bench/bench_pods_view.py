#!/usr/bin/env python3
"""``overlayctl pods -A`` and ``-o json`` over a large registry, as a user runs them.

Fills a real etcd (started here unless --etcd-endpoints is given) with --pods pod records
spread over --nodes node subnets (each with its subnet lease, so every record passes the
registry's rule), then runs the installed ``overlayctl`` (a new process each time:
interpreter, imports, etcd connection, listing, judging, rendering) --runs times per
output format. Reported: median, min and max wall time per format, beside
``overlayctl leases list`` over the same leases (same run: the floor an overlayctl call
that reads etcd pays). Target: each pods view < 1 s median at 10 000 pods.

    python bench/bench_pods_view.py [--pods 10000] [--nodes 100] [--runs 7] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv4Network

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from overlay.cluster.keys import pod_key  # noqa: E402
from overlay.cluster.pods import Label, PodRecord, Port, encode_pod  # noqa: E402
from overlay.config import parse_network_config  # noqa: E402
from overlay.lease import LeaseAttrs  # noqa: E402
from overlay.subnet.etcdconf import make_etcd_options  # noqa: E402
from overlay.subnet.registry import EtcdRegistry  # noqa: E402

OVERLAYCTL = os.path.join(os.path.dirname(sys.executable), "overlayctl")
CFG = parse_network_config({"Network": "10.128.0.0/9", "SubnetLen": 24})


def subnet(i: int) -> IPv4Network:
    return IPv4Network(f"10.{128 + i // 256}.{i % 256}.0/24")


def fill(reg: EtcdRegistry, pods: int, nodes: int) -> None:
    reg.client().delete_prefix(reg.prefix + "/")
    reg.put_config(CFG)
    for n in range(nodes):
        reg.create_lease(subnet(n), LeaseAttrs(IPv4Address(f"172.16.{n // 250}.{n % 250 + 1}"),
                                                vtep_mac=f"0e:00:00:00:{n // 256:02x}:"
                                                         f"{n % 256:02x}"), ttl=3600)
    client = reg.client()
    now = datetime.now(UTC)
    ops = []
    for i in range(pods):
        n, k = i % nodes, i // nodes
        ip = subnet(n).network_address + 2 + k
        r = PodRecord(f"ns-{i % 20}", f"pod-{i}", (ip,), f"node-{n}", f"{i:064x}", "eth0",
                      {"app": Label(f"app-{i % 50}", "cni"), "tier": Label("web", "cli")},
                      (Port("http", 80, "TCP"),), now)
        ops.append(client.transactions.put(pod_key(reg.prefix, r.namespace, r.name),
                                           encode_pod(r)))
        if len(ops) == 100:  # under etcd's limit of 128 operations per transaction
            client.transaction(compare=[], success=ops, failure=[])
            ops = []
    if ops:
        client.transaction(compare=[], success=ops, failure=[])


def timed(args: list[str], runs: int, expect_lines: int | None) -> dict:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.run(args, capture_output=True, text=True, check=False)
        times.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: {proc.stderr.strip()}")
        lines = len(proc.stdout.splitlines())
        if expect_lines is not None and lines != expect_lines:
            raise RuntimeError(f"{' '.join(args)}: {lines} lines, expected {expect_lines}")
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "runs": runs}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pods", type=int, default=10_000)
    p.add_argument("--nodes", type=int, default=100)
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--etcd-endpoints")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    server = None
    endpoint = a.etcd_endpoints
    if endpoint is None:
        from tests.integration.support.etcd_server import EtcdServer
        server = EtcdServer(name="ovpods-bench").start()
        endpoint = server.endpoint
    try:
        with EtcdRegistry(make_etcd_options(endpoint, timeout=30.0)) as reg:
            fill(reg, a.pods, a.nodes)
        base = [OVERLAYCTL, "--etcd-endpoints", endpoint]
        out = {"pods": a.pods, "nodes": a.nodes,
               "pods -A": timed(base + ["pods", "-A"], a.runs, a.pods + 1),
               "pods -A -o json": timed(base + ["pods", "-A", "-o", "json"], a.runs, None),
               "pods -A -o wide": timed(base + ["pods", "-A", "-o", "wide"], a.runs, a.pods + 1),
               "leases list (floor)": timed(base + ["leases", "list"], a.runs, a.nodes + 1)}
    finally:
        if server is not None:
            server.cleanup()
    if a.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{a.pods} pods on {a.nodes} nodes, {a.runs} runs each (new overlayctl process)")
        for name in ("pods -A", "pods -A -o json", "pods -A -o wide", "leases list (floor)"):
            r = out[name]
            print(f"  overlayctl {name:22} median {r['median_s']:.3f}s  "
                  f"(min {r['min_s']:.3f}, max {r['max_s']:.3f})")
        ok = all(out[n]["median_s"] < 1.0 for n in ("pods -A", "pods -A -o json"))
        print(f"target: each pods view < 1 s median: {ok}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
