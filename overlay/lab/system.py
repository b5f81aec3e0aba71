"""The lab's edge to the machine: iproute2 commands, namespaces, processes, sockets.

The lab is wiring, so it drives ``ip`` (iproute2) the way a person would; pyroute2
stays under ``overlay/netlink``.  Everything here acts on one exact name or pid.
"""

from __future__ import annotations

import http.client
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from overlay.errors import NetlinkOpError
from overlay.lab.spec import LabError
from overlay.netlink.netns import thread_in_netns
from overlay.util.proc import MISSING, TIMEOUT, ProgramError, run as run_program

log = logging.getLogger(__name__)

NETNS_DIR = "/var/run/netns"


def run(argv: Sequence[str], *, check: bool = True, timeout: float = 30.0,
        input: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    try:
        return run_program(argv, check=check, timeout=timeout, input=input, env=env)
    except ProgramError as e:
        if e.reason == MISSING:
            raise LabError(f"{argv[0]}: not installed (run cmd/bootstrap.sh)") from e
        if e.reason == TIMEOUT:
            raise LabError(f"{' '.join(argv)}: no answer within {timeout:g} s") from e
        raise LabError(str(e)) from e


def ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return run(["ip", *(["-n", ns] if ns else []), *args], check=check)


def require_tools(*names: str) -> None:
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        raise LabError(f"missing programs: {', '.join(missing)} (run cmd/bootstrap.sh as root)")


# --- namespaces ------------------------------------------------------------------------
def netns_exists(name: str) -> bool:
    return os.path.exists(os.path.join(NETNS_DIR, name))


def ensure_netns(name: str) -> bool:
    """Create ``name`` with loopback up; True if it was created."""
    created = False
    if not netns_exists(name):
        ip("netns", "add", name)
        log.info("created network namespace %s", name)
        created = True
    ip("link", "set", "lo", "up", ns=name)
    return created


def delete_netns(name: str) -> bool:
    if not netns_exists(name):
        return False
    ip("netns", "delete", name)
    log.info("deleted network namespace %s", name)
    return True


def link_exists(ns: str, link: str) -> bool:
    return ip("link", "show", "dev", link, ns=ns, check=False).returncode == 0


def sysctl(ns: str, key: str, value: str) -> None:
    run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", f"{key}={value}"])


def in_netns(ns: str, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


@contextmanager
def netns_entered(ns: str) -> Iterator[None]:
    """Run the block with the calling thread in namespace ``ns`` (the CNI plugin's
    :func:`~overlay.netlink.netns.thread_in_netns`: setns moves only this thread).

    Sockets created inside stay in that namespace after leaving, which is how the lab
    talks to a node's loopback or the underlay without running a process there.
    """
    try:
        fd = os.open(os.path.join(NETNS_DIR, ns), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise LabError(f"network namespace {ns} does not exist") from None
    entered = False
    try:
        with thread_in_netns(fd):
            entered = True
            yield
    except NetlinkOpError as e:
        if entered:
            raise
        raise LabError(f"cannot enter network namespace {ns}: {e}") from e
    finally:
        os.close(fd)


def netns_socket(ns: str, family: int = socket.AF_INET,
                 type: int = socket.SOCK_STREAM, proto: int = 0) -> socket.socket:
    with netns_entered(ns):
        return socket.socket(family, type, proto)


def http_get(ns: str, host: str, port: int, path: str, timeout: float = 1.0) -> tuple[int, str]:
    """GET http://host:port/path from inside namespace ``ns``; (status, body)."""
    sock = netns_socket(ns)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        sock.settimeout(timeout)
        sock.connect((host, port))
        conn.sock = sock
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()
        sock.close()


# --- processes -------------------------------------------------------------------------
@dataclass(frozen=True)
class PidFile:
    """A pid file holding ``<pid> <start time>``; the start time guards against pid reuse."""

    path: str

    def write(self, pid: int) -> None:
        with open(self.path, "w") as f:
            f.write(f"{pid} {_start_time(pid)}\n")

    def read(self) -> int | None:
        """The pid if that very process is still running, else None."""
        try:
            pid_s, start_s = Path(self.path).read_text().split()
            pid = int(pid_s)
        except (OSError, ValueError):
            return None
        _reap(pid)
        if not _alive(pid) or str(_start_time(pid)) != start_s:
            return None
        return pid

    def remove(self) -> None:
        with suppress(FileNotFoundError):
            os.unlink(self.path)


def _start_time(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return -1
    return int(stat.rsplit(")", 1)[1].split()[19])


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _reap(pid: int) -> None:
    """Collect our own exited child so it does not linger as a zombie."""
    with suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def start_process(argv: Sequence[str], pidfile: PidFile, log_path: str,
                  env: dict[str, str] | None = None) -> int:
    """Start a daemon in its own session, output appended to ``log_path``."""
    with open(log_path, "ab") as logf:
        logf.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(argv)}\n".encode())
        logf.flush()
        proc = subprocess.Popen(list(argv), stdout=logf, stderr=logf, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)
    pidfile.write(proc.pid)
    # The Popen object is dropped on purpose: the daemon outlives this command.
    proc.returncode = 0  # keep subprocess from warning about a "still running" child
    return proc.pid


def stop_process(pidfile: PidFile, sig: int = signal.SIGTERM, timeout: float = 10.0) -> bool:
    """Stop the process of ``pidfile`` (SIGKILL after ``timeout``); True if one was running."""
    pid = pidfile.read()
    if pid is None:
        pidfile.remove()
        return False
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pidfile.remove()
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if not _alive(pid):
            break
        time.sleep(0.02)
    else:
        log.warning("pid %d did not stop within %.0f s; killing it", pid, timeout)
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        while _alive(pid):
            _reap(pid)
            time.sleep(0.02)
    pidfile.remove()
    return True


def wait_for(cond, timeout: float, interval: float = 0.05, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return
        if time.monotonic() >= deadline:
            raise LabError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)

