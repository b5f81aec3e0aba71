"""overlayctl nodes / nodes delete / connectivity against a real etcd holding records
written as overlayd writes them (and garbage beside them)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv4Network

import pytest

from overlay.cluster.keys import heartbeat_key, node_key, pod_key, pods_prefix
from overlay.cluster.mesh import PeerCheck, summarize
from overlay.cluster.nodes import NodeRecord
from overlay.cluster.pods import PodRecord, encode_pod
from overlay.cluster.store import ObjectStore
from overlay.lease import LeaseAttrs

pytestmark = pytest.mark.integration



def net(i: int) -> IPv4Network:
    return IPv4Network(f"10.244.{i}.0/24")


def mac(i: int) -> str:
    return f"0e:00:00:00:00:{i:02x}"


def record(i: int, broken: tuple[int, ...] = (), ready: bool = True) -> NodeRecord:
    now = datetime.now(UTC).replace(microsecond=0)  # per record: AGE is checked against it
    checks = [PeerCheck(net(t), IPv4Address(f"192.168.1.{10 + t}"), 1422, t not in broken,
                        False) for t in (1, 2, 3) if t != i]
    return NodeRecord(f"node{i}", IPv4Address(f"192.168.1.{10 + i}"), net(i), mac(i), "0.1.0",
                      now - timedelta(minutes=3), ready, "" if ready else "overlayd stopped",
                      10, 10.0, summarize(checks, None, now - timedelta(seconds=30)))


def publish(store: ObjectStore, rec: NodeRecord, alive: bool = True) -> None:
    store.put(node_key(store.prefix, rec.name), rec.encode())
    attrs = LeaseAttrs(rec.public_ip, vtep_mac=rec.vtep_mac)
    store.put(f"{store.prefix}/subnets/{rec.subnet.network_address}-24",
              attrs.to_json().encode())
    if alive:
        store.put(heartbeat_key(store.prefix, rec.name), b"{}", store.grant(30))


def test_nodes_table_json_and_wide(store, ctl):
    publish(store, record(1))
    publish(store, record(2), alive=False)
    store.put(f"{store.prefix}/nodes/node9", b"{not json")
    store.put(f"{store.prefix}/nodes/node3", record(1).encode())  # name is not its key's
    r = ctl("nodes")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "SUBNET", "PUBLIC-IP", "PEERS", "VERSION",
                                "AGE"]
    assert lines[1].split()[:6] == ["node1", "Ready", "10.244.1.0/24", "192.168.1.11",
                                    "2/2", "0.1.0"]
    assert re.fullmatch(r"3m(\d+s)?", lines[1].split()[6])  # started 3 minutes ago
    assert lines[2].startswith("node2") and "NotReady (no heartbeat for over 10s)" in lines[2]
    assert "rejected: name-mismatch" in lines[3] and "rejected: bad-value" in lines[4]
    out = json.loads(ctl("nodes", "-o", "json").output)
    good = {n["name"]: n for n in out if "name" in n}
    assert {k: good["node1"][k] for k in ("status", "public_ip", "subnet", "peers_reachable",
                                          "peers_total")} == {
        "status": "Ready", "public_ip": "192.168.1.11", "subnet": "10.244.1.0/24",
        "peers_reachable": 2, "peers_total": 2}
    assert good["node2"]["status"] == "NotReady"
    assert sorted(n["rejected"] for n in out if "rejected" in n) == ["bad-value",
                                                                    "name-mismatch"]
    wide = ctl("nodes", "-o", "wide").output.splitlines()
    assert wide[0].split()[-2:] == ["VTEP-MAC", "REASON"] and mac(1) in wide[1]


def test_delete_refuses_a_live_node_then_force_and_dead_ones(store, ctl):
    publish(store, record(1))
    publish(store, record(2), alive=False)
    r = ctl("nodes", "delete", "node1")
    assert r.exit_code == 1 and "is alive" in r.output and "--force" in r.output
    assert store.get(node_key(store.prefix, "node1")) is not None
    hb = store.get(heartbeat_key(store.prefix, "node1"))
    assert hb is not None and hb.lease
    r = ctl("nodes", "delete", "node1", "--force")
    assert r.exit_code == 0 and "node node1 deleted (2 keys, 0 pods)" in r.output
    assert store.get(node_key(store.prefix, "node1")) is None
    assert store.get(heartbeat_key(store.prefix, "node1")) is None
    assert store.keepalive(hb.lease) == 0  # revoked: a running overlayd would notice
    for node, ns_name in (("node2", "web-1"), ("node2", "web-2"), ("node3", "web-3")):
        store.put(pod_key(store.prefix, "default", ns_name), encode_pod(PodRecord(
            "default", ns_name, (IPv4Address("10.244.2.5"),), node, "c-" + ns_name, "eth0")))
    r = ctl("nodes", "delete", "node2")
    assert r.exit_code == 0 and "node node2 deleted (1 key, 2 pods)" in r.output
    # its pods left the registry with it; another node's stayed
    left, _ = store.list(pods_prefix(store.prefix))
    assert [kv.key.rsplit("/", 1)[1] for kv in left] == ["web-3"]
    r = ctl("nodes", "delete", "node2")
    assert r.exit_code == 1 and r.output.strip() == "error: no node node2 (see `overlayctl nodes`)"
    r = ctl("nodes", "delete", "Bad_Name")
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1
    assert "Traceback" not in r.output


def test_connectivity_names_the_broken_pairs_and_the_cause(store, ctl):
    publish(store, record(1, broken=(3,)))
    publish(store, record(2, broken=(3,)))
    publish(store, record(3, broken=(1, 2)))
    out = json.loads(ctl("connectivity", "-o", "json").output)
    assert out["nodes"] == ["node1", "node2", "node3"]
    assert out["broken_pairs"] == [["node1", "node3"], ["node2", "node3"]]
    assert out["matrix"]["node1"]["node2"]["state"] == "ok"
    assert out["matrix"]["node1"]["node3"]["cause"] == "no-answer"
    assert out["matrix"]["node1"]["node3"]["age_seconds"] >= 30
    text = ctl("connectivity").output.splitlines()
    assert text[0].split() == ["FROM", "\\", "TO", "node1", "node2", "node3"]
    assert text[1].split()[:3] == ["node1", "-", "ok"]
    assert sum("-> " in line and ": no-answer:" in line for line in text) == 4


def test_connectivity_stale_vtep_when_record_and_lease_disagree(store, ctl):
    publish(store, record(1))
    publish(store, record(2))
    attrs = LeaseAttrs(IPv4Address("192.168.1.12"), vtep_mac="0e:00:00:00:00:77")
    store.put(f"{store.prefix}/subnets/10.244.2.0-24", attrs.to_json().encode())
    out = json.loads(ctl("connectivity", "-o", "json").output)
    assert [(b["from"], b["to"], b["cause"]) for b in out["broken"]] == [
        ("node1", "node2", "stale-vtep")]
    assert "0e:00:00:00:00:77" in out["broken"][0]["detail"]
