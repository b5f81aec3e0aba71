"""Namespaces-as-nodes for overlayd's integration tests and benchmarks (prefix ``ovd-``).

An underlay namespace holds a bridge; each node namespace's ``eth0`` is a veth whose
peer is created directly inside the underlay namespace (nothing ever sits in the host's
root namespace).  etcd runs inside the underlay namespace on the bridge's address, so
the nodes reach it and the host never exposes it.  ``Topology.cleanup`` removes exactly
the namespaces, processes and directories it made.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from ipaddress import IPv4Interface

from pyroute2.netns import create_socket

from .etcd_server import EtcdServer

OVERLAYD = os.path.join(os.path.dirname(sys.executable), "overlayd")
UNDERLAY_IP = "192.168.1.1"


def sh(*args: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=timeout)


def nsx(ns: str, *args: str, check: bool = True,
        timeout: float = 20) -> subprocess.CompletedProcess:
    return sh("ip", "netns", "exec", ns, *args, check=check, timeout=timeout)


def ns_http_get(ns: str, host: str, port: int, path: str, timeout: float = 2.0) -> tuple[int, str]:
    """GET http://host:port/path from inside ``ns``; (status, body); (0, error) if refused."""
    try:
        s = create_socket(f"/var/run/netns/{ns}", socket.AF_INET, socket.SOCK_STREAM, flags=0)
    # The namespace is gone. pyroute2 re-raises the forked child's error under whatever
    # class it had (RuntimeError, TypeError, a bare Exception), so no narrower type holds.
    except Exception as e:  # noqa: BLE001  (any class; see above)
        return 0, str(e)
    try:
        s.settimeout(timeout)
        s.connect((host, port))
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    except OSError as e:
        return 0, str(e)
    finally:
        s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0, data.decode(errors="replace")
    return status, body.decode(errors="replace")


def wait_for(pred, timeout: float, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class NSEtcd(EtcdServer):
    """etcd inside a namespace, listening on that namespace's address."""

    def __init__(self, netns: str, host: str, **kw):
        super().__init__(host=host, client_port=2379, peer_port=2380, **kw)
        self.netns = netns

    def args(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns] + super().args()

    def healthy(self) -> bool:
        status, body = ns_http_get(self.netns, self.host, self.client_port, "/health", 0.5)
        return status == 200 and '"true"' in body


class Node:
    def __init__(self, topo: Topology, index: int):
        self.topo = topo
        self.index = index
        self.ns = f"ovd-n{index}-{topo.tag}"
        self.ip = f"192.168.1.{10 + index}"
        self.dir = os.path.join(topo.dir, f"n{index}")
        self.subnet_file = os.path.join(self.dir, "subnet.env")
        self.state_dir = os.path.join(self.dir, "state")
        self.log_path = os.path.join(self.dir, "overlayd.log")
        self.proc: subprocess.Popen | None = None
        self.pod_ns = f"ovd-p{index}-{topo.tag}"
        self.extra_args: list[str] = []

    def start(self, *extra: str) -> None:
        os.makedirs(self.dir, exist_ok=True)
        args = ["ip", "netns", "exec", self.ns, OVERLAYD,
                "--etcd-endpoints", self.topo.etcd.endpoint,
                "--subnet-file", self.subnet_file, "--state-dir", self.state_dir,
                "--runtime-file", os.path.join(self.dir, "overlayd.json"),
                "--healthz-addr", "127.0.0.1:10256", "--cni-socket", "",
                "--lease-ttl", "60", "--lease-renew-margin", "20",
                "--reconcile-interval", "2",
                # the namespaces share the host's name: each node claims its own
                "--node-name", f"n{self.index}", *self.extra_args, *extra]
        log = open(self.log_path, "ab")  # noqa: SIM115 (a child's log: open while the child runs)
        self.proc = subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        log.close()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def http(self, path: str) -> tuple[int, str]:
        return ns_http_get(self.ns, "127.0.0.1", 10256, path)

    def wait_ready(self, timeout: float = 20) -> None:
        def ready():
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"overlayd on {self.ns} exited {self.proc.returncode}:\n"
                                     + self.log()[-3000:])
            return self.http("/readyz")[0] == 200
        wait_for(ready, timeout, what=f"/readyz of {self.ns}")

    def log(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def subnet(self) -> IPv4Interface:
        with open(self.subnet_file) as f:
            for line in f:
                if line.startswith("OVERLAY_SUBNET="):
                    return IPv4Interface(line.split("=", 1)[1].strip())
        raise AssertionError("no OVERLAY_SUBNET")

    def ip_json(self, *args: str) -> list[dict]:
        out = nsx(self.ns, "ip", "-j", *args).stdout
        return json.loads(out) if out.strip() else []

    def add_pod(self) -> str:
        """A bridge cni0 with the subnet's .1 and a pod namespace with .2; returns .2."""
        gw = self.subnet()
        pod_ip = f"{gw.ip + 1}/{gw.network.prefixlen}"
        cmds = [
            ["ip", "netns", "add", self.pod_ns],
            ["ip", "-n", self.ns, "link", "add", "cni0", "type", "bridge"],
            ["ip", "-n", self.ns, "addr", "add", str(gw), "dev", "cni0"],
            ["ip", "-n", self.ns, "link", "set", "cni0", "up"],
            ["ip", "-n", self.ns, "link", "add", "vpod", "type", "veth", "peer", "name", "eth0",
             "netns", self.pod_ns],
            ["ip", "-n", self.ns, "link", "set", "vpod", "master", "cni0", "up"],
            ["ip", "-n", self.pod_ns, "link", "set", "lo", "up"],
            ["ip", "-n", self.pod_ns, "link", "set", "eth0", "mtu", "1450", "up"],
            ["ip", "-n", self.pod_ns, "addr", "add", pod_ip, "dev", "eth0"],
            ["ip", "-n", self.pod_ns, "route", "add", "default", "via", str(gw.ip)],
        ]
        self.topo.namespaces.append(self.pod_ns)
        for c in cmds:
            sh(*c)
        return pod_ip.split("/")[0]


class Topology:
    """An underlay namespace with a bridge, etcd in it, and ``n`` node namespaces."""

    def __init__(self, n: int = 2):
        self.tag = secrets.token_hex(3)
        self.underlay = f"ovd-u-{self.tag}"
        self.dir = tempfile.mkdtemp(prefix=f"ovd-{self.tag}-")
        self.namespaces: list[str] = []
        self.nodes: list[Node] = []
        self._etcd: NSEtcd | None = None
        self._n = n

    @property
    def etcd(self) -> NSEtcd:
        """The etcd that setup() started."""
        if self._etcd is None:
            raise AssertionError("the topology's etcd is not started (call setup() first)")
        return self._etcd

    def setup(self, config: dict | None = None) -> Topology:
        try:
            self._make_underlay()
            for i in range(1, self._n + 1):
                self.add_node(i)
            os.makedirs(os.path.join(self.dir, "etcd"))
            self._etcd = NSEtcd(self.underlay, UNDERLAY_IP,
                                data_dir=os.path.join(self.dir, "etcd")).start()
            self.put_config(config or {"Network": "10.244.0.0/16",
                                       "Backend": {"Type": "vxlan", "VNI": 1}})
        except BaseException:
            self.cleanup()
            raise
        return self

    def _make_underlay(self) -> None:
        u = self.underlay
        sh("ip", "netns", "add", u)
        self.namespaces.append(u)
        sh("ip", "-n", u, "link", "set", "lo", "up")
        sh("ip", "-n", u, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", u, "addr", "add", f"{UNDERLAY_IP}/24", "dev", "br0")
        sh("ip", "-n", u, "link", "set", "br0", "up")

    def add_node(self, i: int) -> Node:
        node = Node(self, i)
        sh("ip", "netns", "add", node.ns)
        self.namespaces.append(node.ns)
        sh("ip", "-n", node.ns, "link", "set", "lo", "up")
        sh("ip", "-n", node.ns, "link", "add", "eth0", "type", "veth", "peer", "name",
           f"v{i}", "netns", self.underlay)
        sh("ip", "-n", self.underlay, "link", "set", f"v{i}", "master", "br0", "up")
        sh("ip", "-n", node.ns, "addr", "add", f"{node.ip}/24", "dev", "eth0")
        sh("ip", "-n", node.ns, "link", "set", "eth0", "up")
        sh("ip", "-n", node.ns, "route", "add", "default", "via", UNDERLAY_IP)
        nsx(node.ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        self.nodes.append(node)
        return node

    def etcdctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return nsx(self.underlay, "etcdctl", "--endpoints", self.etcd.endpoint, *args,
                   check=check)

    def put_config(self, config: dict) -> None:
        self.etcdctl("put", "/overlay/network/config", json.dumps(config))

    def leases(self) -> dict[str, dict]:
        out = self.etcdctl("get", "--prefix", "/overlay/network/subnets/", "-w", "json").stdout
        kvs = json.loads(out).get("kvs", [])
        import base64
        return {base64.b64decode(kv["key"]).decode().rsplit("/", 1)[1]:
                json.loads(base64.b64decode(kv["value"])) for kv in kvs}

    def cleanup(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                node.stop(signal.SIGKILL, timeout=5)
        if self._etcd is not None:
            self._etcd.stop(signal.SIGKILL)
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)
