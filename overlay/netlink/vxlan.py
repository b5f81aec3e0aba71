"""The VXLAN device and its remote entries: ensure, compare, recreate, program, dump, monitor.

Link and address work (rare) goes through pyroute2; programming and dumping the
remote entries (many) goes through ``rawnl``'s hand-packed batches.
"""

from __future__ import annotations

import errno
import logging
import re
import threading
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface
from typing import Callable, Sequence

from pyroute2 import IPRoute, NetlinkError

from ..errors import ConfigError
from . import rawnl
from .common import describe_errno, open_iproute, translated
from .entries import FDB, Entries, Neigh, Op, Route

log = logging.getLogger(__name__)

RTMGRP_LINK = 0x1
IFF_UP = 0x1
ZERO_MAC = "00:00:00:00:00:00"


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


def _attr(msg, *path):
    try:
        return msg.get(path) if len(path) > 1 else msg.get(path[0])
    except (KeyError, AttributeError, TypeError):
        return None


def _v4_addrs(ipr: IPRoute, index: int | None = None) -> list[tuple[int, IPv4Interface]]:
    kw = {"index": index} if index else {}
    out = []
    for a in ipr.get_addr(family=2, **kw):
        out.append((a["index"], IPv4Interface(f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}")))
    return out


def find_underlay(ipr: IPRoute, iface: str | None, public_ip: IPv4Address | None) -> Underlay:
    """Pick the underlay: ``iface`` (a name or a regex), else the link holding
    ``public_ip``, else the link of the default route.  ConfigError when none fits."""
    links = {l["index"]: l.get("ifname") for l in ipr.get_links()}
    addrs = _v4_addrs(ipr)
    if iface:
        idx = _match_iface(links, iface, {i for i, _ in addrs})
    elif public_ip is not None:
        idx = next((i for i, a in addrs if a.ip == public_ip), None)
        if idx is None:
            raise ConfigError(f"--public-ip {public_ip}: no interface in this network "
                              "namespace has that address; pass --iface or fix the address")
    else:
        idx = _default_route_index(ipr)
    mine = [a for i, a in addrs if i == idx]
    if public_ip is not None:
        chosen = next((a for a in mine if a.ip == public_ip), None)
        if chosen is None:  # e.g. behind NAT: keep the flag's IP, the link's prefix
            chosen = IPv4Interface(f"{public_ip}/{mine[0].network.prefixlen if mine else 32}")
    elif mine:
        chosen = mine[0]
    else:
        raise ConfigError(f"interface {links[idx]} has no IPv4 address; "
                          "give it one or pass --public-ip")
    link = ipr.link("get", index=idx)[0]
    return Underlay(links[idx], idx, chosen, int(link.get("mtu")))


def _match_iface(links: dict[int, str], iface: str, with_ipv4: set[int]) -> int:
    for idx, name in links.items():
        if name == iface:
            return idx
    try:
        pattern = re.compile(iface)
    except re.error as e:
        raise ConfigError(f"--iface {iface!r}: no such interface and not a valid regex ({e})") from e
    matches = [idx for idx, name in sorted(links.items())
               if name and name != "lo" and pattern.fullmatch(name)]
    # like Flannel's --iface-regex: the first match that has an IPv4 address
    for idx in sorted(matches, key=lambda i: i not in with_ipv4):
        return idx
    raise ConfigError(f"--iface {iface!r}: no interface matches; have {', '.join(sorted(links.values()))}")


def _default_route_index(ipr: IPRoute) -> int:
    for r in ipr.get_routes(family=2, table=254):
        if r["dst_len"] == 0 and r.get("RTA_OIF"):
            return r.get("RTA_OIF")
    raise ConfigError("no default route to pick the underlay interface from; "
                      "pass --iface or --public-ip")


class VXLANDevice:
    """One VXLAN device in one network namespace, plus its remote entries."""

    def __init__(self, spec: VXLANSpec, netns: str | None = None):
        self.spec = spec
        self.netns = netns
        self.ipr = open_iproute(netns)
        self.raw = rawnl.RawRoute(netns)
        self.index = 0
        self._lock = threading.Lock()

    def close(self) -> None:
        self.ipr.close()
        self.raw.close()

    # ---- the device ---------------------------------------------------------
    def lookup(self) -> int:
        """The device's ifindex, or 0 if it does not exist."""
        found = self.ipr.link_lookup(ifname=self.spec.name)
        return found[0] if found else 0

    def ensure(self) -> bool:
        """Create the device, or keep an existing compatible one; True if (re)created."""
        with self._lock:
            idx = self.lookup()
            created = False
            if idx:
                diff = self._incompatible(self.ipr.link("get", index=idx)[0])
                if diff:
                    log.info("VXLAN device %s is incompatible (%s): recreating it",
                             self.spec.name, diff)
                    with translated(f"delete {self.spec.name}", ignore_gone=True):
                        self.ipr.link("del", index=idx)
                    idx = 0
            if not idx:
                idx = self._create()
                created = True
            self._fix_in_place(idx)
            self.index = idx
            return created

    def _create(self) -> int:
        s = self.spec
        with translated(f"create VXLAN device {s.name}"):
            self.ipr.link("add", ifname=s.name, kind="vxlan", vxlan_id=s.vni,
                          vxlan_local=str(s.local), vxlan_link=s.underlay_index,
                          vxlan_port=s.port, vxlan_learning=0, address=s.mac, mtu=s.mtu)
        idx = self.lookup()
        log.info("created VXLAN device %s (VNI %d, port %d, local %s, MAC %s, MTU %d)",
                 s.name, s.vni, s.port, s.local, s.mac, s.mtu)
        return idx

    def _incompatible(self, link) -> str:
        """Which setting of an existing device differs in a way that needs a new device."""
        s = self.spec
        kind = _attr(link, "linkinfo", "kind")
        if kind != "vxlan":
            return f"kind {kind} != vxlan"
        checks = (("VNI", _attr(link, "linkinfo", "data", "vxlan_id"), s.vni),
                  ("port", _attr(link, "linkinfo", "data", "vxlan_port"), s.port),
                  ("local", _attr(link, "linkinfo", "data", "vxlan_local"), str(s.local)),
                  ("underlay link", _attr(link, "linkinfo", "data", "vxlan_link"),
                   s.underlay_index),
                  ("learning", _attr(link, "linkinfo", "data", "vxlan_learning"), 0))
        diffs = [f"{name} {have} != {want}" for name, have, want in checks if have != want]
        return ", ".join(diffs)

    def _fix_in_place(self, idx: int) -> None:
        """MTU and MAC can change without a new device; then bring it up."""
        link = self.ipr.link("get", index=idx)[0]
        changes = {}
        if link.get("mtu") != self.spec.mtu:
            changes["mtu"] = self.spec.mtu
        if (link.get("address") or "").lower() != self.spec.mac:
            changes["address"] = self.spec.mac
        if changes:
            log.info("VXLAN device %s: setting %s", self.spec.name,
                     ", ".join(f"{k} {v}" for k, v in changes.items()))
            with translated(f"set {self.spec.name}"):
                self.ipr.link("set", index=idx, **changes)
        if not link["flags"] & IFF_UP:
            with translated(f"set {self.spec.name} up"):
                self.ipr.link("set", index=idx, state="up")

    def ensure_address(self, addr: IPv4Interface) -> None:
        """Exactly ``addr`` (the lease's network address /32) on the device."""
        idx = self.index or self.lookup()
        have = [a for _, a in _v4_addrs(self.ipr, idx)]
        for a in have:
            if a != addr:
                log.info("VXLAN device %s: removing old address %s", self.spec.name, a)
                with translated(f"remove {a} from {self.spec.name}", ignore_gone=True):
                    self.ipr.addr("del", index=idx, address=str(a.ip), prefixlen=a.network.prefixlen)
        if addr not in have:
            with translated(f"add {addr} to {self.spec.name}"):
                try:
                    self.ipr.addr("add", index=idx, address=str(addr.ip),
                                  prefixlen=addr.network.prefixlen)
                except NetlinkError as e:
                    if e.code != errno.EEXIST:
                        raise
            log.info("VXLAN device %s: address %s", self.spec.name, addr)

    def state(self) -> tuple[bool, int]:
        """(device exists and is up, ifindex)."""
        idx = self.lookup()
        if not idx:
            return False, 0
        return bool(self.ipr.link("get", index=idx)[0]["flags"] & IFF_UP), idx

    # ---- remote entries -------------------------------------------------------
    def _to_msg(self, op: Op) -> rawnl.Msg:
        e = op.entry
        if isinstance(e, Neigh):
            return rawnl.neigh_msg(op.add, self.index, e.ip, e.mac)
        if isinstance(e, FDB):
            return rawnl.fdb_msg(op.add, self.index, e.mac, e.dst)
        oif = self.spec.underlay_index if e.direct else self.index
        return rawnl.route_msg(op.add, e.dst, e.gateway, oif, onlink=not e.direct)

    def program(self, ops: Sequence[Op]) -> list[int]:
        """Apply ``ops`` in order in as few syscalls as possible; errno per op (0 = ok).

        Deleting something already gone counts as success.
        """
        if not ops:
            return []
        if not self.index:
            return [errno.ENODEV] * len(ops)
        with self._lock:
            codes = self.raw.execute([self._to_msg(op) for op in ops])
        out = []
        for op, code in zip(ops, codes):
            if code and not op.add and code in (errno.ENOENT, errno.ESRCH, errno.ENODEV,
                                                 errno.EADDRNOTAVAIL):
                code = 0
            if code:
                log.warning("%s failed: %s", op, describe_errno(code))
            else:
                log.debug("%s", op)
            out.append(code)
        return out

    def dump(self) -> Entries:
        """The entries this daemon owns on the device (and its direct routes)."""
        out = Entries()
        if not self.index:
            return out
        with self._lock:
            neighs = self.raw.dump_neigh(rawnl.AF_INET, self.index)
            fdbs = self.raw.dump_neigh(rawnl.AF_BRIDGE, self.index)
            routes = self.raw.dump_routes()
        for n in neighs:
            if n.state & rawnl.NUD_PERMANENT and n.dst is not None and n.mac:
                out.add(Neigh(n.dst, n.mac))
        for f in fdbs:
            if f.dst is not None and f.mac and f.mac != ZERO_MAC:
                out.add(FDB(f.mac, f.dst))
        for r in routes:
            if r.protocol != rawnl.RTPROT_OVERLAY or r.table != rawnl.RT_TABLE_MAIN \
                    or r.gateway is None:
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


def open_ipr(netns: str | None = None) -> IPRoute:
    return open_iproute(netns)
