"""The subnet manager and reservations in an IPv6-only network, against the shared fake
registry: the same policy as IPv4's, on IPv6 subnets, public IPs and VTEP MACs."""

from __future__ import annotations

import queue
import random
import threading
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest

from overlay.config import parse_network_config
from overlay.errors import ConfigError
from overlay.lease import EventType, Lease, LeaseAttrs, LeaseEvent, Reason
from overlay.subnet import reservations
from overlay.subnet.manager import SubnetManager
from overlay.subnet.registry import WatchUpdate
from tests.fakes import FakeRegistry

CFG = parse_network_config({"EnableIPv4": False, "EnableIPv6": True,
                            "IPv6Network": "fd00:10:244::/56"})


def net6(i: int) -> IPv6Network:
    return IPv6Network(f"fd00:10:244:{i:x}::/64")


def attrs(i: int) -> LeaseAttrs:
    return LeaseAttrs(IPv6Address(f"fd00:192:168:1::{i}"), vtep_mac=f"0e:00:00:00:00:{i:02x}")


def registry() -> FakeRegistry:
    reg = FakeRegistry()
    reg.config = CFG.to_json().encode()
    return reg


def manager(reg, i=11, **kw) -> SubnetManager:
    kw.setdefault("rng", random.Random(i))
    return SubnetManager(reg, CFG, attrs(i), ttl=600, **kw)


def test_acquire_takes_an_ipv6_subnet_keyed_alone_and_a_restart_gets_it_back():
    reg = registry()
    reg.put(net6(1), attrs(1), ttl=600)
    lease = manager(reg, spread=1).acquire()
    assert lease.subnet == net6(2) and lease.ipv6_subnet is None  # the lowest free
    assert reg.leases[net6(2)].attrs == attrs(11)
    again = manager(reg, spread=1).acquire()  # same public IP and VTEP MAC: reused
    assert again.subnet == net6(2) and len(reg.leases) == 2


def test_the_previous_subnet_is_taken_back_and_renewal_keeps_it():
    reg = registry()
    m = manager(reg, previous_subnet=net6(9))
    lease = m.acquire()
    assert lease.subnet == net6(9)
    renewed = m.renew(lease)
    assert renewed.subnet == net6(9) and renewed.etcd_lease_id == lease.etcd_lease_id
    reg.delete(net6(9))  # lost: re-acquired, the same subnet while it is free
    assert m.renew(renewed).subnet == net6(9)


def test_a_reservation_for_the_nodes_ipv6_address_is_taken_and_stays_one():
    reg = registry()
    reservations.reserve(reg, net6(7), attrs(11).public_ip)
    assert reg.leases[net6(7)].reserved and reg.leases[net6(7)].attrs.ipv6_only
    lease = manager(reg).acquire()
    assert lease.subnet == net6(7) and lease.reserved and lease.attrs.vtep_mac == attrs(11).vtep_mac


@pytest.mark.parametrize("subnet, ip, words", [
    (net6(7), IPv4Address("192.168.1.11"), "is IPv4 but the subnet"),
    (IPv4Network("10.244.7.0/24"), IPv6Address("fd00:192:168:1::11"), "not a subnet of"),
    (IPv6Network("fd00:10:245:7::/64"), IPv6Address("fd00:192:168:1::11"), "not a subnet of"),
])
def test_a_reservation_of_the_wrong_family_is_refused_and_nothing_written(subnet, ip, words):
    reg = registry()
    with pytest.raises(ConfigError) as e:
        reservations.reserve(reg, subnet, ip)
    assert words in str(e.value) and reg.leases == {}


def test_the_watch_feeds_ipv6_only_remotes_and_rejects_an_ipv4_key_alone():
    reg = registry()
    reg.put(net6(3), attrs(3), ttl=600)
    reg.put(IPv4Network("10.244.4.0/24"), LeaseAttrs(IPv4Address("192.168.1.4")), ttl=600)
    m = manager(reg)
    own = m.acquire()
    snapshots: queue.Queue[list[Lease]] = queue.Queue()
    batches: queue.Queue = queue.Queue()
    rejected: list = []
    stop = threading.Event()
    t = threading.Thread(target=m.run_watch, args=(m.own_subnet, stop, batches.put,
                                                   snapshots.put,
                                                   lambda now, gone, full: rejected.extend(now)),
                         daemon=True)
    t.start()
    try:
        assert [x.subnet for x in snapshots.get(timeout=2)] == [net6(3)]  # own one left out
        new = reg.put(net6(5), attrs(5), ttl=600)
        reg.events.put(WatchUpdate([LeaseEvent(EventType.ADDED, new, new.mod_revision)],
                                   revision=reg.rev))
        assert [x.subnet for x in batches.get(timeout=2).added] == [net6(5)]
    finally:
        stop.set()
        t.join(2)
    assert [(r.subnet, r.reason) for r in rejected] == [
        (IPv4Network("10.244.4.0/24"), Reason.FAMILY_MISMATCH)]
    assert own.subnet not in {x.subnet for x in rejected}
