"""NetworkPolicy for IPv6 pods on a dual-stack lab, probed end to end over IPv6.

Pods x/a, x/b, y/a on node1 and x/c, y/b on node2 (labels pod=a|b|c), each answering TCP
and UDP on 80 and 81 at both its addresses. Each case applies its policies with
``overlayctl policy apply`` and probes every ordered pair of these pods over IPv6 (TCP 80
and UDP 81, in parallel, bounded timeouts), comparing the whole truth table with the
oracle (``overlay.policy.semantics.decide`` for IPv6). Before a case's probes the pods'
neighbour caches are flushed, so allowed pairs pass only if NDP still works under the
policy. The helpers for manifests and waiting are test_policy_lab's. Run under the
integration lock:

    flock /tmp/overlay-integration.lock env OVERLAY_VENV=... ./cmd/run-tests \\
        tests/integration/test_policy_lab_v6.py
"""

from __future__ import annotations

import json
import socket
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from ipaddress import ip_address
from typing import Any

import pytest

from overlay.lab import system as sysx
from overlay.lab.lab import Lab
from overlay.policy.model import parse_policy
from overlay.policy.semantics import Pod, decide

from .support.labfixture import keep_logs, running_lab
from .test_policy_lab import _apply, _delete, _metrics, _packets, _policy_check, _until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PODS = (("x", "a", "node1"), ("x", "b", "node1"), ("y", "a", "node1"),
        ("x", "c", "node2"), ("y", "b", "node2"))
REFS = [f"{ns}/{name}" for ns, name, _ in PODS]
PROBES = [(s, d, port, proto) for s in REFS for d in REFS if s != d
          for port, proto in ((80, "tcp"), (81, "udp"))]
PROBE_TIMEOUT = 0.4
ENFORCED = 10.0  # seconds for a change to reach both nodes' tables


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    failed_before = request.session.testsfailed
    with running_lab(nodes=2, pods_per_node=0, families="dual") as lab:
        try:
            for ns, name, node in PODS:
                lab.add_pod(name, node, ns, {"pod": name})
            yield lab
        except BaseException:
            print("lab logs kept in", keep_logs(lab))
            raise
        if request.session.testsfailed > failed_before:
            warnings.warn(f"policy lab failed: its logs are kept in {keep_logs(lab)}",
                          stacklevel=1)


def _pods(lab: Lab) -> dict[str, Pod]:
    """The lab's pods as the oracle's (IPv4 first, if any: test_policy_lab_v6only's have
    none)."""
    out = {}
    for ref in REFS:
        p = lab.find_pod(ref)
        assert p.ip6 is not None, f"{ref} has no IPv6 address"
        ips = tuple(ip_address(a) for a in (p.address(4), p.ip6) if a is not None)
        out[ref] = Pod(p.namespace, p.name, ips, dict(p.labels), (), p.node)
    return out


def _flush_neighbours(lab: Lab) -> None:
    for ref in REFS:
        sysx.ip("-6", "neigh", "flush", "dev", "eth0",
                ns=lab.spec.pod_ns(lab.find_pod(ref).key))


def _probe(lab: Lab, family: int = 6) -> dict[tuple, bool]:
    def one(p: tuple) -> bool:
        return lab.probe(p[0], p[1], p[2], p[3], timeout=PROBE_TIMEOUT, family=family).ok
    with ThreadPoolExecutor(len(PROBES)) as pool:
        return dict(zip(PROBES, pool.map(one, PROBES), strict=True))


def _oracle(lab: Lab, manifests: Sequence[str], family: int = 6) -> dict[tuple, bool]:
    import yaml

    policies = [parse_policy(yaml.safe_load(m)) for m in manifests]
    pods = _pods(lab)
    return {(s, d, port, proto): decide(pods[s], pods[d], port, proto.upper(), {},
                                        policies, family).allowed
            for s, d, port, proto in PROBES}


def _diff(want: dict, got: dict) -> list[str]:
    return [f"{s}->{d} {proto}/{port}: {'passed' if got[k] else 'dropped'}, oracle says "
            f"{'allowed' if want[k] else 'denied'}"
            for k in PROBES if want[k] != got[k] for s, d, port, proto in [k]]


def _enforced_as_the_oracle_says(lab: Lab, manifests: Sequence[str], refs: Sequence[str],
                                 family: int = 6,
                                 while_in_force: Callable[[Lab], None] | None = None
                                 ) -> dict[tuple, bool]:
    """Apply, wait until the probes agree with the oracle, then probe once more with
    fresh neighbour caches and compare the whole table (and run ``while_in_force``); the
    policies are deleted after."""
    want = _oracle(lab, manifests, family)
    for m in manifests:
        _apply(lab, m)
    try:
        seen: list[dict] = []

        def agrees() -> bool:
            seen.append(_probe(lab, family))
            return seen[-1] == want

        assert _until(agrees, ENFORCED) is not None, _diff(want, seen[-1])
        _flush_neighbours(lab)
        got = _probe(lab, family)
        assert got == want, _diff(want, got)
        if while_in_force is not None:
            while_in_force(lab)
        return got
    finally:
        _delete(lab, *refs)
        assert _until(lambda: all(_probe(lab, family).values()), ENFORCED) is not None


def _policy(name: str, ns: str, spec: dict[str, Any]) -> str:
    return json.dumps({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                       "metadata": {"name": name, "namespace": ns}, "spec": spec})


def _pod_sel(name: str) -> dict[str, Any]:
    return {"matchLabels": {"pod": name}}


DENY_X = _policy("deny", "x", {"podSelector": {}})


def test_without_policy_every_pair_passes_over_ipv6(lab: Lab) -> None:
    _flush_neighbours(lab)
    got = _probe(lab)
    assert all(got.values()), [k for k, ok in got.items() if not ok]


def test_default_deny_ingress_over_ipv6(lab: Lab) -> None:
    got = _enforced_as_the_oracle_says(lab, [DENY_X], ["x/deny"])
    assert not got[("y/a", "x/a", 80, "tcp")] and got[("x/a", "y/a", 80, "tcp")]


def test_a_pod_selector_allows_its_pair_over_ipv6(lab: Lab) -> None:
    allow = _policy("a-from-b", "x", {"podSelector": _pod_sel("a"), "ingress": [
        {"from": [{"podSelector": _pod_sel("b")}], "ports": [{"port": 80}]}]})
    got = _enforced_as_the_oracle_says(lab, [DENY_X, allow], ["x/a-from-b", "x/deny"],
                                       while_in_force=_counted_and_no_drift)
    assert got[("x/b", "x/a", 80, "tcp")] and not got[("x/b", "x/a", 81, "udp")]


def _counted_and_no_drift(lab: Lab) -> None:
    """IPv6 connections move the policies' counters on /metrics, and diagnose finds each
    node's table (IPv6 sets, source checks) as compiled."""
    before = _metrics(lab, "node1")
    for _ in range(3):
        assert lab.probe("x/b", "x/a", 80, "tcp", PROBE_TIMEOUT, 6).ok
        assert not lab.probe("y/a", "x/a", 80, "tcp", PROBE_TIMEOUT, 6).ok
    after = _metrics(lab, "node1")
    for policy, verdict in (("x/a-from-b", "allowed"), ("x/deny", "denied")):
        assert _packets(after, policy, verdict) - _packets(before, policy, verdict) >= 3
    for node in ("node1", "node2"):
        check = _policy_check(lab, node)[1]
        assert check["status"] == "pass" and "as compiled" in check["found"], check


def test_a_namespace_selector_over_ipv6(lab: Lab) -> None:
    from_y = _policy("from-y", "x", {"podSelector": _pod_sel("a"), "ingress": [
        {"from": [{"namespaceSelector": {"matchLabels":
                                         {"kubernetes.io/metadata.name": "y"}}}]}]})
    got = _enforced_as_the_oracle_says(lab, [from_y], ["x/from-y"])
    assert got[("y/b", "x/a", 80, "tcp")] and not got[("x/c", "x/a", 80, "tcp")]


def _block_policy(lab: Lab) -> str:
    """x/a accepts node2's IPv6 subnet except y/b's address."""
    subnet = lab.node_subnet6("node2")
    assert subnet is not None
    return _policy("cidr6", "x", {"podSelector": _pod_sel("a"), "ingress": [
        {"from": [{"ipBlock": {"cidr": subnet,
                               "except": [f"{lab.find_pod('y/b').ip6}/128"]}}]}]})


def test_an_ipv6_ip_block_with_except(lab: Lab) -> None:
    got = _enforced_as_the_oracle_says(lab, [_block_policy(lab)], ["x/cidr6"])
    assert got[("x/c", "x/a", 80, "tcp")] and not got[("y/b", "x/a", 80, "tcp")]


def test_an_ipv6_ip_block_never_matches_ipv4(lab: Lab) -> None:
    got = _enforced_as_the_oracle_says(lab, [_block_policy(lab)], ["x/cidr6"], family=4)
    assert not any(ok for (s, d, _, _), ok in got.items() if d == "x/a")


def test_egress_deny_over_ipv6(lab: Lab) -> None:
    no_egress = _policy("no-egress", "y", {"podSelector": {}, "policyTypes": ["Egress"]})
    got = _enforced_as_the_oracle_says(lab, [no_egress], ["y/no-egress"])
    assert not got[("y/a", "x/a", 80, "tcp")] and got[("x/a", "y/a", 80, "tcp")]


def _spoofed(lab: Lab, node: str) -> int:
    out = sysx.run(sysx.in_netns(lab.spec.node_ns(node), [
        "nft", "-j", "list", "counter", "inet", "overlay-policy", "spoofed"])).stdout
    return next(int(c["counter"]["packets"]) for c in json.loads(out)["nftables"]
                if "counter" in c)


def test_a_spoofed_ipv6_source_is_dropped(lab: Lab) -> None:
    _spoofed_source_dropped(lab)


def _send_from_a_borrowed_ipv6(lab: Lab, ns: str, borrowed: str | None,
                               dst: str | None) -> None:
    """The pod of netns ``ns`` (on node1) sends five datagrams to ``dst`` from another
    pod's IPv6 address ``borrowed``: node1's spoofed counter must count all five."""
    assert borrowed is not None and dst is not None
    sysx.ip("-6", "addr", "add", f"{borrowed}/128", "dev", "eth0", "nodad", ns=ns)
    try:
        before = _spoofed(lab, "node1")
        with sysx.netns_socket(ns, socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind((borrowed, 0))
            for _ in range(5):
                s.sendto(b"spoofed\n", (dst, 81))
        assert _until(lambda: _spoofed(lab, "node1") - before >= 5, 2.0) is not None
    finally:
        sysx.ip("-6", "addr", "del", f"{borrowed}/128", "dev", "eth0", ns=ns)


def _spoofed_source_dropped(lab: Lab) -> None:
    """x/a accepts only x/b; y/a (same node as x/b) sends from x/b's IPv6 address: only
    the source check can stop it, and its counter counts it."""
    allow = _policy("a-from-b", "x", {"podSelector": _pod_sel("a"), "ingress": [
        {"from": [{"podSelector": _pod_sel("b")}]}]})
    _apply(lab, allow)
    xb, ya, xa = (lab.find_pod(r) for r in ("x/b", "y/a", "x/a"))
    ns = lab.spec.pod_ns(ya.key)
    try:
        assert _until(lambda: not lab.probe("y/a", "x/a", 81, "udp", PROBE_TIMEOUT, 6).ok
                      and lab.probe("x/b", "x/a", 81, "udp", PROBE_TIMEOUT, 6).ok,
                      ENFORCED) is not None
        _send_from_a_borrowed_ipv6(lab, ns, xb.ip6, xa.ip6)
        # y/a's own address and link-local NDP still work: it reaches an unpolicied pod
        assert lab.probe("y/a", "y/b", 80, "tcp", PROBE_TIMEOUT, 6).ok
    finally:
        _delete(lab, "x/a-from-b")


def _element_admits(lab: Lab, node: str) -> float:
    want = 'overlay_policy_admits_total{path="elements"} '
    return sum(float(line[len(want):]) for line in _metrics(lab, node).splitlines()
               if line.startswith(want))


def test_a_pod_added_under_a_policy_checks_its_ipv6_sources(lab: Lab) -> None:
    """x/d joins node1 while x's default deny is in force: its ADD puts it into the loaded
    table by elements (selected and isolated sets, both families) and creates its veth's
    chain in the same nfnetlink batch, IPv6 set included. Its IPv6 works where the
    policy allows (NDP through the source check), is denied where it does not, and a
    source it does not own is dropped and counted."""
    from overlay.netlink.pod import host_veth_name
    from overlay.policy import nft

    _apply(lab, DENY_X)
    try:
        assert _until(lambda: not lab.probe("y/a", "x/a", 81, "udp", PROBE_TIMEOUT, 6).ok,
                      ENFORCED) is not None
        before = _element_admits(lab, "node1")
        pod = lab.add_pod("d", "node1", "x", {"pod": "d"})  # returns once its ADD did
        try:
            assert _element_admits(lab, "node1") == before + 1
            veth = host_veth_name(pod.container_id, "eth0")
            listed = [line.strip() for line in sysx.run(sysx.in_netns(
                lab.spec.node_ns("node1"), ["nft", "list", "chain", "inet", nft.TABLE,
                                            f"src_{veth}"])).stdout.splitlines()]
            want = nft.source_chain(veth, [ip_address(a) for a in
                                           (pod.address(4), pod.ip6) if a is not None])
            assert want.rules[1] in listed and want.rules[0] in listed
            d = lab.find_pod("x/d")
            assert lab.probe("x/d", "y/a", 80, "tcp", PROBE_TIMEOUT, 6).ok
            assert not lab.probe("y/a", "x/d", 81, "udp", PROBE_TIMEOUT, 6).ok
            xb, ya = lab.find_pod("x/b"), lab.find_pod("y/a")
            ns = lab.spec.pod_ns(d.key)
            _send_from_a_borrowed_ipv6(lab, ns, xb.ip6, ya.ip6)
        finally:
            lab.del_pod("x/d")
    finally:
        _delete(lab, "x/deny")
