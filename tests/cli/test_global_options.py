"""overlayctl's global options before or after the subcommand (kubectl's habit).

Every command runs against an in-memory registry (or a stub diagnose/trace) that records
the etcd options it was given, so each test asserts what the command really used.
"""

import json
from ipaddress import IPv4Network
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

import overlay.diagnose.gather
import overlay.diagnose.trace
from overlay.cli import cli, config_cmds, lease_cmds
from overlay.lease import LeaseAttrs
from overlay.subnet.etcdconf import EtcdOptions
from tests.fakes import FakeRegistry

GLOBALS = ["-o", "json", "--etcd-endpoints", "http://127.0.0.9:2399", "--etcd-prefix", "/t/net"]


class RecordingRegistry(FakeRegistry):
    """FakeRegistry plus the few EtcdRegistry methods the commands call."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def get_subnet(self, subnet):
        return self.get_lease(subnet)

    def key_for(self, subnet, ipv6_subnet=None):
        return self.subnets_prefix + str(subnet).replace("/", "-")

    def put_config(self, cfg):
        self.config = cfg.to_json().encode()


@pytest.fixture
def used(monkeypatch):
    """The EtcdOptions each command was run with (one entry per registry/diagnose made)."""
    seen: list[EtcdOptions] = []

    def registry(opts):
        seen.append(opts)
        reg = RecordingRegistry()
        reg.put(IPv4Network("10.244.1.0/24"),
                LeaseAttrs.from_json(b'{"PublicIP": "192.168.1.11"}'), ttl=600)
        return reg

    def fake_diagnose(opts, etcd):
        seen.append(etcd)
        return SimpleNamespace(to_dict=lambda: {"checks": []}, failed=False)

    def fake_trace(src, dst, etcd, **kw):
        seen.append(etcd)
        return SimpleNamespace(to_dict=lambda: {"hops": []}, ok=True)

    monkeypatch.setattr(lease_cmds, "EtcdRegistry", registry)
    monkeypatch.setattr(config_cmds, "EtcdRegistry", registry)
    monkeypatch.setattr(overlay.diagnose.gather, "diagnose", fake_diagnose)
    monkeypatch.setattr(overlay.diagnose.trace, "trace_path", fake_trace)
    return seen


def commands(tmp_path):
    return [
        ["leases", "list"],
        ["leases", "show", "10.244.1.0/24"],
        ["leases", "watch", "--timeout", "0"],
        ["leases", "reserve", "10.244.9.0/24", "--public-ip", "192.168.1.50"],
        ["leases", "release", "10.244.1.0/24", "--yes"],
        ["config", "get"],
        ["config", "set", "--network", "10.244.0.0/16"],
        ["diagnose", "--no-probe"],
        ["trace", "10.244.1.2", "10.244.2.2"],
    ]


def run(args):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


@pytest.mark.parametrize("index", range(9))
def test_every_command_takes_the_global_options_before_or_after(used, tmp_path, index):
    cmd = commands(tmp_path)[index]
    before, after = run([*GLOBALS, *cmd]), run([*cmd, *GLOBALS])
    assert before.exit_code == 0 and after.exit_code == 0, (before.output, after.output)
    assert before.stdout == after.stdout
    if cmd[:2] != ["leases", "watch"]:  # watch printed no event: nothing to parse
        json.loads(after.stdout)
    assert len(used) == 2
    for opts in used:
        assert opts.prefix == "/t/net"
        assert [(e.host, e.port) for e in opts.endpoints] == [("127.0.0.9", 2399)]


def test_install_cni_takes_output_before_or_after(tmp_path):
    dirs = ["--bin-dir", str(tmp_path / "bin"), "--conf-dir", str(tmp_path / "conf")]
    before = run(["-o", "json", "install-cni", *dirs])
    after = run(["install-cni", *dirs, "-o", "json"])
    assert before.exit_code == 0 and after.exit_code == 0, (before.output, after.output)
    assert json.loads(before.stdout)["plugin"] == str(tmp_path / "bin" / "overlay")
    assert json.loads(after.stdout)["plugin"] == str(tmp_path / "bin" / "overlay")


def test_a_value_after_the_subcommand_wins(used):
    r = run(["-o", "json", "--etcd-prefix", "/before", "leases", "list",
             "-o", "table", "--etcd-prefix", "/after"])
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("SUBNET") and used[0].prefix == "/after"
    r = run(["-o", "table", "leases", "list", "-o", "json"])
    assert json.loads(r.stdout)[0]["subnet"] == "10.244.1.0/24"


def test_a_value_only_before_is_kept(used):
    r = run(["--etcd-prefix", "/only", "config", "get", "-o", "json"])
    assert r.exit_code == 0, r.output
    assert used[0].prefix == "/only" and json.loads(r.stdout)["Network"] == "10.244.0.0/16"


def test_verbose_counts_on_both_sides(used):
    import logging
    root = logging.getLogger()
    old = root.level
    try:
        assert run(["-v", "config", "get", "-v"]).exit_code == 0
        assert root.level == logging.DEBUG
    finally:
        root.setLevel(old)


def test_bad_value_after_the_subcommand_is_a_usage_error(used):
    r = CliRunner().invoke(cli, ["leases", "list", "-o", "yaml"])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "'yaml' is not one of 'table', 'wide', 'json'" in r.output and used == []


@pytest.mark.parametrize("cmd", [["leases", "list"], ["leases", "watch"], ["config", "set"],
                                 ["install-cni"], ["diagnose"], ["trace"], []])
def test_help_of_each_command_shows_the_global_options(cmd):
    r = run([*cmd, "--help"])
    assert r.exit_code == 0, r.output
    for opt in ("-o, --output", "--etcd-endpoints", "--etcd-prefix", "--etcd-cafile",
                "-v, --verbose"):
        assert opt in r.output, (cmd, opt)
