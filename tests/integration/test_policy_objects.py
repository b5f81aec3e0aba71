"""Namespaces and NetworkPolicies in a real etcd, through overlayctl: apply, get,
delete, label, list; bad input changes nothing; a bad object in etcd is rejected alone."""

import json
import os
from ipaddress import IPv4Address

import pytest
import yaml

from overlay.cluster import keys
from overlay.cluster.keys import pod_key
from overlay.cluster.pods import PodRecord, encode_pod
from overlay.policy import objects

from ..policy.cases import policy

pytestmark = pytest.mark.integration

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "examples")




def everything(store):
    kvs, _ = store.list(store.prefix + "/")
    return {kv.key: kv.value for kv in kvs}


def fails_with(result, words):
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], lines
    assert "Traceback" not in result.output


def test_examples_apply_and_read_back(ctl, store):
    assert ctl("namespaces", "create", "x").output.strip() == "namespace x created"
    names = sorted(os.listdir(EXAMPLES))
    assert len([n for n in names if n.endswith(".yaml")]) >= 3
    for n in names:
        r = ctl("policy", "apply", "-f", os.path.join(EXAMPLES, n))
        assert r.exit_code == 0 and " created" in r.output, r.output
    got = ctl("policy", "get", "-o", "json")
    refs = sorted(f"{i['metadata']['namespace']}/{i['metadata']['name']}"
                  for i in json.loads(got.output)["items"])
    assert refs == ["x/allow-from-frontend", "x/allow-http", "x/allow-ipv6-block",
                    "x/default-deny-ingress", "x/egress-dns-only"]
    again = ctl("policy", "apply", "-f", os.path.join(EXAMPLES, "default-deny.yaml"))
    assert "x/default-deny-ingress unchanged" in again.output
    # the namespace carries its automatic label
    ns = objects.get_namespace(store, "x")
    assert ns is not None and ns.labels == {"kubernetes.io/metadata.name": "x"}


def test_apply_stdin_update_get_delete(ctl, store):
    ctl("namespaces", "create", "y")
    manifest = policy("web", "y", {"podSelector": {"matchLabels": {"app": "web"}}})
    r = ctl("policy", "apply", "-f", "-", input=json.dumps(manifest))
    assert r.output.strip() == "networkpolicy y/web created"
    manifest["spec"]["ingress"] = [{"ports": [{"port": 80}]}]
    r = ctl("policy", "apply", "-f", "-", input=yaml.safe_dump(manifest))
    assert r.output.strip() == "networkpolicy y/web configured"
    stored = json.loads(store.get(keys.policy_key(store.prefix, "y", "web")).value)
    assert stored["spec"]["ingress"] == [{"ports": [{"port": 80}]}]
    table = ctl("policy", "get", "-n", "y").output.splitlines()
    assert table[0].split() == ["NAMESPACE", "NAME", "POD-SELECTOR", "POLICY-TYPES", "STATUS"]
    assert table[1].split() == ["y", "web", "app=web", "Ingress", "ok"]
    assert ctl("policy", "get", "-A").output.splitlines() == table  # kubectl's spelling
    fails_with(ctl("policy", "get", "-A", "web"), "-A lists every namespace")
    one = yaml.safe_load(ctl("policy", "get", "-n", "y", "web", "-o", "yaml").output)
    assert one["metadata"] == {"name": "web", "namespace": "y"}
    assert ctl("policy", "delete", "y/web").output.strip() == "networkpolicy y/web deleted"
    fails_with(ctl("policy", "delete", "y/web"), "no NetworkPolicy y/web")
    fails_with(ctl("policy", "get", "-n", "y", "web"), "no NetworkPolicy y/web")


@pytest.mark.parametrize("args,words", [
    (("policy", "apply", "-f", "/nonexistent.yaml"), "cannot read /nonexistent.yaml"),
    (("policy", "delete", "web"), "NAMESPACE/NAME"),
    (("policy", "delete", "Y/web"), "namespace 'Y'"),
    (("policy", "get", "-n", "a_b"), "namespace 'a_b'"),
    (("namespaces", "label", "x", "novalue"), "key=value"),
    (("namespaces", "label", "x", "k=bad value"), "label k='bad value'"),
    (("namespaces", "label", "x", "kubernetes.io/metadata.name=y"), "set automatically"),
    (("namespaces", "label", "x", "a=1", "a-"), "given twice"),
    (("namespaces", "label", "X_", "a=1"), "namespace 'X_'"),
    (("namespaces", "label", "nowhere", "a=1"), 'namespaces "nowhere" not found'),
    (("namespaces", "create", "X_"), "namespace 'X_'"),
    (("namespaces", "create", "q", "--label", "a-"), "key=value"),
    (("namespaces", "create", "q", "--label", "kubernetes.io/metadata.name=r"),
     "set automatically"),
    (("namespaces", "delete", "nowhere"), 'namespaces "nowhere" not found'),
    (("namespaces", "delete", "default"), "may not be deleted"),
])
def test_bad_arguments_change_nothing(ctl, store, args, words):
    before = everything(store)
    fails_with(ctl(*args), words)
    assert everything(store) == before


def test_a_manifest_with_one_bad_object_writes_nothing(ctl, store):
    good = policy("good", "x", {"podSelector": {}})
    bad = policy("bad", "x", {"podSelector": {}, "ingress": [{"ports": [{"port": 0}]}]})
    doc = yaml.safe_dump(good) + "---\n" + yaml.safe_dump(bad)
    fails_with(ctl("policy", "apply", "-f", "-", input=doc),
               "document 2: spec.ingress[0].ports[0].port")
    assert everything(store) == {}


def test_namespaces_label_and_list(ctl, store):
    ctl("namespaces", "create", "y")
    r = ctl("namespaces", "label", "y", "team=frontend", "env=prod")
    assert r.output.strip() == "namespace y labeled"
    fails_with(ctl("namespaces", "label", "y", "team=backend"), "--overwrite")
    ctl("namespaces", "label", "y", "team=backend", "env-", "--overwrite")
    ns = objects.get_namespace(store, "y")
    assert ns is not None and ns.labels == {"kubernetes.io/metadata.name": "y",
                                            "team": "backend"}
    out = ctl("namespaces", "list").output.splitlines()
    assert [line.split() for line in out[1:]] == [
        ["default", "kubernetes.io/metadata.name=default", "implicit"],
        ["y", "kubernetes.io/metadata.name=y,team=backend", "ok"]]
    listed = json.loads(ctl("namespaces", "list", "-o", "json").output)
    assert listed == [
        {"name": "default", "labels": {"kubernetes.io/metadata.name": "default"},
         "implicit": True},
        {"name": "y", "labels": {"kubernetes.io/metadata.name": "y", "team": "backend"},
         "implicit": False}]


def test_namespaces_list_shows_those_that_exist_through_pods(ctl, store):
    """A namespace holding a pod of the registry exists (policies may go into it), so the
    list shows it; once created it is listed once, with its labels; a pod record that does
    not decode makes no namespace."""
    _pod_in(store, "shop", "web")
    _pod_in(store, "shop", "db")
    store.put(pod_key(store.prefix, "junk", "x"), b"not a record")
    rows = [line.split() for line in ctl("namespaces", "list").output.splitlines()[1:]]
    assert rows == [["default", "kubernetes.io/metadata.name=default", "implicit"],
                    ["shop", "kubernetes.io/metadata.name=shop", "implicit"]]
    ctl("namespaces", "label", "shop", "team=a")
    listed = json.loads(ctl("namespaces", "list", "-o", "json").output)
    assert [(n["name"], n["implicit"], n["labels"].get("team")) for n in listed] == [
        ("default", True, None), ("shop", False, "a")]


def test_bad_objects_in_etcd_are_rejected_alone(ctl, store):
    ctl("namespaces", "create", "x")
    ctl("policy", "apply", "-f", "-", input=json.dumps(policy("ok", "x", {"podSelector": {}})))
    base = keys.policies_prefix(store.prefix)
    wide_open = policy("wide", "x", {"podSelector": {}, "ingress": [{"from": [{}]}]})
    store.put(base + "x/wide", json.dumps(wide_open).encode())  # invalid peer
    store.put(base + "x/other", json.dumps(policy("ok", "x", {"podSelector": {}})).encode())
    store.put(base + "x/a/b", b"{}")
    store.put(base + "x/garbage", b"\xff not json")
    store.put(base + "x/deep", b'{"a":' * 5000 + b"1" + b"}" * 5000)  # RecursionError in json
    store.put(keys.namespace_key(store.prefix, "z"), json.dumps({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {
            "name": "z", "labels": {"kubernetes.io/metadata.name": "x"}}}).encode())
    good, bad = objects.list_policies(store)
    assert [p.ref for p in good] == ["x/ok"]
    reasons = {r.key.removeprefix(base): r.reason for r in bad}
    assert "must specify a peer" in reasons["x/wide"]
    assert "not the key's x/other" in reasons["x/other"]
    assert "key is not" in reasons["x/a/b"] and "not JSON" in reasons["x/garbage"]
    assert "nested too deeply" in reasons["x/deep"]
    r = ctl("policy", "get")
    assert r.exit_code == 0
    rows = [line.split() for line in r.stdout.splitlines()]
    assert ["x", "ok", "<none>", "Ingress", "ok"] in rows
    assert sum("rejected:" in line for line in r.stdout.splitlines()) == 5
    nss, bad_ns = objects.list_namespaces(store)
    assert [n.name for n in nss] == ["x"] and "must be the namespace's name" in bad_ns[0].reason


def _pod_in(store, ns, name):
    record = PodRecord(ns, name, (IPv4Address("10.244.1.5"),), "node1", "c1", "eth0")
    store.put(pod_key(store.prefix, ns, name), encode_pod(record))


def test_apply_into_an_unknown_namespace_writes_nothing(ctl, store):
    doc = (yaml.safe_dump(policy("ok", "default", {"podSelector": {}})) + "---\n"
           + yaml.safe_dump(policy("p", "foo", {"podSelector": {}})))
    fails_with(ctl("policy", "apply", "-f", "-", input=doc), 'namespaces "foo" not found')
    assert everything(store) == {}
    # 'default' always exists; a namespace holding a pod of the registry exists too
    _pod_in(store, "shop", "web")
    r = ctl("policy", "apply", "-f", "-", input=json.dumps(policy("p", "shop", {
        "podSelector": {}})))
    assert r.output.strip() == "networkpolicy shop/p created", r.output
    assert objects.get_namespace(store, "shop") is not None  # labels can go on it now
    assert ctl("namespaces", "label", "shop", "team=a").exit_code == 0


def test_namespaces_create_and_delete_with_its_policies(ctl, store):
    r = ctl("namespaces", "create", "foo", "--label", "team=a", "-l", "env=prod")
    assert r.output.strip() == "namespace foo created"
    ns = objects.get_namespace(store, "foo")
    assert ns is not None and ns.labels == {"kubernetes.io/metadata.name": "foo",
                                            "team": "a", "env": "prod"}
    fails_with(ctl("namespaces", "create", "foo"), 'namespaces "foo" already exists')
    assert ctl("namespaces", "create", "foo", "--exist-ok").output.strip() == \
        "namespace foo unchanged"
    for name in ("p1", "p2"):
        ctl("policy", "apply", "-f", "-", input=json.dumps(policy(name, "foo", {
            "podSelector": {}})))
    ctl("namespaces", "create", "bar")
    ctl("policy", "apply", "-f", "-", input=json.dumps(policy("keep", "bar", {
        "podSelector": {}})))
    r = ctl("namespaces", "delete", "foo")
    assert r.output.splitlines() == ["networkpolicy foo/p1 deleted",
                                     "networkpolicy foo/p2 deleted", "namespace foo deleted"]
    assert objects.get_namespace(store, "foo") is None
    assert [p.ref for p in objects.list_policies(store)[0]] == ["bar/keep"]
    fails_with(ctl("policy", "apply", "-f", "-", input=json.dumps(policy("p1", "foo", {
        "podSelector": {}}))), 'namespaces "foo" not found')
    # pods stay (their runtime removes them): the namespace still exists through them
    _pod_in(store, "bar", "web")
    got = json.loads(ctl("-o", "json", "namespaces", "delete", "bar").output)
    assert got == {"name": "bar", "result": "deleted", "policies_deleted": ["bar/keep"],
                   "pods_remain": True}
    assert objects.namespace_exists(store, "bar")
