"""The pod registry through the real programs: overlayd in a node namespace publishes what
the real CNI plugin (against overlayd's subnet.env) attached, overlayctl lists it, and
pods added and deleted while overlayd is down (SIGKILL) are right once it is back."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from .support.cni_node import ENTRY, PY
from .support.ovd_topology import Topology, ns_http_get, nsx, sh, wait_for

pytestmark = pytest.mark.integration

OVERLAYCTL = os.path.join(os.path.dirname(sys.executable), "overlayctl")


@pytest.fixture
def topo():
    t = Topology(1).setup()
    try:
        yield t
    finally:
        t.cleanup()


class Runtime:
    """Runs the plugin inside the node's namespace as a runtime would."""

    def __init__(self, topo, node):
        self.topo, self.node = topo, node
        self.data_dir = os.path.join(node.dir, "cni")
        self.n = 0

    def conf(self):
        return {"cniVersion": "1.1.0", "name": "overlay", "type": "overlay", "bridge": "cni0",
                "subnetFile": self.node.subnet_file, "dataDir": self.data_dir,
                "isDefaultGateway": True,
                "args": {"cni": {"labels": [{"key": "app", "value": "web"}]}}}

    def call(self, command, container_id, pod_ns, name=None):
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_IFNAME": "eth0",
               "CNI_NETNS": f"/var/run/netns/{pod_ns}", "CNI_PATH": "/usr/lib/cni",
               "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "OVERLAY_CNI_SOCKET": os.path.join(self.node.dir, "absent.sock")}
        if name:
            env["CNI_ARGS"] = f"IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME={name}"
        proc = subprocess.run(["ip", "netns", "exec", self.node.ns, PY, "-IS", ENTRY],
                              input=json.dumps(self.conf()).encode(), env=env,
                              capture_output=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return json.loads(proc.stdout) if proc.stdout.strip() else None

    def add(self, container_id, name):
        pod_ns = f"ovd-q{self.n}-{self.topo.tag}"
        self.n += 1
        sh("ip", "netns", "add", pod_ns)
        self.topo.namespaces.append(pod_ns)
        doc = self.call("ADD", container_id, pod_ns, name)
        return pod_ns, doc["ips"][0]["address"].split("/")[0]


def pods(topo, node):
    out = nsx(node.ns, OVERLAYCTL, "--etcd-endpoints", topo.etcd.endpoint, "pods", "-A",
              "-o", "json").stdout
    return {p["name"]: p for p in json.loads(out)}


def etcd_watchers(topo):
    status, body = ns_http_get(topo.underlay, topo.etcd.host, topo.etcd.client_port,
                               "/metrics")
    assert status == 200, body
    (line,) = [x for x in body.splitlines() if x.startswith("etcd_debugging_mvcc_watcher_total")]
    return int(float(line.split()[-1]))


def test_overlayd_publishes_and_catches_up_after_being_down(topo):
    node = topo.nodes[0]
    rt = Runtime(topo, node)
    node.start("--node-name", "node1", "--cni-data-dir", rt.data_dir)
    node.wait_ready()
    gone_ns, gone_ip = rt.add("c-gone", "gone")
    _, stay_ip = rt.add("c-stay", "stay")
    got = wait_for(lambda: (p := pods(topo, node)) and len(p) == 2 and p, 15,
                   what="both pods in overlayctl pods -A")
    assert (got["stay"]["ip"], got["stay"]["node"], got["stay"]["labels"]) == (
        stay_ip, "node1", {"app": "web"})
    assert got["gone"]["namespace"] == "shop" and got["gone"]["ip"] == gone_ip
    # one watch of subnets/ (the pod-lease GC rides on the lease watch), the config key's
    # and the policy agent's four (policies, namespaces, pods, nodes): six in all, where
    # the GC's own watch made seven
    wait_for(lambda: etcd_watchers(topo) >= 6, 10, what="overlayd's watches")
    time.sleep(1.0)
    assert etcd_watchers(topo) == 6
    assert node.stop(signal.SIGKILL) is not None  # down: no clean shutdown
    rt.call("DEL", "c-gone", gone_ns)
    _, new_ip = rt.add("c-new", "new")
    assert set(pods(topo, node)) == {"stay", "gone"}  # nobody publishes meanwhile
    node.start("--node-name", "node1", "--cni-data-dir", rt.data_dir)
    node.wait_ready()
    got = wait_for(lambda: (p := pods(topo, node)) and set(p) == {"stay", "new"} and p, 15,
                   what="the registry caught up")
    assert got["new"]["ip"] == new_ip and got["stay"]["ip"] == stay_ip
    assert "published pod shop/new" in node.log()
    assert "pod shop/gone" in node.log() and "removed from the registry" in node.log()
