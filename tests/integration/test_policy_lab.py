"""NetworkPolicy enforced by overlayd on a 2-node lab (issue 13 item 4), probed end to end.

Pods: x/a and x/b on node1, x/c on node2 (labels pod=a|b|c), plus the lab's
default/pod-node1-1 and default/pod-node2-1. Every pod's responder answers TCP and UDP on
80 and 81. Policies go in through ``overlayctl policy apply``/``delete`` as a user's would,
and every verdict is read back by probing, never from a log line. Tests run in file order
and each leaves no policy behind.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from overlay.lab import system as sysx
from overlay.lab.lab import Lab
from overlay.lab.spec import LabError
from overlay.netlink.pod import host_veth_name

from .support.labfixture import keep_logs, running_lab

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "examples")
PROBE_TIMEOUT = 0.3
ALLOW_A_FROM_B_TCP80 = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-from-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: b}}}]
    ports: [{port: 80}]
"""
DENY_A_AND_C = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-a-c, namespace: x}
spec:
  podSelector: {matchExpressions: [{key: pod, operator: In, values: [a, c]}]}
  policyTypes: [Ingress]
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with running_lab(nodes=2, pods_per_node=1) as lab:
        try:
            lab.add_pod("a", "node1", "x", {"pod": "a"})
            lab.add_pod("b", "node1", "x", {"pod": "b"})
            lab.add_pod("c", "node2", "x", {"pod": "c"})
            yield lab
        except BaseException:
            print("lab logs kept in", keep_logs(lab))
            raise


def _apply(lab: Lab, text: str) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(text)
    try:
        lab.overlayctl("policy", "apply", "-f", f.name)
    finally:
        os.unlink(f.name)


def _apply_file(lab: Lab, name: str) -> None:
    with open(os.path.join(EXAMPLES, name)) as f:
        _apply(lab, f.read())


def _delete(lab: Lab, *refs: str) -> None:
    for ref in refs:
        lab.overlayctl("policy", "delete", ref)


def _passes(lab: Lab, src: str, dst: str, port: int = 80, proto: str = "tcp",
            timeout: float = PROBE_TIMEOUT) -> bool:
    return lab.probe(src, dst, port, proto, timeout=timeout).ok


def _table(lab: Lab, pairs: list[tuple[str, str, int, str]]) -> dict[tuple, bool]:
    with ThreadPoolExecutor(len(pairs)) as pool:
        got = pool.map(lambda p: _passes(lab, *p), pairs)
    return dict(zip(pairs, got, strict=True))


def _until(cond: Callable[[], bool], timeout: float = 10.0) -> float | None:
    """Seconds until ``cond()`` holds (None: it never did within ``timeout``)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if cond():
            return time.monotonic() - start
        time.sleep(0.02)
    return None


ALL = [(s, d, port, proto) for s, d in [("x/b", "x/a"), ("x/c", "x/a"), ("x/a", "x/c"),
                                        ("default/pod-node2-1", "x/a")]
       for port in (80, 81) for proto in ("tcp", "udp")]


def test_without_policy_everything_passes(lab: Lab) -> None:
    assert all(_table(lab, ALL).values())
    for node in ("node1", "node2"):
        assert lab.ready(node)


def test_default_deny_stops_same_node_and_cross_node_ingress(lab: Lab) -> None:
    _apply_file(lab, "default-deny.yaml")
    try:
        assert _until(lambda: not _passes(lab, "x/b", "x/a")) is not None
        assert _until(lambda: not _passes(lab, "x/a", "x/c")) is not None
        got = _table(lab, ALL)
        assert not any(got.values()), got  # every pod of x is isolated for ingress
        assert _passes(lab, "x/a", "default/pod-node2-1")  # egress is not isolated
        assert all(lab.ready(node) for node in ("node1", "node2"))
    finally:
        _delete(lab, "x/default-deny-ingress")
    assert _until(lambda: all(_table(lab, ALL).values())) is not None


def test_an_allow_policy_opens_exactly_its_pairs(lab: Lab) -> None:
    _apply_file(lab, "default-deny.yaml")
    _apply(lab, ALLOW_A_FROM_B_TCP80)
    try:
        assert _until(lambda: _passes(lab, "x/b", "x/a")) is not None
        got = _table(lab, ALL)
        allowed = {k for k, ok in got.items() if ok}
        assert allowed == {("x/b", "x/a", 80, "tcp")}, got
    finally:
        _delete(lab, "x/a-from-b", "x/default-deny-ingress")
    assert _until(lambda: all(_table(lab, ALL).values())) is not None


def test_a_label_change_reaches_the_kernel(lab: Lab) -> None:
    _apply(lab, ALLOW_A_FROM_B_TCP80)
    try:
        assert _until(lambda: not _passes(lab, "x/c", "x/a")) is not None
        lab.overlayctl("pods", "label", "x/c", "pod=b")  # c (node2) now matches the peer
        assert _until(lambda: _passes(lab, "x/c", "x/a")) is not None
        lab.overlayctl("pods", "label", "x/c", "pod=c")
        assert _until(lambda: not _passes(lab, "x/c", "x/a")) is not None
    finally:
        _delete(lab, "x/a-from-b")


def test_a_pod_added_under_a_policy_is_filtered_from_its_first_packet(lab: Lab) -> None:
    _apply_file(lab, "default-deny.yaml")
    try:
        assert _until(lambda: not _passes(lab, "x/b", "x/a")) is not None
        pod = lab.add_pod("d", "node1", "x", {"pod": "d"})  # returns once its ADD did
        # its veth's own source chain was created by the ADD (before it returned)
        chain = f"src_{host_veth_name(pod.container_id, 'eth0')}"
        assert chain in _source_chains(lab, "node1")
        assert not _passes(lab, "x/b", "x/d")
        assert not _passes(lab, "default/pod-node2-1", "x/d", 81, "udp")
    finally:
        lab.del_pod("x/d")
    try:
        # DEL: the pod leaves the registry and the next compile's table has no chain for
        # its veth; what the kernel holds is that table (diagnose finds no drift)
        assert _until(lambda: chain not in _source_chains(lab, "node1")) is not None
        assert _policy_check(lab, "node1")[1]["status"] == "pass"
    finally:
        _delete(lab, "x/default-deny-ingress")


def _source_chains(lab: Lab, node: str) -> set[str]:
    out = json.loads(_nft(lab, node, "-j", "list", "chains"))
    return {c["chain"]["name"] for c in out["nftables"] if "chain" in c
            and c["chain"]["table"] == "overlay-policy" and c["chain"]["name"].startswith("src_")}


def _metrics(lab: Lab, node: str) -> str:
    host, port = lab.healthz_addr(node).rsplit(":", 1)
    status, body = sysx.http_get(lab.spec.node_ns(node), host, int(port), "/metrics",
                                 timeout=2.0)
    assert status == 200
    return body


def _packets(text: str, policy: str, verdict: str) -> float:
    want = (f'overlay_policy_packets_total{{direction="Ingress",policy="{policy}",'
            f'verdict="{verdict}"}} ')
    return sum(float(line[len(want):]) for line in text.splitlines() if line.startswith(want))


def test_per_policy_counters_are_metrics(lab: Lab) -> None:
    _apply_file(lab, "default-deny.yaml")
    _apply(lab, ALLOW_A_FROM_B_TCP80)
    try:
        assert _until(lambda: _passes(lab, "x/b", "x/a") and
                      not _passes(lab, "x/c", "x/a")) is not None
        before = _metrics(lab, "node1")
        for _ in range(3):
            assert _passes(lab, "x/b", "x/a")
            assert not _passes(lab, "x/c", "x/a")
        after = _metrics(lab, "node1")
        assert _packets(after, "x/a-from-b", "allowed") - \
            _packets(before, "x/a-from-b", "allowed") >= 3
        assert _packets(after, "x/default-deny-ingress", "denied") - \
            _packets(before, "x/default-deny-ingress", "denied") >= 3
    finally:
        _delete(lab, "x/a-from-b", "x/default-deny-ingress")


def test_an_add_while_overlayd_is_down_under_a_policy_says_try_again(lab: Lab) -> None:
    _apply_file(lab, "default-deny.yaml")
    try:
        assert _until(lambda: not _passes(lab, "x/b", "x/a")) is not None
        assert lab.stop_daemon("node1")
        try:
            with pytest.raises(LabError, match="11|try again|in force") as e:
                lab.add_pod("e", "node1", "x", {"pod": "e"})
            print("\nADD with overlayd down:", str(e.value).splitlines()[0])
        finally:
            lab.start_daemon("node1")
            lab.wait_ready(["node1"])
    finally:
        _delete(lab, "x/default-deny-ingress")
    with contextlib.suppress(LabError):
        lab.del_pod("x/e")  # the lab may have recorded the failed pod


ALLOW_A_FROM_C_UDP81 = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-from-c, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: c}}}]
    ports: [{port: 81, protocol: UDP}]
"""


def test_br_netfilter_off_makes_a_selecting_node_not_ready(lab: Lab) -> None:
    """Set in node1's own namespace only (the sysctl is per namespace): with it 0, same-node
    pod traffic would bypass the table, so node1 is NotReady while a policy selects x/a."""
    sysctl = "net.bridge.bridge-nf-call-iptables"
    ns = lab.spec.node_ns("node1")
    _apply_file(lab, "default-deny.yaml")
    try:
        assert _until(lambda: not _passes(lab, "x/b", "x/a")) is not None
        assert lab.ready("node1")
        sysx.sysctl(ns, sysctl, "0")
        try:
            assert _until(lambda: not lab.ready("node1"), 15.0) is not None
            assert lab.ready("node2")
        finally:
            sysx.sysctl(ns, sysctl, "1")
        assert _until(lambda: lab.ready("node1"), 15.0) is not None
    finally:
        _delete(lab, "x/default-deny-ingress")


def test_an_established_connection_is_cut_by_a_new_deny(lab: Lab) -> None:
    """One UDP flow x/c -> x/a:81 (one socket: one conntrack entry), opened while a
    policy allows it, gets no answer once that policy goes, although it is established
    (the table accepts established flows first: only deleting the entry stops it)."""
    _apply_file(lab, "default-deny.yaml")
    _apply(lab, ALLOW_A_FROM_C_UDP81)
    a = lab.find_pod("x/a")
    try:
        with sysx.netns_socket(lab.spec.pod_ns(lab.find_pod("x/c").key), socket.AF_INET,
                               socket.SOCK_DGRAM) as sock:
            sock.connect((a.ip, 81))
            sock.settimeout(0.2)

            def answered() -> bool:
                sock.send(b"probe\n")
                try:
                    return bool(sock.recv(256))
                except TimeoutError:
                    return False

            assert _until(lambda: answered() and not _passes(lab, "x/c", "x/a", 80, "udp"))
            _delete(lab, "x/a-from-c")
            assert _until(lambda: not answered(), 5.0) is not None
            time.sleep(0.3)
            assert not any(answered() for _ in range(3))
    finally:
        _delete(lab, "x/default-deny-ingress")
        lab.overlayctl("policy", "delete", "x/a-from-c", check=False)


def test_restarting_overlayd_keeps_the_table_no_allow_window(lab: Lab) -> None:
    _apply_file(lab, "default-deny.yaml")
    _apply(lab, ALLOW_A_FROM_B_TCP80)
    denied, allowed = [], []
    stop = threading.Event()

    def probe_loop() -> None:
        while not stop.is_set():
            denied.append(_passes(lab, "x/c", "x/a", 80, "tcp"))  # cross-node, denied
            allowed.append(_passes(lab, "x/b", "x/a", 80, "tcp"))

    try:
        assert _until(lambda: _passes(lab, "x/b", "x/a") and
                      not _passes(lab, "x/c", "x/a")) is not None
        prober = threading.Thread(target=probe_loop)
        prober.start()
        try:
            time.sleep(0.5)
            assert lab.stop_daemon("node1")
            time.sleep(1.0)  # overlayd is down: the kernel keeps enforcing
            lab.start_daemon("node1")
            lab.wait_ready(["node1"])
            time.sleep(1.0)
        finally:
            stop.set()
            prober.join()
        assert len(denied) >= 5 and not any(denied), denied
        assert all(allowed), allowed
    finally:
        _delete(lab, "x/a-from-b", "x/default-deny-ingress")
    assert _until(lambda: _passes(lab, "x/c", "x/a")) is not None


def _first_send(cond: Callable[[], bool], since: float, timeout: float = 10.0) -> float:
    """Seconds from ``since`` to the start of the first probe for which ``cond`` held
    (when its packet was sent, not when its timeout ran out)."""
    while time.monotonic() - since < timeout:
        sent = time.monotonic()
        if cond():
            return sent - since
        time.sleep(0.01)
    raise AssertionError(f"not enforced within {timeout} s")


def _peer(dst: str) -> str:
    return "x/b" if dst == "x/a" else "x/a"


LATENCY_PROBE_TIMEOUT = 0.05  # the lab's RTT is well under 1 ms: the resolution


def _on_every_node(lab: Lab, want_pass: bool, since: float) -> float:
    """Both nodes probed at once: the later node's first enforced probe."""
    def one(d: str) -> float:
        return _first_send(lambda: _passes(lab, _peer(d), d, 80, "tcp",
                                           LATENCY_PROBE_TIMEOUT) == want_pass, since)
    with ThreadPoolExecutor(2) as pool:
        return max(pool.map(one, ("x/a", "x/c")))


def test_policy_change_to_enforced_latency_on_every_node(lab: Lab) -> None:
    """policy put -> the first packet it denies is dropped, on node1 (x/a) and node2 (x/c),
    and delete -> the first one passes again; 20 rounds, measured from overlayctl's
    return (its etcd write is done); p50/p99 printed for the report."""
    enforced, lifted = [], []
    for _ in range(20):
        _apply(lab, DENY_A_AND_C)
        enforced.append(_on_every_node(lab, False, time.monotonic()))
        _delete(lab, "x/deny-a-c")
        lifted.append(_on_every_node(lab, True, time.monotonic()))
    for what, xs in (("policy put -> denied on every node", enforced),
                     ("policy delete -> allowed on every node", lifted)):
        xs = sorted(xs)
        print(f"\n{what}: p50 {statistics.median(xs) * 1000:.0f} ms, "
              f"p99 {xs[-1] * 1000:.0f} ms (max of {len(xs)})")
    assert statistics.median(enforced) < 1.0


OVERLAYCTL = os.path.join(os.path.dirname(sys.executable), "overlayctl")


def _on_node(lab: Lab, node: str, *args: str) -> subprocess.CompletedProcess:
    """``args`` in ``node``'s namespace with ``overlay-lab exec``'s environment."""
    ns = lab.spec.node_ns(node)
    return subprocess.run(["ip", "netns", "exec", ns, *args], capture_output=True, text=True,
                          timeout=60, env=lab.exec_env(ns, os.environ))


def _trace(lab: Lab, node: str, *args: str) -> tuple[int, dict]:
    p = _on_node(lab, node, OVERLAYCTL, "-o", "json", "trace", *args)
    assert p.stdout and "Traceback" not in p.stderr, p.stderr
    return p.returncode, json.loads(p.stdout)


def test_trace_verdicts_agree_with_the_probes(lab: Lab) -> None:
    _apply_file(lab, "default-deny.yaml")
    _apply(lab, ALLOW_A_FROM_B_TCP80)
    try:
        assert _until(lambda: _passes(lab, "x/b", "x/a")) is not None
        # on the source's node: every hop and the verdict naming the allowing policy
        code, got = _trace(lab, "node1", "x/b", "x/a", "--port", "80")
        assert code == 0 and got["ok"], got
        assert got["policy"]["ingress"]["allowed_by"] == ["x/a-from-b"]
        code, got = _trace(lab, "node2", "x/c", "x/a", "--port", "80")
        assert code == 1 and got["ok"] and got["policy"]["verdict"] == "denied", got
        assert got["policy"]["ingress"]["isolating"] == ["x/a-from-b",
                                                          "x/default-deny-ingress"]
        # every probed pair: the verdict is what the packets do
        probed = _table(lab, ALL)
        for (src, dst, port, proto), passed in probed.items():
            code, got = _trace(lab, "node1", "--policy-only", src, dst, "--port", str(port),
                               "--protocol", proto)
            assert got["policy"]["allowed"] is passed, (src, dst, port, proto, got)
            assert code == (0 if passed else 1)
    finally:
        _delete(lab, "x/a-from-b", "x/default-deny-ingress")
    assert _until(lambda: all(_table(lab, ALL).values())) is not None


def _policy_check(lab: Lab, node: str) -> tuple[int, dict]:
    p = _on_node(lab, node, OVERLAYCTL, "-o", "json", "diagnose", "--no-probe")
    assert p.stdout and "Traceback" not in p.stderr, p.stderr
    report = json.loads(p.stdout)
    return p.returncode, next(c for c in report["checks"] if c["name"] == "policy-table")


def _nft(lab: Lab, node: str, *args: str) -> str:
    return sysx.run(sysx.in_netns(lab.spec.node_ns(node), ["nft", *args])).stdout


def test_diagnose_finds_a_hand_edited_policy_table(lab: Lab) -> None:
    for node in ("node1", "node2"):  # no policy: an empty table, or none
        assert _policy_check(lab, node)[1]["status"] == "pass"
    _apply_file(lab, "default-deny.yaml")
    _apply(lab, ALLOW_A_FROM_B_TCP80)
    try:
        assert _until(lambda: _passes(lab, "x/b", "x/a")) is not None
        assert _until(lambda: not _passes(lab, "x/c", "x/a")) is not None
        for node in ("node1", "node2"):
            check = _policy_check(lab, node)[1]
            assert check["status"] == "pass" and "as compiled" in check["found"], check
        table = ("inet", "overlay-policy")
        forward = _nft(lab, "node1", "list", "chain", *table, "forward")
        isolated = next(w[1:] for line in forward.splitlines() if "jump check_ingress" in line
                        for w in line.split() if w.startswith("@"))  # the isolated pods' set
        _nft(lab, "node1", "add", "element", *table, isolated, "{ 10.244.99.99 }")
        code, check = _policy_check(lab, "node1")
        assert code == 1 and check["status"] == "fail", check
        assert f"set {isolated}: extra element 10.244.99.99" in check["found"]
        assert "restart overlayd" in check["fix"]
        _nft(lab, "node1", "delete", "element", *table, isolated, "{ 10.244.99.99 }")
        listing = _nft(lab, "node1", "-a", "list", "chain", *table, "check_ingress")
        handle = next(line.split("# handle ")[1] for line in listing.splitlines()
                      if line.strip().startswith("drop "))
        _nft(lab, "node1", "delete", "rule", *table, "check_ingress", "handle", handle)
        code, check = _policy_check(lab, "node1")
        assert code == 1 and "chain check_ingress: rule missing: drop" in check["found"]
        assert _policy_check(lab, "node2")[1]["status"] == "pass"  # its own table is fine
        _nft(lab, "node1", "add", "rule", *table, "check_ingress", "drop")
        assert _policy_check(lab, "node1")[1]["status"] == "pass"
    finally:
        _delete(lab, "x/a-from-b", "x/default-deny-ingress")
    assert _until(lambda: all(_table(lab, ALL).values())) is not None


def _our_chains(lab: Lab, node: str) -> set[str]:
    out = json.loads(_nft(lab, node, "-j", "list", "chains", "inet"))
    return {c["chain"]["name"] for c in out["nftables"] if "chain" in c
            and c["chain"]["table"] == "overlay-policy"}


def test_a_policy_table_deleted_behind_overlayds_back_is_loaded_again(lab: Lab) -> None:
    """As ``systemctl restart nftables`` does on Debian (its nftables.conf begins with
    ``flush ruleset``): the table goes while nothing changes in etcd. overlayd looks at
    its chains and their rule counts on every periodic pass and loads the table again
    whole; x/c -> x/a is denied again within that pass. Then one source chain deleted,
    then ``flush table`` (chains kept, rules gone)."""
    from overlay.daemon.policyagent import RESYNC

    _apply_file(lab, "default-deny.yaml")
    try:
        assert _until(lambda: not _passes(lab, "x/c", "x/a")) is not None
        chains = _our_chains(lab, "node1")
        assert {"forward", "check_ingress"} <= chains
        repairs = _counter(_metrics(lab, "node1"), "overlay_policy_table_repairs_total")
        _nft(lab, "node1", "delete", "table", "inet", "overlay-policy")
        assert _our_chains(lab, "node1") == set()
        took = _until(lambda: _our_chains(lab, "node1") == chains, timeout=RESYNC + 5.0)
        assert took is not None, "the table was not loaded again"
        assert not _passes(lab, "x/c", "x/a")
        assert _counter(_metrics(lab, "node1"), "overlay_policy_table_repairs_total") == \
            repairs + 1
        # a source chain gone alone (one pod's spoofing check) is noticed as well
        victim = sorted(c for c in chains if c.startswith("src_"))[0]
        _nft(lab, "node1", "delete", "chain", "inet", "overlay-policy", victim)
        assert _until(lambda: victim in _our_chains(lab, "node1"),
                      timeout=RESYNC + 5.0) is not None
        # ``flush table`` keeps every chain and empties them: the rule counts tell
        assert _until(lambda: not _passes(lab, "x/c", "x/a")) is not None
        _nft(lab, "node1", "flush", "table", "inet", "overlay-policy")
        assert _our_chains(lab, "node1") == chains  # (a pass may refill it at any moment)
        assert _until(lambda: not _passes(lab, "x/c", "x/a"),
                      timeout=RESYNC + 5.0) is not None, "the emptied table was not refilled"
        assert _counter(_metrics(lab, "node1"), "overlay_policy_table_repairs_total") == \
            repairs + 3
    finally:
        _delete(lab, "x/default-deny-ingress")
    assert _until(lambda: all(_table(lab, ALL).values())) is not None


def _counter(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(f"{name} "))


def test_values_nested_too_deeply_in_etcd_are_rejected_alone(lab: Lab) -> None:
    """Any node can write etcd: a policy, a namespace and a pod record nested a few
    thousand levels deep (json raises RecursionError, under every size bound) must each be
    one rejection, and the policy agent go on enforcing what is valid."""
    from overlay.lab.spec import ETCD_KEY_PREFIX

    from .support.rogue_etcd import Op, run_ops

    deep = b'{"a":' * 5000 + b"1" + b"}" * 5000
    keys = [f"{ETCD_KEY_PREFIX}/{k}".encode() for k in
            ("policies/x/deep", "namespaces/deep", "pods/x/deep")]
    marks = {node: os.path.getsize(lab.daemon_log(node)) for node in ("node1", "node2")}
    run_ops(lab.spec.underlay_ns, lab.spec.etcd_endpoint, [Op("put", k, deep) for k in keys])
    try:
        _apply_file(lab, "default-deny.yaml")
        try:
            assert _until(lambda: not _passes(lab, "x/c", "x/a")) is not None
            assert _passes(lab, "x/a", "default/pod-node2-1")  # default is not isolated
            for node in ("node1", "node2"):
                assert lab.ready(node)
                with open(lab.daemon_log(node)) as f:
                    f.seek(marks[node])
                    log = f.read()
                assert "Traceback" not in log, log[-3000:]
                assert "nested too deeply" in log, log[-3000:]
            listed = _on_node(lab, "node1", OVERLAYCTL, "policy", "get")
            assert "rejected: value is not JSON: nested too deeply" in listed.stdout
        finally:
            _delete(lab, "x/default-deny-ingress")
    finally:
        run_ops(lab.spec.underlay_ns, lab.spec.etcd_endpoint, [Op("del", k) for k in keys])
    assert _until(lambda: all(_table(lab, ALL).values())) is not None


ALLOW_A_FROM_TRUSTED = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-from-trusted, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: trusted}}}]
"""


def test_a_hostile_etcd_writer_cannot_widen_a_policy_or_lift_isolation(lab: Lab) -> None:
    """Any node can write etcd. x/a admits only ``app=trusted`` pods; each write below
    was one ``etcdctl put`` that made a denied pair pass (or took x/a's isolation or
    its source check away) before pods were held to their node records and the local
    pods came from the node's disk. Every verdict is probed, over 2 s per write."""
    from overlay.cluster.keys import pod_key
    from overlay.cluster.pods import SOURCE_CNI, Label, PodRecord, encode_pod
    from overlay.lab.spec import ETCD_KEY_PREFIX

    from .support.rogue_etcd import Op, run_ops

    a, b, c = (lab.find_pod(ref) for ref in ("x/a", "x/b", "x/c"))
    ip = {p.name: ipaddress.ip_address(p.ip or "") for p in (a, b, c)}
    unused = ipaddress.ip_network(lab.node_subnet("node1") or "").network_address + 200

    def record(name: str, addr: ipaddress.IPv4Address | ipaddress.IPv6Address, node: str,
               cid: str, labels: dict[str, str]) -> bytes:
        return encode_pod(PodRecord("x", name, (addr,), node, cid, "eth0",
                                    {k: Label(v, SOURCE_CNI) for k, v in labels.items()}))

    trusted = {"app": "trusted"}
    writes = {
        # another node's name with node1's pod IP (x/b, denied), labelled trusted
        "forged-b": record("forged-b", ip["b"], "node2", "c0ffee01", trusted),
        # node1's name with node2's pod IP (x/c, denied)
        "forged-c": record("forged-c", ip["c"], "node1", "c0ffee02", trusted),
        # a node that does not exist, with x/c's IP
        "forged-c9": record("forged-c9", ip["c"], "node9", "c0ffee03", trusted),
        # x/a's container ID with an unused address of node1's: x/a's source check
        "twin-a": record("twin-a", unused, "node1", a.container_id, {"pod": "a"}),
    }
    key = {n: f"{ETCD_KEY_PREFIX}/pods/x/{n}" for n in ("a", *writes)}
    assert pod_key(ETCD_KEY_PREFIX, "x", "a") == key["a"]
    veth = host_veth_name(a.container_id, "eth0")

    def put(name: str, value: bytes) -> None:
        run_ops(lab.spec.underlay_ns, lab.spec.etcd_endpoint, [Op("put", key[name].encode(),
                                                                  value)])

    def denied_throughout() -> None:
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            got = _table(lab, [("x/b", "x/a", 80, "tcp"), ("x/c", "x/a", 80, "tcp"),
                               ("x/c", "x/a", 81, "udp")])
            assert not any(got.values()), got
        chain = _nft(lab, "node1", "list", "chain", "inet", "overlay-policy", f"src_{veth}")
        assert str(ip["a"]) in chain and str(unused) not in chain, chain

    _apply(lab, ALLOW_A_FROM_TRUSTED)
    try:
        assert _until(lambda: not _passes(lab, "x/c", "x/a")) is not None
        for name, value in writes.items():
            put(name, value)
            denied_throughout()
        # x/a's own record moved to a node that does not exist, then garbled, then gone
        put("a", record("a", ip["a"], "node9", a.container_id, {"pod": "a"}))
        denied_throughout()
        put("a", b"{garbage")
        denied_throughout()
        run_ops(lab.spec.underlay_ns, lab.spec.etcd_endpoint, [Op("del", key["a"].encode())])
        denied_throughout()
        with open(lab.daemon_log("node2")) as f:
            log = f.read()
        assert "pod " + key["forged-b"] + " rejected" in log, log[-3000:]
        assert "Traceback" not in log
    finally:
        run_ops(lab.spec.underlay_ns, lab.spec.etcd_endpoint,
                [Op("del", key[n].encode()) for n in writes])
        _delete(lab, "x/a-from-trusted")
    # the publisher writes x/a's record again (its next pass; RESYNC at the latest)
    assert _until(lambda: _policy_check(lab, "node1")[1]["status"] == "pass", 40) is not None
    assert _until(lambda: all(_table(lab, ALL).values())) is not None


_SYN_ANSWERED = """\
import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
s.settimeout(float(sys.argv[3]))
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
except ConnectionRefusedError:
    pass  # a RST came back: the SYN reached the pod
except OSError:
    sys.exit(1)  # no answer: dropped on the way
"""


def _syn_answered(netns: str, ip: str, port: int = 80, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether a TCP SYN from ``netns`` to ``ip`` is answered (accepted or refused)."""
    got = sysx.run(sysx.in_netns(netns, [sys.executable, "-c", _SYN_ANSWERED, ip, str(port),
                                         str(timeout)]), check=False, timeout=timeout + 10)
    return got.returncode == 0


def test_a_second_container_under_a_pods_name_is_isolated_too(lab: Lab) -> None:
    """A sandbox made again before its old one's DEL (or any runtime's second ADD under
    one namespace/name): both containers are this node's pods. Only the first is
    published, but the second must be isolated from its first packet on and stay so
    after its ADD (it was: by the ADD's own admission, then dropped by the next
    compile, which took only one container per name)."""
    from overlay.lab.runtime import Attachment

    _apply(lab, DENY_A_AND_C)
    ns = f"{lab.spec.prefix}-twin"
    cid = f"{lab.spec.prefix}-twin{os.getpid()}"
    att = Attachment(cid, ns, "eth0", "IgnoreUnknown=1;K8S_POD_NAMESPACE=x;K8S_POD_NAME=a",
                     labels=(("pod", "a"),))
    runtime = lab.cni_runtime("node1")
    sysx.ensure_netns(ns)
    result = None
    try:
        assert _until(lambda: not _passes(lab, "x/b", "x/a")) is not None
        b_ns = lab.spec.pod_ns(lab.find_pod("x/b").key)
        # the probe can tell: an unselected address answers (RST), the pod x/a drops
        assert _syn_answered(b_ns, str(lab.find_pod("x/b").ip))
        assert not _syn_answered(b_ns, str(lab.find_pod("x/a").ip))
        result = runtime.add(att)
        twin = ipaddress.ip_interface(result["ips"][0]["address"]).ip
        deadline = time.monotonic() + 3.0  # several compiles after the ADD
        probes = 0
        while time.monotonic() < deadline:
            assert not _syn_answered(b_ns, str(twin)), f"x/a's twin {twin} reachable"
            probes += 1
        assert probes >= 3
        assert f"src_{host_veth_name(cid, 'eth0')}" in _source_chains(lab, "node1")
        assert _policy_check(lab, "node1")[1]["status"] == "pass"
    finally:
        if result is not None:
            runtime.delete(att, result)
        sysx.delete_netns(ns)
        _delete(lab, "x/deny-a-c")


def test_a_damaged_metadata_file_never_lifts_a_pods_isolation(lab: Lab) -> None:
    """x/a's metadata file on node1 garbled, removed, or a directory in its place: who
    x/a is is no longer known, so it stays isolated (both ways, while a policy is in
    force) instead of turning into an unselected default/<container ID>. It was: x/b
    reached x/a within seconds of the file going bad; a directory there crashed the
    pod publisher and the policy compile on every pass, freezing the table."""
    a = lab.find_pod("x/a")
    meta = os.path.join(lab.spec.node_file("node1", "ipam"), lab.cni_runtime("node1").network,
                        "pods", f"{a.container_id}@eth0.json")
    with open(meta, "rb") as fb:
        good = fb.read()

    def restore() -> None:
        if os.path.isdir(meta) and not os.path.islink(meta):
            os.rmdir(meta)
        with open(meta + ".tmp", "wb") as out:
            out.write(good)
        os.replace(meta + ".tmp", meta)

    _apply(lab, DENY_A_AND_C)
    try:
        assert _until(lambda: not _passes(lab, "x/b", "x/a")) is not None
        assert _passes(lab, "x/a", "x/b")  # x/a's egress is not isolated
        for damage in ("garbled", "removed", "directory"):
            if damage == "garbled":  # in place: no directory's mtime moves
                with open(meta, "r+") as bad:
                    bad.write('{"containerID": trunc')
            else:
                os.unlink(meta)
            if damage == "directory":
                os.mkdir(meta)
            # x/a is quarantined: its egress goes too; never does x/b reach it. No etcd
            # key changes: the agent sees the disk move (it compiled at RESYNC, 10 s, only)
            took = _until(lambda: not _passes(lab, "x/a", "x/b"), timeout=5.0)
            assert took is not None, damage
            print(f"\n{damage}: x/a quarantined after {took:.2f} s")
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                assert not any(_table(lab, [("x/b", "x/a", 80, "tcp"),
                                            ("x/b", "x/a", 81, "udp")]).values()), damage
            check = _policy_check(lab, "node1")[1]
            assert check["status"] == "warn" and a.container_id in check["found"], check
            restore()
            assert _until(lambda: _passes(lab, "x/a", "x/b")) is not None, damage
        with open(lab.daemon_log("node1")) as logf:
            log = logf.read()
        assert "Traceback" not in log and "isolated both ways" in log
    finally:
        if os.path.isdir(meta) or not os.path.exists(meta):
            restore()
        _delete(lab, "x/deny-a-c")
