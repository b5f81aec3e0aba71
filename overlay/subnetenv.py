"""subnet.env: the daemon's only contract with the CNI plugin.

::

    OVERLAY_NETWORK=10.244.0.0/16
    OVERLAY_SUBNET=10.244.1.1/24
    OVERLAY_MTU=1450
    OVERLAY_IPMASQ=false
    OVERLAY_IPV6_NETWORK=fd00:10:244::/56    (dual-stack only)
    OVERLAY_IPV6_SUBNET=fd00:10:244:1::1/64

``OVERLAY_MTU`` is the pod MTU: with both families, the smaller of IPv4's underlay - 50
and IPv6's underlay - 70, since one veth carries both.

An IPv6-only node (``EnableIPv4: false``) writes no ``OVERLAY_NETWORK``/``OVERLAY_SUBNET``,
only the IPv6 pair, as Flannel's subnet.env does for IPv6-only (``FLANNEL_IPV6_*``).
"""

from __future__ import annotations

import os
import re
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network
from typing import Any, NamedTuple

from overlay.errors import SubnetEnvError
from overlay.util.boolean import parse_bool
from overlay.util.fsutil import FileTooLarge, atomic_write, os_reason, read_small_text

DEFAULT_SUBNET_FILE = "/run/overlay/subnet.env"
MAX_BYTES = 64 << 10  # what overlayd writes is under 300 bytes
KEYS = ("OVERLAY_NETWORK", "OVERLAY_SUBNET", "OVERLAY_MTU", "OVERLAY_IPMASQ",
        "OVERLAY_IPV6_NETWORK", "OVERLAY_IPV6_SUBNET")


class SubnetEnv(NamedTuple):
    network: IPv4Network | None  # None (with ``subnet``): IPv6-only
    subnet: IPv4Interface | None  # the gateway address with the subnet's prefix, e.g. 10.244.1.1/24
    mtu: int
    ipmasq: bool = False
    ipv6_network: IPv6Network | None = None
    ipv6_subnet: IPv6Interface | None = None  # the bridge's IPv6 gateway with the prefix

    @property
    def ipv6_only(self) -> bool:
        return self.subnet is None

    def format(self) -> str:
        text = ""
        if self.network is not None and self.subnet is not None:
            text = f"OVERLAY_NETWORK={self.network}\nOVERLAY_SUBNET={self.subnet}\n"
        elif self.ipv6_network is not None and self.ipv6_subnet is not None:  # Flannel's order
            text = (f"OVERLAY_IPV6_NETWORK={self.ipv6_network}\n"
                    f"OVERLAY_IPV6_SUBNET={self.ipv6_subnet}\n")
        text += (
            f"OVERLAY_MTU={self.mtu}\n"
            f"OVERLAY_IPMASQ={'true' if self.ipmasq else 'false'}\n"
        )
        if self.subnet is not None and self.ipv6_network is not None and self.ipv6_subnet:
            text += (f"OVERLAY_IPV6_NETWORK={self.ipv6_network}\n"
                     f"OVERLAY_IPV6_SUBNET={self.ipv6_subnet}\n")
        return text


def env_for_lease(config: Any, lease: Any, mtu: int, ipmasq: bool) -> SubnetEnv:
    """What the daemon writes for the lease it holds (a ``NetworkConfig`` and a
    ``Lease``, duck-typed: this codec sits below both): the IPv6 pair only when the
    lease has an IPv6 half and IPv6 is enabled; an IPv6-only lease's alone."""
    if lease.subnet.version == 6:
        sub = IPv6Interface(f"{lease.gateway}/{lease.subnet.prefixlen}")
        return SubnetEnv(None, None, mtu, ipmasq, config.ipv6_network, sub)
    v4 = IPv4Interface(f"{lease.gateway}/{lease.subnet.prefixlen}")
    net6, sub6 = None, None
    if getattr(config, "enable_ipv6", False) and lease.ipv6_subnet is not None:
        net6 = config.ipv6_network
        sub6 = IPv6Interface(f"{lease.ipv6_gateway}/{lease.ipv6_subnet.prefixlen}")
    return SubnetEnv(config.network, v4, mtu, ipmasq, net6, sub6)


def parse_subnet_env(text: str, source: str = "subnet.env") -> SubnetEnv:
    """The one rule for subnet.env's content.  An error names ``source``, the line and
    the known key that is wrong, never a line's raw text: ``--subnet-file`` may point
    at any file (``/etc/shadow``), and its lines must not reach a terminal or a CNI
    error.  Values are shown only once parsed (an address, a number)."""
    values: dict[str, str] = {}
    where: dict[str, str] = {}  # key -> "source:line", for the errors
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise SubnetEnvError(f"{source}:{lineno}: expected KEY=VALUE (the line has "
                                 "no '=')")
        key = key.strip()
        if key in KEYS:  # anything else is ignored, as a shell would keep it to itself
            values[key] = value.strip().strip('"')
            where[key] = f"{source}:{lineno}"
    network, subnet = _parse_ipv4(values, where, source)
    mtu_text = _need(values, "OVERLAY_MTU", source)
    if not re.fullmatch(r"[0-9]{1,9}", mtu_text):
        raise SubnetEnvError(f"{where['OVERLAY_MTU']}: OVERLAY_MTU: malformed value: expected a "
                             "whole number")
    mtu = int(mtu_text)
    if not 576 <= mtu <= 65535:
        raise SubnetEnvError(f"{where['OVERLAY_MTU']}: OVERLAY_MTU {mtu} is out of range "
                             "576..65535")
    ipmasq = parse_bool(values.get("OVERLAY_IPMASQ", "false"))
    if ipmasq is None:
        raise SubnetEnvError(f"{where['OVERLAY_IPMASQ']}: OVERLAY_IPMASQ: expected true "
                             "or false")
    ipv6_network, ipv6_subnet = _parse_ipv6(values, where, source)
    if subnet is None and ipv6_subnet is None:
        raise SubnetEnvError(f"{source}: OVERLAY_SUBNET is missing (and so is "
                             "OVERLAY_IPV6_SUBNET, which an IPv6-only node writes instead)")
    return SubnetEnv(network, subnet, mtu, ipmasq, ipv6_network, ipv6_subnet)


def _parse_ipv4(values: dict[str, str], where: dict[str, str], source: str
                ) -> tuple[IPv4Network | None, IPv4Interface | None]:
    """The IPv4 pair: both or neither (neither: an IPv6-only node's file)."""
    net_text, sub_text = values.get("OVERLAY_NETWORK"), values.get("OVERLAY_SUBNET")
    if net_text is None and sub_text is None:
        return None, None
    net_text = _need(values, "OVERLAY_NETWORK", source)
    sub_text = _need(values, "OVERLAY_SUBNET", source)
    try:
        network = IPv4Network(net_text, strict=True)
    except ValueError:
        raise SubnetEnvError(f"{where['OVERLAY_NETWORK']}: OVERLAY_NETWORK: malformed value: "
                             "expected an IPv4 network such as 10.244.0.0/16") from None
    try:
        subnet = IPv4Interface(sub_text)
    except ValueError:
        raise SubnetEnvError(f"{where['OVERLAY_SUBNET']}: OVERLAY_SUBNET: malformed value: "
                             "expected an IPv4 gateway with its prefix, such as "
                             "10.244.1.1/24") from None
    if "/" not in sub_text:  # ipaddress reads a bare address as a /32
        raise SubnetEnvError(f"{where['OVERLAY_SUBNET']}: OVERLAY_SUBNET {subnet.ip} has no "
                             "prefix length")
    if subnet.network.subnet_of(network) is False:
        raise SubnetEnvError(f"{where['OVERLAY_SUBNET']}: OVERLAY_SUBNET {subnet} is outside "
                             f"OVERLAY_NETWORK {network}")
    _need_host(subnet, "OVERLAY_SUBNET", where)
    return network, subnet


def _need_host(subnet: IPv4Interface | IPv6Interface, key: str, where: dict[str, str]
               ) -> None:
    """The gateway is a host of its subnet: not the subnet's own address, nor IPv4's
    broadcast (the bridge takes it, and the plugin hands out the rest)."""
    net = subnet.network
    if net.prefixlen >= net.max_prefixlen - 1:
        return  # a /31 or /32 (/127, /128) has no network or broadcast address to avoid
    if subnet.ip == net.network_address or (
            subnet.version == 4 and subnet.ip == net.broadcast_address):
        which = "own address" if subnet.ip == net.network_address else "broadcast address"
        raise SubnetEnvError(f"{where[key]}: {key} {subnet} is its subnet's {which}, not a "
                             "gateway (overlayd writes the subnet's first host)")


def _parse_ipv6(values: dict[str, str], where: dict[str, str], source: str
                ) -> tuple[IPv6Network | None, IPv6Interface | None]:
    """The IPv6 pair: both or neither (one alone is a half-written dual-stack file)."""
    net_text, sub_text = values.get("OVERLAY_IPV6_NETWORK"), values.get("OVERLAY_IPV6_SUBNET")
    if net_text is None and sub_text is None:
        return None, None
    if net_text is None or sub_text is None:
        have, need = (("OVERLAY_IPV6_NETWORK", "OVERLAY_IPV6_SUBNET") if sub_text is None
                      else ("OVERLAY_IPV6_SUBNET", "OVERLAY_IPV6_NETWORK"))
        raise SubnetEnvError(f"{where[have]}: {have} is set but {need} is missing")
    try:
        network = IPv6Network(net_text, strict=True)
    except ValueError:
        raise SubnetEnvError(f"{where['OVERLAY_IPV6_NETWORK']}: OVERLAY_IPV6_NETWORK: "
                             "malformed IPv6 value: expected an IPv6 network such as "
                             "fd00:10:244::/56") from None
    sub_where = where["OVERLAY_IPV6_SUBNET"]
    if "%" in sub_text:  # ipaddress would take a scope; no gateway has one
        raise SubnetEnvError(f"{sub_where}: OVERLAY_IPV6_SUBNET: malformed IPv6 value: a "
                             "gateway carries no %scope")
    try:
        subnet = IPv6Interface(sub_text)
    except ValueError:
        raise SubnetEnvError(f"{sub_where}: OVERLAY_IPV6_SUBNET: malformed IPv6 value: "
                             "expected an IPv6 gateway with its prefix, such as "
                             "fd00:10:244:1::1/64") from None
    if "/" not in sub_text:
        raise SubnetEnvError(f"{sub_where}: OVERLAY_IPV6_SUBNET {subnet.ip} has no prefix "
                             "length")
    if not subnet.network.subnet_of(network):
        raise SubnetEnvError(f"{sub_where}: OVERLAY_IPV6_SUBNET {subnet} is outside "
                             f"OVERLAY_IPV6_NETWORK {network}")
    _need_host(subnet, "OVERLAY_IPV6_SUBNET", where)
    return network, subnet


def _need(values: dict[str, str], key: str, source: str) -> str:
    try:
        return values[key]
    except KeyError:
        raise SubnetEnvError(f"{source}: {key} is missing") from None


def load_subnet_env(path: str = DEFAULT_SUBNET_FILE) -> SubnetEnv:
    """Read and parse ``path``; every failure a one-line ``SubnetEnvError`` naming it."""
    return parse_subnet_env(read_subnet_text(path, missing=(
        "is overlayd running on this node and has it acquired a subnet lease? "
        "(check `overlayctl diagnose`)")), source=path)


def read_subnet_text(path: str, missing: str) -> str:
    """subnet.env's text, read by the one rule for small files (``read_small_text``: a
    FIFO, a device or a huge file planted there is refused, not waited on or swallowed);
    ``missing`` is what to suggest when there is no such file."""
    try:
        return read_small_text(path, MAX_BYTES)
    except FileNotFoundError:
        raise SubnetEnvError(f"{path} does not exist: {missing}") from None
    except FileTooLarge:
        raise SubnetEnvError(f"cannot read {path}: larger than {MAX_BYTES} bytes; overlayd "
                             "writes a few lines here") from None
    except OSError as e:
        raise SubnetEnvError(f"cannot read {path}: {os_reason(e)}") from None


def write_subnet_env(path: str, env: SubnetEnv) -> None:
    try:
        atomic_write(path, env.format(), mode=0o644)
    except OSError as e:
        raise SubnetEnvError(f"cannot write {path} (--subnet-file): {e.strerror}") from e


POLICY_MARKER = "policy-enforced"


def policy_marker_path(subnet_file: str) -> str:
    """The file overlayd keeps beside subnet.env while NetworkPolicies are in force: the
    CNI plugin's in-process fallback, which knows no policy, refuses an ADD while it
    exists (one ``stat``), rather than create a pod nothing filters."""
    return os.path.join(os.path.dirname(subnet_file) or ".", POLICY_MARKER)
