"""Read-only dumps of a node's kernel state for ``overlayctl diagnose`` and ``trace``.

Everything is returned as frozen values, so the checks in ``overlay.diagnose.checks`` run just
as well on state a unit test made up.  All of it is read on raw rtnetlink sockets
(``rtnl``): pyroute2 is not imported (unless a netns is named, to enter it).
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Sequence

from overlay.errors import NetlinkOpError
from overlay.netlink.rtnl import (
    AF_INET,
    IFF_UP,
    IFINFO,
    IFLA_MASTER,
    IFLA_OPERSTATE,
    NUD_PERMANENT,
    RT_TABLE_MAIN,
    RTA_DST,
    RTA_GATEWAY,
    RTA_OIF,
    RTM_GETROUTE,
    RTMSG,
    RTNH_F_ONLINK,
    Msg,
    Rtnl,
    attr,
    attr_u32,
    attrs,
    describe_errno,
    route_type_name,
    u32,
)

log = logging.getLogger(__name__)

RTA_SRC, RTA_IIF, RTA_PREFSRC = 2, 3, 7  # linux/rtnetlink.h: only ``route get`` needs them


@dataclass(frozen=True)
class VXLANInfo:
    vni: int
    port: int
    local: IPv4Address | None
    link: int | None  # ifindex of the underlay device the VXLAN is bound to
    learning: bool


@dataclass(frozen=True)
class LinkInfo:
    index: int
    name: str
    kind: str  # "vxlan", "bridge", "veth", ... ("" for loopback and physical devices)
    up: bool  # administratively up (IFF_UP)
    operstate: str
    mtu: int
    mac: str | None
    master: int | None = None
    vxlan: VXLANInfo | None = None


@dataclass(frozen=True)
class AddrInfo:
    index: int
    interface: IPv4Interface


@dataclass(frozen=True)
class RouteInfo:
    dst: IPv4Network
    gateway: IPv4Address | None
    oif: int | None
    onlink: bool = False
    prefsrc: IPv4Address | None = None
    protocol: int | None = None  # None: unknown (a route get's answer, a made-up state)
    metric: int = 0
    kind: str = "unicast"  # the route type: "blackhole", "unreachable", ... in ``others``

    @property
    def ours(self) -> bool:
        """Made by overlayd (proto 111), or of unknown origin."""
        from overlay.netlink.rawnl import RTPROT_OVERLAY

        return self.protocol is None or self.protocol == RTPROT_OVERLAY


@dataclass(frozen=True)
class NeighInfo:
    dst: IPv4Address
    mac: str | None
    ifindex: int
    state: int

    @property
    def permanent(self) -> bool:
        return bool(self.state & NUD_PERMANENT)


@dataclass(frozen=True)
class FDBInfo:
    mac: str
    dst: IPv4Address | None  # the remote VTEP's IP; None for local/bridge entries
    ifindex: int
    state: int

    @property
    def permanent(self) -> bool:
        return bool(self.state & NUD_PERMANENT)


@dataclass
class KernelState:
    """Links, IPv4 addresses, main-table IPv4 routes, IPv4 neighbours and FDB entries."""

    links: list[LinkInfo] = field(default_factory=list)
    addrs: list[AddrInfo] = field(default_factory=list)
    routes: list[RouteInfo] = field(default_factory=list)
    neigh: list[NeighInfo] = field(default_factory=list)
    fdb: list[FDBInfo] = field(default_factory=list)
    # main-table routes of other types (blackhole, unreachable, prohibit, throw)
    typed_routes: list[RouteInfo] = field(default_factory=list)

    def link(self, name: str) -> LinkInfo | None:
        return next((l for l in self.links if l.name == name), None)

    def link_by_index(self, index: int | None) -> LinkInfo | None:
        return next((l for l in self.links if l.index == index), None)

    def name_of(self, index: int | None) -> str:
        link = self.link_by_index(index)
        return link.name if link else f"if{index}"

    def addrs_of(self, index: int) -> list[IPv4Interface]:
        return [a.interface for a in self.addrs if a.index == index]

    def neigh_on(self, index: int) -> list[NeighInfo]:
        return [n for n in self.neigh if n.ifindex == index]

    def fdb_on(self, index: int) -> list[FDBInfo]:
        return [f for f in self.fdb if f.ifindex == index]

    def ports_of(self, index: int) -> list[LinkInfo]:
        return [l for l in self.links if l.master == index]


def dump_kernel_state(netns: str | None = None) -> KernelState:
    """One read of everything the checks look at, on a raw rtnetlink socket.

    pyroute2 decodes each message into objects; with thousands of routes, neighbours and
    FDB entries that costs over a second, while the raw dumps shared with the daemon
    (``rawnl``) take a few milliseconds.
    """
    from overlay.netlink import rawnl

    nl = rawnl.RawRoute(netns)
    try:
        links = [_raw_link(b, o, e) for t, b, o, e in nl.dump(
            rawnl.RTM_GETLINK, IFINFO.pack(0, 0, 0, 0, 0)) if t == rawnl.RTM_NEWLINK]
        addrs = [AddrInfo(i, a) for i, a in nl.dump_addrs()]
        routes, typed = [], []
        for t, b, o, e in nl.dump(rawnl.RTM_GETROUTE, RTMSG.pack(AF_INET, 0, 0, 0, 0, 0, 0, 0, 0)):
            r = rawnl.parse_any_route(b, o, e) if t == rawnl.RTM_NEWROUTE else None
            if r is None or r.table != RT_TABLE_MAIN:
                continue
            info = RouteInfo(r.dst, r.gateway, r.oif or None, onlink=bool(r.flags & RTNH_F_ONLINK),
                             protocol=r.protocol, metric=r.metric, kind=route_type_name(r.rtype))
            (routes if r.rtype == rawnl.RTN_UNICAST else typed).append(info)
        neigh = [NeighInfo(n.dst, n.mac, n.ifindex, n.state)
                 for n in nl.dump_neigh(socket.AF_INET) if n.dst is not None]
        fdb = [FDBInfo(n.mac, n.dst, n.ifindex, n.state)
               for n in nl.dump_neigh(rawnl.AF_BRIDGE) if n.mac is not None]
    except OSError as e:
        raise NetlinkOpError(f"reading kernel state: {e.strerror or e}", e.errno or 0) from e
    finally:
        nl.close()
    log.debug("kernel state: %d links, %d addrs, %d routes, %d neigh, %d fdb",
              len(links), len(addrs), len(routes), len(neigh), len(fdb))
    return KernelState(links, addrs, routes, neigh, fdb, typed)


_OPERSTATES = ("UNKNOWN", "NOTPRESENT", "DOWN", "LOWERLAYERDOWN", "TESTING", "DORMANT", "UP")


def _raw_link(buf: bytes, off: int, end: int) -> LinkInfo:
    from overlay.netlink.rawnl import parse_link_record

    rec = parse_link_record(buf, off, end)
    a = attrs(buf, off + IFINFO.size, end)
    master = u32(a[IFLA_MASTER]) if IFLA_MASTER in a else None
    op = a[IFLA_OPERSTATE][0] if IFLA_OPERSTATE in a else 0
    vxlan = None
    if rec.kind == "vxlan" and rec.vxlan:
        v = rec.vxlan
        vxlan = VXLANInfo(vni=v.get("id") or 0, port=v.get("port") or 0,
                          local=IPv4Address(v["local"]) if v.get("local") else None,
                          link=v.get("link") or None, learning=bool(v.get("learning")))
    return LinkInfo(index=rec.index, name=rec.name, kind=rec.kind or "",
                    up=bool(rec.flags & IFF_UP),
                    operstate=_OPERSTATES[op] if op < len(_OPERSTATES) else str(op),
                    mtu=rec.mtu, mac=rec.mac, master=master or None, vxlan=vxlan)


@dataclass(frozen=True)
class RouteQuery:
    """One ``ip route get``: to ``dst``; with ``src`` and ``iif`` asked as for a packet
    arriving on ``iif`` to be forwarded, which fails when forwarding is off."""

    dst: IPv4Address
    src: IPv4Address | None = None
    iif: int | None = None


def route_get_msg(q: RouteQuery) -> Msg:
    body = RTMSG.pack(AF_INET, 32, 32 if q.src else 0, 0, 0, 0, 0, 0, 0)
    body += attr(RTA_DST, q.dst.packed)
    if q.src is not None:
        body += attr(RTA_SRC, q.src.packed)
    if q.iif is not None:
        body += attr_u32(RTA_IIF, q.iif)
    return Msg(RTM_GETROUTE, 0, body, f"route get {q.dst}")


def parse_route_reply(buf: bytes, dst: IPv4Address) -> RouteInfo:
    """A ``route get`` answer (an RTM_NEWROUTE payload) as the route to ``dst``."""
    flags = RTMSG.unpack_from(buf, 0)[8]
    a = attrs(buf, RTMSG.size)
    gw, src = a.get(RTA_GATEWAY), a.get(RTA_PREFSRC)
    return RouteInfo(dst=IPv4Network(f"{dst}/32"),
                     gateway=IPv4Address(gw) if gw else None,
                     oif=u32(a[RTA_OIF]) if RTA_OIF in a else None,
                     onlink=bool(flags & RTNH_F_ONLINK),
                     prefsrc=IPv4Address(src) if src else None)


def routes_get(queries: Sequence[RouteQuery], netns: str | None = None
               ) -> list[RouteInfo | None]:
    """The route the kernel would choose for each query, all sent at once on one socket;
    None where it has none (unreachable, or not forwarded)."""
    if not queries:
        return []
    try:
        with Rtnl(netns) as nl:
            answers = nl.batch([route_get_msg(q) for q in queries])
    except OSError as e:
        raise NetlinkOpError(f"route get: {describe_errno(e.errno) if e.errno else e}",
                             e.errno or 0) from e
    out: list[RouteInfo | None] = []
    for q, (replies, code) in zip(queries, answers):
        if code or not replies:
            log.debug("route get %s: %s", q.dst, describe_errno(code) if code else "no answer")
            out.append(None)
        else:
            out.append(parse_route_reply(replies[0], q.dst))
    return out


def route_get(dst: IPv4Address, netns: str | None = None, *, src: IPv4Address | None = None,
              iif: int | None = None) -> RouteInfo | None:
    """One ``ip route get`` (see :class:`RouteQuery`); None if unreachable."""
    return routes_get([RouteQuery(dst, src, iif)], netns)[0]
