"""overlayd's wiring without a kernel or etcd: registry observer, readiness, metrics."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv4Network

import pytest

from overlay.daemon.daemon import Daemon, ObservedRegistry
from overlay.daemon.flags import parse_settings
from overlay.daemon.http import Metrics
from overlay.errors import ConfigError, EtcdUnavailable, LeaseConflict, RegistryError
from overlay.lease import Lease, LeaseAttrs
from overlay.masq.nft import Masquerade
from overlay.vxlan.device import UnderlayError
from overlay.vxlan.setup import DataPlane
from tests.fakes import FakeRegistry
from tests.trickle import trickle_until_closed


def value(metrics: Metrics, name: str) -> float:
    sample = metrics.registry.get_sample_value(name)
    assert sample is not None, f"no metric {name}"
    return sample


def test_observer_counts_etcd_failures_but_not_lost_races():
    metrics = Metrics()
    inner = FakeRegistry()
    inner.put(IPv4Network("10.244.2.0/24"), LeaseAttrs(IPv4Address("192.168.1.12")))
    reg = ObservedRegistry(inner, metrics)
    assert reg.list_leases()[1] == inner.rev and reg.subnets_prefix == inner.subnets_prefix
    inner.fail = EtcdUnavailable("etcd at http://x:2379 is unreachable")
    with pytest.raises(EtcdUnavailable):
        reg.renew_lease(lease_of(2))
    with pytest.raises(EtcdUnavailable):
        reg.list_subnets()
    assert value(metrics, "overlay_etcd_errors_total") == 2
    inner.fail = None
    with pytest.raises(LeaseConflict):  # a lost race: etcd answered
        reg.renew_lease(lease_of(2))
    assert value(metrics, "overlay_etcd_errors_total") == 2


def test_observer_counts_watch_interruptions():
    metrics, seen = Metrics(), []

    class WatchingRegistry(FakeRegistry):
        def watch_leases(self, start_revision, stop, on_error=None, on_progress=None,
                         progress_interval=None):
            seen.append(start_revision)
            on_error(EtcdUnavailable("watch broke"))
            return iter(())
    reg = ObservedRegistry(WatchingRegistry(), metrics)
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
    when = datetime.now(UTC) + timedelta(seconds=100)
    m.track_lease_expiry(lambda: when)
    assert 98 < value(m, "overlay_lease_expiry_seconds") <= 100
    m.track_lease_expiry(lambda: datetime.now(UTC) - timedelta(seconds=5))
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
        from overlay.vxlan.backend import Result
        return Result()

    def entry_count(self):
        return 0


class FakeMasq:
    enabled = False
    network6 = subnet6 = None

    def __init__(self, network=None):
        self.network = network

    def update(self, subnet):
        self.subnet = subnet

    def set_ipv6(self, network, subnet):
        self.network6, self.subnet6 = network, subnet


class FakeManager:
    """The manager as the daemon sees it: it holds ``current`` (a test moves it)."""

    def __init__(self, lease, registry):
        self.current = lease
        self.registry = registry

    def acquire(self):
        return self.current


def wired_daemon(tmp_path, subnet_file, lease=None, watch_health=None, registry=None):
    """A daemon brought up through its constructor's collaborators: a fake registry,
    data plane, manager and masquerade; holding ``lease`` (10.244.3.0/24 by default)."""
    lease = lease or lease_of(3)
    # The fakes have only what the daemon uses of the real parts (duck typing), so mypy
    # does not take them for those; each ignore below is one fake standing in.
    plane = DataPlane(FakeDevice(), FakeBackend(),  # type: ignore[arg-type]
                      "eth0", 1450, LeaseAttrs(lease.attrs.public_ip))

    def make_masquerade(network, subnet, enabled) -> Masquerade:
        return FakeMasq(network)  # type: ignore[return-value]
    d = Daemon(parse_settings(["--subnet-file", str(subnet_file)], environ={}),
               setup_data_plane=lambda config: plane,
               make_manager=lambda registry, *a, **kw: (  # type: ignore[arg-type]
                   FakeManager(lease, registry)),
               make_masquerade=make_masquerade,
               watch_health=watch_health)
    assert d.bring_up(registry or FakeRegistry()) == lease
    return d


def lease_of(i):
    return Lease(IPv4Network(f"10.244.{i}.0/24"), LeaseAttrs(IPv4Address("192.168.1.11")),
                 etcd_lease_id=0x10 + i)


def test_failed_hold_after_reacquisition_is_retried_by_the_reconcile(tmp_path):
    from dataclasses import replace
    blocker = tmp_path / "file"
    blocker.write_text("")
    good = tmp_path / "subnet.env"
    d = wired_daemon(tmp_path, good, lease_of(1))
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
    d.device.addrs = []  # `ip addr flush` by an operator
    d._reconcile()
    assert [str(a) for a in d.device.addrs] == ["10.244.3.0/32"]


def test_ready_gauge_follows_readiness_without_a_readyz_request(tmp_path):
    d = wired_daemon(tmp_path, tmp_path / "subnet.env")
    assert value(d.metrics, "overlay_ready") == 0
    d.watch_health.started()  # as the watch thread does before its first listing
    d.watch_health.heard(42)
    d._reconcile()  # the first reconcile programs the device
    assert value(d.metrics, "overlay_ready") == 1
    d.stop.set()
    assert value(d.metrics, "overlay_ready") == 0 and d.readiness() == ["stopping"]


def test_health_server_drops_idle_connections(monkeypatch):
    import socket

    from overlay.daemon import http
    monkeypatch.setattr(http, "HANDLER_TIMEOUT", 0.2)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    srv = http.HealthServer(f"127.0.0.1:{port}", Metrics(), list)
    srv.start()
    try:
        with socket.create_connection(srv.address, timeout=3) as c:
            assert c.recv(1) == b""  # closed by the server, not left hanging
    finally:
        srv.stop()


def _health_server(monkeypatch, **bounds):
    import socket

    from overlay.daemon import http
    for name, value in bounds.items():
        monkeypatch.setattr(http, name, value)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    srv = http.HealthServer(f"127.0.0.1:{port}", Metrics(), list)
    srv.start()
    return srv


def _healthz(address) -> bytes:
    import socket
    with socket.create_connection(address, timeout=3) as c:
        c.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        return c.recv(100)


def test_health_server_cuts_a_trickling_request_at_its_deadline(monkeypatch):
    # Found by probing: the timeout was per read, so a byte every 3 s held a thread for
    # as long as the client liked.
    import socket
    srv = _health_server(monkeypatch, HANDLER_TIMEOUT=0.6)
    try:
        with socket.create_connection(srv.address, timeout=3) as c:
            took = trickle_until_closed(c, b"GET /healthz HTTP/1.0\r\nX-Slow: " + b"y" * 40,
                                        every=0.25)
            assert took is not None and took < 2.0
        assert _healthz(srv.address).startswith(b"HTTP/1.0 200")
    finally:
        srv.stop()


def test_a_client_resetting_its_connection_is_no_traceback(monkeypatch, capfd):
    import socket
    import struct
    srv = _health_server(monkeypatch)
    try:
        c = socket.create_connection(srv.address, timeout=3)
        c.send(b"GET /heal")
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()  # a reset mid-request
        time.sleep(0.3)
        assert _healthz(srv.address).startswith(b"HTTP/1.0 200")
    finally:
        srv.stop()
    assert "Traceback" not in capfd.readouterr().err


def test_health_server_closes_connections_past_its_bound(monkeypatch):
    import socket
    srv = _health_server(monkeypatch, MAX_HTTP_CONNECTIONS=3, HANDLER_TIMEOUT=30.0)
    idle = [socket.create_connection(srv.address, timeout=3) for _ in range(3)]
    try:
        time.sleep(0.2)
        with socket.create_connection(srv.address, timeout=3) as extra:
            extra.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
            assert extra.recv(100) == b""  # closed unanswered: no fourth thread
        for c in idle:
            c.close()
        time.sleep(0.2)
        assert _healthz(srv.address).startswith(b"HTTP/1.0 200")
    finally:
        for c in idle:
            c.close()
        srv.stop()


def test_shutdown_leaves_the_device_socket_to_a_thread_still_using_it(tmp_path):
    d = wired_daemon(tmp_path, tmp_path / "subnet.env")
    closed = []
    d.device.close = lambda: closed.append(True)
    release = threading.Event()
    d._threads.append(threading.Thread(target=release.wait, name="reconcile", daemon=True))
    d._threads[0].start()

    d.join_timeout = 0.05
    d._shutdown(FakeRegistry())
    assert closed == []
    release.set()
    d._threads[0].join(2)
    d._shutdown(FakeRegistry())
    assert closed == [True]


def test_backoff_doubles_up_to_its_cap_and_resets():
    from overlay.util.backoff import Backoff
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
    from overlay.vxlan.entries import OtherRoute
    d = wired_daemon(tmp_path, tmp_path / "subnet.env")
    s = IPv4Network("192.168.1.0/24")
    d.backend.conflicts = {s: OtherRoute(s, "kernel", "eth0")}
    d._reconcile()
    assert value(d.metrics, "overlay_route_conflicts") == 1
    d.backend.conflicts = {}
    d._reconcile()
    assert value(d.metrics, "overlay_route_conflicts") == 0


# ---- /readyz tells the truth about the lease watch ------------------------------------

class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def ready_daemon(tmp_path, clock, max_lag=2.0):
    from overlay.daemon.watchhealth import WatchHealth
    d = wired_daemon(tmp_path, tmp_path / "subnet.env",
                     watch_health=WatchHealth(max_lag, clock=clock))
    d.watch_health.started()
    d._reconcile()
    return d


def test_readiness_fails_while_the_watch_is_down_or_silent(tmp_path):
    clock = Clock()
    d = ready_daemon(tmp_path, clock)
    assert d.readiness() == [] and value(d.metrics, "overlay_lease_watch_lag_seconds") == 0
    clock.now += 1.5
    d.watch_health.heard(50)  # a progress notification
    clock.now += 1.0
    assert d.readiness() == [] and value(d.metrics, "overlay_lease_watch_lag_seconds") == 1.0
    clock.now += 1.5  # the stream is open but etcd went silent
    assert d.readiness() == ["lease watch has not heard from etcd for 2s (limit 2s)"] or \
        d.readiness() == ["lease watch has not heard from etcd for 3s (limit 2s)"]
    assert value(d.metrics, "overlay_ready") == 0
    d.watch_health.heard(51)
    assert d.readiness() == []
    d.watch_health.stopped()  # the thread died (its supervisor restarts it)
    assert d.readiness() == ["lease watch not running (it failed and is restarting)"]
    d.watch_health.started()  # restarted, but a crash loop never hears etcd: lag grows
    clock.now += 5
    assert "has not heard from etcd for 5s" in d.readiness()[0]


def test_a_crashing_watch_thread_makes_readiness_fail(tmp_path):
    d = wired_daemon(tmp_path, tmp_path / "subnet.env")

    def crash(*args):
        d.watch_health.heard(7)
        raise RuntimeError("a bug in the watch")
    d.manager.run_watch = crash
    d._reconcile()
    d._spawn("watch", d._run_watch)
    try:
        import time
        deadline = time.monotonic() + 3
        while "not running" not in " ".join(d.readiness()) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert d.readiness() == ["lease watch not running (it failed and is restarting)"]
        assert value(d.metrics, "overlay_ready") == 0
    finally:
        d.stop.set()
        d._threads[0].join(3)


def test_observer_feeds_the_watch_health_from_the_stream():
    from overlay.daemon.watchhealth import WatchHealth
    health, calls = WatchHealth(8.0), []

    class WatchingRegistry(FakeRegistry):
        def watch_leases(self, start_revision, stop, on_error=None, on_progress=None,
                         progress_interval=None):
            calls.append(progress_interval)
            on_progress(99)
            return iter(())
    reg = ObservedRegistry(WatchingRegistry(), Metrics(), health)
    health.started()
    assert list(reg.watch_leases(7, threading.Event())) == []
    assert calls == [2.0] and health.revision == 99 and 0 <= health.lag() < 1


def test_observer_passes_the_callers_watch_hooks_on_and_still_counts():
    from overlay.daemon.watchhealth import WatchHealth
    errors: list[RegistryError] = []
    revisions: list[int] = []

    class WatchingRegistry(FakeRegistry):
        def watch_leases(self, start_revision, stop, on_error=None, on_progress=None,
                         progress_interval=None):
            on_error(EtcdUnavailable("watch broke"))
            on_progress(12)
            return iter(())
    metrics, health = Metrics(), WatchHealth(8.0)
    reg = ObservedRegistry(WatchingRegistry(), metrics, health)
    health.started()
    list(reg.watch_leases(1, threading.Event(), on_error=errors.append,
                          on_progress=revisions.append))
    assert len(errors) == 1 and revisions == [12] and health.revision == 12
    assert value(metrics, "overlay_etcd_errors_total") == 1


def test_lag_metric_before_the_watch_starts():
    d = Daemon(parse_settings(["--watch-lag-limit", "3"], environ={}))
    assert value(d.metrics, "overlay_lease_watch_lag_seconds") == -1
    assert d.watch_health.max_lag == 3
    assert value(d.metrics, "overlay_config_changed") == 0


@pytest.mark.parametrize("bad", ["0", "-1", "nan", "1e999"])
def test_watch_lag_limit_flag_is_checked(bad):
    from overlay.errors import ConfigError
    with pytest.raises(ConfigError, match="--watch-lag-limit"):
        parse_settings(["--watch-lag-limit", bad], environ={})


# ---- the network config changed in etcd while the node runs ---------------------------

RUNNING = b'{"Network": "10.244.0.0/16"}'


def test_config_change_is_logged_once_exposed_and_never_applied(tmp_path, caplog):
    import logging
    d = wired_daemon(tmp_path, tmp_path / "subnet.env")
    running = d.config
    caplog.set_level(logging.INFO, logger="overlay.daemon.daemon")
    d._note_config(b'{ "Network" : "10.244.0.0/16", "SubnetLen": 24 }')  # same config
    assert d.config_drift is None and value(d.metrics, "overlay_config_changed") == 0
    changed = b'{"Network": "10.244.0.0/16", "Backend": {"VNI": 7}}'
    d._note_config(changed)
    d._note_config(changed)  # e.g. seen again after a re-watch: no second ERROR
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    msg = errors[0].getMessage()
    assert "network config changed in etcd" in msg and "restart overlayd on every node" in msg
    assert '"VNI": 7' in msg and '"VNI": 1' in msg
    assert value(d.metrics, "overlay_config_changed") == 1
    assert d.config is running  # never half-applied
    d._note_config(RUNNING)  # put back identical: cleared
    assert d.config_drift is None and value(d.metrics, "overlay_config_changed") == 0
    assert "matches the running one again" in caplog.text
    d._note_config(None)
    assert d.config_drift is not None and "deleted" in d.config_drift
    d._note_config(b'{"Network": 1e400')
    assert d.config_drift is not None and "invalid" in d.config_drift
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 3


def test_config_watch_thread_follows_the_key(tmp_path):
    d = wired_daemon(tmp_path, tmp_path / "subnet.env")
    fake = d.registry._inner
    fake.config_events.put((b'{"Network": "10.245.0.0/16"}', 6))
    t = threading.Thread(target=d._watch_config, daemon=True)
    t.start()
    try:
        wait_until(lambda: d.config_drift is not None)
        assert "10.245.0.0/16" in d.config_drift
        fake.config_events.put((RUNNING, 7))
        wait_until(lambda: d.config_drift is None)
    finally:
        d.stop.set()
        t.join(3)
    assert not t.is_alive()


def wait_until(cond, timeout=3.0):
    import time
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# ---- a Network overlapping a network the node is connected to --------------------------

def test_network_overlapping_a_connected_network_is_refused():
    from ipaddress import IPv4Interface as I

    from overlay.config import parse_network_config
    from overlay.netlink.addr import Addr
    from overlay.netlink.link import Link
    from overlay.vxlan.setup import connected_overlap

    def LinkRecord(index, name, kind):
        return Link(index, name, kind, True, "UP", 1500, None)
    cfg = parse_network_config({"Network": "10.244.0.0/16"})
    links = [LinkRecord(1, "lo", ""),
             LinkRecord(2, "eth0", "veth"),
             LinkRecord(3, "overlay.1", "vxlan"),
             LinkRecord(4, "cni0", "bridge"),
             LinkRecord(5, "br0", "bridge")]
    ours = [Addr(1, I("127.0.0.1/8")), Addr(2, I("192.168.1.11/24")), Addr(3, I("10.244.3.0/32")),
            Addr(4, I("10.244.3.1/24")), Addr(4, I("10.244.4.1/25"))]  # an older SubnetLen's bridge
    assert connected_overlap(cfg, links, ours, "overlay.1") is None
    for index, iface in [(2, "10.0.0.5/8"), (2, "10.244.9.7/24"), (5, "10.0.0.1/8"),
                         (5, "10.244.5.10/24"), (5, "10.244.0.1/16"), (2, "10.244.200.1/32"),
                         (4, "10.0.0.1/8")]:
        clash = Addr(index, I(iface))
        why = connected_overlap(cfg, links, [*ours, clash], "overlay.1")
        assert why is not None and "10.244.0.0/16" in why and str(clash.interface.network) in why
        assert "\n" not in why


# ---- the underlay's complaints, in overlayd's flags -----------------------------------

@pytest.mark.parametrize("err, message", [
    (UnderlayError(UnderlayError.NO_MATCH, "no interface matches; have eth0, lo", "iface",
                   "'nosuch0'"),
     "--iface 'nosuch0': no interface matches; have eth0, lo"),
    (UnderlayError(UnderlayError.NO_SUCH_ADDRESS, "no interface in this network namespace "
                   "has that address", "public_ip", "10.9.9.9"),
     "--public-ip 10.9.9.9: no interface in this network namespace has that address; "
     "pass --iface or fix the address"),
    (UnderlayError(UnderlayError.NO_IPV4, "interface eth1 has no IPv4 address"),
     "interface eth1 has no IPv4 address; give it one or pass --public-ip"),
    (UnderlayError(UnderlayError.NO_DEFAULT_ROUTE,
                   "no default route to pick the underlay interface from"),
     "no default route to pick the underlay interface from; pass --iface or --public-ip"),
])
def test_underlay_errors_are_reported_with_the_flag(tmp_path, err, message):
    assert "--" not in str(err)  # the edge speaks of interfaces, not of flags

    def no_underlay(config):
        raise err
    d = Daemon(parse_settings(["--subnet-file", str(tmp_path / "subnet.env")], environ={}),
               setup_data_plane=no_underlay)
    with pytest.raises(ConfigError) as ei:
        d.bring_up(FakeRegistry())
    assert str(ei.value) == message and ei.value.__cause__ is err


def test_find_underlay_errors_read_as_before_once_the_daemon_names_the_flag(monkeypatch):
    from ipaddress import IPv4Interface

    from overlay.daemon.daemon import underlay_flag_message
    from overlay.netlink.addr import Addr
    from overlay.netlink.link import Link
    from overlay.vxlan import device
    from overlay.vxlan.device import find_underlay

    # the three dumps find_underlay reads; no default route
    monkeypatch.setattr(device.link, "dump", lambda nl: [
        Link(1, "lo", "", True, "UP", 65536, None), Link(2, "eth0", "veth", True, "UP", 1500, None),
        Link(3, "eth1", "veth", True, "UP", 1500, None)])
    monkeypatch.setattr(device.addr, "dump", lambda nl: [Addr(2, IPv4Interface("192.168.1.11/24"))])
    monkeypatch.setattr(device.route, "dump", lambda nl: [])
    NL = object
    cases = [(("nosuch0", None), "--iface 'nosuch0': no interface matches; have eth0, eth1, lo"),
             (("eth[", None), "--iface 'eth[': no such interface and not a valid regex ("),
             ((None, IPv4Address("10.9.9.9")), "--public-ip 10.9.9.9: no interface in this "
              "network namespace has that address; pass --iface or fix the address"),
             (("eth1", None), "interface eth1 has no IPv4 address; give it one or pass "
              "--public-ip"),
             ((None, None), "no default route to pick the underlay interface from; pass "
              "--iface or --public-ip")]
    for (iface, public_ip), want in cases:
        with pytest.raises(UnderlayError) as ei:
            find_underlay(NL(), iface, public_ip)  # type: ignore[arg-type]  # a fake socket
        assert "--" not in str(ei.value)
        assert underlay_flag_message(ei.value).startswith(want)


def test_the_runtime_file_is_written_before_etcd_is_reached(tmp_path):
    """overlayctl on the node must find etcd's address while overlayd still waits for it."""
    from overlay.runtimefile import load_runtime_file
    path = tmp_path / "run" / "overlayd.json"
    settings = parse_settings(["--subnet-file", str(tmp_path / "subnet.env"),
                               "--runtime-file", str(path), "--etcd-endpoints",
                               "http://10.9.9.9:2379", "--node-name", "n1"], environ={})

    def unreachable(opts):
        assert load_runtime_file(str(path)).etcd_endpoints == ("http://10.9.9.9:2379",)
        d.stop.set()  # as SIGTERM would, while etcd is being waited for
        return FakeRegistry()
    d = Daemon(settings, open_registry=unreachable)
    assert d.run() == 0
    info = load_runtime_file(str(path))
    assert info.node_name == "n1" and info.vxlan_device is None  # no data plane yet


def test_an_ipv6_only_lease_writes_the_ipv6_pair_and_no_ipv4_masquerade(tmp_path):
    from ipaddress import IPv6Address, IPv6Network

    from overlay.config import parse_network_config
    reg = FakeRegistry()
    reg.config = parse_network_config({"EnableIPv4": False, "EnableIPv6": True,
                                       "IPv6Network": "fd00:10:244::/56"}).to_json().encode()
    lease = Lease(IPv6Network("fd00:10:244:3::/64"), LeaseAttrs(IPv6Address("fd00:192:168:1::13")),
                  etcd_lease_id=0x13)
    env = tmp_path / "subnet.env"
    d = wired_daemon(tmp_path, env, lease, registry=reg)
    assert env.read_text() == ("OVERLAY_IPV6_NETWORK=fd00:10:244::/56\n"
                               "OVERLAY_IPV6_SUBNET=fd00:10:244:3::1/64\n"
                               "OVERLAY_MTU=1450\nOVERLAY_IPMASQ=false\n")
    assert [str(a) for a in d.device.addrs] == ["fd00:10:244:3::/128"]
    assert d.masq.network is None and d.masq.subnet is None  # no IPv4 masquerade
    assert (d.masq.network6, d.masq.subnet6) == (IPv6Network("fd00:10:244::/56"), lease.subnet)
    # a restart finds its previous subnet in the IPv6 pair
    assert d._previous_subnet(d.config) == lease.subnet


def test_the_progress_interval_is_a_quarter_of_the_lag_limit_uncapped():
    from overlay.daemon.watchhealth import DEFAULT_MAX_LAG, progress_interval
    assert progress_interval(DEFAULT_MAX_LAG) == 7.5  # was capped at 5 s: 200 requests/s
    assert progress_interval(120) == 30.0 and progress_interval(0.2) == 0.05


def test_an_unknown_schema_with_policies_in_force_is_not_ready(tmp_path):
    """No policy agent runs under a newer schema; with policies in force before (their
    marker on disk) the table is frozen and ADDs refused: /readyz must say so."""
    from overlay.cluster.schema import SchemaStatus
    from overlay.subnetenv import policy_marker_path

    env = str(tmp_path / "subnet.env")
    d = Daemon(parse_settings(["--subnet-file", env], environ={}))
    d.schema = SchemaStatus(999, problem="the cluster's schema version is 999, newer")
    assert not any("NetworkPolicy" in m for m in d.readiness())  # no policy was in force
    with open(policy_marker_path(env), "w") as f:
        f.write('{"policies":"in force"}\n')
    said = [m for m in d.readiness() if "NetworkPolicy not enforced" in m]
    assert len(said) == 1 and "schema version is 999" in said[0], d.readiness()
    d.schema = SchemaStatus(1)
    assert not any("NetworkPolicy" in m for m in d.readiness())
