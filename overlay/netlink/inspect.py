"""Read-only dumps of a node's kernel state for ``overlayctl diagnose`` and ``trace``.

Everything is returned as frozen values (no pyroute2 objects escape this module), so the
checks in ``overlay.diagnose`` run just as well on state a unit test made up.  pyroute2
is imported lazily: the value types are needed without it.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

from .rtnl import (  # noqa: F401  (NUD_NOARP: kept as one of this module's names)
    IFF_UP, IFINFO, IFLA_MASTER, IFLA_OPERSTATE, NUD_NOARP, NUD_PERMANENT, RT_TABLE_MAIN,
    RTNH_F_ONLINK, attrs, u32)

log = logging.getLogger(__name__)


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

    def link(self, name: str) -> LinkInfo | None:
        return next((l for l in self.links if l.name == name), None)

    def link_by_index(self, index: int | None) -> LinkInfo | None:
        return next((l for l in self.links if l.index == index), None)

    def name_of(self, index: int | None) -> str:
        link = self.link_by_index(index)
        return link.name if link else f"if{index}"

    def addrs_of(self, index: int) -> list[IPv4Interface]:
        return [a.interface for a in self.addrs if a.index == index]

    def routes_via(self, index: int) -> list[RouteInfo]:
        return [r for r in self.routes if r.oif == index]

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
    from . import rawnl

    nl = rawnl.RawRoute(netns)
    try:
        links = [_raw_link(b, o, e) for t, b, o, e in nl.dump(
            rawnl.RTM_GETLINK, IFINFO.pack(0, 0, 0, 0, 0)) if t == rawnl.RTM_NEWLINK]
        addrs = [AddrInfo(i, a) for i, a in nl.dump_addrs()]
        routes = [RouteInfo(r.dst, r.gateway, r.oif or None, onlink=bool(r.flags & RTNH_F_ONLINK))
                  for r in nl.dump_routes() if r.table == RT_TABLE_MAIN]
        neigh = [NeighInfo(n.dst, n.mac, n.ifindex, n.state)
                 for n in nl.dump_neigh(socket.AF_INET) if n.dst is not None]
        fdb = [FDBInfo(n.mac, n.dst, n.ifindex, n.state)
               for n in nl.dump_neigh(rawnl.AF_BRIDGE) if n.mac is not None]
    except OSError as e:
        from ..errors import NetlinkOpError

        raise NetlinkOpError(f"reading kernel state: {e.strerror or e}", e.errno or 0) from e
    finally:
        nl.close()
    log.debug("kernel state: %d links, %d addrs, %d routes, %d neigh, %d fdb",
              len(links), len(addrs), len(routes), len(neigh), len(fdb))
    return KernelState(links, addrs, routes, neigh, fdb)


_OPERSTATES = ("UNKNOWN", "NOTPRESENT", "DOWN", "LOWERLAYERDOWN", "TESTING", "DORMANT", "UP")


def _raw_link(buf: bytes, off: int, end: int) -> LinkInfo:
    from .rawnl import parse_link_record

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


def route_get(dst: IPv4Address, netns: str | None = None, *, src: IPv4Address | None = None,
              iif: int | None = None) -> RouteInfo | None:
    """The route the kernel would choose for ``dst`` (``ip route get``); None if unreachable.

    With ``src`` and ``iif`` it is asked as for a packet arriving on ``iif`` to forward,
    which fails when forwarding is off.
    """
    from pyroute2 import NetlinkError

    from .common import open_iproute

    with open_iproute(netns) as ipr:
        try:
            kwargs: dict[str, Any] = {"dst": str(dst)}
            if src is not None:
                kwargs["src"] = str(src)
            if iif is not None:
                kwargs["iif"] = iif
            msgs = ipr.route("get", **kwargs)
        except NetlinkError as e:
            log.debug("route get %s: errno %d", dst, e.code)
            return None
    for m in msgs:
        gw = m.get_attr("RTA_GATEWAY")
        src = m.get_attr("RTA_PREFSRC")
        return RouteInfo(dst=IPv4Network(f"{dst}/32"), gateway=IPv4Address(gw) if gw else None,
                         oif=m.get_attr("RTA_OIF"), onlink=bool(m["flags"] & RTNH_F_ONLINK),
                         prefsrc=IPv4Address(src) if src else None)
    return None
