"""``overlayctl config set``: its help states the defaults the parser really applies."""

import pytest
from click.testing import CliRunner

from overlay.cli import cli
from overlay.cli.config_cmds import build_config


def test_help_states_the_subnet_len_rule():
    r = CliRunner().invoke(cli, ["config", "set", "--help"], terminal_width=200)
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert ("[default: 24 for a /22 or larger network, else the network's prefix + 2]"
            in text), text
    assert "(default 24)" not in text
    assert "[default: 1]" in text and "[default: 8472]" in text


@pytest.mark.parametrize("network, length", [("10.244.0.0/16", 24), ("10.244.0.0/22", 24),
                                             ("10.244.0.0/23", 25), ("10.244.0.0/24", 26)])
def test_the_rule_the_help_states_is_what_config_set_stores(network, length):
    cfg = build_config(network, None, None, None, None)
    assert cfg.subnet_len == length and cfg.backend.vni == 1 and cfg.backend.port == 8472


def test_ipv6_flags_make_a_dual_stack_config():
    cfg = build_config("10.244.0.0/16", None, None, None, None, "fd00:10:244::/56", None)
    assert cfg.enable_ipv6 and str(cfg.ipv6_network) == "fd00:10:244::/56"
    assert cfg.ipv6_subnet_len == 64
    cfg = build_config("10.244.0.0/16", None, None, None, None, "fd00:10:244::/56", 72)
    assert cfg.ipv6_subnet_len == 72
    assert not build_config("10.244.0.0/16", None, None, None, None).enable_ipv6


@pytest.mark.parametrize("args, words", [
    (["--network", "10.244.0.0/16", "--ipv6-subnet-len", "64"], ["--ipv6-network"]),
    (["--network", "10.244.0.0/16", "--ipv6-network", "fe80::/64"], ["link-local"]),
    (["--network", "10.244.0.0/16", "--ipv6-network", "fd00::/56",
      "--ipv6-subnet-len", "127"], ["IPv6SubnetLen", "126"]),
    (["-f", "x.json", "--ipv6-network", "fd00::/56"], ["not both"]),
])
def test_bad_ipv6_flags_are_one_line_and_write_nothing(args, words):
    # No etcd is reachable on this endpoint: the error must come before any write.
    r = CliRunner().invoke(cli, ["--etcd-endpoints", "http://127.0.0.1:9",
                                 "config", "set", *args])
    assert r.exit_code != 0
    assert "Traceback" not in r.output
    for w in words:
        assert w in r.output, r.output


def test_help_states_the_ipv6_subnet_len_rule():
    r = CliRunner().invoke(cli, ["config", "set", "--help"], terminal_width=200)
    text = " ".join(r.output.split())
    assert "--ipv6-network CIDR" in text
    assert "[default: 64 for a /62 or larger network, else the network's prefix + 2]" in text


def test_ipv6_network_alone_makes_an_ipv6_only_config():
    cfg = build_config(None, None, None, None, None, "fd00:10:244::/56", 64)
    assert cfg.ipv6_only and cfg.to_dict()["EnableIPv4"] is False
    assert "Network" not in cfg.to_dict() and str(cfg.network) == "fd00:10:244::/56"


@pytest.mark.parametrize("args, words", [
    (["--subnet-len", "24", "--ipv6-network", "fd00::/56"], ["--subnet-len is IPv4's"]),
    ([], ["--ipv6-network CIDR alone (IPv6-only)"]),
])
def test_bad_ipv6_only_flags_are_one_line_and_write_nothing(args, words):
    r = CliRunner().invoke(cli, ["--etcd-endpoints", "http://127.0.0.1:9",
                                 "config", "set", *args])
    assert r.exit_code != 0 and "Traceback" not in r.output
    for w in words:
        assert w in r.output, r.output
