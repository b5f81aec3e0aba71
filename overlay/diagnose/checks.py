"""``overlayctl diagnose``: the pod-network troubleshooting checklist, automated.

Two halves:

* **gathering** (I/O): the node's kernel state (``overlay.netlink.kernel_state``), sysctls,
  subnet.env, CNI config and binaries, IPAM reservation files, firewall rules (``nft``,
  ``iptables-save``), /readyz, the leases and config in etcd, and an active probe of
  every peer.  Everything lands in one ``NodeState`` / ``ClusterState``.
* **checks** (pure): each ``check_*`` takes those values and returns a ``CheckResult``
  with the evidence (expected, found) and a one-line fix.  Unit tests feed them made-up
  state.

When etcd cannot be read, every check that needs the leases or the config is reported
as ``skip`` (and says so); everything local is still checked.
"""

from __future__ import annotations

import logging
import os
import re
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any, Callable, Iterable, Sequence

from overlay.cni.conflist import ConfListError, conf_files, load_conflist
from overlay.cni.install import (
    DEFAULT_BIN_DIR as DEFAULT_CNI_BIN_DIR,
    DEFAULT_CONF_DIR as DEFAULT_CNI_CONF_DIR,
    PLUGIN_NAME as PLUGIN_TYPE,
)
from overlay.cni.ipam import DiskStore
from overlay.cni.netconf import DEFAULT_BRIDGE, DEFAULT_DATA_DIR
from overlay.config import VXLAN_OVERHEAD, NetworkConfig
from overlay.diagnose.firewall import FirewallState, read_firewall
from overlay.diagnose.probe import Echo, echo_many
from overlay.errors import OverlayError, SubnetEnvError
from overlay.lease import Lease, LeaseRules, Rejection, etcdctl_del, judge, printable_key
from overlay.netlink.kernel_state import FDBInfo, KernelState, LinkInfo, RouteInfo
from overlay.netlink.rtnl import protocol_name
from overlay.subnet.etcdconf import EtcdOptions
from overlay.subnetenv import DEFAULT_SUBNET_FILE, SubnetEnv, load_subnet_env
from overlay.util.proc import run_quiet

log = logging.getLogger(__name__)

PASS, FAIL, WARN, SKIP = "pass", "fail", "warn", "skip"
ETCD_SKIP = "etcd unreachable: needs the leases/config from etcd"


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: str  # pass | fail | warn | skip
    expected: str
    found: str
    fix: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "expected": self.expected,
                "found": self.found, "fix": self.fix}


@dataclass(frozen=True)
class DiagnoseOptions:
    cni_conf_dir: str = DEFAULT_CNI_CONF_DIR
    cni_bin_dir: str = DEFAULT_CNI_BIN_DIR
    service_cidrs: tuple[IPv4Network, ...] = ()
    subnet_file: str | None = None  # default: the CNI config's subnetFile, else the default
    vxlan_device: str | None = None  # default overlay.<VNI>
    bridge: str | None = None  # default: the CNI config's, else cni0
    public_ip: IPv4Address | None = None  # default: the VXLAN device's local address
    healthz_addr: str | None = None
    probe: bool = True
    probe_count: int = 2
    probe_timeout: float = 1.0


# -- gathered state -----------------------------------------------------------------------


@dataclass(frozen=True)
class CNIConfigFile:
    path: str
    name: str  # the network name
    plugins: tuple[dict[str, Any], ...]
    error: str = ""

    def plugin(self, ptype: str) -> dict[str, Any] | None:
        return next((p for p in self.plugins if p.get("type") == ptype), None)


@dataclass(frozen=True)
class Reservation:
    ip: IPv4Address
    container_id: str
    ifname: str
    path: str


@dataclass(frozen=True)
class ProbeResult:
    subnet: IPv4Network
    target: IPv4Address
    size: int  # ICMP payload bytes, sent with DF
    sent: int
    received: int
    small_received: int | None = None  # a 56-byte retry when the full-size probe failed
    error: str = ""


@dataclass
class NodeState:
    kernel: KernelState | None = None
    kernel_error: str = ""
    ip_forward: str | None = None
    subnet_env: SubnetEnv | None = None
    subnet_env_error: str = ""
    cni_files: list[CNIConfigFile] = field(default_factory=list)
    cni_conf_error: str = ""
    cni_bins: dict[str, bool] = field(default_factory=dict)  # name -> executable
    reservations: list[Reservation] = field(default_factory=list)
    ipam_dir: str = ""
    subnet_file: str = DEFAULT_SUBNET_FILE  # the subnet.env read (given, or the CNI config's)
    firewall: FirewallState = field(default_factory=FirewallState)
    readyz: tuple[int | None, str] | None = None  # (HTTP status, detail); None = not asked
    daemon_pids: list[int] | None = None  # overlayd processes in this netns; None = unknown
    probes: list[ProbeResult] | None = None  # None = not run
    config_changed: bool | None = None  # overlayd's overlay_config_changed; None = not asked


@dataclass
class ClusterState:
    config: NetworkConfig | None = None
    leases: list[Lease] = field(default_factory=list)
    error: str = ""  # set when etcd could not be read
    rejected: list[Rejection] = field(default_factory=list)  # keys that hold no lease
    subnets_prefix: str = ""  # ``<prefix>/subnets/``: the full key of a lease
    now: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    @property
    def available(self) -> bool:
        return self.config is not None and not self.error


@dataclass
class Facts:
    """What the checks derive once from the state: device names, own lease, peers."""

    vxlan_name: str
    bridge_name: str
    public_ip: IPv4Address | None
    own: Lease | None
    own_subnet: IPv4Network | None
    remotes: list[Lease]
    network: IPv4Network | None
    vxlan: LinkInfo | None
    bridge: LinkInfo | None
    underlay: LinkInfo | None
    overlay_cni: CNIConfigFile | None
    direct: frozenset[IPv4Network] = frozenset()  # DirectRouting peers: route via public IP
    rejected: tuple[Rejection, ...] = ()  # keys the acceptance rule rejects, as overlayd does

    @property
    def vxlan_remotes(self) -> list[Lease]:
        """Peers reached through the VXLAN device (neigh + FDB + route via .0)."""
        return [l for l in self.remotes if l.subnet not in self.direct and l.attrs.vtep_mac]


# -- the report ---------------------------------------------------------------------------


@dataclass
class Report:
    checks: list[CheckResult]
    facts: Facts

    @property
    def failed(self) -> bool:
        return any(c.status == FAIL for c in self.checks)

    def counts(self) -> dict[str, int]:
        out = {PASS: 0, FAIL: 0, WARN: 0, SKIP: 0}
        for c in self.checks:
            out[c.status] += 1
        return out

    def skipped(self) -> list[str]:
        return [c.name for c in self.checks if c.status == SKIP]

    def to_dict(self) -> dict[str, Any]:
        f = self.facts
        return {
            "node": {"public_ip": _s(f.public_ip), "subnet": _s(f.own_subnet),
                     "network": _s(f.network), "vxlan_device": f.vxlan_name,
                     "bridge": f.bridge_name, "peers": len(f.remotes)},
            "checks": [c.to_dict() for c in self.checks],
            "summary": self.counts(),
            "skipped": self.skipped(),
            "ok": not self.failed,
        }


def _s(value: Any) -> str | None:
    return None if value is None else str(value)


# -- deriving facts -----------------------------------------------------------------------


def derive_facts(node: NodeState, cluster: ClusterState, opts: DiagnoseOptions) -> Facts:
    k = node.kernel or KernelState()
    cfg = cluster.config
    vxlan_name = opts.vxlan_device or (f"overlay.{cfg.backend.vni}" if cfg else _guess_vxlan(k))
    vxlan = k.link(vxlan_name)
    overlay_cni = _overlay_conf(node.cni_files)
    cni_bridge = overlay_cni.plugin(PLUGIN_TYPE).get("bridge") if overlay_cni else None
    bridge_name = opts.bridge or (cni_bridge if isinstance(cni_bridge, str) else DEFAULT_BRIDGE)
    public_ip = opts.public_ip or (vxlan.vxlan.local if vxlan and vxlan.vxlan else None)
    underlay = _underlay(k, vxlan, public_ip)
    own = next((l for l in cluster.leases if public_ip and l.attrs.public_ip == public_ip), None)
    if own is None and public_ip is None and node.subnet_env is not None:
        # No device to learn our public IP from: subnet.env still says which lease is ours.
        own = next((l for l in cluster.leases
                    if l.subnet == node.subnet_env.subnet.network), None)
        public_ip = own.attrs.public_ip if own else None
        underlay = _underlay(k, vxlan, public_ip)
    own_subnet = own.subnet if own else (node.subnet_env.subnet.network if node.subnet_env
                                         else None)
    remotes, rejected = _judge_remotes(cluster, own, own_subnet, public_ip, vxlan)
    network = cfg.network if cfg else (node.subnet_env.network if node.subnet_env else None)
    direct: frozenset[IPv4Network] = frozenset()
    if cfg and cfg.backend.direct_routing and public_ip:
        # Like the backend: a peer on this node's underlay L2 subnet is routed to directly.
        l2 = next((a.interface.network for a in k.addrs if a.interface.ip == public_ip), None)
        if l2 is not None:
            direct = frozenset(l.subnet for l in remotes if l.attrs.public_ip in l2)
    return Facts(vxlan_name, bridge_name, public_ip, own, own_subnet, remotes, network,
                 vxlan, k.link(bridge_name), underlay, overlay_cni, direct, rejected)


def _judge_remotes(cluster: ClusterState, own: Lease | None, own_subnet: IPv4Network | None,
                   public_ip: IPv4Address | None, vxlan: LinkInfo | None
                   ) -> tuple[list[Lease], tuple[Rejection, ...]]:
    """The remotes overlayd programs, by the very rule it uses (``overlay.lease.judge``),
    and every key it rejects (those that hold no lease included)."""
    others = [l for l in cluster.leases if l is not own and l.subnet != own_subnet]
    cfg = cluster.config
    if cfg is None:  # nothing to judge against: the leases as they are
        return [l for l in others if l.attrs.backend_type == "vxlan"], tuple(cluster.rejected)
    rules = LeaseRules.from_config(cfg, () if own_subnet is None else (own_subnet,),
                                   () if public_ip is None else (public_ip,),
                                   (vxlan.mac or "").lower() or None if vxlan else None)
    remotes, bad, _ = judge(others, rules)
    bad = [replace(r, key=cluster.subnets_prefix + r.key) for r in bad]
    return remotes, (*cluster.rejected, *sorted(bad, key=lambda r: r.key))


def _guess_vxlan(k: KernelState) -> str:
    names = sorted(l.name for l in k.links if l.kind == "vxlan" and l.name.startswith("overlay."))
    return names[0] if names else "overlay.1"


def _underlay(k: KernelState, vxlan: LinkInfo | None, public_ip: IPv4Address | None
              ) -> LinkInfo | None:
    if vxlan and vxlan.vxlan and vxlan.vxlan.link:
        return k.link_by_index(vxlan.vxlan.link)
    if public_ip:
        a = next((a for a in k.addrs if a.interface.ip == public_ip), None)
        return k.link_by_index(a.index) if a else None
    return None


def _overlay_conf(files: Sequence[CNIConfigFile]) -> CNIConfigFile | None:
    return next((f for f in files if not f.error and f.plugin(PLUGIN_TYPE)), None)


def expected_mtu(cluster: ClusterState, facts: Facts) -> int | None:
    if cluster.config and cluster.config.backend.mtu:
        return cluster.config.backend.mtu
    if facts.underlay:
        return facts.underlay.mtu - VXLAN_OVERHEAD
    return None


# -- the checks (pure) --------------------------------------------------------------------


def check_etcd(cluster: ClusterState, endpoints: str) -> CheckResult:
    expected = f"network config and leases readable from etcd {endpoints}"
    if cluster.available:
        return CheckResult("etcd", PASS, expected,
                           f"config {cluster.config.network} and {len(cluster.leases)} lease(s)")
    return CheckResult("etcd", FAIL, expected, cluster.error or "no network config",
                       "start etcd or point --etcd-endpoints/--etcd-prefix at it; "
                       "lease-dependent checks were skipped")


def check_lease(cluster: ClusterState, f: Facts) -> CheckResult:
    name = "lease"
    if not cluster.available:
        return CheckResult(name, SKIP, "a live lease for this node", ETCD_SKIP)
    if f.public_ip is None:
        return CheckResult(name, FAIL, "a live lease for this node's public IP",
                           f"public IP unknown (no VXLAN device {f.vxlan_name})",
                           "start overlayd on this node, or pass --public-ip")
    expected = f"a live lease with PublicIP {f.public_ip}"
    if f.own is None:
        held = ", ".join(f"{l.subnet}={l.attrs.public_ip}" for l in cluster.leases) or "none"
        return CheckResult(name, FAIL, expected, f"no lease for {f.public_ip} (leases: {held})",
                           "start overlayd on this node; it acquires and renews the lease")
    lease = f.own
    problems = []
    exp = lease.expiration
    if exp is not None:
        if exp.tzinfo is None:
            exp = exp.replace(tzinfo=timezone.utc)
        if exp <= cluster.now:
            problems.append(f"expired at {exp.isoformat()}")
    mac = f.vxlan.mac if f.vxlan else None
    if mac and lease.attrs.vtep_mac and lease.attrs.vtep_mac != mac.lower():
        problems.append(f"VtepMAC {lease.attrs.vtep_mac} != {f.vxlan_name} MAC {mac}")
    if cluster.config and lease.attrs.vni not in (None, cluster.config.backend.vni):
        problems.append(f"VNI {lease.attrs.vni} != config VNI {cluster.config.backend.vni}")
    until = "reservation (never expires)" if lease.reserved else (
        f"expires {exp.isoformat()}" if exp else "expiry unknown")
    found = f"{lease.subnet} for {lease.attrs.public_ip}, {until}"
    if problems:
        return CheckResult(name, FAIL, expected, found + "; " + "; ".join(problems),
                           "restart overlayd on this node so it renews and republishes its lease")
    return CheckResult(name, PASS, expected, found)


MAX_LISTED_REJECTIONS = 20


def check_rejected_leases(cluster: ClusterState, f: Facts, endpoints: str) -> CheckResult:
    """Every key under subnets/ that overlayd rejects, why, and the command removing it."""
    name = "rejected-leases"
    expected = "every key under subnets/ is a lease overlayd accepts"
    if not cluster.available:
        return CheckResult(name, SKIP, expected, ETCD_SKIP)
    if not f.rejected:
        return CheckResult(name, PASS, expected, f"{len(cluster.leases)} lease(s), none rejected")
    shown = f.rejected[:MAX_LISTED_REJECTIONS]
    more = len(f.rejected) - len(shown)
    found = "; ".join(f"{printable_key(r.key)}: {r.reason} ({r.detail})" for r in shown)
    fixes = "; ".join(etcdctl_del(r.key, endpoints) for r in shown)
    return CheckResult(name, FAIL, expected,
                       f"{len(f.rejected)} rejected key(s): {found}"
                       + (f"; and {more} more (see `overlayctl leases list`)" if more else ""),
                       "find what wrote them; if nothing should, delete each: " + fixes)


def check_daemon(node: NodeState, opts: DiagnoseOptions) -> CheckResult:
    """/readyz when --healthz-addr is given; else an overlayd process in this namespace."""
    name = "daemon"
    if node.readyz is not None:
        status, detail = node.readyz
        expected = f"GET http://{opts.healthz_addr}/readyz -> 200"
        if status == 200:
            return CheckResult(name, PASS, expected, "200")
        found = f"{status}: {detail}" if status else detail
        return CheckResult(name, FAIL, expected, found, "start overlayd (with --healthz-addr) "
                           "and read its log for why it is not ready")
    expected = "an overlayd process in this network namespace (pass --healthz-addr for /readyz)"
    if node.daemon_pids is None:
        return CheckResult(name, SKIP, expected, "/proc unreadable")
    if node.daemon_pids:
        return CheckResult(name, PASS, expected, "overlayd pid " + ", ".join(
            map(str, node.daemon_pids)))
    # A warning, not a failure: the daemon may run where this process cannot see it
    # (another PID namespace); the lease check says whether it does its job.
    return CheckResult(name, WARN, expected, "no overlayd process found",
                       "start overlayd on this node (or pass --healthz-addr to ask it directly)")


def check_subnet_env(node: NodeState, cluster: ClusterState, f: Facts, path: str) -> CheckResult:
    name = "subnet-env"
    fix = f"restart overlayd on this node: it rewrites {path} from its lease"
    if node.subnet_env is None:
        return CheckResult(name, FAIL, f"{path} present and valid",
                           node.subnet_env_error or "missing", fix)
    env = node.subnet_env
    found = f"OVERLAY_NETWORK={env.network} OVERLAY_SUBNET={env.subnet} OVERLAY_MTU={env.mtu}"
    if not cluster.available:
        return CheckResult(name, WARN, f"{path} consistent with the lease", found +
                           " (not compared with the lease: etcd unreachable)")
    problems = []
    if cluster.config and env.network != cluster.config.network:
        problems.append(f"network {env.network} != config {cluster.config.network}")
    if f.own is not None:
        want = IPv4Interface(f"{f.own.gateway}/{f.own.subnet.prefixlen}")
        if env.subnet != want:
            problems.append(f"subnet {env.subnet} != lease {want}")
    expected = (f"OVERLAY_SUBNET={f.own.gateway}/{f.own.subnet.prefixlen}" if f.own
                else "subnet.env matching this node's lease")
    if problems:
        return CheckResult(name, FAIL, expected, found + "; " + "; ".join(problems), fix)
    return CheckResult(name, PASS, expected, found)


def check_cni_config(node: NodeState, opts: DiagnoseOptions) -> CheckResult:
    name = "cni-config"
    d = opts.cni_conf_dir
    expected = f"a CNI config of type {PLUGIN_TYPE} first in {d}"
    fix = f"overlayctl install-cni --conf-dir {d}"
    if node.cni_conf_error:
        return CheckResult(name, FAIL, expected, node.cni_conf_error, fix)
    if not node.cni_files:
        return CheckResult(name, FAIL, expected, f"no .conf/.conflist/.json file in {d}", fix)
    ours = _overlay_conf(node.cni_files)
    broken = [f for f in node.cni_files if f.error]
    if ours is None:
        found = "; ".join(f"{os.path.basename(c.path)}: " + (c.error or "types " + ",".join(
            str(p.get("type")) for p in c.plugins)) for c in node.cni_files)
        return CheckResult(name, FAIL, expected, found, fix)
    first = node.cni_files[0]
    found = f"{ours.path} (network {ours.name!r})"
    if first is not ours:
        return CheckResult(name, WARN, expected,
                           f"{found}, but the runtime uses the first file {first.path}",
                           f"remove or rename {first.path} so {os.path.basename(ours.path)} sorts first")
    subnet_file = ours.plugin(PLUGIN_TYPE).get("subnetFile")
    if subnet_file and opts.subnet_file and subnet_file != opts.subnet_file:
        return CheckResult(name, WARN, expected, f"{found} reads subnetFile {subnet_file}, "
                           f"not {opts.subnet_file}", f"pass --subnet-file {subnet_file}, or fix "
                           f"subnetFile in {ours.path}")
    if broken:
        return CheckResult(name, WARN, expected, found + "; unreadable: " +
                           "; ".join(f"{b.path}: {b.error}" for b in broken),
                           f"fix or remove {broken[0].path}")
    return CheckResult(name, PASS, expected, found)


def check_cni_binary(node: NodeState, f: Facts, opts: DiagnoseOptions) -> CheckResult:
    name = "cni-binary"
    dirs = [x for x in opts.cni_bin_dir.split(":") if x]
    d = dirs[0] if dirs else DEFAULT_CNI_BIN_DIR
    types = [str(p.get("type")) for p in f.overlay_cni.plugins] if f.overlay_cni else [PLUGIN_TYPE]
    expected = f"executable {', '.join(types)} in {opts.cni_bin_dir}"
    missing = [t for t in types if not node.cni_bins.get(t)]
    found = ", ".join(f"{t}: {'ok' if node.cni_bins.get(t) else 'missing'}" for t in types)
    if not missing:
        return CheckResult(name, PASS, expected, found)
    if PLUGIN_TYPE in missing:
        fix = f"overlayctl install-cni --bin-dir {d}"
    else:
        fix = (f"install the reference plugin(s) {', '.join(missing)} into {d} "
               "(Debian: containernetworking-plugins); a runtime silently drops a conflist "
               "naming a missing plugin")
    return CheckResult(name, FAIL, expected, found, fix)


def check_bridge(node: NodeState, f: Facts) -> CheckResult:
    name = "bridge"
    br = f.bridge_name
    gw = (IPv4Interface(f"{f.own_subnet.network_address + 1}/{f.own_subnet.prefixlen}")
          if f.own_subnet else None)
    expected = f"bridge {br} up holding {gw or 'the subnet gateway .1'}"
    if node.kernel is None:
        return CheckResult(name, SKIP, expected, f"kernel state unreadable: {node.kernel_error}")
    link = f.bridge
    create = f"ip link add {br} type bridge && ip link set {br} up" + (
        f" && ip addr add {gw} dev {br}" if gw else "")
    if link is None:
        n = len(node.reservations)
        return CheckResult(name, FAIL, expected, f"no link {br} ({n} pod IP reservation(s))",
                           f"{create} (the CNI plugin makes it at the next pod ADD)")
    if link.kind != "bridge":
        return CheckResult(name, FAIL, expected, f"{br} is a {link.kind or 'non-bridge'} link",
                           f"ip link del {br}; the CNI plugin recreates it as a bridge")
    addrs = node.kernel.addrs_of(link.index)
    problems = []
    if not link.up:
        problems.append("down")
    if gw and gw not in addrs:
        problems.append(f"addresses {', '.join(map(str, addrs)) or 'none'}")
    found = f"{br} {'up' if link.up else 'down'}, " + (
        ", ".join(map(str, addrs)) or "no address") + f", {len(node.kernel.ports_of(link.index))} port(s)"
    if not problems:
        return CheckResult(name, PASS, expected, found)
    fix = f"ip link set {br} up" if not link.up else f"ip addr add {gw} dev {br}"
    if not link.up and gw and gw not in addrs:
        fix += f" && ip addr add {gw} dev {br}"
    return CheckResult(name, FAIL, expected, found, fix)


def check_pod_ips(node: NodeState, f: Facts) -> CheckResult:
    name = "pod-ips"
    expected = (f"every pod's IP (IPAM files in {node.ipam_dir or 'the CNI dataDir'}) inside "
                f"{f.own_subnet or 'this node subnet'}")
    if f.overlay_cni is None:
        return CheckResult(name, SKIP, expected, "no overlay CNI config to find the IPAM dir")
    if f.own_subnet is None:
        return CheckResult(name, SKIP, expected, "this node's subnet is unknown")
    res = node.reservations
    reserved = (f.own_subnet.network_address, f.own_subnet.network_address + 1,
                f.own_subnet.broadcast_address)  # network, gateway, broadcast: never a pod's
    outside = [r for r in res if r.ip not in f.own_subnet or r.ip in reserved]
    no_id = [r for r in res if not r.container_id]
    ports = len(node.kernel.ports_of(f.bridge.index)) if node.kernel and f.bridge else None
    found = f"{len(res)} pod IP(s)" + (f", {ports} bridge port(s)" if ports is not None else "")
    if outside:
        return CheckResult(name, FAIL, expected, found + "; outside the subnet (or its "
                           "network/gateway/broadcast address): " +
                           ", ".join(f"{r.ip} ({r.container_id[:12]})" for r in outside),
                           "delete and recreate those pods (their IPs predate this node's "
                           f"subnet); stale file(s): {outside[0].path}")
    if no_id:
        return CheckResult(name, WARN, expected, found + "; reservation without container id: " +
                           ", ".join(str(r.ip) for r in no_id), f"rm {no_id[0].path}")
    if ports is not None and ports < len(res):
        return CheckResult(name, WARN, expected, found + f"; {len(res) - ports} reservation(s) "
                           "without a pod interface on the bridge (leaked IPs?)",
                           "remove the leaked IPs with the runtime's CNI GC (or CNI DEL)")
    return CheckResult(name, PASS, expected, found)


def check_vxlan_device(node: NodeState, cluster: ClusterState, f: Facts) -> CheckResult:
    name = "vxlan-device"
    dev = f.vxlan_name
    cfg = cluster.config
    want = [f"VXLAN {dev} up"]
    if cfg:
        want.append(f"VNI {cfg.backend.vni} port {cfg.backend.port}")
    if f.public_ip:
        want.append(f"local {f.public_ip}")
    if f.own_subnet:
        want.append(f"address {f.own_subnet.network_address}/32")
    expected = ", ".join(want) + ", nolearning"
    if node.kernel is None:
        return CheckResult(name, SKIP, expected, f"kernel state unreadable: {node.kernel_error}")
    link = f.vxlan
    restart = "restart overlayd on this node (it recreates and reprograms the device)"
    if link is None or link.vxlan is None:
        what = "missing" if link is None else f"{dev} is a {link.kind or 'non-VXLAN'} link"
        return CheckResult(name, FAIL, expected, what, restart)
    v = link.vxlan
    addrs = node.kernel.addrs_of(link.index)
    found = (f"{dev} {'up' if link.up else 'down'} VNI {v.vni} port {v.port} local {v.local} "
             f"learning {'on' if v.learning else 'off'} addr "
             + (", ".join(map(str, addrs)) or "none"))
    problems = []
    if cfg and (v.vni != cfg.backend.vni or v.port != cfg.backend.port):
        problems.append("VNI/port differ from the config")
    if f.public_ip and v.local != f.public_ip:
        problems.append(f"local is not {f.public_ip}")
    if v.learning:
        problems.append("learning on")
    if f.own_subnet and IPv4Interface(f"{f.own_subnet.network_address}/32") not in addrs:
        problems.append("address missing")
    if not link.up:
        fix = f"ip link set {dev} up" if not problems else restart
        problems.append("down")
        return CheckResult(name, FAIL, expected, found + "; " + "; ".join(problems), fix)
    if problems:
        return CheckResult(name, FAIL, expected, found + "; " + "; ".join(problems), restart)
    if not cfg:
        return CheckResult(name, WARN, expected, found + " (VNI/port not compared: etcd unreachable)")
    return CheckResult(name, PASS, expected, found)


def _in_network(f: Facts, net: IPv4Network) -> bool:
    return f.network is not None and net.subnet_of(f.network)


def check_routes(node: NodeState, cluster: ClusterState, f: Facts) -> CheckResult:
    name = "routes"
    dev = f.vxlan_name
    expected = f"a route for each of {len(f.remotes)} peer subnet(s) via its .0 dev {dev} onlink"
    if f.direct:
        expected += f" ({len(f.direct)} DirectRouting peer(s): via their public IP)"
    if not cluster.available:
        return CheckResult(name, SKIP, expected, ETCD_SKIP)
    if node.kernel is None:
        return CheckResult(name, SKIP, expected, f"kernel state unreadable: {node.kernel_error}")
    k = node.kernel
    vx = f.vxlan.index if f.vxlan else None
    by_dst: dict[IPv4Network, list[RouteInfo]] = {}
    for r in k.routes:
        by_dst.setdefault(r.dst, []).append(r)
    missing, wrong = [], []
    want = {l.subnet for l in f.vxlan_remotes} | f.direct
    taken = _route_conflicts(k, f)  # the route-conflicts check's: not "ip route replace"
    for lease in (l for l in f.remotes if l.subnet in want and l.subnet not in taken):
        gw = lease.subnet.network_address  # the peer's VXLAN address
        routes = by_dst.get(lease.subnet, [])
        if lease.subnet in f.direct:
            ok = any(r.gateway == lease.attrs.public_ip for r in routes)
        else:
            ok = any(r.oif == vx and r.gateway == gw and r.onlink for r in routes)
        if ok:
            continue
        if not routes:
            missing.append(lease)
        else:
            wrong.append((lease, routes[0]))
    leased = {l.subnet for l in cluster.leases}
    stale = [r for r in k.routes if _in_network(f, r.dst) and r.dst not in leased
             and r.dst != f.own_subnet and r.oif is not None and r.oif == vx]

    def add(l: Lease) -> str:  # proto 111: overlayd's own, which it may replace and remove
        if l.subnet in f.direct:
            return f"ip route replace {l.subnet} via {l.attrs.public_ip} proto 111"
        return (f"ip route replace {l.subnet} via {l.subnet.network_address} dev {dev} onlink"
                " proto 111")

    return _entry_result(name, expected, len(want), [
        ("missing", [str(l.subnet) for l in missing], [add(l) for l in missing]),
        ("wrong", [f"{l.subnet} via {r.gateway} dev {k.name_of(r.oif)}" for l, r in wrong],
         [add(l) for l, _ in wrong]),
        ("stale (no lease)", [f"{r.dst} via {r.gateway} dev {k.name_of(r.oif)}" for r in stale],
         [f"ip route del {r.dst} dev {k.name_of(r.oif)}" for r in stale]),
    ])


def _route_conflicts(k: KernelState, f: Facts) -> dict[IPv4Network, list[RouteInfo]]:
    """Peer subnets that a main-table route of another protocol holds: overlayd leaves
    those peers unprogrammed rather than replace (or shadow) that route."""
    want = {l.subnet for l in f.vxlan_remotes} | f.direct
    out: dict[IPv4Network, list[RouteInfo]] = {}
    for r in (*k.routes, *k.typed_routes):
        if r.dst in want and not r.ours:
            out.setdefault(r.dst, []).append(r)
    return out


def _unblocked(k: KernelState, f: Facts) -> list[Lease]:
    """The VXLAN peers overlayd programs: a conflicting one has no neigh or FDB entry."""
    taken = _route_conflicts(k, f)
    return [l for l in f.vxlan_remotes if l.subnet not in taken] if taken else f.vxlan_remotes


def _describe_route(k: KernelState, r: RouteInfo) -> str:
    """A route the way ``ip route`` shows it (and ``ip route del`` takes it)."""
    kind = "" if r.kind == "unicast" else f"{r.kind} "
    via = f" via {r.gateway}" if r.gateway else ""
    dev = f" dev {k.name_of(r.oif)}" if r.oif else ""
    metric = f" metric {r.metric}" if r.metric else ""
    return f"{kind}{r.dst}{via}{dev} proto {protocol_name(r.protocol or 0)}{metric}"


def check_route_conflicts(node: NodeState, cluster: ClusterState, f: Facts) -> CheckResult:
    name = "route-conflicts"
    expected = "no route of another protocol (kernel, static, ...) for a peer's subnet"
    if not cluster.available:
        return CheckResult(name, SKIP, expected, ETCD_SKIP)
    if node.kernel is None:
        return CheckResult(name, SKIP, expected, f"kernel state unreadable: {node.kernel_error}")
    k = node.kernel
    taken = _route_conflicts(k, f)
    if not taken:
        return CheckResult(name, PASS, expected, f"none for {len(f.remotes)} peer subnet(s)")
    peers = {l.subnet: l for l in f.remotes}
    found = "; ".join(
        f"peer {s} (public IP {peers[s].attrs.public_ip}) left unprogrammed: "
        + ", ".join(_describe_route(k, r) for r in rs) for s, rs in sorted(taken.items()))
    first = _describe_route(k, next(iter(sorted(taken.items())))[1][0])
    fix = (f"overlayd never replaces another's route: if it is stale, remove it "
           f"(ip route del {first}); if the subnet really is routed there, the peer's lease "
           "is wrong: delete it from etcd. overlayd programs the peer at its next reconcile")
    return CheckResult(name, FAIL, expected, found, fix)


def check_fdb(node: NodeState, cluster: ClusterState, f: Facts) -> CheckResult:
    name = "fdb"
    dev = f.vxlan_name
    expected = f"FDB entry VTEP MAC -> public IP on {dev} for each of {len(f.vxlan_remotes)} peer(s)"
    if not cluster.available:
        return CheckResult(name, SKIP, expected, ETCD_SKIP)
    skip = _need_vxlan(node, f, expected, name)
    if skip:
        return skip
    entries = [e for e in node.kernel.fdb_on(f.vxlan.index) if e.dst is not None]
    by_mac: dict[str, list[FDBInfo]] = {}
    for e in entries:
        by_mac.setdefault(e.mac, []).append(e)
    missing, wrong = [], []
    want_macs = set()
    for lease in _unblocked(node.kernel, f):
        mac = lease.attrs.vtep_mac
        if not mac:
            continue
        want_macs.add(mac)
        have = by_mac.get(mac, [])
        if any(e.dst == lease.attrs.public_ip for e in have):
            continue
        (wrong if have else missing).append((lease, have))
    stale = [e for e in entries if e.mac not in want_macs]
    extra = [e for l, have in wrong for e in have if e.dst != l.attrs.public_ip]
    add = "bridge fdb replace {mac} dev %s dst {ip} self permanent" % dev
    return _entry_result(name, expected, len(f.vxlan_remotes), [
        ("missing", [f"{l.attrs.vtep_mac} -> {l.attrs.public_ip} ({l.subnet})" for l, _ in missing],
         [add.format(mac=l.attrs.vtep_mac, ip=l.attrs.public_ip) for l, _ in missing]),
        ("wrong", [f"{l.attrs.vtep_mac} -> {', '.join(str(e.dst) for e in h)} (lease says "
                   f"{l.attrs.public_ip})" for l, h in wrong],
         [f"bridge fdb del {e.mac} dev {dev} dst {e.dst} self" for e in extra] +
         [add.format(mac=l.attrs.vtep_mac, ip=l.attrs.public_ip) for l, _ in wrong]),
        ("stale (no lease)", [f"{e.mac} -> {e.dst}" for e in stale],
         [f"bridge fdb del {e.mac} dev {dev} dst {e.dst} self" for e in stale]),
    ])


def check_neigh(node: NodeState, cluster: ClusterState, f: Facts) -> CheckResult:
    name = "neigh"
    dev = f.vxlan_name
    expected = f"permanent neighbour .0 -> VTEP MAC on {dev} for each of {len(f.vxlan_remotes)} peer(s)"
    if not cluster.available:
        return CheckResult(name, SKIP, expected, ETCD_SKIP)
    skip = _need_vxlan(node, f, expected, name)
    if skip:
        return skip
    entries = {n.dst: n for n in node.kernel.neigh_on(f.vxlan.index)}
    missing, wrong, want = [], [], set()
    for lease in _unblocked(node.kernel, f):
        gw = lease.subnet.network_address
        want.add(gw)
        n = entries.get(gw)
        if n is None or n.mac is None:
            missing.append(lease)
        elif lease.attrs.vtep_mac and (n.mac != lease.attrs.vtep_mac or not n.permanent):
            wrong.append((lease, n))
    stale = [n for n in entries.values() if n.dst not in want and n.permanent]
    add = "ip neigh replace {ip} lladdr {mac} dev %s nud permanent" % dev
    return _entry_result(name, expected, len(f.vxlan_remotes), [
        ("missing", [f"{l.subnet.network_address} -> {l.attrs.vtep_mac}" for l in missing],
         [add.format(ip=l.subnet.network_address, mac=l.attrs.vtep_mac) for l in missing]),
        ("wrong", [f"{n.dst} -> {n.mac}{'' if n.permanent else ' (not permanent)'} (lease says "
                   f"{l.attrs.vtep_mac})" for l, n in wrong],
         [add.format(ip=l.subnet.network_address, mac=l.attrs.vtep_mac) for l, _ in wrong]),
        ("stale (no lease)", [f"{n.dst} -> {n.mac}" for n in stale],
         [f"ip neigh del {n.dst} dev {dev}" for n in stale]),
    ])


def _need_vxlan(node: NodeState, f: Facts, expected: str, name: str) -> CheckResult | None:
    if node.kernel is None:
        return CheckResult(name, SKIP, expected, f"kernel state unreadable: {node.kernel_error}")
    if f.vxlan is None:
        return CheckResult(name, FAIL, expected, f"no device {f.vxlan_name}",
                           "restart overlayd on this node (it recreates and reprograms the device)")
    return None


def _entry_result(name: str, expected: str, total: int,
                  groups: list[tuple[str, list[str], list[str]]]) -> CheckResult:
    """One result for a set of entries: fail naming every missing/wrong/stale entry."""
    bad = [(label, items, fixes) for label, items, fixes in groups if items]
    if not bad:
        return CheckResult(name, PASS, expected, f"all {total} present, none stale")
    found = "; ".join(f"{label}: {', '.join(items)}" for label, items, _ in bad)
    fixes = [fx for _, _, fxs in bad for fx in fxs]
    fix = fixes[0] + (f" (and {len(fixes) - 1} more like it)" if len(fixes) > 1 else "")
    fix += "; or restart overlayd, which reconciles every entry"
    return CheckResult(name, FAIL, expected, found, fix)


def check_ip_forward(node: NodeState) -> CheckResult:
    expected = "net.ipv4.ip_forward = 1"
    if node.ip_forward is None:
        return CheckResult("ip-forward", SKIP, expected, "/proc/sys/net/ipv4/ip_forward unreadable")
    if node.ip_forward == "1":
        return CheckResult("ip-forward", PASS, expected, "1")
    return CheckResult("ip-forward", FAIL, expected, node.ip_forward,
                       "sysctl -w net.ipv4.ip_forward=1 (and persist it in /etc/sysctl.d)")


def check_firewall(node: NodeState, cluster: ClusterState) -> CheckResult:
    port = cluster.config.backend.port if cluster.config else 8472
    fw = node.firewall
    expected = f"no firewall rule dropping UDP {port} (VXLAN)"
    if fw.drops:
        return CheckResult("firewall", FAIL, expected, "; ".join(
            f"{r.source} {r.where}: {r.text}" for r in fw.drops), fw.drops[0].fix)
    if fw.policy_drops:
        return CheckResult("firewall", WARN, expected, "; ".join(
            f"{r.source} {r.where}: {r.text}" for r in fw.policy_drops), fw.policy_drops[0].fix)
    if fw.errors:
        return CheckResult("firewall", WARN, expected, "could not read: " + "; ".join(fw.errors),
                           "run as root with nft/iptables installed")
    return CheckResult("firewall", PASS, expected, "no rule drops it")


def check_mtu(node: NodeState, cluster: ClusterState, f: Facts) -> CheckResult:
    name = "mtu"
    want = expected_mtu(cluster, f)
    expected = (f"{f.vxlan_name} MTU {want} (" + ("Backend.MTU" if cluster.config and
                cluster.config.backend.mtu else f"underlay {f.underlay.name if f.underlay else '?'}"
                f" {f.underlay.mtu if f.underlay else '?'} - {VXLAN_OVERHEAD}") +
                ") = OVERLAY_MTU; bridge and pods <= it")
    if node.kernel is None:
        return CheckResult(name, SKIP, expected, f"kernel state unreadable: {node.kernel_error}")
    if f.vxlan is None:
        return CheckResult(name, SKIP, expected, f"no device {f.vxlan_name} (see vxlan-device)")
    dev_mtu = f.vxlan.mtu
    found = [f"{f.vxlan_name} {dev_mtu}"]
    problems, fix = [], ""
    if want is not None and dev_mtu != want:
        problems.append(f"{f.vxlan_name} MTU {dev_mtu} != {want}")
        fix = f"ip link set {f.vxlan_name} mtu {want} (or restart overlayd)"
    env = node.subnet_env
    if env is not None:
        found.append(f"OVERLAY_MTU {env.mtu}")
        target = want if want is not None else dev_mtu
        if env.mtu != target:
            problems.append(f"OVERLAY_MTU {env.mtu} != {target}")
            fix = fix or "restart overlayd on this node so it rewrites subnet.env"
    if f.bridge is not None:
        ports = node.kernel.ports_of(f.bridge.index)
        found.append(f"{f.bridge_name} {f.bridge.mtu}")
        limit = want if want is not None else dev_mtu
        big = [p for p in ports if p.mtu > limit]
        if ports and f.bridge.mtu > limit:
            problems.append(f"{f.bridge_name} MTU {f.bridge.mtu} > {limit}")
        if big:
            problems.append("pod veth(s) " + ", ".join(f"{p.name} {p.mtu}" for p in big)
                            + f" > {limit}")
            fix = fix or (f"recreate the pods on {f.bridge_name} after fixing OVERLAY_MTU "
                          "(their veth MTU is set at ADD)")
    if problems:
        return CheckResult(name, FAIL, expected, ", ".join(found) + "; " + "; ".join(problems), fix)
    return CheckResult(name, PASS, expected, ", ".join(found))


def check_cidr_overlap(node: NodeState, f: Facts, opts: DiagnoseOptions) -> CheckResult:
    name = "cidr-overlap"
    expected = "pod network overlaps no node network and no service CIDR"
    if f.network is None:
        return CheckResult(name, SKIP, expected, "pod network unknown (no config, no subnet.env)")
    clashes = []
    if node.kernel is not None:
        ours = {l.index for l in (f.vxlan, f.bridge) if l is not None}
        ours |= {l.index for l in node.kernel.links if f.bridge and l.master == f.bridge.index}
        for a in node.kernel.addrs:
            if a.index in ours or a.interface.ip.is_loopback:
                continue
            if a.interface.network.overlaps(f.network):
                clashes.append(f"node {a.interface} on {node.kernel.name_of(a.index)}")
    for svc in opts.service_cidrs:
        if svc.overlaps(f.network):
            clashes.append(f"service CIDR {svc}")
    checked = "node addresses" + (", service CIDR " + ", ".join(map(str, opts.service_cidrs))
                                  if opts.service_cidrs else " (no --service-cidr given)")
    if clashes:
        return CheckResult(name, FAIL, expected, f"pod network {f.network} overlaps "
                           + "; ".join(clashes), "choose a non-overlapping pod Network "
                           "(overlayctl config set --network CIDR) or renumber the node/service range")
    return CheckResult(name, PASS, expected, f"pod network {f.network} vs {checked}: no overlap")


CONFIG_CHANGED_FIX = ("the network config in etcd changed after overlayd started; nodes keep "
                      "the config they started with: restart overlayd on every node (or put "
                      "the old config back)")


def check_config_current(node: NodeState, cluster: ClusterState, f: Facts) -> CheckResult:
    """Does this node run with the network config now in etcd?  overlayd's own view
    (/metrics, with --healthz-addr), else what the node shows: subnet.env's network,
    the device's VNI/port, its lease's length."""
    name = "config-current"
    expected = "this node runs with the network config stored in etcd"
    cfg = cluster.config
    if not cluster.available or cfg is None:
        return CheckResult(name, SKIP, expected, ETCD_SKIP)
    differs = ["overlayd reports overlay_config_changed 1"] if node.config_changed else []
    if node.subnet_env is not None and node.subnet_env.network != cfg.network:
        differs.append(f"subnet.env network {node.subnet_env.network} != {cfg.network}")
    v = f.vxlan.vxlan if f.vxlan is not None else None
    if v is not None and (v.vni, v.port) != (cfg.backend.vni, cfg.backend.port):
        differs.append(f"device VNI {v.vni} port {v.port} != VNI {cfg.backend.vni} "
                       f"port {cfg.backend.port}")
    if f.own is not None and f.own.subnet.prefixlen != cfg.subnet_len:
        differs.append(f"lease {f.own.subnet} is not a /{cfg.subnet_len}")
    if differs:
        return CheckResult(name, FAIL, expected, "; ".join(differs), CONFIG_CHANGED_FIX)
    how = "overlayd says so" if node.config_changed is False else "subnet.env, device, lease agree"
    return CheckResult(name, PASS, expected, f"{cfg.network} VNI {cfg.backend.vni} ({how})")


def check_peer_probe(node: NodeState, cluster: ClusterState, f: Facts) -> CheckResult:
    name = "peer-probe"
    expected = f"each of {len(f.remotes)} peer(s) answers a DF ping of the path MTU across {f.vxlan_name}"
    if not cluster.available:
        return CheckResult(name, SKIP, expected, ETCD_SKIP)
    if node.probes is None:
        return CheckResult(name, SKIP, expected, "not run (--no-probe, or no VXLAN device)")
    if not node.probes:
        return CheckResult(name, PASS, expected, "no peers to probe")
    down = [p for p in node.probes if p.received == 0]
    if not down:
        sizes = sorted({p.size for p in node.probes})
        return CheckResult(name, PASS, expected, f"{len(node.probes)} peer(s) answered "
                           f"{'/'.join(map(str, sizes))}-byte DF pings")
    mtu_only = [p for p in down if p.small_received]
    parts = []
    for p in down:
        why = p.error or f"{p.received}/{p.sent} replies"
        if p.small_received:
            why += f", but {p.small_received} small ping(s) answered: path MTU below {p.size + 28}"
        parts.append(f"{p.subnet} ({p.target}): {why}")
    if any("unreachable" in p.error.lower() for p in down):
        fix = ("this node has no route to the peer's VXLAN address: fix the routes check, "
               "or restart overlayd")
    elif len(mtu_only) == len(down):
        fix = ("lower the overlay MTU (Backend.MTU in the network config) or raise the "
               "underlay MTU on the path")
    else:
        fix = (f"check overlayd and the firewall (UDP {cluster.config.backend.port}) on the "
               "unreachable peer(s), and the underlay route to their public IP")
    return CheckResult(name, FAIL, expected, "; ".join(parts), fix)


def run_checks(node: NodeState, cluster: ClusterState, opts: DiagnoseOptions,
               endpoints: str = "", facts: Facts | None = None) -> Report:
    """Every check; ``facts``: derived from this very state already (else derived here)."""
    f = facts or derive_facts(node, cluster, opts)
    checks = [
        check_etcd(cluster, endpoints),
        check_lease(cluster, f),
        check_rejected_leases(cluster, f, endpoints),
        check_daemon(node, opts),
        check_subnet_env(node, cluster, f, node.subnet_file),
        check_cni_config(node, opts),
        check_cni_binary(node, f, opts),
        check_bridge(node, f),
        check_pod_ips(node, f),
        check_vxlan_device(node, cluster, f),
        check_routes(node, cluster, f),
        check_route_conflicts(node, cluster, f),
        check_fdb(node, cluster, f),
        check_neigh(node, cluster, f),
        check_ip_forward(node),
        check_firewall(node, cluster),
        check_mtu(node, cluster, f),
        check_cidr_overlap(node, f, opts),
        check_config_current(node, cluster, f),
        check_peer_probe(node, cluster, f),
    ]
    return Report(checks, f)


# -- gathering (I/O) ---------------------------------------------------------------------


def read_cni_conf_dir(conf_dir: str) -> tuple[list[CNIConfigFile], str]:
    """Every file a runtime could read in ``conf_dir``, in its order (libcni's rules, in
    ``overlay.cni.conflist``); a file that does not load is kept with the reason."""
    try:
        paths = conf_files(conf_dir)
    except ConfListError as e:
        return [], str(e)
    return [read_cni_file(p) for p in paths], ""


def read_cni_file(path: str) -> CNIConfigFile:
    try:
        conf = load_conflist(path)
    except ConfListError as e:
        return CNIConfigFile(path, "", (), str(e))
    return CNIConfigFile(path, conf["name"], tuple(conf["plugins"]))


def read_cni_bins(bin_dirs: str, names: Iterable[str]) -> dict[str, bool]:
    """Which plugins are executable in any of ``bin_dirs`` (colon-separated, like CNI_PATH)."""
    dirs = [d for d in bin_dirs.split(":") if d]
    return {n: any(os.path.isfile(os.path.join(d, n)) and os.access(os.path.join(d, n), os.X_OK)
                   for d in dirs) for n in names}


def read_reservations(data_dir: str, network: str) -> list[Reservation]:
    """The CNI IPAM store's reservations (``overlay.cni.ipam``), by address; none when
    the store cannot be read."""
    store = DiskStore(data_dir, network)
    try:
        held = store.reservations()
    except (OverlayError, OSError) as e:
        log.info("IPAM store %s unreadable: %s", store.dir, e)
        return []
    return [Reservation(ip, cid, ifname, os.path.join(store.dir, str(ip)))
            for ip, (cid, ifname) in sorted(held.items())]


def read_sysctl(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as fh:
            return fh.read().strip()
    except OSError:
        return None


def find_daemons(proc: str = "/proc") -> list[int] | None:
    """PIDs of overlayd processes whose network namespace is this process's own."""
    try:
        mine = os.stat(os.path.join(proc, "self", "ns", "net")).st_ino
        pids = [int(p) for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        return None
    out = []
    for pid in pids:
        try:
            with open(os.path.join(proc, str(pid), "cmdline"), "rb") as fh:
                argv = fh.read().split(b"\0")[:2]
            if not any(os.path.basename(a.decode(errors="replace")) == "overlayd" for a in argv):
                continue
            if os.stat(os.path.join(proc, str(pid), "ns", "net")).st_ino == mine:
                out.append(pid)
        except OSError:  # gone meanwhile, or not ours to look at
            continue
    return sorted(out)


def read_readyz(addr: str, timeout: float = 2.0) -> tuple[int | None, str]:
    url = f"http://{addr}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read(200).decode(errors="replace").strip()
    except urllib.error.HTTPError as e:
        return e.code, e.read(200).decode(errors="replace").strip()
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        return None, f"{url}: {reason}"


def read_config_changed(addr: str, timeout: float = 2.0) -> bool | None:
    """overlayd's overlay_config_changed gauge from /metrics; None if unreadable."""
    try:
        with urllib.request.urlopen(f"http://{addr}/metrics", timeout=timeout) as r:
            text = r.read(1 << 20).decode(errors="replace")
    except (OSError, ValueError):
        return None
    for line in text.splitlines():
        if line.startswith("overlay_config_changed "):
            return line.split()[1] not in ("0", "0.0")
    return None  # an overlayd from before the gauge


_PING_RE = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")


def ping(target: IPv4Address, size: int, count: int, timeout: float) -> tuple[int, int, str]:
    """(sent, received, error) for ``count`` DF pings of ``size`` payload bytes."""
    argv = ["ping", "-n", "-q", "-M", "do", "-s", str(size), "-c", str(count),
            "-i", "0.2", "-W", str(max(1, int(round(timeout)))), str(target)]
    rc, out, err = run_quiet(argv, timeout=count * 0.2 + timeout + 3)
    m = _PING_RE.search(out)
    if m:
        return int(m.group(1)), int(m.group(2)), ""
    return count, 0, (err or out.strip() or f"ping exited {rc}").splitlines()[-1]


Echoer = Callable[[Sequence[IPv4Address], int, int, float], "dict[IPv4Address, Echo]"]


def echo_peers(targets: Sequence[IPv4Address], size: int, count: int, timeout: float
               ) -> dict[IPv4Address, Echo]:
    """All targets at once on a raw ICMP socket; one ``ping`` per target without CAP_NET_RAW."""
    try:
        return echo_many(targets, size, count, timeout)
    except PermissionError:
        log.info("no raw ICMP socket (not root?): probing with one ping per peer")

    def one(t: IPv4Address) -> Echo:
        return Echo(*ping(t, size, count, timeout))

    with ThreadPoolExecutor(max_workers=min(16, len(targets))) as pool:
        return dict(zip(targets, pool.map(one, targets)))


def probe_peers(remotes: Sequence[Lease], mtu: int, count: int, timeout: float,
                echo: Echoer = echo_peers) -> list[ProbeResult]:
    """Ping every peer's .0 (its VXLAN address) with DF at the full path MTU, all at once;
    peers that do not answer get one small ping, which tells a path-MTU problem apart."""
    if not remotes:
        return []
    size = mtu - 28  # IPv4 + ICMP headers
    targets = [l.subnet.network_address for l in remotes]
    full = echo(targets, size, count, timeout)
    silent = [t for t in targets if full[t].received == 0]
    small = echo(silent, 56, 1, timeout) if silent else {}
    return [ProbeResult(l.subnet, t, size, full[t].sent, full[t].received,
                        small[t].received if t in small else None, full[t].error)
            for l, t in zip(remotes, targets)]


def gather_cluster(opts: EtcdOptions, local_ips: Iterable[IPv4Address] = (),
                   timeout: float = 3.0) -> ClusterState:
    """The config and leases from etcd; on failure an empty state naming the error.

    Only the leases of ``local_ips`` (this node's) get their expiry read: that is one
    request per lease, which a listing of a thousand peers should not pay.
    """
    from overlay.subnet.registry import EtcdRegistry

    mine = set(local_ips)
    try:
        with EtcdRegistry(replace(opts, timeout=min(opts.timeout, timeout))) as reg:
            config = reg.get_config()
            listing = reg.list_subnets(with_expiration=False)
            leases, rejected = listing.leases, listing.rejected
            for i, lease in enumerate(leases):
                if lease.attrs.public_ip in mine and not lease.reserved:
                    fresh = reg.get_lease(lease.subnet)
                    leases[i] = fresh if fresh is not None else lease
    except OverlayError as e:
        log.info("etcd unavailable for diagnose: %s", e)
        return ClusterState(error=str(e))
    return ClusterState(config=config, leases=leases, rejected=rejected,
                        subnets_prefix=reg.subnets_prefix)


def gather_node(opts: DiagnoseOptions) -> NodeState:
    """Everything local but the firewall: kernel, sysctl, subnet.env, CNI files, IPAM, readyz."""
    from overlay.netlink.kernel_state import dump_kernel_state

    node = NodeState()
    try:
        node.kernel = dump_kernel_state()
    except OverlayError as e:
        node.kernel_error = str(e)
    node.ip_forward = read_sysctl("/proc/sys/net/ipv4/ip_forward")
    node.cni_files, node.cni_conf_error = read_cni_conf_dir(opts.cni_conf_dir)
    ours = _overlay_conf(node.cni_files)
    plugin = ours.plugin(PLUGIN_TYPE) if ours else {}
    node.subnet_file = opts.subnet_file or str(plugin.get("subnetFile") or DEFAULT_SUBNET_FILE)
    try:
        node.subnet_env = load_subnet_env(node.subnet_file)
    except SubnetEnvError as e:
        node.subnet_env_error = str(e)
    types = [str(p.get("type")) for p in ours.plugins] if ours else [PLUGIN_TYPE]
    node.cni_bins = read_cni_bins(opts.cni_bin_dir, types)
    if ours is not None:
        data_dir = str(plugin.get("dataDir") or DEFAULT_DATA_DIR)
        node.ipam_dir = os.path.join(data_dir, ours.name)
        node.reservations = read_reservations(data_dir, ours.name)
    if opts.healthz_addr:
        node.readyz = read_readyz(opts.healthz_addr)
        node.config_changed = read_config_changed(opts.healthz_addr)
    else:
        node.daemon_pids = find_daemons()
    return node


def diagnose(opts: DiagnoseOptions, etcd: EtcdOptions) -> Report:
    """Gather everything, probe the peers, run every check."""
    node = gather_node(opts)
    local_ips = {a.interface.ip for a in node.kernel.addrs} if node.kernel else set()
    if opts.public_ip:
        local_ips.add(opts.public_ip)
    cluster = gather_cluster(etcd, local_ips)
    node.firewall = read_firewall(cluster.config.backend.port if cluster.config else 8472)
    f = derive_facts(node, cluster, opts)  # the probes below do not change what it reads
    if opts.probe and cluster.available and f.vxlan is not None:
        node.probes = probe_peers(f.remotes, f.vxlan.mtu, opts.probe_count, opts.probe_timeout)
    return run_checks(node, cluster, opts, etcd.describe(), f)
