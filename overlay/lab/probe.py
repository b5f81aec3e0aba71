"""Does a TCP connection or a UDP exchange from one lab pod reach another's responder?

A socket made inside the source pod's namespace (:func:`overlay.lab.system.netns_socket`)
talks to the destination's responder (:mod:`overlay.lab.responder`); the answer must be
the line that names the destination pod, protocol and port, so an answer from anything
else at that address does not count.  The result carries the one line that says why.
"""

from __future__ import annotations

import errno
import socket
import time
from dataclasses import dataclass

from overlay.lab.spec import LabError, responder_reply
from overlay.lab.system import netns_socket

PROTOCOLS = ("tcp", "udp")
DEFAULT_TIMEOUT = 2.0
UDP_RETRY = 0.4          # a datagram lost to a first ARP resolution is sent again
MAX_REPLY = 512


@dataclass(frozen=True)
class Target:
    """The destination pod: its ``NS/NAME`` (what its responder answers with) and IP."""

    ref: str
    ip: str


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    why: str


def probe(src_ns: str, dst: Target, port: int, protocol: str,
          timeout: float = DEFAULT_TIMEOUT) -> ProbeResult:
    """One bounded attempt (``timeout`` seconds at most) from namespace ``src_ns``."""
    start = time.monotonic()
    try:
        got = (_tcp if protocol == "tcp" else _udp)(src_ns, dst.ip, port, timeout)
    except ConnectionRefusedError:
        return ProbeResult(False, "connection refused (nothing listens there, or a rule "
                                  "rejects it)")
    except TimeoutError:
        return ProbeResult(False, f"no answer within {timeout:g} s (dropped on the way: a "
                                  "firewall or policy rule, or a missing route)")
    except OSError as e:
        if e.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return ProbeResult(False, f"{e.strerror} (no route, or no ARP answer)")
        raise LabError(f"probe of {protocol}/{port} at {dst.ip} from {src_ns}: {e}") from e
    ms = (time.monotonic() - start) * 1000
    if got != responder_reply(dst.ref, protocol, port):
        return ProbeResult(False, f"answered, but not by {dst.ref}'s responder ({got[:80]!r})")
    return ProbeResult(True, f"its responder answered in {ms:.1f} ms")


def _family(ip: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def _tcp(src_ns: str, ip: str, port: int, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    with netns_socket(src_ns, _family(ip), socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect((ip, port))
        data = b""
        while not data.endswith(b"\n") and len(data) < MAX_REPLY:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            chunk = sock.recv(MAX_REPLY)
            if not chunk:
                break
            data += chunk
        return data


def _udp(src_ns: str, ip: str, port: int, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    with netns_socket(src_ns, _family(ip), socket.SOCK_DGRAM) as sock:
        sock.connect((ip, port))   # connected: an ICMP port unreachable is ECONNREFUSED
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            sock.send(b"probe\n")
            sock.settimeout(min(UDP_RETRY, left))
            try:
                return sock.recv(MAX_REPLY)
            except TimeoutError:
                continue
