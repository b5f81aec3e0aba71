"""Addresses: the one message builder (either family), the parsers, the :class:`Addr`
(IPv4) and :class:`Addr6` (IPv6, with its scope: the underlay's is a global one) records."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface
from typing import NamedTuple

from overlay.netlink.rtnl import (
    AF_INET,
    AF_INET6,
    IFA_ADDRESS,
    IFA_BROADCAST,
    IFA_F_NODAD,
    IFA_FLAGS,
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
    u32,
)


class Addr(NamedTuple):
    """An address on a link; unpacks as ``(index, interface)`` for callers that take pairs
    (``index`` shadows ``tuple.index``, as in ``link.Link``)."""

    index: int  # type: ignore[assignment]
    interface: IPv4Interface


def msg(add: bool, index: int, address: IPv4Interface | IPv6Interface, broadcast: bool = False,
        what: str | None = None) -> Msg:
    """Add (fails with EEXIST when present) or remove ``address`` on link ``index``;
    ``broadcast``: with the subnet's broadcast address (``ip addr add ... brd +``).
    An IPv6 address is added ``nodad``: usable at once (never "tentative"), as our
    addresses are unique by construction (a lease's own)."""
    ip = address.ip.packed
    if address.version == 6:
        body = (IFADDR.pack(AF_INET6, address.network.prefixlen, IFA_F_NODAD, 0, index)
                + attr(IFA_ADDRESS, ip) + attr(IFA_FLAGS, IFA_F_NODAD.to_bytes(4, "little")))
    else:
        body = (IFADDR.pack(AF_INET, address.network.prefixlen, 0, 0, index)
                + attr(IFA_LOCAL, ip) + attr(IFA_ADDRESS, ip)
                + (attr(IFA_BROADCAST, address.network.broadcast_address.packed)
                   if broadcast else b""))
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


class Addr6(NamedTuple):
    """An IPv6 address on a link, with its scope (0 global, 253 link) and flags
    (``IFA_F_*``: tentative, dadfailed...)."""

    index: int  # type: ignore[assignment]
    interface: IPv6Interface
    scope: int = 0
    flags: int = 0


def parse6(buf: bytes, off: int = 0, end: int | None = None) -> Addr6 | None:
    """An RTM_NEWADDR payload; None unless IPv6."""
    family, plen, flags, scope, index = IFADDR.unpack_from(buf, off)
    a = attrs(buf, off + IFADDR.size, end)
    raw = a.get(IFA_ADDRESS) or a.get(IFA_LOCAL)
    if family != AF_INET6 or not raw or len(raw) != 16:
        return None
    if len(a.get(IFA_FLAGS, b"")) == 4:  # the 32-bit flags, when the kernel sends them
        flags = u32(a[IFA_FLAGS])
    return Addr6(index, IPv6Interface((IPv6Address(raw), plen)), scope, flags)


def dump6(nl: Rtnl, index: int = 0) -> list[Addr6]:
    """The IPv6 addresses (of link ``index`` only, unless 0)."""
    request = IFADDR.pack(AF_INET6, 0, 0, 0, index)
    out = (parse6(b, o, e) for t, b, o, e in nl.dump(RTM_GETADDR, request) if t == RTM_NEWADDR)
    return [a for a in out if a is not None and (not index or a.index == index)]
