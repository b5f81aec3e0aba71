"""Network config parsing and validation (Flannel's field names)."""

from ipaddress import IPv4Address, IPv4Network

import pytest

from overlay.config import NetworkConfig, parse_network_config
from overlay.errors import ConfigError


def test_minimal_config_gets_flannel_defaults():
    cfg = parse_network_config('{"Network": "10.244.0.0/16"}')
    assert cfg.network == IPv4Network("10.244.0.0/16")
    assert cfg.subnet_len == 24
    assert cfg.subnet_min == IPv4Address("10.244.1.0")
    assert cfg.subnet_max == IPv4Address("10.244.255.0")
    assert cfg.subnet_count == 255
    assert (cfg.backend.type, cfg.backend.vni, cfg.backend.port) == ("vxlan", 1, 8472)
    assert cfg.backend.direct_routing is False


def test_small_network_defaults_subnet_len_to_prefix_plus_two():
    cfg = parse_network_config({"Network": "10.1.0.0/24"})
    assert cfg.subnet_len == 26
    assert [str(s) for s in cfg.iter_subnets()] == ["10.1.0.64/26", "10.1.0.128/26",
                                                    "10.1.0.192/26"]


def test_full_config_round_trips_through_json():
    text = ('{"Network":"10.200.0.0/16","SubnetLen":25,"SubnetMin":"10.200.4.0",'
            '"SubnetMax":"10.200.8.128","Backend":{"Type":"VXLAN","VNI":42,"Port":4789,'
            '"DirectRouting":true}}')
    cfg = parse_network_config(text)
    assert cfg.subnet_len == 25 and cfg.backend.vni == 42 and cfg.backend.port == 4789
    assert cfg.backend.type == "vxlan" and cfg.backend.direct_routing
    assert cfg.subnet_count == 10
    assert parse_network_config(cfg.to_json()) == cfg


def test_in_range_and_iteration_agree():
    cfg = parse_network_config({"Network": "10.244.0.0/16", "SubnetMin": "10.244.10.0",
                                "SubnetMax": "10.244.12.0"})
    subnets = list(cfg.iter_subnets())
    assert subnets == [IPv4Network(f"10.244.{i}.0/24") for i in (10, 11, 12)]
    assert all(cfg.in_range(s) for s in subnets)
    assert not cfg.in_range(IPv4Network("10.244.9.0/24"))
    assert not cfg.in_range(IPv4Network("10.244.10.0/25"))
    assert cfg.describe_range() == "10.244.10.0/24..10.244.12.0/24"


@pytest.mark.parametrize("data, field, why", [
    ("{not json", "JSON", "not valid JSON"),
    ('["Network"]', "object", "JSON object"),
    ("{}", "Network", "missing"),
    ('{"Network": 5}', "Network", "CIDR string"),
    ('{"Network": "10.244.0.0/33"}', "Network", "not a valid CIDR"),
    ('{"Network": "10.244.0.1/16"}', "Network", "host bits set"),
    ('{"Network": "10.244.0.0"}', "Network", "no prefix length"),
    ('{"Network": "fd00::/64"}', "Network", "IPv6"),
    ('{"Network": "10.0.0.0/30"}', "Network", "too small"),
    ('{"Network": "10.244.0.0/16", "SubnetLen": 31}', "SubnetLen", "at most 30"),
    ('{"Network": "10.244.0.0/16", "SubnetLen": 17}', "SubnetLen", "fewer than four"),
    ('{"Network": "10.244.0.0/16", "SubnetLen": "24"}', "SubnetLen", "integer"),
    ('{"Network": "10.244.0.0/16", "SubnetMin": "10.245.0.0"}', "SubnetMin", "outside"),
    ('{"Network": "10.244.0.0/16", "SubnetMin": "10.244.1.5"}', "SubnetMin", "boundary"),
    ('{"Network": "10.244.0.0/16", "SubnetMax": "banana"}', "SubnetMax", "not an IPv4"),
    ('{"Network": "10.244.0.0/16", "SubnetMin": "10.244.9.0", "SubnetMax": "10.244.3.0"}',
     "SubnetMin", "above SubnetMax"),
    ('{"Network": "10.244.0.0/16", "Backend": {"Type": "udp"}}', "Backend.Type", "not supported"),
    ('{"Network": "10.244.0.0/16", "Backend": {"VNI": 16777216}}', "Backend.VNI", "out of range"),
    ('{"Network": "10.244.0.0/16", "Backend": {"Port": 70000}}', "Backend.Port", "out of range"),
    ('{"Network": "10.244.0.0/16", "Backend": {"DirectRouting": "yes"}}',
     "Backend.DirectRouting", "true or false"),
    ('{"Network": "10.244.0.0/16", "Backend": "vxlan"}', "Backend", "object"),
    ('{"Network": "10.244.0.0/16", "EnableIPv6": true}', "EnableIPv6", "not supported"),
])
def test_invalid_config_names_the_field_and_why(data, field, why):
    with pytest.raises(ConfigError) as e:
        parse_network_config(data)
    assert field in str(e.value) and why in str(e.value)


def test_config_is_a_frozen_value():
    cfg = parse_network_config({"Network": "10.244.0.0/16"})
    assert isinstance(cfg, NetworkConfig)
    with pytest.raises(AttributeError):
        cfg.subnet_len = 20  # type: ignore[misc]
