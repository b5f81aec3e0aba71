"""End-to-end tests on the lab (issue 5 part 3): one 3-node lab shared by the module.

Tests run in file order on the shared lab; each leaves it with every node ready.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings

import pytest

from overlay.lab.matrix import ping
from overlay.lab.system import ip

from .support.labfixture import (
    ContinuousPing,
    UnderlayCapture,
    keep_logs,
    lab_names,
    lab_pids,
    leftovers,
    poll,
    remote_entries,
    running_lab,
    vtep_mac,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ETCD_RECOVERY_BOUND = 10.0
LAB = os.path.join(os.path.dirname(sys.executable), "overlay-lab")


@pytest.fixture(scope="module")
def lab(request):
    failed_before = request.session.testsfailed
    with running_lab(nodes=3, pods_per_node=2) as lab:
        yield lab
        if request.session.testsfailed > failed_before:
            # stacklevel=1: the warning is about this lab, not about pytest's call of the fixture
            warnings.warn(f"lab e2e failed: the lab's logs are kept in {keep_logs(lab)}",
                          stacklevel=1)


def pods_on(lab, node):
    return lab.state.pods_of(node)


def pod_ns(lab, pod):
    return lab.spec.pod_ns(pod.name)


def cross_pair(lab):
    """A pod on node1 and a pod on node2."""
    return pods_on(lab, "node1")[0], pods_on(lab, "node2")[0]


def test_every_pod_reaches_every_pod(lab):
    from overlay.lab.cli import endpoints
    from overlay.lab.matrix import reachability
    eps = endpoints(lab)
    assert len(eps) == 6 and len({e.ip for e in eps}) == 6
    m = reachability(eps, attempts=1)
    failed = [pair for pair, ok in m.items() if not ok]
    assert not failed, f"unreachable pairs: {failed}"
    same_node = [(a.name, b.name) for a in eps for b in eps if a != b and a.node == b.node]
    assert same_node and all(m[p] for p in same_node)


def test_pod_subnets_and_leases(lab):
    leases = json.loads(lab.overlayctl("-o", "json", "leases", "list").stdout)
    by_ip = {lease["public_ip"]: lease for lease in leases}
    for node in lab.state.nodes:
        subnet = lab.node_subnet(node)
        lease = by_ip[str(lab.spec.node_ip(node))]
        assert lease["subnet"] == subnet and lease["vni"] == 1
        assert lease["vtep_mac"].lower() == vtep_mac(lab, node)
        for pod in pods_on(lab, node):
            assert pod.ip.startswith(subnet.rsplit(".", 2)[0] + ".")


def test_no_nat_vxlan_on_the_underlay(lab):
    from scapy.layers.inet import ICMP, IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.layers.vxlan import VXLAN
    a, b = cross_pair(lab)
    cap = UnderlayCapture(lab)
    try:
        assert ping(pod_ns(lab, a), b.ip, count=3, wait=1)
    finally:
        frames = cap.stop()
    seen = []
    for raw in frames:
        outer = Ether(raw)
        if IP not in outer or UDP not in outer or outer[UDP].dport != 8472:
            continue
        vx = VXLAN(bytes(outer[UDP].payload))
        inner = vx.payload
        if IP in inner and ICMP in inner:
            seen.append((outer[IP].src, outer[IP].dst, vx.vni, inner[IP].src, inner[IP].dst,
                         inner[ICMP].type))
    node1, node2 = str(lab.spec.node_ip("node1")), str(lab.spec.node_ip("node2"))
    assert (node1, node2, 1, a.ip, b.ip, 8) in seen, seen   # echo request, pod IPs inside
    assert (node2, node1, 1, b.ip, a.ip, 0) in seen, seen   # echo reply, pod IPs inside


def test_mtu_1422_byte_payload_with_df_crosses_nodes(lab):
    a, b = cross_pair(lab)
    assert ping(pod_ns(lab, a), b.ip, count=1, wait=2, size=1422, dont_fragment=True, attempts=2)
    # One byte more does not fit the pod MTU (1450 = 1500 - 50 of VXLAN) with DF set.
    assert not ping(pod_ns(lab, a), b.ip, count=1, wait=1, size=1423, dont_fragment=True)


def test_overlayd_sigkill_and_restart_loses_no_packet(lab):
    a, b = cross_pair(lab)
    pinger = ContinuousPing(pod_ns(lab, a), b.ip, interval=0.05, count=80)
    try:
        time.sleep(0.5)
        for node in ("node1", "node2"):
            old = lab.daemon_pid(node)
            lab.stop_daemon(node, signal.SIGKILL)
            assert lab.daemon_pid(node) is None
            lab.start_daemon(node)
            lab.wait_ready([node], timeout=30)
            assert lab.daemon_pid(node) not in (None, old)
        sent, received, out = pinger.result(timeout=30)
    finally:
        pinger.kill()
    assert sent == 80 and received == 80, out


def test_node_added_reachable_from_every_pod_within_2s(lab):
    node = lab.state.nodes[-1]
    new = f"node{int(node[4:]) + 1}"
    lab.state.add_node(new)
    lab._save()
    lab.ensure_node(new)
    lab.wait_ready([new], timeout=30)
    t_lease = time.monotonic()
    subnet = lab.node_subnet(new)
    peers = [n for n in lab.state.nodes if n != new]

    def routes_everywhere():  # the route is programmed last, after neigh and FDB
        return all(f"route {subnet}" in remote_entries(lab, p).mentions(
            subnet, str(lab.spec.node_ip(new)), None) for p in peers)
    assert poll(routes_everywhere, 2.0) is not None, "new lease not programmed on every peer in 2 s"
    assert time.monotonic() - t_lease < 2.0
    pod = lab.ensure_pod(new, 1)
    others = [p for p in lab.state.pods.values() if p.node != new]

    def all_reach():
        return all(ping(pod_ns(lab, o), pod.ip, count=1, wait=0.5) for o in others)
    took = poll(all_reach, 2.0, interval=0)
    assert took is not None and took <= 2.0, f"{new}'s pod not reachable from every pod in 2 s"


def test_node_removed_entries_gone_from_every_peer_within_2s(lab):
    node = lab.state.nodes[-1]
    subnet, public_ip, mac = lab.node_subnet(node), str(lab.spec.node_ip(node)), vtep_mac(lab, node)
    peers = [n for n in lab.state.nodes if n != node]
    assert all(remote_entries(lab, p).mentions(subnet, public_ip, mac) for p in peers)
    lab.stop_daemon(node)
    t0 = time.monotonic()
    lab.overlayctl("leases", "release", subnet, "--yes")

    def gone_everywhere():
        return not any(remote_entries(lab, p).mentions(subnet, public_ip, mac) for p in peers)
    took = poll(gone_everywhere, 2.0)
    assert took is not None, {p: remote_entries(lab, p).mentions(subnet, public_ip, mac)
                              for p in peers}
    assert time.monotonic() - t0 < 2.0
    lab.remove_node(node)
    assert node not in lab.state.nodes
    assert not any(p.node == node for p in lab.state.pods.values())


def test_etcd_down_30s_loses_no_packet_and_daemons_recover(lab):
    a, b = cross_pair(lab)
    c = pods_on(lab, "node3")[0]
    pingers = [ContinuousPing(pod_ns(lab, a), b.ip, interval=0.2, count=175),
               ContinuousPing(pod_ns(lab, c), a.ip, interval=0.2, count=175)]
    try:
        time.sleep(0.5)
        lab.stop_etcd()
        assert not lab.etcd_healthy()
        time.sleep(30)
        lab.start_etcd()
        results = [p.result(timeout=30) for p in pingers]
    finally:
        for p in pingers:
            p.kill()
    for sent, received, out in results:
        assert sent == 175 and received == 175, out
    pids = {n: lab.daemon_pid(n) for n in lab.state.nodes}
    assert all(pids.values()), pids
    lab.wait_ready(lab.state.nodes, timeout=30)
    new = lab.add_node(pods_per_node=1)
    pod = lab.state.pods_of(new)[0]
    others = [p for p in lab.state.pods.values() if p.node != new]
    # The issue bounds the normal case at 2 s (tested above); after an outage the daemons'
    # etcd channels reconnect with a backoff capped at 1 s and the watch re-opens with one
    # capped at 2 s. Usually well under 5 s; once, in a full-suite run, over 5 s: bound 10 s
    # (it was 15 s before the reconnect backoff was capped).
    took = poll(lambda: all(ping(pod_ns(lab, o), pod.ip, count=1, wait=0.5) for o in others),
                ETCD_RECOVERY_BOUND, interval=0)
    assert took is not None, f"{new} not reachable from every pod {ETCD_RECOVERY_BOUND} s " \
                             "after etcd returned"
    assert {n: lab.daemon_pid(n) for n in pids} == pids  # recovered, not restarted


def test_cli_status_and_idempotent_up_repairs(lab):
    env = dict(os.environ)
    args = ["--name", lab.spec.prefix, "--lab-dir", lab.spec.base_dir]
    st = json.loads(subprocess.run([LAB, "status", "-o", "json", *args], capture_output=True,
                                   text=True, check=True, env=env).stdout)
    assert [n["name"] for n in st["nodes"]] == lab.state.nodes
    assert all(n["ready"] and n["subnet"] for n in st["nodes"])
    assert st["etcd"]["healthy"]
    # Break three parts, then `up` again: it reports the running lab and repairs them.
    victim = pods_on(lab, "node1")[1]
    ip("netns", "delete", pod_ns(lab, victim))
    lab.stop_daemon("node2", signal.SIGKILL)
    # A pod whose ADD was interrupted: the plugin reserved its IP, lab.json has no result.
    half = pods_on(lab, "node1")[0]
    half.result = half.ip = None
    lab._save()
    cp = subprocess.run([LAB, "up", *args], capture_output=True, text=True, env=env, timeout=120)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "exists" in cp.stdout and "all " in cp.stdout and "pairs reachable" in cp.stdout
    assert "SUBNET" in cp.stdout and "PUBLIC-IP" in cp.stdout   # the lease table
    assert "Tear down: overlay-lab down" in cp.stdout
    assert "export PATH=" in cp.stdout and "-- overlayctl diagnose" in cp.stdout  # cheat-sheet
    lab.state = type(lab)(lab.spec).state
    assert lab.daemon_pid("node2") is not None
    assert ping(pod_ns(lab, pods_on(lab, "node2")[0]), lab.state.pods[victim.name].ip)
    assert ping(pod_ns(lab, pods_on(lab, "node2")[0]), lab.state.pods[half.name].ip)
    out = subprocess.run([LAB, "exec", *args, "node1", "--", "ip", "-o", "addr", "show", "eth0"],
                         capture_output=True, text=True, check=True).stdout
    assert "192.168.1.11/24" in out
    # Bad requests: one clear line, exit 1, nothing changed.
    for argv, msg in ((["remove-node", *args, "node42"], "has no node 'node42'"),
                      (["exec", *args, "pod-node9-9", "--", "true"], "no node or pod"),
                      (["status", "--name", "ovltnone", "--lab-dir", lab.spec.base_dir],
                       "no lab named ovltnone")):
        cp = subprocess.run([LAB, *argv], capture_output=True, text=True, timeout=30)
        assert cp.returncode == 1 and msg in cp.stderr and "Traceback" not in cp.stderr, cp.stderr
    assert lab.state.nodes == type(lab)(lab.spec).state.nodes


def test_exec_runs_the_projects_tools_against_the_node(lab):
    """From a plain root PATH, ``exec node1 -- overlayctl ...`` finds the venv's overlayctl
    and reaches the lab's etcd; status names the healthz address overlayd really serves."""
    args = ["--name", lab.spec.prefix, "--lab-dir", lab.spec.base_dir]
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"}
    cp = subprocess.run([LAB, *args, "exec", "node1", "--", "overlayctl", "-o", "json",
                         "leases", "list"], capture_output=True, text=True, env=env, timeout=30)
    assert cp.returncode == 0, cp.stderr
    assert sorted(lease["public_ip"] for lease in json.loads(cp.stdout)) == sorted(
        str(lab.spec.node_ip(n)) for n in lab.state.nodes)
    st = json.loads(subprocess.run([LAB, "status", *args, "-o", "json"], capture_output=True,
                                   text=True, check=True, env=env).stdout)
    for node in st["nodes"]:
        with open(f"/proc/{node['pid']}/cmdline") as f:
            argv = f.read().split("\0")
        assert argv[argv.index("--healthz-addr") + 1] == node["healthz"]
        cp = subprocess.run([LAB, "exec", *args, node["name"], "--", "curl", "-s", "-o",
                             "/dev/null", "-w", "%{http_code}", f"http://{node['healthz']}/readyz"],
                            capture_output=True, text=True, env=env, timeout=30)
        assert cp.stdout == "200", cp.stdout + cp.stderr
    table = subprocess.run([LAB, "status", *args], capture_output=True, text=True, check=True,
                           env=env).stdout
    assert "HEALTHZ" in table and st["nodes"][0]["healthz"] in table
    # The cheat-sheet's diagnose, with no flags: exec supplies the node's files.
    cp = subprocess.run([LAB, "exec", *args, "node1", "--", "overlayctl", "-o", "json",
                         "diagnose", "--no-probe"], capture_output=True, text=True, env=env,
                        timeout=60)
    report = json.loads(cp.stdout)
    failed = [c for c in report["checks"] if c["status"] == "fail"]
    assert cp.returncode == 0 and not failed, (failed, cp.stderr)


def test_up_keeps_add_node_pods_and_closed_pipes_end_quietly(lab):
    args = ["--name", lab.spec.prefix, "--lab-dir", lab.spec.base_dir]
    cp = subprocess.run([LAB, "add-node", *args, "--pods", "0"], capture_output=True,
                        text=True, timeout=120)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    lab.state = type(lab)(lab.spec).state
    new = lab.state.nodes[-1]
    try:
        # `up | head -1`: the reader leaves after one line; up still repairs everything.
        ip("netns", "delete", pod_ns(lab, pods_on(lab, "node1")[0]))
        sh = subprocess.run(["bash", "-c", f'"$0" up {" ".join(args)} --no-matrix | head -1; '
                             'echo "rc=${PIPESTATUS[0]}" >&2', LAB],
                            capture_output=True, text=True, timeout=180)
        assert sh.stdout.count("\n") == 1, sh.stdout
        assert "Broken pipe" not in sh.stderr and "Traceback" not in sh.stderr, sh.stderr
        assert sh.stderr.strip().splitlines()[-1] in ("rc=0", "rc=141"), sh.stderr
        lab.state = type(lab)(lab.spec).state
        assert pods_on(lab, new) == []                  # add-node --pods 0 is remembered
        assert ping(pod_ns(lab, pods_on(lab, "node2")[0]), pods_on(lab, "node1")[0].ip)
        sh = subprocess.run(["bash", "-c", f'"$0" status {" ".join(args)} | head -1; '
                             'echo "rc=${PIPESTATUS[0]}" >&2', LAB],
                            capture_output=True, text=True, timeout=60)
        assert sh.stdout.startswith(f"lab {lab.spec.prefix} ") and "Broken pipe" not in sh.stderr
        assert sh.stderr.strip().splitlines()[-1] in ("rc=0", "rc=141"), sh.stderr
    finally:
        subprocess.run([LAB, "remove-node", *args, new], capture_output=True, timeout=120)
        lab.state = type(lab)(lab.spec).state


def test_down_leaves_nothing_behind(lab):
    names, pids = lab_names(lab), lab_pids(lab)
    assert len(pids) == len(lab.state.nodes) + 1
    mine = lab.spec.node_file("node1", "notes.txt")   # a user's file inside a node's dir
    with open(mine, "w") as f:
        f.write("mine\n")
    cp = subprocess.run([LAB, "down", "--name", lab.spec.prefix, "--lab-dir", lab.spec.base_dir],
                        capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0, cp.stderr
    assert [line for line in cp.stdout.splitlines() if "kept " in line] == [
        f"==> kept      {mine} (not made by the lab)"], cp.stdout
    os.unlink(mine)
    os.rmdir(os.path.dirname(mine))       # down left nothing else there ...
    os.rmdir(lab.spec.lab_dir)            # ... nor in the lab dir
    lab.state = None
    assert leftovers(lab, names, pids) == []
    assert not os.path.exists(os.path.join(lab.spec.base_dir, f".{lab.spec.prefix}.lock"))
