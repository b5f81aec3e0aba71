"""The pod publisher's reading of the data dir: metadata judged part by part, IPAM records
of this node's subnet only, an ADD still running skipped."""

import os
import time
from ipaddress import IPv4Address, IPv4Network, IPv6Network, ip_address

import pytest

from overlay.cluster.pods import Label, PodRecord, Port
from overlay.cni import attachments as at, ipam, podmeta
from overlay.daemon import podpublisher as pp

SUBNET = IPv4Network("10.244.1.0/24")
SUBNET_V6 = IPv6Network("fd00:10:244:1::/64")


def test_parse_meta_drops_bad_parts_alone():
    obj = {"containerID": "c1", "ifname": "eth0", "namespace": "shop", "name": "web-1",
           "labels": [{"key": "app", "value": "web"}, {"key": "bad key", "value": "x"},
                      {"key": "n", "value": 1}],
           "ports": [{"name": "http", "port": 80}, {"port": 0}, {"port": 80, "name": "http"}]}
    ident, problems = at.parse_meta(obj, "c1", "eth0")
    assert ident == at.PodIdentity("shop", "web-1", {"app": "web"}, (Port("http", 80, "TCP"),))
    assert len(problems) == 3


@pytest.mark.parametrize("ns, name", [(None, None), ("Shop", "web"), ("shop", "Web_1")])
def test_unusable_identity_falls_back_to_default_and_the_container_id(ns, name):
    obj = {"containerID": "c1", "ifname": "eth0", "namespace": ns, "name": name}
    ident, problems = at.parse_meta(obj, "c1", "eth0")
    assert (ident.namespace, ident.name) == ("default", "c1")
    assert bool(problems) == (name is not None)


def test_metadata_of_another_attachment_is_not_used():
    obj = {"containerID": "c2", "ifname": "eth0", "namespace": "shop", "name": "web"}
    ident, problems = at.parse_meta(obj, "c1", "eth0")
    assert ident == at.fallback_identity("c1") and problems


def add(tmp_path, cid, ip, ifname="eth0", network="overlay", meta=True, **args):
    store = ipam.DiskStore(str(tmp_path), network)
    with store.lock():
        assert store.reserve(cid, ifname, ip_address(ip))
    if meta:
        podmeta.write_meta(str(tmp_path), network,
                           podmeta.meta_from_request(cid, ifname, args, {}))


def test_scan_groups_attachments_by_container_and_keeps_this_subnet_only(tmp_path):
    add(tmp_path, "c1", "10.244.1.5", K8S_POD_NAMESPACE="shop", K8S_POD_NAME="web")
    add(tmp_path, "c1", "10.244.1.6", ifname="net1", meta=False)
    add(tmp_path, "c2", "10.88.0.5", network="podman")  # another network's range
    warned = []
    got = at.scan_local(str(tmp_path), SUBNET, lambda what, p: warned.append(p))
    assert list(got) == ["c1"] and warned == []
    assert got["c1"].ips == (ip_address("10.244.1.5"), ip_address("10.244.1.6"))
    assert (got["c1"].identity.namespace, got["c1"].identity.name, got["c1"].ifname) == (
        "shop", "web", "eth0")
    assert got["c1"].interfaces == 2  # (a DEL of one must not withdraw both's addresses)


def test_a_dual_stack_pod_lists_ipv4_then_ipv6_of_this_nodes_halves_only(tmp_path):
    add(tmp_path, "c1", "fd00:10:244:1::5", meta=False)
    add(tmp_path, "c1", "10.244.1.5", K8S_POD_NAMESPACE="shop", K8S_POD_NAME="web")
    add(tmp_path, "c1", "fd00:10:244:2::9", ifname="net1", meta=False)  # another node's half
    got = at.scan_local(str(tmp_path), SUBNET, lambda *a: None, SUBNET_V6)
    assert got["c1"].ips == (ip_address("10.244.1.5"), ip_address("fd00:10:244:1::5"))
    assert (got["c1"].identity.name, got["c1"].ifname) == ("web", "eth0")
    assert got["c1"].interfaces == 1  # both families of one interface
    # without an IPv6 half (IPv4-only lease), the IPv6 reservation is not this node's
    only_v4 = at.scan_local(str(tmp_path), SUBNET, lambda *a: None)
    assert only_v4["c1"].ips == (ip_address("10.244.1.5"),)


def test_an_add_in_progress_waits_for_its_metadata_an_old_one_is_of_unknown_identity(tmp_path):
    add(tmp_path, "c1", "10.244.1.5", meta=False)
    assert at.scan_local(str(tmp_path), SUBNET, lambda *a: None) == {}
    old = time.time() - at.ADD_GRACE - 1
    os.utime(tmp_path / "overlay" / "10.244.1.5", (old, old))
    warned = []
    got = at.scan_local(str(tmp_path), SUBNET, lambda what, p: warned.append(p))
    assert got["c1"].identity == at.fallback_identity("c1") and "no metadata" in warned[0]
    assert not got["c1"].identity_known and "isolated both ways" in warned[0]


def _damage(path, how):
    path.unlink()
    if how == "directory":
        path.mkdir()
    elif how == "fifo":
        os.mkfifo(path)
    elif how == "symlink":
        path.symlink_to("/etc/hostname")
    elif how == "garbled":
        path.write_text('{"containerID": trunc')
    elif how == "non-utf8":
        path.write_bytes(b'{"containerID": "c1\xff"}')
    elif how == "oversized":
        path.write_text(" " * (podmeta.MAX_META_BYTES + 1) + "{}")
    elif how == "another's":
        path.write_text('{"containerID": "c9", "ifname": "eth0", "namespace": "x", '
                        '"name": "y"}')


@pytest.mark.parametrize("how", ["directory", "fifo", "symlink", "garbled", "non-utf8",
                                 "oversized", "another's", "removed"])
def test_an_unusable_metadata_file_is_one_pod_of_unknown_identity_never_a_failed_scan(
        tmp_path, how):
    add(tmp_path, "c1", "10.244.1.5", K8S_POD_NAMESPACE="shop", K8S_POD_NAME="web")
    add(tmp_path, "c2", "10.244.1.6", K8S_POD_NAMESPACE="shop", K8S_POD_NAME="db")
    _damage(tmp_path / "overlay" / "pods" / "c1@eth0.json", how)
    old = time.time() - at.ADD_GRACE - 1
    os.utime(tmp_path / "overlay" / "10.244.1.5", (old, old))
    warned = []
    got = at.scan_local(str(tmp_path), SUBNET, lambda what, p: warned.append(p))
    assert set(got) == {"c1", "c2"}  # a directory there raised IsADirectoryError
    assert not got["c1"].identity_known and got["c1"].identity.labels == {}
    assert got["c2"].identity_known and got["c2"].identity.name == "db"
    assert len(warned) == 1 and "unknown" in warned[0], warned


def test_a_missing_data_dir_is_a_scan_error_not_an_empty_node(tmp_path):
    with pytest.raises(at.ScanError):
        at.scan_local(str(tmp_path / "nope"), SUBNET, lambda *a: None)


def test_the_policy_agents_cache_scans_again_only_when_the_disk_moved(tmp_path, monkeypatch):
    cache = at.AttachmentCache(str(tmp_path / "data"))
    assert cache.current(SUBNET) == {}  # no ADD yet: the dir does not exist, nothing attached
    root = tmp_path / "data"
    root.mkdir()
    add(root, "c1", "10.244.1.5")
    scans: list[int] = []
    real = at.scan_local

    def counted(*a, **kw):
        scans.append(1)
        return real(*a, **kw)
    monkeypatch.setattr(at, "scan_local", counted)
    assert set(cache.current(SUBNET)) == {"c1"}
    assert set(cache.current(SUBNET)) == {"c1"} and len(scans) == 1  # nothing moved
    add(root, "c2", "10.244.1.6")
    assert set(cache.current(SUBNET)) == {"c1", "c2"} and len(scans) == 2
    assert cache.current(None) == {}


def test_for_policy_an_add_without_metadata_after_seconds_is_of_unknown_identity(tmp_path):
    # the publisher waits ADD_GRACE for its metadata; the policy table only RUNNING_GRACE
    add(tmp_path, "c1", "10.244.1.5", meta=False)
    cache = at.AttachmentCache(str(tmp_path))
    assert cache.current(SUBNET) == {}
    old = time.time() - at.RUNNING_GRACE - 0.5
    os.utime(tmp_path / "overlay" / "10.244.1.5", (old, old))
    assert at.scan_local(str(tmp_path), SUBNET, lambda *a: None) == {}
    got = at.scan_local(str(tmp_path), SUBNET, lambda *a: None, grace=at.RUNNING_GRACE)
    assert not got["c1"].identity_known
    assert at.AttachmentCache(str(tmp_path)).current(SUBNET)["c1"].identity_known is False


def test_the_disk_signature_moves_on_add_and_del(tmp_path):
    add(tmp_path, "c0", "10.244.1.4")
    before = at.disk_signature(str(tmp_path))
    add(tmp_path, "c1", "10.244.1.5")
    after_add = at.disk_signature(str(tmp_path))
    podmeta.remove_meta(str(tmp_path), "overlay", "c1", "eth0")
    assert before != after_add != at.disk_signature(str(tmp_path))


def local(cid="c2", labels=None):
    return at.LocalPod(cid, "eth0", (IPv4Address("10.244.1.5"),),
                       at.PodIdentity("shop", "web", labels or {"app": "web", "tier": "x"}))


def test_a_new_sandbox_takes_cni_labels_under_the_operators():
    held = PodRecord("shop", "web", (IPv4Address("10.244.1.4"),), "node1", "c1", "eth0",
                     {"app": Label("old", "cni"), "tier": Label("gold", "cli")})
    want = pp.desired_record("node1", local(), held)
    assert want.labels == {"app": Label("web", "cni"), "tier": Label("gold", "cli")}
    assert want.container_id == "c2" and want.created > held.created


def test_the_same_sandbox_keeps_its_labels_and_creation_time():
    held = PodRecord("shop", "web", (IPv4Address("10.244.1.5"),), "node1", "c2", "eth0",
                     {"tier": Label("gold", "cli")})  # the operator removed app
    want = pp.desired_record("node1", local(), held)
    assert want.labels == held.labels and want.created == held.created


def test_cni_data_dir_flag_defaults_to_the_plugins_and_refuses_empty():
    from overlay.cni.netconf import DEFAULT_DATA_DIR
    from overlay.daemon.flags import parse_settings
    from overlay.errors import ConfigError
    assert parse_settings(["--node-name", "n1"], {}).cni_data_dir == DEFAULT_DATA_DIR
    assert parse_settings(["--node-name", "n1", "--cni-data-dir", "/x"], {}).cni_data_dir == "/x"
    assert parse_settings(["--node-name", "n1"],
                          {"OVERLAYD_CNI_DATA_DIR": "/y"}).cni_data_dir == "/y"
    with pytest.raises(ConfigError, match="--cni-data-dir: empty path"):
        parse_settings(["--node-name", "n1", "--cni-data-dir", ""], {})


def test_the_cache_says_when_the_disk_moved_since_its_last_scan(tmp_path):
    add(tmp_path, "c1", "10.244.1.5")
    cache = at.AttachmentCache(str(tmp_path))
    assert not cache.moved()  # nothing scanned yet: nothing to compare with
    cache.current(SUBNET)
    assert not cache.moved()
    meta = tmp_path / "overlay" / "pods" / "c1@eth0.json"
    meta.unlink()
    meta.write_text("{garbled")  # no etcd key changes: the agent learns it from here
    assert not cache.moved()  # not yet: it may be an ADD in flight
    assert cache.moved()  # still so one look later
    cache.current(SUBNET)
    assert not cache.moved()


def test_a_metadata_file_rewritten_in_place_moves_the_signature(tmp_path):
    add(tmp_path, "c1", "10.244.1.5", K8S_POD_NAMESPACE="shop", K8S_POD_NAME="web")
    before = at.disk_signature(str(tmp_path))
    with open(tmp_path / "overlay" / "pods" / "c1@eth0.json", "r+") as f:
        f.write("{")  # in place: no directory's mtime moves
    assert at.disk_signature(str(tmp_path)) != before
