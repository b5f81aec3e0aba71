"""NetworkPolicy on an IPv6-only lab (``EnableIPv4: false``): the node's lease is its IPv6
subnet, so its pods are local by that subnet alone and every set, source check and
verdict is IPv6.

Pods x/a, x/b, y/a on node1 and x/c, y/b on node2 (labels pod=a|b|c), each with one IPv6
address and no IPv4. The cases and their helpers are test_policy_lab_v6's (same pods, same
probes of every ordered pair over TCP 80 and UDP 81, in parallel with bounded timeouts,
compared whole with the oracle ``overlay.policy.semantics.decide``); what is IPv6-only's
own is checked here: the table holds no IPv4 set, a pod's source chain drops all IPv4,
the marker beside subnet.env, ``/readyz`` with ``bridge-nf-call-ip6tables``, ``trace``
over ``overlay-v6.1``, and diagnose's drift check. Run under the integration lock:

    flock /tmp/overlay-integration.lock env OVERLAY_VENV=... ./cmd/run-tests \\
        tests/integration/test_policy_lab_v6only.py
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator

import pytest

from overlay.lab import system as sysx
from overlay.lab.lab import Lab
from overlay.netlink.pod import host_veth_name
from overlay.subnetenv import policy_marker_path

from .support.labfixture import keep_logs, running_lab
from .test_policy_lab import (
    _apply,
    _delete,
    _nft,
    _policy_check,
    _source_chains,
    _trace,
    _until,
)
from .test_policy_lab_v6 import (
    DENY_X,
    ENFORCED,
    PODS,
    PROBE_TIMEOUT,
    _block_policy,
    _counted_and_no_drift,
    _enforced_as_the_oracle_says,
    _flush_neighbours,
    _pod_sel,
    _policy,
    _probe,
    _spoofed_source_dropped,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NODES = ("node1", "node2")


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    failed_before = request.session.testsfailed
    with running_lab(nodes=2, pods_per_node=0, families="ipv6") as lab:
        try:
            for ns, name, node in PODS:
                pod = lab.add_pod(name, node, ns, {"pod": name})
                assert pod.ip6 and pod.address(4) is None, pod
            yield lab
        except BaseException:
            print("lab logs kept in", keep_logs(lab))
            raise
        if request.session.testsfailed > failed_before:
            warnings.warn(f"IPv6-only policy lab failed: its logs are kept in "
                          f"{keep_logs(lab)}", stacklevel=1)


def _table(lab: Lab, node: str) -> dict:
    out = json.loads(_nft(lab, node, "-j", "list", "table", "inet", "overlay-policy"))
    return {k: [i[k] for i in out["nftables"] if k in i] for k in ("set", "chain", "rule")}


def test_without_policy_every_pair_passes_and_nothing_is_filtered(lab: Lab) -> None:
    _flush_neighbours(lab)
    got = _probe(lab)
    assert all(got.values()), [k for k, ok in got.items() if not ok]
    for node in NODES:
        assert lab.ready(node)
        assert not os.path.exists(policy_marker_path(lab.spec.node_file(node, "subnet.env")))
        assert _policy_check(lab, node)[1]["status"] == "pass"


def _isolated_pods_and_source_chains(lab: Lab) -> None:
    """While x/deny is in force: node1's isolated set is IPv6 and holds x/a and x/b, no
    IPv4 set exists, each local pod's source chain drops IPv4 and allows only its own
    IPv6, link-local and ::; the marker is beside subnet.env; diagnose finds no drift."""
    t = _table(lab, "node1")
    assert {s["type"] for s in t["set"]} <= {"ipv6_addr", "inet_proto . inet_service"}, t
    forward = _nft(lab, "node1", "list", "chain", "inet", "overlay-policy", "forward")
    jumps = [line.split() for line in forward.splitlines() if "jump check_" in line]
    assert [w[:2] for w in jumps] == [["ip6", "daddr"]], forward  # ingress, IPv6 only
    isolated = next(s for s in t["set"] if s["name"] == jumps[0][2][1:])
    assert sorted(isolated["elem"]) == sorted(str(lab.find_pod(r).ip6) for r in ("x/a", "x/b"))
    chains = {c["name"] for c in t["chain"]}
    for ref in ("x/a", "x/b", "y/a"):
        pod = lab.find_pod(ref)
        chain = f"src_{host_veth_name(pod.container_id, 'eth0')}"
        assert chain in chains, chains
        rules = _nft(lab, "node1", "list", "chain", "inet", "overlay-policy", chain)
        assert "meta protocol ip counter name" in rules, rules  # every IPv4 packet
        assert f"ip6 saddr != {{ ::, {pod.ip6}, fe80::/64 }}" in rules, rules
    for node in NODES:
        marker = policy_marker_path(lab.spec.node_file(node, "subnet.env"))
        assert os.path.exists(marker), marker
        assert lab.ready(node)
        check = _policy_check(lab, node)[1]
        assert check["status"] == "pass" and "as compiled" in check["found"], check


def test_default_deny_ingress(lab: Lab) -> None:
    got = _enforced_as_the_oracle_says(lab, [DENY_X], ["x/deny"],
                                       while_in_force=_isolated_pods_and_source_chains)
    assert not got[("y/a", "x/a", 80, "tcp")] and got[("x/a", "y/a", 80, "tcp")]
    assert not got[("y/b", "x/b", 81, "udp")]


def _traced(lab: Lab) -> None:
    """trace over overlay-v6.1 from the source's node: every hop ok, and the verdict the
    probes showed, naming the policies."""
    code, got = _trace(lab, "node1", "x/b", "x/a", "--port", "80")
    assert code == 0 and got["ok"] and ":" in got["src"], got
    assert got["policy"]["ingress"]["allowed_by"] == ["x/a-from-b"], got
    code, got = _trace(lab, "node2", "x/c", "x/a", "--port", "80")
    assert code == 1 and got["ok"] and got["policy"]["verdict"] == "denied", got
    assert got["policy"]["ingress"]["isolating"] == ["x/a-from-b", "x/deny"], got
    hops = {h["name"]: h["status"] for h in got["hops"]}
    assert hops and set(hops.values()) <= {"ok"}, got


def test_a_pod_selector_allows_its_pair(lab: Lab) -> None:
    allow = _policy("a-from-b", "x", {"podSelector": _pod_sel("a"), "ingress": [
        {"from": [{"podSelector": _pod_sel("b")}], "ports": [{"port": 80}]}]})

    def in_force(lab: Lab) -> None:
        _counted_and_no_drift(lab)
        _traced(lab)
    got = _enforced_as_the_oracle_says(lab, [DENY_X, allow], ["x/a-from-b", "x/deny"],
                                       while_in_force=in_force)
    assert got[("x/b", "x/a", 80, "tcp")] and not got[("x/b", "x/a", 81, "udp")]


def test_a_namespace_selector(lab: Lab) -> None:
    from_y = _policy("from-y", "x", {"podSelector": _pod_sel("a"), "ingress": [
        {"from": [{"namespaceSelector": {"matchLabels":
                                         {"kubernetes.io/metadata.name": "y"}}}]}]})
    got = _enforced_as_the_oracle_says(lab, [from_y], ["x/from-y"])
    assert got[("y/b", "x/a", 80, "tcp")] and not got[("x/c", "x/a", 80, "tcp")]


def test_an_ipv6_ip_block_with_except(lab: Lab) -> None:
    got = _enforced_as_the_oracle_says(lab, [_block_policy(lab)], ["x/cidr6"])
    assert got[("x/c", "x/a", 80, "tcp")] and not got[("y/b", "x/a", 80, "tcp")]


def test_egress_deny(lab: Lab) -> None:
    no_egress = _policy("no-egress", "y", {"podSelector": {}, "policyTypes": ["Egress"]})
    got = _enforced_as_the_oracle_says(lab, [no_egress], ["y/no-egress"])
    assert not got[("y/a", "x/a", 80, "tcp")] and got[("x/a", "y/a", 80, "tcp")]


def test_a_spoofed_ipv6_source_is_dropped(lab: Lab) -> None:
    _spoofed_source_dropped(lab)


def test_a_pod_added_under_a_policy_is_filtered_from_its_first_packet(lab: Lab) -> None:
    """The ADD puts the IPv6-only pod into node1's table (its IPv6 elements and its veth's
    source chain) before it returns."""
    _apply(lab, DENY_X)
    try:
        assert _until(lambda: not lab.probe("x/b", "x/a", 80, "tcp", PROBE_TIMEOUT, 6).ok,
                      ENFORCED) is not None
        pod = lab.add_pod("d", "node1", "x", {"pod": "d"})
        assert pod.ip6 and pod.address(4) is None, pod
        assert f"src_{host_veth_name(pod.container_id, 'eth0')}" in _source_chains(lab,
                                                                                   "node1")
        assert not lab.probe("x/b", "x/d", 80, "tcp", PROBE_TIMEOUT, 6).ok
        assert not lab.probe("y/b", "x/d", 81, "udp", PROBE_TIMEOUT, 6).ok
        # its own address passes its source check, and its egress is not isolated
        assert lab.probe("x/d", "y/a", 80, "tcp", PROBE_TIMEOUT, 6).ok
    finally:
        _delete(lab, "x/deny")
    try:  # it answers once the policy is gone: the drops were the policy's
        assert _until(lambda: lab.probe("x/b", "x/d", 80, "tcp", PROBE_TIMEOUT, 6).ok,
                      ENFORCED) is not None
    finally:
        lab.del_pod("x/d")


def test_ip6tables_bridge_filtering_off_makes_a_selecting_node_not_ready(lab: Lab) -> None:
    """IPv6 pods' same-node traffic reaches the forward hook only while
    bridge-nf-call-ip6tables is 1 (bridge-nf-call-iptables says nothing about IPv6)."""
    sysctl = "net.bridge.bridge-nf-call-ip6tables"
    _apply(lab, DENY_X)
    try:
        assert _until(lambda: not lab.probe("x/b", "x/a", 80, "tcp", PROBE_TIMEOUT, 6).ok,
                      ENFORCED) is not None
        assert lab.ready("node1")
        sysx.sysctl(lab.spec.node_ns("node1"), sysctl, "0")
        try:
            assert _until(lambda: not lab.ready("node1"), 15.0) is not None
            assert lab.ready("node2")
        finally:
            sysx.sysctl(lab.spec.node_ns("node1"), sysctl, "1")
        assert _until(lambda: lab.ready("node1"), 15.0) is not None
    finally:
        _delete(lab, "x/deny")
    assert _until(lambda: all(_probe(lab).values()), ENFORCED) is not None
