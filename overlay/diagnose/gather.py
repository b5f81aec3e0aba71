"""``overlayctl diagnose``'s I/O: everything the checks look at, read once.

The node's kernel state (``overlay.netlink.kernel_state``), sysctls, subnet.env, CNI config
and binaries, IPAM reservation files, firewall rules (``nft``, ``iptables-save``),
/readyz and /metrics, overlayd processes, the leases and config in etcd, and an active
probe of every peer land in one ``NodeState`` / ``ClusterState``
(``overlay.diagnose.state``); ``diagnose`` then runs the pure checks of
``overlay.diagnose.checks`` over them.
"""

from __future__ import annotations

import logging
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address, IPv6Network
from typing import TypeVar

from overlay.cni.conflist import ConfListError, conf_files, load_conflist
from overlay.cni.ipam import DiskStore
from overlay.cni.netconf import DEFAULT_DATA_DIR
from overlay.config import NetworkConfig
from overlay.diagnose.checks import derive_facts, ipv6_only, run_checks
from overlay.diagnose.cluster_checks import PodsState, run_cluster_checks
from overlay.diagnose.firewall import read_firewall
from overlay.diagnose.policy_table import check_policy_table
from overlay.diagnose.probe import Echo, echo_many, echo_many6
from overlay.diagnose.state import (
    PLUGIN_TYPE,
    ClusterState,
    CNIConfigFile,
    DiagnoseOptions,
    NodeState,
    PodProbe,
    Probe6Result,
    ProbeResult,
    Report,
    Reservation,
    Reservation6,
    overlay_conf,
)
from overlay.errors import OverlayError, SubnetEnvError
from overlay.lease import Lease
from overlay.subnet.etcdconf import EtcdOptions
from overlay.subnetenv import DEFAULT_SUBNET_FILE, SubnetEnv, parse_subnet_env, read_subnet_text
from overlay.util.proc import run_quiet
from overlay.vxlan.entries import DeviceView, v6_half

log = logging.getLogger(__name__)


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


def read_reservations(data_dir: str, network: str
                      ) -> tuple[list[Reservation], list[Reservation6]]:
    """The CNI IPAM store's reservations (``overlay.cni.ipam``), IPv4 and IPv6 apart, by
    address; none when the store cannot be read."""
    store = DiskStore(data_dir, network)
    try:
        held = store.reservations()
    except (OverlayError, OSError) as e:
        log.info("IPAM store %s unreadable: %s", store.dir, e)
        return [], []
    v4, v6 = [], []
    for ip, (cid, ifname) in sorted(held.items(), key=lambda item: (item[0].version,
                                                                    item[0])):
        path = os.path.join(store.dir, str(ip))
        if isinstance(ip, IPv4Address):
            v4.append(Reservation(ip, cid, ifname, path))
        else:
            v6.append(Reservation6(ip, cid, ifname, path))
    return v4, v6


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


def ping(target: IPv4Address | IPv6Address, size: int, count: int, timeout: float
         ) -> tuple[int, int, str]:
    """(sent, received, error) for ``count`` DF pings of ``size`` payload bytes."""
    argv = ["ping", "-n", "-q", "-M", "do", "-s", str(size), "-c", str(count),
            "-i", "0.2", "-W", str(max(1, int(round(timeout)))), str(target)]
    rc, out, err = run_quiet(argv, timeout=count * 0.2 + timeout + 3)
    m = _PING_RE.search(out)
    if m:
        return int(m.group(1)), int(m.group(2)), ""
    return count, 0, (err or out.strip() or f"ping exited {rc}").splitlines()[-1]


Echoer = Callable[[Sequence[IPv4Address], int, int, float], "dict[IPv4Address, Echo]"]
Echoer6 = Callable[[Sequence[IPv6Address], int, int, float], "dict[IPv6Address, Echo]"]
A = TypeVar("A", IPv4Address, IPv6Address)


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
        return dict(zip(targets, pool.map(one, targets), strict=True))


def echo_peers6(targets: Sequence[IPv6Address], size: int, count: int, timeout: float
                ) -> dict[IPv6Address, Echo]:
    """``echo_peers`` over ICMPv6 (iputils' ``ping`` takes either family)."""
    try:
        return echo_many6(targets, size, count, timeout)
    except PermissionError:
        log.info("no raw ICMPv6 socket (not root?): probing with one ping per peer")

    def one(t: IPv6Address) -> Echo:
        return Echo(*ping(t, size, count, timeout))

    with ThreadPoolExecutor(max_workers=min(16, len(targets))) as pool:
        return dict(zip(targets, pool.map(one, targets), strict=True))


def probe_peers(remotes: Sequence[Lease], mtu: int, count: int, timeout: float,
                echo: Echoer = echo_peers, echo6: Echoer6 = echo_peers6) -> list[ProbeResult]:
    """Ping every peer's .0 (its VXLAN address) with DF at the full path MTU, all at once;
    peers that do not answer get one small ping, which tells a path-MTU problem apart.
    An IPv6-only network's peers (IPv6 leases) are pinged at their ``::`` over ICMPv6;
    a dual-stack node's IPv6 halves are ``probe_peers6``'s."""
    v6 = bool(remotes) and all(peer.subnet.version == 6 for peer in remotes)
    if v6:
        six = [IPv6Address(peer.subnet.network_address) for peer in remotes]
        return _probe(remotes, six, mtu - 48, count, timeout, echo6)  # IPv6 40 + ICMPv6 8
    remotes = [peer for peer in remotes if peer.subnet.version == 4]
    four = [IPv4Address(peer.subnet.network_address) for peer in remotes]
    return _probe(remotes, four, mtu - 28, count, timeout, echo)  # IPv4 20 + ICMP 8


def _probe(remotes: Sequence[Lease], targets: Sequence[A], size: int, count: int,
           timeout: float, echo: Callable[[Sequence[A], int, int, float], dict[A, Echo]]
           ) -> list[ProbeResult]:
    if not targets:
        return []
    full = echo(targets, size, count, timeout)
    silent = [t for t in targets if full[t].received == 0]
    small = echo(silent, 56, 1, timeout) if silent else {}
    return [ProbeResult(peer.subnet, t, size, full[t].sent, full[t].received,
                        small[t].received if t in small else None, full[t].error)
            for peer, t in zip(remotes, targets, strict=True)]


def probe_peers6(remotes: Sequence[Lease], device: DeviceView, count: int, timeout: float,
                 echo: Echoer6 = echo_peers6) -> list[Probe6Result]:
    """``probe_peers`` over IPv6: every peer whose IPv6 VTEP neighbour is on the device,
    with DF at the IPv6 device's MTU (IPv6 40 + ICMPv6 8 bytes of headers)."""
    halves = [h for h in map(v6_half, remotes) if h is not None
              and h.subnet.network_address in device.entries.neighs]
    if not halves:
        return []
    size = device.mtu - 48
    targets = [IPv6Address(h.subnet.network_address) for h in halves]
    full = echo(targets, size, count, timeout)
    silent = [t for t in targets if full[t].received == 0]
    small = echo(silent, 56, 1, timeout) if silent else {}
    return [Probe6Result(IPv6Network(h.subnet), t, size, full[t].sent, full[t].received,
                         small[t].received if t in small else None, full[t].error)
            for h, t in zip(halves, targets, strict=True)]


POD_PROBE_SIZE = 56  # ping's default payload: reachability, not the MTU (the mtu check)


def probe_local_pods(reservations: Sequence[Reservation], count: int, timeout: float,
                     echo: Echoer = echo_peers) -> list[PodProbe]:
    """Ping every local pod (host-local's IPAM records) from the node, all at once: the
    checklist's "can the node reach its pods" over the bridge, with no pod's help."""
    if not reservations:
        return []
    got = echo([r.ip for r in reservations], POD_PROBE_SIZE, count, timeout)
    return [PodProbe(r.ip, r.container_id, r.ifname, got[r.ip].sent, got[r.ip].received,
                     got[r.ip].error) for r in reservations]


def probe_local_pods6(reservations: Sequence[Reservation6], count: int, timeout: float,
                      echo: Echoer6 = echo_peers6) -> list[PodProbe]:
    """``probe_local_pods`` over ICMPv6: an IPv6-only node's pods hold IPv6 addresses only."""
    if not reservations:
        return []
    got = echo([r.ip for r in reservations], POD_PROBE_SIZE, count, timeout)
    return [PodProbe(r.ip, r.container_id, r.ifname, got[r.ip].sent, got[r.ip].received,
                     got[r.ip].error) for r in reservations]


LocalIPs = Iterable[IPv4Address | IPv6Address]


def gather_cluster(opts: EtcdOptions,
                   local_ips: LocalIPs | Callable[[NetworkConfig], LocalIPs] = (),
                   timeout: float = 3.0) -> ClusterState:
    """The config and leases from etcd; on failure an empty state naming the error.

    Only the leases of ``local_ips`` (this node's) get their expiry read: that is one
    request per lease, which a listing of a thousand peers should not pay.  Given as a
    function, it is asked once the config is read (which family's addresses are ours).
    """
    from overlay.subnet.registry import EtcdRegistry

    try:
        with EtcdRegistry(replace(opts, timeout=min(opts.timeout, timeout))) as reg:
            config = reg.get_config()
            mine = set(local_ips(config) if callable(local_ips) else local_ips)
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


def read_subnet_env(path: str) -> SubnetEnv:
    """subnet.env for diagnose: like load_subnet_env, but its "file missing" text does not
    send the reader to `overlayctl diagnose`, which is what is printing it."""
    text = read_subnet_text(path, missing="overlayd writes it once it holds a subnet lease")
    return parse_subnet_env(text, source=path)


def gather_node(opts: DiagnoseOptions) -> NodeState:
    """Everything local but the firewall: kernel, sysctl, subnet.env, CNI files, IPAM, readyz."""
    from overlay.netlink.kernel_state import dump_kernel_state

    node = NodeState()
    try:
        node.kernel = dump_kernel_state()
    except OverlayError as e:
        node.kernel_error = str(e)
    node.ip_forward = read_sysctl("/proc/sys/net/ipv4/ip_forward")
    node.ip6_forward = read_sysctl("/proc/sys/net/ipv6/conf/all/forwarding")
    node.cni_files, node.cni_conf_error = read_cni_conf_dir(opts.cni_conf_dir)
    ours = overlay_conf(node.cni_files)
    plugin = (ours.plugin(PLUGIN_TYPE) if ours else None) or {}
    node.subnet_file = opts.subnet_file or str(plugin.get("subnetFile") or DEFAULT_SUBNET_FILE)
    try:
        node.subnet_env = read_subnet_env(node.subnet_file)
    except SubnetEnvError as e:
        node.subnet_env_error = str(e)
    types = [str(p.get("type")) for p in ours.plugins] if ours else [PLUGIN_TYPE]
    node.cni_bins = read_cni_bins(opts.cni_bin_dir, types)
    if ours is not None:
        data_dir = str(plugin.get("dataDir") or DEFAULT_DATA_DIR)
        node.cni_data_dir = data_dir
        node.ipam_dir = os.path.join(data_dir, ours.name)
        node.reservations, node.reservations6 = read_reservations(data_dir, ours.name)
    if opts.healthz_addr:
        node.readyz = read_readyz(opts.healthz_addr)
        node.config_changed = read_config_changed(opts.healthz_addr)
    else:
        node.daemon_pids = find_daemons()
    return node


def read_ipv6_device(node: NodeState, name: str) -> None:
    from overlay.vxlan.device import read_device
    try:
        node.ipv6_device = read_device(name)
    except OverlayError as e:
        node.ipv6_device_error = str(e)


def read_ipv6_kernel(node: NodeState) -> None:
    """An IPv6-only node's kernel state: its IPv6 addresses, routes and neighbours (the
    checks read ``node.kernel`` whichever family the network is)."""
    from overlay.netlink.kernel_state import read_ipv6_state

    try:
        node.kernel, node.kernel_error = read_ipv6_state(), ""
    except OverlayError as e:
        node.kernel, node.kernel_error = None, str(e)


def node_addresses(node: NodeState, opts: DiagnoseOptions, config: NetworkConfig
                   ) -> set[IPv4Address | IPv6Address]:
    """This node's addresses, once the config says which family is the network's: on an
    IPv6-only network the kernel state is re-read as the IPv6 side first."""
    if config.ipv6_only:
        read_ipv6_kernel(node)
    out: set[IPv4Address | IPv6Address] = (
        {a.interface.ip for a in node.kernel.addrs} if node.kernel else set())
    if opts.public_ip and not config.ipv6_only:
        out.add(opts.public_ip)
    return out


def diagnose(opts: DiagnoseOptions, etcd: EtcdOptions) -> Report:
    """Gather everything, probe the peers, run every check."""
    node = gather_node(opts)
    cluster = gather_cluster(etcd, lambda config: node_addresses(node, opts, config))
    cfg = cluster.config
    v6only = ipv6_only(node, cluster)
    if cfg is None and v6only:  # etcd unreadable: subnet.env says the network is IPv6-only
        read_ipv6_kernel(node)
    node.firewall = read_firewall(cfg.backend.port if cfg else 8472,
                                  v6only or bool(cfg and cfg.enable_ipv6), ipv4=not v6only)
    if cfg is not None and cfg.dual_stack:  # IPv6-only: overlay-v6 is node.kernel's device
        read_ipv6_device(node, f"overlay-v6.{cfg.backend.vni}")
    f = derive_facts(node, cluster, opts)  # the probes below do not change what it reads
    if opts.probe and f.bridge is not None and f.overlay_cni is not None:
        # IPs outside this node's subnet are pod-ips' finding, not routed over the bridge
        if v6only:
            pods6 = [r for r in node.reservations6 if f.own_subnet is None
                     or r.ip in f.own_subnet]
            node.pod_probes = probe_local_pods6(pods6, opts.probe_count, opts.probe_timeout)
        else:
            pods = [r for r in node.reservations if f.own_subnet is None
                    or r.ip in f.own_subnet]
            node.pod_probes = probe_local_pods(pods, opts.probe_count, opts.probe_timeout)
    if opts.probe and cluster.available and f.vxlan is not None:
        # Only peers overlayd programs: one it skips (no VTEP MAC, off our L2) has no route.
        node.probes = probe_peers(f.programmed, f.vxlan.mtu, opts.probe_count,
                                  opts.probe_timeout)
    if opts.probe and cluster.available and node.ipv6_device is not None and \
            not v6only:  # IPv6-only: its one device's, probed above
        node.probes6 = probe_peers6(f.remotes, node.ipv6_device, opts.probe_count,
                                    opts.probe_timeout)
    report = run_checks(node, cluster, opts, etcd.describe(), f)
    report.checks.extend(run_cluster_checks(read_pods(etcd, cluster), etcd.describe()))
    # the node's lease subnet: IPv4, or IPv6 in an IPv6-only network (its pods are
    # local by it, as overlayd's agent finds them)
    report.checks.append(check_policy_table(
        etcd, cluster, f.own_subnet, opts.node_name, opts.policy_log_denied,
        data_dir=node.cni_data_dir, own_ipv6=f.own.ipv6_subnet if f.own else None))
    return report


def read_pods(opts: EtcdOptions, cluster: ClusterState, timeout: float = 3.0) -> PodsState:
    """The pod registry, judged against the leases ``cluster`` holds and the node records."""
    if not cluster.available:
        return PodsState(error=cluster.error or "no network config")
    from overlay.cluster.keys import pods_prefix
    from overlay.cluster.nodestore import read_nodes
    from overlay.cluster.pods import judge_pods, list_pod_kvs, rules_with_nodes
    from overlay.cluster.store import ObjectStore
    from overlay.policy.objects import list_namespaces, list_policies
    from overlay.subnet.registry import EtcdRegistry
    try:
        with EtcdRegistry(replace(opts, timeout=min(opts.timeout, timeout))) as reg:
            store = ObjectStore(reg)
            kvs, _ = list_pod_kvs(store)
            nodes = read_nodes(store, {lease.subnet: lease for lease in cluster.leases})
            bad_objects = [(r.key, r.reason) for r in (*list_policies(store)[1],
                                                       *list_namespaces(store)[1])]
    except OverlayError as e:
        return PodsState(error=str(e))
    rules = rules_with_nodes(cluster.config, cluster.leases,
                             (st.record for st in nodes.statuses))
    records, rejected = judge_pods(kvs, pods_prefix(store.prefix), rules)
    bad_objects += [(r.key, f"{r.reason} ({r.detail})") for r in nodes.rejected]
    return PodsState(records, rejected, rejected_objects=bad_objects)

