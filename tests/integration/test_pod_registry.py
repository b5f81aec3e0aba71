"""The pod registry end to end: the real CNI plugin (warm server, in a node namespace)
writes IPAM records and pod metadata, the publisher (as overlayd runs it) reconciles them
into a real etcd, and overlayctl reads them back."""

import functools
import json
import os
import threading
import time
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Network

import pytest
from click.testing import CliRunner

from overlay.cli import cli
from overlay.cluster.keys import pod_key, pods_prefix
from overlay.cluster.pods import decode_pod, encode_pod
from overlay.cluster.store import ObjectStore
from overlay.config import parse_network_config
from overlay.daemon import podpublisher
from overlay.daemon.podpublisher import PodPublisher
from overlay.subnet.etcdconf import make_etcd_options
from overlay.subnet.manager import SubnetManager
from overlay.subnet.registry import EtcdRegistry

from .support.cni_node import CNINode
from .support.noderecords import put_node_record
from .test_registry import attrs, net

pytestmark = pytest.mark.integration

CONFIG = parse_network_config(b'{"Network": "10.244.0.0/16"}')


@pytest.fixture
def registry(etcd_server):
    reg = EtcdRegistry(make_etcd_options(etcd_server.endpoint, timeout=3.0))
    reg.put_config(CONFIG)
    reg.create_lease(net(1), attrs(11), ttl=3600)
    try:
        yield reg
    finally:
        reg.close()


@pytest.fixture
def store(registry):
    s = ObjectStore(registry)
    put_node_record(s, "node1", net(1), attrs(11))  # as node1's overlayd would
    return s


@pytest.fixture
def node(tmp_path):
    n = CNINode(tmp_path)
    try:
        yield n
    finally:
        n.close()


class Overlayd:
    """The publisher and GC threads as overlayd runs them (``pod_threads``, the GC fed by
    a subnet manager's lease watch as the daemon's ``_on_batch`` feeds it), startable and
    stoppable to play a daemon that is down while pods come and go."""

    def __init__(self, store, data_dir, node="node1"):
        self.store, self.data_dir, self.node = store, data_dir, node
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self):
        self.stop = threading.Event()
        gc = podpublisher.LeaseGoneGC(self.store)
        manager = SubnetManager(self.store.registry, CONFIG, attrs(11))
        watch = ("lease-watch", lambda: manager.run_watch(
            lambda: net(1), self.stop, gc.note_batch, gc.note_snapshot))
        for name, target in [watch, *podpublisher.pod_threads(
                self.store, self.node, self.data_dir, lambda: net(1), self.stop, gc)]:
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self.threads.append(t)
        return self

    def halt(self):
        self.stop.set()
        for t in self.threads:
            t.join(10)
        assert not any(t.is_alive() for t in self.threads)
        self.threads = []


@pytest.fixture
def overlayd(store, node):
    d = Overlayd(store, node.data_dir)
    try:
        yield d
    finally:
        d.halt()


def conf(node, labels=None, **kw):
    c = node.conf(subnet="10.244.1.0/24", network="10.244.0.0/16", **kw)
    if labels is not None:
        c["args"] = {"cni": {"labels": [{"key": k, "value": v} for k, v in labels.items()]}}
    return c


def k8s(ns, name):
    return {"CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name}"}


def record(store, ns, name):
    kv = store.get(pod_key(store.prefix, ns, name))
    return None if kv is None else decode_pod(kv.value)


def wait_for(pred, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def ctl(etcd_server, *args):
    r = CliRunner().invoke(cli, ["--etcd-endpoints", etcd_server.endpoint, *args],
                           catch_exceptions=False)
    return r


def test_a_pod_is_published_with_identity_labels_and_ip(etcd_server, store, node, overlayd):
    overlayd.start()
    pod = node.pod()
    doc = node.add("c1", pod, conf=conf(node, {"app": "web"}), env=k8s("shop", "web-1"))
    ip = doc["ips"][0]["address"].split("/")[0]
    r = wait_for(lambda: record(store, "shop", "web-1"), what="the pod's record")
    assert [str(i) for i in r.ips] == [ip] and r.node == "node1" and r.container_id == "c1"
    assert {k: (lab.value, lab.source) for k, lab in r.labels.items()} == {"app": ("web", "cni")}
    out = ctl(etcd_server, "pods", "-A", "-o", "json")
    assert out.exit_code == 0, out.output
    listed = json.loads(out.output)
    assert [(p["namespace"], p["name"], p["ip"], p["ips"], p["node"], p["labels"])
            for p in listed] == [("shop", "web-1", ip, [ip], "node1", {"app": "web"})]
    table = ctl(etcd_server, "pods", "-n", "shop", "-o", "wide").output.splitlines()
    assert table[0].split() == ["NAMESPACE", "NAME", "IP", "NODE", "AGE", "IPV6", "CONTAINER",
                                "LABELS"]
    assert table[1].split()[:4] == ["shop", "web-1", ip, "node1"] and "app=web" in table[1]
    assert ctl(etcd_server, "pods").output.splitlines()[1:] == []  # namespace default: none
    # DEL: the record leaves the registry
    assert node.cni("DEL", "c1", pod, conf=conf(node)).rc == 0
    wait_for(lambda: record(store, "shop", "web-1") is None, what="the record's removal")


def test_podman_style_args_and_no_args(store, node, overlayd):
    overlayd.start()
    node.add("c2", node.pod(), conf=conf(node), env={"CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=db"})
    node.add("c3", node.pod(), conf=conf(node))
    wait_for(lambda: record(store, "default", "db"), what="default/db")
    assert wait_for(lambda: record(store, "default", "c3"), what="default/<container id>")


def test_labels_set_and_removed_by_the_cli_win_and_stay(etcd_server, store, node, overlayd):
    overlayd.start()
    node.add("c1", node.pod(), conf=conf(node, {"app": "web", "tier": "free"}),
             env=k8s("shop", "web-1"))
    wait_for(lambda: record(store, "shop", "web-1"), what="the record")
    out = ctl(etcd_server, "pods", "label", "shop/web-1", "tier=gold", "app-", "team=a")
    assert out.exit_code == 0, out.output
    r = record(store, "shop", "web-1")
    assert {k: (lab.value, lab.source) for k, lab in r.labels.items()} == {
        "team": ("a", "cli"), "tier": ("gold", "cli")}
    # a restarted publisher's full pass does not bring the removed CNI label back
    overlayd.halt()
    overlayd.start()
    time.sleep(podpublisher.POLL * 3)
    assert record(store, "shop", "web-1").label_values() == {"team": "a", "tier": "gold"}
    bad = ctl(etcd_server, "pods", "label", "shop/web-1", "bad key=x")
    assert bad.exit_code == 1 and bad.output.startswith("error: ") and bad.output.count("\n") == 1
    missing = ctl(etcd_server, "pods", "label", "shop/nope", "a=b")
    assert missing.exit_code == 1 and "no pod shop/nope" in missing.output


def test_a_stale_del_leaves_the_recreated_sandboxs_record(store, node, overlayd):
    overlayd.start()
    old_pod = node.pod()
    node.add("old", old_pod, conf=conf(node, {"app": "web"}), env=k8s("shop", "web-1"))
    wait_for(lambda: record(store, "shop", "web-1"), what="the old sandbox's record")
    new_pod = node.pod()
    doc = node.add("new", new_pod, conf=conf(node, {"app": "web"}), env=k8s("shop", "web-1"))
    new_ip = doc["ips"][0]["address"].split("/")[0]
    assert node.cni("DEL", "old", old_pod, conf=conf(node)).rc == 0  # the old DEL, late
    r = wait_for(lambda: (r := record(store, "shop", "web-1")) and r.container_id == "new"
                 and r, what="the new sandbox's record")
    assert [str(i) for i in r.ips] == [new_ip]
    time.sleep(podpublisher.POLL * 3)
    assert record(store, "shop", "web-1").container_id == "new"  # never deleted meanwhile


def test_a_delete_only_goes_if_the_record_is_unchanged(store, node):
    """The CAS under the publisher's delete: a record replaced after the publisher read
    it (a new sandbox's, say) is not removed by that read."""
    pub = PodPublisher(store, "node1", node.data_dir, lambda: net(1))
    pod = node.pod()
    node.add("c1", pod, conf=conf(node), env=k8s("shop", "web-1"))
    pub.reconcile()
    held = store.get(pod_key(store.prefix, "shop", "web-1"))
    assert node.cni("DEL", "c1", pod, conf=conf(node)).rc == 0
    rewritten = encode_pod(decode_pod(held.value))
    assert store.replace(held.key, rewritten, held.mod_revision)  # someone wrote it since
    assert not store.delete(held.key, mod_revision=held.mod_revision)
    assert store.get(held.key) is not None


def test_pods_added_and_deleted_while_overlayd_is_down(store, node, overlayd):
    overlayd.start()
    stay, gone = node.pod(), node.pod()
    node.add("stay", stay, conf=conf(node), env=k8s("shop", "stay"))
    node.add("gone", gone, conf=conf(node), env=k8s("shop", "gone"))
    wait_for(lambda: record(store, "shop", "stay") and record(store, "shop", "gone"),
             what="both records")
    stay_rev = store.get(pod_key(store.prefix, "shop", "stay")).mod_revision
    overlayd.halt()
    assert node.cni("DEL", "gone", gone, conf=conf(node)).rc == 0
    node.add("new", node.pod(), conf=conf(node), env=k8s("shop", "new"))
    time.sleep(podpublisher.POLL * 2)
    assert record(store, "shop", "gone") and record(store, "shop", "new") is None  # down
    overlayd.start()
    wait_for(lambda: record(store, "shop", "new"), what="the pod added while down")
    wait_for(lambda: record(store, "shop", "gone") is None, what="the pod deleted while down")
    # the restart rewrote nothing still attached
    assert store.get(pod_key(store.prefix, "shop", "stay")).mod_revision == stay_rev


def test_an_unreadable_data_dir_deletes_nothing(store, node, tmp_path):
    node.add("c1", node.pod(), conf=conf(node), env=k8s("shop", "web-1"))
    PodPublisher(store, "node1", node.data_dir, lambda: net(1)).reconcile()
    wrong = PodPublisher(store, "node1", str(tmp_path / "not-the-data-dir"), lambda: net(1))
    assert wrong._pass() is False
    assert record(store, "shop", "web-1") is not None


def test_another_nodes_record_under_the_same_name_is_left_alone(store, node):
    node.add("c1", node.pod(), conf=conf(node), env=k8s("shop", "web-1"))
    key = pod_key(store.prefix, "shop", "web-1")
    mine = PodPublisher(store, "node1", node.data_dir, lambda: net(1))
    mine.reconcile()
    held = store.get(key)
    theirs = replace(decode_pod(held.value), node="node2", container_id="x",
                     ips=(IPv4Address("10.244.2.9"),))
    assert store.replace(key, encode_pod(theirs), held.mod_revision)
    out = mine.reconcile()
    assert out is not None and out.conflicts == 1 and out.deleted == 0
    assert decode_pod(store.get(key).value) == theirs
    assert mine.rejected == 1  # logged and counted once, however many passes
    mine.reconcile()
    assert mine.rejected == 1


def test_the_pods_of_a_lease_that_is_gone_leave_the_registry(store, registry, node, overlayd,
                                                              monkeypatch):
    monkeypatch.setattr(podpublisher, "LEASE_GONE_GRACE", 0.2)
    lease2 = registry.create_lease(net(2), attrs(12), ttl=3600)
    node.add("c1", node.pod(), conf=conf(node), env=k8s("shop", "mine"))
    PodPublisher(store, "node1", node.data_dir, lambda: net(1)).reconcile()
    other = record(store, "shop", "mine")
    theirs = replace(other, name="theirs", node="node2", container_id="c9",
                     ips=(IPv4Address("10.244.2.7"),))
    store.put(pod_key(store.prefix, "shop", "theirs"), encode_pod(theirs))
    overlayd.start()
    time.sleep(0.5)
    assert record(store, "shop", "theirs") is not None  # its lease is there
    assert registry.delete_lease(net(2), lease2.mod_revision)
    wait_for(lambda: record(store, "shop", "theirs") is None, what="node2's pod removal")
    assert record(store, "shop", "mine") is not None


class _CountingStore(ObjectStore):
    """The real store, counting its listings of pods/ (a GC's costly read)."""

    def __init__(self, registry):
        super().__init__(registry)
        self.pod_listings = 0

    def list(self, base):
        self.pod_listings += base == pods_prefix(self.prefix)
        return super().list(base)


def test_one_node_lists_the_pods_of_a_gone_lease_and_the_next_reads_its_marker(
        registry, monkeypatch):
    """Two nodes' GCs over one etcd: the earlier ranked for lease 2 deletes its pod and
    marks it collected (on a short etcd lease); the later one, at its turn, reads the
    marker and lists nothing."""
    from overlay.cluster.keys import collected_key
    from overlay.cluster.pods import PodRecord
    from overlay.lease import LeaseBatch, lease_key
    monkeypatch.setattr(podpublisher, "LEASE_GONE_GRACE", 0.2)
    monkeypatch.setattr(podpublisher, "GC_STEP", 0.5)
    leases = [registry.get_lease(net(1)),
              *(registry.create_lease(net(i), attrs(10 + i), ttl=3600) for i in (2, 3, 4))]
    base = registry.subnets_prefix
    keys = [base + lease_key(lease) for lease in leases]
    gone, candidates = keys[1], [keys[0], *keys[2:]]
    mine = sorted(keys[2:], key=lambda me: podpublisher.gc_rank(gone, me, candidates))
    pod = PodRecord("shop", "theirs", (IPv4Address("10.244.2.7"),), "node2", "c9", "eth0")
    stores = {me: _CountingStore(registry) for me in mine}
    stores[mine[0]].put(pod.key(registry.prefix), encode_pod(pod))
    own = dict(zip(keys, leases, strict=True))
    gcs = {me: podpublisher.LeaseGoneGC(stores[me], functools.partial(own.get, me))
           for me in mine}
    stop = threading.Event()
    threads = [threading.Thread(target=gc.run, args=(stop,), daemon=True) for gc in gcs.values()]
    for me, gc in gcs.items():
        gc.note_snapshot([lease for lease, k in zip(leases, keys, strict=True) if k != me])
    for t in threads:
        t.start()
    try:
        wait_for(lambda: all(s.pod_listings == 1 for s in stores.values()),
                 what="the start sweeps")
        assert registry.delete_lease(net(2), leases[1].mod_revision)
        for gc in gcs.values():
            gc.note_batch(LeaseBatch(removed=(leases[1],)))
        store = stores[mine[0]]
        marker = wait_for(lambda: store.get(collected_key(registry.prefix, "10.244.2.0-24")),
                          what="the collected marker")
        assert marker.lease  # it goes by itself
        assert store.get(pod.key(registry.prefix)) is None
        time.sleep(0.5 + 2 * 0.5)  # the later node's turn came and went
        assert [stores[me].pod_listings for me in mine] == [2, 1]
    finally:
        stop.set()
        for t in threads:
            t.join(10)


def test_a_bad_record_is_rejected_alone_in_the_listing(etcd_server, store, node, overlayd):
    overlayd.start()
    node.add("c1", node.pod(), conf=conf(node), env=k8s("shop", "web-1"))
    wait_for(lambda: record(store, "shop", "web-1"), what="the record")
    store.put(f"{store.prefix}/pods/shop/garbage", b"{not json")
    r = CliRunner().invoke(cli, ["--etcd-endpoints", etcd_server.endpoint, "pods", "-A",
                                 "-o", "json"], catch_exceptions=False)
    assert r.exit_code == 0
    assert [p["name"] for p in json.loads(r.stdout)] == ["web-1"]
    assert "1 pod record(s) rejected" in r.stderr


def test_a_bad_metadata_file_is_counted_once_in_overlayds_metrics(store, node):
    from prometheus_client import CollectorRegistry, generate_latest

    from overlay.cni import podmeta
    from overlay.daemon.podpublisher import pod_threads
    node.add("c1", node.pod(), conf=conf(node), env=k8s("shop", "web-1"))
    (network,) = [d for d in os.listdir(node.data_dir)
                  if os.path.isdir(os.path.join(node.data_dir, d))]
    meta = os.path.join(podmeta.meta_dir(node.data_dir, network),
                        podmeta.meta_file_name("c1", "eth0"))
    with open(meta, "w") as f:
        f.write('{"namespace": "Not A Namespace!", "name": "web-1"}')
    registry = CollectorRegistry()
    pod_threads(store, "node1", node.data_dir, lambda: net(1), threading.Event(),
                podpublisher.LeaseGoneGC(store), registry)
    counted = []
    publisher = PodPublisher(store, "node1", node.data_dir, lambda: net(1),
                             lambda: counted.append(1))
    publisher.reconcile()
    publisher.reconcile()  # the same problem again: logged and counted once
    assert counted == [1]
    assert b"overlay_pod_metadata_rejected_total 0.0" in generate_latest(registry)


def test_diagnose_reads_the_registry_and_finds_a_shared_ip(etcd_server, store, registry, node):
    from overlay.diagnose.cluster_checks import check_pod_ips_unique, check_rejected_objects
    from overlay.diagnose.gather import gather_cluster, read_pods
    node.add("c1", node.pod(), conf=conf(node), env=k8s("shop", "a"))
    PodPublisher(store, "node1", node.data_dir, lambda: net(1)).reconcile()
    opts = make_etcd_options(etcd_server.endpoint)
    cluster = gather_cluster(opts)
    assert check_pod_ips_unique(read_pods(opts, cluster)).status == "pass"
    copy = replace(record(store, "shop", "a"), name="copy", container_id="c9")
    store.put(pod_key(store.prefix, "shop", "copy"), encode_pod(copy))
    got = check_pod_ips_unique(read_pods(opts, cluster))
    assert got.status == "fail" and "shop/a on node1, shop/copy on node1" in got.found
    assert check_rejected_objects(read_pods(opts, cluster)).status == "pass"
    store.put(f"{store.prefix}/pods/shop/garbage", b"{not json")
    store.put(f"{store.prefix}/policies/shop/deep", b'{"a":' * 5000 + b"1" + b"}" * 5000)
    store.put(f"{store.prefix}/namespaces/Bad", b"{}")
    store.put(f"{store.prefix}/nodes/node9", b"[" * 5000)
    got = check_rejected_objects(read_pods(opts, cluster), etcd_server.endpoint)
    assert got.status == "fail" and got.found.startswith("4 rejected key(s)"), got.found
    for key in ("pods/shop/garbage: bad-value", "policies/shop/deep: value is not JSON: "
                "nested too deeply", "namespaces/Bad: ", "nodes/node9: bad-value"):
        assert f"{store.prefix}/{key}" in got.found, got.found
    assert f"del '{store.prefix}/policies/shop/deep'" in got.fix


def test_a_node_deleted_for_good_takes_its_pods_along(store, node):
    from overlay.cluster.pods import delete_pods_of_node
    node.add("c1", node.pod(), conf=conf(node), env=k8s("shop", "a"))
    node.add("c2", node.pod(), conf=conf(node), env=k8s("shop", "b"))
    PodPublisher(store, "node1", node.data_dir, lambda: net(1)).reconcile()
    other = replace(record(store, "shop", "a"), name="elsewhere", node="node2")
    store.put(pod_key(store.prefix, "shop", "elsewhere"), encode_pod(other))
    assert delete_pods_of_node(store, "node1") == 2
    assert record(store, "shop", "a") is None and record(store, "shop", "b") is None
    assert record(store, "shop", "elsewhere") is not None
    assert delete_pods_of_node(store, "node1") == 0  # idempotent


def test_two_daemons_under_one_name_keep_to_their_own_subnets(store, registry, tmp_path):
    """A lab whose nodes share a hostname: same node name, different subnets and data
    dirs. Neither takes the other's pods for gone."""
    registry.create_lease(net(2), attrs(12), ttl=3600)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = CNINode(tmp_path / "a"), CNINode(tmp_path / "b")
    try:
        a.add("ca", a.pod(), conf=conf(a), env=k8s("shop", "on-a"))
        b.add("cb", b.pod(), conf=b.conf(subnet="10.244.2.0/24", network="10.244.0.0/16"),
              env=k8s("shop", "on-b"))
        pub_a = PodPublisher(store, "host", a.data_dir, lambda: net(1))
        pub_b = PodPublisher(store, "host", b.data_dir, lambda: net(2))
        for _ in range(2):
            for pub in (pub_a, pub_b):
                out = pub.reconcile()
                assert out is not None and out.deleted == 0 and out.conflicts == 0
        assert record(store, "shop", "on-a") and record(store, "shop", "on-b")
    finally:
        a.close()
        b.close()


def test_a_dual_stack_pod_is_published_with_both_addresses(store, node):
    """On a dual-stack node the record lists the pod's IPv4 address, then its IPv6 one
    (both from the real plugin's ADD); a publisher that knows no IPv6 half (its lease
    lost it) keeps the record's IPv4 address and drops the IPv6 one."""
    v6 = IPv6Network("fd00:10:244:1::/64")
    pod = node.pod()
    doc = node.add("c1", pod, conf=conf(node, ipv6Subnet=str(v6),
                                        ipv6Network="fd00:10:244::/56"),
                   env=k8s("shop", "web-1"))
    want = [a["address"].split("/")[0] for a in doc["ips"]]
    assert len(want) == 2 and ":" in want[1]
    dual = PodPublisher(store, "node1", node.data_dir, lambda: net(1), own_ipv6=lambda: v6)
    out = dual.reconcile()
    assert out is not None and out.conflicts == 0
    assert [str(i) for i in record(store, "shop", "web-1").ips] == want
    out = PodPublisher(store, "node1", node.data_dir, lambda: net(1)).reconcile()
    assert out is not None and out.deleted == 0  # still this node's pod
    assert [str(i) for i in record(store, "shop", "web-1").ips] == want[:1]
