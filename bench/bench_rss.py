#!/usr/bin/env python3
"""overlayd's memory with N remote leases (target: RSS <= 60 MB with 1000).

One node namespace (prefix ``ovd-``) plus etcd in the underlay namespace; N leases are
put first (network 10.0.0.0/8, /24 subnets), then overlayd starts, programs them all,
and runs a few periodic reconciles.  Reported: VmRSS after settling and VmHWM (peak)
of the overlayd process, from /proc.

    sudo .venv/bin/python bench/bench_rss.py [--leases 1000] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from pyroute2.netns import setns  # noqa: E402

from overlay.lease import LeaseAttrs  # noqa: E402
from overlay.subnet.etcdconf import make_etcd_options  # noqa: E402
from overlay.subnet.registry import EtcdRegistry  # noqa: E402
from tests.integration.support.ovd_topology import Topology, wait_for  # noqa: E402


def status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def thread_names(pid: int) -> dict[str, int]:
    """How many of the process's threads carry each name (``/proc/<pid>/task/*/comm``)."""
    names: dict[str, int] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            name = f.read().strip()
        names[name] = names.get(name, 0) + 1
    return dict(sorted(names.items(), key=lambda kv: -kv[1]))


def lease_for(i: int) -> tuple[IPv4Network, LeaseAttrs]:
    """The i-th synthetic remote (i < 64000): a /24 of 10.0.0.0/8, a public IP, a MAC.
    From 10.2.0.0 on: bench_program's namespace holds 10.1.1.0."""
    return (IPv4Network(f"10.{2 + i // 256}.{i % 256}.0/24"),
            LeaseAttrs(IPv4Address("172.16.0.0") + i + 1, "vxlan", 1,
                       f"0e:00:00:00:{i // 256:02x}:{i % 256:02x}"))


@contextlib.contextmanager
def in_netns(ns: str) -> Iterator[None]:
    """This thread inside namespace ``ns`` (where the topology's etcd listens), then back."""
    mine = os.open("/proc/self/ns/net", os.O_RDONLY)
    setns(f"/var/run/netns/{ns}", flags=0)
    try:
        yield
    finally:
        setns(mine, flags=0)
        os.close(mine)


def put_leases(reg: EtcdRegistry, start: int, stop: int) -> None:
    """Remotes ``start`` .. ``stop - 1`` as reservations (no etcd lease: a quicker put)."""
    for i in range(start, stop):
        reg.create_lease(*lease_for(i), None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--leases", type=int, default=1000)
    ap.add_argument("--settle", type=float, default=5.0, help="seconds of reconciles to watch")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    topo = Topology(1).setup({"Network": "10.0.0.0/8", "SubnetLen": 24,
                              "Backend": {"Type": "vxlan", "VNI": 1}})
    try:
        with in_netns(topo.underlay):
            reg = EtcdRegistry(make_etcd_options(topo.etcd.endpoint))
            put_leases(reg, 0, a.leases)
            reg.close()
        node = topo.nodes[0]
        # the default setup: the warm CNI server runs inside overlayd too
        node.start("--reconcile-interval", "1", "--cni-socket",
                   os.path.join(node.dir, "cni.sock"))
        node.wait_ready(60)
        t0 = time.monotonic()

        def routes() -> int:
            out = subprocess.run(["ip", "-n", node.ns, "route", "show", "proto", "111"],
                                 capture_output=True, text=True, check=True).stdout
            return len(out.splitlines())
        wait_for(lambda: routes() == a.leases, 60, interval=0.2, what=f"{a.leases} routes")
        programmed = time.monotonic() - t0
        if node.proc is None:
            raise RuntimeError(f"overlayd on {node.ns} was not started")
        pid = node.proc.pid
        samples = []
        end = time.monotonic() + a.settle
        while time.monotonic() < end:
            samples.append(status_kb(pid, "VmRSS"))
            time.sleep(0.25)
        hwm = status_kb(pid, "VmHWM")
        anon, file = status_kb(pid, "RssAnon"), status_kb(pid, "RssFile")
        threads = thread_names(pid)
        status, metrics = node.http("/metrics")
        runs = [line for line in metrics.splitlines()
                if line.startswith("overlay_reconcile_runs_total")]
    finally:
        topo.cleanup()
    report = {"leases": a.leases, "rss_mb": samples[-1] / 1024, "rss_max_mb": max(samples) / 1024,
              "hwm_mb": hwm / 1024, "reconcile_runs": runs[0].split()[-1] if runs else None,
              "all_routes_after_ready_s": programmed, "rss_anon_mb": anon / 1024,
              "rss_file_mb": file / 1024, "threads": sum(threads.values()),
              "thread_names": threads}
    if a.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"overlayd with {a.leases} remote leases: RSS {report['rss_mb']:.1f} MB "
              f"(max {report['rss_max_mb']:.1f} MB over {a.settle:.0f}s of reconciles, "
              f"peak VmHWM {report['hwm_mb']:.1f} MB; {report['reconcile_runs']} reconciles)")
        print(f"  anonymous {report['rss_anon_mb']:.1f} MB, file-backed (shared libraries) "
              f"{report['rss_file_mb']:.1f} MB; {report['threads']} threads: "
              + ", ".join(f"{n} x{c}" for n, c in threads.items()))
        print(f"  target: RSS <= 60 MB -> {'MET' if report['hwm_mb'] <= 60 else 'NOT MET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
