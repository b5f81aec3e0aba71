"""The policy agent's decisions without etcd or nft: what it compiles from judged objects,
when it loads, the marker file, br_netfilter, and the warm ADD hook. The watches over a
real etcd and the kernel table are in tests/integration/test_policy_agent.py."""

from __future__ import annotations

import dataclasses
import json
import threading
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from overlay.cluster import keys
from overlay.cluster.pods import SOURCE_CNI, Label, PodRecord, PodRules, encode_pod
from overlay.cluster.store import KV, ObjectStore
from overlay.cni.skel import Request
from overlay.daemon import policyagent
from overlay.daemon.policyagent import NAMESPACES, NODES, PODS, POLICIES, PolicyAgent
from overlay.errors import CNIError, NetlinkOpError
from overlay.netlink.pod import host_veth_name
from overlay.policy import nft
from overlay.util.proc import ProgramError
from tests.fakes import attachments_of_records

PREFIX = "/overlay/network"
SUBNET = IPv4Network("10.244.1.0/24")
OTHER = IPv4Network("10.244.2.0/24")
DENY = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "deny", "namespace": "x"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}


def _pod(name: str, ip: str, node: str = "n1", ns: str = "x", rev: int = 1) -> KV:
    record = PodRecord(ns, name, (IPv4Address(ip),), node, f"c-{name}", "eth0",
                       {"pod": Label(name, SOURCE_CNI)})
    return KV(keys.pod_key(PREFIX, ns, name), encode_pod(record), rev)


def _policy(obj: dict[str, Any], rev: int = 1) -> KV:
    meta = obj["metadata"]
    return KV(keys.policy_key(PREFIX, meta["namespace"], meta["name"]),
              json.dumps(obj).encode(), rev)


class Applied:
    def __init__(self) -> None:
        self.tables: list[nft.CompiledTable] = []
        self.scripts: list[str] = []  # the ADDs' admissions, as nft commands
        self.helds: list[nft.CompiledTable | None] = []  # what the kernel held before each
        self.fail = False

    def __call__(self, table: nft.CompiledTable, held: nft.CompiledTable | None = None
                 ) -> bool:
        """Records each table the kernel would hold; whole unless an update can say it."""
        if self.fail:
            raise ProgramError("nft refused it", ["nft"], "failed", 1)
        self.tables.append(table)
        self.helds.append(held)
        return held is None or nft.update_script(held, table) is None

    def update(self, adm: nft.Admission) -> None:
        if self.fail:
            raise ProgramError("nft refused it", ["nft"], "failed", 1)
        self.scripts.append(adm.script())

    def remove(self, w: nft.Withdrawal) -> None:
        if self.fail:
            raise ProgramError("nft refused it", ["nft"], "failed", 1)
        self.scripts.append(w.script())


@pytest.fixture
def agent(tmp_path: Path) -> tuple[PolicyAgent, Applied, dict[str, str | None]]:
    applied = Applied()
    bridge: dict[str, str | None] = {"problem": None}
    store = cast(ObjectStore, SimpleNamespace(prefix=PREFIX))
    a = PolicyAgent(store, "n1", lambda: SUBNET,
                    lambda _nodes: PodRules(lease_subnets=frozenset({SUBNET, OTHER})),
                    str(tmp_path / "policy-enforced"), REGISTRY[0], threading.Event(),
                    attachments=lambda s, s6: attachments_of_records(a, "n1")(s, s6),
                    apply=applied, bridge_problem=lambda _families: bridge["problem"],
                    update=applied.update, remove=applied.remove)
    return a, applied, bridge


REGISTRY = [CollectorRegistry()]


@pytest.fixture(autouse=True)
def _fresh_registry() -> None:
    REGISTRY[0] = CollectorRegistry()


def _listed(a: PolicyAgent, policies: list[KV], pods: list[KV],
            namespaces: list[KV] | None = None) -> None:
    a._replace(POLICIES, policies)
    a._replace(NAMESPACES, namespaces or [])
    a._replace(NODES, [])
    a._replace(PODS, pods)


def test_nothing_is_loaded_before_every_prefix_is_listed(agent) -> None:
    a, applied, _ = agent
    a._replace(POLICIES, [_policy(DENY)])
    a._replace(PODS, [_pod("a", "10.244.1.2")])
    assert not a.complete.is_set()
    assert a.problems() == ["NetworkPolicy table not compiled yet"]
    a._replace(NAMESPACES, [])
    assert not a.complete.is_set()  # nor before the node records (which node has a subnet)
    a._replace(NODES, [])
    assert a.complete.is_set()
    a.sync()
    assert len(applied.tables) == 1 and a.problems() == []


def test_a_policy_selecting_a_local_pod_is_loaded_once_per_change(agent) -> None:
    a, applied, _ = agent
    _listed(a, [_policy(DENY)], [_pod("a", "10.244.1.2"), _pod("b", "10.244.2.2", "n2")])
    table = a.sync()
    assert "10.244.1.2" in table.text and "check_ingress" in table.text
    assert "10.244.2.2" not in table.text  # only local pods are selected; no peer rule
    a.sync()
    assert len(applied.tables) == 1  # the same text is not loaded again
    a._replace(PODS, [_pod("a", "10.244.1.2"), _pod("c", "10.244.1.3")])
    a.sync()
    assert len(applied.tables) == 2 and "10.244.1.3" in applied.tables[-1].text


def test_no_policy_loads_the_empty_table(agent) -> None:
    a, applied, _ = agent
    _listed(a, [], [_pod("a", "10.244.1.2")])
    a.sync()
    assert applied.tables[0].text == f"table {nft.FAMILY} {nft.TABLE} {{\n}}\n"
    assert not a.selecting


def test_a_bad_policy_is_rejected_alone_and_counted_once(agent, caplog) -> None:
    a, applied, _ = agent
    bad = KV(keys.policy_key(PREFIX, "x", "broken"), b'{"kind": "NetworkPolicy"}', 7)
    wrong_key = KV(keys.policy_key(PREFIX, "y", "deny"), json.dumps(DENY).encode(), 8)
    _listed(a, [bad, wrong_key, _policy(DENY)], [_pod("a", "10.244.1.2")])
    a.sync()
    a._judged[POLICIES].forget()  # judged again (as when a lease changes): not logged again
    a.sync()
    assert "check_ingress" in applied.tables[0].text  # the good one is enforced
    assert sum("rejected" in r.message for r in caplog.records) == 2  # once each
    assert b'overlay_policy_objects_rejected_total{kind="policy"} 2.0' in \
        generate_latest(REGISTRY[0])


def test_values_nested_too_deeply_are_rejected_alone(agent) -> None:
    # json raises RecursionError, not ValueError, for these: each must be one rejection,
    # not an exception out of the compile
    a, applied, _ = agent
    deep = b'{"a":' * 5000 + b"1" + b"}" * 5000
    _listed(a, [KV(keys.policy_key(PREFIX, "x", "deep"), deep, 7), _policy(DENY)],
            [KV(keys.pod_key(PREFIX, "x", "deep"), deep, 8), _pod("a", "10.244.1.2")],
            [KV(keys.namespace_key(PREFIX, "y"), deep, 9)])
    a.sync()
    assert "check_ingress" in applied.tables[0].text and "10.244.1.2" in applied.tables[0].text
    text = generate_latest(REGISTRY[0])
    for kind in (b"policy", b"namespace"):
        assert b'overlay_policy_objects_rejected_total{kind="' + kind + b'"} 1.0' in text


def test_a_pod_outside_its_nodes_subnet_is_not_a_peer(agent) -> None:
    a, applied, _ = agent
    allow = {**DENY, "metadata": {"name": "allow", "namespace": "x"},
             "spec": {"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}}
    _listed(a, [_policy(allow)], [_pod("a", "10.244.1.2"),
                                  _pod("evil", "10.244.9.9", "n2")])  # no lease holds it
    table = a.sync()
    assert "10.244.9.9" not in table.text


def test_the_marker_follows_whether_any_policy_exists(agent, tmp_path: Path) -> None:
    a, _, _ = agent
    marker = tmp_path / "policy-enforced"
    _listed(a, [_policy(DENY)], [])  # no local pod selected: still in force for new pods
    a.sync()
    assert marker.exists()
    a._replace(POLICIES, [])
    a.sync()
    assert not marker.exists()


def test_br_netfilter_off_makes_the_node_not_ready_only_while_a_pod_is_selected(agent) -> None:
    a, _, bridge = agent
    bridge["problem"] = "bridge-nf-call-iptables is 0"
    _listed(a, [], [_pod("a", "10.244.1.2")])
    a.sync()
    assert a.problems() == []
    a._replace(POLICIES, [_policy(DENY)])
    a.sync()
    assert a.problems() == ["bridge-nf-call-iptables is 0"]


def test_bridge_filtering_problem_reads_the_sysctl(tmp_path: Path) -> None:
    path = tmp_path / "bridge-nf-call-iptables"
    assert "absent" in (policyagent.bridge_filtering_problem(str(path)) or "")
    path.write_text("0\n")
    assert "is 0" in (policyagent.bridge_filtering_problem(str(path)) or "")
    path.write_text("1\n")
    assert policyagent.bridge_filtering_problem(str(path)) is None


def _request(cid: str = "c-new") -> Request:
    return Request("ADD", "1.0.0", {"name": "overlay"}, cid, "/run/netns/p", "eth0",
                   {"K8S_POD_NAMESPACE": "x", "K8S_POD_NAME": "new"})


RESULT = {"cniVersion": "1.0.0", "ips": [{"address": "10.244.1.9/24"}]}


def _handlers(a: PolicyAgent, add: Any = lambda req: RESULT, delete: Any = lambda req: None
              ) -> dict[str, Any]:
    """The warm server's ADD and DEL around ``a``, the plugin's own work stood in for."""
    return policyagent.enforcing_handlers({"ADD": add, "DEL": delete}, lambda: a)


def _added_under_deny(a: PolicyAgent) -> dict[str, Any]:
    """DENY loaded with x/a, then the ADD of c-new (10.244.1.9) by element update: the
    handlers, for the DELs that follow."""
    _listed(a, [_policy(DENY)], [_pod("a", "10.244.1.2")])
    a.sync()
    handlers = _handlers(a)
    handlers["ADD"](_request())
    return handlers


def _count_compiles(a: PolicyAgent, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Each compile from now on, as the number of pods it read."""
    compiled: list[int] = []
    compile_inputs = a._compile_inputs

    def counted(got: Any) -> nft.CompiledTable:
        compiled.append(len(got.pods))
        return compile_inputs(got)

    monkeypatch.setattr(a, "_compile_inputs", counted)
    return compiled


def test_admit_loads_the_new_pod_before_the_add_returns(agent) -> None:
    a, applied, _ = agent
    _listed(a, [_policy(DENY)], [_pod("a", "10.244.1.2")])
    a.sync()
    handlers = _handlers(a)
    assert handlers["ADD"](_request()) == RESULT
    # DENY (every pod of x) was compiled with x/a: the new pod's elements were added
    assert len(applied.tables) == 1 and len(applied.scripts) == 1
    assert "10.244.1.9" in applied.scripts[0]
    assert "add chain inet overlay-policy src_veth" in applied.scripts[0]  # its source check
    assert list(a._pending) == ["c-new"]  # until the registry has it
    # an earlier holder of its address may have entries (none was cut since start)
    assert a._cut_wanted.is_set()
    a.sync()  # the compiler's pass: the kernel already holds what it compiles
    assert len(applied.tables) == 1
    assert "10.244.1.9" in a.loaded.elements["p0_sel"] and "veth" in str(a.loaded.index.sources)
    published = KV(keys.pod_key(PREFIX, "x", "new"), encode_pod(PodRecord(
        "x", "new", (IPv4Address("10.244.1.9"),), "n1", "c-new", "eth0")), 3)
    a._replace(PODS, [_pod("a", "10.244.1.2"), published])
    a.sync()
    assert a._pending == {} and len(applied.tables) == 1


def test_a_pass_whose_inputs_the_loaded_table_already_compiles_compiles_nothing(
        agent, monkeypatch) -> None:
    """After an ADD's admission the kernel holds the compile with the pod: the compiler's
    passes that follow (its registry record, its files on disk) compile nothing until
    something else changes, a pod's labels or a policy."""
    a, applied, _ = agent
    _listed(a, [_policy(DENY)], [_pod("a", "10.244.1.2")])
    a.sync()
    compiled = _count_compiles(a, monkeypatch)
    a.sync()
    assert compiled == []  # nothing changed since the load
    a.admit(_request(), RESULT)
    held = a.loaded
    a.sync()
    assert compiled == [] and a.loaded is held and len(applied.tables) == 1
    # the same pod with another label: compiled (and loaded in place)
    relabelled = KV(keys.pod_key(PREFIX, "x", "a"), encode_pod(PodRecord(
        "x", "a", (IPv4Address("10.244.1.2"),), "n1", "c-a", "eth0",
        {"pod": Label("b", SOURCE_CNI)})), 5)
    a._replace(PODS, [relabelled])
    a.sync()
    assert len(compiled) == 1
    a.sync()
    assert len(compiled) == 1  # and then held again
    allow = {**DENY, "metadata": {"name": "allow", "namespace": "x"},
             "spec": {"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}}
    a._replace(POLICIES, [_policy(DENY), _policy(allow)])
    a.sync()
    assert len(compiled) == 2 and "p0_ingress_allowed" in a.loaded.text


def _del_request(cid: str = "c-new") -> Request:
    return _request(cid)._replace(command="DEL")


def test_a_del_takes_its_pod_out_before_it_returns(agent, monkeypatch) -> None:
    """The DEL's withdrawal (``nft.withdrawal``): the pod's elements and source chain
    leave the loaded table in one transaction, the compiler's passes after it compile
    nothing, and its address is noted for the next cut."""
    a, applied, _ = agent
    handlers = _added_under_deny(a)
    before = a.loaded
    handlers["DEL"](_del_request())
    assert applied.scripts[-1].splitlines() == [
        "delete element inet overlay-policy p0_sel { 10.244.1.9 }",
        f"delete chain inet overlay-policy src_{host_veth_name('c-new', 'eth0')}"]
    assert "10.244.1.9" in before.elements["p0_sel"]
    assert "10.244.1.9" not in a.loaded.elements["p0_sel"] and a._pending == {}
    assert a._dead == {IPv4Address("10.244.1.9")}
    assert "overlay_policy_withdrawals_total 1.0" in generate_latest(REGISTRY[0]).decode()
    compiled = _count_compiles(a, monkeypatch)
    a.sync()
    assert compiled == [] and len(applied.tables) == 1


def test_a_del_the_kernel_refuses_is_left_to_the_compiler(agent) -> None:
    a, applied, _ = agent
    handlers = _added_under_deny(a)
    held = a.loaded
    applied.fail = True
    handlers["DEL"](_del_request())  # the DEL itself succeeds
    assert a.loaded is held and "10.244.1.9" in a.loaded.elements["p0_sel"]
    applied.fail = False
    a.sync()
    assert len(applied.tables) == 2 and "10.244.1.9" not in a.loaded.elements["p0_sel"]
    assert a._dead == {IPv4Address("10.244.1.9")}  # noted by the compile instead


def test_an_add_given_an_address_the_table_still_holds_compiles(agent) -> None:
    """A DEL left to the compiler keeps its pod's elements until the next pass; an ADD
    given that address meanwhile compiles the table (no element of the gone pod stays
    with the new one)."""
    a, applied, _ = agent
    handlers = _added_under_deny(a)
    applied.fail = True
    handlers["DEL"](_del_request())
    applied.fail = False
    handlers["ADD"](_request("c-again")._replace(args={"K8S_POD_NAMESPACE": "x",
                                                       "K8S_POD_NAME": "again"}))
    assert a.admits.labels("table")._value.get() == 1
    assert list(a.loaded.index.sources) == sorted(
        host_veth_name(c, "eth0") for c in ("c-a", "c-again"))


def test_every_add_cuts_and_a_cut_takes_gone_pods_flows(agent, monkeypatch) -> None:
    """An ADD asks for a cut whatever its address: entries of it made before the pod
    (an earlier pod's, or a peer's packets to the free address) would carry replies past
    its policy. A cut deletes a gone pod's flows, allowed or not, never the node's own
    addresses' (the VXLAN device's, the bridge's, broadcast), and forgets the gone
    addresses it looked at, a reused one's too."""
    from overlay.policy import conntrack
    from overlay.policy.conntrack import Flow

    a, _, _ = agent
    ip = IPv4Address
    allow = {**DENY, "metadata": {"name": "from-b", "namespace": "x"},
             "spec": {"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}}
    _listed(a, [_policy(DENY), _policy(allow)], [_pod("a", "10.244.1.2")])
    a.sync()
    flows = [Flow("TCP", ip("10.244.1.2"), ip("10.244.1.9"), 5000, 80),  # a -> the gone pod
             Flow("TCP", ip("10.244.1.1"), ip("10.244.1.9"), 5001, 80),  # the gateway's
             Flow("TCP", ip("10.244.1.2"), ip("10.244.1.2"), 5002, 80),  # allowed, alive
             # the node (its VXLAN device's address) to a remote pod: no pod's flow
             Flow("TCP", ip("10.244.1.0"), ip("10.244.2.3"), 5003, 80),
             Flow("UDP", ip("10.244.2.3"), ip("10.244.1.255"), 5004, 80)]
    deleted: list[Flow] = []
    monkeypatch.setattr(conntrack, "list_flows", lambda _versions, _only=None: flows)

    def delete(fs: list[Flow]) -> int:
        deleted.extend(fs)
        return len(fs)

    monkeypatch.setattr(conntrack, "delete_flows", delete)
    addresses = {"c-new": "10.244.1.9", "c-fresh": "10.244.1.10", "c-again": "10.244.1.10"}
    results = {cid: {"cniVersion": "1.0.0", "ips": [{"address": f"{address}/24"}]}
               for cid, address in addresses.items()}
    handlers = _handlers(a, add=lambda req: results[req.container_id])

    def add(cid: str) -> None:
        a._cut_wanted.clear()
        a._cut_scope = set()
        handlers["ADD"](_request(cid)._replace(args={"K8S_POD_NAMESPACE": "x",
                                                     "K8S_POD_NAME": cid}))
        assert a._cut_wanted.is_set(), cid
        # its own addresses' flows (a new pod changes what no other flow may do)
        assert a._cut_scope == {ip(addresses[cid])}

    add("c-new")
    handlers["DEL"](_del_request("c-new"))
    assert a._dead == {ip("10.244.1.9")}
    assert a.cut_denied() == 1 and deleted == [flows[0]]
    assert a._dead == set()
    add("c-fresh")
    handlers["DEL"](_del_request("c-fresh"))
    assert a._dead == {ip("10.244.1.10")}
    add("c-again")  # IPAM hands out the gone pod's address again
    assert a.admits.labels("elements")._value.get() == 3
    deleted.clear()
    assert a.cut_denied() == 1 and deleted == [flows[0]]  # .9: still no pod's
    assert a._dead == set()  # .10 is c-again's now: its flows were judged as its own


def test_an_adds_cut_reads_its_addresses_flows_a_loads_cut_reads_all(
        agent, monkeypatch) -> None:
    from overlay.policy import conntrack

    a, _, _ = agent
    _listed(a, [_policy(DENY)], [_pod("a", "10.244.1.2")])
    a.sync()
    asked: list[object] = []
    first = threading.Event()

    def listed(_versions: object, only: object = None) -> list[object]:
        asked.append(only)
        first.set()
        if len(asked) == 2:
            a.stop.set()
        return []

    monkeypatch.setattr(conntrack, "list_flows", listed)
    a._cut_wanted.clear()
    a._cut_scope = set()
    a._want_cut([IPv4Address("10.244.1.9")])
    cutter = threading.Thread(target=a.run_cutter, daemon=True)
    cutter.start()
    try:
        assert first.wait(5.0)
        a._want_cut(None)  # a table loaded
        cutter.join(5.0)
    finally:
        a.stop.set()
    assert not cutter.is_alive()
    assert asked == [frozenset({IPv4Address("10.244.1.9")}), None]


def test_a_compile_read_before_a_del_is_not_loaded_after_its_withdrawal(
        agent, monkeypatch) -> None:
    """The compiler read its inputs, then a DEL withdrew its pod before the compiler took
    the load lock: what it read is compiled again, so the gone pod is not put back."""
    a, applied, _ = agent
    _listed(a, [_policy(DENY)], [_pod("a", "10.244.1.2"), _pod("b", "10.244.1.3")])
    a.sync()
    current = a._current
    raced: list[bool] = []

    def racing() -> Any:
        got = current()
        if not raced:  # once: the compile done again under the load lock reads anew
            raced.append(True)
            a._replace(PODS, [_pod("a", "10.244.1.2")])  # b's files and record go
            a.withdraw("c-b", "eth0")
        return got

    monkeypatch.setattr(a, "_current", racing)
    a.sync()
    assert a.withdrawals._value.get() == 1
    assert "10.244.1.3" not in a.loaded.elements["p0_sel"]
    assert host_veth_name("c-b", "eth0") not in a.loaded.index.sources
    assert len(applied.tables) == 1  # the withdrawal left what the compile gives


def test_a_pod_of_several_interfaces_is_left_to_the_compiler(agent) -> None:
    """One veth stands for all of a container's addresses: a DEL of one interface must
    not take the other's out of the isolated sets."""
    a, applied, _ = agent
    disk = a._attachments

    def two_interfaces(s: Any, s6: Any) -> Any:
        return {cid: dataclasses.replace(att, interfaces=2) if cid == "c-a" else att
                for cid, att in disk(s, s6).items()}

    a._attachments = two_interfaces
    _listed(a, [_policy(DENY)], [_pod("a", "10.244.1.2"), _pod("b", "10.244.1.3")])
    a.sync()
    handlers = _handlers(a)
    handlers["DEL"](_del_request("c-a"))
    assert a.withdrawals._value.get() == 0 and "10.244.1.2" in a.loaded.elements["p0_sel"]
    handlers["DEL"](_del_request("c-b"))
    assert a.withdrawals._value.get() == 1


def test_a_withdrawal_that_fails_oddly_never_fails_the_del(agent, monkeypatch) -> None:
    a, applied, _ = agent
    _listed(a, [_policy(DENY)], [_pod("a", "10.244.1.2"), _pod("b", "10.244.1.3")])
    a.sync()

    def broken(w: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(a, "_remove", broken)
    handlers = _handlers(a, delete=lambda req: {"ok": 1})
    assert handlers["DEL"](_del_request("c-b")) == {"ok": 1}
    assert a._dirty.is_set() and "10.244.1.3" in a.loaded.elements["p0_sel"]
    # the kernel's refusal, or a lost answer: the next load replaces the table whole
    monkeypatch.setattr(a, "_remove", applied.remove)
    applied.fail = True
    handlers["DEL"](_del_request("c-b"))
    assert a._unsure


def test_del_forgets_a_pod_the_registry_never_had(agent) -> None:
    a, applied, _ = agent
    _listed(a, [_policy(DENY)], [])
    a.sync()
    handlers = _handlers(a)
    handlers["ADD"](_request())
    handlers["DEL"](_request()._replace(command="DEL"))
    a.sync()
    assert "10.244.1.9" not in applied.tables[-1].text


def test_an_add_whose_rules_cannot_load_is_undone_and_retried(agent) -> None:
    a, applied, _ = agent
    _listed(a, [_policy(DENY)], [])
    a.sync()
    deleted: list[str] = []
    handlers = policyagent.enforcing_handlers(
        {"ADD": lambda req: RESULT, "DEL": lambda req: deleted.append(req.command)}, lambda: a)
    applied.fail = True
    with pytest.raises(CNIError) as e:
        handlers["ADD"](_request())
    assert e.value.code == CNIError.TRY_AGAIN and deleted == ["DEL"]
    assert a._pending == {}


def test_an_add_before_the_first_listing_waits_then_says_try_again(agent, monkeypatch) -> None:
    a, _, _ = agent
    monkeypatch.setattr(policyagent, "ADMIT_TIMEOUT", 0.05)
    with pytest.raises(CNIError) as e:
        a.admit(_request(), RESULT)
    assert e.value.code == CNIError.TRY_AGAIN


def test_cut_denied_deletes_only_flows_the_policies_now_deny(agent, monkeypatch) -> None:
    from overlay.policy import conntrack
    from overlay.policy.conntrack import Flow

    a, _, _ = agent
    allow_b = {**DENY, "metadata": {"name": "from-b", "namespace": "x"},
               "spec": {"podSelector": {}, "ingress": [
                   {"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}}
    _listed(a, [_policy(DENY), _policy(allow_b)],
            [_pod("a", "10.244.1.2"), _pod("b", "10.244.2.2", "n2"),
             _pod("c", "10.244.2.3", "n2")])
    a.sync()
    ip = IPv4Address
    flows = [Flow("TCP", ip("10.244.2.2"), ip("10.244.1.2"), 5000, 80),  # b -> a: allowed
             Flow("TCP", ip("10.244.2.3"), ip("10.244.1.2"), 5001, 80),  # c -> a: denied
             Flow("TCP", ip("10.244.1.1"), ip("10.244.1.2"), 5002, 80),  # the gateway
             Flow("UDP", ip("10.244.2.3"), ip("10.244.2.2"), 5003, 53)]  # not local
    deleted: list[Flow] = []

    def delete(fs: list[Flow]) -> int:
        deleted.extend(fs)
        return len(fs)

    monkeypatch.setattr(conntrack, "list_flows", lambda _versions, _only=None: flows)
    monkeypatch.setattr(conntrack, "delete_flows", delete)
    assert a.cut_denied() == 1 and deleted == [flows[1]]


def test_a_load_is_followed_by_cuts_until_one_finds_nothing(agent, monkeypatch) -> None:
    """The first cut deletes c -> a; a reply in flight meanwhile made a -> c:5001 (this
    node accepts it, c's ingress denies it), which carries the flow on: the next pass
    deletes it, the third finds nothing and the cutter waits for the next load."""
    from overlay.policy import conntrack
    from overlay.policy.conntrack import Flow

    a, _, _ = agent
    _listed(a, [_policy(DENY)], [_pod("a", "10.244.1.2"), _pod("c", "10.244.2.3", "n2")])
    ip = IPv4Address
    forward = Flow("UDP", ip("10.244.2.3"), ip("10.244.1.2"), 5001, 81)
    reversed_ = Flow("UDP", ip("10.244.1.2"), ip("10.244.2.3"), 81, 5001)
    listings = [[forward], [reversed_], []]
    deleted: list[Flow] = []
    done = threading.Event()

    def listed(_versions: object, _only: object = None) -> list[Flow]:
        if len(listings) == 1:
            done.set()
        return listings.pop(0) if listings else []

    def delete(fs: list[Flow]) -> int:
        deleted.extend(fs)
        return len(fs)

    monkeypatch.setattr(conntrack, "list_flows", listed)
    monkeypatch.setattr(conntrack, "delete_flows", delete)
    monkeypatch.setattr(policyagent, "CUT_AGAIN", 0.01)
    cutter = threading.Thread(target=a.run_cutter, daemon=True)
    cutter.start()
    try:
        a.sync()  # loads a table that selects a pod: the cutter wakes
        assert done.wait(5.0)
        assert deleted == [forward, reversed_]
    finally:
        a.stop.set()
        cutter.join(5.0)
    assert not cutter.is_alive() and listings == []


def test_a_table_that_selects_nothing_wants_no_cut(agent) -> None:
    a, _, _ = agent
    _listed(a, [], [_pod("a", "10.244.1.2")])
    a.sync()
    assert not a._cut_wanted.is_set()
    _listed(a, [_policy(DENY)], [_pod("a", "10.244.1.2")])
    a.sync()
    assert a._cut_wanted.is_set()


def test_an_add_after_a_policy_change_compiles_instead(agent) -> None:
    """The element path extends the table as compiled: a policy put since then (not yet
    compiled) must be in force for the new pod, so that ADD compiles."""
    a, applied, _ = agent
    _listed(a, [_policy(DENY)], [_pod("a", "10.244.1.2")])
    a.sync()
    allow = {**DENY, "metadata": {"name": "allow", "namespace": "x"},
             "spec": {"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}}
    a._replace(POLICIES, [_policy(DENY), _policy(allow)])  # the compiler has not run
    a.admit(_request(), RESULT)
    assert applied.scripts == [] and len(applied.tables) == 2
    assert "10.244.1.9" in applied.tables[-1].text
    assert "p0_ingress_allowed" in applied.tables[-1].text  # x/allow is in force
    assert b'overlay_policy_admits_total{path="table"} 1.0' in generate_latest(REGISTRY[0])


def test_after_elements_the_next_compile_replaces_the_table(agent) -> None:
    a, applied, _ = agent
    _listed(a, [_policy(DENY)], [_pod("a", "10.244.1.2")])
    a.sync()
    a.admit(_request(), RESULT)
    assert len(applied.scripts) == 1
    assert b'overlay_policy_admits_total{path="elements"} 1.0' in generate_latest(REGISTRY[0])
    a.forget("c-new")  # DEL before the compiler ran: the table it compiles is the old one's
    a.sync()
    assert len(applied.tables) == 2  # loaded although its text equals the first's
    assert applied.tables[-1].text == applied.tables[0].text
    # as an update of what the kernel holds: the pod's element and its source chain go
    held = applied.helds[-1]
    assert held is not None
    veth = next(iter(held.index.sources.keys() - applied.tables[-1].index.sources.keys()))
    assert nft.update_script(held, applied.tables[-1]) == (
        "delete element inet overlay-policy p0_sel { 10.244.1.9 }\n"
        f"delete chain inet overlay-policy src_{veth}\n")
    assert b"overlay_policy_table_updates_total 1.0" in generate_latest(REGISTRY[0])


def test_a_failed_update_makes_the_next_load_whole(agent) -> None:
    a, applied, _ = agent
    _listed(a, [_policy(DENY)], [_pod("a", "10.244.1.2")])
    a.sync()
    applied.fail = True
    with pytest.raises(CNIError):
        a.admit(_request(), RESULT)  # maybe half loaded, as far as the agent knows
    applied.fail = False
    a.sync()
    assert applied.helds[-1] is None  # replaced whole, not updated


def test_log_denied_reaches_the_compiled_table(tmp_path: Path) -> None:
    applied = Applied()
    store = cast(ObjectStore, SimpleNamespace(prefix=PREFIX))
    a = PolicyAgent(store, "n1", lambda: SUBNET,
                    lambda _nodes: PodRules(lease_subnets=frozenset({SUBNET})),
                    str(tmp_path / "policy-enforced"), REGISTRY[0], threading.Event(),
                    attachments=lambda s, s6: attachments_of_records(a, "n1")(s, s6),
                    apply=applied, update=applied.update, log_denied=True)
    _listed(a, [_policy(DENY)], [_pod("a", "10.244.1.2")])
    assert 'log prefix "overlay-policy denied ingress: "' in a.sync().text


def test_two_records_of_one_ip_are_dropped_logged_and_counted_once(agent, caplog) -> None:
    a, _, _ = agent
    twin = _pod("b2", "10.244.2.2", "n2")
    _listed(a, [_policy(DENY)], [_pod("a", "10.244.1.2"), _pod("b", "10.244.2.2", "n2"), twin])
    for _ in range(3):
        table = a.sync()
    assert "10.244.2.2" not in table.text
    said = [r.message for r in caplog.records if "not used" in r.message]
    assert len(said) == 2 and all("held by another record too" in m for m in said), said
    assert b'overlay_policy_objects_rejected_total{kind="pod"} 2.0' in \
        generate_latest(REGISTRY[0])


def test_node_records_bind_each_subnet_to_one_node() -> None:
    from overlay.cluster.nodes import NodeRecord
    from overlay.lease import IPNetwork, Lease, LeaseAttrs

    def node(name: str, subnet: IPv4Network, public: str) -> KV:
        r = NodeRecord(name, IPv4Address(public), subnet, "02:00:00:00:00:01", "1",
                       datetime(2026, 12, 1, tzinfo=UTC), True)
        return KV(keys.node_key(PREFIX, name), r.encode(), 1)

    leases: dict[IPNetwork, Lease] = {s: Lease(s, LeaseAttrs(IPv4Address(ip))) for s, ip in
              ((SUBNET, "192.168.0.1"), (OTHER, "192.168.0.2"))}
    kvs = [node("n1", OTHER, "192.168.0.2"),  # a record naming this node: its lease decides
           node("n2", OTHER, "192.168.0.2"), node("n3", SUBNET, "192.168.0.1"),
           node("n4", OTHER, "192.168.0.9")]  # another public IP than the lease's: rejected
    assert policyagent.node_subnets("n1", SUBNET, PREFIX, kvs, leases) == {
        "n1": SUBNET, "n2": OTHER}
    kvs.append(node("n5", OTHER, "192.168.0.2"))  # a second claim: neither holds it
    assert policyagent.node_subnets("n1", SUBNET, PREFIX, kvs, leases) == {"n1": SUBNET}
    # decoded once per key revision; a record gone leaves the cache
    cache: dict = {}
    policyagent.node_subnets("n1", SUBNET, PREFIX, kvs, leases, cache)
    assert set(cache) == {kv.key for kv in kvs}
    got = policyagent.node_subnets("n1", SUBNET, PREFIX, kvs[:2], leases, cache)
    assert got == {"n1": SUBNET, "n2": OTHER} and set(cache) == {kvs[0].key, kvs[1].key}


def test_an_add_compiled_while_it_ran_takes_its_identity_from_the_add(agent) -> None:
    # a compile between the ADD's IPAM record and its metadata file sees an attachment of
    # unknown identity (held in quarantine); the ADD's own admission must then compile
    # the pod as the ADD names it, not add elements beside the quarantine's
    from overlay.cni.attachments import LocalPod, PodIdentity
    from overlay.policy.build import QUARANTINE

    a, applied, _ = agent
    disk = {"c-new": LocalPod("c-new", "eth0", (IPv4Address("10.244.1.9"),),
                              PodIdentity("default", "c-new"), identity_known=False)}
    a._attachments = lambda s, s6: {**attachments_of_records(a, "n1")(s, s6), **disk}
    _listed(a, [_policy(DENY)], [_pod("a", "10.244.1.2")])
    a.sync()
    assert QUARANTINE in a.inputs().policies
    handlers = _handlers(a)
    assert handlers["ADD"](_request()) == RESULT
    assert applied.scripts == [] and len(applied.tables) == 2  # compiled, not elements
    got = a.inputs()
    assert QUARANTINE not in got.policies
    assert [p.ref for p in got.pods if IPv4Address("10.244.1.9") in p.ips] == ["x/new"]
    # once the disk holds its metadata, the disk's word replaces the ADD's
    disk["c-new"] = LocalPod("c-new", "eth0", (IPv4Address("10.244.1.9"),),
                             PodIdentity("x", "new"))
    a.sync()
    assert a._pending == {}


def test_cut_lists_only_the_local_pods_families(agent, monkeypatch) -> None:
    """Each conntrack listing walks the kernel's whole table: an IPv4-only node lists
    IPv4 alone, a node with no local pod lists nothing."""
    from overlay.policy import conntrack

    a, _, _ = agent
    asked: list[set[int]] = []

    def listed(versions: set[int], _only: object = None) -> list[object]:
        asked.append(set(versions))
        return []

    monkeypatch.setattr(conntrack, "list_flows", listed)
    _listed(a, [_policy(DENY)], [])
    a.sync()
    assert a.cut_denied() == 0 and asked == []
    _listed(a, [_policy(DENY)], [_pod("a", "10.244.1.2")])
    a.sync()
    assert a.cut_denied() == 0 and asked == [{4}]


def test_a_table_gone_from_the_kernel_is_loaded_again_whole(agent) -> None:
    """``nft flush ruleset`` (Debian's nftables.service on restart), a hand's ``delete
    table``/``delete chain``/``flush table``: the periodic look at the kernel's chains and
    their rule counts finds it and the next pass replaces the table whole; while they are
    ours nothing is loaded."""
    a, applied, _ = agent
    _listed(a, [_policy(DENY)], [_pod("a", "10.244.1.2")])
    a.sync()
    assert a.loaded is not None
    chains = nft.chain_rules(a.loaded)
    assert {"forward", "check_ingress", "check_egress"} <= chains.keys()
    src = next(c for c in chains if c.startswith("src_"))
    kernel: dict[str, dict[str, int] | None] = {"chains": dict(chains)}
    a._kernel_rules = lambda: kernel["chains"]
    a._dirty.clear()  # as the compiler leaves it after its pass
    assert a.check_kernel() and not a._dirty.is_set()
    kernel["chains"] = None  # the table is gone
    assert not a.check_kernel() and a._dirty.is_set()
    a.sync()
    assert len(applied.tables) == 2 and applied.helds[-1] is None  # whole, not updated
    assert b"overlay_policy_table_repairs_total 1.0" in generate_latest(REGISTRY[0])
    kernel["chains"] = {c: n for c, n in chains.items() if c != src}
    assert not a.check_kernel()  # one pod's source check gone alone
    a.sync()
    kernel["chains"] = dict.fromkeys(chains, 0)  # nft flush table: chains kept, rules gone
    assert not a.check_kernel()
    a.sync()
    kernel["chains"] = {**chains, "check_ingress": chains["check_ingress"] + 1}
    assert not a.check_kernel()  # a rule someone added
    a.sync()
    assert b"overlay_policy_table_repairs_total 4.0" in generate_latest(REGISTRY[0])
    kernel["chains"] = dict(chains)
    assert a.check_kernel()


def test_counts_a_load_overtook_are_not_a_reason_to_reload(agent) -> None:
    """The kernel is counted outside the compile lock (an ADD must not wait for it): when
    a load replaced what the agent holds meanwhile, the counts describe neither, and the
    next periodic pass looks again."""
    a, applied, _ = agent
    _listed(a, [_policy(DENY)], [_pod("a", "10.244.1.2")])
    a.sync()
    held = a.loaded
    assert held is not None

    def counted_while_a_load_ran() -> dict[str, int] | None:
        a.loaded = dataclasses.replace(held)  # what that load left (another object)
        return {}

    a._kernel_rules = counted_while_a_load_ran
    assert a.check_kernel() and not a._unsure and len(applied.tables) == 1
    a._kernel_rules = dict
    assert not a.check_kernel()  # the same counts with nothing loaded meanwhile


def test_an_unreadable_kernel_is_not_a_reason_to_reload(agent) -> None:
    a, applied, _ = agent
    _listed(a, [_policy(DENY)], [_pod("a", "10.244.1.2")])
    a.sync()

    def fails() -> dict[str, int] | None:
        raise NetlinkOpError("nfnetlink: the ruleset changed during a dump")

    a._kernel_rules = fails
    assert a.check_kernel() and len(applied.tables) == 1
