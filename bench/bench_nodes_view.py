#!/usr/bin/env python3
"""``overlayctl nodes`` with 1000 node records and heartbeats in a real etcd.

Records are written as overlayd writes them (each with a health-mesh summary, some with
broken peers), beside their 1000 leases (the rule checks each record's subnet against
them) and 1000 heartbeats (one shared etcd lease).  Measured in the same run, wall time
of a whole command, median of --repeat runs with the spread:

* anchor: ``etcdctl get --prefix <prefix>/nodes/`` (the raw read, printed), and
  ``overlayctl --version`` (the interpreter and imports: the floor of any command);
* ``overlayctl nodes`` (the table), ``overlayctl nodes -o json`` and
  ``overlayctl connectivity -o json`` (matrix left out at this size; the broken pairs).

Target: ``overlayctl nodes`` < 1 s.

    python bench/bench_nodes_view.py [--nodes 1000] [--repeat 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv4Network

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from overlay.cluster.keys import heartbeat_key, node_key  # noqa: E402
from overlay.cluster.mesh import PeerCheck, summarize  # noqa: E402
from overlay.cluster.nodes import NodeRecord  # noqa: E402
from overlay.cluster.store import ObjectStore  # noqa: E402
from overlay.config import parse_network_config  # noqa: E402
from overlay.lease import LeaseAttrs  # noqa: E402
from overlay.subnet.etcdconf import make_etcd_options  # noqa: E402
from overlay.subnet.registry import EtcdRegistry  # noqa: E402

OVERLAYCTL = os.path.join(os.path.dirname(sys.executable), "overlayctl")
PREFIX = "/ovnodes-bench/network"


def subnet(i: int) -> IPv4Network:
    return IPv4Network(f"10.{128 + i // 256}.{i % 256}.0/24")


def public_ip(i: int) -> IPv4Address:
    return IPv4Address(f"172.16.{i // 250}.{i % 250 + 1}")


def record(i: int, n: int, now: datetime) -> NodeRecord:
    # every 50th node cannot reach its two neighbours: a few broken peers in the view
    broken = {(i + 1) % n, (i + 2) % n} if i % 50 == 0 else set()
    checks = [PeerCheck(subnet(j), public_ip(j), 1422, True, None) for j in range(n)
              if j != i and j not in broken]
    checks += [PeerCheck(subnet(j), public_ip(j), 1422, False, False) for j in sorted(broken)]
    return NodeRecord(f"node{i}", public_ip(i), subnet(i),
                      f"0e:00:00:00:{i // 256:02x}:{i % 256:02x}", "0.1.0", now, True, "",
                      10, 10.0, summarize(checks, None, now))


def populate(opts, n: int) -> None:
    with EtcdRegistry(opts) as reg:
        reg.put_config(parse_network_config({"Network": "10.128.0.0/9", "SubnetLen": 24}))
        store = ObjectStore(reg)
        lease = store.grant(3600)
        now = datetime.now(UTC).replace(microsecond=0)
        for i in range(n):
            rec = record(i, n, now)
            attrs = LeaseAttrs(rec.public_ip, vtep_mac=rec.vtep_mac)
            store.put(f"{PREFIX}/subnets/{rec.subnet.network_address}-24",
                      attrs.to_json().encode(), lease)
            store.put(node_key(PREFIX, rec.name), rec.encode())
            store.put(heartbeat_key(PREFIX, rec.name), b"{}", lease)


def timed(argv: list[str], repeat: int) -> dict:
    walls = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        walls.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(walls), "min_s": min(walls), "max_s": max(walls),
            "output_lines": out.count("\n")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    from tests.integration.support.etcd_server import EtcdServer
    server = EtcdServer(name="ovnodes-bench").start()
    try:
        opts = make_etcd_options(server.endpoint, PREFIX)
        t0 = time.perf_counter()
        populate(opts, a.nodes)
        setup = time.perf_counter() - t0
        ctl = [OVERLAYCTL, "--etcd-endpoints", server.endpoint, "--etcd-prefix", PREFIX]
        etcdctl = shutil.which("etcdctl") or "etcdctl"
        res = {
            "nodes": a.nodes, "setup_s": setup,
            "anchor etcdctl get nodes/": timed(
                [etcdctl, "--endpoints", server.endpoint, "get", "--prefix",
                 f"{PREFIX}/nodes/"], a.repeat),
            "overlayctl --version": timed(ctl + ["--version"], a.repeat),
            "overlayctl nodes": timed(ctl + ["nodes"], a.repeat),
            "overlayctl nodes -o json": timed(ctl + ["nodes", "-o", "json"], a.repeat),
            "overlayctl connectivity -o json": timed(ctl + ["connectivity", "-o", "json"],
                                                     a.repeat),
        }
    finally:
        server.cleanup()
    if a.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"{a.nodes} nodes written in {setup:.1f}s")
    anchor = res["anchor etcdctl get nodes/"]["median_s"]
    for name, r in res.items():
        if isinstance(r, dict):
            print(f"{name:34} median {r['median_s'] * 1000:7.1f} ms  (min "
                  f"{r['min_s'] * 1000:.1f}, max {r['max_s'] * 1000:.1f}; "
                  f"{r['median_s'] / anchor:.1f}x the anchor)")
    return 0 if res["overlayctl nodes"]["median_s"] < 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
