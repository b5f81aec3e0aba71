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
    """One consistent-enough read of everything the checks look at."""
    from .common import open_iproute, translated

    with open_iproute(netns) as ipr:
        with translated("dump links"):
            links = [_link(m) for m in ipr.get_links()]
        with translated("dump addresses"):
            addrs = [_addr(m) for m in ipr.get_addr(family=socket.AF_INET)]
        with translated("dump routes"):
            routes = [r for r in (_route(m) for m in ipr.get_routes(
                family=socket.AF_INET, table=RT_TABLE_MAIN)) if r is not None]
        with translated("dump neighbours"):
            neigh = [n for n in (_neigh(m) for m in ipr.get_neighbours(family=socket.AF_INET))
                     if n is not None]
        with translated("dump FDB"):
            fdb = [f for f in (_fdb(m) for m in ipr.get_neighbours(family=socket.AF_BRIDGE))
                   if f is not None]
    log.debug("kernel state: %d links, %d addrs, %d routes, %d neigh, %d fdb",
              len(links), len(addrs), len(routes), len(neigh), len(fdb))
    return KernelState(links, addrs, routes, neigh, fdb)


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


def _link(m: Any) -> LinkInfo:
    kind = ""
    vxlan = None
    info = m.get_attr("IFLA_LINKINFO")
    if info is not None:
        kind = info.get_attr("IFLA_INFO_KIND") or ""
        data = info.get_attr("IFLA_INFO_DATA")
        if kind == "vxlan" and data is not None:
            local = data.get_attr("IFLA_VXLAN_LOCAL")
            vxlan = VXLANInfo(
                vni=data.get_attr("IFLA_VXLAN_ID") or 0,
                port=data.get_attr("IFLA_VXLAN_PORT") or 0,
                local=IPv4Address(local) if local else None,
                link=data.get_attr("IFLA_VXLAN_LINK") or None,
                learning=bool(data.get_attr("IFLA_VXLAN_LEARNING")),
            )
    return LinkInfo(
        index=m["index"], name=m.get_attr("IFLA_IFNAME"), kind=kind,
        up=bool(m["flags"] & IFF_UP), operstate=m.get_attr("IFLA_OPERSTATE") or "",
        mtu=m.get_attr("IFLA_MTU") or 0, mac=m.get_attr("IFLA_ADDRESS"),
        master=m.get_attr("IFLA_MASTER"), vxlan=vxlan,
    )


def _addr(m: Any) -> AddrInfo:
    addr = m.get_attr("IFA_LOCAL") or m.get_attr("IFA_ADDRESS")
    return AddrInfo(index=m["index"], interface=IPv4Interface(f"{addr}/{m['prefixlen']}"))


def _route(m: Any) -> RouteInfo | None:
    if m["type"] != 1:  # unicast only: skip local/broadcast/blackhole/...
        return None
    dst = m.get_attr("RTA_DST") or "0.0.0.0"
    gw = m.get_attr("RTA_GATEWAY")
    src = m.get_attr("RTA_PREFSRC")
    return RouteInfo(dst=IPv4Network(f"{dst}/{m['dst_len']}", strict=False),
                     gateway=IPv4Address(gw) if gw else None, oif=m.get_attr("RTA_OIF"),
                     onlink=bool(m["flags"] & RTNH_F_ONLINK),
                     prefsrc=IPv4Address(src) if src else None)


def _neigh(m: Any) -> NeighInfo | None:
    dst = m.get_attr("NDA_DST")
    if not dst:
        return None
    mac = m.get_attr("NDA_LLADDR")
    return NeighInfo(dst=IPv4Address(dst), mac=mac.lower() if mac else None,
                     ifindex=m["ifindex"], state=m["state"])


def _fdb(m: Any) -> FDBInfo | None:
    mac = m.get_attr("NDA_LLADDR")
    if not mac:
        return None
    dst = m.get_attr("NDA_DST")
    try:
        dst_ip = IPv4Address(dst) if dst else None
    except ValueError:  # an IPv6 VTEP: not ours to judge here
        return None
    return FDBInfo(mac=mac.lower(), dst=dst_ip, ifindex=m["ifindex"], state=m["state"])
