"""Publishes this node's pods to the registry (``<prefix>/pods/``), off the CNI ADD's path.

The CNI plugin leaves two files per attachment under ``--cni-data-dir``: host-local's IPAM
record (``<network>/<ip>``: container ID, ifname) and the pod metadata
(``<network>/pods/<id>@<ifname>.json``: namespace, name, labels, ports; see
``overlay.cni.podmeta``). This thread polls the directories' modification times (a few
``stat`` calls every ``POLL`` seconds), and on a change, and every ``RESYNC`` seconds,
reconciles the registry with them:

* an attachment whose IPs lie in this node's subnet and has no record is created;
* a record of this node (its name, IPs in its subnet) whose container ID is no longer
  attached here is deleted, only if unchanged since read (CAS): a recreated sandbox's
  record is never removed by the old one's disappearance, and one written meanwhile
  survives;
* a new sandbox under a known name replaces the record (CAS), keeping the labels an
  operator set (``overlayctl pods label``, source ``cli``, which win per key).

So a pod added or deleted while overlayd was down is right once it is back, and a
restart deletes nothing that is still attached (a data dir that cannot be read deletes
nothing at all). A record of another node under the same name is left alone (logged).

What a pass reads costs etcd this node's pods, not the cluster's: the first pass lists
every record under ``pods/`` (which ones are this node's is only known from a listing),
later ones read only the keys of the pods attached here and of the records this node
holds, in one read-only txn per 64 keys; a full listing comes back every ``FULL_RESYNC``
seconds (jittered per node), for a record of this node that only a listing shows. Every
node listing every pod every ``RESYNC`` s was N nodes x all pods / 30 s: 333 000 records/s
for etcd at 1000 nodes of 10 pods (the README's "One etcd for the cluster").

The pod-lease GC is fed by the daemon's lease watch (``LeaseGoneGC.note_batch`` /
``note_snapshot``, no watch of its own): when a remote lease disappears (expired or
released) and its key is still absent ``LEASE_GONE_GRACE`` s later, the pods in its subnet
leave the registry: one node does it, the first by rendezvous rank, and the next two in
turn only if it left no ``collected/`` marker (CAS deletes, idempotent). At start it also
removes pods whose IPs lie in no lease at all.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv6Network

from prometheus_client import CollectorRegistry, Counter

from overlay.cluster.keys import collected_key, pods_prefix
from overlay.cluster.pods import (
    SOURCE_CNI,
    PodRecord,
    decodable_records,
    delete_pods_in_subnet,
    delete_pods_where,
    encode_pod,
    identity_problem,
    labels_by_source,
    list_pod_kvs,
    merge_labels,
)
from overlay.cluster.store import KV, ObjectStore
from overlay.cni.attachments import LocalPod, ScanError, disk_signature, scan_local
from overlay.errors import OverlayError
from overlay.lease import IPNetwork, Lease, LeaseBatch, key_to_subnet, lease_key
from overlay.util.digest import name_digest

log = logging.getLogger(__name__)

POLL = 0.5  # seconds between looks at the data dir
RESYNC = 30.0  # seconds between reconciles when nothing changed on disk
FULL_RESYNC = 600.0  # seconds (x 0.75..1.25 per pass) between listings of all of pods/
LEASE_GONE_GRACE = 3.0  # a lease re-acquired within this is not "gone"
GC_RETRY = 30.0  # seconds before a gone lease's pods are tried again after a failure
GC_RANKS = 3  # how many nodes (by rendezvous rank) take a gone lease's pods in turn
GC_STEP = 15.0  # seconds between one rank's turn and the next's
COLLECTED_TTL = 300  # seconds the "collected" marker of a gone lease lives
MAX_WARNED = 4096


# ---- the reconcile ------------------------------------------------------------------------

def desired_record(node: str, pod: LocalPod, held: PodRecord | None) -> PodRecord:
    """The record ``pod`` should have, given the one held under its name (this node's).
    The same sandbox keeps its labels (an operator's edits, removals included) and its
    creation time; a new sandbox takes the CNI's labels under the others (``cli`` wins
    per key, ``overlay.cluster.pods.PRECEDENCE``)."""
    if held is not None and held.container_id == pod.container_id:
        labels, created = held.labels, held.created
    else:
        by_source = labels_by_source(held.labels) if held else {}
        by_source[SOURCE_CNI] = dict(pod.identity.labels)
        labels, created = merge_labels(by_source), datetime.now(UTC)
    return PodRecord(pod.identity.namespace, pod.identity.name, pod.ips, node,
                     pod.container_id, pod.ifname, labels, pod.identity.ports, created)


def _same_value(a: PodRecord, b: PodRecord) -> bool:
    return encode_pod(a) == encode_pod(b)


@dataclass
class Outcome:
    created: int = 0
    replaced: int = 0
    deleted: int = 0
    conflicts: int = 0


class PodPublisher:
    """Keeps ``pods/`` equal to this node's attachments (see the module docstring)."""

    def __init__(self, store: ObjectStore, node: str, data_dir: str,
                 own_subnet: Callable[[], IPNetwork | None],
                 on_reject: Callable[[], None] = lambda: None,
                 own_ipv6: Callable[[], IPv6Network | None] = lambda: None):
        self.store = store
        self.node = node
        self.data_dir = data_dir
        self.own_subnet = own_subnet
        self.own_ipv6 = own_ipv6  # the lease's IPv6 half, on a dual-stack node
        self.on_reject = on_reject  # overlayd's metric
        self.rejected = 0  # metadata problems and name conflicts, each counted once
        self._warned: set[tuple[str, str]] = set()
        self._known: set[str] = set()  # keys of this node's records at the last pass
        self._next_full = 0.0  # monotonic time of the next listing of all of pods/

    def warn_once(self, what: str, problem: str) -> None:
        if (what, problem) in self._warned:
            return
        if len(self._warned) >= MAX_WARNED:
            self._warned.clear()
        self._warned.add((what, problem))
        self.rejected += 1
        self.on_reject()
        log.warning("pod registry: %s: %s", what, problem)

    def reconcile(self, full: bool | None = None) -> Outcome | None:
        """One pass; None when there is nothing to publish against yet (no lease).
        ``full``: list all of ``pods/`` (None: when due, see the module docstring), else
        read only the keys of this node's pods and of the records it holds."""
        subnet = self.own_subnet()
        if subnet is None:
            return None
        v6 = self.own_ipv6()
        local = scan_local(self.data_dir, subnet, self.warn_once, v6)
        if full is None:
            full = time.monotonic() >= self._next_full
        kvs = self._list_all(local.values()) if full else self._read_keys(local.values())
        held = {(r.namespace, r.name): (kv, r) for kv, r in decodable_records(kvs)}
        undecodable = {kv.key: kv for kv in kvs} if len(held) < len(kvs) else {}
        out = Outcome()
        wanted: set[tuple[str, str, str]] = set()
        # a container whose metadata is unusable keeps the records it had (who it is is
        # not known: neither publishing a fallback nor deleting its record says better)
        unknown = {p.container_id for p in local.values() if not p.identity_known}
        for pod in sorted(local.values(), key=lambda p: p.container_id):
            ident = (pod.identity.namespace, pod.identity.name)
            if pod.container_id in unknown:
                continue  # scan_local warned
            if problem := identity_problem(*ident):
                # a name the registry's own rule rejects (a container ID with '_' or
                # capitals, without K8S_POD_NAME): written, it would be rejected by every
                # node, rewritten each pass and never deleted
                self.warn_once(f"{ident[0]}/{ident[1]}", f"{problem}; not published")
                continue
            if any(w[:2] == ident for w in wanted):
                self.warn_once(f"{ident[0]}/{ident[1]}", f"claimed by two containers here; "
                               f"{pod.container_id} is not published")
                continue
            wanted.add((*ident, pod.container_id))
            self._publish(pod, held.get(ident), undecodable, out, subnet, v6)
        # the records to read next time: ours still held (a lost delete's too) and the
        # pods published now; a pod attached here is read by its key anyway
        known = {kv.key for kv, r in held.values() if self._mine(r, subnet, v6)}
        for (ns, name), (kv, record) in held.items():
            if (self._mine(record, subnet, v6) and (ns, name, record.container_id) not in wanted
                    and record.container_id not in unknown
                    and self.store.delete(kv.key, mod_revision=kv.mod_revision)):
                out.deleted += 1
                known.discard(kv.key)
                log.info("pod %s/%s (%s, container %s) is gone from this node: removed "
                         "from the registry", ns, name, record.ip, record.container_id)
        self._known = known | {self._key(*w[:2]) for w in wanted}
        if full:
            self._next_full = time.monotonic() + FULL_RESYNC * random.uniform(0.75, 1.25)
        return out

    def _key(self, namespace: str, name: str) -> str:
        return f"{pods_prefix(self.store.prefix)}{namespace}/{name}"

    def _list_all(self, local: Iterable[LocalPod]) -> list[KV]:
        """Every record; this node's keys only if the listing fails (publishing must not
        stop on it; only what just a listing shows waits for the next FULL_RESYNC)."""
        try:
            return list_pod_kvs(self.store)[0]
        except OverlayError as e:
            self.warn_once(pods_prefix(self.store.prefix), f"listing every record failed "
                           f"({e}); reading this node's keys only until the next full resync")
            return self._read_keys(local)  # etcd down: this fails too, and the pass with it

    def _read_keys(self, local: Iterable[LocalPod]) -> list[KV]:
        """The records under the names of ``local`` and of the ones this node held at
        the last pass, read by key in one txn per 64: O(this node's pods) for etcd."""
        keys = self._known | {self._key(p.identity.namespace, p.identity.name) for p in local}
        return self.store.get_many(sorted(keys))

    def _mine(self, record: PodRecord, subnet: IPNetwork,
              ipv6: IPv6Network | None = None) -> bool:
        """This node's record: its name and its subnet(s). The subnet too, so two daemons
        under one name (a lab whose nodes share a hostname) never take each other's
        pods for gone. An IPv6 address counts as this node's only inside ``ipv6``; the
        record's IPv4 address decides when the node has no IPv6 half (any more)."""
        if record.node != self.node:
            return False
        if subnet.version == 6:  # an IPv6-only node: every address in its one subnet
            return all(ip in subnet for ip in record.ips)
        v4 = [ip for ip in record.ips if isinstance(ip, IPv4Address)]
        return bool(v4) and all(ip in subnet for ip in v4) and (
            ipv6 is None or all(ip in ipv6 for ip in record.ips
                                if not isinstance(ip, IPv4Address)))

    def _publish(self, pod: LocalPod, held: tuple[KV, PodRecord] | None,
                 undecodable: Mapping[str, KV], out: Outcome, subnet: IPNetwork,
                 ipv6: IPv6Network | None = None) -> None:
        ns, name = pod.identity.namespace, pod.identity.name
        key = self._key(ns, name)
        if held is not None and not self._mine(held[1], subnet, ipv6):
            out.conflicts += 1
            self.warn_once(f"{ns}/{name}", f"the registry holds it for node {held[1].node} "
                           f"(container {held[1].container_id}); not replacing another node's")
            return
        want = desired_record(self.node, pod, held[1] if held else None)
        if held is None and key not in undecodable:
            if self.store.create(key, encode_pod(want))[0]:
                out.created += 1
                self._known.add(key)  # a pass cut short still reads it next time
                log.info("published pod %s/%s: %s (container %s)", ns, name,
                         ", ".join(map(str, want.ips)), pod.container_id)
            return
        if held is not None and _same_value(want, held[1]):
            return
        revision = held[0].mod_revision if held else undecodable[key].mod_revision
        if self.store.replace(key, encode_pod(want), revision):
            out.replaced += 1
            self._known.add(key)  # a pass cut short still reads it next time
            log.info("updated pod %s/%s: %s (container %s)", ns, name,
                     ", ".join(map(str, want.ips)), pod.container_id)

    def run(self, stop: threading.Event) -> None:
        """Reconcile at start, then on every change on disk and every RESYNC seconds."""
        last_marks: tuple[int, ...] | None = None
        last_sync = 0.0
        while not stop.is_set():
            marks = disk_signature(self.data_dir)
            due = marks != last_marks or time.monotonic() - last_sync >= RESYNC
            if due and self._pass():
                last_marks, last_sync = marks, time.monotonic()
            stop.wait(POLL)

    def _pass(self) -> bool:
        try:
            done = self.reconcile()
        except ScanError as e:
            self.warn_once(self.data_dir, f"{e}; not publishing (and deleting nothing)")
            return False
        except OverlayError as e:
            log.warning("pod registry: reconcile failed: %s; retrying", e)
            return False
        return done is not None


# ---- pods of subnets that are gone -----------------------------------------------------------

def sweep_leaseless_pods(store: ObjectStore) -> int:
    """Pods whose IPs lie in no subnet key at all (their nodes' leases went while no
    overlayd watched). Pods are listed before the subnets: a pod published after its
    lease was created is never taken for leaseless."""
    kvs, _ = list_pod_kvs(store)
    base = store.registry.subnets_prefix
    subnets = [s for s in (_subnet_of(kv.key, base) for kv in store.list(base)[0]) if s]
    return delete_pods_where(store, lambda r: not any(ip in s for s in subnets for ip in r.ips),
                             "their IPs lie in no subnet lease", kvs)


def _subnet_of(key: str, base: str) -> IPNetwork | None:
    try:
        return key_to_subnet(key, base)
    except ValueError:
        return None


def gc_rank(gone: str, me: str, others: Iterable[str]) -> int:
    """Where ``me`` stands (0: first) among the nodes, named by their lease keys, that may
    delete the pods of lease key ``gone``: rendezvous hashing, so every node that knows
    the same leases computes the same order without talking to the others."""
    mine = name_digest(gone, me)
    return sum(1 for k in others if k != me and name_digest(gone, k) < mine)


class LeaseGoneGC:
    """Deletes the pods of every remote lease that disappears (and stays away for
    LEASE_GONE_GRACE seconds: a lost lease its node re-acquires keeps its pods).

    Fed by the daemon's lease watch (``note_batch``, ``note_snapshot``), so a node opens
    one watch of ``subnets/``, not two: a second one doubled every lease event's
    deliveries (at 1000 nodes etcd CPU 0.403 -> 0.273 s/s without it; the README's "One
    etcd for the cluster").

    Deleting them means listing every pod, so not every node does it: the nodes rank
    themselves for each gone key (``gc_rank``, over the leases they know), the first takes
    it after the grace, the next GC_STEP later and so on for GC_RANKS nodes; each later one
    first reads the key ``collected/<subnet>`` that the one before it wrote when done and
    stops there. One listing per gone lease instead of one per node (1000 nodes: 1000
    listings of all pods), and a collector that died on the way is covered by the next. The
    first rank never trusts the marker (any node can write it), so a false one can only
    take the backups' turns away; without its own lease (``own_lease`` None) a node counts
    as first."""

    def __init__(self, store: ObjectStore,
                 own_lease: Callable[[], Lease | None] = lambda: None):
        self.store = store
        self.base = store.registry.subnets_prefix
        self.own_lease = own_lease
        self._cond = threading.Condition()
        self._known: set[str] | None = None  # remote lease keys, from the last snapshot on
        self._gone: dict[str, float] = {}  # key -> monotonic time it is due
        self._rank: dict[str, int] = {}  # key -> this node's rank, once its turn was set

    def note_snapshot(self, leases: Iterable[Lease]) -> None:
        """A complete listing: what the previous one (and the events since) had and this
        one lacks is gone (a compaction's re-list)."""
        now = {self.base + lease_key(lease) for lease in leases}
        with self._cond:
            self._mark_gone(set() if self._known is None else self._known - now)
            self._known = now

    def note_batch(self, batch: LeaseBatch) -> None:
        # a changed lease may move to another key (a dual-stack lease's new IPv6 half)
        removed = {self.base + lease_key(lease) for lease in (
            *batch.removed, *(old for old, _ in batch.changed))}
        added = {self.base + lease_key(lease) for lease in (
            *batch.added, *(new for _, new in batch.changed))}
        with self._cond:
            if self._known is not None:
                self._known = (self._known - removed) | added
            self._mark_gone(removed - added)

    def _mark_gone(self, keys: set[str], delay: float = 0.0) -> None:
        when = time.monotonic() + LEASE_GONE_GRACE + delay
        for key in keys:
            self._gone.setdefault(key, when)
        if keys:
            self._cond.notify()

    def _due(self, stop: threading.Event) -> list[str]:
        """The keys whose time came (waits for one; [] once stopped)."""
        with self._cond:
            while not stop.is_set():
                now = time.monotonic()
                due = [k for k, t in self._gone.items() if t <= now]
                if due:
                    for key in due:
                        del self._gone[key]
                    return sorted(due)
                first = min(self._gone.values(), default=None)
                self._cond.wait(0.5 if first is None else min(0.5, first - now))
        return []

    def run(self, stop: threading.Event) -> None:
        """The sweep at start, then the pods of each gone lease whose key is still absent."""
        try:
            sweep_leaseless_pods(self.store)
        except OverlayError as e:  # the gone leases' pods are still worth removing
            log.warning("pod registry: the sweep of pods in no lease failed: %s", e)
        while not stop.is_set():
            for key in self._due(stop):
                self._collect(key)

    def _held(self, subnet: IPNetwork) -> bool:
        """A known lease holds ``subnet`` (under another key: its IPv6 half changed)."""
        with self._cond:
            return any(_subnet_of(k, self.base) == subnet for k in self._known or ())

    def _turn(self, key: str) -> int | None:
        """This node's rank for ``key`` when its turn is now; None when it is later (the
        key is rescheduled) or never (past GC_RANKS)."""
        with self._cond:
            rank = self._rank.pop(key, None)
            if rank is not None:
                return rank
            own, others = self.own_lease(), list(self._known or ())
        rank = 0 if own is None else gc_rank(key, self.base + lease_key(own), others)
        if rank >= GC_RANKS:
            log.debug("pod registry: %d nodes before this one take gone lease %s", rank, key)
            return None
        if rank == 0:
            return 0
        with self._cond:
            self._rank[key] = rank
            self._gone[key] = time.monotonic() + rank * GC_STEP
        return None

    def _collect(self, key: str) -> None:
        subnet = _subnet_of(key, self.base)
        if subnet is None:
            return
        rank = self._turn(key)
        if rank is None:
            return
        marker = collected_key(self.store.prefix, key[len(self.base):])
        try:
            if self._held(subnet) or self.store.get(key) is not None:
                return
            if rank and self.store.get(marker) is not None:
                log.debug("pod registry: the pods of gone lease %s were taken", subnet)
                return
            delete_pods_in_subnet(self.store, subnet)
        except OverlayError as e:
            log.warning("pod registry: removing the pods of gone lease %s failed: %s; "
                        "retrying in %.0fs", subnet, e, GC_RETRY)
            with self._cond:
                self._rank[key] = 0  # its turn came: the retry is this node's
                self._mark_gone({key}, GC_RETRY - LEASE_GONE_GRACE)
            return
        try:
            self.store.put(marker, b"{}", lease=self.store.grant(COLLECTED_TTL))
        except OverlayError as e:  # the next ranks list the pods again: no harm
            log.debug("pod registry: marking gone lease %s collected failed: %s", subnet, e)


def pod_threads(store: ObjectStore, node: str, data_dir: str,
                own_subnet: Callable[[], IPNetwork | None], stop: threading.Event,
                gc: LeaseGoneGC, metrics: CollectorRegistry | None = None,
                own_ipv6: Callable[[], IPv6Network | None] = lambda: None,
                ) -> list[tuple[str, Callable[[], None]]]:
    """The daemon's pod-registry threads (``Daemon._cluster_threads``); ``gc`` fed by its
    lease watch; their rejections counted in ``metrics`` (overlayd's /metrics)."""
    on_reject: Callable[[], None] = lambda: None  # noqa: E731
    if metrics is not None:
        on_reject = Counter(
            "overlay_pod_metadata_rejected", "Problems in this node's pod metadata files "
            "and pod name conflicts, each counted once (see the log)", registry=metrics).inc
    publisher = PodPublisher(store, node, data_dir, own_subnet, on_reject, own_ipv6)
    return [("pod-publisher", lambda: publisher.run(stop)),
            ("pod-lease-gc", lambda: gc.run(stop))]
