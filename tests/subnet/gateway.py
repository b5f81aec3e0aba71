"""A scripted stand-in for etcd's JSON gateway on loopback (unit tests only).

Each path answers from its own list of replies, in order (the last one repeats): a
reply is ``(status, body)``, ``DROP`` (close the connection without answering, like a
member that died mid-request) or ``("stream", [lines], hold)`` for a watch (kept open
``hold`` seconds after the lines).  The answers the tests give are ones recorded from
etcd 3.4.23 here.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DROP = "drop"


class Gateway:
    def __init__(self) -> None:
        self.replies: dict[str, list[Any]] = {}
        self.requests: list[tuple[str, dict[str, Any], dict[str, str]]] = []
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(n) or b"{}")
                gateway.requests.append((self.path, body, dict(self.headers)))
                reply = gateway.next_reply(self.path)
                if reply == DROP:
                    self.close_connection = True
                    return
                status, payload, *hold = reply
                if status == "stream":
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for line in payload:
                        data = (line if isinstance(line, bytes) else json.dumps(line).encode())
                        data += b"\n"
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                        self.wfile.flush()
                    if hold:  # keep the stream open, quiet, this long
                        time.sleep(hold[0])
                    self.wfile.write(b"0\r\n\r\n")
                    self.close_connection = True
                    return
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def next_reply(self, path: str) -> Any:
        replies = self.replies.get(path) or [(404, {"error": "Not Found", "code": 5,
                                                    "message": "Not Found"})]
        return replies.pop(0) if len(replies) > 1 else replies[0]

    def on(self, path: str, *replies: Any) -> None:
        self.replies[path] = list(replies)

    def paths(self) -> list[str]:
        return [p for p, _, _ in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
