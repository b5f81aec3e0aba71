"""The reconcile's filtered, streaming dump against a real kernel (``ovd-vx-*``): it reads
the VXLAN device's own entries only, and still finds and repairs each kind of drift."""

from __future__ import annotations

import subprocess
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest

from overlay.lease import Lease, LeaseAttrs
from overlay.vxlan.backend import BackendSettings, VXLANBackend
from overlay.vxlan.drift import Wanted
from overlay.vxlan.entries import FDB, Neigh, Route
from tests.integration.test_vxlan import device, ip, kernel_entries, netns  # noqa: F401

pytestmark = pytest.mark.integration


def lease(n: int) -> Lease:
    return Lease(IPv4Network(f"10.244.{n}.0/24"),
                 LeaseAttrs(IPv4Address(f"192.168.1.{20 + n}"), "vxlan", 1,
                            f"0e:00:00:00:01:{n:02x}"))


def entries(n: int) -> set:
    gw, mac = IPv4Address(f"10.244.{n}.0"), f"0e:00:00:00:01:{n:02x}"
    return {Neigh(gw, mac), FDB(mac, IPv4Address(f"192.168.1.{20 + n}")),
            Route(IPv4Network(f"10.244.{n}.0/24"), gw)}


@pytest.fixture
def other_device(netns):  # noqa: F811
    """A second VXLAN device with a permanent neighbour and an FDB entry of its own."""
    ip(netns, "link", "add", "other.7", "type", "vxlan", "id", "7", "dstport", "4789",
       "local", "192.168.1.11", "dev", "eth0", "nolearning")
    ip(netns, "link", "set", "other.7", "up")
    ip(netns, "neigh", "add", "10.99.0.1", "lladdr", "0e:99:00:00:00:01", "dev", "other.7",
       "nud", "permanent")
    subprocess.run(["bridge", "-n", netns, "fdb", "append", "0e:99:00:00:00:01", "dev",
                    "other.7", "dst", "192.168.1.99"], check=True)
    return "other.7"


def other_state(ns: str) -> tuple[str, str]:
    neigh = ip(ns, "neigh", "show", "dev", "other.7").stdout
    fdb = subprocess.run(["bridge", "-n", ns, "fdb", "show", "dev", "other.7"],
                         capture_output=True, text=True, check=True).stdout
    return neigh, fdb


def test_dump_reads_only_the_vxlan_device(device, netns, other_device):  # noqa: F811
    backend = VXLANBackend(device, BackendSettings(1, IPv4Address("192.168.1.11"),
                                                   IPv4Interface("192.168.1.11/24")))
    backend.reconcile([lease(2), lease(3)])
    have = device.dump()
    assert set(have.all()) == entries(2) | entries(3)
    want = Wanted()
    for e in entries(2) | entries(3):
        want.add(e)
    device.diff(want)
    assert want.missing() == ([], []) and want.stale == []  # other.7's are not read


def test_reconcile_repairs_drift_and_leaves_other_devices_alone(device, netns,  # noqa: F811
                                                                other_device):
    backend = VXLANBackend(device, BackendSettings(1, IPv4Address("192.168.1.11"),
                                                   IPv4Interface("192.168.1.11/24")))
    backend.reconcile([lease(2), lease(3), lease(4)])
    before = other_state(netns)
    assert "0e:99:00:00:00:01" in before[0] and "192.168.1.99" in before[1]
    # drift made by others: a neighbour's MAC, an FDB entry's VTEP, a route's gateway,
    # a neighbour and an FDB entry of a lease nobody holds
    ip(netns, "neigh", "replace", "10.244.2.0", "lladdr", "0e:00:00:00:0f:0f", "dev",
       "overlay.1", "nud", "permanent")
    for mac, dst in (("0e:00:00:00:01:03", "192.168.1.77"), ("0e:00:00:00:01:09", "192.168.1.29")):
        subprocess.run(["bridge", "-n", netns, "fdb", "replace", mac, "dev", "overlay.1",
                        "dst", dst, "self", "permanent"], check=True)
    ip(netns, "route", "replace", "10.244.4.0/24", "via", "10.244.4.9", "dev", "overlay.1",
       "onlink", "proto", "111")
    ip(netns, "neigh", "add", "10.244.8.0", "lladdr", "0e:00:00:00:01:08", "dev", "overlay.1",
       "nud", "permanent")
    res = backend.reconcile()
    assert kernel_entries(netns) == entries(2) | entries(3) | entries(4)
    # removed: the wrong route and FDB entry, the unknown FDB entry and neighbour; added:
    # the right ones and the neighbour's MAC (replaced in place, never deleted first)
    assert (res.removed, res.added, res.failed) == (4, 3, ())
    assert other_state(netns) == before
    again = backend.reconcile()
    assert again.added == again.removed == 0
