"""trace's policy verdict and diagnose's policy-table check for IPv6, pure: endpoints by
IPv6 address, the verdict of a connection's family, and an IPv6 table's listing."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from overlay.diagnose.policy_table import judge_table
from overlay.diagnose.policy_trace import (
    build_verdict,
    connection_family,
    node_addresses,
    resolve_endpoint,
    verdict_lines,
)
from overlay.lease import Lease, LeaseAttrs
from overlay.policy.model import parse_policy
from overlay.policy.nft import LocalPod, compile_table
from overlay.policy.semantics import Host, Pod

from ..policy.cases import model_namespaces
from ..policy.cases6 import FAMILY_CASES, dual_stack_pods, pod_ip6

PODS = dual_stack_pods()
NODE2 = Lease(IPv4Network("10.244.2.0/24"),
              LeaseAttrs(public_ip=IPv4Address("192.168.1.12"), vni=1,
                         vtep_mac="0e:00:00:00:00:02",
                         public_ipv6=IPv6Address("fd00:192:168:1::12")),
              ipv6_subnet=IPv6Network("fd00:10:244:2::/64"))
NODES = node_addresses([NODE2], PODS)
V6_BLOCK = [parse_policy(p) for p in FAMILY_CASES[0][0].policies]  # x/a from node2's /64


def pod(ref: str) -> Pod:
    return next(p for p in PODS if p.ref == ref)


def test_endpoints_by_ipv6_address() -> None:
    typed = resolve_endpoint(str(pod_ip6("y", "a")), PODS, NODES)
    assert isinstance(typed, Pod) and typed.ref == "y/a" and typed.ip == pod_ip6("y", "a")
    assert set(typed.ips) == set(pod("y/a").ips)
    assert resolve_endpoint("fd00:10:244:2::1", PODS, NODES) == \
        Host(IPv6Address("fd00:10:244:2::1"), "node2")  # the bridge's IPv6 gateway
    assert resolve_endpoint("fd00:192:168:1::12", PODS, NODES).node == "node2"
    assert resolve_endpoint("2001:db8::1", PODS, NODES) == Host(IPv6Address("2001:db8::1"))
    assert connection_family("x/a", str(pod_ip6("y", "a"))) == 6
    assert connection_family("x/a", "10.244.2.11") == connection_family("x/a", "y/a") == 4


def test_the_verdict_is_the_connections_familys() -> None:
    src = resolve_endpoint(str(pod_ip6("y", "a")), PODS, NODES)
    dst = resolve_endpoint(str(pod_ip6("x", "a")), PODS, NODES)
    over6 = build_verdict(src, dst, 80, "tcp", model_namespaces(), V6_BLOCK)  # as typed
    assert over6.allowed is True and over6.ingress is not None
    assert over6.ingress.allowed_by == ("x/cidr6",)
    assert over6.src == f"y/a ({pod_ip6('y', 'a')})"
    over4 = build_verdict(src, dst, 80, "tcp", model_namespaces(), V6_BLOCK, family=4)
    assert over4.allowed is False and over4.src == "y/a (10.244.2.13)"
    # a named end and an IPv6 address: over IPv6; x/b's IPv6 address is excepted
    b = build_verdict(pod("x/b"), dst, 80, "tcp", model_namespaces(), V6_BLOCK)
    assert b.allowed is False and b.src == f"x/b ({pod_ip6('x', 'b')})"
    assert verdict_lines(b)[0] == "policy tcp/80: DENIED (no policy allows ingress to the " \
        "destination)"


def _compiled() -> str:
    local = [LocalPod(p, f"veth{i}") for i, p in enumerate(PODS) if p.node == "node1"]
    return compile_table(local, PODS, model_namespaces(), V6_BLOCK).text


def test_an_ipv6_table_as_nft_lists_it_matches() -> None:
    text = _compiled()
    compiled_peer = ("fd00:10:244:2::-fd00:10:244:2::a, "
                     "fd00:10:244:2::c-fd00:10:244:2:ffff:ffff:ffff:ffff")
    assert compiled_peer in text
    # nft lists an interval set's ranges as prefixes where they are ones
    listed = text.replace(compiled_peer, "fd00:10:244:2::/125, fd00:10:244:2::8-fd00:10:244:2::a, "
                          "fd00:10:244:2::c/126, fd00:10:244:2::10/124, "
                          "fd00:10:244:2::20-fd00:10:244:2:ffff:ffff:ffff:ffff")
    assert judge_table(text, listed).status == "pass"


def test_ipv6_drift_is_named_in_ipv6() -> None:
    text = _compiled()
    wrong = text.replace("fd00:10:244:2::c-", "fd00:10:244:2::b-")
    result = judge_table(text, wrong)
    assert result.status == "fail"
    assert "set p0_i0_peer6: extra element fd00:10:244:2::b" in result.found, result.found
    extra = text.replace("elements = { fd00:10:244:1::a }",
                         "elements = { fd00:10:244:1::a, fd00:10:244:1::99 }")
    assert "extra element fd00:10:244:1::99" in judge_table(text, extra).found
