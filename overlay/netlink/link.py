"""Links: the messages that create, change, delete and read them, the one parser, and
the one :class:`Link` record (with a typed :class:`VXLANInfo` for VXLAN devices)."""

from __future__ import annotations

import errno
import struct
from ipaddress import IPv4Address, IPv6Address
from typing import NamedTuple

from overlay.netlink.rtnl import (
    AF_UNSPEC,
    IFF_PROMISC,
    IFF_RUNNING,
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
    IFLA_OPERSTATE,
    IFLA_VXLAN_ID,
    IFLA_VXLAN_LEARNING,
    IFLA_VXLAN_LINK,
    IFLA_VXLAN_LOCAL,
    IFLA_VXLAN_LOCAL6,
    IFLA_VXLAN_PORT,
    NLA_F_NESTED,
    NLM_F_CREATE,
    NLM_F_EXCL,
    RTM_DELLINK,
    RTM_GETLINK,
    RTM_NEWLINK,
    VETH_INFO_PEER,
    Msg,
    Rtnl,
    attr,
    attr_str,
    attr_u32,
    attrs,
    cstr,
    mac_bytes,
    mac_str,
    u32,
)

_PORT = struct.Struct(">H")  # IFLA_VXLAN_PORT is big-endian
_OPERSTATES = ("UNKNOWN", "NOTPRESENT", "DOWN", "LOWERLAYERDOWN", "TESTING", "DORMANT", "UP")


class VXLANInfo(NamedTuple):
    vni: int
    port: int
    local: IPv4Address | None
    link: int | None  # ifindex of the underlay device the VXLAN is bound to
    learning: bool
    local6: IPv6Address | None = None  # a device over the IPv6 underlay: its local address


class Link(NamedTuple):
    """A NamedTuple, as every record the CNI plugin's in-process path makes (see
    ``overlay.cni.skel.Request``); the kernel's name ``index`` shadows ``tuple.index``."""

    index: int  # type: ignore[assignment]
    name: str
    kind: str  # "vxlan", "bridge", "veth", ... ("" for loopback and physical devices)
    up: bool  # administratively up (IFF_UP)
    operstate: str
    mtu: int
    mac: str | None
    master: int | None = None
    vxlan: VXLANInfo | None = None  # VXLAN devices only
    promisc: bool = False
    running: bool = False  # IFF_RUNNING: has carrier


class LinkEvent(NamedTuple):
    """A link notification (RTM_NEWLINK / RTM_DELLINK on RTMGRP_LINK)."""

    kind: str  # "new" or "del"
    link: Link


# --- messages -------------------------------------------------------------------------

def _ifinfo(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return IFINFO.pack(AF_UNSPEC, 0, index, flags, change)


def _named(index: int, name: str | None, flags: int = 0, change: int = 0) -> bytes:
    return _ifinfo(index, flags, change) + (attr_str(IFLA_IFNAME, name) if name else b"")


def get_msg(name: str) -> Msg:
    return Msg(RTM_GETLINK, 0, _named(0, name), f"get link {name}")


def vxlan_add_msg(name: str, vni: int, port: int, local: IPv4Address | IPv6Address, link: int,
                  mac: str, mtu: int) -> Msg:
    """Create a ``nolearning`` VXLAN device (``ip link add NAME type vxlan ...``); an
    IPv6 ``local`` makes it a device over the IPv6 underlay (its remotes are IPv6)."""
    local_attr = IFLA_VXLAN_LOCAL6 if local.version == 6 else IFLA_VXLAN_LOCAL
    data = (attr_u32(IFLA_VXLAN_ID, vni) + attr_u32(IFLA_VXLAN_LINK, link)
            + attr(local_attr, local.packed) + attr(IFLA_VXLAN_LEARNING, b"\0")
            + attr(IFLA_VXLAN_PORT, _PORT.pack(port)))
    info = attr(IFLA_INFO_KIND, b"vxlan") + attr(IFLA_INFO_DATA | NLA_F_NESTED, data)
    body = (_named(0, name) + attr_u32(IFLA_MTU, mtu) + attr(IFLA_ADDRESS, mac_bytes(mac))
            + attr(IFLA_LINKINFO | NLA_F_NESTED, info))
    return Msg(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body, f"create VXLAN device {name}")


def bridge_add_msg(name: str, mtu: int, mac: str) -> Msg:
    """Create a bridge, up, with a fixed MAC."""
    body = (_named(0, name, IFF_UP, IFF_UP) + attr_u32(IFLA_MTU, mtu)
            + attr(IFLA_ADDRESS, mac_bytes(mac))
            + attr(IFLA_LINKINFO, attr_str(IFLA_INFO_KIND, "bridge")))
    return Msg(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body, f"create bridge {name}")


def veth_add_msg(host_name: str, pod_name: str, pod_netns_fd: int, mtu: int, master: int,
                 pod_mac: str | None = None) -> Msg:
    """A veth pair, the host end up on ``master``, the pod end born in ``pod_netns_fd``."""
    peer = (_named(0, pod_name) + attr_u32(IFLA_MTU, mtu) + attr_u32(IFLA_NET_NS_FD, pod_netns_fd)
            + (attr(IFLA_ADDRESS, mac_bytes(pod_mac)) if pod_mac else b""))
    linkinfo = attr_str(IFLA_INFO_KIND, "veth") + attr(IFLA_INFO_DATA, attr(VETH_INFO_PEER, peer))
    body = (_named(0, host_name, IFF_UP, IFF_UP) + attr_u32(IFLA_MTU, mtu)
            + attr_u32(IFLA_MASTER, master) + attr(IFLA_LINKINFO, linkinfo))
    return Msg(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body, f"create veth {host_name}/{pod_name}")


def hairpin_msg(name: str) -> Msg:
    """Hairpin mode on the bridge port ``name``."""
    slave = (attr_str(IFLA_INFO_SLAVE_KIND, "bridge")
             + attr(IFLA_INFO_SLAVE_DATA, attr(IFLA_BRPORT_MODE, b"\x01")))
    return Msg(RTM_NEWLINK, 0, _named(0, name) + attr(IFLA_LINKINFO, slave),
               f"set hairpin mode on {name}")


def set_msg(index: int = 0, name: str | None = None, *, mtu: int | None = None,
            mac: str | None = None, up: bool | None = None, promisc: bool | None = None,
            what: str | None = None) -> Msg:
    """Change a link (by ``index``, or by ``name``): only what is not None changes."""
    flags = (IFF_UP if up else 0) | (IFF_PROMISC if promisc else 0)
    change = (IFF_UP if up is not None else 0) | (IFF_PROMISC if promisc is not None else 0)
    body = _named(index, name, flags, change)
    if mtu is not None:
        body += attr_u32(IFLA_MTU, mtu)
    if mac is not None:
        body += attr(IFLA_ADDRESS, mac_bytes(mac))
    return Msg(RTM_NEWLINK, 0, body, what or f"set link {name or f'#{index}'}")


def del_msg(index: int = 0, name: str | None = None) -> Msg:
    return Msg(RTM_DELLINK, 0, _named(index, name), f"delete link {name or f'#{index}'}")


# --- the parser -----------------------------------------------------------------------

def _vxlan(data: bytes) -> VXLANInfo:
    d = attrs(data)
    local, local6 = d.get(IFLA_VXLAN_LOCAL, b""), d.get(IFLA_VXLAN_LOCAL6, b"")
    return VXLANInfo(vni=u32(d[IFLA_VXLAN_ID]) if IFLA_VXLAN_ID in d else 0,
                     port=_PORT.unpack(d[IFLA_VXLAN_PORT][:2])[0] if IFLA_VXLAN_PORT in d else 0,
                     local=IPv4Address(local) if len(local) == 4 else None,
                     link=u32(d[IFLA_VXLAN_LINK]) or None if IFLA_VXLAN_LINK in d else None,
                     learning=bool(d[IFLA_VXLAN_LEARNING][0]) if d.get(IFLA_VXLAN_LEARNING)
                     else False,
                     local6=IPv6Address(local6) if len(local6) == 16 else None)


def parse(buf: bytes, off: int = 0, end: int | None = None) -> Link:
    """An RTM_NEWLINK / RTM_DELLINK payload (``buf[off:end]``) as a :class:`Link`."""
    _, _, index, flags, _ = IFINFO.unpack_from(buf, off)
    a = attrs(buf, off + IFINFO.size, end)
    kind, vxlan = "", None
    if IFLA_LINKINFO in a:
        info = attrs(a[IFLA_LINKINFO])
        kind = cstr(info.get(IFLA_INFO_KIND))
        if kind == "vxlan" and IFLA_INFO_DATA in info:
            vxlan = _vxlan(info[IFLA_INFO_DATA])
    raw_mac = a.get(IFLA_ADDRESS, b"")
    op = a[IFLA_OPERSTATE][0] if a.get(IFLA_OPERSTATE) else 0
    return Link(index=index, name=cstr(a.get(IFLA_IFNAME)), kind=kind, up=bool(flags & IFF_UP),
                operstate=_OPERSTATES[op] if op < len(_OPERSTATES) else str(op),
                mtu=u32(a[IFLA_MTU]) if IFLA_MTU in a else 0,
                mac=mac_str(raw_mac) if len(raw_mac) == 6 else None,
                master=u32(a[IFLA_MASTER]) or None if IFLA_MASTER in a else None,
                vxlan=vxlan, promisc=bool(flags & IFF_PROMISC), running=bool(flags & IFF_RUNNING))


def parse_event(mtype: int, buf: bytes, off: int, end: int) -> LinkEvent:
    return LinkEvent("del" if mtype == RTM_DELLINK else "new", parse(buf, off, end))


# --- reads ----------------------------------------------------------------------------

def dump(nl: Rtnl) -> list[Link]:
    return [parse(b, o, e) for t, b, o, e in nl.dump(RTM_GETLINK, _ifinfo()) if t == RTM_NEWLINK]


def get(nl: Rtnl, name: str) -> Link | None:
    """The link called ``name``; None if there is none."""
    replies = nl.call(get_msg(name), ignore=(errno.ENODEV, errno.ENOENT))
    return parse(replies[0]) if replies else None


def read_events(nl: Rtnl) -> list[LinkEvent]:
    """Block for the next datagram of link notifications (``nl`` bound to RTMGRP_LINK)."""
    return [parse_event(t, b, o, e) for t, b, o, e in nl.receive()
            if t in (RTM_NEWLINK, RTM_DELLINK)]
