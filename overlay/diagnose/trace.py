"""``overlayctl trace SRC DST``: the path a packet takes between two pod IPs.

``build_trace`` is pure: it walks the hops (source node and bridge, the route the kernel
chose, the VXLAN device, the neighbour entry giving the remote VTEP MAC, the FDB entry
giving its public IP, the destination node) over the leases and this node's kernel
state, and marks each one ``ok``, ``missing``, ``wrong`` or ``unknown``.
``trace_path`` gathers that state on the node it runs on (the source node).

Two IPv6 pod addresses are traced the same way over the IPv6 side: the leases' IPv6
halves (``vxlan.entries.v6_half``, the very leases overlayd's IPv6 backend programs),
``overlay-v6.<VNI>`` and the node's IPv6 routes, neighbours and addresses
(``kernel_state.read_ipv6_state``), down to the remote VTEP over the IPv6 underlay.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv6Address
from typing import Any, TypeAlias

from overlay.cni.netconf import DEFAULT_BRIDGE
from overlay.diagnose.gather import gather_cluster
from overlay.diagnose.state import ClusterState
from overlay.lease import Lease
from overlay.netlink.kernel_state import KernelState, RouteInfo
from overlay.subnet.etcdconf import EtcdOptions
from overlay.vxlan.entries import v6_half

OK, MISSING, WRONG, UNKNOWN = "ok", "missing", "wrong", "unknown"
IPAddress: TypeAlias = IPv4Address | IPv6Address


@dataclass(frozen=True)
class Hop:
    name: str
    status: str
    detail: str
    fix: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}


@dataclass
class TraceResult:
    src: IPAddress
    dst: IPAddress
    hops: list[Hop] = field(default_factory=list)
    note: str = ""

    @property
    def ok(self) -> bool:
        return all(h.status in (OK, UNKNOWN) for h in self.hops)

    def to_dict(self) -> dict[str, Any]:
        return {"src": str(self.src), "dst": str(self.dst), "ok": self.ok,
                "hops": [h.to_dict() for h in self.hops], "note": self.note}


def _lease_for(leases: list[Lease], ip: IPAddress) -> Lease | None:
    return next((lease for lease in leases if ip in lease.subnet), None)


def build_trace(src: IPAddress, dst: IPAddress, kernel: KernelState,
                route: RouteInfo | None, cluster: ClusterState, *, vxlan_name: str,
                bridge_name: str, local_public_ip: IPAddress | None,
                forwarding: bool | None = None,
                underlay_route: RouteInfo | None = None) -> TraceResult:
    res = TraceResult(src, dst)
    known = cluster.available
    src_lease = _lease_for(cluster.leases, src)
    dst_lease = _lease_for(cluster.leases, dst)
    res.hops.append(_source_node(src, src_lease, known, local_public_ip))
    if res.hops[0].status == WRONG:
        # SRC lives on another node: this node's routes, bridge and tunnel say nothing about
        # its path, and "fixing" them (e.g. routing DST's subnet, maybe this node's own,
        # into the tunnel) would break this node.  So stop at where to run it instead.
        assert src_lease is not None, "WRONG: the source's lease is known"
        res.note = (f"stopped: {src} is a pod of node {src_lease.attrs.public_ip}, not of this "
                    f"node ({local_public_ip}); the later hops would describe another path")
        return res
    res.hops.append(_source_bridge(src, src_lease, kernel, bridge_name))
    if forwarding is False:
        sysctl = ("net.ipv6.conf.all.forwarding" if src.version == 6
                  else "net.ipv4.ip_forward")
        res.hops.append(Hop("forwarding", WRONG, f"the kernel refuses to forward {src} -> {dst} "
                            f"arriving on {bridge_name} ({sysctl} off?)",
                            f"sysctl -w {sysctl}=1"))
    twice = _second_own_lease(src_lease, dst_lease, local_public_ip)
    if twice is not None:  # never route a subnet of this very node into the tunnel
        res.hops += [twice, _destination_node(dst, dst_lease, known)]
        return res
    hop, via_vxlan = _route_hop(dst, dst_lease, src_lease, route, kernel, vxlan_name,
                                bridge_name, cluster)
    res.hops.append(hop)
    if via_vxlan:
        assert route is not None, "via_vxlan: the route was found"
        res.hops += _vxlan_hops(route, dst_lease, kernel, vxlan_name, known)
        if dst_lease is not None:
            res.hops.append(_underlay_hop(dst_lease, underlay_route, kernel, vxlan_name))
    res.hops.append(_destination_node(dst, dst_lease, known))
    if not known:
        res.note = f"etcd unreachable ({cluster.error}): lease-dependent hops are unknown"
    return res


def _source_node(src: IPAddress, lease: Lease | None, known: bool,
                 local: IPAddress | None) -> Hop:
    if lease is None:
        if not known:
            return Hop("source-node", UNKNOWN, f"{src}: leases unavailable")
        return Hop("source-node", MISSING, f"no lease holds {src}",
                   "SRC is not a pod IP of this network, or its node lost its lease")
    detail = f"{src} in {lease.subnet}, node {lease.attrs.public_ip}"
    if local is not None and lease.attrs.public_ip != local:
        return Hop("source-node", WRONG, detail + f", but this node is {local}",
                   f"run this on node {lease.attrs.public_ip} (public IP "
                   f"{lease.attrs.public_ip}, the node whose lease holds {lease.subnet})")
    return Hop("source-node", OK, detail)


def _second_own_lease(src: Lease | None, dst: Lease | None,
                      local: IPAddress | None) -> Hop | None:
    """DST in another subnet leased to this same node: a route "fix" via the tunnel would
    send this node's own addresses away; the problem is the second lease."""
    if src is None or dst is None or local is None or src.subnet == dst.subnet \
            or dst.attrs.public_ip != local:
        return None
    return Hop("route", WRONG, f"{dst.subnet} is leased to this node ({local}) too, "
               f"besides {src.subnet}",
               "this node holds two leases: keep the one its subnet.env names and remove "
               "the other (overlayctl leases list shows both; overlayctl leases release)")


def _source_bridge(src: IPAddress, lease: Lease | None, k: KernelState, bridge: str) -> Hop:
    link = k.link(bridge)
    if link is None:
        return Hop("source-bridge", MISSING, f"no bridge {bridge}",
                   "the CNI plugin creates it at the next pod ADD")
    addrs = k.addrs_of(link.index)
    detail = f"{bridge} {'up' if link.up else 'down'} " + (
        ", ".join(map(str, addrs)) or "no address")
    if not link.up:
        return Hop("source-bridge", WRONG, detail, f"ip link set {bridge} up")
    if lease is not None:
        gw = f"{lease.gateway}/{lease.subnet.prefixlen}"
        if not any(str(a) == gw for a in addrs):
            return Hop("source-bridge", WRONG, detail + f"; gateway {gw} missing",
                       f"ip addr add {gw} dev {bridge}")
    return Hop("source-bridge", OK, detail)


def _route_hop(dst: IPAddress, dst_lease: Lease | None, src_lease: Lease | None,
               route: RouteInfo | None, k: KernelState, vxlan: str, bridge: str,
               cluster: ClusterState) -> tuple[Hop, bool]:
    local = src_lease is not None and dst_lease is not None and src_lease.subnet == dst_lease.subnet
    if route is None:
        fix = (f"ip route replace {dst_lease.subnet} via {dst_lease.subnet.network_address} "
               f"dev {vxlan} onlink" if dst_lease and not local else "check routes and ip_forward")
        return Hop("route", MISSING, f"no route to {dst} (or forwarding off)", fix), False
    dev = k.name_of(route.oif)
    detail = f"{dst} via {route.gateway or 'direct'} dev {dev}"
    if local:
        assert dst_lease is not None, "local: both leases are known"
        status = OK if dev == bridge else WRONG
        fix = "" if status == OK else f"ip route replace {dst_lease.subnet} dev {bridge}"
        return Hop("route", status, detail + " (same node)", fix), False
    if dst_lease is None:
        if not cluster.available:
            return Hop("route", UNKNOWN, detail), dev == vxlan
        return Hop("route", WRONG, detail + f"; no lease holds {dst}",
                   "DST is not in any node's subnet: check the pod's IP"), False
    gw = dst_lease.subnet.network_address
    direct = bool(cluster.config and cluster.config.backend.direct_routing)
    if dev == vxlan and route.gateway == gw:
        return Hop("route", OK, detail), True
    if direct and route.gateway == dst_lease.attrs.public_ip:
        return Hop("route", OK, detail + " (DirectRouting)"), False
    return Hop("route", WRONG, detail + f"; expected via {gw} dev {vxlan} onlink",
               f"ip route replace {dst_lease.subnet} via {gw} dev {vxlan} onlink"), dev == vxlan


def _vxlan_hops(route: RouteInfo, lease: Lease | None, k: KernelState, vxlan: str,
                known: bool) -> list[Hop]:
    hops = []
    link = k.link(vxlan)
    if link is None or link.vxlan is None:
        return [Hop("vxlan-device", MISSING, f"no VXLAN device {vxlan}",
                    "restart overlayd on this node")]
    v = link.vxlan
    hops.append(Hop("vxlan-device", OK if link.up else WRONG,
                    f"{vxlan} VNI {v.vni} port {v.port} local {v.local6 or v.local} "
                    f"mtu {link.mtu} "
                    f"{'up' if link.up else 'down'}", "" if link.up else f"ip link set {vxlan} up"))
    gw = route.gateway
    neigh = next((n for n in k.neigh_on(link.index) if n.dst == gw), None)
    want_mac = lease.attrs.vtep_mac if lease else None
    if neigh is None or neigh.mac is None:
        fix = (f"ip neigh replace {gw} lladdr {want_mac} dev {vxlan} nud permanent"
               if want_mac else "restart overlayd on this node")
        hops.append(Hop("remote-vtep-mac", MISSING, f"no neighbour entry for {gw}", fix))
        return hops
    if want_mac and neigh.mac != want_mac:
        hops.append(Hop("remote-vtep-mac", WRONG, f"{gw} -> {neigh.mac}, lease says {want_mac}",
                        f"ip neigh replace {gw} lladdr {want_mac} dev {vxlan} nud permanent"))
    else:
        hops.append(Hop("remote-vtep-mac", OK if known else UNKNOWN, f"{gw} -> {neigh.mac}"
                        + ("" if neigh.permanent else " (not permanent)")))
    fdb = [e for e in k.fdb_on(link.index) if e.mac == neigh.mac and e.dst is not None]
    want_ip = lease.attrs.public_ip if lease else None
    if not fdb:
        fix = (f"bridge fdb replace {neigh.mac} dev {vxlan} dst {want_ip} self permanent"
               if want_ip else "restart overlayd on this node")
        hops.append(Hop("remote-public-ip", MISSING, f"no FDB entry for {neigh.mac}", fix))
    elif want_ip and all(e.dst != want_ip for e in fdb):
        hops.append(Hop("remote-public-ip", WRONG, f"{neigh.mac} -> "
                        + ", ".join(str(e.dst) for e in fdb) + f", lease says {want_ip}",
                        f"bridge fdb replace {neigh.mac} dev {vxlan} dst {want_ip} self permanent"))
    else:
        hops.append(Hop("remote-public-ip", OK if known else UNKNOWN,
                        f"{neigh.mac} -> {fdb[0].dst} (UDP {v.port}, VNI {v.vni})"))
    return hops


def _underlay_hop(lease: Lease, route: RouteInfo | None, k: KernelState, vxlan: str) -> Hop:
    """The encapsulated packet's way to the remote public IP."""
    pub = lease.attrs.public_ip
    if route is None:
        return Hop("underlay", MISSING, f"no route to public IP {pub}",
                   f"fix the underlay routing from this node to {pub}")
    link = k.link(vxlan)
    bound = link.vxlan.link if link and link.vxlan else None
    detail = f"{pub} via {route.gateway or 'direct'} dev {k.name_of(route.oif)}"
    if bound and route.oif != bound:
        return Hop("underlay", WRONG, detail + f", but {vxlan} is bound to {k.name_of(bound)}",
                   f"route {pub} through {k.name_of(bound)}, or restart overlayd with --iface")
    return Hop("underlay", OK, detail)


def _destination_node(dst: IPAddress, lease: Lease | None, known: bool) -> Hop:
    if lease is None:
        if not known:
            return Hop("destination-node", UNKNOWN, f"{dst}: leases unavailable")
        return Hop("destination-node", MISSING, f"no lease holds {dst}",
                   "DST is not a pod IP of this network, or its node lost its lease")
    # A lease in etcd is live (an expired one is gone), so it needs no expiry check.
    return Hop("destination-node", OK, f"{dst} in {lease.subnet}, node {lease.attrs.public_ip}"
               f" VTEP {lease.attrs.vtep_mac}")


def trace_path(src: IPAddress, dst: IPAddress, etcd: EtcdOptions, *,
               vxlan_device: str | None = None, bridge: str = DEFAULT_BRIDGE,
               cluster: ClusterState | None = None) -> TraceResult:
    """Gather this node's state and the leases (unless ``cluster`` holds them), then
    build the trace; two IPv6 addresses are traced over ``overlay-v6.<VNI>`` and the
    leases' IPv6 halves (``vxlan_device`` names the IPv4 device only)."""
    from overlay.netlink.kernel_state import dump_kernel_state, read_ipv6_state

    cluster = cluster if cluster is not None else gather_cluster(etcd)
    vni = cluster.config.backend.vni if cluster.config else 1
    if src.version == 6:
        leases6 = [h for h in map(_ipv6_side, cluster.leases) if h is not None]
        return _trace_on(src, dst, read_ipv6_state(), replace(cluster, leases=leases6),
                         f"overlay-v6.{vni}", bridge)
    return _trace_on(src, dst, dump_kernel_state(), cluster,
                     vxlan_device or f"overlay.{vni}", bridge)


def _ipv6_side(lease: Lease) -> Lease | None:
    """A lease as the IPv6 backend sees it: an IPv6-only lease as it is, a dual-stack
    one's IPv6 half; None for an IPv4-only lease."""
    return lease if lease.subnet.version == 6 else v6_half(lease)


def _trace_on(src: IPAddress, dst: IPAddress, kernel: KernelState, cluster: ClusterState,
              name: str, bridge: str) -> TraceResult:
    """The route lookups of the family of ``src``, then the trace over ``kernel``."""
    from overlay.netlink.kernel_state import RouteQuery, routes_get

    link = kernel.link(name)
    local = (link.vxlan.local6 or link.vxlan.local) if link and link.vxlan else None
    br = kernel.link(bridge)
    dst_lease = _lease_for(cluster.leases, dst)
    # Asked as for a packet forwarded from the pod (iif = bridge), which also shows
    # forwarding off, and as a plain lookup for when that fails or the bridge is gone;
    # then the encapsulated packet's way to the peer.  One send on one socket.
    queries = [RouteQuery(dst)]
    if br is not None:
        queries.insert(0, RouteQuery(dst, src, br.index))
    # the destination lease's public IP is of its family (an IPv6 half's: its PublicIPv6)
    peer = dst_lease.attrs.public_ip if dst_lease is not None else None
    if peer is not None:
        queries.append(RouteQuery(peer))
    answers = routes_get(queries)
    underlay = answers.pop() if peer is not None else None
    forwarded, plain = (answers[0], answers[1]) if br is not None else (None, answers[0])
    route = forwarded or plain
    forwarding = None if br is None or route is None else forwarded is not None
    return build_trace(src, dst, kernel, route, cluster, vxlan_name=name, bridge_name=bridge,
                       local_public_ip=local, forwarding=forwarding, underlay_route=underlay)
