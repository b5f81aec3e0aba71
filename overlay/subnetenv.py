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
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network
from typing import Any, NamedTuple

from overlay.errors import SubnetEnvError
from overlay.util.boolean import parse_bool
from overlay.util.fsutil import atomic_write

DEFAULT_SUBNET_FILE = "/run/overlay/subnet.env"


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
    values: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise SubnetEnvError(f"{source}:{lineno}: expected KEY=VALUE, got {line!r}")
        values[key.strip()] = value.strip().strip('"')
    network, subnet = _parse_ipv4(values, source)
    try:
        mtu = int(_need(values, "OVERLAY_MTU", source))
    except ValueError as e:
        raise SubnetEnvError(f"{source}: malformed value: {e}") from e
    if not 576 <= mtu <= 65535:
        raise SubnetEnvError(f"{source}: OVERLAY_MTU {mtu} is out of range 576..65535")
    ipmasq = parse_bool(values.get("OVERLAY_IPMASQ", "false"))
    if ipmasq is None:
        raise SubnetEnvError(f"{source}: OVERLAY_IPMASQ={values['OVERLAY_IPMASQ']!r}: "
                             "expected true or false")
    ipv6_network, ipv6_subnet = _parse_ipv6(values, source)
    if subnet is None and ipv6_subnet is None:
        raise SubnetEnvError(f"{source}: OVERLAY_SUBNET is missing (and so is "
                             "OVERLAY_IPV6_SUBNET, which an IPv6-only node writes instead)")
    return SubnetEnv(network, subnet, mtu, ipmasq, ipv6_network, ipv6_subnet)


def _parse_ipv4(values: dict[str, str], source: str
                ) -> tuple[IPv4Network | None, IPv4Interface | None]:
    """The IPv4 pair: both or neither (neither: an IPv6-only node's file)."""
    net_text, sub_text = values.get("OVERLAY_NETWORK"), values.get("OVERLAY_SUBNET")
    if net_text is None and sub_text is None:
        return None, None
    try:
        network = IPv4Network(_need(values, "OVERLAY_NETWORK", source), strict=True)
        subnet = IPv4Interface(_need(values, "OVERLAY_SUBNET", source))
    except ValueError as e:
        raise SubnetEnvError(f"{source}: malformed value: {e}") from e
    if subnet.network.subnet_of(network) is False:
        raise SubnetEnvError(f"{source}: OVERLAY_SUBNET {subnet} is outside "
                             f"OVERLAY_NETWORK {network}")
    return network, subnet


def _parse_ipv6(values: dict[str, str], source: str
                ) -> tuple[IPv6Network | None, IPv6Interface | None]:
    """The IPv6 pair: both or neither (one alone is a half-written dual-stack file)."""
    net_text, sub_text = values.get("OVERLAY_IPV6_NETWORK"), values.get("OVERLAY_IPV6_SUBNET")
    if net_text is None and sub_text is None:
        return None, None
    if net_text is None or sub_text is None:
        have, need = (("OVERLAY_IPV6_NETWORK", "OVERLAY_IPV6_SUBNET") if sub_text is None
                      else ("OVERLAY_IPV6_SUBNET", "OVERLAY_IPV6_NETWORK"))
        raise SubnetEnvError(f"{source}: {have} is set but {need} is missing")
    try:
        if "%" in sub_text:  # ipaddress would take a scope; no gateway has one
            raise ValueError(f"{sub_text!r} carries a scope")
        network = IPv6Network(net_text, strict=True)
        subnet = IPv6Interface(sub_text)
    except ValueError as e:
        raise SubnetEnvError(f"{source}: malformed IPv6 value: {e}") from e
    if "/" not in sub_text:
        raise SubnetEnvError(f"{source}: OVERLAY_IPV6_SUBNET {sub_text} has no prefix length")
    if not subnet.network.subnet_of(network):
        raise SubnetEnvError(f"{source}: OVERLAY_IPV6_SUBNET {subnet} is outside "
                             f"OVERLAY_IPV6_NETWORK {network}")
    return network, subnet


def _need(values: dict[str, str], key: str, source: str) -> str:
    try:
        return values[key]
    except KeyError:
        raise SubnetEnvError(f"{source}: {key} is missing") from None


def load_subnet_env(path: str = DEFAULT_SUBNET_FILE) -> SubnetEnv:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise SubnetEnvError(
            f"{path} does not exist: is overlayd running on this node and has it "
            "acquired a subnet lease? (check `overlayctl diagnose`)") from None
    except OSError as e:
        raise SubnetEnvError(f"cannot read {path}: {e.strerror}") from e
    return parse_subnet_env(text, source=path)


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
