#!/usr/bin/env python3
"""How long ``overlayctl diagnose`` takes on a node with many peers (run as root).

One namespace ``ovdgb-n1`` plays a node with N remote peers: N leases in a real etcd
(listening on the namespace's own loopback), and the N neigh + FDB + route entries
programmed with ``ip -batch`` / ``bridge -batch``.  Measured in the same run:

* anchor: the operator's manual checklist commands (``ip route``, ``ip neigh``,
  ``bridge fdb``, ``etcdctl get --prefix``), which only print the state;
* ``overlayctl diagnose --no-probe`` (gathers the same state and compares it entry by
  entry), median of --repeat runs;
* ``overlayctl diagnose`` with the active probe, every peer silent (the worst case: each
  probe waits for its timeout);
* the probe alone: one raw ICMP socket for all N peers vs one ``ping`` per peer.

    python bench/bench_diagnose.py [--peers 1000] [--repeat 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.integration.support.etcd_server import free_port  # noqa: E402

NS = "ovdgb-n1"
BIN = os.path.dirname(sys.executable)
OVERLAYCTL = os.path.join(BIN, "overlayctl")
PY = sys.executable

WRITE_LEASES = """
import sys
from ipaddress import IPv4Address, IPv4Network
from overlay.config import parse_network_config
from overlay.subnet.etcdconf import make_etcd_options
from overlay.lease import LeaseAttrs
from overlay.subnet.registry import EtcdRegistry
endpoint, n = sys.argv[1], int(sys.argv[2])
with EtcdRegistry(make_etcd_options(endpoints=endpoint)) as reg:
    reg.put_config(parse_network_config({"Network": "10.0.0.0/8"}))
    reg.create_lease(IPv4Network("10.0.1.0/24"),
                     LeaseAttrs(IPv4Address("192.168.1.11"), vtep_mac="0e:0d:0b:00:00:01"), 3600)
    for i in range(2, n + 2):
        reg.create_lease(IPv4Network(f"10.{i // 256}.{i % 256}.0/24"), LeaseAttrs(
            IPv4Address(f"192.168.{100 + i // 250}.{i % 250 + 1}"),
            vtep_mac=f"0e:0d:0b:00:{i // 256:02x}:{i % 256:02x}"), 3600)
"""

PING_FALLBACK = """
import sys, time
from ipaddress import IPv4Address
from overlay.diagnose.gather import ping
from concurrent.futures import ThreadPoolExecutor
targets = [IPv4Address(a) for a in sys.argv[1:]]
t0 = time.monotonic()
with ThreadPoolExecutor(16) as pool:
    list(pool.map(lambda t: ping(t, 1422, 2, 1.0), targets))
print(time.monotonic() - t0)
"""

ECHO_MANY = """
import sys, time
from ipaddress import IPv4Address
from overlay.diagnose.probe import echo_many
targets = [IPv4Address(a) for a in sys.argv[1:]]
t0 = time.monotonic()
echo_many(targets, 1422, 2, 1.0)
print(time.monotonic() - t0)
"""


def sh(*args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    p = subprocess.run(list(args), capture_output=True, text=True, input=input, timeout=600)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {p.stderr.strip()}")
    return p


def nsx(*args: str, **kw) -> subprocess.CompletedProcess:
    return sh("ip", "netns", "exec", NS, *args, **kw)


def peer(i: int) -> tuple[str, str, str]:
    return (f"10.{i // 256}.{i % 256}.0", f"0e:0d:0b:00:{i // 256:02x}:{i % 256:02x}",
            f"192.168.{100 + i // 250}.{i % 250 + 1}")


def setup(peers: int, base: str) -> subprocess.Popen:
    sh("ip", "netns", "add", NS)
    ip = ["ip", "-n", NS]
    sh(*ip, "link", "set", "lo", "up")
    sh(*ip, "link", "add", "eth0", "type", "veth", "peer", "name", "ul0")
    sh(*ip, "addr", "add", "192.168.1.11/16", "dev", "eth0")
    sh(*ip, "link", "set", "eth0", "up")
    sh(*ip, "link", "set", "ul0", "up")
    sh(*ip, "link", "add", "overlay.1", "address", "0e:0d:0b:00:00:01", "type", "vxlan", "id", "1",
       "dstport", "8472", "local", "192.168.1.11", "dev", "eth0", "nolearning")
    sh(*ip, "addr", "add", "10.0.1.0/32", "dev", "overlay.1")
    sh(*ip, "link", "set", "overlay.1", "up")
    sh(*ip, "link", "add", "cni0", "mtu", "1450", "type", "bridge")
    sh(*ip, "addr", "add", "10.0.1.1/24", "dev", "cni0")
    sh(*ip, "link", "set", "cni0", "up")
    nsx("sysctl", "-qw", "net.ipv4.ip_forward=1")
    ipb, brb = [], []
    for i in range(2, peers + 2):
        gw, mac, pub = peer(i)
        ipb.append(f"neigh replace {gw} lladdr {mac} dev overlay.1 nud permanent")
        brb.append(f"fdb replace {mac} dev overlay.1 dst {pub} self permanent")
        # proto 111: overlayd's own (another protocol's route would be a route conflict)
        ipb.append(f"route replace {gw}/24 via {gw} dev overlay.1 onlink proto 111")
    sh("bridge", "-n", NS, "-batch", "-", input="\n".join(brb) + "\n")
    sh(*ip, "-batch", "-", input="\n".join(ipb) + "\n")
    os.makedirs(os.path.join(base, "net.d"))
    os.makedirs(os.path.join(base, "bin"))
    with open(os.path.join(base, "net.d", "10-overlay.conflist"), "w") as f:
        json.dump({"cniVersion": "1.1.0", "name": "overlay", "plugins": [
            {"type": "overlay", "bridge": "cni0", "dataDir": os.path.join(base, "ipam"),
             "subnetFile": os.path.join(base, "subnet.env")}]}, f)
    with open(os.path.join(base, "bin", "overlay"), "w") as f:
        f.write("#!/bin/sh\n")
    os.chmod(os.path.join(base, "bin", "overlay"), 0o755)
    with open(os.path.join(base, "subnet.env"), "w") as f:
        f.write("OVERLAY_NETWORK=10.0.0.0/8\nOVERLAY_SUBNET=10.0.1.1/24\nOVERLAY_MTU=1450\n")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = open(os.path.join(base, "etcd.log"), "wb")  # noqa: SIM115 (a child's log: open while the child runs)
    etcd = subprocess.Popen(
        ["ip", "netns", "exec", NS, shutil.which("etcd") or "/usr/bin/etcd", "--name", "ovdgb",
         "--data-dir", os.path.join(base, "etcd"), "--listen-client-urls", endpoint,
         "--advertise-client-urls", endpoint, "--listen-peer-urls", f"http://127.0.0.1:{free_port()}",
         "--heartbeat-interval", "10", "--election-timeout", "100", "--log-level", "error"],
        stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 20
    health = ("import sys, urllib.request\n"
              "try: print(urllib.request.urlopen(sys.argv[1] + '/health', timeout=0.5)"
              ".read().decode())\n"
              "except OSError as e: print(e)")
    while '"true"' not in nsx(PY, "-c", health, endpoint, check=False).stdout:
        if time.monotonic() > deadline:
            raise RuntimeError("etcd not healthy")
        time.sleep(0.05)
    etcd.endpoint = endpoint  # type: ignore[attr-defined]
    nsx(PY, "-c", WRITE_LEASES, endpoint, str(peers), check=True)
    return etcd


def timed(argv: list[str], ok_rc: tuple[int, ...] = (0,)) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    dt = time.perf_counter() - t0
    if p.returncode not in ok_rc:
        raise RuntimeError(f"{' '.join(argv)} exited {p.returncode}: "
                           f"{(p.stderr or p.stdout)[-500:]}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--ping-peers", type=int, default=32,
                    help="peers for the one-ping-per-peer comparison (it is slow)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_diagnose needs root (network namespaces)")
    base = tempfile.mkdtemp(prefix="ovdgb-")
    etcd = None
    try:
        etcd = setup(a.peers, base)
        ep = etcd.endpoint  # type: ignore[attr-defined]
        pre = ["ip", "netns", "exec", NS]
        anchor = pre + ["sh", "-c", "ip route show; ip neigh show dev overlay.1; "
                        f"bridge fdb show dev overlay.1; ETCDCTL_API=3 etcdctl --endpoints {ep} "
                        "get --prefix /overlay/network/subnets"]
        diag = pre + [OVERLAYCTL, "--etcd-endpoints", ep, "-o", "json", "diagnose",
                      "--cni-conf-dir", os.path.join(base, "net.d"),
                      "--cni-bin-dir", os.path.join(base, "bin"),
                      "--subnet-file", os.path.join(base, "subnet.env")]
        rep = {"peers": a.peers}
        out = subprocess.run(diag + ["--no-probe"], capture_output=True, text=True)
        report = json.loads(out.stdout)
        rep["diagnose_failed_checks"] = [c["name"] for c in report["checks"]
                                         if c["status"] == "fail"]
        rep["anchor_s"] = statistics.median(timed(anchor) for _ in range(a.repeat))
        rep["diagnose_no_probe_s"] = statistics.median(
            timed(diag + ["--no-probe"]) for _ in range(a.repeat))
        rep["diagnose_with_probe_all_silent_s"] = statistics.median(
            timed(diag, ok_rc=(1,)) for _ in range(max(1, a.repeat // 2)))
        targets = [peer(i)[0] for i in range(2, a.peers + 2)]
        rep["probe_raw_socket_s"] = float(nsx(PY, "-c", ECHO_MANY, *targets).stdout)
        few = targets[: a.ping_peers]
        t = float(nsx(PY, "-c", PING_FALLBACK, *few).stdout)
        rep["probe_one_ping_per_peer_s"] = t
        rep["probe_one_ping_per_peer_extrapolated_s"] = t * a.peers / len(few)
        rep["ratio_no_probe_vs_anchor"] = rep["diagnose_no_probe_s"] / rep["anchor_s"]
    finally:
        if etcd is not None:
            etcd.kill()
            etcd.wait()
        sh("ip", "netns", "del", NS, check=False)
        shutil.rmtree(base, ignore_errors=True)
    if a.json:
        print(json.dumps(rep, indent=2))
        return
    print(f"node with {a.peers} peers (leases in etcd, neigh/FDB/route in the kernel)")
    print(f"  checks failed with --no-probe (expected none): "
          f"{', '.join(rep['diagnose_failed_checks']) or 'none'}")
    print(f"  anchor: manual checklist commands, print only   {rep['anchor_s']:.3f} s")
    print(f"  overlayctl diagnose --no-probe (compares all)   {rep['diagnose_no_probe_s']:.3f} s "
          f"({rep['ratio_no_probe_vs_anchor']:.2f} x anchor)")
    print(f"  overlayctl diagnose, probe, every peer silent   "
          f"{rep['diagnose_with_probe_all_silent_s']:.3f} s")
    print(f"  probe alone: raw socket, {a.peers} peers            "
          f"{rep['probe_raw_socket_s']:.3f} s")
    print(f"  probe alone: one ping per peer, {len(few)} peers      "
          f"{rep['probe_one_ping_per_peer_s']:.3f} s "
          f"(~{rep['probe_one_ping_per_peer_extrapolated_s']:.0f} s for {a.peers})")


if __name__ == "__main__":
    main()
