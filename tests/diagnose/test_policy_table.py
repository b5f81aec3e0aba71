# ruff: noqa: E501 (nft listings are long lines, kept as nft prints them)
"""The policy-table check's normalizer and comparison, pure: a compiled table against the
forms nft 1.0.6 lists it in (one statement per line, counters with values, handles,
merged and prefix ranges, ``device`` for one device), and each kind of drift named."""

from __future__ import annotations

import pytest

from overlay.diagnose.policy_table import (
    RECHECK,
    check_twice,
    diff_tables,
    judge_table,
    parse_table,
)
from overlay.policy.model import parse_policy
from overlay.policy.nft import LocalPod, compile_table

from ..policy.cases import CASES, model_namespaces, model_pods

COMPILED = """\
table inet overlay-policy {
\tset sel { type ipv4_addr; elements = { 10.244.1.10, 10.244.1.12 }; }
\tset peer { type ipv4_addr; flags interval; auto-merge; elements = { 10.244.2.0-10.244.2.255, 10.244.3.0-10.244.3.7 }; }
\tset port { type inet_proto . inet_service; flags interval; auto-merge; elements = { tcp . 80-81, udp . 53 }; }
\tset pod_sources { type ifname . ipv4_addr; elements = { "veth0" . 10.244.1.10 }; }
\tcounter allowed { }
\tchain pod_sources_check {
\t\ttype filter hook ingress devices = { "veth0" } priority -500; policy accept;
\t\tmeta protocol ip iifname . ip saddr != @pod_sources counter name "allowed" drop
\t}
\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\tct state established,related accept
\t\tip daddr @sel jump check_ingress
\t}
\tchain check_ingress {
\t\tip daddr @sel ip saddr @peer meta l4proto . th dport @port counter name "allowed" accept
\t\tdrop
\t}
}
"""

# As `nft -a list table` prints COMPILED once loaded and used.
LISTED = """\
table inet overlay-policy { # handle 7
\tcounter allowed { # handle 5
\t\tpackets 12 bytes 720
\t}

\tset sel { # handle 1
\t\ttype ipv4_addr
\t\telements = { 10.244.1.10,
\t\t\t     10.244.1.12 }
\t}

\tset peer { # handle 2
\t\ttype ipv4_addr
\t\tflags interval
\t\tauto-merge
\t\telements = { 10.244.2.0/24, 10.244.3.0/29 }
\t}

\tset port { # handle 3
\t\ttype inet_proto . inet_service
\t\tflags interval
\t\tauto-merge
\t\telements = { tcp . 80-81, udp . 53 }
\t}

\tset pod_sources { # handle 4
\t\ttype ifname . ipv4_addr
\t\telements = { "veth0" . 10.244.1.10 }
\t}

\tchain pod_sources_check { # handle 8
\t\ttype filter hook ingress device "veth0" priority -500; policy accept;
\t\tmeta protocol ip iifname . ip saddr != @pod_sources counter name "allowed" drop # handle 9
\t}

\tchain forward { # handle 10
\t\ttype filter hook forward priority filter; policy accept;
\t\tct state established,related accept # handle 11
\t\tip daddr @sel jump check_ingress # handle 12
\t}

\tchain check_ingress { # handle 13
\t\tip daddr @sel ip saddr @peer meta l4proto . th dport @port counter name "allowed" accept # handle 14
\t\tdrop # handle 15
\t}
}
"""


def test_the_listing_equals_the_compiled_text() -> None:
    want, got = parse_table(COMPILED), parse_table(LISTED)
    assert want is not None and got is not None
    assert diff_tables(want, got) == []
    assert len(want.sets) == 4 and want.rule_count() == 5
    assert judge_table(COMPILED, LISTED).status == "pass"


def test_every_model_case_parses_to_itself() -> None:
    pods = model_pods()
    local = [LocalPod(p, f"veth{i}") for i, p in enumerate(pods) if p.node == "node1"]
    for case in CASES:
        text = compile_table(local, pods, model_namespaces(),
                             [parse_policy(p) for p in case.policies]).text
        t = parse_table(text)
        assert t is not None and diff_tables(t, t) == []
        assert judge_table(text, text).status == "pass", case.name


@pytest.mark.parametrize("edit,words", [
    (("10.244.1.12 }", "10.244.1.12, 10.244.1.99 }"), "set sel: extra element 10.244.1.99"),
    (("10.244.3.0/29", "10.244.3.0/30"), "set peer: element 10.244.3.4-10.244.3.7 missing"),
    (("udp . 53", "udp . 54"), "set port: element udp . 53 missing"),
    (("\t\tdrop # handle 15\n", ""), "chain check_ingress: rule missing: drop"),
    (("\t\tip daddr @sel jump check_ingress # handle 12\n",
      "\t\tip daddr @sel jump check_ingress # handle 12\n\t\tip saddr 10.0.0.0/8 accept\n"),
     "chain forward: extra rule: ip saddr 10.0.0.0/8 accept"),
    (("device \"veth0\"", "devices = { veth0, veth9 }"), "chain pod_sources_check: header"),
    (("\tcounter allowed { # handle 5\n\t\tpackets 12 bytes 720\n\t}\n", ""),
     "counter allowed missing"),
    (("flags interval\n\t\tauto-merge\n\t\telements = { 10.244.2.0/24",
      "elements = { 10.244.2.0/24"), "set peer: type ipv4_addr instead of"),
])
def test_each_drift_is_named(edit: tuple[str, str], words: str) -> None:
    assert edit[0] in LISTED
    result = judge_table(COMPILED, LISTED.replace(*edit))
    assert result.status == "fail" and words in result.found, result.found
    assert "restart overlayd" in result.fix


def test_rules_out_of_order_fail() -> None:
    swapped = LISTED.replace(
        "\t\tct state established,related accept # handle 11\n"
        "\t\tip daddr @sel jump check_ingress # handle 12\n",
        "\t\tip daddr @sel jump check_ingress # handle 12\n"
        "\t\tct state established,related accept # handle 11\n")
    result = judge_table(COMPILED, swapped)
    assert result.status == "fail" and "chain forward: rules out of order from rule 1" \
        in result.found


def test_no_policy_no_table_passes_but_a_missing_table_fails() -> None:
    empty = compile_table([], [], {}, []).text
    assert judge_table(empty, None).status == "pass"
    assert judge_table(empty, "table inet overlay-policy {\n}\n").status == "pass"
    missing = judge_table(COMPILED, None)
    assert missing.status == "fail" and "no inet overlay-policy table" in missing.found
    assert judge_table(empty, LISTED).status == "fail"  # a table nobody compiles
    assert parse_table("table inet other {\n}\n") is None


def test_a_table_being_replaced_is_looked_at_twice() -> None:
    kernel = iter([LISTED.replace("udp . 53", "udp . 54"), LISTED])
    waits: list[float] = []
    result = check_twice(lambda: COMPILED, lambda: next(kernel), waits.append)
    assert result.status == "pass" and waits == [RECHECK]
    stays = check_twice(lambda: COMPILED, lambda: LISTED.replace("udp . 53", "udp . 54"),
                        waits.append)
    assert stays.status == "fail" and waits == [RECHECK, RECHECK]
