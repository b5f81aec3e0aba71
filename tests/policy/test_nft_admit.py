"""A new local pod put into a loaded table by element updates (``nft.admit_script``): the
exact commands, and, over random policies, the same table as compiling it with the pod.
The kernel's verdicts for both paths are tests/integration/test_policy_admit.py."""

from __future__ import annotations

import re
from ipaddress import IPv4Address

import pytest

from overlay.cluster.pods import Port
from overlay.policy.model import INGRESS, parse_policy
from overlay.policy.nft import LocalPod, admit_script, admitted, compile_table, merge_ranges
from overlay.policy.semantics import Pod

from .cases import POD_NAMES, model_namespaces, model_pods, policy
from .randomized import random_policies

SET_RE = re.compile(r"^\tset (\S+) \{ type ([^;]+);( flags interval; auto-merge;)?"
                    r"(?: elements = \{ (.*) \};)? \}$")
ADD_RE = re.compile(r"^add element inet overlay-policy (\S+) \{ (.*) \}$")
CHAIN_RE = re.compile(r"^\tchain (\S+) \{$")
ADD_CHAIN_RE = re.compile(r"^add chain inet overlay-policy (src_\S+) \{ (.*) \}$")
ADD_RULE_RE = re.compile(r"^add rule inet overlay-policy (src_\S+) (.*)$")
DELETE_RE = re.compile(r"^delete element inet overlay-policy (\S+) \{ (.*) \}$")
DELETE_CHAIN_RE = re.compile(r"^delete chain inet overlay-policy (src_\S+)$")


def _new_pod(label: str = "a", ns: str = "x") -> Pod:
    ports = tuple(Port(f"serve-{p}-{proto.lower()}", p, proto)
                  for p in (80, 81) for proto in ("TCP", "UDP"))
    return Pod(ns, "new", (IPv4Address("10.244.1.50"),), {"pod": label}, ports, "node1")


def _local(pods: list[Pod]) -> list[LocalPod]:
    return [LocalPod(p, f"v-{p.namespace}-{p.name}") for p in pods if p.node == "node1"]


def _ranges(elements: list[str]) -> list[tuple[int, int]]:
    bounds = [e.partition("-") for e in elements]
    return merge_ranges((int(IPv4Address(lo)), int(IPv4Address(hi or lo)))
                        for lo, _, hi in bounds)


class Kernel:
    """What a table's text (plus element updates) holds, as the kernel would: each set's
    content (an address interval set as merged ranges), and the rules with every
    ``@set`` replaced by that content (so equal tables compare equal whatever their sets
    are named), by chain (its header first)."""

    def __init__(self, text: str):
        self.types: dict[str, tuple[str, bool]] = {}
        self.elements: dict[str, set[str]] = {}
        self.chains: dict[str, list[str]] = {}
        chain: list[str] = []
        for line in text.splitlines():
            if m := SET_RE.match(line):
                self.types[m[1]] = (m[2], bool(m[3]))
                self.elements[m[1]] = set(m[4].split(", ")) if m[4] else set()
            elif m := CHAIN_RE.match(line):
                chain = self.chains.setdefault(m[1], [])
            elif line.startswith("\t\t"):
                chain.append(line.strip())

    def load(self, script: str) -> None:
        for line in script.splitlines():
            if m := ADD_RE.match(line):
                assert m[1] in self.elements, f"no set {m[1]}"
                self.elements[m[1]] |= set(m[2].split(", "))
            elif m := ADD_CHAIN_RE.match(line):
                assert m[1] not in self.chains, f"chain {m[1]} exists"
                self.chains[m[1]] = [m[2]]
            elif m := ADD_RULE_RE.match(line):
                assert m[1] in self.chains, f"no chain {m[1]}"
                self.chains[m[1]].append(m[2])
            elif m := DELETE_RE.match(line):  # the kernel refuses an absent element
                assert m[1] in self.elements, f"no set {m[1]}"
                gone = set(m[2].split(", "))
                assert gone <= self.elements[m[1]], f"{gone - self.elements[m[1]]} not in {m[1]}"
                self.elements[m[1]] -= gone
            elif m := DELETE_CHAIN_RE.match(line):
                assert self.chains.pop(m[1], None) is not None, f"no chain {m[1]}"
            else:
                raise AssertionError(f"unexpected command {line!r}")

    def content(self, name: str) -> str:
        type_, interval = self.types[name]
        if interval and type_ == "ipv4_addr":
            return repr(_ranges(sorted(self.elements[name])))
        return repr(sorted(self.elements[name]))

    def view(self) -> dict[str, list[str]]:
        def sub(m: re.Match[str]) -> str:
            return f"@{self.content(m[1])}"
        return {name: [re.sub(r"@(\w+)", sub, r) for r in rules]
                for name, rules in self.chains.items()}


def _before_after(policies, new: Pod):
    pods = model_pods()
    before = compile_table(_local(pods), pods, model_namespaces(), policies)
    after = compile_table(_local([*pods, new]), [*pods, new], model_namespaces(), policies)
    return before, after


def test_the_commands_for_a_pod_a_default_deny_selects():
    deny = parse_policy(policy("deny", "x", {"podSelector": {}, "policyTypes": ["Ingress"]}))
    new = _new_pod()
    before, _ = _before_after([deny], new)
    script = admit_script(before, LocalPod(new, "v-new"))
    assert script is not None
    lines = script.splitlines()
    # x's pods on node1 (model: x/a, x/b ... per node_of) share one set for the policy's
    # selection and the isolation: one element for both
    assert re.fullmatch(r"add element inet overlay-policy \w+ \{ 10\.244\.1\.50 \}", lines[0])
    # then the veth's own source chain, hooked on it alone, with the same rules the
    # compiled table gives it
    assert lines[-3:] == [
        'add chain inet overlay-policy src_v-new { type filter hook ingress device "v-new" '
        "priority -500; policy accept; }",
        'add rule inet overlay-policy src_v-new meta protocol ip ip saddr != 10.244.1.50 '
        'counter name "spoofed" drop',
        'add rule inet overlay-policy src_v-new meta protocol ip6 ip6 saddr != { ::, '
        'fe80::/64 } counter name "spoofed" drop']
    assert all(line.startswith("add ") for line in lines)  # never a delete or a flush


def test_an_unselected_pod_under_no_policy_changes_nothing():
    other = parse_policy(policy("deny", "y", {"podSelector": {}, "policyTypes": ["Ingress"]}))
    pods = [p for p in model_pods() if p.namespace == "x"]
    table = compile_table(_local(pods), pods, model_namespaces(), [other])
    assert not table.counters
    assert admit_script(table, LocalPod(_new_pod(), "v-new")) == ""
    # the same empty table, but a policy selecting the pod: only a compile can say it
    table = compile_table(_local(pods), pods, model_namespaces(), [other])
    assert admit_script(table, LocalPod(_new_pod(ns="y"), "v-new")) is None


def test_a_policy_selecting_its_first_local_pod_needs_the_whole_table():
    only_c = parse_policy(policy("c", "x", {"podSelector": {"matchLabels": {"pod": "new"}},
                                           "policyTypes": ["Ingress"]}))
    deny = parse_policy(policy("deny", "x", {"podSelector": {}, "policyTypes": ["Ingress"]}))
    new = Pod("x", "new", (IPv4Address("10.244.1.50"),), {"pod": "new"}, (), "node1")
    before, _ = _before_after([deny, only_c], new)
    assert admit_script(before, LocalPod(new, "v-new")) is None


def test_a_rule_naming_its_first_pod_needs_the_whole_table():
    deny = parse_policy(policy("deny", "x", {"podSelector": {}, "policyTypes": ["Ingress"]}))
    from_new = parse_policy(policy("from-new", "x", {
        "podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels":
                                                               {"pod": "new"}}}]}]}))
    new = Pod("x", "new", (IPv4Address("10.244.1.50"),), {"pod": "new"}, (), "node1")
    before, _ = _before_after([deny, from_new], new)
    assert admit_script(before, LocalPod(new, "v-new")) is None


@pytest.mark.parametrize("seed", range(40))
def test_elements_give_the_table_a_compile_would(seed):
    policies = [parse_policy(p) for p in random_policies(seed)]
    label = POD_NAMES[seed % len(POD_NAMES)]
    new = _new_pod(label, ("x", "y", "z")[seed % 3])
    before, after = _before_after(policies, new)
    script = admit_script(before, LocalPod(new, f"v-{new.namespace}-new"))
    if script is None:
        pytest.skip("only a whole compile can add this pod (counted by the next test)")
    kernel = Kernel(before.text)
    kernel.load(script)
    assert kernel.view() == Kernel(after.text).view()
    index = admitted(before, LocalPod(new, f"v-{new.namespace}-new")).index
    assert index is not None and after.index is not None
    assert index.sources == after.index.sources


def test_most_random_cases_take_the_element_path():
    took = 0
    for seed in range(40):
        policies = [parse_policy(p) for p in random_policies(seed)]
        new = _new_pod(POD_NAMES[seed % len(POD_NAMES)], ("x", "y", "z")[seed % 3])
        before, _ = _before_after(policies, new)
        took += admit_script(before, LocalPod(new, f"v-{new.namespace}-new")) is not None
    assert took >= 20, took


def test_a_second_pod_extends_the_first_ones_update():
    deny = parse_policy(policy("deny", "x", {"podSelector": {}, "policyTypes": ["Ingress"]}))
    allow = parse_policy(policy("allow", "x", {"podSelector": {}, "ingress": [
        {"from": [{"podSelector": {"matchLabels": {"pod": "a"}}}], "ports": [{"port": 80}]}]}))
    pods = model_pods()
    first = _new_pod("a")
    second = Pod("x", "new2", (IPv4Address("10.244.1.51"),), {"pod": "a"}, (), "node1")
    table = compile_table(_local(pods), pods, model_namespaces(), [deny, allow])
    kernel = Kernel(table.text)
    for pod in (first, second):
        lp = LocalPod(pod, f"v-x-{pod.name}")
        script = admit_script(table, lp)
        assert script is not None
        kernel.load(script)
        table = admitted(table, lp)
    full = compile_table(_local([*pods, first, second]), [*pods, first, second],
                         model_namespaces(), [deny, allow])
    assert kernel.view() == Kernel(full.text).view()


def test_log_denied_adds_a_rate_limited_log_before_each_drop():
    deny = parse_policy(policy("deny", "x", {"podSelector": {}, "policyTypes": ["Ingress",
                                                                                  "Egress"]}))
    pods = model_pods()
    quiet = compile_table(_local(pods), pods, model_namespaces(), [deny])
    loud = compile_table(_local(pods), pods, model_namespaces(), [deny], log_denied=True)
    assert " log " not in quiet.text
    logs = [line.strip() for line in loud.text.splitlines() if " log prefix" in line]
    assert logs == [f'limit rate 10/second burst 20 packets counter log prefix '
                    f'"overlay-policy denied {d}: " level info' for d in ("egress", "ingress")]
    for d in ("egress", "ingress"):  # just before that chain's drop
        chain = loud.text.split(f"chain check_{d} {{")[1].split("}")[0].strip().splitlines()
        assert "log prefix" in chain[-2] and chain[-1].strip() == "drop"
    assert quiet.counters == loud.counters


def test_rules_with_the_same_peers_share_one_decision_per_compiled_table():
    """Whether a new pod is among a rule's peers is decided once per distinct (peers,
    policy namespace), and the tables an admission makes keep that bookkeeping."""
    same = {"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels":
                                                                      {"pod": "a"}}}]}]}
    policies = [parse_policy(policy(n, "x", same)) for n in ("one", "two")]
    policies.append(parse_policy(policy("three", "y", same)))
    pods = model_pods()
    table = compile_table(_local(pods), pods, model_namespaces(), policies)
    assert table.index is not None
    groups = table.index.peer_groups
    assert groups[0, INGRESS, 0] == groups[1, INGRESS, 0] != groups[2, INGRESS, 0]
    peer_sets = {name for name, roles in table.index.roles.items()
                 if any(r.kind == "peer" for r in roles)}
    new = LocalPod(_new_pod("a"), "v-new")
    script = admit_script(table, new)
    assert script is not None and any(f" {name} " in script for name in peer_sets)
    after = admitted(table, new)
    assert after.index is not None and after.index.memo is table.index.memo
    # the decision is the pod's own: another pod, not a peer, is put in no peer set
    other = Pod("x", "other", (IPv4Address("10.244.1.51"),), {"pod": "b"}, (), "node1")
    script = admit_script(after, LocalPod(other, "v-other"))
    assert script is not None and "10.244.1.51" in script
    assert not any(f" {name} " in script for name in peer_sets)
