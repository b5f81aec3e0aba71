"""The lab as the seed's example cluster (issue 11 item 5), through the command line.

One 3-node lab (one pod per node) made by ``overlay-lab up`` for the module; tests run in
file order and leave it as they found it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from overlay.lab.lab import Lab
from overlay.lab.spec import LabSpec
from overlay.lab.system import in_netns, netns_exists

from .support.labfixture import TEST_PREFIX, lab_pids, leftovers

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LAB = os.path.join(os.path.dirname(sys.executable), "overlay-lab")
NFT_TABLE = f"{TEST_PREFIX}probe"     # made only inside a test pod's namespace
SEED_TABLE = ["NODE    NODE-IP        POD-CIDR",
              "node1   192.168.1.11   10.244.1.0/24",
              "node2   192.168.1.12   10.244.2.0/24",
              "node3   192.168.1.13   10.244.3.0/24"]


@dataclass
class Made:
    lab: Lab
    up_output: str

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([LAB, *args, "--name", self.lab.spec.prefix,
                               "--lab-dir", self.lab.spec.base_dir],
                              capture_output=True, text=True, timeout=timeout)

    def fresh(self) -> Lab:
        self.lab = Lab(self.lab.spec, progress=lambda m: None)
        return self.lab


@pytest.fixture(scope="module")
def made() -> Iterator[Made]:
    base = tempfile.mkdtemp(prefix=f"{TEST_PREFIX}-pods-")
    spec = LabSpec(TEST_PREFIX, base)
    try:
        cp = subprocess.run([LAB, "up", "--pods-per-node", "1", "--name", spec.prefix,
                             "--lab-dir", base], capture_output=True, text=True, timeout=180)
        assert cp.returncode == 0, cp.stdout + cp.stderr
        yield Made(Lab(spec, progress=lambda m: None), cp.stdout)
    finally:
        lab = Lab(spec, progress=lambda m: None)
        if lab.state is not None:
            lab.down()
        shutil.rmtree(base, ignore_errors=True)


def test_up_prints_the_seeds_table_and_names_each_node(made):
    lines = made.up_output.splitlines()
    start = lines.index(SEED_TABLE[0])
    assert lines[start:start + 4] == SEED_TABLE, made.up_output
    leases = json.loads(made.lab.overlayctl("-o", "json", "leases", "list").stdout)
    assert sorted((lease["public_ip"], lease["subnet"], lease["reserved"]) for lease in leases) == [
        ("192.168.1.11", "10.244.1.0/24", True), ("192.168.1.12", "10.244.2.0/24", True),
        ("192.168.1.13", "10.244.3.0/24", True)]
    for node in made.lab.state.nodes:
        with open(f"/proc/{made.lab.daemon_pid(node)}/cmdline") as f:
            argv = f.read().split("\0")
        assert argv[argv.index("--node-name") + 1] == node


def _running(pid: int) -> bool:
    """True while ``pid`` runs (an exited child of a finished command lingers as a zombie
    until its new parent reaps it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _ipam_files(lab: Lab, node: str) -> set[str]:
    found = set()
    for _root, _, names in os.walk(lab.spec.node_file(node, "ipam")):
        found |= {n for n in names if n[0].isdigit()}
    return found


def test_pod_add_and_del_with_namespace_and_labels(made):
    cp = made.run("pod", "add", "db", "--node", "node2", "--namespace", "web",
                  "--labels", "app=db,tier=be")
    assert cp.returncode == 0, cp.stdout + cp.stderr
    lab = made.fresh()
    pod = lab.find_pod("web/db")
    assert (pod.namespace, pod.name, pod.node, pod.labels) == ("web", "db", "node2",
                                                               {"app": "db", "tier": "be"})
    assert pod.ip and pod.ip.startswith("10.244.2.") and pod.ip in _ipam_files(lab, "node2")
    ns = lab.spec.pod_ns(pod.key)
    assert ns == f"{lab.spec.prefix}-web_db" and netns_exists(ns)
    got = subprocess.run(in_netns(ns, ["ip", "-4", "-o", "addr", "show", "eth0"]),
                         capture_output=True, text=True, check=True).stdout
    assert f" {pod.ip}/24 " in got
    by_exec = subprocess.run([LAB, "--name", lab.spec.prefix, "--lab-dir", lab.spec.base_dir,
                              "exec", "web/db", "--", "ip", "-4", "-o", "addr", "show", "eth0"],
                             capture_output=True, text=True, timeout=30)
    assert by_exec.returncode == 0 and f" {pod.ip}/24 " in by_exec.stdout, by_exec.stderr
    responder = lab.responder_pid(pod)
    assert responder is not None
    status = json.loads(made.run("status", "-o", "json").stdout)
    assert {"namespace": "web", "name": "db", "node": "node2", "ip": pod.ip,
            "labels": {"app": "db", "tier": "be"}}.items() <= next(
        p for p in status["pods"] if p["name"] == "db").items()
    # the pod registry: every lab pod with its IP and node, this one with its labels
    registry = _registry_once(made.lab, lambda got: ("web", "db") in got)
    assert registry[("web", "db")] == {"ip": pod.ip, "node": "node2",
                                       "labels": {"app": "db", "tier": "be"}}
    for p in lab.state.pods.values():
        assert registry[(p.namespace, p.name)]["ip"] == p.ip
        assert registry[(p.namespace, p.name)]["node"] == p.node
    # the same name again, or in another namespace: refused / a pod of its own
    again = made.run("pod", "add", "db", "--node", "node1", "--namespace", "web")
    assert again.returncode == 1 and "exists already" in again.stderr
    cp = made.run("pod", "del", "web/db")
    assert cp.returncode == 0, cp.stdout + cp.stderr
    lab = made.fresh()
    assert "web/db" not in lab.state.pods and not netns_exists(ns)
    assert pod.ip not in _ipam_files(lab, "node2")            # CNI DEL released the IP
    assert not _running(responder)                             # the responder stopped with it
    assert made.run("pod", "del", "web/db").returncode == 1
    assert ("web", "db") not in _registry_once(made.lab, lambda got: ("web", "db") not in got)


def _registry_once(lab: Lab, ready, timeout: float = 10.0) -> dict:
    """``overlayctl pods -A -o json`` by (namespace, name), once ``ready(it)`` holds (the
    daemons publish off the ADD's path, within a second)."""
    deadline = time.monotonic() + timeout
    while True:
        out = json.loads(lab.overlayctl("-o", "json", "pods", "-A").stdout)
        got = {(p["namespace"], p["name"]): {"ip": p["ip"], "node": p["node"],
                                            "labels": p["labels"]} for p in out}
        if ready(got) or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


@pytest.mark.parametrize("port", [80, 81])
@pytest.mark.parametrize("protocol", ["tcp", "udp"])
def test_probe_reaches_both_ports_over_both_protocols_across_nodes(made, protocol, port):
    cp = made.run("probe", "pod-node1-1", "default/pod-node3-1", "--port", str(port),
                  "--protocol", protocol)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert cp.stdout.startswith(f"reachable: default/pod-node1-1 -> default/pod-node3-1 "
                                f"(10.244.3.2) {protocol}/{port}: ") and cp.stdout.count("\n") == 1


def _nft(ns: str, script: str) -> None:
    subprocess.run(in_netns(ns, ["nft", "-f", "-"]), input=script, text=True, check=True,
                   capture_output=True)


def test_a_port_dropped_in_the_destination_pod_is_unreachable(made):
    dst = made.lab.spec.pod_ns("pod-node2-1")
    _nft(dst, f"table inet {NFT_TABLE} {{\n  chain input {{\n"
              "    type filter hook input priority 0;\n"
              "    tcp dport 81 drop\n    udp dport 80 drop\n  }\n}\n")
    try:
        cp = made.run("probe", "pod-node1-1", "pod-node2-1", "--port", "81", "--timeout", "1")
        assert cp.returncode == 1, cp.stdout + cp.stderr
        assert cp.stdout.count("\n") == 1 and cp.stdout.startswith("unreachable: ")
        assert "tcp/81: no answer within 1 s" in cp.stdout
        cp = made.run("probe", "pod-node1-1", "pod-node2-1", "--protocol", "udp", "--timeout", "1")
        assert cp.returncode == 1 and "udp/80: no answer" in cp.stdout, cp.stdout + cp.stderr
        # the other port and protocol of the same pod still answer
        for args in (("--port", "80"), ("--port", "81", "--protocol", "udp")):
            cp = made.run("probe", "pod-node1-1", "pod-node2-1", *args)
            assert cp.returncode == 0, (args, cp.stdout, cp.stderr)
        # matrix over udp/80: exactly the pairs into that pod fail
        cp = made.run("matrix", "--protocol", "udp", timeout=120)
        assert cp.returncode == 1 and "2 of 6 pairs FAILED" in cp.stdout, cp.stdout
        rows = {line.split()[0]: line.split()[2:] for line in cp.stdout.splitlines()
                if line.startswith("pod-node")}
        assert rows == {"pod-node1-1": ["-", "FAIL", "ok"], "pod-node2-1": ["ok", "-", "ok"],
                        "pod-node3-1": ["ok", "FAIL", "-"]}, cp.stdout
    finally:
        subprocess.run(in_netns(dst, ["nft", "delete", "table", "inet", NFT_TABLE]),
                       capture_output=True)
    cp = made.run("probe", "pod-node1-1", "pod-node2-1", "--port", "81")
    assert cp.returncode == 0, cp.stdout + cp.stderr


def test_matrix_over_udp_and_bad_probe_input(made):
    cp = made.run("matrix", "--protocol", "udp", "--port", "81", timeout=120)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "udp/81 from each pod to every other pod's responder; 6 pairs" in cp.stdout
    assert "all 6 pairs reachable" in cp.stdout
    for args, code, msg in ((("probe", "nosuch", "pod-node1-1"), 2, "has no pod 'nosuch'"),
                            (("probe", "pod-node1-1", "pod-node2-1", "--protocol", "icmp"), 2,
                             "Invalid value for '--protocol'"),
                            (("pod", "add", "x", "--node", "node9"), 1, "has no node 'node9'"),
                            (("pod", "add", "x", "--node", "node1", "--labels", "a"), 1,
                             "expected key=value")):
        cp = made.run(*args)
        assert cp.returncode == code and msg in cp.stderr, (args, cp.stderr)
        assert "Traceback" not in cp.stderr and cp.stdout == ""


def test_a_deleted_pod_namespace_is_repaired_with_its_responder(made):
    lab = made.fresh()
    cp = made.run("pod", "add", "api", "--node", "node3", "--labels", "app=api")
    assert cp.returncode == 0, cp.stderr
    lab = made.fresh()
    old = lab.responder_pid(lab.find_pod("api"))
    subprocess.run(["ip", "netns", "delete", lab.spec.pod_ns("api")], check=True)
    cp = made.run("up", "--no-matrix", timeout=120)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    lab = made.fresh()
    pod = lab.find_pod("api")
    assert lab.responder_pid(pod) not in (None, old)
    assert made.run("probe", "pod-node1-1", "api").returncode == 0
    assert len(lab.state.pods_of("node3")) == 2      # repaired, not counted as a node's pod
    pids = lab_pids(lab) + [lab.responder_pid(p) or 0 for p in lab.state.pods.values()]
    names = [lab.spec.pod_ns(k) for k in lab.state.pods]
    cp = made.run("down")
    assert cp.returncode == 0, cp.stderr
    lab.state = None
    assert leftovers(lab, names, pids) == []
