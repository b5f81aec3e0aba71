"""The pod registry's rule for a dual-stack pod: its IPv6 address lies in the IPv6 half
of the lease whose IPv4 subnet holds its IPv4 address."""

import json
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest

from overlay.cluster import pods
from overlay.cluster.pods import PodRecord, PodRules
from overlay.config import parse_network_config
from overlay.lease import Lease, LeaseAttrs, Rejection
from tests.cluster.test_pods import BASE, kv, mutate, reason, record

N1 = IPv4Network("10.244.1.0/24")
N2 = IPv4Network("10.244.2.0/24")
V6_1 = IPv6Network("fd00:10:244:1::/64")
V6_2 = IPv6Network("fd00:10:244:2::/64")
RULES = PodRules({"node1": N1}, frozenset({N1, N2}), {N1: V6_1, N2: V6_2})


def test_a_dual_stack_record_round_trips_and_is_accepted():
    r = record(ips=(record().ips[0], IPv6Address("fd00:10:244:1::5")))
    got = pods.judge_pod(kv(pods.encode_pod(r)), BASE, RULES)
    assert isinstance(got, PodRecord) and got.ips == r.ips
    assert json.loads(pods.encode_pod(r))["ips"] == ["10.244.1.5", "fd00:10:244:1::5"]
    assert isinstance(pods.judge_pod(kv(pods.encode_pod(r)), BASE,
                                     PodRules({}, frozenset({N1, N2}), {N1: V6_1})), PodRecord)


@pytest.mark.parametrize("ips", [
    ["10.244.1.5", "fd00:10:244:2::5"],   # another node's IPv6 half
    ["10.244.1.5", "fd00:99::5"],          # no lease's
    ["10.244.2.5", "fd00:10:244:2::5"],    # node1 holds 10.244.1.0/24
])
def test_an_ipv6_address_outside_the_nodes_ipv6_half_is_rejected(ips):
    assert reason(pods.judge_pod(kv(mutate(ips=ips)), BASE, RULES)) == \
        pods.PodReason.IP_OUTSIDE_SUBNET


def test_an_ipv6_address_on_a_node_without_an_ipv6_half_is_rejected():
    v4_only = PodRules({"node1": N1}, frozenset({N1, N2}))
    got = pods.judge_pod(kv(mutate(ips=["10.244.1.5", "fd00:10:244:1::5"])), BASE, v4_only)
    assert reason(got) == pods.PodReason.IP_OUTSIDE_SUBNET


@pytest.mark.parametrize("ips", [
    ["fd00:10:244:1::5", "10.244.1.5"],         # the IPv4 address comes first
    ["10.244.1.5", "FD00:10:244:1::5"],         # one spelling: RFC 5952
    ["10.244.1.5", "fd00:10:244:1:0:0:0:5"],
    ["10.244.1.5", "fd00:10:244:1::5%eth0"],
    ["10.244.1.5", "fd00:10:244:1::5", "fd00:10:244:1::5"],
])
def test_malformed_ipv6_entries_are_bad_values(ips):
    assert reason(pods.judge_pod(kv(mutate(ips=ips)), BASE, RULES)) == pods.PodReason.BAD_VALUE


def test_rules_from_leases_carry_each_leases_ipv6_half():
    config = parse_network_config(json.dumps({
        "Network": "10.244.0.0/16", "EnableIPv6": True, "IPv6Network": "fd00:10:244::/56"}))
    attrs = LeaseAttrs(public_ip=IPv4Address("192.168.1.11"),
                       vtep_mac="0e:00:00:00:00:01",
                       public_ipv6=IPv6Address("fd00:192:168:1::11"), v6_vni=1,
                       v6_vtep_mac="0e:00:00:00:00:02")
    leases = [Lease(N1, attrs, ipv6_subnet=V6_1)]
    rules = pods.rules_from_leases(config, leases)
    assert rules.lease_ipv6 == {N1: V6_1}
    # an IPv6 half the lease rule rejects (no PublicIPv6) holds no pod IPv6 address
    bare = replace(attrs, public_ipv6=None)
    assert pods.rules_from_leases(config, [Lease(N1, bare, ipv6_subnet=V6_1)]).lease_ipv6 == {}


def test_duplicates_across_families_are_reported_in_order():
    a = record(ips=(record().ips[0], IPv6Address("fd00:10:244:1::5")))
    b = record(name="web-2", ips=a.ips)
    assert list(pods.duplicate_ips([a, b])) == list(a.ips)


@pytest.mark.parametrize("v6", ["fd00:10:244:1::", "fd00:10:244:1::1"])
def test_the_ipv6_halfs_node_addresses_are_never_a_pods(v6):
    """The IPv6 half's network address (the IPv6 VTEP's) and gateway (the bridge's)."""
    got = pods.judge_pod(kv(mutate(ips=["10.244.1.5", v6])), BASE, RULES)
    assert isinstance(got, Rejection) and got.reason == pods.PodReason.IP_OUTSIDE_SUBNET
    assert f"{v6} is node fd00:10:244:1::/64's own address" in got.detail
