"""The pure evaluator against the e2e suite's truth tables, and its corners."""

from ipaddress import IPv4Address

import pytest

from overlay.policy.model import parse_policy
from overlay.policy.semantics import Host, Pod, allowed, decide

from .cases import CASES, Case, model_namespaces, model_pods, pod_ip, policy, probes
from .randomized import random_policies


def truth_table(case: Case) -> dict:
    pods = {p.ref: p for p in model_pods()}
    policies = [parse_policy(p) for p in case.policies]
    return {pr: allowed(pods[pr.src], pods[pr.dst], pr.port, pr.protocol, list(pods.values()),
                        model_namespaces(), policies) for pr in probes()}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_truth_table(case):
    got = truth_table(case)
    wrong = [pr for pr, ok in got.items() if ok != case.expect(pr)]
    assert not wrong, f"{len(wrong)} probes differ, e.g. {wrong[:3]}"


def test_every_case_denies_or_allows_something_different():
    # A case whose table equals another's tests nothing new (and would hide a typo).
    tables = {c.name: tuple(sorted(truth_table(c).items(), key=str)) for c in CASES}
    seen: dict[tuple, str] = {}
    for name, t in tables.items():
        if name != "egress-type-ignores-ingress-rules" and name != "allow-all-ingress-after-deny":
            assert t not in seen, f"{name} has the same table as {seen.get(t)}"
            seen[t] = name


DENY_ALL = [parse_policy(policy("deny", "x", {"podSelector": {}, "policyTypes":
                                              ["Ingress", "Egress"]}))]


def _pod(ref: str) -> Pod:
    return next(p for p in model_pods() if p.ref == ref)


def test_self_and_own_node_always_allowed():
    a = _pod("x/a")
    assert decide(a, a, 80, "TCP", {}, DENY_ALL).allowed
    node = Host(IPv4Address("192.168.1.11"), a.node)
    assert decide(node, a, 80, "TCP", {}, DENY_ALL).allowed
    assert decide(a, node, 80, "TCP", {}, DENY_ALL).allowed
    other = Host(IPv4Address("192.168.1.12"), "other-node")
    assert not decide(other, a, 80, "TCP", {}, DENY_ALL).allowed


def test_verdict_names_the_allowing_policies():
    pols = [parse_policy(policy("p1", "x", {"podSelector": {}, "ingress": [{}]})),
            parse_policy(policy("p2", "x", {"podSelector": {}, "ingress": [
                {"ports": [{"port": 80}]}]}))]
    v = decide(_pod("y/a"), _pod("x/a"), 80, "TCP", {}, pols)
    assert v.allowed and v.ingress.allowed_by == ("x/p1", "x/p2")
    v = decide(_pod("y/a"), _pod("x/a"), 81, "TCP", {}, pols)
    assert v.ingress.allowed_by == ("x/p1",)
    v = decide(_pod("x/a"), _pod("y/a"), 80, "TCP", {}, DENY_ALL)
    assert not v.allowed and "egress" in v.reason and v.egress.isolated


def test_ports_only_rule_denies_other_protocols_and_portless_traffic():
    pols = [parse_policy(policy("p", "x", {"podSelector": {}, "ingress": [
        {"ports": [{"port": 80}]}]}))]
    assert not decide(_pod("y/a"), _pod("x/a"), None, "ICMP", {}, pols).allowed
    pols = [parse_policy(policy("p", "x", {"podSelector": {}, "ingress": [{}]}))]
    assert decide(_pod("y/a"), _pod("x/a"), None, "ICMP", {}, pols).allowed


def test_namespace_name_label_is_automatic():
    pols = [parse_policy(policy("p", "x", {"podSelector": {}, "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "z"}}}]}]}))]
    assert decide(_pod("z/a"), _pod("x/a"), 80, "TCP", {}, pols).allowed
    assert not decide(_pod("y/a"), _pod("x/a"), 80, "TCP", {}, pols).allowed


def test_selectors_never_match_non_pods_but_ip_blocks_do():
    pols = [parse_policy(policy("p", "x", {"podSelector": {}, "ingress": [{"from": [
        {"namespaceSelector": {}}, {"ipBlock": {"cidr": "172.16.0.0/12"}}]}]}))]
    assert not decide(Host(IPv4Address("8.8.8.8")), _pod("x/a"), 80, "TCP", {}, pols).allowed
    assert decide(Host(IPv4Address("172.16.0.1")), _pod("x/a"), 80, "TCP", {}, pols).allowed


def test_an_address_of_a_pod_is_judged_as_that_pod():
    pods = model_pods()
    pols = [parse_policy(policy("p", "x", {"podSelector": {}, "ingress": [
        {"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}))]
    src = Host(pod_ip("y", "b"))
    assert allowed(src, _pod("x/a"), 80, "TCP", pods, model_namespaces(), pols)
    assert not allowed(Host(pod_ip("z", "b")), _pod("x/a"), 80, "TCP", pods,
                       model_namespaces(), pols)


def test_named_port_resolves_on_the_destination_pod():
    pols = [parse_policy(policy("p", "x", {"podSelector": {}, "policyTypes": ["Egress"],
                                           "egress": [{"ports": [{"port": "serve-80-tcp"}]}]}))]
    src, dst = _pod("x/a"), _pod("y/a")
    assert decide(src, dst, 80, "TCP", {}, pols).allowed
    assert not decide(src, dst, 81, "TCP", {}, pols).allowed
    bare = Pod("y", "bare", (IPv4Address("10.244.9.9"),))
    assert not decide(src, bare, 80, "TCP", {}, pols).allowed


@pytest.mark.parametrize("seed", range(8))
def test_random_policies_are_valid_and_decide_both_ways(seed):
    # The kernel test's random policies parse, and not all of them allow everything.
    policies = [parse_policy(p) for p in random_policies(seed)]
    pods = {p.ref: p for p in model_pods()}
    results = {allowed(pods[pr.src], pods[pr.dst], pr.port, pr.protocol, list(pods.values()),
                       model_namespaces(), policies) for pr in probes()}
    assert results == {True, False}, policies


def test_two_pods_under_one_name_are_not_one_pod_talking_to_itself():
    deny = parse_policy(policy("deny", "x", {"podSelector": {}, "policyTypes": ["Ingress"]}))
    old = Pod("x", "a", (IPv4Address("10.244.1.2"),), {"pod": "a"})
    new = Pod("x", "a", (IPv4Address("10.244.1.3"),), {"pod": "a"})
    assert not decide(old, new, 80, "TCP", model_namespaces(), [deny]).allowed
    assert decide(old, old, 80, "TCP", model_namespaces(), [deny]).allowed  # itself
