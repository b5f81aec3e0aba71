"""EtcdRegistry's reaction to refused requests, against a fake grpc stream (no etcd)."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import grpc
import pytest

from overlay.errors import RegistryError
from overlay.subnet import registry as registry_mod
from overlay.subnet.etcdconf import make_etcd_options
from overlay.subnet.registry import EtcdRegistry, _WatchStream


class Refused(grpc.RpcError):
    def __init__(self, code):
        self._code = code

    def code(self):
        return self._code

    def details(self):
        return "etcdserver: invalid auth token"


def registry_with_stream(monkeypatch, responses, username="overlay"):
    reg = EtcdRegistry(make_etcd_options("http://127.0.0.1:1", username=username,
                                         password="pw" if username else None))
    client = SimpleNamespace(channel=None, call_credentials=None, metadata=(("token", "old"),),
                             endpoint_in_use=None, endpoints={})
    resets: list[object] = []  # the clients reset_client was given
    monkeypatch.setattr(reg.etcd, "client", lambda: client)
    monkeypatch.setattr(reg.etcd, "reset_client", resets.append)

    class Call:
        def __iter__(self):
            for r in responses:
                if isinstance(r, Exception):
                    raise r
                yield r

        def cancel(self):
            pass

    monkeypatch.setattr(registry_mod.etcdrpc, "WatchStub",
                        lambda channel: SimpleNamespace(Watch=lambda *a, **kw: Call()))
    return reg, client, resets


def drain(reg):
    stream = _WatchStream(reg, 5, threading.Event())
    try:
        with pytest.raises(RegistryError):
            list(stream.updates())
    finally:
        stream.close()


def test_watch_refused_with_a_stale_token_authenticates_again(monkeypatch):
    reg, client, resets = registry_with_stream(
        monkeypatch, [Refused(grpc.StatusCode.UNAUTHENTICATED)])
    drain(reg)
    assert resets == [client]


def test_watch_cancelled_by_etcd_with_auth_on_authenticates_again(monkeypatch):
    cancelled = SimpleNamespace(compact_revision=0, canceled=True,
                                cancel_reason="etcdserver: permission denied", events=[])
    reg, client, resets = registry_with_stream(monkeypatch, [cancelled])
    drain(reg)
    assert resets == [client]


def test_watch_without_auth_keeps_its_client(monkeypatch):
    reg, _, resets = registry_with_stream(
        monkeypatch, [Refused(grpc.StatusCode.UNAUTHENTICATED)], username=None)
    drain(reg)
    assert resets == []


class FakeClient(SimpleNamespace):
    pass


def registry_with_client(monkeypatch, **methods):
    reg = EtcdRegistry(make_etcd_options("http://127.0.0.1:1"))
    client = FakeClient(endpoint_in_use=None, endpoints={}, **methods)
    monkeypatch.setattr(reg.etcd, "client", lambda: client)
    return reg


def test_grant_retried_after_a_timeout_does_not_grant_twice(monkeypatch):
    from pyetcd import exceptions as etcd_exc
    granted = []

    def lease(ttl, lease_id=None):
        if lease_id in granted:
            raise etcd_exc.PreconditionFailedError()  # etcd: lease already exists
        granted.append(lease_id)
        if len(granted) == 1:
            raise etcd_exc.ConnectionTimeoutError()  # granted, but the answer was lost
        return SimpleNamespace(id=lease_id)
    reg = registry_with_client(monkeypatch, lease=lease)
    lease_id = reg._grant(60, "creating a lease")
    assert granted == [lease_id] and lease_id > 0


def test_renewing_a_key_now_on_another_etcd_lease_revokes_ours(monkeypatch):
    from ipaddress import IPv4Address, IPv4Network

    from overlay.errors import LeaseConflict
    from overlay.lease import Lease, LeaseAttrs
    revoked: list[int] = []
    theirs = SimpleNamespace(key=b"/overlay/network/subnets/10.244.1.0-24", lease=0x99,
                             value=LeaseAttrs(IPv4Address("192.168.1.12")).to_json().encode(),
                             mod_revision=9)
    reg = registry_with_client(
        monkeypatch, refresh_lease=lambda i: [SimpleNamespace(TTL=30)],
        get_response=lambda key: SimpleNamespace(kvs=[theirs]), revoke_lease=revoked.append)
    ours = Lease(IPv4Network("10.244.1.0/24"), LeaseAttrs(IPv4Address("192.168.1.11")),
                 etcd_lease_id=0x42, mod_revision=3, ttl=60)
    with pytest.raises(LeaseConflict):
        reg.renew_lease(ours)
    assert revoked == [0x42]


def _event(kind, key, value=b"", rev=5, prev=None):
    from pyetcd.etcdrpc import kv_pb2
    ev = kv_pb2.Event(type=kind, kv=kv_pb2.KeyValue(key=key, value=value, mod_revision=rev,
                                                    create_revision=rev))
    if prev is not None:
        ev.prev_kv.CopyFrom(kv_pb2.KeyValue(key=key, value=prev, mod_revision=rev - 1))
    return ev


def test_watch_events_carry_rejections_and_an_alias_delete_removes_nothing():
    from ipaddress import IPv4Address

    from pyetcd.etcdrpc import kv_pb2

    from overlay.lease import EventType, LeaseAttrs
    from overlay.subnet.registry import _watch_update
    reg = EtcdRegistry(make_etcd_options("http://127.0.0.1:1"))
    p = reg.subnets_prefix.encode()
    good = LeaseAttrs(IPv4Address("192.168.1.12"), vtep_mac="0e:00:00:00:00:0c").to_json()
    PUT, DELETE = kv_pb2.Event.PUT, kv_pb2.Event.DELETE
    u = _watch_update(reg, [
        _event(PUT, p + b"10.244.2.0-24", good.encode(), 5),
        _event(PUT, p + b"10.244.2.0-24\n", good.encode(), 6),  # an alias
        _event(DELETE, p + b"10.244.2.0-24\n", rev=7, prev=good.encode()),
        _event(PUT, p + b"10.244.3.0-24", b'{"PublicIP": "1.2.3.4", "BackendData": '
               b'{"VNI": 1e400}}', 8),
    ])
    assert u is not None
    assert u.revision == 8
    assert [(e.type, str(e.lease.subnet)) for e in u.events] == [
        (EventType.ADDED, "10.244.2.0/24"), (EventType.REMOVED, "10.244.3.0/24")]
    assert u.events[0].lease.create_revision == 5
    rejection = u.events[1].rejection
    assert rejection is not None and rejection.reason == "bad-value"
    assert [r.reason for r in u.rejected] == ["bad-key"]
    assert u.cleared == [reg.subnets_prefix + "10.244.2.0-24\n"]
    assert _watch_update(reg, []) is None


def test_only_small_values_are_cached():
    """A hostile writer's big values must not be pinned by the decode cache."""
    from ipaddress import IPv4Address

    from overlay.lease import LeaseAttrs
    reg = EtcdRegistry(make_etcd_options("http://127.0.0.1:1"))
    key = (reg.subnets_prefix + "10.244.2.0-24").encode()
    small = LeaseAttrs(IPv4Address("192.168.1.12"), vtep_mac="0e:00:00:00:00:0c").to_json()
    big = small[:-1] + ', "pad": "' + "x" * 8000 + '"}'
    registry_mod._parse_kv.cache_clear()
    for value in (small, big):
        kv = SimpleNamespace(key=key, value=value.encode(), lease=0, mod_revision=3,
                             create_revision=3)
        subnet = reg._judge_kv(kv).subnet
        assert subnet is not None and subnet.prefixlen == 24
    assert registry_mod._parse_kv.cache_info().currsize == 1


def test_a_listing_larger_than_the_cache_turns_it_off():
    """An LRU smaller than a listing only pins raw values it will evict unused."""
    from ipaddress import IPv4Address

    from overlay.lease import LeaseAttrs
    reg = EtcdRegistry(make_etcd_options("http://127.0.0.1:1"))
    value = LeaseAttrs(IPv4Address("192.168.1.12"), vtep_mac="0e:00:00:00:00:0c").to_json()

    def judge(n: int) -> None:
        kv = SimpleNamespace(key=(reg.subnets_prefix + f"10.244.{n}.0-24").encode(),
                             value=value.encode(), lease=0, mod_revision=3, create_revision=3)
        assert reg._judge_kv(kv).subnet is not None

    registry_mod._parse_kv.cache_clear()
    judge(1)
    assert registry_mod._parse_kv.cache_info().currsize == 1
    reg._use_cache(registry_mod.CACHED_VALUES + 1)
    assert registry_mod._parse_kv.cache_info().currsize == 0  # cleared
    judge(2)
    assert registry_mod._parse_kv.cache_info().currsize == 0  # bypassed
    reg._use_cache(registry_mod.CACHED_VALUES)
    judge(3)
    assert registry_mod._parse_kv.cache_info().currsize == 1


def _requests_seen(stream: _WatchStream, seconds: float, heard_every: float | None = None):
    """The requests a stream sends in ``seconds`` (its request side, as grpc drains it),
    with an answer noted every ``heard_every`` s."""
    import time
    sent: list[str] = []

    def drain():
        for req in stream._requests():
            sent.append(req.WhichOneof("request_union"))
    t = threading.Thread(target=drain, daemon=True)
    t.start()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if heard_every is not None:
            stream._heard_at = time.monotonic()  # what responses() does for each answer
        time.sleep(heard_every or 0.01)
    stream.close()
    t.join(2)
    assert not t.is_alive()
    return sent


def test_a_watch_nobody_asks_progress_of_requests_none():
    reg = EtcdRegistry(make_etcd_options("http://127.0.0.1:1"))
    stream = _WatchStream(reg, 5, threading.Event(), progress_interval=0.05)  # no on_progress
    assert _requests_seen(stream, 0.4) == ["create_request"]


def test_progress_is_asked_after_a_silent_interval_only():
    reg = EtcdRegistry(make_etcd_options("http://127.0.0.1:1"))
    quiet = _WatchStream(reg, 5, threading.Event(), on_progress=lambda rev: None,
                         progress_interval=0.05)
    sent = _requests_seen(quiet, 0.5)
    assert sent[0] == "create_request" and 5 <= sent.count("progress_request") <= 11
    busy = _WatchStream(reg, 5, threading.Event(), on_progress=lambda rev: None,
                        progress_interval=0.1)
    assert _requests_seen(busy, 0.5, heard_every=0.02) == ["create_request"]  # events answer
