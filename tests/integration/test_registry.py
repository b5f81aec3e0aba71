"""EtcdRegistry against a real etcd: txns, TTLs, watch recovery, TLS and auth."""

import shutil
import subprocess
import tempfile
import threading
import time
from ipaddress import IPv4Address, IPv4Network

import pytest

from overlay.config import parse_network_config
from overlay.errors import (
    ConfigError,
    ConfigNotFound,
    EtcdUnavailable,
    LeaseConflict,
    LeaseExists,
    RegistryError,
)
from overlay.lease import EventType, LeaseAttrs, LeaseRules, LeaseView
from overlay.subnet.etcdconf import make_etcd_options
from overlay.subnet.registry import EtcdRegistry

from .support.etcd_server import EtcdServer, TcpProxy, make_test_ca

pytestmark = pytest.mark.integration

CFG = parse_network_config({"Network": "10.244.0.0/16"})


def net(i):
    return IPv4Network(f"10.244.{i}.0/24")


def attrs(i, mac=None):
    return LeaseAttrs(IPv4Address(f"192.168.1.{i}"), vtep_mac=mac or f"0e:00:00:00:01:{i:02x}")


def wait_for(pred, timeout=5.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def registry(etcd_server):
    reg = EtcdRegistry(make_etcd_options(etcd_server.endpoint, timeout=3.0))
    try:
        yield reg
    finally:
        reg.close()


class Watcher:
    """Runs registry.watch_leases in a thread, folding updates into a LeaseView."""

    def __init__(self, reg, start_revision, rules=None):
        self.view = LeaseView(rules=rules)
        self.view.reset(reg.list_leases(with_expiration=False)[0])
        self.updates = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, args=(reg, start_revision), daemon=True)
        self.thread.start()

    def _run(self, reg, start):
        for u in reg.watch_leases(start, self.stop):
            with self.lock:
                self.updates.append(u)
                if u.snapshot is not None:
                    self.view.reset(u.snapshot)
                else:
                    self.view.apply(u.events)

    def subnets(self):
        with self.lock:
            return set(self.view.leases)

    def events(self):
        with self.lock:
            return [(e.type, e.lease.subnet) for u in self.updates for e in u.events]

    def close(self):
        self.stop.set()
        t0 = time.monotonic()
        self.thread.join(3)
        assert not self.thread.is_alive()
        return time.monotonic() - t0


def test_config_absent_then_set_then_invalid(registry, etcd_server):
    with pytest.raises(ConfigNotFound, match="overlayctl config set"):
        registry.get_config()
    registry.put_config(CFG)
    assert registry.get_config() == CFG
    registry.client().put(registry.config_key, '{"Network": "10.244.0.1/16"}')
    with pytest.raises(ConfigError, match="host bits"):
        registry.get_config()


def test_create_is_put_if_absent(registry):
    a = registry.create_lease(net(1), attrs(11), 60)
    assert a.ttl == 60 and a.etcd_lease_id and a.mod_revision > 0 and not a.reserved
    with pytest.raises(LeaseExists, match="192.168.1.11"):
        registry.create_lease(net(1), attrs(12), 60)
    got = registry.get_lease(net(1))
    assert got.attrs == attrs(11) and got.etcd_lease_id == a.etcd_lease_id
    assert 55 <= (got.expiration - a.expiration).total_seconds() + 60 <= 61
    leases, rev = registry.list_leases()
    assert [lease.subnet for lease in leases] == [net(1)] and rev >= a.mod_revision
    assert registry.get_lease(net(2)) is None


def test_update_is_revision_checked(registry):
    a = registry.create_lease(net(1), attrs(11), 60)
    b = registry.update_lease(a, attrs(11, mac="0e:00:00:00:00:ff"), 60)
    assert b.mod_revision > a.mod_revision and b.attrs.vtep_mac == "0e:00:00:00:00:ff"
    with pytest.raises(LeaseConflict, match="since it was read"):
        registry.update_lease(a, attrs(12), 60)  # stale read
    assert registry.get_lease(net(1)).attrs.public_ip == IPv4Address("192.168.1.11")
    r = registry.update_lease(b, attrs(11), None)  # into a reservation
    assert r.reserved and registry.get_lease(net(1)).reserved


def test_renew_refreshes_and_detects_loss(registry):
    a = registry.create_lease(net(1), attrs(11), 3)
    time.sleep(1.1)
    b = registry.renew_lease(a)
    assert b.expiration > a.expiration and b.etcd_lease_id == a.etcd_lease_id
    registry.delete_lease(net(1))
    with pytest.raises(LeaseConflict):
        registry.renew_lease(b)
    c = registry.create_lease(net(1), attrs(12), 3)
    with pytest.raises(LeaseConflict):  # the subnet now belongs to someone else
        registry.renew_lease(b)
    assert registry.get_lease(net(1)).etcd_lease_id == c.etcd_lease_id


def test_unrenewed_lease_expires(registry):
    registry.create_lease(net(3), attrs(13), 1)
    wait_for(lambda: registry.get_lease(net(3)) is None, 5, "the lease to expire")
    assert registry.list_leases()[0] == []


def test_delete_with_expected_revision(registry):
    a = registry.create_lease(net(1), attrs(11), 60)
    b = registry.update_lease(a, attrs(11), 60)
    assert registry.delete_lease(net(1), expect_revision=a.mod_revision) is False
    assert registry.delete_lease(net(1), expect_revision=b.mod_revision) is True
    assert registry.delete_lease(net(1)) is False


def test_watch_sees_puts_deletes_and_expiry_and_stops_promptly(registry):
    _, rev = registry.list_leases()
    w = Watcher(registry, rev + 1)
    registry.create_lease(net(1), attrs(11), 1)
    registry.create_lease(net(2), attrs(12), 60)
    registry.delete_lease(net(2))
    wait_for(lambda: (EventType.REMOVED, net(1)) in w.events(), 5, "the expiry event")
    assert w.events() == [(EventType.ADDED, net(1)), (EventType.ADDED, net(2)),
                          (EventType.REMOVED, net(2)), (EventType.REMOVED, net(1))]
    removed = [e for u in w.updates for e in u.events if e.type is EventType.REMOVED]
    assert removed[0].lease.attrs.public_ip == IPv4Address("192.168.1.12")  # from prev_kv
    assert w.close() < 1.0


def test_compaction_during_a_watch_loses_no_lease(etcd_server):
    """The watcher is cut off from etcd; meanwhile leases change and history is compacted.
    On reconnect it cannot resume, so it re-lists: the result must equal the store."""
    direct = EtcdRegistry(make_etcd_options(etcd_server.endpoint))
    proxy = TcpProxy(etcd_server.client_port)
    via_proxy = EtcdRegistry(make_etcd_options(proxy.endpoint, timeout=2.0))
    try:
        for i in range(1, 4):
            direct.create_lease(net(i), attrs(10 + i), 60)
        _, rev = via_proxy.list_leases()
        w = Watcher(via_proxy, rev + 1)
        direct.create_lease(net(4), attrs(14), 60)
        wait_for(lambda: net(4) in w.subnets(), 5, "the first event")
        proxy.cut()
        direct.delete_lease(net(1))
        direct.create_lease(net(5), attrs(15), 60)
        second = direct.get_lease(net(2))
        assert second is not None
        direct.update_lease(second, attrs(12, mac="0e:00:00:00:00:22"), 60)
        direct.compact()
        proxy.restore()
        wait_for(lambda: w.subnets() == {net(2), net(3), net(4), net(5)}, 10,
                 "the watcher to re-list after the compaction")
        assert any(u.snapshot is not None for u in w.updates)
        assert w.view.leases[net(2)].attrs.vtep_mac == "0e:00:00:00:00:22"
        direct.create_lease(net(6), attrs(16), 60)  # and it keeps watching afterwards
        wait_for(lambda: net(6) in w.subnets(), 5, "an event after the re-list")
        w.close()
    finally:
        proxy.close()
        via_proxy.close()
        direct.close()


def test_etcd_restart_during_a_watch_loses_no_event(registry, etcd_server):
    _, rev = registry.list_leases()
    w = Watcher(registry, rev + 1)
    for i in range(1, 4):
        registry.create_lease(net(i), attrs(10 + i), 60)
    wait_for(lambda: len(w.events()) == 3, 5, "three events")
    etcd_server.restart()
    # Written right after the restart, possibly before the watcher has re-connected.
    registry.delete_lease(net(1))
    for i in range(4, 7):
        registry.create_lease(net(i), attrs(10 + i), 60)
    expected = ([(EventType.ADDED, net(i)) for i in (1, 2, 3)] + [(EventType.REMOVED, net(1))]
                + [(EventType.ADDED, net(i)) for i in (4, 5, 6)])
    wait_for(lambda: w.events() == expected, 10, "every event, in order, after the restart")
    assert all(u.snapshot is None for u in w.updates)
    w.close()


def test_unreachable_etcd_is_a_clear_error():
    reg = EtcdRegistry(make_etcd_options("http://127.0.0.1:1,http://127.0.0.1:2", timeout=1.0))
    t0 = time.monotonic()
    with pytest.raises(EtcdUnavailable) as e:
        reg.list_leases()
    assert time.monotonic() - t0 < 5
    assert "http://127.0.0.1:1,http://127.0.0.1:2" in str(e.value)
    assert "is etcd running" in str(e.value)


@pytest.fixture(scope="module")
def tls_files():
    d = tempfile.mkdtemp(prefix="ovlease-tls-")
    try:
        yield make_test_ca(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_tls_with_client_certificates(tls_files):
    server = EtcdServer(name="ovlease-tls", tls=tls_files).start()
    try:
        good = EtcdRegistry(make_etcd_options(server.endpoint, cafile=tls_files.ca,
                                              certfile=tls_files.client_cert,
                                              keyfile=tls_files.client_key))
        good.put_config(CFG)
        assert good.get_config() == CFG
        good.create_lease(net(1), attrs(11), 60)
        assert [lease.subnet for lease in good.list_leases()[0]] == [net(1)]
        good.close()
        no_cert = EtcdRegistry(make_etcd_options(server.endpoint, cafile=tls_files.ca))
        with pytest.raises(EtcdUnavailable, match="TLS handshake failed.*--etcd-certfile"):
            no_cert.get_config()
        no_cert.close()
        plain = EtcdRegistry(make_etcd_options(server.endpoint.replace("https", "http")))
        with pytest.raises(EtcdUnavailable, match="https://"):
            plain.get_config()
        plain.close()
    finally:
        server.cleanup()


def test_username_and_password(etcd_server):
    ctl = ["etcdctl", "--endpoints", etcd_server.endpoint]
    env = {"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}
    for args in (["user", "add", "root:rootpw"], ["auth", "enable"]):
        subprocess.run(ctl + args, check=True, env=env, capture_output=True)
    # a dead endpoint listed first must not break authentication or requests
    good = EtcdRegistry(make_etcd_options("http://127.0.0.1:1," + etcd_server.endpoint,
                                          username="root", password="rootpw", timeout=2.0))
    good.put_config(CFG)
    for _ in range(5):
        assert good.get_config() == CFG
    good.close()
    bad = EtcdRegistry(make_etcd_options(etcd_server.endpoint, username="root",
                                         password="wrong"))
    with pytest.raises(RegistryError, match="--etcd-username/--etcd-password"):
        bad.get_config()
    anon = EtcdRegistry(make_etcd_options(etcd_server.endpoint))
    with pytest.raises(RegistryError, match="refused"):
        anon.get_config()
    anon.close()


def test_watch_hears_etcd_while_nothing_changes_and_not_while_it_is_frozen(registry,
                                                                           etcd_server):
    import os
    import signal
    registry.put_config(CFG)
    _, rev = registry.list_leases(with_expiration=False)
    heard: list[int] = []
    stop = threading.Event()

    def run():
        for _ in registry.watch_leases(rev + 1, stop, on_progress=heard.append,
                                       progress_interval=0.1):
            pass
    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        wait_for(lambda: len(heard) >= 5, 3, what="progress notifications")
        assert set(heard) == {rev}  # nothing changed: etcd's revision, no events
        os.kill(etcd_server.proc.pid, signal.SIGSTOP)  # the stream stays open, etcd is silent
        try:
            time.sleep(0.3)
            n = len(heard)
            time.sleep(0.5)
            assert len(heard) == n, "nothing can be heard from a frozen etcd"
        finally:
            os.kill(etcd_server.proc.pid, signal.SIGCONT)
        wait_for(lambda: len(heard) > n, 5, what="progress after etcd resumed")
        registry.create_lease(net(3), attrs(13), 60)
        wait_for(lambda: max(heard) > rev, 3, what="the new revision")
    finally:
        stop.set()
        t.join(3)
    assert not t.is_alive()


def test_watch_config_sees_every_change_of_the_key_only(registry):
    registry.put_config(CFG)
    value, rev = registry.get_config_value()
    assert parse_network_config(value) == CFG
    got, stop = [], threading.Event()

    def run():
        for value, _ in registry.watch_config(rev + 1, stop):
            got.append(value)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        registry.create_lease(net(4), attrs(14), 60)  # another key: not reported
        registry.client().put(registry.config_key, '{"Network": "10.245.0.0/16"}')
        registry.client().delete(registry.config_key)
        registry.client().put(registry.config_key, "garbage")
        wait_for(lambda: len(got) >= 3, 3, what="config events")
        assert got == [b'{"Network": "10.245.0.0/16"}', None, b"garbage"]
    finally:
        stop.set()
        t.join(3)
    assert not t.is_alive()
    assert registry.get_config_value()[0] == b"garbage"


def test_garbage_is_listed_and_watched_as_rejected_and_the_watch_survives(registry):
    from .test_overlayctl import put_garbage
    registry.put_config(CFG)
    registry.create_lease(net(2), attrs(12), 60)
    _, rev = registry.list_leases()
    w = Watcher(registry, rev + 1)
    put_garbage(registry)
    registry.create_lease(net(9), attrs(19), 60)  # a valid lease after the garbage
    wait_for(lambda: net(9) in w.subnets(), 5, "the lease put after the garbage")
    listing = registry.list_subnets(with_expiration=False)
    assert sorted(lease.subnet for lease in listing.leases) == [net(2), net(7), net(9),
                                                        IPv4Network("128.0.0.0/1")]
    reasons = sorted(r.reason for r in listing.rejected)
    assert reasons == sorted(["bad-key"] * 4 + ["bad-value"] * 2 + ["value-too-large"])
    with w.lock:
        watched = [r for u in w.updates for r in u.rejected]
        bad_values = [e.rejection for u in w.updates for e in u.events if e.rejection]
    assert len(watched) == 4 and {r.reason for r in watched} == {"bad-key"}
    assert sorted(r.subnet for r in bad_values) == [net(4), net(5), net(6)]
    assert any(r.key.endswith("10.244.2.0-24\n") for r in watched)
    assert net(2) in w.subnets()  # the alias did not replace the real lease
    w.close()


def test_deleting_an_alias_key_keeps_the_real_lease(registry):
    registry.put_config(CFG)
    registry.create_lease(net(2), attrs(12), 60)
    _, rev = registry.list_leases()
    w = Watcher(registry, rev + 1, rules=LeaseRules.from_config(CFG))
    alias = registry.subnets_prefix + "10.244.2.0-24\n"
    registry.client().put(alias, attrs(66).to_json())
    registry.client().delete(alias)
    registry.create_lease(net(3), attrs(13), 60)  # a marker: everything before it arrived
    wait_for(lambda: net(3) in w.subnets(), 5, "the marker lease")
    assert w.subnets() == {net(2), net(3)}
    assert (EventType.REMOVED, net(2)) not in w.events()
    with w.lock:
        assert [c for u in w.updates for c in u.cleared] == [alias]
    w.close()


def test_listing_carries_create_revision(registry):
    a = registry.create_lease(net(2), attrs(12), 60)
    registry.update_lease(a, attrs(12, mac="0e:00:00:00:0a:0a"), 60)
    b = registry.create_lease(net(3), attrs(13), 60)
    leases = {lease.subnet: lease for lease in registry.list_leases()[0]}
    assert leases[net(2)].create_revision == a.mod_revision
    assert leases[net(2)].mod_revision > a.mod_revision
    assert leases[net(3)].create_revision == b.mod_revision


def test_a_listing_read_in_pieces_at_once_is_the_listing_at_one_revision(registry,
                                                                          monkeypatch):
    """Once a listing is large, the next is read in pieces on threads of their own (cut
    where the last one would split evenly), every piece at the revision a count-only
    request read first: the same leases, in key order, as one sequential read, even
    when a lease is put between the count and the pieces."""
    from overlay.subnet import etcd

    monkeypatch.setattr(etcd, "PIECE_KEYS", 4)  # 12 leases: 3 pieces
    for i in range(12):
        registry.create_lease(net(i), attrs(i + 10), None)
    first = registry.list_subnets(with_expiration=False)
    assert len(registry._splits) == 2 and not first.rejected
    calls: list[tuple[int, bool, str]] = []
    plain_range = etcd.EtcdAPI.range
    putting = threading.Event()  # our own put's reads are not the listing's

    def recorded(self, key, range_end=None, revision=0, limit=0, **flags):
        got = plain_range(self, key, range_end, revision, limit, **flags)
        if not putting.is_set():
            calls.append((revision, bool(flags.get("count_only")),
                          threading.current_thread().name))
            if flags.get("count_only"):
                putting.set()
                registry.create_lease(net(40), attrs(50), None)  # after the revision read
                putting.clear()
        return got
    monkeypatch.setattr(etcd.EtcdAPI, "range", recorded)
    second = registry.list_subnets(with_expiration=False)
    monkeypatch.setattr(etcd.EtcdAPI, "range", plain_range)
    assert [lease.subnet for lease in second.leases] == [lease.subnet for lease in first.leases]
    assert second.revision == first.revision
    assert calls[0][:2] == (0, True) and len(calls) == 1 + 3  # the count, 3 pieces
    assert {(rev, count) for rev, count, _ in calls[1:]} == {(first.revision, False)}
    assert {name for *_, name in calls} == {"etcd-range", threading.current_thread().name}
    third = registry.list_subnets(with_expiration=False)
    assert net(40) in {lease.subnet for lease in third.leases}
