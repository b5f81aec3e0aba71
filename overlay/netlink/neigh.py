"""Neighbours (ARP and IPv6 neighbour entries) and FDB entries: one record, one parser,
their builders.

An FDB entry is a neighbour of family AF_BRIDGE: ``mac`` is the entry's key and
``dst`` the remote VTEP it points at (None for local/bridge entries)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from overlay.netlink.rtnl import (
    AF_BRIDGE,
    AF_INET,
    AF_INET6,
    NDA_DST,
    NDA_LLADDR,
    NDMSG,
    NLM_F_CREATE,
    NLM_F_REPLACE,
    NTF_SELF,
    NUD_PERMANENT,
    RTM_DELNEIGH,
    RTM_GETNEIGH,
    RTM_NEWNEIGH,
    Lazy,
    Msg,
    Rtnl,
    attr,
    attrs,
    mac_bytes,
    mac_str,
)


@dataclass(frozen=True)
class Neigh:
    dst: IPv4Address | IPv6Address | None
    mac: str | None
    ifindex: int
    state: int
    family: int = AF_INET  # AF_BRIDGE: an FDB entry
    flags: int = 0

    @property
    def permanent(self) -> bool:
        return bool(self.state & NUD_PERMANENT)


# One struct per hot request (IPv4: every remote's neighbour and FDB entry at a resync),
# the same bytes as the attribute-by-attribute form below (tests/netlink compares them).
_NEIGH_ADD4 = struct.Struct(NDMSG.format + "HH4sHH6sxx")  # ndmsg, NDA_DST, NDA_LLADDR
_FDB4 = struct.Struct(NDMSG.format + "HH6sxxHH4s")  # ndmsg, NDA_LLADDR, NDA_DST


def neigh_msg(add: bool, ifindex: int, ip: IPv4Address | IPv6Address, mac: str | None) -> Msg:
    """A permanent ARP (or, for an IPv6 ``ip``, neighbour discovery) entry ``ip -> mac``
    on ``ifindex`` (the VXLAN device)."""
    if add and mac and ip.version == 4:
        body = _NEIGH_ADD4.pack(AF_INET, ifindex, NUD_PERMANENT, 0, 0, 8, NDA_DST, ip.packed,
                                10, NDA_LLADDR, mac_bytes(mac))
        return Msg(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, body,
                   Lazy("neigh %s -> %s", ip, mac))
    return _neigh_msg(add, ifindex, ip, mac)


def _neigh_msg(add: bool, ifindex: int, ip: IPv4Address | IPv6Address,
               mac: str | None) -> Msg:
    family = AF_INET6 if ip.version == 6 else AF_INET
    body = NDMSG.pack(family, ifindex, NUD_PERMANENT, 0, 0) + attr(NDA_DST, ip.packed)
    if add:
        body += attr(NDA_LLADDR, mac_bytes(mac or ""))
        return Msg(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, body,
                   Lazy("neigh %s -> %s", ip, mac))
    return Msg(RTM_DELNEIGH, 0, body, Lazy("neigh %s", ip))


def fdb_msg(add: bool, ifindex: int, mac: str, dst: IPv4Address | IPv6Address) -> Msg:
    """A permanent FDB entry on the VXLAN device: frames to ``mac`` go to VTEP ``dst``."""
    if dst.version == 4:
        body = _FDB4.pack(AF_BRIDGE, ifindex, NUD_PERMANENT, NTF_SELF, 0, 10, NDA_LLADDR,
                          mac_bytes(mac), 8, NDA_DST, dst.packed)
    else:
        body = _fdb_body(ifindex, mac, dst)
    if add:
        return Msg(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, body,
                   Lazy("fdb %s -> %s", mac, dst))
    return Msg(RTM_DELNEIGH, 0, body, Lazy("fdb %s -> %s", mac, dst))


def _fdb_body(ifindex: int, mac: str, dst: IPv4Address | IPv6Address) -> bytes:
    return (NDMSG.pack(AF_BRIDGE, ifindex, NUD_PERMANENT, NTF_SELF, 0)
            + attr(NDA_LLADDR, mac_bytes(mac)) + attr(NDA_DST, dst.packed))


def parse(buf: bytes, off: int = 0, end: int | None = None) -> Neigh:
    family, ifindex, state, flags, _ = NDMSG.unpack_from(buf, off)
    a = attrs(buf, off + NDMSG.size, end)
    raw = a.get(NDA_DST, b"")
    dst = IPv4Address(raw) if len(raw) == 4 else IPv6Address(raw) if len(raw) == 16 else None
    mac = mac_str(a[NDA_LLADDR]) if len(a.get(NDA_LLADDR, b"")) == 6 else None
    return Neigh(dst, mac, ifindex, state, family, flags)


def dump(nl: Rtnl, family: int, ifindex: int = 0) -> list[Neigh]:
    """ARP entries (``AF_INET``), IPv6 neighbours (``AF_INET6``) or FDB entries
    (``AF_BRIDGE``, whose ``dst`` is of either family), of ``ifindex`` unless 0."""
    out = [parse(b, o, e) for t, b, o, e in nl.dump(RTM_GETNEIGH, NDMSG.pack(family, 0, 0, 0, 0))
           if t == RTM_NEWNEIGH]
    return [n for n in out if not ifindex or n.ifindex == ifindex]
