"""What the pod publisher and the pod-lease GC ask of etcd: one listing of ``pods/`` at
start and then only this node's keys (O(its pods), not O(the cluster's)), a listing again
only when FULL_RESYNC is due; the GC fed by the lease watch's batches, with no watch of
its own. The store is the counting fake; the data dir is real files."""

import threading
import time
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, ip_address

import pytest

from overlay.cluster.keys import pod_key, pods_prefix
from overlay.cluster.pods import PodRecord, decode_pod, encode_pod
from overlay.daemon import podpublisher as pp
from overlay.lease import Lease, LeaseAttrs, LeaseBatch
from tests.daemon.test_podpublisher_scan import add
from tests.fakes import PREFIX, FakeObjectStore

SUBNET = IPv4Network("10.244.1.0/24")
PODS = pods_prefix(PREFIX)


def other_nodes(store, n):
    """``n`` records of other nodes: what a listing would have to carry."""
    for i in range(n):
        r = PodRecord("ns", f"p{i}", (IPv4Address(f"10.244.{2 + i // 200}.{1 + i % 200}"),),
                      f"node{2 + i // 200}", f"c{i}", "eth0")
        store.put(r.key(PREFIX), encode_pod(r))


def publisher(store, data_dir):
    return pp.PodPublisher(store, "node1", str(data_dir), lambda: SUBNET)


def record(store, ns, name):
    kv = store.kvs.get(pod_key(PREFIX, ns, name))
    return None if kv is None else decode_pod(kv.value)


@pytest.fixture
def store():
    s = FakeObjectStore()
    other_nodes(s, 1000)
    return s


def test_after_the_first_listing_a_pass_reads_only_this_nodes_keys(store, tmp_path):
    add(tmp_path, "c1", "10.244.1.5", K8S_POD_NAMESPACE="shop", K8S_POD_NAME="a")
    add(tmp_path, "c2", "10.244.1.6", K8S_POD_NAMESPACE="shop", K8S_POD_NAME="b")
    pub = publisher(store, tmp_path)
    assert pub.reconcile().created == 2
    assert store.listed == [PODS]
    txns, keys = store.calls["get_many"], store.calls["keys_read"]
    for _ in range(5):
        out = pub.reconcile()
        assert out is not None and (out.created, out.replaced, out.deleted) == (0, 0, 0)
    assert store.listed == [PODS]  # never the whole prefix again
    assert store.calls["keys_read"] - keys == 5 * 2  # one key per pod of this node
    assert store.calls["get_many"] - txns == 5  # in one request per pass
    assert store.writes() == 2 + 1000


def test_a_pod_gone_from_disk_is_deleted_without_a_listing(store, tmp_path):
    add(tmp_path, "c1", "10.244.1.5", K8S_POD_NAMESPACE="shop", K8S_POD_NAME="a")
    pub = publisher(store, tmp_path)
    pub.reconcile()
    (tmp_path / "overlay" / "10.244.1.5").unlink()
    out = pub.reconcile()
    assert out.deleted == 1 and record(store, "shop", "a") is None
    assert store.listed == [PODS]
    pub.reconcile()  # the deleted key is no longer read
    assert store.calls["delete"] == 1


def test_conflicts_and_undecodable_records_are_found_by_key(store, tmp_path):
    add(tmp_path, "c1", "10.244.1.5", K8S_POD_NAMESPACE="shop", K8S_POD_NAME="a")
    add(tmp_path, "c2", "10.244.1.6", K8S_POD_NAMESPACE="shop", K8S_POD_NAME="b")
    pub = publisher(store, tmp_path)
    pub.reconcile()
    theirs = replace(record(store, "shop", "a"), node="node2", container_id="x",
                     ips=(IPv4Address("10.244.2.9"),))
    store.put(pod_key(PREFIX, "shop", "a"), encode_pod(theirs))
    store.put(pod_key(PREFIX, "shop", "b"), b"{not json")
    out = pub.reconcile()
    assert (out.conflicts, out.replaced, out.deleted) == (1, 1, 0)
    assert record(store, "shop", "a") == theirs  # another node's: left alone
    assert record(store, "shop", "b").container_id == "c2"  # ours again
    assert store.listed == [PODS]


def test_a_record_only_a_listing_shows_goes_at_the_full_resync(store, tmp_path, monkeypatch):
    """A record of this node the publisher never held (a previous run's, written while
    this one was starting): the targeted passes cannot see it; the jittered full listing
    removes it, and schedules the next one FULL_RESYNC x 0.75..1.25 later."""
    pub = publisher(store, tmp_path / "empty")
    (tmp_path / "empty").mkdir()
    pub.reconcile()
    stray = PodRecord("shop", "stray", (IPv4Address("10.244.1.77"),), "node1", "old", "eth0")
    store.put(stray.key(PREFIX), encode_pod(stray))
    pub.reconcile()
    assert record(store, "shop", "stray") is not None and len(store.listed) == 1
    now = time.monotonic()
    assert now + pp.FULL_RESYNC * 0.7 < pub._next_full < now + pp.FULL_RESYNC * 1.3
    monkeypatch.setattr(pp.time, "monotonic", lambda: now + pp.FULL_RESYNC * 1.3)
    assert pub.reconcile().deleted == 1 and len(store.listed) == 2
    assert record(store, "shop", "stray") is None


def test_a_listing_that_fails_still_publishes_by_key(store, tmp_path, monkeypatch):
    """A reply above gRPC's receive limit fails the listing: the pass reads this node's
    keys instead (warned once), and the listing waits for the next full resync."""
    from overlay.errors import RegistryError

    def too_large(base):
        raise RegistryError("listing pods/: received message larger than max")
    monkeypatch.setattr(store, "list", too_large)
    add(tmp_path, "c1", "10.244.1.5", K8S_POD_NAMESPACE="shop", K8S_POD_NAME="a")
    pub = publisher(store, tmp_path)
    assert pub.reconcile().created == 1 and pub.rejected == 1
    assert pub._next_full > time.monotonic() + pp.FULL_RESYNC / 2


def test_the_run_loop_lists_once_however_many_resyncs(store, tmp_path, monkeypatch):
    monkeypatch.setattr(pp, "RESYNC", 0.0)
    monkeypatch.setattr(pp, "POLL", 0.01)
    add(tmp_path, "c1", "10.244.1.5", K8S_POD_NAMESPACE="shop", K8S_POD_NAME="a")
    pub = publisher(store, tmp_path)
    stop = threading.Event()
    t = threading.Thread(target=pub.run, args=(stop,), daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while store.calls["get_many"] < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    t.join(5)
    assert store.calls["get_many"] >= 20 and store.listed == [PODS]
    assert record(store, "shop", "a") is not None


# ---- the pod-lease GC, fed by the lease watch ------------------------------------------------

def lease(i):
    return Lease(IPv4Network(f"10.244.{i}.0/24"), LeaseAttrs(IPv4Address(f"192.168.1.{10 + i}")))


def leases_and_pods(store, *nodes):
    for i in nodes:
        store.put(f"{PREFIX}/subnets/10.244.{i}.0-24", b"{}")
        r = PodRecord("ns", f"pod{i}", (ip_address(f"10.244.{i}.5"),), f"node{i}", "c", "eth0")
        store.put(r.key(PREFIX), encode_pod(r))


@pytest.fixture
def gc(monkeypatch):
    monkeypatch.setattr(pp, "LEASE_GONE_GRACE", 0.1)
    store = FakeObjectStore()
    leases_and_pods(store, 2, 3, 4)
    gc = pp.LeaseGoneGC(store)  # type: ignore[arg-type]
    stop = threading.Event()
    t = threading.Thread(target=gc.run, args=(stop,), daemon=True)
    t.start()
    try:
        yield gc
    finally:
        stop.set()
        t.join(5)
        assert not t.is_alive()


def wait_until(pred, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_removed_lease_takes_its_pods_after_the_grace(gc):
    store = gc.store
    gc.note_snapshot([lease(2), lease(3), lease(4)])
    del store.kvs[f"{PREFIX}/subnets/10.244.2.0-24"]
    gc.note_batch(LeaseBatch(removed=(lease(2),)))
    wait_until(lambda: record(store, "ns", "pod2") is None)
    assert record(store, "ns", "pod3") and record(store, "ns", "pod4")
    assert store.listed.count(f"{PREFIX}/subnets/") == 1  # the start sweep's, only


def test_a_lease_its_node_reacquires_within_the_grace_keeps_its_pods(gc, monkeypatch):
    store = gc.store
    gc.note_snapshot([lease(2), lease(3), lease(4)])
    gc.note_batch(LeaseBatch(removed=(lease(3),)))  # the key is back (re-acquired)
    time.sleep(0.4)
    assert record(store, "ns", "pod3") is not None
    assert store.calls["get"] >= 1  # looked, found the key


def test_a_lease_that_moves_to_another_key_keeps_its_pods(gc):
    """A dual-stack lease whose IPv6 half changes lives at a new key: its old key is gone,
    its subnet is not."""
    from dataclasses import replace as with_
    from ipaddress import IPv6Network
    store = gc.store
    gc.note_snapshot([lease(2), lease(3), lease(4)])
    moved = with_(lease(2), ipv6_subnet=IPv6Network("fd00:10:244:2::/64"))
    del store.kvs[f"{PREFIX}/subnets/10.244.2.0-24"]
    gc.note_batch(LeaseBatch(changed=((lease(2), moved),)))
    gc.note_snapshot([moved, lease(3), lease(4)])
    time.sleep(0.4)
    assert record(store, "ns", "pod2") is not None


def test_a_relisting_that_lacks_a_lease_takes_its_pods(gc):
    store = gc.store
    gc.note_snapshot([lease(2), lease(3), lease(4)])
    del store.kvs[f"{PREFIX}/subnets/10.244.4.0-24"]
    gc.note_snapshot([lease(2), lease(3)])  # a compaction's re-list
    wait_until(lambda: record(store, "ns", "pod4") is None)
    assert record(store, "ns", "pod2") and record(store, "ns", "pod3")


def test_the_start_sweep_removes_pods_of_no_lease(monkeypatch):
    store = FakeObjectStore()
    leases_and_pods(store, 2)
    r = PodRecord("ns", "orphan", (ip_address("10.244.9.5"),), "node9", "c", "eth0")
    store.put(r.key(PREFIX), encode_pod(r))
    stop = threading.Event()
    stop.set()  # the sweep runs before the loop looks at stop
    pp.LeaseGoneGC(store).run(stop)  # type: ignore[arg-type]
    assert record(store, "ns", "orphan") is None and record(store, "ns", "pod2")


def test_the_pod_threads_open_no_watch_of_their_own(store, tmp_path, monkeypatch):
    """The daemon's lease watch is the only one of subnets/: the GC watches nothing."""
    opened = []
    monkeypatch.setattr(store, "watch", lambda *a, **k: opened.append(a), raising=False)
    stop = threading.Event()
    gc = pp.LeaseGoneGC(store)
    threads = [threading.Thread(target=target, daemon=True) for _, target in
               pp.pod_threads(store, "node1", str(tmp_path), lambda: SUBNET, stop, gc)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join(5)
    assert opened == [] and store.listed.count(PODS) >= 1


# ---- which node takes a gone lease's pods --------------------------------------------------

def key(i):
    return f"{PREFIX}/subnets/10.244.{i}.0-24"


def test_every_node_agrees_on_one_order_for_each_gone_lease():
    nodes = [key(i) for i in range(10, 60)]
    for gone in (key(2), key(3), key(4)):
        ranks = sorted(pp.gc_rank(gone, me, nodes) for me in nodes)
        assert ranks == list(range(len(nodes)))  # one first, one second, ...
    firsts = {min(nodes, key=lambda me: pp.gc_rank(g, me, nodes)) for g in map(key, range(100))}
    assert len(firsts) > 20  # the work spreads over the nodes


def ranked(gone, rank, candidates):
    return next(me for me in candidates if pp.gc_rank(gone, me, candidates) == rank)


def node_gc(monkeypatch, rank):
    """A GC on a store holding leases 2, 3, 4 and their pods plus nodes 10..19, this node
    being the one of ``rank`` for lease 2."""
    monkeypatch.setattr(pp, "LEASE_GONE_GRACE", 0.05)
    monkeypatch.setattr(pp, "GC_STEP", 0.2)
    store = FakeObjectStore()
    leases_and_pods(store, 2, 3, 4)
    nodes = (3, 4, *range(10, 20))
    me = ranked(key(2), rank, [key(i) for i in nodes])
    (mine,) = [i for i in nodes if key(i) == me]
    gc = pp.LeaseGoneGC(store, lambda: lease(mine))  # type: ignore[arg-type]
    gc.note_snapshot([lease(i) for i in (2, *nodes) if i != mine])
    return gc, store


def run_for(gc, seconds, before=lambda: None, until=None):
    """Run the GC for ``seconds`` (or until ``until()`` holds, within 5 s); lease 2 goes
    once its start sweep is done."""
    store = gc.store
    stop = threading.Event()
    t = threading.Thread(target=gc.run, args=(stop,), daemon=True)
    t.start()
    wait_until(lambda: store.listed.count(f"{PREFIX}/subnets/") == 1)
    before()
    del store.kvs[key(2)]
    gc.note_batch(LeaseBatch(removed=(lease(2),)))
    if until is None:
        time.sleep(seconds)
    else:
        wait_until(until)
    stop.set()
    t.join(5)
    assert not t.is_alive()


def test_the_first_node_takes_the_pods_and_marks_the_lease_collected(monkeypatch):
    gc, store = node_gc(monkeypatch, 0)
    run_for(gc, 0, until=lambda: f"{PREFIX}/collected/10.244.2.0-24" in store.kvs)
    assert record(store, "ns", "pod2") is None and record(store, "ns", "pod3")
    assert f"{PREFIX}/collected/10.244.2.0-24" in store.kvs
    assert store.listed.count(PODS) == 2  # the start sweep's and the collection's


def test_a_later_node_does_nothing_once_the_lease_is_marked_collected(monkeypatch):
    gc, store = node_gc(monkeypatch, 1)
    run_for(gc, 0.5, lambda: store.put(f"{PREFIX}/collected/10.244.2.0-24", b"{}"))
    assert record(store, "ns", "pod2") is not None  # (left as it was: the marker said so)
    assert store.listed.count(PODS) == 1  # the start sweep's only


def test_a_later_node_takes_its_turn_when_the_first_did_not(monkeypatch):
    gc, store = node_gc(monkeypatch, 1)
    run_for(gc, 0.12)  # before its turn (grace + one step)
    assert record(store, "ns", "pod2") is not None
    gc2, store2 = node_gc(monkeypatch, 1)
    run_for(gc2, 0, until=lambda: record(store2, "ns", "pod2") is None)
    assert record(store2, "ns", "pod2") is None


def test_nodes_past_the_ranks_never_list_for_a_gone_lease(monkeypatch):
    gc, store = node_gc(monkeypatch, pp.GC_RANKS)
    run_for(gc, 0.3 + pp.GC_RANKS * 0.2)
    assert record(store, "ns", "pod2") is not None
    assert store.listed.count(PODS) == 1


def test_a_pod_whose_metadata_turns_unusable_keeps_its_record(store, tmp_path):
    # garbled (or removed), the file says nothing of who the pod is: the record it had is
    # neither replaced by a "default/<container ID>" fallback nor deleted
    add(tmp_path, "c1", "10.244.1.5", K8S_POD_NAMESPACE="shop", K8S_POD_NAME="a")
    pub = publisher(store, tmp_path)
    pub.reconcile()
    before = record(store, "shop", "a")
    (tmp_path / "overlay" / "pods" / "c1@eth0.json").write_text("{garbled")
    for full in (False, True):
        out = pub.reconcile(full=full)
        assert (out.created, out.replaced, out.deleted) == (0, 0, 0)
        assert record(store, "shop", "a") == before and record(store, "default", "c1") is None
    # once the container is gone, its record goes as any other
    (tmp_path / "overlay" / "10.244.1.5").unlink()
    assert pub.reconcile().deleted == 1 and record(store, "shop", "a") is None


def test_a_container_id_that_is_no_pod_name_is_not_published(store, tmp_path):
    # without K8S_POD_NAME a pod is named by its container ID; one with '_' or capitals
    # is no DNS-1123 name: every node rejected its record, rewritten each pass, and no
    # DEL ever removed it
    add(tmp_path, "c_1", "10.244.1.5")
    pub = publisher(store, tmp_path)
    assert pub.reconcile().created == 0 and record(store, "default", "c_1") is None
    warned = pub.rejected
    assert pub.reconcile().created == 0 and pub.rejected == warned  # warned once
    assert store.writes() == 1000  # the other nodes' records only
