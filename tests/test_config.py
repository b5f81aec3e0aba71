"""Network config parsing and validation (Flannel's field names)."""

import json
from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given, settings, strategies as st

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
    ('{"Network": "10.244.0.0/16", "EnableIPv6": true}', "IPv6Network", "missing"),
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


# ---- hostile input: one ConfigError naming the field, never anything else -----------

NET = '"Network": "10.244.0.0/16"'


@pytest.mark.parametrize("data, words", [
    ("[" * 100_000 + "]" * 100_000, ["bytes", "limit"]),
    ("[" * 30_000 + "]" * 30_000, ["nested too deeply"]),
    ('{"Network": ' + "[" * 5000 + "]" * 5000 + "}", ["nested too deeply"]),
    ("{%s, \"Backend\": {\"VNI\": 1e400}}" % NET, ["Backend.VNI", "integer", "inf"]),
    ("{%s, \"Backend\": {\"VNI\": %s}}" % (NET, "9" * 5000), ["5000 digits", "out of range"]),
    ("{%s, \"SubnetLen\": NaN}" % NET, ["NaN", "not valid JSON"]),
    ("{%s, \"SubnetLen\": -Infinity}" % NET, ["-Infinity"]),
    ("{%s, \"SubnetLen\": 24.0}" % NET, ["SubnetLen", "integer", "24.0"]),
    ("{%s, \"SubnetLen\": true}" % NET, ["SubnetLen", "integer", "true"]),
    ("{%s, \"SubnetLen\": false}" % NET, ["SubnetLen", "integer", "false"]),
    ("{%s, \"Backend\": {\"VNI\": true}}" % NET, ["Backend.VNI", "integer"]),
    ("{%s, \"Backend\": {\"Port\": false}}" % NET, ["Backend.Port", "integer"]),
    ("{%s, \"Backend\": {\"MTU\": 1400.5}}" % NET, ["Backend.MTU", "integer"]),
    ("{%s, \"SubnetMin\": 167772416}" % NET, ["SubnetMin", "address string"]),
    ("{%s, \"SubnetMax\": true}" % NET, ["SubnetMax", "address string"]),
    ('{"Network": "%s/8"}' % ("x" * 60_000), ["Network", "truncated", "not a valid CIDR"]),
    ('{"Network": "10.244.0.0/255.255.0.0"}', ["Network", "CIDR form", "10.244.0.0/16"]),
    ('{"Network": "0.0.0.0/0"}', ["Network", "overlaps", "0.0.0.0/8"]),
    ('{"Network": "127.0.0.0/16"}', ["Network", "loopback"]),
    ('{"Network": "224.0.0.0/16"}', ["Network", "multicast"]),
    ("{%s, \"Netwrok\": \"10.0.0.0/8\"}" % NET,
     ["unknown field", "Netwrok", "did you mean Network?"]),
    ("{%s, \"SubnetLength\": 24}" % NET, ["unknown field", "did you mean SubnetLen?"]),
    ("{%s, \"Backend\": {\"Type\": \"vxlan\", \"VIN\": 2}}" % NET,
     ["Backend.", "unknown field", "VIN", "did you mean VNI?"]),
    ("{%s, \"Zzzzz\": 1}" % NET, ["unknown field 'Zzzzz'"]),
    ("{%s, \"Network\": \"10.1.0.0/16\"}" % NET, ["Network", "twice"]),
    ("{%s, \"network\": \"10.1.0.0/16\"}" % NET, ["Network", "twice"]),
    ("{%s, \"IPv6Network\": \"fd00::/48\"}" % NET, ["IPv6Network", "without", "EnableIPv6"]),
    ("{%s, \"IPv6SubnetLen\": 64}" % NET, ["IPv6SubnetLen", "without", "EnableIPv6"]),
    ("{%s, \"EnableIPv4\": false}" % NET, ["EnableIPv4", "IPv6-only"]),
    ("{%s, \"EnableIPv6\": \"no\"}" % NET, ["EnableIPv6", "true or false"]),
    ("{%s, \"Backend\": {\"GBP\": true}}" % NET, ["Backend.GBP", "not supported"]),
    ("{%s, \"Backend\": {\"Learning\": true}}" % NET, ["Backend.Learning", "not supported"]),
    ("{%s, \"Backend\": {\"MacPrefix\": \"0E:2A\"}}" % NET, ["Backend.MacPrefix", "not supported"]),
    ("{%s, \"Backend\": {\"Type\": [\"vxlan\"]}}" % NET, ["Backend.Type", "a list"]),
    ('"\\n"', ["JSON object", "'\\n'"]),
])
def test_hostile_config_is_one_clear_line(data, words):
    with pytest.raises(ConfigError) as e:
        parse_network_config(data)
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 300, msg
    for w in words:
        assert w in msg, msg


def test_non_utf8_bytes_are_refused_not_guessed():
    utf16 = json.dumps({"Network": "10.244.0.0/16"}).encode("utf-16")
    for data in (b"\xff\xfe\x00garbage", utf16, b'{"Network": "10.244.0.0/16\xc3"}'):
        with pytest.raises(ConfigError, match="not UTF-8"):
            parse_network_config(data)
    assert parse_network_config(b'{"Network": "10.244.0.0/16"}').network == IPv4Network(
        "10.244.0.0/16")


def test_flannel_field_names_match_case_insensitively_as_in_go():
    cfg = parse_network_config('{"network": "10.244.0.0/16", "subnetlen": 25, '
                               '"backend": {"type": "VXLAN", "vni": 4, "port": 4789}}')
    assert (cfg.subnet_len, cfg.backend.type, cfg.backend.vni, cfg.backend.port) == (
        25, "vxlan", 4, 4789)


def test_flannel_defaults_and_nulls_are_accepted():
    cfg = parse_network_config({"Network": "10.244.0.0/16", "SubnetLen": None,
                                "EnableIPv4": True, "EnableIPv6": False, "IPv6Network": None,
                                "Backend": {"Type": "vxlan", "VNI": 0, "Port": 0, "MTU": 0,
                                            "GBP": False, "Learning": False}})
    assert cfg == parse_network_config({"Network": "10.244.0.0/16"})


# ---- property tests: nothing but ConfigError escapes; what is accepted is consistent --

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                 max_size=4),
    max_leaves=12)
FIELDS = ["Network", "SubnetLen", "SubnetMin", "SubnetMax", "Backend", "EnableIPv4",
          "EnableIPv6", "IPv6Network", "network", "Netwrk"]
BACKEND_FIELDS = ["Type", "VNI", "Port", "DirectRouting", "MTU", "GBP", "Learning", "vni"]


def addresses():
    return st.integers(0, 2**32 - 1).map(lambda i: str(IPv4Address(i)))


def cidrs():
    return st.builds(lambda a, p: f"{a}/{p}", addresses(), st.integers(0, 32))


def networks():
    """Valid-looking networks, mostly private, so that many configs are accepted."""
    private = st.builds(lambda i, p: str(IPv4Network((i << 16 & ~((1 << (32 - p)) - 1), p))),
                        st.integers(0x0A00, 0x0AFF), st.integers(8, 28))
    return private | cidrs()


def near_valid_configs():
    backend = st.fixed_dictionaries({}, optional={
        "Type": st.sampled_from(["vxlan", "VXLAN", "udp", ""]) | json_values,
        "VNI": st.integers(-2, 2**24 + 1) | json_values,
        "Port": st.integers(-1, 70000) | json_values,
        "MTU": st.integers(0, 70000) | json_values,
        "DirectRouting": st.booleans() | json_values,
        "GBP": st.booleans(), "VIN": st.integers()})
    return st.fixed_dictionaries({"Network": networks() | json_values}, optional={
        "SubnetLen": st.integers(-1, 33) | json_values,
        "SubnetMin": addresses() | json_values,
        "SubnetMax": addresses() | json_values,
        "Backend": backend | json_values,
        "EnableIPv4": st.booleans() | json_values,
        "EnableIPv6": st.booleans(),
    })


def check_consistent(cfg: NetworkConfig) -> None:
    net, n = cfg.network, cfg.subnet_len
    assert isinstance(net, IPv4Network) and net.prefixlen + 2 <= n <= 30
    assert cfg.subnet_min in net and cfg.subnet_max in net
    assert int(cfg.subnet_min) <= int(cfg.subnet_max)
    for bound in (cfg.subnet_min, cfg.subnet_max):
        assert IPv4Network((bound, n)).subnet_of(net)  # aligned: strict construction
    assert not net.is_loopback and not net.is_multicast
    assert 1 <= cfg.backend.vni < 2**24 and 1 <= cfg.backend.port <= 65535
    # the outer MTU: the IPv4 device (MTU - 50) holds at least a 576-byte pod MTU
    assert cfg.backend.mtu is None or 626 <= cfg.backend.mtu <= 65535
    if cfg.enable_ipv6 and cfg.backend.mtu is not None:
        assert cfg.backend.device_mtu(65535, 6) >= 1280
    assert parse_network_config(cfg.to_json()) == cfg  # what we write, we read back


def parse_or_error(data):
    try:
        cfg = parse_network_config(data)
    except ConfigError as e:
        assert "\n" not in str(e) and len(str(e)) < 400
        return None
    check_consistent(cfg)
    return cfg


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_give_a_config_or_config_error(data):
    parse_or_error(data)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_any_json_value_gives_a_config_or_config_error(value):
    parse_or_error(json.dumps(value))
    parse_or_error(value)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6))
def test_any_object_of_known_fields_gives_a_config_or_config_error(obj):
    parse_or_error(obj)


@settings(max_examples=600, deadline=None)
@given(near_valid_configs())
def test_every_accepted_near_valid_config_is_self_consistent(obj):
    parse_or_error(json.dumps(obj))


@st.composite
def ranged_configs(draw):
    """Configs whose SubnetMin/Max are drawn near the network, aligned or not: most are
    accepted, so the consistency property is checked on many accepted configs."""
    prefix = draw(st.integers(8, 28))
    base = draw(st.integers(0x0A000000, 0x0AFFFFFF)) & ~((1 << (32 - prefix)) - 1)
    net = IPv4Network((base, prefix))
    subnet_len = draw(st.none() | st.integers(prefix, 31))
    size = 1 << (32 - (subnet_len or 24))
    obj = {"Network": str(net)}
    if subnet_len is not None:
        obj["SubnetLen"] = subnet_len
    for name in ("SubnetMin", "SubnetMax"):
        if draw(st.booleans()):
            k = draw(st.integers(-1, net.num_addresses // size + 1))
            jitter = draw(st.sampled_from([0, 0, 0, 1]))
            obj[name] = str(IPv4Address((base + k * size + jitter) % 2**32))
    return obj


@settings(max_examples=400, deadline=None)
@given(ranged_configs())
def test_every_accepted_ranged_config_is_self_consistent(obj):
    parse_or_error(obj)


def test_ranged_strategy_accepts_often_enough():
    """The properties above must not pass vacuously: a good share is accepted."""
    accepted = []

    @settings(max_examples=200, deadline=None, database=None, derandomize=True)
    @given(ranged_configs())
    def count(obj):
        accepted.append(parse_or_error(obj) is not None)
    count()
    assert sum(accepted) >= 50, sum(accepted)


# --- Backend.MTU: the outer (underlay) MTU of both families -------------------------------

DUAL = {"Network": "10.244.0.0/16", "EnableIPv6": True, "IPv6Network": "fd00:10:244::/56"}


def test_backend_mtu_is_the_outer_mtu_each_family_takes_its_overhead_off():
    backend = parse_network_config({**DUAL, "Backend": {"MTU": 1400}}).backend
    assert (backend.device_mtu(1500, 4), backend.device_mtu(1500, 6)) == (1350, 1330)
    # unset: the underlay's MTU is the outer one
    backend = parse_network_config(DUAL).backend
    assert (backend.device_mtu(1500, 4), backend.device_mtu(1500, 6)) == (1450, 1430)
    assert (backend.device_mtu(9000, 4), backend.device_mtu(9000, 6)) == (8950, 8930)


def test_backend_mtu_above_the_underlays_is_never_used():
    backend = parse_network_config({**DUAL, "Backend": {"MTU": 9000}}).backend
    assert backend.outer_mtu(1500) == 1500
    assert (backend.device_mtu(1500, 4), backend.device_mtu(1500, 6)) == (1450, 1430)


@pytest.mark.parametrize("config, words", [
    ({"Network": "10.244.0.0/16", "Backend": {"MTU": 625}},
     ["Backend.MTU: 625 is too small", "575", "at least 626"]),
    ({**DUAL, "Backend": {"MTU": 1349}},
     ["Backend.MTU: 1349 is too small for EnableIPv6", "1279", "1280", "at least 1350"]),
])
def test_backend_mtu_too_small_for_a_family_is_a_clear_error(config, words):
    with pytest.raises(ConfigError) as e:
        parse_network_config(config)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_smallest_backend_mtus_each_family_can_carry_are_accepted():
    assert parse_network_config({"Network": "10.244.0.0/16",
                                 "Backend": {"MTU": 626}}).backend.device_mtu(1500) == 576
    cfg = parse_network_config({**DUAL, "Backend": {"MTU": 1350}})
    assert cfg.backend.device_mtu(1500, 6) == 1280
    # IPv4-only, 1349 is fine: only IPv6 needs 1280 inside
    assert parse_network_config({"Network": "10.244.0.0/16",
                                 "Backend": {"MTU": 1349}}).backend.mtu == 1349


# -- the etcd key prefix (overlayd's and overlayctl's one rule) --------------------------

def test_etcd_prefix_problem():
    from overlay.config import MAX_ETCD_PREFIX, etcd_prefix_problem
    for good in ("/overlay/network", "/coreos.com/network", "/", "/a_b/c~d/e:f@g+h=i",
                 "/" + "x" * (MAX_ETCD_PREFIX - 1)):
        assert etcd_prefix_problem(good) is None, good
    for bad, problem in (("/a\x1bb", "a control character"), ("/a\x85b", "a control character"),
                         ("/a\u2028b", "a space"), ("/a\u200bb", "an invisible character"),
                         ("/\u00e9", "not ASCII"), ("/a?b", "not allowed"),
                         ("/" + "x" * MAX_ETCD_PREFIX, "characters long"),
                         ("/a/./b", "a '.' component"), ("", "must start with /"),
                         (None, "must be a string")):
        assert problem in (etcd_prefix_problem(bad) or ""), bad
