"""Enforces NetworkPolicy on this node: etcd's policies, namespaces and pods -> one
nftables table (``overlay.policy.nft``), replaced whole whenever what it says changes.

Four watches (``policies/``, ``namespaces/``, ``pods/``, ``nodes/``) keep the raw
objects; each is
judged by its kind's one rule when the table is compiled (a bad one is rejected alone,
logged once per revision and counted, and never widens what is allowed). A burst of
changes is compiled once (``DEBOUNCE``), and the table is loaded (one ``nft -f``
transaction) only when its text differs from the one loaded last.

No allow-all window: nothing is loaded before all four prefixes have been listed once,
so at start the table the previous overlayd left in the kernel stays in force until a
complete new one replaces it, and nothing is ever flushed, on restart or shutdown.

The warm CNI server calls :meth:`PolicyAgent.admit` after an ADD: the table is compiled
with the new pod and loaded before the runtime hears of the pod, so a selected pod's
first packet is already filtered; after a DEL, :meth:`PolicyAgent.withdraw` takes the
pod's elements out the same way. While a valid policy exists the agent keeps a marker
file beside subnet.env (``overlay.subnetenv.policy_marker_path``) so the plugin's
in-process fallback, which knows no policy, answers "try again" (11) instead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from ipaddress import IPv6Network, ip_interface
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from overlay.cluster import keys
from overlay.cluster.nodes import NodeRecord, judge_node, judge_node_lease
from overlay.cluster.pods import PodRecord, PodRules, believed_node_subnets, judge_pod
from overlay.cluster.store import KV, ObjectStore
from overlay.cni import podmeta
from overlay.cni.attachments import AttachmentCache, LocalPod as Attachment
from overlay.cni.skel import Handler, Request
from overlay.errors import CNIError, OverlayError
from overlay.lease import IPAddress, IPNetwork, Rejection
from overlay.netlink.pod import host_veth_name
from overlay.policy import conntrack, nft
from overlay.policy.build import Inputs, assemble
from overlay.policy.model import PolicyError
from overlay.policy.objects import Namespace, parse_namespace_kv, parse_policy_kv
from overlay.policy.semantics import Host, Pod, allowed
from overlay.subnetenv import policy_marker_path
from overlay.util.fsutil import atomic_write
from overlay.util.proc import ProgramError, run

if TYPE_CHECKING:
    from overlay.daemon.daemon import Daemon

log = logging.getLogger(__name__)

DEBOUNCE = 0.05  # seconds of quiet that end a burst of changes
DEBOUNCE_MAX = 0.25  # a continuous stream is still compiled this often
RESYNC = 10.0  # seconds: compile again anyway (a new lease may accept a pod)
# seconds between looks at the data dir; a change is acted on once it held still for one
# look (an ADD in flight moves it too, and its own admission compiles it)
DISK_POLL = 0.25
RETRY = 1.0  # seconds after nft refused a table
CUT_AGAIN = 0.5  # seconds: after a cut that deleted entries, look again this much later
CUT_PASSES = 3  # at most this many cuts follow one load
ADMIT_TIMEOUT = 10.0  # an ADD waits at most this for the first complete listing
BRIDGE_SYSCTL = "/proc/sys/net/bridge/bridge-nf-call-iptables"
# IPv6's own knob: bridged IPv6 reaches the inet forward hook only while it is 1, whatever
# the IPv4 one says (an IPv6-only or dual-stack node's pods depend on it)
BRIDGE_SYSCTL6 = "/proc/sys/net/bridge/bridge-nf-call-ip6tables"
BRIDGE_SYSCTLS = {4: BRIDGE_SYSCTL, 6: BRIDGE_SYSCTL6}

POLICIES, NAMESPACES, PODS, NODES = "policy", "namespace", "pod", "node"
# node records say which node holds which subnet: a pod record is believed only inside
# the subnet of the node it names (``PodRules.with_nodes``)
KINDS = (POLICIES, NAMESPACES, PODS, NODES)


def bridge_filtering_problem(path: str = BRIDGE_SYSCTL) -> str | None:
    """Why bridged pod-to-pod traffic would bypass the table, or None: it reaches the
    inet forward hook only while br_netfilter's ``bridge-nf-call-iptables`` is 1."""
    try:
        with open(path, encoding="ascii") as f:
            value = f.read().strip()
    except FileNotFoundError:
        return (f"{path} is absent (br_netfilter not loaded): same-node pod traffic "
                "bypasses NetworkPolicy")
    except OSError as e:
        return f"cannot read {path}: {e.strerror}"
    return None if value == "1" else (f"{path} is {value}, not 1: same-node pod traffic "
                                      "bypasses NetworkPolicy")


def bridge_problem_for(families: Iterable[int],
                       paths: Mapping[int, str] = BRIDGE_SYSCTLS) -> str | None:
    """Why bridged traffic of one of the IP versions ``families`` (the local pods') would
    bypass the table, or None: each family has its own br_netfilter sysctl."""
    return next((p for v in sorted(set(families))
                 if (p := bridge_filtering_problem(paths[v])) is not None), None)


class _Judged:
    """Each key's verdict, kept while its revision is unchanged (10 000 pods are not
    decoded again for every change); a rejection is logged and counted once per key
    revision, even when the rule changes and everything is judged again."""

    def __init__(self, kind: str, rejected: Counter):
        self.kind = kind
        self._rejected = rejected
        self._cache: dict[str, tuple[int, object]] = {}
        self._logged: set[tuple[str, int]] = set()

    def judge(self, kvs: Mapping[str, KV], rule: Callable[[KV], object]) -> list[object]:
        out = []
        cache: dict[str, tuple[int, object]] = {}
        for key, kv in kvs.items():
            held = self._cache.get(key)
            if held is None or held[0] != kv.mod_revision:
                held = (kv.mod_revision, self._one(kv, rule))
            cache[key] = held
            if not isinstance(held[1], Rejection):
                out.append(held[1])
        self._cache = cache
        self._logged &= {(k, rev) for k, (rev, _) in cache.items()}
        return out

    def _one(self, kv: KV, rule: Callable[[KV], object]) -> object:
        try:
            got = rule(kv)
        except PolicyError as e:
            got = Rejection(kv.key, "invalid", str(e), kv.mod_revision)
        if isinstance(got, Rejection) and (kv.key, kv.mod_revision) not in self._logged:
            self._logged.add((kv.key, kv.mod_revision))
            self._rejected.labels(self.kind).inc()
            log.warning("%s %s rejected: %s (not enforced)", self.kind, kv.key, got.detail)
        return got

    def count(self) -> None:
        """One more key not used (a record ``assemble`` did not believe)."""
        self._rejected.labels(self.kind).inc()

    def forget(self) -> None:
        """Judge everything again (the pods' rule changed: a lease came or went)."""
        self._cache = {}


class PolicyCounters(Collector):
    """The loaded table's named counters as ``overlay_policy_packets_total``, read from
    the kernel at every scrape (one ``nft -j list counters``)."""

    def __init__(self, table: Callable[[], nft.CompiledTable | None]):
        self._table = table

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "overlay_policy_packets", "Packets opening a connection that a NetworkPolicy "
            "allowed or denied on this node (see overlay.policy.nft.PolicyCounter)",
            labels=["policy", "direction", "verdict"])
        table = self._table()
        if table is not None and table.counters:
            for name, packets in _read_counters().items():
                what = table.counters.get(name)
                if what is not None and what.policy:
                    family.add_metric([what.policy, what.direction, what.verdict], packets)
        yield family


def _read_counters() -> dict[str, int]:
    """Our table's named counters from the kernel ({} if it cannot be read)."""
    try:
        out = run(["nft", "-j", "list", "counters", "table", nft.FAMILY, nft.TABLE],
                  check=True, timeout=5.0).stdout
        items = json.loads(out).get("nftables", [])
    except (ProgramError, ValueError, AttributeError) as e:
        log.debug("policy counters not read: %s", e)
        return {}
    return {c["name"]: int(c.get("packets", 0)) for item in items
            if isinstance(item, dict) and isinstance(c := item.get("counter"), dict)
            and "name" in c}


_PodsKey = tuple[frozenset[nft.LocalPod], frozenset[Pod]]


def _pods_key(got: Inputs) -> _PodsKey:
    """What a compile reads of the pods (their labels and ports too: ``Pod`` compares
    them), apart from the policies and namespaces the generation stands for."""
    return frozenset(got.local), frozenset(got.pods)


def _addresses(local: Iterable[nft.LocalPod]) -> set[IPAddress]:
    return {ip for lp in local for ip in lp.pod.ips}


def _few(names: Iterable[str]) -> str:
    """At most five of ``names``, for a log line."""
    return ", ".join(sorted(names)[:5]) or "none"


class PolicyAgent:
    """Watches the objects, compiles and loads this node's table; see the module."""

    def __init__(self, store: ObjectStore, node: str,
                 own_subnet: Callable[[], IPNetwork | None],
                 pod_rules: Callable[[Iterable[KV]], PodRules], marker: str,
                 metrics: CollectorRegistry, stop: threading.Event, *,
                 attachments: Callable[[IPNetwork | None, IPv6Network | None],
                                       Mapping[str, Attachment]],
                 leases_listed: Callable[[], bool] = lambda: True,
                 disk_moved: Callable[[], bool] = lambda: False,
                 apply: Callable[..., bool] = nft.apply_table,
                 bridge_problem: Callable[[Iterable[int]], str | None] = bridge_problem_for,
                 update: Callable[[nft.Admission], None] = nft.apply_admission,
                 remove: Callable[[nft.Withdrawal], None] = nft.apply_withdrawal,
                 log_denied: bool = False,
                 own_ipv6_subnet: Callable[[], IPv6Network | None] = lambda: None,
                 kernel_rules: Callable[[], dict[str, int] | None] = nft.kernel_rules):
        self.store, self.node, self.stop = store, node, stop
        self._own_subnet, self._pod_rules, self.marker = own_subnet, pod_rules, marker
        self._own_ipv6_subnet = own_ipv6_subnet
        # this node's pods as its disk holds them (the local pods: never etcd's word)
        self._attachments = attachments
        self._disk_moved = disk_moved  # whether they changed since the last look (stats)
        self._dropped_logged: set[tuple[str, int]] = set()
        self._apply, self._bridge_problem = apply, bridge_problem
        self._update, self._remove, self.log_denied = update, remove, log_denied
        self._kernel_rules = kernel_rules
        self._leases_listed = leases_listed  # pods are judged against the leases
        self._kvs: dict[str, dict[str, KV]] = {kind: {} for kind in KINDS}
        self._listed: set[str] = set()
        self._state_lock = threading.Lock()  # _kvs, _listed, _generation
        # bumped by every policy or namespace change the watches see (what decides a new
        # pod's rules; other pods' changes reach the kernel with the compiler's next pass,
        # as they would with the ADD's)
        self._generation = 0
        self._compiled_generation = -1  # the generation the loaded table was compiled at
        self._inputs_lock = threading.Lock()  # inputs() (its judged caches), one compile
        self._compile_lock = threading.Lock()  # loaded and the kernel: one load at a time
        self._dirty = threading.Event()
        self._pending: dict[str, nft.LocalPod] = {}  # admitted by ADD, not in the registry yet
        self._rules: PodRules | None = None
        self.loaded: nft.CompiledTable | None = None  # what the kernel holds (by us)
        self._loaded_refs: frozenset[str] = frozenset()  # the pods it was compiled with
        self._loaded_local: dict[str, nft.LocalPod] = {}  # and the local ones, by veth
        self._spanning: frozenset[str] = frozenset()  # those of several interfaces
        self._withdrawn = 0  # withdrawals so far: a compile read before one is stale
        # the pods ``loaded`` is exactly the compile of (an ADD's admitted one included)
        self._held_key: _PodsKey = (frozenset(), frozenset())
        self._unsure = False  # an update may have half failed: replace the table whole
        self.complete = threading.Event()  # every prefix listed once
        self.first_load = threading.Event()  # a complete table was loaded
        self.selecting = False  # a policy selects a local pod
        self.bridge_problem: str | None = None
        self._cut_wanted = threading.Event()  # a table loaded: its denied flows may live
        # what the next cut looks at: None every flow (a table loaded), else the flows of
        # these addresses (ADDs': a new pod changes what no other flow may do)
        self._cut_scope: set[IPAddress] | None = set()
        self._cut_lock = threading.Lock()
        # addresses of local pods gone (DEL) since the last cut: their entries are dead,
        # and would carry the connections of whichever pod IPAM hands them to next
        self._dead: set[IPAddress] = set()
        self._conntrack_problem: str | None = None
        rejected = Counter("overlay_policy_objects_rejected", "Keys under policies/, "
                           "namespaces/ or pods/ rejected by their kind's rule (once per "
                           "key revision)", ["kind"], registry=metrics)
        self._judged = {kind: _Judged(kind, rejected) for kind in KINDS}
        self.loads = Counter("overlay_policy_table_loads", "Policy tables loaded into the "
                             "kernel whole (a policy, rule or set appeared or went)",
                             registry=metrics)
        self.updates = Counter("overlay_policy_table_updates", "Policy tables changed in "
                               "place: only set elements and source chains (a pod came, "
                               "went or changed)", registry=metrics)
        self.repairs = Counter("overlay_policy_table_repairs", "Policy tables loaded again "
                               "whole because the kernel no longer held the loaded one's "
                               "chains (deleted by another hand, e.g. nft flush ruleset)",
                               registry=metrics)
        self.admits = Counter("overlay_policy_admits", "CNI ADDs whose pod was put into the "
                              "policy table before the ADD returned, by how: 'elements' "
                              "(added to the loaded table's sets) or 'table' (compiled and "
                              "replaced whole)", ["path"], registry=metrics)
        self.withdrawals = Counter("overlay_policy_withdrawals", "CNI DELs whose pod "
                                   "was taken out of the policy table (its elements and "
                                   "source chain) before the DEL returned; the others wait "
                                   "for the compiler's next pass", registry=metrics)
        Gauge("overlay_policy_selecting", "1 while a NetworkPolicy selects a pod of "
              "this node", registry=metrics).set_function(lambda: int(self.selecting))
        metrics.register(PolicyCounters(lambda: self.loaded))

    # -- watches --------------------------------------------------------------------
    def _base(self, kind: str) -> str:
        return {POLICIES: keys.policies_prefix, NAMESPACES: keys.namespaces_prefix,
                PODS: keys.pods_prefix, NODES: keys.nodes_prefix}[kind](self.store.prefix)

    def run_watch(self, kind: str) -> None:
        """List ``kind``'s prefix, then follow it (a compaction re-lists it whole)."""
        base = self._base(kind)
        kvs, revision = self.store.list(base)
        self._replace(kind, kvs)
        for batch in self.store.watch(base, revision + 1, self.stop):
            if batch.snapshot is not None:
                self._replace(kind, batch.snapshot)
                continue
            with self._state_lock:
                held = self._kvs[kind]
                for c in batch.changes:
                    if c.value is None:
                        held.pop(c.key, None)
                    else:
                        held[c.key] = KV(c.key, c.value, c.mod_revision)
                self._generation += kind in (POLICIES, NAMESPACES)
            self._dirty.set()

    def _replace(self, kind: str, kvs: Iterable[KV]) -> None:
        with self._state_lock:
            self._kvs[kind] = {kv.key: kv for kv in kvs}
            self._generation += kind in (POLICIES, NAMESPACES)
            self._listed.add(kind)
            if self._listed == set(KINDS):
                self.complete.set()
        self._dirty.set()

    # -- compile and load -------------------------------------------------------------
    def run_compiler(self) -> None:
        """Compile after each burst of changes, when the node's attachments on disk
        change (looked at every DISK_POLL seconds: a damaged metadata file changes no
        etcd key), and every RESYNC seconds."""
        last = 0.0
        while not self.stop.is_set():
            due = RESYNC - (time.monotonic() - last)
            if not self._dirty.wait(max(0.0, min(due, DISK_POLL))):
                if due > DISK_POLL and not self._disk_moved():
                    continue
                if due <= DISK_POLL:
                    self.check_kernel()  # the periodic pass: is the table still there?
                    if self._dead:
                        self._want_cut(())  # gone pods' entries (no ADD needed them)
                self._dirty.set()  # the periodic pass, or the disk moved
            if self.stop.is_set():
                return
            self._settle()
            if not self.complete.is_set() or not self._leases_listed():
                self._dirty.clear()
                self.stop.wait(DEBOUNCE)  # the leases' listing sets no event of ours
                self._dirty.set()
                continue
            self._dirty.clear()
            try:
                self.sync()
            except OverlayError as e:
                log.warning("policy table not loaded: %s; retrying in %.0fs", e, RETRY)
                self._dirty.set()
                self.stop.wait(RETRY)
            last = time.monotonic()

    def _settle(self) -> None:
        """Wait for DEBOUNCE of quiet (at most DEBOUNCE_MAX): a burst is one compile."""
        deadline = time.monotonic() + DEBOUNCE_MAX
        while time.monotonic() < deadline:
            self._dirty.clear()
            if not self._dirty.wait(DEBOUNCE):
                return
        self._dirty.set()

    def inputs(self) -> Inputs:
        """The judged objects of the current state (the pending ADDs included)."""
        with self._state_lock:
            raw = {kind: dict(kvs) for kind, kvs in self._kvs.items()}
        rules = self._pod_rules(raw[NODES].values())
        if rules != self._rules:
            self._judged[PODS].forget()
            self._rules = rules
        prefix = self.store.prefix
        policies = self._judged[POLICIES].judge(raw[POLICIES],
                                                lambda kv: parse_policy_kv(prefix, kv))
        namespaces = self._judged[NAMESPACES].judge(raw[NAMESPACES],
                                                    lambda kv: parse_namespace_kv(prefix, kv))
        base = keys.pods_prefix(prefix)
        records = self._judged[PODS].judge(raw[PODS], lambda kv: judge_pod(kv, base, rules))
        return self._assemble(policies, namespaces, records)

    def _assemble(self, policies: list[Any], namespaces: list[Any], records: list[Any]
                  ) -> Inputs:
        subnet, subnet6 = self._own_subnet(), self._own_ipv6_subnet()
        attached = dict(self._attachments(subnet, subnet6))
        with self._state_lock:
            for cid in [cid for cid in self._pending
                        if cid in attached and attached[cid].identity_known]:
                del self._pending[cid]  # the disk has it now
            for cid in self._pending:
                attached.pop(cid, None)  # its ADD's word, until the disk has its metadata
            pending = list(self._pending.values())
        out = assemble(policies, [n for n in namespaces if isinstance(n, Namespace)],
                       records, self.node, subnet, subnet6, attached=attached)
        self._note_dropped(out.dropped)
        for lp in pending:  # never on the disk's list: those left _pending above
            out.local.append(lp)
            out.pods.append(lp.pod)
        return out

    def _note_dropped(self, dropped: list[tuple[PodRecord, str]]) -> None:
        """Each record ``assemble`` did not believe: logged and counted once per key
        revision, as a rejection is."""
        base = keys.pods_prefix(self.store.prefix)
        now = {(f"{base}{r.namespace}/{r.name}", r.mod_revision): why for r, why in dropped}
        for key, rev in sorted(now.keys() - self._dropped_logged):
            self._judged[PODS].count()
            why = now[key, rev]
            log.warning("pod %s not used: %s (no policy counts it as that pod)", key, why)
        self._dropped_logged = set(now)

    def sync(self) -> nft.CompiledTable:
        """Compile the current state; load it if it differs from what the kernel holds
        (OverlayError: not): in place when only set elements and source chains differ
        (a pod came, went or changed: ``nft.apply_table`` given ``held``), else whole.

        The compile runs outside the load lock, so an ADD's element update waits only
        for a load, not for a compile; a compile that missed a pod admitted meanwhile is
        done again under the lock (loading it would drop that pod's elements)."""
        with self._inputs_lock:
            withdrawn = self._withdrawn
            generation, got = self._current()
            key = _pods_key(got)
            table = self._held_unchanged(generation, key) or self._compile_inputs(got)
            with self._compile_lock:
                # a pod admitted, or a DEL's pod withdrawn, since the inputs were read:
                # loading what was compiled would drop it, or put it back
                if self._misses_admitted(got) or self._withdrawn != withdrawn:
                    generation, got, table = self._compile()
                    key = _pods_key(got)
                if table is not self.loaded and (self.loaded is None or self._unsure
                                                 or not nft.same_table(table, self.loaded)):
                    whole = self._apply(table, held=None if self._unsure else self.loaded)
                    self.loaded, self._unsure = table, False
                    (self.loads if whole else self.updates).inc()
                    if table.counters:
                        self._want_cut(None)
                self._loaded_refs = frozenset(p.ref for p in got.pods)
                local = {lp.ifname: lp for lp in got.local}
                self._dead |= _addresses(self._loaded_local.values()) - _addresses(
                    local.values())
                self._loaded_local = local
                self._spanning = frozenset(got.spanning)
                self._compiled_generation = generation
                self._held_key = key
            self.first_load.set()
            self._note(bool(table.counters), bool(got.policies),
                       {ip.version for lp in got.local for ip in lp.pod.ips})
            return table

    def check_kernel(self) -> bool:
        """Whether the kernel still holds the chains of the table we loaded, each with as
        many rules. Another hand may delete or empty it while nothing changes here (``nft
        flush ruleset``, which Debian's nftables.service runs on restart; a ``delete
        table``, ``flush table`` or ``delete chain``), and the pods would go unfiltered:
        then the next pass loads it again whole (False). Rules and elements edited in
        place are diagnose's drift check."""
        with self._compile_lock:
            loaded = self.loaded
            if loaded is None or self._unsure:
                return True
        # counted outside the lock (27 ms at 1000 policies: an ADD's admission must not
        # wait for it); a load meanwhile makes the counts moot
        want = nft.chain_rules(loaded)
        try:
            got = self._kernel_rules()
        except OverlayError as e:
            log.debug("policy table's chains not counted: %s", e)
            return True
        have = got or {}
        with self._compile_lock:
            if have == want or self.loaded is not loaded or self._unsure:
                return True
            log.warning("the kernel's policy table is not the one overlayd loaded (%s): "
                        "loading it again whole", "table gone" if got is None else
                        f"chains missing: {_few(want.keys() - have.keys())}; "
                        f"extra: {_few(have.keys() - want.keys())}; rules changed in: "
                        f"{_few(c for c in want.keys() & have.keys() if want[c] != have[c])}")
            self._unsure = True
            self.repairs.inc()
        self._dirty.set()
        return False

    def _compile(self) -> tuple[int, Inputs, nft.CompiledTable]:
        generation, got = self._current()
        return generation, got, self._compile_inputs(got)

    def _current(self) -> tuple[int, Inputs]:
        with self._state_lock:
            generation = self._generation  # a later change bumps it past this
        return generation, self.inputs()

    def _compile_inputs(self, got: Inputs) -> nft.CompiledTable:
        return nft.compile_table(got.local, got.pods, got.namespaces, got.policies,
                                 log_denied=self.log_denied)

    def _held_unchanged(self, generation: int, key: _PodsKey) -> nft.CompiledTable | None:
        """The loaded table when it is already the compile of these inputs: the same
        policies and namespaces (``generation``) and the same pods, an ADD's admitted one
        included. Then a pass compiles nothing: after each ADD the pod's registry record
        and its files on disk each wake the compiler, and at 100 policies each compile
        took ~15 ms of the interpreter that the next ADD was waiting for."""
        with self._compile_lock:
            if (self.loaded is None or self._unsure or key != self._held_key
                    or generation != self._compiled_generation):
                return None
            return self.loaded

    def _misses_admitted(self, got: Inputs) -> bool:
        with self._state_lock:
            pending = {lp.ifname for lp in self._pending.values()}
        return not pending <= {lp.ifname for lp in got.local}

    def run_cutter(self) -> None:
        """Cut the denied connections after each load of a table that selects pods, on a
        thread of its own (a compile never waits for conntrack). While a cut deletes
        entries, cut again CUT_AGAIN later, at most CUT_PASSES times: a reply in flight
        while its entry went makes a new entry the other way round (from this node's pod
        to the peer), which this node's table accepts because the peer's side decides, and
        that entry would carry the connection on; the next pass judges it and deletes it."""
        while not self.stop.is_set():
            if not self._cut_wanted.wait(1.0):
                continue
            scope: set[IPAddress] | None = set()
            for _ in range(CUT_PASSES):
                self._cut_wanted.clear()
                with self._cut_lock:  # a pass again looks at what the last one did
                    asked, self._cut_scope = self._cut_scope, set()
                scope = None if asked is None or scope is None else scope | asked
                try:
                    cut = self.cut_denied(None if scope is None else frozenset(scope))
                except OverlayError as e:  # the next load asks again
                    log.warning("cutting the connections the policies now deny: %s", e)
                    break
                if self.stop.is_set() or not cut or self.stop.wait(CUT_AGAIN):
                    break

    def _want_cut(self, addresses: Iterable[IPAddress] | None) -> None:
        """Ask the cutter for a pass over every flow (None) or these addresses' flows (the
        gone pods' are always looked at)."""
        with self._cut_lock:
            if addresses is None or self._cut_scope is None:
                self._cut_scope = None
            else:
                self._cut_scope |= set(addresses)
        self._cut_wanted.set()

    def cut_denied(self, only: frozenset[IPAddress] | None = None) -> int:
        """Delete the conntrack entries of local pods' connections the loaded policies
        now deny (established connections would otherwise outlive the change), and those
        of an address of this node's subnets that no local pod holds: its pod is gone, and
        whichever pod IPAM gives the address next would inherit them. Flows with the
        node's own side of the bridge (the gateway: kubelet's probes) are never filtered
        and are left alone. ``only``: just the flows of these addresses and of the gone
        pods' (an ADD's cut; others' flows are not parsed). How many went."""
        with self._compile_lock:
            seen = set(self._dead)
        dead = set(seen)
        with self._inputs_lock:  # inputs() updates the judged caches
            got = self.inputs()
        local = {ip for lp in got.local for ip in lp.pod.ips}
        subnets = [net for net in (self._own_subnet(), self._own_ipv6_subnet())
                   if net is not None]
        # the bridge's addresses: each of the node's subnets' first host
        gateways = {net.network_address + 1 for net in subnets}
        dead -= local
        if not local and not dead:
            return 0
        wanted = None if only is None else only | dead
        try:  # only these families (each listing walks the whole table)
            flows = conntrack.list_flows({ip.version for ip in local | dead}, wanted)
        except ProgramError as e:
            if str(e) != self._conntrack_problem:
                log.warning("cannot list conntrack entries (%s): connections a policy "
                            "change denies stay open until they end", e)
            self._conntrack_problem = str(e)
            return 0
        self._conntrack_problem = None

        # the node's own addresses in its subnets, never a pod's: the VXLAN device's
        # (each subnet's network address, the source of the node's traffic to remote
        # pods), the bridge's, and IPv4's broadcast address
        hosts = {a for net in subnets for a in (
            net.network_address, net.network_address + 1,
            *((net.broadcast_address,) if net.version == 4 else ()))}

        def gone_pod(ip: IPAddress) -> bool:  # of this node's pods, but none holds it
            return ip not in local and ip not in hosts and any(ip in net for net in subnets)

        denied = [f for f in flows if (f.src in local or f.dst in local
                                       or gone_pod(f.src) or gone_pod(f.dst))
                  and not gateways & {f.src, f.dst}
                  and (gone_pod(f.src) or gone_pod(f.dst) or not allowed(
                      Host(f.src), Host(f.dst), f.dport, f.protocol, got.pods,
                      got.namespaces, got.policies))]
        gone = conntrack.delete_flows(denied)
        with self._compile_lock:
            self._dead -= seen  # a reused one's flows were judged as its new pod's
        if gone:
            log.info("cut %d connection(s) the policies now deny or whose pod is gone",
                     gone)
        return gone

    def _note(self, selecting: bool, any_policy: bool, families: Iterable[int]) -> None:
        """Keep the marker file and the br_netfilter check (of the local pods' IP
        ``families``) in line with the table."""
        if selecting != self.selecting:
            log.info("NetworkPolicy %s pods of this node", "now selects" if selecting
                     else "no longer selects")
        self.selecting = selecting
        problem = self._bridge_problem(families) if selecting else None
        if problem != self.bridge_problem:
            if problem:
                log.error("node NotReady: %s (modprobe br_netfilter; set that sysctl "
                          "to 1, e.g. sysctl -w net.bridge.bridge-nf-call-ip6tables=1)",
                          problem)
            else:
                log.info("br_netfilter filters bridged pod traffic again")
        self.bridge_problem = problem
        self._keep_marker(any_policy)

    def _keep_marker(self, any_policy: bool) -> None:
        present = os.path.exists(self.marker)
        try:
            if any_policy and not present:
                atomic_write(self.marker, '{"policies":"in force"}\n', durable=False)
                log.info("policies in force: %s written (the in-process CNI fallback "
                         "refuses ADD)", self.marker)
            elif not any_policy and present:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.marker)
                log.info("no policy in force: %s removed", self.marker)
        except OSError as e:
            log.warning("cannot keep %s: %s", self.marker, e.strerror)

    def problems(self) -> list[str]:
        """What keeps the node from being ready on policy's account (no side effects)."""
        if not self.first_load.is_set():
            return ["NetworkPolicy table not compiled yet"]
        return [self.bridge_problem] if self.bridge_problem else []

    # -- CNI ADD / DEL ----------------------------------------------------------------
    def admit(self, req: Request, result: Mapping[str, Any]) -> None:
        """A pod just attached here is in the loaded table before its ADD returns."""
        from overlay.cni.attachments import parse_meta

        if not self.first_load.wait(ADMIT_TIMEOUT):
            raise CNIError(CNIError.TRY_AGAIN, "NetworkPolicy state not loaded yet",
                           "overlayd is still listing policies; retry")
        meta = podmeta.meta_from_request(req.container_id, req.ifname, req.args, req.config)
        identity, _ = parse_meta(meta, req.container_id, req.ifname)
        # IPv4 first, as the pod's registry record orders them
        ips = tuple(sorted((ip_interface(i["address"]).ip for i in result.get("ips", [])),
                           key=lambda ip: ip.version))
        pod = Pod(identity.namespace, identity.name, ips, dict(identity.labels),
                  tuple(p for p in identity.ports if p.name), self.node)
        local = nft.LocalPod(pod, host_veth_name(req.container_id, req.ifname))
        with self._state_lock:
            self._pending[req.container_id] = local
        try:
            if self._add_elements(local):
                self.admits.labels("elements").inc()
            else:
                self.sync()
                self.admits.labels("table").inc()
        except OverlayError as e:
            with self._state_lock:
                self._pending.pop(req.container_id, None)
            raise CNIError(CNIError.TRY_AGAIN, "NetworkPolicy rules for the pod not loaded",
                           str(e)) from e

    def _add_elements(self, local: nft.LocalPod) -> bool:
        """Put a new pod into the loaded table by adding its elements (one transaction,
        the same verdicts as compiling the table with it: ``nft.admission``); the whole
        table follows from the compiler thread. False: only a full compile can say it.

        Only while the table is compiled from the policies and namespaces the watches hold
        now: otherwise the ADD compiles, so a policy put just before it is in force for it."""
        with self._compile_lock:
            with self._state_lock:
                changed = self._generation != self._compiled_generation
            loaded = self.loaded
            if loaded is None:
                return False
            if self._loaded_local.get(local.ifname) == local:
                return True  # a compile that waited for this lock included the pod
            if local.ifname in self._loaded_local:
                return False  # compiled while its ADD ran (of unknown identity then)
            if changed or local.pod.ref in self._loaded_refs:
                return False
            ips = set(local.pod.ips)
            if any(ips.intersection(lp.pod.ips) for lp in self._loaded_local.values()):
                return False  # a deleted pod's address the table still holds: compile
            adm = nft.admission(loaded, local)
            if adm is None:
                return False
            if not adm.empty:
                try:
                    self._update(adm)
                except OverlayError:
                    self._unsure = True  # maybe half loaded: the next compile replaces it
                    self._dirty.set()
                    raise
                self.loaded = nft.admitted(loaded, local, adm)
                self._loaded_refs |= {local.pod.ref}
                self._loaded_local[local.ifname] = local
                locals_, pods = self._held_key
                self._held_key = (locals_ | {local}, pods | {local.pod})
                if loaded.counters:
                    # entries of its addresses made before it (an earlier pod's, or a
                    # peer's packets to the free address): judged as its own now
                    self._want_cut(ips)
        log.debug("pod %s admitted by adding its policy elements", local.pod.ref)
        self._dirty.set()
        return True

    def withdraw(self, container_id: str, ifname: str) -> None:
        """A pod's DEL ran (its veth is gone): its elements and its veth's source chain
        leave the loaded table before the DEL returns, in one transaction
        (``nft.withdrawal``). Then the compiler's passes that follow find the table
        already compiled from what they read and compile nothing, and the pod's address,
        when IPAM hands it out again, carries nothing of it. Where a withdrawal cannot say
        it, or the kernel refuses it (then nothing changed), the compiler's next pass does
        it, as before."""
        veth = host_veth_name(container_id, ifname)
        with self._compile_lock:
            loaded, lp = self.loaded, self._loaded_local.get(veth)
            if loaded is None or lp is None or self._unsure or veth in self._spanning:
                return
            w = nft.withdrawal(loaded, lp, [o for v, o in self._loaded_local.items()
                                            if v != veth])
            if w is None:
                return
            if not w.empty:
                try:
                    self._remove(w)
                except OverlayError as e:
                    # refused whole, or unknown (an answer lost): replace it whole next
                    self._unsure = True
                    self._dirty.set()
                    log.warning("pod %s left in the policy table until the next compile: "
                                "%s", lp.pod.ref, e)
                    return
            self._withdrawn += 1
            self.loaded = nft.withdrawn(loaded, lp, w)
            del self._loaded_local[veth]
            self._dead |= set(lp.pod.ips)
            locals_, pods = self._held_key
            self._held_key = (locals_ - {lp}, pods - {lp.pod})
            self.withdrawals.inc()
        log.debug("pod %s withdrawn from the policy table", lp.pod.ref)

    def mark_dirty(self) -> None:
        self._dirty.set()

    def forget(self, container_id: str) -> None:
        with self._state_lock:
            if self._pending.pop(container_id, None) is not None:
                self._dirty.set()


def enforcing_handlers(handlers: Mapping[str, Handler],
                       agent: Callable[[], PolicyAgent | None]) -> dict[str, Handler]:
    """The warm server's handlers, ADD returning only once the pod's rules are loaded
    (an ADD whose rules cannot be loaded is undone and answered "try again")."""
    add, delete = handlers["ADD"], handlers["DEL"]

    def enforced_add(req: Request) -> dict[str, Any] | None:
        result = add(req)
        policy = agent()
        if policy is not None and result is not None:
            try:
                policy.admit(req, result)
            except CNIError:
                with contextlib.suppress(OverlayError, OSError):
                    delete(req._replace(command="DEL"))
                raise
        return result

    def forgetting_del(req: Request) -> dict[str, Any] | None:
        out = delete(req)
        policy = agent()
        if policy is not None:
            policy.forget(req.container_id)  # first: a compile then reads it gone
            try:
                policy.withdraw(req.container_id, req.ifname)
            except Exception:  # the DEL is done: its pod leaves with the next compile
                log.exception("pod of container %s not withdrawn from the policy table",
                              req.container_id)
                policy.mark_dirty()
        return out

    return {**handlers, "ADD": enforced_add, "DEL": forgetting_del}


def make_policy_agent(d: Daemon) -> PolicyAgent | None:
    """The daemon's agent (none without the cluster objects)."""
    if d.store is None or d.schema is None or not d.schema.writable:
        return None
    store = d.store
    # an IPv6-only network's own subnet is IPv6 (its pods are filtered as IPv6 ones)
    own = (lambda: d.manager.own_subnet() if d.manager else None)  # noqa: E731
    own6 = (lambda: d.manager.own_ipv6_subnet() if d.manager else None)  # noqa: E731

    def rules(node_kvs: Iterable[KV]) -> PodRules:
        backend, manager = d.backend, d.manager
        leases = [*(backend.leases.values() if backend else ()),
                  *([manager.current] if manager and manager.current else [])]
        by_subnet = {lease.subnet: lease for lease in leases}
        base = PodRules(lease_subnets=frozenset(by_subnet),
                        lease_ipv6={lease.subnet: lease.ipv6_subnet for lease in leases
                                    if lease.ipv6_subnet is not None})
        return base.with_nodes(node_subnets(d.s.node_name, own(), store.prefix, node_kvs,
                                            by_subnet, decoded))

    decoded: dict[str, tuple[int, NodeRecord | None]] = {}  # node records by key revision

    disk = AttachmentCache(d.s.cni_data_dir)
    return PolicyAgent(store, d.s.node_name, own, rules, policy_marker_path(d.s.subnet_file),
                       d.metrics.registry, d.stop, attachments=disk.current,
                       disk_moved=disk.moved,
                       leases_listed=lambda: d.leases_programmed,
                       log_denied=d.s.policy_log_denied, own_ipv6_subnet=own6)


def node_subnets(node: str, own: IPNetwork | None, prefix: str, node_kvs: Iterable[KV],
                 leases: Mapping[IPNetwork, Any],
                 decoded: dict[str, tuple[int, NodeRecord | None]] | None = None
                 ) -> dict[str, IPNetwork]:
    """Which node holds which subnet, for the pod rule: the node records (judged against
    the accepted ``leases``) each claiming a subnet no other claims, and this node's own
    lease (``own``: known here, whatever a record says). ``decoded`` keeps each record
    decoded while its revision holds (every compile asks: 30 ms for 1000 nodes else)."""
    cache = {} if decoded is None else decoded
    kvs = list(node_kvs)
    claims = []
    for kv in kvs:
        held = cache.get(kv.key)
        if held is None or held[0] != kv.mod_revision:
            got = judge_node(kv.key, kv.value, prefix, None, kv.mod_revision)
            held = (kv.mod_revision, got if isinstance(got, NodeRecord) else None)
            cache[kv.key] = held
        r = held[1]
        if r is not None and isinstance(judge_node_lease(kv.key, r, leases), NodeRecord) \
                and r.name != node and r.subnet != own:
            claims.append((r.name, r.subnet))
    if len(cache) > len(kvs):  # keys gone since: keep it to what is listed
        listed = {kv.key for kv in kvs}
        for key in [k for k in cache if k not in listed]:
            del cache[key]
    out = believed_node_subnets(claims)
    if own is not None:
        out[node] = own
    return out


def policy_threads(agent: PolicyAgent | None) -> list[tuple[str, Callable[[], None]]]:
    """The agent's threads: one watch per kind, the compiler and the cutter."""
    if agent is None:
        return []
    return [*((f"policy-watch-{kind}", lambda k=kind: agent.run_watch(k)) for kind in KINDS),
            ("policy-compile", agent.run_compiler), ("policy-cut", agent.run_cutter)]
