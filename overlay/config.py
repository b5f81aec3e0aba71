"""The cluster's network config (Flannel's JSON field names), parsed and validated.

Stored in etcd at ``<prefix>/config``::

    {"Network": "10.244.0.0/16", "SubnetLen": 24, "SubnetMin": "10.244.1.0",
     "SubnetMax": "10.244.255.0",
     "Backend": {"Type": "vxlan", "VNI": 1, "Port": 8472, "DirectRouting": false}}

Defaults follow Flannel: ``SubnetLen`` is 24 for a /22 or larger network, else the
network's prefix + 2; ``SubnetMin`` skips the first subnet (its .0 would clash with
the network address), ``SubnetMax`` is the last subnet.

Dual-stack adds Flannel's ``"EnableIPv6": true``, ``"IPv6Network": "fd00:10:244::/56"``,
``IPv6SubnetLen`` (64 for a /62 or larger network, else prefix + 2) and
``IPv6SubnetMin``/``IPv6SubnetMax`` (addresses, defaults as for IPv4).  An IPv4-only
config is written without any of them, exactly as before.

IPv6-only is Flannel's ``"EnableIPv4": false`` with ``"EnableIPv6": true`` and an
``IPv6Network`` (``Network`` is then not needed, and refused if given, since nothing would
use it).  A ``NetworkConfig`` names the family that leases are keyed by its *primary*
family: ``network``, ``subnet_len``, ``subnet_min`` and ``subnet_max`` are IPv4's, or in
an IPv6-only config the IPv6 ones (the ``ipv6_*`` fields hold the same values), so the
subnet manager and the acceptance rule need not care which family it is.

``Backend.MTU`` is the outer (underlay) MTU, unlike Flannel's (flannel#1781 gave both
devices the same MTU): ``overlay.<VNI>`` gets MTU - 50 and ``overlay-v6.<VNI>`` MTU - 70.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any, TypeAlias, TypeGuard, TypeVar

from overlay.errors import ConfigError
from overlay.util import jsontext

SUPPORTED_BACKENDS = ("vxlan",)
DEFAULT_VNI = 1
DEFAULT_PORT = 8472
VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
VXLAN_OVERHEAD_V6 = 70  # outer Ethernet 14 + IPv6 40 + UDP 8 + VXLAN 8
MIN_POD_MTU = 576  # IPv4's minimum datagram; subnet.env and the CNI plugin refuse less
IPV6_MIN_MTU = 1280  # RFC 8200: below it a link carries no IPv6 at all


@dataclass(frozen=True)
class BackendConfig:
    type: str = "vxlan"
    vni: int = DEFAULT_VNI
    port: int = DEFAULT_PORT
    direct_routing: bool = False
    # The outer (underlay) MTU: each family's device gets it minus its own overhead
    # (see ``device_mtu``).  None: the underlay's own MTU.
    mtu: int | None = None

    def outer_mtu(self, underlay_mtu: int) -> int:
        """The MTU the VXLAN packets may have: Backend.MTU, but never more than the
        underlay carries (a larger one would have the kernel drop what it cannot send)."""
        return min(self.mtu, underlay_mtu) if self.mtu else underlay_mtu

    def device_mtu(self, underlay_mtu: int, version: int = 4) -> int:
        """The MTU of the family's VXLAN device (``overlay.<VNI>`` for 4,
        ``overlay-v6.<VNI>`` for 6): the outer MTU minus that family's encapsulation."""
        overhead = VXLAN_OVERHEAD_V6 if version == 6 else VXLAN_OVERHEAD
        return self.outer_mtu(underlay_mtu) - overhead

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"Type": self.type, "VNI": self.vni, "Port": self.port}
        if self.direct_routing:
            out["DirectRouting"] = True
        if self.mtu is not None:
            out["MTU"] = self.mtu
        return out


IPNetwork: TypeAlias = IPv4Network | IPv6Network
IPAddress: TypeAlias = IPv4Address | IPv6Address


@dataclass(frozen=True)
class NetworkConfig:
    # The primary family (the one leases are keyed by): IPv4, or IPv6 when IPv6-only.
    network: IPNetwork
    subnet_len: int
    subnet_min: IPAddress
    subnet_max: IPAddress
    backend: BackendConfig = field(default_factory=BackendConfig)
    enable_ipv4: bool = True
    enable_ipv6: bool = False
    # With enable_ipv6 these are all set (parse_network_config fills the defaults);
    # without it ipv6_network and the bounds are None.
    ipv6_network: IPv6Network | None = None
    ipv6_subnet_len: int = 64
    ipv6_subnet_min: IPv6Address | None = None
    ipv6_subnet_max: IPv6Address | None = None

    @property
    def ipv6_only(self) -> bool:
        """``EnableIPv4: false``: leases, devices and pods are IPv6 only."""
        return not self.enable_ipv4

    @property
    def dual_stack(self) -> bool:
        """Both families: IPv4 is primary, every lease may carry an IPv6 half."""
        return self.enable_ipv4 and self.enable_ipv6

    @property
    def ipv4_network(self) -> IPv4Network | None:
        """IPv4's Network, None in an IPv6-only config."""
        return self.network if isinstance(self.network, IPv4Network) else None

    @property
    def ipv6_subnet_size(self) -> int:
        return 1 << (128 - self.ipv6_subnet_len)

    @property
    def ipv6_subnet_count(self) -> int:
        """How many IPv6 subnets lie in [IPv6SubnetMin, IPv6SubnetMax] (0 without IPv6)."""
        if self.ipv6_subnet_min is None or self.ipv6_subnet_max is None:
            return 0
        return ((int(self.ipv6_subnet_max) - int(self.ipv6_subnet_min))
                // self.ipv6_subnet_size + 1)

    def ipv6_in_range(self, subnet: IPv6Network) -> bool:
        lo, hi = self.ipv6_subnet_min, self.ipv6_subnet_max
        return (lo is not None and hi is not None and subnet.prefixlen == self.ipv6_subnet_len
                and lo <= subnet.network_address <= hi)

    def ipv6_subnet_at(self, index: int) -> IPv6Network:
        """The ``index``-th allocatable IPv6 subnet (0: IPv6SubnetMin); IndexError past
        IPv6SubnetMax.  IPv6 ranges are too large to iterate, so callers index."""
        if self.ipv6_subnet_min is None or not 0 <= index < self.ipv6_subnet_count:
            raise IndexError(f"no IPv6 subnet number {index}")
        base = int(self.ipv6_subnet_min) + index * self.ipv6_subnet_size
        return IPv6Network((base, self.ipv6_subnet_len))

    def describe_ipv6_range(self) -> str:
        n = self.ipv6_subnet_len
        return f"{self.ipv6_subnet_min}/{n}..{self.ipv6_subnet_max}/{n}"

    @property
    def subnet_size(self) -> int:
        return 1 << (self.network.max_prefixlen - self.subnet_len)

    @property
    def subnet_count(self) -> int:
        """How many subnets lie in [SubnetMin, SubnetMax]."""
        return (int(self.subnet_max) - int(self.subnet_min)) // self.subnet_size + 1

    def iter_subnets(self) -> Iterator[IPNetwork]:
        """Every allocatable subnet of the primary family, lowest first (lazily: an IPv6
        range may hold billions)."""
        size = self.subnet_size
        net_type = type(self.network)
        for base in range(int(self.subnet_min), int(self.subnet_max) + 1, size):
            yield net_type((base, self.subnet_len))

    def in_range(self, subnet: IPNetwork) -> bool:
        return (
            subnet.version == self.network.version
            and subnet.prefixlen == self.subnet_len
            and int(self.subnet_min) <= int(subnet.network_address) <= int(self.subnet_max)
        )

    def describe_range(self) -> str:
        return f"{self.subnet_min}/{self.subnet_len}..{self.subnet_max}/{self.subnet_len}"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if not self.enable_ipv4:
            out["EnableIPv4"] = False
        else:
            out.update({
                "Network": str(self.network),
                "SubnetLen": self.subnet_len,
                "SubnetMin": str(self.subnet_min),
                "SubnetMax": str(self.subnet_max),
            })
        if self.enable_ipv6:  # an IPv4-only config is written exactly as before
            out.update({
                "EnableIPv6": True,
                "IPv6Network": str(self.ipv6_network),
                "IPv6SubnetLen": self.ipv6_subnet_len,
                "IPv6SubnetMin": str(self.ipv6_subnet_min),
                "IPv6SubnetMax": str(self.ipv6_subnet_max),
            })
        out["Backend"] = self.backend.to_dict()
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=False)


MAX_CONFIG_BYTES = 64 * 1024  # a real config is ~200 bytes; bounds a hostile one
_MAX_INT_DIGITS = 20  # nothing in a config needs more; refuses 10**4300-sized numbers
_MAX_SHOWN = 40  # characters of a rejected value quoted in an error

# Flannel's top-level fields (Go's encoding/json matches them case-insensitively, so we
# do too).
_IPV6_FIELDS = ("IPv6Network", "IPv6SubnetLen", "IPv6SubnetMin", "IPv6SubnetMax")
_TOP_FIELDS = ("Network", "SubnetLen", "SubnetMin", "SubnetMax", "Backend",
               "EnableIPv4", "EnableIPv6", *_IPV6_FIELDS)
_TOP_UNSUPPORTED: dict[str, str] = {}
# Flannel's vxlan backend fields; GBP, Learning and MacPrefix are accepted only at the
# value this backend behaves as.
_BACKEND_FIELDS = ("Type", "VNI", "Port", "DirectRouting", "MTU")
_BACKEND_UNSUPPORTED = {
    "GBP": "Group Based Policy is not supported (only false is accepted)",
    "Learning": "learning VXLAN devices are not supported (only false is accepted)",
    "MacPrefix": "VTEP MACs are random locally administered addresses; a prefix is "
                 "not supported",
}
_BACKEND_AS_IS = {"GBP": False, "Learning": False}  # MacPrefix: no value is ours
# Address ranges a pod network must not cover: the node's own loopback, multicast,
# "this network" and the reserved/broadcast block would be routed into VXLAN.
_FORBIDDEN_NETWORKS = (
    (IPv4Network("0.0.0.0/8"), "'this network' 0.0.0.0/8"),
    (IPv4Network("127.0.0.0/8"), "loopback 127.0.0.0/8"),
    (IPv4Network("224.0.0.0/4"), "multicast 224.0.0.0/4"),
    (IPv4Network("240.0.0.0/4"), "reserved 240.0.0.0/4 (and broadcast)"),
)
# The same for IPv6: ::/8 holds the unspecified and loopback addresses and IPv4-mapped
# ::ffff:0:0/96; link-local and multicast are never routed between nodes.
_FORBIDDEN_NETWORKS_V6 = (
    (IPv6Network("::/8"), "the reserved block ::/8 (unspecified, loopback, IPv4-mapped)"),
    (IPv6Network("fe80::/10"), "link-local fe80::/10"),
    (IPv6Network("ff00::/8"), "multicast ff00::/8"),
)


def parse_network_config(data: str | bytes | dict[str, Any]) -> NetworkConfig:
    """Parse and validate a network config; every error names the field and why.

    Any input at all gives a ``NetworkConfig`` or one ``ConfigError`` (one line);
    nothing else escapes.
    """
    obj = _load_json(data) if isinstance(data, (str, bytes)) else data
    if not isinstance(obj, dict):
        raise ConfigError(f"network config must be a JSON object, got {_show(obj)}")
    fields = _pick_fields(obj, "", _TOP_FIELDS, _TOP_UNSUPPORTED)
    enable_ipv4, enable_ipv6 = _check_families(fields)
    if not enable_ipv4:
        return _parse_ipv6_only(fields)
    network = _parse_network(fields.get("Network"))
    subnet_len = _parse_subnet_len(fields.get("SubnetLen"), network)
    size = 1 << (32 - subnet_len)
    subnet_min = _parse_bound(fields, "SubnetMin", network, subnet_len,
                              IPv4Address(int(network.network_address) + size))
    subnet_max = _parse_bound(fields, "SubnetMax", network, subnet_len,
                              IPv4Address(int(network.broadcast_address) + 1 - size))
    if subnet_min > subnet_max:
        raise ConfigError(f"SubnetMin {subnet_min} is above SubnetMax {subnet_max}")
    backend = _parse_backend(fields.get("Backend"))
    cfg = NetworkConfig(network, subnet_len, subnet_min, subnet_max, backend)
    return _parse_ipv6(fields, cfg) if enable_ipv6 else cfg


def _parse_ipv6_only(fields: dict[str, Any]) -> NetworkConfig:
    """``EnableIPv4: false``: the IPv6 fields are the primary family's too.  The IPv4
    fields are refused (a Network that nothing uses would look like a dual-stack config)."""
    for name in ("Network", "SubnetLen", "SubnetMin", "SubnetMax"):
        if name in fields and fields[name] != "" and fields[name] != 0:
            raise ConfigError(f"{name}: given with \"EnableIPv4\": false (IPv6-only); "
                              "remove it, or set EnableIPv4 to true for dual-stack")
    net, n, lo, hi = _parse_ipv6_range(fields)
    backend = _parse_backend(fields.get("Backend"))
    _check_ipv6_mtu(backend)
    return NetworkConfig(net, n, lo, hi, backend,
                         enable_ipv4=False, enable_ipv6=True, ipv6_network=net,
                         ipv6_subnet_len=n, ipv6_subnet_min=lo, ipv6_subnet_max=hi)


class _Refused(Exception):
    """Raised from inside the JSON decoder's hooks; turned into a ConfigError."""


def _refuse_constant(name: str) -> Any:
    raise _Refused(f"{name} is not valid JSON (numbers must be finite)")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise _Refused(f"a number of {len(text)} digits is out of range")
    return int(text)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Refused(f"field {_show(key)} appears twice")
        out[key] = value
    return out


def _load_json(data: str | bytes) -> Any:
    """JSON text -> Python values, bounded: size, integer digits, no NaN/Infinity, no
    duplicate fields, strict UTF-8 (json.loads would guess UTF-16/32 from bytes)."""
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"network config is {len(data)} bytes; the limit is "
                          f"{MAX_CONFIG_BYTES}")
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"network config is not UTF-8 text (byte {e.start})") from e
    try:
        return jsontext.loads(data, parse_constant=_refuse_constant, parse_int=_bounded_int,
                              object_pairs_hook=_no_duplicates)
    except _Refused as e:
        raise ConfigError(f"network config: {e}") from e
    except jsontext.NestedTooDeeply as e:
        raise ConfigError("network config is nested too deeply") from e
    except ValueError as e:  # json.JSONDecodeError: its message is one line with a position
        raise ConfigError(f"network config is not valid JSON: {e}") from e


def _show(value: Any) -> str:
    """A rejected value as an error quotes it: one line, bounded, never raising."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**_MAX_INT_DIGITS:
        return "a huge number"
    text = ascii(value) if isinstance(value, str) else repr(value)  # escapes newlines
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    return text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN] + "...(truncated)"


def _pick_fields(obj: dict[str, Any], where: str, known: tuple[str, ...],
                 unsupported: dict[str, str]) -> dict[str, Any]:
    """The object's fields under their canonical names; an unknown or unsupported one
    is an error (a typo must not be dropped silently).  null means absent."""
    canon = {name.lower(): name for name in (*known, *unsupported)}
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = canon.get(key.lower()) if isinstance(key, str) else None
        if name is None:
            raise ConfigError(f"{where}{_unknown(key, canon.values())}")
        if name in out:
            raise ConfigError(f"{where}{name}: given twice (as {_show(key)} too)")
        if value is not None:
            out[name] = value
    return out


def _unknown(key: Any, names: Any) -> str:
    text = _show(key)
    if not isinstance(key, str):
        return f"field {text} is unknown"
    lower = {n.lower(): n for n in names}
    close = difflib.get_close_matches(key.lower()[:64], list(lower), n=1, cutoff=0.6)
    hint = f" (did you mean {lower[close[0]]}?)" if close else ""
    return f"unknown field {text}{hint}"


def _check_families(fields: dict[str, Any]) -> tuple[bool, bool]:
    """(IPv4 on, IPv6 on); the IPv6 fields without EnableIPv6 are refused, since a
    config that names an IPv6Network but has it ignored would look dual-stack."""
    v6, v4 = fields.get("EnableIPv6", False), fields.get("EnableIPv4", True)
    for name, value in (("EnableIPv6", v6), ("EnableIPv4", v4)):
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: must be true or false, got {_show(value)}")
    if not v6:
        for name in _IPV6_FIELDS:
            if name in fields and fields[name] != "" and fields[name] != 0:
                raise ConfigError(f"{name}: given without \"EnableIPv6\": true; add that "
                                  "or remove it")
    if not v4 and not v6:
        raise ConfigError("EnableIPv4 and EnableIPv6 are both false: a network needs a "
                          "family; set EnableIPv6 to true (with an IPv6Network) for IPv6-only")
    return bool(v4), bool(v6)


def _parse_network(value: Any) -> IPv4Network:
    if value is None:
        raise ConfigError('Network: missing (e.g. "Network": "10.244.0.0/16")')
    if not isinstance(value, str):
        raise ConfigError(f"Network: must be a CIDR string, got {_show(value)}")
    shown = _show(value)
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError as e:
        raise ConfigError(f"Network: {shown} is not a valid CIDR") from e
    if "/" not in value:
        raise ConfigError(f"Network: {shown} has no prefix length "
                          f"(e.g. {net.network_address}/16)")
    if not isinstance(net, IPv4Network):
        raise ConfigError(f"Network: {shown} is IPv6; only IPv4 is supported")
    if str(net.network_address) != value.split("/")[0]:
        raise ConfigError(f"Network: {shown} has host bits set; did you mean {net}?")
    if str(net) != value:  # e.g. a netmask instead of a prefix length, as Go refuses too
        raise ConfigError(f"Network: {shown} is not in CIDR form; write {net}")
    if net.prefixlen > 28:
        raise ConfigError(f"Network: {value} is too small; the smallest useful network is a /28")
    for bad, what in _FORBIDDEN_NETWORKS:
        if net.overlaps(bad):
            raise ConfigError(f"Network: {value} overlaps {what}; use a private range "
                              "such as 10.244.0.0/16")
    return net


def _parse_ipv6(fields: dict[str, Any], cfg: NetworkConfig) -> NetworkConfig:
    """The IPv6 half, as strict as the IPv4 one and with Flannel's defaults."""
    net, n, lo, hi = _parse_ipv6_range(fields)
    _check_ipv6_mtu(cfg.backend)
    return replace(cfg, enable_ipv6=True, ipv6_network=net, ipv6_subnet_len=n,
                   ipv6_subnet_min=lo, ipv6_subnet_max=hi)


def _parse_ipv6_range(fields: dict[str, Any]
                      ) -> tuple[IPv6Network, int, IPv6Address, IPv6Address]:
    """IPv6Network, IPv6SubnetLen, IPv6SubnetMin, IPv6SubnetMax (defaults filled)."""
    net = _parse_ipv6_network(fields.get("IPv6Network"))
    n = _parse_subnet_len(fields.get("IPv6SubnetLen"), net, "IPv6SubnetLen")
    size = 1 << (128 - n)
    lo = _parse_bound(fields, "IPv6SubnetMin", net, n,
                      IPv6Address(int(net.network_address) + size))
    hi = _parse_bound(fields, "IPv6SubnetMax", net, n,
                      IPv6Address(int(net.broadcast_address) + 1 - size))
    if lo > hi:
        raise ConfigError(f"IPv6SubnetMin {lo} is above IPv6SubnetMax {hi}")
    return net, n, lo, hi


def _check_ipv6_mtu(backend: BackendConfig) -> None:
    """Backend.MTU is the outer MTU of both families: IPv6's device (MTU - 70) must carry
    IPv6's minimum link MTU, or the kernel gives it no IPv6 at all."""
    least = IPV6_MIN_MTU + VXLAN_OVERHEAD_V6
    if backend.mtu is not None and backend.mtu < least:
        raise ConfigError(f"Backend.MTU: {backend.mtu} is too small for EnableIPv6: the "
                          f"IPv6 device gets MTU - {VXLAN_OVERHEAD_V6} = "
                          f"{backend.mtu - VXLAN_OVERHEAD_V6}, below IPv6's minimum "
                          f"{IPV6_MIN_MTU}; use at least {least} (or leave MTU unset)")


def _parse_ipv6_network(value: Any) -> IPv6Network:
    name = "IPv6Network"
    if value is None or value == "":
        raise ConfigError(f'{name}: missing; EnableIPv6 needs one (e.g. "{name}": '
                          '"fd00:10:244::/56")')
    if not isinstance(value, str):
        raise ConfigError(f"{name}: must be a CIDR string, got {_show(value)}")
    shown = _show(value)
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError as e:
        raise ConfigError(f"{name}: {shown} is not a valid CIDR") from e
    if "/" not in value:
        raise ConfigError(f"{name}: {shown} has no prefix length (e.g. {net.network_address}/56)")
    if not isinstance(net, IPv6Network):
        raise ConfigError(f"{name}: {shown} is IPv4; IPv6Network must be IPv6 (IPv4 goes "
                          "in Network)")
    if net.network_address != IPv6Address(value.split("/")[0]):
        raise ConfigError(f"{name}: {shown} has host bits set; did you mean {net}?")
    if str(net) != value:  # Flannel writes Go's canonical form; so must a config
        raise ConfigError(f"{name}: {shown} is not in canonical form; write {net}")
    if net.prefixlen > 124:
        raise ConfigError(f"{name}: {value} is too small; the smallest useful network is a /124")
    for bad, what in _FORBIDDEN_NETWORKS_V6:
        if net.overlaps(bad):
            raise ConfigError(f"{name}: {value} overlaps {what}; use a unique local range "
                              "such as fd00:10:244::/56")
    return net


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


# Per family: (the default subnet length, the longest allowed, the network's field name,
# the family's name). Both families follow one rule, with Flannel's defaults.
_FAMILY = {4: (24, 30, "Network", "IPv4"), 6: (64, 126, "IPv6Network", "IPv6")}


def _parse_subnet_len(value: Any, network: IPv4Network | IPv6Network,
                      name: str = "SubnetLen") -> int:
    default, longest, _, _ = _FAMILY[network.version]
    if value is None or (_is_int(value) and value == 0):
        return default if network.prefixlen <= default - 2 else network.prefixlen + 2
    if not _is_int(value):
        raise ConfigError(f"{name}: must be an integer, got {_show(value)}")
    if value > longest:
        raise ConfigError(f"{name}: {value} is too long; it must be at most {longest} "
                          "(each node needs room for a gateway and pods)")
    if value < network.prefixlen + 2:
        raise ConfigError(f"{name}: {value} leaves fewer than four subnets in "
                          f"{network}; use at least {network.prefixlen + 2}")
    return value


_Addr = TypeVar("_Addr", IPv4Address, IPv6Address)


def _parse_bound(fields: dict[str, Any], name: str, network: IPv4Network | IPv6Network,
                 subnet_len: int, default: _Addr) -> _Addr:
    """``SubnetMin``/``SubnetMax`` (or the IPv6 ones): an address of the network's family
    inside it, on a subnet boundary; ``default`` when absent."""
    value = fields.get(name)
    if value is None or value == "":
        return default
    _, _, net_field, family = _FAMILY[network.version]
    if not isinstance(value, str):  # IPv4Address() would take an int (or a bool)
        raise ConfigError(f"{name}: must be an {family} address string, got {_show(value)}")
    try:
        addr = type(default)(value)
    except ValueError as e:
        raise ConfigError(f"{name}: {_show(value)} is not an {family} address") from e
    if addr not in network:
        raise ConfigError(f"{name}: {addr} is outside the {net_field} {network}")
    if int(addr) % (1 << (network.max_prefixlen - subnet_len)):
        raise ConfigError(f"{name}: {addr} is not on a /{subnet_len} boundary")
    return addr


def _parse_backend(value: Any) -> BackendConfig:
    if value is None:
        return BackendConfig()
    if not isinstance(value, dict):
        raise ConfigError(f"Backend: must be an object, got {_show(value)}")
    fields = _pick_fields(value, "Backend.", _BACKEND_FIELDS, _BACKEND_UNSUPPORTED)
    btype = fields.get("Type", "vxlan")
    if not isinstance(btype, str) or btype.lower() not in SUPPORTED_BACKENDS:
        raise ConfigError(f"Backend.Type: {_show(btype)} is not supported; use \"vxlan\"")
    for name, why in _BACKEND_UNSUPPORTED.items():
        if name in fields and fields[name] is not _BACKEND_AS_IS.get(name):
            raise ConfigError(f"Backend.{name}: {why}")
    vni = _int_field(fields, "VNI", 1, (1 << 24) - 1) or DEFAULT_VNI
    port = _int_field(fields, "Port", 1, 65535) or DEFAULT_PORT
    mtu = _int_field(fields, "MTU", 1, 65535)
    if mtu is not None and mtu < MIN_POD_MTU + VXLAN_OVERHEAD:
        raise ConfigError(f"Backend.MTU: {mtu} is too small: it is the outer (underlay) MTU "
                          f"and the IPv4 device gets MTU - {VXLAN_OVERHEAD} = "
                          f"{mtu - VXLAN_OVERHEAD}, below the pods' minimum {MIN_POD_MTU}; "
                          f"use at least {MIN_POD_MTU + VXLAN_OVERHEAD} (or leave MTU unset)")
    direct = fields.get("DirectRouting", False)
    if not isinstance(direct, bool):
        raise ConfigError(f"Backend.DirectRouting: must be true or false, got {_show(direct)}")
    return BackendConfig(btype.lower(), vni, port, direct, mtu)


def _int_field(fields: dict[str, Any], name: str, lo: int, hi: int) -> int | None:
    """The field's value, or None when it is unset (missing, null, or Flannel's 0)."""
    value = fields.get(name)
    if value is None:
        return None
    if not _is_int(value):
        raise ConfigError(f"Backend.{name}: must be an integer, got {_show(value)}")
    if value == 0:  # Flannel's "unset"
        return None
    if not lo <= value <= hi:
        raise ConfigError(f"Backend.{name}: {value} is out of range {lo}..{hi}")
    return value


# ---- the etcd key prefix ------------------------------------------------------------------
#
# Where the network lives in etcd (``--etcd-prefix``), config, leases and objects under it.
# It is checked here, once, for overlayd and overlayctl alike (flags, environment and the
# runtime file), so the two never disagree on which prefixes exist.

MAX_ETCD_PREFIX = 256  # characters: a path of a few names, not a document
# What a component between the slashes may hold: letters, digits and a few punctuation
# marks that etcdctl, a shell and a URL carry as they are.  No control characters, no
# spaces, nothing beyond ASCII (a key printed or pasted must read back the same).
_PREFIX_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                          "._~-:@+=")
PREFIX_CHARS_TEXT = "letters, digits and . _ ~ - : @ + = between the slashes"


def etcd_prefix_problem(prefix: object) -> str | None:
    """Why ``prefix`` is not an etcd key prefix (``/`` then names joined by ``/``, e.g.
    ``/overlay/network`` or Flannel's ``/coreos.com/network``; ``/`` alone is the root),
    or None."""
    if not isinstance(prefix, str):
        return "must be a string"
    if not prefix.startswith("/") or prefix.endswith("/") and prefix != "/":
        return "must start with / and not end with /"
    if len(prefix) > MAX_ETCD_PREFIX:
        return f"is {len(prefix)} characters long (at most {MAX_ETCD_PREFIX})"
    if prefix == "/":
        return None
    for part in prefix[1:].split("/"):
        if not part:
            return "has an empty component (//)"
        if part in (".", ".."):
            return f"has a {part!r} component"
        for ch in part:
            if ch not in _PREFIX_CHARS:
                what = ("a control character" if ord(ch) < 32 or 127 <= ord(ch) < 160
                        else "a space" if ch.isspace()
                        else "an invisible character" if not ch.isprintable()
                        else "not ASCII" if ord(ch) > 127 else "not allowed")
                return f"contains {ascii(ch)} ({what}); use {PREFIX_CHARS_TEXT}"
    return None


def check_etcd_prefix(prefix: object, source: str = "etcd prefix") -> None:
    """ConfigError (one line, the value quoted bounded and escaped) unless ``prefix`` is
    valid; ``source`` names where it came from (``--etcd-prefix``)."""
    if problem := etcd_prefix_problem(prefix):
        raise ConfigError(f"{source} {_show(prefix)}: {problem}")
