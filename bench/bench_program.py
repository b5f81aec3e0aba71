#!/usr/bin/env python3
"""Programming N remote nodes (neigh + FDB + route each) into a fresh namespace.

Three ways, interleaved round by round so machine noise hits all alike, each into its
own fresh namespace (prefix ``ovd-bp``) holding a VXLAN device on a veth underlay:

- anchor: ``ip -batch`` (neighbours, then routes) + ``bridge -batch`` (FDB), timed as
  the wall time of the two processes;
- overlay: ``VXLANBackend.reconcile`` on ``VXLANDevice`` (dump, diff, three netlink
  batches; the whole policy path the daemon runs at start);
- naive (``--naive``): one pyroute2 call per entry.

Reports medians and the ratio overlay/anchor (target <= 3x).

    sudo .venv/bin/python bench/bench_program.py [--remotes 1000] [--rounds 5] [--naive] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from overlay.lease import (
    Lease,
    LeaseAttrs,  # noqa: E402
)
from overlay.vxlan.backend import (
    BackendSettings,
    VXLANBackend,  # noqa: E402
)
from overlay.vxlan.device import (
    VXLANDevice,
    VXLANSpec,
    find_underlay,
    open_netlink,  # noqa: E402
)

PREFIX = "ovd-bp"


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True)


def make_ns(name: str) -> None:
    sh("ip", "netns", "add", name)
    sh("ip", "-n", name, "link", "set", "lo", "up")
    sh("ip", "-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
    sh("ip", "-n", name, "addr", "add", "192.168.1.11/16", "dev", "eth0")
    sh("ip", "-n", name, "link", "set", "eth0", "up")
    sh("ip", "-n", name, "link", "set", "eth1", "up")
    sh("ip", "-n", name, "route", "add", "default", "via", "192.168.0.1")
    sh("ip", "-n", name, "link", "add", "overlay.1", "type", "vxlan", "id", "1", "local",
       "192.168.1.11", "dev", "eth0", "dstport", "8472", "nolearning")
    sh("ip", "-n", name, "addr", "add", "10.1.1.0/32", "dev", "overlay.1")
    sh("ip", "-n", name, "link", "set", "overlay.1", "up")


def del_ns(name: str) -> None:
    subprocess.run(["ip", "netns", "del", name], capture_output=True)


def remotes(n: int) -> list[Lease]:
    out = []
    for i in range(n):
        subnet = IPv4Network(f"10.{100 + i // 256}.{i % 256}.0/24")
        out.append(Lease(subnet, LeaseAttrs(IPv4Address("192.168.10.0") + i, "vxlan", 1,
                                            f"0e:00:00:00:{i // 256:02x}:{i % 256:02x}")))
    return out


def run_anchor(ns: str, leases: list[Lease], tmp: str) -> float:
    ipf, brf = os.path.join(tmp, "ip.batch"), os.path.join(tmp, "bridge.batch")
    with open(ipf, "w") as f:
        for l in leases:
            f.write(f"neigh replace {l.subnet.network_address} lladdr {l.attrs.vtep_mac} "
                    "dev overlay.1 nud permanent\n")
        for l in leases:
            f.write(f"route replace {l.subnet} via {l.subnet.network_address} dev overlay.1 "
                    "onlink\n")
    with open(brf, "w") as f:
        for l in leases:
            f.write(f"fdb replace {l.attrs.vtep_mac} dev overlay.1 dst {l.attrs.public_ip} "
                    "self permanent\n")
    t0 = time.perf_counter()
    # FDB first, then neighbours and routes: the same order the daemon uses.
    sh("bridge", "-n", ns, "-batch", brf)
    sh("ip", "-n", ns, "-batch", ipf)
    return time.perf_counter() - t0


def _device(ns: str) -> VXLANDevice:
    nl = open_netlink(ns)
    try:
        u = find_underlay(nl, "eth0", None)
        mac = next(l.mac for l in nl.dump_links() if l.name == "overlay.1")
    finally:
        nl.close()
    dev = VXLANDevice(VXLANSpec("overlay.1", 1, 8472, u.address.ip, u.index, 1450, mac), ns)
    dev.ensure()
    return dev


def run_overlay(ns: str, leases: list[Lease]) -> float:
    dev = _device(ns)  # opening the namespace's sockets is not what is measured
    backend = VXLANBackend(dev, BackendSettings(1, IPv4Address("192.168.1.11"),
                                                IPv4Interface("192.168.1.11/16")))
    try:
        t0 = time.perf_counter()
        res = backend.reconcile(leases)
        dt = time.perf_counter() - t0
    finally:
        dev.close()
    assert res.added == 3 * len(leases) and not res.failed, res
    return dt


def run_naive(ns: str, leases: list[Lease]) -> float:
    from pyroute2 import IPRoute
    from pyroute2.netlink.rtnl import ndmsg
    nl = IPRoute(netns=f"/var/run/netns/{ns}", flags=0)
    try:
        idx = nl.link_lookup(ifname="overlay.1")[0]
        t0 = time.perf_counter()
        for l in leases:
            gw = str(l.subnet.network_address)
            nl.neigh("replace", dst=gw, lladdr=l.attrs.vtep_mac, ifindex=idx,
                      state=ndmsg.states["permanent"])
            nl.fdb("replace", ifindex=idx, lladdr=l.attrs.vtep_mac, dst=str(l.attrs.public_ip),
                    flags=ndmsg.flags["self"], state=ndmsg.states["permanent"])
            nl.route("replace", dst=str(l.subnet), gateway=gw, oif=idx, flags=["onlink"])
        return time.perf_counter() - t0
    finally:
        nl.close()


def count_entries(ns: str) -> tuple[int, int, int]:
    def lines(*args: str) -> int:
        out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
        return len([l for l in out.splitlines() if l.strip()])
    return (lines("ip", "-n", ns, "neigh", "show", "dev", "overlay.1", "nud", "permanent"),
            lines("bridge", "-n", ns, "fdb", "show", "dev", "overlay.1"),
            lines("ip", "-n", ns, "route", "show", "dev", "overlay.1"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--remotes", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--naive", action="store_true", help="also time one pyroute2 call per entry")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    leases = remotes(a.remotes)
    times: dict[str, list[float]] = {"anchor": [], "overlay": [], "naive": []}
    tmp = tempfile.mkdtemp(prefix="ovd-bp-")
    ns = f"{PREFIX}-{os.getpid()}"
    try:
        for _ in range(a.rounds):
            variants = [("anchor", lambda: run_anchor(ns, leases, tmp)),
                        ("overlay", lambda: run_overlay(ns, leases))]
            if a.naive:
                variants.append(("naive", lambda: run_naive(ns, leases)))
            for name, fn in variants:
                make_ns(ns)
                try:
                    times[name].append(fn())
                    counts = count_entries(ns)
                    assert counts == (a.remotes,) * 3, (name, counts)
                finally:
                    del_ns(ns)
    finally:
        del_ns(ns)
        for f in os.listdir(tmp):
            os.unlink(os.path.join(tmp, f))
        os.rmdir(tmp)
    med = {k: statistics.median(v) for k, v in times.items() if v}
    report = {"remotes": a.remotes, "rounds": a.rounds,
              "median_s": med, "runs_s": {k: v for k, v in times.items() if v},
              "ratio_overlay_vs_anchor": med["overlay"] / med["anchor"]}
    if "naive" in med:
        report["ratio_naive_vs_anchor"] = med["naive"] / med["anchor"]
    if a.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"programming {a.remotes} remotes (neigh+fdb+route), median of {a.rounds} rounds:")
        for k, v in med.items():
            print(f"  {k:8s} {v * 1000:8.1f} ms   ({v / med['anchor']:.2f}x anchor)")
        print(f"  target: overlay <= 3x anchor -> "
              f"{'MET' if report['ratio_overlay_vs_anchor'] <= 3 else 'NOT MET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
