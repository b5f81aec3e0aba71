"""NetworkPolicy for IPv6 pods, pure: the oracle's truth tables over IPv6 on the
dual-stack e2e model, the compiled table's IPv6 half (sets, rules, link-local), a new
dual-stack pod's element path, and the validation of IPv6 ipBlocks. The kernel's
verdicts are tests/integration/test_policy_lab_v6.py."""

from __future__ import annotations

import json
import os
import re
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest

from overlay.cluster.pods import Port
from overlay.policy.model import PolicyError, load_manifests, parse_policy
from overlay.policy.nft import (
    LocalPod,
    admit_script,
    compile_table,
    ipv6_source_rule,
    merge_ranges,
)
from overlay.policy.semantics import Host, Pod, allowed, decide

from .cases import CASES, POD_NAMES, Case, model_namespaces, policy, probes
from .cases6 import FAMILY_CASES, V6_PREFIX, dual_stack_pods, pod_ip6
from .randomized import random_policies
from .test_nft_admit import Kernel

SELECTOR_CASES = [c for c in CASES if c.name != "ip-block-with-except"]


def _table(case: Case, family: int) -> dict:
    pods = {p.ref: p for p in dual_stack_pods()}
    policies = [parse_policy(p) for p in case.policies]
    return {pr: decide(pods[pr.src], pods[pr.dst], pr.port, pr.protocol, model_namespaces(),
                       policies, family).allowed for pr in probes()}


@pytest.mark.parametrize("case", SELECTOR_CASES, ids=[c.name for c in SELECTOR_CASES])
def test_selector_cases_mean_the_same_over_ipv6(case):
    got = _table(case, 6)
    wrong = [pr for pr, ok in got.items() if ok != case.expect(pr)]
    assert not wrong, f"{len(wrong)} probes differ, e.g. {wrong[:3]}"
    assert got == _table(case, 4)


@pytest.mark.parametrize("case,over4,over6", FAMILY_CASES,
                         ids=[c.name for c, _, _ in FAMILY_CASES])
def test_an_ip_block_matches_its_own_family_only(case, over4, over6):
    for family, expect in ((4, over4), (6, over6)):
        got = _table(case, family)
        wrong = [pr for pr, ok in got.items() if ok != expect(pr)]
        assert not wrong, f"IPv{family}: {len(wrong)} probes differ, e.g. {wrong[:3]}"


def test_an_address_on_the_wire_says_the_family():
    pods = dual_stack_pods()
    block = [parse_policy(p) for p in FAMILY_CASES[0][0].policies]  # fd00:10:244:2::/64
    a6, c6 = pod_ip6("x", "a"), pod_ip6("y", "a")  # y/a is on node 2 (x/b excepted)
    assert allowed(Host(c6), Host(a6), 80, "TCP", pods, model_namespaces(), block)
    y_a, x_a = (next(p for p in pods if p.ref == r) for r in ("y/a", "x/a"))
    assert not allowed(Host(y_a.ip), Host(x_a.ip), 80, "TCP", pods, model_namespaces(), block)


# -- the compiled table --------------------------------------------------------------------

def _local(pods: list[Pod]) -> list[LocalPod]:
    return [LocalPod(p, f"v-{p.namespace}-{p.name}") for p in pods if p.node == "node1"]


def _compile(case: Case, pods: list[Pod] | None = None):
    pods = pods if pods is not None else dual_stack_pods()
    return compile_table(_local(pods), pods, model_namespaces(),
                         [parse_policy(p) for p in case.policies])


def _rules(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.startswith("\t\t")
            and not line.strip().startswith("type ")]


def test_every_ipv4_rule_has_its_ipv6_twin():
    for case in CASES + [c for c, _, _ in FAMILY_CASES]:
        rules = _rules(_compile(case).text)
        v4 = [r for r in rules if re.search(r"\bip (s|d)addr @", r)]
        v6 = [r for r in rules if re.search(r"\bip6 (s|d)addr @", r)]
        if case.name in ("ip-block-with-except", "ipv4-block-never-matches-ipv6"):
            # its block is IPv4: no IPv6 peer at all
            assert len(v6) == len(v4) - 1, case.name
        elif case.name == "ipv6-block-with-except":
            assert len(v4) == len(v6) - 1, case.name
        else:
            twins = [re.sub(r"@(\w+_(sel|peer|named))\b", r"@\g<1>6",
                            re.sub(r"\bip (s|d)addr", r"ip6 \1addr", r)) for r in v4]
            assert sorted(twins) == sorted(v6), case.name


def test_ipv6_sets_hold_the_pods_ipv6_addresses_and_blocks_as_ranges():
    text = _compile(FAMILY_CASES[2][0]).text  # one rule with a block of each family
    assert "set p0_sel6 { type ipv6_addr; elements = { fd00:10:244:1::a }; }" in text
    assert ("set p0_i0_peer6 { type ipv6_addr; flags interval; auto-merge; elements = { "
            "fd00:10:244:2::-fd00:10:244:2::a, fd00:10:244:2::c-fd00:10:244:2:ffff:ffff:ffff:ffff"
            " }; }") in text
    assert "10.244.2.0-10.244.2.10, 10.244.2.12-10.244.2.255" in text
    named = _compile(next(c for c in CASES if c.name == "named-port")).text
    assert ("set p0_i0_named6 { type ipv6_addr . inet_proto . inet_service; elements = { "
            "fd00:10:244:1::a . udp . 81 }; }") in named
    assert "ip6 daddr @p0_sel6 ip6 daddr . meta l4proto . th dport @p0_i0_named6" in named


def test_ndp_passes_and_other_link_local_is_dropped_before_the_policies():
    forward = _compile(CASES[1]).text.split("chain forward {")[1].split("\n\t}")[0]
    rules = _rules(forward)
    assert rules[:4] == [
        "ct state established,related accept",
        "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255 accept",
        "ip6 saddr fe80::/10 drop", "ip6 daddr fe80::/10 drop"]
    assert all("jump check_" in r for r in rules[4:]) and len(rules) == 6


def test_an_ipv4_only_cluster_compiles_no_ipv6_set():
    from .cases import model_pods

    for case in CASES:
        assert "ipv6_addr" not in _compile(case, model_pods()).text, case.name


def test_ipv6_rules_do_not_grow_with_pods():
    case = next(c for c in CASES if c.name == "ingress-and-egress-together")
    small = _compile(case)
    more = [*dual_stack_pods(), *(Pod("y", f"extra{i}", (IPv4Address(f"10.244.1.{100 + i}"),
                                                       IPv6Address(f"{V6_PREFIX}:1::{100 + i:x}")),
                                      {"pod": "b"}, (), "node1") for i in range(50))]
    big = _compile(case, more)

    def policy_rules(text: str) -> list[str]:  # each veth's source chain apart
        return [r for r in _rules(text) if "spoofed" not in r]
    assert len(policy_rules(small.text)) == len(policy_rules(big.text))
    assert len(big.text) > len(small.text)


# -- a new dual-stack pod by elements --------------------------------------------------------

class Kernel6(Kernel):
    """``Kernel`` with IPv6 interval sets compared as merged ranges too."""

    def content(self, name: str) -> str:
        type_, interval = self.types[name]
        if interval and type_ == "ipv6_addr":
            bounds = [e.partition("-") for e in sorted(self.elements[name])]
            return repr(merge_ranges((int(ip_address(lo)), int(ip_address(hi or lo)))
                                     for lo, _, hi in bounds))
        return super().content(name)


def _new(label: str, ns: str) -> Pod:
    ports = tuple(Port(f"serve-{p}-{proto.lower()}", p, proto)
                  for p in (80, 81) for proto in ("TCP", "UDP"))
    return Pod(ns, "new", (IPv4Address("10.244.1.50"), IPv6Address(f"{V6_PREFIX}:1::32")),
               {"pod": label}, ports, "node1")


def _in_ipv6(obj: dict) -> dict:
    """The policy with each ipBlock moved to the IPv6 layout (its /24 -> the node's /64)."""
    text = json.dumps(obj)
    for m in set(re.findall(r"10\.244\.(\d)\.(\d+)/32", text)):
        text = text.replace(f"10.244.{m[0]}.{m[1]}/32",
                            f"{V6_PREFIX}:{m[0]}::{int(m[1]):x}/128")
    text = re.sub(r"10\.244\.(\d)\.0/24", rf"{V6_PREFIX}:\1::/64", text)
    return dict(json.loads(text))


def test_the_commands_for_a_dual_stack_pod_hold_its_ipv6_address():
    deny = parse_policy(policy("deny", "x", {"podSelector": {}, "policyTypes": ["Ingress"]}))
    pods, new = dual_stack_pods(), _new("a", "x")
    before = compile_table(_local(pods), pods, model_namespaces(), [deny])
    script = admit_script(before, LocalPod(new, "v-new"))
    assert script is not None
    assert any(re.fullmatch(r"add element inet overlay-policy \w+6 \{ fd00:10:244:1::32 \}",
                            line) for line in script.splitlines())


@pytest.mark.parametrize("seed", range(40))
def test_elements_give_the_dual_stack_table_a_compile_would(seed):
    raw = random_policies(seed)
    policies = [parse_policy(_in_ipv6(p) if seed % 2 else p) for p in raw]
    new = _new(POD_NAMES[seed % len(POD_NAMES)], ("x", "y", "z")[seed % 3])
    pods = dual_stack_pods()
    before = compile_table(_local(pods), pods, model_namespaces(), policies)
    after = compile_table(_local([*pods, new]), [*pods, new], model_namespaces(), policies)
    script = admit_script(before, LocalPod(new, f"v-{new.namespace}-new"))
    if script is None:
        return  # only a whole compile can add this pod (the path the agent then takes)
    kernel = Kernel6(before.text)
    kernel.load(script)
    assert kernel.view() == Kernel6(after.text).view()


# -- validation -----------------------------------------------------------------------------

def _block(cidr: str, *excepts: str) -> dict:
    return policy("b", "x", {"podSelector": {}, "ingress": [
        {"from": [{"ipBlock": {"cidr": cidr, "except": list(excepts)}}]}]})


def test_an_ipv6_block_and_its_excepts_parse():
    p = parse_policy(_block("fd00:10:244::/48", "fd00:10:244:2::/64"))
    rule = p.ingress[0]
    assert rule.peers is not None and rule.peers[0].ip_block is not None
    assert str(rule.peers[0].ip_block.cidr) == "fd00:10:244::/48"


@pytest.mark.parametrize("cidr,excepted", [
    ("fd00:10:244::/48", "10.244.0.0/16"),        # another family
    ("10.244.0.0/16", "fd00:10:244::/64"),
    ("fd00:10:244::/48", "fd00:10:245::/64"),     # outside
    ("fd00:10:244::/48", "fd00:10:244::/48"),     # not strictly inside
])
def test_an_except_of_another_family_or_outside_is_one_clear_error(cidr, excepted):
    with pytest.raises(PolicyError) as e:
        parse_policy(_block(cidr, excepted))
    assert str(e.value) == ("spec.ingress[0].from[0].ipBlock.except[0]: must be a strict "
                            "subset of `cidr`")


def test_a_bad_ipv6_cidr_names_the_field():
    with pytest.raises(PolicyError, match=r"ipBlock.cidr: must be a valid CIDR, not "
                                          r"'fd00::/129'"):
        parse_policy(_block("fd00::/129"))


def test_the_ipv6_example_compiles_to_ipv6_peers_only():
    path = os.path.join(os.path.dirname(__file__), "..", "..", "examples",
                        "allow-ipv6-block.yaml")
    with open(path) as f:
        (example,) = load_manifests(f.read())
    pods = [Pod("x", "web", (IPv4Address("10.244.1.5"), IPv6Address(f"{V6_PREFIX}:1::5")),
                {"app": "web"}, (), "node1"), *dual_stack_pods()]
    text = compile_table(_local(pods), pods, model_namespaces(), [example]).text
    assert "p0_i0_peer6" in text and "p0_i0_peer " not in text
    assert "fd00:10:244:2::-fd00:10:244:2::fe:ffff, fd00:10:244:2::100:0-" in text


def test_the_ipv6_source_rule_allows_own_link_local_and_unspecified_sources():
    rule = ipv6_source_rule([IPv4Address("10.244.1.9"), IPv6Address("fd00:10:244:1::9")],
                            'counter name "spoofed"')
    assert rule == ('meta protocol ip6 ip6 saddr != { ::, fd00:10:244:1::9, fe80::/64 } '
                    'counter name "spoofed" drop')
    # sorted by address (nft's listing order), whatever the pod's addresses
    assert "{ ::, 2001:db8::1, fd00::2, fe80::/64 }" in ipv6_source_rule(
        [IPv6Address("fd00::2"), IPv6Address("2001:db8::1")], "counter")
    assert "{ ::, fe80::/64 }" in ipv6_source_rule([IPv4Address("10.244.1.9")], "counter")


def test_a_dual_stack_veths_source_chain_allows_its_ipv6_address():
    pods = dual_stack_pods()
    xa = next(p for p in pods if p.ref == "x/a")
    t = _compile(CASES[1], pods)
    chain = t.text.split("\tchain src_v-x-a {\n")[1].split("\n\t}")[0].splitlines()
    assert chain[-1].strip() == ('meta protocol ip6 ip6 saddr != { ::, fd00:10:244:1::a, '
                                 'fe80::/64 } counter name "spoofed" drop')
    assert t.index is not None
    assert t.index.sources["v-x-a"] == (str(xa.ip), str(pod_ip6("x", "a")))
