"""The shared fakes (and the daemon's registry wrapper) implement their whole Protocol:
every method, with the Protocol's parameters, so a fake cannot lag its interface."""

from __future__ import annotations

import inspect

import pytest

from overlay.cni.ipam import DiskStore, Store
from overlay.daemon.daemon import ObservedRegistry
from overlay.subnet.registry import EtcdRegistry, Registry
from overlay.subnet.reservations import ReservationStore
from tests.fakes import FakeRegistry, FakeStore


def _etcd_registry():
    from overlay.subnet.etcdconf import make_etcd_options
    return EtcdRegistry(make_etcd_options("http://127.0.0.1:1", "/overlay/network"))


def protocol_members(proto: type) -> dict[str, inspect.Signature | None]:
    """Methods (with their signatures) and attributes (None) the Protocol declares."""
    names = {n for n in proto.__dict__ if not n.startswith("_")}
    names |= set(getattr(proto, "__annotations__", {}))
    return {n: (inspect.signature(proto.__dict__[n]) if callable(proto.__dict__.get(n))
                else None) for n in names}


def missing(proto: type, impl: object) -> list[str]:
    problems = []
    for name, sig in protocol_members(proto).items():
        if not hasattr(impl, name):
            problems.append(f"{name}: missing")
        elif sig is not None and not callable(getattr(impl, name)):
            problems.append(f"{name}: not a method")
        elif sig is not None:
            got = inspect.signature(getattr(impl, name))
            want = [p for p in sig.parameters if p != "self"]
            if list(got.parameters) != want:
                problems.append(f"{name}{got}: the Protocol has {want}")
    return problems


def test_registry_protocol_covers_what_manager_and_daemon_call():
    names = set(protocol_members(Registry))
    assert {"list_subnets", "list_leases", "get_lease", "create_lease", "update_lease",
            "renew_lease", "watch_leases", "watch_config", "get_config",
            "get_config_value", "close", "subnets_prefix"} <= names


@pytest.mark.parametrize("make", [FakeRegistry,
                                  lambda: ObservedRegistry(FakeRegistry(), _metrics())],
                         ids=["FakeRegistry", "ObservedRegistry"])
def test_registry_implementations_have_every_protocol_member(make):
    assert missing(Registry, make()) == []


@pytest.mark.parametrize("make", [FakeRegistry, _etcd_registry], ids=["fake", "etcd"])
def test_registries_serve_reservations(make):
    assert missing(ReservationStore, make()) == []


def test_etcd_registry_has_every_protocol_member():
    assert missing(Registry, _etcd_registry()) == []  # no connection is made before a request


@pytest.mark.parametrize("impl", [FakeStore(), DiskStore("/nonexistent", "net")],
                         ids=["FakeStore", "DiskStore"])
def test_ipam_stores_have_every_protocol_member(impl):
    assert missing(Store, impl) == []


def test_the_check_notices_a_missing_method():
    class Partial(FakeStore):
        release = None  # type: ignore[assignment]
    assert missing(Store, Partial()) == ["release: not a method"]

    class Renamed(FakeStore):
        def reserve(self, cid, ifname, ip, range_id=0):
            return True
    assert missing(Store, Renamed())[0].startswith("reserve(cid, ifname, ip, range_id=0)")


def _metrics():
    from overlay.daemon.http import Metrics
    return Metrics()


def test_the_object_store_fake_has_the_real_signatures():
    from overlay.cluster.store import ObjectStore
    from tests.fakes import FakeObjectStore
    for name in ("grant", "keepalive", "revoke", "get", "list", "put", "create", "replace",
                 "delete"):
        want = list(inspect.signature(getattr(ObjectStore, name)).parameters)[1:]
        assert list(inspect.signature(getattr(FakeObjectStore, name)).parameters)[1:] == want
