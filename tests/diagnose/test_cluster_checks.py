"""diagnose's cluster checks: pod-ips-unique over hand-built registry states."""

from ipaddress import IPv4Address

from overlay.cluster.pods import PodRecord
from overlay.diagnose import state as st
from overlay.diagnose.cluster_checks import PodsState, check_pod_ips_unique
from overlay.lease import Rejection


def pod(name, ip, node="node1"):
    return PodRecord("default", name, (IPv4Address(ip),), node, f"c-{name}", "eth0")


def test_distinct_ips_pass():
    got = check_pod_ips_unique(PodsState([pod("a", "10.244.1.2"), pod("b", "10.244.1.3")]))
    assert got.status == st.PASS and "2 pod(s)" in got.found


def test_a_shared_ip_fails_naming_both_pods():
    got = check_pod_ips_unique(PodsState([pod("a", "10.244.1.2"),
                                          pod("b", "10.244.1.2", "node2"),
                                          pod("c", "10.244.1.3")]))
    assert got.status == st.FAIL and got.fix
    assert "10.244.1.2: default/a on node1, default/b on node2" in got.found


def test_rejected_records_are_counted_not_compared():
    got = check_pod_ips_unique(PodsState([pod("a", "10.244.1.2")],
                                         [Rejection("k", "bad-value", "x")]))
    assert got.status == st.PASS and "1 rejected" in got.found


def test_without_etcd_it_is_skipped():
    assert check_pod_ips_unique(PodsState(error="etcd down")).status == st.SKIP


def test_rejected_objects_of_every_kind_fail_with_their_delete_commands():
    from overlay.diagnose.cluster_checks import check_rejected_objects

    got = check_rejected_objects(PodsState(
        [pod("a", "10.244.1.2")], [Rejection("/p/pods/x/deep", "bad-value", "nested too deeply")],
        rejected_objects=[("/p/policies/x/wide", "must specify a peer"),
                          ("/p/namespaces/z\n", "not JSON"),
                          ("/p/nodes/n1", "bad-value (not a JSON document)")]), "http://e:2379")
    assert got.status == st.FAIL and got.found.startswith("4 rejected key(s): ")
    assert "/p/nodes/n1: bad-value (not a JSON document)" in got.found
    assert "/p/pods/x/deep: bad-value (nested too deeply)" in got.found
    assert "/p/policies/x/wide: must specify a peer" in got.found
    assert "etcdctl --endpoints=http://e:2379 del '/p/policies/x/wide'" in got.fix
    assert "printf" in got.fix  # the key with a newline, rebuilt byte for byte


def test_no_rejected_object_passes_and_without_etcd_it_is_skipped():
    from overlay.diagnose.cluster_checks import check_rejected_objects

    assert check_rejected_objects(PodsState([pod("a", "10.244.1.2")])).status == st.PASS
    assert check_rejected_objects(PodsState(error="etcd down")).status == st.SKIP


def test_pods_of_a_gone_lease_are_a_warning_until_the_gc_takes_them():
    # a removed node's records stay until the lease-gone GC deletes them: expected for a
    # while, so diagnose warns instead of failing (`overlay-lab remove-node` then diagnose)
    from overlay.cluster.pods import NO_LEASE
    from overlay.diagnose.cluster_checks import check_rejected_objects

    gone = Rejection("/p/pods/default/web", "ip-outside-node-subnet",
                     f"10.244.4.2 not inside node node4's subnet ({NO_LEASE})")
    got = check_rejected_objects(PodsState([pod("a", "10.244.1.2")], [gone]))
    assert got.status == st.WARN and "1 record(s) of pods whose node's lease is gone" in got.found
    assert "/p/pods/default/web" in got.found and "nodes delete" in got.fix
    elsewhere = Rejection("/p/pods/default/x", "ip-outside-node-subnet",
                          "10.244.9.2 not inside node node1's subnet (10.244.1.0/24)")
    got = check_rejected_objects(PodsState([], [gone, elsewhere]))
    assert got.status == st.FAIL and got.found.startswith("1 rejected key(s): /p/pods/default/x")
    assert "(1 record(s) of pods whose node's lease is gone, awaiting removal)" in got.found
