"""The subnet manager's IPv6 half (issue 14), against the shared fake registry."""

from __future__ import annotations

import queue
import random
import threading
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from overlay.config import parse_network_config
from overlay.lease import EventType, Lease, LeaseAttrs, LeaseEvent
from overlay.subnet.manager import SubnetManager
from overlay.subnet.registry import WatchUpdate
from tests.fakes import FakeRegistry

DUAL = parse_network_config({"Network": "10.244.0.0/16", "EnableIPv6": True,
                             "IPv6Network": "fd00:10:244::/56"})
TINY6 = parse_network_config({"Network": "10.244.0.0/16", "EnableIPv6": True,
                              "IPv6Network": "fd00:10:244::/62"})  # 3 IPv6 subnets


def net(i: int) -> IPv4Network:
    return IPv4Network(f"10.244.{i}.0/24")


def net6(i: int, cfg=DUAL) -> IPv6Network:
    return IPv6Network(f"fd00:10:244:{i:x}::/64") if cfg is DUAL else cfg.ipv6_subnet_at(i - 1)


def attrs(i: int, v6: bool = True) -> LeaseAttrs:
    a = LeaseAttrs(IPv4Address(f"192.168.1.{i}"), vtep_mac=f"0e:00:00:00:00:{i:02x}")
    if v6:
        a = replace(a, public_ipv6=IPv6Address(f"fd00:192:168:1::{i}"), v6_vni=1,
                    v6_vtep_mac=f"0e:00:00:00:01:{i:02x}")
    return a


def manager(reg, i=11, cfg=DUAL, **kw) -> SubnetManager:
    kw.setdefault("rng", random.Random(i))
    return SubnetManager(reg, cfg, attrs(i, kw.pop("v6", True)), ttl=600, **kw)


def test_the_ipv6_subnet_is_paired_with_the_ipv4_one_by_index():
    reg = FakeRegistry()
    lease = manager(reg, previous_subnet=net(9)).acquire()
    assert (lease.subnet, lease.ipv6_subnet) == (net(9), net6(9))
    assert reg.leases[net(9)].ipv6_subnet == net6(9)


def test_a_paired_ipv6_subnet_held_by_another_lease_gives_the_lowest_free_one():
    reg = FakeRegistry()
    reg.put(net(2), attrs(2), ttl=600, ipv6_subnet=net6(9))  # e.g. a Flannel node's pick
    reg.put(net(3), attrs(3), ttl=600, ipv6_subnet=net6(1))
    lease = manager(reg, previous_subnet=net(9)).acquire()
    assert (lease.subnet, lease.ipv6_subnet) == (net(9), net6(2))


def test_the_previous_ipv6_subnet_is_taken_back_when_free():
    reg = FakeRegistry()
    lease = manager(reg, previous_subnet=net(9), previous_ipv6_subnet=net6(40)).acquire()
    assert lease.ipv6_subnet == net6(40)


def test_no_free_ipv6_subnet_or_no_public_ipv6_gives_an_ipv4_only_key(caplog):
    reg = FakeRegistry()
    for i in (1, 2, 3):
        reg.put(net(i), attrs(i), ttl=600, ipv6_subnet=TINY6.ipv6_subnet_at(i - 1))
    lease = manager(reg, cfg=TINY6).acquire()
    assert lease.ipv6_subnet is None and lease.subnet not in {net(1), net(2), net(3)}
    assert "no free IPv6 subnet" in caplog.text
    bare = manager(reg, 12, v6=False).acquire()
    assert bare.ipv6_subnet is None
    assert "no IPv6 public address" in caplog.text


def test_an_ipv4_lease_is_rekeyed_when_ipv6_is_enabled_and_back_when_not():
    reg = FakeRegistry()
    v4cfg = parse_network_config({"Network": "10.244.0.0/16"})
    old = manager(reg, cfg=v4cfg, v6=False).acquire()
    dual = manager(reg).acquire()
    assert dual.subnet == old.subnet and dual.ipv6_subnet is not None
    assert len(reg.leases) == 1 and reg.leases[old.subnet].ipv6_subnet == dual.ipv6_subnet
    # the pairing is kept by a restart
    assert manager(reg, rng=random.Random(5)).acquire().ipv6_subnet == dual.ipv6_subnet
    # IPv6 turned off again: the key loses its IPv6 half
    assert manager(reg, cfg=v4cfg, v6=False).acquire().ipv6_subnet is None
    assert reg.leases[old.subnet].ipv6_subnet is None


def test_the_watch_hands_the_data_plane_ipv4_only_for_a_rejected_ipv6_half(caplog):
    reg = FakeRegistry()
    reg.put(net(5), replace(attrs(5), public_ipv6=IPv6Address("fe80::5")), ttl=600,
            ipv6_subnet=net6(5))
    reg.put(net(6), attrs(6), ttl=600, ipv6_subnet=net6(6))
    m = manager(reg)
    counted: list[str] = []
    m.on_ipv6_rejected = lambda r: counted.append(r.reason)
    m.acquire()
    got: queue.Queue[list[Lease]] = queue.Queue()
    stop = threading.Event()
    batches: queue.Queue = queue.Queue()
    t = threading.Thread(target=m.run_watch, args=(m.own_subnet, stop, batches.put,
                                                   got.put), daemon=True)
    t.start()
    try:
        snapshot = {x.subnet: x for x in got.get(timeout=2)}
        # a later event on another lease does not log the unused IPv6 half again
        other = reg.put(net(7), attrs(7), ttl=600, ipv6_subnet=net6(7))
        reg.events.put(WatchUpdate([LeaseEvent(EventType.ADDED, other, other.mod_revision)],
                                   revision=reg.rev))
        assert [x.subnet for x in batches.get(timeout=2).added] == [net(7)]
    finally:
        stop.set()
        t.join(2)
    said = [r.getMessage() for r in caplog.records if "IPv6 half is not used" in r.getMessage()]
    assert len(said) == 1 and "public-ipv6-unusable" in said[0], said
    assert counted == ["public-ipv6-unusable"]  # counted once too
    assert snapshot[net(5)].ipv6_subnet is None and snapshot[net(5)].attrs.public_ipv6 is None
    assert snapshot[net(5)].attrs.vtep_mac == attrs(5).vtep_mac  # IPv4 still used
    assert snapshot[net(6)].ipv6_subnet == net6(6)


def test_a_node_that_lost_an_ipv6_race_rekeys_to_a_free_ipv6_subnet(caplog):
    reg = FakeRegistry()

    def racer(subnet):  # another node creates its key, with the same IPv6 subnet, first
        reg.before_write = None
        reg.put(net(3), attrs(3), ttl=600, ipv6_subnet=net6(9))
    reg.before_write = racer
    lease = manager(reg, previous_subnet=net(9)).acquire()
    assert lease.subnet == net(9) and lease.ipv6_subnet not in (None, net6(9))
    assert reg.leases[net(9)].ipv6_subnet == lease.ipv6_subnet
    assert reg.leases[net(3)].ipv6_subnet == net6(9)  # the older lease keeps it
    assert "(a race)" in caplog.text


def test_no_rekey_while_another_key_holds_the_same_ipv4_subnet(caplog):
    reg = FakeRegistry()
    v4cfg = parse_network_config({"Network": "10.244.0.0/16"})
    mine = manager(reg, cfg=v4cfg, v6=False).acquire()
    rival = replace(mine, attrs=attrs(66), ipv6_subnet=net6(66),
                    create_revision=mine.create_revision + 1)
    real_list = reg.list_subnets

    def with_rival(with_expiration=True):  # the fake holds one key per subnet: add one
        listing = real_list(with_expiration)
        return replace(listing, leases=[*listing.leases, rival])
    reg.list_subnets = with_rival  # type: ignore[method-assign]
    again = manager(reg).acquire()
    assert again.subnet == mine.subnet and again.ipv6_subnet is None  # IPv4 kept as it was
    assert "not re-keying" in caplog.text and "10.244." in caplog.text
