"""The hand-written codec and pyroute2 decode the same kernel state into the same records.

One throwaway namespace ``ovd-na-*`` holds a VXLAN device on a veth underlay with
neighbour, FDB and route entries (ours, another protocol's with a metric, a blackhole),
and a bridge with an address and a port.  ``kernel_state.read_with_codec`` (the codec the
daemon reads with) and ``kernel_state.dump_kernel_state`` (pyroute2, what diagnose reads
with) must agree record for record: the codec is checked against something that is not
itself, and diagnose and the backend cannot see different states.
"""

from __future__ import annotations

import secrets
import subprocess
import time
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest

from overlay.netlink.kernel_state import KernelState, dump_kernel_state, read_with_codec

pytestmark = pytest.mark.integration


def ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], capture_output=True, text=True, check=True)


@pytest.fixture
def netns():
    name = f"ovd-na-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for cmd in (
            "link set lo up",
            "link add eth0 type veth peer name eth1",
            "addr add 192.168.1.11/24 dev eth0",
            "link set eth0 up", "link set eth1 up",
            "route add default via 192.168.1.1",
            "link add overlay.1 address 0e:00:00:00:00:11 mtu 1450 type vxlan id 7 "
            "local 192.168.1.11 dev eth0 dstport 8472 nolearning",
            "addr add 10.244.1.0/32 dev overlay.1",
            "link set overlay.1 up",
            "neigh add 10.244.2.0 lladdr 0e:00:00:00:00:02 dev overlay.1 nud permanent",
            "route add 10.244.2.0/24 via 10.244.2.0 dev overlay.1 onlink proto 111",
            "route add 10.244.3.0/24 via 192.168.1.13 dev eth0 proto 111",
            "route add 10.250.0.0/16 via 192.168.1.1 dev eth0 proto static metric 100",
            "route add blackhole 10.251.0.0/16",
            "link add cni0 type bridge",
            "addr add 10.244.1.1/24 brd + dev cni0",
            "link add vethA type veth peer name vethB",
            "link set vethA master cni0",
            "link set cni0 up", "link set vethA up", "link set vethB up",
        ):
            ip(name, *cmd.split())
        subprocess.run(["bridge", "-n", name, "fdb", "add", "0e:00:00:00:00:02", "dev",
                        "overlay.1", "dst", "192.168.1.12", "self", "permanent"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _sorted(k: KernelState) -> dict[str, list]:
    return {f: sorted(getattr(k, f), key=repr)
            for f in ("links", "addrs", "routes", "neigh", "fdb", "typed_routes")}


def test_codec_and_pyroute2_agree_on_the_same_kernel_state(netns):
    for _ in range(10):  # link states settle asynchronously (carrier, operstate)
        ours, theirs = _sorted(read_with_codec(netns)), _sorted(dump_kernel_state(netns))
        if ours == theirs:
            break
        time.sleep(0.2)
    assert ours == theirs
    k = read_with_codec(netns)
    vx, br = k.link("overlay.1"), k.link("cni0")
    assert vx is not None and vx.vxlan is not None and br is not None
    assert (vx.vxlan.vni, vx.vxlan.port, vx.vxlan.local, vx.vxlan.learning) == \
        (7, 8472, IPv4Address("192.168.1.11"), False)
    eth0, veth = k.link("eth0"), k.link("vethA")
    assert eth0 is not None and veth is not None
    assert vx.vxlan.link == eth0.index and vx.mac == "0e:00:00:00:00:11"
    assert veth.master == br.index and br.kind == "bridge"
    assert IPv4Interface("10.244.1.1/24") in k.addrs_of(br.index)
    routes = {r.dst: r for r in k.routes}
    assert routes[IPv4Network("10.244.2.0/24")].onlink and routes[IPv4Network("10.244.2.0/24")].ours
    assert routes[IPv4Network("10.250.0.0/16")].metric == 100
    assert [r.kind for r in k.typed_routes] == ["blackhole"]
    assert any(n.dst == IPv4Address("10.244.2.0") and n.permanent for n in k.neigh_on(vx.index))
    assert any(f.dst == IPv4Address("192.168.1.12") for f in k.fdb_on(vx.index))
