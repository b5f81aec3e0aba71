#!/usr/bin/env python3
"""Event latency: a lease put in etcd -> its route present on every peer.

Two node namespaces (prefix ``ovd-``) on an underlay bridge, etcd inside the underlay
namespace, overlayd running in each node.  This process listens for route
notifications (RTMGRP_IPV4_ROUTE) inside both nodes, then enters the underlay namespace
and puts leases one by one; the latency of a lease on a node is the time from just
before the put to the notification of its route there (CLOCK_MONOTONIC is shared
by all namespaces).  Reports median, p90, p99 and max; target median < 50 ms.

    sudo .venv/bin/python bench/bench_event_latency.py [--leases 100] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import statistics
import struct
import sys
import time
from ipaddress import IPv4Address, IPv4Network

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench_rss import in_netns  # noqa: E402  (a sibling: bench/ is on sys.path)
from pyroute2.netns import create_socket  # noqa: E402

from overlay.lease import LeaseAttrs  # noqa: E402
from overlay.subnet.etcdconf import make_etcd_options  # noqa: E402
from overlay.subnet.registry import EtcdRegistry  # noqa: E402
from tests.integration.support.ovd_topology import Topology  # noqa: E402

RTMGRP_IPV4_ROUTE = 0x40
RTM_NEWROUTE = 24


def route_socket(ns: str) -> socket.socket:
    s = create_socket(f"/var/run/netns/{ns}", socket.AF_NETLINK, socket.SOCK_RAW, 0, flags=0)
    s.setsockopt(socket.SOL_SOCKET, 33, 4 << 20)  # SO_RCVBUFFORCE
    s.bind((0, RTMGRP_IPV4_ROUTE))
    s.setblocking(False)
    return s


def new_route_dsts(data: bytes) -> list[IPv4Network]:
    out, off = [], 0
    while off + 16 <= len(data):
        length, mtype = struct.unpack_from("=LH", data, off)
        if length < 16:
            break
        if mtype == RTM_NEWROUTE:
            family, dst_len = data[off + 16], data[off + 17]
            a = off + 16 + 12
            while family == socket.AF_INET and a + 4 <= off + length:
                alen, akind = struct.unpack_from("=HH", data, a)
                if alen < 4:
                    break
                if akind == 1 and alen == 8:  # RTA_DST
                    out.append(IPv4Network((IPv4Address(data[a + 4:a + 8]), dst_len)))
                a += (alen + 3) & ~3
        off += (length + 3) & ~3
    return out


def subnet_for(i: int) -> IPv4Network:
    return IPv4Network(f"10.{200 + i // 256}.{i % 256}.0/24")


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


def wait_routes(socks: dict[str, socket.socket], subnet: IPv4Network, t0: float,
                timeout: float = 5.0) -> dict[str, float]:
    """Seconds from ``t0`` until ``subnet``'s route was announced in each namespace."""
    seen: dict[str, float] = {}
    deadline = t0 + timeout
    while len(seen) < len(socks) and time.monotonic() < deadline:
        ready, _, _ = select.select(list(socks.values()), [], [], 0.5)
        now = time.monotonic()
        for ns, s in socks.items():
            if s not in ready:
                continue
            while True:
                try:
                    data = s.recv(1 << 20)
                except BlockingIOError:
                    break
                if subnet in new_route_dsts(data) and ns not in seen:
                    seen[ns] = now - t0
    return seen


def measure_puts(reg: EtcdRegistry, socks: dict[str, socket.socket], count: int,
                 gap: float) -> dict[str, list[float]]:
    """Put ``count`` new leases one by one (then delete them): per namespace, the
    latency of each put to its route there."""
    lat: dict[str, list[float]] = {ns: [] for ns in socks}
    for i in range(count):
        subnet = subnet_for(i)
        attrs = LeaseAttrs(IPv4Address("192.168.1.200"), "vxlan", 1,
                           f"0e:be:00:00:{i // 256:02x}:{i % 256:02x}")
        t0 = time.monotonic()
        reg.create_lease(subnet, attrs, None)
        for ns, v in wait_routes(socks, subnet, t0).items():
            lat[ns].append(v)
        time.sleep(gap)
    for i in range(count):
        reg.delete_lease(subnet_for(i))
    return lat


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--leases", type=int, default=100)
    ap.add_argument("--gap", type=float, default=0.02, help="seconds between puts")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if not 1 <= a.leases <= 10000:
        ap.error("--leases must be within 1..10000")
    topo = Topology(2).setup({"Network": "10.0.0.0/8", "SubnetLen": 24,
                              "Backend": {"Type": "vxlan", "VNI": 1}})
    lat: dict[str, list[float]] = {}
    try:
        for n in topo.nodes:
            n.start()
        for n in topo.nodes:
            n.wait_ready()
        socks = {n.ns: route_socket(n.ns) for n in topo.nodes}
        with in_netns(topo.underlay):
            reg = EtcdRegistry(make_etcd_options(topo.etcd.endpoint))
            reg.get_config()  # connect before timing
            lat = measure_puts(reg, socks, a.leases, a.gap)
            reg.close()
    finally:
        topo.cleanup()
    allv = [v for vs in lat.values() for v in vs]
    report = {"leases": a.leases, "observed": len(allv), "expected": a.leases * len(lat),
              "median_ms": statistics.median(allv) * 1000, "p90_ms": pct(allv, 0.9) * 1000,
              "p99_ms": pct(allv, 0.99) * 1000, "max_ms": max(allv) * 1000}
    if a.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"lease put -> route on each of {len(lat)} peers, {a.leases} leases "
              f"({report['observed']}/{report['expected']} observed):")
        print(f"  median {report['median_ms']:.1f} ms   p90 {report['p90_ms']:.1f} ms   "
              f"p99 {report['p99_ms']:.1f} ms   max {report['max_ms']:.1f} ms")
        print(f"  target: median < 50 ms -> {'MET' if report['median_ms'] < 50 else 'NOT MET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
