"""``overlayctl diagnose``'s values: what was gathered, what is derived, what is reported.

Plain values only (no I/O): ``gather`` fills ``NodeState`` and ``ClusterState``,
``checks`` derives ``Facts`` from them and turns them into ``CheckResult``s and a
``Report``.  Unit tests build these by hand.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any, TypeVar

from overlay.cni.install import (
    DEFAULT_BIN_DIR as DEFAULT_CNI_BIN_DIR,
    DEFAULT_CONF_DIR as DEFAULT_CNI_CONF_DIR,
    PLUGIN_NAME as PLUGIN_TYPE,
)
from overlay.config import NetworkConfig
from overlay.diagnose.firewall import FirewallState
from overlay.lease import Lease, Rejection
from overlay.netlink.kernel_state import KernelState, LinkInfo
from overlay.subnetenv import DEFAULT_SUBNET_FILE, SubnetEnv
from overlay.vxlan.entries import DeviceView, Entry, Neigh, Route

E = TypeVar("E", bound=Entry)  # one kind of entry

PASS, FAIL, WARN, SKIP = "pass", "fail", "warn", "skip"


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
    node_name: str | None = None  # overlayd's --node-name (the runtime file's)
    policy_log_denied: bool = False  # overlayd compiles denied-packet log rules


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
class Reservation6:
    """An IPv6 address in the IPAM store (a dual-stack pod's second range)."""

    ip: IPv6Address
    container_id: str
    ifname: str
    path: str


@dataclass(frozen=True)
class ProbeResult:
    subnet: IPv4Network | IPv6Network
    target: IPv4Address | IPv6Address
    size: int  # ICMP payload bytes, sent with DF
    sent: int
    received: int
    small_received: int | None = None  # a 56-byte retry when the full-size probe failed
    error: str = ""


@dataclass(frozen=True)
class Probe6Result:
    """``ProbeResult`` for a peer's IPv6 VTEP address over overlay-v6.<VNI>."""

    subnet: IPv6Network
    target: IPv6Address
    size: int  # ICMPv6 payload bytes, sent with DF
    sent: int
    received: int
    small_received: int | None = None
    error: str = ""


@dataclass(frozen=True)
class PodProbe:
    """One local pod (an IPAM record) pinged from the node over the bridge."""

    ip: IPv4Address | IPv6Address
    container_id: str
    ifname: str
    sent: int
    received: int
    error: str = ""


@dataclass
class NodeState:
    kernel: KernelState | None = None
    kernel_error: str = ""
    ip_forward: str | None = None
    ip6_forward: str | None = None  # net.ipv6.conf.all.forwarding
    subnet_env: SubnetEnv | None = None
    subnet_env_error: str = ""
    cni_files: list[CNIConfigFile] = field(default_factory=list)
    cni_conf_error: str = ""
    cni_bins: dict[str, bool] = field(default_factory=dict)  # name -> executable
    reservations: list[Reservation] = field(default_factory=list)
    reservations6: list[Reservation6] = field(default_factory=list)
    ipam_dir: str = ""
    cni_data_dir: str = ""  # the plugin's dataDir (its IPAM store, the pods' metadata)
    subnet_file: str = DEFAULT_SUBNET_FILE  # the subnet.env read (given, or the CNI config's)
    firewall: FirewallState = field(default_factory=FirewallState)
    readyz: tuple[int | None, str] | None = None  # (HTTP status, detail); None = not asked
    daemon_pids: list[int] | None = None  # overlayd processes in this netns; None = unknown
    probes: list[ProbeResult] | None = None  # None = not run
    pod_probes: list[PodProbe] | None = None  # None = not run
    config_changed: bool | None = None  # overlayd's overlay_config_changed; None = not asked
    # the IPv6 VXLAN device (read when the config enables IPv6; None: not read or absent)
    ipv6_device: DeviceView | None = None
    ipv6_device_error: str = ""
    probes6: list[Probe6Result] | None = None  # None = not run


@dataclass
class ClusterState:
    config: NetworkConfig | None = None
    leases: list[Lease] = field(default_factory=list)
    error: str = ""  # set when etcd could not be read
    rejected: list[Rejection] = field(default_factory=list)  # keys that hold no lease
    subnets_prefix: str = ""  # ``<prefix>/subnets/``: the full key of a lease
    now: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def available(self) -> bool:
        return self.config is not None and not self.error


@dataclass
class Facts:
    """What the checks derive once from the state: device names, own lease, peers."""

    vxlan_name: str
    bridge_name: str
    public_ip: IPv4Address | IPv6Address | None
    own: Lease | None
    own_subnet: IPv4Network | IPv6Network | None
    remotes: list[Lease]
    network: IPv4Network | IPv6Network | None
    vxlan: LinkInfo | None
    bridge: LinkInfo | None
    underlay: LinkInfo | None
    overlay_cni: CNIConfigFile | None
    # Per remote (in ``remotes``' order) the entries overlayd programs for it: the very
    # rule it uses (``overlay.vxlan.entries.entries_for``); () for one it skips.
    entries: Mapping[IPv4Network | IPv6Network, tuple[Entry, ...]] = field(default_factory=dict)
    rejected: tuple[Rejection, ...] = ()  # keys the acceptance rule rejects, as overlayd does

    def wanted(self, kind: type[E]) -> list[tuple[IPv4Network | IPv6Network, E]]:
        """Every expected entry of one kind, with the remote it is for."""
        return [(s, e) for s, es in self.entries.items() for e in es if isinstance(e, kind)]

    @property
    def direct(self) -> frozenset[IPv4Network | IPv6Network]:
        """DirectRouting peers: one route via their public IP, no neigh, no FDB entry."""
        return frozenset(s for s, r in self.wanted(Route) if r.direct)

    @property
    def programmed(self) -> list[Lease]:
        """Peers overlayd programs entries for: the ones a probe can reach."""
        return [peer for peer in self.remotes if self.entries.get(peer.subnet)]

    @property
    def vxlan_remotes(self) -> list[Lease]:
        """Peers reached through the VXLAN device (neigh + FDB + route via .0)."""
        return [peer for peer in self.remotes
                if any(isinstance(e, Neigh) for e in self.entries.get(peer.subnet, ()))]


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


def overlay_conf(files: Sequence[CNIConfigFile]) -> CNIConfigFile | None:
    return next((f for f in files if not f.error and f.plugin(PLUGIN_TYPE)), None)

