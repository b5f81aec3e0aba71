"""Two "nodes" with the e2e suite's nine pods, for the nftables policy table's tests.

Nodes are namespaces ``polt-<tag>-n1``/``-n2``, each with a bridge ``cni0`` holding its
subnet's .1, joined by one veth pair (routes to each other's subnet, no VXLAN: the table
sees the same forward-hook traffic). Pods are namespaces ``polt-<tag>-<ns>-<pod>`` whose
``eth0`` is a veth into their node's bridge. Servers are sockets the test process opens
inside each pod (TCP listeners, UDP receivers on 80 and 81); probes are non-blocking
sockets opened inside the source pod, all in flight at once under one deadline.

Nothing is created in the host's namespace; ``close()`` deletes exactly the namespaces
it made (their links, tables and sockets go with them).
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import time
import uuid
from collections.abc import Iterable
from contextlib import suppress
from ipaddress import IPv4Address

from overlay.netlink.netns import thread_in_netns
from overlay.policy.nft import LocalPod, apply_table, compile_table
from overlay.policy.semantics import Pod

from ...policy.cases import Probe, model_namespaces, model_pods


def sh(*args: str) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def _in_ns(netns: str, family: int, kind: int) -> socket.socket:
    fd = os.open(f"/var/run/netns/{netns}", os.O_RDONLY)
    try:
        with thread_in_netns(fd):
            return socket.socket(family, kind)
    finally:
        os.close(fd)


class PolicyTopology:
    def __init__(self, tag: str | None = None):
        self.tag = tag or uuid.uuid4().hex[:5]
        self.namespaces: list[str] = []
        self.pods = {p.ref: p for p in model_pods()}
        self.pod_ns: dict[str, str] = {}
        self.veths: dict[str, str] = {}
        self.listeners: list[socket.socket] = []
        self.udp: dict[tuple[str, int], socket.socket] = {}
        try:
            for n in (1, 2):
                self._node(n)
            sh("ip", "link", "add", "eth0", "netns", self.node(1), "type", "veth",
               "peer", "name", "eth0", "netns", self.node(2))
            for n, other in ((1, 2), (2, 1)):
                self._ip(self.node(n), "addr", "add", f"192.168.77.{n}/24", "dev", "eth0")
                self._ip(self.node(n), "link", "set", "eth0", "up")
                self._ip(self.node(n), "route", "add", f"10.244.{other}.0/24",
                         "via", f"192.168.77.{other}")
            for i, pod in enumerate(self.pods.values()):
                self._pod(i, pod)
        except BaseException:
            self.close()
            raise

    # -- building ------------------------------------------------------------------------
    def node(self, n: int) -> str:
        return f"polt-{self.tag}-n{n}"

    def _netns(self, name: str) -> None:
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        self._ip(name, "link", "set", "lo", "up")

    @staticmethod
    def _ip(netns: str, *args: str) -> None:
        sh("ip", "-n", netns, *args)

    def _node(self, n: int) -> None:
        name = self.node(n)
        self._netns(name)
        sh("ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        self._ip(name, "link", "add", "cni0", "type", "bridge")
        self._ip(name, "addr", "add", f"10.244.{n}.1/24", "dev", "cni0")
        self._ip(name, "link", "set", "cni0", "up")

    def _pod(self, i: int, pod: Pod) -> None:
        ns = f"polt-{self.tag}-{pod.namespace}-{pod.name}"
        node = self.node(int(pod.node.removeprefix("node")))
        self._netns(ns)
        veth = f"polv{i}"
        sh("ip", "link", "add", veth, "netns", node, "type", "veth",
           "peer", "name", "eth0", "netns", ns)
        self._ip(node, "link", "set", veth, "master", "cni0", "up")
        self._ip(ns, "addr", "add", f"{pod.ip}/24", "dev", "eth0")
        self._ip(ns, "link", "set", "eth0", "up")
        self._ip(ns, "route", "add", "default", "via", f"10.244.{pod.ip.packed[2]}.1")
        self.pod_ns[pod.ref] = ns
        self.veths[pod.ref] = veth
        for port in (80, 81):
            tcp = _in_ns(ns, socket.AF_INET, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind((str(pod.ip), port))
            tcp.listen(256)
            tcp.setblocking(False)
            self.listeners.append(tcp)
            udp = _in_ns(ns, socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind((str(pod.ip), port))
            udp.setblocking(False)
            self.udp[(pod.ref, port)] = udp

    def bridge_calls_iptables(self, n: int) -> str:
        return sh("ip", "netns", "exec", self.node(n), "cat",
                  "/proc/sys/net/bridge/bridge-nf-call-iptables").strip()

    # -- policy --------------------------------------------------------------------------
    def local(self, n: int) -> list[LocalPod]:
        return [LocalPod(p, self.veths[p.ref]) for p in self.pods.values()
                if p.node == f"node{n}"]

    def apply(self, policies, namespaces=None) -> None:
        for n in (1, 2):
            table = compile_table(self.local(n), list(self.pods.values()),
                                  namespaces or model_namespaces(), policies)
            apply_table(table, netns=self.node(n))

    def nft(self, n: int, *args: str) -> str:
        return sh("ip", "netns", "exec", self.node(n), "nft", *args)

    # -- probing -------------------------------------------------------------------------
    def probe(self, probes: Iterable[Probe], timeout: float = 1.5) -> dict[Probe, bool]:
        """Every probe at once; TCP: the handshake completed, UDP: the datagram arrived."""
        probes = list(probes)
        result = dict.fromkeys(probes, False)
        pending: dict[int, tuple[socket.socket, Probe]] = {}
        clients: list[socket.socket] = []
        want_udp: dict[bytes, Probe] = {}
        for n, pr in enumerate(probes):
            dst = self.pods[pr.dst]
            kind = socket.SOCK_STREAM if pr.protocol == "TCP" else socket.SOCK_DGRAM
            s = _in_ns(self.pod_ns[pr.src], socket.AF_INET, kind)
            s.setblocking(False)
            clients.append(s)
            if pr.protocol == "TCP":
                s.connect_ex((str(dst.ip), pr.port))
                pending[s.fileno()] = (s, pr)
            else:
                tag = f"probe-{n}".encode()
                want_udp[tag] = pr
                s.sendto(tag, (str(dst.ip), pr.port))
        self._wait(pending, want_udp, result, time.monotonic() + timeout)
        for s in clients:
            s.close()
        self._drain_listeners()
        return result

    def _wait(self, pending, want_udp, result, deadline) -> None:
        poller = select.poll()
        for fd in pending:
            poller.register(fd, select.POLLOUT)
        for s in self.udp.values():
            poller.register(s.fileno(), select.POLLIN)
        udp_by_fd = {s.fileno(): s for s in self.udp.values()}
        while (pending or want_udp) and time.monotonic() < deadline:
            for fd, _ in poller.poll(max(1, int((deadline - time.monotonic()) * 1000))):
                if fd in udp_by_fd:
                    with suppress(BlockingIOError):
                        while True:
                            data = udp_by_fd[fd].recv(64)
                            if data in want_udp:
                                result[want_udp.pop(data)] = True
                elif fd in pending:
                    s, pr = pending.pop(fd)
                    poller.unregister(fd)
                    result[pr] = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0

    def _drain_listeners(self) -> None:
        for tcp in self.listeners:
            with suppress(BlockingIOError):
                while True:
                    conn, _ = tcp.accept()
                    conn.close()

    # -- teardown ------------------------------------------------------------------------
    def close(self) -> None:
        for s in [*self.listeners, *self.udp.values()]:
            s.close()
        for name in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
        self.namespaces.clear()


def spoof_address(topo: PolicyTopology, ref: str, address: IPv4Address) -> None:
    """Give pod ``ref`` another pod's address too (as a pod with NET_ADMIN could)."""
    topo._ip(topo.pod_ns[ref], "addr", "add", f"{address}/32", "dev", "eth0")
