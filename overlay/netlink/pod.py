"""Pod attachment for the CNI plugin: the node bridge, veth pairs, pod addresses, routes.

Operations only: the messages are ``link``'s, ``addr``'s and ``route``'s, sent on a
:class:`.rtnl.Rtnl`.  Speed decides the shape of this module.  A runtime calls the
plugin for every pod and the target is the reference Go plugins' ~10 ms per ADD.
Measured here: pyroute2 costs ~120-190 ms to import and ~0.4 ms of Python encoding per
request (~7 ms per ADD), so the handful of rtnetlink requests ADD and DEL need are built
with ``struct`` on a plain ``AF_NETLINK`` socket (~50 us per request), batched where
the kernel allows.  No pyroute2 import here: the in-process fallback stays fast too.
Namespaces are entered per thread (:mod:`.netns`).
"""

from __future__ import annotations

import _socket  # not ``socket``: see overlay.netlink.rtnl
import errno
import os
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)

from overlay.errors import NetlinkOpError
from overlay.netlink import addr, link, netns, route
from overlay.netlink.link import Link, get as get_link
from overlay.netlink.rtnl import (
    IFA_ADDRESS,
    IFA_LOCAL,
    IFADDR,
    NLM_F_CREATE,
    NLM_F_EXCL,
    RT_SCOPE_UNIVERSE,
    RT_TABLE_MAIN,
    RTA_DST,
    RTA_GATEWAY,
    RTA_OIF,
    RTA_PRIORITY,
    RTA_TABLE,
    RTM_DELADDR,
    RTM_GETADDR,
    RTM_GETROUTE,
    RTM_NEWADDR,
    RTM_NEWROUTE,
    RTMSG,
    RTN_UNICAST,
    RTPROT_BOOT,
    Msg,
    NetlinkRequestError,
    Rtnl,
    attr,
    attr_u32,
    attrs,
    describe_errno,
    u32,
)
from overlay.util import lazylog
from overlay.util.digest import name_digest

__all__ = ["SECONDARY_METRIC", "add_veth", "configure_pod_link", "del_link", "ensure_bridge",
           "enable_ipv6_forwarding", "get_addresses", "get_addresses6", "get_link",
           "get_routes", "get_routes6", "host_veth_name", "prepare_pod_ipv6", "set_link_down"]

log = lazylog.get_logger(__name__)


def host_veth_name(container_id: str, ifname: str) -> str:
    """A stable host-side name, so DEL and GC find the veth without the pod's namespace."""
    digest = name_digest(container_id, ifname)
    return "veth" + digest[:11]


def _local_mac() -> str:
    raw = bytearray(os.urandom(6))
    raw[0] = (raw[0] & 0xFE) | 0x02  # unicast, locally administered
    return ":".join(f"{b:02x}" for b in raw)


def get_addresses(nl: Rtnl, index: int) -> list[IPv4Interface]:
    return [a.interface for a in addr.dump(nl, index)]


def get_routes(nl: Rtnl, index: int) -> list[tuple[IPv4Network, IPv4Address | None]]:
    """The main table's routes out of link ``index``: (destination, gateway)."""
    return [(r.dst, r.gateway) for r in route.dump(nl)
            if r.table == RT_TABLE_MAIN and r.oif == index]


# --- the bridge -------------------------------------------------------------------------

def ensure_bridge(nl: Rtnl, name: str, gateway: IPv4Interface | None, mtu: int,
                  force_address: bool = False, promisc: bool = False,
                  gateway6: IPv6Interface | None = None) -> Link:
    """Create-or-verify the node bridge holding ``gateway`` (and ``gateway6`` on a
    dual-stack node; an IPv6-only node's bridge has ``gateway6`` alone); say why when
    it cannot."""
    bridge = get_link(nl, name)
    if bridge is None:
        # A fixed MAC: otherwise the bridge takes its lowest port's MAC and changes it
        # whenever ports come and go (pods would see their gateway's MAC change).
        # EEXIST: a concurrent ADD made it first.
        nl.call(link.bridge_add_msg(name, mtu, _local_mac()), ignore=(errno.EEXIST,))
        log.info("bridge %s ensured (mtu %d)", name, mtu)
        bridge = get_link(nl, name)
        if bridge is None:
            raise NetlinkOpError(f"bridge {name} vanished while being created", errno.ENODEV)
    if bridge.kind != "bridge":
        raise NetlinkOpError(f"{name} already exists and is a {bridge.kind or 'non-bridge'} "
                             "device, not a bridge: remove it or set \"bridge\" to another "
                             "name", errno.EEXIST)
    if gateway is not None:
        _ensure_gateway(nl, bridge, gateway, force_address)
    if gateway6 is not None:
        _ensure_gateway6(nl, bridge, gateway6, force_address)
    if not bridge.up or (promisc and not bridge.promisc):
        nl.call(link.set_msg(bridge.index, up=True, promisc=True if promisc else None,
                             what=f"bring up bridge {name}"))
    return bridge


def _ensure_gateway(nl: Rtnl, bridge: Link, gateway: IPv4Interface, force_address: bool) -> None:
    addresses = get_addresses(nl, bridge.index)
    if gateway in addresses:
        return
    if addresses and not force_address:
        raise NetlinkOpError(
            f"{bridge.name} already has an IP address different from {gateway}: "
            f"{', '.join(map(str, addresses))} (a stale bridge from an earlier subnet? "
            "delete it, or set \"forceAddress\": true)", errno.EEXIST)
    for old in addresses:
        nl.call(addr.msg(False, bridge.index, old, broadcast=True,
                         what=f"remove old address {old} from {bridge.name}"),
                ignore=(errno.EADDRNOTAVAIL,))
        log.info("forceAddress: removed %s from %s", old, bridge.name)
    nl.call(addr.msg(True, bridge.index, gateway, broadcast=True,
                     what=f"add {gateway} to {bridge.name}"), ignore=(errno.EEXIST,))
    log.info("bridge %s: gateway %s", bridge.name, gateway)


# --- veth -------------------------------------------------------------------------------

def add_veth(nl: Rtnl, host_name: str, pod_name: str, pod_netns_fd: int, mtu: int,
             bridge: Link, hairpin: bool, pod_mac: str | None = None) -> Link:
    """Create the pair with the pod end born inside the pod's namespace and the host end
    up on the bridge, set hairpin mode, and read the host end back: one batch."""
    requests = [link.veth_add_msg(host_name, pod_name, pod_netns_fd, mtu, bridge.index, pod_mac)]
    if hairpin:
        requests.append(link.hairpin_msg(host_name))
    requests.append(link.get_msg(host_name))
    results = nl.batch(requests)
    code = results[0][1]
    if code == errno.EEXIST:
        raise NetlinkOpError(f"cannot create veth {host_name}/{pod_name}: an interface named "
                             f"{host_name} (node) or {pod_name} (pod) already exists", code)
    if code:
        raise NetlinkOpError(f"create veth {host_name}/{pod_name}: {describe_errno(code)}", code)
    log.info("created veth %s <-> %s on %s (mtu %d)", host_name, pod_name, bridge.name, mtu)
    failed = [(req.what, code)
              for req, (_, code) in zip(requests[1:], results[1:], strict=True) if code]
    if failed or not results[-1][0]:
        del_link(nl, host_name)  # we made it: do not leave it behind
        what, code = failed[0] if failed else (f"read back {host_name}", errno.ENODEV)
        raise NetlinkOpError(f"{what}: {describe_errno(code)}", code)
    return link.parse(results[-1][0][0])


# Routes a pod's further interface on the network (eth1 beside eth0) gets at this metric
# plus its ifindex when an earlier interface already holds them at metric 0.
SECONDARY_METRIC = 1000


def _route_msg(dst: IPv4Network | IPv6Network, gw: IPv4Address | IPv6Address, index: int,
               metric: int = 0) -> Msg:
    what = f"add route {dst} via {gw} in the pod" + (f" (metric {metric})" if metric else "")
    if isinstance(dst, IPv6Network):
        assert isinstance(gw, IPv6Address), f"route {dst} via {gw}: families differ"
        return _route6_msg(dst, gw, index, metric, what)
    assert isinstance(gw, IPv4Address), f"route {dst} via {gw}: families differ"
    return route.msg(True, dst, gw, index, protocol=RTPROT_BOOT, metric=metric, what=what)


PodRoute = tuple[IPv4Network | IPv6Network, IPv4Address | IPv6Address]


def configure_pod_link(nl: Rtnl, ifname: str, address: IPv4Interface | None,
                       routes: list[PodRoute],
                       address6: IPv6Interface | None = None) -> Link:
    """Inside the pod: bring ``ifname`` up with its address (and ``address6`` on a
    dual-stack node: without duplicate address detection, usable at once) and routes
    of both families (one batch).

    A route the pod already has (another interface's, e.g. eth0's default route when
    this is eth1 on the same network) is kept, as the reference bridge plugin does: the
    existing one wins.  This link still gets the same route at a higher metric, so
    traffic bound to it (``ping -I eth1``) has a way out and the route takes over when
    the other interface is deleted."""
    dev = get_link(nl, ifname)
    if dev is None:
        raise NetlinkOpError(f"{ifname} is missing from the pod's namespace", errno.ENODEV)
    requests = [link.set_msg(dev.index, up=True, what=f"bring up {ifname} in the pod")]
    if address is not None:  # None: an IPv6-only pod
        requests.append(addr.msg(True, dev.index, address, broadcast=True,
                                 what=f"add {address} to {ifname} in the pod"))
    if address6 is not None:
        requests.append(_addr6_msg(True, dev.index, address6,
                                   f"add {address6} to {ifname} in the pod"))
    first_route = len(requests)
    requests += [_route_msg(dst, gw, dev.index) for dst, gw in routes]
    results = nl.batch(requests)
    held = []
    for i, (msg, (_, code)) in enumerate(zip(requests, results, strict=True)):
        if code == errno.EEXIST and i >= first_route:
            dst, gw = routes[i - first_route]
            held.append(_route_msg(dst, gw, dev.index, SECONDARY_METRIC + dev.index))
        elif code:
            raise NetlinkRequestError(f"{msg.what}: {describe_errno(code)}", code)
    if held:
        nl.run(held)
        log.info("%s: %d route(s) already held by another interface of the pod; added "
                 "at metric %d", ifname, len(held), SECONDARY_METRIC + dev.index)
    return dev


def set_link_down(nl: Rtnl, name: str) -> bool:
    """Cut a link off (~0.1 ms, where deleting a veth waits ~20 ms in the kernel);
    False if it does not exist."""
    (_, code), = nl.batch([link.set_msg(name=name, up=False, what=f"set {name} down")])
    if code in (errno.ENODEV, errno.ENOENT):
        return False
    if code:
        raise NetlinkOpError(f"set {name} down: {describe_errno(code)}", code)
    return True


def del_link(nl: Rtnl, name: str) -> bool:
    """Delete ``name`` (a veth's peer goes with it); gone already is success."""
    (_, code), = nl.batch([link.del_msg(name=name)])
    if code in (errno.ENODEV, errno.ENOENT):
        return False
    if code:
        raise NetlinkOpError(f"delete link {name}: {describe_errno(code)}", code)
    log.info("deleted link %s", name)
    return True


# --- IPv6: a dual-stack pod ---------------------------------------------------------------
# The IPv4 modules (addr, route) parse IPv4 only; the few IPv6 messages a pod needs are
# built here the same way.

AF_INET6 = _socket.AF_INET6
IFA_F_NODAD = 0x02  # linux/if_addr.h: the address is usable at once (no DAD)
_PROC_IPV6_CONF = "/proc/sys/net/ipv6/conf"


def _addr6_msg(add: bool, index: int, address: IPv6Interface, what: str) -> Msg:
    """A global IPv6 address without duplicate address detection (``ip addr add ...
    nodad``): the pod's first packet must not wait ~1 s for DAD, and with hairpin mode
    the bridge echoes the pod's own solicitation back, which DAD takes for a duplicate."""
    body = (IFADDR.pack(AF_INET6, address.network.prefixlen, IFA_F_NODAD if add else 0,
                        RT_SCOPE_UNIVERSE, index) + attr(IFA_ADDRESS, address.ip.packed))
    if add:
        return Msg(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body, what)
    return Msg(RTM_DELADDR, 0, body, what)


def get_addresses6(nl: Rtnl, index: int) -> list[IPv6Interface]:
    """Link ``index``'s global IPv6 addresses (link-local ones are the kernel's own)."""
    out = []
    for t, b, o, e in nl.dump(RTM_GETADDR, IFADDR.pack(AF_INET6, 0, 0, 0, index)):
        if t != RTM_NEWADDR:
            continue
        family, plen, _, scope, idx = IFADDR.unpack_from(b, o)
        if family != AF_INET6 or scope != RT_SCOPE_UNIVERSE or idx != index:
            continue
        a = attrs(b, o + IFADDR.size, e)
        raw = a.get(IFA_ADDRESS) or a.get(IFA_LOCAL)
        if raw is not None and len(raw) == 16:
            out.append(IPv6Interface((IPv6Address(raw), plen)))
    return out


def _route6_msg(dst: IPv6Network, gw: IPv6Address, index: int, metric: int, what: str) -> Msg:
    body = (RTMSG.pack(AF_INET6, dst.prefixlen, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT,
                       RT_SCOPE_UNIVERSE, RTN_UNICAST, 0)
            + (attr(RTA_DST, dst.network_address.packed) if dst.prefixlen else b"")
            + attr(RTA_GATEWAY, gw.packed) + attr_u32(RTA_OIF, index)
            + (attr_u32(RTA_PRIORITY, metric) if metric else b""))
    return Msg(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, body, what)


def get_routes6(nl: Rtnl, index: int) -> list[tuple[IPv6Network, IPv6Address | None]]:
    """The main table's IPv6 routes out of link ``index``: (destination, gateway)."""
    out = []
    for t, b, o, e in nl.dump(RTM_GETROUTE, RTMSG.pack(AF_INET6, *[0] * 8)):
        if t != RTM_NEWROUTE:
            continue
        family, dst_len, _, _, table, _, _, _, _ = RTMSG.unpack_from(b, o)
        if family != AF_INET6:
            continue
        a = attrs(b, o + RTMSG.size, e)
        if RTA_TABLE in a:
            table = u32(a[RTA_TABLE])
        if table != RT_TABLE_MAIN or RTA_OIF not in a or u32(a[RTA_OIF]) != index:
            continue
        gw = a.get(RTA_GATEWAY, b"")
        out.append((IPv6Network((IPv6Address(a.get(RTA_DST, bytes(16))), dst_len)),
                    IPv6Address(gw) if len(gw) == 16 else None))
    return out


def _ensure_gateway6(nl: Rtnl, bridge: Link, gateway: IPv6Interface, force_address: bool) -> None:
    addresses = get_addresses6(nl, bridge.index)
    if gateway in addresses:
        return
    if addresses and not force_address:
        raise NetlinkOpError(
            f"{bridge.name} already has an IPv6 address different from {gateway}: "
            f"{', '.join(map(str, addresses))} (a stale bridge from an earlier subnet? "
            "delete it, or set \"forceAddress\": true)", errno.EEXIST)
    _sysctl_ensure(bridge.name, "disable_ipv6", "0")  # our bridge, even where the default is off
    for old in addresses:
        nl.call(_addr6_msg(False, bridge.index, old, f"remove old address {old} from "
                           f"{bridge.name}"), ignore=(errno.EADDRNOTAVAIL,))
        log.info("forceAddress: removed %s from %s", old, bridge.name)
    nl.call(_addr6_msg(True, bridge.index, gateway, f"add {gateway} to {bridge.name}"),
            ignore=(errno.EEXIST,))
    log.info("bridge %s: gateway %s", bridge.name, gateway)


def _sysctl_ensure(ifname: str, key: str, value: str) -> bool:
    """``net.ipv6.conf.<ifname>.<key> = value`` in the calling thread's namespace, written
    only if different (one read otherwise); True if it was written."""
    path = os.path.join(_PROC_IPV6_CONF, ifname, key)
    try:
        with open(path, encoding="ascii") as f:
            if f.read().strip() == value:
                return False
        with open(path, "w", encoding="ascii") as f:
            f.write(value)
    except OSError as e:
        raise NetlinkOpError(f"cannot set net.ipv6.conf.{ifname}.{key}={value}: "
                             f"{e.strerror} (is IPv6 disabled in this kernel, or the "
                             "MTU below IPv6's 1280?)", e.errno or errno.EIO) from e
    return True


def prepare_pod_ipv6(pod_netns_fd: int, ifname: str) -> None:
    """Before ``ifname`` comes up in the pod: IPv6 on (``disable_ipv6=0`` for it and
    ``lo``, as the reference plugins do) and no DAD on it at all (``accept_dad=0``:
    its link-local address would see its own solicitation echoed by a hairpin port)."""
    with netns.thread_in_netns(pod_netns_fd):
        for name, key in ((ifname, "disable_ipv6"), ("lo", "disable_ipv6"),
                          (ifname, "accept_dad")):
            _sysctl_ensure(name, key, "0")


def enable_ipv6_forwarding() -> None:
    """``net.ipv6.conf.all.forwarding = 1`` in the node's namespace (the calling
    thread's), as the reference bridge plugin does for a gateway bridge: the node
    routes its IPv6 pods' traffic.  Read first, written (and logged) once."""
    if _sysctl_ensure("all", "forwarding", "1"):
        log.info("node: net.ipv6.conf.all.forwarding set to 1 (IPv6 pods are routed)")
