"""Helpers shared by the labs with IPv6 (dual-stack and IPv6-only): what a pod, a node's
``overlay-v6.<VNI>`` and the underlay capture show.  Read with ``ip``/``bridge`` and
scapy, never with the code under test."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable, Mapping

from overlay.lab.lab import Lab
from overlay.lab.matrix import ping
from overlay.lab.state import PodRecord
from overlay.lab.system import in_netns, ip

from .labfixture import UnderlayCapture

V6_DEVICE = "overlay-v6.1"
VXLAN_PORT = 8472


def failed(matrix: Mapping[tuple[str, str], bool]) -> list[tuple[str, str]]:
    """The pairs of a reachability matrix that did not reach."""
    return sorted(pair for pair, ok in matrix.items() if not ok)


def device_mac(lab: Lab, node: str, device: str = V6_DEVICE) -> str:
    out = ip("-o", "link", "show", "dev", device, ns=lab.spec.node_ns(node)).stdout
    m = re.search(r"link/ether ([0-9a-f:]{17})", out)
    assert m, f"no MAC on {device} of {node}: {out}"
    return m.group(1)


def fdb(lab: Lab, node: str, device: str = V6_DEVICE) -> str:
    return subprocess.run(in_netns(lab.spec.node_ns(node), ["bridge", "fdb", "show", "dev",
                                                           device]),
                          capture_output=True, text=True).stdout


def peer_has_fdb(lab: Lab, node: str, peer: str, mac: str) -> bool:
    """Whether ``peer``'s overlay-v6 FDB sends ``mac`` to ``node``'s IPv6 underlay address."""
    return f"{mac} dst {lab.spec.node_ip6(node)} " in fdb(lab, peer)


def pod_addrs(lab: Lab, pod: PodRecord, family: int) -> list[str]:
    """The global addresses of ``family`` on the pod's eth0."""
    out = ip(f"-{family}", "-o", "addr", "show", "dev", "eth0", "scope", "global",
             ns=lab.spec.pod_ns(pod.key)).stdout
    return re.findall(r"inet6? ([0-9a-f.:]+)/", out)


def vxlan6_echoes(frames: Iterable[bytes]) -> set[tuple[str, str, int, str, str, str]]:
    """(outer src, outer dst, VNI, inner src, inner dst, request|reply) of every ICMPv6
    echo carried in IPv6 UDP to the VXLAN port among captured underlay frames."""
    from scapy.layers.inet import UDP
    from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
    from scapy.layers.l2 import Ether
    from scapy.layers.vxlan import VXLAN
    seen = set()
    for raw in frames:
        outer = Ether(raw)
        if IPv6 not in outer or UDP not in outer or outer[UDP].dport != VXLAN_PORT:
            continue
        vx = VXLAN(bytes(outer[UDP].payload))
        inner = vx.payload
        if IPv6 in inner and (ICMPv6EchoRequest in inner or ICMPv6EchoReply in inner):
            kind = "request" if ICMPv6EchoRequest in inner else "reply"
            seen.add((outer[IPv6].src, outer[IPv6].dst, vx.vni, inner[IPv6].src,
                      inner[IPv6].dst, kind))
    return seen


def assert_echo_crosses_as_vxlan6(lab: Lab, a: PodRecord, b: PodRecord) -> None:
    """Pod ``a`` (on node1) pings pod ``b`` (on node2) over IPv6 while the underlay is
    captured: the request and the reply cross as IPv6 UDP to the VXLAN port between the
    nodes' IPv6 addresses, carrying the pods' own addresses (no NAT)."""
    assert a.ip6 is not None and b.ip6 is not None
    cap = UnderlayCapture(lab)
    try:
        assert ping(lab.spec.pod_ns(a.key), b.ip6, count=3, wait=1)
    finally:
        frames = cap.stop()
    seen = vxlan6_echoes(frames)
    n1, n2 = str(lab.spec.node_ip6("node1")), str(lab.spec.node_ip6("node2"))
    assert (n1, n2, 1, a.ip6, b.ip6, "request") in seen, seen
    assert (n2, n1, 1, b.ip6, a.ip6, "reply") in seen, seen
