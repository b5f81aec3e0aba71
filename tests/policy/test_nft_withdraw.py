"""A deleted local pod taken out of a loaded table by element deletes (``nft.withdrawal``):
the exact commands; over random policies, the verdicts of compiling the table without
the pod; and the cases only a compile can say. The kernel's side is
tests/integration/test_policy_admit.py."""

from __future__ import annotations

from collections.abc import Mapping
from ipaddress import IPv4Address

import pytest

from overlay.policy.model import parse_policy
from overlay.policy.nft import (
    CompiledTable,
    LocalPod,
    Withdrawal,
    admission,
    admitted,
    compile_table,
    withdrawal,
    withdrawn,
)
from overlay.policy.semantics import Pod

from .cases import model_namespaces, model_pods, policy
from .randomized import random_policies
from .test_nft_admit import Kernel, _local, _new_pod

DENY = parse_policy(policy("deny", "x", {"podSelector": {}, "policyTypes": ["Ingress"]}))


def _table(pods: list[Pod], policies) -> tuple[list[LocalPod], CompiledTable]:
    local = _local(pods)
    return local, compile_table(local, pods, model_namespaces(), policies)


def _sources(table: CompiledTable) -> Mapping[str, tuple[str, ...]]:
    assert table.index is not None
    return table.index.sources


def test_the_commands_for_a_pod_a_default_deny_selected():
    pods = model_pods()
    local, table = _table(pods, [DENY])
    gone = next(lp for lp in local if lp.pod.ref == "x/a")
    w = withdrawal(table, gone, [lp for lp in local if lp is not gone])
    assert w is not None
    ip = str(gone.pod.ips[0])
    # x's pods on node1 share one set for the selection and the isolation
    assert w.script().splitlines() == [
        *(f"delete element inet overlay-policy {e.set} {{ {ip} }}" for e in w.elements),
        f"delete chain inet overlay-policy src_{gone.ifname}"]
    assert len(w.elements) == 1
    after = withdrawn(table, gone, w)
    assert ip not in after.elements[w.elements[0].set]
    assert gone.ifname not in _sources(after)
    assert table.elements[w.elements[0].set] - after.elements[w.elements[0].set] == {ip}


def test_an_admitted_pod_withdrawn_leaves_the_table_it_was_admitted_into():
    allow = parse_policy(policy("allow", "x", {"podSelector": {}, "ingress": [
        {"from": [{"podSelector": {"matchLabels": {"pod": "a"}}}],
         "ports": [{"port": "serve-80-tcp"}]}]}))
    pods = model_pods()
    local, table = _table(pods, [DENY, allow])
    new = LocalPod(_new_pod("a"), "v-new")
    adm = admission(table, new)
    assert adm is not None and adm.elements
    held = admitted(table, new, adm)
    w = withdrawal(held, new, local)
    assert w is not None
    # its address and its named port's element, wherever the admission put them
    assert {(e.set, e.elements) for e in w.elements} == {(e.set, e.elements)
                                                       for e in adm.elements}
    back = withdrawn(held, new, w)
    assert back.elements == table.elements and _sources(back) == _sources(table)


@pytest.mark.parametrize("seed", range(40))
def test_deletes_give_the_verdicts_a_compile_without_the_pod_would(seed):
    """Each of node1's pods in turn (those only a compile can take out are counted by the
    next test)."""
    policies = [parse_policy(p) for p in random_policies(seed)]
    pods = model_pods()
    local, table = _table(pods, policies)
    for gone in local:
        w = withdrawal(table, gone, [lp for lp in local if lp is not gone])
        if w is None:
            continue
        kernel = Kernel(table.text)
        kernel.load(w.script())
        _, without = _table([p for p in pods if p is not gone.pod], policies)
        compiled = Kernel(without.text)
        # the very table: the same sets under the same names, the same rules
        assert {n: kernel.content(n) for n in kernel.elements} == {
            n: compiled.content(n) for n in compiled.elements}, gone.pod.ref
        assert kernel.view() == compiled.view(), gone.pod.ref
        assert _sources(withdrawn(table, gone, w)) == _sources(without)


def test_most_random_cases_take_the_element_path():
    took = 0
    for seed in range(40):
        policies = [parse_policy(p) for p in random_policies(seed)]
        local, table = _table(model_pods(), policies)
        if not table.counters:
            continue
        gone = local[seed % len(local)]
        took += withdrawal(table, gone, [lp for lp in local if lp is not gone]) is not None
    assert took >= 20, took


def test_what_only_a_compile_can_say():
    pods = model_pods()
    local, table = _table(pods, [DENY])
    gone = next(lp for lp in local if lp.pod.ref == "x/a")
    others = [lp for lp in local if lp is not gone]
    # another local pod holds its address (or its veth): its elements may be that pod's
    twin = LocalPod(Pod("x", "twin", gone.pod.ips, {"pod": "b"}, (), "node1"), "v-twin")
    assert withdrawal(table, gone, [*others, twin]) is None
    assert withdrawal(table, gone, [*others, LocalPod(twin.pod, gone.ifname)]) is None
    # no pod of node1 isolated after it: the compile's table is the empty one
    only = [lp for lp in local if lp.pod.namespace == "x"]
    assert len(only) == 2
    alone = compile_table(only[:1], pods, model_namespaces(), [DENY])
    assert withdrawal(alone, only[0], []) is None
    # a set it would empty (the only pod a policy selects): the compile writes none
    just_a = parse_policy(policy("just-a", "x", {"podSelector": {"matchLabels": {"pod": "a"}},
                                                "policyTypes": ["Ingress"]}))
    _, table2 = _table(pods, [DENY, just_a])
    assert withdrawal(table2, gone, others) is None
    # a set it would leave equal to another: node1's x pods are a and c, so without a,
    # DENY's {a, c} would equal only-c's {c}, and the compile writes one set for both
    only_c = parse_policy(policy("only-c", "x", {"podSelector": {"matchLabels": {"pod": "c"}},
                                                "policyTypes": ["Ingress"]}))
    assert sorted(lp.pod.name for lp in only) == ["a", "c"]
    _, table3 = _table(pods, [DENY, only_c])
    assert withdrawal(table3, gone, others) is None
    # an element the table lacks (it was never loaded with the pod)
    stranger = LocalPod(Pod("x", "stranger", (IPv4Address("10.244.1.77"),), {"pod": "a"},
                            (), "node1"), "v-stranger")
    assert withdrawal(table, stranger, local) is None
    # an interval set holds its address (a rule with an ipBlock and pods): nft merged it
    mixed = parse_policy(policy("mixed", "x", {"podSelector": {}, "ingress": [{"from": [
        {"podSelector": {"matchLabels": {"pod": "a"}}},
        {"ipBlock": {"cidr": "192.0.2.0/24"}}]}]}))
    _, table = _table(pods, [DENY, mixed])
    assert withdrawal(table, gone, others) is None
    # no policy selects a pod: nothing to take out, and nothing a compile would change
    empty = compile_table(local, pods, model_namespaces(), [])
    assert withdrawal(empty, gone, others) is None


def test_the_empty_withdrawal_is_empty():
    w = Withdrawal((), None)
    assert w.empty and w.script() == ""
