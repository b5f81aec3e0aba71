"""A pod put into a loaded table by element updates (``nft.admit_script``, the warm ADD's
fast path) is judged by the kernel exactly as when the table is compiled with it, probed
with real packets and read back (``diagnose``'s normalizer finds no difference); and the
denied-packet log rule (``log_denied``) in a real kernel.

Uses the nine-pod two-node topology of test_policy_nft.py: node1's table is compiled
without one of its pods, that pod's elements are then added, and the whole truth table is
probed, then probed again with the full compile loaded, and both compared with the pure
evaluator."""

from __future__ import annotations

import dataclasses
import json
import socket
import time
from ipaddress import ip_address

import pytest

from overlay.diagnose.policy_table import diff_tables, parse_table
from overlay.errors import OverlayError
from overlay.policy import nft
from overlay.policy.model import parse_policy
from overlay.policy.semantics import allowed

from ..policy.cases import model_namespaces, policy, probes
from ..policy.randomized import random_policies
from .support.policy_topology import PolicyTopology, _in_ns

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def topo():
    t = PolicyTopology()
    try:
        yield t
    finally:
        t.close()


def _load_without(topo: PolicyTopology, policies, missing: str) -> nft.CompiledTable:
    """node1's table compiled as if ``missing`` (one of its pods) were not there yet;
    node2's with every pod (the new pod is a peer there)."""
    pods = list(topo.pods.values())
    table = nft.compile_table([lp for lp in topo.local(1) if lp.pod.ref != missing],
                              [p for p in pods if p.ref != missing], model_namespaces(),
                              policies)
    nft.apply_table(table, netns=topo.node(1))
    nft.apply_table(nft.compile_table(topo.local(2), pods, model_namespaces(), policies),
                    netns=topo.node(2))
    return table


def _wrong(topo: PolicyTopology, policies, got) -> list[str]:
    pods = list(topo.pods.values())
    return sorted(str(pr) for pr in got if got[pr] != allowed(
        topo.pods[pr.src], topo.pods[pr.dst], pr.port, pr.protocol, pods, model_namespaces(),
        policies))


@pytest.mark.parametrize("seed", range(6))
def test_added_elements_and_the_full_compile_give_the_same_verdicts(topo, seed):
    policies = [parse_policy(p) for p in random_policies(100 + seed)]
    node1 = topo.local(1)
    new = node1[seed % len(node1)]
    table = _load_without(topo, policies, new.pod.ref)
    adm = nft.admission(table, new)
    if adm is None:
        pytest.skip("this pod needs a whole compile (tests/policy/test_nft_admit.py counts)")
    nft.apply_admission(adm, netns=topo.node(1))  # as nfnetlink messages where it can
    by_elements = topo.probe(probes())
    full = nft.compile_table(node1, list(topo.pods.values()), model_namespaces(), policies)
    # the kernel's table as diagnose's drift check reads it: the full compile's
    want, got = parse_table(full.text), parse_table(topo.nft(1, "list", "table", "inet", nft.TABLE))
    assert want is not None and got is not None and diff_tables(want, got) == []
    nft.apply_table(full, netns=topo.node(1))
    by_compile = topo.probe(probes())
    differ = sorted(str(pr) for pr in by_compile if by_compile[pr] != by_elements[pr])
    assert not differ, f"{len(differ)} probes differ between the paths: {differ[:4]}"
    wrong = _wrong(topo, policies, by_elements)
    assert not wrong, f"{len(wrong)} probes differ from semantics: {wrong[:4]}"


def test_a_default_deny_pod_added_by_elements_is_filtered_and_not_spoofing(topo):
    """The common case: default-deny plus an allow, the new pod denied from its first
    packet and its source check hooked (its veth was not in the chain's devices)."""
    policies = [parse_policy(policy("deny", "x", {"podSelector": {},
                                                  "policyTypes": ["Ingress", "Egress"]})),
                parse_policy(policy("dns", "x", {"podSelector": {}, "policyTypes": ["Egress"],
                                                 "egress": [{"ports": [{"port": 81,
                                                                        "protocol": "UDP"}]}]}))]
    new = next(lp for lp in topo.local(1) if lp.pod.namespace == "x")
    table = _load_without(topo, policies, new.pod.ref)
    adm = nft.admission(table, new)
    assert adm is not None and adm.chain is not None and adm.chain.veth == new.ifname
    assert nft._netlink_messages(adm) is not None  # the ADD's path: no libnftables
    nft.apply_admission(adm, netns=topo.node(1))
    chain = topo.nft(1, "list", "chain", "inet", nft.TABLE, f"src_{new.ifname}")
    assert f'device "{new.ifname}"' in chain or f'"{new.ifname}"' in chain
    got = topo.probe(probes())
    assert not _wrong(topo, policies, got)
    assert not any(ok for pr, ok in got.items() if pr.src == new.pod.ref and
                   not (pr.protocol == "UDP" and pr.port == 81 and
                        not pr.dst.startswith("x/")))


@pytest.mark.parametrize("addresses", [
    ("10.244.1.20",), ("10.244.1.20", "fd00:10:244:1::20"), ("fd00:10:244:1::20",),
    ("fd00:10:244:1::20", "fd00:10:244:1::30"), ()])
def test_each_source_chain_form_sent_as_messages_lists_as_its_text(topo, addresses):
    """The kernel's reading of the encoded chain (IPv4, dual-stack, IPv6-only, two IPv6,
    none): ``nft list`` shows the very header and rules the text path loads."""
    deny = [parse_policy(policy("deny", "x", {"podSelector": {}, "policyTypes": ["Ingress"]}))]
    lp = topo.local(1)[0]
    table = _load_without(topo, deny, lp.pod.ref)
    chain = nft.source_chain(lp.ifname, [ip_address(a) for a in addresses])
    adm = nft.Admission((), chain)
    assert nft._netlink_messages(adm) is not None
    nft.apply_admission(adm, netns=topo.node(1))
    listed = [line.strip() for line in
              topo.nft(1, "list", "chain", "inet", nft.TABLE, chain.name).splitlines()]
    start = listed.index(f"chain {chain.name} {{")
    assert listed[start + 1:start + 2 + len(chain.rules)] == [chain.header, *chain.rules]
    assert table.index is not None and lp.ifname not in table.index.sources


def _kernel_diff(topo: PolicyTopology, table: nft.CompiledTable) -> list[str]:
    """diagnose's comparison of node1's kernel table with ``table``."""
    kernel = topo.nft(1, "list", "table", "inet", nft.TABLE)
    want, got = parse_table(table.text), parse_table(kernel)
    assert want is not None and got is not None
    return diff_tables(want, got)


def test_several_adds_then_a_compile_leave_no_drift_and_a_gone_pod_no_chain(topo):
    """Three of node1's pods (one selected, two not) put in by element updates, one after
    the other (each its own transaction with its veth's chain; the first as nft text, the
    others as nfnetlink messages), hold the table a compile with them gives; loading that
    compile changes nothing; the compile once a pod is gone (its DEL, then the registry)
    removes that veth's chain and nothing else, and the kernel still agrees."""
    deny = parse_policy(policy("deny", "x", {"podSelector": {},
                                             "policyTypes": ["Ingress", "Egress"]}))
    node1 = topo.local(1)
    pods = list(topo.pods.values())
    keep = next(lp for lp in node1 if lp.pod.namespace == "x")  # deny selects a local pod
    new = [lp for lp in node1 if lp is not keep][:3]
    assert len(new) == 3
    refs = {lp.pod.ref for lp in new}
    table = _load_without_all(topo, [deny], refs)
    for i, lp in enumerate(new):
        adm = nft.admission(table, lp)
        assert adm is not None and adm.chain is not None and adm.chain.veth == lp.ifname
        if i == 0:  # the text path (libnftables or nft -f), then nfnetlink messages
            nft.apply_script(adm.script(), netns=topo.node(1))
        else:
            assert nft._netlink_messages(adm) is not None
            nft.apply_admission(adm, netns=topo.node(1))
        table = nft.admitted(table, lp)
    full = nft.compile_table(node1, pods, model_namespaces(), [deny])
    assert _kernel_diff(topo, full) == []
    nft.apply_table(full, netns=topo.node(1))
    assert _kernel_diff(topo, full) == []
    gone = new[0]
    after = nft.compile_table([lp for lp in node1 if lp is not gone],
                              [p for p in pods if p.ref != gone.pod.ref], model_namespaces(),
                              [deny])
    nft.apply_table(after, netns=topo.node(1))
    assert _kernel_diff(topo, after) == []
    listing = topo.nft(1, "list", "table", "inet", nft.TABLE)
    assert f"chain src_{gone.ifname} {{" not in listing
    assert all(f"chain src_{lp.ifname} {{" in listing for lp in node1 if lp is not gone)


@pytest.mark.parametrize("seed", range(4))
def test_a_table_updated_in_place_is_the_whole_compiles(topo, seed):
    """The compiler's path when only pods changed (``apply_table(..., held=...)``): a
    pod relabelled, then a pod gone, each as element and chain updates; the kernel then
    holds what a whole load of the compile would (diagnose finds no drift) and judges
    every probe as the semantics do."""
    policies = [parse_policy(p) for p in random_policies(200 + seed)]
    ns, pods, node1 = model_namespaces(), list(topo.pods.values()), topo.local(1)
    one = node1[seed % len(node1)]
    relabelled = dataclasses.replace(one.pod, labels={**one.pod.labels, "pod": "zz"})
    now = [relabelled if p.ref == one.pod.ref else p for p in pods]
    local_now = [nft.LocalPod(relabelled, lp.ifname) if lp is one else lp for lp in node1]
    before = nft.compile_table(node1, pods, ns, policies)
    nft.apply_table(before, netns=topo.node(1))
    nft.apply_table(nft.compile_table(topo.local(2), now, ns, policies), netns=topo.node(2))
    after = nft.compile_table(local_now, now, ns, policies)
    in_place = nft.update_script(before, after) is not None
    assert nft.apply_table(after, netns=topo.node(1), held=before) is not in_place
    assert _kernel_diff(topo, after) == []
    got = topo.probe(probes())
    by_ref = {p.ref: p for p in now}
    wrong = sorted(str(pr) for pr in got if got[pr] != allowed(
        by_ref[pr.src], by_ref[pr.dst], pr.port, pr.protocol, now, ns, policies))
    assert not wrong, f"{len(wrong)} probes differ from semantics: {wrong[:4]}"
    gone = local_now[(seed + 1) % len(local_now)]
    without = nft.compile_table([lp for lp in local_now if lp is not gone],
                                [p for p in now if p.ref != gone.pod.ref], ns, policies)
    in_place = nft.update_script(after, without) is not None
    assert nft.apply_table(without, netns=topo.node(1), held=after) is not in_place
    assert _kernel_diff(topo, without) == []
    assert f"chain src_{gone.ifname} {{" not in topo.nft(1, "list", "table", "inet", nft.TABLE)


@pytest.mark.parametrize("seed", [300, 301, 303])
def test_a_withdrawn_pod_leaves_the_verdicts_of_a_compile_without_it(topo, seed):
    """A DEL's path (``nft.withdrawal``, sent as nfnetlink messages): admitted then
    withdrawn, node1's table is again the one loaded before the ADD (diagnose finds no
    drift); withdrawn from the full compile, it holds what a compile without the pod
    gives (no drift either), every probe between the other pods is judged as the
    semantics judge it without that pod, and its veth's chain is gone."""
    policies = [parse_policy(p) for p in random_policies(seed)]
    ns, pods, node1 = model_namespaces(), list(topo.pods.values()), topo.local(1)
    for gone in node1[seed % len(node1):] + node1[:seed % len(node1)]:
        table = _load_without(topo, policies, gone.pod.ref)
        adm = nft.admission(table, gone)
        rest = [lp for lp in node1 if lp is not gone]
        full = nft.compile_table(node1, pods, ns, policies)
        if adm is not None and nft.withdrawal(full, gone, rest) is not None:
            break
    else:
        raise AssertionError("no pod of node1 takes both paths: pick other seeds")
    nft.apply_admission(adm, netns=topo.node(1))
    w = nft.withdrawal(nft.admitted(table, gone, adm), gone, rest)
    assert w is not None and nft._withdrawal_messages(w) is not None
    nft.apply_withdrawal(w, netns=topo.node(1))
    assert _kernel_diff(topo, table) == []
    nft.apply_table(full, netns=topo.node(1))
    w = nft.withdrawal(full, gone, rest)
    assert w is not None and w.chain == f"src_{gone.ifname}"
    nft.apply_withdrawal(w, netns=topo.node(1))
    assert f"chain src_{gone.ifname} {{" not in topo.nft(1, "list", "table", "inet", nft.TABLE)
    others = [p for p in pods if p.ref != gone.pod.ref]
    # the very table a compile without it gives, as diagnose's drift check reads both
    assert _kernel_diff(topo, nft.compile_table(rest, others, ns, policies)) == []
    asked = [pr for pr in probes() if gone.pod.ref not in (pr.src, pr.dst)]
    got = topo.probe(asked)
    wrong = sorted(str(pr) for pr in got if got[pr] != allowed(
        topo.pods[pr.src], topo.pods[pr.dst], pr.port, pr.protocol, others, ns, policies))
    assert not wrong, f"{len(wrong)} probes differ from semantics: {wrong[:4]}"
    # the kernel refuses what it does not hold, and the table is unchanged
    with pytest.raises(OverlayError):
        nft.apply_withdrawal(w, netns=topo.node(1))
    assert f"chain src_{gone.ifname} {{" not in topo.nft(1, "list", "table", "inet", nft.TABLE)


def test_the_kernels_chains_and_rules_are_counted_as_loaded(topo):
    """What overlayd's periodic look compares (``nft.kernel_rules``): each chain of the
    loaded table with its number of rules, another table's not among them; the counts
    move with ``flush table`` and an added rule, and None once the table is gone."""
    deny = [parse_policy(policy("deny", "x", {"podSelector": {}, "policyTypes": ["Ingress"]}))]
    table = nft.compile_table(topo.local(1), list(topo.pods.values()), model_namespaces(), deny)
    nft.apply_table(table, netns=topo.node(1))
    for cmd in (("table",), ("chain", "forward"), ("rule", "forward", "counter")):
        topo.nft(1, "add", cmd[0], "inet", "ovtest-other", *cmd[1:])
    try:
        want = nft.chain_rules(table)
        assert nft.kernel_rules(netns=topo.node(1)) == want
        topo.nft(1, "add", "rule", "inet", nft.TABLE, "check_ingress", "counter")
        assert nft.kernel_rules(netns=topo.node(1)) == {
            **want, "check_ingress": want["check_ingress"] + 1}
        topo.nft(1, "flush", "table", "inet", nft.TABLE)
        assert nft.kernel_rules(netns=topo.node(1)) == dict.fromkeys(want, 0)
        topo.nft(1, "delete", "table", "inet", nft.TABLE)
        assert nft.kernel_rules(netns=topo.node(1)) is None
    finally:
        topo.nft(1, "delete", "table", "inet", "ovtest-other")
        nft.apply_table(table, netns=topo.node(1))


def _load_without_all(topo: PolicyTopology, policies, missing: set[str]) -> nft.CompiledTable:
    pods = list(topo.pods.values())
    table = nft.compile_table([lp for lp in topo.local(1) if lp.pod.ref not in missing],
                              [p for p in pods if p.ref not in missing], model_namespaces(),
                              policies)
    nft.apply_table(table, netns=topo.node(1))
    return table


def _log_rule_packets(topo: PolicyTopology) -> int:
    out = json.loads(topo.nft(1, "-j", "list", "chain", "inet", nft.TABLE, "check_ingress"))
    for item in out["nftables"]:
        exprs = item.get("rule", {}).get("expr", [])
        if any("log" in e for e in exprs):
            return next(int(e["counter"]["packets"]) for e in exprs if "counter" in e)
    raise AssertionError("no log rule in check_ingress")


def _denied(topo: PolicyTopology, table: nft.CompiledTable) -> int:
    out = json.loads(topo.nft(1, "-j", "list", "counters", "table", "inet", nft.TABLE))
    names = {n for n, c in table.counters.items() if c.verdict == "denied"}
    return sum(int(i["counter"]["packets"]) for i in out["nftables"]
               if "counter" in i and i["counter"]["name"] in names)


def test_denied_packets_are_logged_at_most_at_the_limit(topo):
    deny = [parse_policy(policy("deny", "x", {"podSelector": {}, "policyTypes": ["Ingress"]}))]
    pods = list(topo.pods.values())
    quiet = nft.compile_table(topo.local(1), pods, model_namespaces(), deny)
    nft.apply_table(quiet, netns=topo.node(1))
    assert " log " not in topo.nft(1, "list", "table", "inet", nft.TABLE)
    table = nft.compile_table(topo.local(1), pods, model_namespaces(), deny, log_denied=True)
    nft.apply_table(table, netns=topo.node(1))
    dst = next(p for p in pods if p.namespace == "x" and p.node == "node1")
    src = next(p for p in pods if p.node == "node1" and p.ref != dst.ref)
    sock = _in_ns(topo.pod_ns[src.ref], socket.AF_INET, socket.SOCK_DGRAM)
    start = time.monotonic()
    try:
        for i in range(300):  # each is new to conntrack: a dropped packet is never confirmed
            sock.sendto(b"denied %d" % i, (str(dst.ip), 80))
    finally:
        sock.close()
    logged, denied = _log_rule_packets(topo), _denied(topo, table)
    elapsed = time.monotonic() - start
    assert denied >= 300
    # the token bucket: a burst of 20, then 10 per second
    assert nft.LOG_BURST // 2 <= logged <= nft.LOG_BURST + 10 * elapsed + 2, (logged, elapsed)
