"""The etcd client's failover against a real 3-member etcd: a member stopped, a member
frozen, and a watch whose member goes away."""

import signal
import threading
import time
from ipaddress import IPv4Address, IPv4Network

import pytest

from overlay.config import parse_network_config
from overlay.lease import LeaseAttrs
from overlay.subnet.etcdconf import make_etcd_options
from overlay.subnet.registry import EtcdRegistry

from .support.etcd_server import EtcdCluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CFG = parse_network_config({"Network": "10.244.0.0/16"})


def attrs(i):
    return LeaseAttrs(IPv4Address(f"192.168.1.{i}"), vtep_mac=f"0e:00:00:00:02:{i:02x}")


def net(i):
    return IPv4Network(f"10.244.{i}.0/24")


@pytest.fixture(scope="module")
def cluster():
    c = EtcdCluster(3, prefix="ovfailover").start()
    try:
        yield c
    finally:
        c.cleanup()


def wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_a_frozen_member_in_use_is_left_after_one_timeout(cluster):
    first = cluster.members[0]
    reg = EtcdRegistry(make_etcd_options(cluster.endpoints, prefix="/ovfailover/frozen",
                                         timeout=1.0))
    try:
        reg.put_config(CFG)
        assert reg.etcd.active().port == first.client_port
        first.proc.send_signal(signal.SIGSTOP)  # accepts connections, answers nothing
        try:
            t0 = time.monotonic()
            lease = reg.create_lease(net(1), attrs(1), 60)
            assert time.monotonic() - t0 < 4  # one timeout, then the next member
            held = reg.get_lease(net(1))
            assert held is not None and held.attrs.public_ip == lease.attrs.public_ip
            assert reg.etcd.active().port != first.client_port
        finally:
            first.proc.send_signal(signal.SIGCONT)
    finally:
        reg.close()


def test_a_watch_moves_to_another_member_when_its_member_stops(cluster):
    prefix = "/ovfailover/watch"
    watching = EtcdRegistry(make_etcd_options(cluster.endpoints, prefix=prefix, timeout=1.0))
    writer = EtcdRegistry(make_etcd_options(
        ",".join(m.endpoint for m in cluster.members[1:]), prefix=prefix, timeout=1.0))
    stop = threading.Event()
    seen: set[object] = set()

    def run():
        for update in watching.watch_leases(rev + 1, stop):
            seen.update(e.lease.subnet for e in update.events)
    try:
        writer.put_config(CFG)
        _, rev = watching.list_leases(with_expiration=False)
        t = threading.Thread(target=run, daemon=True)
        t.start()
        writer.create_lease(net(2), attrs(2), 60)
        wait_for(lambda: net(2) in seen, 5, "the first event")
        cluster.members[0].stop()
        writer.create_lease(net(3), attrs(3), 60)
        wait_for(lambda: net(3) in seen, 10, "an event after the watch's member stopped")
    finally:
        stop.set()
        watching.close()
        writer.close()
        cluster.members[0].start()
    t.join(3)
    assert not t.is_alive()
