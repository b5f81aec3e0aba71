"""overlayd's wiring without a kernel or etcd: registry observer, readiness, metrics."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from ipaddress import IPv4Address, IPv4Network

import pytest

from overlay.daemon import Daemon, _ObservedRegistry, parse_settings
from overlay.errors import EtcdUnavailable, LeaseConflict
from overlay.http import Metrics
from overlay.lease import Lease, LeaseAttrs


class FakeRegistry:
    def __init__(self):
        self.fail = False
        self.leases = [Lease(IPv4Network("10.244.2.0/24"), LeaseAttrs(IPv4Address("192.168.1.12")))]

    def list_leases(self, with_expiration=True):
        if self.fail:
            raise EtcdUnavailable("etcd at http://x:2379 is unreachable")
        return list(self.leases), 42

    def renew_lease(self, lease):
        raise EtcdUnavailable("down")


def value(metrics: Metrics, name: str) -> float:
    return metrics.registry.get_sample_value(name)


def test_observer_counts_etcd_failures_but_not_lost_races():
    metrics = Metrics()
    inner = FakeRegistry()
    reg = _ObservedRegistry(inner, metrics)
    assert reg.list_leases()[1] == 42
    with pytest.raises(EtcdUnavailable):
        reg.renew_lease(None)
    inner.fail = True
    with pytest.raises(EtcdUnavailable):
        reg.list_leases()
    assert value(metrics, "overlay_etcd_errors_total") == 2

    def lost_race(lease):
        raise LeaseConflict("lease of 10.244.2.0/24 changed")
    inner.renew_lease = lost_race
    with pytest.raises(LeaseConflict):
        reg.renew_lease(None)
    assert value(metrics, "overlay_etcd_errors_total") == 2


def test_observer_counts_watch_interruptions():
    metrics, seen = Metrics(), []

    class WatchingRegistry:
        def watch_leases(self, start_revision, stop, on_error=None):
            seen.append(start_revision)
            on_error(EtcdUnavailable("watch broke"))
            return iter(())
    reg = _ObservedRegistry(WatchingRegistry(), metrics)
    assert list(reg.watch_leases(7, threading.Event())) == [] and seen == [7]
    assert value(metrics, "overlay_etcd_errors_total") == 1


def test_readiness_lists_what_is_missing():
    d = Daemon(parse_settings(["--subnet-file", "/tmp/ovd-none/subnet.env"], environ={}))
    missing = d.readiness()
    assert missing == ["no subnet lease yet", "/tmp/ovd-none/subnet.env not written",
                       "VXLAN device not programmed"]
    assert value(d.metrics, "overlay_ready") == 0


def test_lease_expiry_metric():
    m = Metrics()
    assert value(m, "overlay_lease_expiry_seconds") == -1
    when = datetime.now(timezone.utc) + timedelta(seconds=100)
    m.track_lease_expiry(lambda: when)
    assert 98 < value(m, "overlay_lease_expiry_seconds") <= 100
    m.track_lease_expiry(lambda: datetime.now(timezone.utc) - timedelta(seconds=5))
    assert value(m, "overlay_lease_expiry_seconds") == 0


# ---- the lease held vs the manager's lease (a failed _hold is retried) ---------------

class FakeDevice:
    index = 7

    def __init__(self):
        self.addrs = []

    def state(self):
        return True, self.index

    def ensure_address(self, addr):
        self.addrs = [addr]


class FakeBackend:
    leases: dict = {}
    failed: set = set()
    conflicts: dict = {}

    def reconcile(self, leases=None):
        from overlay.backend import Result
        return Result()

    def entry_count(self):
        return 0


class FakeMasq:
    enabled = False

    def update(self, subnet):
        self.subnet = subnet


class FakeManager:
    def __init__(self, lease):
        self.current = lease


def wired_daemon(tmp_path, subnet_file):
    from overlay.backend import Reconciler
    from overlay.config import parse_network_config
    d = Daemon(parse_settings(["--subnet-file", str(subnet_file)], environ={}))
    d.device, d.backend, d.masq = FakeDevice(), FakeBackend(), FakeMasq()
    d.reconciler = Reconciler(d.backend)
    d.config, d.mtu = parse_network_config({"Network": "10.244.0.0/16"}), 1450
    return d


def lease_of(i):
    return Lease(IPv4Network(f"10.244.{i}.0/24"), LeaseAttrs(IPv4Address("192.168.1.11")),
                 etcd_lease_id=0x10 + i)


def test_failed_hold_after_reacquisition_is_retried_by_the_reconcile(tmp_path):
    from dataclasses import replace
    blocker = tmp_path / "file"
    blocker.write_text("")
    good = tmp_path / "subnet.env"
    d = wired_daemon(tmp_path, good)
    d.manager = FakeManager(lease_of(1))
    d._hold(lease_of(1))
    assert "10.244.1.1/24" in good.read_text()
    # Re-acquired a different subnet, but subnet.env cannot be written right now.
    d.s = replace(d.s, subnet_file=str(blocker / "subnet.env"))
    d.manager.current = lease_of(5)
    d._on_lease(lease_of(5))  # logs, does not raise (the keepalive thread must live on)
    assert d.masq.subnet == IPv4Network("10.244.1.0/24")  # nothing after the failure
    d._reconcile()  # still failing: the remotes are reconciled anyway
    d.s = replace(d.s, subnet_file=str(good))
    d._reconcile()
    assert "10.244.5.1/24" in good.read_text()
    assert d.masq.subnet == IPv4Network("10.244.5.0/24")
    assert [str(a) for a in d.device.addrs] == ["10.244.5.0/32"]


def test_reconcile_puts_back_a_device_address_removed_by_hand(tmp_path):
    d = wired_daemon(tmp_path, tmp_path / "subnet.env")
    d.manager = FakeManager(lease_of(3))
    d._hold(lease_of(3))
    d.device.addrs = []  # `ip addr flush` by an operator
    d._reconcile()
    assert [str(a) for a in d.device.addrs] == ["10.244.3.0/32"]


def test_ready_gauge_follows_readiness_without_a_readyz_request(tmp_path):
    d = wired_daemon(tmp_path, tmp_path / "subnet.env")
    assert value(d.metrics, "overlay_ready") == 0
    d.manager = FakeManager(lease_of(3))
    d._hold(lease_of(3))
    d._reconcile()  # the first reconcile programs the device
    assert value(d.metrics, "overlay_ready") == 1
    d.stop.set()
    assert value(d.metrics, "overlay_ready") == 0 and d.readiness() == ["stopping"]


def test_health_server_drops_idle_connections(monkeypatch):
    import socket

    from overlay import http
    monkeypatch.setattr(http, "HANDLER_TIMEOUT", 0.2)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    srv = http.HealthServer(f"127.0.0.1:{port}", Metrics(), lambda: [])
    srv.start()
    try:
        with socket.create_connection(srv.address, timeout=3) as c:
            assert c.recv(1) == b""  # closed by the server, not left hanging
    finally:
        srv.stop()


def test_shutdown_leaves_the_device_socket_to_a_thread_still_using_it(tmp_path):
    d = wired_daemon(tmp_path, tmp_path / "subnet.env")
    closed = []
    d.device.close = lambda: closed.append(True)
    release = threading.Event()
    d._threads.append(threading.Thread(target=release.wait, name="reconcile", daemon=True))
    d._threads[0].start()

    class Registry:
        def close(self):
            pass
    d.join_timeout = 0.05
    d._shutdown(Registry())
    assert closed == []
    release.set()
    d._threads[0].join(2)
    d._shutdown(Registry())
    assert closed == [True]


def test_backoff_doubles_up_to_its_cap_and_resets():
    from overlay.backoff import Backoff
    b, never = Backoff(0.001, 0.004), threading.Event()
    delays = []
    for _ in range(4):
        delays.append(b.delay)
        assert b.wait(never) is False
    assert delays == [0.001, 0.002, 0.004, 0.004]
    b.reset()
    assert b.delay == 0.001
    stopped = threading.Event()
    stopped.set()
    assert b.wait(stopped) is True


def test_route_conflicts_gauge_counts_the_backends_conflicts(tmp_path):
    from overlay.netlink.entries import OtherRoute
    d = wired_daemon(tmp_path, tmp_path / "subnet.env")
    d.manager = FakeManager(lease_of(3))
    d._hold(lease_of(3))
    s = IPv4Network("192.168.1.0/24")
    d.backend.conflicts = {s: OtherRoute(s, "kernel", "eth0")}
    d._reconcile()
    assert value(d.metrics, "overlay_route_conflicts") == 1
    d.backend.conflicts = {}
    d._reconcile()
    assert value(d.metrics, "overlay_route_conflicts") == 0
