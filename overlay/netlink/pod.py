"""Pod attachment for the CNI plugin: the node bridge, veth pairs, pod addresses, routes.

Network namespaces are entered per *thread* (``setns(2)`` affects only the calling
thread), only long enough to open a netlink socket there: a netlink socket stays bound
to the namespace it was created in, so every later operation on it acts inside the pod
while the thread itself is back on the host side.  This works in a multi-threaded warm
server (each request its own thread) and costs ~1 ms, where pyroute2's
``IPRoute(netns=...)`` forks a helper per call (~9 ms).
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import logging
import os
import socket
import struct
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Iterator

from pyroute2 import IPRoute, NetlinkError

from ..errors import NetlinkOpError
from .common import describe_errno, translated

log = logging.getLogger(__name__)

CLONE_NEWNET = 0x40000000
NSFS_MAGIC = 0x6E736673
PROC_SUPER_MAGIC = 0x9FA0
_libc = ctypes.CDLL(None, use_errno=True)


# --- namespaces -------------------------------------------------------------------------

def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise NetlinkOpError(f"cannot enter network namespace: {os.strerror(code)}", code)


def is_netns_fd(fd: int) -> bool:
    """True if ``fd`` is a network namespace file (nsfs bind mount or /proc/<pid>/ns/net)."""
    buf = ctypes.create_string_buffer(256)
    if _libc.fstatfs(fd, buf) != 0:
        return False
    fs_type = struct.unpack_from("l", buf)[0]
    if fs_type not in (NSFS_MAGIC, PROC_SUPER_MAGIC):
        return False
    # A network namespace accepts setns(CLONE_NEWNET) checks only by type; nsfs files of
    # other namespace kinds (mnt, pid...) have the same magic, so compare the ioctl type.
    NS_GET_NSTYPE = 0xB703
    return _libc.ioctl(fd, NS_GET_NSTYPE) == CLONE_NEWNET


def same_netns(fd: int) -> bool:
    """True if ``fd`` is the calling thread's own network namespace."""
    mine = os.stat("/proc/thread-self/ns/net")
    other = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (other.st_dev, other.st_ino)


@contextmanager
def thread_in_netns(fd: int) -> Iterator[None]:
    """Run the block with this thread in the namespace ``fd``, then come back."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(fd)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


def open_in_netns(fd: int) -> IPRoute:
    """An IPRoute whose socket lives in the namespace ``fd``; the thread stays put."""
    with thread_in_netns(fd):
        return IPRoute()


def enter_netns_for_thread(fd: int) -> None:
    """Move this thread into ``fd`` for good (the warm server's per-request threads)."""
    _setns(fd)


# --- values -----------------------------------------------------------------------------

@dataclass(frozen=True)
class LinkInfo:
    index: int
    name: str
    mac: str
    mtu: int
    kind: str
    master: int
    up: bool
    promisc: bool


def host_veth_name(container_id: str, ifname: str) -> str:
    """A stable host-side name, so DEL finds the veth without the pod's namespace."""
    digest = hashlib.sha256(f"{container_id}\0{ifname}".encode()).hexdigest()
    return "veth" + digest[:11]


def _local_mac() -> str:
    raw = bytearray(os.urandom(6))
    raw[0] = (raw[0] & 0xFE) | 0x02  # unicast, locally administered
    return ":".join(f"{b:02x}" for b in raw)


def _link_info(msg) -> LinkInfo:
    linkinfo = msg.get("IFLA_LINKINFO")
    kind = linkinfo.get("IFLA_INFO_KIND") if linkinfo is not None else None
    return LinkInfo(index=msg["index"], name=msg.get("IFLA_IFNAME"),
                    mac=msg.get("IFLA_ADDRESS") or "", mtu=msg.get("IFLA_MTU") or 0,
                    kind=kind or "", master=msg.get("IFLA_MASTER") or 0,
                    up=bool(msg["flags"] & 1), promisc=bool(msg["flags"] & 0x100))


# --- reads ------------------------------------------------------------------------------

def get_link(ipr: IPRoute, name: str) -> LinkInfo | None:
    try:
        msgs = ipr.link("get", ifname=name)
    except NetlinkError as e:
        if e.code in (errno.ENODEV, errno.ENOENT):
            return None
        raise NetlinkOpError(f"get link {name}: {describe_errno(e.code)}", e.code) from e
    return _link_info(tuple(msgs)[0])


def get_addresses(ipr: IPRoute, index: int) -> list[IPv4Interface]:
    with translated(f"list addresses of link {index}"):
        msgs = ipr.addr("dump", index=index, family=socket.AF_INET)
    return [IPv4Interface(f"{m.get('IFA_ADDRESS')}/{m['prefixlen']}") for m in msgs]


def get_routes(ipr: IPRoute, index: int) -> list[tuple[IPv4Network, IPv4Address | None]]:
    with translated(f"list routes of link {index}"):
        msgs = ipr.route("dump", oif=index, family=socket.AF_INET, table=254)
    out = []
    for m in msgs:
        dst = m.get("RTA_DST") or "0.0.0.0"
        gw = m.get("RTA_GATEWAY")
        out.append((IPv4Network(f"{dst}/{m['dst_len']}"), IPv4Address(gw) if gw else None))
    return out


# --- the bridge -------------------------------------------------------------------------

def ensure_bridge(ipr: IPRoute, name: str, gateway: IPv4Interface, mtu: int,
                  force_address: bool = False, promisc: bool = False) -> LinkInfo:
    """Create-or-verify the node bridge holding ``gateway``; say why when it cannot."""
    link = get_link(ipr, name)
    if link is None:
        try:
            # A fixed MAC: otherwise the bridge takes its lowest port's MAC and changes
            # it whenever ports come and go (pods would see the gateway's MAC change).
            ipr.link("add", ifname=name, kind="bridge", mtu=mtu, address=_local_mac())
            log.info("created bridge %s (mtu %d)", name, mtu)
        except NetlinkError as e:
            if e.code != errno.EEXIST:  # a concurrent ADD made it first
                raise NetlinkOpError(f"create bridge {name}: {describe_errno(e.code)}",
                                     e.code) from e
        link = get_link(ipr, name)
        if link is None:
            raise NetlinkOpError(f"bridge {name} vanished while being created", errno.ENODEV)
    if link.kind != "bridge":
        raise NetlinkOpError(f"{name} already exists and is a {link.kind or 'non-bridge'} "
                             "device, not a bridge: remove it or set \"bridge\" to another "
                             "name", errno.EEXIST)
    _ensure_gateway(ipr, link, gateway, force_address)
    if not link.up or (promisc and not link.promisc):
        with translated(f"bring up bridge {name}"):
            ipr.link("set", index=link.index, state="up",
                     **({"flags": 0x100, "change": 0x100} if promisc else {}))
    return link


def _ensure_gateway(ipr: IPRoute, link: LinkInfo, gateway: IPv4Interface,
                    force_address: bool) -> None:
    addresses = get_addresses(ipr, link.index)
    if gateway in addresses:
        return
    others = [a for a in addresses if a.network.overlaps(gateway.network)
              or a.ip in gateway.network] or addresses
    if others and not force_address:
        raise NetlinkOpError(
            f"{link.name} already has an IP address different from {gateway}: "
            f"{', '.join(map(str, others))} (a stale bridge from an earlier subnet? delete "
            f"it, or set \"forceAddress\": true)", errno.EEXIST)
    for old in others:
        with translated(f"remove old address {old} from {link.name}", ignore_gone=True):
            ipr.addr("del", index=link.index, address=str(old.ip), prefixlen=old.network.prefixlen)
        log.info("forceAddress: removed %s from %s", old, link.name)
    try:
        ipr.addr("add", index=link.index, address=str(gateway.ip),
                 prefixlen=gateway.network.prefixlen, broadcast=str(gateway.network.broadcast_address))
        log.info("bridge %s: added gateway %s", link.name, gateway)
    except NetlinkError as e:
        if e.code != errno.EEXIST:
            raise NetlinkOpError(f"add {gateway} to {link.name}: {describe_errno(e.code)}",
                                 e.code) from e


# --- veth -------------------------------------------------------------------------------

def add_veth(ipr: IPRoute, host_name: str, pod_name: str, pod_netns_fd: int, mtu: int,
             pod_mac: str | None = None) -> None:
    """Create the pair with the pod end born inside the pod's namespace."""
    peer = {"ifname": pod_name, "net_ns_fd": pod_netns_fd, "mtu": mtu}
    if pod_mac:
        peer["address"] = pod_mac
    try:
        ipr.link("add", ifname=host_name, kind="veth", mtu=mtu, peer=peer)
    except NetlinkError as e:
        if e.code == errno.EEXIST:
            raise NetlinkOpError(f"cannot create veth {host_name}/{pod_name}: an interface "
                                 f"named {host_name} (host) or {pod_name} (pod) already "
                                 "exists", e.code) from e
        raise NetlinkOpError(f"create veth {host_name}/{pod_name}: {describe_errno(e.code)}",
                             e.code) from e
    log.info("created veth %s <-> %s (mtu %d)", host_name, pod_name, mtu)


def attach_to_bridge(ipr: IPRoute, host_name: str, bridge: LinkInfo, hairpin: bool) -> LinkInfo:
    link = get_link(ipr, host_name)
    if link is None:
        raise NetlinkOpError(f"veth {host_name} vanished before it was attached", errno.ENODEV)
    with translated(f"attach {host_name} to {bridge.name}"):
        ipr.link("set", index=link.index, master=bridge.index, state="up")
    if hairpin:
        with translated(f"set hairpin mode on {host_name}"):
            ipr.brport("set", index=link.index, mode=1)
    return link


def configure_pod_link(ipr: IPRoute, ifname: str, address: IPv4Interface,
                       routes: list[tuple[IPv4Network, IPv4Address]]) -> LinkInfo:
    """Inside the pod: bring ``ifname`` up with its address and routes."""
    link = get_link(ipr, ifname)
    if link is None:
        raise NetlinkOpError(f"{ifname} is missing from the pod's namespace", errno.ENODEV)
    with translated(f"bring up {ifname} in the pod"):
        ipr.link("set", index=link.index, state="up")
    with translated(f"add {address} to {ifname} in the pod"):
        ipr.addr("add", index=link.index, address=str(address.ip),
                 prefixlen=address.network.prefixlen,
                 broadcast=str(address.network.broadcast_address))
    for dst, gw in routes:
        with translated(f"add route {dst} via {gw} in the pod"):
            ipr.route("add", dst=str(dst), gateway=str(gw), oif=link.index)
    return link


def del_link(ipr: IPRoute, name: str) -> bool:
    """Delete ``name`` (a veth's peer goes with it); gone already is success."""
    try:
        ipr.link("del", ifname=name)
    except NetlinkError as e:
        if e.code in (errno.ENODEV, errno.ENOENT):
            return False
        raise NetlinkOpError(f"delete link {name}: {describe_errno(e.code)}", e.code) from e
    log.info("deleted link %s", name)
    return True
