"""Read-only dumps of a node's kernel state for ``overlayctl diagnose`` and ``trace``.

Everything is returned as frozen values (no pyroute2 objects escape this module), so the
checks in ``overlay.diagnose`` run just as well on state a unit test made up.  pyroute2
is imported lazily: the value types are needed without it.
"""

from __future__ import annotations

import logging
import socket
import struct
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

log = logging.getLogger(__name__)

IFF_UP = 0x1
NUD_PERMANENT = 0x80
NUD_NOARP = 0x40
RTNH_F_ONLINK = 0x4
RT_TABLE_MAIN = 254


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
            rawnl.RTM_GETLINK, _IFINFO.pack(0, 0, 0, 0, 0)) if t == rawnl.RTM_NEWLINK]
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


_IFINFO = struct.Struct("=BxHiII")  # family, type, index, flags, change
_U32 = struct.Struct("=I")
IFLA_MASTER, IFLA_OPERSTATE = 10, 16
_OPERSTATES = ("UNKNOWN", "NOTPRESENT", "DOWN", "LOWERLAYERDOWN", "TESTING", "DORMANT", "UP")


def _attrs(buf: bytes, off: int, end: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    while off + 4 <= end:
        n, kind = struct.unpack_from("=HH", buf, off)
        if n < 4:
            break
        out[kind & 0x3FFF] = buf[off + 4:off + n]
        off += (n + 3) & ~3
    return out


def _raw_link(buf: bytes, off: int, end: int) -> LinkInfo:
    from .rawnl import parse_link_record

    rec = parse_link_record(buf, off, end)
    a = _attrs(buf, off + _IFINFO.size, end)
    master = _U32.unpack(a[IFLA_MASTER][:4])[0] if IFLA_MASTER in a else None
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
