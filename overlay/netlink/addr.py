"""IPv4 addresses: the one message builder, the one parser, the :class:`Addr` record."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface
from typing import NamedTuple

from overlay.netlink.rtnl import (
    AF_INET,
    IFA_ADDRESS,
    IFA_BROADCAST,
    IFA_LOCAL,
    IFADDR,
    NLM_F_CREATE,
    NLM_F_EXCL,
    RTM_DELADDR,
    RTM_GETADDR,
    RTM_NEWADDR,
    Msg,
    Rtnl,
    attr,
    attrs,
)


class Addr(NamedTuple):
    """An address on a link; unpacks as ``(index, interface)`` for callers that take pairs
    (``index`` shadows ``tuple.index``, as in ``link.Link``)."""

    index: int  # type: ignore[assignment]
    interface: IPv4Interface


def msg(add: bool, index: int, address: IPv4Interface, broadcast: bool = False,
        what: str | None = None) -> Msg:
    """Add (fails with EEXIST when present) or remove ``address`` on link ``index``;
    ``broadcast``: with the subnet's broadcast address (``ip addr add ... brd +``)."""
    ip = address.ip.packed
    body = (IFADDR.pack(AF_INET, address.network.prefixlen, 0, 0, index)
            + attr(IFA_LOCAL, ip) + attr(IFA_ADDRESS, ip)
            + (attr(IFA_BROADCAST, address.network.broadcast_address.packed) if broadcast else b""))
    if add:
        return Msg(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body, what or f"add address {address}")
    return Msg(RTM_DELADDR, 0, body, what or f"remove address {address}")


def parse(buf: bytes, off: int = 0, end: int | None = None) -> Addr | None:
    """An RTM_NEWADDR payload; None unless IPv4."""
    family, plen, _, _, index = IFADDR.unpack_from(buf, off)
    a = attrs(buf, off + IFADDR.size, end)
    raw = a.get(IFA_LOCAL) or a.get(IFA_ADDRESS)
    if family != AF_INET or not raw or len(raw) != 4:
        return None
    return Addr(index, IPv4Interface((IPv4Address(raw), plen)))


def dump(nl: Rtnl, index: int = 0) -> list[Addr]:
    """The IPv4 addresses (of link ``index`` only, unless 0)."""
    request = IFADDR.pack(AF_INET, 0, 0, 0, index)
    out = (parse(b, o, e) for t, b, o, e in nl.dump(RTM_GETADDR, request) if t == RTM_NEWADDR)
    return [a for a in out if a is not None and (not index or a.index == index)]
