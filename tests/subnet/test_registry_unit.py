"""EtcdRegistry's reaction to refused requests and odd events, against a scripted
gateway (no etcd)."""

from __future__ import annotations

import threading
import time
from ipaddress import IPv4Address, IPv4Network
from types import SimpleNamespace

import pytest

from overlay.errors import LeaseConflict, RegistryError
from overlay.lease import EventType, Lease, LeaseAttrs
from overlay.subnet import etcdhttp as gw, registry as registry_mod
from overlay.subnet.etcdconf import make_etcd_options
from overlay.subnet.registry import EtcdRegistry, _watch_update, _WatchStream

from .gateway import DROP, Gateway
from .test_etcdhttp import HEADER


@pytest.fixture
def gateway():
    g = Gateway()
    yield g
    g.close()


def registry(gateway, **kw) -> EtcdRegistry:
    return EtcdRegistry(make_etcd_options(gateway.endpoint, timeout=2.0, **kw))


def drain(reg):
    stream = _WatchStream(reg, 5, threading.Event())
    try:
        with pytest.raises(RegistryError):
            list(stream.updates())
    finally:
        stream.close()


def test_watch_cancelled_by_etcd_with_auth_on_authenticates_again(gateway):
    gateway.on("/v3/auth/authenticate", (200, {"header": HEADER, "token": "tok"}))
    gateway.on("/v3/watch", ("stream", [{"result": {
        "header": HEADER, "canceled": True, "cancel_reason": "etcdserver: permission denied"}}]))
    reg = registry(gateway, username="overlay", password="pw")
    drain(reg)
    assert reg.etcd.active().token is None  # the next request authenticates again


def test_watch_error_from_the_gateway_is_a_registry_error(gateway):
    gateway.on("/v3/watch", ("stream", [{"error": {"grpc_code": 16, "http_code": 401,
                                                   "message": "invalid auth token"}}]))
    drain(registry(gateway))


def test_a_watch_stream_that_ends_is_an_interruption(gateway):
    gateway.on("/v3/watch", ("stream", [{"result": {"header": HEADER, "created": True}}]))
    drain(registry(gateway))


def test_grant_retried_after_a_lost_answer_does_not_grant_twice(gateway):
    # the first grant went through but its answer was lost; the retry is refused
    gateway.on("/v3/lease/grant", DROP, (412, {"error": "etcdserver: lease already exists",
                                               "message": "etcdserver: lease already exists",
                                               "code": 9}))
    reg = registry(gateway)
    lease_id = reg._grant(60, "creating a lease")
    ids = [b["ID"] for p, b, _ in gateway.requests if p == "/v3/lease/grant"]
    assert ids == [str(lease_id)] * 2 and lease_id > 0


def test_renewing_a_key_now_on_another_etcd_lease_revokes_ours(gateway):
    theirs = LeaseAttrs(IPv4Address("192.168.1.12")).to_json()
    gateway.on("/v3/lease/keepalive", (200, {"result": {"header": HEADER, "ID": "66",
                                                         "TTL": "30"}}))
    gateway.on("/v3/kv/range", (200, {"header": HEADER, "kvs": [{
        "key": gw.b64("/overlay/network/subnets/10.244.1.0-24"), "value": gw.b64(theirs),
        "lease": str(0x99), "mod_revision": "9", "create_revision": "9"}]}))
    gateway.on("/v3/lease/revoke", (200, {"header": HEADER}))
    reg = registry(gateway)
    ours = Lease(IPv4Network("10.244.1.0/24"), LeaseAttrs(IPv4Address("192.168.1.11")),
                 etcd_lease_id=0x42, mod_revision=3, ttl=60)
    with pytest.raises(LeaseConflict):
        reg.renew_lease(ours)
    assert [b["ID"] for p, b, _ in gateway.requests if p == "/v3/lease/revoke"] == ["66"]


def _event(kind, key, value=b"", rev=5, prev=None):
    return gw.Event(kind, gw.KeyValue(key, value, rev, rev),
                    gw.KeyValue(key, prev, rev - 1, rev - 1) if prev is not None else None)


def test_watch_events_carry_rejections_and_an_alias_delete_removes_nothing():
    reg = EtcdRegistry(make_etcd_options("http://127.0.0.1:1"))
    p = reg.subnets_prefix.encode()
    good = LeaseAttrs(IPv4Address("192.168.1.12"), vtep_mac="0e:00:00:00:00:0c").to_json()
    u = _watch_update(reg, [
        _event("PUT", p + b"10.244.2.0-24", good.encode(), 5),
        _event("PUT", p + b"10.244.2.0-24\n", good.encode(), 6),  # an alias
        _event("DELETE", p + b"10.244.2.0-24\n", rev=7, prev=good.encode()),
        _event("PUT", p + b"10.244.3.0-24", b'{"PublicIP": "1.2.3.4", "BackendData": '
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


def _watch_for(gateway, seconds: float, **kw) -> list[dict]:
    """Run a stream against ``gateway`` for ``seconds``; the progress ranges it sent."""
    reg = registry(gateway)
    stream = _WatchStream(reg, 5, threading.Event(), **kw)
    t = threading.Thread(target=lambda: list(stream.updates()), daemon=True)
    t.start()
    time.sleep(seconds)
    stream.close()
    t.join(2)
    assert not t.is_alive()
    reg.close()
    return [b for p, b, _ in gateway.requests if p == "/v3/kv/range"]


def test_a_watch_nobody_asks_progress_of_requests_none(gateway):
    gateway.on("/v3/watch", ("stream", [{"result": {"header": HEADER, "created": True}}], 2))
    assert _watch_for(gateway, 0.4, progress_interval=0.05) == []  # no on_progress


def test_progress_is_asked_of_the_streams_member_after_a_silent_interval(gateway):
    gateway.on("/v3/watch", ("stream", [{"result": {"header": HEADER, "created": True}}], 2))
    gateway.on("/v3/kv/range", (200, {"header": {**HEADER, "revision": "7"}, "count": "0"}))
    heard: list[int] = []
    asked = _watch_for(gateway, 0.6, on_progress=heard.append, progress_interval=0.1)
    assert 3 <= len(asked) <= 6
    # the watched key alone, counted: no range of the prefix for etcd to read
    assert all(b == {"key": gw.b64(b"/overlay/network/subnets/"), "count_only": True}
               for b in asked)
    # created at 2; then the stream's own revision (from 5: nothing delivered since)
    assert heard[0] == 2 and heard[1:] == [4] * len(asked)


def test_no_progress_while_the_member_does_not_answer(gateway):
    gateway.on("/v3/watch", ("stream", [{"result": {"header": HEADER, "created": True}}], 2))
    gateway.on("/v3/kv/range", (503, {"error": "etcdserver: request timed out",
                                      "message": "etcdserver: request timed out", "code": 14}))
    heard: list[int] = []
    asked = _watch_for(gateway, 0.4, on_progress=heard.append, progress_interval=0.1)
    assert asked and heard == [2]  # only the stream's own answer
