"""The JSON-gateway client against answers recorded from etcd 3.4.23 (no etcd)."""

from __future__ import annotations

import socket
import ssl

import pytest

from overlay.errors import EtcdUnavailable, RegistryError
from overlay.subnet import etcdhttp as gw
from overlay.subnet.etcd import EtcdClient, op_put, op_range
from overlay.subnet.etcdconf import Endpoint, make_etcd_options

from .gateway import DROP, Gateway

HEADER = {"cluster_id": "18113487585430962006", "member_id": "4730766286543918470",
          "revision": "2", "raft_term": "2"}
# etcd 3.4.23: POST /v3/kv/range {"key": "/a/", "range_end": "/a0"} after one put
RANGE = {"header": HEADER, "kvs": [{"key": "L2EveA==", "create_revision": "2",
                                    "mod_revision": "2", "version": "1", "value": "djE="}],
         "count": "1"}
# POST /v3/kv/txn, a CREATE == 0 compare that failed, with a range in "failure"
TXN_FAILED = {"header": HEADER, "responses": [{"response_range": {
    "header": {"revision": "2"}, "kvs": [{"key": "L2EveA==", "create_revision": "2",
                                          "mod_revision": "2", "version": "1",
                                          "value": "djE="}], "count": "1"}}]}
GRANT_EXISTS = (412, {"error": "etcdserver: lease already exists",
                      "message": "etcdserver: lease already exists", "code": 9})
WATCH = [
    {"result": {"header": HEADER, "created": True}},
    {"result": {"header": {**HEADER, "revision": "4"}, "events": [
        {"kv": {"key": "L2EveA==", "create_revision": "2", "mod_revision": "2",
                "version": "1", "value": "djE="}},
        {"type": "DELETE", "kv": {"key": "L2EveQ==", "mod_revision": "4"},
         "prev_kv": {"key": "L2EveQ==", "create_revision": "3", "mod_revision": "3",
                     "version": "1", "value": "djI="}}]}},
]


@pytest.fixture
def gateway():
    g = Gateway()
    yield g
    g.close()


def dead_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # closed: connection refused


def client(*endpoints: str, **kw) -> EtcdClient:
    return EtcdClient(make_etcd_options(",".join(endpoints), timeout=2.0, **kw))


def test_a_range_answer_decodes_to_bytes_and_integers(gateway):
    gateway.on("/v3/kv/range", (200, RANGE))
    kvs, rev, more = client(gateway.endpoint).api().range(b"/a/", b"/a0")
    assert (rev, more) == (2, False)
    assert [(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)
            for kv in kvs] == [(b"/a/x", b"v1", 2, 2, 1, 0)]
    _, body, _ = gateway.requests[0]
    assert body == {"key": "L2Ev", "range_end": "L2Ew"}


def test_an_absent_key_has_no_kvs_field(gateway):
    gateway.on("/v3/kv/range", (200, {"header": HEADER}))
    assert client(gateway.endpoint).api().get("/nope") == (None, None)


def test_a_failed_txn_carries_what_its_failure_branch_read(gateway):
    gateway.on("/v3/kv/txn", (200, TXN_FAILED))
    resp = client(gateway.endpoint).api().txn(
        [gw.compare("/a/x", "CREATE", 0)], [op_put("/a/x", "v2")], [op_range("/a/x")])
    assert not resp.succeeded and resp.revision == 2
    assert [kv.value for kv in resp.kvs[0]] == [b"v1"]
    _, body, _ = gateway.requests[0]
    assert body["compare"] == [{"key": "L2EveA==", "target": "CREATE", "result": "EQUAL",
                                "create_revision": "0"}]


def test_lease_answers(gateway):
    gateway.on("/v3/lease/keepalive", (200, {"result": {"header": HEADER, "ID": "12345",
                                                         "TTL": "10"}}), (200, {"result": {
                                                             "header": HEADER, "ID": "1"}}))
    gateway.on("/v3/lease/timetolive", (200, {"header": HEADER, "ID": "999", "TTL": "-1"}))
    api = client(gateway.endpoint).api()
    assert api.keepalive(12345) == 10
    assert api.keepalive(1) == 0  # gone: etcd leaves TTL out
    assert api.time_to_live(999) == (-1, 0)


def test_an_error_answer_keeps_etcds_code_and_message(gateway):
    gateway.on("/v3/lease/grant", GRANT_EXISTS)
    with pytest.raises(gw.GatewayError) as e:
        client(gateway.endpoint).api().grant(10, 12345)
    assert e.value.code == gw.FAILED_PRECONDITION
    assert e.value.message == "etcdserver: lease already exists"


def test_malformed_answers_are_registry_errors_not_tracebacks(gateway):
    gateway.on("/v3/kv/range", (200, {"header": HEADER, "kvs": [{"key": "!!!"}]}),
               (200, b"not json"), (200, b"[1, 2]"),
               (200, {"header": HEADER, "kvs": [{"key": "L2E=", "mod_revision": [1]}]}))
    c = client(gateway.endpoint)
    for _ in range(4):
        with pytest.raises(RegistryError, match="malformed|not JSON|not a JSON object"):
            c.call("reading", lambda api: api.range(b"/a"))


def test_an_answer_larger_than_the_bound_is_refused_unread(gateway, monkeypatch):
    monkeypatch.setattr(gw, "MAX_RESPONSE_BYTES", 1000)
    big = {"header": HEADER, "kvs": [{"key": "L2E=", "value": "eHh4" * 400}]}
    gateway.on("/v3/kv/range", (200, big))
    ep = gw.Endpoint("127.0.0.1", gateway.port, None, 2.0)
    with pytest.raises(gw.TooLarge):
        ep.post("/v3/kv/range", {"key": "L2E="}, limit=1000)


def test_a_listing_is_read_in_pages_at_one_revision(gateway):
    def page(keys, more, rev):
        return (200, {"header": {**HEADER, "revision": str(rev)}, "more": more,
                      "kvs": [{"key": gw.b64(k), "value": "djE=", "mod_revision": "2"}
                              for k in keys]})
    gateway.on("/v3/kv/range", page([b"/p/a", b"/p/b"], True, 7), page([b"/p/c"], False, 9))
    kvs, rev = client(gateway.endpoint).api().range_all("/p/", page=2)
    assert [kv.key for kv in kvs] == [b"/p/a", b"/p/b", b"/p/c"] and rev == 7
    second = gateway.requests[1][1]
    assert gw.unb64(second["key"]) == b"/p/b\0" and second["revision"] == "7"
    assert second["limit"] == "2"


def test_a_page_too_large_is_read_again_in_smaller_pages(gateway, monkeypatch):
    monkeypatch.setattr(gw, "MAX_RESPONSE_BYTES", 2000)
    huge = (200, {"header": HEADER, "kvs": [{"key": "L3AvYQ==", "value": "eHh4" * 600}]})
    small = (200, {"header": HEADER, "kvs": [{"key": "L3AvYQ==", "value": "djE="}]})
    gateway.on("/v3/kv/range", huge, small)
    kvs, _ = client(gateway.endpoint).api().range_all("/p/", page=32)
    assert [kv.value for kv in kvs] == [b"v1"]
    assert [b["limit"] for _, b, _ in gateway.requests] == ["32", "2"]


def test_a_dead_endpoint_is_left_for_the_next_at_once(gateway):
    gateway.on("/v3/kv/range", (200, RANGE))
    c = client(dead_endpoint(), gateway.endpoint)
    for _ in range(3):
        kvs, _ = c.call("reading", lambda api: api.get_response("/a/x"))
        assert kvs[0].value == b"v1"
    assert len(gateway.requests) == 3 and c.active().port == gateway.port


def test_a_member_answering_unavailable_is_failed_over(gateway):
    other = Gateway()
    try:
        gateway.on("/v3/kv/range", (503, {"error": "etcdserver: request timed out",
                                          "message": "etcdserver: request timed out",
                                          "code": 14}))
        other.on("/v3/kv/range", (200, RANGE))
        c = client(gateway.endpoint, other.endpoint)
        kvs, _ = c.call("reading", lambda api: api.get_response("/a/x"))
        assert kvs[0].value == b"v1" and len(other.requests) == 1
    finally:
        other.close()


def test_no_endpoint_answering_is_etcd_unavailable_naming_them():
    c = client(dead_endpoint(), dead_endpoint())
    with pytest.raises(EtcdUnavailable, match="etcd unreachable at http://127.0.0.1:.*"
                                              "while reading.*is etcd running"):
        c.call("reading", lambda api: api.get_response("/a"))


def test_a_refused_token_authenticates_once_more(gateway):
    gateway.on("/v3/auth/authenticate", (200, {"header": HEADER, "token": "tok1"}),
               (200, {"header": HEADER, "token": "tok2"}))
    gateway.on("/v3/kv/range", (401, {"error": "etcdserver: invalid auth token",
                                      "message": "etcdserver: invalid auth token",
                                      "code": 16}), (200, RANGE))
    c = client(gateway.endpoint, username="root", password="pw")
    kvs, _ = c.call("reading", lambda api: api.get_response("/a/x"))
    assert kvs[0].value == b"v1"
    tokens = [h.get("Authorization") for p, _, h in gateway.requests if p == "/v3/kv/range"]
    assert tokens == ["tok1", "tok2"]


def test_wrong_credentials_name_the_flags(gateway):
    gateway.on("/v3/auth/authenticate", (400, {
        "error": "etcdserver: authentication failed, invalid user ID or password",
        "message": "etcdserver: authentication failed, invalid user ID or password",
        "code": 3}))
    c = client(gateway.endpoint, username="root", password="bad")
    with pytest.raises(RegistryError, match="refused reading.*--etcd-username/--etcd-password"):
        c.call("reading", lambda api: api.get_response("/a"))


def test_a_watch_streams_its_messages(gateway):
    gateway.on("/v3/watch", ("stream", WATCH))
    ep = gw.Endpoint("127.0.0.1", gateway.port, None, 2.0)
    call = gw.WatchCall(ep, {"key": "L2Ev", "range_end": "L2Ew", "start_revision": "1"})
    results = list(call.messages())
    call.close()
    assert results[0]["created"] is True
    events = [gw.parse_event(e) for e in results[1]["events"]]
    assert [(e.type, e.kv.key, e.kv.mod_revision) for e in events] == [
        ("PUT", b"/a/x", 2), ("DELETE", b"/a/y", 4)]
    assert events[0].prev_kv is None and events[1].prev_kv is not None
    assert events[1].prev_kv.value == b"v2"
    assert gateway.requests[0][1] == {"create_request": {
        "key": "L2Ev", "range_end": "L2Ew", "start_revision": "1"}}


def test_a_watch_message_larger_than_the_bound_is_an_error(gateway):
    gateway.on("/v3/watch", ("stream", [WATCH[0], b'{"result": {"pad": "' + b"x" * 5000
                                        + b'"}}']))
    ep = gw.Endpoint("127.0.0.1", gateway.port, None, 2.0)
    call = gw.WatchCall(ep, {"key": "L2Ev"}, limit=1000)
    got = call.messages()
    assert next(got)["created"] is True
    with pytest.raises(gw.TooLarge):
        next(got)
    call.close()


def test_a_member_dying_mid_request_is_unreachable(gateway):
    gateway.on("/v3/kv/range", DROP)
    ep = gw.Endpoint("127.0.0.1", gateway.port, None, 2.0)
    with pytest.raises(gw.Unreachable):
        ep.post("/v3/kv/range", {"key": "L2E="})


def test_prefix_range_end():
    assert gw.prefix_range_end(b"/a/") == b"/a0"
    assert gw.prefix_range_end(b"a\xff") == b"b"
    assert gw.prefix_range_end(b"\xff\xff") == b"\0"


def test_a_piece_that_fails_on_its_thread_fails_the_listing_in_the_callers(gateway):
    """A listing read in pieces at once: a piece's failure (here etcd unavailable) is
    raised where the listing was asked, so the client's failover sees it."""
    gateway.on("/v3/kv/range", (200, {"header": HEADER, "count": "3"}),
               (503, {"error": "etcdserver: leader changed", "code": 14,
                      "message": "etcdserver: leader changed"}))
    with pytest.raises(gw.GatewayError) as e:
        client(gateway.endpoint).api().range_all("/p/", splits=[b"/p/b", b"/p/c", b"/q"])
    assert e.value.code == gw.UNAVAILABLE
    count, *pieces = [b for _, b, _ in gateway.requests]
    assert count["count_only"] is True and len(pieces) == 3  # /q is outside: ignored
    assert {(gw.unb64(p["key"]), gw.unb64(p["range_end"])) for p in pieces} == {
        (b"/p/", b"/p/b"), (b"/p/b", b"/p/c"), (b"/p/c", b"/p0")}
    assert {p["revision"] for p in pieces} == {"2"}


def test_an_endpoint_names_an_ipv6_host_in_brackets():
    assert str(gw.Endpoint("::1", 2379, None, 1.0)) == "http://[::1]:2379"
    assert str(gw.Endpoint("127.0.0.1", 2379, None, 1.0)) == "http://127.0.0.1:2379"
    # as the config's endpoint is written (one rule: etcdconf.endpoint_url)
    given = Endpoint("fd00::1", 2379, False)
    assert str(gw.Endpoint("fd00::1", 2379, None, 5.0)) == str(given) == "http://[fd00::1]:2379"
    assert str(gw.Endpoint("10.0.0.1", 2380, ssl.create_default_context(), 5.0)) == \
        "https://10.0.0.1:2380"
