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
from ipaddress import IPv4Address, IPv4Interface

from overlay.config import VXLAN_OVERHEAD, NetworkConfig
from overlay.errors import ConfigError
from overlay.lease import LeaseAttrs
from overlay.netlink.addr import Addr, dump as dump_addrs
from overlay.netlink.link import Link, dump as dump_links
from overlay.vxlan.backend import BackendSettings, VXLANBackend
from overlay.vxlan.device import VXLANDevice, VXLANSpec, find_underlay, open_netlink
from overlay.vxlan.vtep import load_or_create_vtep_mac

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeOptions:
    """What the data plane's setup takes from the node's settings."""

    iface: str | None  # a name or a regex; None: the default route's interface
    public_ip: IPv4Address | None  # None: the underlay's address
    vxlan_device: str  # "" : overlay.<VNI>
    state_dir: str  # where the VTEP MAC persists


@dataclass(frozen=True)
class DataPlane:
    """The node's VXLAN data plane, ready to program: its device (created or kept),
    the backend over it, and the attributes to publish in the lease."""

    device: VXLANDevice
    backend: VXLANBackend
    underlay_name: str
    mtu: int
    attrs: LeaseAttrs

    def repair_device(self) -> None:
        """The device deleted or down (e.g. by hand, or its underlay replaced): recreate
        it; its address is the lease holder's to put back."""
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
        self.device.ensure()


def setup_data_plane(config: NetworkConfig, opts: NodeOptions) -> DataPlane:
    """Underlay, VTEP MAC, the device (created or kept) and the backend."""
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
    mtu = config.backend.mtu or underlay.mtu - VXLAN_OVERHEAD
    mac = load_or_create_vtep_mac(opts.state_dir, name, adopt=existing)
    public_ip = opts.public_ip or underlay.address.ip
    log.info("underlay %s (public IP %s, MTU %d); VXLAN device %s VNI %d port %d MTU %d "
             "VTEP MAC %s", underlay.name, public_ip, underlay.mtu, name, vni,
             config.backend.port, mtu, mac)
    device = VXLANDevice(VXLANSpec(name, vni, config.backend.port, public_ip,
                                   underlay.index, mtu, mac))
    device.ensure()
    backend = VXLANBackend(device, BackendSettings(
        vni, public_ip, IPv4Interface(f"{public_ip}/{underlay.address.network.prefixlen}"),
        config.backend.direct_routing))
    return DataPlane(device, backend, underlay.name, mtu, LeaseAttrs(public_ip, "vxlan", vni, mac))


def connected_overlap(config: NetworkConfig, links: Sequence[Link], addrs: Sequence[Addr],
                      device: str) -> str | None:
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
