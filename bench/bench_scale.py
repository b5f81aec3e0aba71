#!/usr/bin/env python3
"""The control plane at scale: what N remote leases cost, N = 100 .. 10 000 (issue 15).

One topology (two node namespaces, etcd in the underlay namespace, prefix ``ovd-``)
and, per N (the leases are put once and kept for the next, larger N):

- resync ÷ anchor: a fresh daemon's resync in a fresh namespace (``ovd-bp-``): the
  daemon's own path, ``SubnetManager.run_watch`` listing the N leases in etcd, judging
  them by the acceptance rule and handing the snapshot to ``VXLANBackend.reconcile``
  (dump, diff, three netlink batches), timed from the call to the end of programming;
  beside it, in the same round, ``bench_program``'s anchor (``ip -batch`` +
  ``bridge -batch``) programming the very same remotes.  Target <= 2x at every N.
- reconcile CPU: the periodic reconcile (``reconcile()`` with the known leases: dump
  and diff) right after, its thread CPU time (user + system) per run; as a share of one
  core when it runs every 10 s.  Target <= 2 % at 5000.
- RSS: both overlayds started fresh with the default set-up (warm CNI server, reconcile
  every 10 s), their VmRSS sampled over ``--settle`` seconds once every route is in, and
  VmHWM (peak).  Targets <= 55 MB at 5000, <= 70 MB at 10 000.
- put -> route: ``--puts`` new leases put one by one while both daemons know N; the
  latency to each route on both peers (``bench_event_latency``).  Target p99 < 20 ms
  at 5000.
And once, against the same etcd (under a prefix of its own): ``--acquire`` concurrent
acquisitions, as ``bench_leases`` runs them.  Target: all distinct, < 3 s.

Writes ``scale.json``, ``scale.md`` (the table the README shows) and, with matplotlib
(the ``bench`` extra), ``scale.png`` under ``--out``.

    sudo .venv/bin/python bench/bench_scale.py [--sizes 100,1000,2000,5000,10000]
        [--rounds 3] [--puts 200] [--settle 12] [--acquire 200] [--out bench/results]
    .venv/bin/python bench/bench_scale.py --render bench/results/scale.json   # table + plot again
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from ipaddress import IPv4Address, IPv4Interface
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# the sibling benchmarks whose code this one reuses
from bench_event_latency import measure_puts, pct, route_socket  # noqa: E402
from bench_leases import bench_acquire  # noqa: E402
from bench_program import count_entries, del_ns, make_ns, open_device, run_anchor  # noqa: E402
from bench_rss import in_netns, put_leases, status_kb  # noqa: E402

from overlay.config import NetworkConfig, parse_network_config  # noqa: E402
from overlay.lease import Lease, LeaseAttrs  # noqa: E402
from overlay.subnet.etcdconf import make_etcd_options  # noqa: E402
from overlay.subnet.manager import SubnetManager  # noqa: E402
from overlay.subnet.registry import EtcdRegistry  # noqa: E402
from overlay.util.fsutil import atomic_write  # noqa: E402
from overlay.vxlan.backend import BackendSettings, Result, VXLANBackend  # noqa: E402
from tests.integration.support.ovd_topology import Node, Topology, wait_for  # noqa: E402

CONFIG = {"Network": "10.0.0.0/8", "SubnetLen": 24, "Backend": {"Type": "vxlan", "VNI": 1}}
RECONCILE_INTERVAL = 10.0  # overlayd's default --reconcile-interval
RECONCILE_RUNS = 5
# the fresh namespace's node (bench_program.make_ns's eth0), never one of the topology's
FRESH_IP = IPv4Address("192.168.1.11")
FRESH_ATTRS = LeaseAttrs(IPv4Address("192.168.200.1"), "vxlan", 1, "0e:ff:00:00:00:01")
TARGETS = {"ratio": 2.0, "rss_5000": 55.0, "rss_10000": 70.0, "p99_ms": 20.0,
           "cpu_share": 0.02, "acquire_s": 3.0}


def resync(ns: str, reg: EtcdRegistry, cfg: NetworkConfig) -> tuple[float, list[Lease],
                                                                     list[float]]:
    """(resync seconds, the remotes programmed, CPU seconds of each periodic reconcile)."""
    dev = open_device(ns)  # opening the namespace's sockets is not what is measured
    try:
        backend = VXLANBackend(dev, BackendSettings(1, FRESH_IP, IPv4Interface(f"{FRESH_IP}/16")))
        mgr = SubnetManager(reg, cfg, FRESH_ATTRS)
        stop = threading.Event()
        got: list[tuple[list[Lease], Result]] = []

        def on_snapshot(remote: list[Lease]) -> None:
            try:
                got.append((remote, backend.reconcile(remote)))
            finally:
                stop.set()  # the watch that follows returns within 0.2 s
        t0 = time.perf_counter()
        watch = threading.Thread(target=mgr.run_watch,
                                 args=(lambda: None, stop, lambda _b: None, on_snapshot))
        watch.start()
        stop.wait(300)
        took = time.perf_counter() - t0
        watch.join(10)
        assert got, "the watch listed no snapshot"
        remotes, res = got[0]
        assert res.added == 3 * len(remotes) and not res.failed, res
        cpu = []
        for _ in range(RECONCILE_RUNS):
            c0 = time.thread_time()
            res = backend.reconcile()
            cpu.append(time.thread_time() - c0)
            assert not res.added and not res.removed, res
        return took, remotes, cpu
    finally:
        dev.close()


def resync_rounds(reg: EtcdRegistry, cfg: NetworkConfig, rounds: int) -> dict[str, Any]:
    """Daemon path and anchor, one after the other in every round, each in a fresh netns."""
    ns = f"ovd-bp-{os.getpid()}"
    tmp = os.path.join("/tmp", ns)
    os.makedirs(tmp, exist_ok=True)
    out: dict[str, list[float]] = {"resync_s": [], "anchor_s": [], "reconcile_cpu_s": []}
    n = 0
    try:
        for _ in range(rounds):
            make_ns(ns)
            try:
                took, remotes, cpu = resync(ns, reg, cfg)
                n = len(remotes)
                assert count_entries(ns) == (n,) * 3, count_entries(ns)
            finally:
                del_ns(ns)
            make_ns(ns)
            try:
                anchor = run_anchor(ns, remotes, tmp)
                assert count_entries(ns) == (n,) * 3, count_entries(ns)
            finally:
                del_ns(ns)
            out["resync_s"].append(took)
            out["anchor_s"].append(anchor)
            out["reconcile_cpu_s"].extend(cpu)
    finally:
        del_ns(ns)
        for f in os.listdir(tmp):
            os.unlink(os.path.join(tmp, f))
        os.rmdir(tmp)
    ratios = [r / a for r, a in zip(out["resync_s"], out["anchor_s"], strict=True)]
    return {"remotes": n, **out, "ratio": ratios}


def proto_routes(node: Node) -> int:
    out = subprocess.run(["ip", "-n", node.ns, "route", "show", "proto", "111"],
                         capture_output=True, text=True, check=True).stdout
    return len(out.splitlines())


def daemons(topo: Topology, n_remotes: int, settle: float, puts: int,
            reg: EtcdRegistry) -> dict[str, Any]:
    """Both overlayds fresh with ``n_remotes`` each: RSS while settled, then put -> route."""
    for node in topo.nodes:
        node.start("--reconcile-interval", str(int(RECONCILE_INTERVAL)),
                   "--cni-socket", os.path.join(node.dir, "cni.sock"))
    try:
        for node in topo.nodes:
            node.wait_ready(180)
            wait_for(lambda node=node: proto_routes(node) == n_remotes, 180, interval=0.5,
                     what=f"{n_remotes} routes on {node.ns}")
        pids = [node.proc.pid for node in topo.nodes if node.proc is not None]
        rss: list[int] = []
        end = time.monotonic() + settle
        while time.monotonic() < end:
            rss.extend(status_kb(pid, "VmRSS") for pid in pids)
            time.sleep(0.5)
        hwm = max(status_kb(pid, "VmHWM") for pid in pids)
        socks = {node.ns: route_socket(node.ns) for node in topo.nodes}
        try:
            lat = measure_puts(reg, socks, puts, 0.02)
        finally:
            for s in socks.values():
                s.close()
    finally:
        for node in topo.nodes:
            node.stop()
            # the next resync lists exactly the N remotes (FRESH_IP is node 1's public IP)
            reg.delete_lease(node.subnet().network)
    allv = [v for vs in lat.values() for v in vs]
    return {"rss_mb": rss[-1] / 1024, "rss_max_mb": max(rss) / 1024, "hwm_mb": hwm / 1024,
            "puts": puts, "observed": len(allv), "expected": puts * len(socks),
            "lat_median_ms": 1000 * statistics.median(allv), "lat_p99_ms": 1000 * pct(allv, 0.99),
            "lat_max_ms": 1000 * max(allv)}


def measure(a: argparse.Namespace) -> dict[str, Any]:
    cfg = parse_network_config(CONFIG)
    topo = Topology(2).setup(CONFIG)
    per_n: list[dict[str, Any]] = []
    try:
        with in_netns(topo.underlay):  # the whole run: etcd is reachable only there
            reg = EtcdRegistry(make_etcd_options(topo.etcd.endpoint, timeout=30.0))
            done = 0
            for n in a.sizes:
                put_leases(reg, done, n)
                done = n
                row: dict[str, Any] = {"n": n, **resync_rounds(reg, cfg, a.rounds)}
                # each daemon also sees the other's lease
                row.update(daemons(topo, n + 1, a.settle, a.puts, reg))
                per_n.append(row)
                print(f"N={n}: {summarise(row)}", file=sys.stderr, flush=True)
            reg.close()
            opts = make_etcd_options(topo.etcd.endpoint, prefix="/ovscale-acquire/network",
                                     timeout=10.0)
            acquire = [bench_acquire(opts, a.acquire) for _ in range(a.rounds)]
    finally:
        topo.cleanup()
    return {"rounds": a.rounds, "sizes": per_n, "acquire": acquire, "targets": TARGETS,
            "reconcile_interval_s": RECONCILE_INTERVAL, "settle_s": a.settle}


def spread(values: list[float], scale: float = 1.0, fmt: str = ".1f") -> str:
    """Median (min-max) of ``values`` times ``scale``."""
    med = statistics.median(values) * scale
    return f"{med:{fmt}} ({min(values) * scale:{fmt}}–{max(values) * scale:{fmt}})"


def summarise(row: dict[str, Any]) -> str:
    return (f"resync {spread(row['resync_s'], 1000)} ms, anchor {spread(row['anchor_s'], 1000)} "
            f"ms, ratio {spread(row['ratio'], 1, '.2f')}; reconcile CPU "
            f"{spread(row['reconcile_cpu_s'], 1000)} ms; RSS {row['rss_max_mb']:.1f} MB "
            f"(peak {row['hwm_mb']:.1f}); put->route p99 {row['lat_p99_ms']:.1f} ms")


def table(report: dict[str, Any]) -> str:
    """The Markdown table: medians, (min–max) over the rounds."""
    lines = [
        f"Medians (min–max) of {report['rounds']} rounds per N; reconcile CPU over "
        f"{RECONCILE_RUNS} runs per round; RSS of both daemons sampled every 0.5 s over "
        f"{report.get('settle_s', 12):.0f} s once every route is in: the last sample, the "
        "largest (a periodic reconcile's dump is in flight) and VmHWM (the start-up peak); "
        "put → route over every put on both peers.", "",
        "| N | resync (ms) | anchor `ip`+`bridge -batch` (ms) | ratio (≤ 2×) | µs/lease "
        "| reconcile CPU (ms) | share of a core at 10 s (≤ 2 % at 5000) "
        "| RSS settled / max / peak (MB) | put → route median / p99 / max (ms) |",
        "|---:|---|---|---|---:|---|---:|---|---|",
    ]
    for r in report["sizes"]:
        cpu = statistics.median(r["reconcile_cpu_s"])
        lines.append(
            f"| {r['n']} | {spread(r['resync_s'], 1000)} | {spread(r['anchor_s'], 1000)} "
            f"| {spread(r['ratio'], 1, '.2f')} "
            f"| {statistics.median(r['resync_s']) / r['n'] * 1e6:.0f} "
            f"| {spread(r['reconcile_cpu_s'], 1000)} | {100 * cpu / RECONCILE_INTERVAL:.2f} % "
            f"| {r['rss_mb']:.1f} / {r['rss_max_mb']:.1f} / {r['hwm_mb']:.1f} "
            f"| {r['lat_median_ms']:.1f} / {r['lat_p99_ms']:.1f} / {r['lat_max_ms']:.1f} |")
    acq = report["acquire"]
    walls = [x["wall_s"] for x in acq]
    lines += ["", f"{acq[0]['nodes']} concurrent acquisitions (threads, one client each): "
              f"{spread(walls, 1, '.2f')} s over {len(acq)} rounds; distinct subnets "
              f"{', '.join(str(x['distinct']) for x in acq)}; lost races retried "
              f"{', '.join(str(x['lost_races']) for x in acq)}; errors "
              f"{sum(len(x['errors']) for x in acq)} (target: all distinct, < 3 s)."]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: str) -> bool:
    """Cost against N, the anchor beside the resync; False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = report["sizes"]
    ns = [r["n"] for r in rows]

    def med(key: str, scale: float = 1.0) -> list[float]:
        return [statistics.median(r[key]) * scale for r in rows]
    fig, ax = plt.subplots(2, 2, figsize=(11, 8))
    ax[0][0].plot(ns, med("resync_s", 1000), "o-", label="overlayd resync (list+judge+program)")
    ax[0][0].plot(ns, med("anchor_s", 1000), "s--", label="anchor: ip -batch + bridge -batch")
    ax[0][0].plot(ns, [2 * v for v in med("anchor_s", 1000)], ":", label="target: 2x anchor")
    ax[0][0].set(xscale="log", yscale="log", ylabel="ms", title="resync of N remotes")
    ax[0][1].plot(ns, [r["rss_mb"] for r in rows], "^-", label="RSS (settled)")
    ax[0][1].plot(ns, [r["rss_max_mb"] for r in rows], "o-", label="RSS (max, dump in flight)")
    ax[0][1].plot(ns, [r["hwm_mb"] for r in rows], "s--", label="VmHWM (peak)")
    ax[0][1].plot([5000, 10000], [55, 70], "rx", markersize=10, label="targets")
    ax[0][1].set(xscale="log", ylabel="MB", title="overlayd memory")
    ax[1][0].plot(ns, [100 * v / RECONCILE_INTERVAL for v in med("reconcile_cpu_s")], "o-",
                  label="periodic reconcile every 10 s")
    ax[1][0].plot([5000], [2], "rx", markersize=10, label="target at 5000")
    ax[1][0].set(xscale="log", yscale="log", ylabel="% of one core", title="reconcile CPU")
    ax[1][1].plot(ns, [r["lat_p99_ms"] for r in rows], "o-", label="p99")
    ax[1][1].plot(ns, [r["lat_median_ms"] for r in rows], "s--", label="median")
    ax[1][1].plot([5000], [20], "rx", markersize=10, label="p99 target at 5000")
    ax[1][1].set(xscale="log", ylabel="ms", title="lease put -> route on a peer")
    for a in ax.flat:
        a.set_xlabel("remote leases N")
        a.grid(True, which="both", alpha=0.3)
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def sizes_arg(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",")]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from e
    if not sizes or sizes != sorted(set(sizes)) or not 1 <= sizes[0] <= sizes[-1] <= 60000:
        raise argparse.ArgumentTypeError("sizes must rise, each within 1..60000")
    return sizes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=sizes_arg, default=[100, 1000, 2000, 5000, 10000])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--puts", type=int, default=200, help="lease puts timed per N")
    ap.add_argument("--settle", type=float, default=12.0,
                    help="seconds of RSS samples per N (> 10: one periodic reconcile)")
    ap.add_argument("--acquire", type=int, default=200, help="concurrent acquisitions")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    ap.add_argument("--render", metavar="JSON",
                    help="measure nothing: write the table and plot of a saved scale.json")
    a = ap.parse_args()
    if a.render:
        with open(a.render) as f:
            report = json.load(f)
    else:
        report = measure(a)
    os.makedirs(a.out, exist_ok=True)
    if not a.render:
        atomic_write(os.path.join(a.out, "scale.json"), json.dumps(report, indent=1))
    md = table(report)
    atomic_write(os.path.join(a.out, "scale.md"), md)
    print(md)
    if not plot(report, os.path.join(a.out, "scale.png")):
        print("no plot: matplotlib missing (pip install '.[bench]')", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
