"""The CNI plugin on a dual-stack node, against the real kernel: one IPv4 and one IPv6
address per pod over one veth and one bridge, usable from the first packet; CHECK, DEL
and GC for both families; IPv4-only unchanged.  Runs as test_cni_plugin.py does: the
executable entry inside a node namespace made by the test, pods in namespaces of their
own, through the warm server and the in-process fallback."""

import json
import os
import shlex
import subprocess
import sys
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network

import pytest

from overlay.subnetenv import SubnetEnv, write_subnet_env

from .support.cni_node import CNINode, addrs6, sh, store_files

pytestmark = pytest.mark.integration

V6_SUBNET = "fd00:88:0:1::/64"
V6_NETWORK = "fd00:88::/56"
GW6 = "fd00:88:0:1::1"


@pytest.fixture(params=["warm", "cold"])
def node(request, tmp_path):
    n = CNINode(tmp_path, warm=request.param == "warm")
    try:
        yield n
    finally:
        n.close()


def dual(node, **overrides):
    return node.conf(ipv6Subnet=V6_SUBNET, ipv6Network=V6_NETWORK, **overrides)


def sysctl(ns, key):
    return sh("ip", "netns", "exec", ns, "sysctl", "-n", key).stdout.strip()


def test_add_gives_both_families_and_the_first_ipv6_packet_passes(node):
    pod = node.pod()
    doc = node.add("ds1", pod, conf=dual(node))
    # the first packet, right after ADD: a tentative address could not even be a source
    sh("ip", "netns", "exec", pod, "ping", "-6", "-c1", "-W2", GW6)
    assert doc["ips"] == [
        {"interface": 2, "address": "10.88.1.2/24", "gateway": "10.88.1.1"},
        {"interface": 2, "address": "fd00:88:0:1::2/64", "gateway": GW6}]
    assert [(r["dst"], r["gw"]) for r in doc["routes"]] == [
        ("0.0.0.0/0", "10.88.1.1"), ("10.88.0.0/16", "10.88.1.1"),
        ("::/0", GW6), (V6_NETWORK, GW6)]
    assert addrs6(node, pod, "eth0") == [("fd00:88:0:1::2/64", {"nodad"})]
    assert addrs6(node, node.name, "cni0") == [(f"{GW6}/64", {"nodad"})]
    routes6 = {(r["dst"], r.get("gateway")) for r in node.ip(pod, "-6", "route", "show")}
    assert {("default", GW6), (V6_NETWORK, GW6), (V6_SUBNET, None)} <= routes6
    assert sysctl(pod, "net.ipv6.conf.eth0.accept_dad") == "0"
    assert sysctl(pod, "net.ipv6.conf.eth0.disable_ipv6") == "0"
    assert sysctl(node.name, "net.ipv6.conf.all.forwarding") == "1"
    links = node.links(pod)
    assert links["eth0"]["mtu"] == 1400 and len(node.veths()) == 1  # one veth, both families
    d = os.path.join(node.data_dir, f"ovcni-{node.tag}")
    assert store_files(node) == ["10.88.1.2", "fd00:88:0:1::2", "last_reserved_ip.0",
                                 "last_reserved_ip.1"]
    with open(os.path.join(d, "fd00:88:0:1::2"), "rb") as f:
        assert f.read() == b"ds1\r\neth0"
    with open(os.path.join(d, "last_reserved_ip.1"), "rb") as f:
        assert f.read() == b"fd00:88:0:1::2"
    with open(os.path.join(d, "pods", "ds1@eth0.json"), "rb") as f:
        assert json.load(f)["ips"] == ["10.88.1.2", "fd00:88:0:1::2"]


def test_pods_reach_each_other_over_ipv6_from_the_first_packet(node):
    a, b = node.pod(), node.pod()
    node.add("ds-a", a, conf=dual(node))
    ip_b = node.add("ds-b", b, conf=dual(node))["ips"][1]["address"].split("/")[0]
    sh("ip", "netns", "exec", a, "ping", "-6", "-c1", "-W2", ip_b)
    sh("ip", "netns", "exec", node.name, "ping", "-6", "-c1", "-W2", ip_b)
    sh("ip", "netns", "exec", b, "ping", "-c1", "-W2", "10.88.1.2")  # IPv4 as before


def test_check_verifies_both_families_and_del_releases_both(node):
    pod = node.pod()
    conf = dual(node)
    doc = node.add("ds-chk", pod, conf=conf)
    ok = node.cni("CHECK", "ds-chk", pod, conf=dict(conf, prevResult=doc))
    assert ok.rc == 0 and ok.stdout == "", ok
    sh("ip", "-n", pod, "-6", "route", "del", "default")
    gone = node.cni("CHECK", "ds-chk", pod, conf=dict(conf, prevResult=doc))
    assert gone.code == 103 and f"route ::/0 via {GW6} is missing" in gone.doc["msg"], gone
    sh("ip", "-n", pod, "-6", "addr", "flush", "dev", "eth0", "scope", "global")
    lacks = node.cni("CHECK", "ds-chk", pod, conf=dict(conf, prevResult=doc))
    assert lacks.code == 103 and "lacks address fd00:88:0:1::2/64" in lacks.doc["msg"], lacks
    v4_only = dict(doc, ips=doc["ips"][:1])
    half = node.cni("CHECK", "ds-chk", pod, conf=dict(conf, prevResult=v4_only))
    assert half.code == 103 and "no IPv6 address" in half.doc["msg"], half
    result = node.cni("DEL", "ds-chk", pod, conf=conf)
    assert result.rc == 0, result
    assert store_files(node) == ["last_reserved_ip.0", "last_reserved_ip.1"]
    node.wait_for(lambda: node.veths() == [], what="veth teardown")


def test_legacy_result_names_each_family(node):
    pod = node.pod()
    doc = node.add("ds-old", pod, conf=dual(node, cniVersion="0.4.0"))
    assert [(ip["version"], ip["address"]) for ip in doc["ips"]] == [
        ("4", "10.88.1.2/24"), ("6", "fd00:88:0:1::2/64")]
    check = node.cni("CHECK", "ds-old", pod, conf=dual(node, cniVersion="0.4.0", prevResult=doc))
    assert check.rc == 0, check


def test_gc_releases_both_families_of_stale_attachments(node):
    pods = [node.pod() for _ in range(2)]
    for i in range(2):
        node.add(f"dsgc{i}", pods[i], conf=dual(node))
    valid = [{"containerID": "dsgc1", "ifname": "eth0"}]
    result = node.cni("GC", conf=dual(node, **{"cni.dev/valid-attachments": valid}), ifname=None)
    assert result.rc == 0 and result.stdout == "", result
    assert store_files(node) == ["10.88.1.3", "fd00:88:0:1::3", "last_reserved_ip.0",
                                 "last_reserved_ip.1"]
    assert len(node.veths()) == 1


def test_requested_ips_per_family(node):
    pod, pod2 = node.pod(), node.pod()
    doc = node.add("ds-req", pod, conf=dual(node),
                   env={"CNI_ARGS": "IP=10.88.1.9,fd00:88:0:1::9"})
    assert [ip["address"] for ip in doc["ips"]] == ["10.88.1.9/24", "fd00:88:0:1::9/64"]
    conf = dual(node, runtimeConfig={"ips": ["fd00:88:0:1::a/64"]})
    doc2 = node.add("ds-req2", pod2, conf=conf)
    assert doc2["ips"][1]["address"] == "fd00:88:0:1::a/64"
    taken = node.cni("ADD", "ds-req3", node.pod(), conf=dual(node),
                     env={"CNI_ARGS": "IP=fd00:88:0:1::9"})
    assert taken.code == 101 and "fd00:88:0:1::9 is already allocated" in taken.doc["msg"]
    assert store_files(node) == ["10.88.1.10", "10.88.1.9", "fd00:88:0:1::9", "fd00:88:0:1::a",
                                 "last_reserved_ip.0", "last_reserved_ip.1"]  # given back
    v4_only = node.cni("ADD", "ds-req4", node.pod(), env={"CNI_ARGS": "IP=fd00:88:0:1::b"})
    assert v4_only.code == 7 and "no IPv6 subnet" in v4_only.doc["msg"], v4_only
    two = node.cni("ADD", "ds-req5", node.pod(), conf=dual(node),
                   env={"CNI_ARGS": "IP=fd00:88:0:1::c,fd00:88:0:1::d"})
    assert two.code == 7 and "two IPv6 addresses" in two.doc["msg"], two
    assert len(node.veths()) == 2


def test_ipv4_only_node_is_unchanged(node):
    pod = node.pod()
    doc = node.add("v4", pod)
    macs = [i["mac"] for i in doc["interfaces"]]
    veth = doc["interfaces"][1]["name"]
    assert doc == {
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "cni0", "mac": macs[0], "mtu": 1400},
                       {"name": veth, "mac": macs[1], "mtu": 1400},
                       {"name": "eth0", "mac": macs[2], "sandbox": f"/var/run/netns/{pod}",
                        "mtu": 1400}],
        "ips": [{"interface": 2, "address": "10.88.1.2/24", "gateway": "10.88.1.1"}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.88.1.1"},
                   {"dst": "10.88.0.0/16", "gw": "10.88.1.1"}],
        "dns": {}}
    assert addrs6(node, node.name, "cni0") == [] and addrs6(node, pod, "eth0") == []
    assert store_files(node) == ["10.88.1.2", "last_reserved_ip.0"]


def test_a_dual_stack_mtu_below_1280_is_refused(node):
    pod = node.pod()
    result = node.cni("ADD", "ds-mtu", pod, conf=dual(node, mtu=1200))
    assert result.code == 7 and "below IPv6's minimum 1280" in result.doc["msg"], result
    assert store_files(node) == [] and node.veths() == []


def test_subnet_env_ipv6_half_makes_the_pod_dual_stack(node):
    env_path = os.path.join(node.dir, "subnet.env")
    write_subnet_env(env_path, SubnetEnv(
        IPv4Network("10.89.0.0/16"), IPv4Interface("10.89.5.1/24"), 1330, False,
        IPv6Network("fd00:89::/56"), IPv6Interface("fd00:89:0:5::1/64")))
    conf = node.conf(subnet=None, network=None, mtu=None, subnetFile=env_path)
    pod = node.pod()
    assert node.cni("STATUS", conf=conf, ifname=None).rc == 0
    doc = node.add("senv6", pod, conf=conf)
    sh("ip", "netns", "exec", pod, "ping", "-6", "-c1", "-W2", "fd00:89:0:5::1")
    assert [(ip["address"], ip["gateway"]) for ip in doc["ips"]] == [
        ("10.89.5.2/24", "10.89.5.1"), ("fd00:89:0:5::2/64", "fd00:89:0:5::1")]
    assert ("fd00:89::/56", "fd00:89:0:5::1") in {
        (r["dst"], r.get("gw")) for r in doc["routes"]}
    assert node.links(pod)["eth0"]["mtu"] == 1330  # subnet.env's one MTU, for both families
    sh("ip", "-n", node.name, "-6", "addr", "flush", "dev", "cni0", "scope", "global")
    status = node.cni("STATUS", conf=conf, ifname=None)
    assert status.code == 51 and "fd00:89:0:5::1/64" in status.doc["msg"], status
    check = node.cni("CHECK", "senv6", pod, conf=dict(conf, prevResult=doc))
    assert check.code == 103 and "lacks gateway fd00:89:0:5::1/64" in check.doc["msg"], check


# --- ipMasq for IPv6 ----------------------------------------------------------------------

OUT6 = "fd00:99::2"  # an address outside the cluster's IPv6 network
REMOTE_POD6 = "fd00:88:0:2::2"  # inside V6_NETWORK, on another "node"


def nat_rules(node, tool):
    return sh("ip", "netns", "exec", node.name, tool, "-w", "-t", "nat", "-S").stdout


def outside_world(node):
    """A namespace beyond the node: an address outside V6_NETWORK (fd00:99::2) and one of
    a remote pod inside it (fd00:88:0:2::2), both routed back only to the node's side of
    the link, so a reply reaches the pod's own address only if the node routes it."""
    ns = f"ovcni-out-{node.tag}"
    sh("ip", "netns", "add", ns)
    node.pods.append(ns)  # removed with the pods
    sh("ip", "-n", node.name, "link", "add", "ovout", "type", "veth", "peer", "name", "ovin",
       "netns", ns)
    for where, dev, addrs in ((node.name, "ovout", ("fd00:99::1/64", "fd00:88:0:2::1/64")),
                              (ns, "ovin", (f"{OUT6}/64", f"{REMOTE_POD6}/64"))):
        for a in addrs:
            sh("ip", "-n", where, "addr", "add", a, "dev", dev, "nodad")
        sh("ip", "-n", where, "link", "set", dev, "up")
    sh("ip", "-n", ns, "-6", "route", "add", V6_SUBNET, "via", "fd00:88:0:2::1")
    return ns


RECEIVE = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 9999)); s.settimeout(5); print("ready", flush=True)
print(s.recvfrom(64)[1][0], flush=True)
"""
SEND = ("import socket, sys; socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)"
        ".sendto(b'x', (sys.argv[1], 9999))")


def source_seen(receiver_ns, dst, sender_ns):
    """The source address a UDP datagram from ``sender_ns`` to ``dst`` arrives with."""
    rx = subprocess.Popen(["ip", "netns", "exec", receiver_ns, sys.executable, "-c", RECEIVE,
                           dst], stdout=subprocess.PIPE, text=True)
    try:
        assert rx.stdout is not None and rx.stdout.readline().strip() == "ready"
        sh("ip", "netns", "exec", sender_ns, sys.executable, "-c", SEND, dst)
        return rx.stdout.readline().strip()
    finally:
        rx.kill()
        rx.wait()


def test_ip_masq_masquerades_ipv6_leaving_the_network_and_never_between_pods(node):
    conf = dual(node, ipMasq=True)
    pod = node.pod()
    doc = node.add("mq6", pod, conf=conf)
    ip4, ip6 = (a["address"].split("/")[0] for a in doc["ips"])
    v6 = nat_rules(node, "ip6tables")
    assert f"-s {ip6}/128" in v6 and f"-d {V6_NETWORK} -j ACCEPT" in v6, v6
    assert "! -d ff00::/8 -j MASQUERADE" in v6, v6
    assert ip4 not in v6 and f"-s {ip4}/32" in nat_rules(node, "iptables")
    out = outside_world(node)
    assert source_seen(out, OUT6, pod) == "fd00:99::1"   # leaving: the node's address
    assert source_seen(out, REMOTE_POD6, pod) == ip6     # to a pod: the pod's own
    assert node.cni("CHECK", "mq6", pod, conf=dict(conf, prevResult=doc)).rc == 0
    jump = next(line for line in v6.splitlines() if f"-s {ip6}/128" in line)
    sh("ip", "netns", "exec", node.name, "ip6tables", "-w", "-t", "nat", "-D",
       *shlex.split(jump)[1:])
    missing = node.cni("CHECK", "mq6", pod, conf=dict(conf, prevResult=doc))
    assert missing.code == 103 and "IPv6 masquerade" in missing.doc["msg"], missing
    assert node.cni("DEL", "mq6", None, conf=conf).rc == 0  # no netns: still cleaned
    for tool in ("iptables", "ip6tables"):
        assert "OVERLAY-" not in nat_rules(node, tool), tool


def test_gc_leaves_no_ipv6_masquerade_rule_of_a_stale_attachment(node):
    conf = dual(node, ipMasq=True)
    pods = [node.pod() for _ in range(2)]
    docs = [node.add(f"mqgc{i}", pods[i], conf=conf) for i in range(2)]
    kept = docs[1]["ips"][1]["address"].split("/")[0]
    valid = [{"containerID": "mqgc1", "ifname": "eth0"}]
    result = node.cni("GC", conf=dict(conf, **{"cni.dev/valid-attachments": valid}),
                      ifname=None)
    assert result.rc == 0, result
    v6 = nat_rules(node, "ip6tables")
    assert v6.count("-j OVERLAY-") == 1 and f"-s {kept}/128" in v6, v6
    assert nat_rules(node, "iptables").count("-j OVERLAY-") == 1
