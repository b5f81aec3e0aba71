"""``overlayctl trace SRC DST --port P``'s policy verdict against a real etcd: the network
config, two leases and the e2e model's pods in the registry, policies applied with
``overlayctl policy apply`` as a user would. ``--policy-only``: no node's kernel here."""

from __future__ import annotations

import json

import pytest
import yaml

from overlay.cluster.keys import pod_key
from overlay.cluster.pods import SOURCE_CLI, Label, PodRecord, encode_pod
from overlay.config import parse_network_config
from overlay.subnet.etcdconf import make_etcd_options
from overlay.subnet.registry import EtcdRegistry

from ..policy.cases import model_pods, pod_ip, policy
from .support.noderecords import put_node_record
from .test_registry import attrs, net

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(etcd_server, store, ctl):
    """Config, leases of node1/node2, the model's pods; namespaces x, y, z labelled."""
    with EtcdRegistry(make_etcd_options(etcd_server.endpoint, timeout=3.0)) as reg:
        reg.put_config(parse_network_config(b'{"Network": "10.244.0.0/16"}'))
        for i in (1, 2):
            reg.create_lease(net(i), attrs(10 + i), ttl=3600)
            put_node_record(store, f"node{i}", net(i), attrs(10 + i))
    for i, p in enumerate(model_pods()):
        record = PodRecord(p.namespace, p.name, (pod_ip(p.namespace, p.name),), p.node,
                           f"c{i}", "eth0",
                           {k: Label(v, SOURCE_CLI) for k, v in p.labels.items()}, p.ports)
        store.put(pod_key(store.prefix, p.namespace, p.name), encode_pod(record))
    for ns in ("x", "y", "z"):
        assert ctl("namespaces", "label", ns, f"ns={ns}").exit_code == 0
    return ctl


def apply(ctl, *docs):
    r = ctl("policy", "apply", "-f", "-", input="---\n".join(yaml.safe_dump(d) for d in docs))
    assert r.exit_code == 0, r.output


def trace(ctl, *args):
    r = ctl("-o", "json", "trace", "--policy-only", *args)
    assert "Traceback" not in r.output
    return r.exit_code, json.loads(r.output)


DENY_X = policy("deny", "x", {"podSelector": {}})
ALLOW_A_FROM_Y = policy("a-from-y", "x", {
    "podSelector": {"matchLabels": {"pod": "a"}},
    "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
                 "ports": [{"port": "serve-80-tcp"}]}]})


def test_verdicts_follow_the_applied_policies(cluster):
    ctl = cluster
    code, got = trace(ctl, "y/b", "x/a", "--port", "80")
    assert code == 0 and got["policy"]["verdict"] == "allowed"
    assert got["policy"]["ingress"]["isolated"] is False
    assert got["src"] == str(pod_ip("y", "b")) and got["dst"] == str(pod_ip("x", "a"))
    apply(ctl, DENY_X)
    code, got = trace(ctl, "y/b", "x/a", "--port", "80")
    assert code == 1 and got["policy"]["verdict"] == "denied"
    assert got["policy"]["ingress"]["isolating"] == ["x/deny"]
    apply(ctl, ALLOW_A_FROM_Y)  # a named port, resolved on x/a
    code, got = trace(ctl, "y/b", str(pod_ip("x", "a")), "--port", "80")
    assert code == 0 and got["policy"]["ingress"]["allowed_by"] == ["x/a-from-y"]
    assert trace(ctl, "y/b", "x/a", "--port", "80", "--protocol", "udp")[0] == 1
    assert trace(ctl, "z/b", "x/a", "--port", "80")[0] == 1  # not from y
    # the namespace's label is what the policy matches: take it away and it denies
    ctl("namespaces", "label", "y", "ns-")
    assert trace(ctl, "y/b", "x/a", "--port", "80")[0] == 1
    ctl("policy", "delete", "x/deny")
    ctl("policy", "delete", "x/a-from-y")
    assert trace(ctl, "y/b", "x/a", "--port", "80")[0] == 0


def test_the_table_names_the_allowing_policy_and_the_always_allowed(cluster):
    ctl = cluster
    apply(ctl, DENY_X, ALLOW_A_FROM_Y)
    r = ctl("trace", "--policy-only", "y/b", "x/a", "--port", "80")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[1] == "policy tcp/80: ALLOWED (allowed)"
    assert "ingress at destination x/a" in lines[3] and "allowed by x/a-from-y" in lines[3]
    assert "not isolated for egress" in lines[2]
    # node1's public IP to its own pod x/a: kubelet's probes are never filtered
    r = ctl("trace", "--policy-only", "192.168.1.11", "x/a", "--port", "81")
    assert r.exit_code == 0 and "traffic between a pod and its own node" in r.output
    r = ctl("trace", "--policy-only", "192.168.1.12", "x/a", "--port", "81")
    assert r.exit_code == 1 and "DENIED" in r.output


def test_without_port_no_verdict_and_bad_names_are_one_line(cluster):
    ctl = cluster
    apply(ctl, DENY_X)
    code, got = trace(ctl, "y/b", "x/a")
    assert code == 0 and got["policy"]["allowed"] is None
    assert "--port" in got["policy"]["reason"]
    r = ctl("trace", "--policy-only", "x/nope", "x/a", "--port", "80")
    assert r.exit_code == 1
    assert r.output.strip() == ('error: SRC: pods "nope" not found in namespace "x" '
                                "(see `overlayctl pods -A`)")
