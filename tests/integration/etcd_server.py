"""A real etcd server (Debian's etcd-server) for tests: start, stop, restart, health."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

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
                 data_dir: str | None = None):
        self.name = name
        self.host = host
        self.client_port = client_port or free_port()
        self.peer_port = peer_port or free_port()
        self.scheme = scheme
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
            "--initial-cluster", f"{self.name}={self.peer_url}",
            "--heartbeat-interval", "10", "--election-timeout", "100",
            "--log-level", "warn", "--logger", "zap",
        ] + self.extra_args

    def start(self, wait: bool = True) -> "EtcdServer":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args(), stdout=log, stderr=log,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        if wait:
            self.wait_healthy()
        return self

    def wait_healthy(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}; see {self.log_path}:\n"
                                   + open(self.log_path).read()[-2000:])
            if self.healthy():
                return
            time.sleep(0.05)
        raise RuntimeError(f"etcd at {self.endpoint} not healthy after {timeout}s")

    def healthy(self) -> bool:
        if self.scheme != "http":
            try:
                with socket.create_connection((self.host, self.client_port), timeout=0.2):
                    return True
            except OSError:
                return False
        try:
            with urllib.request.urlopen(self.endpoint + "/health", timeout=0.5) as r:
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
