"""Hand-packed rtnetlink messages, sent many per ``send()`` and acknowledged in bulk.

Why not one pyroute2 call per entry: pyroute2 spends most of its time encoding and
decoding messages in Python (about 20x ``ip -batch`` for 1000 remotes).  The
messages the backend needs (neighbour, FDB, route) are a fixed header and three or
four attributes, so ``struct`` packs them in a few microseconds; the kernel then
processes every message of one ``send()`` in order and answers each with an ACK
(``NLMSG_ERROR`` with error 0 or ``-errno``), which we match by sequence number.
Dumps are parsed the same way, reading only the attributes we use.
"""

from __future__ import annotations

import errno
import itertools
import os
import logging
import socket
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Iterable, Iterator

log = logging.getLogger(__name__)

NETLINK_ROUTE = 0
NETLINK_CAP_ACK = 10
SOL_NETLINK = 270
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32

NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_ROOT = 0x100
NLM_F_MATCH = 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30

AF_INET = socket.AF_INET
AF_BRIDGE = 7

NDA_DST, NDA_LLADDR = 1, 2
NUD_PERMANENT = 0x80
NTF_SELF = 0x02

RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_TABLE = 1, 4, 5, 15
RT_TABLE_MAIN = 254
RT_SCOPE_UNIVERSE = 0
RTN_UNICAST = 1
RTNH_F_ONLINK = 4
# Our own route protocol number (iproute2 shows it as "proto 111"): it marks the
# routes this daemon owns, so a reconcile can find and remove stale ones without
# ever touching routes somebody else made.
RTPROT_OVERLAY = 111

_NLHDR = struct.Struct("=LHHLL")  # len, type, flags, seq, pid
_NDMSG = struct.Struct("=BxxxiHBB")  # family, ifindex, state, flags, type
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, proto, scope, type, flags
_IFINFO = struct.Struct("=BxHiII")  # family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBi")  # family, prefixlen, flags, scope, index
_ERR = struct.Struct("=i")
_U32 = struct.Struct("=I")
_CHUNK = 48 * 1024  # bytes per send(); well below the socket buffers set below


IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINKINFO = 1, 3, 4, 18
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
IFLA_VXLAN_ID, IFLA_VXLAN_LINK, IFLA_VXLAN_LOCAL, IFLA_VXLAN_LEARNING = 1, 3, 4, 7
IFLA_VXLAN_PORT = 15  # big-endian u16
IFA_ADDRESS, IFA_LOCAL = 1, 2
IFF_UP = 0x1
NLA_F_NESTED = 0x8000

_MEANING = {
    errno.ENODEV: "link not found",
    errno.ENOENT: "not found",
    errno.ESRCH: "no such entry",
    errno.EEXIST: "already exists",
    errno.EPERM: "operation not permitted (are you root?)",
    errno.EBUSY: "device or resource busy",
    errno.EINVAL: "invalid argument",
    errno.ENETUNREACH: "network unreachable",
    errno.EADDRNOTAVAIL: "address not available",
}


def describe_errno(code: int) -> str:
    """Same wording as ``common.describe_errno``, without importing pyroute2 (whose
    import alone costs the daemon ~11 MB of RSS)."""
    return _MEANING.get(code) or os.strerror(code)


def _nla(kind: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, kind) + payload + b"\0" * ((4 - n % 4) % 4)


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def mac_str(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


@dataclass(frozen=True)
class Msg:
    """One request without its netlink header (added when sent)."""

    type: int
    flags: int
    body: bytes
    what: str  # for logs and errors, e.g. "neigh 10.244.2.0 -> 0e:..:01"


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
              onlink: bool) -> Msg:
    """``dst via gateway dev oif [onlink] proto 111`` in the main table."""
    body = (_RTMSG.pack(AF_INET, dst.prefixlen, 0, 0, RT_TABLE_MAIN, RTPROT_OVERLAY,
                        RT_SCOPE_UNIVERSE, RTN_UNICAST, RTNH_F_ONLINK if onlink else 0)
            + _nla(RTA_DST, dst.network_address.packed) + _nla(RTA_GATEWAY, gateway.packed)
            + _nla(RTA_OIF, _U32.pack(oif)))
    what = f"route {dst} via {gateway} dev #{oif}{' onlink' if onlink else ''}"
    if add:
        return Msg(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, body, what)
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


def _attrs(buf: bytes, off: int, end: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    while off + 4 <= end:
        n, kind = struct.unpack_from("=HH", buf, off)
        if n < 4:
            break
        out[kind & 0x3FFF] = buf[off + 4:off + n]
        off += (n + 3) & ~3
    return out


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
    family, dst_len, _, _, table, proto, _, rtype, flags = _RTMSG.unpack_from(buf, off)
    if family != AF_INET or rtype != RTN_UNICAST:
        return None
    a = _attrs(buf, off + _RTMSG.size, end)
    if RTA_TABLE in a:
        table = _U32.unpack(a[RTA_TABLE][:4])[0]
    dst = IPv4Network((IPv4Address(a.get(RTA_DST, b"\0\0\0\0")), dst_len))
    gw = IPv4Address(a[RTA_GATEWAY]) if RTA_GATEWAY in a else None
    oif = _U32.unpack(a[RTA_OIF][:4])[0] if RTA_OIF in a else 0
    return RouteRecord(dst, gw, oif, proto, table, flags)


def parse_link_record(buf: bytes, off: int, end: int) -> LinkRecord:
    _, _, index, flags, _ = _IFINFO.unpack_from(buf, off)
    a = _attrs(buf, off + _IFINFO.size, end)
    name = a.get(IFLA_IFNAME, b"").split(b"\0", 1)[0].decode()
    mtu = _U32.unpack(a[IFLA_MTU][:4])[0] if IFLA_MTU in a else 0
    mac = mac_str(a[IFLA_ADDRESS]) if len(a.get(IFLA_ADDRESS, b"")) == 6 else None
    kind, vxlan = None, {}
    if IFLA_LINKINFO in a:
        raw = a[IFLA_LINKINFO]
        info = _attrs(raw, 0, len(raw))
        kind = info.get(IFLA_INFO_KIND, b"").split(b"\0", 1)[0].decode() or None
        if kind == "vxlan" and IFLA_INFO_DATA in info:
            d = _attrs(info[IFLA_INFO_DATA], 0, len(info[IFLA_INFO_DATA]))
            vxlan = {
                "id": _U32.unpack(d[IFLA_VXLAN_ID][:4])[0] if IFLA_VXLAN_ID in d else None,
                "link": _U32.unpack(d[IFLA_VXLAN_LINK][:4])[0] if IFLA_VXLAN_LINK in d else 0,
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
    name = a[3].split(b"\0", 1)[0].decode() if 3 in a else None  # IFLA_IFNAME
    return LinkEvent("del" if mtype == RTM_DELLINK else "new", index, name,
                     bool(flags & 0x1), bool(flags & 0x40))


class RawRoute:
    """An rtnetlink socket (optionally in a named netns) for batches and dumps."""

    def __init__(self, netns: str | None = None, groups: int = 0):
        if netns is None:
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        else:
            from pyroute2.netns import create_socket  # only when a netns is asked for

            from .common import netns_path
            self.sock = create_socket(netns_path(netns), socket.AF_NETLINK, socket.SOCK_RAW,
                                      NETLINK_ROUTE, flags=0)
        for opt, size in ((SO_SNDBUFFORCE, 1 << 20), (SO_RCVBUFFORCE, 4 << 20)):
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, opt, size)
            except OSError:  # not CAP_NET_ADMIN: the default buffers still work, slower
                pass
        # ACKs without a copy of the request: 20 bytes each instead of the whole message.
        self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        self.sock.bind((0, groups))
        self._seq = itertools.count(1)

    def close(self) -> None:
        self.sock.close()

    def fileno(self) -> int:
        return self.sock.fileno()

    def execute(self, msgs: list[Msg]) -> list[int]:
        """Send every message (in order); return each one's errno (0 = done).

        Requests carry no ACK flag, so the kernel answers only the failures; a NOOP
        with NLM_F_ACK closes each chunk as a barrier: the kernel handles a send's
        messages in order, so once the barrier's ACK is read every error before it
        has been read too (one recv per chunk instead of one per message).
        """
        results = [0] * len(msgs)
        start = 0
        while start < len(msgs):
            buf = bytearray()
            pending: dict[int, int] = {}
            i = start
            while i < len(msgs) and len(buf) < _CHUNK:
                m = msgs[i]
                seq = next(self._seq)
                pending[seq] = i
                buf += _NLHDR.pack(_NLHDR.size + len(m.body), m.type,
                                   m.flags | NLM_F_REQUEST, seq, 0) + m.body
                i += 1
            barrier = next(self._seq)
            buf += _NLHDR.pack(_NLHDR.size, NLMSG_NOOP, NLM_F_REQUEST | NLM_F_ACK, barrier, 0)
            self.sock.send(bytes(buf))
            self._collect_errors(pending, barrier, results)
            start = i
        return results

    def _collect_errors(self, pending: dict[int, int], barrier: int,
                        results: list[int]) -> None:
        while True:
            data = self.sock.recv(1 << 20)
            for mtype, _, seq, off, end in _walk(data):
                if mtype != NLMSG_ERROR:
                    continue
                if seq == barrier:
                    return
                if seq in pending:
                    results[pending[seq]] = -_ERR.unpack_from(data, off)[0]

    def dump(self, mtype: int, body: bytes) -> Iterator[tuple[int, bytes, int, int]]:
        """Yield (type, buffer, payload offset, payload end) of every message of a dump."""
        seq = next(self._seq)
        self.sock.send(_NLHDR.pack(_NLHDR.size + len(body), mtype,
                                   NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body)
        while True:
            data = self.sock.recv(1 << 20)
            for rtype, _, rseq, off, end in _walk(data):
                if rseq != seq:
                    continue
                if rtype == NLMSG_DONE:
                    return
                if rtype == NLMSG_ERROR:
                    code = -_ERR.unpack_from(data, off)[0]
                    if code:
                        raise OSError(code, f"netlink dump failed: {errno.errorcode.get(code)}")
                    return
                yield rtype, data, off, end

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

    def request(self, msg: Msg) -> int:
        """One request; its errno (0 = done)."""
        return self.execute([msg])[0]

    def read_link_events(self) -> list[LinkEvent]:
        """Block for the next datagram of link notifications (socket bound to RTMGRP_LINK)."""
        data = self.sock.recv(1 << 20)
        return [parse_link(t, data, o, e) for t, _, _, o, e in _walk(data)
                if t in (RTM_NEWLINK, RTM_DELLINK)]


def _walk(data: bytes) -> Iterable[tuple[int, int, int, int, int]]:
    off = 0
    while off + _NLHDR.size <= len(data):
        length, mtype, flags, seq, _ = _NLHDR.unpack_from(data, off)
        if length < _NLHDR.size:
            break
        yield mtype, flags, seq, off + _NLHDR.size, off + length
        off += (length + 3) & ~3
