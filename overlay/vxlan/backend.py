"""The VXLAN backend: getting the kernel to the entries the remote leases need.

Which entries a lease needs is ``entries.entries_for`` (diagnose expects the same).
Per remote lease: a permanent neighbour ``remote .0 -> VTEP MAC``, an FDB entry
``VTEP MAC -> public IP``, then the route ``remote subnet via .0 onlink``.  The route
goes in LAST, only once both others are in, so the kernel never has a route whose
gateway it would have to ARP for (nothing would answer: the device is ``nolearning``).
If a step fails the earlier ones of that remote are undone and the remote is retried
at the next reconcile.

Routes that other protocols made (the kernel's connected routes, boot, static, dhcp,
another daemon's) are never replaced or deleted: a remote whose subnet has one in the
main table is a *conflict*, left unprogrammed (whatever that route's metric or TOS: ours,
metric 0, would replace or shadow it), reported once, and retried at every reconcile.

Two ways in: ``apply_batch`` (watch events, only the leases concerned) and
``reconcile`` (kernel dump vs every lease; removes stale entries, adds missing ones,
touches nothing that is right — never a flush, so pod traffic is never interrupted).
The device is reached through a small ``DataPlane`` interface so tests use a fake.

One backend drives one device, so one family: the IPv6 device's backend knows each
dual-stack lease by its IPv6 half (``vxlan.dualstack``), keyed by its IPv6 subnet.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from overlay.errors import OverlayError
from overlay.lease import Lease, LeaseBatch
from overlay.util.memory import release_free_memory
from overlay.vxlan.drift import Wanted
from overlay.vxlan.entries import (
    FDB,
    BackendSettings,
    Entries,
    Entry,
    IPNetwork,
    Neigh,
    Op,
    OtherRoute,
    Route,
    entries_for,
    skip_reason,
)

log = logging.getLogger(__name__)


class DataPlane(Protocol):
    # errno per op, 0 = done; EEXIST for a route add: another protocol's route holds
    # that destination (the data plane replaces only a route of its own)
    def program(self, ops: Sequence[Op]) -> list[int]: ...
    def dump(self) -> Entries: ...  # ours, plus ``others``: other protocols' routes
    # mark off in ``want`` what the device has, note the stale; the others' routes
    def diff(self, want: Wanted) -> dict[IPNetwork, OtherRoute]: ...
    def other_routes(self) -> dict[IPNetwork, OtherRoute]: ...


@dataclass
class Result:
    """What one apply/reconcile did."""

    added: int = 0
    removed: int = 0
    failed: tuple[IPNetwork, ...] = ()
    conflicts: tuple[IPNetwork, ...] = ()  # left unprogrammed: another's route is there


class VXLANBackend:
    def __init__(self, dp: DataPlane, settings: BackendSettings):
        self.dp = dp
        self.s = settings
        self.leases: dict[IPNetwork, Lease] = {}
        self.failed: set[IPNetwork] = set()
        # Remotes left unprogrammed because another protocol's route holds their subnet
        # (not in ``failed``: retrying sooner would not help), and the other protocols'
        # main-table routes seen at the last dump, which watch events are checked against.
        self.conflicts: dict[IPNetwork, OtherRoute] = {}
        self._others: dict[IPNetwork, OtherRoute] = {}
        self._skipped: dict[IPNetwork, str] = {}
        self._lock = threading.RLock()
        # Per known lease its entries; how many known leases share each FDB entry (the
        # only kind two leases can share: one node, two subnets); how many neigh and route
        # entries there are.  A batch then costs what it changes, not what is known.
        self._entries: dict[IPNetwork, tuple[Entry, ...]] = {}
        self._fdb_refs: Counter[FDB] = Counter()
        self._unshared = 0

    # ---- what a lease needs ---------------------------------------------------
    def entries_for(self, lease: Lease) -> list[Entry]:
        """The entries of one remote lease (``entries.entries_for``); [] if skipped."""
        es = entries_for(lease, self.s)
        if not es:
            self._warn_skip(lease, skip_reason(lease, self.s) or "no entries")
        return es

    def _warn_skip(self, lease: Lease, why: str) -> None:
        if self._skipped.get(lease.subnet) != why:
            self._skipped[lease.subnet] = why
            log.warning("skipping lease %s: %s", lease.subnet, why)

    def desired(self, leases: Iterable[Lease] | None = None
                ) -> tuple[Entries, dict[int, IPNetwork]]:
        """All entries wanted for ``leases`` (default: every known lease) and their
        owners, by the entry's ``id`` (hashing thousands of entries costs more)."""
        want = Entries()
        owner: dict[int, IPNetwork] = {}
        pairs = (self._entries.items() if leases is None
                 else ((lease.subnet, self._known_entries(lease)) for lease in leases))
        for subnet, es in pairs:
            for e in es:
                want.add(e)
                owner[id(e)] = subnet
        return want, owner

    def _known_entries(self, lease: Lease) -> tuple[Entry, ...]:
        cached = self._entries.get(lease.subnet)
        if cached is not None and self.leases.get(lease.subnet) is lease:
            return cached
        return tuple(self.entries_for(lease))

    # ---- the known leases and the entries they want ------------------------------
    def _remember(self, lease: Lease) -> None:
        if lease.subnet in self.leases:
            self._forget(lease.subnet)
        self._add_known(lease.subnet, lease)

    def _add_known(self, subnet: IPNetwork, lease: Lease) -> None:
        """``lease`` at ``subnet``, which is not known yet."""
        es = tuple(self.entries_for(lease))
        self.leases[subnet] = lease
        self._entries[subnet] = es
        f = _fdb_of(es)
        if f is not None:
            self._fdb_refs[f] = self._fdb_refs.get(f, 0) + 1
            self._unshared += 2
        else:
            self._unshared += len(es)

    def _forget(self, subnet: IPNetwork) -> tuple[Entry, ...]:
        self.leases.pop(subnet, None)
        es = self._entries.pop(subnet, ())
        self._unshared -= len(es)
        f = _fdb_of(es)
        if f is not None:
            self._unshared += 1
            self._fdb_refs[f] -= 1
            if self._fdb_refs[f] <= 0:
                del self._fdb_refs[f]
        return es

    def _set_all(self, leases: Iterable[Lease]) -> None:
        self.leases = {lease.subnet: lease for lease in leases}
        self._entries = {s: tuple(self.entries_for(lease)) for s, lease in self.leases.items()}
        fdbs = (_fdb_of(es) for es in self._entries.values())
        self._fdb_refs = Counter(f for f in fdbs if f is not None)
        self._unshared = sum(2 if len(es) == 3 else len(es) for es in self._entries.values())

    def _keeper(self, subnets: Iterable[IPNetwork]) -> Callable[[Entry], bool]:
        """Whether a known lease still wants an entry that a lease of ``subnets`` had: a
        neigh or route only that subnet's lease can want (a neigh by IP: adding replaces
        its MAC); an FDB entry any lease of the same node."""
        mine = Entries()
        for s in subnets:
            for e in self._entries.get(s, ()):
                mine.add(e)

        def keep(e: Entry) -> bool:
            if isinstance(e, FDB):
                return self._fdb_refs.get(e, 0) > 0
            return e.ip in mine.neighs if isinstance(e, Neigh) else e in mine
        return keep

    # ---- the two ways in ------------------------------------------------------
    def apply_batch(self, batch: LeaseBatch) -> Result:
        """Program what a batch of watch events changed; nothing else is touched."""
        with self._lock:
            # A full listing right after a reconcile repeats leases already programmed.
            fresh = tuple(lease for lease in batch.added if lease.subnet not in self.leases
                          or self.leases[lease.subnet].attrs != lease.attrs)
            batch = LeaseBatch(added=fresh, removed=batch.removed, changed=batch.changed)
            if not batch:
                return Result()
            current = Entries()
            old = [*batch.removed, *(o for o, _ in batch.changed)]
            for lease in old:
                known = self.leases.get(lease.subnet)
                olds = self._forget(lease.subnet) if known is not None else ()
                if known is None or known.attrs != lease.attrs:
                    olds = (*olds, *self.entries_for(lease))
                for e in olds:
                    current.add(e)
            for lease in batch.removed:
                self.failed.discard(lease.subnet)
                self._skipped.pop(lease.subnet, None)
                log.info("remote %s (%s) removed", lease.subnet, lease.attrs.public_ip)
            new = [*batch.added, *(n for _, n in batch.changed)]
            for lease in new:
                self._remember(lease)
            # Only leases that get entries are "added"/"changed": a skipped one (no VTEP
            # MAC, other VNI...) was already said once by _warn_skip, and nothing is programmed.
            for o, n in batch.changed:
                if self._entries.get(n.subnet):
                    log.info("remote %s changed: public IP %s -> %s, VTEP MAC %s -> %s",
                             n.subnet, o.attrs.public_ip, n.attrs.public_ip, o.attrs.vtep_mac,
                             n.attrs.vtep_mac)
            for lease in batch.added:
                if self._entries.get(lease.subnet):
                    log.info("remote %s added (public IP %s, VTEP MAC %s)", lease.subnet,
                             lease.attrs.public_ip, lease.attrs.vtep_mac)
            keep = self._keeper(lease.subnet for lease in old)
            blocked = self._blocked(new)
            if blocked:
                new = [lease for lease in new if lease.subnet not in blocked]
                keep = _dropping(keep, blocked)
            want_new, owner = self.desired(new)
            scope = {lease.subnet for lease in old} | {lease.subnet for lease in new} | set(blocked)
            dels: list[Entry] = [
                *(r for r in current.routes.values() if not keep(r)),
                *(f for f in current.fdb if not keep(f)),
                *(n for n in current.neighs.values() if not keep(n))]
            first: list[Entry] = [*(n for n in want_new.neighs.values() if n not in current),
                                  *(f for f in want_new.fdb if f not in current)]
            routes: list[Entry] = [r for r in want_new.routes.values() if r not in current]
            return self._converge(dels, first, routes, owner, set(owner.values()), blocked,
                                  scope)

    def reconcile(self, leases: Iterable[Lease] | None = None) -> Result:
        """Make the device's entries exactly those of the known leases (or ``leases``)."""
        res = self._reconcile(leases)
        # Its dump (and the listing before a snapshot) were the peak, now freed: give the
        # C heap back, or the RSS stays at that peak (see overlay.util.memory).
        release_free_memory()
        return res

    def _reconcile(self, leases: Iterable[Lease] | None) -> Result:
        with self._lock:
            if leases is not None:
                self._set_all(leases)
            want, blocked = self._diff()
            first, routes = want.missing()
            owner = self._owners(first + routes)
            # Remotes failing before whose entries are all in now count as done too.
            touched = set(owner.values()) | {s for s in self.failed
                                             if s in self.leases and s not in blocked}
            res = self._converge(want.stale_in_order(), first, routes, owner, touched,
                                 blocked)
            if res.added or res.removed:
                log.info("reconcile: %d entries added, %d stale removed, %d remotes failing, "
                         "%d route conflicts", res.added, res.removed, len(res.failed),
                         len(res.conflicts))
            return res

    def _diff(self) -> tuple[Wanted, dict[IPNetwork, OtherRoute]]:
        """The device's dump against every known lease but the blocked ones (see
        :mod:`.drift`).  Which are blocked is known from the last dump's other routes; if
        this dump shows others that change it, once more with the fresh ones."""
        for _ in range(2):
            blocked = self._blocked()
            want = Wanted()
            for s, es in self._entries.items():
                if not blocked or s not in blocked:
                    for e in es:
                        want.add(e)
            self._others = self.dp.diff(want)
            if self._blocked().keys() == blocked.keys():
                break
        return want, blocked

    def _owners(self, entries: list[Entry]) -> dict[int, IPNetwork]:
        """The known lease of each of ``entries`` (objects of ``_entries``), by ``id``."""
        if not entries:
            return {}
        ids = {id(e) for e in entries}
        return {id(e): s for s, es in self._entries.items() for e in es if id(e) in ids}

    def entry_count(self) -> int:
        """Entries in place: those of every known lease except the failing ones."""
        with self._lock:
            if not self.failed and not self.conflicts:
                return self._unshared + len(self._fdb_refs)
            want, _ = self.desired(lease for s, lease in self.leases.items()
                                   if s not in self.failed and s not in self.conflicts)
            return len(want)

    # ---- converge --------------------------------------------------------------
    def _converge(self, stale: list[Entry], first: list[Entry], routes: list[Entry],
                  owner: dict[int, IPNetwork], touched: set[IPNetwork],
                  conflicts: dict[IPNetwork, OtherRoute] | None = None,
                  scope: set[IPNetwork] | None = None) -> Result:
        """Delete ``stale`` (routes first); add ``first`` (neighbours and FDB entries),
        then the ``routes`` of the remotes whose neighbour and FDB entry are in.

        ``owner``: the remote of each entry to add, by ``id``; ``touched``: the remotes
        this pass programs (their failure state is decided here).  ``conflicts``: remotes
        known to conflict (left out of the adds); a route add that meets another's route
        adds to them.  ``scope``: the remotes whose conflict state this pass decides
        (None: all).
        """
        conflicts = dict(conflicts or {})
        res = Result()
        dels = [Op(False, e) for e in stale]
        if dels:
            codes = self.dp.program(dels)
            res.removed = sum(1 for c in codes if c == 0)
        failed: set[IPNetwork] = set()
        done: dict[IPNetwork, list[Entry]] = {}
        adds = [Op(True, e) for e in first]
        for op, code in zip(adds, self.dp.program(adds), strict=True):
            subnet = owner[id(op.entry)]
            if code:
                failed.add(subnet)
            else:
                done.setdefault(subnet, []).append(op.entry)
                res.added += 1
        radds = [Op(True, r) for r in routes if owner[id(r)] not in failed]
        taken: set[IPNetwork] = set()
        for op, code in zip(radds, self.dp.program(radds), strict=True):
            if code == errno.EEXIST:
                taken.add(owner[id(op.entry)])
            elif code:
                failed.add(owner[id(op.entry)])
            else:
                res.added += 1
        if taken:
            conflicts.update(self._taken(taken))
        self._undo(failed | taken, done)
        self.failed -= set(conflicts)  # first: a conflict is not "programmed after failures"
        self._note_failures(failed, touched)
        self._note_conflicts(conflicts, scope)
        res.failed = tuple(sorted(failed))
        res.conflicts = tuple(sorted(conflicts))
        return res

    # ---- conflicts with other protocols' routes -----------------------------------
    def _blocked(self, leases: Iterable[Lease] | None = None) -> dict[IPNetwork, OtherRoute]:
        """The remotes of ``leases`` (default: all known) that want a route where another
        protocol has one."""
        others = self._others
        if not others:
            return {}
        if leases is None:  # a reconcile: far fewer others than leases to look up
            subnets: Iterable[IPNetwork] = (s for s in others if s in self.leases)
        else:
            subnets = (lease.subnet for lease in leases if lease.subnet in others)
        return {s: others[s] for s in subnets
                if any(isinstance(e, Route) for e in self._entries.get(s, ()))}

    def _taken(self, subnets: set[IPNetwork]) -> dict[IPNetwork, OtherRoute]:
        """Remotes whose route add met another's route: which route (a fresh look, kept
        for the watch events that follow)."""
        try:
            self._others = self.dp.other_routes()
        except OverlayError as e:  # still conflicts: the add was refused; named later
            log.warning("reading other protocols' routes failed: %s", e)
        return {s: self._others.get(s, OtherRoute(s, "unknown")) for s in subnets}

    def _note_conflicts(self, found: dict[IPNetwork, OtherRoute],
                        scope: set[IPNetwork] | None) -> None:
        """Log a conflict once (again only if the other route changes), and its end."""
        for subnet, other in found.items():
            if self.conflicts.get(subnet) != other:
                lease = self.leases.get(subnet)
                log.warning("remote %s (public IP %s) left unprogrammed: another protocol's "
                            "route holds its subnet (%s), which overlayd never replaces; "
                            "retried at each reconcile", subnet,
                            lease.attrs.public_ip if lease else "?", other)
        before = self.conflicts
        kept = {} if scope is None else {s: o for s, o in before.items() if s not in scope}
        for subnet in set(before) - set(kept) - set(found):
            if subnet in self.leases:
                log.info("remote %s: no other protocol's route holds its subnet any more "
                         "(was %s)", subnet, before[subnet])
        self.conflicts = {**kept, **found}

    def _undo(self, failed: set[IPNetwork], done: dict[IPNetwork, list[Entry]]) -> None:
        """A remote that failed half-way loses what it got in this pass, so a retry
        starts from a clean slate and no half-programmed remote lingers."""
        undo = [Op(False, e) for s in sorted(failed) for e in reversed(done.get(s, []))]
        if undo:
            self.dp.program(undo)

    def _note_failures(self, failed: set[IPNetwork], touched: set[IPNetwork]) -> None:
        for subnet in failed - self.failed:
            log.warning("remote %s: programming failed; will retry at the next reconcile", subnet)
        for subnet in (self.failed & touched) - failed:
            log.info("remote %s: programmed after earlier failures", subnet)
        self.failed = (self.failed - touched) | failed


def _dropping(keep: Callable[[Entry], bool],
              blocked: dict[IPNetwork, OtherRoute]) -> Callable[[Entry], bool]:
    """``keep`` except the neigh and route of the ``blocked`` remotes (their FDB entry
    may be shared with another lease of the node: the next reconcile sorts it out)."""
    gateways = {s.network_address for s in blocked}

    def keep2(e: Entry) -> bool:
        if isinstance(e, Route):
            return e.dst not in blocked and keep(e)
        if isinstance(e, Neigh):
            return e.ip not in gateways and keep(e)
        return keep(e)
    return keep2


class Reconciler:
    """When the daemon reconciles: periodically, on demand (``kick``), and sooner
    (``retry``) while something is failing."""

    def __init__(self, backend: VXLANBackend, interval: float = 10.0, retry: float = 1.0):
        self.backend = backend
        self.interval = interval
        self.retry = retry
        self._kick = threading.Event()
        self._retry_soon = False

    def kick(self) -> None:
        self._kick.set()

    def retry_soon(self) -> None:
        """Something outside the backend failed: wake after ``retry``, not ``interval``."""
        self._retry_soon = True

    def wait(self, stop: threading.Event) -> bool:
        """Sleep until kicked, the interval passes, or stop; False if stopping."""
        timeout = self.retry if self.backend.failed or self._retry_soon else self.interval
        self._retry_soon = False
        self._kick.wait(timeout)
        self._kick.clear()
        return not stop.is_set()


def _fdb_of(es: tuple[Entry, ...]) -> FDB | None:
    """The FDB entry of one remote's entries: its neigh, FDB and route (a direct route
    has no FDB entry), the only kind of entry two leases (one node) can share."""
    f = es[1] if len(es) == 3 else None
    return f if isinstance(f, FDB) else None
