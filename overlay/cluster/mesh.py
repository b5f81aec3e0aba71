"""The health mesh as values: what one node found probing its peers, why a peer is broken,
and the node-by-node matrix ``overlayctl connectivity`` prints.  Pure: no I/O.

Every node probes every peer's VTEP address (the subnet's ``.0`` on the VXLAN device)
over the overlay and publishes only a *summary* in its own node record: how many peers
it probed, how many answered, and the broken ones with a cause.  A cluster of N nodes
therefore holds N small records, never N² rows, and a record is rewritten only when the
summary's content changes (a summary equal to the last one keeps its ``since``).

Causes, most specific first:

* ``stale-vtep``: what we would send the peer's frames to is not what its lease says
  (the kernel's neighbour entry for its ``.0`` or the FDB entry for its VTEP MAC differ
  from the lease), or its own record publishes another VTEP MAC than its lease;
* ``mtu``: small probes are answered but full-size ones with DF are not;
* ``no-answer``: nothing comes back (UDP 8472 filtered, the peer down, the underlay cut).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from overlay.lease import IPAddress, IPNetwork
from overlay.util.text import rfc3339
from overlay.vxlan.entries import FDB, Entries, Entry, Neigh

STALE_VTEP, MTU, NO_ANSWER = "stale-vtep", "mtu", "no-answer"
CAUSES = (STALE_VTEP, MTU, NO_ANSWER)
# The broken peers listed in one record, at most: past this the totals still count them
# (a node cut off from a 1000-node cluster must not write a record of 100 KiB).
MAX_BROKEN_LISTED = 64
MAX_DETAIL = 200

OK, BROKEN, UNKNOWN = "ok", "broken", "unknown"


@dataclass(frozen=True)
class PeerCheck:
    """One peer as one round saw it: the probe's answers and the kernel's VTEP entries."""

    subnet: IPNetwork
    public_ip: IPAddress
    size: int  # ICMP payload bytes of the full-size probe
    full_answered: bool
    small_answered: bool | None  # None: not tried (the full-size probe was answered)
    error: str = ""
    vtep_problem: str | None = None  # see kernel_vtep_problem


@dataclass(frozen=True)
class BrokenPeer:
    subnet: IPNetwork
    public_ip: IPAddress
    cause: str
    since: datetime
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"subnet": str(self.subnet), "public_ip": str(self.public_ip),
                "cause": self.cause, "since": rfc3339(self.since), "detail": self.detail}


@dataclass(frozen=True)
class MeshSummary:
    """What a node publishes about its peers.  ``since``: when this content began."""

    peers_total: int
    peers_reachable: int
    broken: tuple[BrokenPeer, ...]
    since: datetime

    def to_dict(self) -> dict[str, Any]:
        return {"peers_total": self.peers_total, "peers_reachable": self.peers_reachable,
                "broken": [b.to_dict() for b in self.broken], "since": rfc3339(self.since)}

    def same_content(self, other: MeshSummary | None) -> bool:
        return other is not None and replace(other, since=self.since) == self


def kernel_vtep_problem(want: Sequence[Entry], have: Entries) -> str | None:
    """How the kernel's neighbour/FDB entries for a peer differ from what its lease wants
    (``want``: the backend's ``entries_for``), or None.  Routes are the reconcile's job."""
    for e in want:
        if isinstance(e, Neigh):
            got = have.neighs.get(e.ip)
            if got is None or got.mac != e.mac:
                return (f"neighbour {e.ip} is {got.mac if got else 'missing'}, the lease's "
                        f"VtepMAC is {e.mac}")
        elif isinstance(e, FDB) and e not in have.fdb:
            dsts = sorted(str(f.dst) for f in have.fdb if f.mac == e.mac)
            return (f"FDB entry {e.mac} -> {e.dst} is "
                    f"{'to ' + ', '.join(dsts) if dsts else 'missing'}")
    return None


def record_vtep_problem(record_mac: str, lease_mac: str | None) -> str | None:
    """A node's record and its lease disagree on its VTEP MAC (one of them is stale)."""
    if lease_mac is None or record_mac == lease_mac:
        return None
    return f"its record's VTEP MAC is {record_mac}, its lease's VtepMAC is {lease_mac}"


def cause_of(check: PeerCheck) -> tuple[str, str] | None:
    """(cause, detail) for a broken peer, None when it is fine."""
    if check.vtep_problem:
        return STALE_VTEP, check.vtep_problem
    if check.full_answered:
        return None
    if check.small_answered:
        return MTU, (f"{check.size}-byte probes with DF unanswered, small ones answered: the "
                     "path MTU is below the overlay MTU")
    why = check.error or f"no answer to {check.size}-byte or small probes"
    return NO_ANSWER, why


def summarize(checks: Sequence[PeerCheck], previous: MeshSummary | None,
              now: datetime) -> MeshSummary:
    """This round's summary; a broken peer keeps the ``since`` of its cause, and a summary
    whose content did not change is the previous one (so nothing is rewritten)."""
    before = {b.subnet: b for b in previous.broken} if previous else {}
    broken = []
    for check in sorted(checks, key=lambda c: c.subnet):
        found = cause_of(check)
        if found is None:
            continue
        cause, detail = found
        old = before.get(check.subnet)
        since = old.since if old is not None and old.cause == cause else now
        broken.append(BrokenPeer(check.subnet, check.public_ip, cause, since,
                                 detail[:MAX_DETAIL]))
    summary = MeshSummary(len(checks), len(checks) - len(broken),
                          tuple(broken[:MAX_BROKEN_LISTED]), now)
    if previous is not None and summary.same_content(previous):
        return previous
    return summary


# ---- the matrix --------------------------------------------------------------------

@dataclass(frozen=True)
class MeshMember:
    """A node as the matrix sees it (from its record, its heartbeat and its lease)."""

    name: str
    subnet: IPNetwork
    live: bool  # Ready and heartbeating: its summary is current
    mesh: MeshSummary | None
    vtep_problem: str | None = None  # record_vtep_problem for this node


@dataclass(frozen=True)
class Cell:
    state: str  # OK, BROKEN, UNKNOWN
    since: datetime | None = None
    cause: str = ""


@dataclass(frozen=True)
class BrokenPair:
    source: str
    target: str
    cause: str
    detail: str
    since: datetime | None


def _cell(src: MeshMember, dst: MeshMember, by_subnet: Mapping[IPNetwork, BrokenPeer]
          ) -> Cell:
    if not src.live or src.mesh is None:
        return Cell(UNKNOWN)
    if dst.vtep_problem:
        return Cell(BROKEN, None, STALE_VTEP)
    b = by_subnet.get(dst.subnet)
    return Cell(OK, src.mesh.since) if b is None else Cell(BROKEN, b.since, b.cause)


def matrix(members: Sequence[MeshMember]) -> dict[str, dict[str, Cell]]:
    """Cells by source then target, each member's own diagonal left out (N² cells: for
    a table of a few dozen nodes; ``broken_pairs`` scales)."""
    cells: dict[str, dict[str, Cell]] = {}
    for src in members:
        by_subnet = {b.subnet: b for b in src.mesh.broken} if src.mesh else {}
        cells[src.name] = {dst.name: _cell(src, dst, by_subnet)
                           for dst in members if dst.name != src.name}
    return cells


def broken_pairs(members: Sequence[MeshMember]) -> list[BrokenPair]:
    """The broken directed pairs that live probers published (and every live prober's
    pair to a node whose record and lease disagree on its VTEP MAC), sorted; the same
    pairs as ``matrix``'s broken cells, in time proportional to what is broken."""
    by_subnet = {m.subnet: m for m in members}
    stale = [m for m in members if m.vtep_problem]
    pairs = []
    for src in members:
        if not src.live or src.mesh is None:
            continue
        for b in src.mesh.broken:
            dst = by_subnet.get(b.subnet)
            if dst is not None and not dst.vtep_problem and dst.name != src.name:
                pairs.append(BrokenPair(src.name, dst.name, b.cause, b.detail, b.since))
        pairs += [BrokenPair(src.name, dst.name, STALE_VTEP, dst.vtep_problem or "", None)
                  for dst in stale if dst.name != src.name]
    return sorted(pairs, key=lambda p: (p.source, p.target))
