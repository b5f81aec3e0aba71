"""Dual-stack: the IPv6 device's backend, fed the IPv6 half of every lease.

A dual-stack node has two VXLAN devices (Flannel's ``flannel.1`` and ``flannel-v6.1``):
``overlay.<VNI>`` over the IPv4 underlay and ``overlay-v6.<VNI>`` over the IPv6 one.
Each is driven by its own :class:`~overlay.vxlan.backend.VXLANBackend`, because the
backend's rule (neigh, FDB, route last; diff against the kernel, never a flush, other
protocols' routes never touched) is the same for both families; only the values differ.

The IPv6 backend sees each lease as its IPv6 half (``entries.v6_half``): a lease whose
``subnet`` is the IPv6 subnet and whose attributes are ``PublicIPv6`` and
``BackendV6Data``.  So its entries are: neigh ``remote VTEP address (the IPv6 subnet's
network address) -> v6 VTEP MAC``, FDB ``v6 VTEP MAC -> PublicIPv6``, and route
``IPv6 subnet via VTEP address onlink dev overlay-v6.<VNI>`` (or, DirectRouting, via
PublicIPv6 on the underlay).  A lease without an IPv6 half has no IPv6 entries.
"""

from __future__ import annotations

from collections.abc import Iterable

from overlay.lease import Lease, LeaseBatch
from overlay.vxlan.backend import BackendSettings, DataPlane, Result, VXLANBackend
from overlay.vxlan.entries import IPNetwork, OtherRoute, v6_half


def v6_batch(batch: LeaseBatch) -> LeaseBatch:
    """The IPv6 halves' part of ``batch``: a lease that gains its IPv6 half (IPv6
    enabled on a running cluster, the node re-keyed) is an addition, one that loses it
    a removal, one whose IPv6 subnet moved both; a change that leaves the IPv6 half as
    it was is nothing."""
    added = [h for h in map(v6_half, batch.added) if h is not None]
    removed = [h for h in map(v6_half, batch.removed) if h is not None]
    changed = []
    for old, new in batch.changed:
        was, now = v6_half(old), v6_half(new)
        if was is not None and (now is None or now.subnet != was.subnet):
            removed.append(was)
            was = None
        if now is None:
            continue
        if was is None:
            added.append(now)
        elif was.attrs != now.attrs:
            changed.append((was, now))
    return LeaseBatch(tuple(added), tuple(removed), tuple(changed))


def merge(a: Result, b: Result) -> Result:
    return Result(a.added + b.added, a.removed + b.removed, a.failed + b.failed,
                  a.conflicts + b.conflicts)


class DualStackBackend(VXLANBackend):
    """The IPv4 backend (itself: the daemon's ``backend``), which also hands every
    batch and reconcile to ``v6``, the IPv6 device's backend, as IPv6 halves."""

    def __init__(self, dp: DataPlane, settings: BackendSettings, v6: VXLANBackend):
        self.v6 = v6
        super().__init__(dp, settings)

    # ``failed`` and ``conflicts`` read both families' remotes (the reconcile loop retries
    # within 1 s while any fails, the gauges count both); the IPv4 code writes only its
    # own, and the filter keeps an IPv6 key from ever landing on the IPv4 side.
    @property
    def failed(self) -> set[IPNetwork]:
        return self._failed4 | self.v6.failed

    @failed.setter
    def failed(self, value: set[IPNetwork]) -> None:
        self._failed4: set[IPNetwork] = {s for s in value if s.version == 4}

    @property
    def conflicts(self) -> dict[IPNetwork, OtherRoute]:
        return {**self._conflicts4, **self.v6.conflicts}

    @conflicts.setter
    def conflicts(self, value: dict[IPNetwork, OtherRoute]) -> None:
        self._conflicts4: dict[IPNetwork, OtherRoute] = {
            s: o for s, o in value.items() if s.version == 4}

    def apply_batch(self, batch: LeaseBatch) -> Result:
        return merge(super().apply_batch(batch), self.v6.apply_batch(v6_batch(batch)))

    def reconcile(self, leases: Iterable[Lease] | None = None) -> Result:
        leases = None if leases is None else list(leases)
        res = super().reconcile(leases)
        halves = None if leases is None else [h for h in map(v6_half, leases) if h is not None]
        return merge(res, self.v6.reconcile(halves))

    def entry_count(self) -> int:
        return super().entry_count() + self.v6.entry_count()
