"""The multi-node lab: an underlay, etcd, nodes running overlayd, pods attached by CNI.

::

    <prefix>-underlay   bridge <prefix>-br 192.168.1.1/24, etcd on 192.168.1.1:2379
       ├─ <prefix>-node1  eth0 192.168.1.11  overlayd, cni0, overlay.1
       │    ├─ <prefix>-pod-node1-1  eth0 10.244.1.2  (default/pod-node1-1)
       │    ├─ <prefix>-pod-node1-2  eth0 10.244.1.3
       │    └─ <prefix>-web_db       eth0 10.244.1.4  (web/db: ``pod add db --namespace web``)
       ├─ <prefix>-node2  eth0 192.168.1.12  10.244.2.0/24 ...

Node ``node<i>`` holds the subnet 10.244.<i>.0/24, reserved for it before its overlayd
starts (the example cluster's table).  ``up --dual-stack`` adds IPv6 to the same pieces:
the underlay bridge fd00:192:168:1::1/64 and node<i> at fd00:192:168:1::1<i> (overlayd's
``--public-ipv6``), IPv6 forwarding in each node, pods in fd00:10:244::/56 (a /64 per
node, overlay-v6.1 beside overlay.1); ``--ipv6-only`` the same with EnableIPv4 false.
Every pod runs a responder (TCP and UDP, ports 80 and 81, both families) for ``probe``
and ``matrix --port/--protocol``.

Every ``ensure_*`` step is create-or-verify, so ``up`` on a running lab only repairs
what is missing.  Names come from :class:`LabSpec`, files live under its lab dir.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

from overlay.errors import OverlayError
from overlay.lab import system as sysx
from overlay.lab.probe import DEFAULT_TIMEOUT as DEFAULT_PROBE_TIMEOUT, ProbeResult, Target, probe
from overlay.lab.runtime import Attachment, CNIRuntime, find_conflist, load_conflist, result_ips
from overlay.lab.spec import (
    DEFAULT_NAMESPACE,
    ETCD_KEY_PREFIX,
    ETCD_PEER_PORT,
    ETCD_PORT,
    HEALTHZ_ADDR,
    POD_NETWORK,
    POD_NETWORK6,
    RESPONDER_PORTS,
    SUBNET_LEN,
    SUBNET_LEN6,
    UNDERLAY_GATEWAY,
    UNDERLAY_GATEWAY6,
    VNI,
    VXLAN_PORT,
    LabError,
    LabSpec,
    check_families,
    check_namespace,
    check_pod_name,
    next_free_node,
    parse_pod_ref,
    pod_key,
)
from overlay.lab.state import LabState, PodRecord, load_state, save_state
from overlay.subnetenv import POLICY_MARKER, load_subnet_env

log = logging.getLogger(__name__)

BIN_DIR = os.path.dirname(os.path.abspath(sys.executable))
REFERENCE_CNI_DIR = "/usr/lib/cni"
# What ``up`` and the node's overlayd and CNI plugin make in a node's directory (the
# policy marker stays while overlayd is stopped, on purpose: see subnetenv).
NODE_FILES = ("overlayd.log", "overlayd.pid", "subnet.env", "cni.sock", "overlayd.json",
              POLICY_MARKER)
NODE_TREES = ("state", "ipam", "net.d")
POD_FILES = ("responder.pid", "responder.log")     # in each pod's directory
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
READY_TIMEOUT = 60.0
RESPONDER_TIMEOUT = 15.0
AUTO_POD_RE = re.compile(r"^pod-node[0-9]+-[0-9]+$")   # the names `up` gives its pods
# Locally administered (02:...), ending in the gateway's 192.168.1.1; each lab's bridge is
# in a namespace of its own, so one address fits all.
UNDERLAY_BRIDGE_MAC = "02:00:c0:a8:01:01"
# The lab's nodes heartbeat and probe faster than overlayd's defaults (5 s, 10 s): a
# killed node shows NotReady within 2 s and a cut pair within 4 s; 3 nodes cost nothing.
HEARTBEAT_PERIOD, PROBE_INTERVAL = "1", "2"


def program(name: str) -> str:
    """A project program from the interpreter's own bin dir (the venv), else PATH."""
    path = os.path.join(BIN_DIR, name)
    if os.access(path, os.X_OK):
        return path
    found = shutil.which(name)
    if found is None:
        raise LabError(f"{name}: not found next to {sys.executable} or on PATH "
                       "(run cmd/bootstrap.sh)")
    return found


@dataclass
class NodeStatus:
    name: str
    netns: str
    public_ip: str
    subnet: str | None
    pid: int | None
    ready: bool
    healthz: str
    public_ipv6: str | None = None
    ipv6_subnet: str | None = None
    # Why the node has no IPv6 half in a lab that has IPv6 (None when it has one).
    ipv6_missing: str | None = None


@dataclass(frozen=True)
class NodeDaemon:
    """Another overlayd for one node (e.g. an older release, for mixed-version tests):
    its program, and the lab's flags it does not know (left out of its command)."""

    program: str
    unknown_flags: frozenset[str] = frozenset()


class Lab:
    def __init__(self, spec: LabSpec, progress: Callable[[str], None] | None = None,
                 daemons: Mapping[str, NodeDaemon] | None = None):
        """``daemons``: per node, an overlayd other than this tree's."""
        self.spec = spec
        self.daemons = dict(daemons or {})
        self.progress = progress or (lambda msg: log.info("%s", msg))
        self.state: LabState | None = load_state(spec.state_file)
        # ensure_pods works on the nodes in parallel: one thread at a time changes the
        # state and writes it, so no thread writes a snapshot older than one on disk.
        self._state_lock = threading.Lock()

    # ----------------------------------------------------------------- whole lab
    def exists(self) -> bool:
        return self.state is not None

    def up(self, nodes: int | None = None, pods_per_node: int | None = None,
           families: str | None = None) -> None:
        """``families``: ``ipv4`` (a new lab's default), ``dual`` or ``ipv6``
        (:data:`~overlay.lab.spec.FAMILIES`); a running lab keeps the ones it has."""
        sysx.require_tools("ip", "etcd", "ping")
        state = self.state
        if families is not None:
            check_families(families)
        if state is not None:
            if families is not None and families != state.families:
                raise LabError(f"lab {self.spec.prefix} runs with {_families_text(state.families)}"
                               f"; it cannot switch to {_families_text(families)} in place: "
                               f"`overlay-lab down{self._name_flag()}` first")
            self.progress(f"lab {self.spec.prefix} exists ({len(state.nodes)} nodes); "
                          "checking every part and repairing what is missing")
            if pods_per_node is not None:
                # an explicit count is for every node, those add-node made included
                state.pods_per_node = pods_per_node
                state.node_pods.clear()
        else:
            self.progress(f"creating lab {self.spec.prefix} in {self.spec.lab_dir}")
            state = self.state = LabState(self.spec.prefix,
                                          2 if pods_per_node is None else pods_per_node,
                                          families=families or "ipv4")
        want_nodes = nodes if nodes is not None else (len(state.nodes) or 3)
        if want_nodes < len(state.nodes):
            self.progress(f"note: the lab has {len(state.nodes)} nodes (more than "
                          f"--nodes {want_nodes}); use remove-node to drop some")
        while len(state.nodes) < want_nodes:
            state.add_node(next_free_node(state.nodes))
        self._save()
        self.ensure_underlay()
        self.ensure_etcd()
        self.ensure_config()
        for node in state.nodes:
            self.ensure_node(node)
        self.wait_ready(state.nodes)
        self.ensure_pods(state.nodes)

    def down(self) -> None:
        """Remove exactly what ``up`` made: processes by pid file, namespaces by name, files."""
        state = self.state
        if state is None:
            if os.path.isdir(self.spec.lab_dir):
                raise LabError(f"{self.spec.state_file} is missing, so the lab cannot tell what "
                               f"it made; remove {self.spec.lab_dir} and the {self.spec.prefix}-* "
                               "namespaces by hand")
            self.progress(f"no lab named {self.spec.prefix}; nothing to do")
            return
        self._del_pods(list(state.pods.values()))
        for pod in state.pods.values():
            self.stop_responder(pod)
        for node in state.nodes:
            if sysx.stop_process(self._daemon_pid(node)):
                self.progress(f"stopped overlayd on {node}")
        if sysx.stop_process(self._etcd_pid()):
            self.progress("stopped etcd")
        for key in sorted(state.pods):
            sysx.delete_netns(self.spec.pod_ns(key))
        for node in state.nodes:
            sysx.delete_netns(self.spec.node_ns(node))
        sysx.delete_netns(self.spec.underlay_ns)
        kept = self._remove_files(state)
        self.state = None
        for path in kept:
            self.progress(f"kept      {path} (not made by the lab)")
        files = (f"its files; {len(kept)} path(s) the lab did not make stay, named above"
                 if kept else self.spec.lab_dir)
        self.progress(f"lab {self.spec.prefix} removed (namespaces, processes, {files})")

    def _remove_files(self, state: LabState) -> list[str]:
        """Remove the paths ``up`` makes under the lab dir, then each directory that this
        empties (never a whole tree of unknown contents: a user's own files stay); the
        paths left, if any."""
        spec = self.spec
        trees = [spec.etcd_dir, spec.cni_bin_dir]
        files = [self._etcd_log(), self._etcd_pid().path]
        files += [spec.pod_file(key, f) for key in state.pods for f in POD_FILES]
        for node in state.nodes:
            trees += [spec.node_file(node, d) for d in NODE_TREES]
            files += [spec.node_file(node, f) for f in NODE_FILES]
        for path in trees:
            shutil.rmtree(path, ignore_errors=True)
        for path in files + [spec.state_file]:  # the state file last: down can rerun
            with suppress(FileNotFoundError):
                os.unlink(path)
        dirs = [spec.node_dir(n) for n in state.nodes] + [os.path.dirname(spec.cni_bin_dir)]
        dirs += [spec.pod_dir(key) for key in state.pods] + [spec.pods_dir, spec.lab_dir]
        for path in dirs:
            # gone already, or holds something the lab did not make
            with suppress(OSError):
                os.rmdir(path)
        return _left_under(spec.lab_dir)

    # ----------------------------------------------------------------- underlay + etcd
    def ensure_underlay(self) -> None:
        ns, br = self.spec.underlay_ns, self.spec.bridge
        created = sysx.ensure_netns(ns)
        if not sysx.link_exists(ns, br):
            # A fixed MAC: a bridge without one takes its lowest port's, so each node added
            # or removed could change the MAC of etcd's address and leave every node's ARP
            # entry for it stale (etcd unreachable for seconds after add-node/remove-node).
            sysx.ip("link", "add", br, "address", UNDERLAY_BRIDGE_MAC, "type", "bridge", ns=ns)
            created = True
        sysx.ip("addr", "replace", str(UNDERLAY_GATEWAY), "dev", br, ns=ns)
        six = self._need_state().has_ipv6()
        if six:
            # nodad: the address is usable at once (etcd binds it next); the lab's
            # underlay is its own, so no one else can hold it.
            sysx.ip("-6", "addr", "replace", str(UNDERLAY_GATEWAY6), "dev", br, "nodad", ns=ns)
        sysx.ip("link", "set", br, "up", ns=ns)
        self.progress(f"underlay  {ns}: bridge {br} {UNDERLAY_GATEWAY}"
                      + (f" {UNDERLAY_GATEWAY6}" if six else "")
                      + ("" if created else " (was there)"))

    def _etcd_pid(self) -> sysx.PidFile:
        return sysx.PidFile(os.path.join(self.spec.lab_dir, "etcd.pid"))

    def etcd_running(self) -> bool:
        return self._etcd_pid().read() is not None

    def ensure_etcd(self) -> None:
        if self.etcd_running():
            try:
                sysx.wait_for(self.etcd_healthy, 5.0, what="etcd to become healthy")
                self.progress(f"etcd      running at {self.spec.etcd_endpoint} (was there)")
                return
            except LabError:
                self.progress("etcd      running but not healthy for 5 s; restarting it")
                self.stop_etcd()
        self.start_etcd()
        self.progress(f"etcd      started at {self.spec.etcd_endpoint} "
                      f"(inside {self.spec.underlay_ns}; log {self._etcd_log()})")

    def _etcd_log(self) -> str:
        return os.path.join(self.spec.lab_dir, "etcd.log")

    def start_etcd(self, timeout: float = 20.0) -> None:
        os.makedirs(self.spec.etcd_dir, mode=0o700, exist_ok=True)
        gw = UNDERLAY_GATEWAY.ip
        peer = f"http://127.0.0.1:{ETCD_PEER_PORT}"
        listen = f"http://{gw}:{ETCD_PORT},http://127.0.0.1:{ETCD_PORT}"
        if self.state is not None and self.state.has_ipv6():
            listen += f",{self.spec.etcd_endpoint6}"
        argv = sysx.in_netns(self.spec.underlay_ns, [
            shutil.which("etcd") or "/usr/bin/etcd", "--name", self.spec.prefix,
            "--data-dir", self.spec.etcd_dir,
            "--listen-client-urls", listen,
            "--advertise-client-urls", self.spec.etcd_endpoint,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{self.spec.prefix}={peer}",
            "--heartbeat-interval", "10", "--election-timeout", "100",
            "--log-level", "warn", "--logger", "zap"])
        sysx.start_process(argv, self._etcd_pid(), self._etcd_log())
        try:
            sysx.wait_for(self.etcd_healthy, timeout, what="etcd to become healthy")
        except LabError:
            raise LabError(f"etcd did not become healthy in {timeout:g} s; "
                           f"see {self._etcd_log()}:\n" + _tail(self._etcd_log())) from None

    def stop_etcd(self, sig: int = signal.SIGTERM) -> None:
        sysx.stop_process(self._etcd_pid(), sig)

    def etcd_healthy(self) -> bool:
        try:
            status, body = sysx.http_get(self.spec.underlay_ns, str(UNDERLAY_GATEWAY.ip),
                                         ETCD_PORT, "/health", timeout=1.0)
        except (OSError, LabError):
            return False
        return status == 200 and '"true"' in body

    def overlayctl(self, *args: str, check: bool = True, input: str | None = None):
        """Run overlayctl against the lab's etcd (from inside the underlay namespace)."""
        argv = sysx.in_netns(self.spec.underlay_ns, [
            program("overlayctl"), "--etcd-endpoints", self.spec.etcd_endpoint,
            "--etcd-prefix", ETCD_KEY_PREFIX, *args])
        return sysx.run(argv, check=check, input=input)

    def ensure_config(self) -> None:
        got = self.overlayctl("-o", "json", "config", "get", check=False)
        if got.returncode == 0:
            self.progress("config    network config present in etcd (was there)")
            return
        families = self._need_state().families
        if families == "ipv4":
            self.overlayctl("config", "set", "--network", POD_NETWORK, "--subnet-len",
                            str(SUBNET_LEN), "--vni", str(VNI), "--port", str(VXLAN_PORT))
            self.progress(f"config    network {POD_NETWORK}, /{SUBNET_LEN} per node, vxlan VNI "
                          f"{VNI} port {VXLAN_PORT} (written with overlayctl config set)")
            return
        config = json.dumps(network_config(families))
        self.overlayctl("config", "set", "-f", "-", input=config)
        self.progress(f"config    {config} (written with overlayctl config set -f -)")

    # ----------------------------------------------------------------- CNI install
    def install_cni(self, node: str) -> None:
        """``overlayctl install-cni`` for one node: the lab's bin dir, and the node's own conf
        dir naming its own subnet.env and IPAM dir (the nodes share one file system)."""
        sysx.run([program("overlayctl"), "install-cni", "--bin-dir", self.spec.cni_bin_dir,
                  "--conf-dir", self.spec.cni_conf_dir(node),
                  "--subnet-file", self.spec.node_file(node, "subnet.env"),
                  "--data-dir", self.spec.node_file(node, "ipam")])
        find_conflist(self.spec.cni_conf_dir(node))

    def cni_runtime(self, node: str) -> CNIRuntime:
        conf = load_conflist(find_conflist(self.spec.cni_conf_dir(node)))
        # The plugin's executable finds its node's warm server (overlayd --cni-socket) by
        # OVERLAY_CNI_SOCKET: nodes share one file system, so each needs its own socket.
        return CNIRuntime(conf, [self.spec.cni_bin_dir, REFERENCE_CNI_DIR], self.spec.node_ns(node),
                          extra_env={"OVERLAY_CNI_SOCKET": self.spec.node_file(node, "cni.sock")})

    # ----------------------------------------------------------------- nodes
    def ensure_node(self, node: str) -> None:
        ns, port = self.spec.node_ns(node), self.spec.node_port(node)
        os.makedirs(self.spec.node_dir(node), mode=0o755, exist_ok=True)
        created = sysx.ensure_netns(ns)
        if not sysx.link_exists(ns, "eth0"):
            if sysx.link_exists(self.spec.underlay_ns, port):
                sysx.ip("link", "del", port, ns=self.spec.underlay_ns)
            # Made inside the underlay namespace with its peer placed straight into the
            # node's: the pair never appears in the host's namespace.
            sysx.ip("link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns,
                    ns=self.spec.underlay_ns)
            created = True
        sysx.ip("link", "set", port, "master", self.spec.bridge, "up", ns=self.spec.underlay_ns)
        sysx.ip("addr", "replace", str(self.spec.node_interface(node)), "dev", "eth0", ns=ns)
        six = self._need_state().node_has_ipv6(node)
        if six:
            sysx.ip("-6", "addr", "replace", str(self.spec.node_interface6(node)), "dev", "eth0",
                    "nodad", ns=ns)
        sysx.ip("link", "set", "eth0", "up", ns=ns)
        sysx.sysctl(ns, "net.ipv4.ip_forward", "1")
        if six:
            # Pods' IPv6 is routed by the node (cni0 -> overlay-v6.1 and back).
            sysx.sysctl(ns, "net.ipv6.conf.all.forwarding", "1")
        self.install_cni(node)
        self.reserve_subnet(node)
        started = self.ensure_daemon(node)
        self.progress(f"node      {node}: {ns} eth0 {self.spec.node_interface(node)}"
                      f"{' ' + str(self.spec.node_interface6(node)) if six else ''}"
                      f"{' created' if created else ''}; CNI plugin installed with overlayctl "
                      f"install-cni; overlayd "
                      f"{'started' if started else 'running (was there)'}")

    def reserve_subnet(self, node: str) -> None:
        """Reserve the node's subnet of the example cluster (node<i>: 10.244.<i>.0/24) with
        ``overlayctl leases reserve``, so its overlayd takes exactly that one.  A node that
        already holds another subnet (a lab made before this rule) keeps it: a warning."""
        if self._need_state().has_ipv4():
            subnet: IPv4Network | IPv6Network = self.spec.node_subnet(node)
            public_ip: IPv4Address | IPv6Address = self.spec.node_ip(node)
        else:  # IPv6-only: node<i> holds fd00:10:244:<i>::/64, for its IPv6 address
            subnet, public_ip = self.spec.node_subnet6(node), self.spec.node_ip6(node)
        got = self.overlayctl("leases", "reserve", str(subnet), "--public-ip",
                              str(public_ip), check=False)
        if got.returncode != 0:
            self.progress(f"warning: could not reserve {subnet} for {node}: "
                          f"{(got.stderr or got.stdout).strip()}")

    def _daemon_pid(self, node: str) -> sysx.PidFile:
        return sysx.PidFile(self.spec.node_file(node, "overlayd.pid"))

    def daemon_pid(self, node: str) -> int | None:
        return self._daemon_pid(node).read()

    def daemon_log(self, node: str) -> str:
        return self.spec.node_file(node, "overlayd.log")

    def daemon_argv(self, node: str) -> list[str]:
        flags = [
            ("--etcd-endpoints", self.spec.etcd_endpoint), ("--etcd-prefix", ETCD_KEY_PREFIX),
            ("--node-name", node),
            ("--iface", "eth0"), ("--public-ip", str(self.spec.node_ip(node))),
            *([("--public-ipv6", str(self.spec.node_ip6(node)))]
              if self.state is not None and self.state.node_has_ipv6(node) else []),
            ("--subnet-file", self.spec.node_file(node, "subnet.env")),
            ("--state-dir", self.spec.node_file(node, "state")),
            ("--healthz-addr", self.healthz_addr(node)),
            ("--cni-socket", self.spec.node_file(node, "cni.sock")),
            ("--runtime-file", self.runtime_file(node)),
            ("--cni-conf-dir", self.spec.cni_conf_dir(node)),
            ("--cni-bin-dir", self.cni_bin_dirs()),
            ("--heartbeat-period", HEARTBEAT_PERIOD), ("--probe-interval", PROBE_INTERVAL),
            ("--cni-data-dir", self.spec.node_file(node, "ipam"))]
        other = self.daemons.get(node)
        argv = [other.program if other else program("overlayd")]
        for flag, value in flags:
            if other is None or flag not in other.unknown_flags:
                argv += [flag, value]
        return sysx.in_netns(self.spec.node_ns(node), argv)

    def runtime_file(self, node: str) -> str:
        """Where the node's overlayd writes its settings; overlayctl there defaults to them."""
        return self.spec.node_file(node, "overlayd.json")

    def cni_bin_dirs(self) -> str:
        """The plugin dirs of every node's runtime: the lab's, then the reference plugins'."""
        return os.pathsep.join([self.spec.cni_bin_dir, REFERENCE_CNI_DIR])

    def ensure_daemon(self, node: str) -> bool:
        if self.daemon_pid(node) is not None:
            return False
        self.start_daemon(node)
        return True

    def start_daemon(self, node: str) -> int:
        return sysx.start_process(self.daemon_argv(node), self._daemon_pid(node),
                                  self.daemon_log(node))

    def stop_daemon(self, node: str, sig: int = signal.SIGTERM) -> bool:
        return sysx.stop_process(self._daemon_pid(node), sig)

    def healthz_addr(self, node: str) -> str:
        """overlayd's --healthz-addr on ``node`` (inside the node's own namespace)."""
        return HEALTHZ_ADDR

    def exec_env(self, ns: str, environ: Mapping[str, str]) -> dict[str, str]:
        """The environment of ``overlay-lab exec`` into namespace ``ns``: the project's
        programs first on PATH, and overlayctl pointed at the lab by its own OVERLAYCTL_*
        variables, so flags given by hand still win: on a node, that node's runtime file
        (its overlayd's etcd, files and addresses, as on a real node); on the underlay,
        the lab's etcd."""
        env = dict(environ)
        env["PATH"] = os.pathsep.join([BIN_DIR, environ.get("PATH") or DEFAULT_PATH])
        state = self._need_state()
        node = next((n for n in state.nodes if self.spec.node_ns(n) == ns), None)
        if node is None and ns != self.spec.underlay_ns:
            return env   # a pod: etcd is not for pods to reach
        if node is None:
            env["OVERLAYCTL_ETCD_ENDPOINTS"] = self.spec.etcd_endpoint
            env["OVERLAYCTL_ETCD_PREFIX"] = ETCD_KEY_PREFIX
        else:
            env["OVERLAYCTL_RUNTIME_FILE"] = self.runtime_file(node)
            env["OVERLAY_CNI_SOCKET"] = self.spec.node_file(node, "cni.sock")
        return env

    def ready(self, node: str) -> bool:
        host, port = self.healthz_addr(node).rsplit(":", 1)
        try:
            status, _ = sysx.http_get(self.spec.node_ns(node), host, int(port), "/readyz",
                                      timeout=1.0)
        except (OSError, LabError):
            return False
        return status == 200

    def wait_ready(self, nodes: list[str], timeout: float = READY_TIMEOUT) -> None:
        self.progress(f"waiting   for /readyz of overlayd on {', '.join(nodes)}")
        start = time.monotonic()
        pending = list(nodes)
        while pending:
            for node in list(pending):
                if self.daemon_pid(node) is None:
                    raise LabError(f"overlayd on {node} exited; see {self.daemon_log(node)}:\n"
                                   + _tail(self.daemon_log(node)))
                if self.ready(node):
                    pending.remove(node)
                    self.progress(f"ready     {node}: /readyz 200, subnet "
                                  f"{self.node_subnet(node) or self.node_subnet6(node)} "
                                  f"({time.monotonic() - start:.1f} s)")
            if pending and time.monotonic() - start > timeout:
                raise LabError(f"overlayd not ready after {timeout:g} s on "
                               f"{', '.join(pending)}; see {self.daemon_log(pending[0])}:\n"
                               + _tail(self.daemon_log(pending[0])))
            if pending:
                time.sleep(0.1)

    def node_subnet(self, node: str) -> str | None:
        """The IPv4 subnet the node's overlayd holds (its subnet.env), if any."""
        try:
            env = load_subnet_env(self.spec.node_file(node, "subnet.env"))
        except OverlayError:
            return None
        return str(env.subnet.network) if env.subnet is not None else None

    def node_subnet6(self, node: str) -> str | None:
        """The IPv6 subnet the node's overlayd holds (OVERLAY_IPV6_SUBNET), if any."""
        try:
            env = load_subnet_env(self.spec.node_file(node, "subnet.env"))
        except OverlayError:
            return None
        return str(env.ipv6_subnet.network) if env.ipv6_subnet is not None else None

    def ipv6_missing(self, node: str) -> str | None:
        """Why ``node`` has no IPv6 half in a lab whose pod network has IPv6 (None if it
        has one, or the lab has no IPv6)."""
        state = self._need_state()
        if not state.has_ipv6() or self.node_subnet6(node) is not None:
            return None
        if not state.node_has_ipv6(node):
            return ("its underlay has no IPv6 address (made with --no-ipv6), so overlayd "
                    "runs without --public-ipv6 and leases no IPv6 subnet")
        if self.daemon_pid(node) is None:
            return "overlayd is not running"
        return (f"overlayd holds no IPv6 subnet yet (no OVERLAY_IPV6_SUBNET in "
                f"{self.spec.node_file(node, 'subnet.env')}); see {self.daemon_log(node)}")

    def add_node(self, pods_per_node: int | None = None, no_ipv6: bool = False) -> str:
        """One more node; ``no_ipv6``: in a lab with IPv6, a node whose underlay has
        IPv4 only (its overlayd gets no --public-ipv6), to see how the cluster copes."""
        state = self._need_state()
        if no_ipv6 and state.families != "dual":
            raise LabError(f"--no-ipv6 is for a dual-stack lab's node; lab {self.spec.prefix} "
                           f"runs {_families_text(state.families)}")
        node = next_free_node(state.nodes)
        state.add_node(node, pods_per_node)
        if no_ipv6:
            state.no_ipv6.append(node)
        self._save()
        self.ensure_node(node)
        self.wait_ready([node])
        self._ensure_pods_of(node, state.pods_wanted(node))
        return node

    def remove_node(self, node: str) -> None:
        state = self._need_state()
        if node not in state.nodes:
            raise LabError(f"lab {self.spec.prefix} has no node {node!r} "
                           f"(nodes: {', '.join(state.nodes) or 'none'})")
        subnet = self.node_subnet(node) or self._leased_subnet(node)
        pods = state.pods_of(node)
        self._del_pods(pods)
        if self.stop_daemon(node):
            self.progress(f"stopped overlayd on {node}")
        if subnet is not None:
            got = self.overlayctl("leases", "release", subnet, "--yes", check=False)
            if got.returncode == 0:
                self.progress(f"deleted lease {subnet} of {node}")
            else:
                self.progress(f"warning: could not delete lease {subnet}: "
                              f"{(got.stderr or got.stdout).strip()}")
        for pod in pods:
            self.stop_responder(pod)
            sysx.delete_netns(self.spec.pod_ns(pod.key))
            self._remove_pod_files(pod)
            del state.pods[pod.key]
        sysx.delete_netns(self.spec.node_ns(node))  # takes both ends of its veth with it
        shutil.rmtree(self.spec.node_dir(node), ignore_errors=True)
        state.drop_node(node)
        self._save()
        self.progress(f"removed {node}")

    def _leased_subnet(self, node: str) -> str | None:
        """The subnet etcd leases to the node's public IP (when its subnet.env is gone)."""
        got = self.overlayctl("-o", "json", "leases", "list", check=False)
        try:
            leases = json.loads(got.stdout) if got.returncode == 0 else []
        except ValueError:
            return None
        ip_ = str(self.spec.node_ip(node))
        return next((lease["subnet"] for lease in leases if lease.get("public_ip") == ip_), None)

    # ----------------------------------------------------------------- pods
    def ensure_pods(self, nodes: list[str]) -> None:
        state = self._need_state()
        with ThreadPoolExecutor(max_workers=max(1, len(nodes))) as pool:
            for fut in [pool.submit(self._ensure_pods_of, n, state.pods_wanted(n))
                        for n in nodes]:
                fut.result()

    def _ensure_pods_of(self, node: str, count: int) -> None:
        for i in range(1, count + 1):
            self.ensure_pod(node, i)
        for pod in self._need_state().pods_of(node):
            if not pod.counted:     # made by `pod add`: repaired, never counted
                self._ensure_attached(pod, fresh=False)

    def ensure_pod(self, node: str, i: int) -> PodRecord:
        """The ``i``-th of the pods ``up`` makes on ``node`` (``default/pod-<node>-<i>``)."""
        pod = self._need_state().pods.get(self.spec.pod_name(node, i))
        if pod is not None:
            return self._ensure_attached(pod, fresh=False)
        pod = PodRecord(self.spec.pod_name(node, i), node, self._new_container_id())
        return self._ensure_attached(self._record(pod), fresh=True)

    def add_pod(self, name: str, node: str, namespace: str = DEFAULT_NAMESPACE,
                labels: Mapping[str, str] | None = None) -> PodRecord:
        """``overlay-lab pod add``: one more pod, attached by CNI with its namespace, name and
        labels (CNI_ARGS and ``args.cni.labels``), its responder started."""
        state = self._need_state()
        check_pod_name(name)
        check_namespace(namespace)
        if namespace == DEFAULT_NAMESPACE and AUTO_POD_RE.match(name):
            raise LabError(f"pod name {name!r} is kept for the pods `up` makes in "
                           f"{DEFAULT_NAMESPACE} (pod-nodeN-I); choose another")
        if node not in state.nodes:
            raise LabError(f"lab {self.spec.prefix} has no node {node!r} "
                           f"(nodes: {', '.join(state.nodes) or 'none'})")
        key = pod_key(namespace, name)
        if key in state.pods:
            raise LabError(f"pod {namespace}/{name} exists already (on {state.pods[key].node}); "
                           f"remove it first with `overlay-lab pod del {namespace}/{name}`")
        pod = PodRecord(name, node, self._new_container_id(), namespace=namespace,
                        labels=dict(labels or {}), counted=False)
        if namespace != DEFAULT_NAMESPACE:  # 'default' always exists
            self._ensure_namespace(namespace)
        return self._ensure_attached(self._record(pod), fresh=True)

    def _ensure_namespace(self, namespace: str) -> None:
        """As kubelet's pods are made in an existing namespace: create it (policies and
        labels need no wait for the pod to reach the registry)."""
        got = self.overlayctl("namespaces", "create", namespace, "--exist-ok", check=False)
        if got.returncode != 0:
            log.warning("namespace %s not created: %s", namespace, got.stderr.strip())

    def del_pod(self, ref: str) -> PodRecord:
        """``overlay-lab pod del NS/NAME``: CNI DEL, stop its responder, drop its namespace.
        (A pod ``up`` made comes back at the next ``up``.)"""
        pod = self.find_pod(ref)
        if sysx.netns_exists(self.spec.node_ns(pod.node)):
            self.cni_runtime(pod.node).delete(self.attachment(pod), pod.result)
        self.stop_responder(pod)
        sysx.delete_netns(self.spec.pod_ns(pod.key))
        with self._changing() as st:
            del st.pods[pod.key]
        self._remove_pod_files(pod)
        self.progress(f"pod       {pod.ref}: deleted from {pod.node} (CNI DEL; was {pod.ip})")
        return pod

    def _remove_pod_files(self, pod: PodRecord) -> None:
        for name in POD_FILES:
            with suppress(FileNotFoundError):
                os.unlink(self.spec.pod_file(pod.key, name))
        with suppress(OSError):   # gone already, or holds a file of the user's
            os.rmdir(self.spec.pod_dir(pod.key))

    def find_pod(self, ref: str) -> PodRecord:
        """A pod by ``NS/NAME``, or by its name alone when one namespace holds that name."""
        state = self._need_state()
        namespace, name = parse_pod_ref(ref)
        if namespace is not None:
            found = [p for p in state.pods.values() if p.key == pod_key(namespace, name)]
        else:
            found = [p for p in state.pods.values() if p.name == name]
        if len(found) > 1:
            raise LabError(f"pod name {name!r} is in several namespaces: say which "
                           f"({', '.join(sorted(p.ref for p in found))})")
        if not found:
            known = sorted(p.ref for p in state.pods.values())[:3]
            raise LabError(f"lab {self.spec.prefix} has no pod {ref!r} "
                           f"(pods: {', '.join(known) or 'none'}{', ...' if known else ''})")
        return found[0]

    def _new_container_id(self) -> str:
        return f"{self.spec.prefix}-{uuid.uuid4().hex[:16]}"

    def _record(self, pod: PodRecord) -> PodRecord:
        """Save the pod before its ADD, so an interrupted ADD is found and repaired."""
        with self._changing() as st:
            st.pods[pod.key] = pod
        return pod

    def _ensure_attached(self, pod: PodRecord, fresh: bool) -> PodRecord:
        ns = self.spec.pod_ns(pod.key)
        if pod.ip and sysx.netns_exists(ns) and self._pod_has_ip(pod):
            self.ensure_responder(pod)
            self.progress(f"pod       {pod.ref}: {_pod_addresses(pod)} on {pod.node} "
                          "(was there)")
            return pod
        runtime = self.cni_runtime(pod.node)
        att = self.attachment(pod)
        if not fresh:
            # A broken or half-made pod (an ADD interrupted before its result was saved
            # still holds an IP): the plugins forget it first.  DEL is idempotent.
            try:
                runtime.delete(att, pod.result)
            except LabError as e:
                log.warning("DEL of the broken pod %s: %s", pod.ref, e)
        self.stop_responder(pod)   # one left in a namespace that vanished serves no one
        sysx.ensure_netns(ns)
        result = runtime.add(att)
        pod_ip, pod_ip6 = result_ips(result)
        with self._changing():
            pod.result, pod.ip, pod.ip6 = result, pod_ip, pod_ip6
        self.ensure_responder(pod)
        self.progress(f"pod       {pod.ref}: {_pod_addresses(pod)} on {pod.node} "
                      f"(CNI ADD via {runtime_names(runtime)}; responder on tcp/udp "
                      f"{', '.join(map(str, RESPONDER_PORTS))})")
        return pod

    def attachment(self, pod: PodRecord) -> Attachment:
        """The CNI call for ``pod``: its identity in CNI_ARGS (as kubelet's runtimes pass
        it) and its labels as ``args.cni.labels`` (the CNI conventions)."""
        return Attachment(pod.container_id, self.spec.pod_ns(pod.key), "eth0",
                          f"IgnoreUnknown=1;K8S_POD_NAMESPACE={pod.namespace};"
                          f"K8S_POD_NAME={pod.name}",
                          labels=tuple(sorted(pod.labels.items())))

    # ----------------------------------------------------------------- responders, probes
    def _responder_pid(self, pod: PodRecord) -> sysx.PidFile:
        return sysx.PidFile(self.spec.pod_file(pod.key, "responder.pid"))

    def responder_pid(self, pod: PodRecord) -> int | None:
        return self._responder_pid(pod).read()

    def ensure_responder(self, pod: PodRecord, timeout: float = RESPONDER_TIMEOUT) -> None:
        """The pod's responder running and answering (started if it is not)."""
        pidfile = self._responder_pid(pod)
        if pidfile.read() is not None:
            return
        log_path = self.spec.pod_file(pod.key, "responder.log")
        os.makedirs(os.path.dirname(log_path), mode=0o755, exist_ok=True)
        ns = self.spec.pod_ns(pod.key)
        sysx.start_process(sysx.in_netns(ns, [sys.executable, "-m", "overlay.lab.responder",
                                              "--pod", pod.ref]), pidfile, log_path)
        here = Target(pod.ref, "127.0.0.1")
        try:
            sysx.wait_for(lambda: pidfile.read() is None
                          or probe(ns, here, RESPONDER_PORTS[0], "tcp", timeout=0.5).ok,
                          timeout, interval=0.05, what=f"the responder of {pod.ref}")
        except LabError:
            raise LabError(f"the responder of {pod.ref} did not answer in {timeout:g} s; see "
                           f"{log_path}:\n" + _tail(log_path)) from None
        if pidfile.read() is None:
            raise LabError(f"the responder of {pod.ref} exited; see {log_path}:\n"
                           + _tail(log_path))

    def stop_responder(self, pod: PodRecord) -> bool:
        return sysx.stop_process(self._responder_pid(pod))

    def probe(self, src: str, dst: str, port: int, protocol: str,
              timeout: float = DEFAULT_PROBE_TIMEOUT, family: int | None = None) -> ProbeResult:
        """From pod ``src`` to pod ``dst``'s responder (names as :meth:`find_pod` takes), at
        its address of IP version ``family`` (default: its first address)."""
        a, b = self.find_pod(src), self.find_pod(dst)
        return probe(self.spec.pod_ns(a.key), Target(b.ref, self.pod_address(b, family)),
                     port, protocol, timeout)

    def pod_address(self, pod: PodRecord, family: int | None = None) -> str:
        """``pod``'s address of IP version ``family`` (4 or 6; None: its first one)."""
        addr = pod.ip if family is None else pod.address(family)
        if addr is None and pod.ip is not None and family is not None:
            families = _families_text(self._need_state().families)
            raise LabError(f"pod {pod.ref} has no IPv{family} address (lab "
                           f"{self.spec.prefix} runs {families})")
        if addr is None:
            raise LabError(f"pod {pod.ref} has no IP (run `overlay-lab up` to repair it)")
        return addr

    def _pod_has_ip(self, pod: PodRecord) -> bool:
        got = sysx.ip("-o", "addr", "show", "dev", "eth0", ns=self.spec.pod_ns(pod.key),
                      check=False)
        want = [a for a in (pod.ip, pod.ip6) if a]
        return got.returncode == 0 and all(f" {a}/" in got.stdout for a in want)

    def _del_pods(self, pods: list[PodRecord]) -> None:
        """CNI DEL for each pod, as a runtime does before it drops a pod (best effort)."""
        def one(pod: PodRecord) -> None:
            if not sysx.netns_exists(self.spec.node_ns(pod.node)):
                return
            try:
                self.cni_runtime(pod.node).delete(self.attachment(pod), pod.result)
            except LabError as e:
                log.warning("CNI DEL for %s: %s", pod.ref, e)
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(one, pods))

    # ----------------------------------------------------------------- status
    def node_status(self, node: str) -> NodeStatus:
        pid = self.daemon_pid(node)
        state = self._need_state()
        return NodeStatus(node, self.spec.node_ns(node), str(self.spec.node_ip(node)),
                          self.node_subnet(node), pid, pid is not None and self.ready(node),
                          self.healthz_addr(node),
                          str(self.spec.node_ip6(node)) if state.node_has_ipv6(node) else None,
                          self.node_subnet6(node), self.ipv6_missing(node))

    def status(self) -> dict[str, Any]:
        state = self._need_state()
        nodes = [self.node_status(n).__dict__ for n in state.nodes]
        pods = [{"namespace": p.namespace, "name": p.name, "netns": self.spec.pod_ns(p.key),
                 "node": p.node, "ip": p.ip, "ipv6": p.ip6, "labels": p.labels,
                 "present": sysx.netns_exists(self.spec.pod_ns(p.key)),
                 "responder_pid": self.responder_pid(p)}
                for p in sorted(state.pods.values(), key=lambda p: p.key)]
        return {"name": self.spec.prefix, "dir": self.spec.lab_dir, "families": state.families,
                "etcd": {"endpoint": self.spec.etcd_endpoint, "netns": self.spec.underlay_ns,
                         "pid": self._etcd_pid().read(), "healthy": self.etcd_healthy()},
                "nodes": nodes, "pods": pods}

    def resolve_target(self, target: str) -> str:
        """A node, pod, ``underlay`` or a full namespace name of this lab → its namespace."""
        state = self._need_state()
        if target == "underlay" or target == self.spec.underlay_ns:
            return self.spec.underlay_ns
        for node in state.nodes:
            if target in (node, self.spec.node_ns(node)):
                return self.spec.node_ns(node)
        for key in state.pods:
            if target == self.spec.pod_ns(key):
                return target
        try:
            return self.spec.pod_ns(self.find_pod(target).key)
        except LabError:
            pass
        raise LabError(f"lab {self.spec.prefix} has no node or pod {target!r} "
                       f"(try: underlay, {', '.join(state.nodes[:1] + sorted(state.pods)[:1])})")

    # ----------------------------------------------------------------- helpers
    def _need_state(self) -> LabState:
        if self.state is None:
            raise LabError(f"no lab named {self.spec.prefix} (start one with "
                           f"`overlay-lab up --name {self.spec.prefix}`)")
        return self.state

    @contextmanager
    def _changing(self) -> Iterator[LabState]:
        """Change the state in the block, then save it; one thread at a time."""
        with self._state_lock:
            state = self._need_state()
            yield state
            save_state(self.spec.state_file, state)

    def _save(self) -> None:
        with self._changing():
            pass

    def _name_flag(self) -> str:
        return "" if self.spec.prefix == "ovlab" else f" --name {self.spec.prefix}"

    def lock(self) -> LabLock:
        return LabLock(os.path.join(self.spec.base_dir, f".{self.spec.prefix}.lock"))


def network_config(families: str) -> dict[str, Any]:
    """The seed network config of a lab with IPv6 (Flannel's field names)."""
    config: dict[str, Any] = {"EnableIPv4": families != "ipv6", "EnableIPv6": True,
                              "IPv6Network": POD_NETWORK6, "IPv6SubnetLen": SUBNET_LEN6,
                              "Backend": {"Type": "vxlan", "VNI": VNI, "Port": VXLAN_PORT}}
    if families != "ipv6":
        config.update(Network=POD_NETWORK, SubnetLen=SUBNET_LEN)
    return config


def _families_text(families: str) -> str:
    return {"ipv4": "IPv4 only", "dual": "dual-stack (IPv4 and IPv6)",
            "ipv6": "IPv6 only"}[families]


def _pod_addresses(pod: PodRecord) -> str:
    return " ".join(a for a in (pod.ip, pod.ip6 if pod.ip6 != pod.ip else None) if a) or "-"


def runtime_names(runtime: CNIRuntime) -> str:
    return " → ".join(p.get("type", "?") for p in runtime.conflist["plugins"])


class LabLock:
    """One lab command at a time per lab name (flock on a file beside the lab dir)."""

    def __init__(self, path: str):
        self.path = path
        self.remove = False

    def __enter__(self) -> LabLock:
        os.makedirs(os.path.dirname(self.path), mode=0o755, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise LabError(f"another overlay-lab command is working on this lab "
                           f"(lock {self.path}); wait for it to finish") from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.remove:  # the lab is gone: its lock file goes too (still held, so no race)
            with suppress(FileNotFoundError):
                os.unlink(self.path)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)


def _left_under(top: str) -> list[str]:
    """Every file (or empty directory) still under ``top``, sorted."""
    left: list[str] = []
    for root, dirs, names in os.walk(top):
        left += [os.path.join(root, n) for n in names]
        if not dirs and not names and root != top:
            left.append(root + "/")
    return sorted(left)


def _tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(no log)"
