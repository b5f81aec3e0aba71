"""Kernel entries for remote nodes as plain values (no I/O, no pyroute2).

The backend (policy) computes these; ``vxlan.VXLANDevice`` programs and dumps them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Union


@dataclass(frozen=True)
class Neigh:
    """Permanent ARP entry on the VXLAN device: the remote's ``.0`` -> its VTEP MAC."""

    ip: IPv4Address
    mac: str


@dataclass(frozen=True)
class FDB:
    """FDB entry on the VXLAN device: frames to ``mac`` are sent to VTEP ``dst``."""

    mac: str
    dst: IPv4Address


@dataclass(frozen=True)
class Route:
    """``dst via gateway``: onlink on the VXLAN device, or ``direct`` via the underlay."""

    dst: IPv4Network
    gateway: IPv4Address
    direct: bool = False


Entry = Union[Neigh, FDB, Route]


@dataclass(frozen=True)
class OtherRoute:
    """A main-table route that another protocol made (kernel, boot, static, dhcp, another
    daemon's): never ours to replace or delete.  A remote whose subnet has one is left
    unprogrammed (a conflict), because our route would replace it or, with another
    metric or TOS, shadow it."""

    dst: IPv4Network
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

    neighs: dict[IPv4Address, Neigh] = field(default_factory=dict)
    fdb: set[FDB] = field(default_factory=set)
    routes: dict[IPv4Network, Route] = field(default_factory=dict)
    # Filled by a dump only: other protocols' routes by destination (not entries of ours).
    others: dict[IPv4Network, OtherRoute] = field(default_factory=dict)

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
