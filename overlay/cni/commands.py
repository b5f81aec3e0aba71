"""ADD, DEL, CHECK, STATUS and GC: the plugin's policy.

Each command runs in the calling thread's network namespace as the node ("host") side;
the pod's namespace is reached through a netlink socket opened inside it.
ADD takes resources in order (IP, bridge, veth, pod config, masquerade) and gives back
everything it took, in reverse, when a later step fails.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from contextlib import ExitStack
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
    ip_address,
    ip_interface,
)
from typing import Any

from overlay.cni import ipam, podmeta
from overlay.cni.netconf import NetConf, NodeSubnet, is_mac, parse_netconf
from overlay.cni.skel import ERR_CHECK, ERR_KERNEL, MAX_NETWORK_NAME, Request
from overlay.cni.types import Interface, IPConfig, Result, Route, parse_result
from overlay.errors import CNIError, IPAMError, NetlinkOpError
from overlay.masq import iptables as masq
from overlay.netlink import netns, pod
from overlay.netlink.link import Link
from overlay.netlink.rtnl import Rtnl
from overlay.subnetenv import policy_marker_path
from overlay.util import lazylog

log = lazylog.get_logger(__name__)

_KNOWN_ARGS = {"IgnoreUnknown", "IP", "MAC", "K8S_POD_NAMESPACE", "K8S_POD_NAME",
               "K8S_POD_INFRA_CONTAINER_ID", "K8S_POD_UID"}
DEFAULT_ROUTE = IPv4Network("0.0.0.0/0")
DEFAULT_ROUTE6 = IPv6Network("::/0")
IPV6_MIN_MTU = 1280  # RFC 8200: below it the kernel gives a link no IPv6 at all


# --- helpers ----------------------------------------------------------------------------
# NetlinkOpError (100) and IPAMError (101) become CNI error JSON in skel.run; commands
# catch them only to add context or to change the code.

def open_pod_netns(req: Request, stack: ExitStack) -> int:
    """The pod's namespace as an fd, validated: exists, is a netns, is not ours."""
    fd = req.netns_fd
    if fd is None:
        try:
            # O_NONBLOCK: a FIFO named as CNI_NETNS must not hang ADD in open().
            fd = os.open(req.netns, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
        except OSError as e:
            raise CNIError(CNIError.INVALID_ENV, f"CNI_NETNS {req.netns} cannot be opened",
                           f"{e.strerror}: the pod's network namespace must exist") from None
        stack.callback(os.close, fd)
    if not netns.is_netns_fd(fd):
        raise CNIError(CNIError.INVALID_ENV, f"CNI_NETNS {req.netns} is not a network namespace",
                       "pass a path like /var/run/netns/<name> or /proc/<pid>/ns/net")
    if netns.same_netns(fd):
        raise CNIError(CNIError.INVALID_ENV,
                       f"CNI_NETNS {req.netns} is the plugin's own network namespace",
                       "the pod needs a namespace of its own")
    return fd


def _requested(req: Request, conf: NetConf) -> tuple[dict[int, ipam.IPAddress], str | None]:
    """The runtime's wishes: at most one IP per family (CNI_ARGS ``IP``, comma-separated
    as host-local takes it, or the ``ips`` capability, ``runtimeConfig.ips``), a MAC."""
    ignore_unknown = req.args.get("IgnoreUnknown", "").lower() in ("1", "true")
    unknown = sorted(set(req.args) - _KNOWN_ARGS)
    if unknown and not ignore_unknown:
        raise CNIError(CNIError.INVALID_CONFIG, f"unknown CNI_ARGS {', '.join(unknown)}",
                       "set IgnoreUnknown=1 to let the plugin ignore them")
    wanted: list[tuple[str, str]] = []
    if req.args.get("IP"):
        wanted += [("CNI_ARGS IP", item.strip()) for item in req.args["IP"].split(",")]
    runtime = req.config.get("runtimeConfig")
    ips = runtime.get("ips") if isinstance(runtime, dict) else None
    if ips is not None:
        if not isinstance(ips, list) or not all(isinstance(i, str) for i in ips):
            raise CNIError(CNIError.INVALID_CONFIG, "runtimeConfig.ips must be a list of "
                           "IP addresses", f"got {ips!r}")
        wanted += [("runtimeConfig.ips", item) for item in ips]
    requested: dict[int, ipam.IPAddress] = {}
    for where, text in wanted:
        ip = _requested_ip(where, text)
        if requested.get(ip.version, ip) != ip:
            raise CNIError(CNIError.INVALID_CONFIG, f"{where}: two IPv{ip.version} addresses "
                           f"requested ({requested[ip.version]}, {ip})",
                           "a pod gets one address per family")
        requested[ip.version] = ip
    mac = conf.mac or (req.args.get("MAC") or "").lower() or None
    if mac is not None and not is_mac(mac):
        raise CNIError(CNIError.INVALID_CONFIG, f"CNI_ARGS MAC={mac} is not a MAC address")
    return requested, mac


def _requested_ip(where: str, text: str) -> ipam.IPAddress:
    try:  # the ips capability gives CIDRs ("10.244.1.5/24"); CNI_ARGS plain addresses
        return ip_interface(text).ip if "/" in text else ip_address(text)
    except ValueError:
        raise CNIError(CNIError.INVALID_CONFIG, f"{where} {text} is not an IP "
                       "address") from None


def pod_routes(conf: NetConf, node: NodeSubnet) -> list[pod.PodRoute]:
    routes: list[pod.PodRoute] = []
    if node.gateway is not None and conf.is_default_gateway:
        routes.append((DEFAULT_ROUTE, node.gateway))
    if (node.gateway is not None and node.network is not None
            and node.network != node.subnet and node.network != DEFAULT_ROUTE):
        routes.append((node.network, node.gateway))
    if node.ipv6_subnet is not None and node.ipv6_gateway is not None:
        v6net = node.ipv6_network or node.ipv6_subnet
        if conf.is_default_gateway:
            routes.append((DEFAULT_ROUTE6, node.ipv6_gateway))
        if v6net != node.ipv6_subnet and v6net != DEFAULT_ROUTE6:
            routes.append((v6net, node.ipv6_gateway))
    return routes


def allocators(store: ipam.Store, node: NodeSubnet) -> list[ipam.Allocator]:
    """One range per family, in host-local's order: 0 IPv4, 1 IPv6 (an IPv6-only node's
    one range is 0, as host-local numbers a lone IPv6 range)."""
    out = []
    if node.subnet is not None and node.gateway is not None:
        out.append(ipam.Allocator(store, node.subnet, node.gateway, 0))
    if node.ipv6_subnet is not None and node.ipv6_gateway is not None:
        out.append(ipam.Allocator(store, node.ipv6_subnet, node.ipv6_gateway, len(out)))
    return out


def _store(conf: NetConf) -> ipam.DiskStore:
    return ipam.DiskStore(conf.data_dir, conf.name)


# --- ADD --------------------------------------------------------------------------------

def cmd_add(req: Request) -> dict[str, Any]:
    conf = parse_netconf(req.config, req.cni_version)
    requested, mac = _requested(req, conf)
    with ExitStack() as stack:
        netns_fd = open_pod_netns(req, stack)
        node = conf.load_node_subnet()
        _check_family_fit(node, requested)
        store = _store(conf)
        ips = ipam.allocate_all(store, allocators(store, node), req.container_id,
                                req.ifname, requested)
        undo: list[Callable[[], Any]] = [
            lambda: _release_ips(store, ips, req.container_id, req.ifname)]
        try:
            result = _attach(req, conf, node, netns_fd, ips, mac, undo, stack)
            _write_pod_meta(req, conf, ips)
        except BaseException:
            _rollback(undo)
            raise
    log.info("ADD %s/%s: %s on %s", req.container_id, req.ifname,
             ", ".join(map(str, ips)), conf.bridge)
    return result.to_dict(req.cni_version)


def _release_ips(store: ipam.Store, ips: list[ipam.IPAddress], container_id: str,
                 ifname: str) -> None:
    for ip in ips:
        ipam.release_ip(store, ip, container_id, ifname)


def _check_family_fit(node: NodeSubnet, requested: dict[int, ipam.IPAddress]) -> None:
    if 4 in requested and node.subnet is None:
        raise CNIError(CNIError.INVALID_CONFIG, f"IPv4 address {requested[4]} requested, "
                       "but this node is IPv6-only", "request an IPv6 address or none")
    if 6 in requested and node.ipv6_subnet is None:
        raise CNIError(CNIError.INVALID_CONFIG, f"IPv6 address {requested[6]} requested, "
                       "but this node has no IPv6 subnet",
                       "enable IPv6 in the network config (EnableIPv6) or request IPv4 only")
    if node.ipv6_subnet is not None and node.mtu < IPV6_MIN_MTU:
        raise CNIError(CNIError.INVALID_CONFIG, f"MTU {node.mtu} is below IPv6's minimum "
                       f"{IPV6_MIN_MTU}", "a dual-stack pod needs an MTU of 1280 or more")


def _write_pod_meta(req: Request, conf: NetConf, ips: list[ipam.IPAddress]) -> None:
    """Who the pod is, for overlayd's pod registry (last: nothing to undo if it fails)."""
    meta = podmeta.meta_from_request(req.container_id, req.ifname, req.args, req.config, ips)
    try:
        podmeta.write_meta(conf.data_dir, conf.name, meta)
    except podmeta.MetaTooLarge as e:
        raise CNIError(CNIError.INVALID_CONFIG, f"the pod's metadata is too large: {e}",
                       "args.cni.labels and ports: Kubernetes label syntax (ASCII), at most "
                       f"{podmeta.MAX_ITEMS} of each") from None
    except OSError as e:
        raise IPAMError(f"cannot write pod metadata in {conf.data_dir}/{conf.name}: "
                        f"{e.strerror}") from e


def _mac(link: Link) -> str:
    # The bridge and both veth ends are Ethernet devices: the kernel always reports their
    # address, so a missing one is a broken invariant, not a bad input.
    assert link.mac is not None, f"{link.name} has no MAC address"
    return link.mac


def _attach(req: Request, conf: NetConf, node: NodeSubnet, netns_fd: int,
            ips: list[ipam.IPAddress], mac: str | None, undo: list, stack: ExitStack) -> Result:
    host_name = pod.host_veth_name(req.container_id, req.ifname)
    # One address per family the node has, IPv4's first (an IPv6-only pod: IPv6's alone).
    ip = next((x for x in ips if isinstance(x, IPv4Address)), None)
    ip6 = next((x for x in ips if isinstance(x, IPv6Address)), None)
    address = None
    if ip is not None and node.subnet is not None:
        address = IPv4Interface(f"{ip}/{node.subnet.prefixlen}")
    address6 = None
    if ip6 is not None and node.ipv6_subnet is not None:
        address6 = IPv6Interface(f"{ip6}/{node.ipv6_subnet.prefixlen}")
    routes = pod_routes(conf, node)
    host = stack.enter_context(Rtnl())
    bridge = pod.ensure_bridge(host, conf.bridge, node.gateway_interface, node.mtu,
                               conf.force_address, conf.promisc_mode,
                               node.ipv6_gateway_interface if address6 else None)
    if address6 is not None:
        pod.enable_ipv6_forwarding()
    if req.reaper is not None:
        req.reaper.wait(host_name)  # a deferred delete of this attachment's old veth
    try:
        host_link = pod.add_veth(host, host_name, req.ifname, netns_fd, node.mtu, bridge,
                                 conf.hairpin_mode, mac)
    except NetlinkOpError as e:
        # IPAM just proved this attachment holds nothing, so a node-side veth with its
        # name is a leftover of a DEL whose teardown never finished (server killed).
        if e.code != errno.EEXIST or pod.get_link(host, host_name) is None:
            raise
        log.warning("removing stale veth %s left by an unfinished DEL", host_name)
        pod.del_link(host, host_name)
        host_link = pod.add_veth(host, host_name, req.ifname, netns_fd, node.mtu, bridge,
                                 conf.hairpin_mode, mac)
    undo.append(lambda: _del_host_veth(host_name))  # only once it is ours
    if address6 is not None:
        pod.prepare_pod_ipv6(netns_fd, req.ifname)  # before the link comes up
    inside = stack.enter_context(netns.open_in_netns(netns_fd))
    pod_link = pod.configure_pod_link(inside, req.ifname, address, routes, address6)
    if conf.ip_masq:
        undo.append(lambda: masq.del_masq(conf.name, req.container_id, req.ifname))
        if ip is not None and node.network is not None:
            masq.add_masq(conf.name, req.container_id, req.ifname, ip, node.network)
        if address6 is not None and node.ipv6_network is not None:
            masq.add_masq(conf.name, req.container_id, req.ifname, address6.ip,
                          node.ipv6_network)
    return Result(
        interfaces=(Interface(bridge.name, _mac(bridge), mtu=bridge.mtu),
                    Interface(host_link.name, _mac(host_link), mtu=node.mtu),
                    Interface(pod_link.name, _mac(pod_link), req.netns, node.mtu)),
        ips=((IPConfig(address, node.gateway, 2),) if address is not None else ())
        + ((IPConfig(address6, node.ipv6_gateway, 2),) if address6 is not None else ()),
        routes=tuple(Route(dst, gw) for dst, gw in routes),
    )


def _rollback(undo: list[Callable[[], Any]]) -> None:
    for step in reversed(undo):
        try:
            step()
        except Exception:  # keep undoing; the original error is what the runtime sees
            log.exception("rollback step failed")


def _del_host_veth(name: str) -> None:
    with Rtnl() as host:
        pod.del_link(host, name)


# --- DEL --------------------------------------------------------------------------------

def cmd_del(req: Request) -> None:
    """Idempotent: whatever is already gone is success; needs neither daemon nor netns."""
    conf = parse_netconf(req.config, req.cni_version, relative_paths=True)
    host_name = pod.host_veth_name(req.container_id, req.ifname)
    with Rtnl() as host:
        if req.reaper is not None:
            # Warm server: cut the pod off now, let the kernel's slow veth teardown
            # (~20 ms of RCU waits) finish in the background; ADD of the same
            # attachment waits for it.
            removed = pod.set_link_down(host, host_name)
            if removed:
                req.reaper.delete_later(host_name)
        else:
            removed = pod.del_link(host, host_name)
    if not removed:
        _del_pod_side(req)
    released: list[ipam.IPAddress] = []
    # else no ADD could store anything there (a relative dataDir: one it refused)
    if len(conf.name) <= MAX_NETWORK_NAME and os.path.isabs(conf.data_dir):
        released = ipam.release(_store(conf), req.container_id, req.ifname)
        podmeta.remove_meta(conf.data_dir, conf.name, req.container_id, req.ifname)
    if conf.ip_masq:
        masq.del_masq(conf.name, req.container_id, req.ifname)
    log.info("DEL %s/%s: veth %s, released %s", req.container_id, req.ifname,
             "removed" if removed else "absent", ", ".join(map(str, released)) or "nothing")


def _del_pod_side(req: Request) -> None:
    """The host end is gone; a pod end left behind (e.g. renamed host end) goes too."""
    if not req.netns and req.netns_fd is None:
        return
    with ExitStack() as stack:
        try:
            fd = open_pod_netns(req, stack)
        except CNIError:
            return  # netns gone or unusable: nothing of ours can be in it
        with netns.open_in_netns(fd) as inside:
            link = pod.get_link(inside, req.ifname)
            if link is not None and link.kind == "veth":
                pod.del_link(inside, req.ifname)


# --- CHECK ------------------------------------------------------------------------------

def cmd_check(req: Request) -> None:
    conf = parse_netconf(req.config, req.cni_version)
    if "prevResult" not in req.config:
        raise CNIError(CNIError.INVALID_CONFIG, "CHECK needs prevResult",
                       "the runtime must pass the result of the preceding ADD")
    prev = parse_result(req.config["prevResult"])
    with ExitStack() as stack:
        netns_fd = open_pod_netns(req, stack)
        node = conf.load_node_subnet()
        _check(req, conf, node, prev, netns_fd, stack)


def _check(req: Request, conf: NetConf, node: NodeSubnet, prev: Result, netns_fd: int,
           stack: ExitStack) -> None:
    def fail(msg: str) -> CNIError:
        return CNIError(ERR_CHECK, msg, f"container {req.container_id} interface {req.ifname}")

    index = next((i for i, itf in enumerate(prev.interfaces)
                  if itf.name == req.ifname and itf.sandbox), None)
    if index is None:
        raise fail(f"prevResult lists no interface {req.ifname} in a sandbox")
    expected = prev.interfaces[index]
    ips = [ip.address for ip in prev.ips if ip.interface == index]
    inside = stack.enter_context(netns.open_in_netns(netns_fd))
    link = pod.get_link(inside, req.ifname)
    if link is None:
        raise fail(f"{req.ifname} is missing from the pod's namespace")
    if expected.mac and (link.mac or "").lower() != expected.mac.lower():
        raise fail(f"{req.ifname} has MAC {link.mac}, prevResult says {expected.mac}")
    dual = node.ipv6_subnet is not None
    have: list[IPv4Interface | IPv6Interface] = list(pod.get_addresses(inside, link.index))
    present: list[tuple[Any, Any]] = list(pod.get_routes(inside, link.index))
    if dual or any(a.version == 6 for a in ips):
        have += pod.get_addresses6(inside, link.index)
        present += pod.get_routes6(inside, link.index)
    if dual and not any(a.version == 6 for a in ips):
        raise fail("prevResult has no IPv6 address, but this node has an IPv6 subnet")
    for address in ips:
        if address not in have:
            raise fail(f"{req.ifname} lacks address {address}")
    for dst, gw in pod_routes(conf, node):
        if (dst, gw) not in present:
            raise fail(f"route {dst} via {gw} is missing in the pod")
    host = stack.enter_context(Rtnl())
    _check_host(req, conf, node, host, fail)
    reserved = ipam.get(_store(conf), req.container_id, req.ifname)
    for address in ips:
        if address.ip not in reserved:
            raise fail(f"{address.ip} is not reserved for this attachment in IPAM")
    if conf.ip_masq and not masq.has_masq(conf.name, req.container_id, req.ifname):
        raise fail("masquerade rules are missing")
    if (conf.ip_masq and any(a.version == 6 for a in ips)
            and not masq.has_masq(conf.name, req.container_id, req.ifname, 6)):
        raise fail("IPv6 masquerade rules (ip6tables) are missing")


def _check_host(req: Request, conf: NetConf, node: NodeSubnet, host, fail) -> None:
    bridge = pod.get_link(host, conf.bridge)
    if bridge is None or bridge.kind != "bridge":
        raise fail(f"bridge {conf.bridge} is missing")
    gw = node.gateway_interface  # None on an IPv6-only node
    if gw is not None and gw not in pod.get_addresses(host, bridge.index):
        raise fail(f"bridge {conf.bridge} lacks gateway {gw}")
    gw6 = node.ipv6_gateway_interface
    if gw6 is not None and gw6 not in pod.get_addresses6(host, bridge.index):
        raise fail(f"bridge {conf.bridge} lacks gateway {gw6}")
    host_name = pod.host_veth_name(req.container_id, req.ifname)
    veth = pod.get_link(host, host_name)
    if veth is None:
        raise fail(f"host veth {host_name} is missing")
    if veth.master != bridge.index:
        raise fail(f"host veth {host_name} is not attached to {conf.bridge}")


# --- STATUS, GC -------------------------------------------------------------------------

def cmd_status(req: Request) -> None:
    """50: cannot serve ADD (no subnet, range exhausted); 51: and pods already attached
    may have lost connectivity (daemon's subnet.env gone, or the bridge/gateway gone)."""
    conf = parse_netconf(req.config, req.cni_version)
    store = _store(conf)
    try:
        with store.lock():  # one consistent read serves both questions below
            taken = store.reservations()
    except IPAMError as e:
        raise CNIError(CNIError.NOT_AVAILABLE, f"cannot read IPAM store {store.dir}",
                       str(e)) from None
    attached = len(taken)
    limited = CNIError.LIMITED_CONNECTIVITY if attached else CNIError.NOT_AVAILABLE
    try:
        node = conf.load_node_subnet()
    except CNIError as e:
        raise CNIError(limited, e.msg, e.details) from None
    if attached:
        _status_bridge(conf, node, attached)
    for allocator in allocators(store, node):
        if allocator.free_count(taken) <= 0:
            raise CNIError(CNIError.NOT_AVAILABLE,
                           f"no free IP addresses in {allocator.subnet}",
                           f"all {allocator.size} usable addresses are reserved; delete "
                           "pods or run GC")


def _status_bridge(conf: NetConf, node: NodeSubnet, attached: int) -> None:
    try:
        with Rtnl() as host:
            bridge = pod.get_link(host, conf.bridge)
            gw, gw6 = node.gateway_interface, node.ipv6_gateway_interface
            ok = (bridge is not None and bridge.up
                  and (gw is None or gw in pod.get_addresses(host, bridge.index))
                  and (gw6 is None or gw6 in pod.get_addresses6(host, bridge.index)))
    except NetlinkOpError as e:
        raise CNIError(CNIError.LIMITED_CONNECTIVITY, f"cannot inspect {conf.bridge}",
                       str(e)) from None
    if not ok:
        raise CNIError(CNIError.LIMITED_CONNECTIVITY,
                       f"bridge {conf.bridge} is missing, down, or lacks gateway "
                       + ", ".join(str(g) for g in (node.gateway_interface,
                                                    node.ipv6_gateway_interface) if g),
                       f"{attached} attached pod(s) may have lost connectivity; the next ADD "
                       "recreates it")


def _valid_attachments(config: dict[str, Any]) -> list[ipam.Attachment]:
    raw = config.get("cni.dev/valid-attachments")
    if not isinstance(raw, list):
        raise CNIError(CNIError.INVALID_CONFIG, "GC needs cni.dev/valid-attachments",
                       "a list of {\"containerID\": ..., \"ifname\": ...}")
    out = []
    for item in raw:
        if not (isinstance(item, dict) and isinstance(item.get("containerID"), str)
                and isinstance(item.get("ifname"), str)):
            raise CNIError(CNIError.INVALID_CONFIG, "malformed cni.dev/valid-attachments entry",
                           repr(item))
        out.append((item["containerID"], item["ifname"]))
    return out


def cmd_gc(req: Request) -> None:
    """Release every reservation (and its host veth / nat chain) not in the valid list."""
    conf = parse_netconf(req.config, req.cni_version)
    valid = _valid_attachments(req.config)
    stale = ipam.gc(_store(conf), valid)
    errors = []
    attachments = list(dict.fromkeys(owner for _, owner in stale))  # both families: one veth
    with Rtnl() as host:
        for container_id, ifname in attachments:
            try:
                pod.del_link(host, pod.host_veth_name(container_id, ifname))
                if conf.ip_masq:
                    masq.del_masq(conf.name, container_id, ifname)
            except (NetlinkOpError, CNIError) as e:
                errors.append(str(e))
    if errors:
        raise CNIError(ERR_KERNEL, "GC could not remove everything", "; ".join(errors))


HANDLERS = {"ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check, "STATUS": cmd_status,
            "GC": cmd_gc}


def cmd_add_unenforced(req: Request) -> dict[str, Any]:
    """ADD where no NetworkPolicy is known (the in-process fallback, ``overlay-cni
    serve``): refused with "try again" (11) while overlayd's marker says policies are in
    force, rather than create a pod nothing filters. One ``stat``."""
    conf = parse_netconf(req.config, req.cni_version)
    marker = policy_marker_path(conf.subnet_file)
    if os.path.exists(marker):
        raise CNIError(CNIError.TRY_AGAIN, "NetworkPolicies are in force and overlayd did "
                       "not take the request", f"{marker} exists: the pod would be "
                       "unfiltered; retry once overlayd serves the CNI socket (it is not "
                       "running, or was at its bound of requests at once)")
    return cmd_add(req)


UNENFORCED_HANDLERS = {**HANDLERS, "ADD": cmd_add_unenforced}
