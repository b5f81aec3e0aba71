"""overlayd against hostile etcd content and a changing config (real etcd, real netns):
a garbage config is one line and an exit, garbage under subnets/ does not keep a node
from becoming ready, a config changed while running is noticed and not applied, a
Network over the node's own network is refused, and /readyz fails while the lease
watch cannot hear etcd."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from .support.ovd_topology import OVERLAYD, Topology, nsx, wait_for

pytestmark = pytest.mark.integration

OVERLAYCTL = os.path.join(os.path.dirname(sys.executable), "overlayctl")
CONFIG = {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 1}}
HOSTILE_CONFIGS = [
    (b'{"Network": "10.244.0.0/16", "Backend": {"VNI": 1e400}}', "Backend.VNI"),
    (b"[" * 5000 + b"]" * 5000, "nested too deeply"),
    (b'{"Network": "10.244.0.0/16", "Netwrok": "10.0.0.0/8"}', "did you mean Network?"),
    (b'{"Network": "10.244.0.0/16", "SubnetLen": 24.0}', "SubnetLen"),
    (b'{"Network": "10.244.0.0/16\xff"}', "not UTF-8"),
    (b'{"Network": "10.244.0.0/16", "Backend": {"VNI": ' + b"9" * 4400 + b"}}", "digits"),
    (b'{"Network": "' + b"x" * 50_000 + b'/8"}', "Network"),
]


@pytest.fixture(scope="module")
def topo():
    t = Topology(1).setup(CONFIG)
    try:
        yield t
    finally:
        t.cleanup()


def etcd_put(topo: Topology, key: str, value: bytes) -> None:
    """Any bytes (etcdctl reads the value from stdin when it is not an argument)."""
    subprocess.run(["ip", "netns", "exec", topo.underlay, "etcdctl", "--endpoints",
                    topo.etcd.endpoint, "put", key], input=value, check=True,
                   capture_output=True, timeout=20)


def metric(node, name: str) -> float:
    status, text = node.http("/metrics")
    assert status == 200
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


def one_shot(node, *args: str) -> subprocess.CompletedProcess:
    return nsx(node.ns, OVERLAYD, "--etcd-endpoints", node.topo.etcd.endpoint,
               "--subnet-file", f"{node.dir}/once.env", "--state-dir", f"{node.dir}/once",
               "--cni-socket", "", "--node-name", f"{node.ns}-once",
               "--runtime-file", f"{node.dir}/once.json", *args, check=False, timeout=30)


def assert_one_line(r: subprocess.CompletedProcess, *words: str) -> None:
    assert "Traceback" not in r.stderr, r.stderr
    lines = [line for line in r.stderr.splitlines() if "error" in line.lower()]
    assert len(lines) == 1, r.stderr
    assert len(lines[0]) < 600
    for w in words:
        assert w in lines[0], lines[0]


@pytest.mark.parametrize("value, word", HOSTILE_CONFIGS, ids=[w for _, w in HOSTILE_CONFIGS])
def test_hostile_config_is_one_line_and_an_exit(topo, value, word):
    node = topo.nodes[0]
    prefix = f"/ovd-hostile-{HOSTILE_CONFIGS.index((value, word))}"
    etcd_put(topo, f"{prefix}/config", value)
    r = one_shot(node, "--etcd-prefix", prefix)
    assert r.returncode == 1
    assert_one_line(r, word, f"{prefix}/config")
    assert not node.ip_json("link", "show", "type", "vxlan"), "kernel touched before validation"
    r = nsx(node.ns, OVERLAYCTL, "--etcd-endpoints", topo.etcd.endpoint, "--etcd-prefix",
            prefix, "config", "get", check=False)
    assert r.returncode == 1 and r.stdout == ""
    assert_one_line(r, word)


def test_network_over_the_node_network_is_refused_before_the_kernel(topo):
    node = topo.nodes[0]
    etcd_put(topo, "/ovd-overlap/config", json.dumps({"Network": "192.168.0.0/16"}).encode())
    r = one_shot(node, "--etcd-prefix", "/ovd-overlap")
    assert r.returncode == 1
    assert_one_line(r, "192.168.0.0/16", "192.168.1.0/24", "eth0")
    assert not node.ip_json("link", "show", "type", "vxlan")


def test_config_changed_while_running_is_noticed_and_not_applied(topo):
    node = topo.nodes[0]
    node.start("--watch-lag-limit", "2")
    node.wait_ready(30)
    assert metric(node, "overlay_config_changed") == 0
    topo.put_config({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 7}})
    wait_for(lambda: metric(node, "overlay_config_changed") == 1, 5, what="config change seen")
    errors = [line for line in node.log().splitlines()
              if "ERROR" in line and "network config changed in etcd" in line]
    assert len(errors) == 1 and "restart overlayd on every node" in errors[0]
    (dev,) = node.ip_json("-d", "link", "show", "type", "vxlan")
    assert dev["linkinfo"]["info_data"]["id"] == 1, "never half-applied"
    assert node.http("/readyz")[0] == 200
    assert config_check(node)["status"] == "fail"
    topo.put_config(CONFIG)  # put back identical
    wait_for(lambda: metric(node, "overlay_config_changed") == 0, 5, what="change cleared")
    assert "matches the running one again" in node.log()
    assert config_check(node)["status"] == "pass"


def config_check(node) -> dict:
    """diagnose's config-current check, as an operator on the node runs it."""
    os.makedirs(f"{node.dir}/net.d", exist_ok=True)
    r = nsx(node.ns, OVERLAYCTL, "--etcd-endpoints", node.topo.etcd.endpoint, "-o", "json",
            "diagnose", "--no-probe", "--subnet-file", node.subnet_file, "--cni-conf-dir",
            f"{node.dir}/net.d", "--healthz-addr", "127.0.0.1:10256", check=False, timeout=60)
    (check,) = [c for c in json.loads(r.stdout)["checks"] if c["name"] == "config-current"]
    if check["status"] == "fail":
        assert "restart overlayd on every node" in check["fix"], check
    return check


def test_readyz_fails_while_the_watch_cannot_hear_etcd(topo):
    node = topo.nodes[0]
    node.wait_ready(30)
    pid = topo.etcd.proc.pid  # `ip netns exec` execs etcd itself
    os.kill(pid, signal.SIGSTOP)  # the watch stream stays open; etcd says nothing
    try:
        wait_for(lambda: node.http("/readyz")[0] == 503, 8, what="/readyz 503")
        status, body = node.http("/readyz")
        assert "lease watch has not heard from etcd" in body
        assert metric(node, "overlay_lease_watch_lag_seconds") > 2
        assert metric(node, "overlay_ready") == 0
    finally:
        os.kill(pid, signal.SIGCONT)
    node.wait_ready(15)
    assert metric(node, "overlay_lease_watch_lag_seconds") < 2


SUBNETS = "/overlay/network/subnets/"
GARBAGE = [
    ("garbage", b"garbage"),
    ("10.244.5.0-24", b'{"PublicIP": 1e400, "BackendType": "vxlan"}'),
    ("10.244.6.0-24", b'{"PublicIP": "192.168.1.66", "BackendData": ' + b"[" * 5000
     + b"]" * 5000 + b"}"),
    ("10.244.7.0-24", b"\xff\xfe\x00"),
    ("10.244.8.0-24/extra", b'{"PublicIP": "192.168.1.67"}'),
    ("10.244.9.0-24", b'{"PublicIP": "192.168.1.68", "BackendData": {"VNI": '
     + b"9" * 4400 + b"}}"),
    ("10.244.10.0-24", b"x" * 100_000),
]


def test_garbage_under_subnets_does_not_keep_a_node_from_ready(topo):
    """A (re)starting node with garbage beside the leases, and more arriving while it runs."""
    node = topo.nodes[0]
    node.stop()
    try:
        for key, value in GARBAGE:
            etcd_put(topo, f"{SUBNETS}{key}", value)
        node.start("--watch-lag-limit", "2")
        node.wait_ready(30)
        etcd_put(topo, f"{SUBNETS}10.244.11.0-24", b'{"PublicIP": [[[]]]}')
        etcd_put(topo, f"{SUBNETS}10.244.12.0-24", b"[" * 5000 + b"]" * 5000)
        wait_for(lambda: metric(node, "overlay_lease_watch_lag_seconds") < 1, 5,
                 what="the watch still hearing etcd after garbage arrived")
        assert node.http("/readyz") == (200, "ok\n")
        assert node.proc.poll() is None
        assert "Traceback" not in node.log()
    finally:
        for key in [k for k, _ in GARBAGE] + ["10.244.11.0-24", "10.244.12.0-24"]:
            topo.etcdctl("del", f"{SUBNETS}{key}")
