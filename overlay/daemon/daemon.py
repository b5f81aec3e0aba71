"""overlayd: the per-node daemon (lease, VXLAN device, remote entries, masquerade, health).

Startup (nothing in the kernel changes before the flags and the network config passed
validation)::

    flags -> etcd: network config -> underlay, VTEP MAC -> VXLAN device
      -> lease (acquire) -> device address, subnet.env, masquerade
      -> threads: watch (list -> reconcile -> events), keepalive, reconcile loop,
         link monitor, HTTP (/healthz /readyz /metrics), warm CNI server

SIGTERM/SIGINT stop the threads and leave everything in place (device, entries,
lease, subnet.env), so a restart does not disturb pods.

This module is wiring: the flags are ``overlay.daemon.flags``, the VXLAN set-up is
``overlay.vxlan.setup``, and ``Daemon`` takes its collaborators (registry opener,
data-plane set-up, manager and masquerade factories) as arguments, real ones by default.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Network
from typing import TYPE_CHECKING, Any, TypeVar

from overlay.config import NetworkConfig, parse_network_config
from overlay.daemon.flags import Settings, parse_settings
from overlay.daemon.http import HealthServer, Metrics
from overlay.daemon.nodestatus import NodeAgent, claim_node, node_agent_threads
from overlay.daemon.runtime import publish_runtime
from overlay.daemon.watchhealth import WatchHealth, progress_interval as watch_progress_interval
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
from overlay.lease import IPNetwork, Lease, LeaseAttrs, LeaseBatch, Rejection, printable_key
from overlay.masq.nft import Masquerade
from overlay.subnet.etcdconf import EtcdOptions
from overlay.subnet.manager import SubnetManager
from overlay.subnetenv import env_for_lease, load_subnet_env, policy_marker_path, write_subnet_env
from overlay.util.backoff import Backoff
from overlay.util.memory import keep_heap_small
from overlay.vxlan.backend import Reconciler, VXLANBackend
from overlay.vxlan.device import LinkMonitor, UnderlayError, VXLANDevice
from overlay.vxlan.setup import DataPlane, NodeOptions, setup_data_plane as setup_data_plane_for

if TYPE_CHECKING:  # the etcd client loads only when etcd is opened (~115 ms of import)
    from overlay.cluster.schema import SchemaStatus
    from overlay.cluster.store import ObjectStore
    from overlay.daemon.podpublisher import LeaseGoneGC
    from overlay.daemon.policyagent import PolicyAgent
    from overlay.subnet.registry import LeaseListing, Registry, WatchUpdate

log = logging.getLogger("overlay.daemon.daemon")
T = TypeVar("T")
# The parts bring_up() sets (Optional until then) are used only after it: by the threads
# and callbacks it starts. An assert with this message marks each use.
_UNSET = "used before bring_up() set it up"

BACKOFF_MIN, BACKOFF_MAX = 0.2, 10.0


# ---- the registry as the daemon sees it ----------------------------------------------

# Outcomes of a request that etcd answered (a lost race, no config yet): not etcd failures.
_NOT_ETCD_FAILURES = (LeaseExists, LeaseConflict, LeaseNotFound, ConfigNotFound)


class ObservedRegistry:
    """The registry, counting failed etcd requests (the watch's interruptions too), and
    feeding the watch's health from its stream.  Implements ``Registry`` method by
    method (no ``__getattr__``), so a method added to the Protocol must be added here."""

    def __init__(self, inner: Registry, metrics: Metrics, watch_health: WatchHealth | None = None):
        self._inner = inner
        self._metrics = metrics
        self._health = watch_health
        self.subnets_prefix = inner.subnets_prefix

    def _count(self, e: BaseException) -> None:
        if isinstance(e, RegistryError) and not isinstance(e, _NOT_ETCD_FAILURES):
            self._metrics.etcd_errors.inc()

    def _counted(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return fn(*args)
        except RegistryError as e:
            self._count(e)
            raise

    def get_config(self) -> NetworkConfig:
        return self._counted(self._inner.get_config)

    def get_config_value(self) -> tuple[bytes | None, int]:
        return self._counted(self._inner.get_config_value)

    def list_leases(self, with_expiration: bool = True) -> tuple[list[Lease], int]:
        return self._counted(self._inner.list_leases, with_expiration)

    def list_subnets(self, with_expiration: bool = True) -> LeaseListing:
        return self._counted(self._inner.list_subnets, with_expiration)

    def get_lease(self, subnet: IPNetwork) -> Lease | None:
        return self._counted(self._inner.get_lease, subnet)

    def create_lease(self, subnet: IPNetwork, attrs: LeaseAttrs, ttl: int | None,
                     ipv6_subnet: IPv6Network | None = None) -> Lease:
        return self._counted(self._inner.create_lease, subnet, attrs, ttl, ipv6_subnet)

    def update_lease(self, old: Lease, attrs: LeaseAttrs, ttl: int | None) -> Lease:
        return self._counted(self._inner.update_lease, old, attrs, ttl)

    def rekey_lease(self, old: Lease, ipv6_subnet: IPv6Network | None,
                    attrs: LeaseAttrs) -> Lease:
        return self._counted(self._inner.rekey_lease, old, ipv6_subnet, attrs)

    def renew_lease(self, lease: Lease) -> Lease:
        return self._counted(self._inner.renew_lease, lease)

    def close(self) -> None:
        self._inner.close()

    def watch_leases(self, start_revision: int, stop: threading.Event,
                     on_error: Callable[[RegistryError], None] | None = None,
                     on_progress: Callable[[int], None] | None = None,
                     progress_interval: float | None = None) -> Iterator[WatchUpdate]:
        hooks = [h for h in (on_progress, self._health and self._health.heard) if h]
        if self._health is not None and progress_interval is None:
            progress_interval = watch_progress_interval(self._health.max_lag)
        kw: dict[str, Any] = {"on_error": self._counting(on_error)}

        def progressed(revision: int) -> None:
            for hook in hooks:
                hook(revision)
        if hooks:
            kw["on_progress"] = progressed
        if progress_interval is not None:
            kw["progress_interval"] = progress_interval
        return self._inner.watch_leases(start_revision, stop, **kw)

    def watch_config(self, start_revision: int, stop: threading.Event,
                     on_error: Callable[[RegistryError], None] | None = None
                     ) -> Iterator[tuple[bytes | None, int]]:
        return self._inner.watch_config(start_revision, stop, on_error=self._counting(on_error))

    def _counting(self, on_error: Callable[[RegistryError], None] | None
                  ) -> Callable[[RegistryError], None]:
        """The watch's interruptions counted, then passed on to the caller's hook."""
        if on_error is None:
            return self._count

        def both(e: RegistryError) -> None:
            self._count(e)
            on_error(e)
        return both


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


# ---- collaborators ----------------------------------------------------------------

ManagerFactory = Callable[..., SubnetManager]  # SubnetManager's signature
MasqueradeFactory = Callable[[IPv4Network | None, IPv4Network | None, bool], Masquerade]


def _open_etcd_registry(opts: EtcdOptions) -> Registry:
    from overlay.subnet.registry import EtcdRegistry  # the etcd client: only when used
    return EtcdRegistry(opts)


def node_options(settings: Settings) -> NodeOptions:
    return NodeOptions(settings.iface, settings.public_ip, settings.vxlan_device,
                       settings.state_dir, settings.public_ipv6)


# ---- the daemon ----------------------------------------------------------------------

class Daemon:
    join_timeout = 3.0  # seconds for all threads to finish at shutdown

    def __init__(self, settings: Settings, *,
                 open_registry: Callable[[EtcdOptions], Registry] | None = None,
                 setup_data_plane: Callable[[NetworkConfig], DataPlane] | None = None,
                 make_manager: ManagerFactory | None = None,
                 make_masquerade: MasqueradeFactory = Masquerade,
                 watch_health: WatchHealth | None = None):
        """The collaborators default to the real ones (etcd, the kernel's VXLAN device,
        the subnet manager, nftables); tests pass fakes here."""
        self.s = settings
        self.stop = threading.Event()
        self.metrics = Metrics()
        self._open_registry = open_registry or _open_etcd_registry
        self._setup_data_plane = setup_data_plane or (
            lambda config: setup_data_plane_for(config, node_options(settings)))
        self._make_manager = make_manager or SubnetManager
        self._make_masquerade = make_masquerade
        self.registry: ObservedRegistry | None = None
        self.config: NetworkConfig | None = None
        self.plane: DataPlane | None = None
        self.mtu = 0
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
        self._held: IPNetwork | None = None  # the subnet _hold last completed for
        self.watch_health = watch_health or WatchHealth(settings.watch_lag_limit)
        self.config_drift: str | None = None  # how etcd's config differs from ours, if it does
        self.rejections = RejectionLog(self.metrics)
        # the cluster's objects (nodes/, heartbeats/, pods/): only over a real etcd, and
        # only while the recorded schema is one this release knows (overlay.cluster.schema)
        self.store: ObjectStore | None = None
        self.schema: SchemaStatus | None = None
        self.node_agent: NodeAgent | None = None  # heartbeat, record, health mesh
        self.policy_agent: PolicyAgent | None = None  # NetworkPolicy -> nftables
        self.pod_gc: LeaseGoneGC | None = None  # gone leases' pods, fed by _on_batch
        self.metrics.ready.set_function(lambda: 0 if self.readiness() else 1)
        self.metrics.track_watch(self.watch_health.lag, lambda: self.config_drift is not None)

    @property
    def leases_programmed(self) -> bool:
        """True once the lease watch's first listing is in the kernel: from then on
        ``backend.leases`` holds every accepted lease (the policy agent waits for it, so a
        remote pod is not rejected for want of its lease)."""
        return self._programmed

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
        if self.policy_agent is not None:
            missing.extend(self.policy_agent.problems())
        elif self.schema is not None and not self.schema.writable:
            missing.extend(self._unenforced_problems())
        return missing

    def _unenforced_problems(self) -> list[str]:
        """Under a schema this release does not know no policy agent runs: harmless while
        no policy was in force here, but while one was (its marker is there) the table
        loaded before stays frozen and every ADD is refused, which must not look ready."""
        marker = policy_marker_path(self.s.subnet_file)
        if not os.path.exists(marker):
            return []
        return [f"NetworkPolicy not enforced: {self.schema.describe() if self.schema else ''} "
                f"(policies were in force, {marker}: the table loaded before stays, pod "
                "ADDs are refused)"]

    def _watch_problems(self) -> list[str]:
        problem = self.watch_health.problem()
        return [problem] if problem else []

    # -- main ------------------------------------------------------------------------
    def run(self) -> int:
        if self.s.healthz_addr:
            self.http = HealthServer(self.s.healthz_addr, self.metrics, self.readiness)
            self.http.start()
        publish_runtime(self.s)  # overlayctl finds etcd even while we wait for it
        registry = self._open_registry(self.s.etcd)
        try:
            return self._run(registry)
        finally:
            self._shutdown(registry)

    def _run(self, raw_registry: Registry) -> int:
        if self.bring_up(raw_registry) is None:
            return 0
        assert self.plane is not None, f"data plane {_UNSET}"
        ip = self.plane.attrs.public_ip  # the runtime file names an IPv4 one (diagnose's)
        publish_runtime(self.s, self.plane.device.spec.name,
                        ip if isinstance(ip, IPv4Address) else None)
        self._start_cni_server()  # before the watch can make /readyz say 200
        self._start_threads()
        while not self.stop.wait(3600):
            pass
        log.info("stopping; the VXLAN device, its entries, the lease and %s stay in place",
                 self.s.subnet_file)
        return 0

    def bring_up(self, raw_registry: Registry) -> Lease | None:
        """Everything before the threads: the network config, the data plane, a lease,
        and the lease applied (device address, subnet.env, masquerade).  None if stopped
        while etcd was being waited for."""
        self.registry = registry = ObservedRegistry(raw_registry, self.metrics, self.watch_health)
        config = self._retry("reading the network config", registry.get_config)
        if config is None:
            return None
        log.info("network config: %s", config.to_json())
        try:
            self.plane = plane = self._setup_data_plane(config)
        except UnderlayError as e:
            raise ConfigError(underlay_flag_message(e)) from e
        self.config, self.mtu = config, plane.mtu
        self.device, self.backend = plane.device, plane.backend
        if self._open_cluster(raw_registry) is None:  # before a lease: a refused name takes none
            return None
        self.reconciler = Reconciler(plane.backend, interval=self.s.reconcile_interval)
        self.manager = self._make_manager(registry, config, plane.attrs, ttl=self.s.lease_ttl,
                                          renew_margin=self.s.renew_margin,
                                          previous_subnet=self._previous_subnet(config))
        self.manager.previous_ipv6_subnet = self._previous_ipv6_subnet()
        self.manager.on_ipv6_rejected = lambda r: self.metrics.leases_rejected.labels(
            reason=r.reason).inc()  # an unused IPv6 half, counted as rejected keys are
        self.metrics.track_lease_expiry(self._lease_expiry)
        lease = self._retry("acquiring a subnet lease", self.manager.acquire)
        if lease is None:
            return None
        self.masq = self._make_masquerade(config.ipv4_network, _ipv4(lease.subnet),
                                          self.s.ip_masq)
        self._hold(lease)
        return lease

    def _open_cluster(self, raw_registry: Registry) -> bool | None:
        """The object store and the schema check, over a real etcd (a unit test's fake
        registry has none: the cluster features stay off).  None if stopped meanwhile."""
        from overlay.subnet.registry import EtcdRegistry
        if not isinstance(raw_registry, EtcdRegistry):
            return True
        from overlay.cluster.schema import ensure_schema
        from overlay.cluster.store import ObjectStore
        store = ObjectStore(raw_registry)
        schema = self._retry("recording the cluster schema version",
                             lambda: ensure_schema(store))
        if schema is None:
            return None
        self.store, self.schema = store, schema
        if schema.writable:
            self.node_agent = claim_node(self)  # NodeNameInUse: one line, exit 1
            from overlay.daemon.policyagent import make_policy_agent
            self.policy_agent = make_policy_agent(self)
            from overlay.daemon.podpublisher import LeaseGoneGC
            self.pod_gc = LeaseGoneGC(
                store, lambda: self.manager.current if self.manager else None)
        return True

    def _cluster_threads(self) -> list[tuple[str, Callable[[], None]]]:
        """The threads that keep this node's cluster objects (named, each supervised by
        _spawn); none without a store or under a schema this release does not know."""
        if self.store is None or self.schema is None or not self.schema.writable:
            return []
        threads: list[tuple[str, Callable[[], None]]] = []
        threads += node_agent_threads(self)
        from overlay.daemon.podpublisher import pod_threads  # the etcd client: only here
        from overlay.daemon.policyagent import policy_threads
        assert self.manager is not None, f"manager {_UNSET}"
        assert self.pod_gc is not None, f"pod GC {_UNSET}"
        threads += pod_threads(self.store, self.s.node_name, self.s.cni_data_dir,
                               self.manager.own_subnet, self.stop, self.pod_gc,
                               self.metrics.registry, self.manager.own_ipv6_subnet)
        threads += policy_threads(self.policy_agent)
        return threads

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

    def _previous_subnet(self, config: NetworkConfig) -> IPNetwork | None:
        """The old subnet.env's subnet of the lease's family (IPv6-only: its IPv6 one)."""
        if not os.path.exists(self.s.subnet_file):
            return None
        try:
            env = load_subnet_env(self.s.subnet_file)
        except SubnetEnvError as e:
            log.warning("ignoring the old subnet.env: %s", e)
            return None
        iface = env.ipv6_subnet if config.ipv6_only else env.subnet
        if iface is None:
            log.info("old subnet.env has no subnet of this network's family; ignoring it")
            return None
        subnet = iface.network
        if not config.in_range(subnet):
            log.info("old subnet.env's %s is outside the current network config; ignoring it",
                     subnet)
            return None
        log.info("previous subnet (from %s): %s", self.s.subnet_file, subnet)
        return subnet

    def _previous_ipv6_subnet(self) -> IPv6Network | None:
        """The IPv6 half of the old subnet.env (the manager checks it is still free)."""
        try:
            env = load_subnet_env(self.s.subnet_file)
        except SubnetEnvError:
            return None  # missing or bad: _previous_subnet said so
        return None if env.ipv6_subnet is None else env.ipv6_subnet.network

    def _lease_expiry(self) -> Any:
        lease = self.manager.current if self.manager else None
        return None if lease is None else lease.expiration

    # -- lease held / changed --------------------------------------------------------
    def _hold(self, lease: Lease) -> None:
        """Device address, subnet.env and masquerade for the lease now held."""
        with self._lease_lock:
            self._hold_locked(lease)

    def _hold_locked(self, lease: Lease) -> None:
        assert self.device is not None and self.config is not None, f"device, config {_UNSET}"
        self.device.ensure_address(lease.vtep_address)
        assert self.plane is not None, f"data plane {_UNSET}"
        self.plane.ensure_v6_address(lease)
        env = env_for_lease(self.config, lease, self.mtu, self.s.ip_masq)
        write_subnet_env(self.s.subnet_file, env)
        self._env_written = True
        log.info("wrote %s: subnet %s%s, MTU %d", self.s.subnet_file, env.subnet,
                 f", IPv6 subnet {env.ipv6_subnet}" if env.ipv6_subnet else "", self.mtu)
        assert self.masq is not None, f"masquerade {_UNSET}"
        if self.plane.v6 is not None:
            self.masq.set_ipv6(self.config.ipv6_network, lease.ipv6_subnet)
        elif isinstance(lease.subnet, IPv6Network):  # IPv6-only: the lease's own subnet
            self.masq.set_ipv6(self.config.ipv6_network, lease.subnet)
        self.masq.update(_ipv4(lease.subnet))
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
                assert self.device is not None, f"device {_UNSET}"
                self.device.ensure_address(lease.vtep_address)
                assert self.plane is not None, f"data plane {_UNSET}"
                self.plane.ensure_v6_address(lease)

    def _on_lease(self, lease: Lease) -> None:
        log.info("lease now %s (etcd lease %x)", lease.subnet, lease.etcd_lease_id)
        try:
            self._hold(lease)
        except OverlayError as e:  # the reconcile loop retries it (_ensure_held)
            log.warning("applying lease %s failed: %s; retrying", lease.subnet, e)
            assert self.reconciler is not None, f"reconciler {_UNSET}"
            self.reconciler.kick()

    # -- watch -> backend --------------------------------------------------------------
    def _on_snapshot(self, remote: list[Lease]) -> None:
        """Every complete listing (the first after a start, a re-list after a compaction)
        is a reconcile, so entries of peers that vanished meanwhile are removed (and
        their pods, by the pod-lease GC)."""
        if self.pod_gc is not None:
            self.pod_gc.note_snapshot(remote)
        self._reconcile(remote)

    def _on_batch(self, batch: LeaseBatch) -> None:
        assert self.backend is not None, f"backend {_UNSET}"
        if self.pod_gc is not None:
            self.pod_gc.note_batch(batch)
        res = self.backend.apply_batch(batch)
        self._update_gauges()
        if res.failed:
            assert self.reconciler is not None, f"reconciler {_UNSET}"
            self.reconciler.kick()

    def _reconcile(self, leases: list[Lease] | None = None) -> None:
        with self._reconcile_lock:
            self._reconcile_locked(leases)

    def _reconcile_locked(self, leases: list[Lease] | None) -> None:
        t0 = time.monotonic()
        assert self.plane is not None, f"data plane {_UNSET}"
        self.plane.repair_device()
        try:
            self._ensure_held()
        except OverlayError as e:  # the remotes are programmed regardless; retried soon
            log.warning("applying the lease failed: %s; retrying", e)
            assert self.reconciler is not None, f"reconciler {_UNSET}"
            self.reconciler.retry_soon()
        assert self.backend is not None, f"backend {_UNSET}"
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

    def _update_gauges(self) -> None:
        assert self.backend is not None, f"backend {_UNSET}"
        self.metrics.leases_known.set(len(self.backend.leases))
        self.metrics.entries_programmed.set(self.backend.entry_count())
        self.metrics.remotes_failing.set(len(self.backend.failed))
        self.metrics.route_conflicts.set(len(self.backend.conflicts))

    # -- threads -----------------------------------------------------------------------
    def _start_threads(self) -> None:
        # bring_up() set these once; the closures below hold them, as they never change
        manager, device, plane = self.manager, self.device, self.plane
        assert manager is not None and device is not None and plane is not None, \
            f"manager, device, data plane {_UNSET}"
        lease = manager.current
        assert lease is not None, "bring_up() returns only once it holds a lease"
        self._spawn("watch", self._run_watch)
        self._spawn("config-watch", self._watch_config)
        self._spawn("keepalive", lambda: manager.run_keepalive(
            manager.current or lease, self.stop, self._on_lease))
        self._spawn("reconcile", self._reconcile_loop)
        monitor_names = lambda: {device.spec.name, plane.underlay_name} | (  # noqa: E731
            {plane.v6.device.spec.name, plane.v6.underlay_name} if plane.v6 else set())
        self._spawn("linkmon", lambda: LinkMonitor(monitor_names, self._on_link_change)
                    .run(self.stop))
        for name, target in self._cluster_threads():
            self._spawn(name, target)

    def _run_watch(self) -> None:
        assert self.manager is not None, f"manager {_UNSET}"
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
        registry = self.registry
        assert registry is not None, f"registry {_UNSET}"
        got = self._retry("reading the network config (to watch it)", registry.get_config_value)
        if got is None:
            return
        value, rev = got
        self._note_config(value)
        for value, _ in registry.watch_config(rev + 1, self.stop):
            self._note_config(value)

    def _note_config(self, value: bytes | None) -> None:
        assert self.config is not None, f"config {_UNSET}"
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
        assert self.reconciler is not None, f"reconciler {_UNSET}"
        while self.reconciler.wait(self.stop):
            if not self._programmed:
                continue  # the watch's first listing does the first reconcile
            try:
                self._reconcile()
            except OverlayError as e:
                log.warning("reconcile failed: %s; retrying", e)
                self.reconciler.retry_soon()
            assert self.masq is not None, f"masquerade {_UNSET}"
            if self.masq.enabled:
                try:
                    self.masq.ensure()
                except OverlayError as e:
                    log.warning("masquerade check failed: %s", e)

    def _on_link_change(self, what: str) -> None:
        log.info("%s: reconciling", what)
        assert self.reconciler is not None, f"reconciler {_UNSET}"
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
            self.cni_server = CNIServer(self.s.cni_socket, self._cni_handlers()).bind()
        except (OverlayError, OSError) as e:
            log.warning("warm CNI server on %s not started: %s", self.s.cni_socket, e)
            return
        self.metrics.track_cni_refusals(self.cni_server.refusals.counts)
        t = threading.Thread(target=self.cni_server.serve_forever, name="cni", daemon=True)
        t.start()
        log.info("serving the CNI plugin warm on %s", self.s.cni_socket)

    def _cni_handlers(self) -> Mapping[str, Any]:
        """The warm server's handlers: ADD waits for the pod's policy rules."""
        from overlay.cni.commands import HANDLERS, UNENFORCED_HANDLERS
        if self.policy_agent is None:
            return UNENFORCED_HANDLERS  # no policy known here
        from overlay.daemon.policyagent import enforcing_handlers
        return enforcing_handlers(HANDLERS, lambda: self.policy_agent)

    def _shutdown(self, registry: Registry) -> None:
        self.stop.set()
        if self.reconciler is not None:
            self.reconciler.kick()  # wake the reconcile loop so it sees stop
        if self.cni_server is not None:
            try:
                self.cni_server.shutdown()
            except Exception as e:  # noqa: BLE001 (shutting down must finish whatever happens)
                log.warning("stopping the CNI server: %s", e)
        deadline = time.monotonic() + self.join_timeout
        for t in self._threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        busy = [t.name for t in self._threads if t.is_alive()]
        if self.http is not None:
            self.http.stop()
        try:
            registry.close()
        except Exception as e:  # noqa: BLE001 (a failed close must not stop the shutdown)
            log.debug("closing the registry: %s", e)
        if busy:  # closing the device's socket under a running thread could hit a reused fd
            log.warning("threads still running at exit: %s", ", ".join(busy))
        elif self.device is not None:
            self.device.close()


_UNDERLAY_FLAGS = {"iface": "--iface", "public_ip": "--public-ip"}
_UNDERLAY_HINTS = {UnderlayError.NO_SUCH_ADDRESS: "pass --iface or fix the address",
                   UnderlayError.NO_IPV4: "give it one or pass --public-ip",
                   UnderlayError.NO_DEFAULT_ROUTE: "pass --iface or --public-ip"}


def underlay_flag_message(e: UnderlayError) -> str:
    """The underlay's complaint in overlayd's words: the flag at fault, and which to use."""
    flag = _UNDERLAY_FLAGS.get(e.given or "")
    head = f"{flag} {e.value}: {e.problem}" if flag else e.problem
    hint = _UNDERLAY_HINTS.get(e.kind)
    return f"{head}; {hint}" if hint else head


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


def _ipv4(subnet: IPNetwork) -> IPv4Network | None:
    """An IPv4 lease's subnet; None for an IPv6-only lease (nothing IPv4 to set up)."""
    return subnet if isinstance(subnet, IPv4Network) else None


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
    keep_heap_small()  # before the first listing: see overlay.util.memory
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
