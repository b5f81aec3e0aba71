"""Node status and the health mesh with real overlayd processes and a real etcd: the
heartbeat's expiry after SIGKILL, a record rewritten only on change, a clean stop, a
name clash refused with one line, and the mesh's peer count."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from .support.ovd_topology import Topology, nsx, wait_for

pytestmark = pytest.mark.integration

OVERLAYCTL = os.path.join(os.path.dirname(sys.executable), "overlayctl")
PERIOD = 1.0  # --heartbeat-period: the heartbeat's lease lasts 2 s


def nodes_json(topo: Topology) -> dict[str, dict]:
    out = nsx(topo.nodes[0].ns, OVERLAYCTL, "--etcd-endpoints", topo.etcd.endpoint,
              "nodes", "-o", "json").stdout
    return {n["name"]: n for n in json.loads(out) if "name" in n}


def status(topo: Topology, name: str) -> str | None:
    node = nodes_json(topo).get(name)
    return node["status"] if node else None


def record_revision(topo: Topology, name: str) -> int:
    out = topo.etcdctl("get", f"/overlay/network/nodes/{name}", "-w", "json").stdout
    kvs = json.loads(out).get("kvs", [])
    return int(kvs[0]["mod_revision"]) if kvs else 0


def metric(node, name: str) -> float:
    _, body = node.http("/metrics")
    m = re.search(rf"^{name}(?:_total)? (\S+)$", body, re.M)
    assert m, f"no {name} in /metrics"
    return float(m.group(1))


@pytest.fixture(scope="module")
def topo():
    t = Topology(3)
    t.setup()
    try:
        for i, n in enumerate(t.nodes[:2], 1):
            n.extra_args = ["--node-name", f"node{i}", "--heartbeat-period", str(PERIOD),
                            "--probe-interval", "1"]
            n.start()
        for n in t.nodes[:2]:
            n.wait_ready()
        yield t
    finally:
        t.cleanup()


def both_ready_and_meshed(topo: Topology) -> bool:
    nodes = nodes_json(topo)
    return all(nodes.get(n, {}).get("status") == "Ready"
               and nodes[n]["peers_reachable"] == nodes[n]["peers_total"] == 1
               for n in ("node1", "node2"))


def test_nodes_are_ready_and_reach_each_other(topo):
    wait_for(lambda: both_ready_and_meshed(topo), 15, 0.2, "both Ready with 1/1 peers")
    n1 = nodes_json(topo)["node1"]
    assert n1["public_ip"] == topo.nodes[0].ip
    assert n1["subnet"] == str(topo.nodes[0].subnet().network)


def test_record_is_rewritten_only_when_it_changes(topo):
    wait_for(lambda: both_ready_and_meshed(topo), 15, 0.2, "both Ready with 1/1 peers")
    node = topo.nodes[0]
    rev, writes = record_revision(topo, "node1"), metric(node, "overlay_node_record_writes")
    rounds = metric(node, "overlay_mesh_probe_rounds")
    time.sleep(5 * PERIOD)  # five heartbeats and about four probe rounds
    assert metric(node, "overlay_mesh_probe_rounds") >= rounds + 3
    assert record_revision(topo, "node1") == rev
    assert metric(node, "overlay_node_record_writes") == writes
    assert status(topo, "node1") == "Ready"  # the heartbeat lives on keepalives alone


def test_sigkill_is_notready_within_two_heartbeats_and_ready_after_restart(topo):
    wait_for(lambda: both_ready_and_meshed(topo), 15, 0.2, "both Ready with 1/1 peers")
    node2 = topo.nodes[1]
    node2.stop(signal.SIGKILL)
    killed = time.monotonic()
    wait_for(lambda: status(topo, "node2") == "NotReady", 2 * PERIOD + 1.5, 0.1,
             "node2 NotReady")
    took = time.monotonic() - killed
    assert took <= 2 * PERIOD + 1.5, took
    assert nodes_json(topo)["node2"]["reason"] == "no heartbeat for over 2s"
    # its data plane outlives overlayd (the kernel's device answers): still reachable
    assert nodes_json(topo)["node1"]["peers_reachable"] == 1
    node2.start()
    node2.wait_ready()
    wait_for(lambda: both_ready_and_meshed(topo), 15, 0.2, "both Ready again")


def test_a_second_node_with_a_name_in_use_is_refused_with_one_line(topo):
    wait_for(lambda: status(topo, "node1") == "Ready", 10, 0.2, "node1 Ready")
    impostor = topo.nodes[2]
    impostor.start("--node-name", "node1", "--heartbeat-period", str(PERIOD))
    assert impostor.proc is not None
    rc = impostor.proc.wait(timeout=30)
    errors = [line for line in impostor.log().splitlines() if "overlayd: error:" in line]
    assert rc == 1, impostor.log()[-2000:]
    assert len(errors) == 1 and "node name 'node1' is in use by 192.168.1.11" in errors[0]
    assert "Traceback" not in impostor.log()
    assert nodes_json(topo)["node1"]["public_ip"] == "192.168.1.11"  # untouched
    assert impostor.ip not in {v["PublicIP"] for v in topo.leases().values()}  # took none
    assert status(topo, "node1") == "Ready"


def test_clean_stop_says_stopped_and_revokes_the_heartbeat(topo):
    wait_for(lambda: both_ready_and_meshed(topo), 15, 0.2, "both Ready with 1/1 peers")
    node2 = topo.nodes[1]
    assert node2.stop(signal.SIGTERM) == 0
    n2 = nodes_json(topo)["node2"]  # at once: no waiting for the lease to run out
    assert (n2["status"], n2["reason"], n2["heartbeat"]) == (
        "NotReady", "overlayd stopped", False)
    out = topo.etcdctl("get", "--prefix", "/overlay/network/heartbeats/", "--keys-only").stdout
    assert "heartbeats/node1" in out and "heartbeats/node2" not in out
    node2.start()
    node2.wait_ready()
    wait_for(lambda: status(topo, "node2") == "Ready", 10, 0.2, "node2 Ready again")


def test_overlayctl_nodes_delete_refuses_a_live_node(topo):
    r = subprocess.run(["ip", "netns", "exec", topo.nodes[0].ns, OVERLAYCTL,
                        "--etcd-endpoints", topo.etcd.endpoint, "nodes", "delete", "node1"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        "error: node node1 is alive (its heartbeat is renewed); stop its overlayd first, "
        "or pass --force"]
    assert status(topo, "node1") == "Ready"


def test_forced_delete_of_a_live_node_is_undone_by_its_overlayd(topo):
    wait_for(lambda: status(topo, "node1") == "Ready", 10, 0.2, "node1 Ready")
    grants = metric(topo.nodes[0], "overlay_node_heartbeat_grants")
    r = subprocess.run(["ip", "netns", "exec", topo.nodes[0].ns, OVERLAYCTL,
                        "--etcd-endpoints", topo.etcd.endpoint, "nodes", "delete", "node1",
                        "--force"], capture_output=True, text=True)
    assert r.returncode == 0 and "node node1 deleted (2 keys, 0 pods)" in r.stdout, r.stderr
    # the heartbeat's lease was revoked: the next keepalive fails and overlayd registers
    # again (a new lease, the record rewritten), possibly before we could look
    wait_for(lambda: metric(topo.nodes[0], "overlay_node_heartbeat_grants") == grants + 1,
             3 * PERIOD + 2, 0.1, "a new heartbeat lease")
    wait_for(lambda: status(topo, "node1") == "Ready", 3 * PERIOD + 2, 0.1, "node1 back")


def test_a_forged_heartbeat_on_a_long_lease_does_not_keep_a_node_out(topo):
    """Any node can write etcd: a record and a heartbeat under node3's name, the heartbeat
    on a day-long etcd lease, kept node3's overlayd from starting ("in use") for that day.
    An overlayd's heartbeat lives at most two of the longest heartbeat periods."""
    out = topo.etcdctl("lease", "grant", "86400").stdout  # "lease <hex> granted with TTL(..)"
    lease = out.split()[1]
    hb = "/overlay/network/heartbeats/node3"
    try:
        topo.etcdctl("put", "--lease", lease, hb,
                     json.dumps({"public_ip": "192.168.1.99", "vtep_mac": "02:00:00:00:00:99"}))
        node3 = topo.nodes[2]
        node3.start("--node-name", "node3", "--heartbeat-period", str(PERIOD))
        node3.wait_ready()
        assert "not a live node's heartbeat, taking the name" in node3.log()
        assert "a key on a 86400s etcd lease" in node3.log()
        wait_for(lambda: status(topo, "node3") == "Ready", 10, 0.2, "node3 Ready")
        assert nodes_json(topo)["node3"]["public_ip"] == node3.ip
    finally:
        topo.nodes[2].stop()
        topo.etcdctl("lease", "revoke", lease)
