"""The policy agent on an IPv6-only node, without etcd or nft: the node's own subnet (its
lease) is IPv6 and there is no second one, so its pods are local by that subnet, the
table is IPv6 alone, an ADD's one IPv6 address is admitted, and readiness reads IPv6's
own br_netfilter sysctl (``bridge-nf-call-ip6tables``), not IPv4's."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest
from prometheus_client import CollectorRegistry

from overlay.cluster import keys
from overlay.cluster.pods import SOURCE_CNI, Label, PodRecord, PodRules, encode_pod
from overlay.cluster.store import KV, ObjectStore
from overlay.daemon import policyagent
from overlay.daemon.policyagent import PolicyAgent
from tests.fakes import attachments_of_records

from .test_policyagent import DENY, PREFIX, Applied, _listed, _policy, _request

SUBNET6, OTHER6 = IPv6Network("fd00:10:244:1::/64"), IPv6Network("fd00:10:244:2::/64")
RESULT = {"cniVersion": "1.0.0", "ips": [{"address": "fd00:10:244:1::9/64"}]}


def _pod(name: str, ip6: str, node: str = "n1", ns: str = "x") -> KV:
    record = PodRecord(ns, name, (IPv6Address(ip6),), node, f"c-{name}", "eth0",
                       {"pod": Label(name, SOURCE_CNI)})
    return KV(keys.pod_key(PREFIX, ns, name), encode_pod(record), 1)


class Bridge:
    """The agent's br_netfilter check: records the families it was asked about."""

    def __init__(self) -> None:
        self.asked: list[frozenset[int]] = []
        self.off: set[int] = set()

    def __call__(self, families: Iterable[int]) -> str | None:
        got = frozenset(families)
        self.asked.append(got)
        return "bridge-nf-call-ip6tables is 0" if got & self.off else None


@pytest.fixture
def agent(tmp_path: Path) -> tuple[PolicyAgent, Applied, Bridge]:
    applied, bridge = Applied(), Bridge()
    store = cast(ObjectStore, SimpleNamespace(prefix=PREFIX))
    rules = PodRules(lease_subnets=frozenset({SUBNET6, OTHER6}))
    # make_policy_agent's wiring on an IPv6-only node: own_subnet() is the IPv6 lease's,
    # own_ipv6_subnet() None
    a = PolicyAgent(store, "n1", lambda: SUBNET6, lambda _nodes: rules,
                    str(tmp_path / "policy-enforced"), CollectorRegistry(), threading.Event(),
                    attachments=lambda s, s6: attachments_of_records(a, "n1")(s, s6),
                    apply=applied, bridge_problem=bridge, update=applied.update)
    return a, applied, bridge


def test_the_nodes_ipv6_pods_are_local_and_the_table_is_ipv6_alone(agent) -> None:
    a, _, _ = agent
    _listed(a, [_policy(DENY)], [_pod("a", "fd00:10:244:1::2"),
                                 _pod("b", "fd00:10:244:2::2", "n2")])
    table = a.sync()
    assert [lp.pod.name for lp in a.inputs().local] == ["a"]
    assert "ip6 daddr @" in table.text and "fd00:10:244:1::2" in table.text
    assert "ip daddr @" not in table.text and "ipv4_addr" not in table.text
    assert "fd00:10:244:2::2" not in table.text  # node2's: not local, named by no rule
    # its source chain: no IPv4 at all; IPv6 from its own address, link-local and ::
    assert "meta protocol ip counter name" in table.text
    assert "ip6 saddr != { ::, fd00:10:244:1::2, fe80::/64 }" in table.text
    assert a.selecting and Path(a.marker).exists()


def test_readiness_reads_the_ipv6_bridge_sysctl_for_ipv6_pods(agent) -> None:
    a, _, bridge = agent
    _listed(a, [_policy(DENY)], [_pod("a", "fd00:10:244:1::2")])
    a.sync()
    assert bridge.asked[-1] == {6} and a.problems() == []
    bridge.off = {6}
    a.sync()
    assert a.problems() == ["bridge-nf-call-ip6tables is 0"]


def test_an_add_admits_the_pods_one_ipv6_address(agent) -> None:
    a, applied, _ = agent
    _listed(a, [_policy(DENY)], [_pod("a", "fd00:10:244:1::2")])
    a.sync()
    handlers = policyagent.enforcing_handlers(
        {"ADD": lambda req: RESULT, "DEL": lambda req: None}, lambda: a)
    assert handlers["ADD"](_request()) == RESULT
    assert len(applied.scripts) == 1 and "fd00:10:244:1::9" in applied.scripts[0]
    assert "meta protocol ip counter name" in applied.scripts[0]  # its veth drops IPv4
    assert a._pending["c-new"].pod.ips == (IPv6Address("fd00:10:244:1::9"),)


def test_bridge_problem_for_reads_each_familys_own_sysctl(tmp_path: Path) -> None:
    v4, v6 = tmp_path / "bridge-nf-call-iptables", tmp_path / "bridge-nf-call-ip6tables"
    paths = {4: str(v4), 6: str(v6)}
    v4.write_text("1\n")
    v6.write_text("0\n")
    assert policyagent.bridge_problem_for({4}, paths) is None
    assert "ip6tables is 0" in (policyagent.bridge_problem_for({6}, paths) or "")
    assert "ip6tables is 0" in (policyagent.bridge_problem_for({4, 6}, paths) or "")
    v6.write_text("1\n")
    assert policyagent.bridge_problem_for({4, 6}, paths) is None
    assert policyagent.bridge_problem_for((), paths) is None
    assert policyagent.BRIDGE_SYSCTLS[6].endswith("bridge-nf-call-ip6tables")
