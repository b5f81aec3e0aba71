"""The VXLAN device and its remote entries: ensure, compare, recreate, program, dump, monitor.

Everything goes through ``rawnl``'s hand-packed rtnetlink messages: the remote entries
because there are many (batched, see rawnl), the link and address work because it is
simple, and because not importing pyroute2 keeps the daemon ~11 MB smaller (the RSS
target is 60 MB with 1000 leases).  pyroute2 is still used to open sockets inside a
*named* namespace (tests, benchmarks); the daemon itself runs inside its namespace.
"""

from __future__ import annotations

import errno
import logging
import re
import threading
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Callable, Collection, Sequence

from overlay.errors import ConfigError, NetlinkOpError, OverlayError
from overlay.netlink import rawnl
from overlay.netlink.common import require_netns
from overlay.netlink.rtnl import GONE, describe_errno, protocol_name, route_type_name
from overlay.vxlan.entries import FDB, Entries, Neigh, Op, OtherRoute, Route

log = logging.getLogger(__name__)

RTMGRP_LINK = 0x1
IFF_UP = rawnl.IFF_UP
ZERO_MAC = "00:00:00:00:00:00"


def open_netlink(netns: str | None = None) -> rawnl.RawRoute:
    """An rtnetlink socket in this namespace, or in ``netns`` (a name or a path)."""
    if netns is not None:
        require_netns(netns)
    try:
        return rawnl.RawRoute(netns)
    except OSError as e:
        raise NetlinkOpError(f"cannot open rtnetlink: {e.strerror or e}", e.errno or 0) from e


def _run(raw: rawnl.RawRoute, msg: rawnl.Msg, what: str, ignore: Collection[int] = ()) -> None:
    """One acknowledged request, its error worded with ``what`` (the device's name)."""
    raw.call(msg._replace(what=what), ignore)


@dataclass(frozen=True)
class Underlay:
    """The node's underlay interface and its public IP."""

    name: str
    index: int
    address: IPv4Interface  # public IP with its prefix (the L2 subnet for DirectRouting)
    mtu: int


@dataclass(frozen=True)
class VXLANSpec:
    name: str
    vni: int
    port: int
    local: IPv4Address
    underlay_index: int
    mtu: int
    mac: str


class UnderlayError(ConfigError):
    """No interface fits as the underlay.  ``given`` says which input was at fault
    ("iface": a name or regex, "public_ip": an address, None: neither was given);
    ``value`` is that input as shown; ``kind`` what went wrong (the constants below),
    so a caller speaking in flags (the daemon) can name its flag and hint."""

    NO_MATCH, BAD_PATTERN, NO_SUCH_ADDRESS, NO_IPV4, NO_DEFAULT_ROUTE = (
        "no-match", "bad-pattern", "no-such-address", "no-ipv4", "no-default-route")

    def __init__(self, kind: str, problem: str, given: str | None = None, value: str = ""):
        super().__init__(f"underlay {value}: {problem}" if value else f"underlay: {problem}")
        self.kind, self.problem, self.given, self.value = kind, problem, given, value


def find_underlay(nl: rawnl.RawRoute, iface: str | None,
                  public_ip: IPv4Address | None) -> Underlay:
    """Pick the underlay: ``iface`` (a name or a regex), else the link holding
    ``public_ip``, else the link of the default route.  UnderlayError when none fits."""
    records = {l.index: l for l in nl.dump_links()}
    links = {i: l.name for i, l in records.items()}
    addrs = nl.dump_addrs()
    if iface:
        idx = _match_iface(links, iface, {i for i, _ in addrs})
    elif public_ip is not None:
        idx = next((i for i, a in addrs if a.ip == public_ip), None)
        if idx is None:
            raise UnderlayError(UnderlayError.NO_SUCH_ADDRESS, "no interface in this network "
                                "namespace has that address", "public_ip", str(public_ip))
    else:
        idx = _default_route_index(nl)
    mine = [a for i, a in addrs if i == idx]
    if public_ip is not None:
        chosen = next((a for a in mine if a.ip == public_ip), None)
        if chosen is None:  # e.g. behind NAT: keep the flag's IP, the link's prefix
            chosen = IPv4Interface(f"{public_ip}/{mine[0].network.prefixlen if mine else 32}")
    elif mine:
        chosen = mine[0]
    else:
        raise UnderlayError(UnderlayError.NO_IPV4, f"interface {links[idx]} has no IPv4 address")
    return Underlay(links[idx], idx, chosen, records[idx].mtu)


def _match_iface(links: dict[int, str], iface: str, with_ipv4: set[int]) -> int:
    for idx, name in links.items():
        if name == iface:
            return idx
    try:
        pattern = re.compile(iface)
    except re.error as e:
        raise UnderlayError(UnderlayError.BAD_PATTERN, f"no such interface and not a valid "
                            f"regex ({e})", "iface", repr(iface)) from e
    matches = [idx for idx, name in sorted(links.items())
               if name and name != "lo" and pattern.fullmatch(name)]
    # like Flannel's --iface-regex: the first match that has an IPv4 address
    for idx in sorted(matches, key=lambda i: i not in with_ipv4):
        return idx
    raise UnderlayError(UnderlayError.NO_MATCH, "no interface matches; have "
                        f"{', '.join(sorted(links.values()))}", "iface", repr(iface))


def _default_route_index(nl: rawnl.RawRoute) -> int:
    for r in nl.dump_routes():
        if r.dst.prefixlen == 0 and r.table == rawnl.RT_TABLE_MAIN and r.oif:
            return r.oif
    raise UnderlayError(UnderlayError.NO_DEFAULT_ROUTE,
                        "no default route to pick the underlay interface from")


class VXLANDevice:
    """One VXLAN device in one network namespace, plus its remote entries."""

    def __init__(self, spec: VXLANSpec, netns: str | None = None):
        self.spec = spec
        self.netns = netns
        self.raw = open_netlink(netns)
        self.index = 0
        self._lock = threading.Lock()

    def close(self) -> None:
        self.raw.close()

    # ---- the device ---------------------------------------------------------
    def _link(self) -> rawnl.LinkRecord | None:
        return next((l for l in self.raw.dump_links() if l.name == self.spec.name), None)

    def ensure(self) -> bool:
        """Create the device, or keep an existing compatible one; True if (re)created."""
        with self._lock:
            link = self._link()
            created = False
            if link is not None:
                diff = self._incompatible(link)
                if diff:
                    log.info("VXLAN device %s is incompatible (%s): recreating it",
                             self.spec.name, diff)
                    _run(self.raw, rawnl.link_del_msg(link.index), f"delete {self.spec.name}",
                         GONE)
                    link = None
            if link is None:
                link = self._create()
                created = True
            self._fix_in_place(link)
            self.index = link.index
            return created

    def _create(self) -> rawnl.LinkRecord:
        s = self.spec
        _run(self.raw, rawnl.vxlan_add_msg(s.name, s.vni, s.port, s.local, s.underlay_index,
                                           s.mac, s.mtu), f"create VXLAN device {s.name}")
        link = self._link()
        if link is None:
            raise NetlinkOpError(f"VXLAN device {s.name} vanished right after creation",
                                 errno.ENODEV)
        log.info("created VXLAN device %s (VNI %d, port %d, local %s, MAC %s, MTU %d)",
                 s.name, s.vni, s.port, s.local, s.mac, s.mtu)
        return link

    def _incompatible(self, link: rawnl.LinkRecord) -> str:
        """Which setting of an existing device differs in a way that needs a new device."""
        s = self.spec
        if link.kind != "vxlan":
            return f"kind {link.kind} != vxlan"
        v = link.vxlan
        checks = (("VNI", v.get("id"), s.vni), ("port", v.get("port"), s.port),
                  ("local", v.get("local"), str(s.local)),
                  ("underlay link", v.get("link"), s.underlay_index),
                  ("learning", v.get("learning"), 0))
        return ", ".join(f"{name} {have} != {want}" for name, have, want in checks
                         if have != want)

    def _fix_in_place(self, link: rawnl.LinkRecord) -> None:
        """MTU and MAC can change without a new device; then bring it up."""
        mtu = self.spec.mtu if link.mtu != self.spec.mtu else None
        mac = self.spec.mac if (link.mac or "") != self.spec.mac else None
        if mtu is not None or mac is not None:
            log.info("VXLAN device %s: setting%s%s", self.spec.name,
                     f" MTU {mtu}" if mtu else "", f" MAC {mac}" if mac else "")
            _run(self.raw, rawnl.link_set_msg(link.index, mtu=mtu, mac=mac),
                 f"set {self.spec.name}")
        if not link.flags & IFF_UP:
            _run(self.raw, rawnl.link_set_msg(link.index, up=True), f"set {self.spec.name} up")

    def ensure_address(self, addr: IPv4Interface) -> None:
        """Exactly ``addr`` (the lease's network address /32) on the device."""
        with self._lock:
            idx = self.index
            if not idx:
                link = self._link()
                idx = link.index if link else 0
            have = [a for i, a in self.raw.dump_addrs() if i == idx]
            for a in have:
                if a != addr:
                    log.info("VXLAN device %s: removing old address %s", self.spec.name, a)
                    _run(self.raw, rawnl.addr_msg(False, idx, a),
                         f"remove {a} from {self.spec.name}", GONE)
            if addr not in have:
                _run(self.raw, rawnl.addr_msg(True, idx, addr), f"add {addr} to {self.spec.name}",
                     (errno.EEXIST,))
                log.info("VXLAN device %s: address %s", self.spec.name, addr)

    def state(self) -> tuple[bool, int]:
        """(device exists and is up, ifindex)."""
        with self._lock:
            link = self._link()
        if link is None:
            return False, 0
        return bool(link.flags & IFF_UP), link.index

    # ---- remote entries -------------------------------------------------------
    def _to_msg(self, op: Op, replace: bool = False) -> rawnl.Msg:
        e = op.entry
        if isinstance(e, Neigh):
            return rawnl.neigh_msg(op.add, self.index, e.ip, e.mac)
        if isinstance(e, FDB):
            return rawnl.fdb_msg(op.add, self.index, e.mac, e.dst)
        oif = self.spec.underlay_index if e.direct else self.index
        return rawnl.route_msg(op.add, e.dst, e.gateway, oif, onlink=not e.direct,
                               replace=replace)

    def program(self, ops: Sequence[Op]) -> list[int]:
        """Apply ``ops`` in order in as few syscalls as possible; errno per op (0 = ok).

        Deleting something already gone counts as success.  Adding a route never
        overwrites another protocol's: EEXIST for a route means one holds that
        destination (a route of ours there is replaced).
        """
        if not ops:
            return []
        if not self.index:
            return [errno.ENODEV] * len(ops)
        with self._lock:
            codes = self.raw.execute([self._to_msg(op) for op in ops])
            if errno.EEXIST in codes:  # rare: looked at only then (thousands of ops)
                taken = [i for i, (op, code) in enumerate(zip(ops, codes))
                         if code == errno.EEXIST and op.add and isinstance(op.entry, Route)]
                if taken:
                    self._replace_own(ops, codes, taken)
        out = []
        for op, code in zip(ops, codes):
            if code and not op.add and code in GONE:
                code = 0
            if not code:
                log.debug("%s", op)
            elif code == errno.EEXIST and op.add and isinstance(op.entry, Route):
                log.debug("%s: another protocol's route holds %s", op, op.entry.dst)
            else:
                log.warning("%s failed: %s", op, describe_errno(code))
            out.append(code)
        return out

    def _replace_own(self, ops: Sequence[Op], codes: list[int], taken: list[int]) -> None:
        """Route adds that met a route with their key (EEXIST): replace the ones where
        that route is ours (proto 111: stale, or made before a restart); where any
        other protocol has a route to the destination, leave EEXIST (a conflict).
        The check and the replace are two requests: only a route that somebody else
        makes with our key in between (microseconds) could still be replaced."""
        try:
            others = self._other_routes_locked()
        except OverlayError as e:  # unknown whose: a conflict for now, retried at reconcile
            log.warning("reading routes to check %d route(s) that exist failed: %s",
                        len(taken), e)
            return
        redo = [i for i in taken if ops[i].entry.dst not in others]
        if not redo:
            return
        again = self.raw.execute([self._to_msg(ops[i], replace=True) for i in redo])
        for i, code in zip(redo, again):
            codes[i] = code

    def other_routes(self) -> dict[IPv4Network, OtherRoute]:
        """The main table's routes of other protocols, by destination."""
        with self._lock:
            return self._other_routes_locked()

    def _other_routes_locked(self) -> dict[IPv4Network, OtherRoute]:
        return self._name_others(self.raw.dump_main_routes()[1])

    def _name_others(self, records: list[rawnl.RouteRecord]) -> dict[IPv4Network, OtherRoute]:
        if not records:
            return {}
        names = {l.index: l.name for l in self.raw.dump_links()}
        out: dict[IPv4Network, OtherRoute] = {}
        for r in sorted(records, key=lambda r: r.metric):  # per destination the preferred
            out.setdefault(r.dst, OtherRoute(
                r.dst, protocol_name(r.protocol), names.get(r.oif, f"if{r.oif}") if r.oif else "",
                route_type_name(r.rtype), r.metric))
        return out

    def dump(self) -> Entries:
        """The entries this daemon owns on the device (and its direct routes), and the
        other protocols' main-table routes (``others``)."""
        out = Entries()
        if not self.index:
            return out
        with self._lock:
            neighs = self.raw.dump_neigh(rawnl.AF_INET, self.index)
            fdbs = self.raw.dump_neigh(rawnl.AF_BRIDGE, self.index)
            routes, others = self.raw.dump_main_routes()
            out.others = self._name_others(others)
        for n in neighs:
            if n.state & rawnl.NUD_PERMANENT and n.dst is not None and n.mac:
                out.add(Neigh(n.dst, n.mac))
        for f in fdbs:
            if f.dst is not None and f.mac and f.mac != ZERO_MAC:
                out.add(FDB(f.mac, f.dst))
        for r in routes:  # proto 111 only: nothing else is ever ours to remove
            if r.gateway is None:
                continue
            if r.oif == self.index:
                out.add(Route(r.dst, r.gateway, direct=False))
            elif r.oif == self.spec.underlay_index:
                out.add(Route(r.dst, r.gateway, direct=True))
        return out


class LinkMonitor:
    """Calls ``on_change(event)`` for link notifications about the names it watches."""

    def __init__(self, names: Callable[[], set[str]], on_change: Callable[[str], None],
                 netns: str | None = None):
        self.names = names
        self.on_change = on_change
        self.raw = rawnl.RawRoute(netns, groups=RTMGRP_LINK)
        self.raw.sock.settimeout(0.5)
        self._last: dict[str, tuple[int, str]] = {}

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    events = self.raw.read_link_events()
                except TimeoutError:
                    continue
                except OSError as e:
                    if e.errno == errno.ENOBUFS:  # missed notifications: assume the worst
                        self.on_change("link notifications overflowed")
                        continue
                    raise
                watched = self.names()
                for ev in events:
                    if ev.name not in watched:
                        continue
                    state = "deleted" if ev.kind == "del" else (
                        "up" if ev.up and ev.running else "down" if not ev.up else "no carrier")
                    # the kernel repeats NEWLINK for unrelated attribute changes
                    if self._last.get(ev.name) != (ev.ifindex, state):
                        self._last[ev.name] = (ev.ifindex, state)
                        self.on_change(f"link {ev.name} {state}")
        finally:
            self.raw.close()
