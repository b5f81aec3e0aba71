"""What one node's table is compiled from (``overlay.policy.build.assemble``): its local
pods are its attachments on disk, whatever etcd says of them, and of the other records
none holding an IP another record holds is believed."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from overlay.cluster.pods import SOURCE_CLI, SOURCE_CNI, Label, PodRecord
from overlay.cni.attachments import LocalPod, PodIdentity
from overlay.netlink.pod import host_veth_name
from overlay.policy.build import QUARANTINE, UNKNOWN_NAMESPACE, assemble
from overlay.policy.model import parse_policy
from overlay.policy.semantics import Host, decide

from .cases import policy

N1 = IPv4Network("10.244.1.0/24")


def rec(name: str, ip: str, node: str = "node1", cid: str | None = None,
        labels: dict[str, str] | None = None, source: str = SOURCE_CNI) -> PodRecord:
    return PodRecord("x", name, (IPv4Address(ip),), node, cid or f"c-{name}", "eth0",
                     {k: Label(v, source) for k, v in (labels or {"pod": name}).items()})


def disk(*pods: tuple[str, str]) -> dict[str, LocalPod]:
    return {f"c-{n}": LocalPod(f"c-{n}", "eth0", (IPv4Address(ip),),
                               PodIdentity("x", n, {"pod": n})) for n, ip in pods}


def run(records: list[PodRecord], attached: dict[str, LocalPod]):
    return assemble([], [], records, "node1", N1, attached=attached)


def by_ref(inputs) -> dict[str, tuple]:
    return {p.ref: (p.ips, dict(p.labels)) for p in inputs.pods}


def test_a_local_pod_stays_local_whatever_its_record_says() -> None:
    attached = disk(("a", "10.244.1.2"))
    veth = host_veth_name("c-a", "eth0")
    for records in ([rec("a", "10.244.1.2")],          # the true record
                    [],                                 # deleted (or garbled: not judged)
                    [rec("a", "10.244.1.2", node="node9")],  # moved to a node that is not
                    [rec("a", "10.244.1.3", cid="c-a")]):    # claims another IP
        got = run(records, attached)
        assert [(lp.ifname, lp.pod.ips) for lp in got.local] == [
            (veth, (IPv4Address("10.244.1.2"),))], records
        assert by_ref(got)["x/a"] == ((IPv4Address("10.244.1.2"),), {"pod": "a"})


def test_the_operators_labels_come_from_the_pods_own_record() -> None:
    own = rec("a", "10.244.1.2", labels={"pod": "a", "tier": "db"}, source=SOURCE_CLI)
    got = run([own], disk(("a", "10.244.1.2")))
    assert by_ref(got)["x/a"][1] == {"pod": "a", "tier": "db"}
    # the same labels on a record of another container are not the pod's
    other = rec("a", "10.244.1.2", cid="c-other", labels={"pod": "a", "tier": "db"})
    assert by_ref(run([other], disk(("a", "10.244.1.2"))))["x/a"][1] == {"pod": "a"}


def test_a_record_in_this_nodes_subnet_without_an_attachment_is_no_pod() -> None:
    forged = rec("intruder", "10.244.1.9", labels={"app": "trusted"})
    got = run([forged, rec("b", "10.244.2.2", node="node2")], disk(("a", "10.244.1.2")))
    assert set(by_ref(got)) == {"x/a", "x/b"} and got.dropped == []


def test_two_records_of_one_remote_ip_are_both_dropped() -> None:
    real = rec("b", "10.244.2.2", node="node2")
    twin = rec("fake", "10.244.2.2", node="node2", labels={"app": "trusted"})
    got = run([real, twin, rec("c", "10.244.2.3", node="node2")], disk())
    assert set(by_ref(got)) == {"x/c"}
    assert sorted((r.name, why) for r, why in got.dropped) == [
        ("b", "10.244.2.2 is held by another record too"),
        ("fake", "10.244.2.2 is held by another record too")]


def test_a_twin_record_under_another_name_does_not_take_the_pods_labels_away() -> None:
    own = rec("a", "10.244.1.2", labels={"pod": "a", "tier": "db"}, source=SOURCE_CLI)
    twin = rec("twin", "10.244.1.2", cid="c-a", labels={"pod": "evil"})
    for records in ([own, twin], [twin, own]):
        assert by_ref(run(records, disk(("a", "10.244.1.2"))))["x/a"][1] == {
            "pod": "a", "tier": "db"}


def test_two_containers_under_one_name_are_both_local_pods() -> None:
    # a sandbox recreated before its old one's DEL: the publisher publishes one of them,
    # but both are attached here, so both are isolated and source-checked
    attached = {cid: LocalPod(cid, "eth0", (IPv4Address(ip),), PodIdentity("x", "a", {"pod": "a"}))
                for cid, ip in (("c-old", "10.244.1.2"), ("c-new", "10.244.1.3"))}
    got = run([rec("a", "10.244.1.2", cid="c-old")], attached)
    assert sorted((lp.ifname, str(lp.pod.ip)) for lp in got.local) == sorted(
        [(host_veth_name("c-old", "eth0"), "10.244.1.2"),
         (host_veth_name("c-new", "eth0"), "10.244.1.3")])
    assert sorted(str(p.ip) for p in got.pods if p.ref == "x/a") == ["10.244.1.2", "10.244.1.3"]


def test_a_local_pod_of_unknown_identity_is_isolated_both_ways_while_policies_exist() -> None:
    # its metadata file garbled or removed: which policies select it is not known, so no
    # policy's allow reaches it, whatever its record (here: the labels an allow names) says
    allow = parse_policy(policy("allow-all-to-a", "x", {
        "podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{}], "egress": [{}], "policyTypes": ["Ingress", "Egress"]}))
    attached = disk(("a", "10.244.1.2"), ("b", "10.244.1.3"))
    attached["c-a"] = LocalPod("c-a", "eth0", (IPv4Address("10.244.1.2"),),
                               PodIdentity("default", "c-a"), identity_known=False)
    records = [rec("a", "10.244.1.2"), rec("b", "10.244.1.3"), rec("c", "10.244.2.2", "node2")]
    got = assemble([allow], [], records, "node1", N1, attached=attached)
    a = next(p for p in got.pods if p.ip == IPv4Address("10.244.1.2"))
    assert (a.namespace, a.labels) == (UNKNOWN_NAMESPACE, {})
    assert got.policies == [allow, QUARANTINE]
    others = [p for p in got.pods if p is not a]
    for other in others:
        assert not decide(a, other, 80, "TCP", got.namespaces, got.policies).allowed
        assert not decide(other, a, 80, "TCP", got.namespaces, got.policies).allowed
    assert decide(Host(IPv4Address("10.244.1.1"), "node1"), a, 80, "TCP", got.namespaces,
                  got.policies).allowed  # its own node (probes) still reaches it
    # with no policy at all nothing is filtered: no quarantine either
    assert assemble([], [], records, "node1", N1, attached=attached).policies == []
