"""overlayd end to end: node namespaces on an underlay bridge, etcd in the underlay
namespace, one overlayd per node (``ip netns exec``), real VXLAN traffic between pods."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time

import pytest

from .support.ovd_topology import OVERLAYD, UNDERLAY_IP, Topology, nsx, sh, wait_for

pytestmark = pytest.mark.integration

DEV = "overlay.1"
FAKE_KEY = "/overlay/network/subnets/10.244.250.0-24"
FAKE_NET = "10.244.250.0/24"


def fake_lease(mac: str, public: str = "192.168.1.99") -> str:
    return json.dumps({"PublicIP": public, "BackendType": "vxlan",
                       "BackendData": {"VNI": 1, "VtepMAC": mac}})


def kernel(node) -> tuple[dict, set, dict]:
    """(permanent neighs ip->mac, fdb {(mac, dst)}, our routes dst->(gateway, dev))."""
    neighs = {n["dst"]: n.get("lladdr") for n in node.ip_json("neigh", "show", "dev", DEV)
              if "PERMANENT" in n.get("state", [])}
    fdb = {(f["mac"], f["dst"]) for f in
           json.loads(nsx(node.ns, "bridge", "-j", "fdb", "show", "dev", DEV).stdout or "[]")
           if "dst" in f}
    routes = {r["dst"]: (r.get("gateway"), r["dev"]) for r in node.ip_json("route", "show")
              if r.get("protocol") == "111"}
    return neighs, fdb, routes


def has_remote(node, net: str, mac: str, public: str) -> bool:
    neighs, fdb, routes = kernel(node)
    gw = net.split("/")[0]
    return neighs.get(gw) == mac and (mac, public) in fdb and routes.get(net) == (gw, DEV)


def lacks_remote(node, net: str, mac: str | None = None) -> bool:
    neighs, fdb, routes = kernel(node)
    gw = net.split("/")[0]
    return gw not in neighs and net not in routes and not any(m == mac for m, _ in fdb)


def expected_remotes(cluster, node) -> set:
    out = set()
    for other in cluster.nodes:
        if other is node or other.index > 3:
            continue
        out.add(str(other.subnet().network))
    return out


def all_programmed(cluster, node) -> bool:
    _, _, routes = kernel(node)
    return set(routes) == expected_remotes(cluster, node)


def ping(ns: str, dst: str, count: int = 3, interval: float = 0.2, deadline: int = 10):
    return nsx(ns, "ping", "-n", "-q", "-c", str(count), "-i", str(interval), "-W", "1",
               "-w", str(deadline), dst, check=False, timeout=deadline + 10)


def loss(out: str) -> tuple[int, int]:
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m, out
    return int(m.group(1)), int(m.group(2))


class Cluster(Topology):
    """The module's topology, with the two pods the data-path tests ping between."""

    pods: list[str]


@pytest.fixture(scope="module")
def cluster():
    topo = Cluster(3)
    topo.setup()
    try:
        topo.nodes[0].extra_args = ["--ip-masq"]
        topo.nodes[2].extra_args = ["--cni-socket", f"{topo.nodes[2].dir}/cni.sock"]
        for n in topo.nodes:
            n.start()
        for n in topo.nodes:
            n.wait_ready()
        topo.pods = [topo.nodes[0].add_pod(), topo.nodes[1].add_pod()]
        for n in topo.nodes:
            wait_for(lambda n=n: all_programmed(topo, n), 5, what=f"entries on {n.ns}")
        yield topo
    finally:
        topo.cleanup()


def test_pods_reach_each_other_across_vxlan(cluster):
    n1, n2, n3 = cluster.nodes
    p1, p2 = cluster.pods
    assert loss(ping(n1.pod_ns, p2).stdout) == (3, 3)
    assert loss(ping(n2.pod_ns, p1).stdout) == (3, 3)
    # the bridge side of a node is reachable from another node too
    assert loss(ping(n3.ns, str(n1.subnet().ip)).stdout) == (3, 3)
    for n in cluster.nodes:
        assert all_programmed(cluster, n)
        neighs, fdb, _ = kernel(n)
        assert len(neighs) == 2 and len(fdb) == 2


def test_lease_added_changed_removed_reflected_everywhere(cluster):
    cluster.etcdctl("put", FAKE_KEY, fake_lease("0e:fa:00:00:00:01"))
    for n in cluster.nodes:
        wait_for(lambda n=n: has_remote(n, FAKE_NET, "0e:fa:00:00:00:01", "192.168.1.99"), 3,
                 what=f"new lease on {n.ns}")
    cluster.etcdctl("put", FAKE_KEY, fake_lease("0e:fa:00:00:00:02", "192.168.1.98"))
    for n in cluster.nodes:
        wait_for(lambda n=n: has_remote(n, FAKE_NET, "0e:fa:00:00:00:02", "192.168.1.98"), 3,
                 what=f"changed lease on {n.ns}")
        _, fdb, _ = kernel(n)
        assert not any(m == "0e:fa:00:00:00:01" for m, _ in fdb), "stale FDB of the old MAC"
    cluster.etcdctl("del", FAKE_KEY)
    for n in cluster.nodes:
        wait_for(lambda n=n: lacks_remote(n, FAKE_NET, "0e:fa:00:00:00:02"), 3,
                 what=f"removed lease gone on {n.ns}")
        assert all_programmed(cluster, n)


def metric(node, name: str) -> float | None:
    status, text = node.http("/metrics")
    assert status == 200
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rpartition(" ")[2])
    return None


def routes_to(node, net: str) -> list[tuple[str, str | None]]:
    return [(r.get("protocol", "boot"), r.get("gateway")) for r in node.ip_json(
        "route", "show", "table", "main") if r["dst"] == net]


def test_a_static_route_for_a_leased_subnet_is_never_replaced_or_deleted(cluster):
    n1, n2, _ = cluster.nodes
    static = ["route", "add", FAKE_NET, "via", UNDERLAY_IP, "proto", "static"]
    mac = "0e:fa:00:00:00:07"
    try:
        sh("ip", "-n", n1.ns, *static)
        cluster.etcdctl("put", FAKE_KEY, fake_lease(mac))
        wait_for(lambda: has_remote(n2, FAKE_NET, mac, "192.168.1.99"), 3, what="peer programmed")
        wait_for(lambda: metric(n1, "overlay_route_conflicts") == 1, 5, what="conflict counted")
        assert routes_to(n1, FAKE_NET) == [("static", UNDERLAY_IP)]
        assert lacks_remote(n1, FAKE_NET, mac), "no neigh or FDB entry for a conflicting remote"
        assert "10.244.250.0/24 (public IP 192.168.1.99) left unprogrammed" in n1.log()
        # the operator removes the route: the next reconcile (2 s here) programs the remote
        sh("ip", "-n", n1.ns, "route", "del", FAKE_NET, "proto", "static")
        wait_for(lambda: has_remote(n1, FAKE_NET, mac, "192.168.1.99"), 5, what="programmed")
        assert metric(n1, "overlay_route_conflicts") == 0
        # a static route in another metric appears beside ours: ours would shadow it
        sh("ip", "-n", n1.ns, *static, "metric", "100")
        wait_for(lambda: routes_to(n1, FAKE_NET) == [("static", UNDERLAY_IP)], 5,
                 what="our route withdrawn")
        cluster.etcdctl("del", FAKE_KEY)
        wait_for(lambda: metric(n1, "overlay_route_conflicts") == 0, 5, what="conflict gone")
        wait_for(lambda: lacks_remote(n2, FAKE_NET, mac), 3, what="peer unprogrammed")
        assert routes_to(n1, FAKE_NET) == [("static", UNDERLAY_IP)], "our delete left it"
    finally:
        cluster.etcdctl("del", FAKE_KEY)
        for _ in range(2):
            sh("ip", "-n", n1.ns, "route", "del", FAKE_NET, "proto", "static", check=False)
    wait_for(lambda: all_programmed(cluster, n1), 5, what="back to the cluster's remotes")


def metric_values(node) -> dict:
    status, text = node.http("/metrics")
    assert status == 200
    return {name: float(value) for name, _, value in
            (line.rpartition(" ") for line in text.splitlines()
             if line and not line.startswith("#"))}


def test_garbage_leases_are_rejected_counted_and_never_programmed(cluster):
    n1, n2, _ = cluster.nodes
    real_key = f"/overlay/network/subnets/{n2.subnet().network.network_address}-24"
    real_mac = kernel(n1)[0][str(n2.subnet().network.network_address)]
    rogue = fake_lease(real_mac, "192.168.1.97")  # node 2's MAC at a rogue address
    garbage = {
        real_key + "\n": rogue,  # an alias of node 2's key
        real_key + "/x": rogue,
        "/overlay/network/subnets/10.244.251.0-24": fake_lease("0e:fb:00:00:00:01", "127.0.0.1"),
        "/overlay/network/subnets/128.0.0.0-1": fake_lease("0e:fb:00:00:00:02"),
        "/overlay/network/subnets/10.244.252.0-24": '{"PublicIP": "192.168.1.96", '
                                                    '"BackendData": {"VNI": 1e400}}',
        "/overlay/network/subnets/10.244.253.0-24": fake_lease(real_mac, "192.168.1.95"),
    }
    try:
        for key, value in garbage.items():
            cluster.etcdctl("put", key, value)
        cluster.etcdctl("put", FAKE_KEY, fake_lease("0e:fa:00:00:00:03"))  # valid, after
        for n in cluster.nodes:
            wait_for(lambda n=n: has_remote(n, FAKE_NET, "0e:fa:00:00:00:03", "192.168.1.99"), 3,
                     what=f"the lease put after the garbage on {n.ns}")
        _, fdb, routes = kernel(n1)
        assert (real_mac, n2.ip) in fdb and not any(
            dst in ("192.168.1.95", "192.168.1.97", "127.0.0.1") for _, dst in fdb)
        assert "128.0.0.0/1" not in routes and "10.244.251.0/24" not in routes
        m = metric_values(n1)
        for reason in ("bad-key", "public-ip-unusable", "subnet-length", "bad-value",
                       "vtep-mac-claimed"):
            assert m.get(f'overlay_leases_rejected_total{{reason="{reason}"}}', 0) >= 1, reason
        assert all(real_key not in name for name in m)  # labelled by reason only
        assert n1.http("/readyz") == (200, "ok\n")
    finally:
        for key in [*garbage, FAKE_KEY]:
            cluster.etcdctl("del", key)
    for n in cluster.nodes:
        wait_for(lambda n=n: all_programmed(cluster, n), 3, what=f"entries on {n.ns}")


def test_health_endpoints_and_metrics(cluster):
    n1 = cluster.nodes[0]
    assert n1.http("/healthz") == (200, "ok\n")
    assert n1.http("/readyz") == (200, "ok\n")
    status, text = n1.http("/metrics")
    assert status == 200
    metrics = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            metrics[name] = float(value)
    assert metrics["overlay_leases_known"] == 2
    assert metrics["overlay_remote_entries_programmed"] == 6
    assert metrics["overlay_reconcile_runs_total"] >= 1
    assert metrics["overlay_reconcile_duration_seconds_count"] >= 1
    assert "overlay_etcd_errors_total" in metrics
    assert 0 < metrics["overlay_lease_expiry_seconds"] <= 60
    assert n1.http("/nope")[0] == 404
    # node 3 serves the CNI plugin warm on its socket
    n3 = cluster.nodes[2]
    assert stat.S_ISSOCK(os.stat(f"{n3.dir}/cni.sock").st_mode)
    assert "serving the CNI plugin warm" in n3.log()


def test_masquerade_outside_but_never_pod_to_pod(cluster):
    n1, n2, _ = cluster.nodes
    p1, p2 = cluster.pods
    assert source_seen(cluster.underlay, UNDERLAY_IP, n1.pod_ns) == n1.ip  # NATed
    assert source_seen(n2.pod_ns, p2, n1.pod_ns) == p1  # pod-to-pod: not NATed
    # removed by hand -> restored by the periodic check
    nsx(n1.ns, "nft", "delete", "table", "ip", "overlay")
    wait_for(lambda: nsx(n1.ns, "nft", "list", "table", "ip", "overlay", check=False)
             .returncode == 0, 8, interval=0.2, what="masquerade table restored")
    # a node without --ip-masq has no table
    assert nsx(n2.ns, "nft", "list", "table", "ip", "overlay", check=False).returncode != 0


RECV = ("import socket,sys;s=socket.socket(2,2);s.bind(('0.0.0.0',int(sys.argv[1])));"
        "s.settimeout(6);d,a=s.recvfrom(64);print(a[0])")
SEND = ("import socket,sys,time\ns=socket.socket(2,2)\nfor _ in range(100):\n"
        " s.sendto(b'x',(sys.argv[1],int(sys.argv[2])));time.sleep(0.05)")


def source_seen(recv_ns: str, recv_ip: str, send_ns: str, port: int = 40123) -> str:
    rx = subprocess.Popen(["ip", "netns", "exec", recv_ns, sys.executable, "-c", RECV,
                           str(port)], stdout=subprocess.PIPE, text=True)
    tx = subprocess.Popen(["ip", "netns", "exec", send_ns, sys.executable, "-c", SEND,
                           recv_ip, str(port)], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    try:
        out, _ = rx.communicate(timeout=10)
    finally:
        tx.kill()
        tx.wait()
    return out.strip()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_stop_leaves_state_and_restart_keeps_traffic_and_mac(cluster, sig):
    n1, n2, _ = cluster.nodes
    p1, p2 = cluster.pods
    leases_before = cluster.leases()
    index_before = n2.ip_json("link", "show", DEV)[0]["ifindex"]
    mac_before = n2.ip_json("link", "show", DEV)[0]["address"]
    log_mark = len(n2.log())
    pinger = subprocess.Popen(["ip", "netns", "exec", n1.pod_ns, "ping", "-n", "-q", "-i",
                               "0.02", "-c", "150", "-W", "1", p2],
                              stdout=subprocess.PIPE, text=True)
    time.sleep(0.3)
    for n in (n1, n2):
        assert n.stop(sig) == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
    # everything stays while the daemons are down
    assert cluster.leases() == leases_before
    for n in (n1, n2):
        assert all_programmed(cluster, n)
    for n in (n1, n2):
        n.start()
    for n in (n1, n2):
        n.wait_ready()
    out, _ = pinger.communicate(timeout=30)
    sent, received = loss(out)
    assert sent == received == 150, out
    link = n2.ip_json("link", "show", DEV)[0]
    assert link["ifindex"] == index_before, "a restart must not recreate a compatible device"
    assert link["address"] == mac_before
    assert cluster.leases() == leases_before, "same subnet and VTEP MAC after a restart"
    assert "created VXLAN device" not in n2.log()[log_mark:]


def test_peer_deleted_while_down_is_cleaned_at_start(cluster):
    n1 = cluster.nodes[0]
    cluster.etcdctl("put", FAKE_KEY, fake_lease("0e:fa:00:00:00:03"))
    wait_for(lambda: has_remote(n1, FAKE_NET, "0e:fa:00:00:00:03", "192.168.1.99"), 3,
             what="fake lease programmed")
    assert n1.stop() == 0
    cluster.etcdctl("del", FAKE_KEY)
    n1.start()
    n1.wait_ready()
    assert lacks_remote(n1, FAKE_NET, "0e:fa:00:00:00:03")
    assert all_programmed(cluster, n1)


@pytest.mark.parametrize("how", ["delete device", "underlay flap"])
def test_device_repaired_within_2s(cluster, how):
    n2 = cluster.nodes[1]
    p1 = cluster.pods[0]
    before = kernel(n2)
    t0 = time.monotonic()
    if how == "delete device":
        nsx(n2.ns, "ip", "link", "del", DEV)
    else:
        nsx(n2.ns, "ip", "link", "set", "eth0", "down")
        nsx(n2.ns, "ip", "link", "set", "eth0", "up")
    wait_for(lambda: kernel(n2) == before and n2.ip_json("link", "show", DEV), 2,
             what=f"entries back after {how}")
    elapsed = time.monotonic() - t0
    assert elapsed < 2
    assert loss(ping(n2.pod_ns, p1, count=2).stdout)[1] >= 1


def test_lease_deleted_under_daemon_is_reacquired(cluster):
    n3 = cluster.nodes[2]
    key = f"/overlay/network/subnets/{n3.subnet().network.network_address}-24"
    before = cluster.leases()
    cluster.etcdctl("del", key)
    wait_for(lambda: cluster.leases() == before, 5, interval=0.1, what="lease re-acquired")
    for n in cluster.nodes:
        wait_for(lambda n=n: all_programmed(cluster, n), 3, what=f"entries on {n.ns}")


def test_lease_taken_over_moves_node_to_a_new_subnet(cluster):
    n3 = cluster.nodes[2]
    old = n3.subnet()
    key = f"/overlay/network/subnets/{old.network.network_address}-24"
    # an operator turns the subnet into a reservation for another node
    cluster.etcdctl("put", key, json.dumps({"PublicIP": "192.168.1.250", "BackendType": "vxlan",
                                            "BackendData": {"VNI": 1}}))
    try:
        wait_for(lambda: n3.subnet() != old, 5, interval=0.1, what="node 3 moved")
        new = n3.subnet()
        wait_for(lambda: [(a["local"], a["prefixlen"]) for a in
                          n3.ip_json("addr", "show", DEV)[0]["addr_info"]
                          if a["family"] == "inet"] == [(str(new.network.network_address), 32)],
                 3, what="device address follows the lease")
        for n in cluster.nodes[:2]:
            wait_for(lambda n=n: all_programmed(cluster, n), 3, what=f"new subnet on {n.ns}")
            assert str(old.network) not in kernel(n)[2], "reservation without a MAC skipped"
        assert "re-acquired a DIFFERENT subnet" in n3.log()
    finally:
        cluster.etcdctl("del", key)


def test_etcd_down_keeps_data_plane_and_catches_up(cluster):
    n1, n2, n3 = cluster.nodes
    p2 = cluster.pods[1]
    cluster.etcd.stop(signal.SIGKILL)
    try:
        sent, received = loss(ping(n1.pod_ns, p2, count=40, interval=0.05).stdout)
        assert sent == received == 40
        assert n1.http("/healthz")[0] == 200
        for n in cluster.nodes:
            assert n.proc.poll() is None, "overlayd must not exit while etcd is down"
    finally:
        cluster.etcd.start()
    cluster.etcdctl("put", FAKE_KEY, fake_lease("0e:fa:00:00:00:04"))
    for n in cluster.nodes:
        wait_for(lambda n=n: has_remote(n, FAKE_NET, "0e:fa:00:00:00:04", "192.168.1.99"), 8,
                 interval=0.1, what=f"catch-up on {n.ns}")
    cluster.etcdctl("del", FAKE_KEY)
    for n in cluster.nodes:
        wait_for(lambda n=n: lacks_remote(n, FAKE_NET), 5, what=f"cleanup on {n.ns}")


def test_restart_while_etcd_is_down_keeps_traffic(cluster):
    n1 = cluster.nodes[0]
    p2 = cluster.pods[1]
    before = kernel(n1)
    cluster.etcd.stop(signal.SIGKILL)
    try:
        assert n1.stop() == 0
        n1.start()
        wait_for(lambda: n1.http("/healthz")[0] == 200, 10, what="healthz while etcd is down")
        assert n1.http("/readyz")[0] == 503
        assert loss(ping(n1.pod_ns, p2, count=20, interval=0.05).stdout) == (20, 20)
        assert kernel(n1) == before, "entries must stay while etcd is unreachable"
    finally:
        cluster.etcd.start()
    n1.wait_ready()
    assert kernel(n1) == before


def test_not_ready_without_config_and_bad_config_one_line(cluster):
    extra = cluster.add_node(4)
    extra.start("--etcd-prefix", "/ovd-empty")
    try:
        wait_for(lambda: extra.http("/healthz")[0] == 200, 10, what="healthz of node 4")
        status, body = extra.http("/readyz")
        assert status == 503 and "no subnet lease" in body
    finally:
        assert extra.stop() == 0
    cluster.etcdctl("put", "/ovd-bad/config", json.dumps({"Network": "10.244.0.0/33"}))
    r = nsx(extra.ns, OVERLAYD, "--etcd-endpoints", cluster.etcd.endpoint, "--etcd-prefix",
            "/ovd-bad", "--subnet-file", f"{extra.dir}/bad.env", "--state-dir",
            f"{extra.dir}/bad", "--cni-socket", "", "--runtime-file", f"{extra.dir}/bad.json",
            check=False, timeout=30)
    assert r.returncode == 1
    errors = [line for line in r.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "Network" in errors[0] and "/ovd-bad/config" in errors[0]
    assert "Traceback" not in r.stderr
    assert not extra.ip_json("link", "show", "type", "vxlan"), "kernel touched before validation"
    r = nsx(extra.ns, OVERLAYD, "--etcd-endpoints", cluster.etcd.endpoint, "--iface", "nosuch0",
            "--subnet-file", f"{extra.dir}/bad.env", "--state-dir", f"{extra.dir}/bad",
            "--cni-socket", "", "--runtime-file", f"{extra.dir}/bad.json", check=False, timeout=30)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(
        "overlayd: error: --iface 'nosuch0': no interface matches")
    assert not extra.ip_json("link", "show", "type", "vxlan")


@pytest.fixture(scope="module")
def direct_cluster():
    topo = Topology(3)
    try:
        topo.setup({"Network": "10.244.0.0/16",
                    "Backend": {"Type": "vxlan", "VNI": 1, "DirectRouting": True}})
        # node 3 lives on another L2 subnet behind the underlay's router
        u, n3 = topo.underlay, topo.nodes[2]
        sh("ip", "-n", u, "addr", "add", "192.168.2.1/24", "dev", "br0")
        nsx(u, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        sh("ip", "-n", n3.ns, "addr", "flush", "dev", "eth0")
        sh("ip", "-n", n3.ns, "addr", "add", "192.168.2.13/24", "dev", "eth0")
        sh("ip", "-n", n3.ns, "route", "add", "default", "via", "192.168.2.1")
        n3.ip = "192.168.2.13"
        for n in topo.nodes:
            n.start()
        for n in topo.nodes:
            n.wait_ready()
        yield topo
    finally:
        topo.cleanup()


def test_direct_routing_for_peers_on_the_same_l2(direct_cluster):
    n1, n2, n3 = direct_cluster.nodes
    s2, s3 = str(n2.subnet().network), str(n3.subnet().network)

    def routes_ok():
        _, _, routes = kernel(n1)
        return routes.get(s2) == (n2.ip, "eth0") and routes.get(s3) == (
            s3.split("/")[0], DEV)
    wait_for(routes_ok, 5, what="direct route to node 2, VXLAN to node 3")
    neighs, fdb, _ = kernel(n1)
    assert s2.split("/")[0] not in neighs, "no VXLAN entries for a direct peer"
    p1, p2 = n1.add_pod(), n2.add_pod()
    assert loss(ping(n1.pod_ns, p2).stdout) == (3, 3)
    assert loss(ping(n3.ns, p1).stdout) == (3, 3)
