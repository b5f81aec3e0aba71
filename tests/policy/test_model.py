"""The NetworkPolicy parser: what the API server accepts is accepted, what it refuses is
refused with one error naming the field."""

import copy
import json
from ipaddress import ip_address, ip_network

import pytest

from overlay.policy.model import (
    EGRESS,
    INGRESS,
    IPBlock,
    LabelSelector,
    PolicyError,
    PolicyPort,
    Requirement,
    load_manifests,
    parse_policy,
)

BASE = {
    "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
    "metadata": {"name": "web", "namespace": "x"},
    "spec": {"podSelector": {"matchLabels": {"app": "web"}},
             "ingress": [{"from": [{"podSelector": {}}], "ports": [{"port": 80}]}]},
}


def with_spec(**spec):
    obj = copy.deepcopy(BASE)
    obj["spec"] = {"podSelector": {}, **spec}
    return obj


def test_a_full_policy_parses_into_values():
    obj = with_spec(
        ingress=[{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}},
                            "podSelector": {"matchExpressions": [
                                {"key": "pod", "operator": "In", "values": ["a", "b"]}]}},
                           {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
                  "ports": [{"port": 80, "endPort": 90}, {"protocol": "UDP", "port": "dns"},
                            {"protocol": "SCTP"}]}],
        egress=[{}])
    p = parse_policy(obj)
    assert p.ref == "x/web" and p.policy_types == {INGRESS, EGRESS}
    (rule,) = p.ingress
    assert rule.peers is not None
    both, block = rule.peers
    assert both.namespace_selector == LabelSelector((("ns", "y"),))
    assert both.pod_selector == LabelSelector((), (Requirement("pod", "In",
                                                               frozenset({"a", "b"})),))
    assert block.ip_block == IPBlock(ip_network("10.0.0.0/8"), (ip_network("10.1.0.0/16"),))
    assert rule.ports == (PolicyPort("TCP", 80, 90), PolicyPort("UDP", "dns"),
                          PolicyPort("SCTP"))
    assert p.egress[0].peers is None and p.egress[0].ports == ()
    assert p.manifest()["metadata"]["namespace"] == "x"


def test_defaults_namespace_types_and_protocol():
    obj = copy.deepcopy(BASE)
    obj["metadata"] = {"name": "web"}
    p = parse_policy(obj)
    assert p.namespace == "default" and p.policy_types == {INGRESS}
    assert p.ingress[0].ports == (PolicyPort("TCP", 80),)
    # egress: [] is no egress rule: the default types stay Ingress only
    assert parse_policy(with_spec(egress=[])).policy_types == {INGRESS}


def test_rules_of_a_type_not_listed_are_ignored():
    p = parse_policy(with_spec(policyTypes=["Egress"], ingress=[{}]))
    assert p.policy_types == {EGRESS} and p.ingress == () and p.egress == ()


def test_empty_from_is_every_peer_and_empty_ingress_is_none():
    assert parse_policy(with_spec(ingress=[{"from": []}])).ingress[0].peers is None
    assert parse_policy(with_spec(ingress=[])).ingress == ()


def test_selectors_match_as_kubernetes():
    sel = parse_policy(with_spec(podSelector={
        "matchLabels": {"a": "1"},
        "matchExpressions": [{"key": "b", "operator": "NotIn", "values": ["x"]},
                             {"key": "c", "operator": "Exists"},
                             {"key": "d", "operator": "DoesNotExist"}]})).pod_selector
    assert sel.matches({"a": "1", "c": ""})
    assert sel.matches({"a": "1", "b": "y", "c": "z"})
    assert not sel.matches({"a": "1", "b": "x", "c": ""})
    assert not sel.matches({"a": "1", "c": "", "d": "1"})
    assert not sel.matches({"a": "2", "c": ""})
    assert LabelSelector().matches({})


def test_ip_block_contains_minus_excepts():
    b = IPBlock(ip_network("10.0.0.0/8"), (ip_network("10.1.0.0/16"),))
    assert b.contains(ip_address("10.2.0.1")) and not b.contains(ip_address("10.1.0.1"))
    assert not b.contains(ip_address("11.0.0.1")) and not b.contains(ip_address("::1"))


BAD = [
    ({**BASE, "apiVersion": "extensions/v1beta1"}, "apiVersion:"),
    ({**BASE, "kind": "Pod"}, "kind:"),
    ({**BASE, "metadata": {"name": "Web"}}, "metadata.name:"),
    ({**BASE, "metadata": {}}, "metadata.name: Required"),
    ({**BASE, "metadata": {"name": "w", "namespace": "a.b"}}, "metadata.namespace:"),
    ({**BASE, "metadata": {"name": "w", "labels": {"k": "bad value"}}}, "metadata.labels.k:"),
    ({**BASE, "metadata": {"name": "w", "nmae": "x"}}, "metadata.nmae: unknown field"),
    ({**BASE, "spec": {"ingress": []}}, "spec.podSelector: Required"),
    ({**BASE, "extra": 1}, "extra: unknown field"),
    ({**BASE, "status": {}}, "status: unknown field"),
    ({**BASE, "metadata": {"name": "w", "annotations": {"a": 1}}},
     "metadata.annotations.a: must be a string"),
    ({**BASE, "metadata": {"name": "w", "annotations": {"a b": "x"}}},
     "metadata.annotations.a b: invalid annotation key"),
    (with_spec(podSelector={"matchLabels": {"-bad": "x"}}),
     "spec.podSelector.matchLabels.-bad"),
    (with_spec(podSelector={"matchLabels": {"a": 1}}),
     "spec.podSelector.matchLabels.a: must be a string"),
    (with_spec(podSelector={"matchExpressions": [{"key": "a", "operator": "In"}]}),
     "spec.podSelector.matchExpressions[0].values: must be specified"),
    (with_spec(podSelector={"matchExpressions": [{"key": "a", "operator": "Exists",
                                                  "values": ["x"]}]}),
     "spec.podSelector.matchExpressions[0].values: may not be specified"),
    (with_spec(podSelector={"matchExpressions": [{"key": "a", "operator": "Gt",
                                                  "values": ["1"]}]}),
     "spec.podSelector.matchExpressions[0].operator: not a valid selector operator"),
    (with_spec(ingress=[{"from": [{}]}]), "spec.ingress[0].from[0]: must specify a peer"),
    (with_spec(ingress=[{"from": [{"podSelector": {}, "ipBlock": {"cidr": "1.0.0.0/8"}}]}]),
     "spec.ingress[0].from[0]: may not specify both ipBlock"),
    (with_spec(egress=[{"to": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]),
     "spec.egress[0].to[0].ipBlock.cidr: must be a valid CIDR"),
    (with_spec(egress=[{"to": [{"ipBlock": {"cidr": "10.0.0.1"}}]}]),  # no prefix length
     "spec.egress[0].to[0].ipBlock.cidr: must be a valid CIDR"),
    (with_spec(egress=[{"to": [{"ipBlock": {"cidr": "fe80::%eth0/64"}}]}]),  # a zone
     "spec.egress[0].to[0].ipBlock.cidr: must be a valid CIDR"),
    (with_spec(egress=[{"to": [{"ipBlock": {"cidr": ""}}]}]),
     "spec.egress[0].to[0].ipBlock.cidr: Required"),
    (with_spec(egress=[{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}}]}]),
     "spec.egress[0].to[0].ipBlock.except[0]: must be a strict subset"),
    (with_spec(egress=[{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.0.0/8"]}}]}]),
     "spec.egress[0].to[0].ipBlock.except[0]: must be a strict subset"),
    (with_spec(ingress=[{"ports": [{"protocol": "ICMP"}]}]),
     "spec.ingress[0].ports[0].protocol: Unsupported value"),
    (with_spec(ingress=[{"ports": [{"protocol": "tcp", "port": 80}]}]),
     "spec.ingress[0].ports[0].protocol: Unsupported value"),
    (with_spec(ingress=[{"ports": [{"port": 0}]}]),
     "spec.ingress[0].ports[0].port: 0: must be between"),
    (with_spec(ingress=[{"ports": [{"port": 65536}]}]), "spec.ingress[0].ports[0].port:"),
    (with_spec(ingress=[{"ports": [{"port": True}]}]),
     "spec.ingress[0].ports[0].port: must be an integer"),
    (with_spec(ingress=[{"ports": [{"port": "80"}]}]), "must contain at least one letter"),
    (with_spec(ingress=[{"ports": [{"port": "a--b"}]}]), "consecutive hyphens"),
    (with_spec(ingress=[{"ports": [{"port": "verylongportname"}]}]), "no more than 15"),
    (with_spec(ingress=[{"ports": [{"port": 90, "endPort": 80}]}]),
     "spec.ingress[0].ports[0].endPort: must be greater than or equal"),
    (with_spec(ingress=[{"ports": [{"port": "http", "endPort": 80}]}]),
     "spec.ingress[0].ports[0].endPort: may not be specified when `port` is non-numeric"),
    (with_spec(ingress=[{"ports": [{"endPort": 80}]}]),
     "spec.ingress[0].ports[0].endPort: may not be specified when `port` is not specified"),
    (with_spec(policyTypes=["Ingress", "Egress", "Ingress"]), "may not specify more than two"),
    (with_spec(policyTypes=["ingress"]), "spec.policyTypes[0]: Unsupported value"),
    (with_spec(ingress={"from": []}), "spec.ingress: must be a list"),
    (with_spec(ingress=[{"form": []}]), "spec.ingress[0].form: unknown field"),
]


@pytest.mark.parametrize("obj,message", BAD, ids=[m for _, m in BAD])
def test_invalid_policies_name_the_field(obj, message):
    with pytest.raises(PolicyError) as e:
        parse_policy(obj)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_host_bits_in_a_cidr_are_accepted_as_the_api_server_does():
    p = parse_policy(with_spec(egress=[{"to": [{"ipBlock": {"cidr": "10.0.0.1/8"}}]}]))
    peers = p.egress[0].peers
    assert peers is not None and peers[0].ip_block is not None
    assert peers[0].ip_block.cidr == ip_network("10.0.0.0/8")


YAML_TWO = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a, namespace: x}
spec: {podSelector: {}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b}
spec:
  podSelector: {}
  policyTypes: [Egress]
"""


def test_manifests_yaml_multi_document_json_and_list():
    assert [p.ref for p in load_manifests(YAML_TWO)] == ["x/a", "default/b"]
    assert [p.ref for p in load_manifests(json.dumps(BASE))] == ["x/web"]
    lst = {"apiVersion": "v1", "kind": "List", "items": [BASE, with_spec() | {
        "metadata": {"name": "other", "namespace": "y"}}]}
    assert [p.ref for p in load_manifests(json.dumps(lst))] == ["x/web", "y/other"]


@pytest.mark.parametrize("text,message", [
    ("a: [1\n", "not valid YAML or JSON at line"),
    ("", "holds no NetworkPolicy"),
    ("kind: NetworkPolicy\nkind: NetworkPolicy\n", "duplicate field 'kind'"),
    (YAML_TWO + "---\nkind: NetworkPolicy\n", "document 3: apiVersion:"),
    (json.dumps({"kind": "List", "items": [BASE, BASE]}), "items[1]: x/web is given twice"),
    (json.dumps({"kind": "List", "items": [BASE, {"kind": "Pod"}]}), "items[1]: apiVersion"),
    ("[1, 2]", "must be an object"),
    ("[" * 50_000, "not valid YAML or JSON: nested too deeply"),
    ('{"a":' * 5_000 + "1" + "}" * 5_000, "not valid YAML or JSON: nested too deeply"),
    ("a: &a [*a]\n", "recursive"),
    ("spec: {? [a, b] : c}\n", "line 1: field name is a list, not a string"),
    ("metadata: {labels: {1: a, true: b}}\n", "field name '1' is a number, not a string (quote"),
    ("metadata: {labels: {on: a}}\n", "field name 'on' is a boolean"),
    ("metadata: {labels: {~: a}}\n", "field name '~' is a null"),
])
def test_bad_manifests_fail_whole(text, message):
    with pytest.raises(PolicyError) as e:
        load_manifests(text)
    assert message in str(e.value)


def test_overlayd_never_loads_yaml():
    """Only manifests (the CLI) are YAML; overlayd reads policies from etcd as JSON, so
    its policy code must not pull PyYAML in (about 1.7 MB of every node's RSS)."""
    import subprocess
    import sys
    code = ("import sys, overlay.daemon.daemon, overlay.daemon.policyagent, "
            "overlay.policy.objects, overlay.policy.nft; print('yaml' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out.strip() == "False"


def _aliased(rules: int, peers: int) -> str:
    """One policy whose rule repeats an aliased peer ``peers`` times, itself aliased
    ``rules`` times: a few dozen kilobytes that expand to rules x peers peers."""
    return "\n".join([
        "apiVersion: networking.k8s.io/v1", "kind: NetworkPolicy",
        "metadata: {name: p, namespace: x}", "spec:", "  podSelector: {}", "  ingress:",
        "  - &r", "    from:", "    - &p {podSelector: {matchLabels: {a: b}}}",
        *["    - *p"] * (peers - 1), *["  - *r"] * (rules - 1)]) + "\n"


def test_excessive_aliasing_is_refused_before_it_is_expanded():
    # 2000 x 2000 peers: 4 million, 24 million nodes; before the check this took 57 s
    # and 1.6 GB to end in "x/p is 168190191 bytes stored"
    with pytest.raises(PolicyError, match="excessive aliasing: its aliases repeat more "
                       "than 1000000 nodes"):
        load_manifests(_aliased(2000, 2000))


def test_aliases_within_the_budget_still_load():
    (p,) = load_manifests(_aliased(3, 4))
    assert len(p.ingress) == 3 and all(len(rule.peers or ()) == 4 for rule in p.ingress)
    shared = ("kind: List\nitems:\n- {apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, "
              "metadata: {name: a, namespace: x}, spec: &spec {podSelector: {}}}\n"
              "- {apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, "
              "metadata: {name: b, namespace: x}, spec: *spec}\n")
    assert [p.ref for p in load_manifests(shared)] == ["x/a", "x/b"]


def test_errors_quote_values_bounded_and_name_yaml_kinds():
    import datetime

    from overlay.policy.model import MAX_SHOWN, shown
    assert shown("a" * 100_000) == repr("a" * MAX_SHOWN) + "..."
    assert shown("a\nb") == "'a\\nb'" and shown(None) == "null" and shown(True) == "true"
    assert shown(datetime.date(2001, 1, 1)) == "a date" and shown(b"x") == "binary data"
    assert shown(10**400) == "a number"
    for name, words in ((datetime.date(2001, 1, 1), "must be a string, not a date"),
                        (12, "must be a string, not a number"), ([], "not a list"),
                        ("x" * 100_000, "'xxx")):
        with pytest.raises(PolicyError) as e:
            parse_policy({**BASE, "metadata": {"name": name}})
        assert words in str(e.value) and len(str(e.value)) < 200, str(e.value)
        assert "datetime" not in str(e.value)
    with pytest.raises(PolicyError, match=r"^metadata\.'kkkk.*\.\.\.: unknown field$"):
        parse_policy({**BASE, "metadata": {"name": "w", "k" * 100_000: 1}})
    with pytest.raises(PolicyError, match="spec.ingress.0..ports.0..protocol: Unsupported "
                       "value: 'TTTT"):
        parse_policy(with_spec(ingress=[{"ports": [{"protocol": "T" * 100_000}]}]))
