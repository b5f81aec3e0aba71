#!/usr/bin/env python3
"""The health mesh's cost on one node with 1000 peers: one probe round (run as root).

Two namespaces joined by a veth pair: ``ovmb-a`` plays the prober, ``ovmb-b`` holds one
address per peer (the ``.0`` of 1000 /24 subnets, as VTEP addresses are), routed from
A through B.  In A, the agent's round runs as overlayd runs it: diagnose's DF probe at
the full overlay MTU (1450: 1422-byte payloads, 2 echoes per peer, one raw socket for
all), the kernel-vs-lease VTEP comparison for 1000 peers, and the summary.  Measured,
median of --rounds: wall time, CPU time of the process, packets sent; once with every
peer answering and once with every peer silent (the worst case: a small probe follows).

    python bench/bench_mesh.py [--peers 1000] [--rounds 5] [--json]
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

NS_A, NS_B = "ovmb-a", "ovmb-b"
MTU = 1450
INTERVAL = 10.0  # overlayd's default --probe-interval, for the per-second figures


def subnet(i: int) -> IPv4Network:
    return IPv4Network(f"10.{1 + i // 256}.{i % 256}.0/24")


def sh(*argv: str, input: str | None = None) -> None:
    subprocess.run(argv, check=True, input=input, text=True, capture_output=True)


def setup(peers: int, answering: bool) -> None:
    sh("ip", "netns", "add", NS_A)
    sh("ip", "netns", "add", NS_B)
    sh("ip", "-n", NS_A, "link", "add", "a0", "type", "veth", "peer", "name", "b0",
       "netns", NS_B)
    for ns, dev, addr in ((NS_A, "a0", "172.31.0.1/30"), (NS_B, "b0", "172.31.0.2/30")):
        sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
        sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "-n", NS_A, "route", "add", "10.0.0.0/8", "via", "172.31.0.2")
    if answering:
        batch = "".join(f"addr add {subnet(i).network_address}/32 dev lo\n"
                        for i in range(peers))
        sh("ip", "-n", NS_B, "-batch", "-", input=batch)


def cleanup() -> None:
    for ns in (NS_A, NS_B):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def inner(peers: int, rounds: int) -> dict:
    """One node's rounds, inside NS_A (run by ``ip netns exec``)."""
    from overlay.cluster.mesh import summarize
    from overlay.daemon.nodestatus import check_peers
    from overlay.lease import Lease, LeaseAttrs
    from overlay.vxlan.entries import FDB, Entries, Neigh

    leases = [Lease(subnet(i), LeaseAttrs(IPv4Address(f"192.168.{i // 250}.{i % 250 + 1}"),
                                          vtep_mac=f"0e:00:00:00:{i // 256:02x}:{i % 256:02x}"))
              for i in range(peers)]
    have = Entries()
    for lease in leases:
        mac = lease.attrs.vtep_mac
        assert mac is not None
        have.add(Neigh(lease.subnet.network_address, mac))
        have.add(FDB(mac, lease.attrs.public_ip))

    def want(lease: Lease) -> list:
        mac = lease.attrs.vtep_mac
        assert mac is not None
        return [Neigh(lease.subnet.network_address, mac), FDB(mac, lease.attrs.public_ip)]

    walls, cpus, reachable, sent, summary = [], [], 0, 0, None
    for _ in range(rounds):
        w0, c0 = time.perf_counter(), time.process_time()
        checks = check_peers(leases, MTU, want, have)
        summary = summarize(checks, summary, datetime.now(UTC))
        cpus.append(time.process_time() - c0)
        walls.append(time.perf_counter() - w0)
        reachable = summary.peers_reachable
        sent = 2 * len(checks) + sum(1 for c in checks if c.small_answered is not None)
    return {"wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus),
            "cpu_max_s": max(cpus), "packets_sent": sent, "reachable": reachable,
            "broken_listed": len(summary.broken) if summary else 0}


def outer(peers: int, rounds: int) -> dict:
    res = {}
    for case, answering in (("all answering", True), ("all silent", False)):
        cleanup()
        try:
            setup(peers, answering)
            out = subprocess.run(["ip", "netns", "exec", NS_A, sys.executable, __file__,
                                  "--inner", "--peers", str(peers), "--rounds", str(rounds)],
                                 check=True, capture_output=True, text=True).stdout
            res[case] = json.loads(out)
        finally:
            cleanup()
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.inner:
        print(json.dumps(inner(a.peers, a.rounds)))
        return 0
    res = outer(a.peers, a.rounds)
    if a.json:
        print(json.dumps(res, indent=2))
        return 0
    for case, r in res.items():
        pps = r["packets_sent"] / INTERVAL
        print(f"{case:14} {a.peers} peers: round wall {r['wall_s'] * 1000:.0f} ms, CPU "
              f"{r['cpu_s'] * 1000:.0f} ms (max {r['cpu_max_s'] * 1000:.0f}); "
              f"{r['packets_sent']} echoes sent = {pps:.0f}/s and "
              f"{r['cpu_s'] / INTERVAL * 100:.1f}% of a core at a {INTERVAL:g}s interval; "
              f"{r['reachable']} reachable, {r['broken_listed']} listed broken")
    return 0


if __name__ == "__main__":
    sys.exit(main())
