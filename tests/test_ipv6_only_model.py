"""IPv6-only networks (EnableIPv4 false): config, lease key and value, the acceptance rule,
the lease's identity, subnet.env.  Pure values, no I/O."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Interface, IPv6Network

import pytest

from overlay.config import parse_network_config
from overlay.errors import ConfigError, SubnetEnvError
from overlay.lease import (
    EventType,
    Lease,
    LeaseAttrs,
    LeaseEvent,
    LeaseRules,
    LeaseView,
    Reason,
    check_remote,
    decode_kv,
    judge_all,
    key_to_subnet,
    lease_key,
    parse_key_name,
    parse_subnet_arg,
    subnet_to_key,
)
from overlay.subnetenv import SubnetEnv, env_for_lease, parse_subnet_env

ONLY6 = {"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": "fd00:10:244::/56"}
CFG = parse_network_config(ONLY6)
PREFIX = "/overlay/network/subnets/"
MAC = "0e:00:00:00:00:{:02x}"


def net6(i: int) -> IPv6Network:
    return IPv6Network(f"fd00:10:244:{i:x}::/64")


def attrs6(i: int, mac: str | None = None) -> LeaseAttrs:
    return LeaseAttrs(IPv6Address(f"fd00:192:168:1::{i}"), vtep_mac=mac or MAC.format(i))


def lease6(i: int, rev: int | None = None, **kw) -> Lease:
    rev = rev or i
    return Lease(net6(i), attrs6(i, **kw), etcd_lease_id=i, mod_revision=rev,
                 create_revision=rev)


def rules(own: int = 1) -> LeaseRules:
    a = attrs6(own)
    return LeaseRules.from_config(CFG, (net6(own),), (a.public_ip,), a.vtep_mac)


# ---- config -----------------------------------------------------------------------------

def test_ipv6_only_config_is_valid_its_primary_family_is_ipv6():
    assert CFG.ipv6_only and not CFG.dual_stack and CFG.ipv4_network is None
    assert CFG.network == IPv6Network("fd00:10:244::/56") == CFG.ipv6_network
    assert (CFG.subnet_len, CFG.subnet_min, CFG.subnet_max) == (
        64, IPv6Address("fd00:10:244:1::"), IPv6Address("fd00:10:244:ff::"))
    assert CFG.subnet_count == 255 and next(CFG.iter_subnets()) == net6(1)
    assert CFG.in_range(net6(7)) and not CFG.in_range(IPv4Network("10.244.7.0/24"))
    assert not CFG.in_range(net6(0))  # below IPv6SubnetMin


def test_ipv6_only_config_round_trips_without_ipv4_fields():
    out = CFG.to_dict()
    assert out["EnableIPv4"] is False and "Network" not in out and "SubnetLen" not in out
    assert out["IPv6Network"] == "fd00:10:244::/56" and out["IPv6SubnetLen"] == 64
    assert parse_network_config(CFG.to_json()) == CFG


def test_iterating_a_huge_ipv6_range_is_lazy():
    big = parse_network_config({**ONLY6, "IPv6Network": "fd00::/16"})
    assert big.subnet_count == (1 << 48) - 1
    it = big.iter_subnets()
    assert [next(it), next(it)] == [IPv6Network("fd00:0:0:1::/64"), IPv6Network("fd00:0:0:2::/64")]


@pytest.mark.parametrize("extra, words", [
    ({"EnableIPv6": False}, "IPv6Network: given without"),
    ({"IPv6Network": None}, "IPv6Network: missing"),
    ({"Network": "10.244.0.0/16"}, "Network: given with \"EnableIPv4\": false"),
    ({"SubnetLen": 24}, "SubnetLen: given with"),
    ({"IPv6Network": "10.244.0.0/16"}, "is IPv4"),
    ({"IPv6SubnetLen": 130}, "IPv6SubnetLen"),
])
def test_a_bad_ipv6_only_config_is_one_line_naming_the_field(extra, words):
    with pytest.raises(ConfigError) as e:
        parse_network_config({**ONLY6, **extra})
    assert words in str(e.value) and "\n" not in str(e.value)


def test_both_families_off_is_an_error_saying_how_to_have_one():
    with pytest.raises(ConfigError) as e:
        parse_network_config({"EnableIPv4": False, "EnableIPv6": False})
    assert "both false" in str(e.value) and "EnableIPv6 to true" in str(e.value)


# ---- key codec and identity -------------------------------------------------------------

def test_ipv6_only_key_is_the_ipv6_half_alone_and_round_trips():
    assert subnet_to_key(net6(1)) == "fd00:10:244:1::-64"
    name = parse_key_name("fd00:10:244:1::-64")
    assert (name.subnet, name.ipv6) == (net6(1), None)
    assert key_to_subnet(PREFIX + "fd00:10:244:1::-64", PREFIX) == net6(1)  # the identity
    assert lease_key(lease6(1)) == "fd00:10:244:1::-64"
    assert parse_subnet_arg("fd00:10:244:1::/64") == parse_subnet_arg("fd00:10:244:1::-64")
    with pytest.raises(ValueError):
        subnet_to_key(net6(1), net6(2))  # no second half


@pytest.mark.parametrize("name", [
    "fd00:10:244:1:0:0:0:0-64",  # not RFC 5952
    "FD00:10:244:1::-64",
    "fd00:10:244:1::1-64",       # host bits
    "fd00:10:244:1::-064",
    "fd00:10:244:1::-64\n",
    "fd00:10:244:1::-129",
    "fd00:10:244:1::-64&fd00:10:244:2::-64",
])
def test_non_canonical_ipv6_only_keys_are_bad_keys(name):
    with pytest.raises(ValueError):
        parse_key_name(name)
    got = decode_kv(PREFIX, (PREFIX + name).encode(), b"{}")
    assert got[0] == Reason.BAD_KEY


# ---- value codec -------------------------------------------------------------------------

def test_ipv6_only_value_is_flannels_shape_with_only_the_ipv6_fields():
    raw = attrs6(11).to_json()
    assert json.loads(raw) == {"PublicIP": "0.0.0.0", "PublicIPv6": "fd00:192:168:1::11",
                               "BackendType": "vxlan",
                               "BackendV6Data": {"VNI": 1, "VtepMAC": MAC.format(11)}}
    got = decode_kv(PREFIX, (PREFIX + "fd00:10:244:1::-64").encode(), raw.encode())
    assert got == (parse_key_name("fd00:10:244:1::-64"), attrs6(11))
    assert attrs6(11).ipv6_only and not attrs6(11).dual_stack


@pytest.mark.parametrize("value, words", [
    ({"PublicIP": "192.168.1.9", "PublicIPv6": "fd00::9"}, "PublicIP 192.168.1.9"),
    ({"PublicIPv6": "fd00::9", "BackendData": {"VtepMAC": "0e:00:00:00:00:09"}}, "BackendData"),
    ({"PublicIP": "0.0.0.0"}, "no PublicIPv6"),
    ({"PublicIPv6": 7}, "PublicIPv6 must be a string"),
    ({"PublicIPv6": "fe80::1%eth0"}, "scope"),
])
def test_an_ipv6_only_value_that_says_more_or_less_is_a_bad_value(value, words):
    got = decode_kv(PREFIX, (PREFIX + "fd00:10:244:9::-64").encode(),
                    json.dumps(value).encode())
    assert got[0] == Reason.BAD_VALUE and words in got[1], got
    assert got[2] == net6(9)  # the key still names its subnet


# ---- the acceptance rule -----------------------------------------------------------------

def test_a_good_ipv6_only_remote_is_accepted():
    assert check_remote(lease6(2), rules()).ok


@pytest.mark.parametrize("lease, reason", [
    (Lease(IPv4Network("10.244.2.0/24"), LeaseAttrs(IPv4Address("192.168.1.2"))),
     Reason.FAMILY_MISMATCH),
    (Lease(IPv6Network("fd00:10:245:2::/64"), attrs6(2)), Reason.SUBNET_OUTSIDE_NETWORK),
    (Lease(IPv6Network("fd00:10:244:2::/80"), attrs6(2)), Reason.SUBNET_LENGTH),
    (lease6(1), Reason.OWN_SUBNET),
    (Lease(net6(2), LeaseAttrs(IPv6Address("ff02::1"))), Reason.PUBLIC_IP_UNUSABLE),
    (Lease(net6(2), LeaseAttrs(IPv6Address("fe80::2"))), Reason.PUBLIC_IP_UNUSABLE),
    (Lease(net6(2), LeaseAttrs(IPv6Address("::1"))), Reason.PUBLIC_IP_UNUSABLE),
    (Lease(net6(2), LeaseAttrs(IPv6Address("fd00:10:244:2::9"))), Reason.PUBLIC_IP_IN_NETWORK),
    (Lease(net6(2), attrs6(1)), Reason.PUBLIC_IP_OWN),
    (Lease(net6(2), attrs6(2, mac="01:00:5e:00:00:01")), Reason.VTEP_MAC_UNUSABLE),
    (Lease(net6(2), LeaseAttrs(IPv6Address("fd00:192:168:1::2"), vni=7)), Reason.VNI_MISMATCH),
])
def test_the_rule_rejects_a_bad_ipv6_only_remote_with_its_reason(lease, reason):
    assert check_remote(lease, rules()).reason == reason


def test_an_ipv6_only_key_in_a_network_with_ipv4_is_rejected_too():
    dual = parse_network_config({"Network": "10.244.0.0/16", "EnableIPv6": True,
                                 "IPv6Network": "fd00:10:244::/56"})
    v = check_remote(lease6(2), LeaseRules.from_config(dual))
    assert v.reason == Reason.FAMILY_MISMATCH and "IPv6-only key" in v.detail


def test_a_mixed_store_rejects_each_bad_key_alone_and_claims_macs_by_age():
    ipv4 = Lease(IPv4Network("10.244.3.0/24"), LeaseAttrs(IPv4Address("192.168.1.3")),
                 mod_revision=3, create_revision=3)
    thief = Lease(net6(5), attrs6(5, mac=MAC.format(2)), mod_revision=9, create_revision=9)
    j = judge_all([lease6(2), ipv4, lease6(4), thief], rules())
    assert sorted(x.subnet for x in j.accepted) == [net6(2), net6(4)]
    assert {r.subnet: r.reason for r in j.rejected} == {
        IPv4Network("10.244.3.0/24"): Reason.FAMILY_MISMATCH, net6(5): Reason.VTEP_MAC_CLAIMED}
    assert j.ipv6_rejected == {}  # there is no "IPv6 half" to reject


def test_the_watch_view_keys_ipv6_only_leases_by_their_ipv6_subnet():
    view = LeaseView(own=net6(1), rules=rules())
    batch = view.reset([lease6(1), lease6(2), lease6(3)])
    assert sorted(x.subnet for x in batch.added) == [net6(2), net6(3)]
    moved = Lease(net6(2), attrs6(2, mac=MAC.format(42)), etcd_lease_id=2, mod_revision=7,
                  create_revision=2)
    bad = Lease(IPv4Network("10.244.9.0/24"), LeaseAttrs(IPv4Address("192.168.1.9")),
                mod_revision=8, create_revision=8)
    batch = view.apply([LeaseEvent(EventType.ADDED, moved, 7), LeaseEvent(EventType.ADDED, bad, 8),
                        LeaseEvent(EventType.REMOVED, lease6(3), 9)])
    assert [(o.attrs.vtep_mac, n.attrs.vtep_mac) for o, n in batch.changed] == [
        (MAC.format(2), MAC.format(42))]
    assert [x.subnet for x in batch.removed] == [net6(3)] and not batch.added
    assert view.rejected[IPv4Network("10.244.9.0/24")].reason == Reason.FAMILY_MISMATCH
    assert set(view.leases) == {net6(2)}


def test_an_ipv6_only_lease_has_ipv6_gateway_and_vtep_address_and_no_half():
    lease = lease6(3)
    assert lease.gateway == IPv6Address("fd00:10:244:3::1")
    assert lease.vtep_address == IPv6Interface("fd00:10:244:3::/128")
    assert lease.ipv6_subnet is None and lease.ipv6_vtep_address is None


# ---- subnet.env --------------------------------------------------------------------------

IPV6_ONLY_ENV = ("OVERLAY_IPV6_NETWORK=fd00:10:244::/56\nOVERLAY_IPV6_SUBNET=fd00:10:244:3::1/64\n"
                 "OVERLAY_MTU=1430\nOVERLAY_IPMASQ=false\n")


def test_ipv6_only_subnet_env_has_the_ipv6_pair_alone_as_flannel_writes_it():
    env = env_for_lease(CFG, lease6(3), 1430, False)
    assert env.format() == IPV6_ONLY_ENV
    assert env.network is None and env.subnet is None and env.ipv6_only
    assert parse_subnet_env(IPV6_ONLY_ENV) == env == SubnetEnv(
        None, None, 1430, False, IPv6Network("fd00:10:244::/56"),
        IPv6Interface("fd00:10:244:3::1/64"))


@pytest.mark.parametrize("text, words", [
    ("OVERLAY_MTU=1430\n", "OVERLAY_SUBNET is missing (and so is OVERLAY_IPV6_SUBNET"),
    ("OVERLAY_NETWORK=10.244.0.0/16\nOVERLAY_MTU=1430\n", "OVERLAY_SUBNET is missing"),
    ("OVERLAY_IPV6_SUBNET=fd00:10:244:3::1/64\nOVERLAY_MTU=1430\n", "OVERLAY_IPV6_NETWORK is"),
])
def test_a_subnet_env_without_a_subnet_of_either_family_is_one_clear_error(text, words):
    with pytest.raises(SubnetEnvError) as e:
        parse_subnet_env(text)
    assert words in str(e.value)
