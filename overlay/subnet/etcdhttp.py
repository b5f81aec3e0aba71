"""etcd's v3 API spoken as JSON over HTTP (etcd's own gRPC gateway), on the stdlib.

etcd serves every v3 call the project makes as ``POST /v3/<service>/<method>`` with the
request message as JSON (bytes base64, int64 as strings) and answers the same way; a
watch is one POST whose answer is a chunked stream of one JSON message per line.  Spoken
here with ``http.client`` instead of gRPC because the gRPC client (grpcio, protobuf and
the generated etcd stubs) was 16 MB of overlayd's RSS and 11 of its threads (README,
"Control plane at scale").

This module knows HTTP, JSON and etcd's message shapes, nothing of leases, and does no
failover (``overlay.subnet.etcd`` does): an endpoint that does not answer raises
``Unreachable``, an answer etcd refused raises ``GatewayError`` with the gRPC status code.
Every read is bounded: an answer (or one watch message) larger than its bound is
``TooLarge``, read no further, and its connection dropped.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from typing import Any

from overlay.subnet.etcdconf import endpoint_url
from overlay.util import jsontext

# gRPC status codes etcd answers with (the gateway passes them on as "code")
NOT_FOUND, FAILED_PRECONDITION, PERMISSION_DENIED, UNAUTHENTICATED = 5, 9, 7, 16
INVALID_ARGUMENT, DEADLINE_EXCEEDED, UNAVAILABLE = 3, 4, 14
CODE_NAMES = {1: "CANCELLED", 2: "UNKNOWN", INVALID_ARGUMENT: "INVALID_ARGUMENT",
              DEADLINE_EXCEEDED: "DEADLINE_EXCEEDED", NOT_FOUND: "NOT_FOUND",
              6: "ALREADY_EXISTS", PERMISSION_DENIED: "PERMISSION_DENIED",
              8: "RESOURCE_EXHAUSTED", FAILED_PRECONDITION: "FAILED_PRECONDITION",
              10: "ABORTED", 11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED", 13: "INTERNAL",
              UNAVAILABLE: "UNAVAILABLE", UNAUTHENTICATED: "UNAUTHENTICATED"}

# etcd refuses a value over 1.5 MiB (--max-request-bytes), 2 MiB once base64'd; a listing
# is read in pages (overlay.subnet.etcd.range_all) so this bounds one page, not a prefix.
MAX_RESPONSE_BYTES = 32 * 1024 * 1024
MAX_WATCH_MESSAGE_BYTES = 32 * 1024 * 1024
IDLE_CONNECTIONS = 4  # kept open per endpoint for the next request


class Unreachable(Exception):
    """The endpoint did not answer (refused, reset, timed out, TLS failed, not etcd)."""


class GatewayError(Exception):
    """etcd answered with an error: ``code`` is its gRPC status code."""

    def __init__(self, code: int, message: str, http_status: int = 0):
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status

    @property
    def code_name(self) -> str:
        return CODE_NAMES.get(self.code, f"code {self.code}")


class TooLarge(GatewayError):
    def __init__(self, what: str, limit: int):
        super().__init__(8, f"{what} is larger than {limit} bytes")


class KeyValue:
    """One key as etcd returns it (``mvccpb.KeyValue``)."""

    __slots__ = ("key", "value", "create_revision", "mod_revision", "version", "lease")

    def __init__(self, key: bytes, value: bytes = b"", create_revision: int = 0,
                 mod_revision: int = 0, version: int = 0, lease: int = 0):
        self.key = key
        self.value = value
        self.create_revision = create_revision
        self.mod_revision = mod_revision
        self.version = version
        self.lease = lease

    def __repr__(self) -> str:
        return f"KeyValue({self.key!r}, mod_revision={self.mod_revision})"


class Event:
    """One watch event: ``type`` "PUT" or "DELETE"; ``prev_kv`` when etcd still had it."""

    __slots__ = ("type", "kv", "prev_kv")

    def __init__(self, type: str, kv: KeyValue, prev_kv: KeyValue | None = None):
        self.type = type
        self.kv = kv
        self.prev_kv = prev_kv


# -- the JSON codec ------------------------------------------------------------------

def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def unb64(text: object) -> bytes:
    if not isinstance(text, str):
        raise ValueError(f"expected a base64 string, got {type(text).__name__}")
    return base64.b64decode(text, validate=True)


def num(d: dict[str, Any], name: str) -> int:
    """An int64 field (the gateway writes them as strings; absent means 0)."""
    v = d.get(name, 0)
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        raise ValueError(f"{name}: expected an integer, got {type(v).__name__}")
    return int(v)


def parse_kv(d: object) -> KeyValue:
    if not isinstance(d, dict):
        raise ValueError("a key-value is not an object")
    return KeyValue(unb64(d.get("key", "")), unb64(d.get("value", "")),
                    num(d, "create_revision"), num(d, "mod_revision"), num(d, "version"),
                    num(d, "lease"))


def parse_kvs(d: dict[str, Any]) -> list[KeyValue]:
    kvs = d.get("kvs", [])
    if not isinstance(kvs, list):
        raise ValueError("kvs is not a list")
    return [parse_kv(k) for k in kvs]


def parse_event(d: object) -> Event:
    if not isinstance(d, dict):
        raise ValueError("an event is not an object")
    kind = d.get("type", "PUT")
    if kind not in ("PUT", "DELETE"):
        raise ValueError(f"unknown event type {kind!r}")
    prev = d.get("prev_kv")
    return Event(kind, parse_kv(d.get("kv", {})), parse_kv(prev) if prev is not None else None)


def revision_of(d: dict[str, Any]) -> int:
    header = d.get("header", {})
    return num(header, "revision") if isinstance(header, dict) else 0


def prefix_range_end(key: bytes) -> bytes:
    """The range end that makes ``[key, end)`` every key starting with ``key``."""
    k = bytearray(key)
    while k:
        if k[-1] < 0xFF:
            k[-1] += 1
            return bytes(k)
        k.pop()
    return b"\0"  # every key


def compare(key: bytes | str, target: str, value: int | bytes, result: str = "EQUAL"
            ) -> dict[str, Any]:
    """One txn comparison: ``target`` CREATE, MOD, VERSION or VALUE; ``result`` EQUAL,
    GREATER, LESS or NOT_EQUAL."""
    field = {"CREATE": "create_revision", "MOD": "mod_revision", "VERSION": "version",
             "VALUE": "value"}[target]
    v = b64(value) if isinstance(value, bytes) else str(value)
    return {"key": b64(key), "target": target, "result": result, field: v}


def _gateway_error(status: int, body: bytes) -> GatewayError:
    try:
        d = jsontext.loads(body)
        err = d["error"] if isinstance(d.get("error"), dict) else d
        code = int(err.get("code", err.get("grpc_code", 2)))
        message = str(err.get("message") or err.get("error") or "")
    except (ValueError, AttributeError, TypeError):
        code, message = (UNAVAILABLE if status in (502, 503, 504) else 2), body[:200].decode(
            "utf-8", "replace")
    return GatewayError(code, message.strip() or f"HTTP {status}", status)


def _load(body: bytes, what: str) -> dict[str, Any]:
    try:
        d = jsontext.loads(body)
    except ValueError as e:
        raise GatewayError(13, f"{what}: etcd's answer is not JSON ({e})") from e
    if not isinstance(d, dict):
        raise GatewayError(13, f"{what}: etcd's answer is not a JSON object")
    return d


# -- the connection ------------------------------------------------------------------

class Endpoint:
    """One etcd member's HTTP(S) address, with a few kept-alive connections to it."""

    def __init__(self, host: str, port: int, ssl_context: ssl.SSLContext | None,
                 timeout: float):
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.timeout = timeout
        self.token: str | None = None  # the auth token, sent as etcd's gateway wants it
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def __str__(self) -> str:  # in log lines, as the endpoint was given
        return endpoint_url(self.host, self.port, self.ssl_context is not None)

    def connect(self, timeout: float | None) -> http.client.HTTPConnection:
        if self.ssl_context is not None:
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout,
                                               context=self.ssl_context)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def _take(self) -> tuple[http.client.HTTPConnection, bool]:
        """A connection, and whether it is a kept-alive one (which the server may have
        closed since)."""
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        return self.connect(self.timeout), False

    def _give_back(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < IDLE_CONNECTIONS:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def headers(self, length: int) -> dict[str, str]:
        h = {"Content-Type": "application/json", "Content-Length": str(length)}
        if self.token:
            h["Authorization"] = self.token
        return h

    def post(self, path: str, body: dict[str, Any],
             limit: int | None = None) -> dict[str, Any]:
        """One request; its answer as a dict.  A kept-alive connection that the server
        closed meanwhile is retried once on a new one (etcd read nothing from it)."""
        data = json.dumps(body).encode()
        if limit is None:
            limit = MAX_RESPONSE_BYTES
        for _ in (0, 1):
            conn, reused = self._take()
            try:
                conn.request("POST", path, data, self.headers(len(data)))
                resp = conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError,
                    ConnectionResetError) as e:
                conn.close()
                if reused:  # the others were idle as long: likely closed too
                    self.close()
                    continue
                raise Unreachable(f"{self}: {e or type(e).__name__}") from e
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                raise _unreachable(self, e) from e
            return self._answer(conn, resp, path, limit)
        raise AssertionError("unreachable")  # pragma: no cover

    def _answer(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse,
                path: str, limit: int) -> dict[str, Any]:
        try:
            length = resp.getheader("Content-Length")
            if length is not None and length.isdigit() and int(length) > limit:
                raise TooLarge(f"etcd's answer to {path}", limit)
            body = resp.read(limit + 1)
            if len(body) > limit:
                raise TooLarge(f"etcd's answer to {path}", limit)
            if not resp.isclosed():
                resp.read()  # the rest of a chunked answer (its terminator): keep-alive
        except TooLarge:
            conn.close()
            raise
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise _unreachable(self, e) from e
        if resp.will_close:
            conn.close()
        else:
            self._give_back(conn)
        if resp.status != 200:
            raise _gateway_error(resp.status, body)
        d = _load(body, path)
        # streamed methods (lease keepalive) answer {"result": ...} or {"error": ...}
        if "error" in d and isinstance(d["error"], dict):
            raise _gateway_error(resp.status, body)
        return d


def _unreachable(where: object, e: BaseException) -> Unreachable:
    """A failed request to ``where`` (an endpoint) as the edge's error; TLS failures say
    so (``ssl.SSLError`` is an OSError too)."""
    if isinstance(e, ssl.SSLError):
        return Unreachable(f"{where}: TLS: {e.reason or e}")
    return Unreachable(f"{where}: {_describe(e)}")


def _describe(e: BaseException) -> str:
    if isinstance(e, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


class WatchCall:
    """One open ``/v3/watch`` stream: ``messages()`` yields each watch response (the
    ``result`` object) as etcd sends it; ``cancel()`` (any thread) ends it."""

    def __init__(self, endpoint: Endpoint, create_request: dict[str, Any],
                 limit: int | None = None):
        self.endpoint = endpoint
        self.limit = MAX_WATCH_MESSAGE_BYTES if limit is None else limit
        self._cancelled = False
        data = json.dumps({"create_request": create_request}).encode()
        # The request is sent whole: etcd's gateway answers a watch only once the
        # request body is complete, so progress is asked for on other requests (the
        # registry's watch).
        self._conn = conn = endpoint.connect(endpoint.timeout)
        try:
            conn.request("POST", "/v3/watch", data, endpoint.headers(len(data)))
            self._resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise _unreachable(endpoint, e) from e
        if self._resp.status != 200:
            body = self._resp.read(64 * 1024)
            conn.close()
            raise _gateway_error(self._resp.status, body)
        if conn.sock is not None:
            conn.sock.settimeout(None)  # a quiet watch is not a failure; cancel() ends it
            _keepalive(conn.sock)

    def cancel(self) -> None:
        self._cancelled = True
        sock = self._conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):  # already closed
                sock.shutdown(socket.SHUT_RDWR)

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def close(self) -> None:
        self.cancel()
        self._conn.close()

    def messages(self) -> Iterator[dict[str, Any]]:
        """Raises ``Unreachable`` when the stream breaks, ``GatewayError`` when etcd sends
        an error or garbage; returns when it ends (or was cancelled)."""
        resp = self._resp
        while True:
            try:
                line = resp.readline(self.limit + 1)
            # AttributeError: close() from another thread took the response's file away
            except (OSError, http.client.HTTPException, ValueError, AttributeError) as e:
                if self._cancelled:
                    return
                raise Unreachable(f"{self.endpoint}: watch stream: {_describe(e)}") from e
            if not line:
                return
            if len(line) > self.limit:
                self.close()
                raise TooLarge("a watch message", self.limit)
            if not line.strip():
                continue
            d = _load(line, "watch")
            if "error" in d:
                err = d["error"] if isinstance(d["error"], dict) else {}
                raise GatewayError(int(err.get("grpc_code", err.get("code", 2)) or 2),
                                   str(err.get("message", "watch failed")))
            result = d.get("result", {})
            if not isinstance(result, dict):
                raise GatewayError(13, "watch: a message without a result")
            yield result


def _keepalive(sock: socket.socket) -> None:
    """Probe an idle watch connection so a peer that vanished (no FIN) breaks it in
    about 10 s instead of the kernel's two hours."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for opt, value in (("TCP_KEEPIDLE", 5), ("TCP_KEEPINTVL", 2), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, opt):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), value)


def decode_error(e: Exception) -> GatewayError:
    """A malformed answer (bad base64, a non-integer revision) as a gateway error."""
    return GatewayError(13, f"etcd's answer is malformed: {e}")


__all__ = ["Endpoint", "Event", "GatewayError", "KeyValue", "TooLarge", "Unreachable",
           "WatchCall", "b64", "compare", "decode_error", "parse_event", "parse_kv",
           "parse_kvs", "prefix_range_end", "revision_of", "unb64"]
