"""A rogue etcd writer: raw puts and deletes of arbitrary bytes, run inside a namespace.

The test etcd of ``ovd_topology`` listens only inside the underlay namespace, and the
etcd client cannot be moved into a namespace from the test process, so the test runs
this file there (``ip netns exec``) with the venv's interpreter.  It uses the same client
as the project (``pyetcd`` from ``etcd-sdk-python``) directly, bypassing every codec of
the project: keys and values are bytes, exactly as a hostile node would write them.

Input on stdin: one JSON list of ``{"op": "put"|"del", "key": b64, "value": b64}``.
Output on stdout: one JSON list with the etcd revision after each operation.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Op:
    op: str  # "put" or "del"
    key: bytes
    value: bytes = b""

    def to_json(self) -> dict:
        return {"op": self.op, "key": base64.b64encode(self.key).decode(),
                "value": base64.b64encode(self.value).decode()}


def run_ops(netns: str, endpoint: str, ops: list[Op], timeout: float = 30) -> list[int]:
    """Apply ``ops`` in order against ``endpoint`` from inside ``netns``; their revisions."""
    payload = json.dumps([o.to_json() for o in ops])
    r = subprocess.run(["ip", "netns", "exec", netns, sys.executable, __file__, endpoint],
                       input=payload, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise AssertionError(f"rogue writer failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return json.loads(r.stdout)


def _client(endpoint: str):
    from pyetcd.client import Endpoint, MultiEndpointEtcd3Client

    url = urlsplit(endpoint)
    return MultiEndpointEtcd3Client([Endpoint(url.hostname, url.port, secure=False,
                                              time_retry=1)], failover=True)


def main(endpoint: str) -> None:
    ops = json.load(sys.stdin)
    client = _client(endpoint)
    revisions = []
    for o in ops:
        key = base64.b64decode(o["key"])
        if o["op"] == "put":
            resp = client.put(key, base64.b64decode(o["value"]))
        else:
            resp = client.delete(key, return_response=True)
        revisions.append(resp.header.revision)
    client.close()
    json.dump(revisions, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
