"""The VXLAN device and its remote entries: ensure, compare, recreate, program, dump, monitor.

Everything goes through ``overlay.netlink``'s hand-packed rtnetlink messages: the remote
entries because there are many (sent thousands per ``send()``, see
:meth:`.rtnl.Rtnl.execute`; pyroute2's batch measured over the 2x target, see the
README's Netlink section), the link and address work because it is simple, and because
not importing pyroute2 keeps the daemon ~11 MB smaller (the RSS target is 60 MB with
1000 leases).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface

from overlay.errors import ConfigError, NetlinkOpError, OverlayError
from overlay.netlink import addr, link, neigh, route
from overlay.netlink.link import Link
from overlay.netlink.netns import netns_path, open_rtnl, thread_in_netns
from overlay.netlink.rtnl import (
    AF_INET6,
    GONE,
    RT_TABLE_MAIN,
    RTMGRP_LINK,
    Msg,
    Rtnl,
    describe_errno,
    protocol_name,
)
from overlay.vxlan import drift
from overlay.vxlan.entries import (
    FDB,
    DeviceView,
    Entries,
    IPNetwork,
    Neigh,
    Op,
    OtherRoute,
    Route,
)

log = logging.getLogger(__name__)

ZERO_MAC = drift.ZERO_MAC


def open_netlink(netns: str | None = None) -> Rtnl:
    """A bulk rtnetlink socket in this namespace, or in ``netns`` (a name or a path)."""
    try:
        return open_rtnl(netns, bulk=True)
    except OSError as e:
        raise NetlinkOpError(f"cannot open rtnetlink: {e.strerror or e}", e.errno or 0) from e


def _run(raw: Rtnl, msg: Msg, what: str, ignore: Collection[int] = ()) -> None:
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
    local: IPv4Address | IPv6Address  # IPv6: the device over the IPv6 underlay (overlay-v6.N)
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


def find_underlay(nl: Rtnl, iface: str | None,
                  public_ip: IPv4Address | None) -> Underlay:
    """Pick the underlay: ``iface`` (a name or a regex), else the link holding
    ``public_ip``, else the link of the default route.  UnderlayError when none fits."""
    records = {ln.index: ln for ln in link.dump(nl)}
    links = {i: ln.name for i, ln in records.items()}
    addrs = addr.dump(nl)
    if iface:
        idx = _match_iface(links, iface, {a.index for a in addrs})
    elif public_ip is not None:
        held = next((a.index for a in addrs if a.interface.ip == public_ip), None)
        if held is None:
            raise UnderlayError(UnderlayError.NO_SUCH_ADDRESS, "no interface in this network "
                                "namespace has that address", "public_ip", str(public_ip))
        idx = held
    else:
        idx = _default_route_index(nl)
    mine = [a.interface for a in addrs if a.index == idx]
    if public_ip is not None:
        chosen = next((a for a in mine if a.ip == public_ip), None)
        if chosen is None:  # e.g. behind NAT: keep the flag's IP, the link's prefix
            chosen = IPv4Interface(f"{public_ip}/{mine[0].network.prefixlen if mine else 32}")
    elif mine:
        chosen = mine[0]
    else:
        raise UnderlayError(UnderlayError.NO_IPV4, f"interface {links[idx]} has no IPv4 address")
    return Underlay(links[idx], idx, chosen, records[idx].mtu)


@dataclass(frozen=True)
class Underlay6:
    """The node's IPv6 underlay: the interface and its global IPv6 address."""

    name: str
    index: int
    address: IPv6Interface  # public IPv6 with its prefix (the L2 subnet for DirectRouting)
    mtu: int


def find_underlay6(nl: Rtnl, ipv4_underlay: str, public_ipv6: IPv6Address | None
                   ) -> Underlay6 | str:
    """The IPv6 underlay: the link holding ``public_ipv6`` (else the IPv4 underlay's
    link, with that address kept as given, e.g. behind NAT), or the IPv4 underlay's
    link and its first global IPv6 address.  A string says why there is none."""
    records = {ln.index: ln for ln in link.dump(nl)}
    by_name = {ln.name: ln for ln in records.values()}
    addrs = [a for a in addr.dump6(nl) if not a.interface.is_link_local
             and not a.interface.is_loopback and a.scope == 0]
    if public_ipv6 is not None:
        held = next((a for a in addrs if a.interface.ip == public_ipv6), None)
        ln = records.get(held.index) if held else by_name.get(ipv4_underlay)
        if ln is None:
            return f"no interface has --public-ipv6 {public_ipv6}"
        iface = held.interface if held else IPv6Interface(f"{public_ipv6}/128")
        return Underlay6(ln.name, ln.index, iface, ln.mtu)
    ln = by_name.get(ipv4_underlay)
    if ln is None:
        return f"the underlay {ipv4_underlay} is gone"
    mine = [a for a in addrs if a.index == ln.index]
    if not mine:
        return (f"the underlay {ln.name} has no global IPv6 address (give it one, or "
                f"--public-ipv6)")
    return Underlay6(ln.name, ln.index, mine[0].interface, ln.mtu)


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


def _default_route_index(nl: Rtnl) -> int:
    for r in route.dump(nl):
        if r.dst.prefixlen == 0 and r.table == RT_TABLE_MAIN and r.kind == "unicast" and r.oif:
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
    def _link(self) -> Link | None:
        return next((ln for ln in link.dump(self.raw) if ln.name == self.spec.name), None)

    def ensure(self) -> bool:
        """Create the device, or keep an existing compatible one; True if (re)created."""
        with self._lock:
            found = self._link()
            created = False
            if found is not None:
                diff = self._incompatible(found)
                if diff:
                    log.info("VXLAN device %s is incompatible (%s): recreating it",
                             self.spec.name, diff)
                    _run(self.raw, link.del_msg(found.index), f"delete {self.spec.name}",
                         GONE)
                    found = None
            if found is None:
                found = self._create()
                created = True
            self._fix_in_place(found)
            self.index = found.index
            return created

    def _create(self) -> Link:
        s = self.spec
        _run(self.raw, link.vxlan_add_msg(s.name, s.vni, s.port, s.local, s.underlay_index,
                                          s.mac, s.mtu), f"create VXLAN device {s.name}")
        made = self._link()
        if made is None:
            raise NetlinkOpError(f"VXLAN device {s.name} vanished right after creation",
                                 errno.ENODEV)
        log.info("created VXLAN device %s (VNI %d, port %d, local %s, MAC %s, MTU %d)",
                 s.name, s.vni, s.port, s.local, s.mac, s.mtu)
        return made

    def _incompatible(self, dev: Link) -> str:
        """Which setting of an existing device differs in a way that needs a new device."""
        s = self.spec
        if dev.kind != "vxlan":
            return f"kind {dev.kind or None} != vxlan"
        v = dev.vxlan
        if v is None:
            return "no VXLAN attributes"
        local = v.local6 if s.local.version == 6 else v.local
        checks = (("VNI", v.vni, s.vni), ("port", v.port, s.port), ("local", local, s.local),
                  ("underlay link", v.link or 0, s.underlay_index),
                  ("learning", int(v.learning), 0))
        return ", ".join(f"{name} {have} != {want}" for name, have, want in checks
                         if have != want)

    def _fix_in_place(self, dev: Link) -> None:
        """MTU and MAC can change without a new device; then bring it up."""
        mtu = self.spec.mtu if dev.mtu != self.spec.mtu else None
        mac = self.spec.mac if (dev.mac or "") != self.spec.mac else None
        if mtu is not None:
            # e.g. an upgrade that reads Backend.MTU as the outer MTU: pods attached
            # before keep their own MTU until they are re-created
            log.info("VXLAN device %s: MTU %d -> %d (pods attached before keep their MTU "
                     "until re-created)", self.spec.name, dev.mtu, mtu)
        if mac is not None:
            log.info("VXLAN device %s: setting MAC %s", self.spec.name, mac)
        if mtu is not None or mac is not None:
            _run(self.raw, link.set_msg(dev.index, mtu=mtu, mac=mac), f"set {self.spec.name}")
        if not dev.up:
            _run(self.raw, link.set_msg(dev.index, up=True), f"set {self.spec.name} up")

    def ensure_address(self, want: IPv4Interface | IPv6Interface) -> None:
        """Exactly ``want`` (the lease's network address /32, or /128 on the IPv6
        device) on the device; an IPv6 device keeps its kernel-made link-local address."""
        with self._lock:
            idx = self.index
            if not idx:
                dev = self._link()
                idx = dev.index if dev else 0
            if want.version == 6:
                self._enable_ipv6()
            have = self._addresses(idx, want.version) if idx else []
            for a in have:
                if a != want:
                    log.info("VXLAN device %s: removing old address %s", self.spec.name, a)
                    _run(self.raw, addr.msg(False, idx, a),
                         f"remove {a} from {self.spec.name}", GONE)
            if want not in have:
                _run(self.raw, addr.msg(True, idx, want), f"add {want} to {self.spec.name}",
                     (errno.EEXIST,))
                log.info("VXLAN device %s: address %s", self.spec.name, want)

    def _addresses(self, idx: int, version: int) -> list[IPv4Interface | IPv6Interface]:
        if version == 4:
            return [a.interface for a in addr.dump(self.raw, idx)]
        return [a.interface for a in addr.dump6(self.raw, idx) if not a.interface.is_link_local]

    def _enable_ipv6(self) -> None:
        """IPv6 on, DAD off for the device: a new device inherits ``disable_ipv6`` from
        ``conf/default`` (an address add then fails), and our /128 is unique by
        construction, so it must not sit "tentative" while peers already route to it."""
        for key, value in (("disable_ipv6", "0"), ("accept_dad", "0")):
            path = f"/proc/sys/net/ipv6/conf/{self.spec.name}/{key}"
            try:
                write_sysctl(path, value, self.netns)
            except OSError as e:
                raise NetlinkOpError(f"cannot set {key}={value} on {self.spec.name}: "
                                     f"{e.strerror or e}", e.errno or 0) from e

    def state(self) -> tuple[bool, int]:
        """(device exists and is up, ifindex)."""
        with self._lock:
            dev = self._link()
        if dev is None:
            return False, 0
        return dev.up, dev.index

    # ---- remote entries -------------------------------------------------------
    def _to_msg(self, op: Op, replace: bool = False) -> Msg:
        e = op.entry
        if isinstance(e, Neigh):
            return neigh.neigh_msg(op.add, self.index, e.ip, e.mac)
        if isinstance(e, FDB):
            return neigh.fdb_msg(op.add, self.index, e.mac, e.dst)
        oif = self.spec.underlay_index if e.direct else self.index
        return route.msg(op.add, e.dst, e.gateway, oif, onlink=not e.direct, replace=replace)

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
                taken = [i for i, (op, code) in enumerate(zip(ops, codes, strict=True))
                         if code == errno.EEXIST and op.add and isinstance(op.entry, Route)]
                if taken:
                    self._replace_own(ops, codes, taken)
        out = []
        for op, code in zip(ops, codes, strict=True):
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
        redo = [i for i in taken
                if isinstance(ent := ops[i].entry, Route) and ent.dst not in others]
        if not redo:
            return
        again = self.raw.execute([self._to_msg(ops[i], replace=True) for i in redo])
        for i, code in zip(redo, again, strict=True):
            codes[i] = code

    def other_routes(self) -> dict[IPNetwork, OtherRoute]:
        """The main table's routes of other protocols, by destination."""
        with self._lock:
            return self._other_routes_locked()

    def _other_routes_locked(self) -> dict[IPNetwork, OtherRoute]:
        return self._name_others(self._main_routes()[1])

    def _main_routes(self) -> tuple[Sequence[route.Route | route.Route6],
                                    Sequence[route.Route | route.Route6]]:
        """The main table's routes of the device's family: (ours, other protocols')."""
        if self.spec.local.version == 6:
            return route.dump_main6(self.raw)
        return route.dump_main(self.raw)

    def _name_others(self, records: Sequence[route.Route | route.Route6]
                     ) -> dict[IPNetwork, OtherRoute]:
        if not records:
            return {}
        names = {ln.index: ln.name for ln in link.dump(self.raw)}
        out: dict[IPNetwork, OtherRoute] = {}
        for r in sorted(records, key=lambda r: r.metric):  # per destination the preferred
            out.setdefault(r.dst, OtherRoute(
                r.dst, protocol_name(r.protocol or 0),
                names.get(r.oif, f"if{r.oif}") if r.oif else "", r.kind, r.metric))
        return out

    def dump(self, routes: bool = True) -> Entries:
        """The entries this daemon owns on the device (and its direct routes), and the
        other protocols' main-table routes (``others``), as typed entries (diagnose and
        the health mesh compare them with the leases; the reconcile uses :meth:`diff`).
        ``routes=False``: neighbours and FDB entries only (the health mesh's check)."""
        out = Entries()
        if not self.index:
            return out
        with self._lock:
            others = self._scan(
                lambda ip, mac: out.add(Neigh(drift.ip_of(ip), mac)),
                lambda mac, dst: out.add(FDB(mac, drift.ip_of(dst))),
                (lambda dst, plen, gw, direct: out.add(Route(
                    drift.net_of(dst, plen), drift.ip_of(gw), direct))) if routes else None)
        out.others = others
        return out

    def diff(self, want: drift.Wanted) -> dict[IPNetwork, OtherRoute]:
        """Mark off in ``want`` every entry the device has, note the stale ones in it
        (see :mod:`.drift`); the other protocols' main-table routes, by destination."""
        if not self.index:
            return {}
        with self._lock:
            return self._scan(want.see_neigh, want.see_fdb, want.see_route)

    def _scan(self, on_neigh: Callable[[bytes, str], None],
              on_fdb: Callable[[str, bytes], None],
              on_route: Callable[[bytes, int, bytes, bool], None] | None
              ) -> dict[IPNetwork, OtherRoute]:
        """One pass over the device's neighbours, FDB entries and main-table routes, each
        handed on as it is read (no list of the kernel's entries is ever built)."""
        family = drift.family_of(self.spec.local)
        for ip, mac in drift.scan_neighs(self.raw, family, self.index):
            on_neigh(ip, mac)
        for mac, dst in drift.scan_fdb(self.raw, self.index):
            on_fdb(mac, dst)
        if on_route is None:
            return {}
        raw_others: list[bytes] = []
        for dst, plen, gw, direct in drift.scan_routes(self.raw, family, self.index,
                                                        self.spec.underlay_index, raw_others):
            on_route(dst, plen, gw, direct)
        parse = route.parse6 if family == AF_INET6 else route.parse
        parsed = (parse(b) for b in raw_others)
        return self._name_others([r for r in parsed if r is not None])


def read_device(name: str, netns: str | None = None) -> DeviceView | None:
    """``name``'s settings and entries (read only), or None when it is not a VXLAN device."""
    nl = open_netlink(netns)
    try:
        links = {ln.index: ln for ln in link.dump(nl)}
        found = next((ln for ln in links.values() if ln.name == name), None)
        if found is None or found.vxlan is None:
            return None
        v = found.vxlan
        local = v.local6 or v.local
        under = links.get(v.link or 0)
        addrs: Sequence[addr.Addr | addr.Addr6] = (
            addr.dump6(nl, under.index) if under and v.local6 else
            addr.dump(nl, under.index) if under else [])
        held = next((a.interface for a in addrs if a.interface.ip == local), None)
    finally:
        nl.close()
    if local is None:
        return None
    dev = VXLANDevice(VXLANSpec(name, v.vni, v.port, local, v.link or 0, found.mtu,
                                found.mac or ZERO_MAC), netns)
    try:
        dev.index = found.index
        entries = dev.dump()
    finally:
        dev.close()
    return DeviceView(name, found.mtu, found.mac, local, under.mtu if under else None, held,
                      entries)


def write_sysctl(path: str, value: str, netns: str | None = None) -> None:
    """Write one /proc/sys value, in ``netns`` (a name or path) if given: /proc/sys/net
    shows the namespace of the thread that opens it."""
    if netns is None:
        with open(path, "w", encoding="ascii") as f:
            f.write(value)
        return
    fd = os.open(netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        with thread_in_netns(fd), open(path, "w", encoding="ascii") as f:
            f.write(value)
    finally:
        os.close(fd)


class LinkMonitor:
    """Calls ``on_change(event)`` for link notifications about the names it watches."""

    def __init__(self, names: Callable[[], set[str]], on_change: Callable[[str], None],
                 netns: str | None = None):
        self.names = names
        self.on_change = on_change
        self.raw = open_rtnl(netns, groups=RTMGRP_LINK, bulk=True)
        self.raw.sock.settimeout(0.5)
        self._last: dict[str, tuple[int, str]] = {}

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    events = link.read_events(self.raw)
                except TimeoutError:
                    continue
                except OSError as e:
                    if e.errno == errno.ENOBUFS:  # missed notifications: assume the worst
                        self.on_change("link notifications overflowed")
                        continue
                    raise
                watched = self.names()
                for ev in events:
                    dev = ev.link
                    if dev.name not in watched:
                        continue
                    state = "deleted" if ev.kind == "del" else (
                        "up" if dev.up and dev.running else "down" if not dev.up else "no carrier")
                    # the kernel repeats NEWLINK for unrelated attribute changes
                    if self._last.get(dev.name) != (dev.index, state):
                        self._last[dev.name] = (dev.index, state)
                        self.on_change(f"link {dev.name} {state}")
        finally:
            self.raw.close()
