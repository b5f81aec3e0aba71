"""overlayctl policy / namespaces: argument and manifest checks that fail before etcd is
contacted (so nothing can be written), and the table's selector column."""

import json

import pytest
from click.testing import CliRunner

from overlay.cli import cli
from overlay.cli.policy_cmds import parse_label_args, selector_text
from overlay.errors import ConfigError
from overlay.policy.model import parse_selector

# Nothing listens here: a command that got as far as etcd would fail differently.
NOWHERE = ["--etcd-endpoints", "http://127.0.0.1:9"]


def run(*args, input=None):
    return CliRunner().invoke(cli, [*NOWHERE, *args], input=input, catch_exceptions=False)


def test_label_arguments():
    assert parse_label_args(("a=1", "example.com/b=", "c-")) == ({"a": "1", "example.com/b": ""},
                                                                 ["c"])
    for bad, words in [(("a",), "key=value"), (("a=b c",), "value"), (("-a=1",), "label key"),
                       (("a=1", "a=2"), "given twice"), (("/a=1",), "prefix")]:
        with pytest.raises(ConfigError, match=words):
            parse_label_args(bad)


def test_selector_column():
    sel = parse_selector({"matchLabels": {"app": "web"}, "matchExpressions": [
        {"key": "tier", "operator": "In", "values": ["b", "a"]},
        {"key": "x", "operator": "Exists"}, {"key": "y", "operator": "DoesNotExist"},
        {"key": "z", "operator": "NotIn", "values": ["1"]}]}, "s")
    assert selector_text(sel) == "app=web,tier in (a,b),x,!y,z notin (1)"
    assert selector_text(parse_selector({}, "s")) == "<none>"


@pytest.mark.parametrize("args,input,words", [
    (("policy", "apply", "-f", "-"), "kind: NetworkPolicy\n", "apiVersion"),
    (("policy", "apply", "-f", "-"), "a: [\n", "not valid YAML or JSON"),
    (("policy", "apply", "-f", "-"), "\xff", ""),
    (("policy", "apply", "-f", "-"), "[" * 50_000, "nested too deeply"),
    (("policy", "apply", "-f", "-"), "spec: {? [a, b] : c}\n", "field name is a list"),
    (("policy", "apply", "-f", "-"), "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n"
        for p, c in zip("abcdefg", "bcdefgh", strict=True)), "excessive aliasing"),
    (("policy", "delete", "no-slash"), None, "NAMESPACE/NAME"),
    (("namespaces", "label", "x", "bad"), None, "key=value"),
    (("policy", "get", "-n", "UPPER"), None, "namespace 'UPPER'"),
    (("trace", "x/a", "Y/b", "--port", "80"), None, "DST 'Y/b': give a pod IP"),
    (("trace", "x/" + "a" * 300, "y/b"), None, "SRC 'x/aaa"),  # shortened, refused first
])
def test_bad_input_is_one_line_before_etcd(args, input, words):
    r = run(*args, input=input)
    assert r.exit_code == 1 and "Traceback" not in r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0]
    assert "etcd" not in lines[0]


def test_a_policy_too_large_to_be_read_back_is_refused():
    big = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": "big", "annotations": {"note": "x" * 300_000}},
           "spec": {"podSelector": {}}}
    r = run("policy", "apply", "-f", "-", input=json.dumps(big))
    assert r.exit_code == 1 and "default/big is 300" in r.output and "at most 262144" in r.output


def test_yaml_output_only_where_objects_are_printed():
    assert run("leases", "list", "-o", "yaml").exit_code == 2  # click's usage error


MANIFEST = ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {%s}\n"
            "spec: {podSelector: {}}\n")


@pytest.mark.parametrize("meta, words", [
    ("name: " + "a" * 100_000, "metadata.name: 'aaaa"),
    ("name: x, namespace: " + "n" * 100_000, "metadata.namespace: 'nnnn"),
    ("name: x, labels: {k: " + "v" * 100_000 + "}", "invalid label value 'vvvv"),
    ("name: 2001-01-01", "metadata.name: must be a string, not a date"),
    ("name: 2001-01-01T10:00:00Z", "metadata.name: must be a string, not a timestamp"),
    ("name: x, namespace: 2001-01-01", "metadata.namespace: must be a string, not a date"),
    ("name: x, creationTimestamp: 2001-01-01",
     "metadata.creationTimestamp: must be a JSON value, not a date"),
    ("name: x, uid: !!binary aGVsbG8=", "metadata.uid: must be a JSON value, not binary data"),
    ("name: x, generation: .nan", "metadata.generation: must be a finite number"),
])
def test_policy_apply_errors_are_bounded_and_in_yaml_terms(meta, words):
    """A 100 000-character name was echoed whole; a date read
    ``datetime.date(2001, 1, 1) must be a non-empty string``; a date or binary value in
    metadata was a TypeError traceback, a NaN was stored as invalid JSON."""
    r = CliRunner().invoke(cli, [*NOWHERE, "policy", "apply", "-f", "-"],
                           input=MANIFEST % meta)
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), (r.output, r.exception)
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], lines
    assert len(lines[0]) < 300 and "datetime" not in lines[0]


def test_policy_cli_arguments_are_echoed_bounded():
    r = run("policy", "get", "-n", "N" * 100_000)
    assert r.exit_code == 1 and len(r.output) < 300 and "namespace 'NNNN" in r.output
    r = run("policy", "delete", "x" * 100_000)
    assert r.exit_code == 1 and len(r.output) < 300 and "NAMESPACE/NAME" in r.output
