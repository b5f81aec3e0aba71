"""overlayd's HTTP endpoints: /healthz, /readyz and /metrics (Prometheus text format).

- ``/healthz``: 200 while the process serves requests (liveness).
- ``/readyz``: 200 only once the lease is held, subnet.env written and the device
  programmed, and while the lease watch runs and has heard from etcd within
  ``--watch-lag-limit``; 503 with the missing conditions otherwise.
- ``/metrics``: the daemon's metrics (prometheus-client), see ``Metrics``.
"""

from __future__ import annotations

import io
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from overlay.errors import ConfigError

log = logging.getLogger(__name__)


class Metrics:
    """Every metric overlayd exports, in a registry of its own."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.leases_known = Gauge("overlay_leases_known",
                                  "Remote subnet leases known from etcd (own lease excluded)",
                                  registry=r)
        self.entries_programmed = Gauge(
            "overlay_remote_entries_programmed",
            "Remote entries (neigh, FDB, route) wanted on the VXLAN device", registry=r)
        self.remotes_failing = Gauge("overlay_remotes_failing",
                                     "Remote leases whose programming failed (retrying)",
                                     registry=r)
        self.route_conflicts = Gauge(
            "overlay_route_conflicts", "Remote leases left unprogrammed because a route of "
            "another protocol (kernel, static, ...) holds their subnet", registry=r)
        self.reconcile_runs = Counter("overlay_reconcile_runs",
                                      "Reconciles of kernel entries against leases", registry=r)
        self.reconcile_duration = Histogram(
            "overlay_reconcile_duration_seconds", "Duration of one reconcile", registry=r,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
        self.etcd_errors = Counter("overlay_etcd_errors", "Failed etcd requests", registry=r)
        # Labelled by the reason slug only: keys are written by whoever holds etcd
        # credentials, and one label per key would let them grow the metrics without end.
        self.leases_rejected = Counter(
            "overlay_leases_rejected", "Keys under subnets/ rejected by the acceptance rule "
            "(counted once per key revision)", ["reason"], registry=r)
        self.lease_expiry = Gauge("overlay_lease_expiry_seconds",
                                  "Seconds until this node's lease expires (-1: reservation "
                                  "or no lease)", registry=r)
        self.ready = Gauge("overlay_ready", "1 once the node is ready (see /readyz)", registry=r)
        self._expiry: Callable[[], datetime | None] = lambda: None
        self.lease_expiry.set_function(self._seconds_left)
        self.watch_lag = Gauge(
            "overlay_lease_watch_lag_seconds", "Seconds since the lease watch last heard "
            "from etcd (an event or a progress notification; -1: not started)", registry=r)
        self.config_changed = Gauge(
            "overlay_config_changed", "1 while the network config in etcd differs from the "
            "one this node runs with (restart overlayd on every node)", registry=r)
        self.watch_lag.set(-1)

    def track_watch(self, lag: Callable[[], float], config_changed: Callable[[], bool]) -> None:
        """The watch's lag and the config drift, read at every scrape."""
        self.watch_lag.set_function(lag)
        self.config_changed.set_function(lambda: 1 if config_changed() else 0)

    def track_cni_refusals(self, counts: Callable[[], Mapping[str, int]]) -> None:
        """The warm CNI server's refusals by reason, read at every scrape."""
        self.registry.register(_CNIRefusals(counts))

    def track_lease_expiry(self, expiry: Callable[[], datetime | None]) -> None:
        self._expiry = expiry

    def _seconds_left(self) -> float:
        when = self._expiry()
        if when is None:
            return -1.0
        return max(0.0, (when - datetime.now(UTC)).total_seconds())

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _CNIRefusals(Collector):
    def __init__(self, counts: Callable[[], Mapping[str, int]]):
        self._counts = counts

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "overlay_cni_requests_refused", "Requests the warm CNI server did not run, by "
            "reason: busy (sent back to run in-process), deadline (no whole request in "
            "time), malformed, oversized, peer (a uid other than root or overlayd's)",
            labels=["reason"])
        for reason, count in self._counts().items():
            family.add_metric([reason], count)
        yield family


def parse_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--healthz-addr {text!r}: expected HOST:PORT, e.g. 127.0.0.1:10256")
    return host.strip("[]") or "0.0.0.0", int(port)


HANDLER_TIMEOUT = 5.0  # seconds for a whole request to arrive (and for the reply's writes)
MAX_HTTP_CONNECTIONS = 64  # served at once; probes and scrapes need a handful


class _DeadlineReader(io.RawIOBase):
    """A connection's reads against one deadline for the whole request, not per read:
    a client trickling a byte every few seconds is cut off at the deadline."""

    def __init__(self, sock: socket.socket, deadline: float):
        self.sock, self.deadline = sock, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no whole request within the deadline")
        self.sock.settimeout(remaining)
        return self.sock.recv_into(buffer)


class _BoundedServer(ThreadingHTTPServer):
    """At most ``max_connections`` served at once; one past them is closed unanswered
    (logged once per burst) rather than given a thread."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 max_connections: int):
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(max_connections)
        self.max_connections = max_connections
        self._refusing = False

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            if not self._refusing:
                self._refusing = True
                log.warning("http: %d connections open (the bound); closing new ones until "
                            "one ends", self.max_connections)
            self.shutdown_request(request)
            return
        self._refusing = False
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address) -> None:
        # socketserver prints a traceback to stderr; a client resetting its connection
        # is one line in the log
        log.debug("http: connection from %s failed: %s", client_address[0],
                  sys.exc_info()[1])


class HealthServer:
    """A small threaded HTTP server; ``readiness()`` returns the unmet conditions."""

    def __init__(self, addr: str, metrics: Metrics, readiness: Callable[[], list[str]]):
        host, port = parse_hostport(addr)
        self.metrics = metrics
        self.readiness = readiness
        handler = self._handler()
        try:
            self.server = _BoundedServer((host, port), handler, MAX_HTTP_CONNECTIONS)
        except OSError as e:
            raise ConfigError(f"--healthz-addr {addr}: cannot listen: {e.strerror}") from e
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]
        assert isinstance(host, str), "an AF_INET server's address is (host, port)"
        return host, port

    def start(self) -> None:
        self._thread = threading.Thread(target=self.server.serve_forever, name="http",
                                        daemon=True)
        self._thread.start()
        log.info("serving /healthz, /readyz and /metrics on %s:%d", *self.address)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            timeout = HANDLER_TIMEOUT  # an idle connection must not pin a thread forever

            def setup(self) -> None:
                super().setup()
                # the whole request within HANDLER_TIMEOUT, however it trickles in
                self.rfile.close()
                self.rfile = io.BufferedReader(_DeadlineReader(
                    self.connection, time.monotonic() + HANDLER_TIMEOUT))

            def do_GET(self) -> None:  # the name http.server calls
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    self._reply(200, b"ok\n")
                elif path == "/readyz":
                    missing = outer.readiness()
                    if missing:
                        self._reply(503, ("not ready: " + "; ".join(missing) + "\n").encode())
                    else:
                        self._reply(200, b"ok\n")
                elif path == "/metrics":
                    self._reply(200, outer.metrics.render(), CONTENT_TYPE_LATEST)
                else:
                    self._reply(404, b"not found: try /healthz, /readyz or /metrics\n")

            def _reply(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
                self.connection.settimeout(HANDLER_TIMEOUT)  # the reply's own writes
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args) -> None:
                if log.isEnabledFor(logging.DEBUG):  # formatted only when it is logged
                    log.debug("http: %s", fmt % args)

        return Handler
