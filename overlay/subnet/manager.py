"""The subnet manager: which subnet this node takes, keeping it, and watching the others.

Policy only; storage is the registry (``overlay.subnet.registry.Registry``).

Acquisition, in order:

1. a reservation for this node's public IP is taken (it stays a reservation: no TTL,
   its BackendData is updated); a live lease carrying this node's public IP is reused
   (rewritten revision-checked with a fresh TTL) only if it also carries this node's
   VTEP MAC (persisted, so a restart matches) or is the subnet of this node's previous
   subnet.env — another node with the same public IP (a cloned VM, NAT) must not take
   it over, or the two would revoke each other's etcd lease while both use the subnet;
   a live lease carrying this node's VTEP MAC under another public IP (this node before
   its address changed) is taken back, so one MAC never has two leases;
2. else the subnet from this node's previous subnet.env, if it is still free;
3. else a random subnet among the lowest ``spread`` free ones, so nodes racing each
   other rarely pick the same one; each lost race doubles that window (up to 32x).

Dual-stack (``EnableIPv6`` and this node has a ``PublicIPv6``): the lease also holds an
IPv6 subnet, in its key (Flannel's ``10.244.1.0-24&fd00:10:244:1::-64``).  The IPv6
subnet is paired with the IPv4 one by index (the n-th IPv4 subnet of the range takes the
n-th IPv6 subnet, so 10.244.5.0/24 takes fd00:10:244:5::/64 with the default ranges),
else the previous subnet.env's, else the lowest free one.  A lease this node already
holds keeps its pairing; one whose key lacks the IPv6 half (IPv6 was just enabled) or
has one it must not have (IPv6 off, or no PublicIPv6 any more) is re-keyed in ONE
transaction (``Registry.rekey_lease``), so peers see one change of the same lease.
No free IPv6 subnet, or no PublicIPv6: the node takes an IPv4-only key and says why.

IPv6-only (``EnableIPv4: false``): the config's primary family is IPv6, so all of the
above runs unchanged on IPv6 subnets (``<prefix>/subnets/fd00:10:244:1::-64``), public
IPs and VTEP MACs; there is no second half to pair.

A key holding garbage is never chosen (it exists, so creating it would always lose).
A lost race (``LeaseExists`` / ``LeaseConflict``) is retried with a fresh read, up to
``max_attempts``; it is never an exit.  Reservations belonging to other public IPs are
never taken.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Set as AbstractSet
from dataclasses import replace
from datetime import UTC, datetime
from ipaddress import IPv6Network
from typing import TYPE_CHECKING

from overlay.config import NetworkConfig
from overlay.errors import LeaseConflict, LeaseExists, NoFreeSubnet, OverlayError, RegistryError
from overlay.lease import (
    EventType,
    IPNetwork,
    Lease,
    LeaseAttrs,
    LeaseBatch,
    LeaseEvent,
    LeaseRules,
    LeaseView,
    Rejection,
    lease_key,
    subnet_to_key,
)
from overlay.util.backoff import Backoff

if TYPE_CHECKING:  # the etcd client's import (~115 ms) only where etcd is opened
    from overlay.subnet.registry import Registry, WatchUpdate

log = logging.getLogger(__name__)

DEFAULT_TTL = 24 * 3600
DEFAULT_RENEW_MARGIN = 3600
DEFAULT_SPREAD = 32
RETRY_BACKOFF_MIN = 0.1
RETRY_BACKOFF_MAX = 10.0


# What the watch reports about rejected keys: (rejected now, keys no longer rejected,
# whether this is a complete listing that replaces everything reported before).
OnRejected = Callable[[list[Rejection], list[str], bool], None]


class SubnetManager:
    def __init__(self, registry: Registry, config: NetworkConfig, attrs: LeaseAttrs, *,
                 ttl: int = DEFAULT_TTL, renew_margin: int = DEFAULT_RENEW_MARGIN,
                 previous_subnet: IPNetwork | None = None,
                 rng: random.Random | None = None, max_attempts: int = 20,
                 spread: int = DEFAULT_SPREAD, check_interval: float = 300.0,
                 previous_ipv6_subnet: IPv6Network | None = None):
        if ttl < 1:
            raise ValueError(f"lease TTL must be at least 1 s, got {ttl}")
        self.registry = registry
        self.config = config
        self.attrs = attrs
        self.ttl = ttl
        self.renew_margin = renew_margin
        self.previous_subnet = previous_subnet
        self.previous_ipv6_subnet = previous_ipv6_subnet
        self.rng = rng or random.Random()
        self.max_attempts = max_attempts
        self.spread = spread
        self.check_interval = check_interval
        # Set by run_watch when our own key is deleted or taken; run_keepalive wakes on it.
        self.lost = threading.Event()
        self._lock = threading.Lock()
        self._current: Lease | None = None
        # The running watch's view and callbacks; the lock orders its steps with _rejudge.
        self._watch_lock = threading.RLock()
        self._watching: (tuple[LeaseView, Callable[[LeaseBatch], None], OnRejected | None]
                         | None) = None
        self._renew_deadline: tuple[object, float] = (None, 0.0)
        # The IPv6 halves logged as unused, so each (key, reason) is logged once; the
        # daemon counts them (``on_ipv6_rejected``) beside the rejected keys.
        self._v6_logged: dict[IPNetwork, tuple[str, str]] = {}
        self.on_ipv6_rejected: Callable[[Rejection], None] | None = None

    @property
    def current(self) -> Lease | None:
        """The lease this node holds now (None before ``acquire``)."""
        with self._lock:
            return self._current

    def _set_current(self, lease: Lease) -> Lease:
        with self._lock:
            moved = self._current is None or (self._current.subnet, self._current.ipv6_subnet
                                              ) != (lease.subnet, lease.ipv6_subnet)
            self._current = lease
        if moved:
            self._rejudge()
        return lease

    def _rejudge(self) -> None:
        """Our subnet moved: the running watch judges every lease again at once (whoever
        took our old subnet is a remote now), not at its next event, which may never come."""
        with self._watch_lock:
            if self._watching is None:
                return
            view, on_batch, on_rejected = self._watching
            rules = self._rules()
            if view.rules != rules:
                _emit(view.set_rules(rules), on_batch)
                self._report(view, [], [], False, on_rejected)

    def own_subnet(self) -> IPNetwork | None:
        lease = self.current
        return lease.subnet if lease else None

    def own_ipv6_subnet(self) -> IPv6Network | None:
        """The IPv6 half of this node's lease (dual-stack), else None."""
        lease = self.current
        return lease.ipv6_subnet if lease else None

    # -- acquire --------------------------------------------------------------------

    def acquire(self) -> Lease:
        """Take a subnet (see the module doc).  Raises ``NoFreeSubnet`` or ``RegistryError``."""
        last: Exception | None = None
        for attempt in range(1, self.max_attempts + 1):
            leases, rejected, _ = self._list()
            try:
                # Every lost race widens the choice, so a crowd of racing nodes spreads out.
                lease = self._try_acquire(leases, self.spread << min(attempt - 1, 5),
                                          {r.subnet for r in rejected if r.subnet})
            except (LeaseExists, LeaseConflict) as e:
                last = e
                log.info("lost a race for a subnet (attempt %d/%d): %s; re-reading leases",
                         attempt, self.max_attempts, e)
                time.sleep(self.rng.uniform(0, 0.02 * attempt))
                continue
            lease = self._settle_ipv6_race(lease)
            self.previous_subnet = lease.subnet
            self.previous_ipv6_subnet = lease.ipv6_subnet or self.previous_ipv6_subnet
            return self._set_current(lease)
        raise RegistryError(f"could not acquire a subnet after {self.max_attempts} lost races "
                            f"(last: {last}); is the network nearly full?")

    def _list(self) -> tuple[list[Lease], list[Rejection], int]:
        """Leases, rejected keys and revision."""
        listing = self.registry.list_subnets(with_expiration=False)
        return listing.leases, listing.rejected, listing.revision

    def _is_own(self, lease: Lease) -> bool:
        """Whether ``lease`` is this node's: its public IP and VTEP MAC."""
        a = lease.attrs
        return a.public_ip == self.attrs.public_ip and a.vtep_mac == self.attrs.vtep_mac

    def _mine(self, leases: list[Lease]) -> list[Lease]:
        """The leases this node may take as its own (see the module doc)."""
        mine = []
        for lease in leases:
            if self._ours_by_mac(lease):
                log.info("subnet %s carries this node's VTEP MAC %s with public IP %s (ours "
                         "now %s): taking it back", lease.subnet, lease.attrs.vtep_mac,
                         lease.attrs.public_ip, self.attrs.public_ip)
                mine.append(lease)
                continue
            if (lease.attrs.public_ip != self.attrs.public_ip
                    or not self.config.in_range(lease.subnet)):
                continue
            if lease.reserved or self._is_own(lease) or lease.subnet == self.previous_subnet:
                mine.append(lease)
            else:
                log.error("subnet %s is leased to this node's public IP %s but by VTEP MAC %s "
                          "(ours %s): another node uses the same public IP (cloned VM? NAT? "
                          "set --public-ip); not taking it", lease.subnet, lease.attrs.public_ip,
                          lease.attrs.vtep_mac, self.attrs.vtep_mac)
        return mine

    def _ours_by_mac(self, lease: Lease) -> bool:
        """A live lease of this node from before a change of public IP: it carries our
        persisted VTEP MAC.  Taken back (rewritten), not left beside a new one, where the
        two would claim one MAC for two public IPs."""
        a = lease.attrs
        return (self.attrs.vtep_mac is not None and a.vtep_mac == self.attrs.vtep_mac
                and a.public_ip != self.attrs.public_ip and not lease.reserved
                and self.config.in_range(lease.subnet))

    def _try_acquire(self, leases: list[Lease], spread: int,
                     unusable: AbstractSet[IPNetwork] = frozenset()) -> Lease:
        mine = self._mine(leases)
        if mine:
            mine.sort(key=lambda candidate: (candidate.subnet != self.previous_subnet,
                                             not candidate.reserved,
                                             candidate.attrs.public_ip != self.attrs.public_ip,
                                             candidate.subnet.network_address))
            return self._reuse(self._rekeyed(mine[0], leases))
        # A key holding garbage is not free either: creating it would lose every time.
        taken = {existing.subnet for existing in leases} | unusable
        prev = self.previous_subnet
        if prev is not None and self.config.in_range(prev) and prev not in taken:
            v6 = self._pick_ipv6(prev, leases)
            lease = self.registry.create_lease(prev, self.attrs, self.ttl, v6)
            log.info("acquired subnet %s%s (previous subnet of this node), ttl %ds",
                     prev, f" and {v6}" if v6 else "", self.ttl)
            return lease
        free = self._lowest_free(taken, spread)
        if not free:
            raise self._no_free(leases)
        subnet = self.rng.choice(free)
        v6 = self._pick_ipv6(subnet, leases)
        lease = self.registry.create_lease(subnet, self.attrs, self.ttl, v6)
        log.info("acquired subnet %s%s for %s, ttl %ds", subnet, f" and {v6}" if v6 else "",
                 self.attrs.public_ip, self.ttl)
        return lease

    # -- the IPv6 half ----------------------------------------------------------------

    @property
    def wants_ipv6(self) -> bool:
        """A second (IPv6) half to take: dual-stack only (IPv6-only leases are keyed by
        their IPv6 subnet, so they have no half)."""
        return self.config.dual_stack and self.attrs.public_ipv6 is not None

    def _pick_ipv6(self, subnet: IPNetwork, leases: list[Lease],
                   current: IPv6Network | None = None) -> IPv6Network | None:
        """The IPv6 subnet to pair with ``subnet`` (see the module doc); None when this
        node has no IPv6 half to take."""
        if not self.wants_ipv6:
            if self.config.dual_stack:
                log.warning("IPv6 is enabled but this node has no IPv6 public address "
                            "(--public-ipv6): taking %s for IPv4 only", subnet)
            return None
        cfg = self.config
        taken = {x.ipv6_subnet for x in leases if x.ipv6_subnet is not None
                 and x.subnet != subnet}
        index = (int(subnet.network_address) - int(cfg.subnet_min)) // cfg.subnet_size
        candidates = [current, self.previous_ipv6_subnet]
        if 0 <= index < cfg.ipv6_subnet_count:
            candidates.append(cfg.ipv6_subnet_at(index))
        for cand in candidates:
            if cand is not None and cfg.ipv6_in_range(cand) and cand not in taken:
                return cand
        # The lowest free one: at most len(taken) + 1 steps, however large the range.
        for i in range(min(cfg.ipv6_subnet_count, len(taken) + 1)):
            cand = cfg.ipv6_subnet_at(i)
            if cand not in taken:
                return cand
        log.warning("no free IPv6 subnet in %s (%s): taking %s for IPv4 only",
                    cfg.ipv6_network, cfg.describe_ipv6_range(), subnet)
        return None

    def _settle_ipv6_race(self, lease: Lease) -> Lease:
        """Two nodes that raced may both have created a key with one IPv6 subnet (their
        IPv4 subnets differ, so both creates succeed): the lease created first keeps it,
        as the rule decides; the other node, seeing that on a fresh read, re-keys to a
        free IPv6 subnet.  Bounded: a few rounds, then it keeps IPv4 (the rule already
        leaves its IPv6 half unused) and says so."""
        for _ in range(5):
            if lease.ipv6_subnet is None:
                return lease
            leases, _, _ = self._list()
            holder = min((x for x in leases if x.ipv6_subnet == lease.ipv6_subnet),
                         key=lambda x: (x.create_revision, int(x.subnet.network_address)),
                         default=lease)
            if holder.subnet == lease.subnet:
                return lease
            mine = next((x for x in leases if x.subnet == lease.subnet), lease)
            log.warning("IPv6 subnet %s is also in the older lease of %s (a race): taking "
                        "another", lease.ipv6_subnet, holder.subnet)
            # the contested subnet is taken (by the holder), as is every other held one
            v6 = self._pick_ipv6(lease.subnet, [x for x in leases if x.subnet != lease.subnet])
            try:
                lease = self.registry.rekey_lease(mine, v6, mine.attrs)
            except LeaseConflict as e:
                log.warning("re-keying after the IPv6 race failed (%s); re-reading", e)
        log.warning("could not settle the IPv6 subnet of %s; IPv4 only for now", lease.subnet)
        return lease

    def _rekeyed(self, lease: Lease, leases: list[Lease]) -> Lease:
        """``lease`` with the key it must have now (its IPv6 half added, kept or dropped),
        re-keyed in one transaction when that differs from the key it has."""
        v6 = self._pick_ipv6(lease.subnet, leases, lease.ipv6_subnet)
        if v6 == lease.ipv6_subnet:
            return lease
        rivals = [lease_key(x) for x in leases
                  if x.subnet == lease.subnet and x.ipv6_subnet != lease.ipv6_subnet]
        if rivals:
            # A new key is younger than every other key of our subnet, and the rule gives
            # the subnet to the oldest: re-keying would hand it to the rival.
            log.error("not re-keying the lease of %s: another key holds the same subnet "
                      "(%s); remove it (`overlayctl leases list`), then restart", lease.subnet,
                      ", ".join(rivals))
            return lease
        new = self.registry.rekey_lease(lease, v6, self.attrs)
        log.info("re-keyed the lease of %s: IPv6 subnet %s (was %s)", lease.subnet, v6,
                 lease.ipv6_subnet)
        return new

    def _reuse(self, lease: Lease) -> Lease:
        if lease.reserved:
            # A reservation stays lease-less (it must never expire); only refresh its data.
            new = lease if lease.attrs == self.attrs else self.registry.update_lease(
                lease, self.attrs, None)
            log.info("took reserved subnet %s (reservation for %s)", new.subnet,
                     self.attrs.public_ip)
            return new
        new = self.registry.update_lease(lease, self.attrs, self.ttl)
        log.info("reusing subnet %s already leased to %s, ttl %ds", new.subnet,
                 self.attrs.public_ip, self.ttl)
        return new

    def _lowest_free(self, taken: set[IPNetwork], spread: int) -> list[IPNetwork]:
        out = []
        for subnet in self.config.iter_subnets():
            if subnet not in taken:
                out.append(subnet)
                if len(out) >= spread:
                    break
        return out

    def _no_free(self, leases: list[Lease]) -> NoFreeSubnet:
        in_range = [lease for lease in leases if self.config.in_range(lease.subnet)]
        reserved = sum(1 for lease in in_range if lease.reserved)
        return NoFreeSubnet(
            f"no free subnet in network {self.config.network} (range "
            f"{self.config.describe_range()}): {len(in_range)} of {self.config.subnet_count} "
            f"taken ({reserved} reserved); release unused leases with `overlayctl leases "
            "release`, lower the lease TTL, or enlarge the network")

    # -- renew ----------------------------------------------------------------------

    def renew(self, lease: Lease) -> Lease:
        """Refresh ``lease``; if it was lost, re-acquire (the same subnet if still free)."""
        try:
            new = self.registry.renew_lease(lease)
            log.debug("renewed lease of %s", lease.subnet)
            return self._set_current(new)
        except LeaseConflict as e:
            log.warning("LEASE LOST: %s; re-acquiring a subnet", e)
        return self._reacquire(lease)

    def _renew_at(self, lease: Lease) -> float | None:
        """When (``time.monotonic()``) to renew ``lease``; None for a reservation.

        Turned from the wall clock into a monotonic deadline once, when the lease is
        first seen, so a later clock step cannot delay the renewal past expiry."""
        if lease.reserved or lease.expiration is None:
            return None
        key = (lease.subnet, lease.etcd_lease_id, lease.expiration)
        if self._renew_deadline[0] != key:
            remaining = (lease.expiration - datetime.now(UTC)).total_seconds()
            ttl = lease.ttl or self.ttl
            margin = self.renew_margin if self.renew_margin < ttl else ttl / 2
            self._renew_deadline = (key, time.monotonic() + remaining - margin)
        return self._renew_deadline[1]

    def _next_renewal(self, lease: Lease) -> float:
        """Seconds until ``lease`` should be renewed (``check_interval`` for a reservation)."""
        at = self._renew_at(lease)
        if at is None:
            return self.check_interval
        return max(0.0, min(at - time.monotonic(), self.check_interval))

    def _still_ours(self, lease: Lease) -> bool:
        current = self.registry.get_lease(lease.subnet)
        return (current is not None and current.etcd_lease_id == lease.etcd_lease_id
                and current.attrs.public_ip == self.attrs.public_ip)

    def run_keepalive(self, lease: Lease, stop: threading.Event,
                      on_lease: Callable[[Lease], None]) -> None:
        """Keep ``lease`` alive until ``stop``; re-acquire it when lost and call ``on_lease``.

        Renews ``renew_margin`` seconds before expiry (half the TTL when the margin is not
        smaller than the TTL), checks every ``check_interval`` seconds that the key is
        still ours, and wakes at once when ``lost`` is set (by ``run_watch``).
        ``on_lease`` is called after every re-acquisition (the subnet may be the same or a
        new one), not after plain renewals.  etcd being unreachable is retried with a
        capped backoff; nothing here exits the process.
        """
        self._set_current(lease)
        backoff = Backoff(RETRY_BACKOFF_MIN, RETRY_BACKOFF_MAX)
        while not stop.is_set():
            if self._sleep(self._next_renewal(lease), stop):
                return
            try:
                lease, changed = self._keepalive_step(lease)
                backoff.reset()
            except OverlayError as e:
                log.warning("lease keepalive of %s failed: %s; retrying in %.1fs",
                            lease.subnet, e, backoff.delay)
                if backoff.wait(stop):
                    return
                self.lost.set()  # a loss signal consumed by the failed step must not be lost
                continue
            if changed:
                on_lease(lease)

    def _sleep(self, seconds: float, stop: threading.Event) -> bool:
        """Wait until ``seconds`` pass, ``lost`` is set or ``stop`` is set (True)."""
        deadline = time.monotonic() + seconds
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0 or self.lost.wait(min(left, 0.2)):
                return stop.is_set()
        return True

    def _keepalive_step(self, lease: Lease) -> tuple[Lease, bool]:
        """One wake-up: after a loss signal or a periodic check verify the key, else renew.

        Returns (lease now held, whether it was re-acquired).
        """
        at = self._renew_at(lease)
        # A sleep until ``at`` may end a hair early: that is due, not a periodic check.
        due = at is not None and time.monotonic() >= at - 0.01
        if self.lost.is_set() or not due:
            self.lost.clear()
            if self._still_ours(lease):
                return lease, False
            log.warning("LEASE LOST: %s was deleted or taken while this node held it",
                        lease.subnet)
            return self._reacquire(lease), True
        new = self.renew(lease)
        return new, (new.etcd_lease_id != lease.etcd_lease_id or new.subnet != lease.subnet)

    def _reacquire(self, lost: Lease) -> Lease:
        self.previous_subnet = lost.subnet
        self.previous_ipv6_subnet = lost.ipv6_subnet or self.previous_ipv6_subnet
        new = self.acquire()
        if new.subnet == lost.subnet:
            log.warning("re-acquired subnet %s", new.subnet)
        else:
            log.warning("re-acquired a DIFFERENT subnet %s (was %s)", new.subnet, lost.subnet)
        return new

    # -- watch ----------------------------------------------------------------------

    def _note_own_events(self, events: list[LeaseEvent]) -> None:
        """Wake the keepalive loop when an event says our own key was deleted or taken."""
        own = self.current
        if own is None:
            return
        last = {}  # a re-key is a DELETE and a PUT of one revision: only the last counts
        for ev in events:
            if ev.lease.subnet == own.subnet:
                last[ev.revision] = ev
        for ev in last.values():
            if ev.type is EventType.REMOVED or not self._is_own(ev.lease):
                log.warning("the watch saw lease %s %s", own.subnet,
                            "deleted" if ev.type is EventType.REMOVED else "taken by "
                            f"{ev.lease.attrs.public_ip}")
                self.lost.set()

    def run_watch(self, own: Callable[[], IPNetwork | None], stop: threading.Event,
                  on_batch: Callable[[LeaseBatch], None],
                  on_snapshot: Callable[[list[Lease]], None] | None = None,
                  on_rejected: OnRejected | None = None) -> None:
        """Feed ``on_batch`` with remote lease changes until ``stop`` is set.

        Lists the leases at a revision, emits them as one batch, then watches from the
        next revision.  With ``on_snapshot``, every complete set of remote leases (the
        first listing, a re-listing after a compaction) goes to it instead of being
        turned into a batch, so the caller can reconcile against it.
        This node's own leases are recognised by its public IP and VTEP MAC, not by
        ``own()``: after a re-acquisition the watch may see our new key before the
        manager knows its subnet, and whoever takes our old subnet must show up as a
        remote.  ``own`` is kept for callers and consulted only for logging.  Events on
        our own key also wake ``run_keepalive`` (via ``lost``).  A failed listing is
        retried with a capped backoff.
        Every lease goes through the acceptance rule (``LeaseView`` with ``LeaseRules``):
        only accepted remotes reach ``on_batch``/``on_snapshot``; what is rejected goes to
        ``on_rejected`` (see ``OnRejected``).
        """
        view = LeaseView(rules=self._rules())
        backoff = Backoff(RETRY_BACKOFF_MIN, RETRY_BACKOFF_MAX)
        while not stop.is_set():
            try:
                leases, rejected, rev = self._list()
                break
            except OverlayError as e:
                log.warning("listing leases failed: %s; retrying in %.1fs", e, backoff.delay)
                if backoff.wait(stop):
                    return
        else:
            return
        log.info("watching leases from revision %d (own subnet %s)", rev + 1, own())
        with self._watch_lock:
            self._watching = (view, on_batch, on_rejected)
            self._snapshot(view, leases, on_batch, on_snapshot)
            self._report(view, rejected, [], True, on_rejected)
        try:
            for update in self.registry.watch_leases(rev + 1, stop):
                with self._watch_lock:
                    self._watch_step(view, update, on_batch, on_snapshot, on_rejected)
        finally:
            with self._watch_lock:
                self._watching = None

    def _watch_step(self, view: LeaseView, update: WatchUpdate,
                    on_batch: Callable[[LeaseBatch], None],
                    on_snapshot: Callable[[list[Lease]], None] | None,
                    on_rejected: OnRejected | None) -> None:
        if view.rules != self._rules():  # our subnet moved under a step in flight
            _emit(view.set_rules(self._rules()), on_batch)
            self._report(view, [], [], False, on_rejected)
        if update.snapshot is not None:
            self._check_snapshot(update.snapshot)
            self._snapshot(view, update.snapshot, on_batch, on_snapshot)
            self._report(view, update.rejected, [], True, on_rejected)
        else:
            self._note_own_events(update.events)
            _emit(view.apply(self._remote_events(update.events)), on_batch)
            self._report(view, update.rejected, update.cleared, False, on_rejected)

    def _rules(self) -> LeaseRules:
        """The acceptance rule as it stands for this node now (its subnet may move)."""
        lease = self.current
        own = None if lease is None else lease.subnet
        own6 = None if lease is None else lease.ipv6_subnet
        a = self.attrs
        return LeaseRules.from_config(self.config, () if own is None else (own,),
                                      (a.public_ip,), a.vtep_mac).with_own_ipv6(
            () if own6 is None else (own6,), () if a.public_ipv6 is None else (a.public_ipv6,),
            a.v6_vtep_mac)

    def _report(self, view: LeaseView, rejected: list[Rejection], cleared: list[str],
                complete: bool, on_rejected: OnRejected | None) -> None:
        """Tell ``on_rejected`` what the registry and the rule rejected (only the subnets
        this step touched, so a quiet watch costs nothing)."""
        self._log_ipv6(view)
        if on_rejected is None:
            return
        prefix = self.registry.subnets_prefix

        def full(key: str) -> str:  # the view names keys without the prefix; etcd's
            return key if key.startswith(prefix) else prefix + key  # rejections with it
        now = [*rejected]
        gone = [*cleared]
        for subnet in view.touched:
            r = view.rejected.get(subnet)
            if r is not None:
                now.append(replace(r, key=full(r.key)))
            elif not complete:
                gone.append(prefix + subnet_to_key(subnet))
        # A second key holding an IPv4 subnet already held (``X`` beside ``X&<IPv6>``),
        # and the keys whose rejection a step withdrew (a dual key's is not ``X``).
        now += [replace(r, key=full(r.key)) for r in view.shadow_rejections(view.touched)]
        if not complete:
            held = {r.key for r in now}
            gone += [full(k) for k in view.cleared]
            gone = list(dict.fromkeys(k for k in gone if k not in held))
        view.touched = set()
        view.cleared = []
        if now or gone or complete:
            on_rejected(now, gone, complete)

    def _log_ipv6(self, view: LeaseView) -> None:
        """Log once per key and reason an IPv6 half the rule leaves unused (the IPv4 half
        stays in use, so this is not a rejected key), and once when it is used again."""
        if not view.ipv6_rejected and not self._v6_logged:
            return
        for subnet, r in view.ipv6_rejected.items():
            seen = (r.key, r.reason)
            if self._v6_logged.get(subnet) != seen:
                self._v6_logged[subnet] = seen
                log.warning("lease %s: its IPv6 half is not used (%s: %s); its IPv4 half is",
                            r.key, r.reason, r.detail)
                if self.on_ipv6_rejected is not None:
                    self.on_ipv6_rejected(r)
        for subnet in [s for s in self._v6_logged if s not in view.ipv6_rejected]:
            key, _ = self._v6_logged.pop(subnet)
            if subnet in view.leases:
                log.info("lease %s: its IPv6 half is used again", key)

    def _snapshot(self, view: LeaseView, leases: list[Lease],
                  on_batch: Callable[[LeaseBatch], None],
                  on_snapshot: Callable[[list[Lease]], None] | None) -> None:
        remote = self._remote(leases)
        batch = view.reset(remote)
        if on_snapshot is not None:
            on_snapshot(view.used_leases())  # rejected IPv6 halves left out
        else:
            _emit(batch, on_batch)

    def _remote(self, leases: Iterable[Lease]) -> list[Lease]:
        return [lease for lease in leases if not self._is_own(lease)]

    def _remote_events(self, events: list[LeaseEvent]) -> list[LeaseEvent]:
        """A put of one of our own leases removes that subnet from the remote view."""
        return [LeaseEvent(EventType.REMOVED, e.lease, e.revision)
                if e.type is EventType.ADDED and self._is_own(e.lease)
                else e for e in events]

    def _check_snapshot(self, leases: list[Lease]) -> None:
        own = self.current
        if own is not None and not any(lease.subnet == own.subnet and self._is_own(lease)
                                       for lease in leases):
            self.lost.set()


def _emit(batch: LeaseBatch, on_batch: Callable[[LeaseBatch], None]) -> None:
    if batch:
        on_batch(batch)
