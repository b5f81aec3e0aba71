"""The reconcile's diff, done while the kernel dump is read (no table of kernel entries).

A reconcile compares the VXLAN device's entries with the ones every known lease wants,
every 10 s on every node.  With thousands of remotes, turning the whole dump into
typed entries first (per entry a parsed record, an ``IPv4Address``, an entry object and
a slot in a set, all hashed by Python code) was most of the reconcile's CPU and the
daemon's largest transient.  Here the wanted entries are keyed the way a dump reads
them (integers and MAC strings taken from objects the backend already holds), each
dumped entry is looked up as soon as its few attributes are read, and marked off; only
the differences become entries: the stale ones (to delete) and the wanted ones that no
dumped entry marked off (to add).

The dumps ask the kernel for the device's own entries only (a neighbour dump filtered
by ``NDA_IFINDEX``, an FDB dump by the port's ifindex, as ``bridge fdb show dev`` asks),
so a node's bridge and pod veths are not read at all.  ``scan_*`` yield raw values;
:meth:`VXLANDevice.dump` builds typed entries from the same scans for diagnose's checks.
"""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

from overlay.netlink.route import RTPROT_OVERLAY
from overlay.netlink.rtnl import (
    AF_BRIDGE,
    AF_INET,
    AF_INET6,
    IFINFO,
    NDA_DST,
    NDA_LLADDR,
    NDMSG,
    NLA,
    NUD_PERMANENT,
    RT_TABLE_MAIN,
    RTA_DST,
    RTA_GATEWAY,
    RTA_OIF,
    RTM_GETNEIGH,
    RTM_GETROUTE,
    RTM_NEWNEIGH,
    RTM_NEWROUTE,
    RTMSG,
    RTN_UNICAST,
    U32,
    Rtnl,
    attr_u32,
)
from overlay.vxlan.entries import FDB, Entries, Entry, Neigh, Route

NDA_IFINDEX = 8  # linux/neighbour.h: a neighbour dump's device filter (Linux >= 4.16)
ZERO_MAC = "00:00:00:00:00:00"
_ABSENT: Any = object()


def family_of(local: IPv4Address | IPv6Address) -> int:
    """The address family of a device whose underlay address is ``local``."""
    return AF_INET6 if isinstance(local, IPv6Address) else AF_INET


def net_key(addr: int, prefixlen: int) -> int:
    """One integer per destination prefix, for either family."""
    return (addr << 8) | prefixlen


# Either family, as read: which one an entry may hold is the entry types' to say (one
# device, one family).
def ip_of(raw: bytes) -> Any:
    return IPv4Address(raw) if len(raw) == 4 else IPv6Address(raw)


def net_of(raw: bytes, prefixlen: int) -> Any:
    if len(raw) == 16:
        return IPv6Network((IPv6Address(raw), prefixlen))
    return IPv4Network((IPv4Address(raw), prefixlen))


class Wanted:
    """The entries a reconcile wants, keyed as the dump reads them; each one the dump
    finds exactly is marked off (its value set to None), so what is left unmarked is
    missing, and what the dump finds that is not here is ``stale``."""

    def __init__(self) -> None:
        self.neighs: dict[int, Neigh | None] = {}  # int(ip) -> entry
        self.fdb: dict[tuple[str, int], FDB | None] = {}  # (MAC, int(VTEP)) -> entry
        self.routes: dict[int, Route | None] = {}  # net_key(dst) -> entry
        self.stale: list[Entry] = []

    def add(self, e: Entry) -> None:
        if type(e) is Neigh:
            self.neighs[int(e.ip)] = e
        elif type(e) is FDB:
            self.fdb[(e.mac, int(e.dst))] = e
        elif type(e) is Route:
            self.routes[net_key(int(e.dst.network_address), e.dst.prefixlen)] = e

    # -- the dump's entries, one by one ----------------------------------------------------
    def see_neigh(self, raw_ip: bytes, mac: str) -> None:
        """A permanent neighbour: one of ours that is right, or stale.  A wanted IP with
        another MAC stays missing (adding replaces it) and is not deleted first."""
        ip = int.from_bytes(raw_ip, "big")
        w = self.neighs.get(ip, _ABSENT)
        if w is _ABSENT:
            self.stale.append(Neigh(ip_of(raw_ip), mac))
        elif w is not None and w.mac == mac:
            self.neighs[ip] = None

    def see_fdb(self, mac: str, raw_dst: bytes) -> None:
        key = (mac, int.from_bytes(raw_dst, "big"))
        w = self.fdb.get(key, _ABSENT)
        if w is _ABSENT:
            self.stale.append(FDB(mac, ip_of(raw_dst)))
        elif w is not None:
            self.fdb[key] = None

    def see_route(self, raw_dst: bytes, prefixlen: int, raw_gw: bytes, direct: bool) -> None:
        """A proto-111 route: right, or stale (another gateway or device: deleted, and the
        wanted one added after).  A second route of ours to a destination already marked
        off (another metric) is left alone, as the typed dump always did."""
        key = net_key(int.from_bytes(raw_dst, "big"), prefixlen)
        w = self.routes.get(key, _ABSENT)
        if w is None:
            return
        if (w is _ABSENT or w.direct != direct
                or int(w.gateway) != int.from_bytes(raw_gw, "big")):
            self.stale.append(Route(net_of(raw_dst, prefixlen), ip_of(raw_gw), direct))
        else:
            self.routes[key] = None

    # -- the result ------------------------------------------------------------------------
    def missing(self) -> tuple[list[Entry], list[Entry]]:
        """(neighbours and FDB entries, routes) that the dump did not find."""
        first: list[Entry] = [n for n in self.neighs.values() if n is not None]
        first += [f for f in self.fdb.values() if f is not None]
        return first, [r for r in self.routes.values() if r is not None]

    def see_all(self, have: Entries) -> None:
        """Mark off against typed entries, as a dump of them would (for a data plane
        that keeps its state as entries, e.g. a test's fake)."""
        for n in have.neighs.values():
            self.see_neigh(n.ip.packed, n.mac)
        for f in have.fdb:
            self.see_fdb(f.mac, f.dst.packed)
        for r in have.routes.values():
            self.see_route(r.dst.network_address.packed, r.dst.prefixlen, r.gateway.packed,
                           r.direct)

    def stale_in_order(self) -> list[Entry]:
        """The stale entries in delete order: routes, FDB entries, then neighbours."""
        rank = {Route: 0, FDB: 1, Neigh: 2}
        return sorted(self.stale, key=lambda e: rank[type(e)])


# ---- the dumps, read raw -------------------------------------------------------------------

def _attrs(buf: bytes, off: int, end: int, *kinds: int) -> list[bytes | None]:
    """The payloads of the attributes ``kinds`` (None where absent), stopping as soon as
    all are read (the kernel puts DST, LLADDR and GATEWAY first)."""
    out: list[bytes | None] = [None] * len(kinds)
    left = len(kinds)
    while off + 4 <= end and left:
        n, kind = NLA.unpack_from(buf, off)
        if n < 4:
            break
        kind &= 0x3FFF
        if kind in kinds:
            i = kinds.index(kind)
            if out[i] is None:
                left -= 1
            out[i] = buf[off + 4:off + n]
        off += (n + 3) & ~3
    return out


def scan_neighs(nl: Rtnl, family: int, ifindex: int) -> Iterator[tuple[bytes, str]]:
    """(IP, MAC) of each permanent neighbour on ``ifindex`` of ``family``."""
    body = NDMSG.pack(family, 0, 0, 0, 0) + attr_u32(NDA_IFINDEX, ifindex)
    for t, buf, off, end in nl.dump(RTM_GETNEIGH, body):
        if t != RTM_NEWNEIGH:
            continue
        fam, idx, state, _, _ = NDMSG.unpack_from(buf, off)
        if fam != family or idx != ifindex or not state & NUD_PERMANENT:
            continue  # an older kernel ignores the filter: checked here too
        dst, mac = _attrs(buf, off + NDMSG.size, end, NDA_DST, NDA_LLADDR)
        if dst is not None and len(dst) in (4, 16) and mac is not None and len(mac) == 6:
            yield dst, mac.hex(":")


def scan_fdb(nl: Rtnl, ifindex: int) -> Iterator[tuple[str, bytes]]:
    """(MAC, VTEP IP) of each FDB entry with a remote on ``ifindex``.  The request is an
    ``ifinfomsg`` naming the port (the kernel's legacy FDB dump filter, what iproute2's
    ``bridge fdb show dev`` sends)."""
    for t, buf, off, end in nl.dump(RTM_GETNEIGH, IFINFO.pack(AF_BRIDGE, 0, ifindex, 0, 0)):
        if t != RTM_NEWNEIGH:
            continue
        fam, idx, _, _, _ = NDMSG.unpack_from(buf, off)
        if fam != AF_BRIDGE or idx != ifindex:
            continue
        mac, dst = _attrs(buf, off + NDMSG.size, end, NDA_LLADDR, NDA_DST)
        if mac is None or len(mac) != 6 or dst is None or len(dst) not in (4, 16):
            continue
        text = mac.hex(":")
        if text != ZERO_MAC:
            yield text, dst


def scan_routes(nl: Rtnl, family: int, index: int, underlay_index: int,
                others: list[bytes]) -> Iterator[tuple[bytes, int, bytes, bool]]:
    """(destination, prefix length, gateway, direct) of each of our main-table routes of
    ``family`` on the device (or, direct, on the underlay); the other protocols' main
    routes are appended to ``others`` as raw ``rtmsg`` payloads, for the caller to parse."""
    for t, buf, off, end in nl.dump(RTM_GETROUTE, RTMSG.pack(family, *[0] * 8)):
        if t != RTM_NEWROUTE:
            continue
        # the header says table 254 exactly for main (RTA_TABLE only adds ids > 255)
        fam, dst_len, _, _, table, proto, _, rtype, _ = RTMSG.unpack_from(buf, off)
        if fam != family or table != RT_TABLE_MAIN:
            continue
        if proto != RTPROT_OVERLAY:
            others.append(bytes(buf[off:end]))
            continue
        if rtype != RTN_UNICAST:
            continue
        dst, gw, oif = _attrs(buf, off + RTMSG.size, end, RTA_DST, RTA_GATEWAY, RTA_OIF)
        if gw is None or oif is None or len(gw) not in (4, 16):
            continue
        out = U32.unpack(oif[:4])[0]
        if out in (index, underlay_index):
            yield dst or bytes(len(gw)), dst_len, gw, out != index
