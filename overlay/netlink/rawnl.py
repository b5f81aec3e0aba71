"""The daemon's rtnetlink messages: neighbour, FDB, route, VXLAN link and address
builders, the record parsers for its dumps, and :class:`RawRoute` (bulk batches, dumps,
link notifications).

pyroute2 spends most of its time encoding and decoding messages in Python (about 20x
``ip -batch`` for 1000 remotes); these messages are a fixed header and three or four
attributes, packed with ``struct`` and sent thousands per ``send()`` by
:meth:`.rtnl.Rtnl.execute`.  Dumps are parsed reading only the attributes we use.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from overlay.netlink.rtnl import (
    AF_BRIDGE,
    AF_INET,
    IFA_ADDRESS,
    IFA_LOCAL,
    IFADDR as _IFADDR,
    IFF_RUNNING,
    IFF_UP,
    IFINFO as _IFINFO,
    IFLA_ADDRESS,
    IFLA_IFNAME,
    IFLA_INFO_DATA,
    IFLA_INFO_KIND,
    IFLA_LINKINFO,
    IFLA_MTU,
    IFLA_VXLAN_ID,
    IFLA_VXLAN_LEARNING,
    IFLA_VXLAN_LINK,
    IFLA_VXLAN_LOCAL,
    IFLA_VXLAN_PORT,
    NDA_DST,
    NDA_LLADDR,
    NDMSG as _NDMSG,
    NLA_F_NESTED,
    NLM_F_CREATE,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NTF_SELF,
    NUD_PERMANENT,
    RT_SCOPE_UNIVERSE,
    RT_TABLE_MAIN,
    RTA_DST,
    RTA_GATEWAY,
    RTA_OIF,
    RTA_PRIORITY,
    RTA_TABLE,
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_DELNEIGH,
    RTM_DELROUTE,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_GETNEIGH,
    RTM_GETROUTE,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWNEIGH,
    RTM_NEWROUTE,
    RTMSG as _RTMSG,
    RTN_UNICAST,
    RTNH_F_ONLINK,
    U32 as _U32,
    Msg,
    Rtnl,
    attr as _nla,
    attrs as _attrs,
    cstr,
    mac_bytes,
    mac_str,
    u32,
)

log = logging.getLogger(__name__)

# Our own route protocol number (iproute2 shows it as "proto 111"): it marks the
# routes this daemon owns, so a reconcile can find and remove stale ones without
# ever touching routes somebody else made.
RTPROT_OVERLAY = 111

def neigh_msg(add: bool, ifindex: int, ip: IPv4Address, mac: str | None) -> Msg:
    """A permanent ARP entry ``ip -> mac`` on ``ifindex`` (the VXLAN device)."""
    body = _NDMSG.pack(AF_INET, ifindex, NUD_PERMANENT, 0, 0) + _nla(NDA_DST, ip.packed)
    if add:
        body += _nla(NDA_LLADDR, mac_bytes(mac or ""))
        return Msg(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, body, f"neigh {ip} -> {mac}")
    return Msg(RTM_DELNEIGH, 0, body, f"neigh {ip}")


def fdb_msg(add: bool, ifindex: int, mac: str, dst: IPv4Address) -> Msg:
    """A permanent FDB entry on the VXLAN device: frames to ``mac`` go to VTEP ``dst``."""
    body = (_NDMSG.pack(AF_BRIDGE, ifindex, NUD_PERMANENT, NTF_SELF, 0)
            + _nla(NDA_LLADDR, mac_bytes(mac)) + _nla(NDA_DST, dst.packed))
    if add:
        return Msg(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, body, f"fdb {mac} -> {dst}")
    return Msg(RTM_DELNEIGH, 0, body, f"fdb {mac} -> {dst}")


def route_msg(add: bool, dst: IPv4Network, gateway: IPv4Address, oif: int,
              onlink: bool, replace: bool = False) -> Msg:
    """``dst via gateway dev oif [onlink] proto 111`` in the main table.

    An add is a create that fails with EEXIST when a route with the same key
    (destination, TOS 0, metric 0) is there, whoever made it: only ``replace`` (for a
    route known to be ours) overwrites.  A delete names proto 111, and the kernel
    matches the protocol, so it never removes another protocol's route to ``dst``.
    """
    body = (_RTMSG.pack(AF_INET, dst.prefixlen, 0, 0, RT_TABLE_MAIN, RTPROT_OVERLAY,
                        RT_SCOPE_UNIVERSE, RTN_UNICAST, RTNH_F_ONLINK if onlink else 0)
            + _nla(RTA_DST, dst.network_address.packed) + _nla(RTA_GATEWAY, gateway.packed)
            + _nla(RTA_OIF, _U32.pack(oif)))
    what = f"route {dst} via {gateway} dev #{oif}{' onlink' if onlink else ''}"
    if add:
        return Msg(RTM_NEWROUTE, NLM_F_CREATE | (NLM_F_REPLACE if replace else NLM_F_EXCL),
                   body, what)
    return Msg(RTM_DELROUTE, 0, body, what)


def vxlan_add_msg(name: str, vni: int, port: int, local: IPv4Address, link: int,
                  mac: str, mtu: int) -> Msg:
    """Create a ``nolearning`` VXLAN device (``ip link add NAME type vxlan ...``)."""
    data = (_nla(IFLA_VXLAN_ID, _U32.pack(vni)) + _nla(IFLA_VXLAN_LINK, _U32.pack(link))
            + _nla(IFLA_VXLAN_LOCAL, local.packed) + _nla(IFLA_VXLAN_LEARNING, b"\0")
            + _nla(IFLA_VXLAN_PORT, struct.pack(">H", port)))
    info = _nla(IFLA_INFO_KIND, b"vxlan") + _nla(IFLA_INFO_DATA | NLA_F_NESTED, data)
    body = (_IFINFO.pack(0, 0, 0, 0, 0) + _nla(IFLA_IFNAME, name.encode() + b"\0")
            + _nla(IFLA_MTU, _U32.pack(mtu)) + _nla(IFLA_ADDRESS, mac_bytes(mac))
            + _nla(IFLA_LINKINFO | NLA_F_NESTED, info))
    return Msg(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body, f"create VXLAN device {name}")


def link_set_msg(index: int, mtu: int | None = None, mac: str | None = None,
                 up: bool | None = None) -> Msg:
    flags, change = (IFF_UP if up else 0), (IFF_UP if up is not None else 0)
    body = _IFINFO.pack(0, 0, index, flags, change)
    if mtu is not None:
        body += _nla(IFLA_MTU, _U32.pack(mtu))
    if mac is not None:
        body += _nla(IFLA_ADDRESS, mac_bytes(mac))
    return Msg(RTM_NEWLINK, 0, body, f"set link #{index}")


def link_del_msg(index: int) -> Msg:
    return Msg(RTM_DELLINK, 0, _IFINFO.pack(0, 0, index, 0, 0), f"delete link #{index}")


def addr_msg(add: bool, index: int, addr: IPv4Interface) -> Msg:
    body = (_IFADDR.pack(AF_INET, addr.network.prefixlen, 0, 0, index)
            + _nla(IFA_LOCAL, addr.ip.packed) + _nla(IFA_ADDRESS, addr.ip.packed))
    if add:
        return Msg(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body, f"add address {addr}")
    return Msg(RTM_DELADDR, 0, body, f"remove address {addr}")


@dataclass(frozen=True)
class NeighRecord:
    family: int
    ifindex: int
    state: int
    flags: int
    dst: IPv4Address | None
    mac: str | None


@dataclass(frozen=True)
class RouteRecord:
    dst: IPv4Network
    gateway: IPv4Address | None
    oif: int
    protocol: int
    table: int
    flags: int
    rtype: int = RTN_UNICAST
    tos: int = 0
    metric: int = 0


@dataclass(frozen=True)
class LinkRecord:
    index: int
    name: str
    flags: int
    mtu: int
    mac: str | None
    kind: str | None
    vxlan: dict  # id, port, local, link, learning (VXLAN devices only)


@dataclass(frozen=True)
class LinkEvent:
    kind: str  # "new" or "del"
    ifindex: int
    name: str | None
    up: bool
    running: bool


def parse_neigh(buf: bytes, off: int, end: int) -> NeighRecord:
    family, ifindex, state, flags, _ = _NDMSG.unpack_from(buf, off)
    a = _attrs(buf, off + _NDMSG.size, end)
    dst = IPv4Address(a[NDA_DST]) if len(a.get(NDA_DST, b"")) == 4 else None
    mac = mac_str(a[NDA_LLADDR]) if len(a.get(NDA_LLADDR, b"")) == 6 else None
    return NeighRecord(family, ifindex, state, flags, dst, mac)


def parse_route(buf: bytes, off: int, end: int) -> RouteRecord | None:
    """An IPv4 unicast route; None for any other family or type."""
    family, _, _, _, _, _, _, rtype, _ = _RTMSG.unpack_from(buf, off)
    if family != AF_INET or rtype != RTN_UNICAST:
        return None
    return parse_any_route(buf, off, end)


def parse_any_route(buf: bytes, off: int, end: int) -> RouteRecord:
    """An IPv4 route of any type (blackhole, unreachable, ... too)."""
    _, dst_len, _, tos, table, proto, _, rtype, flags = _RTMSG.unpack_from(buf, off)
    a = _attrs(buf, off + _RTMSG.size, end)
    if RTA_TABLE in a:
        table = u32(a[RTA_TABLE])
    dst = IPv4Network((IPv4Address(a.get(RTA_DST, b"\0\0\0\0")), dst_len))
    gw = IPv4Address(a[RTA_GATEWAY]) if len(a.get(RTA_GATEWAY, b"")) == 4 else None
    oif = u32(a[RTA_OIF]) if RTA_OIF in a else 0
    metric = u32(a[RTA_PRIORITY]) if RTA_PRIORITY in a else 0
    return RouteRecord(dst, gw, oif, proto, table, flags, rtype, tos, metric)


def parse_link_record(buf: bytes, off: int, end: int) -> LinkRecord:
    _, _, index, flags, _ = _IFINFO.unpack_from(buf, off)
    a = _attrs(buf, off + _IFINFO.size, end)
    name = cstr(a.get(IFLA_IFNAME))
    mtu = u32(a[IFLA_MTU]) if IFLA_MTU in a else 0
    mac = mac_str(a[IFLA_ADDRESS]) if len(a.get(IFLA_ADDRESS, b"")) == 6 else None
    kind, vxlan = None, {}
    if IFLA_LINKINFO in a:
        raw = a[IFLA_LINKINFO]
        info = _attrs(raw, 0, len(raw))
        kind = cstr(info.get(IFLA_INFO_KIND)) or None
        if kind == "vxlan" and IFLA_INFO_DATA in info:
            d = _attrs(info[IFLA_INFO_DATA], 0, len(info[IFLA_INFO_DATA]))
            vxlan = {
                "id": u32(d[IFLA_VXLAN_ID]) if IFLA_VXLAN_ID in d else None,
                "link": u32(d[IFLA_VXLAN_LINK]) if IFLA_VXLAN_LINK in d else 0,
                "local": str(IPv4Address(d[IFLA_VXLAN_LOCAL]))
                if len(d.get(IFLA_VXLAN_LOCAL, b"")) == 4 else None,
                "learning": d[IFLA_VXLAN_LEARNING][0] if IFLA_VXLAN_LEARNING in d else None,
                "port": struct.unpack(">H", d[IFLA_VXLAN_PORT][:2])[0]
                if IFLA_VXLAN_PORT in d else None,
            }
    return LinkRecord(index, name, flags, mtu, mac, kind, vxlan)


def parse_link(mtype: int, buf: bytes, off: int, end: int) -> LinkEvent:
    _, _, index, flags, _ = _IFINFO.unpack_from(buf, off)
    a = _attrs(buf, off + _IFINFO.size, end)
    name = cstr(a[IFLA_IFNAME]) if IFLA_IFNAME in a else None
    return LinkEvent("del" if mtype == RTM_DELLINK else "new", index, name,
                     bool(flags & IFF_UP), bool(flags & IFF_RUNNING))


class RawRoute(Rtnl):
    """An rtnetlink socket (optionally in a named netns) for the daemon's bulk batches
    (:meth:`Rtnl.execute`), its dumps, and link notifications (``groups``)."""

    def __init__(self, netns: str | None = None, groups: int = 0):
        super().__init__(netns, groups, bulk=True)

    def dump_neigh(self, family: int, ifindex: int = 0) -> list[NeighRecord]:
        body = _NDMSG.pack(family, 0, 0, 0, 0)
        out = [parse_neigh(b, o, e) for t, b, o, e in self.dump(RTM_GETNEIGH, body)
               if t == RTM_NEWNEIGH]
        return [n for n in out if not ifindex or n.ifindex == ifindex]

    def dump_routes(self) -> list[RouteRecord]:
        body = _RTMSG.pack(AF_INET, 0, 0, 0, 0, 0, 0, 0, 0)
        out = (parse_route(b, o, e) for t, b, o, e in self.dump(RTM_GETROUTE, body)
               if t == RTM_NEWROUTE)
        return [r for r in out if r is not None]

    def dump_main_routes(self) -> tuple[list[RouteRecord], list[RouteRecord]]:
        """The main table's IPv4 routes: (ours: proto 111 unicast, every other
        protocol's of any type).  Routes of other tables are never looked at."""
        body = _RTMSG.pack(AF_INET, 0, 0, 0, 0, 0, 0, 0, 0)
        ours, others = [], []
        for t, b, o, e in self.dump(RTM_GETROUTE, body):
            if t != RTM_NEWROUTE:
                continue
            # the header says table 254 exactly for main (RTA_TABLE only adds ids > 255)
            family, _, _, _, table, proto, _, rtype, _ = _RTMSG.unpack_from(b, o)
            if family != AF_INET or table != RT_TABLE_MAIN:
                continue
            if proto != RTPROT_OVERLAY:
                others.append(parse_any_route(b, o, e))
            elif rtype == RTN_UNICAST:
                ours.append(parse_any_route(b, o, e))
        return ours, others

    def dump_links(self) -> list[LinkRecord]:
        body = _IFINFO.pack(0, 0, 0, 0, 0)
        return [parse_link_record(b, o, e) for t, b, o, e in self.dump(RTM_GETLINK, body)
                if t == RTM_NEWLINK]

    def dump_addrs(self) -> list[tuple[int, IPv4Interface]]:
        out = []
        for t, b, o, e in self.dump(RTM_GETADDR, _IFADDR.pack(AF_INET, 0, 0, 0, 0)):
            if t != RTM_NEWADDR:
                continue
            family, plen, _, _, index = _IFADDR.unpack_from(b, o)
            a = _attrs(b, o + _IFADDR.size, e)
            raw = a.get(IFA_LOCAL) or a.get(IFA_ADDRESS)
            if family == AF_INET and raw and len(raw) == 4:
                out.append((index, IPv4Interface((IPv4Address(raw), plen))))
        return out

    def read_link_events(self) -> list[LinkEvent]:
        """Block for the next datagram of link notifications (socket bound to RTMGRP_LINK)."""
        return [parse_link(t, b, o, e) for t, b, o, e in self.receive()
                if t in (RTM_NEWLINK, RTM_DELLINK)]
