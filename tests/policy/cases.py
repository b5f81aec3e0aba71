"""The NetworkPolicy e2e suite's model and cases, shared by the oracle's truth tables
(tests/policy/test_semantics.py) and the kernel's (tests/integration/test_policy_nft.py).

As in Kubernetes' ``test/e2e/network/netpol``: namespaces x, y, z labelled ``ns=<name>``,
pods a, b, c in each labelled ``pod=<name>``, every pod serving TCP and UDP on 80 and 81
(named ``serve-<port>-<proto>``). Each case says what it expects as a small predicate over
one probe, written from the case's meaning (as the e2e suite's ``ExpectPeer`` calls are),
never from the evaluator under test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

from overlay.cluster.pods import Port
from overlay.policy.semantics import Pod

NAMESPACES = ("x", "y", "z")
POD_NAMES = ("a", "b", "c")
PORTS = (80, 81)
PROTOCOLS = ("TCP", "UDP")


@dataclass(frozen=True)
class Probe:
    src: str  # "x/a"
    dst: str
    port: int
    protocol: str

    @property
    def src_ns(self) -> str:
        return self.src.split("/")[0]

    @property
    def dst_ns(self) -> str:
        return self.dst.split("/")[0]

    @property
    def src_pod(self) -> str:
        return self.src.split("/")[1]

    @property
    def dst_pod(self) -> str:
        return self.dst.split("/")[1]


def pod_ip(ns: str, name: str) -> IPv4Address:
    """x/a .. z/c: two nodes' subnets, x and z/a..b on node 1, the rest on node 2."""
    i = NAMESPACES.index(ns) * 3 + POD_NAMES.index(name)
    node = 1 if i % 2 == 0 else 2
    return IPv4Address(f"10.244.{node}.{10 + i}")


def node_of(ns: str, name: str) -> str:
    return f"node{pod_ip(ns, name).packed[2]}"


def model_pods() -> list[Pod]:
    ports = tuple(Port(f"serve-{p}-{proto.lower()}", p, proto)
                  for p in PORTS for proto in PROTOCOLS)
    return [Pod(ns, n, (pod_ip(ns, n),), {"pod": n}, ports, node_of(ns, n))
            for ns in NAMESPACES for n in POD_NAMES]


def model_namespaces() -> dict[str, dict[str, str]]:
    return {ns: {"ns": ns} for ns in NAMESPACES}


def probes() -> list[Probe]:
    refs = [f"{ns}/{n}" for ns in NAMESPACES for n in POD_NAMES]
    return [Probe(s, d, port, proto) for s in refs for d in refs if s != d
            for port in PORTS for proto in PROTOCOLS]


def policy(name: str, ns: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


@dataclass(frozen=True)
class Case:
    name: str
    policies: tuple[dict[str, Any], ...]
    expect: Callable[[Probe], bool]


def _pod(name: str) -> dict[str, Any]:
    return {"matchLabels": {"pod": name}}


def _ns(name: str) -> dict[str, Any]:
    return {"matchLabels": {"ns": name}}


# The pod addresses as a CIDR for the ipBlock case: x/b is 10.244.2.11.
CASES = [
    Case("no-policy", (), lambda p: True),
    Case("default-deny-ingress",
         (policy("deny", "x", {"podSelector": {}}),),
         lambda p: p.dst_ns != "x"),
    Case("default-deny-egress",
         (policy("deny", "x", {"podSelector": {}, "policyTypes": ["Egress"]}),),
         lambda p: p.src_ns != "x"),
    Case("allow-all-ingress-after-deny",
         (policy("deny", "x", {"podSelector": {}}),
          policy("all", "x", {"podSelector": {}, "ingress": [{}]})),
         lambda p: True),
    Case("empty-ingress-list-is-deny",
         (policy("deny", "x", {"podSelector": _pod("a"), "ingress": []}),),
         lambda p: p.dst != "x/a"),
    Case("pod-selector-in-policy-namespace",
         (policy("allow-b", "x", {"podSelector": _pod("a"),
                                  "ingress": [{"from": [{"podSelector": _pod("b")}]}]}),),
         lambda p: p.dst != "x/a" or p.src == "x/b"),
    Case("namespace-selector",
         (policy("allow-y", "x", {"podSelector": _pod("a"),
                                  "ingress": [{"from": [{"namespaceSelector": _ns("y")}]}]}),),
         lambda p: p.dst != "x/a" or p.src_ns == "y"),
    Case("namespace-selector-empty-is-every-namespace",
         (policy("all-ns", "x", {"podSelector": _pod("a"), "ingress": [
             {"from": [{"namespaceSelector": {}, "podSelector": _pod("c")}]}]}),),
         lambda p: p.dst != "x/a" or p.src_pod == "c"),
    Case("namespace-and-pod-selector-in-one-peer",
         (policy("and", "x", {"podSelector": _pod("a"), "ingress": [
             {"from": [{"namespaceSelector": _ns("y"), "podSelector": _pod("b")}]}]}),),
         lambda p: p.dst != "x/a" or p.src == "y/b"),
    Case("namespace-or-pod-selector-two-peers",
         (policy("or", "x", {"podSelector": _pod("a"), "ingress": [
             {"from": [{"namespaceSelector": _ns("y")}, {"podSelector": _pod("b")}]}]}),),
         lambda p: p.dst != "x/a" or p.src_ns == "y" or p.src == "x/b"),
    Case("match-expressions",
         (policy("expr", "x", {"podSelector": {"matchExpressions": [
             {"key": "pod", "operator": "NotIn", "values": ["a"]}]}, "ingress": [
             {"from": [{"namespaceSelector": {"matchExpressions": [
                 {"key": "ns", "operator": "In", "values": ["y", "z"]}]},
                 "podSelector": {"matchExpressions": [
                     {"key": "pod", "operator": "Exists"}]}}]}]}),),
         lambda p: p.dst_ns != "x" or p.dst_pod == "a" or p.src_ns in ("y", "z")),
    Case("ip-block-with-except",
         (policy("cidr", "x", {"podSelector": _pod("a"), "ingress": [{"from": [
             {"ipBlock": {"cidr": "10.244.2.0/24", "except": ["10.244.2.11/32"]}}]}]}),),
         lambda p: p.dst != "x/a" or (node_of(p.src_ns, p.src_pod) == "node2"
                                      and p.src != "x/b")),
    Case("named-port",
         (policy("named", "x", {"podSelector": _pod("a"), "ingress": [
             {"ports": [{"port": "serve-81-udp", "protocol": "UDP"}]}]}),),
         lambda p: p.dst != "x/a" or (p.port, p.protocol) == (81, "UDP")),
    Case("end-port-range",
         (policy("range", "x", {"podSelector": {}, "ingress": [
             {"ports": [{"port": 81, "endPort": 90}]}]}),),
         lambda p: p.dst_ns != "x" or (p.port, p.protocol) == (81, "TCP")),
    Case("protocol-without-port",
         (policy("udp", "x", {"podSelector": {}, "ingress": [{"ports": [{"protocol": "UDP"}]}]}),),
         lambda p: p.dst_ns != "x" or p.protocol == "UDP"),
    Case("egress-only-udp-81-to-one-namespace",
         (policy("dns", "x", {"podSelector": {}, "policyTypes": ["Egress"], "egress": [
             {"to": [{"namespaceSelector": _ns("y")}],
              "ports": [{"protocol": "UDP", "port": 81}]}]}),),
         lambda p: p.src_ns != "x" or (p.dst_ns == "y" and (p.port, p.protocol) == (81, "UDP"))),
    Case("two-policies-union",
         (policy("from-b", "x", {"podSelector": _pod("a"),
                                 "ingress": [{"from": [{"podSelector": _pod("b")}]}]}),
          policy("from-z", "x", {"podSelector": _pod("a"),
                                 "ingress": [{"from": [{"namespaceSelector": _ns("z")}]}]})),
         lambda p: p.dst != "x/a" or p.src == "x/b" or p.src_ns == "z"),
    Case("ingress-and-egress-together",
         (policy("both", "x", {"podSelector": _pod("a"), "policyTypes": ["Ingress", "Egress"],
                               "ingress": [{"from": [{"namespaceSelector": _ns("y")}]}],
                               "egress": [{"to": [{"namespaceSelector": _ns("z")}],
                                           "ports": [{"port": 80}]}]}),),
         lambda p: (p.dst != "x/a" or p.src_ns == "y")
         and (p.src != "x/a" or (p.dst_ns == "z" and (p.port, p.protocol) == (80, "TCP")))),
    Case("egress-allowed-still-needs-ingress",
         (policy("out", "x", {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]}),
          policy("deny", "y", {"podSelector": {}})),
         lambda p: p.dst_ns != "y"),
    Case("egress-type-ignores-ingress-rules",
         (policy("eg", "x", {"podSelector": _pod("a"), "policyTypes": ["Egress"],
                             "ingress": [{"from": [{"podSelector": _pod("b")}]}],
                             "egress": [{}]}),),
         lambda p: True),
    Case("empty-from-is-every-peer",
         (policy("from-empty", "y", {"podSelector": {}, "ingress": [
             {"from": [], "ports": [{"port": 80, "protocol": "UDP"}]}]}),),
         lambda p: p.dst_ns != "y" or (p.port, p.protocol) == (80, "UDP")),
]
