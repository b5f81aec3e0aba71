#!/usr/bin/env python3
"""etcd under 1000 simulated nodes: its CPU, its fsyncs and a put's fan-out (issue 15).

One etcd (loopback, data on disk under /var/tmp, prefix ``ovload-``) and, for
``--duration`` seconds, ``--nodes`` simulated nodes, each as overlayd and the node-status
feature will load etcd:

- a watch on ``<prefix>/subnets/`` (the lease watch, asking for progress every 5 s as
  overlayd's does): one gRPC Watch stream per node,
  spread over ``--channels`` connections (a real node has one connection each: etcd's
  per-event work is per watcher, its per-connection work is framing);
- its subnet lease, renewed ``--renew-margin`` s before its ``--lease-ttl`` expires
  (Flannel's defaults, 86400/3600, are one renewal per node per 23 h);
- a heartbeat ``<prefix>/heartbeats/<node>`` on a short etcd lease (``--heartbeat-ttl``)
  refreshed every ``--heartbeat-period`` s: one keepalive and one put of the node's
  status, spread evenly over the period.
A probe puts a lease key every ``--probe-interval`` s; its fan-out latency is the time
from just before the put to each watcher's receipt (p99 target < 500 ms).

Reported over the measured window (after set-up): etcd's CPU-seconds per second (from
/proc), its WAL fsyncs and backend commits (count, mean, p99 from etcd's /metrics
histograms), the requests per second, the simulator's own CPU (``--procs`` processes,
so its threads do not queue for one interpreter; they share the two cores with etcd)
and the watchers etcd counts.  Bounded: every process and thread stops at the deadline.

    sudo .venv/bin/python bench/bench_etcd_load.py [--nodes 1000] [--duration 30] [--json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from multiprocessing.connection import Connection
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import grpc  # noqa: E402
import pyetcd  # noqa: E402
from pyetcd import etcdrpc  # noqa: E402

from overlay.cluster.keys import heartbeat_key  # noqa: E402
from overlay.cluster.store import ObjectStore  # noqa: E402
from overlay.lease import Lease, LeaseAttrs  # noqa: E402
from overlay.subnet.etcdconf import make_etcd_options  # noqa: E402
from overlay.subnet.registry import WATCH_PROGRESS_INTERVAL, EtcdRegistry  # noqa: E402
from tests.integration.support.etcd_server import EtcdServer  # noqa: E402

PREFIX = "/ovload/network"
DRAIN = 2.0  # seconds after the last probe put for its deliveries
HISTOGRAMS = ("etcd_disk_wal_fsync_duration_seconds", "etcd_disk_backend_commit_duration_seconds")
COUNTERS = ("etcd_server_proposals_committed_total", "grpc_server_handled_total")
_SAMPLE = re.compile(r'^([a-z_]+)(?:\{([^}]*)\})? ([0-9.e+-]+|\+Inf)$')


def scrape(url: str) -> dict[str, list[tuple[str, float]]]:
    """etcd's /metrics: name -> [(labels, value)]."""
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    out: dict[str, list[tuple[str, float]]] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m:
            out.setdefault(m.group(1), []).append((m.group(2) or "", float(m.group(3))))
    return out


def metric(m: dict[str, list[tuple[str, float]]], name: str) -> float:
    return sum(v for _, v in m.get(name, []))


def histogram(before: dict, after: dict, name: str, seconds: float) -> dict[str, float]:
    """Count per second, mean and p99 (bucket upper bound) of a histogram over the window."""
    count = metric(after, name + "_count") - metric(before, name + "_count")
    total = metric(after, name + "_sum") - metric(before, name + "_sum")
    old = dict(before.get(name + "_bucket", []))
    buckets = sorted((_le(labels), v - old.get(labels, 0))
                     for labels, v in after.get(name + "_bucket", []))
    p99 = next((le for le, c in buckets if count and c >= 0.99 * count), float("nan"))
    return {"per_s": count / seconds, "mean_ms": 1000 * total / count if count else 0.0,
            "p99_le_ms": 1000 * p99}


def _le(labels: str) -> float:
    """A bucket's upper bound from its labels (``le="0.004"``)."""
    m = re.search(r'le="([^"]+)"', labels)
    return float(m.group(1)) if m else float("inf")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Share:
    """One simulator process's part of the nodes."""

    endpoint: str
    names: tuple[str, ...]
    channels: int
    heartbeat_workers: int
    heartbeat_period: float
    heartbeat_ttl: int
    heartbeat_put: bool


def watch_requests(key: bytes, stop: threading.Event) -> Iterator[Any]:
    """As overlayd's lease watch: create, then a progress request every 5 s."""
    yield etcdrpc.WatchRequest(create_request=etcdrpc.WatchCreateRequest(
        key=key, range_end=pyetcd.utils.prefix_range_end(key)))
    while not stop.wait(WATCH_PROGRESS_INTERVAL):
        yield etcdrpc.WatchRequest(progress_request=etcdrpc.WatchProgressRequest())


def watcher(channel: Any, key: bytes, receipts: list[tuple[int, float]],
            stop: threading.Event, ready: threading.Semaphore) -> None:
    """One node's lease watch: every event's receipt time, by the put's revision."""
    call = etcdrpc.WatchStub(channel).Watch(watch_requests(key, stop))
    threading.Thread(target=lambda: (stop.wait(), call.cancel()), daemon=True).start()
    try:
        for resp in call:
            if resp.created:
                ready.release()
            now = time.monotonic()
            for ev in resp.events:
                receipts.append((int(ev.kv.mod_revision), now))  # atomic: one list, the GIL
    except grpc.RpcError:  # cancelled at the deadline; anything before it is a failure
        if not stop.is_set():
            raise


_COUNT_LOCK = threading.Lock()


def count(counts: dict[str, int], what: str) -> None:
    with _COUNT_LOCK:  # many threads: ``+=`` on a dict item is not atomic
        counts[what] += 1


def heartbeats(store: ObjectStore, nodes: Sequence[str], period: float, ttl: int,
               put: bool, stop: threading.Event, counts: dict[str, int]) -> None:
    """Each node in ``nodes`` every ``period`` s, evenly spread: keepalive (+ put)."""
    leases = {n: store.grant(ttl) for n in nodes}
    gap = period / max(1, len(nodes))
    nxt = time.monotonic()
    while not stop.is_set():
        for n in nodes:
            if stop.wait(max(0.0, nxt - time.monotonic())):
                return
            nxt += gap
            if store.keepalive(leases[n]) == 0:  # expired while the simulator lagged
                leases[n] = store.grant(ttl)
            count(counts, "keepalives")
            if put:
                store.put(heartbeat_key(PREFIX, n), json.dumps(
                    {"node": n, "ready": True, "time": time.time()}).encode(), leases[n])
                count(counts, "puts")


def simulate(share: Share, ctl: Connection) -> None:
    """A simulator process (its own interpreter: 1000 nodes' threads in one would queue
    for one GIL): watchers and heartbeats of ``share``; answers the parent's "mark"
    with its counts, and "stop" with its counts and every receipt."""
    regs = [EtcdRegistry(make_etcd_options(share.endpoint, prefix=PREFIX, timeout=10.0))
            for _ in range(share.channels)]
    stop = threading.Event()
    receipts: list[tuple[int, float]] = []
    counts = {"keepalives": 0, "puts": 0}
    ready = threading.Semaphore(0)
    key = regs[0].subnets_prefix.encode()
    threads = [threading.Thread(target=watcher, daemon=True, args=(
        regs[i % share.channels].client().channel, key, receipts, stop, ready))
        for i in range(len(share.names))]
    w = share.heartbeat_workers
    threads += [threading.Thread(target=heartbeats, daemon=True, args=(
        ObjectStore(regs[i % share.channels]), share.names[i::w], share.heartbeat_period,
        share.heartbeat_ttl, share.heartbeat_put, stop, counts)) for i in range(w)]
    try:
        for t in threads:
            t.start()
        for _ in share.names:
            if not ready.acquire(timeout=60):
                raise RuntimeError("watchers were not all created within 60 s")
        ctl.send("ready")
        while ctl.recv() == "mark":
            with _COUNT_LOCK:
                ctl.send(dict(counts))
    finally:
        stop.set()
        for t in threads:
            t.join(5)
        for r in regs:
            r.close()
    with _COUNT_LOCK:
        ctl.send((dict(counts), receipts))


def renewals(reg: EtcdRegistry, leases: list[Lease], rate: float, stop: threading.Event,
             counts: dict[str, int]) -> None:
    """Subnet lease renewals at ``rate`` per second (nodes / (ttl - margin))."""
    if rate <= 0:
        return
    i = 0
    while not stop.wait(1 / rate):
        leases[i % len(leases)] = reg.renew_lease(leases[i % len(leases)])
        count(counts, "renewals")
        i += 1


def probes(reg: EtcdRegistry, sent: dict[int, float], interval: float,
           stop: threading.Event) -> None:
    client = reg.client()
    key = reg.subnets_prefix + "10.255.255.0-24"
    i = 0
    while not stop.wait(interval):
        value = LeaseAttrs(IPv4Address("172.31.0.1"), "vxlan", 1,
                           f"0e:ff:00:00:{i // 256 % 256:02x}:{i % 256:02x}").to_json()
        t0 = time.monotonic()
        sent[int(client.put(key, value).header.revision)] = t0
        i += 1


def setup_leases(reg: EtcdRegistry, n: int, ttl: int) -> list[Lease]:
    return [reg.create_lease(IPv4Network(f"10.{2 + i // 256}.{i % 256}.0/24"),
                             LeaseAttrs(IPv4Address("172.16.0.0") + i + 1, "vxlan", 1,
                                        f"0e:00:00:00:{i // 256:02x}:{i % 256:02x}"), ttl)
            for i in range(n)]


def start_simulators(a: argparse.Namespace, endpoint: str) -> list[tuple[Any, Connection]]:
    ctx = multiprocessing.get_context("spawn")  # never fork a process holding gRPC
    names = [f"node-{i}" for i in range(a.nodes)]
    out = []
    for p in range(a.procs):
        share = Share(endpoint, tuple(names[p::a.procs]), max(1, a.channels // a.procs),
                      max(1, a.heartbeat_workers // a.procs), a.heartbeat_period,
                      a.heartbeat_ttl, not a.no_heartbeat_put)
        mine, theirs = ctx.Pipe()
        proc = ctx.Process(target=simulate, args=(share, theirs), daemon=True)
        proc.start()
        out.append((proc, mine))
    for _, conn in out:
        if not conn.poll(120) or conn.recv() != "ready":
            raise RuntimeError("a simulator process did not get its watchers ready")
    return out


def gather(sims: list[tuple[Any, Connection]], msg: str) -> list[Any]:
    for _, conn in sims:
        conn.send(msg)
    return [conn.recv() for _, conn in sims]


def fanout(sent: dict[int, float], receipts: list[tuple[int, float]],
           nodes: int) -> dict[str, float]:
    by_put: dict[int, list[float]] = {}
    for rev, now in receipts:
        if rev in sent:
            by_put.setdefault(rev, []).append(now - sent[rev])
    lat = sorted(v for vs in by_put.values() for v in vs)
    first = sorted(min(vs) for vs in by_put.values())  # etcd's own part, mostly

    def p99(v: list[float]) -> float:
        return 1000 * v[min(len(v) - 1, int(0.99 * len(v)))] if v else float("nan")
    return {"puts": len(sent), "deliveries": len(lat), "expected": len(sent) * nodes,
            "median_ms": 1000 * statistics.median(lat) if lat else float("nan"),
            "p99_ms": p99(lat), "max_ms": 1000 * lat[-1] if lat else float("nan"),
            "first_median_ms": 1000 * statistics.median(first) if first else float("nan"),
            "first_p99_ms": p99(first)}


def run(a: argparse.Namespace, server: EtcdServer) -> dict[str, Any]:
    assert server.proc is not None, "etcd was started"
    pid = server.proc.pid
    reg = EtcdRegistry(make_etcd_options(server.endpoint, prefix=PREFIX, timeout=10.0))
    stop, probe_stop = threading.Event(), threading.Event()
    sent: dict[int, float] = {}
    counts = {"renewals": 0}
    sims: list[tuple[Any, Connection]] = []
    try:
        leases = setup_leases(reg, a.nodes, a.lease_ttl)
        sims = start_simulators(a, server.endpoint)
        renewer = threading.Thread(target=renewals, daemon=True, args=(
            reg, leases, a.nodes / max(1, a.lease_ttl - a.renew_margin), stop, counts))
        renewer.start()
        time.sleep(a.heartbeat_period)  # every node has sent a heartbeat: steady state
        prober = threading.Thread(target=probes, daemon=True,
                                  args=(reg, sent, a.probe_interval, probe_stop))
        url = f"{server.endpoint}/metrics"
        pids = [pid, os.getpid(), *(p.pid for p, _ in sims)]
        before, cpu0, t0 = scrape(url), [cpu_seconds(p) for p in pids], time.monotonic()
        base = gather(sims, "mark")
        renewed0 = counts["renewals"]
        prober.start()
        time.sleep(a.duration)
        probe_stop.set()
        prober.join(10)
        time.sleep(DRAIN)  # the last puts reach every watcher
        after, cpu1, t1 = scrape(url), [cpu_seconds(p) for p in pids], time.monotonic()
        results = gather(sims, "stop")
        renewed = counts["renewals"] - renewed0
    finally:
        stop.set()
        for proc, conn in sims:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
            conn.close()
        reg.close()
    secs = t1 - t0
    done = {k: sum(r[0][k] - b[k] for r, b in zip(results, base, strict=True))
            for k in ("keepalives", "puts")}
    done["renewals"] = renewed
    receipts = [x for _, rs in results for x in rs]
    return {
        "nodes": a.nodes, "procs": a.procs, "channels": a.channels, "duration_s": secs,
        "heartbeat_period_s": a.heartbeat_period, "heartbeat_ttl_s": a.heartbeat_ttl,
        "heartbeat_put": not a.no_heartbeat_put, "lease_ttl_s": a.lease_ttl,
        "renew_margin_s": a.renew_margin,
        "etcd_cpu_s_per_s": (cpu1[0] - cpu0[0]) / secs,
        "simulator_cpu_s_per_s": sum(c1 - c0 for c0, c1 in zip(cpu0[1:], cpu1[1:],
                                                                 strict=True)) / secs,
        "rates_per_s": {k: v / secs for k, v in done.items()},
        "proposals_per_s": (metric(after, COUNTERS[0]) - metric(before, COUNTERS[0])) / secs,
        "grpc_requests_per_s": (metric(after, COUNTERS[1]) - metric(before, COUNTERS[1])) / secs,
        "watchers": metric(after, "etcd_debugging_mvcc_watcher_total"),
        "wal_fsync": histogram(before, after, HISTOGRAMS[0], secs),
        "backend_commit": histogram(before, after, HISTOGRAMS[1], secs),
        "fanout": fanout(sent, receipts, a.nodes),
    }


def show(r: dict[str, Any]) -> str:
    f, w, b = r["fanout"], r["wal_fsync"], r["backend_commit"]
    rates = ", ".join(f"{k} {v:.0f}/s" for k, v in r["rates_per_s"].items())
    return "\n".join([
        f"{r['nodes']} simulated nodes in {r['procs']} processes over {r['channels']} "
        "connections, "
        f"{r['duration_s']:.0f} s measured ({r['watchers']:.0f} watchers in etcd): {rates}; "
        f"{r['proposals_per_s']:.0f} raft proposals/s, {r['grpc_requests_per_s']:.0f} gRPC "
        "requests/s",
        f"  etcd CPU {r['etcd_cpu_s_per_s']:.3f} s/s (simulator "
        f"{r['simulator_cpu_s_per_s']:.3f} s/s on the same 2 cores)",
        f"  WAL fsync {w['per_s']:.0f}/s mean {w['mean_ms']:.2f} ms p99 <= {w['p99_le_ms']:.1f} "
        f"ms; backend commit {b['per_s']:.1f}/s mean {b['mean_ms']:.2f} ms p99 <= "
        f"{b['p99_le_ms']:.1f} ms",
        f"  fan-out of {f['puts']} puts to every watcher ({f['deliveries']}/{f['expected']} "
        f"deliveries): median {f['median_ms']:.1f} ms p99 {f['p99_ms']:.1f} ms max "
        f"{f['max_ms']:.1f} ms (first watcher per put: median {f['first_median_ms']:.1f} ms, "
        f"p99 {f['first_p99_ms']:.1f} ms) -> target p99 < 500 ms "
        f"{'MET' if f['p99_ms'] < 500 and f['deliveries'] == f['expected'] else 'NOT MET'}",
    ])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--procs", type=int, default=4, help="simulator processes")
    ap.add_argument("--channels", type=int, default=20, help="gRPC connections in all")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds measured")
    ap.add_argument("--heartbeat-period", type=float, default=5.0)
    ap.add_argument("--heartbeat-ttl", type=int, default=15)
    ap.add_argument("--no-heartbeat-put", action="store_true",
                    help="heartbeats are keepalives only (no status put)")
    ap.add_argument("--lease-ttl", type=int, default=86400)
    ap.add_argument("--renew-margin", type=int, default=3600)
    ap.add_argument("--heartbeat-workers", type=int, default=50,
                    help="threads sending the heartbeats (each serves nodes/workers nodes)")
    ap.add_argument("--probe-interval", type=float, default=0.5)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if not (1 <= a.nodes <= 20000 and 1 <= a.channels <= a.nodes and 1 <= a.duration <= 300
            and a.heartbeat_period > 0 and 0 < a.renew_margin < a.lease_ttl
            and 1 <= a.heartbeat_workers <= a.nodes and 1 <= a.procs <= min(16, a.nodes)):
        ap.error("need 1 <= nodes <= 20000, 1 <= channels <= nodes, 1 <= duration <= 300 s, "
                 "heartbeat period > 0, 0 < renew margin < lease TTL, "
                 "1 <= heartbeat workers <= nodes, 1 <= procs <= min(16, nodes)")
    data = tempfile.mkdtemp(prefix="ovload-etcd-", dir="/var/tmp")  # on disk: real fsyncs
    server = EtcdServer(name="ovload", data_dir=data,
                        extra_args=["--quota-backend-bytes", str(2 << 30)]).start()
    try:
        report = run(a, server)
    finally:
        server.cleanup()
        shutil.rmtree(data, ignore_errors=True)
    print(json.dumps(report, indent=2) if a.json else show(report))
    return 0 if report["fanout"]["p99_ms"] < 500 else 1


if __name__ == "__main__":
    sys.exit(main())
