"""overlayd's flags: argparse + ``OVERLAYD_*`` environment variables -> ``Settings``.

Everything here is checked before the daemon touches etcd or the kernel, so a bad flag
is one line and exit 2 with nothing changed.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from overlay.cluster.keys import dns_subdomain_problem
from overlay.cni.install import DEFAULT_BIN_DIR, DEFAULT_CONF_DIR
from overlay.cni.netconf import DEFAULT_DATA_DIR as DEFAULT_CNI_DATA_DIR
from overlay.config import check_etcd_prefix
from overlay.daemon.http import parse_hostport
from overlay.daemon.watchhealth import DEFAULT_MAX_LAG
from overlay.errors import ConfigError
from overlay.runtimefile import DEFAULT_RUNTIME_FILE
from overlay.subnet.etcdconf import (
    DEFAULT_ENDPOINTS,
    DEFAULT_PREFIX,
    EtcdOptions,
    make_etcd_options,
)
from overlay.subnet.manager import DEFAULT_RENEW_MARGIN, DEFAULT_TTL
from overlay.subnetenv import DEFAULT_SUBNET_FILE
from overlay.util.boolean import parse_bool
from overlay.util.ifname import ifname_problem
from overlay.util.seconds import seconds_problem
from overlay.util.version import version_line

MAX_HEARTBEAT_PERIOD = 3600.0  # seconds: --heartbeat-period and --probe-interval

# The bounds of every duration flag, in seconds, both inclusive (see check_seconds).  The
# upper ones are what makes sense for the flag, and each lies far below where a wait
# overflows (time.sleep and Event.wait refuse ~9.2e9 s, a datetime past 9999 ~2.5e11 s);
# the lower ones keep a loop from spinning.
RECONCILE_INTERVAL_BOUNDS = (0.1, 86400.0)  # a day: the periodic reconcile is a safety net
HEARTBEAT_BOUNDS = (0.5, MAX_HEARTBEAT_PERIOD)  # --heartbeat-period, --probe-interval
WATCH_LAG_LIMIT_BOUNDS = (0.2, 86400.0)  # a day without a word from etcd
MAX_LEASE_TTL = 7 * 86400  # a week (7 times Flannel's 24 h); a reservation never expires
LEASE_TTL_BOUNDS = (1, MAX_LEASE_TTL)
RENEW_MARGIN_BOUNDS = (0, MAX_LEASE_TTL)  # a margin >= the TTL renews at half the TTL

ENV_PREFIX = "OVERLAYD_"
DEFAULT_STATE_DIR = "/var/lib/overlay"
DEFAULT_CNI_SOCKET = "/run/overlay/cni.sock"
DEFAULT_HEARTBEAT_PERIOD, DEFAULT_PROBE_INTERVAL = 5.0, 10.0


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
    e.add_argument("--etcd-password", help="etcd password (prefer --etcd-password-file)")
    e.add_argument("--etcd-password-file",
                   help="file holding the etcd password (its path, never the password, "
                   "goes into --runtime-file for overlayctl)")
    n = p.add_argument_group("node")
    n.add_argument("--node-name", default="",
                   help="this node's name in the cluster view (nodes/, pods/); a DNS-1123 "
                   "subdomain (default: the hostname, lower-cased)")
    n.add_argument("--iface", help="underlay interface: a name or a regex "
                   "(default: the interface of the default route)")
    n.add_argument("--public-ip", help="this node's underlay IP (default: --iface's address)")
    n.add_argument("--public-ipv6", help="this node's IPv6 underlay address, when the network "
                   "config enables IPv6 (default: the underlay interface's global IPv6 address)")
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
    n.add_argument("--policy-log-denied", action="store_true",
                   help="log packets NetworkPolicy drops to the kernel log (nft log, "
                        "prefix 'overlay-policy denied ingress|egress: ', at most 10/s "
                        "per direction after a burst of 20; default off)")
    n.add_argument("--reconcile-interval", type=float, default=10.0,
                   help="seconds between periodic reconciles (default %(default)s)")
    n.add_argument("--heartbeat-period", type=float, default=DEFAULT_HEARTBEAT_PERIOD,
                   help="seconds between heartbeat keepalives; the heartbeat's etcd lease "
                   "lasts two periods, so a dead node is NotReady within two (default "
                   "%(default)s)")
    n.add_argument("--probe-interval", type=float, default=DEFAULT_PROBE_INTERVAL,
                   help="seconds between health-mesh probes of every peer (default "
                   "%(default)s)")
    s = p.add_argument_group("services")
    s.add_argument("--healthz-addr", default="",
                   help="HOST:PORT for /healthz, /readyz, /metrics (default: off)")
    s.add_argument("--watch-lag-limit", type=float, default=DEFAULT_MAX_LAG,
                   help="/readyz fails when the lease watch has not heard from etcd for "
                   "this many seconds (default %(default)s)")
    s.add_argument("--runtime-file", default=DEFAULT_RUNTIME_FILE,
                   help="where overlayd writes its effective settings for overlayctl "
                   "(default %(default)s; root-only, never a password)")
    s.add_argument("--cni-conf-dir", default=DEFAULT_CONF_DIR,
                   help="this node's CNI config dir, recorded in --runtime-file for "
                   "overlayctl diagnose (default %(default)s)")
    s.add_argument("--cni-bin-dir", default=DEFAULT_BIN_DIR,
                   help="this node's CNI plugin dirs (colon-separated, like CNI_PATH), "
                   "recorded in --runtime-file (default %(default)s)")
    s.add_argument("--cni-socket", default=DEFAULT_CNI_SOCKET,
                   help="serve the CNI plugin warm on this unix socket "
                   "(default %(default)s; empty disables)")
    s.add_argument("--cni-data-dir", default=DEFAULT_CNI_DATA_DIR,
                   help="the CNI plugin's dataDir (host-local IPAM records and pod "
                   "metadata), which the pod registry is published from (default %(default)s)")
    p.add_argument("--version", action="version", version=version_line("overlayd"),
                   help="print overlayd's version and exit")
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
            convert = action.type
            # overlayd's flags convert with functions and classes (int, float, parse_*),
            # never with argparse's registered type names or a FileType
            assert not isinstance(convert, str | argparse.FileType), f"{name}: {convert!r}"
            try:
                value = convert(raw)
            except ValueError as e:
                raise ConfigError(f"{name}={raw!r}: not a valid {convert.__name__}") from e
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
    node_name: str = ""
    runtime_file: str = DEFAULT_RUNTIME_FILE
    heartbeat_period: float = DEFAULT_HEARTBEAT_PERIOD
    probe_interval: float = DEFAULT_PROBE_INTERVAL
    cni_data_dir: str = DEFAULT_CNI_DATA_DIR
    cni_conf_dir: str = DEFAULT_CONF_DIR
    cni_bin_dir: str = DEFAULT_BIN_DIR
    policy_log_denied: bool = False
    public_ipv6: IPv6Address | None = None


def _check_iface_pattern(iface: str) -> None:
    """--iface is matched as a regex when no link has that exact name: a pattern that
    cannot compile would only fail later, after etcd was contacted, so refuse it here.
    A real name with regex characters can still be given escaped (``eth\\[0``)."""
    try:
        re.compile(iface)
    except re.error as e:
        raise ConfigError(f"--iface {iface!r}: not a valid regex ({e})") from e


def check_seconds(flag: str, value: float, low: float, high: float) -> None:
    """overlayd's durations (periods, intervals, limits, TTLs) by the one rule,
    ``seconds_problem``: ConfigError naming the flag and the value (bounded)."""
    problem = seconds_problem(value, low, high)
    if problem:
        shown = str(value)
        shown = shown if len(shown) <= 24 else shown[:24] + "..."
        raise ConfigError(f"{flag} {shown}: {problem}")


def default_node_name() -> str:
    """The hostname as a node name: lower-cased, as Kubernetes names nodes."""
    return socket.gethostname().lower()


def parse_settings(argv: Sequence[str] | None = None,
                   environ: dict[str, str] | None = None) -> Settings:
    """Flags + environment -> validated Settings; ConfigError / SystemExit(2) otherwise."""
    parser = build_parser()
    apply_env_defaults(parser, dict(os.environ if environ is None else environ))
    a = parser.parse_args(argv)
    check_etcd_prefix(a.etcd_prefix, "--etcd-prefix")
    etcd = make_etcd_options(a.etcd_endpoints, a.etcd_prefix, a.etcd_cafile, a.etcd_certfile,
                             a.etcd_keyfile, a.etcd_username, a.etcd_password,
                             password_file=a.etcd_password_file)
    public_ip = None
    if a.public_ip:
        try:
            public_ip = IPv4Address(a.public_ip)
        except ValueError:
            raise ConfigError(f"--public-ip {a.public_ip!r}: not an IPv4 address") from None
        if public_ip.is_unspecified or public_ip.is_multicast or public_ip.is_loopback:
            raise ConfigError(f"--public-ip {public_ip}: must be a unicast underlay address")
    public_ipv6 = _public_ipv6(a.public_ipv6) if a.public_ipv6 else None
    if a.iface is not None and not a.iface.strip():
        raise ConfigError("--iface: empty; give an interface name or a regex")
    if a.iface is not None:
        _check_iface_pattern(a.iface)
    for flag, value, (low, high) in (
            ("--lease-ttl", a.lease_ttl, LEASE_TTL_BOUNDS),
            ("--lease-renew-margin", a.lease_renew_margin, RENEW_MARGIN_BOUNDS),
            ("--reconcile-interval", a.reconcile_interval, RECONCILE_INTERVAL_BOUNDS),
            ("--watch-lag-limit", a.watch_lag_limit, WATCH_LAG_LIMIT_BOUNDS),
            ("--heartbeat-period", a.heartbeat_period, HEARTBEAT_BOUNDS),
            ("--probe-interval", a.probe_interval, HEARTBEAT_BOUNDS)):
        check_seconds(flag, value, low, high)
    problem = ifname_problem(a.vxlan_device) if a.vxlan_device else None
    if problem:
        raise ConfigError(f"--vxlan-device {a.vxlan_device!r}: not a valid interface name "
                          f"(it {problem})")
    if a.healthz_addr:
        parse_hostport(a.healthz_addr)
    node_name = a.node_name or default_node_name()
    problem = dns_subdomain_problem(node_name)
    if problem:
        source = "--node-name" if a.node_name else "the hostname (set --node-name)"
        raise ConfigError(f"{source} {node_name!r}: not a valid node name (it {problem})")
    for flag, path in (("--subnet-file", a.subnet_file), ("--state-dir", a.state_dir),
                       ("--runtime-file", a.runtime_file), ("--cni-data-dir", a.cni_data_dir),
                       ("--cni-conf-dir", a.cni_conf_dir), ("--cni-bin-dir", a.cni_bin_dir)):
        if not path:
            raise ConfigError(f"{flag}: empty path")
    return Settings(etcd, a.iface, public_ip, a.vxlan_device, a.subnet_file, a.state_dir,
                    a.lease_ttl, a.lease_renew_margin, a.ip_masq, a.reconcile_interval,
                    a.healthz_addr, a.cni_socket, a.verbose, a.watch_lag_limit,
                    node_name, a.runtime_file, a.heartbeat_period, a.probe_interval,
                    a.cni_data_dir, a.cni_conf_dir, a.cni_bin_dir, public_ipv6=public_ipv6,
                    policy_log_denied=a.policy_log_denied)


def _public_ipv6(text: str) -> IPv6Address:
    try:
        ip = IPv6Address(text)
    except ValueError:
        raise ConfigError(f"--public-ipv6 {text!r}: not an IPv6 address") from None
    if (ip.is_unspecified or ip.is_multicast or ip.is_loopback or ip.is_link_local
            or ip.ipv4_mapped is not None):
        raise ConfigError(f"--public-ipv6 {ip}: must be a global unicast underlay address")
    return ip
