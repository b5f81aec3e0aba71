"""Allocation policy of the subnet manager, against a fake registry that can lose races."""

import logging
import queue
import random
import threading
import time
from datetime import datetime, timedelta
from ipaddress import IPv4Address, IPv4Network

import pytest

from overlay.config import parse_network_config
from overlay.errors import NoFreeSubnet, RegistryError
from overlay.lease import EventType, Lease, LeaseAttrs, LeaseBatch, LeaseEvent, Rejection
from overlay.subnet.manager import SubnetManager
from overlay.subnet.registry import WatchUpdate
from tests.fakes import FakeRegistry

CFG = parse_network_config({"Network": "10.244.0.0/16"})
SMALL = parse_network_config({"Network": "10.244.0.0/16", "SubnetMin": "10.244.1.0",
                              "SubnetMax": "10.244.3.0"})


def net(i):
    return IPv4Network(f"10.244.{i}.0/24")


def node(i, mac=None):
    return LeaseAttrs(IPv4Address(f"192.168.1.{i}"), vtep_mac=mac or f"0e:00:00:00:00:{i:02x}")


def manager(reg, i=11, cfg=CFG, **kw):
    kw.setdefault("rng", random.Random(i))
    return SubnetManager(reg, cfg, node(i), ttl=kw.pop("ttl", 600), **kw)


def test_acquire_on_empty_network_picks_one_of_the_lowest_free_subnets():
    reg = FakeRegistry()
    lease = manager(reg, spread=8).acquire()
    assert lease.subnet in [net(i) for i in range(1, 9)]
    assert lease.attrs == node(11) and lease.ttl == 600 and not lease.reserved
    assert reg.leases[lease.subnet].attrs.public_ip == IPv4Address("192.168.1.11")


def test_random_choice_spreads_nodes_over_the_lowest_free_subnets():
    reg = FakeRegistry()
    picks = {manager(reg, i, spread=32).acquire().subnet for i in range(1, 11)}
    assert len(picks) == 10 and max(p.network_address.packed[2] for p in picks) <= 41


def test_restart_reuses_the_lease_carrying_this_public_ip():
    reg = FakeRegistry()
    first = manager(reg).acquire()
    again = manager(reg, rng=random.Random(999)).acquire()
    assert again.subnet == first.subnet
    assert again.mod_revision > first.mod_revision and len(reg.leases) == 1


def test_new_vtep_mac_is_published_when_reusing():
    reg = FakeRegistry()
    first = manager(reg).acquire()  # a reservation: ours whatever MAC it carries
    reg.put(first.subnet, node(11))
    m = SubnetManager(reg, CFG, node(11, mac="0e:aa:aa:aa:aa:aa"))
    assert m.acquire().subnet == first.subnet
    assert reg.leases[first.subnet].attrs.vtep_mac == "0e:aa:aa:aa:aa:aa"


def test_previous_subnet_is_reused_when_free():
    reg = FakeRegistry()
    assert manager(reg, previous_subnet=net(77)).acquire().subnet == net(77)


def test_previous_subnet_taken_by_another_node_is_not_used():
    reg = FakeRegistry()
    reg.put(net(77), node(50), ttl=600)
    lease = manager(reg, previous_subnet=net(77)).acquire()
    assert lease.subnet != net(77)
    assert reg.leases[net(77)].attrs == node(50)


def test_previous_subnet_outside_the_range_is_ignored():
    reg = FakeRegistry()
    lease = manager(reg, cfg=SMALL, previous_subnet=net(200)).acquire()
    assert lease.subnet in (net(1), net(2), net(3))


def test_reservation_for_this_node_is_taken_and_stays_a_reservation():
    reg = FakeRegistry()
    reg.put(net(9), LeaseAttrs(IPv4Address("192.168.1.11")))  # reserved by an operator
    lease = manager(reg).acquire()
    assert lease.subnet == net(9) and lease.reserved and lease.expiration is None
    assert reg.leases[net(9)].attrs.vtep_mac == node(11).vtep_mac  # data published


def test_reservations_of_other_nodes_are_never_handed_out():
    reg = FakeRegistry()
    reg.put(net(1), node(50))  # reservations (no TTL)
    reg.put(net(2), node(51))
    assert manager(reg, cfg=SMALL).acquire().subnet == net(3)
    with pytest.raises(NoFreeSubnet) as e:
        manager(reg, 12, cfg=SMALL).acquire()
    msg = str(e.value)
    assert "10.244.0.0/16" in msg and "10.244.1.0/24..10.244.3.0/24" in msg
    assert "3 of 3 taken (2 reserved)" in msg
    assert {lease.attrs.public_ip for lease in reg.leases.values()} == {
        IPv4Address("192.168.1.50"), IPv4Address("192.168.1.51"), IPv4Address("192.168.1.11")}


def test_lost_race_is_retried_with_a_fresh_read():
    reg = FakeRegistry()
    rivals = iter(range(60, 64))

    def rival_wins(subnet):  # another node writes exactly the subnet we are about to take
        if reg.creates < 3:
            reg.put(subnet, node(next(rivals)), ttl=600)
    reg.before_write = rival_wins
    lease = manager(reg, spread=4).acquire()
    owners = {lease.subnet: lease.attrs.public_ip for lease in reg.leases.values()}
    assert owners[lease.subnet] == IPv4Address("192.168.1.11")
    assert len(owners) == 4 and reg.creates == 4  # three lost races, then a win


def test_retries_are_bounded():
    reg = FakeRegistry()

    def always_lose(subnet):
        if subnet not in reg.leases:
            reg.put(subnet, node(99), ttl=600)
        else:
            reg.put(subnet, reg.leases[subnet].attrs, ttl=600)
    reg.before_write = always_lose
    with pytest.raises(RegistryError, match="after 5 lost races"):
        manager(reg, max_attempts=5).acquire()


def test_concurrent_nodes_get_distinct_subnets():
    reg = FakeRegistry()

    def slow(subnet):  # widen the race window between read and write
        time.sleep(0.001)
    reg.before_write = slow
    results, errors = [], []

    def run(i):
        try:
            results.append(manager(reg, i, spread=8, max_attempts=50).acquire())
        except Exception as e:  # noqa: BLE001 (collected so the assertion below shows it)
            errors.append(e)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(1, 31)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len({lease.subnet for lease in results}) == 30


def test_renew_keeps_the_subnet_and_extends_expiry():
    reg = FakeRegistry()
    m = manager(reg)
    lease = m.acquire()
    time.sleep(0.01)
    renewed = m.renew(lease)
    assert renewed.subnet == lease.subnet and renewed.etcd_lease_id == lease.etcd_lease_id
    assert renewed.expiration > lease.expiration
    assert m.current == renewed


def test_renew_of_a_deleted_lease_reacquires_the_same_subnet_loudly(caplog):
    reg = FakeRegistry()
    m = manager(reg)
    lease = m.acquire()
    reg.delete(lease.subnet)
    with caplog.at_level(logging.WARNING, logger="overlay.subnet.manager"):
        new = m.renew(lease)
    assert new.subnet == lease.subnet and new.etcd_lease_id != lease.etcd_lease_id
    assert any("LEASE LOST" in r.message for r in caplog.records)


def test_renew_never_overwrites_a_lease_taken_by_another_node():
    reg = FakeRegistry()
    m = manager(reg)
    lease = m.acquire()
    reg.delete(lease.subnet)
    reg.put(lease.subnet, node(50), ttl=600)
    new = m.renew(lease)
    assert new.subnet != lease.subnet
    assert reg.leases[lease.subnet].attrs == node(50)


def _run(target, *args):
    t = threading.Thread(target=target, args=args, daemon=True)
    t.start()
    return t


def test_keepalive_renews_before_expiry():
    reg = FakeRegistry()
    m = manager(reg, ttl=2, renew_margin=1)
    lease = m.acquire()
    stop = threading.Event()
    t = _run(m.run_keepalive, lease, stop, lambda _: None)
    time.sleep(1.6)  # past the renewal point (1 s) but before expiry (2 s)
    assert reg.leases[lease.subnet].expiration > lease.expiration + timedelta(seconds=0.4)
    stop.set()
    t.join(2)
    assert not t.is_alive()


def test_keepalive_reacquires_when_told_the_lease_was_lost():
    reg = FakeRegistry()
    m = manager(reg, check_interval=3600)
    lease = m.acquire()
    got: queue.Queue[Lease] = queue.Queue()
    stop = threading.Event()
    t = _run(m.run_keepalive, lease, stop, got.put)
    reg.delete(lease.subnet)
    m.lost.set()
    new = got.get(timeout=2)
    assert new.subnet == lease.subnet and reg.leases[lease.subnet] == new
    assert m.current == new
    stop.set()
    t.join(2)
    assert not t.is_alive()


def test_keepalive_spurious_loss_signal_changes_nothing():
    reg = FakeRegistry()
    m = manager(reg, check_interval=3600)
    lease = m.acquire()
    calls: list[Lease] = []
    stop = threading.Event()
    t = _run(m.run_keepalive, lease, stop, calls.append)
    m.lost.set()
    deadline = time.monotonic() + 2
    while m.lost.is_set() and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    t.join(2)
    assert not calls and reg.leases[lease.subnet] == lease


def test_keepalive_retries_while_the_registry_is_down(monkeypatch):
    reg = FakeRegistry()
    m = manager(reg, ttl=2, renew_margin=1)
    lease = m.acquire()
    real_renew = reg.renew_lease
    failures: list[int] = []

    def flaky(to_renew):
        if len(failures) < 3:
            failures.append(1)
            raise RegistryError("etcd unreachable")
        return real_renew(to_renew)
    monkeypatch.setattr(reg, "renew_lease", flaky)
    stop = threading.Event()
    t = _run(m.run_keepalive, lease, stop, lambda _: None)
    deadline = time.monotonic() + 5
    while reg.leases[lease.subnet].expiration == lease.expiration and time.monotonic() < deadline:
        time.sleep(0.02)
    stop.set()
    t.join(2)
    assert len(failures) == 3 and reg.leases[lease.subnet].expiration > lease.expiration


def test_run_watch_emits_remote_leases_only_and_flags_own_deletion():
    reg = FakeRegistry()
    reg.put(net(5), node(50), ttl=600)
    m = manager(reg)
    own = m.acquire()
    batches: queue.Queue[LeaseBatch] = queue.Queue()
    stop = threading.Event()
    t = _run(m.run_watch, m.own_subnet, stop, batches.put)
    first = batches.get(timeout=2)
    assert [lease.subnet for lease in first.added] == [net(5)]
    new = reg.put(net(6), node(51), ttl=600)
    reg.events.put(WatchUpdate([LeaseEvent(EventType.ADDED, new, new.mod_revision),
                                LeaseEvent(EventType.REMOVED, own, reg.rev)], revision=reg.rev))
    second = batches.get(timeout=2)
    assert [lease.subnet for lease in second.added] == [net(6)] and not second.removed
    assert m.lost.wait(2)
    stop.set()
    t.join(2)
    assert not t.is_alive()


def test_run_watch_snapshot_after_compaction_yields_the_difference():
    reg = FakeRegistry()
    a = reg.put(net(5), node(50), ttl=600)
    m = manager(reg)
    m.acquire()
    batches: queue.Queue[LeaseBatch] = queue.Queue()
    stop = threading.Event()
    t = _run(m.run_watch, m.own_subnet, stop, batches.put)
    batches.get(timeout=2)
    b = reg.put(net(6), node(51), ttl=600)
    reg.events.put(WatchUpdate([], snapshot=[b] + [m.current], revision=reg.rev))
    batch = batches.get(timeout=2)
    assert [lease.subnet for lease in batch.added] == [net(6)]
    assert [lease.subnet for lease in batch.removed] == [a.subnet]
    assert not m.lost.is_set()
    stop.set()
    t.join(2)


def test_run_watch_never_reports_our_own_new_lease_as_remote():
    """The watch can see our re-acquired key before the manager records its subnet.

    Whoever took our old subnet stays rejected (own-subnet) while it is still ours, and
    shows up as a remote as soon as we moved."""
    reg = FakeRegistry()
    m = manager(reg)
    old = m.acquire()
    batches: queue.Queue[LeaseBatch] = queue.Queue()
    rejected: queue.Queue[tuple[list[Rejection], list[str], bool]] = queue.Queue()
    stop = threading.Event()
    t = _run(m.run_watch, m.own_subnet, stop, batches.put, None,
             lambda now, gone, complete: rejected.put((now, gone, complete)))
    assert rejected.get(timeout=2) == ([], [], True)
    rival = reg.put(old.subnet, node(50), ttl=600)  # a rival took our subnet
    ours = reg.put(net(200), node(11), ttl=600)  # and we moved, not yet recorded as current
    reg.events.put(WatchUpdate([LeaseEvent(EventType.ADDED, rival, rival.mod_revision),
                                LeaseEvent(EventType.ADDED, ours, ours.mod_revision)],
                               revision=reg.rev))
    now, _, _ = rejected.get(timeout=2)
    assert [(r.subnet, r.reason) for r in now] == [(old.subnet, "own-subnet")]
    assert m.lost.wait(2) and batches.empty()
    m._set_current(ours)  # at once, with no further watch event (none may come)
    assert [lease.subnet for lease in batches.get(timeout=2).added] == [old.subnet]
    now, gone, _ = rejected.get(timeout=2)
    assert now == [] and gone == [reg.subnets_prefix + f"{old.subnet.network_address}-24"]
    stop.set()
    t.join(2)


def test_keepalive_keeps_a_loss_signal_across_registry_errors(monkeypatch):
    reg = FakeRegistry()
    m = manager(reg, check_interval=3600)
    lease = m.acquire()
    real_get = reg.get_lease
    failures: list[int] = []

    def flaky(subnet):
        if len(failures) < 2:
            failures.append(1)
            raise RegistryError("etcd unreachable")
        return real_get(subnet)
    monkeypatch.setattr(reg, "get_lease", flaky)
    got: queue.Queue[Lease] = queue.Queue()
    stop = threading.Event()
    t = _run(m.run_keepalive, lease, stop, got.put)
    reg.delete(lease.subnet)
    m.lost.set()
    new = got.get(timeout=3)  # the check failed twice, then still happened
    assert new.subnet == lease.subnet and len(failures) == 2
    stop.set()
    t.join(2)


def test_live_lease_of_another_node_with_our_public_ip_is_not_taken_over(caplog):
    """Two nodes with one public IP (cloned VM, NAT) must not share a subnet."""
    reg = FakeRegistry()
    twin = reg.put(net(1), node(11, mac="0e:bb:bb:bb:bb:bb"), ttl=600)
    with caplog.at_level(logging.ERROR, logger="overlay.subnet.manager"):
        lease = manager(reg).acquire()
    assert lease.subnet != net(1) and reg.leases[net(1)] == twin
    assert "same public IP" in caplog.text


def test_our_previous_subnet_with_a_new_vtep_mac_is_reused():
    reg = FakeRegistry()
    first = manager(reg).acquire()
    m = manager(reg, previous_subnet=first.subnet)
    m.attrs = node(11, mac="0e:aa:aa:aa:aa:aa")
    assert m.acquire().subnet == first.subnet
    assert reg.leases[first.subnet].attrs.vtep_mac == "0e:aa:aa:aa:aa:aa"


def test_run_watch_rejects_a_twin_with_our_public_ip_and_snapshots_to_callback():
    """A lease with our public IP but another VTEP MAC (a cloned VM): an FDB entry for it
    would point at ourselves, so the rule rejects it (public-ip-own)."""
    reg = FakeRegistry()
    twin = reg.put(net(1), node(11, mac="0e:bb:bb:bb:bb:bb"), ttl=600)
    peer = reg.put(net(5), node(50), ttl=600)
    m = manager(reg)
    own = m.acquire()
    batches: queue.Queue[LeaseBatch] = queue.Queue()
    snapshots: queue.Queue[list[Lease]] = queue.Queue()
    rejected: queue.Queue[tuple[list[Rejection], bool]] = queue.Queue()
    stop = threading.Event()
    t = _run(m.run_watch, m.own_subnet, stop, batches.put, snapshots.put,
             lambda now, gone, complete: rejected.put((now, complete)))
    first = snapshots.get(timeout=2)
    assert sorted(lease.subnet for lease in first) == [net(5)] and own.subnet != net(1)
    now, complete = rejected.get(timeout=2)
    assert [(r.subnet, r.reason) for r in now] == [(net(1), "public-ip-own")] and complete
    reg.delete(peer.subnet)
    reg.events.put(WatchUpdate([], snapshot=[twin, m.current], revision=reg.rev))
    assert snapshots.get(timeout=2) == []  # compaction re-list
    assert batches.empty() and not m.lost.is_set()
    stop.set()
    t.join(2)


def test_renewal_deadline_survives_a_backward_clock_step(monkeypatch):
    import overlay.subnet.manager as manager_mod
    reg = FakeRegistry()
    m = manager(reg, ttl=600, renew_margin=100, check_interval=3600)
    lease = m.acquire()
    assert 495 < m._next_renewal(lease) <= 500
    real = datetime

    class SteppedBack(datetime):
        @classmethod
        def now(cls, tz=None):
            return real.now(tz) - timedelta(seconds=1000)
    monkeypatch.setattr(manager_mod, "datetime", SteppedBack)
    assert 495 < m._next_renewal(lease) <= 500  # not 1500: renewal stays before expiry


def test_after_a_public_ip_change_the_lease_with_our_vtep_mac_is_taken_back():
    """Recognised by its persisted VTEP MAC: rewritten, not left beside a second lease
    that would claim one MAC for two public IPs."""
    reg = FakeRegistry()
    old = manager(reg).acquire()
    m = manager(reg)
    m.attrs = LeaseAttrs(IPv4Address("192.168.7.11"), vtep_mac=node(11).vtep_mac)
    new = m.acquire()
    assert new.subnet == old.subnet and len(reg.leases) == 1
    assert reg.leases[old.subnet].attrs.public_ip == IPv4Address("192.168.7.11")


def test_a_lease_with_our_vtep_mac_is_never_a_remote():
    reg = FakeRegistry()
    thief = reg.put(net(5), LeaseAttrs(IPv4Address("192.168.1.99"),
                                       vtep_mac=node(11).vtep_mac), ttl=None)  # reserved
    m = manager(reg)
    m.acquire()
    batches: queue.Queue[LeaseBatch] = queue.Queue()
    rejected: queue.Queue[list[Rejection]] = queue.Queue()
    stop = threading.Event()
    t = _run(m.run_watch, m.own_subnet, stop, batches.put, None,
             lambda now, gone, complete: rejected.put(now))
    assert [(r.subnet, r.reason) for r in rejected.get(timeout=2)] == [
        (thief.subnet, "vtep-mac-claimed")]
    assert batches.empty()
    stop.set()
    t.join(2)


def test_a_key_holding_garbage_is_not_free_even_as_our_previous_subnet():
    reg = FakeRegistry()
    reg.garbage[net(3)] = b"[[["
    lease = manager(reg, previous_subnet=net(3)).acquire()
    assert lease.subnet != net(3) and reg.creates == 1


def test_the_watch_reports_garbage_and_its_removal():
    reg = FakeRegistry()
    reg.garbage[net(3)] = b"{"
    m = manager(reg)
    m.acquire()
    seen: queue.Queue[tuple[list[Rejection], list[str], bool]] = queue.Queue()
    stop = threading.Event()
    t = _run(m.run_watch, m.own_subnet, stop, lambda b: None, None,
             lambda now, gone, complete: seen.put((now, gone, complete)))
    now, gone, complete = seen.get(timeout=2)
    assert [r.subnet for r in now] == [net(3)] and complete
    bad = reg.put(net(9), LeaseAttrs(IPv4Address("127.0.0.1"), vtep_mac="0e:00:00:00:00:99"))
    reg.events.put(WatchUpdate([LeaseEvent(EventType.ADDED, bad, bad.mod_revision)],
                               revision=reg.rev))
    now, gone, complete = seen.get(timeout=2)
    assert [(r.key, r.reason) for r in now] == [
        (reg.subnets_prefix + "10.244.9.0-24", "public-ip-unusable")] and not complete
    reg.events.put(WatchUpdate([LeaseEvent(EventType.REMOVED, bad, reg.rev)],
                               cleared=["/overlay/network/subnets/junk"], revision=reg.rev))
    now, gone, complete = seen.get(timeout=2)
    assert now == [] and sorted(gone) == [reg.subnets_prefix + "10.244.9.0-24",
                                          "/overlay/network/subnets/junk"]
    stop.set()
    t.join(2)
