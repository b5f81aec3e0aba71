"""Routes: the one builder for add/delete (either family), ``route get``, the one parser,
and the one :class:`Route` record (protocol, metric and type included).  ``dump`` and
``dump_main`` read one family (IPv4 unless asked): every IPv4 caller sees IPv4 only."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import NamedTuple, TypeAlias

from overlay.netlink.rtnl import (
    AF_INET,
    AF_INET6,
    NLM_F_CREATE,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    RT_SCOPE_UNIVERSE,
    RT_TABLE_MAIN,
    RTA_DST,
    RTA_GATEWAY,
    RTA_IIF,
    RTA_OIF,
    RTA_PREFSRC,
    RTA_PRIORITY,
    RTA_SRC,
    RTA_TABLE,
    RTM_DELROUTE,
    RTM_GETROUTE,
    RTM_NEWROUTE,
    RTMSG,
    RTN_UNICAST,
    RTNH_F_ONLINK,
    Lazy,
    Msg,
    Rtnl,
    attr,
    attr_u32,
    attrs,
    route_type_name,
    u32,
)

# Our own route protocol number (iproute2 shows it as "proto 111"): it marks the
# routes this daemon owns, so a reconcile can find and remove stale ones without
# ever touching routes somebody else made.
RTPROT_OVERLAY = 111

IPNetwork: TypeAlias = IPv4Network | IPv6Network
IPAddress: TypeAlias = IPv4Address | IPv6Address


class Route(NamedTuple):
    dst: IPv4Network
    gateway: IPv4Address | None
    oif: int | None
    onlink: bool = False
    prefsrc: IPv4Address | None = None
    protocol: int | None = None  # None: unknown (a route get's answer, a made-up state)
    metric: int = 0
    kind: str = "unicast"  # the route type: "blackhole", "unreachable", ...
    table: int = RT_TABLE_MAIN
    tos: int = 0

    @property
    def ours(self) -> bool:
        """Made by overlayd (proto 111), or of unknown origin."""
        return self.protocol is None or self.protocol == RTPROT_OVERLAY


# The hot request (every remote's route at a resync: IPv4, a gateway, no metric) in one
# struct, the same bytes as the attribute-by-attribute form (tests/netlink compares them).
_ROUTE4 = struct.Struct(RTMSG.format + "HH4sHH4sHHI")  # rtmsg, RTA_DST, RTA_GATEWAY, RTA_OIF


def msg(add: bool, dst: IPNetwork, gateway: IPAddress, oif: int, *,
        protocol: int = RTPROT_OVERLAY, onlink: bool = False, metric: int = 0,
        replace: bool = False, what: str | None = None) -> Msg:
    """``dst via gateway dev oif [onlink] [metric M] proto P`` in the main table.

    An add is a create that fails with EEXIST when a route with the same key
    (destination, TOS 0, metric) is there, whoever made it: only ``replace`` (for a
    route known to be ours) overwrites.  A delete names the protocol, and the kernel
    matches it, so it never removes another protocol's route to ``dst``.
    """
    rtm_flags = RTNH_F_ONLINK if onlink else 0
    if dst.version == 4 and gateway.version == 4 and dst.prefixlen and not metric:
        body = _ROUTE4.pack(AF_INET, dst.prefixlen, 0, 0, RT_TABLE_MAIN, protocol,
                            RT_SCOPE_UNIVERSE, RTN_UNICAST, rtm_flags,
                            8, RTA_DST, dst.network_address.packed, 8, RTA_GATEWAY,
                            gateway.packed, 8, RTA_OIF, oif)
    else:
        body = _body(dst, gateway, oif, protocol, rtm_flags, metric)
    described: str | Lazy = what or Lazy("route %s via %s dev #%d%s%s", dst, gateway, oif,
                                         " onlink" if onlink else "",
                                         f" metric {metric}" if metric else "")
    if add:
        return Msg(RTM_NEWROUTE, NLM_F_CREATE | (NLM_F_REPLACE if replace else NLM_F_EXCL),
                   body, described)
    return Msg(RTM_DELROUTE, 0, body, described)


def _body(dst: IPNetwork, gateway: IPAddress, oif: int, protocol: int, rtm_flags: int,
          metric: int) -> bytes:
    family = AF_INET6 if dst.version == 6 else AF_INET
    return (RTMSG.pack(family, dst.prefixlen, 0, 0, RT_TABLE_MAIN, protocol,
                       RT_SCOPE_UNIVERSE, RTN_UNICAST, rtm_flags)
            + (attr(RTA_DST, dst.network_address.packed) if dst.prefixlen else b"")
            + attr(RTA_GATEWAY, gateway.packed) + attr_u32(RTA_OIF, oif)
            + (attr_u32(RTA_PRIORITY, metric) if metric else b""))


def get_msg(dst: IPAddress, src: IPAddress | None = None, iif: int | None = None) -> Msg:
    """``ip route get dst [from src iif IIF]`` (either family, ``src`` of ``dst``'s): with
    ``src`` and ``iif`` asked as for a packet arriving on ``iif`` to be forwarded."""
    family, bits = (AF_INET6, 128) if dst.version == 6 else (AF_INET, 32)
    body = (RTMSG.pack(family, bits, bits if src else 0, 0, 0, 0, 0, 0, 0)
            + attr(RTA_DST, dst.packed))
    if src is not None:
        body += attr(RTA_SRC, src.packed)
    if iif is not None:
        body += attr_u32(RTA_IIF, iif)
    return Msg(RTM_GETROUTE, 0, body, f"route get {dst}")


def parse(buf: bytes, off: int = 0, end: int | None = None) -> Route | None:
    """An RTM_NEWROUTE payload, of any type and table; None unless IPv4."""
    family, dst_len, _, tos, table, proto, _, rtype, flags = RTMSG.unpack_from(buf, off)
    if family != AF_INET:
        return None
    a = attrs(buf, off + RTMSG.size, end)
    if RTA_TABLE in a:
        table = u32(a[RTA_TABLE])
    gw, src = a.get(RTA_GATEWAY, b""), a.get(RTA_PREFSRC, b"")
    return Route(dst=IPv4Network((IPv4Address(a.get(RTA_DST, b"\0\0\0\0")), dst_len)),
                 gateway=IPv4Address(gw) if len(gw) == 4 else None,
                 oif=(u32(a[RTA_OIF]) or None) if RTA_OIF in a else None,
                 onlink=bool(flags & RTNH_F_ONLINK),
                 prefsrc=IPv4Address(src) if len(src) == 4 else None,
                 protocol=proto, metric=u32(a[RTA_PRIORITY]) if RTA_PRIORITY in a else 0,
                 kind=route_type_name(rtype), table=table, tos=tos)


class Route6(NamedTuple):
    """An IPv6 route: :class:`Route`'s fields, of the other family."""

    dst: IPv6Network
    gateway: IPv6Address | None
    oif: int | None
    onlink: bool = False
    prefsrc: IPv6Address | None = None
    protocol: int | None = None
    metric: int = 0
    kind: str = "unicast"
    table: int = RT_TABLE_MAIN
    tos: int = 0


def parse6(buf: bytes, off: int = 0, end: int | None = None) -> Route6 | None:
    """An RTM_NEWROUTE payload, of any type and table; None unless IPv6."""
    family, dst_len, _, tos, table, proto, _, rtype, flags = RTMSG.unpack_from(buf, off)
    if family != AF_INET6:
        return None
    a = attrs(buf, off + RTMSG.size, end)
    if RTA_TABLE in a:
        table = u32(a[RTA_TABLE])
    gw, src = a.get(RTA_GATEWAY, b""), a.get(RTA_PREFSRC, b"")
    return Route6(dst=IPv6Network((IPv6Address(a.get(RTA_DST, bytes(16))), dst_len)),
                  gateway=IPv6Address(gw) if len(gw) == 16 else None,
                  oif=(u32(a[RTA_OIF]) or None) if RTA_OIF in a else None,
                  onlink=bool(flags & RTNH_F_ONLINK),
                  prefsrc=IPv6Address(src) if len(src) == 16 else None,
                  protocol=proto, metric=u32(a[RTA_PRIORITY]) if RTA_PRIORITY in a else 0,
                  kind=route_type_name(rtype), table=table, tos=tos)


def dump(nl: Rtnl) -> list[Route]:
    """Every IPv4 route, of every table and type."""
    out = (parse(b, o, e) for t, b, o, e in nl.dump(RTM_GETROUTE, RTMSG.pack(AF_INET, *[0] * 8))
           if t == RTM_NEWROUTE)
    return [r for r in out if r is not None]


def dump_main(nl: Rtnl) -> tuple[list[Route], list[Route]]:
    """The main table's IPv4 routes: (ours: proto 111 unicast, every other protocol's
    of any type).  Routes of other tables are not parsed (the daemon's reconcile reads
    this every 10 s: the header is looked at first)."""
    ours, others = [], []
    for t, b, o, e in nl.dump(RTM_GETROUTE, RTMSG.pack(AF_INET, *[0] * 8)):
        if t != RTM_NEWROUTE:
            continue
        # the header says table 254 exactly for main (RTA_TABLE only adds ids > 255)
        family, _, _, _, table, proto, _, rtype, _ = RTMSG.unpack_from(b, o)
        if family != AF_INET or table != RT_TABLE_MAIN:
            continue
        if proto != RTPROT_OVERLAY:
            others.append(parse(b, o, e))
        elif rtype == RTN_UNICAST:
            ours.append(parse(b, o, e))
    return ours, others  # type: ignore[return-value]  # AF_INET checked: never None


def dump6(nl: Rtnl) -> list[Route6]:
    """Every IPv6 route, of every table and type."""
    out = (parse6(b, o, e) for t, b, o, e in nl.dump(RTM_GETROUTE, RTMSG.pack(AF_INET6, *[0] * 8))
           if t == RTM_NEWROUTE)
    return [r for r in out if r is not None]


def dump_main6(nl: Rtnl) -> tuple[list[Route6], list[Route6]]:
    """``dump_main`` for IPv6: (ours: proto 111 unicast, every other protocol's)."""
    ours, others = [], []
    for r in dump6(nl):
        if r.table != RT_TABLE_MAIN:
            continue
        if r.protocol != RTPROT_OVERLAY:
            others.append(r)
        elif r.kind == "unicast":
            ours.append(r)
    return ours, others
