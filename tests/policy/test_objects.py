"""The one read rule of each kind in etcd (namespaces/, policies/), on raw key-values."""

import json

import pytest

from overlay.cluster.store import KV, MAX_OBJECT_BYTES
from overlay.policy.model import PolicyError
from overlay.policy.objects import new_namespace, parse_namespace_kv, parse_policy_kv

from .cases import policy

P = "/overlay/network"


def ns_kv(name: str, value: object) -> KV:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return KV(f"{P}/namespaces/{name}", raw, 7)


def test_a_namespace_round_trips_with_its_automatic_label():
    ns = new_namespace("team-a", {"env": "prod"})
    back = parse_namespace_kv(P, KV(f"{P}/namespaces/team-a", ns.to_json(), 9))
    assert back.labels == {"env": "prod", "kubernetes.io/metadata.name": "team-a"}
    assert back.mod_revision == 9
    # an object written without the label still gets it
    bare = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "b"}}
    assert parse_namespace_kv(P, ns_kv("b", bare)).labels == {"kubernetes.io/metadata.name": "b"}


@pytest.mark.parametrize("name,value,words", [
    ("B", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "B"}}, "key"),
    ("a", {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a"}}, "v1 Namespace"),
    ("a", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "b"}}, "name"),
    ("a", {"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": "a", "labels": {"kubernetes.io/metadata.name": "b"}}}, "must be the namespace"),
    ("a", {"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": "a", "labels": {"k": "bad value"}}}, "metadata.labels.k"),
    ("a", b"\xff", "not JSON"),
    ("a", b'{"a":' * 5000 + b"1" + b"}" * 5000, "not JSON: nested too deeply"),
    ("a", b" " * (MAX_OBJECT_BYTES + 1), "bytes"),
])
def test_bad_namespaces_are_rejected(name, value, words):
    with pytest.raises(PolicyError, match=words):
        parse_namespace_kv(P, ns_kv(name, value))


def test_a_policy_must_agree_with_its_key():
    obj = policy("web", "x", {"podSelector": {}})
    raw = json.dumps(obj).encode()
    assert parse_policy_kv(P, KV(f"{P}/policies/x/web", raw, 1)).ref == "x/web"
    with pytest.raises(PolicyError, match="not the key's y/web"):
        parse_policy_kv(P, KV(f"{P}/policies/y/web", raw, 1))
    with pytest.raises(PolicyError, match="key is not"):
        parse_policy_kv(P, KV(f"{P}/policies/x/web/extra", raw, 1))
    del obj["metadata"]["namespace"]  # stored objects always name their namespace
    with pytest.raises(PolicyError, match="metadata.namespace"):
        parse_policy_kv(P, KV(f"{P}/policies/x/web", json.dumps(obj).encode(), 1))


def test_a_policy_nested_too_deeply_is_rejected_not_raised():
    deep = b'{"apiVersion":' * 5000 + b'"x"' + b"}" * 5000
    with pytest.raises(PolicyError, match="nested too deeply"):
        parse_policy_kv(P, KV(f"{P}/policies/x/web", deep, 1))
