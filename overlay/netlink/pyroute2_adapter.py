"""pyroute2's reads, as this package's records: the one adapter.

The daemon and the CNI plugin read with the hand-written codec, where measured targets
need it (see the README's Netlink section); diagnose and trace read with pyroute2,
which meets theirs.  This module turns pyroute2's messages into the same record types
the codec yields (:class:`.link.Link`, :class:`.addr.Addr`, :class:`.route.Route`,
:class:`.neigh.Neigh`), so what diagnose sees and what the backend sees cannot drift
(an integration test compares both on one kernel state).  pyroute2 is imported only
when :func:`read` runs.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

from overlay.errors import NetlinkOpError
from overlay.netlink.addr import Addr
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


def read(netns: str | None = None) -> tuple[list[Link], list[Addr], list[Route], list[Neigh],
                                            list[Neigh]]:
    """Links, IPv4 addresses, IPv4 routes (every table and type), IPv4 neighbours and
    FDB entries of this namespace or ``netns``, decoded by pyroute2."""
    from pyroute2 import IPRoute, NetlinkError

    try:
        ipr = IPRoute(netns=require_netns(netns), flags=0) if netns else IPRoute()
    except (NetlinkError, OSError) as e:
        code = getattr(e, "code", None) or getattr(e, "errno", 0) or 0
        raise NetlinkOpError(f"pyroute2 cannot open netlink: {describe_errno(code)}", code) from e
    try:
        with ipr:
            return ([link_of(m) for m in ipr.get_links()],
                    [addr_of(m) for m in ipr.get_addr(family=AF_INET)],
                    [route_of(m) for m in ipr.get_routes(family=AF_INET)],
                    [neigh_of(m) for m in ipr.get_neighbours(family=AF_INET)],
                    [neigh_of(m) for m in ipr.get_neighbours(family=AF_BRIDGE)])
    except (NetlinkError, OSError) as e:
        code = getattr(e, "code", None) or getattr(e, "errno", 0) or 0
        raise NetlinkOpError(f"reading kernel state: {describe_errno(code)}", code) from e
