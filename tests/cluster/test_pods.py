"""The pod registry's values: codec, the acceptance rule, label syntax and precedence."""

import json
from dataclasses import replace
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest

from overlay.cluster import pods
from overlay.cluster.pods import Label, PodRecord, PodRules, Port
from overlay.cluster.store import KV
from overlay.lease import Rejection
from overlay.util.containerid import MAX_CONTAINER_ID

BASE = "/overlay/network/pods/"
N1 = IPv4Network("10.244.1.0/24")
N2 = IPv4Network("10.244.2.0/24")
RULES = PodRules({"node1": N1}, frozenset({N1, N2}))


def record(**kw):
    base: dict[str, Any] = {
        "namespace": "default", "name": "web-1", "ips": (IPv4Address("10.244.1.5"),),
        "node": "node1", "container_id": "c0ffee", "ifname": "eth0",
        "labels": {"app": Label("web", "cni")}, "ports": (Port("http", 80, "TCP"),),
        "created": datetime(2026, 12, 2, 10, 0, 0, tzinfo=UTC)}
    base.update(kw)
    return PodRecord(**base)


def reason(got):
    assert isinstance(got, Rejection), got
    return got.reason


def kv(value, key=BASE + "default/web-1", rev=7):
    return KV(key, value if isinstance(value, bytes) else json.dumps(value).encode(), rev)


def test_round_trip_keeps_every_field():
    r = record(ips=(IPv4Address("10.244.1.5"), IPv4Address("10.244.1.6")))
    got = pods.judge_pod(kv(pods.encode_pod(r)), BASE, RULES)
    assert isinstance(got, PodRecord) and got == replace(r, mod_revision=7)
    assert got.ip == IPv4Address("10.244.1.5") and got.label_values() == {"app": "web"}


def mutate(**changes):
    obj = json.loads(pods.encode_pod(record()))
    obj.update(changes)
    return obj


@pytest.mark.parametrize("obj, why", [
    (mutate(ips=["10.244.2.5"]), pods.PodReason.IP_OUTSIDE_SUBNET),  # node1 holds 10.244.1.0/24
    (mutate(ips=["10.244.1.5", "10.244.2.5"]), pods.PodReason.IP_OUTSIDE_SUBNET),
    (mutate(node="node9", ips=["10.244.9.5"]), pods.PodReason.IP_OUTSIDE_SUBNET),  # no lease
    (mutate(name="web-2"), pods.PodReason.NAME_MISMATCH),
    (mutate(ips=[]), pods.PodReason.BAD_VALUE),
    (mutate(ips=["10.244.1.5", "10.244.1.5"]), pods.PodReason.BAD_VALUE),
    (mutate(ips=["fd00::1"]), pods.PodReason.IP_OUTSIDE_SUBNET),  # IPv6-only shape, no lease
    (mutate(ips=["fd00::1", "10.244.1.5"]), pods.PodReason.BAD_VALUE),  # IPv4 comes first
    (mutate(node="Node1"), pods.PodReason.BAD_VALUE),
    (mutate(containerID="a b"), pods.PodReason.BAD_VALUE),
    (mutate(labels={"app": {"value": "bad value", "source": "cni"}}), pods.PodReason.BAD_VALUE),
    (mutate(labels={"app": {"value": "web", "source": "nobody"}}), pods.PodReason.BAD_VALUE),
    (mutate(ports=[{"name": "http", "port": 70000}]), pods.PodReason.BAD_VALUE),
    (mutate(created="yesterday"), pods.PodReason.BAD_VALUE),
    (mutate(extra=1), pods.PodReason.BAD_VALUE),
    ([1, 2], pods.PodReason.BAD_VALUE),
])
def test_a_bad_record_is_rejected_with_its_reason(obj, why):
    assert reason(pods.judge_pod(kv(obj), BASE, RULES)) == why


def test_duplicate_fields_and_huge_values_are_rejected():
    raw = pods.encode_pod(record())
    dup = raw[:-1] + b',"node":"node2"}'
    assert reason(pods.judge_pod(kv(dup), BASE, RULES)) == pods.PodReason.BAD_VALUE
    huge = kv(b" " * (pods.MAX_RECORD_BYTES + 1))
    assert reason(pods.judge_pod(huge, BASE, RULES)) == pods.PodReason.VALUE_TOO_LARGE
    deep = kv(b"[" * 5000 + b"]" * 5000)  # RecursionError inside json, under the size bound
    got = pods.judge_pod(deep, BASE, RULES)
    assert isinstance(got, Rejection) and got.reason == pods.PodReason.BAD_VALUE
    assert "nested too deeply" in got.detail


@pytest.mark.parametrize("key", [BASE + "default", BASE + "Default/web-1",
                                 BASE + "default/web-1/x", BASE + "default/web_1"])
def test_bad_keys_are_rejected(key):
    got = pods.judge_pod(kv(pods.encode_pod(record()), key=key), BASE, RULES)
    assert reason(got) == pods.PodReason.BAD_KEY


def test_without_node_subnets_the_ips_must_share_one_accepted_lease():
    rules = PodRules({}, frozenset({N1, N2}))
    assert isinstance(pods.judge_pod(kv(pods.encode_pod(record())), BASE, rules), PodRecord)
    split = mutate(ips=["10.244.1.5", "10.244.2.5"])
    assert reason(pods.judge_pod(kv(split), BASE, rules)) == pods.PodReason.IP_OUTSIDE_SUBNET


def test_judge_pods_keeps_the_good_beside_the_bad():
    good, bad = pods.judge_pods([kv(pods.encode_pod(record())), kv(b"garbage",
                                                                   key=BASE + "default/x")],
                                BASE, RULES)
    assert [r.name for r in good] == ["web-1"] and [r.key for r in bad] == [BASE + "default/x"]


@pytest.mark.parametrize("key, value", [("app", "web"), ("app.kubernetes.io/name", "x"),
                                        ("a_b.c-d", ""), ("k", "v" * 63), ("x" * 63, "A1")])
def test_kubernetes_label_syntax_accepts(key, value):
    assert pods.label_problem(key, value) is None


@pytest.mark.parametrize("key, value", [("", "v"), ("-a", "v"), ("a/", "v"), ("A_/b", "v"),
                                        ("k", "v" * 64), ("k", "a b"), ("k", "-x"),
                                        ("x" * 64, "v"), ("k", 1), (None, "v"),
                                        ("a/b/c", "v")])
def test_kubernetes_label_syntax_refuses(key, value):
    assert pods.label_problem(key, value)


def test_cli_labels_win_per_key_and_the_source_is_kept():
    merged = pods.merge_labels({"cli": {"tier": "gold"}, "cni": {"app": "web", "tier": "free"}})
    assert merged == {"app": Label("web", "cni"), "tier": Label("gold", "cli")}
    assert pods.labels_by_source(merged) == {"cni": {"app": "web"}, "cli": {"tier": "gold"}}


def test_cli_label_edit_sets_and_removes_whatever_the_source():
    r = pods.with_cli_labels(record(), {"tier": "gold"}, ["app"])
    assert r.labels == {"tier": Label("gold", "cli")}


def _longest_labels(source, n=pods.MAX_SOURCE_LABELS):
    """``n`` labels of Kubernetes' longest form: a 253-character prefix, '/', a
    63-character name (317 in all), a 63-character value."""
    prefix = ".".join(["a" * 63] * 3 + ["b" * 61])  # 253 characters, a DNS-1123 subdomain
    return {f"{prefix}/{source[:2]}{i:02d}{'n' * 59}": Label(f"{i:02d}{'v' * 61}", source)
            for i in range(n)}


def test_the_largest_record_a_pod_can_have_is_readable():
    # the plugin keeps 64 labels and 64 ports, the operator sets up to 64 more labels
    big = record(namespace="n" * 63, name=".".join(["p" * 63] * 3 + ["q" * 61]),
                 container_id="c" * MAX_CONTAINER_ID, ifname="e" * pods.MAX_IFNAME,
                 labels={**_longest_labels("cni"), **_longest_labels("kubernetes"),
                         **_longest_labels("cli")},
                 ports=tuple(Port(f"p{i:02d}{'x' * 12}", 65535 - i, "SCTP") for i in range(64)))
    raw = pods.encode_pod(big)
    assert len(big.labels) == 3 * pods.MAX_SOURCE_LABELS
    assert len(raw) <= pods.MAX_RECORD_BYTES
    assert pods.decode_pod(raw) == big


def test_an_operators_label_on_a_fully_labelled_pod_keeps_it_readable():
    # 64 of the CNI's and one of the operator's: a record the readers once rejected (at
    # most 64 labels in all), which dropped the pod out of its policies' reach
    full = record(labels=_longest_labels("cni"))
    got = pods.with_cli_labels(full, {"tier": "gold"}, [])
    assert pods.decode_pod(pods.encode_pod(got)).labels == got.labels


def test_more_operator_labels_than_a_source_may_bring_are_refused():
    many = {f"k{i}": "v" for i in range(pods.MAX_SOURCE_LABELS)}
    ok = pods.with_cli_labels(record(), many, [])
    assert sum(lab.source == "cli" for lab in ok.labels.values()) == pods.MAX_SOURCE_LABELS
    with pytest.raises(pods.PodValueError, match="65 labels set with `pods label`: at most 64"):
        pods.with_cli_labels(ok, {"one-more": "v"}, [])


def test_duplicate_ips_names_every_holder():
    a, b = record(), record(name="web-2", container_id="c2")
    dup = pods.duplicate_ips([a, b, record(name="x", ips=(IPv4Address("10.244.1.9"),))])
    assert list(dup) == [IPv4Address("10.244.1.5")] and dup[IPv4Address("10.244.1.5")] == [a, b]


@pytest.mark.parametrize("obj", [{"port": 80}, {"name": "dns", "port": 53, "protocol": "udp"}])
def test_ports_parse(obj):
    assert pods.parse_port(obj).port == obj["port"]


@pytest.mark.parametrize("obj", [{"port": 0}, {"port": True}, {"port": 80, "protocol": "icmp"},
                                 {"port": 80, "name": "HTTP"}, {"port": 80, "x": 1}, "80"])
def test_bad_ports_are_refused(obj):
    with pytest.raises(pods.PodValueError):
        pods.parse_port(obj)


def test_with_nodes_holds_each_node_to_its_own_record_subnet():
    # record() is node1's pod at 10.244.1.x; a record of node1 claiming N2 makes it foreign
    rules = PodRules({}, frozenset({N1, N2}))
    assert isinstance(pods.judge_pod(kv(pods.encode_pod(record())), BASE,
                                     rules.with_nodes({"node1": N1})), PodRecord)
    got = pods.judge_pod(kv(pods.encode_pod(record())), BASE, rules.with_nodes({"node1": N2}))
    assert reason(got) == pods.PodReason.IP_OUTSIDE_SUBNET
    # a node record naming a subnet that no accepted lease holds is not believed
    assert rules.with_nodes({"node1": IPv4Network("10.9.0.0/24")}).node_subnets == {}


def test_with_nodes_rejects_a_record_naming_a_node_without_a_record():
    """A hostile writer's record naming a node that does not exist (node9) with another
    node's pod IP was accepted by the lease it lies in; with node records known it is not."""
    rules = PodRules({}, frozenset({N1, N2})).with_nodes({"node1": N1})
    forged = record(node="node9")  # 10.244.1.5: node1's address
    got = pods.judge_pod(kv(pods.encode_pod(forged)), BASE, rules)
    assert isinstance(got, Rejection) and got.reason == pods.PodReason.IP_OUTSIDE_SUBNET
    assert "node node9 has no node record" in got.detail
    # another existing node naming node1's address: outside node2's subnet
    rules2 = PodRules({}, frozenset({N1, N2})).with_nodes({"node1": N1, "node2": N2})
    got = pods.judge_pod(kv(pods.encode_pod(record(node="node2"))), BASE, rules2)
    assert isinstance(got, Rejection) and "node2's subnet" in got.detail
    # a node gone with its lease (its record no longer believed): the lease-gone wording,
    # which diagnose's rejected-objects takes for a record awaiting the GC
    gone = pods.judge_pod(kv(pods.encode_pod(record(node="node3", ips=(
        IPv4Address("10.244.3.5"),)))), BASE, rules)
    assert isinstance(gone, Rejection) and gone.detail.endswith(f"({pods.NO_LEASE})")
    # without node records (a reader that has none) the lease still decides
    assert isinstance(pods.judge_pod(kv(pods.encode_pod(forged)), BASE,
                                     PodRules({}, frozenset({N1}))), PodRecord)


@pytest.mark.parametrize("ip", ["10.244.1.0", "10.244.1.1", "10.244.1.255"])
def test_the_nodes_own_addresses_are_never_a_pods(ip):
    """The subnet's network address (the VTEP's), gateway (the bridge's) and broadcast
    address: a record claiming one would make the node itself a labelled pod."""
    got = pods.judge_pod(kv(pods.encode_pod(record(ips=(IPv4Address(ip),)))), BASE, RULES)
    assert isinstance(got, Rejection) and got.reason == pods.PodReason.IP_OUTSIDE_SUBNET
    assert f"{ip} is node 10.244.1.0/24's own address" in got.detail
    # the lease fallback holds them to it too
    got = pods.judge_pod(kv(pods.encode_pod(record(ips=(IPv4Address(ip),)))), BASE,
                         PodRules({}, frozenset({N1})))
    assert reason(got) == pods.PodReason.IP_OUTSIDE_SUBNET
    for fine in ("10.244.1.2", "10.244.1.254"):
        assert isinstance(pods.judge_pod(kv(pods.encode_pod(record(
            ips=(IPv4Address(fine),)))), BASE, RULES), PodRecord)


def test_a_subnet_two_node_records_claim_belongs_to_neither():
    claims = [("node1", N1), ("node2", N2), ("forged", N1)]
    assert pods.believed_node_subnets(claims) == {"node2": N2}
    assert pods.believed_node_subnets([("node1", N1), ("node1", N1)]) == {"node1": N1}
