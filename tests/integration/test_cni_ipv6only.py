"""The CNI plugin on an IPv6-only node (EnableIPv4 false), against the real kernel: one
IPv6 address per pod from one IPAM range, the IPv6 default route, subnet.env's MTU (the
daemon's underlay - 70), no IPv4 anywhere; CHECK, DEL and GC.  Runs as
test_cni_dualstack.py does, through the warm server and the in-process fallback."""

import os
from ipaddress import IPv6Interface, IPv6Network

import pytest

from overlay.subnetenv import SubnetEnv, write_subnet_env

from .support.cni_node import CNINode, addrs6, sh, store_files

pytestmark = pytest.mark.integration

GW6 = "fd00:87:0:5::1"
NETWORK6 = "fd00:87::/56"
MTU = 1500 - 70  # what overlayd writes for a 1500-byte IPv6 underlay


@pytest.fixture(params=["warm", "cold"])
def node(request, tmp_path):
    n = CNINode(tmp_path, warm=request.param == "warm")
    try:
        yield n
    finally:
        n.close()


def only6(node):
    """A conflist reading an IPv6-only node's subnet.env, as the daemon writes it."""
    env_path = os.path.join(node.dir, "subnet.env")
    write_subnet_env(env_path, SubnetEnv(None, None, MTU, False, IPv6Network(NETWORK6),
                                         IPv6Interface(f"{GW6}/64")))
    with open(env_path) as f:
        assert "OVERLAY_SUBNET" not in f.read()
    return node.conf(subnet=None, network=None, mtu=None, subnetFile=env_path)


def test_add_gives_one_ipv6_address_the_ipv6_default_route_and_no_ipv4(node):
    pod = node.pod()
    doc = node.add("v6o1", pod, conf=only6(node))
    sh("ip", "netns", "exec", pod, "ping", "-6", "-c1", "-W2", GW6)  # the first packet
    assert doc["ips"] == [{"interface": 2, "address": "fd00:87:0:5::2/64", "gateway": GW6}]
    assert [(r["dst"], r["gw"]) for r in doc["routes"]] == [("::/0", GW6), (NETWORK6, GW6)]
    # ip -j -4 lists only links with an IPv4 address: none at all, pod side and bridge
    assert not any(i["addr_info"] for i in node.ip(pod, "-4", "addr", "show", "dev", "eth0"))
    assert node.ip(pod, "-4", "route", "show") == []
    assert not any(i["addr_info"] for i in node.ip(node.name, "-4", "addr", "show", "dev",
                                                  "cni0"))
    assert addrs6(node, pod, "eth0") == [("fd00:87:0:5::2/64", {"nodad"})]
    routes6 = {(r["dst"], r.get("gateway")) for r in node.ip(pod, "-6", "route", "show")}
    assert {("default", GW6), (NETWORK6, GW6)} <= routes6
    assert node.links(pod)["eth0"]["mtu"] == MTU
    assert store_files(node) == ["fd00:87:0:5::2", "last_reserved_ip.0"]  # one range: 0


def test_check_del_and_gc_of_ipv6_only_pods(node):
    conf = only6(node)
    pods = [node.pod() for _ in range(2)]
    docs = [node.add(f"v6gc{i}", pods[i], conf=conf) for i in range(2)]
    ok = node.cni("CHECK", "v6gc0", pods[0], conf=dict(conf, prevResult=docs[0]))
    assert ok.rc == 0 and ok.stdout == "", ok
    sh("ip", "-n", pods[0], "-6", "route", "del", "default")
    gone = node.cni("CHECK", "v6gc0", pods[0], conf=dict(conf, prevResult=docs[0]))
    assert gone.code == 103 and f"route ::/0 via {GW6} is missing" in gone.doc["msg"], gone
    valid = [{"containerID": "v6gc1", "ifname": "eth0"}]
    result = node.cni("GC", conf=dict(conf, **{"cni.dev/valid-attachments": valid}),
                      ifname=None)
    assert result.rc == 0, result
    assert store_files(node) == ["fd00:87:0:5::3", "last_reserved_ip.0"]
    assert node.cni("DEL", "v6gc1", pods[1], conf=conf).rc == 0
    assert store_files(node) == ["last_reserved_ip.0"]
    assert node.cni("STATUS", conf=conf, ifname=None).rc == 0


def test_an_ipv4_request_on_an_ipv6_only_node_is_refused_and_takes_nothing(node):
    result = node.cni("ADD", "v6o-bad", node.pod(), conf=only6(node),
                      env={"CNI_ARGS": "IP=10.87.5.9"})
    assert result.code == 7 and "IPv6-only" in result.doc["msg"], result
    assert store_files(node) == [] and node.veths() == []


def test_an_explicit_ipv6_subnet_alone_runs_without_a_daemon(node):
    pod = node.pod()
    conf = node.conf(subnet=None, network=None, ipv6Subnet="fd00:86:0:1::/64",
                     ipv6Network="fd00:86::/56")
    doc = node.add("v6o-x", pod, conf=conf)
    assert [ip["address"] for ip in doc["ips"]] == ["fd00:86:0:1::2/64"]
    assert node.cni("DEL", "v6o-x", pod, conf=conf).rc == 0
