"""A slow-loris client for the servers' deadline tests (the CNI socket, the HTTP endpoints)."""

from __future__ import annotations

import socket
import time


def trickle_until_closed(conn: socket.socket, data: bytes, every: float) -> float | None:
    """Send ``data`` one byte every ``every`` seconds (each of the server's reads sees
    progress) until the server closes the connection: the seconds that took, or None if
    all of ``data`` went out with the connection still open."""
    conn.settimeout(every)
    started = time.monotonic()
    for byte in data:
        try:
            conn.send(bytes([byte]))
            if conn.recv(100) == b"":
                return time.monotonic() - started
        except TimeoutError:
            continue
        except OSError:
            return time.monotonic() - started
    return None
