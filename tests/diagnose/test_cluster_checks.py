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
