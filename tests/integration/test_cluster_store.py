"""ObjectStore against a real etcd: create/replace/delete races, leases, the watch."""

import threading
import time

import pytest

pytestmark = pytest.mark.integration



def test_create_replace_delete(store):
    key = f"{store.prefix}/nodes/node1"
    assert store.create(key, b"1") == (True, None)
    ok, held = store.create(key, b"2")
    assert not ok and held is not None and held.value == b"1"
    assert not store.replace(key, b"3", held.mod_revision - 1)
    assert store.replace(key, b"3", held.mod_revision)
    now = store.get(key)
    assert now is not None and now.value == b"3"
    assert not store.delete(key, mod_revision=held.mod_revision)  # changed since
    assert store.delete(key, mod_revision=now.mod_revision)
    assert store.get(key) is None
    assert not store.delete(key)


def test_list_is_the_prefix_only(store):
    store.put(f"{store.prefix}/pods/default/a", b"a")
    store.put(f"{store.prefix}/pods/default/b", b"b")
    store.put(f"{store.prefix}/podsX", b"no")
    kvs, rev = store.list(f"{store.prefix}/pods/")
    assert sorted(k.value for k in kvs) == [b"a", b"b"] and rev > 0


def test_get_many_reads_the_present_keys_in_order_over_several_txns(store, monkeypatch):
    from overlay.cluster import store as store_module
    monkeypatch.setattr(store_module, "GET_MANY", 3)  # 7 keys: three txns
    keys = [f"{store.prefix}/pods/ns/p{i}" for i in range(7)]
    for i, key in enumerate(keys):
        if i != 4:
            store.put(key, f"v{i}".encode())
    got = store.get_many(list(reversed(keys)))
    assert [kv.key for kv in got] == [k for k in reversed(keys) if not k.endswith("p4")]
    assert [kv.value for kv in got][:2] == [b"v6", b"v5"] and all(kv.mod_revision for kv in got)
    assert store.get_many([]) == []


def test_lease_expiry_removes_the_key(store):
    lease = store.grant(1)
    key = f"{store.prefix}/heartbeats/n1"
    store.put(key, b"x", lease=lease)
    assert store.keepalive(lease) >= 1
    deadline = time.monotonic() + 5
    while store.get(key) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert store.get(key) is None
    assert store.keepalive(lease) == 0


def test_watch_sees_puts_deletes_and_resumes_after_compaction(store):
    base = f"{store.prefix}/pods/"
    _, rev = store.list(base)
    stop = threading.Event()
    got = []

    def run():
        for batch in store.watch(base, rev + 1, stop):
            got.append(batch)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        store.put(base + "default/a", b"1")
        store.delete(base + "default/a")
        store.put(f"{store.prefix}/nodes/n1", b"ignored")
        deadline = time.monotonic() + 5
        while sum(len(b.changes) for b in got) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        changes = [c for b in got for c in b.changes]
        assert [(c.key.rsplit("/", 1)[1], c.value, c.prev) for c in changes] == [
            ("a", b"1", None), ("a", None, b"1")]
    finally:
        stop.set()
        t.join(5)
    assert not t.is_alive()

    # From a compacted revision: one snapshot of the prefix.
    store.put(base + "default/b", b"2")
    store.registry.compact()
    stop2 = threading.Event()
    first = []

    def run2():
        for batch in store.watch(base, rev + 1, stop2):
            first.append(batch)
            stop2.set()

    t2 = threading.Thread(target=run2, daemon=True)
    t2.start()
    t2.join(10)
    stop2.set()
    assert first and first[0].snapshot is not None
    assert [k.value for k in first[0].snapshot] == [b"2"]


def test_the_test_etcd_picks_new_ports_when_a_picked_one_is_taken():
    """The support server's own retry: a port taken between free_port() and etcd's bind
    (another process's) makes start() pick again instead of failing the test."""
    import socket

    from .support.etcd_server import EtcdServer

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    server = EtcdServer()
    server.client_port = taken.getsockname()[1]  # as if someone bound it meanwhile
    try:
        server.start()
        assert server.client_port != taken.getsockname()[1] and server.healthy()
    finally:
        server.stop()
        server.cleanup()
        taken.close()
