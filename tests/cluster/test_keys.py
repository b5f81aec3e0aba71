"""The cluster's key layout and its names' rule."""

import pytest

from overlay.cluster import keys


@pytest.mark.parametrize("name", ["a", "node1", "n-1", "x" * 63])
def test_dns_label_accepts(name):
    assert keys.dns_label_problem(name) is None


@pytest.mark.parametrize("name", ["", "A", "-a", "a-", "a.b", "a/b", "x" * 64, None, 3,
                                  "a\n", "ä"])
def test_dns_label_refuses(name):
    assert keys.dns_label_problem(name)


@pytest.mark.parametrize("name", ["a.b", "node1.example.com", "x" * 253])
def test_dns_subdomain_accepts(name):
    assert keys.dns_subdomain_problem(name) is None


@pytest.mark.parametrize("name", ["", "a..b", ".a", "a.", "a/b", "x" * 254, "A.b"])
def test_dns_subdomain_refuses(name):
    assert keys.dns_subdomain_problem(name)


def test_layout_and_round_trip():
    p = "/coreos.com/network/"
    assert keys.node_key(p, "node1") == "/coreos.com/network/nodes/node1"
    assert keys.heartbeat_key(p, "node1") == "/coreos.com/network/heartbeats/node1"
    assert keys.pod_key(p, "default", "web") == "/coreos.com/network/pods/default/web"
    assert keys.policy_key(p, "ns", "deny") == "/coreos.com/network/policies/ns/deny"
    assert keys.schema_key(p) == "/coreos.com/network/schema"
    assert keys.split_single(keys.node_key(p, "node1"), keys.nodes_prefix(p)) == "node1"
    assert keys.split_namespaced(keys.pod_key(p, "default", "web"),
                                 keys.pods_prefix(p)) == ("default", "web")


@pytest.mark.parametrize("tail", ["a/b", "A", "", "a\n"])
def test_alias_node_keys_name_nothing(tail):
    base = keys.nodes_prefix("/p")
    assert keys.split_single(base + tail, base) is None


@pytest.mark.parametrize("tail", ["default", "default/a/b", "Default/a", "default/", "/a"])
def test_alias_pod_keys_name_nothing(tail):
    base = keys.pods_prefix("/p")
    assert keys.split_namespaced(base + tail, base) is None
