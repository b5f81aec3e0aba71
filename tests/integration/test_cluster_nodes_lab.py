"""Node status and the health mesh on the lab (3 nodes; overlayd heartbeats every 1 s and
probes every 2 s there): a SIGKILLed overlayd is NotReady in ``overlayctl nodes`` within
two heartbeats and Ready after a restart; UDP 8472 dropped on one node makes
``overlayctl connectivity`` name exactly that node's pairs within two probe intervals."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from overlay.lab.lab import HEARTBEAT_PERIOD, PROBE_INTERVAL, Lab
from overlay.lab.system import in_netns

from .support.labfixture import TEST_PREFIX, keep_logs, poll, running_lab

pytestmark = pytest.mark.integration

PERIOD, INTERVAL = float(HEARTBEAT_PERIOD), float(PROBE_INTERVAL)
CLI_SLACK = 1.5  # one overlayctl run (interpreter, etcd client import) on 2 busy cores
NODES = ["node1", "node2", "node3"]
DROP_TABLE = f"{TEST_PREFIX}_drop_vxlan"  # the tests' prefix: removed by exact name


@pytest.fixture(scope="module")
def lab():
    with running_lab(nodes=3, pods_per_node=1) as lab:
        try:
            yield lab
        except BaseException:
            print(f"logs kept in {keep_logs(lab)}")
            raise


def nodes(lab: Lab) -> dict[str, dict]:
    out = json.loads(lab.overlayctl("nodes", "-o", "json").stdout)
    return {n["name"]: n for n in out if "name" in n}


def connectivity(lab: Lab) -> dict:
    return json.loads(lab.overlayctl("connectivity", "-o", "json").stdout)


def all_ready_and_meshed(lab: Lab) -> bool:
    got = nodes(lab)
    return sorted(got) == NODES and all(
        n["status"] == "Ready" and n["peers_reachable"] == n["peers_total"] == 2
        for n in got.values())


def test_every_node_ready_with_its_lab_name_and_subnet(lab):
    assert poll(lambda: all_ready_and_meshed(lab), 30, 0.3) is not None, nodes(lab)
    got = nodes(lab)
    for name in NODES:
        assert got[name]["public_ip"] == str(lab.spec.node_ip(name))
        assert got[name]["subnet"] == lab.node_subnet(name).replace(".1/", ".0/")
    assert connectivity(lab)["broken_pairs"] == []


def test_sigkill_notready_within_two_heartbeats_then_ready_after_restart(lab):
    assert poll(lambda: all_ready_and_meshed(lab), 30, 0.3) is not None, nodes(lab)
    lab.stop_daemon("node2", signal.SIGKILL)
    killed = time.monotonic()
    took = poll(lambda: nodes(lab)["node2"]["status"] == "NotReady",
                2 * PERIOD + CLI_SLACK, 0.05)
    assert took is not None, f"node2 still Ready {time.monotonic() - killed:.1f}s after SIGKILL"
    print(f"node2 NotReady {time.monotonic() - killed:.2f}s after SIGKILL "
          f"(heartbeat period {PERIOD:g}s)")
    got = nodes(lab)
    assert got["node2"]["reason"].startswith("no heartbeat for over")
    assert got["node1"]["status"] == got["node3"]["status"] == "Ready"
    lab.start_daemon("node2")
    assert poll(lambda: nodes(lab)["node2"]["status"] == "Ready", 30, 0.2) is not None


@contextmanager
def vxlan_dropped(lab: Lab, node: str) -> Iterator[None]:
    """UDP 8472 dropped on ``node``'s way in (an nft table inside its namespace only)."""
    ns = lab.spec.node_ns(node)
    script = (f"add table inet {DROP_TABLE}\n"
              f"add chain inet {DROP_TABLE} input {{ type filter hook input priority -10; }}\n"
              f"add rule inet {DROP_TABLE} input udp dport 8472 drop\n")
    subprocess.run(in_netns(ns, ["nft", "-f", "-"]), input=script, text=True, check=True)
    try:
        yield
    finally:
        subprocess.run(in_netns(ns, ["nft", "delete", "table", "inet", DROP_TABLE]),
                       check=True)


def test_udp_8472_dropped_on_one_node_names_exactly_its_pairs(lab):
    assert poll(lambda: all_ready_and_meshed(lab), 30, 0.3) is not None, nodes(lab)
    with vxlan_dropped(lab, "node3"):
        cut = time.monotonic()
        # both ways of both pairs: node3's replies are dropped too
        want = {("node1", "node3"), ("node2", "node3"), ("node3", "node1"), ("node3", "node2")}
        took = poll(lambda: {(b["from"], b["to"]) for b in connectivity(lab)["broken"]} == want,
                    2 * INTERVAL + CLI_SLACK, 0.05)
        assert took is not None, connectivity(lab)
        print(f"broken pairs named {time.monotonic() - cut:.2f}s after the drop "
              f"(probe interval {INTERVAL:g}s)")
        out = connectivity(lab)
        assert out["broken_pairs"] == [["node1", "node3"], ["node2", "node3"]]
        assert {b["cause"] for b in out["broken"]} == {"no-answer"}
        assert out["matrix"]["node1"]["node2"]["state"] == "ok"
        table = lab.overlayctl("connectivity").stdout
        assert "node1 -> node3: no-answer" in table and "UDP 8472" in table
    assert poll(lambda: connectivity(lab)["broken_pairs"] == [], 3 * INTERVAL + CLI_SLACK,
                0.2) is not None, connectivity(lab)


def test_a_small_underlay_mtu_on_one_node_is_named_mtu_for_its_pairs(lab):
    """node3's eth0 at MTU 1400: full-size VXLAN frames (1500 bytes) are dropped on their
    way in, small ones pass, so each of node3's pairs is broken with cause ``mtu``."""
    assert poll(lambda: all_ready_and_meshed(lab), 30, 0.3) is not None, nodes(lab)
    ns = lab.spec.node_ns("node3")
    subprocess.run(in_netns(ns, ["ip", "link", "set", "eth0", "mtu", "1400"]), check=True)
    try:
        want = {("node1", "node3"), ("node2", "node3"), ("node3", "node1"), ("node3", "node2")}
        took = poll(lambda: {(b["from"], b["to"], b["cause"])
                             for b in connectivity(lab)["broken"]}
                    == {(s, t, "mtu") for s, t in want}, 2 * INTERVAL + CLI_SLACK, 0.05)
        assert took is not None, connectivity(lab)
    finally:
        subprocess.run(in_netns(ns, ["ip", "link", "set", "eth0", "mtu", "1500"]), check=True)
        # the VXLAN device left path-MTU exceptions (1350) on node3's routes to its peers,
        # which would outlast the fix by 10 minutes: the kernel's own state, flushed here
        subprocess.run(in_netns(ns, ["ip", "route", "flush", "cache"]), check=True)
    assert poll(lambda: connectivity(lab)["broken_pairs"] == [], 3 * INTERVAL + CLI_SLACK,
                0.2) is not None, connectivity(lab)
