"""overlayctl refuses a bad value in one line before it contacts etcd or writes anything:
durations that are NaN, infinite or negative, an etcd prefix no key path can have, and a
reservation's public IP that every overlayd would reject."""

from __future__ import annotations

import threading
from ipaddress import IPv4Network, IPv6Network

import pytest
from click.testing import CliRunner

from overlay.cli import cli, lease_cmds
from overlay.lease import LeaseAttrs
from overlay.runtimefile import write_runtime_file
from tests.cli.test_global_options import RecordingRegistry
from tests.test_runtimefile import INFO


@pytest.fixture
def made(monkeypatch):
    """Every registry a command made (none: it stopped before etcd)."""
    regs: list[RecordingRegistry] = []

    def registry(opts):
        reg = RecordingRegistry()
        reg.options = opts  # type: ignore[attr-defined]
        reg.put(IPv4Network("10.244.1.0/24"),
                LeaseAttrs.from_json(b'{"PublicIP": "192.168.1.11"}'), ttl=600)
        regs.append(reg)
        return reg

    monkeypatch.setattr(lease_cmds, "EtcdRegistry", registry)
    return regs


def run(*args, env=None):
    return CliRunner().invoke(cli, list(args), env=env)


def _usage_error(r, option):
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    errors = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and f"Invalid value for '{option}'" in errors[0], r.output
    return errors[0]


# -- durations ------------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["nan", "NaN", "inf", "-inf", "1e999", "-1", "1e9", "soon"])
def test_watch_timeout_refuses_nan_inf_negative_and_huge(made, bad):
    """--timeout nan watched forever (click's FloatRange lets NaN through)."""
    result: list = []
    t = threading.Thread(target=lambda: result.append(run("leases", "watch", f"--timeout={bad}")),
                         daemon=True)
    t.start()
    t.join(10)
    assert result, f"leases watch --timeout={bad} did not end"
    line = _usage_error(result[0], "--timeout")
    assert "seconds" in line and made == []


def test_watch_timeout_takes_finite_seconds(made):
    r = run("leases", "watch", "--timeout", "0")
    assert r.exit_code == 0 and "watch timed out after 0s" in r.output, r.output
    timeout = next(p for p in lease_cmds.leases_watch.params if p.name == "timeout")
    assert [timeout.type.convert(v, timeout, None) for v in ("0.5", "604800", 2.0)] == [
        0.5, 604800.0, 2.0]


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", "0", "11"])
def test_diagnose_probe_timeout_refuses_nan_and_out_of_range(bad):
    line = _usage_error(run("diagnose", f"--probe-timeout={bad}"), "--probe-timeout")
    assert "from 0.1 to 10" in line


def test_every_float_option_is_a_bounded_seconds_type():
    """No click FloatRange (or plain float) is left among overlayctl's options: each lets
    NaN through."""
    import click

    from overlay.cli import Seconds

    def walk(cmd):
        yield cmd
        for sub in getattr(cmd, "commands", {}).values():
            yield from walk(sub)

    floats = [(c.name, p.name) for c in walk(cli) for p in c.params
              if isinstance(p.type, click.types.FloatParamType)]
    assert floats == []
    seconds = {(c.name, p.name) for c in walk(cli) for p in c.params
               if isinstance(p.type, Seconds)}
    assert {("watch", "timeout"), ("diagnose", "probe_timeout")} <= seconds


# -- the etcd prefix ------------------------------------------------------------------

BAD_PREFIXES = ["/a\nb", "/a\tb", "/a\x7fb", "/a\x00b", "/a b", "/a//b", "/a/../b",
                "/caf\u00e9", "/a\u200bb", "/a*b", "/" + "x" * 300, "a/b", "/a/"]


@pytest.mark.parametrize("prefix", BAD_PREFIXES)
def test_a_bad_etcd_prefix_is_one_usage_error_before_or_after(made, prefix):
    for args in (["--etcd-prefix", prefix, "leases", "list"],
                 ["leases", "list", "--etcd-prefix", prefix]):
        line = _usage_error(run(*args), "--etcd-prefix")
        assert len(line) < 300
    assert made == []


def test_a_bad_etcd_prefix_from_the_environment_is_refused(made):
    r = run("leases", "list", env={"OVERLAYCTL_ETCD_PREFIX": "/a\nb"})
    assert "control character" in _usage_error(r, "--etcd-prefix")
    assert made == []


@pytest.mark.parametrize("prefix", ["/overlay/network", "/coreos.com/network", "/t/net",
                                    "/", "/ovd-hostile-3", "/ovfailover/frozen",
                                    "/a_b/c~d/e:f@g+h=i"])
def test_every_prefix_in_use_stays_valid(made, prefix):
    r = run("-o", "json", "--etcd-prefix", prefix, "leases", "list")
    assert r.exit_code == 0, r.output
    assert made[0].options.prefix == prefix


def test_a_bad_etcd_prefix_in_the_runtime_file_is_one_error_naming_it(made, tmp_path):
    path = tmp_path / "overlayd.json"
    info = {**INFO.__dict__, "etcd_prefix": "/a b", "etcd_endpoints": ("http://10.0.0.1:2379",),
            "etcd_cafile": None, "etcd_username": None, "etcd_password_file": None}
    write_runtime_file(str(path), INFO.__class__(**info))
    r = run("leases", "list", env={"OVERLAYCTL_RUNTIME_FILE": str(path)})
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert r.output.splitlines() == [
        f"error: the runtime file's etcd.prefix ({path}) '/a b': contains ' ' (a space); "
        "use letters, digits and . _ ~ - : @ + = between the slashes"]
    assert made == []
    # a flag still wins over the runtime file's value
    r = run("leases", "list", "--etcd-prefix", "/good", env={"OVERLAYCTL_RUNTIME_FILE": str(path)})
    assert r.exit_code == 0, r.output


# -- a reservation's public IP --------------------------------------------------------

@pytest.mark.parametrize("ip, reason", [
    ("127.0.0.1", "public-ip-unusable"), ("0.0.0.0", "public-ip-unusable"),
    ("224.0.0.1", "public-ip-unusable"), ("255.255.255.255", "public-ip-unusable"),
    ("169.254.169.254", "public-ip-unusable"), ("240.0.0.1", "public-ip-unusable"),
    ("10.244.5.5", "public-ip-in-network"),
])
def test_reserve_refuses_a_public_ip_every_node_rejects(made, ip, reason):
    r = run("leases", "reserve", "10.244.9.0/24", "--public-ip", ip)
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    lines = r.output.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --public-ip: every node would "
                                                   f"reject this lease ({reason}: ")
    assert ip in lines[0] and "nothing written" in lines[0]
    reg, = made
    assert set(reg.leases) == {IPv4Network("10.244.1.0/24")} and reg.creates == 0


def test_reserve_refuses_a_vtep_mac_every_node_rejects(made):
    r = run("leases", "reserve", "10.244.9.0/24", "--public-ip", "192.168.1.50",
            "--vtep-mac", "01:00:5e:00:00:01")
    assert r.exit_code == 1, r.output
    assert "error: --vtep-mac: every node would reject this lease (vtep-mac-unusable: " \
        in r.output
    assert set(made[0].leases) == {IPv4Network("10.244.1.0/24")}


def test_reserve_of_a_usable_public_ip_is_written(made):
    r = run("leases", "reserve", "10.244.9.0/24", "--public-ip", "192.168.1.50")
    assert r.exit_code == 0, r.output
    assert made[0].leases[IPv4Network("10.244.9.0/24")].reserved


def test_reserve_in_an_ipv6_only_network_judges_the_ipv6_public_ip(monkeypatch):
    cfg = (b'{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fd00:10:244::/56"}')
    regs = []

    def registry(opts):
        reg = RecordingRegistry(cfg)
        regs.append(reg)
        return reg

    monkeypatch.setattr(lease_cmds, "EtcdRegistry", registry)
    net = "fd00:10:244:9::/64"
    for ip, reason in (("::1", "public-ip-unusable"), ("ff02::1", "public-ip-unusable"),
                       ("fd00:10:244:5::5", "public-ip-in-network")):
        r = run("leases", "reserve", net, "--public-ip", ip)
        assert r.exit_code == 1 and f"({reason}: " in r.output, r.output
    assert all(reg.leases == {} for reg in regs)
    r = run("leases", "reserve", net, "--public-ip", "fd00:192:168:1::50")
    assert r.exit_code == 0, r.output
    assert regs[-1].leases[IPv6Network(net)].reserved
