"""Read-only snapshot of a node's kernel state for ``overlayctl diagnose`` and ``trace``.

Everything is returned as the frozen records of ``link``, ``addr``, ``route`` and
``neigh``, so the checks in ``overlay.diagnose`` run just as well on state a unit test
made up.  The snapshot is read with pyroute2 (:mod:`.pyroute2_adapter`): on 1000
remotes it takes ~0.3 s plus ~0.17 s of import against ~0.03 s for the codec, which
diagnose can afford (see the README's Netlink section).  :func:`read_with_codec` reads
the same through the codec the daemon uses, for the test that both agree.  The few
``route get`` requests of trace stay on the codec: one send on one socket.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, ip_network
from typing import TypeAlias, cast

from overlay.errors import NetlinkOpError
from overlay.netlink import addr, link, neigh, route
from overlay.netlink.addr import Addr
from overlay.netlink.link import Link, VXLANInfo
from overlay.netlink.neigh import Neigh
from overlay.netlink.netns import open_rtnl
from overlay.netlink.route import Route
from overlay.netlink.rtnl import AF_BRIDGE, RT_TABLE_MAIN, describe_errno

log = logging.getLogger(__name__)

# The names diagnose reads them by: the same record types (an FDB entry is a Neigh of
# family AF_BRIDGE).
LinkInfo: TypeAlias = Link
AddrInfo: TypeAlias = Addr
RouteInfo: TypeAlias = Route
NeighInfo: TypeAlias = Neigh
FDBInfo: TypeAlias = Neigh
__all__ = ["AddrInfo", "FDBInfo", "KernelState", "LinkInfo", "NeighInfo", "RouteInfo",
           "RouteQuery", "VXLANInfo", "dump_kernel_state", "read_ipv6_state", "read_with_codec",
           "route_get", "routes_get"]


@dataclass
class KernelState:
    """Links, IPv4 addresses, main-table IPv4 routes, IPv4 neighbours and FDB entries."""

    links: list[Link] = field(default_factory=list)
    addrs: list[Addr] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    neigh: list[Neigh] = field(default_factory=list)
    fdb: list[Neigh] = field(default_factory=list)
    # main-table routes of other types (blackhole, unreachable, prohibit, throw)
    typed_routes: list[Route] = field(default_factory=list)

    def link(self, name: str) -> Link | None:
        return next((ln for ln in self.links if ln.name == name), None)

    def link_by_index(self, index: int | None) -> Link | None:
        return next((ln for ln in self.links if ln.index == index), None)

    def name_of(self, index: int | None) -> str:
        found = self.link_by_index(index)
        return found.name if found else f"if{index}"

    def addrs_of(self, index: int) -> list[IPv4Interface]:
        return [a.interface for a in self.addrs if a.index == index]

    def neigh_on(self, index: int) -> list[Neigh]:
        return [n for n in self.neigh if n.ifindex == index]

    def fdb_on(self, index: int) -> list[Neigh]:
        return [f for f in self.fdb if f.ifindex == index]

    def ports_of(self, index: int) -> list[Link]:
        return [ln for ln in self.links if ln.master == index]


def dump_kernel_state(netns: str | None = None) -> KernelState:
    """One read of everything the checks look at (pyroute2 decodes it)."""
    from overlay.netlink import pyroute2_adapter

    return _snapshot(*pyroute2_adapter.read(netns))


def read_with_codec(netns: str | None = None) -> KernelState:
    """The same read through the hand-written codec (the daemon's dumps)."""
    nl = open_rtnl(netns, bulk=True)
    try:
        return _snapshot(link.dump(nl), addr.dump(nl), route.dump(nl),
                         neigh.dump(nl, socket.AF_INET), neigh.dump(nl, AF_BRIDGE))
    except OSError as e:
        raise NetlinkOpError(f"reading kernel state: {e.strerror or e}", e.errno or 0) from e
    finally:
        nl.close()


def read_ipv6_state(netns: str | None = None) -> KernelState:
    """The IPv6 side for ``trace`` over IPv6: links, IPv6 addresses, main-table IPv6
    routes, IPv6 neighbours and FDB entries, read through the codec.  The records are
    :class:`KernelState`'s shapes holding IPv6 values (``Addr6``, ``Route6``): trace reads
    only the fields both families share (the casts below say so)."""
    nl = open_rtnl(netns, bulk=True)
    try:
        state = _snapshot(link.dump(nl), cast(list[Addr], addr.dump6(nl)),
                          cast(list[Route], route.dump6(nl)),
                          neigh.dump(nl, socket.AF_INET6), neigh.dump(nl, AF_BRIDGE))
    except OSError as e:
        raise NetlinkOpError(f"reading kernel state: {e.strerror or e}", e.errno or 0) from e
    finally:
        nl.close()
    return state


def _snapshot(links: list[Link], addrs: list[Addr], all_routes: list[Route],
              all_neigh: list[Neigh], all_fdb: list[Neigh]) -> KernelState:
    """Main-table routes (unicast, and the other types apart), neighbours with an IP,
    FDB entries with a MAC."""
    main = [r for r in all_routes if r.table == RT_TABLE_MAIN]
    neighs = [n for n in all_neigh if n.dst is not None]
    fdb = [n for n in all_fdb if n.mac is not None]
    routes = [r for r in main if r.kind == "unicast"]
    typed = [r for r in main if r.kind != "unicast"]
    log.debug("kernel state: %d links, %d addrs, %d routes, %d neigh, %d fdb",
              len(links), len(addrs), len(routes), len(neighs), len(fdb))
    return KernelState(links, addrs, routes, neighs, fdb, typed)


@dataclass(frozen=True)
class RouteQuery:
    """One ``ip route get``: to ``dst``; with ``src`` and ``iif`` asked as for a packet
    arriving on ``iif`` to be forwarded, which fails when forwarding is off.  An IPv6
    ``dst`` is answered with a ``Route6`` (typed ``Route``, as ``read_ipv6_state``'s)."""

    dst: IPv4Address | IPv6Address
    src: IPv4Address | IPv6Address | None = None
    iif: int | None = None


def routes_get(queries: Sequence[RouteQuery], netns: str | None = None
               ) -> list[Route | None]:
    """The route the kernel would choose for each query, all sent at once on one socket;
    None where it has none (unreachable, or not forwarded)."""
    if not queries:
        return []
    try:
        with open_rtnl(netns) as nl:
            answers = nl.batch([route.get_msg(q.dst, q.src, q.iif) for q in queries])
    except OSError as e:
        raise NetlinkOpError(f"route get: {describe_errno(e.errno) if e.errno else e}",
                             e.errno or 0) from e
    out: list[Route | None] = []
    for q, (replies, code) in zip(queries, answers, strict=True):
        parse = route.parse6 if q.dst.version == 6 else route.parse
        found = cast(Route | None, parse(replies[0]) if not code and replies else None)
        if found is None:
            log.debug("route get %s: %s", q.dst, describe_errno(code) if code else "no answer")
            out.append(None)
        else:  # the answer's protocol is the matched route's: not asked about here
            host = cast(IPv4Network, ip_network(q.dst))
            out.append(found._replace(dst=host, protocol=None, metric=0, kind="unicast"))
    return out


def route_get(dst: IPv4Address, netns: str | None = None, *, src: IPv4Address | None = None,
              iif: int | None = None) -> Route | None:
    """One ``ip route get`` (see :class:`RouteQuery`); None if unreachable."""
    return routes_get([RouteQuery(dst, src, iif)], netns)[0]
