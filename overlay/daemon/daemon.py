"""overlayd: the per-node daemon (lease, VXLAN device, remote entries, masquerade, health).

Startup (nothing in the kernel changes before the flags and the network config passed
validation)::

    flags -> etcd: network config -> underlay, VTEP MAC -> VXLAN device
      -> lease (acquire) -> device address, subnet.env, masquerade
      -> threads: watch (list -> reconcile -> events), keepalive, reconcile loop,
         link monitor, HTTP (/healthz /readyz /metrics), warm CNI server

SIGTERM/SIGINT stop the threads and leave everything in place (device, entries,
lease, subnet.env), so a restart does not disturb pods.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any, Callable, Sequence

from overlay.config import VXLAN_OVERHEAD, NetworkConfig, parse_bool, parse_network_config
from overlay.daemon.http import HealthServer, Metrics, parse_hostport
from overlay.daemon.watchhealth import DEFAULT_MAX_LAG, WatchHealth
from overlay.errors import (
    ConfigError,
    ConfigNotFound,
    LeaseConflict,
    LeaseExists,
    LeaseNotFound,
    OverlayError,
    RegistryError,
    SubnetEnvError,
)
from overlay.lease import Lease, LeaseAttrs, LeaseBatch, Rejection, printable_key
from overlay.masq.nft import Masquerade
from overlay.netlink.addr import dump as dump_addrs
from overlay.netlink.link import dump as dump_links
from overlay.subnet.etcdconf import (
    DEFAULT_ENDPOINTS,
    DEFAULT_PREFIX,
    EtcdOptions,
    make_etcd_options,
)
from overlay.subnet.manager import DEFAULT_RENEW_MARGIN, DEFAULT_TTL, SubnetManager
from overlay.subnetenv import DEFAULT_SUBNET_FILE, SubnetEnv, load_subnet_env, write_subnet_env
from overlay.util.backoff import Backoff
from overlay.util.ifname import ifname_problem
from overlay.vxlan.backend import BackendSettings, Reconciler, VXLANBackend
from overlay.vxlan.device import LinkMonitor, VXLANDevice, VXLANSpec, find_underlay, open_netlink
from overlay.vxlan.vtep import load_or_create_vtep_mac

log = logging.getLogger("overlay.daemon.daemon")

ENV_PREFIX = "OVERLAYD_"
DEFAULT_STATE_DIR = "/var/lib/overlay"
DEFAULT_CNI_SOCKET = "/run/overlay/cni.sock"
BACKOFF_MIN, BACKOFF_MAX = 0.2, 10.0


# ---- flags ---------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """argparse whose errors are ONE line (no usage dump) and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"overlayd: error: {message} (see overlayd --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="overlayd", description="The overlay pod network's node daemon. "
                f"Every flag can also be set as an {ENV_PREFIX}<FLAG> environment variable "
                "(e.g. OVERLAYD_ETCD_ENDPOINTS, OVERLAYD_IP_MASQ=true).")
    e = p.add_argument_group("etcd")
    e.add_argument("--etcd-endpoints", default=DEFAULT_ENDPOINTS,
                   help="comma-separated etcd endpoints (default %(default)s)")
    e.add_argument("--etcd-prefix", default=DEFAULT_PREFIX,
                   help="etcd key prefix (default %(default)s; Flannel's is /coreos.com/network)")
    e.add_argument("--etcd-cafile", help="CA certificate for etcd TLS")
    e.add_argument("--etcd-certfile", help="client certificate for etcd TLS")
    e.add_argument("--etcd-keyfile", help="client key for etcd TLS")
    e.add_argument("--etcd-username", help="etcd username")
    e.add_argument("--etcd-password", help="etcd password")
    n = p.add_argument_group("node")
    n.add_argument("--iface", help="underlay interface: a name or a regex "
                   "(default: the interface of the default route)")
    n.add_argument("--public-ip", help="this node's underlay IP (default: --iface's address)")
    n.add_argument("--vxlan-device", default="",
                   help="VXLAN device name (default overlay.<VNI>)")
    n.add_argument("--subnet-file", default=DEFAULT_SUBNET_FILE,
                   help="where to write subnet.env (default %(default)s)")
    n.add_argument("--state-dir", default=DEFAULT_STATE_DIR,
                   help="persistent state, e.g. the VTEP MAC (default %(default)s)")
    n.add_argument("--lease-ttl", type=int, default=DEFAULT_TTL,
                   help="lease TTL in seconds (default %(default)s)")
    n.add_argument("--lease-renew-margin", type=int, default=DEFAULT_RENEW_MARGIN,
                   help="renew this many seconds before expiry (default %(default)s)")
    n.add_argument("--ip-masq", action="store_true",
                   help="masquerade pod traffic leaving the pod network (nftables)")
    n.add_argument("--reconcile-interval", type=float, default=10.0,
                   help="seconds between periodic reconciles (default %(default)s)")
    s = p.add_argument_group("services")
    s.add_argument("--healthz-addr", default="",
                   help="HOST:PORT for /healthz, /readyz, /metrics (default: off)")
    s.add_argument("--watch-lag-limit", type=float, default=DEFAULT_MAX_LAG,
                   help="/readyz fails when the lease watch has not heard from etcd for "
                   "this many seconds (default %(default)s)")
    s.add_argument("--cni-socket", default=DEFAULT_CNI_SOCKET,
                   help="serve the CNI plugin warm on this unix socket "
                   "(default %(default)s; empty disables)")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="debug logging (INFO is the default)")
    return p


def _env_bool(name: str, value: str) -> bool:
    parsed = parse_bool(value)
    if parsed is None:
        raise ConfigError(f"{name}={value!r}: expected true or false")
    return parsed


def apply_env_defaults(parser: argparse.ArgumentParser, environ: dict[str, str]) -> None:
    """Every flag's default may come from ``OVERLAYD_<DEST>`` (flags still win)."""
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        name = ENV_PREFIX + action.dest.upper()
        if name not in environ:
            continue
        raw = environ[name]
        if isinstance(action, argparse._StoreTrueAction):
            value: Any = _env_bool(name, raw)
        elif isinstance(action, argparse._CountAction):
            value = int(raw) if raw.isdigit() else int(_env_bool(name, raw))
        elif action.type is not None:
            try:
                value = action.type(raw)
            except ValueError as e:
                raise ConfigError(f"{name}={raw!r}: not a valid {action.type.__name__}") from e
        else:
            value = raw
        parser.set_defaults(**{action.dest: value})


@dataclass(frozen=True)
class Settings:
    etcd: EtcdOptions
    iface: str | None
    public_ip: IPv4Address | None
    vxlan_device: str
    subnet_file: str
    state_dir: str
    lease_ttl: int
    renew_margin: int
    ip_masq: bool
    reconcile_interval: float
    healthz_addr: str
    cni_socket: str
    verbose: int
    watch_lag_limit: float = DEFAULT_MAX_LAG


def parse_settings(argv: Sequence[str] | None = None,
                   environ: dict[str, str] | None = None) -> Settings:
    """Flags + environment -> validated Settings; ConfigError / SystemExit(2) otherwise."""
    parser = build_parser()
    apply_env_defaults(parser, dict(os.environ if environ is None else environ))
    a = parser.parse_args(argv)
    etcd = make_etcd_options(a.etcd_endpoints, a.etcd_prefix, a.etcd_cafile, a.etcd_certfile,
                             a.etcd_keyfile, a.etcd_username, a.etcd_password)
    public_ip = None
    if a.public_ip:
        try:
            public_ip = IPv4Address(a.public_ip)
        except ValueError:
            raise ConfigError(f"--public-ip {a.public_ip!r}: not an IPv4 address") from None
        if public_ip.is_unspecified or public_ip.is_multicast or public_ip.is_loopback:
            raise ConfigError(f"--public-ip {public_ip}: must be a unicast underlay address")
    if a.iface is not None and not a.iface.strip():
        raise ConfigError("--iface: empty; give an interface name or a regex")
    if a.lease_ttl < 1:
        raise ConfigError(f"--lease-ttl {a.lease_ttl}: must be at least 1 second")
    if a.lease_renew_margin < 0:
        raise ConfigError(f"--lease-renew-margin {a.lease_renew_margin}: must not be negative")
    if a.reconcile_interval <= 0:
        raise ConfigError(f"--reconcile-interval {a.reconcile_interval}: must be positive")
    if not 0.2 <= a.watch_lag_limit <= 86400:  # NaN fails this too
        raise ConfigError(f"--watch-lag-limit {a.watch_lag_limit}: must be 0.2..86400 seconds")
    problem = ifname_problem(a.vxlan_device) if a.vxlan_device else None
    if problem:
        raise ConfigError(f"--vxlan-device {a.vxlan_device!r}: not a valid interface name "
                          f"(it {problem})")
    if a.healthz_addr:
        parse_hostport(a.healthz_addr)
    for flag, path in (("--subnet-file", a.subnet_file), ("--state-dir", a.state_dir)):
        if not path:
            raise ConfigError(f"{flag}: empty path")
    return Settings(etcd, a.iface, public_ip, a.vxlan_device, a.subnet_file, a.state_dir,
                    a.lease_ttl, a.lease_renew_margin, a.ip_masq, a.reconcile_interval,
                    a.healthz_addr, a.cni_socket, a.verbose, a.watch_lag_limit)


# ---- the registry as the daemon sees it ----------------------------------------------

# Outcomes of a request that etcd answered (a lost race, no config yet): not etcd failures.
_NOT_ETCD_FAILURES = (LeaseExists, LeaseConflict, LeaseNotFound, ConfigNotFound)


class _ObservedRegistry:
    """The registry, counting failed etcd requests (the watch's interruptions too)."""

    def __init__(self, inner: Any, metrics: Metrics, watch_health: WatchHealth | None = None):
        self._inner = inner
        self._metrics = metrics
        self._health = watch_health

    def _count(self, e: BaseException) -> None:
        if isinstance(e, RegistryError) and not isinstance(e, _NOT_ETCD_FAILURES):
            self._metrics.etcd_errors.inc()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            try:
                return attr(*args, **kwargs)
            except RegistryError as e:
                self._count(e)
                raise
        return counted

    def watch_leases(self, start_revision: int, stop: threading.Event) -> Any:
        if self._health is None:
            return self._inner.watch_leases(start_revision, stop, on_error=self._count)
        # Ask for progress a few times per lag limit, so a live watch never looks stale.
        interval = min(5.0, max(0.05, self._health.max_lag / 4))
        return self._inner.watch_leases(start_revision, stop, on_error=self._count,
                                        on_progress=self._health.heard,
                                        progress_interval=interval)

    def watch_config(self, start_revision: int, stop: threading.Event) -> Any:
        return self._inner.watch_config(start_revision, stop, on_error=self._count)


# ---- rejected keys ---------------------------------------------------------------------

MAX_REJECTIONS = 256  # distinct keys kept; a hostile writer can make millions
MAX_SEEN = 4096  # (key, revision) pairs remembered so a repeat is not logged again


class RejectionLog:
    """Rejected keys as the watch reports them: each logged and counted once per key
    revision, the newest ``MAX_REJECTIONS`` kept for inspection."""

    def __init__(self, metrics: Metrics, limit: int = MAX_REJECTIONS):
        self.metrics = metrics
        self.limit = limit
        self.entries: OrderedDict[str, Rejection] = OrderedDict()
        self._seen: OrderedDict[tuple[str, int, str], None] = OrderedDict()

    def note(self, now: list[Rejection], gone: list[str], complete: bool) -> None:
        if complete:
            keep = {r.key for r in now}
            for key in [k for k in self.entries if k not in keep]:
                del self.entries[key]
        for key in gone:
            self.entries.pop(key, None)
        for r in now:
            self._add(r)

    def _add(self, r: Rejection) -> None:
        self.entries[r.key] = r
        self.entries.move_to_end(r.key)
        while len(self.entries) > self.limit:
            self.entries.popitem(last=False)
        mark = (r.key, r.mod_revision, r.reason)
        if mark in self._seen:
            return
        self._seen[mark] = None
        while len(self._seen) > MAX_SEEN:
            self._seen.popitem(last=False)
        self.metrics.leases_rejected.labels(reason=r.reason).inc()
        log.warning("rejected %s (revision %d): %s: %s", printable_key(r.key), r.mod_revision,
                    r.reason, r.detail)


# ---- the daemon ----------------------------------------------------------------------

class Daemon:
    join_timeout = 3.0  # seconds for all threads to finish at shutdown

    def __init__(self, settings: Settings, registry_factory: Callable[[EtcdOptions], Any] | None = None):
        self.s = settings
        self.stop = threading.Event()
        self.metrics = Metrics()
        self._registry_factory = registry_factory
        self._threads: list[threading.Thread] = []
        self._env_written = False
        self._programmed = False
        self.http: HealthServer | None = None
        self.device: VXLANDevice | None = None
        self.backend: VXLANBackend | None = None
        self.manager: SubnetManager | None = None
        self.masq: Masquerade | None = None
        self.cni_server: Any = None
        self.reconciler: Reconciler | None = None
        self._lease_lock = threading.Lock()
        self._reconcile_lock = threading.Lock()
        self._held: IPv4Network | None = None  # the subnet _hold last completed for
        self.watch_health = WatchHealth(settings.watch_lag_limit)
        self.config_drift: str | None = None  # how etcd's config differs from ours, if it does
        self.rejections = RejectionLog(self.metrics)
        self.metrics.ready.set_function(lambda: 0 if self.readiness() else 1)
        self.metrics.track_watch(self.watch_health.lag, lambda: self.config_drift is not None)

    # -- readiness -------------------------------------------------------------------
    def readiness(self) -> list[str]:
        """What keeps the node from being ready ([] when ready); no side effects."""
        missing = []
        if self.stop.is_set():
            missing.append("stopping")
        if self.manager is None or self.manager.current is None:
            missing.append("no subnet lease yet")
        if not self._env_written:
            missing.append(f"{self.s.subnet_file} not written")
        if not self._programmed:
            missing.append("VXLAN device not programmed")
        else:  # the first programming comes from the watch's listing: it has started
            missing.extend(self._watch_problems())
        return missing

    def _watch_problems(self) -> list[str]:
        problem = self.watch_health.problem()
        return [problem] if problem else []

    # -- main ------------------------------------------------------------------------
    def run(self) -> int:
        if self.s.healthz_addr:
            self.http = HealthServer(self.s.healthz_addr, self.metrics, self.readiness)
            self.http.start()
        registry = self._open_registry()
        try:
            return self._run(registry)
        finally:
            self._shutdown(registry)

    def _open_registry(self) -> Any:
        if self._registry_factory is not None:
            return self._registry_factory(self.s.etcd)
        from overlay.subnet.registry import EtcdRegistry
        return EtcdRegistry(self.s.etcd)

    def _run(self, raw_registry: Any) -> int:
        registry = _ObservedRegistry(raw_registry, self.metrics, self.watch_health)
        config = self._retry("reading the network config", registry.get_config)
        if config is None:
            return 0
        log.info("network config: %s", config.to_json())
        attrs = self._setup_data_plane(config)
        self.manager = SubnetManager(registry, config, attrs, ttl=self.s.lease_ttl,
                                     renew_margin=self.s.renew_margin,
                                     previous_subnet=self._previous_subnet(config))
        self.metrics.track_lease_expiry(self._lease_expiry)
        lease = self._retry("acquiring a subnet lease", self.manager.acquire)
        if lease is None:
            return 0
        self.masq = Masquerade(config.network, lease.subnet, self.s.ip_masq)
        self._hold(lease)
        self._start_cni_server()  # before the watch can make /readyz say 200
        self._start_threads()
        while not self.stop.wait(3600):
            pass
        log.info("stopping; the VXLAN device, its entries, the lease and %s stay in place",
                 self.s.subnet_file)
        return 0

    def _setup_data_plane(self, config: NetworkConfig) -> LeaseAttrs:
        """Underlay, VTEP MAC, the device (created or kept) and the backend; what to
        publish in the lease.  The device's entries are left alone until the first
        listing of leases (reconcile, never flush)."""
        vni = config.backend.vni
        name = self.s.vxlan_device or f"overlay.{vni}"
        nl = open_netlink()
        try:
            underlay = find_underlay(nl, self.s.iface, self.s.public_ip)
            links = dump_links(nl)
            existing = next((l.mac for l in links if l.name == name), None)
            clash = connected_overlap(config, links, dump_addrs(nl), name)
        finally:
            nl.close()
        if clash:  # before anything in the kernel changes
            raise ConfigError(clash)
        mtu = config.backend.mtu or underlay.mtu - VXLAN_OVERHEAD
        mac = load_or_create_vtep_mac(self.s.state_dir, name, adopt=existing)
        public_ip = self.s.public_ip or underlay.address.ip
        log.info("underlay %s (public IP %s, MTU %d); VXLAN device %s VNI %d port %d MTU %d "
                 "VTEP MAC %s", underlay.name, public_ip, underlay.mtu, name, vni,
                 config.backend.port, mtu, mac)
        self.device = VXLANDevice(VXLANSpec(name, vni, config.backend.port, public_ip,
                                            underlay.index, mtu, mac))
        self.device.ensure()
        self.underlay_name = underlay.name
        self.config, self.mtu = config, mtu
        self.backend = VXLANBackend(self.device, BackendSettings(
            vni, public_ip, IPv4Interface(f"{public_ip}/{underlay.address.network.prefixlen}"),
            config.backend.direct_routing))
        self.reconciler = Reconciler(self.backend, interval=self.s.reconcile_interval)
        return LeaseAttrs(public_ip, "vxlan", vni, mac)

    def _retry(self, what: str, fn: Callable[[], Any]) -> Any:
        """Retry ``fn`` on etcd trouble with a capped backoff; None if stopped meanwhile."""
        backoff = Backoff(BACKOFF_MIN, BACKOFF_MAX)
        while not self.stop.is_set():
            try:
                return fn()
            except ConfigError:
                raise  # an invalid network config will not fix itself: one line, exit 1
            except OverlayError as e:  # etcd unreachable, no config yet, no free subnet
                log.warning("%s failed: %s; retrying in %.1fs", what, e, backoff.delay)
                backoff.wait(self.stop)
        return None

    def _previous_subnet(self, config: NetworkConfig) -> IPv4Network | None:
        if not os.path.exists(self.s.subnet_file):
            return None
        try:
            env = load_subnet_env(self.s.subnet_file)
        except SubnetEnvError as e:
            log.warning("ignoring the old subnet.env: %s", e)
            return None
        subnet = env.subnet.network
        if not config.in_range(subnet):
            log.info("old subnet.env's %s is outside the current network config; ignoring it",
                     subnet)
            return None
        log.info("previous subnet (from %s): %s", self.s.subnet_file, subnet)
        return subnet

    def _lease_expiry(self) -> Any:
        lease = self.manager.current if self.manager else None
        return None if lease is None else lease.expiration

    # -- lease held / changed --------------------------------------------------------
    def _hold(self, lease: Lease) -> None:
        """Device address, subnet.env and masquerade for the lease now held."""
        with self._lease_lock:
            self._hold_locked(lease)

    def _hold_locked(self, lease: Lease) -> None:
        self.device.ensure_address(lease.vtep_address)
        env = SubnetEnv(self.config.network,
                        IPv4Interface(f"{lease.gateway}/{lease.subnet.prefixlen}"),
                        self.mtu, self.s.ip_masq)
        write_subnet_env(self.s.subnet_file, env)
        self._env_written = True
        log.info("wrote %s: subnet %s, MTU %d", self.s.subnet_file, env.subnet, self.mtu)
        self.masq.update(lease.subnet)
        self._held = lease.subnet  # only once every step succeeded

    def _ensure_held(self) -> None:
        """Catch up with the manager's lease: redo ``_hold`` if the last one failed or
        a re-acquisition moved us, else put the device address back if it went missing.
        Under the lease lock, so it never races a ``_hold`` of a newer lease."""
        with self._lease_lock:
            lease = self.manager.current if self.manager else None
            if lease is None:
                return
            if self._held != lease.subnet:
                log.info("lease %s not fully applied yet (held %s): applying it",
                         lease.subnet, self._held)
                self._hold_locked(lease)
            else:
                self.device.ensure_address(lease.vtep_address)

    def _on_lease(self, lease: Lease) -> None:
        log.info("lease now %s (etcd lease %x)", lease.subnet, lease.etcd_lease_id)
        try:
            self._hold(lease)
        except OverlayError as e:  # the reconcile loop retries it (_ensure_held)
            log.warning("applying lease %s failed: %s; retrying", lease.subnet, e)
            self.reconciler.kick()

    # -- watch -> backend --------------------------------------------------------------
    def _on_snapshot(self, remote: list[Lease]) -> None:
        """Every complete listing (the first after a start, a re-list after a compaction)
        is a reconcile, so entries of peers that vanished meanwhile are removed."""
        self._reconcile(remote)

    def _on_batch(self, batch: LeaseBatch) -> None:
        res = self.backend.apply_batch(batch)
        self._update_gauges()
        if res.failed:
            self.reconciler.kick()

    def _reconcile(self, leases: list[Lease] | None = None) -> None:
        with self._reconcile_lock:
            self._reconcile_locked(leases)

    def _reconcile_locked(self, leases: list[Lease] | None) -> None:
        t0 = time.monotonic()
        self._repair_device()
        try:
            self._ensure_held()
        except OverlayError as e:  # the remotes are programmed regardless; retried soon
            log.warning("applying the lease failed: %s; retrying", e)
            self.reconciler.retry_soon()
        res = self.backend.reconcile(leases)
        dt = time.monotonic() - t0
        self.metrics.reconcile_runs.inc()
        self.metrics.reconcile_duration.observe(dt)
        self._update_gauges()
        if not self._programmed:
            self._programmed = True
            log.info("VXLAN device programmed: %d remote leases, %d entries (%.3fs); ready",
                     len(self.backend.leases), self.backend.entry_count(), dt)
        elif res.added or res.removed:
            log.info("reconcile repaired drift in %.3fs", dt)

    def _repair_device(self) -> None:
        """The device deleted or down (e.g. by hand, or its underlay replaced): recreate it."""
        up, index = self.device.state()
        if up and index == self.device.index:
            return
        log.info("VXLAN device %s is %s: repairing it and replaying every entry",
                 self.device.spec.name, "gone" if not index else "down" if not up else "replaced")
        nl = open_netlink()
        try:
            underlay = find_underlay(nl, self.underlay_name, self.device.spec.local)
        finally:
            nl.close()
        if underlay.index != self.device.spec.underlay_index:
            self.device.spec = replace(self.device.spec, underlay_index=underlay.index)
        self.device.ensure()  # its address: _ensure_held, next

    def _update_gauges(self) -> None:
        self.metrics.leases_known.set(len(self.backend.leases))
        self.metrics.entries_programmed.set(self.backend.entry_count())
        self.metrics.remotes_failing.set(len(self.backend.failed))
        self.metrics.route_conflicts.set(len(self.backend.conflicts))

    # -- threads -----------------------------------------------------------------------
    def _start_threads(self) -> None:
        lease = self.manager.current
        self._spawn("watch", self._run_watch)
        self._spawn("config-watch", self._watch_config)
        self._spawn("keepalive", lambda: self.manager.run_keepalive(
            self.manager.current or lease, self.stop, self._on_lease))
        self._spawn("reconcile", self._reconcile_loop)
        monitor_names = lambda: {self.device.spec.name, self.underlay_name}  # noqa: E731
        self._spawn("linkmon", lambda: LinkMonitor(monitor_names, self._on_link_change)
                    .run(self.stop))

    def _run_watch(self) -> None:
        self.watch_health.started()
        try:
            self.manager.run_watch(self.manager.own_subnet, self.stop, self._on_batch,
                                   self._on_snapshot, self.rejections.note)
        finally:
            self.watch_health.stopped()

    # -- the network config changed in etcd while we run ---------------------------------
    def _watch_config(self) -> None:
        """Compare every value of the config key with the config we started with; the
        running node never applies a new one (half the nodes on a new VNI, subnet length
        or network cut the cluster in two): an operator restarts every node."""
        registry = self.manager.registry
        got = self._retry("reading the network config (to watch it)", registry.get_config_value)
        if got is None:
            return
        value, rev = got
        self._note_config(value)
        for value, _ in registry.watch_config(rev + 1, self.stop):
            self._note_config(value)

    def _note_config(self, value: bytes | None) -> None:
        drift = config_drift(self.config, value)
        if drift is not None and drift != self.config_drift:
            log.error("network config changed in etcd (%s); this node keeps running with "
                      "the config it started with; restart overlayd on every node", drift)
        elif drift is None and self.config_drift is not None:
            log.info("network config in etcd matches the running one again")
        self.config_drift = drift

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        def supervised() -> None:
            backoff = Backoff(BACKOFF_MIN, BACKOFF_MAX)
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    target()
                except Exception:  # a bug or an unexpected kernel answer: log, restart
                    log.exception("thread %s failed", name)
                if self.stop.is_set():
                    return
                if time.monotonic() - started > BACKOFF_MAX:
                    backoff.reset()  # it ran well for a while: not a crash loop
                log.info("restarting thread %s in %.1fs", name, backoff.delay)
                backoff.wait(self.stop)
        t = threading.Thread(target=supervised, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _reconcile_loop(self) -> None:
        while self.reconciler.wait(self.stop):
            if not self._programmed:
                continue  # the watch's first listing does the first reconcile
            try:
                self._reconcile()
            except OverlayError as e:
                log.warning("reconcile failed: %s; retrying", e)
                self.reconciler.retry_soon()
            if self.masq.enabled:
                try:
                    self.masq.ensure()
                except OverlayError as e:
                    log.warning("masquerade check failed: %s", e)

    def _on_link_change(self, what: str) -> None:
        log.info("%s: reconciling", what)
        self.reconciler.kick()

    def _start_cni_server(self) -> None:
        if not self.s.cni_socket:
            return
        try:
            from overlay.cni.server import CNIServer  # the CNI plugin's warm server (optional)
        except ImportError:
            log.debug("no warm CNI server in this build; the plugin runs cold")
            return
        try:
            self.cni_server = CNIServer(self.s.cni_socket).bind()
        except (OverlayError, OSError) as e:
            log.warning("warm CNI server on %s not started: %s", self.s.cni_socket, e)
            return
        t = threading.Thread(target=self.cni_server.serve_forever, name="cni", daemon=True)
        t.start()
        log.info("serving the CNI plugin warm on %s", self.s.cni_socket)

    def _shutdown(self, registry: Any) -> None:
        self.stop.set()
        if self.reconciler is not None:
            self.reconciler.kick()  # wake the reconcile loop so it sees stop
        if self.cni_server is not None:
            try:
                self.cni_server.shutdown()
            except Exception as e:  # shutting down must finish whatever happens
                log.warning("stopping the CNI server: %s", e)
        deadline = time.monotonic() + self.join_timeout
        for t in self._threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        busy = [t.name for t in self._threads if t.is_alive()]
        if self.http is not None:
            self.http.stop()
        try:
            registry.close()
        except Exception as e:
            log.debug("closing the registry: %s", e)
        if busy:  # closing the device's socket under a running thread could hit a reused fd
            log.warning("threads still running at exit: %s", ", ".join(busy))
        elif self.device is not None:
            self.device.close()


def connected_overlap(config: NetworkConfig, links: Sequence[Any],
                      addrs: Sequence[tuple[int, IPv4Interface]], device: str) -> str | None:
    """Why ``config.network`` cannot be this node's pod network, or None: it overlaps a
    network the node is connected to (pod CIDRs must not overlap node CIDRs, or the
    node's own traffic would be routed into VXLAN).  Our own addresses are exempt: the
    VXLAN device's (``device``, or any VXLAN link's inside the network) and a pod bridge's
    gateway (the ``.1`` of a subnet inside the network, whatever its length: the bridge
    of an earlier run survives a change of SubnetLen, which needs exactly this restart)."""
    kinds = {l.index: (l.name, l.kind) for l in links}
    net = config.network
    for index, iface in addrs:
        name, kind = kinds.get(index, (f"#{index}", None))
        connected = iface.network
        if connected.is_loopback or not connected.overlaps(net):
            continue
        if name == device or (kind == "vxlan" and connected.subnet_of(net)):
            continue
        if (kind == "bridge" and connected.subnet_of(net) and connected != net
                and iface.ip == connected.network_address + 1):
            continue
        return (f"Network {net} overlaps {connected}, a network this node is connected to "
                f"({iface} on {name}); pod networks must not overlap node networks: choose "
                f"another Network (overlayctl config set)")
    return None


def config_drift(running: NetworkConfig, value: bytes | None) -> str | None:
    """How the config key's value differs from the running config (None: it does not;
    a rewrite that parses to the same config is no change)."""
    if value is None:
        return "the config key was deleted"
    try:
        stored = parse_network_config(value)
    except ConfigError as e:
        return f"the stored config is invalid: {e}"
    if stored == running:
        return None
    old, new = running.to_dict(), stored.to_dict()
    fields = [k for k in new if old.get(k) != new[k]]
    return "now " + ", ".join(f"{k} {_short(new[k])} (running {_short(old.get(k))})"
                              for k in fields)


def _short(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _setup_logging(verbose: int) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if verbose < 2:  # the etcd client's grpc chatter only at -vv
        logging.getLogger("grpc").setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = parse_settings(argv)
    except ConfigError as e:
        print(f"overlayd: error: {e}", file=sys.stderr)
        return 2
    _setup_logging(settings.verbose)
    daemon = Daemon(settings)

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("got %s", signal.Signals(signum).name)
        daemon.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return daemon.run()
    except OverlayError as e:
        print(f"overlayd: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
