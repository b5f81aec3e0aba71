"""Setting up this node's VXLAN data plane: the underlay, the VTEP MAC, the device and
the backend, and what the node publishes in its lease (Flannel's ``RegisterNetwork``).

Nothing in the kernel changes before every check passed (the underlay exists, the pod
network overlaps no network the node is connected to).  The device's entries are left
alone: the first listing of leases reconciles them (never a flush).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface

from overlay.config import NetworkConfig
from overlay.errors import ConfigError, OverlayError
from overlay.lease import Lease, LeaseAttrs
from overlay.netlink.addr import Addr, Addr6, dump as dump_addrs, dump6 as dump_addrs6
from overlay.netlink.link import Link, dump as dump_links
from overlay.vxlan.backend import BackendSettings, VXLANBackend
from overlay.vxlan.device import (
    Underlay6,
    VXLANDevice,
    VXLANSpec,
    find_underlay,
    find_underlay6,
    open_netlink,
)
from overlay.vxlan.dualstack import DualStackBackend
from overlay.vxlan.vtep import load_or_create_vtep_mac

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeOptions:
    """What the data plane's setup takes from the node's settings."""

    iface: str | None  # a name or a regex; None: the default route's interface
    public_ip: IPv4Address | None  # None: the underlay's address
    vxlan_device: str  # "" : overlay.<VNI>
    state_dir: str  # where the VTEP MACs persist
    public_ipv6: IPv6Address | None = None  # None: the underlay's global IPv6 address


@dataclass(frozen=True)
class V6Plane:
    """The IPv6 half of a dual-stack node's data plane: ``overlay-v6.<VNI>`` over the
    IPv6 underlay and its backend (fed IPv6 halves by the ``DualStackBackend``)."""

    device: VXLANDevice
    backend: VXLANBackend
    underlay_name: str
    mtu: int
    public_ip: IPv6Address

    def repair_device(self) -> None:
        if _needs_repair(self.device):
            nl = open_netlink()
            try:
                found = find_underlay6(nl, self.underlay_name, None)
            finally:
                nl.close()
            index = found.index if isinstance(found, Underlay6) else 0
            _repair(self.device, index)

    def ensure_address(self, lease: Lease) -> None:
        """The lease's IPv6 VTEP address (/128) on the device; a lease without an IPv6
        half (the registry gave none) leaves the device without one."""
        if lease.ipv6_vtep_address is not None:
            self.device.ensure_address(lease.ipv6_vtep_address)


@dataclass(frozen=True)
class DataPlane:
    """The node's VXLAN data plane, ready to program: its device (created or kept),
    the backend over it, and the attributes to publish in the lease; ``v6`` the IPv6
    device of a dual-stack node (``mtu`` is then the pod MTU, the smaller of both)."""

    device: VXLANDevice
    backend: VXLANBackend
    underlay_name: str
    mtu: int
    attrs: LeaseAttrs
    v6: V6Plane | None = None

    def repair_device(self) -> None:
        """The device deleted or down (e.g. by hand, or its underlay replaced): recreate
        it; its address is the lease holder's to put back."""
        if _needs_repair(self.device):
            nl = open_netlink()
            try:
                local = self.device.spec.local
                underlay = find_underlay(nl, self.underlay_name,
                                         local if isinstance(local, IPv4Address) else None)
            finally:
                nl.close()
            _repair(self.device, underlay.index)
        if self.v6 is not None:
            self.v6.repair_device()

    def ensure_v6_address(self, lease: Lease) -> None:
        if self.v6 is not None:
            self.v6.ensure_address(lease)


def _needs_repair(device: VXLANDevice) -> bool:
    up, index = device.state()
    if up and index == device.index:
        return False
    log.info("VXLAN device %s is %s: repairing it and replaying every entry",
             device.spec.name, "gone" if not index else "down" if not up else "replaced")
    return True


def _repair(device: VXLANDevice, underlay_index: int) -> None:
    if underlay_index and underlay_index != device.spec.underlay_index:
        device.spec = replace(device.spec, underlay_index=underlay_index)
    device.ensure()


def setup_data_plane(config: NetworkConfig, opts: NodeOptions) -> DataPlane:
    """Underlay, VTEP MAC, the device (created or kept) and the backend."""
    if config.ipv6_only:
        return setup_ipv6_only(config, opts)
    vni = config.backend.vni
    name = opts.vxlan_device or f"overlay.{vni}"
    nl = open_netlink()
    try:
        underlay = find_underlay(nl, opts.iface, opts.public_ip)
        links = dump_links(nl)
        existing = next((link.mac for link in links if link.name == name), None)
        clash = connected_overlap(config, links, dump_addrs(nl), name)
    finally:
        nl.close()
    if clash:  # before anything in the kernel changes
        raise ConfigError(clash)
    mtu = _device_mtu(config, underlay.name, underlay.mtu, 4)
    mac = load_or_create_vtep_mac(opts.state_dir, name, adopt=existing)
    public_ip = opts.public_ip or underlay.address.ip
    log.info("underlay %s (public IP %s, MTU %d); VXLAN device %s VNI %d port %d MTU %d "
             "VTEP MAC %s", underlay.name, public_ip, underlay.mtu, name, vni,
             config.backend.port, mtu, mac)
    device = VXLANDevice(VXLANSpec(name, vni, config.backend.port, public_ip,
                                   underlay.index, mtu, mac))
    device.ensure()
    settings = BackendSettings(
        vni, public_ip, IPv4Interface(f"{public_ip}/{underlay.address.network.prefixlen}"),
        config.backend.direct_routing)
    attrs = LeaseAttrs(public_ip, "vxlan", vni, mac)
    v6 = setup_v6(config, opts, underlay.name) if config.enable_ipv6 else None
    if v6 is None:
        return DataPlane(device, VXLANBackend(device, settings), underlay.name, mtu, attrs)
    attrs = replace(attrs, public_ipv6=v6.public_ip, v6_vni=vni, v6_vtep_mac=v6.device.spec.mac)
    return DataPlane(device, DualStackBackend(device, settings, v6.backend), underlay.name,
                     min(mtu, v6.mtu), attrs, v6)


def setup_ipv6_only(config: NetworkConfig, opts: NodeOptions) -> DataPlane:
    """IPv6-only (``EnableIPv4: false``): ``overlay-v6.<VNI>`` is the node's one device
    (no IPv4 device), its backend a plain one fed whole leases (an IPv6-only lease is a
    one-family lease, like an IPv4 one), the lease's attributes its PublicIPv6 and MAC.
    The underlay is ``--iface`` (a name) or the link holding ``--public-ipv6``."""
    if not opts.iface and opts.public_ipv6 is None:
        raise ConfigError("an IPv6-only network (EnableIPv4 false) needs --iface or "
                          "--public-ipv6 to find this node's IPv6 underlay")
    if opts.public_ip is not None:
        log.info("IPv6-only network: --public-ip %s is not used (no IPv4 device)",
                 opts.public_ip)
    nl = open_netlink()
    try:
        links = dump_links(nl)
        clash = connected_overlap(config, links, [*dump_addrs(nl), *dump_addrs6(nl)],
                                  opts.vxlan_device or f"overlay-v6.{config.backend.vni}")
    finally:
        nl.close()
    if clash:  # before anything in the kernel changes
        raise ConfigError(clash)
    v6 = setup_v6(config, opts, opts.iface or "", opts.vxlan_device)
    if v6 is None:
        raise ConfigError("an IPv6-only network needs an IPv6 underlay address on this node "
                          "(see the warning above): give the underlay one, or --public-ipv6")
    attrs = LeaseAttrs(v6.public_ip, "vxlan", config.backend.vni, v6.device.spec.mac)
    return DataPlane(v6.device, v6.backend, v6.underlay_name, v6.mtu, attrs)


def setup_v6(config: NetworkConfig, opts: NodeOptions, ipv4_underlay: str,
             name: str = "") -> V6Plane | None:
    """``overlay-v6.<VNI>`` over the IPv6 underlay (the IPv4 underlay's link unless
    ``--public-ipv6`` names another's address), its persisted VTEP MAC, MTU = the outer
    MTU (Backend.MTU, else the IPv6 underlay's) - 70; None, said once, when the node has
    no IPv6 underlay: IPv4 keeps working and the lease has no IPv6 half."""
    vni = config.backend.vni
    name = name or f"overlay-v6.{vni}"
    nl = open_netlink()
    try:
        underlay = find_underlay6(nl, ipv4_underlay, opts.public_ipv6)
        existing = next((ln.mac for ln in dump_links(nl) if ln.name == name), None)
    finally:
        nl.close()
    if not isinstance(underlay, Underlay6):
        log.warning("IPv6 is off on this node: %s; IPv4 pod traffic is unaffected and this "
                    "node's lease has no IPv6 half", underlay)
        return None
    mtu = _device_mtu(config, underlay.name, underlay.mtu, 6)
    mac = load_or_create_vtep_mac(opts.state_dir, name, adopt=existing)
    public_ipv6 = opts.public_ipv6 or underlay.address.ip
    log.info("IPv6 underlay %s (public IPv6 %s, MTU %d); VXLAN device %s VNI %d port %d "
             "MTU %d VTEP MAC %s", underlay.name, public_ipv6, underlay.mtu, name, vni,
             config.backend.port, mtu, mac)
    _warn_forwarding_off()
    device = VXLANDevice(VXLANSpec(name, vni, config.backend.port, public_ipv6,
                                   underlay.index, mtu, mac))
    device.ensure()
    backend = VXLANBackend(device, BackendSettings(
        vni, public_ipv6, IPv6Interface(f"{public_ipv6}/{underlay.address.network.prefixlen}"),
        config.backend.direct_routing))
    return V6Plane(device, backend, underlay.name, mtu, public_ipv6)


def _device_mtu(config: NetworkConfig, underlay: str, underlay_mtu: int, version: int) -> int:
    """The family's device MTU (``BackendConfig.device_mtu``: Backend.MTU is the outer
    MTU); a Backend.MTU the underlay cannot carry is said, and the underlay's used."""
    wanted = config.backend.mtu
    if wanted is not None and wanted > underlay_mtu:
        log.warning("Backend.MTU %d is more than the IPv%d underlay %s carries (MTU %d): "
                    "using %d as the outer MTU", wanted, version, underlay, underlay_mtu,
                    underlay_mtu)
    return config.backend.device_mtu(underlay_mtu, version)


def _warn_forwarding_off() -> None:
    """IPv6 forwarding is the node's setting (turning it on changes how every interface
    treats router advertisements): said, not changed."""
    try:
        with open("/proc/sys/net/ipv6/conf/all/forwarding", encoding="ascii") as f:
            on = f.read().strip() == "1"
    except OSError as e:
        raise OverlayError(f"cannot read net.ipv6.conf.all.forwarding: {e.strerror}") from e
    if not on:
        log.warning("net.ipv6.conf.all.forwarding is 0: this node will not forward its pods' "
                    "IPv6 traffic (sysctl -w net.ipv6.conf.all.forwarding=1)")


def connected_overlap(config: NetworkConfig, links: Sequence[Link],
                      addrs: Sequence[Addr | Addr6], device: str) -> str | None:
    """Why ``config.network`` cannot be this node's pod network, or None: it overlaps a
    network the node is connected to (pod CIDRs must not overlap node CIDRs, or the
    node's own traffic would be routed into VXLAN).  Our own addresses are exempt: the
    VXLAN device's (``device``, or any VXLAN link's inside the network) and a pod bridge's
    gateway (the ``.1`` of a subnet inside the network, whatever its length: the bridge
    of an earlier run survives a change of SubnetLen, which needs exactly this restart)."""
    kinds = {link.index: (link.name, link.kind) for link in links}
    net = config.network
    for a in addrs:
        iface = a.interface
        name, kind = kinds.get(a.index, (f"#{a.index}", ""))
        connected = iface.network
        if (connected.version != net.version or connected.is_loopback
                or connected.is_link_local or not connected.overlaps(net)):
            continue
        inside = connected.prefixlen >= net.prefixlen  # it overlaps: so it lies inside
        if name == device or (kind == "vxlan" and inside):
            continue
        if (kind == "bridge" and inside and connected != net
                and iface.ip == connected.network_address + 1):
            continue
        return (f"Network {net} overlaps {connected}, a network this node is connected to "
                f"({iface} on {name}); pod networks must not overlap node networks: choose "
                f"another Network (overlayctl config set)")
    return None
