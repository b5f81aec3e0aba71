"""A real etcd server (Debian's etcd-server) for tests: start, stop, restart, health."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Self

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EtcdServer:
    """One etcd member on loopback with its own data dir; stop() kills exactly this process."""

    def __init__(self, name: str = "test", client_port: int | None = None,
                 peer_port: int | None = None, host: str = "127.0.0.1",
                 extra_args: list[str] | None = None, scheme: str = "http",
                 data_dir: str | None = None, tls: TLSFiles | None = None,
                 initial_cluster: str | None = None):
        self.name = name
        self.host = host
        self.client_port = client_port or free_port()
        self.peer_port = peer_port or free_port()
        # ports we picked may be taken between free_port() and etcd's bind (another
        # process's ephemeral port): start() then picks again; given ones are kept
        self._picked_ports = client_port is None and peer_port is None
        self.tls = tls
        self.scheme = "https" if tls is not None else scheme
        self.initial_cluster = initial_cluster
        self.extra_args = list(extra_args or [])
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="overlay-test-etcd-")
        self._own_dir = data_dir is None
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(self.data_dir, "etcd.log")

    @property
    def endpoint(self) -> str:
        return f"{self.scheme}://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"

    def args(self) -> list[str]:
        return [
            ETCD, "--name", self.name, "--data-dir", os.path.join(self.data_dir, "data"),
            "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
            "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", self.initial_cluster or f"{self.name}={self.peer_url}",
            "--heartbeat-interval", "10", "--election-timeout", "100",
            "--log-level", "warn", "--logger", "zap",
        ] + self.tls_args() + self.extra_args

    def tls_args(self) -> list[str]:
        if self.tls is None:
            return []
        return ["--cert-file", self.tls.server_cert, "--key-file", self.tls.server_key,
                "--trusted-ca-file", self.tls.ca, "--client-cert-auth"]

    def start(self, wait: bool = True) -> Self:
        for attempt in range(3):
            log = open(self.log_path, "ab")  # noqa: SIM115 (a child's log: open while it runs)
            self.proc = subprocess.Popen(self.args(), stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
            log.close()
            if not wait:
                return self
            try:
                self.wait_healthy()
                return self
            except RuntimeError:
                lost_port = (self.proc.poll() is not None and "address already in use"
                             in Path(self.log_path).read_text()[-2000:])
                if not (lost_port and self._picked_ports and attempt < 2):
                    raise
                self.client_port, self.peer_port = free_port(), free_port()
        return self

    def wait_healthy(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}; "
                                   f"see {self.log_path}:\n"
                                   + Path(self.log_path).read_text()[-2000:])
            if self.healthy():
                return
            time.sleep(0.05)
        raise RuntimeError(f"etcd at {self.endpoint} not healthy after {timeout}s")

    def healthy(self) -> bool:
        ctx = None
        if self.tls is not None:
            ctx = ssl.create_default_context(cafile=self.tls.ca)
            ctx.load_cert_chain(self.tls.client_cert, self.tls.client_key)
        elif self.scheme != "http":
            try:
                with socket.create_connection((self.host, self.client_port), timeout=0.2):
                    return True
            except OSError:
                return False
        try:
            with urllib.request.urlopen(self.endpoint + "/health", timeout=0.5,
                                        context=ctx) as r:
                return b'"true"' in r.read()
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop(signal.SIGKILL)
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)


@dataclass(frozen=True)
class TLSFiles:
    """A throwaway CA with a server certificate for 127.0.0.1 and a client certificate."""

    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE)


def make_test_ca(directory: str) -> TLSFiles:
    """Make a CA, a server cert (SAN 127.0.0.1, localhost) and a client cert with openssl."""
    p = lambda name: os.path.join(directory, name)  # noqa: E731
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", "/CN=ovlease-test-ca", "-keyout", p("ca.key"), "-out", p("ca.crt"))
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                                 "extendedKeyUsage=serverAuth,clientAuth"),
                      ("client", "extendedKeyUsage=clientAuth")):
        with open(p(f"{name}.ext"), "w") as f:
            f.write(ext + "\n")
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=ovlease-{name}",
                 "-keyout", p(f"{name}.key"), "-out", p(f"{name}.csr"))
        _openssl("x509", "-req", "-in", p(f"{name}.csr"), "-CA", p("ca.crt"),
                 "-CAkey", p("ca.key"), "-CAcreateserial", "-days", "2",
                 "-extfile", p(f"{name}.ext"), "-out", p(f"{name}.crt"))
    return TLSFiles(p("ca.crt"), p("server.crt"), p("server.key"), p("client.crt"),
                    p("client.key"))


class EtcdCluster:
    """``size`` etcd members on loopback forming one cluster; members can be stopped/started."""

    def __init__(self, size: int = 3, prefix: str = "ovlease"):
        ports = [(free_port(), free_port()) for _ in range(size)]
        names = [f"{prefix}-m{i}" for i in range(size)]
        initial = ",".join(f"{n}=http://127.0.0.1:{peer}"
                           for n, (_, peer) in zip(names, ports, strict=True))
        self.members = [EtcdServer(name=n, client_port=c, peer_port=peer, initial_cluster=initial,
                                   extra_args=["--initial-cluster-token", f"{prefix}-cluster"])
                        for n, (c, peer) in zip(names, ports, strict=True)]

    @property
    def endpoints(self) -> str:
        return ",".join(m.endpoint for m in self.members)

    def start(self) -> EtcdCluster:
        for m in self.members:  # members wait for each other: start all, then wait
            m.start(wait=False)
        for m in self.members:
            m.wait_healthy(timeout=30)
        return self

    def cleanup(self) -> None:
        for m in self.members:
            m.cleanup()


class TcpProxy:
    """A loopback TCP forwarder to a port; ``cut()`` drops every connection (and refuses new
    ones) until ``restore()``: a network partition between a client and etcd."""

    def __init__(self, target_port: int, host: str = "127.0.0.1"):
        self.target = (host, target_port)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.endpoint = f"http://{host}:{self.port}"
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._cut = False
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="ovlease-proxy").start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                if self._cut or self._closed:
                    conn.close()
                    continue
            try:
                upstream = socket.create_connection(self.target, timeout=2)
            except OSError:
                conn.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns += [conn, upstream]
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            conns, self._conns = self._conns, []
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()

    def restore(self) -> None:
        with self._lock:
            self._cut = False

    def close(self) -> None:
        self._closed = True
        self.cut()
        self.listener.close()
