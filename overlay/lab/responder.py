"""A lab pod's tiny responder: TCP and UDP on ports 80 and 81 (IPv4 and IPv6), in the pod.

What ``overlay-lab probe`` and ``matrix --port/--protocol`` talk to, so that a policy
(or a firewall rule) can be seen to allow or block one port and protocol, not just ICMP.
Every answer is one line naming the pod, protocol and port
(:func:`overlay.lab.spec.responder_reply`), so a prober knows it reached *this* pod's
listener and not something else at that address.

Bounded by construction: one thread and one selector; a TCP connection gets its line and
is closed at once (nothing is read, nothing is kept per connection); a UDP datagram gets
its line back (at most :data:`MAX_DATAGRAM` bytes are read).  Started by the lab with the
pod (``python -m overlay.lab.responder --pod NS/NAME``, output to the pod's
``responder.log`` in the lab dir), stopped by SIGTERM with it; the first
:data:`LOG_LIMIT` requests are logged, then only a count at exit.
"""

from __future__ import annotations

import argparse
import logging
import selectors
import signal
import socket
import sys
from collections.abc import Sequence
from types import FrameType

from overlay.lab.spec import RESPONDER_PORTS as PORTS, responder_reply as reply

log = logging.getLogger("overlay.lab.responder")

MAX_DATAGRAM = 2048
LOG_LIMIT = 200
BACKLOG = 64


class Responder:
    def __init__(self, pod: str, ports: Sequence[int] = PORTS, host: str | None = None):
        """``host``: one address to listen on; by default every address of both families
        (IPv4 alone where the namespace has no IPv6)."""
        self.pod = pod
        self.sel = selectors.DefaultSelector()
        self.answered = 0
        if host is None:
            self.family = _listen_family()
            host = "::" if self.family == socket.AF_INET6 else "0.0.0.0"
        else:
            self.family = socket.AF_INET6 if ":" in host else socket.AF_INET
        for port in ports:
            self._listen(socket.SOCK_STREAM, host, port, "tcp")
            self._listen(socket.SOCK_DGRAM, host, port, "udp")

    def _listen(self, kind: int, host: str, port: int, protocol: str) -> None:
        sock = socket.socket(self.family, kind)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.family == socket.AF_INET6:
            # One socket for both families (IPv4 arrives as ::ffff:a.b.c.d), whatever
            # the namespace's net.ipv6.bindv6only says.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
        if kind == socket.SOCK_STREAM:
            sock.listen(BACKLOG)
        sock.setblocking(False)
        self.sel.register(sock, selectors.EVENT_READ, (protocol, port))

    def serve_forever(self) -> None:
        while True:
            for key, _ in self.sel.select():
                protocol, port = key.data
                try:
                    self._answer(key.fileobj, protocol, port)  # type: ignore[arg-type]
                except OSError as e:   # a peer that left already: its problem, not ours
                    log.debug("%s/%d: %s", protocol, port, e)

    def _answer(self, sock: socket.socket, protocol: str, port: int) -> None:
        line = reply(self.pod, protocol, port)
        if protocol == "tcp":
            conn, peer = sock.accept()
            with conn:
                conn.setblocking(False)
                conn.send(line)     # a few bytes into an empty send buffer: never blocks
        else:
            _, peer = sock.recvfrom(MAX_DATAGRAM)
            sock.sendto(line, peer)
        self.answered += 1
        if self.answered <= LOG_LIMIT:
            log.info("answered %s:%d on %s/%d%s", peer[0], peer[1], protocol, port,
                     " (further requests are not logged)" if self.answered == LOG_LIMIT else "")


def _listen_family() -> socket.AddressFamily:
    """IPv6 (dual-stack sockets) where the namespace has IPv6, else IPv4 alone."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            probe.bind(("::", 0))
    except OSError:
        return socket.AF_INET
    return socket.AF_INET6


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m overlay.lab.responder",
                                description=__doc__.splitlines()[0])
    p.add_argument("--pod", required=True, help="NS/NAME, the name every answer carries")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, _stop)
    try:
        responder = Responder(args.pod)
    except OSError as e:
        log.error("cannot listen on tcp/udp %s: %s", ",".join(map(str, PORTS)), e)
        return 1
    log.info("responder of %s answering tcp and udp on ports %s", args.pod,
             ", ".join(map(str, PORTS)))
    try:
        responder.serve_forever()
    finally:
        log.info("stopped after %d answers", responder.answered)
    return 0


if __name__ == "__main__":
    sys.exit(main())
