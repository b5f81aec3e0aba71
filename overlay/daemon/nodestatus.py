"""overlayd's node agent: this node's heartbeat, its status record and the health mesh.

Two supervised threads (``Daemon._cluster_threads``):

* ``heartbeat``: ``<prefix>/heartbeats/<node>`` on an etcd lease of two heartbeat periods,
  refreshed by keepalive every period (no writes), so a node that dies uncleanly is
  NotReady within two periods.  The record ``<prefix>/nodes/<node>`` is rewritten only
  when its content changes (readiness, reason, mesh summary, public IP, MAC, version):
  at 1000 nodes the steady cost is keepalives, not writes (Kubernetes' node Lease).  A
  change of the mesh's peer counts alone waits up to ``COUNTS_WAIT_PER_PEER`` s per peer
  (at most a minute) after the last write, so a node joining a large cluster is not one
  write by every node at once.  Every
  ``RECORD_REFRESH`` seconds the record is read back (a read, not a raft write) and written
  again only if it is no longer what this node wrote (deleted or overwritten by hand).  On
  a clean stop the record says NotReady ("overlayd stopped") and the lease is revoked.
* ``mesh``: every probe interval, every peer's VTEP address is probed at once with
  diagnose's DF probe at the full overlay MTU (``overlay.diagnose.probe.echo_many``),
  the kernel's neighbour/FDB entries are compared with the leases, and the summary
  (``overlay.cluster.mesh``) goes into the record when it changed.

Before either starts, the name is claimed: a live heartbeat of another node (another
public IP or VTEP MAC) under our name refuses the start with one line (overlayd exits 1).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge

from overlay.cluster.keys import heartbeat_key, node_key
from overlay.cluster.mesh import MeshSummary, PeerCheck, kernel_vtep_problem, summarize
from overlay.cluster.nodes import MAX_TEXT, NodeRecord, decode_node
from overlay.cluster.nodestore import NodeNameInUse
from overlay.daemon.flags import MAX_HEARTBEAT_PERIOD
from overlay.diagnose.probe import Echo, echo_many, echo_many6
from overlay.errors import OverlayError
from overlay.lease import IPAddress, Lease
from overlay.util import jsontext
from overlay.util.version import package_version
from overlay.vxlan.entries import Entries, Entry

if TYPE_CHECKING:
    from overlay.cluster.store import KV, ObjectStore
    from overlay.daemon.daemon import Daemon

log = logging.getLogger(__name__)

PROBE_COUNT, PROBE_TIMEOUT = 2, 1.0  # echoes per peer per round; seconds to wait for them
# the longest --heartbeat-period twice: the longest lease a heartbeat of an overlayd is
# written on (NodeAgent.ttl)
MAX_HEARTBEAT_TTL = round(2 * MAX_HEARTBEAT_PERIOD)
RECORD_REFRESH = 300.0  # seconds between read-backs of our record (1000 nodes: 3.3 reads/s)
# A change of the mesh's peer counts alone (a node joined or left; no peer newly broken or
# mended) waits this long per peer after the record's last write, at most COUNTS_WAIT_MAX:
# every node sees a join, so without it one join is N record writes at once.
COUNTS_WAIT_PER_PEER, COUNTS_WAIT_MAX = 0.05, 60.0


@dataclass(frozen=True)
class Identity:
    """What tells this node apart from another claiming its name."""

    public_ip: IPAddress
    vtep_mac: str

    def encode(self) -> bytes:
        return json.dumps({"public_ip": str(self.public_ip), "vtep_mac": self.vtep_mac}).encode()


def holder_of(heartbeat: bytes, record: bytes | None, name: str) -> Identity | None:
    """Who a live heartbeat belongs to: its own value, else the record's; None if neither
    can be read (then the name is taken over: nobody we could tell apart holds it)."""
    try:
        obj = jsontext.loads(heartbeat)
        return Identity(ip_address(obj["public_ip"]), str(obj["vtep_mac"]))
    except (ValueError, TypeError, KeyError):
        pass
    if record is None:
        return None
    try:
        rec = decode_node(name, record)
    except ValueError:
        return None
    return Identity(rec.public_ip, rec.vtep_mac)


@dataclass
class AgentMetrics:
    record_writes: Counter
    heartbeat_grants: Counter
    peers_broken: Gauge
    probe_rounds: Counter

    @classmethod
    def on(cls, r: CollectorRegistry) -> AgentMetrics:
        return cls(
            Counter("overlay_node_record_writes", "Writes of this node's status record "
                    "(only when its content changed)", registry=r),
            Counter("overlay_node_heartbeat_grants", "etcd leases granted for the heartbeat "
                    "(1 at start; more after an etcd outage longer than its TTL)", registry=r),
            Gauge("overlay_mesh_peers_broken", "Peers the last probe round found broken",
                  registry=r),
            Counter("overlay_mesh_probe_rounds", "Health-mesh probe rounds", registry=r))


Echoer = Callable[[Sequence[IPAddress], int, int, float], dict[IPAddress, Echo]]


def echo_any(targets: Sequence[IPAddress], size: int, count: int, timeout: float
             ) -> dict[IPAddress, Echo]:
    """``echo_many`` for IPv4 targets, ``echo_many6`` for IPv6 ones (an IPv6-only
    network's VTEPs), ``size`` being the IPv4 payload (IPv6's header is 20 bytes more)."""
    v4 = [t for t in targets if isinstance(t, IPv4Address)]
    v6 = [t for t in targets if isinstance(t, IPv6Address)]
    out: dict[IPAddress, Echo] = {}
    for ip, echo in (echo_many(v4, size, count, timeout) if v4 else {}).items():
        out[ip] = echo
    for ip6, echo in (echo_many6(v6, size - 20, count, timeout) if v6 else {}).items():
        out[ip6] = echo
    return out


def check_peers(remotes: Sequence[Lease], mtu: int, want: Callable[[Lease], list[Entry]],
                have: Entries, echo: Echoer = echo_any) -> list[PeerCheck]:
    """One round: DF echoes at the full overlay MTU to every peer's VTEP address at once,
    one small echo to each silent peer (an MTU problem answers it), and the kernel's VTEP
    entries against each lease.  Diagnose's ``probe_peers`` does the same two steps; it
    is not used here because its module brings diagnose's imports (2.4 MB) into overlayd."""
    size = mtu - 28  # IPv4 + ICMP headers
    targets = [lease.subnet.network_address for lease in remotes]
    full = echo(targets, size, PROBE_COUNT, PROBE_TIMEOUT) if targets else {}
    silent = [t for t in targets if full[t].received == 0]
    small = echo(silent, 56, 1, PROBE_TIMEOUT) if silent else {}
    return [PeerCheck(lease.subnet, lease.attrs.public_ip, size, full[t].received > 0,
                      small[t].received > 0 if t in small else None, full[t].error,
                      kernel_vtep_problem(want(lease), have))
            for lease, t in zip(remotes, targets, strict=True)]


class NodeAgent:
    """The heartbeat, the record and the mesh of one node.  ``record_of`` gives the record
    as the daemon stands now (without the mesh summary, which this agent adds)."""

    def __init__(self, store: ObjectStore, name: str, identity: Identity,
                 record_of: Callable[[], NodeRecord | None], stop: threading.Event,
                 metrics: AgentMetrics, period: float, probe_interval: float,
                 refresh: float = RECORD_REFRESH, clock: Callable[[], float] = time.monotonic):
        self.store, self.name, self.identity = store, name, identity
        self.record_of, self.stop, self.metrics = record_of, stop, metrics
        self.period, self.probe_interval = period, probe_interval
        self.refresh, self.clock = refresh, clock
        self._check_at = 0.0  # when the record is next read back
        self.ttl = max(1, round(2 * period))
        self.hb_key, self.key = heartbeat_key(store.prefix, name), node_key(store.prefix, name)
        self.mesh: MeshSummary | None = None
        self.lease_id = 0
        self._written: NodeRecord | None = None
        self._written_at = 0.0  # self.clock() of that write
        self._lock = threading.Lock()  # one record write at a time (both threads write)
        self._changed = threading.Event()  # the mesh summary changed: write soon

    # -- the name ---------------------------------------------------------------------
    def claim(self) -> None:
        """Take the name, or raise NodeNameInUse when another live node holds it."""
        lease = self.store.grant(self.ttl)
        self.metrics.heartbeat_grants.inc()
        created, held = self.store.create(self.hb_key, self.identity.encode(), lease)
        if not created and held is not None and (why := self._not_a_heartbeat(held)):
            log.warning("node name %s: %s holds %s; not a live node's heartbeat, taking the "
                        "name", self.name, why, self.hb_key)
            self.store.put(self.hb_key, self.identity.encode(), lease)
        elif not created and held is not None:
            record = self.store.get(self.key)
            holder = holder_of(held.value, record.value if record else None, self.name)
            if holder is not None and holder != self.identity:
                self.store.revoke(lease)
                raise NodeNameInUse(
                    f"node name {self.name!r} is in use by {holder.public_ip} (VTEP MAC "
                    f"{holder.vtep_mac}), whose heartbeat is alive; give this node another "
                    f"--node-name (a heartbeat of a node that died expires within {self.ttl}s)")
            log.info("node name %s: taking over our own previous heartbeat", self.name)
            self.store.put(self.hb_key, self.identity.encode(), lease)
        self.lease_id = lease
        log.info("node %s: heartbeat %s on a %ds etcd lease", self.name, self.hb_key, self.ttl)

    def _not_a_heartbeat(self, held: KV) -> str | None:
        """Why the key ``held`` under our heartbeat's name is no live node's heartbeat,
        or None: an overlayd's lives on an etcd lease of at most MAX_HEARTBEAT_TTL s (two
        of the longest --heartbeat-period), so a key without one, or on a longer one,
        was written by hand (or by a hostile node) and would hold the name for ever."""
        if not held.lease:
            return "a key without an etcd lease"
        _, granted = self.store.lease_ttl(held.lease)
        if granted > MAX_HEARTBEAT_TTL:
            return f"a key on a {granted}s etcd lease (an overlayd's lasts at most " \
                   f"{MAX_HEARTBEAT_TTL}s)"
        return None

    # -- heartbeat thread ------------------------------------------------------------
    def run_heartbeat(self) -> None:
        while not self.stop.is_set():
            try:
                self._beat()
                self.sync()
            except OverlayError as e:  # etcd away: keep trying; the heartbeat may lapse
                log.warning("node %s: heartbeat: %s", self.name, e)
            self._changed.wait(self.period)
            self._changed.clear()
        self._say_stopped()

    def _beat(self) -> None:
        if self.lease_id and self.store.keepalive(self.lease_id) > 0:
            return
        if self.lease_id:
            log.warning("node %s: heartbeat lease %x is gone (etcd unreachable for %ds, or "
                        "the node was deleted); registering again", self.name, self.lease_id,
                        self.ttl)
        lease = self.store.grant(self.ttl)
        self.metrics.heartbeat_grants.inc()
        self.store.put(self.hb_key, self.identity.encode(), lease)
        self.lease_id = lease
        with self._lock:
            self._written = None  # the record may be gone too (`nodes delete --force`)

    def sync(self) -> bool:
        """Write the record if its content changed since the last write; True if written."""
        with self._lock:
            record = self.record_of()
            if record is None:
                return False
            record = replace(record, mesh=self.mesh)
            if record == self._written:
                if not self._lost(record):
                    return False
            elif self._counts_may_wait(record):
                return False  # a later beat writes it
            self._write(record)
            return True

    def _counts_may_wait(self, record: NodeRecord) -> bool:
        """Only the mesh's peer counts changed since the last write, and that write is
        younger than the wait for this many peers (20 peers: 1 s; 1000 or more: 60 s)."""
        old = self._written
        if old is None or old.mesh is None or record.mesh is None:
            return False
        if replace(old, mesh=None) != replace(record, mesh=None) or \
                old.mesh.broken != record.mesh.broken:
            return False
        wait = min(COUNTS_WAIT_MAX, COUNTS_WAIT_PER_PEER * record.mesh.peers_total)
        return self.clock() < self._written_at + wait

    def _lost(self, record: NodeRecord) -> bool:
        """Every ``refresh`` seconds: is our record in etcd no longer what we wrote?"""
        if self.clock() < self._check_at:
            return False
        self._check_at = self.clock() + self.refresh
        held = self.store.get(self.key)
        if held is not None and held.value == record.encode():
            return False
        log.warning("node %s: record %s was %s in etcd; writing it again", self.name,
                    self.key, "deleted" if held is None else "changed")
        return True

    def _write(self, record: NodeRecord) -> None:
        value = record.encode()
        held = self.store.get(self.key)
        if held is None:
            ok, _ = self.store.create(self.key, value)
        else:
            ok = self.store.replace(self.key, value, held.mod_revision)
        if not ok:  # written meanwhile (a `nodes delete --force`?): next round again
            return
        self.metrics.record_writes.inc()
        before = self._written
        self._written, self._written_at = record, self.clock()
        self._check_at = self.clock() + self.refresh
        if before is None or before.ready != record.ready or before.reason != record.reason:
            log.info("node %s: record written: %s%s", self.name,
                     "Ready" if record.ready else "NotReady",
                     f" ({record.reason})" if record.reason else "")

    def _say_stopped(self) -> None:
        """Clean stop: the record says why it is NotReady, the heartbeat goes at once."""
        try:
            with self._lock:
                if self._written is not None:
                    self._write(replace(self._written, ready=False, reason="overlayd stopped"))
            if self.lease_id:
                self.store.revoke(self.lease_id)
                log.info("node %s: heartbeat revoked", self.name)
        except OverlayError as e:
            log.warning("node %s: recording the stop: %s", self.name, e)

    # -- mesh thread -----------------------------------------------------------------
    def run_mesh(self, peers: Callable[[], list[Lease]], want: Callable[[Lease], list[Entry]],
                 kernel: Callable[[], Entries], mtu: int) -> None:
        # Rounds start on a fixed cadence (a round's own time is not added to the wait),
        # so a pair broken just after a round starts is published within two intervals.
        next_round = time.monotonic() + self.probe_interval
        while not self.stop.wait(max(0.0, next_round - time.monotonic())):
            next_round = max(next_round + self.probe_interval, time.monotonic())
            checks = check_peers(peers(), mtu, want, kernel())
            summary = summarize(checks, self.mesh, datetime.now(UTC))
            self.metrics.probe_rounds.inc()
            self.metrics.peers_broken.set(summary.peers_total - summary.peers_reachable)
            if summary is not self.mesh:
                self._note_change(self.mesh, summary)
                self.mesh = summary
                self._changed.set()

    def _note_change(self, old: MeshSummary | None, new: MeshSummary) -> None:
        before = {b.subnet: b.cause for b in old.broken} if old else {}
        after = {b.subnet: b.cause for b in new.broken}
        for subnet in sorted(set(before) | set(after)):
            if before.get(subnet) != after.get(subnet):
                log.info("mesh: peer %s %s", subnet, f"broken ({after[subnet]})"
                         if subnet in after else "reachable again")
        log.info("mesh: %d/%d peers reachable", new.peers_reachable, new.peers_total)


# ---- wiring ------------------------------------------------------------------------

def _record_of(d: Daemon, started: datetime) -> Callable[[], NodeRecord | None]:
    def record() -> NodeRecord | None:
        lease = d.manager.current if d.manager else None
        if lease is None or d.plane is None or not d.plane.attrs.vtep_mac:
            return None
        missing = d.readiness()
        return NodeRecord(d.s.node_name, d.plane.attrs.public_ip, lease.subnet,
                          d.plane.attrs.vtep_mac, package_version() or "unknown", started,
                          not missing, "; ".join(missing)[:MAX_TEXT],
                          max(1, round(2 * d.s.heartbeat_period)), d.s.probe_interval)
    return record


def claim_node(d: Daemon) -> NodeAgent:
    """This node's agent, once it holds the node name (NodeNameInUse: overlayd exits 1).
    Called before a subnet lease is taken, so a refused node takes none."""
    assert d.store is not None and d.plane is not None, "the store and data plane come first"
    attrs = d.plane.attrs
    assert attrs.vtep_mac, "the data plane's set-up gives the VTEP MAC"
    agent = NodeAgent(d.store, d.s.node_name, Identity(attrs.public_ip, attrs.vtep_mac),
                      _record_of(d, datetime.now(UTC)), d.stop,
                      AgentMetrics.on(d.metrics.registry), d.s.heartbeat_period,
                      d.s.probe_interval)
    agent.claim()
    return agent


def node_agent_threads(d: Daemon) -> list[tuple[str, Callable[[], None]]]:
    """The claimed agent's two threads (none when the cluster objects are off)."""
    agent, plane, backend = d.node_agent, d.plane, d.backend
    if agent is None:
        return []
    assert plane is not None and backend is not None, "bring_up() set the data plane"
    device = plane.device
    return [("heartbeat", agent.run_heartbeat),
            ("mesh", lambda: agent.run_mesh(lambda: list(backend.leases.values()),
                                            backend.entries_for,
                                            lambda: device.dump(routes=False), d.mtu))]
