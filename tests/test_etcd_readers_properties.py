"""Property-based tests of the readers of the cluster's objects in etcd.

Any node can write etcd. Whatever value sits under ``policies/``, ``namespaces/``,
``pods/`` or ``nodes/``, each reader returns an object or its kind's one rejection and
never raises anything else (which would stop a watch or a compile): checked on valid
objects with one to three of their fields replaced, deleted or added, and on arbitrary
JSON. Leases have their own properties in tests/test_lease_properties.py.
"""

from __future__ import annotations

import contextlib
import json
import os
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from hypothesis import HealthCheck, given, settings, strategies as st

from overlay.cluster import nodes
from overlay.cluster.mesh import BrokenPeer, MeshSummary
from overlay.cluster.pods import Label, PodRecord, PodRules, encode_pod, judge_pod
from overlay.cluster.store import KV
from overlay.policy.model import PolicyError
from overlay.policy.objects import parse_namespace_kv, parse_policy_kv

P = "/overlay/network"
# READER_EXAMPLES=3000 for a longer search
FAST = settings(max_examples=int(os.environ.get("READER_EXAMPLES", "150")), deadline=None,
                database=None, suppress_health_check=[HealthCheck.too_slow])

NOW = datetime(2026, 12, 7, tzinfo=UTC)
POLICY: dict[str, Any] = {
    "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
    "metadata": {"name": "web", "namespace": "x", "labels": {"a": "b"}},
    "spec": {"podSelector": {"matchLabels": {"app": "web"}, "matchExpressions": [
        {"key": "tier", "operator": "In", "values": ["a"]}]},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [{"from": [{"podSelector": {}, "namespaceSelector": {"matchLabels": {
            "ns": "y"}}}, {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
            "ports": [{"protocol": "TCP", "port": 80, "endPort": 90}, {"port": "http"}]}],
        "egress": [{"to": [{"namespaceSelector": {}}], "ports": [{"protocol": "UDP",
                                                                  "port": 53}]}]}}
NAMESPACE = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x",
                                                                   "labels": {"team": "a"}}}
POD = json.loads(encode_pod(PodRecord("x", "web", (IPv4Address("10.244.1.5"),), "node1", "c1",
                                      "eth0", {"app": Label("web", "cni")})))
NODE = nodes.NodeRecord(
    "node1", IPv4Address("192.168.1.11"), IPv4Network("10.244.1.0/24"), "0e:00:00:00:00:01",
    "1.0", NOW, True, "", 10, 10.0,
    MeshSummary(3, 2, (BrokenPeer(IPv4Network("10.244.3.0/24"), IPv4Address("192.168.1.13"),
                                  "timeout", NOW, "d"),), NOW)).to_dict()
RULES = PodRules(lease_subnets=frozenset({IPv4Network("10.244.1.0/24")}))

scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats()
           | st.sampled_from(["", "x", "TCP", "In", "10.0.0.0/8", "::/0", "a" * 300, "\x00",
                              "web", "node1", "2026-12-07T00:00:00Z"]) | st.text(max_size=8))
values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=3)
                      | st.dictionaries(st.text(max_size=6), kids, max_size=3), max_leaves=8)


def _paths(obj: Any, path: tuple = ()) -> list[tuple]:
    out = [path]
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(
        obj, list) else ()
    for k, v in items:
        out += _paths(v, (*path, k))
    return out


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> bytes:
    obj = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(obj)[1:]))
        parent = obj
        for k in path[:-1]:
            parent = parent[k]
        how = draw(st.sampled_from(["replace", "delete", "add"]))
        if how == "replace":
            parent[path[-1]] = draw(values)
        elif how == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.sampled_from(["extra", "port", "cidr", "name"]))] = draw(values)
        else:
            parent.append(draw(values))
        if not _paths(obj)[1:]:
            break
    return json.dumps(obj).encode()


def _raw(draw_json: Any) -> bytes:
    return json.dumps(draw_json).encode()


@FAST
@given(st.one_of(mutated(POLICY), values.map(_raw)))
def test_a_policy_value_is_a_policy_or_one_policy_error(raw: bytes) -> None:
    with contextlib.suppress(PolicyError):
        parse_policy_kv(P, KV(f"{P}/policies/x/web", raw, 1))


@FAST
@given(st.one_of(mutated(NAMESPACE), values.map(_raw)))
def test_a_namespace_value_is_a_namespace_or_one_policy_error(raw: bytes) -> None:
    with contextlib.suppress(PolicyError):
        parse_namespace_kv(P, KV(f"{P}/namespaces/x", raw, 1))


@FAST
@given(st.one_of(mutated(POD), values.map(_raw)))
def test_a_pod_value_is_judged_never_raised(raw: bytes) -> None:
    judge_pod(KV(f"{P}/pods/x/web", raw, 1), f"{P}/pods/", RULES)


@FAST
@given(st.one_of(mutated(NODE), values.map(_raw)))
def test_a_node_value_is_judged_never_raised(raw: bytes) -> None:
    nodes.judge_node(f"{P}/nodes/node1", raw, P)
