"""``overlayctl leases watch``: kubectl's words per event, and a timeout that says so."""

import json
from ipaddress import IPv4Network

import pytest
from click.testing import CliRunner

from overlay.cli import cli, lease_cmds
from overlay.lease import EventType, Lease, LeaseAttrs, LeaseEvent
from overlay.subnet.registry import WatchUpdate
from tests.fakes import FakeRegistry


def attrs(n, mac=None):
    return LeaseAttrs.from_json(json.dumps({"PublicIP": f"192.168.1.{n}", "BackendData": (
        {"VtepMAC": mac} if mac else {})}))


def lease(n, mac=None):
    return Lease(IPv4Network(f"10.244.{n}.0/24"), attrs(n, mac))


@pytest.fixture
def reg(monkeypatch):
    r = FakeRegistry()
    r.put(IPv4Network("10.244.1.0/24"), attrs(11), ttl=600)
    monkeypatch.setattr(lease_cmds, "EtcdRegistry", lambda opts: r)
    return r


def watch(*args):
    return CliRunner().invoke(cli, ["leases", "watch", *args], catch_exceptions=False)


def test_new_changed_and_removed_keys_are_added_modified_deleted(reg):
    reg.events.put(WatchUpdate(events=[
        LeaseEvent(EventType.ADDED, lease(2), 5),
        LeaseEvent(EventType.ADDED, lease(2, "0e:00:00:00:00:02"), 6),  # same key again
        LeaseEvent(EventType.ADDED, lease(1, "0e:00:00:00:00:01"), 7),  # known at start
        LeaseEvent(EventType.REMOVED, lease(1), 8)], revision=8))
    r = watch("--count", "4", "--timeout", "10")
    assert r.exit_code == 0, r.output
    assert [line.split()[:2] for line in r.stdout.splitlines()] == [
        ["ADDED", "10.244.2.0/24"], ["MODIFIED", "10.244.2.0/24"],
        ["MODIFIED", "10.244.1.0/24"], ["DELETED", "10.244.1.0/24"]]
    assert r.stderr == ""  # --count ended it, not the timeout


def test_json_lines_carry_the_same_words(reg):
    reg.events.put(WatchUpdate(events=[LeaseEvent(EventType.ADDED, lease(1, "0e:00:00:00:00:01"),
                                                  5)], revision=5))
    r = watch("-o", "json", "--count", "1", "--timeout", "10")
    assert json.loads(r.stdout)["event"] == "MODIFIED"


def test_a_snapshot_after_compaction_prints_the_net_difference(reg):
    reg.events.put(WatchUpdate(snapshot=[lease(1, "0e:00:00:00:00:01"), lease(3)], revision=9))
    r = watch("--count", "2", "--timeout", "10")
    assert sorted(line.split()[0] for line in r.stdout.splitlines()) == ["ADDED", "MODIFIED"]


def test_timeout_with_no_event_says_so_on_stderr_and_exits_0(reg):
    r = watch("--timeout", "0.3")
    assert r.exit_code == 0 and r.stdout == ""
    assert r.stderr == "watch timed out after 0.3s (0 events)\n"


def test_a_rekey_in_one_revision_is_one_modified_line(reg):
    from dataclasses import replace
    from ipaddress import IPv6Address, IPv6Network
    old = lease(1)
    new = replace(old, attrs=replace(attrs(11), public_ipv6=IPv6Address("fd00::11")),
                  ipv6_subnet=IPv6Network("fd00:10:244:1::/64"))
    reg.events.put(WatchUpdate(events=[LeaseEvent(EventType.REMOVED, old, 9),
                                       LeaseEvent(EventType.ADDED, new, 9)], revision=9))
    r = watch("--count", "1", "-o", "json")
    assert r.exit_code == 0, r.output
    [line] = r.output.splitlines()
    got = json.loads(line)
    assert got["event"] == "MODIFIED" and got["ipv6_subnet"] == "fd00:10:244:1::/64"
