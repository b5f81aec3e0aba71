"""The compiled policy table in real kernels: two nodes, nine pods, real packets.

For every e2e-style case the whole truth table (every pod to every pod, TCP and UDP on 80
and 81) is probed with the table loaded on both nodes and compared with the pure
evaluator (``overlay.policy.semantics``) and with the case's own expectation.
"""

import socket

import pytest

from overlay.policy.model import parse_policy
from overlay.policy.semantics import allowed
from overlay.util.proc import ProgramError

from ..policy.cases import CASES, model_namespaces, policy, probes
from ..policy.randomized import random_policies
from .support.policy_topology import PolicyTopology, _in_ns, spoof_address

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def topo():
    t = PolicyTopology()
    try:
        yield t
    finally:
        t.close()


def test_bridged_traffic_reaches_the_inet_hooks(topo):
    assert topo.bridge_calls_iptables(1) == "1", "br_netfilter's bridge-nf-call-iptables is off"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_kernel_truth_table_matches_semantics(topo, case):
    policies = [parse_policy(p) for p in case.policies]
    topo.apply(policies)
    pods = list(topo.pods.values())
    got = topo.probe(probes())
    oracle = {pr: allowed(topo.pods[pr.src], topo.pods[pr.dst], pr.port, pr.protocol, pods,
                          model_namespaces(), policies) for pr in got}
    wrong = sorted((str(pr), got[pr]) for pr in got if got[pr] != oracle[pr])
    assert not wrong, f"{len(wrong)} of {len(got)} probes differ from semantics: {wrong[:4]}"
    assert all(case.expect(pr) == ok for pr, ok in got.items())


@pytest.mark.parametrize("seed", range(8))
def test_kernel_agrees_with_semantics_on_random_policies(topo, seed):
    policies = [parse_policy(p) for p in random_policies(seed)]
    topo.apply(policies)
    pods = list(topo.pods.values())
    got = topo.probe(probes())
    wrong = sorted(str(pr) for pr in got if got[pr] != allowed(
        topo.pods[pr.src], topo.pods[pr.dst], pr.port, pr.protocol, pods, model_namespaces(),
        policies))
    assert not wrong, f"seed {seed}: {len(wrong)} probes differ, e.g. {wrong[:4]}"


def test_counters_count_per_policy(topo):
    topo.apply([parse_policy(policy("deny", "x", {"podSelector": {"matchLabels": {"pod": "a"}},
                                                  "ingress": [{"ports": [{"port": 80}]}]}))])
    got = topo.probe([pr for pr in probes() if pr.dst == "x/a" and pr.protocol == "TCP"])
    assert any(got.values()) and not all(got.values())
    listing = topo.nft(1, "list", "counters", "table", "inet", "overlay-policy")
    assert "p0_ingress_allowed" in listing and "p0_ingress_denied" in listing
    assert "packets 0" not in listing.split("p0_ingress_denied")[1].split("}")[0]


def test_a_pod_cannot_spoof_an_allowed_source(topo):
    # z/c accepts only x/c; x/a (same node as x/c) sends from x/c's address.
    topo.apply([parse_policy(policy("only-xc", "z", {
        "podSelector": {"matchLabels": {"pod": "c"}}, "ingress": [{"from": [
            {"namespaceSelector": {"matchLabels": {"ns": "x"}},
             "podSelector": {"matchLabels": {"pod": "c"}}}]}]}))])
    xc, zc = topo.pods["x/c"], topo.pods["z/c"]
    assert xc.node == topo.pods["x/a"].node
    spoof_address(topo, "x/a", xc.ip)
    s = _in_ns(topo.pod_ns["x/a"], socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((str(xc.ip), 0))
        s.sendto(b"spoofed", (str(zc.ip), 80))
    finally:
        s.close()
    rx = topo.udp[("z/c", 80)]
    rx.settimeout(1.0)
    with pytest.raises(TimeoutError):
        while rx.recv(64) != b"spoofed":
            pass
    rx.setblocking(False)
    node = 1 if xc.node == "node1" else 2
    assert "packets 0 " not in topo.nft(node, "list", "counter", "inet", "overlay-policy",
                                        "spoofed")


def test_a_refused_table_leaves_the_old_one(topo):
    deny = [parse_policy(policy("deny", "x", {"podSelector": {}}))]
    topo.apply(deny)
    before = topo.nft(1, "list", "table", "inet", "overlay-policy")
    from overlay.policy import nft
    bad = nft.CompiledTable("table inet overlay-policy {\n\tchain c { nonsense }\n}\n")
    with pytest.raises(ProgramError):
        nft.apply_table(bad, netns=topo.node(1))
    assert topo.nft(1, "list", "table", "inet", "overlay-policy") == before


def test_no_policy_is_an_empty_table(topo):
    topo.apply([])
    assert "chain" not in topo.nft(1, "list", "table", "inet", "overlay-policy")
