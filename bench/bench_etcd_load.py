#!/usr/bin/env python3
"""etcd under 100 to 1000 simulated nodes: its CPU, its fsyncs and a put's fan-out (issue 15).

One etcd (loopback, data on disk under /var/tmp, prefix ``ovload-``) per run and, for
``--duration`` seconds, ``--nodes`` simulated nodes that load etcd as overlayd does (the
``branch`` model, the default; its figures come from the product's own constants):

- five Watch streams per node, as overlayd opens: the lease watch on ``subnets/`` (which
  also feeds the pod-lease GC), the config key, and the policy agent's ``policies/``,
  ``namespaces/`` and ``pods/``.  Only the lease watch asks for progress, after
  ``progress_interval(--watch-lag-limit)`` s without an answer (an event resets it);
- a heartbeat: one LeaseKeepAlive stream per ``--heartbeat-period`` (a new stream per
  keepalive, as ``ObjectStore.keepalive`` opens one) on a lease of two periods; the
  node's record is written once at start (it changes only when the node's state does) and
  read back every ``RECORD_REFRESH`` s;
- its subnet lease, renewed ``--renew-margin`` s before its ``--lease-ttl`` expires
  (Flannel's defaults, 86400/3600: one renewal per node per 23 h), from the parent;
- with ``--pods-per-node P``, P pod records per node, and the pod publisher's reads: every
  ``RESYNC`` s the keys of this node's P pods in one read-only Txn (per 64 keys), and every
  ``FULL_RESYNC`` s (in all, spread over the nodes) one listing of every pod record.

``--model main`` is overlayd before the pod registry's change: a sixth stream per node (the
pod-lease GC's own watch of ``subnets/``) and, with pods, a listing of every pod record by
every node every ``RESYNC`` s.  ``--model progress-all`` is main with all six streams asking
for progress every ``min(5, limit/4)`` s, answered or not (overlayd before the
watch-progress change); ``--model key-reads`` is branch reading each pod key with a Range of
its own (overlayd before ``ObjectStore.get_many``); ``--heartbeat-put`` adds a put of the
record per heartbeat (what this benchmark simulated first).  A probe puts a lease key every
``--probe-interval`` s; its fan-out latency is the time from just before the put to each
lease watch's receipt (p99 target < 500 ms), and to the first one (etcd's own part).  The
probe's events do not put a progress request off (a real cluster's lease watches are quiet:
renewals are about one event per node per 80 s at 1000 nodes).

The simulator is asyncio on grpc.aio, ``--procs`` processes: a receipt costs one Python
callback, not a thread switch, so it leaves the two cores to etcd.  It reports its own
CPU and its event loops' lag (how late a 50 ms timer fires: the receive queue's part).
Reported over the measured window: etcd's CPU-seconds per second (/proc), WAL fsyncs and
backend commits (count, mean, p99 bucket from etcd's /metrics), the requests sent, the
watchers and the largest count of slow watchers etcd saw.  Bounded: each simulator
process stops at its own deadline even if this one is gone.

    sudo .venv/bin/python bench/bench_etcd_load.py --nodes 100,300,1000 --runs 3 \\
        --out bench/results/etcd_load.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from multiprocessing.connection import Connection
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import grpc  # noqa: E402
import pyetcd  # noqa: E402
from pyetcd import etcdrpc  # noqa: E402

from overlay.cluster.keys import (  # noqa: E402
    heartbeat_key,
    namespaces_prefix,
    node_key,
    pods_prefix,
    policies_prefix,
)
from overlay.cluster.pods import SOURCE_CNI, Label, PodRecord, encode_pod  # noqa: E402
from overlay.cluster.store import GET_MANY  # noqa: E402
from overlay.daemon.flags import DEFAULT_HEARTBEAT_PERIOD  # noqa: E402
from overlay.daemon.nodestatus import RECORD_REFRESH  # noqa: E402
from overlay.daemon.podpublisher import FULL_RESYNC, RESYNC  # noqa: E402
from overlay.daemon.watchhealth import DEFAULT_MAX_LAG, progress_interval  # noqa: E402
from overlay.lease import Lease, LeaseAttrs  # noqa: E402
from overlay.subnet.etcdconf import make_etcd_options  # noqa: E402
from overlay.subnet.registry import EtcdRegistry  # noqa: E402
from tests.integration.support.etcd_server import EtcdServer  # noqa: E402

PREFIX = "/ovload/network"
PROBE_KEY = f"{PREFIX}/subnets/10.255.255.0-24".encode()
DRAIN = 2.0  # seconds after the last probe put for its deliveries
SETUP_TIMEOUT = 120.0  # seconds for a simulator process to open its streams
LOOP_TICK = 0.05  # the event-loop lag probe's timer
HISTOGRAMS = ("etcd_disk_wal_fsync_duration_seconds", "etcd_disk_backend_commit_duration_seconds")
COUNTERS = ("etcd_server_proposals_committed_total", "grpc_server_handled_total",
            "grpc_server_msg_received_total")
SLOW = "etcd_debugging_mvcc_slow_watcher_total"
MODELS = {"branch": "overlayd now (the default): five streams, a node reads its own pods' "
                    "keys, all pods listed every FULL_RESYNC s",
          "main": "overlayd before: a sixth stream (the pod-lease GC's subnets watch), "
                  "every node lists every pod every RESYNC s",
          "progress-all": "main, with all six streams asking for progress every 5 s",
          "key-reads": "branch, with a node's own pod keys read one Range each (overlayd "
                       "before ObjectStore.get_many: one read-only Txn per 64 keys)"}
_SAMPLE = re.compile(r'^([a-z_]+)(?:\{([^}]*)\})? ([0-9.e+-]+|\+Inf)$')


# ---- etcd's side: /metrics and /proc -----------------------------------------------------

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


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kb / 1024


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class SlowWatchers(threading.Thread):
    """The largest number of slow watchers (etcd could not send to them at once) seen,
    sampled every 2 s (a scrape costs etcd a few ms)."""

    def __init__(self, url: str, stop: threading.Event):
        super().__init__(daemon=True)
        self.url, self.stop, self.most = url, stop, 0.0

    def run(self) -> None:
        while not self.stop.wait(2.0):
            try:
                self.most = max(self.most, metric(scrape(self.url), SLOW))
            except OSError:
                continue


# ---- one simulator process ------------------------------------------------------------

@dataclass(frozen=True)
class Share:
    """One simulator process's part of the nodes, and how they behave."""

    endpoint: str  # host:port
    names: tuple[str, ...]
    channels: int
    model: str  # one of MODELS
    heartbeat_period: float
    heartbeat_put: bool
    lag_limit: float
    pods: int  # pod records per node (the pod publisher's reads: see the docstring)
    deadline: float  # time.monotonic() at which the process stops whatever happens


def watch_keys(prefix: str, gc_watch: bool = False) -> list[tuple[bytes, bytes]]:
    """overlayd's watches as (key, range_end); the first is the lease watch, then (the
    ``main`` models) the pod-lease GC's own."""
    subnets = f"{prefix}/subnets/".encode()
    prefixes = [subnets, *([subnets] if gc_watch else []), policies_prefix(prefix).encode(),
                namespaces_prefix(prefix).encode(), pods_prefix(prefix).encode()]
    ranges = [(p, pyetcd.utils.prefix_range_end(p)) for p in prefixes]
    return [*ranges[:-3], (f"{prefix}/config".encode(), b""), *ranges[-3:]]


class Node:
    """One simulated overlayd's streams and timers' state."""

    def __init__(self, name: str, channel: Any):
        self.name, self.channel = name, channel
        self.watches: list[Any] = []  # grpc.aio stream calls, the lease watch first
        self.heard: list[float] = []  # per watch: last answer or progress request
        self.lease = 0


class Sim:
    def __init__(self, share: Share):
        self.s = share
        self.counts = {"keepalives": 0, "heartbeat_puts": 0, "record_reads": 0,
                       "progress_requests": 0, "lease_watch_events": 0, "other_watch_events": 0,
                       "pod_listings": 0, "pod_records_listed": 0, "pod_key_reads": 0}
        self.receipts: list[tuple[int, float]] = []  # (revision, receipt time), lease watches
        self.loop_lag: list[float] = []
        self.measuring = self.stopping = False
        self.failures: list[str] = []
        self.gc_watch = share.model not in ("branch", "key-reads")
        if share.model != "progress-all":
            self.progress_every, self.progress_on = progress_interval(share.lag_limit), 1
        else:
            self.progress_every, self.progress_on = min(5.0, share.lag_limit / 4), 6

    async def open(self, channels: list[Any]) -> list[Node]:
        ttl = max(1, round(2 * self.s.heartbeat_period))  # the product's heartbeat TTL
        nodes = [Node(n, channels[i % len(channels)]) for i, n in enumerate(self.s.names)]
        sem = asyncio.Semaphore(50)
        created: list[asyncio.Future[None]] = []

        async def one(node: Node) -> None:
            async with sem:
                kv, lease = etcdrpc.KVStub(node.channel), etcdrpc.LeaseStub(node.channel)
                node.lease = (await lease.LeaseGrant(etcdrpc.LeaseGrantRequest(TTL=ttl))).ID
                await kv.Put(etcdrpc.PutRequest(key=heartbeat_key(PREFIX, node.name).encode(),
                                                value=b"{}", lease=node.lease))
                await kv.Put(etcdrpc.PutRequest(key=node_key(PREFIX, node.name).encode(),
                                                value=self.record(node)))
                for i, (key, end) in enumerate(watch_keys(PREFIX, self.gc_watch)):
                    done = asyncio.get_running_loop().create_future()
                    created.append(done)
                    call = etcdrpc.WatchStub(node.channel).Watch()
                    await call.write(etcdrpc.WatchRequest(create_request=etcdrpc.
                                     WatchCreateRequest(key=key, range_end=end,
                                                        prev_kv=True, progress_notify=True)))
                    node.watches.append(call)
                    node.heard.append(0.0)
                    asyncio.create_task(self.read(node, i, done))
        await asyncio.gather(*(one(n) for n in nodes))
        await asyncio.gather(*created)
        now = time.monotonic()
        for node in nodes:  # answered at creation; spread the first requests over a period
            node.heard = [now - random.uniform(0, self.progress_every) for _ in node.heard]
        return nodes

    def record(self, node: Node) -> bytes:
        return json.dumps({"name": node.name, "ready": True, "reason": "",
                           "heartbeat_ttl": round(2 * self.s.heartbeat_period)}).encode()

    async def read(self, node: Node, i: int, created: asyncio.Future[None]) -> None:
        counter = "lease_watch_events" if i == 0 else "other_watch_events"
        coalesce = self.s.model != "progress-all"  # an answer puts the next request off
        try:
            async for resp in node.watches[i]:
                now = time.monotonic()
                if resp.created and not created.done():
                    created.set_result(None)
                if coalesce and not (resp.events and all(
                        ev.kv.key == PROBE_KEY for ev in resp.events)):
                    node.heard[i] = now  # the probe's puts do not: a real cluster is quiet
                if resp.events:
                    self.counts[counter] += len(resp.events)
                    if i == 0 and self.measuring:
                        self.receipts.extend((int(ev.kv.mod_revision), now)
                                             for ev in resp.events)
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            if time.monotonic() < self.s.deadline and not self.stopping:
                self.failures.append(f"{node.name}: watch {i} ended")
            if not created.done():
                created.set_exception(RuntimeError(f"{node.name}: watch {i} failed"))

    async def spread(self, nodes: list[Node], period: float, act: Any) -> None:
        """``act(node)`` for every node once per ``period``, evenly spread."""
        if not nodes:
            return
        gap, nxt = period / len(nodes), time.monotonic() + random.uniform(0, period / len(nodes))
        while True:
            for node in nodes:
                nxt += gap
                await asyncio.sleep(max(0.0, nxt - time.monotonic()))
                asyncio.create_task(self.guarded(act, node))

    async def guarded(self, act: Any, node: Node) -> None:
        try:
            await act(node)
        except grpc.aio.AioRpcError as e:
            if not self.stopping:
                self.failures.append(f"{node.name}: {act.__name__}: {e.code().name}")

    async def keepalive(self, node: Node) -> None:
        stub = etcdrpc.LeaseStub(node.channel)
        call = stub.LeaseKeepAlive(iter([etcdrpc.LeaseKeepAliveRequest(ID=node.lease)]))
        async for _ in call:  # the one answer, then etcd ends the stream
            pass
        self.counts["keepalives"] += 1
        if self.s.heartbeat_put:
            await etcdrpc.KVStub(node.channel).Put(etcdrpc.PutRequest(
                key=node_key(PREFIX, node.name).encode(), value=self.record(node)))
            self.counts["heartbeat_puts"] += 1

    async def read_back(self, node: Node) -> None:
        await etcdrpc.KVStub(node.channel).Range(etcdrpc.RangeRequest(
            key=node_key(PREFIX, node.name).encode()))
        self.counts["record_reads"] += 1

    async def read_own_pods(self, node: Node) -> None:
        """The pod publisher's resync: the keys of this node's pods, in one read-only Txn
        per 64 (``ObjectStore.get_many``), or one Range each (``key-reads``)."""
        kv, i = etcdrpc.KVStub(node.channel), int(node.name.rsplit("-", 1)[1])
        keys = [pod_name(i, j).key(PREFIX).encode() for j in range(self.s.pods)]
        if self.s.model == "key-reads":
            for key in keys:
                await kv.Range(etcdrpc.RangeRequest(key=key))
        else:
            for k in range(0, len(keys), GET_MANY):
                await kv.Txn(etcdrpc.TxnRequest(success=[
                    etcdrpc.RequestOp(request_range=etcdrpc.RangeRequest(key=key))
                    for key in keys[k:k + GET_MANY]]))
        self.counts["pod_key_reads"] += self.s.pods

    async def list_pods(self, node: Node) -> None:
        """A full listing: every pod record in the cluster, values and all (main: every
        resync; branch: every FULL_RESYNC s)."""
        key = pods_prefix(PREFIX).encode()
        resp = await etcdrpc.KVStub(node.channel).Range(etcdrpc.RangeRequest(
            key=key, range_end=pyetcd.utils.prefix_range_end(key)))
        self.counts["pod_listings"] += 1
        self.counts["pod_records_listed"] += len(resp.kvs)

    def pod_reads(self, nodes: list[Node]) -> list[Any]:
        if not self.s.pods:
            return []
        if self.s.model not in ("branch", "key-reads"):
            return [self.spread(nodes, RESYNC, self.list_pods)]
        return [self.spread(nodes, RESYNC, self.read_own_pods),
                self.spread(nodes, FULL_RESYNC, self.list_pods)]

    async def progress(self, nodes: list[Node]) -> None:
        """Every 50 ms: the watches due a progress request (silent for the interval)."""
        while True:
            await asyncio.sleep(LOOP_TICK)
            now = time.monotonic()
            for node in nodes:
                for i in range(self.progress_on):
                    if now - node.heard[i] >= self.progress_every:
                        node.heard[i] = now
                        self.counts["progress_requests"] += 1
                        asyncio.create_task(node.watches[i].write(etcdrpc.WatchRequest(
                            progress_request=etcdrpc.WatchProgressRequest())))

    async def lag_probe(self) -> None:
        while True:
            t0 = time.monotonic()
            await asyncio.sleep(LOOP_TICK)
            if self.measuring:
                self.loop_lag.append(time.monotonic() - t0 - LOOP_TICK)

    async def main(self, ctl: Connection) -> None:
        channels = [grpc.aio.insecure_channel(self.s.endpoint) for _ in range(self.s.channels)]
        loop = asyncio.get_running_loop()
        try:
            nodes = await asyncio.wait_for(self.open(channels), SETUP_TIMEOUT)
            tasks = [asyncio.create_task(c) for c in (
                self.spread(nodes, self.s.heartbeat_period, self.keepalive),
                self.spread(nodes, RECORD_REFRESH, self.read_back),
                *self.pod_reads(nodes),
                self.progress(nodes), self.lag_probe())]
            ctl.send("ready")
            while True:
                msg = await loop.run_in_executor(None, ctl.recv)
                if msg != "mark":
                    break
                self.measuring = True
                ctl.send(dict(self.counts))
            self.stopping = True
            for t in tasks:
                t.cancel()
            for node in nodes:
                for call in node.watches:
                    call.cancel()
            ctl.send((dict(self.counts), self.receipts, self.loop_lag, self.failures))
        finally:
            for c in channels:
                await c.close()


def simulate(share: Share, ctl: Connection) -> None:
    """A simulator process: its nodes until the parent says "stop" or the deadline."""
    async def bounded() -> None:
        await asyncio.wait_for(Sim(share).main(ctl), share.deadline - time.monotonic())
    with contextlib.suppress(TimeoutError, EOFError, BrokenPipeError):  # deadline, parent gone
        asyncio.run(bounded())


# ---- the parent: leases, renewals, the probe, the measurement -----------------------------

def renewals(reg: EtcdRegistry, leases: list[Lease], rate: float, stop: threading.Event,
             counts: dict[str, int]) -> None:
    """Subnet lease renewals at ``rate`` per second (nodes / (ttl - margin))."""
    if rate <= 0:
        return
    i = 0
    while not stop.wait(1 / rate):
        leases[i % len(leases)] = reg.renew_lease(leases[i % len(leases)])
        counts["renewals"] += 1
        i += 1


def probes(reg: EtcdRegistry, sent: dict[int, float], interval: float,
           stop: threading.Event) -> None:
    client = reg.client()
    key = PROBE_KEY.decode()
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


ANY_IP = IPv4Address("10.0.0.1")


def pod_name(i: int, j: int, ip: IPv4Address = ANY_IP) -> PodRecord:
    """Node ``i``'s ``j``-th pod (its key is all the simulator needs of it)."""
    return PodRecord(f"ns-{j % 10}", f"pod-{i}-{j}", (ip,), f"node-{i}",
                     f"{i:032x}{j:032x}", "eth0", {"app": Label(f"app-{j % 20}", SOURCE_CNI)})


def setup_pods(reg: EtcdRegistry, leases: list[Lease], per_node: int) -> None:
    """``per_node`` pod records per node, as its pod publisher writes them."""
    client = reg.client()
    for i, lease in enumerate(leases):
        for j in range(per_node):
            record = pod_name(i, j, IPv4Address(lease.subnet.network_address + 2 + j))
            client.put(record.key(PREFIX), encode_pod(record))


def start_simulators(a: argparse.Namespace, nodes: int, model: str, endpoint: str
                     ) -> list[tuple[Any, Connection]]:
    ctx = multiprocessing.get_context("spawn")  # never fork a process holding gRPC
    names = [f"node-{i}" for i in range(nodes)]
    deadline = time.monotonic() + SETUP_TIMEOUT + a.heartbeat_period + a.duration + 60
    out = []
    for p in range(a.procs):
        share = Share(endpoint.split("//", 1)[1], tuple(names[p::a.procs]),
                      max(1, a.channels // a.procs), model, a.heartbeat_period,
                      a.heartbeat_put, a.watch_lag_limit, a.pods_per_node, deadline)
        mine, theirs = ctx.Pipe()
        proc = ctx.Process(target=simulate, args=(share, theirs), daemon=True)
        proc.start()
        out.append((proc, mine))
    for _, conn in out:
        if not conn.poll(SETUP_TIMEOUT + 10) or conn.recv() != "ready":
            raise RuntimeError("a simulator process did not get its watchers ready")
    return out


def gather(sims: list[tuple[Any, Connection]], msg: str) -> list[Any]:
    for _, conn in sims:
        conn.send(msg)
    return [conn.recv() for _, conn in sims]


def p99(v: list[float]) -> float:
    return v[min(len(v) - 1, int(0.99 * len(v)))] if v else float("nan")


def fanout(sent: dict[int, float], receipts: list[tuple[int, float]],
           nodes: int) -> dict[str, float]:
    by_put: dict[int, list[float]] = {}
    for rev, now in receipts:
        if rev in sent:
            by_put.setdefault(rev, []).append(now - sent[rev])
    lat = sorted(v for vs in by_put.values() for v in vs)
    first = sorted(min(vs) for vs in by_put.values())  # etcd's own part, mostly
    ms = lambda x: 1000 * x  # noqa: E731
    return {"puts": len(sent), "deliveries": len(lat), "expected": len(sent) * nodes,
            "median_ms": ms(statistics.median(lat)) if lat else float("nan"),
            "p99_ms": ms(p99(lat)), "max_ms": ms(lat[-1]) if lat else float("nan"),
            "first_median_ms": ms(statistics.median(first)) if first else float("nan"),
            "first_p99_ms": ms(p99(first))}


def run(a: argparse.Namespace, nodes: int, model: str, server: EtcdServer) -> dict[str, Any]:
    assert server.proc is not None, "etcd was started"
    reg = EtcdRegistry(make_etcd_options(server.endpoint, prefix=PREFIX, timeout=10.0))
    stop, probe_stop = threading.Event(), threading.Event()
    sent: dict[int, float] = {}
    counts = {"renewals": 0}
    sims: list[tuple[Any, Connection]] = []
    url = f"{server.endpoint}/metrics"
    try:
        leases = setup_leases(reg, nodes, a.lease_ttl)
        setup_pods(reg, leases, a.pods_per_node)
        sims = start_simulators(a, nodes, model, server.endpoint)
        renewer = threading.Thread(target=renewals, daemon=True, args=(
            reg, leases, nodes / max(1, a.lease_ttl - a.renew_margin), stop, counts))
        renewer.start()
        time.sleep(a.heartbeat_period)  # every node has sent a heartbeat: steady state
        prober = threading.Thread(target=probes, daemon=True,
                                  args=(reg, sent, a.probe_interval, probe_stop))
        slow = SlowWatchers(url, stop)
        pids = [server.proc.pid, os.getpid(), *(p.pid for p, _ in sims)]
        before, cpu0, t0 = scrape(url), [cpu_seconds(p) for p in pids], time.monotonic()
        base = gather(sims, "mark")
        renewed0 = counts["renewals"]
        prober.start()
        slow.start()
        time.sleep(a.duration)
        probe_stop.set()
        prober.join(10)
        time.sleep(DRAIN)  # the last puts reach every watcher
        after, cpu1, t1 = scrape(url), [cpu_seconds(p) for p in pids], time.monotonic()
        etcd_rss = rss_mb(server.proc.pid)
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
    done = {k: sum(r[0][k] - b[k] for r, b in zip(results, base, strict=True)) / secs
            for k in base[0]}
    done["renewals"] = renewed / secs
    done["probe_puts"] = len(sent) / secs
    lag = sorted(x for r in results for x in r[2])
    return {
        "nodes": nodes, "model": model, "procs": a.procs, "channels": a.channels,
        "duration_s": secs, "heartbeat_period_s": a.heartbeat_period,
        "heartbeat_put": a.heartbeat_put, "watch_lag_limit_s": a.watch_lag_limit,
        "pods_per_node": a.pods_per_node,
        "lease_ttl_s": a.lease_ttl, "renew_margin_s": a.renew_margin,
        "etcd_cpu_s_per_s": (cpu1[0] - cpu0[0]) / secs, "etcd_rss_mb": etcd_rss,
        "simulator_cpu_s_per_s": sum(c1 - c0 for c0, c1 in zip(cpu0[1:], cpu1[1:],
                                                                 strict=True)) / secs,
        "simulator_loop_lag_ms": {"p99": 1000 * p99(lag), "max": 1000 * lag[-1] if lag else 0},
        "rates_per_s": done,
        "proposals_per_s": (metric(after, COUNTERS[0]) - metric(before, COUNTERS[0])) / secs,
        "grpc_calls_per_s": (metric(after, COUNTERS[1]) - metric(before, COUNTERS[1])) / secs,
        "grpc_msgs_received_per_s": (metric(after, COUNTERS[2])
                                     - metric(before, COUNTERS[2])) / secs,
        "watchers": metric(after, "etcd_debugging_mvcc_watcher_total"),
        "slow_watchers_max": slow.most,
        "wal_fsync": histogram(before, after, HISTOGRAMS[0], secs),
        "backend_commit": histogram(before, after, HISTOGRAMS[1], secs),
        "fanout": fanout(sent, [x for r in results for x in r[1]], nodes),
        "failures": [f for r in results for f in r[3]][:20],
    }


def show(r: dict[str, Any]) -> str:
    f, w, b = r["fanout"], r["wal_fsync"], r["backend_commit"]
    rates = ", ".join(f"{k} {v:.1f}/s" for k, v in r["rates_per_s"].items() if v)
    ok = f["p99_ms"] < 500 and f["deliveries"] == f["expected"]
    return "\n".join([
        f"{r['nodes']} nodes, model {r['model']}, heartbeat {r['heartbeat_period_s']:g} s"
        f"{' + put' if r['heartbeat_put'] else ''}; {r['watchers']:.0f} watchers, "
        f"{r['duration_s']:.0f} s measured: {rates}",
        f"  {r['proposals_per_s']:.0f} raft proposals/s, {r['grpc_msgs_received_per_s']:.0f} "
        f"gRPC messages in/s; etcd CPU {r['etcd_cpu_s_per_s']:.3f} s/s, RSS "
        f"{r['etcd_rss_mb']:.0f} MB; simulator "
        f"{r['simulator_cpu_s_per_s']:.3f} s/s (loop lag p99 "
        f"{r['simulator_loop_lag_ms']['p99']:.1f} ms); slow watchers <= "
        f"{r['slow_watchers_max']:.0f}",
        f"  WAL fsync {w['per_s']:.1f}/s mean {w['mean_ms']:.2f} ms p99 <= {w['p99_le_ms']:.1f} "
        f"ms; backend commit {b['per_s']:.1f}/s mean {b['mean_ms']:.2f} ms p99 <= "
        f"{b['p99_le_ms']:.1f} ms",
        f"  fan-out of {f['puts']} puts ({f['deliveries']}/{f['expected']} deliveries): "
        f"median {f['median_ms']:.1f} ms p99 {f['p99_ms']:.1f} ms max {f['max_ms']:.1f} ms "
        f"(first watcher: median {f['first_median_ms']:.1f} ms, p99 {f['first_p99_ms']:.1f} "
        f"ms) -> p99 < 500 ms {'MET' if ok else 'NOT MET'}"
        + (f"; {len(r['failures'])} stream failures" if r["failures"] else ""),
    ])


def one_run(a: argparse.Namespace, nodes: int, model: str) -> dict[str, Any]:
    data = tempfile.mkdtemp(prefix="ovload-etcd-", dir="/var/tmp")  # on disk: real fsyncs
    server = EtcdServer(name="ovload", data_dir=data,
                        extra_args=["--quota-backend-bytes", str(2 << 30)]).start()
    try:
        return run(a, nodes, model, server)
    finally:
        server.cleanup()
        shutil.rmtree(data, ignore_errors=True)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--nodes", default="1000", help="comma-separated node counts")
    ap.add_argument("--runs", type=int, default=1, help="runs per node count and model")
    ap.add_argument("--model", default="branch", help="comma-separated, of " + "; ".join(
        f"{k}: {v}" for k, v in MODELS.items()))
    ap.add_argument("--procs", type=int, default=2, help="simulator processes")
    ap.add_argument("--channels", type=int, default=20, help="gRPC connections in all")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds measured per run")
    ap.add_argument("--heartbeat-period", type=float, default=DEFAULT_HEARTBEAT_PERIOD)
    ap.add_argument("--heartbeat-put", action="store_true",
                    help="also put the record at every heartbeat (not what overlayd does)")
    ap.add_argument("--watch-lag-limit", type=float, default=DEFAULT_MAX_LAG)
    ap.add_argument("--lease-ttl", type=int, default=86400)
    ap.add_argument("--renew-margin", type=int, default=3600)
    ap.add_argument("--probe-interval", type=float, default=0.5)
    ap.add_argument("--pods-per-node", type=int, default=0,
                    help="pod records per node, read as the model's pod publisher reads "
                    f"them (main: all, by every node every {RESYNC:g} s; default 0: no pods)")
    ap.add_argument("--out", help="write every run's figures here as JSON")
    ap.add_argument("--json", action="store_true", help="print JSON instead of text")
    a = ap.parse_args()
    try:
        a.node_counts = [int(n) for n in a.nodes.split(",")]
    except ValueError:
        ap.error(f"--nodes {a.nodes!r}: comma-separated integers")
    a.models = a.model.split(",")
    if not (all(1 <= n <= 5000 for n in a.node_counts) and 1 <= a.runs <= 10
            and set(a.models) <= set(MODELS) and 1 <= a.duration <= 300
            and 0.5 <= a.heartbeat_period <= 3600 and 0 < a.renew_margin < a.lease_ttl
            and 0.2 <= a.watch_lag_limit <= 86400 and 1 <= a.procs <= 8
            and a.procs <= a.channels <= 1000 and a.probe_interval >= 0.05
            and 0 <= a.pods_per_node <= 30):
        ap.error("need 1 <= nodes <= 5000, 1 <= runs <= 10, known models, 1 <= "
                 "duration <= 300 s, heartbeat period 0.5..3600 s, 0 < renew margin < lease "
                 "TTL, watch lag limit 0.2..86400 s, 1 <= procs <= 8, procs <= channels <= "
                 "1000, probe interval >= 0.05 s, 0 <= pods per node <= 30")
    return a


def main() -> int:
    a = parse_args()
    reports = []
    for nodes in a.node_counts:
        for _ in range(a.runs):
            for model in a.models:  # interleaved: a noisy minute hits both models
                r = one_run(a, nodes, model)
                reports.append(r)
                print(json.dumps(r, indent=2) if a.json else show(r), flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"command": " ".join(sys.argv), "args": {
                k: v for k, v in vars(a).items() if k not in ("node_counts", "models")},
                "load_average": os.getloadavg(), "runs": reports}, f, indent=1)
    return 0 if all(r["fanout"]["p99_ms"] < 500 and not r["failures"] for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
