"""VTEP MAC persistence and the masquerade rule set (pure parts; no root)."""

from __future__ import annotations

import logging
import os
import random
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

import pytest

from overlay.errors import ConfigError
from overlay.masq.nft import Masquerade, ruleset
from overlay.vxlan.vtep import _usable, load_or_create_vtep_mac, mac_path, random_mac
from tests.deadline import deadline

NET, SUB = IPv4Network("10.244.0.0/16"), IPv4Network("10.244.3.0/24")


def test_random_mac_is_local_unicast():
    for seed in range(50):
        first = int(random_mac(random.Random(seed))[:2], 16)
        assert first & 0x02 and not first & 0x01


def test_vtep_mac_persists(tmp_path):
    a = load_or_create_vtep_mac(str(tmp_path), "overlay.1")
    assert load_or_create_vtep_mac(str(tmp_path), "overlay.1") == a
    assert Path(mac_path(str(tmp_path), "overlay.1")).read_text().strip() == a
    assert load_or_create_vtep_mac(str(tmp_path), "overlay.2") != a


def test_existing_device_mac_adopted_once(tmp_path):
    assert load_or_create_vtep_mac(str(tmp_path), "overlay.1", adopt="0E:11:22:33:44:55") \
        == "0e:11:22:33:44:55"
    # the file wins afterwards
    assert load_or_create_vtep_mac(str(tmp_path), "overlay.1", adopt="0e:99:99:99:99:99") \
        == "0e:11:22:33:44:55"
    # multicast or zero MACs are not adopted
    mac = load_or_create_vtep_mac(str(tmp_path / "x"), "overlay.1", adopt="01:00:5e:00:00:01")
    assert mac != "01:00:5e:00:00:01"


def test_corrupt_mac_file_replaced(tmp_path):
    Path(mac_path(str(tmp_path), "overlay.1")).write_text("garbage\n")
    mac = load_or_create_vtep_mac(str(tmp_path), "overlay.1")
    assert len(mac) == 17 and Path(mac_path(str(tmp_path), "overlay.1")).read_text().strip() == mac


def test_ruleset_never_nats_pod_to_pod_and_replaces_atomically():
    text = ruleset(IPv4Network("10.244.0.0/16"), IPv4Network("10.244.3.0/24"))
    lines = [line.strip() for line in text.splitlines()]
    # the old table is dropped in the same transaction as the new one is made
    assert lines[:2] == ["table ip overlay", "delete table ip overlay"]
    rules = [line for line in lines if line.startswith("ip ")]
    assert rules[0].startswith("ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 return")
    assert "ip saddr != 10.244.0.0/16 ip daddr 10.244.3.0/24 return" in rules[3]
    assert sum("masquerade" in r for r in rules) == 2


def test_intact_detects_missing_rules():
    m = Masquerade(NET, SUB, True)
    full = ruleset(NET, SUB).split("delete table ip overlay\n", 1)[1]
    assert m.intact(full)
    assert not m.intact(None)
    assert not m.intact(full.replace('comment "overlay: pod-to-pod, no NAT"', ""))


def test_disabled_masquerade_says_when_the_leftover_table_cannot_go(monkeypatch, caplog):
    import subprocess

    from overlay.masq import nft as masq_mod
    m = Masquerade(NET, SUB, False)
    monkeypatch.setattr(masq_mod.os.path, "exists", lambda p: True)

    def nft(*args, stdin=None):
        if args[0] == "list":
            return subprocess.CompletedProcess(args, 0, "table ip overlay {}", "")
        return subprocess.CompletedProcess(args, 1, "", "Error: Operation not permitted")
    monkeypatch.setattr(m, "_nft", nft)
    with caplog.at_level("WARNING", logger="overlay.masq.nft"):
        assert m.ensure() is False
    assert "Operation not permitted" in caplog.text and "nft delete table ip overlay" in caplog.text


def test_ipv6_vtep_mac_has_its_own_file(tmp_path):
    """The IPv6 device's MAC persists beside the IPv4 one, in its own file (k3s#9957:
    Flannel's changed on every boot)."""
    v4 = load_or_create_vtep_mac(str(tmp_path), "overlay.1")
    v6 = load_or_create_vtep_mac(str(tmp_path), "overlay-v6.1")
    assert v6 != v4
    assert Path(mac_path(str(tmp_path), "overlay-v6.1")).read_text().strip() == v6
    assert load_or_create_vtep_mac(str(tmp_path), "overlay-v6.1") == v6


def test_ipv6_ruleset_is_the_same_design_in_the_ip6_family():
    text = ruleset(IPv6Network("fd00:10:244::/56"), IPv6Network("fd00:10:244:3::/64"))
    lines = [line.strip() for line in text.splitlines()]
    assert lines[:2] == ["table ip6 overlay", "delete table ip6 overlay"]
    rules = [line for line in lines if line.startswith("ip6 ")]
    assert len(rules) == 5 and not [line for line in lines if line.startswith("ip ")]
    assert rules[0].startswith("ip6 saddr fd00:10:244::/56 ip6 daddr fd00:10:244::/56 return")
    assert "ip6 daddr ff00::/8 return" in rules[1]
    assert "ip6 saddr != fd00:10:244::/56 ip6 daddr fd00:10:244:3::/64 return" in rules[3]
    assert sum("masquerade" in r for r in rules) == 2


def test_ipv6_intact_checks_the_ip6_table_against_the_ipv6_networks():
    m = Masquerade(NET, SUB, True)
    net6, sub6 = IPv6Network("fd00:10:244::/56"), IPv6Network("fd00:10:244:3::/64")
    m.set_ipv6(net6, sub6)
    full6 = ruleset(net6, sub6).split("delete table ip6 overlay\n", 1)[1]
    full4 = ruleset(NET, SUB).split("delete table ip overlay\n", 1)[1]
    assert m.intact(full6, "ip6") and not m.intact(full4, "ip6")
    assert m.intact(full4) and not m.intact(full6)
    m.set_ipv6(IPv6Network("fd00:10:244::/56"), IPv6Network("fd00:10:244:4::/64"))
    assert not m.intact(full6, "ip6")  # a new subnet: the table is replaced


def test_masquerade_removes_an_ip6_table_left_when_ipv6_is_off(monkeypatch):
    """A node that ran with IPv6 and restarts without it drops its ip6 table; the ip
    table stays as it is."""
    import subprocess

    m = Masquerade(NET, SUB, True)
    full4 = ruleset(NET, SUB).split("delete table ip overlay\n", 1)[1]
    calls = []

    def nft(*args, stdin=None):
        calls.append(args)
        if args[:3] == ("list", "table", "ip"):
            return subprocess.CompletedProcess(args, 0, full4, "")
        if args[:3] == ("list", "table", "ip6"):
            return subprocess.CompletedProcess(args, 0, "table ip6 overlay {}", "")
        return subprocess.CompletedProcess(args, 0, "", "")
    monkeypatch.setattr(m, "_nft", nft)
    assert m.ensure() is True
    assert ("delete", "table", "ip6", "overlay") in calls
    assert not [c for c in calls if c[0] == "-f" or c[:3] == ("delete", "table", "ip")]


@pytest.mark.parametrize("content, words", [
    (b"0e:11:22:33:44:\xe9\n", "does not hold a MAC"),
    (b"\xff\xfe\x00\x01", "does not hold a MAC"),
    (b"01:00:5e:00:00:01\n", "holds 01:00:5e:00:00:01, not a unicast MAC"),
    (b"ff:ff:ff:ff:ff:ff\n", "holds ff:ff:ff:ff:ff:ff"),
    (b"00:00:00:00:00:00\n", "holds 00:00:00:00:00:00"),
    (b"0e:11:22:33:44:55\n" * 1000, "larger than"),
])
def test_a_garbled_or_unusable_mac_file_is_replaced_once_with_a_warning(
        tmp_path, caplog, content, words):
    path = Path(mac_path(str(tmp_path), "overlay.1"))
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="overlay.vxlan.vtep"):
        mac = load_or_create_vtep_mac(str(tmp_path), "overlay.1")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(path) in warnings[0] and words in warnings[0], warnings
    assert "\\x" not in warnings[0]  # the file's raw bytes are not logged
    assert _usable(mac) == mac and path.read_text() == mac + "\n"
    # the device's own MAC is adopted instead, as for any file that holds no MAC
    path.write_bytes(content)
    assert load_or_create_vtep_mac(str(tmp_path), "overlay.1",
                                   adopt="0e:aa:bb:cc:dd:ee") == "0e:aa:bb:cc:dd:ee"
    assert path.read_text() == "0e:aa:bb:cc:dd:ee\n"


def test_a_fifo_or_device_as_mac_file_is_one_error_not_a_hang(tmp_path):
    path = mac_path(str(tmp_path), "overlay.1")
    os.mkfifo(path)
    with deadline(), pytest.raises(ConfigError) as e:
        load_or_create_vtep_mac(str(tmp_path), "overlay.1")
    assert path in str(e.value) and "not a regular file" in str(e.value)
    os.unlink(path)
    os.symlink("/dev/zero", path)
    with deadline(), pytest.raises(ConfigError, match="not a regular file"):
        load_or_create_vtep_mac(str(tmp_path), "overlay.1")
