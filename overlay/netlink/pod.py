"""Pod attachment for the CNI plugin: the node bridge, veth pairs, pod addresses, routes.

Speed decides the shape of this module.  A runtime calls the plugin for every pod and
the target is the reference Go plugins' ~10 ms per ADD.  Measured here: pyroute2 costs
~120-190 ms to import and ~0.4 ms of Python encoding per request (~7 ms per ADD), so
the handful of rtnetlink requests ADD and DEL need are built with ``struct`` on a plain
``AF_NETLINK`` socket (:class:`.rtnl.Rtnl`, shared with the daemon, ~50 us per request),
batched where the kernel allows.  No pyroute2 import here: the in-process fallback stays
fast too.

Network namespaces are entered per *thread* (``setns(2)`` affects only the calling
thread), only long enough to open a netlink socket there: a netlink socket stays bound
to the namespace it was created in, so every later request on it acts inside the pod
while the thread itself is back on the node side.  This is safe in the multi-threaded
warm server and costs ~0.1 ms, where pyroute2's ``IPRoute(netns=...)`` forks a helper
per call (~9 ms).
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

from overlay.errors import NetlinkOpError
from overlay.netlink.rtnl import (
    IFA_ADDRESS,
    IFA_BROADCAST,
    IFA_LOCAL,
    IFADDR,
    IFF_PROMISC,
    IFF_UP,
    IFINFO,
    IFLA_ADDRESS,
    IFLA_BRPORT_MODE,
    IFLA_IFNAME,
    IFLA_INFO_DATA,
    IFLA_INFO_KIND,
    IFLA_INFO_SLAVE_DATA,
    IFLA_INFO_SLAVE_KIND,
    IFLA_LINKINFO,
    IFLA_MASTER,
    IFLA_MTU,
    IFLA_NET_NS_FD,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    RT_TABLE_MAIN,
    RTA_DST,
    RTA_GATEWAY,
    RTA_OIF,
    RTA_TABLE,
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_GETROUTE,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWROUTE,
    RTMSG,
    RTN_UNICAST,
    RTPROT_BOOT,
    VETH_INFO_PEER,
    Msg,
    NetlinkRequestError,
    Rtnl,
    attr,
    attr_str,
    attr_u32,
    attrs,
    cstr,
    describe_errno,
    mac_bytes,
    mac_str,
    u32,
)

log = logging.getLogger(__name__)

CLONE_NEWNET = 0x40000000
NSFS_MAGIC = 0x6E736673
PROC_SUPER_MAGIC = 0x9FA0
NS_GET_NSTYPE = 0xB703
_libc = ctypes.CDLL(None, use_errno=True)


# --- message bodies ----------------------------------------------------------------------

def _ifinfo(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return IFINFO.pack(socket.AF_UNSPEC, 0, index, flags, change)


def _by_name(name: str, flags: int = 0, change: int = 0) -> bytes:
    return _ifinfo(0, flags, change) + attr_str(IFLA_IFNAME, name)


# --- namespaces -------------------------------------------------------------------------

def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise NetlinkOpError(f"cannot enter network namespace: {os.strerror(code)}", code)


def is_netns_fd(fd: int) -> bool:
    """True if ``fd`` is a network namespace (nsfs bind mount or /proc/<pid>/ns/net)."""
    buf = ctypes.create_string_buffer(256)
    if _libc.fstatfs(fd, buf) != 0:
        return False
    if struct.unpack_from("l", buf)[0] not in (NSFS_MAGIC, PROC_SUPER_MAGIC):
        return False
    # Every kind of namespace file lives on nsfs: ask which kind this one is.
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


def open_in_netns(fd: int) -> Rtnl:
    """A netlink socket living in the namespace ``fd``; the thread stays where it is."""
    with thread_in_netns(fd):
        return Rtnl()


def enter_netns_for_thread(fd: int) -> None:
    """Move this thread into ``fd`` for good (the warm server's per-request threads)."""
    _setns(fd)


# --- values and reads -------------------------------------------------------------------

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
    """A stable host-side name, so DEL and GC find the veth without the pod's namespace."""
    digest = hashlib.sha256(f"{container_id}\0{ifname}".encode()).hexdigest()
    return "veth" + digest[:11]


def _local_mac() -> str:
    raw = bytearray(os.urandom(6))
    raw[0] = (raw[0] & 0xFE) | 0x02  # unicast, locally administered
    return ":".join(f"{b:02x}" for b in raw)


def _parse_link(payload: bytes) -> LinkInfo:
    _, _, index, flags, _ = IFINFO.unpack_from(payload)
    a = attrs(payload, IFINFO.size)
    kind = cstr(attrs(a[IFLA_LINKINFO]).get(IFLA_INFO_KIND)) if IFLA_LINKINFO in a else ""
    mac = mac_str(a.get(IFLA_ADDRESS, b""))
    mtu = u32(a[IFLA_MTU]) if IFLA_MTU in a else 0
    master = u32(a[IFLA_MASTER]) if IFLA_MASTER in a else 0
    return LinkInfo(index, cstr(a.get(IFLA_IFNAME)), mac, mtu, kind, master,
                    bool(flags & IFF_UP), bool(flags & IFF_PROMISC))


def _get_link_request(name: str) -> Msg:
    return Msg(RTM_GETLINK, 0, _by_name(name), f"get link {name}")


def get_link(nl: Rtnl, name: str) -> LinkInfo | None:
    replies = nl.call(_get_link_request(name), ignore=(errno.ENODEV, errno.ENOENT))
    return _parse_link(replies[0]) if replies else None


def get_addresses(nl: Rtnl, index: int) -> list[IPv4Interface]:
    body = IFADDR.pack(socket.AF_INET, 0, 0, 0, index)
    out = []
    for payload in nl.call(Msg(RTM_GETADDR, NLM_F_DUMP, body, f"list addresses of link {index}")):
        _, prefixlen, _, _, ifindex = IFADDR.unpack_from(payload)
        a = attrs(payload, IFADDR.size)
        raw = a.get(IFA_LOCAL) or a.get(IFA_ADDRESS)
        if ifindex == index and raw:
            out.append(IPv4Interface(f"{socket.inet_ntoa(raw)}/{prefixlen}"))
    return out


def get_routes(nl: Rtnl, index: int) -> list[tuple[IPv4Network, IPv4Address | None]]:
    body = RTMSG.pack(socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0)
    out = []
    for payload in nl.call(Msg(RTM_GETROUTE, NLM_F_DUMP, body, f"list routes of link {index}")):
        _, dst_len, _, _, table, _, _, _, _ = RTMSG.unpack_from(payload)
        a = attrs(payload, RTMSG.size)
        if RTA_TABLE in a:
            table = u32(a[RTA_TABLE])
        oif = u32(a[RTA_OIF]) if RTA_OIF in a else 0
        if table != RT_TABLE_MAIN or oif != index:
            continue
        dst = socket.inet_ntoa(a[RTA_DST]) if RTA_DST in a else "0.0.0.0"
        gw = IPv4Address(a[RTA_GATEWAY]) if RTA_GATEWAY in a else None
        out.append((IPv4Network(f"{dst}/{dst_len}"), gw))
    return out


# --- the bridge -------------------------------------------------------------------------

def ensure_bridge(nl: Rtnl, name: str, gateway: IPv4Interface, mtu: int,
                  force_address: bool = False, promisc: bool = False) -> LinkInfo:
    """Create-or-verify the node bridge holding ``gateway``; say why when it cannot."""
    link = get_link(nl, name)
    if link is None:
        # A fixed MAC: otherwise the bridge takes its lowest port's MAC and changes it
        # whenever ports come and go (pods would see their gateway's MAC change).
        body = (_ifinfo(0, IFF_UP, IFF_UP) + attr_str(IFLA_IFNAME, name)
                + attr_u32(IFLA_MTU, mtu) + attr(IFLA_ADDRESS, mac_bytes(_local_mac()))
                + attr(IFLA_LINKINFO, attr_str(IFLA_INFO_KIND, "bridge")))
        # EEXIST: a concurrent ADD made it first.
        nl.call(Msg(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body, f"create bridge {name}"),
                ignore=(errno.EEXIST,))
        log.info("bridge %s ensured (mtu %d)", name, mtu)
        link = get_link(nl, name)
        if link is None:
            raise NetlinkOpError(f"bridge {name} vanished while being created", errno.ENODEV)
    if link.kind != "bridge":
        raise NetlinkOpError(f"{name} already exists and is a {link.kind or 'non-bridge'} "
                             "device, not a bridge: remove it or set \"bridge\" to another "
                             "name", errno.EEXIST)
    _ensure_gateway(nl, link, gateway, force_address)
    if not link.up or (promisc and not link.promisc):
        flags = IFF_UP | (IFF_PROMISC if promisc else 0)
        nl.call(Msg(RTM_NEWLINK, 0, _ifinfo(link.index, flags, flags), f"bring up bridge {name}"))
    return link


def _addr_body(index: int, address: IPv4Interface) -> bytes:
    ip = address.ip.packed
    return (IFADDR.pack(socket.AF_INET, address.network.prefixlen, 0, 0, index)
            + attr(IFA_LOCAL, ip) + attr(IFA_ADDRESS, ip)
            + attr(IFA_BROADCAST, address.network.broadcast_address.packed))


def _ensure_gateway(nl: Rtnl, link: LinkInfo, gateway: IPv4Interface,
                    force_address: bool) -> None:
    addresses = get_addresses(nl, link.index)
    if gateway in addresses:
        return
    if addresses and not force_address:
        raise NetlinkOpError(
            f"{link.name} already has an IP address different from {gateway}: "
            f"{', '.join(map(str, addresses))} (a stale bridge from an earlier subnet? "
            "delete it, or set \"forceAddress\": true)", errno.EEXIST)
    for old in addresses:
        nl.call(Msg(RTM_DELADDR, 0, _addr_body(link.index, old),
                    f"remove old address {old} from {link.name}"), ignore=(errno.EADDRNOTAVAIL,))
        log.info("forceAddress: removed %s from %s", old, link.name)
    nl.call(Msg(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, _addr_body(link.index, gateway),
                f"add {gateway} to {link.name}"), ignore=(errno.EEXIST,))
    log.info("bridge %s: gateway %s", link.name, gateway)


# --- veth -------------------------------------------------------------------------------

def add_veth(nl: Rtnl, host_name: str, pod_name: str, pod_netns_fd: int, mtu: int,
             bridge: LinkInfo, hairpin: bool, pod_mac: str | None = None) -> LinkInfo:
    """Create the pair with the pod end born inside the pod's namespace and the host end
    up on the bridge, set hairpin mode, and read the host end back: one batch."""
    peer = (_ifinfo() + attr_str(IFLA_IFNAME, pod_name) + attr_u32(IFLA_MTU, mtu)
            + attr_u32(IFLA_NET_NS_FD, pod_netns_fd)
            + (attr(IFLA_ADDRESS, mac_bytes(pod_mac)) if pod_mac else b""))
    linkinfo = (attr_str(IFLA_INFO_KIND, "veth")
                + attr(IFLA_INFO_DATA, attr(VETH_INFO_PEER, peer)))
    create = (_ifinfo(0, IFF_UP, IFF_UP) + attr_str(IFLA_IFNAME, host_name)
              + attr_u32(IFLA_MTU, mtu) + attr_u32(IFLA_MASTER, bridge.index)
              + attr(IFLA_LINKINFO, linkinfo))
    requests = [Msg(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, create,
                    f"create veth {host_name}/{pod_name}")]
    if hairpin:
        slave = (attr_str(IFLA_INFO_SLAVE_KIND, "bridge")
                 + attr(IFLA_INFO_SLAVE_DATA, attr(IFLA_BRPORT_MODE, b"\x01")))
        requests.append(Msg(RTM_NEWLINK, 0, _by_name(host_name) + attr(IFLA_LINKINFO, slave),
                            f"set hairpin mode on {host_name}"))
    requests.append(_get_link_request(host_name))
    results = nl.batch(requests)
    code = results[0][1]
    if code == errno.EEXIST:
        raise NetlinkOpError(f"cannot create veth {host_name}/{pod_name}: an interface named "
                             f"{host_name} (node) or {pod_name} (pod) already exists", code)
    if code:
        raise NetlinkOpError(f"create veth {host_name}/{pod_name}: {describe_errno(code)}", code)
    log.info("created veth %s <-> %s on %s (mtu %d)", host_name, pod_name, bridge.name, mtu)
    failed = [(req.what, code) for req, (_, code) in zip(requests[1:], results[1:]) if code]
    if failed or not results[-1][0]:
        del_link(nl, host_name)  # we made it: do not leave it behind
        what, code = failed[0] if failed else (f"read back {host_name}", errno.ENODEV)
        raise NetlinkOpError(f"{what}: {describe_errno(code)}", code)
    return _parse_link(results[-1][0][0])


RTA_PRIORITY = 6  # the route's metric
# Routes a pod's further interface on the network (eth1 beside eth0) gets at this metric
# plus its ifindex when an earlier interface already holds them at metric 0.
SECONDARY_METRIC = 1000


def _route_msg(dst: IPv4Network, gw: IPv4Address, index: int, metric: int = 0) -> Msg:
    body = (RTMSG.pack(socket.AF_INET, dst.prefixlen, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT,
                       0, RTN_UNICAST, 0)
            + (attr(RTA_DST, dst.network_address.packed) if dst.prefixlen else b"")
            + attr(RTA_GATEWAY, gw.packed) + attr_u32(RTA_OIF, index)
            + (attr_u32(RTA_PRIORITY, metric) if metric else b""))
    what = f"add route {dst} via {gw} in the pod" + (f" (metric {metric})" if metric else "")
    return Msg(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, body, what)


def configure_pod_link(nl: Rtnl, ifname: str, address: IPv4Interface,
                       routes: list[tuple[IPv4Network, IPv4Address]]) -> LinkInfo:
    """Inside the pod: bring ``ifname`` up with its address and routes (one batch).

    A route the pod already has (another interface's, e.g. eth0's default route when
    this is eth1 on the same network) is kept, as the reference bridge plugin does: the
    existing one wins.  This link still gets the same route at a higher metric, so
    traffic bound to it (``ping -I eth1``) has a way out and the route takes over when
    the other interface is deleted."""
    link = get_link(nl, ifname)
    if link is None:
        raise NetlinkOpError(f"{ifname} is missing from the pod's namespace", errno.ENODEV)
    requests = [
        Msg(RTM_NEWLINK, 0, _ifinfo(link.index, IFF_UP, IFF_UP), f"bring up {ifname} in the pod"),
        Msg(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, _addr_body(link.index, address),
            f"add {address} to {ifname} in the pod"),
    ] + [_route_msg(dst, gw, link.index) for dst, gw in routes]
    results = nl.batch(requests)
    held = []
    for i, (msg, (_, code)) in enumerate(zip(requests, results)):
        if code == errno.EEXIST and i >= 2:
            dst, gw = routes[i - 2]
            held.append(_route_msg(dst, gw, link.index, SECONDARY_METRIC + link.index))
        elif code:
            raise NetlinkRequestError(f"{msg.what}: {describe_errno(code)}", code)
    if held:
        nl.run(held)
        log.info("%s: %d route(s) already held by another interface of the pod; added "
                 "at metric %d", ifname, len(held), SECONDARY_METRIC + link.index)
    return link


def set_link_down(nl: Rtnl, name: str) -> bool:
    """Cut a link off (~0.1 ms, where deleting a veth waits ~20 ms in the kernel);
    False if it does not exist."""
    replies = nl.batch([Msg(RTM_NEWLINK, 0, _by_name(name, 0, IFF_UP), f"set {name} down")])
    code = replies[0][1]
    if code in (errno.ENODEV, errno.ENOENT):
        return False
    if code:
        raise NetlinkOpError(f"set {name} down: {describe_errno(code)}", code)
    return True


def del_link(nl: Rtnl, name: str) -> bool:
    """Delete ``name`` (a veth's peer goes with it); gone already is success."""
    (_, code), = nl.batch([Msg(RTM_DELLINK, 0, _by_name(name), f"delete link {name}")])
    if code in (errno.ENODEV, errno.ENOENT):
        return False
    if code:
        raise NetlinkOpError(f"delete link {name}: {describe_errno(code)}", code)
    log.info("deleted link %s", name)
    return True
