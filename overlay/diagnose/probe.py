"""Ping many peers at once with DF set: one raw ICMP socket, all echoes in flight together.

A per-peer ``ping`` process costs about a second for every peer that does not answer;
here the whole probe costs one timeout however many peers there are.  Echo requests go
out with IP_PMTUDISC_DO, so a payload too big for the local route fails at ``sendto``
(EMSGSIZE) and one too big for the path is simply not answered.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import TypeVar

log = logging.getLogger(__name__)

IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
IP_PMTUDISC_DO = getattr(socket, "IP_PMTUDISC_DO", 2)
ICMP_ECHO, ICMP_ECHOREPLY = 8, 0
ICMP6_ECHO, ICMP6_ECHOREPLY = 128, 129
IPV6_MTU_DISCOVER = getattr(socket, "IPV6_MTU_DISCOVER", 23)
IPV6_PMTUDISC_DO = getattr(socket, "IPV6_PMTUDISC_DO", 2)
A = TypeVar("A", IPv4Address, IPv6Address)
SEND_RETRIES = 40  # x 5 ms: a full queue gets up to 0.2 s to empty per packet
BUFFER = 4 << 20  # replies for ~1000 peers of full-MTU echoes fit in the receive buffer


@dataclass(frozen=True)
class Echo:
    sent: int
    received: int
    error: str = ""


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def echo_request(ident: int, seq: int, size: int) -> bytes:
    payload = bytes(i & 0xFF for i in range(size))
    header = struct.pack("!BBHHH", ICMP_ECHO, 0, 0, ident, seq)
    csum = _checksum(header + payload)
    return struct.pack("!BBHHH", ICMP_ECHO, 0, csum, ident, seq) + payload


def parse_echo_reply(packet: bytes) -> tuple[int, int] | None:
    """(ident, seq) of an ICMP echo reply in a raw IPv4 packet, else None."""
    if len(packet) < 20:
        return None
    ihl = (packet[0] & 0x0F) * 4
    if len(packet) < ihl + 8 or packet[ihl] != ICMP_ECHOREPLY:
        return None
    ident, seq = struct.unpack("!HH", packet[ihl + 4: ihl + 8])
    return ident, seq


def echo_request6(ident: int, seq: int, size: int) -> bytes:
    """An ICMPv6 echo request; the kernel fills in the checksum of a raw ICMPv6 socket's
    packets (it covers the IPv6 pseudo-header, which only the kernel knows here)."""
    return struct.pack("!BBHHH", ICMP6_ECHO, 0, 0, ident, seq) + bytes(
        i & 0xFF for i in range(size))


def parse_echo_reply6(packet: bytes) -> tuple[int, int] | None:
    """(ident, seq) of an ICMPv6 echo reply (a raw ICMPv6 socket gets no IPv6 header)."""
    if len(packet) < 8 or packet[0] != ICMP6_ECHOREPLY:
        return None
    ident, seq = struct.unpack("!HH", packet[4:8])
    return ident, seq


def echo_many6(targets: Sequence[IPv6Address], size: int, count: int = 2,
               timeout: float = 1.0, interval: float = 0.05) -> dict[IPv6Address, Echo]:
    """``echo_many`` over IPv6 (DF: IPV6_PMTUDISC_DO; ``size`` + 48 bytes on the wire)."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO)
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            sock.setsockopt(socket.SOL_SOCKET, opt, BUFFER)
        return _run(sock, list(targets), size, count, timeout, interval,
                    echo_request6, parse_echo_reply6, 48)
    finally:
        sock.close()


def echo_many(targets: Sequence[IPv4Address], size: int, count: int = 2,
              timeout: float = 1.0, interval: float = 0.05) -> dict[IPv4Address, Echo]:
    """``count`` DF echo requests of ``size`` payload bytes to every target, in parallel.

    Needs CAP_NET_RAW (root); raises PermissionError otherwise.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    try:
        sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            sock.setsockopt(socket.SOL_SOCKET, opt, BUFFER)
        return _run(sock, list(targets), size, count, timeout, interval)
    finally:
        sock.close()


Request = Callable[[int, int, int], bytes]
Parse = Callable[[bytes], "tuple[int, int] | None"]


def _run(sock: socket.socket, targets: list[A], size: int, count: int,
         timeout: float, interval: float, request: Request = echo_request,
         parse: Parse = parse_echo_reply, headers: int = 28) -> dict[A, Echo]:
    ident = (os.getpid() ^ id(sock)) & 0xFFFF
    owner: dict[int, A] = {}
    sent = dict.fromkeys(targets, 0)
    got = dict.fromkeys(targets, 0)
    errors: dict[A, str] = {}
    seq = 0
    # However congested the queue, sending stops after this; the rest count as errors.
    send_deadline = time.monotonic() + max(2.0, 3 * timeout)
    for rnd in range(count):
        for t in targets:
            if t in errors:
                continue
            seq = (seq + 1) & 0xFFFF
            owner[seq] = t
            err = _send(sock, request(ident, seq, size), t,
                        lambda: _drain(sock, ident, owner, got, time.monotonic() + 0.005,
                                       parse=parse),
                        send_deadline)
            if err is None:
                sent[t] += 1
            else:
                errors[t] = _describe(err, size, headers)
        if rnd + 1 < count:
            _drain(sock, ident, owner, got, time.monotonic() + interval, parse=parse)
    _drain(sock, ident, owner, got, time.monotonic() + timeout,
           done=lambda: all(got[t] >= sent[t] for t in targets if t not in errors), parse=parse)
    return {t: Echo(sent[t] or count, min(got[t], sent[t]), errors.get(t, "")) for t in targets}


def _send(sock: socket.socket, packet: bytes, target: IPv4Address | IPv6Address, wait,
          deadline: float) -> OSError | None:
    """Send one echo; on a full queue (ENOBUFS/EAGAIN, many peers at once) read replies
    for a moment and try again, a bounded number of times and never past ``deadline``."""
    last = OSError(errno.ENOBUFS, "send queue full: probe time budget used up")
    for _ in range(SEND_RETRIES):
        if time.monotonic() > deadline:
            break
        try:
            sock.sendto(packet, (str(target), 0))
            return None
        except OSError as e:
            if e.errno not in (errno.ENOBUFS, errno.EAGAIN):
                return e
            last = e
            wait()
    return last


def _drain(sock: socket.socket, ident: int, owner: dict[int, A], got: dict[A, int],
           deadline: float, done=lambda: False, parse: Parse = parse_echo_reply) -> None:
    while not done():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        ready, _, _ = select.select([sock], [], [], left)
        if not ready:
            return
        packet, addr = sock.recvfrom(65535)
        src = addr[0]
        reply = parse(packet)
        if reply is None or reply[0] != ident:
            continue
        t = owner.get(reply[1])
        if t is not None and str(t) == src:
            got[t] += 1


def _describe(e: OSError, size: int, headers: int = 28) -> str:
    if e.errno == errno.EMSGSIZE:
        return (f"local error: message too long ({size + headers} bytes with DF exceeds the "
                "route MTU)")
    return e.strerror or str(e)
