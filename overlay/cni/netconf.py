"""The plugin's network configuration, and the node subnet it allocates from.

Config keys (design.md): ``bridge``, ``subnetFile``, ``dataDir``, ``hairpinMode``,
``isDefaultGateway``, ``forceAddress``, ``ipMasq``, ``promiscMode``, ``mtu``, ``subnet``
(and ``network``, the cluster's pod network, when ``subnet`` is given), ``ipv6Subnet``
and ``ipv6Network`` (the same for IPv6: a dual-stack pod); plus ``runtimeConfig.mac``,
``runtimeConfig.ips``, ``prevResult`` and ``cni.dev/valid-attachments``.
An explicit ``subnet`` overrides subnet.env (its IPv6 half too), so the plugin runs
without a daemon.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)
from typing import Any, NamedTuple

from overlay.errors import CNIError, SubnetEnvError
from overlay.subnetenv import DEFAULT_SUBNET_FILE, load_subnet_env
from overlay.util.ifname import ifname_problem

# The plugin's defaults, defined here only (install-cni, diagnose and the lab import them).
DEFAULT_BRIDGE = "cni0"
DEFAULT_DATA_DIR = "/var/lib/cni/networks"
DEFAULT_MTU = 1500
_MAC_RE = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")


def is_mac(value: str) -> bool:
    return bool(_MAC_RE.fullmatch(value))  # whole string: "$" would let "\n" through


class NodeSubnet(NamedTuple):
    """What ADD needs from the node: the subnet, its gateway, the pod network, the MTU;
    and the IPv6 half of each when the node is dual-stack (subnet.env's
    ``OVERLAY_IPV6_SUBNET``, or the config's ``ipv6Subnet``).  An IPv6-only node has
    the IPv6 half alone (``subnet``, ``gateway`` and ``network`` None)."""

    subnet: IPv4Network | None
    gateway: IPv4Address | None
    network: IPv4Network | None
    mtu: int
    ipv6_subnet: IPv6Network | None = None
    ipv6_gateway: IPv6Address | None = None
    ipv6_network: IPv6Network | None = None

    @property
    def gateway_interface(self) -> IPv4Interface | None:
        if self.subnet is None or self.gateway is None:
            return None
        return IPv4Interface(f"{self.gateway}/{self.subnet.prefixlen}")

    @property
    def ipv6_gateway_interface(self) -> IPv6Interface | None:
        if self.ipv6_subnet is None or self.ipv6_gateway is None:
            return None
        return IPv6Interface(f"{self.ipv6_gateway}/{self.ipv6_subnet.prefixlen}")


class NetConf(NamedTuple):
    cni_version: str
    name: str
    bridge: str = DEFAULT_BRIDGE
    subnet_file: str = DEFAULT_SUBNET_FILE
    data_dir: str = DEFAULT_DATA_DIR
    hairpin_mode: bool = False
    is_default_gateway: bool = False
    force_address: bool = False
    ip_masq: bool = False
    promisc_mode: bool = False
    mtu: int | None = None
    subnet: IPv4Network | None = None
    network: IPv4Network | None = None
    mac: str | None = None  # runtimeConfig.mac
    ipv6_subnet: IPv6Network | None = None
    ipv6_network: IPv6Network | None = None

    def load_node_subnet(self) -> NodeSubnet:
        """From the config's ``subnet`` (or, IPv6-only, ``ipv6Subnet``) if given, else
        subnet.env; CNIError otherwise."""
        if self.subnet is None and self.ipv6_subnet is not None:
            only6 = self.ipv6_subnet
            return NodeSubnet(None, None, None, self.mtu or DEFAULT_MTU, only6,
                              only6.network_address + 1, self.ipv6_network or only6)
        if self.subnet is not None:
            network = self.network or self.subnet
            v6 = self.ipv6_subnet
            return NodeSubnet(self.subnet, self.subnet.network_address + 1, network,
                              self.mtu or DEFAULT_MTU, v6,
                              v6.network_address + 1 if v6 is not None else None,
                              (self.ipv6_network or v6) if v6 is not None else None)
        try:
            env = load_subnet_env(self.subnet_file)
        except SubnetEnvError as e:
            raise subnet_env_error(self.subnet_file, e) from None
        gw6 = env.ipv6_subnet  # the bridge's IPv6 gateway with the prefix, when dual-stack
        v4 = env.subnet  # None on an IPv6-only node
        return NodeSubnet(v4.network if v4 else None, v4.ip if v4 else None, env.network,
                          self.mtu or env.mtu,
                          gw6.network if gw6 is not None else None,
                          gw6.ip if gw6 is not None else None,
                          env.ipv6_network if gw6 is not None else None)


def subnet_env_error(path: str, error: SubnetEnvError) -> CNIError:
    """A missing subnet.env is transient (the daemon writes it once it holds a lease), so
    ADD answers 11 "try again"; a malformed one is a configuration error (7)."""
    if not os.path.exists(path):
        return CNIError(CNIError.TRY_AGAIN, f"subnet file {path} does not exist", str(error))
    return CNIError(CNIError.INVALID_CONFIG, f"subnet file {path} is unusable", str(error))


def _bool(config: Mapping[str, Any], key: str, default: bool) -> bool:
    value = config.get(key, default)
    if not isinstance(value, bool):
        raise CNIError(CNIError.INVALID_CONFIG, f"\"{key}\" must be true or false",
                       f"got {value!r}")
    return value


def _str(config: Mapping[str, Any], key: str, default: str) -> str:
    value = config.get(key, default)
    if not isinstance(value, str) or not value or "\0" in value:
        raise CNIError(CNIError.INVALID_CONFIG, f"\"{key}\" must be a non-empty string "
                       "without NUL", f"got {value!r}")
    return value


def _network(config: Mapping[str, Any], key: str) -> IPv4Network | None:
    value = config.get(key)
    if value is None:
        return None
    if not isinstance(value, str):  # IPv4Network(True) or (167772160) would "work"
        raise CNIError(CNIError.INVALID_CONFIG, f"\"{key}\" is not an IPv4 CIDR string",
                       f"got {value!r}")
    try:
        return IPv4Network(value, strict=False)
    except (ValueError, TypeError) as e:
        raise CNIError(CNIError.INVALID_CONFIG, f"\"{key}\" is not an IPv4 CIDR",
                       f"{value!r}: {e}") from None


def _network6(config: Mapping[str, Any], key: str) -> IPv6Network | None:
    value = config.get(key)
    if value is None:
        return None
    try:
        if not isinstance(value, str):
            raise TypeError(f"got {value!r}")
        return IPv6Network(value, strict=False)
    except (ValueError, TypeError) as e:
        raise CNIError(CNIError.INVALID_CONFIG, f"\"{key}\" is not an IPv6 CIDR",
                       f"{value!r}: {e}") from None


def _ipv6_half(config: Mapping[str, Any],
               subnet: IPv4Network | None) -> tuple[IPv6Network | None, IPv6Network | None]:
    v6 = _network6(config, "ipv6Subnet")
    network = _network6(config, "ipv6Network")
    if v6 is None:
        if network is not None:
            raise CNIError(CNIError.INVALID_CONFIG, "\"ipv6Network\" needs \"ipv6Subnet\"", "")
        return None, None
    if v6.prefixlen > 126:
        raise CNIError(CNIError.INVALID_CONFIG, f"ipv6Subnet {v6} is too small",
                       "use a /126 or larger subnet")
    if network is not None and not v6.subnet_of(network):
        raise CNIError(CNIError.INVALID_CONFIG,
                       f"ipv6Subnet {v6} is outside ipv6Network {network}", "")
    return v6, network


def _abs_path(config: Mapping[str, Any], key: str, default: str, relative_ok: bool) -> str:
    """An absolute path: a relative one would name one file for the plugin run by the
    runtime (its working directory) and another for overlayd's warm server (overlayd's)."""
    value = _str(config, key, default)
    if not os.path.isabs(value) and not relative_ok:
        raise CNIError(CNIError.INVALID_CONFIG, f"\"{key}\" must be an absolute path",
                       f"got {value!r:.80}")
    return value


def parse_netconf(config: Mapping[str, Any], cni_version: str, *,
                  relative_paths: bool = False) -> NetConf:
    """The netconf's one rule. ``relative_paths`` (DEL) lets a relative ``subnetFile`` or
    ``dataDir`` through, for the caller to skip: a runtime cleaning up after a refused
    ADD must not be refused again."""
    bridge = _str(config, "bridge", DEFAULT_BRIDGE)
    problem = ifname_problem(bridge)
    if problem:
        raise CNIError(CNIError.INVALID_CONFIG, "\"bridge\" is not a valid interface name",
                       f"{bridge!r} {problem}")
    mtu = config.get("mtu")
    if mtu is not None and (not isinstance(mtu, int) or isinstance(mtu, bool)
                            or not 576 <= mtu <= 65535):
        raise CNIError(CNIError.INVALID_CONFIG, "\"mtu\" must be an integer in 576..65535",
                       f"got {mtu!r}")
    subnet = _network(config, "subnet")
    if subnet is not None and subnet.prefixlen > 30:
        raise CNIError(CNIError.INVALID_CONFIG, f"subnet {subnet} is too small",
                       "use a /30 or larger subnet")
    network = _network(config, "network")
    if subnet is not None and network is not None and not subnet.subnet_of(network):
        raise CNIError(CNIError.INVALID_CONFIG,
                       f"subnet {subnet} is outside network {network}", "")
    ipv6_subnet, ipv6_network = _ipv6_half(config, subnet)
    runtime = config.get("runtimeConfig") or {}
    mac = runtime.get("mac") if isinstance(runtime, dict) else None
    if mac is not None and (not isinstance(mac, str) or not is_mac(mac)):
        raise CNIError(CNIError.INVALID_CONFIG, "runtimeConfig.mac is not a MAC address",
                       f"got {mac!r}")
    return NetConf(
        cni_version=cni_version, name=config["name"], bridge=bridge,
        subnet_file=_abs_path(config, "subnetFile", DEFAULT_SUBNET_FILE, relative_paths),
        data_dir=_abs_path(config, "dataDir", DEFAULT_DATA_DIR, relative_paths),
        hairpin_mode=_bool(config, "hairpinMode", False),
        is_default_gateway=_bool(config, "isDefaultGateway", False),
        force_address=_bool(config, "forceAddress", False),
        ip_masq=_bool(config, "ipMasq", False),
        promisc_mode=_bool(config, "promiscMode", False),
        mtu=mtu, subnet=subnet, network=network,
        mac=mac.lower() if mac else None,
        ipv6_subnet=ipv6_subnet, ipv6_network=ipv6_network,
    )
