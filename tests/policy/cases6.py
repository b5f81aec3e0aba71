"""The e2e model made dual-stack, for IPv6 NetworkPolicy: every pod of ``cases`` also
holds an IPv6 address in its node's IPv6 subnet (``fd00:10:244:<node>::/64``, the lab's
layout), and the cases that differ by family: ipBlocks of one family never match the other.

A selector case of ``cases.CASES`` means the same over IPv6 as over IPv4 (selectors name
pods, not addresses), so its predicate serves both families; the ipBlock cases below say
what each family gets.
"""

from __future__ import annotations

from ipaddress import IPv6Address

from overlay.policy.semantics import Pod

from .cases import CASES, Case, Probe, model_pods, node_of, policy

V6_PREFIX = "fd00:10:244"


def pod_ip6(ns: str, name: str) -> IPv6Address:
    """The pod's IPv6 address: its IPv4 address's last byte in its node's /64."""
    v4 = next(p for p in model_pods() if p.ref == f"{ns}/{name}").ip
    node = v4.packed[2]
    return IPv6Address(f"{V6_PREFIX}:{node}::{v4.packed[3]:x}")


def dual_stack_pods() -> list[Pod]:
    return [Pod(p.namespace, p.name, (p.ip, pod_ip6(p.namespace, p.name)), p.labels,
                p.ports, p.node) for p in model_pods()]


def _on_node2_but_b(p: Probe) -> bool:
    return node_of(p.src_ns, p.src_pod) == "node2" and p.src != "x/b"


def _cidr_case(name: str, cidr: str, excepted: str) -> tuple:
    return (policy(name, "x", {"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [
        {"from": [{"ipBlock": {"cidr": cidr, "except": [excepted]}}]}]}),)


V6_BLOCK = _cidr_case("cidr6", f"{V6_PREFIX}:2::/64", f"{pod_ip6('x', 'b')}/128")
V4_BLOCK = next(c for c in CASES if c.name == "ip-block-with-except").policies

# (case, what it allows over IPv4, what it allows over IPv6)
FAMILY_CASES = [
    (Case("ipv6-block-with-except", V6_BLOCK, lambda p: True),
     lambda p: p.dst != "x/a",
     lambda p: p.dst != "x/a" or _on_node2_but_b(p)),
    (Case("ipv4-block-never-matches-ipv6", V4_BLOCK, lambda p: True),
     lambda p: p.dst != "x/a" or _on_node2_but_b(p),
     lambda p: p.dst != "x/a"),
    (Case("one-rule-both-families", (policy("both", "x", {
        "podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
            {"ipBlock": {"cidr": "10.244.2.0/24", "except": ["10.244.2.11/32"]}},
            {"ipBlock": {"cidr": f"{V6_PREFIX}:2::/64",
                         "except": [f"{pod_ip6('x', 'b')}/128"]}}]}]}),), lambda p: True),
     lambda p: p.dst != "x/a" or _on_node2_but_b(p),
     lambda p: p.dst != "x/a" or _on_node2_but_b(p)),
]
