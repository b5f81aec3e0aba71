"""trace's policy part, pure: endpoints resolved from the registry's pods, and the verdict
explained per direction over the e2e model (namespaces x/y/z, pods a/b/c)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from overlay.diagnose.policy_trace import (
    build_verdict,
    node_addresses,
    resolve_endpoint,
    verdict_lines,
)
from overlay.errors import ConfigError
from overlay.lease import Lease, LeaseAttrs
from overlay.policy.model import parse_policy
from overlay.policy.semantics import Host, Pod

from ..policy.cases import model_namespaces, model_pods, pod_ip, policy

PODS = model_pods()
NODE1 = Lease(IPv4Network("10.244.1.0/24"),
              LeaseAttrs(public_ip=IPv4Address("192.168.1.11"), vni=1,
                         vtep_mac="0e:00:00:00:00:01"))
NODES = node_addresses([NODE1], PODS)


def pod(ref: str) -> Pod:
    return next(p for p in PODS if p.ref == ref)


def verdict(src, dst, port, proto, *policies):
    return build_verdict(src, dst, port, proto, model_namespaces(),
                         [parse_policy(p) for p in policies])


DENY_X = policy("deny", "x", {"podSelector": {}})
ALLOW_A_FROM_B = policy("a-from-b", "x", {
    "podSelector": {"matchLabels": {"pod": "a"}},
    "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}],
                 "ports": [{"port": 80}]}]})
EGRESS_DENY_Y = policy("no-egress", "y", {"podSelector": {}, "policyTypes": ["Egress"]})


def test_endpoints_by_ip_name_and_default_namespace() -> None:
    assert resolve_endpoint("x/a", PODS, NODES) == pod("x/a")
    assert resolve_endpoint(str(pod_ip("y", "b")), PODS, NODES) == pod("y/b")
    extra = Pod("default", "web", (IPv4Address("10.244.2.99"),), {}, (), "node2")
    assert resolve_endpoint("web", [*PODS, extra], NODES) == extra
    assert resolve_endpoint("192.168.1.11", PODS, NODES) == Host(IPv4Address("192.168.1.11"),
                                                                 "node1")
    assert resolve_endpoint("10.244.1.1", PODS, NODES).node == "node1"  # the gateway
    assert resolve_endpoint("8.8.8.8", PODS, NODES) == Host(IPv4Address("8.8.8.8"), "")


@pytest.mark.parametrize("text,words", [
    ("x/nope", 'pods "nope" not found in namespace "x"'),
    ("nope", 'pods "nope" not found in namespace "default"'),
    ("X_/a", "give a pod IP, NAMESPACE/NAME or NAME"),
    ("a/b/c", "give a pod IP"),
])
def test_bad_endpoints_say_what_to_give(text: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        resolve_endpoint(text, PODS, NODES, "SRC")


def test_no_policy_allows_and_says_nothing_isolates() -> None:
    v = verdict(pod("x/b"), pod("x/a"), 80, "tcp")
    assert v.allowed is True and v.reason == "allowed"
    assert v.egress is not None and not v.egress.isolating
    assert "not isolated for egress" in v.egress.text()
    assert v.ingress is not None and "not isolated for ingress" in v.ingress.text()


def test_default_deny_names_the_isolating_policy_and_denies() -> None:
    v = verdict(pod("y/a"), pod("x/a"), 80, "tcp", DENY_X)
    assert v.allowed is False and v.reason == "no policy allows ingress to the destination"
    assert v.ingress is not None and v.ingress.isolating == ("x/deny",)
    assert v.ingress.allowed_by == () and not v.ingress.allowed
    assert "no policy selecting it for ingress allows it" in v.ingress.text()
    assert v.egress is not None and v.egress.allowed
    lines = verdict_lines(v)
    assert lines[0] == "policy tcp/80: DENIED (no policy allows ingress to the destination)"
    assert "x/a (10.244.1.10)" in lines[2] and "x/deny" in lines[2]


def test_the_allowing_policy_is_named_and_port_and_protocol_matter() -> None:
    v = verdict(pod("x/b"), pod("x/a"), 80, "tcp", DENY_X, ALLOW_A_FROM_B)
    assert v.allowed is True
    assert v.ingress is not None and v.ingress.isolating == ("x/a-from-b", "x/deny")
    assert v.ingress.allowed_by == ("x/a-from-b",)
    assert "allowed by x/a-from-b" in v.ingress.text()
    assert verdict(pod("x/b"), pod("x/a"), 81, "tcp", DENY_X, ALLOW_A_FROM_B).allowed is False
    assert verdict(pod("x/b"), pod("x/a"), 80, "udp", DENY_X, ALLOW_A_FROM_B).allowed is False
    assert verdict(pod("x/c"), pod("x/a"), 80, "tcp", DENY_X, ALLOW_A_FROM_B).allowed is False


def test_egress_denied_at_the_source() -> None:
    v = verdict(pod("y/a"), pod("z/a"), 80, "udp", EGRESS_DENY_Y)
    assert v.allowed is False and v.reason == "no policy allows egress from the source"
    assert v.egress is not None and v.egress.isolating == ("y/no-egress",)
    assert v.to_dict()["egress"]["isolated"] is True
    assert v.to_dict()["verdict"] == "denied" and v.to_dict()["protocol"] == "udp"


def test_always_allowed_cases() -> None:
    own_node = resolve_endpoint("192.168.1.11", PODS, NODES)
    v = verdict(own_node, pod("x/a"), 80, "tcp", DENY_X)  # x/a is on node1
    assert v.allowed is True and v.reason == "traffic between a pod and its own node"
    assert v.ingress is not None and v.ingress.text().startswith("always allowed")
    assert verdict(pod("x/a"), pod("x/a"), 80, "tcp", DENY_X).reason == \
        "a pod's traffic to itself"
    # another node's address is no exception
    other = Host(IPv4Address("192.168.1.12"), "node2")
    assert verdict(other, pod("x/a"), 80, "tcp", DENY_X).allowed is False
    assert "no pod" in verdict(other, pod("x/a"), 80, "tcp").egress.text()
