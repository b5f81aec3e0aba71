"""pyroute2's reads, as this package's records: a second, independent decoder.

The daemon, the CNI plugin and diagnose read with the hand-written codec (measured
faster where it matters, see the README's Netlink section).  This module decodes the
same kernel state with pyroute2 into the same record types (:class:`.link.Link`,
:class:`.addr.Addr`, :class:`.route.Route`, :class:`.neigh.Neigh`), so tests can check
the codec against something that is not the code under test, and benchmarks can time
pyroute2's reads honestly.  pyroute2 is imported only when a function here runs.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

from overlay.errors import NetlinkOpError
from overlay.netlink.addr import Addr
from overlay.netlink.kernel_state import KernelState
from overlay.netlink.link import Link, VXLANInfo
from overlay.netlink.neigh import Neigh
from overlay.netlink.netns import require_netns
from overlay.netlink.route import Route
from overlay.netlink.rtnl import (
    AF_BRIDGE,
    AF_INET,
    IFF_PROMISC,
    IFF_RUNNING,
    IFF_UP,
    RT_TABLE_MAIN,
    RTNH_F_ONLINK,
    describe_errno,
    route_type_name,
)


def _vxlan(data: Any) -> VXLANInfo:
    local = data.get("IFLA_VXLAN_LOCAL")
    return VXLANInfo(vni=data.get("IFLA_VXLAN_ID") or 0, port=data.get("IFLA_VXLAN_PORT") or 0,
                     local=IPv4Address(local) if local else None,
                     link=data.get("IFLA_VXLAN_LINK") or None,
                     learning=bool(data.get("IFLA_VXLAN_LEARNING")))


def link_of(msg: Any) -> Link:
    info = msg.get("IFLA_LINKINFO")
    kind = (info.get("IFLA_INFO_KIND") or "") if info is not None else ""
    data = info.get("IFLA_INFO_DATA") if info is not None else None
    flags = msg["flags"]
    return Link(index=msg["index"], name=msg.get("IFLA_IFNAME") or "", kind=kind,
                up=bool(flags & IFF_UP), operstate=msg.get("IFLA_OPERSTATE") or "UNKNOWN",
                mtu=msg.get("IFLA_MTU") or 0, mac=msg.get("IFLA_ADDRESS"),
                master=msg.get("IFLA_MASTER") or None,
                vxlan=_vxlan(data) if kind == "vxlan" and data is not None else None,
                promisc=bool(flags & IFF_PROMISC), running=bool(flags & IFF_RUNNING))


def addr_of(msg: Any) -> Addr:
    ip = msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS")
    return Addr(msg["index"], IPv4Interface(f"{ip}/{msg['prefixlen']}"))


def route_of(msg: Any) -> Route:
    gw, src = msg.get("RTA_GATEWAY"), msg.get("RTA_PREFSRC")
    return Route(dst=IPv4Network(f"{msg.get('RTA_DST') or '0.0.0.0'}/{msg['dst_len']}"),
                 gateway=IPv4Address(gw) if gw else None, oif=msg.get("RTA_OIF") or None,
                 onlink=bool(msg["flags"] & RTNH_F_ONLINK),
                 prefsrc=IPv4Address(src) if src else None, protocol=msg["proto"],
                 metric=msg.get("RTA_PRIORITY") or 0, kind=route_type_name(msg["type"]),
                 table=msg.get("RTA_TABLE") or msg["table"], tos=msg["tos"])


def neigh_of(msg: Any) -> Neigh:
    dst, mac = msg.get("NDA_DST"), msg.get("NDA_LLADDR")
    return Neigh(dst=IPv4Address(dst) if dst and ":" not in dst else None, mac=mac,
                 ifindex=msg["ifindex"], state=msg["state"], family=msg["family"],
                 flags=msg["flags"])


def read_kernel_state(netns: str | None = None) -> KernelState:
    """What :func:`.kernel_state.dump_kernel_state` reads, decoded by pyroute2."""
    from pyroute2 import IPRoute, NetlinkError

    try:
        ipr = IPRoute(netns=require_netns(netns), flags=0) if netns else IPRoute()
    except (NetlinkError, OSError) as e:
        code = getattr(e, "code", None) or getattr(e, "errno", 0) or 0
        raise NetlinkOpError(f"pyroute2 cannot open netlink: {describe_errno(code)}", code) from e
    with ipr:
        links = [link_of(m) for m in ipr.get_links()]
        addrs = [addr_of(m) for m in ipr.get_addr(family=AF_INET)]
        main = [r for r in map(route_of, ipr.get_routes(family=AF_INET))
                if r.table == RT_TABLE_MAIN]
        neighs = [n for n in map(neigh_of, ipr.get_neighbours(family=AF_INET))
                  if n.dst is not None]
        fdb = [n for n in map(neigh_of, ipr.get_neighbours(family=AF_BRIDGE))
               if n.mac is not None]
    return KernelState(links, addrs, [r for r in main if r.kind == "unicast"], neighs, fdb,
                       [r for r in main if r.kind != "unicast"])
