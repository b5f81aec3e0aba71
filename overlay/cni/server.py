"""The warm CNI server: answers the tiny executable entry over a unix socket.

A runtime execs the plugin for every pod; a Python process that imports the plugin costs
~80-150 ms before it does anything (site, json, ipaddress...), against ~10 ms for the
reference Go plugins' whole ADD.  So the executable entry (``cni-plugin/overlay``,
interpreter built-ins only, ~10 ms) hands each request to this already-warm process.
The entry sends the CNI_* environment, stdin, and two file descriptors (SCM_RIGHTS):
its own network namespace (the node side) and the pod's, so paths need not resolve in
the server's mount namespace (podman's netns mounts do not).  Each request runs in a
fresh thread that moves itself into the caller's namespace, so the server works for
whatever namespace the runtime runs in and threads never share a namespace switch.
IPAM stays correct under concurrency because its ``flock`` excludes across threads as
well as processes.

Wire format (both directions over one SOCK_STREAM connection)::

    request:  b"OVCNI1 <envlen> <stdinlen> <nfds>\\n" + env + stdin   (+ fds in ancillary data)
              env = b"\\0".join(b"KEY=VALUE")
    response: b"<exit code>\\n" + stdout bytes, then EOF

    busy:     b"BUSY\n", then EOF: the entry runs the request in-process instead

The socket is created mode 0600 and only peers with the server's uid (or root) are served.

Nothing a peer does can hold the server: a request must arrive whole within
``request_deadline`` (an idle or slow-loris connection is closed), at most
``max_connections`` run at once and the others that arrived whole wait for a slot (up to
``slot_wait``), at most ``max_pending`` connections are held in all (beyond that, or past
the wait, the entry is told to run in-process, so no thread is started), an oversized
request is answered with the same CNI error as the in-process plugin gives, and
``shutdown`` closes connections still waiting for their request at once, sends back the
ones waiting for a slot and gives started requests one total deadline.
"""

from __future__ import annotations

import array
import contextlib
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping

from overlay.cni import skel
from overlay.cni.commands import HANDLERS
from overlay.errors import CNIError
from overlay.netlink import netns, pod
from overlay.netlink.rtnl import Rtnl

log = logging.getLogger(__name__)

DEFAULT_SOCKET = "/run/overlay/cni.sock"
MAGIC = b"OVCNI1"
MAX_FDS = 2
BUSY = b"BUSY\n"
REQUEST_DEADLINE = 5.0   # seconds for a whole request to arrive
MAX_CONNECTIONS = 64     # requests run at once; a runtime's burst of pod starts fits well
# Connections held at once: waiting for their request, for a slot to run in, or running.
# A request that arrived whole waits up to SLOT_WAIT for a slot rather than being sent back
# (with policies in force the in-process fallback must refuse an ADD), and connections
# that never send one hold no slot, only their thread until REQUEST_DEADLINE.
MAX_PENDING = 256
SLOT_WAIT = 30.0
SHUTDOWN_DEADLINE = 5.0  # total, for requests in flight and deferred link deletes
REFUSAL_LOG_INTERVAL = 10.0  # seconds between two log lines of one kind of refusal
_HEADER_MAX = 128        # b"OVCNI1 <len> <len> <n>\n" is ~30 bytes


class RequestTimeout(Exception):
    """The peer did not send a whole request within the deadline."""


class Refusals:
    """Requests the server did not run, counted by reason (overlayd exports the counts
    as ``overlay_cni_requests_refused_total``).  Each reason logs one warning per
    ``interval`` at most, the next one saying how many it left out: 256 idle connections
    renewed every 5 s were 256 lines per 5 s."""

    REASONS = ("busy", "deadline", "malformed", "oversized", "peer")

    def __init__(self, interval: float = REFUSAL_LOG_INTERVAL,
                 clock: Callable[[], float] = time.monotonic):
        self.interval, self._clock = interval, clock
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(self.REASONS, 0)
        self._left_out = dict.fromkeys(self.REASONS, 0)
        self._logged_at: dict[str, float] = {}

    def note(self, reason: str, msg: str, *args: object) -> None:
        now = self._clock()
        with self._lock:
            self._counts[reason] += 1
            last = self._logged_at.get(reason)
            if last is not None and now - last < self.interval:
                self._left_out[reason] += 1
                return
            self._logged_at[reason] = now
            left_out, self._left_out[reason] = self._left_out[reason], 0
        if left_out:
            msg, args = msg + " (and %d more like it in the last %.0f s)", (
                *args, left_out, now - (last or now))
        log.warning(msg, *args)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


class LinkReaper:
    """Deletes links in the background, in the namespace of the thread that asked.

    Deleting a veth costs ~20 ms of kernel RCU waits; DEL has already cut the link off
    (down) and released its IP, so the runtime need not wait for the teardown.  An ADD
    for the same attachment (same host veth name) waits for the pending delete first.
    """

    def __init__(self) -> None:
        self._pending: dict[tuple[int, int, str], threading.Event] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(name: str) -> tuple[int, int, str]:
        st = os.stat("/proc/thread-self/ns/net")
        return st.st_dev, st.st_ino, name

    def delete_later(self, name: str) -> None:
        key = self._key(name)
        ns_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        done = threading.Event()
        with self._lock:
            self._pending[key] = done
        threading.Thread(target=self._delete, args=(key, ns_fd, done), daemon=True,
                         name="cni-reaper").start()

    def _delete(self, key: tuple[int, int, str], ns_fd: int, done: threading.Event) -> None:
        try:
            netns.enter_netns_for_thread(ns_fd)
            ipr = Rtnl()
            try:
                pod.del_link(ipr, key[2])
            finally:
                ipr.close()
        except Exception:
            log.exception("background delete of %s failed", key[2])
        finally:
            os.close(ns_fd)
            with self._lock:
                if self._pending.get(key) is done:
                    del self._pending[key]
            done.set()

    def wait(self, name: str, timeout: float = 30.0) -> None:
        with self._lock:
            done = self._pending.get(self._key(name))
        if done is not None:
            done.wait(timeout)

    def wait_all(self, timeout: float = 30.0) -> None:
        """Wait for pending deletes, ``timeout`` in total (not per link)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            events = list(self._pending.values())
        for done in events:
            done.wait(max(0.0, deadline - time.monotonic()))


class CNIServer:
    """``CNIServer(path).serve_forever()`` in a thread; ``shutdown()`` from another."""

    def __init__(self, socket_path: str = DEFAULT_SOCKET, handlers: Mapping = HANDLERS,
                 max_connections: int = MAX_CONNECTIONS,
                 request_deadline: float = REQUEST_DEADLINE,
                 max_pending: int = MAX_PENDING, slot_wait: float = SLOT_WAIT):
        self.socket_path = socket_path
        self.handlers = handlers
        self.max_connections = max_connections
        self.max_pending = max(max_pending, max_connections)
        self.request_deadline = request_deadline
        self.slot_wait = slot_wait
        self._running = 0  # requests holding one of the max_connections slots
        self._sock: socket.socket | None = None
        self._stopping = threading.Event()
        self._threads: set[threading.Thread] = set()
        # Connections whose request has not fully arrived: shutdown() closes them at once.
        self._waiting: dict[threading.Thread, socket.socket] = {}
        self._lock = threading.Lock()
        self._slot_free = threading.Condition(self._lock)
        self._inode: int | None = None  # of the socket file we bound
        self.reaper = LinkReaper()
        self.refusals = Refusals()

    def bind(self) -> CNIServer:
        # Warm up first: a server that cannot reach netlink must not leave a listening
        # socket behind, or every plugin call would connect and wait instead of falling
        # back to running in-process.
        _warm_up()
        directory = os.path.dirname(os.path.abspath(self.socket_path))
        os.makedirs(directory, mode=0o755, exist_ok=True)
        self._remove_stale()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.bind(self.socket_path)
            self._inode = os.stat(self.socket_path).st_ino
            # Nobody can connect before listen(), so the socket is private (0600) before
            # it can be used; no process-wide umask (overlayd's other threads create files).
            os.chmod(self.socket_path, 0o600)
            sock.listen(256)
        except BaseException:
            sock.close()
            self._unlink_socket()
            raise
        self._sock = sock
        log.info("CNI server listening on %s", self.socket_path)
        return self

    def _unlink_socket(self) -> None:
        """Remove our socket file (not one a later server bound at the same path)."""
        try:
            if self._inode is not None and os.stat(self.socket_path).st_ino == self._inode:
                os.unlink(self.socket_path)
        except FileNotFoundError:
            pass

    def _remove_stale(self) -> None:
        if not os.path.exists(self.socket_path):
            return
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(self.socket_path)
        except OSError:
            os.unlink(self.socket_path)  # nobody answers: a leftover from a dead server
            return
        finally:
            probe.close()
        raise OSError(f"another CNI server already answers on {self.socket_path}")

    def serve_forever(self) -> None:
        if self._sock is None:
            self.bind()
        assert self._sock is not None
        try:
            self._accept_loop(self._sock)
        finally:
            if not self._stopping.is_set():
                # An unexpected end: close and remove the socket so plugin calls fall
                # back to running in-process instead of queueing on a dead listener.
                log.error("CNI server on %s stopped unexpectedly", self.socket_path)
                self._sock.close()
                self._unlink_socket()

    def _accept_loop(self, sock: socket.socket) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = sock.accept()
            except OSError as e:
                if self._stopping.is_set():
                    break
                # e.g. EMFILE under a burst: keep serving rather than die with the socket
                log.warning("CNI server: accept failed: %s", e)
                self._stopping.wait(0.1)
                continue
            self._start_request(conn)

    def _start_request(self, conn: socket.socket) -> None:
        thread = threading.Thread(target=self._serve_one, args=(conn,), daemon=True,
                                  name="cni-request")
        with self._lock:  # shutdown() must never miss a thread or a waiting connection
            if self._stopping.is_set():
                conn.close()
                return
            if len(self._threads) >= self.max_pending:
                self._answer_busy(conn, "%d connections held (the bound)", len(self._threads))
                return
            self._threads.add(thread)
            self._waiting[thread] = conn
            try:
                thread.start()
            # e.g. "can't start new thread": drop this one request, never the server
            except Exception as e:  # noqa: BLE001
                self._threads.discard(thread)
                del self._waiting[thread]
                conn.close()  # the entry answers "try again" (11) at once
                log.warning("CNI server: cannot start a request thread: %s", e)

    def shutdown(self, timeout: float = SHUTDOWN_DEADLINE) -> None:
        """Stop accepting, drop connections still waiting for their request, give the
        requests in flight (and deferred link deletes) ``timeout`` seconds in total,
        remove the socket."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._stopping.set()
            self._slot_free.notify_all()  # requests waiting for a slot are sent back
            threads = list(self._threads)
            waiting = list(self._waiting.values())
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        for conn in waiting:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)  # wakes its thread's recv with EOF
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.reaper.wait_all(max(0.0, deadline - time.monotonic()))
        self._unlink_socket()
        busy = sum(t.is_alive() for t in threads)
        if busy:
            log.warning("CNI server on %s stopped with %d request(s) unfinished after %.1f s",
                        self.socket_path, busy, timeout)
        log.info("CNI server on %s stopped", self.socket_path)

    def _serve_one(self, conn: socket.socket) -> None:
        started = time.perf_counter()
        fds: list[int] = []
        try:
            with conn:
                if not self._peer_allowed(conn):
                    return
                try:
                    request = _read_request(conn, time.monotonic() + self.request_deadline)
                except RequestTimeout:
                    self.refusals.note("deadline", "CNI server: no whole request within "
                                       "%.1f s; closed", self.request_deadline)
                    return
                except CNIError as e:  # oversized: the in-process plugin's answer
                    self.refusals.note("oversized", "CNI server: refused a request: %s (%s)",
                                       e.msg, e.details)
                    _send_reply(conn, 1, skel.error_output(e), self.request_deadline)
                    return
                except ValueError as e:  # not our entry's wire format: one line, no answer
                    self.refusals.note("malformed", "CNI server: dropped a malformed "
                                       "request: %s", e)
                    return
                if request is None or not self._begin():
                    return  # a liveness probe (connect + close), or shutting down
                env, stdin, fds = request
                if not self._take_slot():
                    self._answer_busy(conn, "%d requests running (the bound) for %.0f s, "
                                      "or shutting down", self.max_connections,
                                      self.slot_wait)
                    return
                try:
                    code, out = self._run(env, stdin, fds)
                finally:
                    self._free_slot()
                _send_reply(conn, code, out, self.request_deadline)
                log.debug("CNI %s %s/%s: exit %d in %.2f ms",
                          *(skel.shown(env.get(k)) for k in
                            ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_IFNAME")),
                          code, (time.perf_counter() - started) * 1000)
        except Exception:
            log.exception("CNI server: request failed")
        finally:
            for fd in fds:
                os.close(fd)
            with self._lock:
                self._threads.discard(threading.current_thread())
                self._waiting.pop(threading.current_thread(), None)

    def _begin(self) -> bool:
        """The request arrived: from now on shutdown() waits for it instead of closing it."""
        with self._lock:
            self._waiting.pop(threading.current_thread(), None)
            return not self._stopping.is_set()

    def _take_slot(self) -> bool:
        """One of the ``max_connections`` slots, waiting up to ``slot_wait``; False when
        none freed in time or the server is stopping."""
        deadline = time.monotonic() + self.slot_wait
        with self._slot_free:
            while self._running >= self.max_connections and not self._stopping.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._slot_free.wait(remaining)
            if self._stopping.is_set():
                return False
            self._running += 1
            return True

    def _free_slot(self) -> None:
        with self._slot_free:
            self._running -= 1
            self._slot_free.notify()

    def _run(self, env: dict[str, str], stdin: bytes, fds: list[int]) -> tuple[int, bytes]:
        host_fd = fds[0] if fds else None
        netns_fd = fds[1] if len(fds) > 1 else None
        if host_fd is not None and not netns.same_netns(host_fd):
            # This thread is ours alone and ends with the request: it may stay in the
            # caller's namespace, so everything "host" happens there.
            netns.enter_netns_for_thread(host_fd)
        return skel.run(env, stdin, self.handlers, netns_fd, host_fd, self.reaper)

    def _peer_allowed(self, conn: socket.socket) -> bool:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _, uid, _ = struct.unpack("3i", creds)
        if uid not in (0, os.getuid()):
            self.refusals.note("peer", "CNI server: refused a request from uid %d", uid)
            return False
        return True

    def _answer_busy(self, conn: socket.socket, why: str, *args: object) -> None:
        """Tell the entry to run this request in-process, and close ``conn``; never
        blocks (the accept loop calls it). Counted before the answer goes out, so whoever
        has read BUSY finds it in the count."""
        self.refusals.note("busy", "CNI server: " + why + "; a request sent back to run "
                           "in-process", *args)
        try:
            conn.setblocking(False)
            conn.send(BUSY)
        except OSError:
            pass  # the entry then answers "try again" (11)
        finally:
            conn.close()


def _warm_up() -> None:
    """Exercise the netlink paths once before the first pod waits for them."""
    ipr = Rtnl()
    try:
        pod.get_link(ipr, "lo")
        pod.get_addresses(ipr, 1)
        pod.get_routes(ipr, 1)
    finally:
        ipr.close()


def _send_reply(conn: socket.socket, code: int, out: bytes, timeout: float) -> None:
    conn.settimeout(timeout)  # a peer that never reads must not hold the thread
    conn.sendall(b"%d\n" % code + out)


def _recv(conn: socket.socket, deadline: float, size: int = 65536) -> bytes:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise RequestTimeout()
    conn.settimeout(remaining)
    try:
        return conn.recv(size)
    except TimeoutError:
        raise RequestTimeout() from None


def _first_chunk(conn: socket.socket, deadline: float) -> tuple[bytes, list[int]]:
    """The first bytes with the fds that came along (they ride on the first message)."""
    fds = array.array("i")
    remaining = deadline - time.monotonic()
    conn.settimeout(max(remaining, 0.001))
    try:
        data, ancdata, _, _ = conn.recvmsg(65536, socket.CMSG_SPACE(MAX_FDS * fds.itemsize))
    except TimeoutError:
        raise RequestTimeout() from None
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    return data, list(fds)


def _parse_header(header: bytes) -> tuple[int, int]:
    parts = header.split()
    if len(parts) != 4 or parts[0] != MAGIC or not all(p.isdigit() for p in parts[1:]):
        raise ValueError("bad request header")
    return int(parts[1]), int(parts[2])


def _read_request(conn: socket.socket, deadline: float
                  ) -> tuple[dict[str, str], bytes, list[int]] | None:
    """One whole request by ``deadline`` (RequestTimeout), or None for a bare probe.
    An oversized one raises the CNIError the in-process plugin would answer with."""
    data, received = _first_chunk(conn, deadline)
    if not data and not received:
        return None
    try:
        buf = bytearray(data)
        while b"\n" not in buf[:_HEADER_MAX]:
            if len(buf) >= _HEADER_MAX:
                raise ValueError("bad request header")
            chunk = _recv(conn, deadline)
            if not chunk:
                raise ValueError("truncated request header")
            buf += chunk
        header, _, rest = bytes(buf).partition(b"\n")
        env_len, stdin_len = _parse_header(header)
        skel.check_size(env_len, stdin_len)
        body = bytearray(rest)
        while len(body) < env_len + stdin_len:
            chunk = _recv(conn, deadline)
            if not chunk:
                raise ValueError("truncated request")
            body += chunk
        return _decode_env(bytes(body[:env_len])), bytes(body[env_len:env_len + stdin_len]), \
            received
    except BaseException:
        for fd in received:
            os.close(fd)
        raise


def _decode_env(raw: bytes) -> dict[str, str]:
    # surrogateescape, as os.environ decodes: the in-process plugin sees the same string.
    env = {}
    for item in raw.split(b"\0"):
        key, _, value = item.decode("utf-8", "surrogateescape").partition("=")
        if key:
            env[key] = value
    return env
