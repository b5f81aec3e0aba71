"""Upgrades: a lab whose node1 runs release v0.1.0 beside nodes of this tree (prefix ovup).

v0.1.0 is the code from before the cluster objects: it reads only ``subnets/``, so new
nodes' ``schema``, ``nodes/``, ``heartbeats/`` and ``pods/`` keys must never reach it, and
its lease (Flannel's format, unchanged) must be programmed by the new nodes as any other.
The release is installed from its commit id (``support/release.py``) into a venv of its
own; the lab runs it through ``Lab``'s per-node ``daemons`` option.

The last test raises the schema version past this release's: a node restarted then says
so, writes no cluster objects, and its data plane works as before.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess

import pytest

from overlay.cluster.keys import heartbeat_key, node_key, pod_key, schema_key
from overlay.cluster.schema import SCHEMA_VERSION
from overlay.lab.lab import Lab, NodeDaemon
from overlay.lab.matrix import Endpoint, reachability
from overlay.lab.spec import ETCD_KEY_PREFIX
from overlay.lab.system import in_netns

from .support.labfixture import poll, remote_entries, running_lab, vtep_mac
from .support.release import V0_1_0, install_release, release_dir, unknown_flags

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PREFIX = "ovup"
OLD = "node1"
NEW = ("node2", "node3")


@pytest.fixture(scope="module")
def lab():
    bindir = install_release(V0_1_0)
    old = NodeDaemon(os.path.join(bindir, "overlayd"), unknown_flags(bindir))
    with running_lab(nodes=3, pods_per_node=1, prefix=PREFIX, daemons={OLD: old}) as lab:
        yield lab


def etcdctl(lab: Lab, *args: str) -> str:
    argv = in_netns(lab.spec.underlay_ns, ["etcdctl", "--endpoints", lab.spec.etcd_endpoint,
                                           *args])
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30,
                          env={**os.environ, "ETCDCTL_API": "3"}).stdout


def keys_since(lab: Lab, revision: int) -> dict[str, str]:
    """Every key (with its value) changed after ``revision``."""
    out = json.loads(etcdctl(lab, "get", ETCD_KEY_PREFIX, "--prefix", "-w", "json"))
    return {base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", "")).decode()
            for kv in out.get("kvs", []) if kv["mod_revision"] > revision}


def revision(lab: Lab) -> int:
    out = json.loads(etcdctl(lab, "get", schema_key(ETCD_KEY_PREFIX), "-w", "json"))
    return int(out["header"]["revision"])


def all_pods_reach_each_other(lab: Lab) -> dict[tuple[str, str], bool]:
    assert lab.state is not None
    pods = [Endpoint(p.name, lab.spec.pod_ns(p.name), (p.ip or "").split("/")[0], p.node)
            for p in lab.state.pods.values()]
    assert all(pod.ip for pod in pods), "every lab pod has an IP"
    return {pair: ok for pair, ok in reachability(pods).items() if not ok}


def overlayctl_on(lab: Lab, node: str, *args: str) -> subprocess.CompletedProcess:
    """overlayctl on a node with no flags (its runtime file), as `overlay-lab exec` runs it."""
    env = lab.exec_env(lab.spec.node_ns(node), os.environ)
    return subprocess.run(in_netns(lab.spec.node_ns(node), ["overlayctl", *args]),
                          capture_output=True, text=True, env=env, timeout=30)


def node_log_since_start(lab: Lab, node: str) -> str:
    """The node's overlayd log since its latest start (the lab writes a '---' line)."""
    with open(lab.daemon_log(node), encoding="utf-8", errors="replace") as f:
        return f.read().rsplit("\n--- ", 1)[-1]


def test_node1_runs_the_old_release(lab):
    pid = lab.daemon_pid(OLD)
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = f.read().split(b"\0")
    assert any(release_dir(V0_1_0).encode() in a for a in argv[:3]), argv
    left_out = unknown_flags(install_release(V0_1_0))
    assert "--node-name" in left_out  # a flag v0.1.0 is known to lack is found missing
    assert not any(flag.encode() in argv for flag in left_out)
    # the old release writes no runtime file; this tree's nodes do
    assert not os.path.exists(lab.runtime_file(OLD))
    assert all(os.path.exists(lab.runtime_file(n)) for n in NEW)


def test_traffic_both_ways_between_old_and_new_nodes(lab):
    assert all_pods_reach_each_other(lab) == {}


def test_new_nodes_program_the_old_nodes_lease(lab):
    old_subnet = lab.node_subnet(OLD)
    assert old_subnet is not None
    old_ip, old_mac = str(lab.spec.node_ip(OLD)), vtep_mac(lab, OLD)
    for node in NEW:
        found = remote_entries(lab, node).mentions(old_subnet, old_ip, old_mac)
        net = old_subnet.split("/")[0]
        assert sorted(found) == sorted([f"route {old_subnet}", f"neigh {net}",
                                        f"fdb {old_mac}", f"fdb dst {old_ip}"]), found
    # and overlayctl on a new node, with no flags (its runtime file), lists it
    p = overlayctl_on(lab, "node2", "-o", "json", "leases", "list")
    assert p.returncode == 0, p.stderr
    leases = {lease["subnet"]: lease for lease in json.loads(p.stdout)}
    assert leases[old_subnet]["public_ip"] == old_ip


def test_new_nodes_count_the_old_node_in_their_health_mesh(lab):
    def mesh_whole() -> bool:
        p = overlayctl_on(lab, "node2", "-o", "json", "nodes")
        got = {n["name"]: n for n in json.loads(p.stdout)} if p.returncode == 0 else {}
        return all(n in got and got[n]["status"] == "Ready"
                   and (got[n]["peers_reachable"], got[n]["peers_total"]) == (2, 2)
                   for n in NEW)
    assert poll(mesh_whole, 15, interval=0.5) is not None


def test_new_nodes_objects_do_not_disturb_the_old_node(lab):
    """The objects this release's nodes keep (schema, nodes/, heartbeats/; pods/ written
    here as the pod registry lays them out), written and rewritten: the old node, watching
    subnets/ only, never hears of them."""
    assert json.loads(etcdctl(lab, "get", schema_key(ETCD_KEY_PREFIX), "--print-value-only")
                      ) == {"version": SCHEMA_VERSION}  # recorded by the new nodes
    for node in NEW:  # kept by the new nodes themselves
        assert etcdctl(lab, "get", node_key(ETCD_KEY_PREFIX, node), "--keys-only").strip()
        assert etcdctl(lab, "get", heartbeat_key(ETCD_KEY_PREFIX, node), "--keys-only").strip()
    assert not etcdctl(lab, "get", node_key(ETCD_KEY_PREFIX, OLD), "--keys-only").strip()
    before = node_log_since_start(lab, OLD)
    for node in NEW:
        for round_ in range(3):
            record = json.dumps({"namespace": "default", "name": f"pod-{node}-x",
                                 "node": node, "round": round_})
            etcdctl(lab, "put", pod_key(ETCD_KEY_PREFIX, "default", f"pod-{node}-x"), record)
        etcdctl(lab, "del", pod_key(ETCD_KEY_PREFIX, "default", f"pod-{node}-x"))
    assert poll(lambda: lab.ready(OLD), 5) is not None
    added = node_log_since_start(lab, OLD)[len(before):]
    noisy = [line for line in added.splitlines()
             if any(w in line for w in ("WARNING", "ERROR", "rejected", "Traceback"))]
    assert noisy == []
    assert all_pods_reach_each_other(lab) == {}


def test_a_newer_schema_keeps_a_node_off_the_cluster_objects(lab):
    node = "node3"
    etcdctl(lab, "put", schema_key(ETCD_KEY_PREFIX), json.dumps({"version": SCHEMA_VERSION + 1}))
    try:
        lab.stop_daemon(node)
        start = revision(lab)
        lab.start_daemon(node)
        lab.wait_ready([node])
        log = node_log_since_start(lab, node)
        assert f"schema version is {SCHEMA_VERSION + 1}, newer than this node's" in log
        # give its threads time to write if they (wrongly) would, then look
        assert poll(lambda: False, 3) is None
        written = {k: v for k, v in keys_since(lab, start).items()
                   if node in k or f'"{node}"' in v}
        assert written == {}, written
        assert json.loads(etcdctl(lab, "get", schema_key(ETCD_KEY_PREFIX),
                                  "--print-value-only")) == {"version": SCHEMA_VERSION + 1}
        assert all_pods_reach_each_other(lab) == {}  # its data plane works
    finally:
        etcdctl(lab, "put", schema_key(ETCD_KEY_PREFIX), json.dumps({"version": SCHEMA_VERSION}))
