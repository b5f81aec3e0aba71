"""A loaded table changed in place (``nft.update_script``: set elements and source chains
only) instead of replaced whole: the exact commands, and, over random policies, the table
a whole load of the new compile gives, for a pod that went, came or changed its labels.
``same_table`` after an ADD's elements: the compiler's next pass loads nothing. The
kernel's reading of the commands is tests/integration/test_policy_admit.py."""

from __future__ import annotations

import dataclasses
import re
from ipaddress import IPv4Address

import pytest

from overlay.policy import nft
from overlay.policy.model import parse_policy
from overlay.policy.nft import LocalPod, admission, admitted, compile_table, same_table
from overlay.policy.semantics import Pod

from .cases import POD_NAMES, model_namespaces, model_pods, policy
from .randomized import random_policies
from .test_nft_admit import Kernel, _local, _new_pod

DELETE_RE = re.compile(r"^delete element inet overlay-policy (\S+) \{ (.*) \}$")
FLUSH_RE = re.compile(r"^flush set inet overlay-policy (\S+)$")
DELETE_CHAIN_RE = re.compile(r"^delete chain inet overlay-policy (src_\S+)$")
DENY = parse_policy(policy("deny", "x", {"podSelector": {}, "policyTypes": ["Ingress"]}))


class UpdatedKernel(Kernel):
    """The tests' kernel model, also taking an update's deletes and flushes."""

    def load(self, script: str) -> None:
        rest = []
        for line in script.splitlines():
            if m := DELETE_RE.match(line):
                gone = set(m[2].split(", "))
                assert gone <= self.elements[m[1]], f"{m[1]} lacks {gone - self.elements[m[1]]}"
                self.elements[m[1]] -= gone
            elif m := FLUSH_RE.match(line):
                self.elements[m[1]] = set()
            elif m := DELETE_CHAIN_RE.match(line):
                assert m[1] in self.chains, f"no chain {m[1]}"
                del self.chains[m[1]]
            else:
                rest.append(line)
        super().load("\n".join(rest))


def _compile(pods: list[Pod], policies) -> nft.CompiledTable:
    return compile_table(_local(pods), pods, model_namespaces(), policies)


def _relabelled(pod: Pod, label: str) -> Pod:
    return dataclasses.replace(pod, labels={**pod.labels, "pod": label})


def test_a_pod_that_went_loses_its_elements_and_its_source_chain():
    pods = model_pods()
    gone = next(p for p in pods if p.node == "node1" and p.namespace == "x")
    before = _compile(pods, [DENY])
    after = _compile([p for p in pods if p is not gone], [DENY])
    script = nft.update_script(before, after)
    assert script is not None
    assert script.splitlines() == [
        f"delete element inet overlay-policy p0_sel {{ {gone.ips[0]} }}",
        f"delete chain inet overlay-policy src_v-{gone.namespace}-{gone.name}"]


def test_a_pod_that_came_gets_the_commands_an_add_would_send():
    pods, new = model_pods(), _new_pod()
    before, after = _compile(pods, [DENY]), _compile([*pods, new], [DENY])
    adm = admission(before, LocalPod(new, f"v-x-{new.name}"))
    assert adm is not None
    assert nft.update_script(before, after) == adm.script()


def test_an_interval_set_is_flushed_and_filled_again():
    """A peer set with an ipBlock is an interval set: nft merges what it is given, so its
    elements are rewritten whole."""
    block = parse_policy(policy("block", "x", {"podSelector": {}, "ingress": [{"from": [
        {"ipBlock": {"cidr": "192.168.0.0/16"}},
        {"podSelector": {"matchLabels": {"pod": "b"}}}]}]}))
    pods = model_pods()
    gone = next(p for p in pods if p.labels.get("pod") == "b" and p.namespace == "x")
    before = _compile(pods, [block])
    after = _compile([p for p in pods if p is not gone], [block])
    script = nft.update_script(before, after)
    assert script is not None
    lines = script.splitlines()
    flushed = [m[1] for line in lines if (m := FLUSH_RE.match(line))]
    assert flushed and all(
        any(line.startswith(f"add element inet overlay-policy {name} {{ 192.168.0.0-")
            for line in lines) for name in flushed)
    assert not any(DELETE_RE.match(line) for line in lines)


def test_anything_but_elements_and_source_chains_needs_the_whole_table():
    pods = model_pods()
    allow = parse_policy(policy("allow", "x", {"podSelector": {}, "ingress": [{}]}))
    before = _compile(pods, [DENY])
    assert nft.update_script(before, _compile(pods, [DENY, allow])) is None  # a policy came
    assert nft.update_script(before, _compile(pods, [])) is None  # every policy went
    assert nft.update_script(before, _compile(pods, [DENY])) == ""  # nothing changed
    assert nft.update_script(nft.CompiledTable(before.text), before) is None  # not ours


@pytest.mark.parametrize("seed", range(40))
def test_an_update_gives_the_table_a_whole_load_would(seed):
    policies = [parse_policy(p) for p in random_policies(seed)]
    pods = model_pods()
    local = [p for p in pods if p.node == "node1"]
    one = local[seed % len(local)]
    changes = {"went": [p for p in pods if p is not one],
               "came": [*pods, _new_pod(POD_NAMES[seed % len(POD_NAMES)],
                                        ("x", "y", "z")[seed % 3])],
               "relabelled": [_relabelled(p, "zz") if p is one else p for p in pods]}
    before = _compile(pods, policies)
    updated = 0
    for how, now in changes.items():
        after = _compile(now, policies)
        script = nft.update_script(before, after)
        if script is None:
            continue
        updated += 1
        kernel = UpdatedKernel(before.text)
        kernel.load(script)
        assert kernel.view() == Kernel(after.text).view(), how
        assert kernel.elements.keys() == after.elements.keys()
    if not updated:
        pytest.skip("each change needs a whole table (counted by the next test)")


def test_most_random_pod_changes_take_the_update():
    took = tried = 0
    for seed in range(40):
        policies = [parse_policy(p) for p in random_policies(seed)]
        pods = model_pods()
        local = [p for p in pods if p.node == "node1"]
        gone = local[seed % len(local)]
        before = _compile(pods, policies)
        after = _compile([p for p in pods if p is not gone], policies)
        tried += 1
        took += nft.update_script(before, after) is not None
    assert took >= tried // 2, (took, tried)


@pytest.mark.parametrize("seed", range(40))
def test_after_an_adds_elements_the_compile_with_the_pod_is_the_same_table(seed):
    """What the agent compares before loading: the kernel as admitted into (its elements
    and sources) against the compile with the pod. Equal: nothing is loaded."""
    policies = [parse_policy(p) for p in random_policies(seed)]
    pods, new = model_pods(), _new_pod(POD_NAMES[seed % len(POD_NAMES)],
                                       ("x", "y", "z")[seed % 3])
    before, after = _compile(pods, policies), _compile([*pods, new], policies)
    lp = LocalPod(new, f"v-{new.namespace}-new")
    adm = admission(before, lp)
    if adm is None:
        pytest.skip("only a whole compile can add this pod")
    held = admitted(before, lp, adm)
    interval = {name for name, (_, iv) in after.index.set_types.items() if iv}  # type: ignore[union-attr]
    if any(held.elements[n] != after.elements[n] for n in interval):
        # nft merges an interval set's ranges: the compile writes the merged ones
        script = nft.update_script(held, after)
        assert script is not None and all(FLUSH_RE.match(line) or line.startswith(
            "add element") for line in script.splitlines())
    else:
        assert same_table(held, after)


def test_same_table_sees_a_pod_in_the_kernel_but_not_in_the_compile():
    pods = model_pods()
    new = Pod("x", "new", (IPv4Address("10.244.1.50"),), {"pod": "a"}, (), "node1")
    table = _compile(pods, [DENY])
    lp = LocalPod(new, "v-x-new")
    held = admitted(table, lp, admission(table, lp))
    assert not same_table(held, table)  # its DEL came before the compile: unload it
    assert same_table(held, _compile([*pods, new], [DENY]))


def test_a_loaded_tables_chains_include_every_source_chain_an_add_made():
    pods, new = model_pods(), _new_pod()
    table = _compile(pods, [DENY])
    rules = nft.chain_rules(table)
    assert {"forward", "check_egress", "check_ingress"} <= rules.keys()
    local = {f"src_v-{p.namespace}-{p.name}" for p in pods if p.node == "node1"}
    assert local <= rules.keys()
    assert all(rules[c] == 2 for c in local)  # IPv4's rule and IPv6's
    lp = LocalPod(new, "v-x-new")
    assert nft.chain_rules(admitted(table, lp, admission(table, lp))) == {**rules,
                                                                         "src_v-x-new": 2}
    assert nft.chain_rules(_compile(pods, [])) == {}  # the empty table has none


def test_each_chains_rules_are_counted_as_the_text_writes_them():
    table = _compile(model_pods(), [DENY])
    counted: dict[str, int] = {}
    chain = ""
    for line in table.text.splitlines():
        if line.startswith("\tchain "):
            chain = line.split()[1]
            counted[chain] = 0
        elif line.startswith("\t\t") and chain and " hook " not in line:
            counted[chain] += 1
        elif line == "\t}":
            chain = ""
    assert nft.chain_rules(table) == counted
    assert counted["forward"] >= 5  # established, neighbour discovery, link-local, a jump
    pods = model_pods()
    logged = nft.chain_rules(compile_table(_local(pods), pods, model_namespaces(), [DENY],
                                           log_denied=True))
    assert logged["check_ingress"] == counted["check_ingress"] + 1  # the log rule


def test_a_veth_whose_addresses_changed_gets_its_chain_made_again():
    """The same veth name with another address (a pod made again under one container ID):
    its chain is deleted and created in the one transaction (the kernel takes both)."""
    pods = model_pods()
    one = next(p for p in pods if p.node == "node1" and p.namespace == "x")
    moved = dataclasses.replace(one, ips=(IPv4Address("10.244.1.77"),))
    before = _compile(pods, [DENY])
    after = _compile([moved if p is one else p for p in pods], [DENY])
    script = nft.update_script(before, after)
    assert script is not None
    lines = script.splitlines()
    chain = f"src_v-{one.namespace}-{one.name}"
    deleted = lines.index(f"delete chain inet overlay-policy {chain}")
    added = next(i for i, line in enumerate(lines)
                 if line.startswith(f"add chain inet overlay-policy {chain} "))
    assert deleted < added
    assert f"add rule inet overlay-policy {chain} meta protocol ip ip saddr != 10.244.1.77 " \
           'counter name "spoofed" drop' in lines
    kernel = UpdatedKernel(before.text)
    kernel.load(script)
    assert kernel.view() == Kernel(after.text).view()
