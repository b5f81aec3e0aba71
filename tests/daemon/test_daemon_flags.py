"""overlayd's flags and OVERLAYD_* environment variables (no root, no kernel, no etcd)."""

from __future__ import annotations

import os
import subprocess
import sys
from ipaddress import IPv4Address

import pytest

from overlay.daemon.flags import parse_settings
from overlay.errors import ConfigError

OVERLAYD = os.path.join(os.path.dirname(sys.executable), "overlayd")


def test_defaults():
    s = parse_settings([], environ={})
    assert s.etcd.describe() == "http://127.0.0.1:2379"
    assert s.etcd.prefix == "/overlay/network"
    assert s.subnet_file == "/run/overlay/subnet.env"
    assert s.state_dir == "/var/lib/overlay"
    assert s.lease_ttl == 86400 and s.renew_margin == 3600
    assert s.ip_masq is False and s.healthz_addr == "" and s.vxlan_device == ""
    assert s.cni_socket == "/run/overlay/cni.sock" and s.public_ip is None


def test_flags():
    s = parse_settings(["--etcd-endpoints", "http://10.0.0.1:2379,10.0.0.2:2379",
                        "--etcd-prefix", "/coreos.com/network", "--public-ip", "192.168.1.11",
                        "--iface", "eth.*", "--lease-ttl", "30", "--lease-renew-margin", "10",
                        "--ip-masq", "--healthz-addr", "127.0.0.1:10256",
                        "--vxlan-device", "flannel.1", "--cni-socket", "", "-v"], environ={})
    assert [e.host for e in s.etcd.endpoints] == ["10.0.0.1", "10.0.0.2"]
    assert s.etcd.prefix == "/coreos.com/network"
    assert s.public_ip == IPv4Address("192.168.1.11") and s.iface == "eth.*"
    assert (s.lease_ttl, s.renew_margin, s.ip_masq) == (30, 10, True)
    assert s.vxlan_device == "flannel.1" and s.cni_socket == "" and s.verbose == 1


def test_environment_and_flags_win():
    env = {"OVERLAYD_ETCD_ENDPOINTS": "http://10.1.1.1:2379", "OVERLAYD_IP_MASQ": "true",
           "OVERLAYD_LEASE_TTL": "120", "OVERLAYD_PUBLIC_IP": "192.168.1.12",
           "OVERLAYD_HEALTHZ_ADDR": "0.0.0.0:9000"}
    s = parse_settings([], environ=env)
    assert s.etcd.describe() == "http://10.1.1.1:2379" and s.ip_masq is True
    assert s.lease_ttl == 120 and s.public_ip == IPv4Address("192.168.1.12")
    assert s.healthz_addr == "0.0.0.0:9000"
    s = parse_settings(["--lease-ttl", "7"], environ=env)
    assert s.lease_ttl == 7


@pytest.mark.parametrize("argv, env, message", [
    (["--public-ip", "192.168.1"], {}, "--public-ip '192.168.1': not an IPv4 address"),
    (["--public-ip", "127.0.0.1"], {}, "must be a unicast underlay address"),
    (["--lease-ttl", "0"], {}, "--lease-ttl 0: must be a number of seconds from 1 to "),
    (["--lease-renew-margin", "-5"], {}, "--lease-renew-margin -5: must be a number of "
     "seconds from 0 to 604800 (7 days)"),
    (["--healthz-addr", "localhost"], {}, "expected HOST:PORT"),
    (["--healthz-addr", "127.0.0.1:99999"], {}, "expected HOST:PORT"),
    (["--vxlan-device", "a-very-long-device-name"], {}, "not a valid interface name"),
    (["--vxlan-device", ".."], {}, "not a valid interface name (it is '.' or '..')"),
    (["--vxlan-device", "vx:1"], {}, "not a valid interface name"),
    (["--etcd-endpoints", "ftp://x"], {}, "expected http(s)://HOST:PORT"),
    (["--etcd-certfile", "/etc/hostname"], {}, "must be given together"),
    (["--etcd-cafile", "/nonexistent/ca.pem"], {}, "no such file"),
    (["--etcd-endpoints", "http://10.0.0.1:2379,https://10.0.0.2:2379"], {},
     "mixes http:// and https://"),
    (["--etcd-certfile", "/etc/hostname", "--etcd-keyfile", "/etc/hostname"], {},
     "with http:// endpoints would be ignored"),
    (["--iface", " "], {}, "--iface: empty"),
    (["--iface", "eth["], {}, "--iface 'eth[': not a valid regex"),
    ([], {"OVERLAYD_IFACE": "(en"}, "--iface '(en': not a valid regex"),
    ([], {"OVERLAYD_IP_MASQ": "maybe"}, "OVERLAYD_IP_MASQ='maybe': expected true or false"),
    ([], {"OVERLAYD_LEASE_TTL": "soon"}, "OVERLAYD_LEASE_TTL='soon': not a valid int"),
])
def test_bad_input_is_a_config_error(argv, env, message):
    with pytest.raises(ConfigError) as e:
        parse_settings(argv, environ=env)
    assert message in str(e.value)


def test_unknown_flag_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        parse_settings(["--no-such-flag"], environ={})
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "unrecognized arguments: --no-such-flag" in err


@pytest.mark.parametrize("args, message", [
    (["--lease-ttl", "abc"], "argument --lease-ttl: invalid int value: 'abc'"),
    (["--public-ip", "nope"], "--public-ip 'nope': not an IPv4 address"),
    (["--iface", "eth["], "--iface 'eth[': not a valid regex"),
])
def test_console_script_one_line_nonzero(args, message):
    r = subprocess.run([OVERLAYD, *args], capture_output=True, text=True, timeout=30,
                       env={**os.environ, "OVERLAYD_ETCD_ENDPOINTS": "http://127.0.0.1:1"})
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in r.stderr


def test_heartbeat_period_and_probe_interval():
    s = parse_settings([])
    assert (s.heartbeat_period, s.probe_interval) == (5.0, 10.0)
    s = parse_settings(["--heartbeat-period", "1", "--probe-interval", "2.5"])
    assert (s.heartbeat_period, s.probe_interval) == (1.0, 2.5)
    s = parse_settings([], environ={"OVERLAYD_HEARTBEAT_PERIOD": "2"})
    assert s.heartbeat_period == 2.0
    for flag, bad in (("--heartbeat-period", "0"), ("--probe-interval", "nan"),
                      ("--probe-interval", "4000")):
        with pytest.raises(ConfigError, match=flag):
            parse_settings([flag, bad])


# Every duration flag: (flag, the lowest and highest value it takes).
DURATIONS = [("--reconcile-interval", "0.1", "86400"), ("--heartbeat-period", "0.5", "3600"),
             ("--probe-interval", "0.5", "3600"), ("--watch-lag-limit", "0.2", "86400"),
             ("--lease-ttl", "1", "604800"), ("--lease-renew-margin", "0", "604800")]
FLOATS = [d for d in DURATIONS if d[0] not in ("--lease-ttl", "--lease-renew-margin")]


@pytest.mark.parametrize("flag, low, high", DURATIONS)
def test_every_duration_takes_its_bounds(flag, low, high):
    dest = {"--lease-renew-margin": "renew_margin"}.get(flag, flag[2:].replace("-", "_"))
    for value in (low, high):
        assert getattr(parse_settings([flag, value], environ={}), dest) == float(value)


@pytest.mark.parametrize("flag, low, high", FLOATS)
@pytest.mark.parametrize("bad", ["nan", "NaN", "inf", "-inf", "1e308", "1e10", "0", "-1"])
def test_every_float_duration_refuses_nan_inf_and_out_of_bounds(flag, low, high, bad):
    """NaN made --reconcile-interval's wait return at once (600 reconciles/s), inf and
    1e308 crash-looped its thread (OverflowError: timestamp out of range)."""
    message = f"must be a number of seconds from {low} to {high}"
    with pytest.raises(ConfigError, match=f"^{flag} .*: {message}"):
        parse_settings([f"{flag}={bad}"], environ={})
    env = "OVERLAYD_" + flag[2:].replace("-", "_").upper()
    with pytest.raises(ConfigError, match=message):
        parse_settings([], environ={env: bad})


@pytest.mark.parametrize("flag", ["--lease-ttl", "--lease-renew-margin"])
def test_a_huge_integer_duration_is_refused_in_a_bounded_line(flag):
    with pytest.raises(ConfigError) as e:
        parse_settings([flag, "9" * 400], environ={})
    assert "to 604800 (7 days)" in str(e.value) and len(str(e.value)) < 120


def test_reconcile_interval_inf_is_one_line_exit_2_from_the_console_script():
    r = subprocess.run([OVERLAYD, "--reconcile-interval", "inf"], capture_output=True,
                       text=True, timeout=30,
                       env={**os.environ, "OVERLAYD_ETCD_ENDPOINTS": "http://127.0.0.1:1"})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        "overlayd: error: --reconcile-interval inf: must be a number of seconds from 0.1 to "
        "86400 (a day)"]


def test_policy_log_denied_is_off_by_default_and_set_by_flag_or_env():
    assert parse_settings([], environ={}).policy_log_denied is False
    assert parse_settings(["--policy-log-denied"], environ={}).policy_log_denied is True
    env = {"OVERLAYD_POLICY_LOG_DENIED": "true"}
    assert parse_settings([], environ=env).policy_log_denied is True
    with pytest.raises(ConfigError, match="OVERLAYD_POLICY_LOG_DENIED='maybe'"):
        parse_settings([], environ={"OVERLAYD_POLICY_LOG_DENIED": "maybe"})


def test_public_ipv6_flag_and_env():
    from ipaddress import IPv6Address
    assert parse_settings([], {}).public_ipv6 is None
    s = parse_settings(["--public-ipv6", "fd00:192:168:1::11"], {})
    assert s.public_ipv6 == IPv6Address("fd00:192:168:1::11")
    s = parse_settings([], {"OVERLAYD_PUBLIC_IPV6": "2001:db8::5"})
    assert s.public_ipv6 == IPv6Address("2001:db8::5")
    for bad, why in (("192.168.1.11", "not an IPv6 address"), ("fe80::1", "global unicast"),
                     ("::1", "global unicast"), ("ff02::1", "global unicast"),
                     ("::ffff:192.168.1.11", "global unicast")):
        with pytest.raises(ConfigError, match=why):
            parse_settings(["--public-ipv6", bad], {})


@pytest.mark.parametrize("prefix, problem", [
    ("/a\nb", "contains '\\n' (a control character)"), ("/a b", "contains ' ' (a space)"),
    ("/a//b", "has an empty component (//)"), ("/a/..", "has a '..' component"),
    ("/caf\u00e9", "contains '\\xe9' (not ASCII)"), ("a/b", "must start with /"),
])
def test_a_bad_etcd_prefix_is_refused_by_flag_and_environment(prefix, problem):
    with pytest.raises(ConfigError) as e:
        parse_settings(["--etcd-prefix", prefix], environ={})
    assert str(e.value).startswith(f"--etcd-prefix {ascii(prefix)}: {problem}")
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="^--etcd-prefix "):
        parse_settings([], environ={"OVERLAYD_ETCD_PREFIX": prefix})


@pytest.mark.parametrize("prefix", ["/overlay/network", "/coreos.com/network", "/",
                                    "/ovd-hostile-0", "/t/net"])
def test_the_prefixes_in_use_stay_valid(prefix):
    assert parse_settings(["--etcd-prefix", prefix], environ={}).etcd.prefix == prefix
