"""Enabling IPv6 on a running IPv4 cluster, with real overlayd nodes, under a continuous
ping (issue 14): each node re-keys its lease in one transaction when it restarts with the
dual-stack config, and its peers keep the IPv4 route (never deleted) and lose no packet.

Runs two node namespaces and two pods: run it under the shared lock
(``flock /tmp/overlay-integration.lock ...``)."""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest

from .support.ovd_topology import Topology, wait_for

pytestmark = pytest.mark.integration

V4 = {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 1}}
DUAL = {**V4, "EnableIPv6": True, "IPv6Network": "fd00:10:244::/56"}


def _keys(topo: Topology) -> dict[str, dict]:
    return topo.leases()


def _v6_routes(ns: str) -> set[str]:
    out = subprocess.run(["ip", "-n", ns, "-j", "-6", "route", "show", "proto", "111"],
                         capture_output=True, text=True, check=True).stdout
    return {r["dst"] for r in json.loads(out)} if out.strip() else set()


def test_enabling_ipv6_under_a_continuous_ping_flaps_no_route():
    topo = Topology(2)
    monitor = ping = None
    try:
        topo.setup(V4)
        n1, n2 = topo.nodes
        subprocess.run(["ip", "-n", topo.underlay, "addr", "add", "fd00:192:168:1::1/64",
                        "dev", "br0", "nodad"], check=True)
        for n in topo.nodes:
            subprocess.run(["ip", "-n", n.ns, "addr", "add", f"fd00:192:168:1::{10 + n.index}"
                            "/64", "dev", "eth0", "nodad"], check=True)
            n.start()
        for n in topo.nodes:
            n.wait_ready()
        keys = _keys(topo)
        assert len(keys) == 2 and not any("&" in k for k in keys)
        n1.add_pod()
        pod2 = n2.add_pod()
        n2_subnet = str(n2.subnet().network)
        wait_for(lambda: subprocess.run(["ip", "netns", "exec", n1.pod_ns, "ping", "-c1",
                                         "-W1", pod2], capture_output=True).returncode == 0,
                 10, what="pod1 -> pod2 over IPv4")
        # every change of n1's routes while the cluster turns dual-stack
        monitor = subprocess.Popen(["ip", "-n", n1.ns, "monitor", "route"],
                                   stdout=subprocess.PIPE, text=True)
        ping = subprocess.Popen(["ip", "netns", "exec", n1.pod_ns, "ping", "-i", "0.02",
                                 "-W", "1", pod2], stdout=subprocess.PIPE, text=True)
        time.sleep(0.5)
        topo.put_config(DUAL)
        for n in (n2, n1):  # one node after the other, as an operator would
            n.stop()
            n.start()
            n.wait_ready()
            wait_for(lambda n=n: any("&" in k and k.startswith(str(n.subnet().network
                                                                   .network_address))
                                     for k in _keys(topo)), 10, what=f"{n.ns}'s dual key")
        wait_for(lambda: len(_v6_routes(n1.ns)) == 1 and len(_v6_routes(n2.ns)) == 1, 10,
                 what="each node's IPv6 route to the other")
        time.sleep(0.5)
        ping.send_signal(2)
        out, _ = ping.communicate(timeout=5)
        monitor.terminate()
        routes, _ = monitor.communicate(timeout=5)
        stats = re.search(r"(\d+) packets transmitted, (\d+) received", out)
        assert stats, out
        sent, got = int(stats.group(1)), int(stats.group(2))
        assert sent > 100 and got == sent, out[-500:]
        deleted = [line for line in routes.splitlines()
                   if line.startswith("Deleted") and n2_subnet in line]
        assert deleted == [], routes
        # the monitor was live: it saw the IPv6 route to n2 arrive
        assert any(line.startswith("fd00:10:244:") for line in routes.splitlines()), routes
        # subnet.env and the keys: Flannel's dual form, each with its pairing
        keys = _keys(topo)
        assert all("&" in k for k in keys), keys
        with open(n2.subnet_file) as f:
            env = f.read()
        assert "OVERLAY_IPV6_NETWORK=fd00:10:244::/56\n" in env
        assert re.search(r"OVERLAY_IPV6_SUBNET=fd00:10:244:[0-9a-f]+::1/64\n", env), env
        assert "re-keyed the lease" in n2.log()
    finally:
        for p in (ping, monitor):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        topo.cleanup()
