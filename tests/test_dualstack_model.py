"""Dual-stack data model: config fields, lease values and keys, subnet.env (issue 14).

The Flannel texts below are what Flannel v0.26's Go code writes (``json.Marshal`` of
``lease.LeaseAttrs`` and of ``vxlanLeaseAttrs``; ``subnet.MakeSubnetKey``), typed by hand
from its struct definitions: field order, ``PublicIPv6`` without omitempty, no spaces.
"""

from __future__ import annotations

import json
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)

import pytest

from overlay.config import VXLAN_OVERHEAD, VXLAN_OVERHEAD_V6, parse_network_config
from overlay.errors import ConfigError, RegistryError, SubnetEnvError
from overlay.lease import (
    Lease,
    LeaseAttrs,
    Reason,
    decode_kv,
    diff_leases,
    key_to_name,
    key_to_subnet,
    lease_key,
    parse_key_name,
    subnet_to_key,
)
from overlay.subnetenv import SubnetEnv, parse_subnet_env

V4 = IPv4Network("10.244.1.0/24")
V6 = IPv6Network("fd00:10:244:1::/64")
MAC4, MAC6 = "0e:11:22:33:44:55", "0e:66:77:88:99:aa"
PREFIX = "/coreos.com/network/subnets/"
DUAL = {"Network": "10.244.0.0/16", "EnableIPv6": True, "IPv6Network": "fd00:10:244::/56"}

FLANNEL_DUAL_VALUE = (
    '{"PublicIP":"192.168.1.11","PublicIPv6":"fd00:192:168:1::11","BackendType":"vxlan",'
    '"BackendData":{"VNI":1,"VtepMAC":"0e:11:22:33:44:55"},'
    '"BackendV6Data":{"VNI":1,"VtepMAC":"0e:66:77:88:99:aa"}}')
FLANNEL_V4_VALUE = ('{"PublicIP":"192.168.1.12","PublicIPv6":null,"BackendType":"vxlan",'
                    '"BackendData":{"VNI":1,"VtepMAC":"0e:11:22:33:44:56"}}')


def dual_attrs() -> LeaseAttrs:
    return LeaseAttrs(IPv4Address("192.168.1.11"), vtep_mac=MAC4,
                      public_ipv6=IPv6Address("fd00:192:168:1::11"), v6_vni=1,
                      v6_vtep_mac=MAC6)


# ---- config -----------------------------------------------------------------------------

def test_dual_stack_config_gets_flannels_defaults():
    cfg = parse_network_config(DUAL)
    assert (cfg.enable_ipv4, cfg.enable_ipv6) == (True, True)
    assert cfg.ipv6_network == IPv6Network("fd00:10:244::/56")
    assert cfg.ipv6_subnet_len == 64
    # the first subnet is skipped, as for IPv4; the last is the network's last
    assert cfg.ipv6_subnet_min == IPv6Address("fd00:10:244:1::")
    assert cfg.ipv6_subnet_max == IPv6Address("fd00:10:244:ff::")
    assert cfg.ipv6_subnet_count == 255
    assert cfg.ipv6_subnet_at(0) == V6 and cfg.ipv6_in_range(V6)
    assert not cfg.ipv6_in_range(IPv6Network("fd00:10:244::/64"))
    with pytest.raises(IndexError):
        cfg.ipv6_subnet_at(255)
    # a small network is split in four, as Flannel does
    small = parse_network_config({**DUAL, "IPv6Network": "fd00:10:244::/120"})
    assert small.ipv6_subnet_len == 122


def test_dual_stack_config_round_trips_and_ipv4_only_is_written_as_before():
    cfg = parse_network_config({**DUAL, "IPv6SubnetLen": 80,
                                "IPv6SubnetMin": "fd00:10:244:2::",
                                "IPv6SubnetMax": "fd00:10:244:3::"})
    assert (cfg.ipv6_subnet_len, str(cfg.ipv6_subnet_min)) == (80, "fd00:10:244:2::")
    assert parse_network_config(cfg.to_json()) == cfg
    assert cfg.to_dict()["EnableIPv6"] is True
    v4 = parse_network_config({"Network": "10.244.0.0/16"})
    assert v4.enable_ipv6 is False and v4.ipv6_network is None
    assert set(v4.to_dict()) == {"Network", "SubnetLen", "SubnetMin", "SubnetMax", "Backend"}


def test_ipv4_only_config_reads_flannels_explicit_dual_stack_zero_values():
    cfg = parse_network_config({"Network": "10.244.0.0/16", "EnableIPv6": False,
                                "IPv6Network": "", "IPv6SubnetLen": 0})
    assert cfg == parse_network_config({"Network": "10.244.0.0/16"})


@pytest.mark.parametrize("extra, words", [
    ({"IPv6Network": None}, ["IPv6Network", "missing"]),
    ({"IPv6Network": "10.245.0.0/16"}, ["IPv6Network", "IPv4"]),
    ({"IPv6Network": "fd00:10:244::1/56"}, ["host bits", "fd00:10:244::/56"]),
    ({"IPv6Network": "FD00:10:244::/56"}, ["canonical", "fd00:10:244::/56"]),
    ({"IPv6Network": "fd00:10:244:0::/56"}, ["canonical"]),
    ({"IPv6Network": "fd00:10:244::"}, ["no prefix length"]),
    ({"IPv6Network": "fd00::/125"}, ["too small", "/124"]),
    ({"IPv6Network": "fe80::/64"}, ["link-local"]),
    ({"IPv6Network": "ff02::/16"}, ["multicast"]),
    ({"IPv6Network": "::/0"}, ["overlaps", "::/8"]),
    ({"IPv6Network": "::ffff:0:0/96"}, ["IPv4-mapped"]),
    ({"IPv6Network": 56}, ["IPv6Network", "CIDR string"]),
    ({"IPv6SubnetLen": 127}, ["IPv6SubnetLen", "at most 126"]),
    ({"IPv6SubnetLen": 57}, ["IPv6SubnetLen", "fewer than four", "58"]),
    ({"IPv6SubnetLen": "64"}, ["IPv6SubnetLen", "integer"]),
    ({"IPv6SubnetLen": True}, ["IPv6SubnetLen", "integer"]),
    ({"IPv6SubnetMin": "fd00:10:245::"}, ["IPv6SubnetMin", "outside"]),
    ({"IPv6SubnetMin": "fd00:10:244:1::1"}, ["IPv6SubnetMin", "boundary"]),
    ({"IPv6SubnetMax": "banana"}, ["IPv6SubnetMax", "not an IPv6"]),
    ({"IPv6SubnetMax": 5}, ["IPv6SubnetMax", "address string"]),
    ({"IPv6SubnetMin": "fd00:10:244:9::", "IPv6SubnetMax": "fd00:10:244:3::"},
     ["IPv6SubnetMin", "above"]),
])
def test_bad_ipv6_config_is_one_line_naming_the_field(extra, words):
    with pytest.raises(ConfigError) as e:
        parse_network_config({**DUAL, **extra})
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg


def test_ipv6_fields_without_enable_ipv6_are_refused_not_ignored():
    with pytest.raises(ConfigError, match='IPv6Network: given without "EnableIPv6": true'):
        parse_network_config({"Network": "10.244.0.0/16", "IPv6Network": "fd00::/56"})


def test_the_ipv6_overhead_is_twenty_bytes_more():
    assert VXLAN_OVERHEAD_V6 - VXLAN_OVERHEAD == 20  # IPv6 header 40 vs IPv4 20


# ---- keys -------------------------------------------------------------------------------

def test_dual_stack_key_is_flannels():
    assert subnet_to_key(V4, V6) == "10.244.1.0-24&fd00:10:244:1::-64"
    assert subnet_to_key(V4) == "10.244.1.0-24"
    name = parse_key_name("10.244.1.0-24&fd00:10:244:1::-64")
    assert (name.subnet, name.ipv6) == (V4, V6)
    assert parse_key_name("10.244.1.0-24").ipv6 is None
    key = PREFIX + "10.244.1.0-24&fd00:10:244:1::-64"
    assert key_to_subnet(key, PREFIX) == V4  # the IPv4 half is the identity
    assert key_to_name(key, PREFIX).ipv6 == V6
    assert lease_key(Lease(V4, dual_attrs(), ipv6_subnet=V6)) == key[len(PREFIX):]


@pytest.mark.parametrize("name", [
    "10.244.1.0-24&",
    "10.244.1.0-24&fd00:10:244:1::",
    "10.244.1.0-24&fd00:10:244:1::-129",
    "10.244.1.0-24&fd00:10:244:1::1-64",  # host bits
    "10.244.1.0-24&FD00:10:244:1::-64",  # Go prints lower case
    "10.244.1.0-24&fd00:10:244:1:0:0:0:0-64",  # not compressed as Go prints it
    "10.244.1.0-24&fd00:0010:244:1::-64",  # leading zeros
    "10.244.1.0-24&fd00:10:244:1::-064",
    "10.244.1.0-24&fd00:10:244:1::-64\n",
    "10.244.1.0-24&fd00:10:244:1::-64&fd00:10:244:2::-64",
    "fd00:10:244:1::-64&10.244.1.0-24",
    "10.244.1.0-24&::ffff:10.0.0.0-120",
])
def test_non_canonical_dual_keys_are_bad_keys(name):
    with pytest.raises(ValueError):
        parse_key_name(name)
    got = decode_kv(PREFIX, (PREFIX + name).encode(), FLANNEL_DUAL_VALUE.encode())
    assert got[0] == Reason.BAD_KEY


# ---- lease values -----------------------------------------------------------------------

def test_our_dual_stack_value_is_byte_for_byte_flannels():
    assert dual_attrs().to_json() == FLANNEL_DUAL_VALUE


def test_flannels_dual_stack_value_reads_back_whole():
    got = decode_kv(PREFIX, (PREFIX + "10.244.1.0-24&fd00:10:244:1::-64").encode(),
                    FLANNEL_DUAL_VALUE.encode())
    assert len(got) == 2
    name, attrs = got
    assert (name.subnet, name.ipv6) == (V4, V6)
    assert attrs == dual_attrs() and attrs.dual_stack
    assert attrs.to_json() == FLANNEL_DUAL_VALUE


def test_flannels_ipv4_only_value_with_a_null_ipv6_reads_as_ipv4_only():
    attrs = LeaseAttrs.from_json(FLANNEL_V4_VALUE)
    assert attrs.public_ipv6 is None and not attrs.dual_stack
    assert attrs.vtep_mac == "0e:11:22:33:44:56"
    # and an IPv4-only value is still written exactly as before
    assert attrs.to_json() == ('{"PublicIP": "192.168.1.12", "BackendType": "vxlan", '
                               '"BackendData": {"VNI": 1, "VtepMAC": "0e:11:22:33:44:56"}}')


def test_unknown_backend_v6_data_keys_survive_a_round_trip():
    obj = json.loads(FLANNEL_DUAL_VALUE)
    obj["BackendV6Data"]["Future"] = [1, 2]
    attrs = LeaseAttrs.from_dict(obj)
    assert attrs.v6_extra == (("Future", [1, 2]),)
    assert json.loads(attrs.to_json())["BackendV6Data"] == obj["BackendV6Data"]


def test_an_ipv6_public_ip_without_v6_backend_data_is_still_dual_stack():
    attrs = LeaseAttrs(IPv4Address("192.168.1.11"), vtep_mac=MAC4,
                       public_ipv6=IPv6Address("fd00::11"))
    out = json.loads(attrs.to_json())
    assert out["PublicIPv6"] == "fd00::11" and "BackendV6Data" not in out
    assert LeaseAttrs.from_json(attrs.to_json()) == attrs


@pytest.mark.parametrize("change", [
    {"PublicIPv6": 5},
    {"PublicIPv6": "192.168.1.11"},
    {"PublicIPv6": "fe80::1%eth0"},
    {"PublicIPv6": "fd00::zz"},
    {"BackendV6Data": "x"},
    {"BackendV6Data": {"VNI": "1"}},
    {"BackendV6Data": {"VNI": 1 << 24}},
    {"BackendV6Data": {"VtepMAC": 7}},
    {"BackendV6Data": {"VtepMAC": "0e:66:77"}},
])
def test_a_bad_ipv6_half_is_a_bad_value(change):
    raw = json.dumps({**json.loads(FLANNEL_DUAL_VALUE), **change})
    with pytest.raises(RegistryError):
        LeaseAttrs.from_json(raw)
    got = decode_kv(PREFIX, (PREFIX + "10.244.1.0-24&fd00:10:244:1::-64").encode(),
                    raw.encode())
    assert got[0] == Reason.BAD_VALUE and got[2] == V4


# ---- Lease ------------------------------------------------------------------------------

def test_lease_ipv6_gateway_and_vtep_address():
    lease = Lease(V4, dual_attrs(), ipv6_subnet=V6)
    assert lease.ipv6_gateway == IPv6Address("fd00:10:244:1::1")
    assert lease.ipv6_vtep_address == IPv6Interface("fd00:10:244:1::/128")
    assert lease.gateway == IPv4Address("10.244.1.1")
    assert lease.vtep_address == IPv4Interface("10.244.1.0/32")
    v4 = Lease(V4, LeaseAttrs(IPv4Address("192.168.1.11")))
    assert v4.ipv6_subnet is None and v4.ipv6_gateway is None
    assert v4.ipv6_vtep_address is None


def test_gaining_an_ipv6_half_is_a_change_of_the_same_lease():
    attrs = LeaseAttrs(IPv4Address("192.168.1.11"), vtep_mac=MAC4)
    old = Lease(V4, attrs)
    new = Lease(V4, attrs, ipv6_subnet=V6)  # e.g. re-keyed, v6 attrs not yet differing
    batch = diff_leases({V4: old}, {V4: new})
    assert batch.changed == ((old, new),) and not batch.added and not batch.removed
    assert not diff_leases({V4: new}, {V4: new})


# ---- subnet.env -------------------------------------------------------------------------

def test_subnet_env_with_ipv6_round_trips():
    env = SubnetEnv(IPv4Network("10.244.0.0/16"), IPv4Interface("10.244.1.1/24"), 1430,
                    False, IPv6Network("fd00:10:244::/56"),
                    IPv6Interface("fd00:10:244:1::1/64"))
    text = env.format()
    assert text.endswith("OVERLAY_IPV6_NETWORK=fd00:10:244::/56\n"
                         "OVERLAY_IPV6_SUBNET=fd00:10:244:1::1/64\n")
    assert parse_subnet_env(text) == env


def test_ipv4_only_subnet_env_is_unchanged():
    env = SubnetEnv(IPv4Network("10.244.0.0/16"), IPv4Interface("10.244.1.1/24"), 1450)
    assert env.format() == ("OVERLAY_NETWORK=10.244.0.0/16\nOVERLAY_SUBNET=10.244.1.1/24\n"
                            "OVERLAY_MTU=1450\nOVERLAY_IPMASQ=false\n")
    parsed = parse_subnet_env(env.format())
    assert parsed == env and parsed.ipv6_network is None and parsed.ipv6_subnet is None


BASE = "OVERLAY_NETWORK=10.244.0.0/16\nOVERLAY_SUBNET=10.244.1.1/24\nOVERLAY_MTU=1430\n"


@pytest.mark.parametrize("extra, words", [
    ("OVERLAY_IPV6_NETWORK=fd00:10:244::/56\n", ["OVERLAY_IPV6_SUBNET is missing"]),
    ("OVERLAY_IPV6_SUBNET=fd00:10:244:1::1/64\n", ["OVERLAY_IPV6_NETWORK is missing"]),
    ("OVERLAY_IPV6_NETWORK=fd00:10:244::1/56\nOVERLAY_IPV6_SUBNET=fd00:10:244:1::1/64\n",
     ["malformed IPv6"]),
    ("OVERLAY_IPV6_NETWORK=10.0.0.0/8\nOVERLAY_IPV6_SUBNET=fd00:10:244:1::1/64\n",
     ["malformed IPv6"]),
    ("OVERLAY_IPV6_NETWORK=fd00:10:244::/56\nOVERLAY_IPV6_SUBNET=fd00:99::1/64\n",
     ["outside OVERLAY_IPV6_NETWORK"]),
    ("OVERLAY_IPV6_NETWORK=fd00:10:244::/56\nOVERLAY_IPV6_SUBNET=fd00:10:244:1::1\n",
     ["no prefix length"]),
    ("OVERLAY_IPV6_NETWORK=fd00:10:244::/56\nOVERLAY_IPV6_SUBNET=fe80::1%eth0/64\n",
     ["malformed IPv6", "scope"]),
])
def test_bad_ipv6_subnet_env_is_one_clear_error(extra, words):
    with pytest.raises(SubnetEnvError) as e:
        parse_subnet_env(BASE + extra)
    for w in words:
        assert w in str(e.value), str(e.value)
