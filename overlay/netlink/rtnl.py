"""The one raw rtnetlink client: constants, attribute codec, errno wording, and a socket.

Why not pyroute2 on the hot paths (measured, see the README's Netlink section): its
import costs ~170 ms (~11 MB of daemon RSS) and its encoding ~0.3 ms per request, so
even its batch API (``IPBatch``, one ``sendto``) programs 1000 remotes in ~27x the
``ip -batch`` anchor's time, while the messages the daemon (neighbour, FDB, route) and
the CNI plugin (link, address, route) send are a fixed header and a few attributes that
``struct`` packs in microseconds.  Everything else
in the package builds on this module: one module per kernel object (``link``,
``addr``, ``route``, ``neigh``) with its message builders, its parser and its record.
This module imports nothing of ours but the error tree.

:class:`Rtnl` talks to the kernel in two ways, because the two callers need different
things from one ``send()`` of many messages (the kernel runs them in order):

- :meth:`Rtnl.execute`, bulk (the daemon's thousands of entries): requests carry no ACK
  flag, so the kernel answers only failures; a NOOP with ``NLM_F_ACK`` closes each
  chunk as a barrier, so one ``recv`` per chunk reads every error before it.
- :meth:`Rtnl.batch`, small (the CNI plugin's few requests per ADD): every request is
  acknowledged and its replies (a GET's answer, a dump's records) are kept.
"""

from __future__ import annotations

import _socket  # not ``socket``: its enum conversions cost the in-process CNI plugin ~3 ms
import contextlib
import errno
import itertools
import os
import struct
from collections.abc import Collection, Iterable, Iterator
from typing import NamedTuple

from overlay.errors import NetlinkOpError

# linux/netlink.h
NETLINK_ROUTE = 0
NETLINK_CAP_ACK = 10
SOL_NETLINK = 270
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32
NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE = 1, 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_ROOT, NLM_F_MATCH = 0x100, 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400

# linux/rtnetlink.h
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
RTA_DST, RTA_SRC, RTA_IIF, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_PREFSRC = 1, 2, 3, 4, 5, 6, 7
RTA_TABLE = 15
RTMGRP_LINK = 0x1
RT_TABLE_MAIN = 254
RT_SCOPE_UNIVERSE = 0
RTPROT_BOOT = 3
RTN_UNICAST = 1
RTNH_F_ONLINK = 4

AF_UNSPEC = _socket.AF_UNSPEC
AF_INET = _socket.AF_INET
AF_INET6 = _socket.AF_INET6
AF_BRIDGE = 7

# linux/neighbour.h
NDA_DST, NDA_LLADDR = 1, 2
NUD_NOARP, NUD_PERMANENT = 0x40, 0x80
NTF_SELF = 0x02

# linux/if_link.h, if_addr.h, veth.h, if.h
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER = 1, 3, 4, 10
IFLA_OPERSTATE, IFLA_LINKINFO, IFLA_NET_NS_FD = 16, 18, 28
IFLA_INFO_KIND, IFLA_INFO_DATA, IFLA_INFO_SLAVE_KIND, IFLA_INFO_SLAVE_DATA = 1, 2, 4, 5
IFLA_VXLAN_ID, IFLA_VXLAN_LINK, IFLA_VXLAN_LOCAL, IFLA_VXLAN_LEARNING = 1, 3, 4, 7
IFLA_VXLAN_PORT = 15  # big-endian u16
IFLA_VXLAN_LOCAL6 = 17  # the IPv6 underlay's local address (16 bytes)
IFLA_BRPORT_MODE = 4  # hairpin
VETH_INFO_PEER = 1
IFA_ADDRESS, IFA_LOCAL, IFA_BROADCAST, IFA_FLAGS = 1, 2, 4, 8
IFA_F_NODAD = 0x02  # an IPv6 address usable at once: no duplicate address detection
RT_SCOPE_LINK = 253
IFF_UP, IFF_RUNNING, IFF_PROMISC = 0x1, 0x40, 0x100
NLA_F_NESTED = 0x8000

NLHDR = struct.Struct("=LHHLL")  # len, type, flags, seq, pid
NDMSG = struct.Struct("=BxxxiHBB")  # family, ifindex, state, flags, type
RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst/src len, tos, table, proto, scope, type, flags
IFINFO = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFADDR = struct.Struct("=BBBBi")  # family, prefixlen, flags, scope, index
NLA = struct.Struct("=HH")  # len, type
ERR = struct.Struct("=i")
U32 = struct.Struct("=I")

CHUNK = 48 * 1024  # bytes per bulk send(); well below the socket buffers Rtnl(bulk=True) sets


# --- errno wording: the one table ----------------------------------------------------------

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


# Errnos that mean "already in the state you asked for" when deleting.
GONE = frozenset({errno.ENOENT, errno.ESRCH, errno.ENODEV, errno.EADDRNOTAVAIL})


# iproute2's /usr/share/iproute2/rt_protos (and rt_protos.d), for naming another
# protocol's route the way ``ip route`` shows it.
_PROTOCOLS = {0: "unspec", 1: "redirect", 2: "kernel", 3: "boot", 4: "static", 8: "gated",
              9: "ra", 10: "mrt", 11: "zebra", 12: "bird", 13: "dnrouted", 14: "xorp",
              15: "ntk", 16: "dhcp", 18: "keepalived", 42: "babel", 99: "openr", 186: "bgp",
              187: "isis", 188: "ospf", 189: "rip", 192: "eigrp"}
_ROUTE_TYPES = {1: "unicast", 2: "local", 3: "broadcast", 4: "anycast", 5: "multicast",
                6: "blackhole", 7: "unreachable", 8: "prohibit", 9: "throw", 10: "nat"}


def protocol_name(proto: int) -> str:
    """A route protocol as ``ip route`` names it (``kernel``, ``static``, ``111``)."""
    return _PROTOCOLS.get(proto, str(proto))


def route_type_name(rtype: int) -> str:
    return _ROUTE_TYPES.get(rtype, str(rtype))


def describe_errno(code: int) -> str:
    """What a (positive) netlink errno means, in the words every error message here uses."""
    return _MEANING.get(code) or os.strerror(code)


class NetlinkRequestError(NetlinkOpError):
    """A rtnetlink request failed; ``code`` is the errno."""


class NetlinkSocketError(NetlinkRequestError, OSError):
    """The rtnetlink socket itself failed (send/recv: ENOBUFS, EBADF, a dump refused).
    In the error tree like every netlink failure, and still an ``OSError`` (with its
    ``errno``) for callers that look at those."""

    def __init__(self, msg: str, code: int = 0):
        OSError.__init__(self, code, msg)
        self.code = code

    def __str__(self) -> str:
        return str(self.strerror)


def _socket_error(what: str, e: OSError) -> NetlinkSocketError:
    return NetlinkSocketError(f"rtnetlink {what}: {describe_errno(e.errno) if e.errno else e}",
                              e.errno or 0)


# --- attributes ------------------------------------------------------------------------------

def attr(kind: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    n = 4 + len(payload)
    return NLA.pack(n, kind) + payload + b"\0" * (-n % 4)


def attr_str(kind: int, value: str) -> bytes:
    return attr(kind, value.encode() + b"\0")


def attr_u32(kind: int, value: int) -> bytes:
    return attr(kind, U32.pack(value))


def attrs(buf: bytes, off: int = 0, end: int | None = None) -> dict[int, bytes]:
    """The attributes in ``buf[off:end]`` by type (flag bits dropped); stops at garbage."""
    if end is None:
        end = len(buf)
    out: dict[int, bytes] = {}
    while off + 4 <= end:
        n, kind = NLA.unpack_from(buf, off)
        if n < 4:
            break
        out[kind & 0x3FFF] = buf[off + 4:off + n]
        off += (n + 3) & ~3
    return out


def cstr(data: bytes | None) -> str:
    return data.split(b"\0", 1)[0].decode() if data else ""


def u32(data: bytes) -> int:
    value: int = U32.unpack(data[:4])[0]
    return value


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def mac_str(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def walk(data: bytes) -> Iterable[tuple[int, int, int, int, int]]:
    """(type, flags, seq, payload offset, payload end) of each message in a datagram."""
    off = 0
    while off + NLHDR.size <= len(data):
        length, mtype, flags, seq, _ = NLHDR.unpack_from(data, off)
        if length < NLHDR.size:
            break
        yield mtype, flags, seq, off + NLHDR.size, off + length
        off += (length + 3) & ~3


class Lazy:
    """A request's description, formatted (``fmt % args``) only when it is shown: a
    resync builds thousands of requests and shows none (their f-strings were 3 of the
    7.4 ms that 1000 remotes' 3000 requests took to build)."""

    __slots__ = ("fmt", "args")

    def __init__(self, fmt: str, *args: object):
        self.fmt, self.args = fmt, args

    def __str__(self) -> str:
        return self.fmt % self.args

    __repr__ = __str__

    def __eq__(self, other: object) -> bool:
        return str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))


class Msg(NamedTuple):
    """One request without its netlink header (added when sent)."""

    type: int
    flags: int
    body: bytes
    what: str | Lazy  # for logs and errors, e.g. "neigh 10.244.2.0 -> 0e:..:01"


# --- the socket ------------------------------------------------------------------------------

class Rtnl:
    """One NETLINK_ROUTE socket, in the namespace of the thread that created it (see
    :func:`.netns.open_rtnl` for another namespace).  ``groups``: multicast groups to
    listen to; ``bulk``: enlarge the socket buffers for :meth:`execute` of thousands of
    messages.
    """

    def __init__(self, groups: int = 0, bulk: bool = False):
        self.sock = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW | _socket.SOCK_CLOEXEC,
                                   NETLINK_ROUTE)
        try:
            self._setup(groups, bulk)
        except BaseException:
            self.sock.close()  # not leaked when the set-up fails
            raise
        self._seq = itertools.count(1)
        self._peek = bytearray(NLHDR.size)

    def _setup(self, groups: int, bulk: bool) -> None:
        if bulk:
            for opt, size in ((SO_SNDBUFFORCE, 1 << 20), (SO_RCVBUFFORCE, 4 << 20)):
                # not CAP_NET_ADMIN: the default buffers still work, slower
                with contextlib.suppress(OSError):
                    self.sock.setsockopt(_socket.SOL_SOCKET, opt, size)
        # ACKs without a copy of the request: 20 bytes each instead of the whole message.
        self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        self.sock.bind((0, groups))

    def close(self) -> None:
        self.sock.close()

    def _send(self, data: bytes | bytearray) -> None:
        try:
            self.sock.send(data)
        except OSError as e:
            raise _socket_error("send", e) from e

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv(self) -> bytes:
        """The next datagram, whole.  Its size is asked first (``MSG_PEEK|MSG_TRUNC``)
        and exactly that much read: a fixed large buffer costs a large allocation per
        call (measured up to +60 us on a ~50 us CNI request, depending on the allocator's
        state), a small one could truncate a dump."""
        try:
            size = self.sock.recv_into(self._peek, 0, _socket.MSG_PEEK | _socket.MSG_TRUNC)
            return self.sock.recv(size)
        except TimeoutError:
            raise  # a socket timeout the caller set: not a failure
        except OSError as e:
            raise _socket_error("receive", e) from e

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # bulk: errors only
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
            while i < len(msgs) and len(buf) < CHUNK:
                m = msgs[i]
                seq = next(self._seq)
                pending[seq] = i
                buf += NLHDR.pack(NLHDR.size + len(m.body), m.type,
                                  m.flags | NLM_F_REQUEST, seq, 0) + m.body
                i += 1
            barrier = next(self._seq)
            buf += NLHDR.pack(NLHDR.size, NLMSG_NOOP, NLM_F_REQUEST | NLM_F_ACK, barrier, 0)
            self._send(bytes(buf))
            self._collect_errors(pending, barrier, results)
            start = i
        return results

    def _collect_errors(self, pending: dict[int, int], barrier: int,
                        results: list[int]) -> None:
        while True:
            data = self.recv()
            for mtype, _, seq, off, _ in walk(data):
                if mtype != NLMSG_ERROR:
                    continue
                if seq == barrier:
                    return
                if seq in pending:
                    results[pending[seq]] = -ERR.unpack_from(data, off)[0]

    # small: every request acknowledged, replies kept
    def batch(self, msgs: list[Msg]) -> list[tuple[list[bytes], int]]:
        """Send requests in one datagram; the kernel runs them in order.  Returns per
        request (reply payloads, errno or 0)."""
        data = bytearray()
        seqs = []
        for kind, flags, body, _ in msgs:
            seq = next(self._seq)
            data += NLHDR.pack(NLHDR.size + len(body), kind, flags | NLM_F_REQUEST | NLM_F_ACK,
                               seq, 0) + body
            seqs.append(seq)
        self._send(data)
        replies: dict[int, list[bytes]] = {s: [] for s in seqs}
        errors: dict[int, int] = {}
        pending = set(seqs)
        while pending:
            buf = self.recv()
            for kind, _, seq, off, end in walk(buf):
                if seq not in pending:
                    continue
                if kind == NLMSG_ERROR:
                    code = -ERR.unpack_from(buf, off)[0]
                    if code:
                        errors[seq] = code
                    pending.discard(seq)
                elif kind == NLMSG_DONE:
                    pending.discard(seq)
                else:
                    replies[seq].append(buf[off:end])
        return [(replies[s], errors.get(s, 0)) for s in seqs]

    def call(self, msg: Msg, ignore: Collection[int] = ()) -> list[bytes]:
        """One acknowledged request; its replies.  An errno in ``ignore`` gives []."""
        (replies, code), = self.batch([msg])
        if code and code not in ignore:
            raise NetlinkRequestError(f"{msg.what}: {describe_errno(code)}", code)
        return replies if not code else []

    def run(self, msgs: list[Msg]) -> list[list[bytes]]:
        """Batch, and raise for the first request that failed."""
        results = self.batch(msgs)
        for msg, (_, code) in zip(msgs, results, strict=True):
            if code:
                raise NetlinkRequestError(f"{msg.what}: {describe_errno(code)}", code)
        return [replies for replies, _ in results]

    # dumps and notifications
    def dump(self, mtype: int, body: bytes) -> Iterator[tuple[int, bytes, int, int]]:
        """Yield (type, buffer, payload offset, payload end) of every message of a dump."""
        seq = next(self._seq)
        self._send(NLHDR.pack(NLHDR.size + len(body), mtype,
                              NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body)
        while True:
            data = self.recv()
            for rtype, _, rseq, off, end in walk(data):
                if rseq != seq:
                    continue
                if rtype == NLMSG_DONE:
                    return
                if rtype == NLMSG_ERROR:
                    code = -ERR.unpack_from(data, off)[0]
                    if code:
                        raise NetlinkSocketError(f"netlink dump failed: {describe_errno(code)}",
                                                 code)
                    return
                yield rtype, data, off, end

    def receive(self) -> Iterator[tuple[int, bytes, int, int]]:
        """Block for the next datagram (e.g. of multicast notifications); yield
        (type, buffer, payload offset, payload end) of each message in it."""
        data = self.recv()
        return ((t, data, o, e) for t, _, _, o, e in walk(data))
