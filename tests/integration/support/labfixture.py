"""Helpers for the end-to-end tests on the lab (prefix ``ovlt``, never a user's ``ovlab``).

Not a conftest: the test modules import what they need from here.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from overlay.lab.lab import Lab, NodeDaemon
from overlay.lab.spec import LabSpec
from overlay.lab.system import in_netns, ip, netns_entered, netns_exists


def _token(n: int = 4) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(n))


# "ovlt" plus a random tag: two test runs at once (or a run beside a leftover) never share
# a namespace name; every name still starts with the tests' own prefix.
TEST_PREFIX = "ovlt" + _token()
VXLAN_DEVICE = "overlay.1"


def quiet(msg: str) -> None:
    pass


@contextmanager
def running_lab(nodes: int = 3, pods_per_node: int = 2, prefix: str = TEST_PREFIX,
                daemons: Mapping[str, NodeDaemon] | None = None,
                families: str | None = None) -> Iterator[Lab]:
    """A lab under a temporary base dir; removed afterwards (and checked to be gone).
    ``daemons``: per node, another overlayd (``Lab``'s option); ``families``: ``dual`` or
    ``ipv6`` for a lab with IPv6 (``Lab.up``'s option)."""
    base = tempfile.mkdtemp(prefix=f"{prefix}-labdir-")
    lab = Lab(LabSpec(prefix, base), progress=quiet, daemons=daemons)
    try:
        lab.up(nodes, pods_per_node, families)
        yield lab
    finally:
        try:
            if lab.state is not None:
                lab.down()
        finally:
            shutil.rmtree(base, ignore_errors=True)


def keep_logs(lab: Lab) -> str:
    """Copy the lab's logs (etcd, every overlayd) somewhere that outlives ``down``, so a
    failure can be read afterwards; returns the directory."""
    keep = tempfile.mkdtemp(prefix=f"{lab.spec.prefix}-failed-logs-")
    for root, _, files in os.walk(lab.spec.lab_dir):
        for name in files:
            if name.endswith(".log") or name == "lab.json":
                rel = os.path.relpath(os.path.join(root, name), lab.spec.lab_dir)
                os.makedirs(os.path.join(keep, os.path.dirname(rel)), exist_ok=True)
                shutil.copy2(os.path.join(root, name), os.path.join(keep, rel))
    return keep


def lab_names(lab: Lab) -> list[str]:
    """Every namespace name the lab made (from its own record)."""
    st = lab.state
    assert st is not None
    return ([lab.spec.underlay_ns] + [lab.spec.node_ns(n) for n in st.nodes]
            + [lab.spec.pod_ns(p) for p in st.pods])


def lab_pids(lab: Lab) -> list[int]:
    st = lab.state
    assert st is not None
    pids = [lab.daemon_pid(n) for n in st.nodes] + [lab._etcd_pid().read()]
    return [p for p in pids if p is not None]


def leftovers(lab: Lab, names: list[str], pids: list[int]) -> list[str]:
    """What is still there of a lab after ``down`` (empty when it left nothing behind)."""
    left = [f"netns {n}" for n in names if netns_exists(n)]
    left += [f"pid {p}" for p in pids if _alive(p)]
    left += [f"process {pid}: {cmd}" for pid, cmd in _processes_mentioning(lab.spec.lab_dir)]
    if os.path.exists(lab.spec.lab_dir):
        left.append(f"dir {lab.spec.lab_dir}")
    host_links = ip("-o", "link", "show").stdout
    left += [f"host link {m}" for m in re.findall(rf"\d+: ({lab.spec.prefix}-[^:@ ]+)", host_links)]
    return left


def _processes_mentioning(text: str) -> list[tuple[int, str]]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmd and _alive(int(entry)):
            found.append((int(entry), cmd.strip()))
    return found


def _alive(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


# --- kernel state on a node ----------------------------------------------------------
@dataclass(frozen=True)
class RemoteEntries:
    routes: str
    fdb: str
    neigh: str

    def mentions(self, subnet: str, public_ip: str, vtep_mac: str | None) -> list[str]:
        net = subnet.split("/")[0]
        found = []
        if re.search(rf"^{re.escape(subnet)}\b", self.routes, re.M):
            found.append(f"route {subnet}")
        if re.search(rf"^{re.escape(net)}\b", self.neigh, re.M):
            found.append(f"neigh {net}")
        if vtep_mac and vtep_mac.lower() in self.fdb.lower():
            found.append(f"fdb {vtep_mac}")
        if f"dst {public_ip} " in self.fdb + " ":
            found.append(f"fdb dst {public_ip}")
        return found


def remote_entries(lab: Lab, node: str) -> RemoteEntries:
    ns = lab.spec.node_ns(node)
    return RemoteEntries(
        ip("route", "show", "dev", VXLAN_DEVICE, ns=ns, check=False).stdout,
        subprocess.run(in_netns(ns, ["bridge", "fdb", "show", "dev", VXLAN_DEVICE]),
                       capture_output=True, text=True).stdout,
        ip("neigh", "show", "dev", VXLAN_DEVICE, ns=ns, check=False).stdout)


def vtep_mac(lab: Lab, node: str) -> str:
    out = ip("-o", "link", "show", "dev", VXLAN_DEVICE, ns=lab.spec.node_ns(node)).stdout
    m = re.search(r"link/ether ([0-9a-f:]{17})", out)
    assert m, f"no MAC address on {VXLAN_DEVICE} of {node}: {out}"
    return m.group(1)


def poll(cond: Callable[[], bool], timeout: float, interval: float = 0.02) -> float | None:
    """Seconds until ``cond()`` held, or None if it did not within ``timeout``."""
    start = time.monotonic()
    while True:
        if cond():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            return None
        time.sleep(interval)


# --- traffic -------------------------------------------------------------------------
class ContinuousPing:
    """``ping -i interval -c count`` from a namespace, run in the background."""

    def __init__(self, src_ns: str, dst_ip: str, interval: float, count: int):
        self.proc = subprocess.Popen(
            in_netns(src_ns, ["ping", "-n", "-q", "-i", f"{interval:g}", "-c", str(count),
                              "-W", "1", dst_ip]),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def result(self, timeout: float) -> tuple[int, int, str]:
        """(transmitted, received, output) once ping finished."""
        out, _ = self.proc.communicate(timeout=timeout)
        m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
        assert m, f"no ping summary in {out!r}"
        return int(m.group(1)), int(m.group(2)), out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class UnderlayCapture:
    """Raw frames seen on the underlay bridge (an AF_PACKET socket made in its namespace)."""

    ETH_P_ALL = 0x0003
    SOL_PACKET, PACKET_ADD_MEMBERSHIP, PACKET_MR_PROMISC = 263, 1, 1

    def __init__(self, lab: Lab):
        with netns_entered(lab.spec.underlay_ns):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW,
                                      socket.htons(self.ETH_P_ALL))
            index = socket.if_nametoindex(lab.spec.bridge)
        self.sock.bind((lab.spec.bridge, 0))
        # Promiscuous (for this socket's life only): a bridge hands its own device the
        # frames it forwards between ports only when that device is promiscuous.
        mreq = struct.pack("iHH8s", index, self.PACKET_MR_PROMISC, 0, b"")
        self.sock.setsockopt(self.SOL_PACKET, self.PACKET_ADD_MEMBERSHIP, mreq)
        self.sock.settimeout(0.1)
        self.frames: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.frames.append(self.sock.recv(65535))
            except TimeoutError:
                continue

    def stop(self) -> list[bytes]:
        self._stop.set()
        self._thread.join()
        self.sock.close()
        return self.frames
