#!/usr/bin/env python3
"""Programming N remote nodes (neigh + FDB + route each) into a fresh namespace.

Three ways, interleaved round by round so machine noise hits all alike, each into its
own fresh namespace (prefix ``ovd-bp``) holding a VXLAN device on a veth underlay:

- anchor: ``ip -batch`` (neighbours, then routes) + ``bridge -batch`` (FDB), timed as
  the wall time of the two processes;
- overlay: ``VXLANBackend.reconcile`` on ``VXLANDevice`` (dump, diff, three netlink
  batches; the whole policy path the daemon runs at start);
- pyroute2-batch: pyroute2's own batch API (``IPBatch`` encodes every request into one
  buffer with pyroute2's message classes, sent with one ``sendto`` on an ``IPRoute`` in
  the namespace); the entries are checked by iproute2 afterwards like every variant's.
  Its ACKs are not read, which only flatters it;
- naive (``--naive``): one pyroute2 call per entry.

Reports medians and the ratios to the anchor (target for the daemon's path: <= 2x).

``--reads`` also times reading the programmed namespace back the way diagnose does
(links, addresses, routes, neighbours, FDB): our codec (``kernel_state.read_with_codec``)
against pyroute2 (``dump_kernel_state``, via ``pyroute2_adapter``: same records).
``--import-cost`` times ``python -c 'import pyroute2'`` against ``python -c pass``.

    sudo .venv/bin/python bench/bench_program.py [--remotes 1000] [--rounds 5] [--naive]
        [--reads] [--import-cost] [--json]
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

from overlay.lease import Lease, LeaseAttrs
from overlay.netlink import link
from overlay.vxlan.backend import BackendSettings, VXLANBackend
from overlay.vxlan.device import VXLANDevice, VXLANSpec, find_underlay, open_netlink

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
        for lease in leases:
            f.write(f"neigh replace {lease.subnet.network_address} lladdr {lease.attrs.vtep_mac} "
                    "dev overlay.1 nud permanent\n")
        for lease in leases:
            f.write(f"route replace {lease.subnet} via {lease.subnet.network_address} "
                    "dev overlay.1 onlink\n")
    with open(brf, "w") as f:
        for lease in leases:
            f.write(f"fdb replace {lease.attrs.vtep_mac} dev overlay.1 dst {lease.attrs.public_ip} "
                    "self permanent\n")
    t0 = time.perf_counter()
    # FDB first, then neighbours and routes: the same order the daemon uses.
    sh("bridge", "-n", ns, "-batch", brf)
    sh("ip", "-n", ns, "-batch", ipf)
    return time.perf_counter() - t0


def open_device(ns: str) -> VXLANDevice:
    nl = open_netlink(ns)
    try:
        u = find_underlay(nl, "eth0", None)
        mac = next(ln.mac for ln in link.dump(nl) if ln.name == "overlay.1")
    finally:
        nl.close()
    assert mac is not None, "overlay.1 (a VXLAN device) has a MAC address"
    dev = VXLANDevice(VXLANSpec("overlay.1", 1, 8472, u.address.ip, u.index, 1450, mac), ns)
    dev.ensure()
    return dev


def run_overlay(ns: str, leases: list[Lease]) -> float:
    dev = open_device(ns)  # opening the namespace's sockets is not what is measured
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
        for lease in leases:
            gw = str(lease.subnet.network_address)
            nl.neigh("replace", dst=gw, lladdr=lease.attrs.vtep_mac, ifindex=idx,
                      state=ndmsg.states["permanent"])
            nl.fdb("replace", ifindex=idx, lladdr=lease.attrs.vtep_mac,
                   dst=str(lease.attrs.public_ip), flags=ndmsg.flags["self"],
                   state=ndmsg.states["permanent"])
            nl.route("replace", dst=str(lease.subnet), gateway=gw, oif=idx, flags=["onlink"])
        return time.perf_counter() - t0
    finally:
        nl.close()


def run_pyroute2_batch(ns: str, leases: list[Lease]) -> float:
    """pyroute2's batch API, used as its documentation shows: IPBatch compiles the
    requests into ``.batch``; one ``sendto`` hands them to the kernel, which runs them
    in order before ``sendto`` returns."""
    from pyroute2 import IPBatch, IPRoute
    from pyroute2.netlink.rtnl import ndmsg
    nl = IPRoute(netns=f"/var/run/netns/{ns}", flags=0)
    ipb = IPBatch()
    try:
        idx = nl.link_lookup(ifname="overlay.1")[0]
        permanent, self_ = ndmsg.states["permanent"], ndmsg.flags["self"]
        t0 = time.perf_counter()
        # FDB first, then neighbours and routes: the daemon's order
        for lease in leases:
            ipb.fdb("replace", ifindex=idx, lladdr=lease.attrs.vtep_mac,
                    dst=str(lease.attrs.public_ip), flags=self_, state=permanent)
        for lease in leases:
            ipb.neigh("replace", dst=str(lease.subnet.network_address), lladdr=lease.attrs.vtep_mac,
                      ifindex=idx, state=permanent)
        for lease in leases:
            ipb.route("replace", dst=str(lease.subnet), gateway=str(lease.subnet.network_address),
                      oif=idx, flags=["onlink"])
        data = bytes(ipb.batch)
        # one sendto per ~48 KiB (as our bulk path chunks): a datagram must fit the
        # socket's send buffer
        off = 0
        while off < len(data):
            end = off
            while end < len(data) and end - off < 48 * 1024:
                end += int.from_bytes(data[end:end + 4], "little")
            nl.sendto(data[off:end], (0, 0))
            off = end
        return time.perf_counter() - t0
    finally:
        ipb.close()
        nl.close()


def time_reads(ns: str, rounds: int, n: int) -> dict[str, float]:
    """Median wall time of one diagnose-style read of ``ns``: our codec vs pyroute2."""
    from overlay.netlink.kernel_state import dump_kernel_state, read_with_codec
    out: dict[str, list[float]] = {"reads_codec": [], "reads_pyroute2": []}
    for _ in range(rounds):
        for name, fn in (("reads_codec", read_with_codec), ("reads_pyroute2", dump_kernel_state)):
            t0 = time.perf_counter()
            k = fn(ns)
            out[name].append(time.perf_counter() - t0)
            assert len(k.fdb) >= n and len(k.routes) >= n, (name, len(k.fdb), len(k.routes))
    return {k: statistics.median(v) for k, v in out.items()}


def import_cost(rounds: int) -> dict[str, float]:
    """Median wall time of ``python -c 'import pyroute2'`` minus ``python -c pass``."""
    def wall(code: str) -> float:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        return time.perf_counter() - t0
    bare, with_pr2 = [], []
    for _ in range(rounds):
        bare.append(wall("pass"))
        with_pr2.append(wall("import pyroute2"))
    return {"python_pass": statistics.median(bare),
            "import_pyroute2": statistics.median(with_pr2) - statistics.median(bare)}


def count_entries(ns: str) -> tuple[int, int, int]:
    def lines(*args: str) -> int:
        out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
        return len([line for line in out.splitlines() if line.strip()])
    return (lines("ip", "-n", ns, "neigh", "show", "dev", "overlay.1", "nud", "permanent"),
            lines("bridge", "-n", ns, "fdb", "show", "dev", "overlay.1"),
            lines("ip", "-n", ns, "route", "show", "dev", "overlay.1"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--remotes", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--naive", action="store_true", help="also time one pyroute2 call per entry")
    ap.add_argument("--reads", action="store_true",
                    help="also time diagnose-style reads: our codec vs pyroute2")
    ap.add_argument("--import-cost", action="store_true", help="also time importing pyroute2")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    leases = remotes(a.remotes)
    times: dict[str, list[float]] = {"anchor": [], "overlay": [], "pyroute2-batch": [],
                                     "naive": []}
    reads: dict[str, float] = {}
    tmp = tempfile.mkdtemp(prefix="ovd-bp-")
    ns = f"{PREFIX}-{os.getpid()}"
    try:
        for _ in range(a.rounds):
            variants = [("anchor", lambda: run_anchor(ns, leases, tmp)),
                        ("overlay", lambda: run_overlay(ns, leases)),
                        ("pyroute2-batch", lambda: run_pyroute2_batch(ns, leases))]
            if a.naive:
                variants.append(("naive", lambda: run_naive(ns, leases)))
            for name, fn in variants:
                make_ns(ns)
                try:
                    times[name].append(fn())
                    counts = count_entries(ns)
                    assert counts == (a.remotes,) * 3, (name, counts)
                    if a.reads and name == "overlay" and not reads:
                        reads = time_reads(ns, a.rounds, a.remotes)
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
    for k in ("pyroute2-batch", "naive"):
        if k in med:
            report[f"ratio_{k.replace('-', '_')}_vs_anchor"] = med[k] / med["anchor"]
    if reads:
        report["reads_median_s"] = reads
    if a.import_cost:
        report["import_cost_s"] = import_cost(max(a.rounds, 5))
    if a.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"programming {a.remotes} remotes (neigh+fdb+route), median of {a.rounds} rounds:")
        for k, v in med.items():
            print(f"  {k:8s} {v * 1000:8.1f} ms   ({v / med['anchor']:.2f}x anchor)")
        print(f"  target: <= 2x anchor -> overlay "
              f"{'MET' if report['ratio_overlay_vs_anchor'] <= 2 else 'NOT MET'}, pyroute2-batch "
              f"{'MET' if report['ratio_pyroute2_batch_vs_anchor'] <= 2 else 'NOT MET'}")
        for k, v in reads.items():
            print(f"  {k:15s} {v * 1000:8.1f} ms   (one read of {a.remotes} remotes' state)")
        for k, v in report.get("import_cost_s", {}).items():
            print(f"  {k:15s} {v * 1000:8.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
