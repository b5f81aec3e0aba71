#!/usr/bin/env python3
"""Lease benchmark against a real etcd (started here unless --etcd-endpoints is given).

1. 200 nodes acquiring a subnet at once (threads, one registry client each): wall time,
   lost races, and distinctness; the anchor is the same number of raw etcd writes
   (lease grant + put-if-absent txn) issued back to back by one client, i.e. the floor
   the store itself imposes.
2. Watch latency: one node creates leases one at a time; another node's
   ``SubnetManager.run_watch`` (the daemon's path) reports them.  Median and p99 of
   create_lease start -> on_batch, beside the writer's own create_lease round trip
   (an etcd lease grant + a txn) and etcd's round trip for a plain put, same run.

    python bench/bench_leases.py [--nodes 200] [--samples 300] [--json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import threading
import time
from functools import partial
from ipaddress import IPv4Address, IPv4Network, IPv6Network

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from overlay.config import parse_network_config
from overlay.lease import LeaseAttrs
from overlay.subnet.etcdconf import make_etcd_options
from overlay.subnet.manager import SubnetManager
from overlay.subnet.registry import EtcdRegistry

CFG = parse_network_config({"Network": "10.128.0.0/9", "SubnetLen": 24})


def node_attrs(i: int) -> LeaseAttrs:
    return LeaseAttrs(IPv4Address(f"172.16.{i // 250}.{i % 250 + 1}"),
                      vtep_mac=f"0e:00:00:00:{i // 256:02x}:{i % 256:02x}")


class RaceCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lost = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("lost a race"):
            self.lost += 1


def clear(reg: EtcdRegistry) -> None:
    reg.client().delete_prefix(reg.subnets_prefix)


def bench_acquire(opts, nodes: int) -> dict:
    admin = EtcdRegistry(opts)
    clear(admin)
    counter = RaceCounter()
    logging.getLogger("overlay.subnet.manager").addHandler(counter)
    logging.getLogger("overlay.subnet.manager").setLevel(logging.INFO)
    regs = [EtcdRegistry(opts) for _ in range(nodes)]
    for r in regs:  # connect up front: measure acquisition, not channel set-up
        r.list_leases(with_expiration=False)
    barrier = threading.Barrier(nodes + 1)
    results, errors = [], []

    def run(i: int) -> None:
        barrier.wait()
        try:
            results.append(SubnetManager(regs[i], CFG, node_attrs(i), ttl=600).acquire())
        except Exception as e:  # noqa: BLE001  (any failure is collected and reported below)
            errors.append(repr(e))
    threads = [threading.Thread(target=run, args=(i,)) for i in range(nodes)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    logging.getLogger("overlay.subnet.manager").removeHandler(counter)
    distinct = len({lease.subnet for lease in results})
    stored = len(admin.list_leases(with_expiration=False)[0])
    for r in regs:
        r.close()

    clear(admin)
    subnets = list(CFG.iter_subnets())[:nodes]
    t0 = time.perf_counter()
    for i, s in enumerate(subnets):
        admin.create_lease(s, node_attrs(i), 600)
    anchor = time.perf_counter() - t0
    clear(admin)
    admin.close()
    return {"nodes": nodes, "wall_s": wall, "errors": errors, "distinct": distinct,
            "stored": stored, "lost_races": counter.lost, "anchor_sequential_writes_s": anchor,
            "ratio_vs_anchor": wall / anchor}


def bench_watch(opts, samples: int) -> dict:
    writer, watcher_reg = EtcdRegistry(opts), EtcdRegistry(opts)
    clear(writer)
    mgr = SubnetManager(watcher_reg, CFG, node_attrs(9999))
    seen: dict[IPv4Network | IPv6Network, float] = {}
    cond = threading.Condition()

    def on_batch(batch) -> None:
        now = time.perf_counter()
        with cond:
            for lease in batch.added:
                seen.setdefault(lease.subnet, now)
            cond.notify_all()
    stop = threading.Event()
    t = threading.Thread(target=mgr.run_watch, args=(lambda: None, stop, on_batch), daemon=True)
    t.start()
    time.sleep(0.5)  # listing done, watch open
    subnets = list(CFG.iter_subnets())[:samples]
    lat, create_rtt = [], []
    for i, s in enumerate(subnets):
        t0 = time.perf_counter()
        writer.create_lease(s, node_attrs(i), 600)
        create_rtt.append(time.perf_counter() - t0)
        with cond:
            if not cond.wait_for(partial(seen.__contains__, s), timeout=5):
                raise RuntimeError(f"watch never reported {s}")
            lat.append(seen[s] - t0)
    stop.set()
    t.join(3)
    # Anchor: etcd's own round trip for one put, same client, same run.
    client = writer.client()
    rtt = []
    for i in range(samples):
        t0 = time.perf_counter()
        client.put(writer.subnets_prefix + "bench-rtt", str(i))
        rtt.append(time.perf_counter() - t0)
    client.delete(writer.subnets_prefix + "bench-rtt")
    clear(writer)
    writer.close()
    watcher_reg.close()
    return {"samples": samples, "median_ms": 1000 * statistics.median(lat),
            "p99_ms": 1000 * _pct(lat, 99), "max_ms": 1000 * max(lat),
            "create_lease_rtt_median_ms": 1000 * statistics.median(create_rtt),
            "anchor_put_rtt_median_ms": 1000 * statistics.median(rtt),
            "anchor_put_rtt_p99_ms": 1000 * _pct(rtt, 99)}


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--etcd-endpoints", help="use this etcd (keys under --etcd-prefix are "
                    "deleted!) instead of starting one on a free loopback port")
    ap.add_argument("--etcd-prefix", default="/ovlease-bench/network")
    ap.add_argument("--nodes", type=int, default=200)
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=1, help="repeat the acquisition run")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()
    server = None
    if args.etcd_endpoints:
        endpoints = args.etcd_endpoints
    else:
        from tests.integration.support.etcd_server import EtcdServer
        server = EtcdServer(name="ovlease-bench").start()
        endpoints = server.endpoint
    try:
        opts = make_etcd_options(endpoints, prefix=args.etcd_prefix, timeout=10.0)
        acquire = [bench_acquire(opts, args.nodes) for _ in range(args.repeat)]
        watch = bench_watch(opts, args.samples)
    finally:
        if server is not None:
            server.cleanup()
    report = {"acquire": acquire, "watch": watch}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for a in acquire:
            print(f"{a['nodes']} concurrent acquisitions: {a['wall_s']:.3f} s wall, "
                  f"{a['distinct']} distinct subnets ({a['stored']} stored), "
                  f"{a['lost_races']} lost races retried, {len(a['errors'])} errors; "
                  f"anchor {a['nodes']} sequential raw creates "
                  f"{a['anchor_sequential_writes_s']:.3f} s -> ratio {a['ratio_vs_anchor']:.2f}")
        w = watch
        print(f"watch latency put -> on_batch on another node ({w['samples']} samples): "
              f"median {w['median_ms']:.2f} ms, p99 {w['p99_ms']:.2f} ms, "
              f"max {w['max_ms']:.2f} ms; "
              f"the writer's create_lease (grant + txn) takes "
              f"{w['create_lease_rtt_median_ms']:.2f} ms median; anchor etcd put round trip "
              f"median {w['anchor_put_rtt_median_ms']:.2f} ms, "
              f"p99 {w['anchor_put_rtt_p99_ms']:.2f} ms")
    ok = all(not a["errors"] and a["distinct"] == a["nodes"] for a in acquire)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
