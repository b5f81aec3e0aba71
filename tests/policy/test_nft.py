"""The nftables compiler as text: its shape (rules grow with policies plus pods, never
their product), the address sets, the atomic replacement script. The kernel's behaviour
is tests/integration/test_policy_nft.py."""

from ipaddress import IPv4Address

import pytest

from overlay.cluster.pods import Port
from overlay.policy.model import parse_policy
from overlay.policy.nft import (
    Cluster,
    LocalPod,
    PolicyCounter,
    compile_table,
    merge_ranges,
    range_text,
    replacement,
    veth_problem,
)
from overlay.policy.semantics import Pod, peer_matches

from .cases import model_namespaces, model_pods, policy
from .randomized import random_policies


def _cluster(n: int) -> list[Pod]:
    return [Pod(f"ns{i % 10}", f"p{i}", (IPv4Address(f"10.{244 + i // 65536}.{i // 256 % 256}"
                                                     f".{i % 256}"),),
                {"app": f"a{i % 7}"}, (Port("http", 8000 + i % 3),)) for i in range(n)]


def _policies(n: int) -> list:
    return [parse_policy(policy(f"pol{i}", f"ns{i % 10}", {
        "podSelector": {"matchLabels": {"app": f"a{i % 7}"}},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [{"from": [{"namespaceSelector": {}}], "ports": [{"port": "http"}]}],
        "egress": [{"to": [{"podSelector": {}}], "ports": [{"port": 53, "protocol": "UDP"}]}]}))
        for i in range(n)]


def _rules(text: str, chains: str = "") -> int:
    """Rules outside the per-veth source chains (``chains="src_"``: only theirs)."""
    count, chain = 0, ""
    for line in text.splitlines():
        if line.startswith("\tchain "):
            chain = line.split()[1]
        elif line.startswith("\t\t") and not line.strip().startswith("type "):
            count += chain.startswith("src_") == (chains == "src_")
    return count


def test_rules_do_not_grow_with_pods():
    pols = _policies(20)
    small, big = _cluster(200), _cluster(2000)
    t_small = compile_table([LocalPod(p, f"v{i}") for i, p in enumerate(small[:50])], small,
                            {}, pols)
    t_big = compile_table([LocalPod(p, f"v{i}") for i, p in enumerate(big[:500])], big, {},
                          pols)
    assert _rules(t_small.text) == _rules(t_big.text)
    assert len(t_big.text) > len(t_small.text)  # the sets grew instead
    # but for each local pod's own source chain: two rules per veth, whatever the policies
    assert _rules(t_small.text, "src_") == 2 * 50 and _rules(t_big.text, "src_") == 2 * 500


def test_rules_grow_linearly_with_policies():
    pods = _cluster(300)
    local = [LocalPod(p, f"v{i}") for i, p in enumerate(pods[:100])]
    # Fixed: forward's 6 (3 for IPv6 link-local), two drops (the source chains' 2 per veth
    # apart). Per policy (each selects a local pod): one ingress and one egress rule, each
    # direction's denied counter.
    for n in (10, 40):
        assert _rules(compile_table(local, pods, {}, _policies(n)).text) == 8 + 4 * n


def test_no_policy_compiles_to_an_empty_table():
    pods = model_pods()
    t = compile_table([LocalPod(p, "v") for p in pods[:2]], pods, {}, [])
    assert t.text == "table inet overlay-policy {\n}\n" and t.counters == {}


def test_policy_without_local_pods_adds_nothing():
    pods = model_pods()
    local = [LocalPod(p, f"v{i}") for i, p in enumerate(pods) if p.namespace == "y"]
    t = compile_table(local, pods, model_namespaces(),
                      [parse_policy(policy("deny", "x", {"podSelector": {}}))])
    assert "chain" not in t.text


def test_counters_name_their_policy():
    pods = model_pods()
    local = [LocalPod(p, f"v{i}") for i, p in enumerate(pods)]
    t = compile_table(local, pods, model_namespaces(), [parse_policy(policy(
        "web", "x", {"podSelector": {}, "ingress": [{}]}))])
    assert t.counters["p0_ingress_allowed"] == PolicyCounter("x/web", "Ingress", "allowed")
    assert t.counters["p0_ingress_denied"] == PolicyCounter("x/web", "Ingress", "denied")
    assert 'counter name "p0_ingress_allowed" accept' in t.text


def test_ip_block_minus_excepts_and_pods_collapse():
    p = parse_policy(policy("p", "x", {"podSelector": {}, "ingress": [{"from": [
        {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16", "10.1.2.0/24"]}},
        {"ipBlock": {"cidr": "fd00::/8"}},
        {"podSelector": {"matchLabels": {"pod": "a"}}}]}]}))
    assert p.ingress[0].peers is not None
    ranges = Cluster(model_pods(), model_namespaces()).peer_ranges(p.ingress[0].peers, "x")
    assert [(range_text(r)) for r in ranges] == ["10.0.0.0-10.0.255.255",
                                                 "10.2.0.0-10.255.255.255"]
    assert sum(hi - lo + 1 for lo, hi in ranges) == 2**24 - 2**16  # x/a is inside already


def test_ranges_merge_overlapping_and_adjacent():
    assert merge_ranges([(5, 9), (1, 3), (4, 4), (20, 30), (25, 26)]) == [(1, 9), (20, 30)]
    assert range_text((int(IPv4Address("10.0.0.1")),) * 2) == "10.0.0.1"


def test_peers_naming_nobody_allow_nothing():
    pods = model_pods()
    local = [LocalPod(p, f"v{i}") for i, p in enumerate(pods)]
    t = compile_table(local, pods, model_namespaces(), [parse_policy(policy("p", "x", {
        "podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {
            "pod": "nobody"}}}]}]}))])
    assert "accept\n" not in t.text.split("chain check_ingress")[1].replace(
        "established,related accept", "")


def test_replacement_is_one_atomic_script():
    t = compile_table([], [], {}, [])
    script = replacement(t)
    assert script.splitlines()[:2] == ["table inet overlay-policy { }",
                                       "delete table inet overlay-policy"]
    assert script.endswith(t.text)


def test_policies_sharing_selectors_share_sets():
    pods = model_pods()
    local = [LocalPod(p, f"v{i}") for i, p in enumerate(pods)]
    spec = {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {
        "matchLabels": {"ns": "y"}}}]}]}
    t = compile_table(local, pods, model_namespaces(),
                      [parse_policy(policy("one", "x", spec)),
                       parse_policy(policy("two", "x", spec))])
    assert t.text.count("set p0_i0_peer") == 1 and "p1_i0_peer" not in t.text
    assert t.text.count("@p0_i0_peer") == 2


def test_overlapping_ports_are_merged_per_protocol():
    pods = model_pods()
    local = [LocalPod(p, f"v{i}") for i, p in enumerate(pods)]
    t = compile_table(local, pods, model_namespaces(), [parse_policy(policy("p", "x", {
        "podSelector": {}, "ingress": [{"ports": [
            {"port": 81}, {"port": 79, "endPort": 81}, {"port": 82}, {"protocol": "UDP"},
            {"protocol": "UDP", "port": 53}]}]}))])
    assert "elements = { tcp . 79-82, udp . 0-65535 }" in t.text


def test_the_cluster_index_names_the_pods_the_evaluator_does():
    # Cluster narrows by label before matching; it must agree with peer_matches on all.
    pods, nss = model_pods(), model_namespaces()
    cluster = Cluster(pods, nss)
    checked = 0
    for seed in range(30):
        for obj in random_policies(seed):
            p = parse_policy(obj)
            for rule in (*p.ingress, *p.egress):
                for peer in rule.peers or ():
                    want = sorted(x.ref for x in pods if peer_matches(peer, p.namespace, x, nss))
                    assert sorted(x.ref for x in cluster.peer_pods(peer, p.namespace)) == want
                    checked += 1
    assert checked > 50


def test_each_local_veth_has_its_own_source_chain():
    deny = parse_policy(policy("deny", "x", {"podSelector": {}, "policyTypes": ["Ingress"]}))
    pods = model_pods()
    a, b = pods[0], pods[1]
    local = [LocalPod(a, "veth0a"), LocalPod(b, "veth0b"), LocalPod(pods[2], 'bad"name')]
    t = compile_table(local, pods, model_namespaces(), [deny])
    chain = t.text.split("\tchain src_veth0a {\n")[1].split("\t}")[0].splitlines()
    assert [line.strip() for line in chain] == [
        'type filter hook ingress device "veth0a" priority -500; policy accept;',
        f'meta protocol ip ip saddr != {a.ip} counter name "spoofed" drop',
        'meta protocol ip6 ip6 saddr != { ::, fe80::/64 } counter name "spoofed" drop']
    assert "chain src_veth0b {" in t.text
    # a name that could break out of nft's text gets no chain and never reaches the text
    assert 'bad"name' not in t.text and "bad" not in t.text
    assert t.index is not None and dict(t.index.sources) == {
        "veth0a": (str(a.ip),), "veth0b": (str(b.ip),)}
    assert t.counters["spoofed"].verdict == "spoofed"


def test_a_veth_two_records_share_allows_both_addresses():
    deny = parse_policy(policy("deny", "x", {"podSelector": {}, "policyTypes": ["Ingress"]}))
    pods = model_pods()
    t = compile_table([LocalPod(pods[0], "veth0"), LocalPod(pods[2], "veth0")], pods,
                      model_namespaces(), [deny])
    both = ", ".join(sorted(str(p.ip) for p in (pods[0], pods[2])))
    assert f"ip saddr != {{ {both} }} counter" in t.text and t.text.count("chain src_") == 1


@pytest.mark.parametrize("name", ["", "a" * 16, "-lead", 'q"uote', "sp ace", "semi;", "{"])
def test_veth_names_that_cannot_reach_nft_text(name):
    assert veth_problem(name) is not None
    assert veth_problem("veth0123456789a") is None  # the project's own shape, 15 bytes


def test_two_pods_under_one_name_are_both_isolated_and_their_named_ports_resolve():
    a1 = Pod("x", "a", (IPv4Address("10.244.1.2"),), {"pod": "a"}, (Port("http", 8080),))
    a2 = Pod("x", "a", (IPv4Address("10.244.1.3"),), {"pod": "a"}, (Port("http", 9090),))
    b = Pod("x", "b", (IPv4Address("10.244.1.4"),), {"pod": "b"})
    egress = parse_policy(policy("to-a", "x", {
        "podSelector": {"matchLabels": {"pod": "b"}}, "policyTypes": ["Egress"],
        "egress": [{"to": [{"podSelector": {"matchLabels": {"pod": "a"}}}],
                    "ports": [{"port": "http"}]}]}))
    deny = parse_policy(policy("deny", "x", {"podSelector": {"matchLabels": {"pod": "a"}},
                                             "policyTypes": ["Ingress"]}))
    t = compile_table([LocalPod(a1, "veth1"), LocalPod(a2, "veth2"), LocalPod(b, "veth3")],
                      [a1, a2, b], model_namespaces(), [egress, deny])
    assert "10.244.1.2" in t.text and "10.244.1.3" in t.text
    assert "8080" in t.text and "9090" in t.text  # each one's own http port
    assert "chain src_veth1 {" in t.text and "chain src_veth2 {" in t.text
