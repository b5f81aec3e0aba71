"""``overlayctl diagnose``'s checks: the pod-network troubleshooting checklist, as pure
functions over gathered state.

``derive_facts`` works out once what every check needs (device names, this node's
lease, the peers overlayd programs, by its own acceptance rule); each ``check_*`` takes
the values of ``overlay.diagnose.state`` and returns a ``CheckResult`` with the evidence
(expected, found) and a one-line fix; ``run_checks`` runs them all.  Nothing here does
I/O (``overlay.diagnose.gather`` does it all), so unit tests feed made-up state.

When etcd cannot be read, every check that needs the leases or the config is reported
as ``skip`` (and says so); everything local is still checked.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
    ip_interface,
)
from posixpath import basename  # of a path read elsewhere: string work, no file access

from overlay.cni.install import (
    DEFAULT_BIN_DIR as DEFAULT_CNI_BIN_DIR,
    DEFAULT_CONF_DIR as DEFAULT_CNI_CONF_DIR,
    PLUGIN_NAME as PLUGIN_TYPE,
)
from overlay.cni.netconf import DEFAULT_BRIDGE
from overlay.config import VXLAN_OVERHEAD, VXLAN_OVERHEAD_V6, BackendConfig, NetworkConfig
from overlay.diagnose.state import (
    FAIL,
    PASS,
    SKIP,
    WARN,
    CheckResult,
    ClusterState,
    DiagnoseOptions,
    E,
    Facts,
    NodeState,
    Report,
    overlay_conf,
)
from overlay.lease import Lease, LeaseRules, Rejection, etcdctl_del, judge, printable_key
from overlay.netlink.kernel_state import FDBInfo, KernelState, LinkInfo, NeighInfo, RouteInfo
from overlay.netlink.pod import host_veth_name
from overlay.netlink.route import RTPROT_OVERLAY
from overlay.netlink.rtnl import protocol_name
from overlay.util.text import rfc3339
from overlay.vxlan.entries import (
    FDB,
    BackendSettings,
    Entries,
    Neigh,
    Route,
    describe,
    entries_for,
    v6_half,
)

ETCD_SKIP = "etcd unreachable: needs the leases/config from etcd"


def ipv6_only(node: NodeState, cluster: ClusterState) -> bool:
    """An IPv6-only network (EnableIPv4 false): the config says so, or, with etcd
    unreadable, this node's subnet.env (the IPv6 pair alone)."""
    if cluster.config is not None:
        return cluster.config.ipv6_only
    return node.subnet_env is not None and node.subnet_env.ipv6_only


def derive_facts(node: NodeState, cluster: ClusterState, opts: DiagnoseOptions) -> Facts:
    k = node.kernel or KernelState()
    cfg = cluster.config
    v6only = ipv6_only(node, cluster)
    # an IPv6-only node's one device is overlay-v6.<VNI>
    default = f"overlay{'-v6' if v6only else ''}.{cfg.backend.vni}" if cfg else ""
    vxlan_name = opts.vxlan_device or default or _guess_vxlan(k, v6only)
    vxlan = k.link(vxlan_name)
    overlay_cni = overlay_conf(node.cni_files)
    cni_plugin = overlay_cni.plugin(PLUGIN_TYPE) if overlay_cni else None
    cni_bridge = (cni_plugin or {}).get("bridge")
    bridge_name = opts.bridge or (cni_bridge if isinstance(cni_bridge, str) else DEFAULT_BRIDGE)
    # an IPv6-only node's device runs over the IPv6 underlay: its local address is local6
    local = (vxlan.vxlan.local6 or vxlan.vxlan.local) if vxlan and vxlan.vxlan else None
    # --public-ip (and the runtime file's) is IPv4's: an IPv6-only node's is its device's
    public_ip: IPv4Address | IPv6Address | None = (
        local if v6only else opts.public_ip or local)
    underlay = _underlay(k, vxlan, public_ip)
    own = next((lease for lease in cluster.leases
                if public_ip and lease.attrs.public_ip == public_ip), None)
    env = node.subnet_env
    # subnet.env's subnet of the lease's family (an IPv6-only node's is its IPv6 one)
    env_subnet = None if env is None else (env.subnet or env.ipv6_subnet)
    env_net = None if env_subnet is None else env_subnet.network
    if own is None and public_ip is None and env_net is not None:
        # No device to learn our public IP from: subnet.env still says which lease is ours.
        own = next((lease for lease in cluster.leases if lease.subnet == env_net), None)
        public_ip = own.attrs.public_ip if own else None
        underlay = _underlay(k, vxlan, public_ip)
    own_subnet = own.subnet if own else env_net
    remotes, rejected = _judge_remotes(cluster, own, own_subnet, public_ip, vxlan)
    network = cfg.network if cfg else (node.subnet_env.network if node.subnet_env else None)
    settings = backend_settings(cfg, k, public_ip, vxlan)
    entries = {lease.subnet: tuple(entries_for(lease, settings)) for lease in remotes}
    return Facts(vxlan_name, bridge_name, public_ip, own, own_subnet, remotes, network,
                 vxlan, k.link(bridge_name), underlay, overlay_cni, entries, rejected)


def backend_settings(cfg: NetworkConfig | None, k: KernelState,
                     public_ip: IPv4Address | IPv6Address | None,
                     vxlan: LinkInfo | None) -> BackendSettings:
    """This node as overlayd's backend sees it, from what the node shows: the VNI, the
    public IP and the underlay address holding it (its L2 subnet, for DirectRouting)."""
    # Unknown public IP: 0.0.0.0 is no accepted lease's (the acceptance rule rejects it).
    ip = public_ip or IPv4Address(0)
    # No address holds it: a /32, so no peer counts as on our L2 (as with no underlay).
    underlay = next((a.interface for a in k.addrs if a.interface.ip == ip), ip_interface(ip))
    vni = cfg.backend.vni if cfg else (vxlan.vxlan.vni if vxlan and vxlan.vxlan else 1)
    return BackendSettings(vni, ip, underlay, bool(cfg and cfg.backend.direct_routing))


def _judge_remotes(cluster: ClusterState, own: Lease | None,
                   own_subnet: IPv4Network | IPv6Network | None,
                   public_ip: IPv4Address | IPv6Address | None, vxlan: LinkInfo | None
                   ) -> tuple[list[Lease], tuple[Rejection, ...]]:
    """The remotes overlayd programs, by the very rule it uses (``overlay.lease.judge``),
    and every key it rejects (those that hold no lease included)."""
    others = [lease for lease in cluster.leases
              if lease is not own and lease.subnet != own_subnet]
    cfg = cluster.config
    if cfg is None:  # nothing to judge against: the leases as they are
        vxlan_leases = [lease for lease in others if lease.attrs.backend_type == "vxlan"]
        return vxlan_leases, tuple(cluster.rejected)
    rules = LeaseRules.from_config(cfg, () if own_subnet is None else (own_subnet,),
                                   () if public_ip is None else (public_ip,),
                                   (vxlan.mac or "").lower() or None if vxlan else None)
    remotes, bad, _ = judge(others, rules)
    bad = [replace(r, key=cluster.subnets_prefix + r.key) for r in bad]
    return remotes, (*cluster.rejected, *sorted(bad, key=lambda r: r.key))


def _guess_vxlan(k: KernelState, v6only: bool = False) -> str:
    base = "overlay-v6." if v6only else "overlay."
    names = sorted(link.name for link in k.links
                   if link.kind == "vxlan" and link.name.startswith(base))
    return names[0] if names else base + "1"


def _underlay(k: KernelState, vxlan: LinkInfo | None,
              public_ip: IPv4Address | IPv6Address | None) -> LinkInfo | None:
    if vxlan and vxlan.vxlan and vxlan.vxlan.link:
        return k.link_by_index(vxlan.vxlan.link)
    if public_ip:
        a = next((a for a in k.addrs if a.interface.ip == public_ip), None)
        return k.link_by_index(a.index) if a else None
    return None


def family(facts: Facts) -> int:
    """The family of this node's VXLAN device (``facts.vxlan``): 6 on an IPv6-only node,
    whose one device is overlay-v6.<VNI> over the IPv6 underlay."""
    return 6 if isinstance(facts.public_ip, IPv6Address) else 4


def overhead(facts: Facts) -> int:
    return VXLAN_OVERHEAD_V6 if family(facts) == 6 else VXLAN_OVERHEAD


def _vtep(facts: Facts) -> str:
    """How a peer's VTEP address is named: its subnet's first address."""
    return "::" if family(facts) == 6 else ".0"


def expected_mtu(cluster: ClusterState, facts: Facts) -> int | None:
    """The device's MTU as overlayd sets it (``BackendConfig.device_mtu``: the outer
    MTU, Backend.MTU or the underlay's, whichever is smaller, - 50; - 70 over IPv6)."""
    backend = cluster.config.backend if cluster.config else BackendConfig()
    if facts.underlay:
        return backend.device_mtu(facts.underlay.mtu, family(facts))
    return backend.mtu - overhead(facts) if backend.mtu else None


def expected_mtu6(cluster: ClusterState, node: NodeState) -> int | None:
    """The IPv6 device's MTU (the outer MTU - 70), when the node has that device."""
    d = node.ipv6_device
    if cluster.config is None or d is None or d.local is None or d.local.version != 6:
        return None
    backend = cluster.config.backend
    if d.underlay_mtu:
        return backend.device_mtu(d.underlay_mtu, 6)
    return backend.mtu - VXLAN_OVERHEAD_V6 if backend.mtu else None


def expected_pod_mtu(node: NodeState, cluster: ClusterState, facts: Facts) -> int | None:
    """OVERLAY_MTU: the IPv4 device's, or on a node whose subnet.env has an IPv6 subnet
    the smaller of both devices' (a pod has one MTU for both families)."""
    want = expected_mtu(cluster, facts)
    env = node.subnet_env
    dual = env is not None and env.subnet is not None and env.ipv6_subnet is not None
    want6 = expected_mtu6(cluster, node) if dual else None
    return min(want, want6) if want is not None and want6 is not None else want


def check_etcd(cluster: ClusterState, endpoints: str) -> CheckResult:
    expected = f"network config and leases readable from etcd {endpoints}"
    if cluster.available and cluster.config is not None:
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
        held = ", ".join(f"{other.subnet}={other.attrs.public_ip}"
                         for other in cluster.leases) or "none"
        return CheckResult(name, FAIL, expected, f"no lease for {f.public_ip} (leases: {held})",
                           "start overlayd on this node; it acquires and renews the lease")
    lease = f.own
    problems = []
    exp = lease.expiration
    if exp is not None:
        if exp.tzinfo is None:
            exp = exp.replace(tzinfo=UTC)
        if exp <= cluster.now:
            problems.append(f"expired at {rfc3339(exp)}")
    mac = f.vxlan.mac if f.vxlan else None
    if mac and lease.attrs.vtep_mac and lease.attrs.vtep_mac != mac.lower():
        problems.append(f"VtepMAC {lease.attrs.vtep_mac} != {f.vxlan_name} MAC {mac}")
    if cluster.config and lease.attrs.vni not in (None, cluster.config.backend.vni):
        problems.append(f"VNI {lease.attrs.vni} != config VNI {cluster.config.backend.vni}")
    until = "reservation (never expires)" if lease.reserved else (
        f"expires {rfc3339(exp)}" if exp else "expiry unknown")
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


def _assumed(flag: str, path: str, what: str) -> str:
    """The start of a fix whose path diagnose only assumed: the default may itself be the
    mistake (no runtime file of overlayd read, diagnose run on the host for a lab node, or
    overlayd/the runtime configured elsewhere), so say so and how to point diagnose at the
    right place first."""
    return (f"{path} is the default, assumed: if this node's {what} is elsewhere, point the "
            f"checks at overlayd's runtime file with --runtime-file FILE (it names them all; "
            f"a lab node's is under its node directory), or at this one with {flag}; only if "
            f"{path} is the right one: ")


def check_subnet_env(node: NodeState, cluster: ClusterState, f: Facts, path: str,
                     assumed: bool = False) -> CheckResult:
    """``assumed``: ``path`` is the default, named neither by --subnet-file nor the CNI config."""
    name = "subnet-env"
    fix = f"restart overlayd on this node: it rewrites {path} from its lease"
    if assumed and node.subnet_env is None:
        fix = _assumed("--subnet-file FILE", path, "subnet.env (overlayd's --subnet-file)") + fix
    if node.subnet_env is None:
        return CheckResult(name, FAIL, f"{path} present and valid",
                           node.subnet_env_error or "missing", fix)
    env = node.subnet_env
    # An IPv6-only node's file has the IPv6 pair alone: it is the lease's family.
    pre = "OVERLAY_IPV6_" if env.subnet is None else "OVERLAY_"
    network = env.ipv6_network if env.subnet is None else env.network
    subnet = env.ipv6_subnet if env.subnet is None else env.subnet
    found = f"{pre}NETWORK={network} {pre}SUBNET={subnet} OVERLAY_MTU={env.mtu}"
    if not cluster.available:
        return CheckResult(name, WARN, f"{path} consistent with the lease", found +
                           " (not compared with the lease: etcd unreachable)")
    problems = []
    if cluster.config and network != cluster.config.network:
        problems.append(f"network {network} != config {cluster.config.network}")
    if f.own is not None:
        want = ip_interface(f"{f.own.gateway}/{f.own.subnet.prefixlen}")
        if subnet != want:
            problems.append(f"subnet {subnet} != lease {want}")
    expected = (f"{pre}SUBNET={f.own.gateway}/{f.own.subnet.prefixlen}" if f.own
                else "subnet.env matching this node's lease")
    if problems:
        return CheckResult(name, FAIL, expected, found + "; " + "; ".join(problems), fix)
    return CheckResult(name, PASS, expected, found)


def check_cni_config(node: NodeState, opts: DiagnoseOptions) -> CheckResult:
    name = "cni-config"
    d = opts.cni_conf_dir
    expected = f"a CNI config of type {PLUGIN_TYPE} first in {d}"
    fix = f"overlayctl install-cni --conf-dir {d}"
    if d == DEFAULT_CNI_CONF_DIR:  # installing there writes into the host's own runtime
        fix = _assumed("--cni-conf-dir DIR", d, "CNI config directory") + fix
    if node.cni_conf_error:
        return CheckResult(name, FAIL, expected, node.cni_conf_error, fix)
    if not node.cni_files:
        return CheckResult(name, FAIL, expected, f"no .conf/.conflist/.json file in {d}", fix)
    ours = overlay_conf(node.cni_files)
    broken = [f for f in node.cni_files if f.error]
    if ours is None:
        found = "; ".join(f"{basename(c.path)}: " + (c.error or "types " + ",".join(
            str(p.get("type")) for p in c.plugins)) for c in node.cni_files)
        return CheckResult(name, FAIL, expected, found, fix)
    first = node.cni_files[0]
    found = f"{ours.path} (network {ours.name!r})"
    if first is not ours:
        return CheckResult(name, WARN, expected,
                           f"{found}, but the runtime uses the first file {first.path}",
                           f"remove or rename {first.path} so {basename(ours.path)} sorts first")
    subnet_file = (ours.plugin(PLUGIN_TYPE) or {}).get("subnetFile")  # ours holds it
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
        if opts.cni_bin_dir == DEFAULT_CNI_BIN_DIR:  # assumed, not given
            fix = _assumed("--cni-bin-dir DIR", d, "CNI plugin directory") + fix
    else:
        fix = (f"install the reference plugin(s) {', '.join(missing)} into {d} "
               "(Debian: containernetworking-plugins); a runtime silently drops a conflist "
               "naming a missing plugin")
    return CheckResult(name, FAIL, expected, found, fix)


def check_bridge(node: NodeState, f: Facts) -> CheckResult:
    name = "bridge"
    br = f.bridge_name
    gw = (ip_interface(f"{f.own_subnet.network_address + 1}/{f.own_subnet.prefixlen}")
          if f.own_subnet else None)
    expected = f"bridge {br} up holding {gw or 'the subnet gateway .1'}"
    if node.kernel is None:
        return CheckResult(name, SKIP, expected, f"kernel state unreadable: {node.kernel_error}")
    link = f.bridge
    create = f"ip link add {br} type bridge && ip link set {br} up" + (
        f" && ip addr add {gw} dev {br}" if gw else "")
    if link is None:
        n = len(node.reservations) + len(node.reservations6)
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
    ports = len(node.kernel.ports_of(link.index))
    found = f"{br} {'up' if link.up else 'down'}, " + (
        ", ".join(map(str, addrs)) or "no address") + f", {ports} port(s)"
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


def own_ipv6_subnet(node: NodeState, f: Facts) -> IPv6Network | None:
    """This node's IPv6 subnet: its lease's IPv6 half (an IPv6-only lease's subnet), else
    subnet.env's."""
    if f.own is not None and f.own.ipv6_subnet is not None:
        return f.own.ipv6_subnet
    if f.own is not None and isinstance(f.own.subnet, IPv6Network):
        return f.own.subnet
    env = node.subnet_env
    return env.ipv6_subnet.network if env is not None and env.ipv6_subnet else None


def check_ipv6_pod_ips(node: NodeState, cluster: ClusterState, f: Facts) -> CheckResult:
    """The IPAM store's IPv6 addresses: each inside this node's IPv6 subnet (not its
    VTEP ``::`` or gateway ``::1``) and held by a pod that is there, i.e. whose host veth
    (named from its container ID and interface, as the plugin names it) is on the
    bridge; one without is leaked (a DEL that never came)."""
    name = "ipv6-pod-ips"
    res = node.reservations6
    subnet6 = own_ipv6_subnet(node, f)
    expected = (f"every IPv6 address in {node.ipam_dir or 'the CNI dataDir'} inside "
                f"{subnet6 or 'this node IPv6 subnet'} and held by a pod on {f.bridge_name}")
    if f.overlay_cni is None:
        return CheckResult(name, SKIP, expected, "no overlay CNI config to find the IPAM dir")
    wrong_range = _cni_range6_mismatch(f, subnet6)
    if wrong_range is not None:
        return CheckResult(name, FAIL, expected, wrong_range, "remove \"ipv6Subnet\" from "
                           f"{f.overlay_cni.path}: the plugin then allocates from subnet.env's "
                           "OVERLAY_IPV6_SUBNET, this node's lease")
    enabled = bool(cluster.config and cluster.config.enable_ipv6)
    if not res:
        return CheckResult(name, PASS, expected, "no IPv6 addresses reserved" + (
            "" if enabled or not cluster.available else " (IPv6 not enabled)"))
    if subnet6 is None:
        return CheckResult(name, FAIL, expected, f"{len(res)} IPv6 address(es) reserved, "
                           "but this node has no IPv6 subnet: "
                           + ", ".join(f"{r.ip} ({r.container_id[:12]})" for r in res),
                           "recreate those pods (CNI DEL, then ADD); stale file(s): "
                           + res[0].path)
    dual = not (cluster.config and not cluster.config.enable_ipv4)
    return _ipv6_ipam_result(node, f, subnet6, expected, dual)


def _cni_range6_mismatch(f: Facts, subnet6: IPv6Network | None) -> str | None:
    """What is wrong with an explicit ``ipv6Subnet`` in the CNI config (it overrides
    subnet.env, so the IPAM range would not be this node's), or None."""
    conf = f.overlay_cni.plugin(PLUGIN_TYPE) if f.overlay_cni else None
    given = (conf or {}).get("ipv6Subnet")
    if given is None or subnet6 is None:
        return None
    try:
        ok = isinstance(given, str) and IPv6Network(given, strict=False) == subnet6
    except ValueError:
        ok = False
    if ok:
        return None
    return (f"the CNI config's IPAM range is ipv6Subnet {str(given)[:60]!r}, not this "
            f"node's IPv6 subnet {subnet6}")


def _ipv6_ipam_result(node: NodeState, f: Facts, subnet6: IPv6Network, expected: str,
                      dual: bool) -> CheckResult:
    name, res = "ipv6-pod-ips", node.reservations6
    reserved = (subnet6.network_address, subnet6.network_address + 1)  # VTEP, gateway
    outside = [r for r in res if r.ip not in subnet6 or r.ip in reserved]
    ports = ({p.name for p in node.kernel.ports_of(f.bridge.index)}
             if node.kernel is not None and f.bridge is not None else None)
    leaked = [r for r in res if r not in outside and ports is not None
              and host_veth_name(r.container_id, r.ifname) not in ports]
    v4_owners = {(r.container_id, r.ifname) for r in node.reservations}
    found = f"{len(res)} IPv6 address(es)" + (f", {len(ports)} bridge port(s)"
                                               if ports is not None else "")
    problems = []
    if outside:
        problems.append(f"outside {subnet6} (or its VTEP/gateway address): " + ", ".join(
            f"{r.ip} ({r.container_id[:12]})" for r in outside))
    if leaked:
        problems.append("leaked (no pod interface on the bridge): " + ", ".join(
            f"{r.ip} (container {r.container_id[:12]}, {r.ifname}"
            + ("" if not dual or (r.container_id, r.ifname) in v4_owners
               else ", no IPv4 address")
            + ")" for r in leaked))
    if not problems:
        return CheckResult(name, PASS, expected, found)
    bad = (outside + leaked)[0]
    return CheckResult(name, FAIL, expected, found + "; " + "; ".join(problems),
                       f"let the runtime release them (CNI GC, or DEL of container "
                       f"{bad.container_id[:12]}); if no runtime knows the container, remove "
                       f"the stale file {bad.path}")


def check_local_pods(node: NodeState, f: Facts) -> CheckResult:
    """The node reaches each of its pods over the bridge (same-node traffic)."""
    name = "local-pods"
    expected = (f"each local pod (IPAM records in {node.ipam_dir or 'the CNI dataDir'}) "
                f"answers a ping from this node over {f.bridge_name}")
    if node.pod_probes is None:
        why = ("no bridge (see bridge)" if f.bridge is None else
               "no overlay CNI config to find the IPAM dir" if f.overlay_cni is None else
               "not run (--no-probe)")
        return CheckResult(name, SKIP, expected, why)
    if not node.pod_probes:
        return CheckResult(name, PASS, expected, "no local pods")
    silent = [p for p in node.pod_probes if p.received == 0]
    if not silent:
        return CheckResult(name, PASS, expected,
                           f"{len(node.pod_probes)} pod(s) answered over {f.bridge_name}")
    found = "; ".join(f"{p.ip} (container {p.container_id[:12]}, {p.ifname}): "
                      + (p.error or f"0/{p.sent} replies") for p in silent)
    return CheckResult(name, FAIL, expected, f"{len(silent)} of {len(node.pod_probes)} "
                       f"pod(s) silent: {found}",
                       f"check each silent pod's veth is up at both ends (ip link show master "
                       f"{f.bridge_name}) and holds its IP inside the pod; else recreate the "
                       "pod (CNI DEL, then ADD)")


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
    local = v.local6 or v.local
    addrs = node.kernel.addrs_of(link.index)
    found = (f"{dev} {'up' if link.up else 'down'} VNI {v.vni} port {v.port} local {local} "
             f"learning {'on' if v.learning else 'off'} addr "
             + (", ".join(map(str, addrs)) or "none"))
    problems = []
    if cfg and (v.vni != cfg.backend.vni or v.port != cfg.backend.port):
        problems.append("VNI/port differ from the config")
    if f.public_ip and local != f.public_ip:
        problems.append(f"local is not {f.public_ip}")
    if v.learning:
        problems.append("learning on")
    if f.own_subnet and ip_interface(f"{f.own_subnet.network_address}/"
                                     f"{f.own_subnet.max_prefixlen}") not in addrs:
        problems.append("address missing")
    if not link.up:
        fix = f"ip link set {dev} up" if not problems else restart
        problems.append("down")
        return CheckResult(name, FAIL, expected, found + "; " + "; ".join(problems), fix)
    if problems:
        return CheckResult(name, FAIL, expected, found + "; " + "; ".join(problems), restart)
    if not cfg:
        return CheckResult(name, WARN, expected,
                           found + " (VNI/port not compared: etcd unreachable)")
    return CheckResult(name, PASS, expected, found)


def _stale_candidate(f: Facts, net: IPv4Network | IPv6Network) -> bool:
    """A route inside the pod network that is neither this node's subnet nor the kernel's
    host route of the device's own address (IPv6 gives its ``::/128`` one)."""
    if f.network is None or net.version != f.network.version:
        return False
    own = f.own_subnet
    if own is not None and (net == own or (net.prefixlen == net.max_prefixlen
                                           and net.network_address == own.network_address)):
        return False
    return net.subnet_of(f.network)  # type: ignore[arg-type]  # same family: checked


def check_routes(node: NodeState, cluster: ClusterState, f: Facts) -> CheckResult:
    name = "routes"
    dev = f.vxlan_name
    expected = (f"a route for each of {len(f.remotes)} peer subnet(s) via its {_vtep(f)} "
                f"dev {dev} onlink")
    if f.direct:
        expected += f" ({len(f.direct)} DirectRouting peer(s): via their public IP)"
    if not cluster.available:
        return CheckResult(name, SKIP, expected, ETCD_SKIP)
    if node.kernel is None:
        return CheckResult(name, SKIP, expected, f"kernel state unreadable: {node.kernel_error}")
    k = node.kernel
    vx = f.vxlan.index if f.vxlan else None
    by_dst: dict[IPv4Network | IPv6Network, list[RouteInfo]] = {}
    for r in k.routes:
        by_dst.setdefault(r.dst, []).append(r)
    missing: list[Route] = []
    wrong: list[tuple[Route, RouteInfo]] = []
    want = f.wanted(Route)
    taken = _route_conflicts(k, f)  # the route-conflicts check's: not "ip route replace"
    for want_route in (r for s, r in want if s not in taken):
        routes = by_dst.get(want_route.dst, [])
        if any(_is(want_route, r, vx) for r in routes):
            continue
        if not routes:
            missing.append(want_route)
        else:
            wrong.append((want_route, routes[0]))
    leased = {lease.subnet for lease in cluster.leases}
    stale = [r for r in k.routes if _stale_candidate(f, r.dst) and r.dst not in leased
             and r.oif is not None and r.oif == vx]

    def add(r: Route) -> str:  # proto 111: overlayd's own, which it may replace and remove
        if r.direct:
            return f"ip route replace {r.dst} via {r.gateway} proto 111"
        return f"ip route replace {r.dst} via {r.gateway} dev {dev} onlink proto 111"

    return _entry_result(name, expected, len(want), [
        ("missing", [str(r.dst) for r in missing], [add(r) for r in missing]),
        ("wrong", [f"{w.dst} via {r.gateway} dev {k.name_of(r.oif)}" for w, r in wrong],
         [add(w) for w, _ in wrong]),
        ("stale (no lease)", [f"{r.dst} via {r.gateway} dev {k.name_of(r.oif)}" for r in stale],
         [f"ip route del {r.dst} dev {k.name_of(r.oif)}" for r in stale]),
    ])


def _is(want: Route, r: RouteInfo, vx: int | None) -> bool:
    """Whether the kernel's route ``r`` is the route overlayd programs for ``want``."""
    if want.direct:
        return r.gateway == want.gateway
    return r.oif == vx and r.gateway == want.gateway and r.onlink


def _route_conflicts(k: KernelState, f: Facts
                     ) -> dict[IPv4Network | IPv6Network, list[RouteInfo]]:
    """Peer subnets that a main-table route of another protocol holds: overlayd leaves
    those peers unprogrammed rather than replace (or shadow) that route."""
    want = {s for s, _ in f.wanted(Route)}
    out: dict[IPv4Network | IPv6Network, list[RouteInfo]] = {}
    for r in (*k.routes, *k.typed_routes):
        if r.dst in want and not _ours(r):
            out.setdefault(r.dst, []).append(r)
    return out


def _ours(r: RouteInfo) -> bool:
    """``Route.ours``, for either family's record (an IPv6-only node's are ``Route6``s,
    which have the same fields but not the property)."""
    return r.protocol is None or r.protocol == RTPROT_OVERLAY


def _unblocked(k: KernelState, f: Facts, kind: type[E]
               ) -> list[tuple[IPv4Network | IPv6Network, E]]:
    """The expected entries of one kind, with their remote, but a conflicting remote's:
    overlayd gives that one no neigh or FDB entry."""
    taken = _route_conflicts(k, f)
    return [(s, e) for s, e in f.wanted(kind) if s not in taken]


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
    peers = {peer.subnet: peer for peer in f.remotes}
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
    expected = (f"FDB entry VTEP MAC -> public IP on {dev} "
                f"for each of {len(f.vxlan_remotes)} peer(s)")
    skip = _need_vxlan(node, cluster, f, expected, name)
    if skip:
        return skip
    assert node.kernel is not None and f.vxlan is not None, "_need_vxlan checked both"
    entries = [e for e in node.kernel.fdb_on(f.vxlan.index) if e.dst is not None]
    by_mac: dict[str, list[FDBInfo]] = {}
    for entry in entries:
        if entry.mac is not None:  # an FDB entry always has one; the record type allows None
            by_mac.setdefault(entry.mac, []).append(entry)
    missing: list[tuple[IPv4Network | IPv6Network, FDB]] = []
    wrong: list[tuple[IPv4Network | IPv6Network, FDB, list[FDBInfo]]] = []
    want_macs = set()
    for subnet, e in _unblocked(node.kernel, f, FDB):
        want_macs.add(e.mac)
        have = by_mac.get(e.mac, [])
        if any(x.dst == e.dst for x in have):
            continue
        if have:
            wrong.append((subnet, e, have))
        else:
            missing.append((subnet, e))
    stale = [x for x in entries if x.mac not in want_macs]
    extra = [x for _, e, have in wrong for x in have if x.dst != e.dst]
    add = f"bridge fdb replace {{mac}} dev {dev} dst {{ip}} self permanent"
    return _entry_result(name, expected, len(f.vxlan_remotes), [
        ("missing", [f"{e.mac} -> {e.dst} ({s})" for s, e in missing],
         [add.format(mac=e.mac, ip=e.dst) for _, e in missing]),
        ("wrong", [f"{e.mac} -> {', '.join(str(x.dst) for x in h)} (lease says {e.dst})"
                   for _, e, h in wrong],
         [f"bridge fdb del {x.mac} dev {dev} dst {x.dst} self" for x in extra] +
         [add.format(mac=e.mac, ip=e.dst) for _, e, _ in wrong]),
        ("stale (no lease)", [f"{x.mac} -> {x.dst}" for x in stale],
         [f"bridge fdb del {x.mac} dev {dev} dst {x.dst} self" for x in stale]),
    ])


def check_neigh(node: NodeState, cluster: ClusterState, f: Facts) -> CheckResult:
    name = "neigh"
    dev = f.vxlan_name
    expected = (f"permanent neighbour {_vtep(f)} -> VTEP MAC on {dev} "
                f"for each of {len(f.vxlan_remotes)} peer(s)")
    skip = _need_vxlan(node, cluster, f, expected, name)
    if skip:
        return skip
    assert node.kernel is not None and f.vxlan is not None, "_need_vxlan checked both"
    entries = {n.dst: n for n in node.kernel.neigh_on(f.vxlan.index)}
    missing: list[Neigh] = []
    wrong: list[tuple[Neigh, NeighInfo]] = []
    want = set()
    for _, e in _unblocked(node.kernel, f, Neigh):
        want.add(e.ip)
        n = entries.get(e.ip)
        if n is None or n.mac is None:
            missing.append(e)
        elif n.mac != e.mac or not n.permanent:
            wrong.append((e, n))
    stale = [n for n in entries.values() if n.dst not in want and n.permanent]
    add = f"ip neigh replace {{ip}} lladdr {{mac}} dev {dev} nud permanent"
    return _entry_result(name, expected, len(f.vxlan_remotes), [
        ("missing", [f"{e.ip} -> {e.mac}" for e in missing],
         [add.format(ip=e.ip, mac=e.mac) for e in missing]),
        ("wrong", [f"{n.dst} -> {n.mac}{'' if n.permanent else ' (not permanent)'} (lease says "
                   f"{e.mac})" for e, n in wrong],
         [add.format(ip=e.ip, mac=e.mac) for e, _ in wrong]),
        ("stale (no lease)", [f"{n.dst} -> {n.mac}" for n in stale],
         [f"ip neigh del {n.dst} dev {dev}" for n in stale]),
    ])


def _need_vxlan(node: NodeState, cluster: ClusterState, f: Facts, expected: str,
                name: str) -> CheckResult | None:
    """The result of an entry check that cannot run (no etcd, no kernel state, no device)."""
    if not cluster.available:
        return CheckResult(name, SKIP, expected, ETCD_SKIP)
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


def check_ip_forward(node: NodeState, ipv6: bool = False) -> CheckResult:
    """Forwarding of the pods' family: an IPv6-only node forwards IPv6 only."""
    key, value = (("net.ipv6.conf.all.forwarding", node.ip6_forward) if ipv6
                  else ("net.ipv4.ip_forward", node.ip_forward))
    expected = f"{key} = 1"
    if value is None:
        return CheckResult("ip-forward", SKIP, expected,
                           f"/proc/sys/{key.replace('.', '/')} unreadable")
    if value == "1":
        return CheckResult("ip-forward", PASS, expected, "1")
    return CheckResult("ip-forward", FAIL, expected, value,
                       f"sysctl -w {key}=1 (and persist it in /etc/sysctl.d)")


def check_firewall(node: NodeState, cluster: ClusterState) -> CheckResult:
    port = cluster.config.backend.port if cluster.config else 8472
    fw = node.firewall
    over = " over IPv6" if ipv6_only(node, cluster) else ""
    expected = f"no firewall rule dropping UDP {port} (VXLAN){over}"
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
    pod_mtu = expected_pod_mtu(node, cluster, f)
    outer = (f"Backend.MTU {cluster.config.backend.mtu}" if cluster.config and
             cluster.config.backend.mtu else "")
    under = f"underlay {f.underlay.name} {f.underlay.mtu}" if f.underlay else "underlay ?"
    expected = (f"{f.vxlan_name} MTU {want} ((" + (f"{outer}, at most {under}" if outer
                else under) + f") - {overhead(f)}); OVERLAY_MTU {pod_mtu}"
                + (" (the smaller of both families')" if pod_mtu != want else "")
                + "; bridge and pods <= it")
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
        target = pod_mtu if pod_mtu is not None else dev_mtu
        if env.mtu != target:
            problems.append(f"OVERLAY_MTU {env.mtu} != {target}")
            fix = fix or "restart overlayd on this node so it rewrites subnet.env"
    if f.bridge is not None:
        ports = node.kernel.ports_of(f.bridge.index)
        found.append(f"{f.bridge_name} {f.bridge.mtu}")
        limit = pod_mtu if pod_mtu is not None else dev_mtu
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
        ours = {link.index for link in (f.vxlan, f.bridge) if link is not None}
        ours |= {link.index for link in node.kernel.links
                 if f.bridge and link.master == f.bridge.index}
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
                           "(overlayctl config set --network CIDR) "
                           "or renumber the node/service range")
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
    env = node.subnet_env
    env_net = None if env is None else env.ipv6_network if env.subnet is None else env.network
    if env is not None and env_net != cfg.network:
        differs.append(f"subnet.env network {env_net} != {cfg.network}")
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


def check_peer_vteps(node: NodeState, cluster: ClusterState, f: Facts) -> CheckResult:
    """Every peer's VTEP over the overlay (cross-node traffic), all peers at once."""
    name = "peer-vteps"
    vtep = _vtep(f)
    headers = 48 if family(f) == 6 else 28  # IP + ICMP headers: IPv6 40 + 8, IPv4 20 + 8
    expected = (f"each of {len(f.programmed)} peer VTEP(s) (its subnet's {vtep}) answers a DF "
                f"ping of the overlay MTU across {f.vxlan_name}")
    cfg = cluster.config
    if not cluster.available or cfg is None:
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
            why += (f", but {p.small_received} small ping(s) answered: path MTU below "
                    f"{p.size + headers}")
        parts.append(f"{p.subnet} ({p.target}): {why}")
    if any("unreachable" in p.error.lower() for p in down):
        fix = ("this node has no route to the peer's VXLAN address: fix the routes check, "
               "or restart overlayd")
    elif len(mtu_only) == len(down):
        fix = ("set Backend.MTU in the network config (the outer MTU) to the underlay's "
               "path MTU, or raise the underlay MTU on the path")
    else:
        fix = (f"check overlayd and the firewall (UDP {cfg.backend.port}) on the "
               "unreachable peer(s), and the underlay route to their public IP")
    return CheckResult(name, FAIL, expected, "; ".join(parts), fix)


def check_ipv6_data_plane(node: NodeState, cluster: ClusterState, f: Facts) -> CheckResult:
    """The IPv6 device (MTU = the outer MTU - 70) and exactly the entries overlayd's rule
    gives the IPv6 halves of the accepted remote leases (``vxlan.dualstack.v6_half``)."""
    name = "ipv6-data-plane"
    cfg = cluster.config
    if not cluster.available or cfg is None:
        return CheckResult(name, SKIP, "the IPv6 VXLAN device", ETCD_SKIP)
    dev = f"overlay-v6.{cfg.backend.vni}"
    halves = [h for h in map(v6_half, f.remotes) if h is not None]
    expected = (f"{dev} at the outer MTU (Backend.MTU, at most the IPv6 underlay's) - "
                f"{VXLAN_OVERHEAD_V6}, with the entries of "
                f"{len(halves)} peer(s)' IPv6 halves")
    if not cfg.enable_ipv6:  # nothing is wrong: there is no IPv6 data plane to have
        return CheckResult(name, PASS, "no IPv6 device (the network config does not enable "
                           "IPv6)", "IPv6 not enabled")
    if node.ipv6_device_error:
        return CheckResult(name, SKIP, expected, f"unreadable: {node.ipv6_device_error}")
    d = node.ipv6_device
    if f.own is not None and f.own.attrs.public_ipv6 is None:
        return CheckResult(name, WARN, expected, "this node's lease has no IPv6 half (no "
                           "PublicIPv6): IPv6 is off here, overlayd's log says why",
                           "give the underlay a global IPv6 address (or --public-ipv6) and "
                           "restart overlayd")
    if d is None or d.local is None or d.local.version != 6:
        return CheckResult(name, FAIL, expected, f"no IPv6 VXLAN device {dev}",
                           "restart overlayd on this node (it recreates the device)")
    want_mtu = expected_mtu6(cluster, node)
    if want_mtu is not None and d.mtu != want_mtu:
        return CheckResult(name, FAIL, expected, f"{dev} MTU {d.mtu}, want {want_mtu}",
                           f"ip link set {dev} mtu {want_mtu}; or restart overlayd")
    settings = BackendSettings(cfg.backend.vni, d.local, d.underlay_address
                               or IPv6Interface(d.local), cfg.backend.direct_routing)
    want = Entries()
    for h in halves:
        for e in entries_for(h, settings):
            want.add(e)
    missing = [e for e in want.all() if e not in d.entries]
    stale = [e for e in d.entries.all() if e not in want]
    res = _entry_result(name, expected, len(halves), [
        ("missing", [describe(e) for e in missing], ["restart overlayd"] if missing else []),
        ("stale (no lease)", [describe(e) for e in stale],
         ["restart overlayd"] if stale else []),
    ])
    return res if res.status != PASS else _ipv6_probes(node, res)


def _ipv6_probes(node: NodeState, entries_ok: CheckResult) -> CheckResult:
    """The entries are right: what the DF probes of the peers' IPv6 VTEPs say."""
    probes = node.probes6
    if not probes:
        return entries_ok
    down = [p for p in probes if p.received == 0]
    if not down:
        return replace(entries_ok, found=f"{entries_ok.found}; {len(probes)} peer(s) answered "
                       f"{probes[0].size}-byte DF pings over IPv6")
    mtu = [p for p in down if p.small_received]
    found = "; ".join(
        [f"{p.target} ({p.subnet}) answers only small pings: the IPv6 path MTU is below "
         f"{p.size + 48}" for p in mtu]
        + [f"{p.target} ({p.subnet}) does not answer{f': {p.error}' if p.error else ''}"
           for p in down if not p.small_received])
    fix = ("set Backend.MTU (the outer MTU) to the IPv6 underlay's path MTU (or the "
           "underlay's MTU mismatches between nodes)" if mtu else
           "check the peer's overlayd and that UDP 8472 over IPv6 is not dropped (ip6tables/nft)")
    return replace(entries_ok, status=FAIL, found=found, fix=fix)


def _subnet_file_assumed(f: Facts, opts: DiagnoseOptions) -> bool:
    plugin = (f.overlay_cni.plugin(PLUGIN_TYPE) if f.overlay_cni else None) or {}
    return opts.subnet_file is None and not plugin.get("subnetFile")


def run_checks(node: NodeState, cluster: ClusterState, opts: DiagnoseOptions,
               endpoints: str = "", facts: Facts | None = None) -> Report:
    """Every check; ``facts``: derived from this very state already (else derived here).

    On an IPv6-only network (EnableIPv4 false) the same checklist runs over the IPv6 data
    plane: ``node.kernel`` is then the IPv6 side (``gather`` reads it), the device is
    overlay-v6.<VNI>, forwarding is IPv6's, and the pods' addresses are the IPAM store's
    IPv6 ones; there is no IPv4 pod range (no pod-ips) and no second device to check
    apart (no ipv6-data-plane)."""
    f = facts or derive_facts(node, cluster, opts)
    v6only = ipv6_only(node, cluster)
    checks = [
        check_etcd(cluster, endpoints),
        check_lease(cluster, f),
        check_rejected_leases(cluster, f, endpoints),
        check_daemon(node, opts),
        check_subnet_env(node, cluster, f, node.subnet_file, _subnet_file_assumed(f, opts)),
        check_cni_config(node, opts),
        check_cni_binary(node, f, opts),
        check_bridge(node, f),
        *(() if v6only else (check_pod_ips(node, f),)),
        check_ipv6_pod_ips(node, cluster, f),
        check_local_pods(node, f),
        check_vxlan_device(node, cluster, f),
        check_routes(node, cluster, f),
        check_route_conflicts(node, cluster, f),
        check_fdb(node, cluster, f),
        check_neigh(node, cluster, f),
        check_ip_forward(node, ipv6=v6only),
        check_firewall(node, cluster),
        check_mtu(node, cluster, f),
        check_cidr_overlap(node, f, opts),
        check_config_current(node, cluster, f),
        check_peer_vteps(node, cluster, f),
        *(() if v6only else (check_ipv6_data_plane(node, cluster, f),)),
    ]
    return Report(checks, f)
