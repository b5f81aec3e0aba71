"""The policy agent with dual-stack pods, without etcd or nft: their records are judged
against the leases' IPv6 halves, they are local by both subnets, an ADD puts the pod's
IPv6 address into the table in the same transaction, and IPv6 flows a change denies are
cut (the node's IPv6 gateway never)."""

from __future__ import annotations

import threading
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
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

SUBNET, OTHER = IPv4Network("10.244.1.0/24"), IPv4Network("10.244.2.0/24")
SUBNET6, OTHER6 = IPv6Network("fd00:10:244:1::/64"), IPv6Network("fd00:10:244:2::/64")
RESULT = {"cniVersion": "1.0.0", "ips": [{"address": "fd00:10:244:1::9/64"},
                                         {"address": "10.244.1.9/24"}]}


def _pod(name: str, ip: str, ip6: str, node: str = "n1", ns: str = "x") -> KV:
    record = PodRecord(ns, name, (IPv4Address(ip), IPv6Address(ip6)), node, f"c-{name}",
                       "eth0", {"pod": Label(name, SOURCE_CNI)})
    return KV(keys.pod_key(PREFIX, ns, name), encode_pod(record), 1)


@pytest.fixture
def agent(tmp_path: Path) -> tuple[PolicyAgent, Applied]:
    applied = Applied()
    store = cast(ObjectStore, SimpleNamespace(prefix=PREFIX))
    rules = PodRules(lease_subnets=frozenset({SUBNET, OTHER}),
                     lease_ipv6={SUBNET: SUBNET6, OTHER: OTHER6})
    a = PolicyAgent(store, "n1", lambda: SUBNET, lambda _nodes: rules,
                    str(tmp_path / "policy-enforced"), CollectorRegistry(), threading.Event(),
                    attachments=lambda s, s6: attachments_of_records(a, "n1")(s, s6),
                    apply=applied, bridge_problem=lambda _families: None,
                    update=applied.update,
                    own_ipv6_subnet=lambda: SUBNET6)
    return a, applied


def test_a_dual_stack_pod_is_selected_by_both_addresses(agent) -> None:
    a, applied = agent
    _listed(a, [_policy(DENY)], [_pod("a", "10.244.1.2", "fd00:10:244:1::2"),
                                 _pod("b", "10.244.2.2", "fd00:10:244:2::2", "n2")])
    table = a.sync()
    assert "10.244.1.2" in table.text and "fd00:10:244:1::2" in table.text
    assert "fd00:10:244:2::2" not in table.text  # not local, and no rule names it
    assert "ip6 daddr @" in table.text


def test_an_add_puts_the_pods_ipv6_address_in_the_same_transaction(agent) -> None:
    a, applied = agent
    _listed(a, [_policy(DENY)], [_pod("a", "10.244.1.2", "fd00:10:244:1::2")])
    a.sync()
    handlers = policyagent.enforcing_handlers(
        {"ADD": lambda req: RESULT, "DEL": lambda req: None}, lambda: a)
    assert handlers["ADD"](_request()) == RESULT
    assert len(applied.scripts) == 1  # one transaction: both families' elements
    assert "10.244.1.9" in applied.scripts[0] and "fd00:10:244:1::9" in applied.scripts[0]
    pod = a._pending["c-new"].pod
    assert pod.ips == (IPv4Address("10.244.1.9"), IPv6Address("fd00:10:244:1::9"))
    a.sync()  # the compile the kernel already holds: nothing loaded
    assert len(applied.tables) == 1
    assert a.loaded is not None and "fd00:10:244:1::9" in a.loaded.elements["p0_sel6"]


def test_ipv6_flows_a_change_denies_are_cut_but_not_the_gateways(agent, monkeypatch) -> None:
    from overlay.policy import conntrack
    from overlay.policy.conntrack import Flow

    a, _ = agent
    allow_b = {**DENY, "metadata": {"name": "from-b", "namespace": "x"},
               "spec": {"podSelector": {}, "ingress": [
                   {"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}}
    _listed(a, [_policy(DENY), _policy(allow_b)],
            [_pod("a", "10.244.1.2", "fd00:10:244:1::2"),
             _pod("b", "10.244.2.2", "fd00:10:244:2::2", "n2"),
             _pod("c", "10.244.2.3", "fd00:10:244:2::3", "n2")])
    a.sync()
    ip = IPv6Address
    flows = [Flow("TCP", ip("fd00:10:244:2::2"), ip("fd00:10:244:1::2"), 5000, 80),  # b: ok
             Flow("TCP", ip("fd00:10:244:2::3"), ip("fd00:10:244:1::2"), 5001, 80),  # c: no
             Flow("TCP", ip("fd00:10:244:1::1"), ip("fd00:10:244:1::2"), 5002, 80)]  # gw
    deleted: list[Flow] = []

    def delete(fs: list[Flow]) -> int:
        deleted.extend(fs)
        return len(fs)

    monkeypatch.setattr(conntrack, "list_flows", lambda _versions, _only=None: flows)
    monkeypatch.setattr(conntrack, "delete_flows", delete)
    assert a.cut_denied() == 1 and deleted == [flows[1]]
