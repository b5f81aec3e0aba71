#!/usr/bin/env python3
"""What listing N leases costs on each etcd client: gRPC (pyetcd, the ``test`` extra)
against the project's JSON-gateway client, on one etcd, in one run.

Three timings per N (medians of 10, per round): the gRPC range of the prefix, the
gateway range (``EtcdAPI.range_all``: HTTP, JSON, base64, paged) and the registry's
whole listing (``list_subnets``: the gateway range, then each value decoded and judged).
Runs a throwaway etcd on loopback (take the shared lock).

    sudo .venv/bin/python bench/bench_listing.py [--sizes 1000,5000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from ipaddress import IPv4Address

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from overlay.lease import LeaseAttrs  # noqa: E402
from overlay.subnet.etcdconf import make_etcd_options  # noqa: E402
from overlay.subnet.registry import EtcdRegistry  # noqa: E402
from tests.integration.support.etcd_server import EtcdServer  # noqa: E402

PREFIX = "/ovlisting/network"


def median_ms(fn: Callable[[], object], runs: int = 10) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000,5000")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    server = EtcdServer(name="ovlisting").start()
    try:
        reg = EtcdRegistry(make_etcd_options(server.endpoint, prefix=PREFIX, timeout=30))
        raw = reg.client()
        subnets = reg.subnets_prefix
        done = 0
        for n in (int(s) for s in a.sizes.split(",")):
            for i in range(done, n):
                value = LeaseAttrs(IPv4Address("172.16.0.0") + i + 1, "vxlan", 1,
                                   f"0e:00:00:00:{i // 256:02x}:{i % 256:02x}").to_json()
                raw.put(f"{subnets}10.{2 + i // 256}.{i % 256}.0-24", value)
            done = n
            for r in range(a.rounds):
                grpc_ms = median_ms(lambda: list(raw.get_prefix_response(subnets).kvs))
                gateway_ms = median_ms(lambda: reg.api().range_all(subnets))
                listing_ms = median_ms(lambda: reg.list_subnets(with_expiration=False))
                print(f"N={n} round {r + 1}: gRPC range {grpc_ms:.1f} ms, gateway range "
                      f"{gateway_ms:.1f} ms, list_subnets {listing_ms:.1f} ms")
        reg.close()
    finally:
        server.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
