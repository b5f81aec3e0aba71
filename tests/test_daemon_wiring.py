"""overlayd's wiring without a kernel or etcd: registry observer, readiness, metrics."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from ipaddress import IPv4Address, IPv4Network

import pytest

from overlay.daemon import Daemon, _ObservedRegistry, parse_settings
from overlay.errors import EtcdUnavailable
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


def test_observer_counts_errors_and_reconciles_on_watch_listings_only():
    metrics, seen = Metrics(), []
    reg = _ObservedRegistry(FakeRegistry(), metrics, seen.append)
    assert reg.list_leases()[1] == 42 and seen == []  # main thread: acquire's listing
    t = threading.Thread(target=reg.list_leases, name="watch")
    t.start()
    t.join()
    assert len(seen) == 1 and seen[0][0].subnet == IPv4Network("10.244.2.0/24")
    with pytest.raises(EtcdUnavailable):
        reg.renew_lease(None)
    reg._inner.fail = True
    with pytest.raises(EtcdUnavailable):
        reg.list_leases()
    assert value(metrics, "overlay_etcd_errors_total") == 2


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
