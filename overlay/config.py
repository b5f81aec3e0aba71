"""The cluster's network config (Flannel's JSON field names), parsed and validated.

Stored in etcd at ``<prefix>/config``::

    {"Network": "10.244.0.0/16", "SubnetLen": 24, "SubnetMin": "10.244.1.0",
     "SubnetMax": "10.244.255.0",
     "Backend": {"Type": "vxlan", "VNI": 1, "Port": 8472, "DirectRouting": false}}

Defaults follow Flannel: ``SubnetLen`` is 24 for a /22 or larger network, else the
network's prefix + 2; ``SubnetMin`` skips the first subnet (its .0 would clash with
the network address), ``SubnetMax`` is the last subnet.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Any, Iterator

from .errors import ConfigError

SUPPORTED_BACKENDS = ("vxlan",)
DEFAULT_VNI = 1
DEFAULT_PORT = 8472
VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8


def parse_bool(text: str) -> bool | None:
    """true/false as flags, env vars and subnet.env spell them; None if neither."""
    v = text.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    return None


@dataclass(frozen=True)
class BackendConfig:
    type: str = "vxlan"
    vni: int = DEFAULT_VNI
    port: int = DEFAULT_PORT
    direct_routing: bool = False
    mtu: int | None = None  # None: underlay MTU - 50

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"Type": self.type, "VNI": self.vni, "Port": self.port}
        if self.direct_routing:
            out["DirectRouting"] = True
        if self.mtu is not None:
            out["MTU"] = self.mtu
        return out


@dataclass(frozen=True)
class NetworkConfig:
    network: IPv4Network
    subnet_len: int
    subnet_min: IPv4Address
    subnet_max: IPv4Address
    backend: BackendConfig = field(default_factory=BackendConfig)

    @property
    def subnet_size(self) -> int:
        return 1 << (32 - self.subnet_len)

    @property
    def subnet_count(self) -> int:
        """How many subnets lie in [SubnetMin, SubnetMax]."""
        return (int(self.subnet_max) - int(self.subnet_min)) // self.subnet_size + 1

    def iter_subnets(self) -> Iterator[IPv4Network]:
        """Every allocatable subnet, lowest first."""
        size = self.subnet_size
        for base in range(int(self.subnet_min), int(self.subnet_max) + 1, size):
            yield IPv4Network((base, self.subnet_len))

    def in_range(self, subnet: IPv4Network) -> bool:
        return (
            subnet.prefixlen == self.subnet_len
            and self.subnet_min <= subnet.network_address <= self.subnet_max
        )

    def describe_range(self) -> str:
        return f"{self.subnet_min}/{self.subnet_len}..{self.subnet_max}/{self.subnet_len}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "Network": str(self.network),
            "SubnetLen": self.subnet_len,
            "SubnetMin": str(self.subnet_min),
            "SubnetMax": str(self.subnet_max),
            "Backend": self.backend.to_dict(),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=False)


def parse_network_config(data: str | bytes | dict[str, Any]) -> NetworkConfig:
    """Parse and validate a network config; every error names the field and why."""
    if isinstance(data, (str, bytes)):
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise ConfigError(f"network config is not valid JSON: {e}") from e
    else:
        obj = data
    if not isinstance(obj, dict):
        raise ConfigError("network config must be a JSON object")
    if obj.get("EnableIPv6"):
        raise ConfigError("EnableIPv6: IPv6 pod networks are not supported")
    if obj.get("EnableIPv4") is False:
        raise ConfigError("EnableIPv4: false leaves nothing to do; only IPv4 is supported")

    network = _parse_network(obj.get("Network"))
    subnet_len = _parse_subnet_len(obj.get("SubnetLen"), network)
    size = 1 << (32 - subnet_len)
    subnet_min = _parse_bound(obj, "SubnetMin", network, subnet_len,
                              IPv4Address(int(network.network_address) + size))
    subnet_max = _parse_bound(obj, "SubnetMax", network, subnet_len,
                              IPv4Address(int(network.broadcast_address) + 1 - size))
    if subnet_min > subnet_max:
        raise ConfigError(f"SubnetMin {subnet_min} is above SubnetMax {subnet_max}")
    backend = _parse_backend(obj.get("Backend"))
    return NetworkConfig(network, subnet_len, subnet_min, subnet_max, backend)


def _parse_network(value: Any) -> IPv4Network:
    if value is None:
        raise ConfigError('Network: missing (e.g. "Network": "10.244.0.0/16")')
    if not isinstance(value, str):
        raise ConfigError(f"Network: must be a CIDR string, got {value!r}")
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError as e:
        raise ConfigError(f"Network: {value!r} is not a valid CIDR") from e
    if not isinstance(net, IPv4Network):
        raise ConfigError(f"Network: {value!r} is IPv6; only IPv4 is supported")
    if "/" not in value:
        raise ConfigError(f"Network: {value!r} has no prefix length (e.g. {value}/16)")
    if str(net.network_address) != value.split("/")[0]:
        raise ConfigError(f"Network: {value!r} has host bits set; did you mean {net}?")
    if net.prefixlen > 28:
        raise ConfigError(f"Network: {value} is too small; the smallest useful network is a /28")
    return net


def _parse_subnet_len(value: Any, network: IPv4Network) -> int:
    if value is None or value == 0:
        return 24 if network.prefixlen <= 22 else network.prefixlen + 2
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"SubnetLen: must be an integer, got {value!r}")
    if value > 30:
        raise ConfigError(f"SubnetLen: {value} is too long; it must be at most 30 "
                          "(each node needs room for a gateway and pods)")
    if value < network.prefixlen + 2:
        raise ConfigError(f"SubnetLen: {value} leaves fewer than four subnets in "
                          f"{network}; use at least {network.prefixlen + 2}")
    return value


def _parse_bound(obj: dict[str, Any], name: str, network: IPv4Network,
                 subnet_len: int, default: IPv4Address) -> IPv4Address:
    value = obj.get(name)
    if value is None or value == "":
        return default
    try:
        addr = IPv4Address(value)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{name}: {value!r} is not an IPv4 address") from e
    if addr not in network:
        raise ConfigError(f"{name}: {addr} is outside the Network {network}")
    if int(addr) % (1 << (32 - subnet_len)):
        raise ConfigError(f"{name}: {addr} is not on a /{subnet_len} boundary")
    return addr


def _parse_backend(value: Any) -> BackendConfig:
    if value is None:
        return BackendConfig()
    if not isinstance(value, dict):
        raise ConfigError(f"Backend: must be an object, got {value!r}")
    btype = value.get("Type", "vxlan")
    if not isinstance(btype, str) or btype.lower() not in SUPPORTED_BACKENDS:
        raise ConfigError(f"Backend.Type: {btype!r} is not supported; use \"vxlan\"")
    vni = _int_field(value, "VNI", DEFAULT_VNI, 1, (1 << 24) - 1)
    port = _int_field(value, "Port", DEFAULT_PORT, 1, 65535)
    mtu = _int_field(value, "MTU", None, 576, 65535)
    direct = value.get("DirectRouting", False)
    if not isinstance(direct, bool):
        raise ConfigError(f"Backend.DirectRouting: must be true or false, got {direct!r}")
    return BackendConfig(btype.lower(), vni, port, direct, mtu)


def _int_field(obj: dict[str, Any], name: str, default: int | None, lo: int, hi: int) -> int | None:
    value = obj.get(name)
    if value is None or (value == 0 and default is not None):
        return default
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"Backend.{name}: must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise ConfigError(f"Backend.{name}: {value} is out of range {lo}..{hi}")
    return value
