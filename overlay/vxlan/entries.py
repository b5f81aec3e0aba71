"""Kernel entries for remote nodes as plain values (no I/O, no pyroute2).

``entries_for`` is THE rule for which entries a remote lease needs: the backend programs
what it returns and ``overlayctl diagnose`` expects exactly that, so the two cannot
drift apart.  ``vxlan.VXLANDevice`` programs and dumps the entries.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)
from typing import TypeAlias, cast

from overlay.lease import Lease, LeaseAttrs

# Each device holds one family's entries: overlay.<VNI> IPv4, overlay-v6.<VNI> IPv6.
IPAddress: TypeAlias = IPv4Address | IPv6Address
IPNetwork: TypeAlias = IPv4Network | IPv6Network


@dataclass(frozen=True, slots=True)
class Neigh:
    """Permanent ARP (IPv6: neighbour) entry on the VXLAN device: the remote's VTEP
    address (its subnet's network address) -> its VTEP MAC."""

    ip: IPAddress
    mac: str


@dataclass(frozen=True, slots=True)
class FDB:
    """FDB entry on the VXLAN device: frames to ``mac`` are sent to VTEP ``dst``."""

    mac: str
    dst: IPAddress


@dataclass(frozen=True, slots=True)
class Route:
    """``dst via gateway``: onlink on the VXLAN device, or ``direct`` via the underlay."""

    dst: IPNetwork
    gateway: IPAddress
    direct: bool = False


Entry: TypeAlias = Neigh | FDB | Route


@dataclass(frozen=True)
class BackendSettings:
    """What the rule needs to know about this node."""

    vni: int
    public_ip: IPAddress  # the family of the device's underlay
    # public IP with its prefix: the L2 subnet for DirectRouting
    underlay: IPv4Interface | IPv6Interface
    direct_routing: bool = False


def entries_for(lease: Lease, s: BackendSettings) -> list[Entry]:
    """The entries of one remote lease, in programming order: neigh, FDB, then the route
    (last, so the kernel never ARPs for its gateway); a DirectRouting peer on our L2
    subnet gets only a route via its public IP.  [] when the backend skips the lease
    (``skip_reason`` says why)."""
    a = lease.attrs
    if _skip_reason(lease, s) is not None:
        return []
    if s.direct_routing and a.public_ip in s.underlay.network:
        return [Route(lease.subnet, a.public_ip, direct=True)]
    if not a.vtep_mac:
        return []
    gw = lease.subnet.network_address
    return [Neigh(gw, a.vtep_mac), FDB(a.vtep_mac, a.public_ip), Route(lease.subnet, gw)]


def v6_half(lease: Lease) -> Lease | None:
    """``lease`` as the IPv6 backend sees it, or None when it has no IPv6 half.

    The backend and the entries rule use a lease's ``subnet`` and its attributes'
    public IP, VNI, VTEP MAC and backend type only as values to compare and program,
    for either family: typed as a ``Lease`` (whose fields say IPv4), the half carries
    IPv6 values in them (the casts below), and nothing else ever sees it."""
    a = lease.attrs
    if lease.ipv6_subnet is None or a.public_ipv6 is None:
        return None
    attrs = LeaseAttrs(cast(IPv4Address, a.public_ipv6), a.backend_type, a.v6_vni,
                       a.v6_vtep_mac, a.v6_extra)
    return replace(lease, subnet=cast(IPv4Network, lease.ipv6_subnet), attrs=attrs,
                   ipv6_subnet=None)


def skip_reason(lease: Lease, s: BackendSettings) -> str | None:
    """Why ``entries_for`` gives ``lease`` nothing; None when it gives entries."""
    why = _skip_reason(lease, s)
    if why is None and not lease.attrs.vtep_mac and not (
            s.direct_routing and lease.attrs.public_ip in s.underlay.network):
        why = "no VtepMAC in the lease"
    return why


def _skip_reason(lease: Lease, s: BackendSettings) -> str | None:
    """The reasons that hold whatever the route would be."""
    a = lease.attrs
    # A missing VNI means ours: Flannel wrote none before v0.13.
    if a.backend_type != "vxlan" or (a.vni is not None and a.vni != s.vni):
        return f"backend {a.backend_type} VNI {a.vni}, we are vxlan VNI {s.vni}"
    if a.public_ip == s.public_ip:
        return f"public IP {a.public_ip} is our own"
    return None


@dataclass(frozen=True)
class OtherRoute:
    """A main-table route that another protocol made (kernel, boot, static, dhcp, another
    daemon's): never ours to replace or delete.  A remote whose subnet has one is left
    unprogrammed (a conflict), because our route would replace it or, with another
    metric or TOS, shadow it."""

    dst: IPNetwork
    protocol: str  # as ``ip route`` names it: "kernel", "static", "42"
    dev: str = ""  # "" for a route without a device (blackhole, unreachable)
    kind: str = "unicast"  # the route type
    metric: int = 0

    def __str__(self) -> str:
        kind = "" if self.kind == "unicast" else f"{self.kind} "
        dev = f" dev {self.dev}" if self.dev else ""
        metric = f" metric {self.metric}" if self.metric else ""
        return f"{kind}{self.dst}{dev} proto {self.protocol}{metric}"


@dataclass
class Entries:
    """A set of entries keyed the way the kernel keys them."""

    neighs: dict[IPAddress, Neigh] = field(default_factory=dict)
    fdb: set[FDB] = field(default_factory=set)
    routes: dict[IPNetwork, Route] = field(default_factory=dict)
    # Filled by a dump only: other protocols' routes by destination (not entries of ours).
    others: dict[IPNetwork, OtherRoute] = field(default_factory=dict)

    def add(self, e: Entry) -> None:
        if isinstance(e, Neigh):
            self.neighs[e.ip] = e
        elif isinstance(e, FDB):
            self.fdb.add(e)
        else:
            self.routes[e.dst] = e

    def __contains__(self, e: object) -> bool:
        if isinstance(e, Neigh):
            return self.neighs.get(e.ip) == e
        if isinstance(e, FDB):
            return e in self.fdb
        if isinstance(e, Route):
            return self.routes.get(e.dst) == e
        return False

    def __len__(self) -> int:
        return len(self.neighs) + len(self.fdb) + len(self.routes)

    def all(self) -> list[Entry]:
        return [*self.neighs.values(), *self.fdb, *self.routes.values()]


@dataclass(frozen=True)
class DeviceView:
    """A VXLAN device as diagnose reads it (``device.read_device``, nothing changed): its
    settings, its underlay's MTU and address, and the entries overlayd owns on it."""

    name: str
    mtu: int
    mac: str | None
    local: IPv4Address | IPv6Address | None
    underlay_mtu: int | None
    underlay_address: IPv4Interface | IPv6Interface | None
    entries: Entries


@dataclass(frozen=True)
class Op:
    """Add (create or replace) or delete one entry."""

    add: bool
    entry: Entry

    def __str__(self) -> str:
        return f"{'add' if self.add else 'del'} {describe(self.entry)}"


def describe(e: Entry) -> str:
    if isinstance(e, Neigh):
        return f"neigh {e.ip} lladdr {e.mac}"
    if isinstance(e, FDB):
        return f"fdb {e.mac} dst {e.dst}"
    return f"route {e.dst} via {e.gateway}{' (direct)' if e.direct else ' onlink'}"
