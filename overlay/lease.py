"""Lease values, the subnet key codec, and the pure lease-watch diff.

A lease lives at ``<prefix>/subnets/10.244.1.0-24`` with a JSON value::

    {"PublicIP": "192.168.1.11", "BackendType": "vxlan",
     "BackendData": {"VNI": 1, "VtepMAC": "0e:..."}}

attached to an etcd lease (TTL).  A key with no etcd lease is a *reservation*.

An IPv6-only network (``EnableIPv4: false``) keys its leases by the IPv6 subnet alone,
``<prefix>/subnets/fd00:10:244:1::-64``: a form of our own (Flannel's etcd mode always
starts a key with the IPv4 half, so Flannel cannot read it).  Its value is Flannel's
shape with only the IPv6 fields set (``"PublicIP": "0.0.0.0"``, as Go writes an unset
address, ``PublicIPv6`` and ``BackendV6Data``); in memory such a lease is a one-family
lease like an IPv4 one: ``subnet`` is the IPv6 subnet, ``attrs.public_ip`` the
PublicIPv6, ``attrs.vni``/``vtep_mac`` BackendV6Data's, and it has no "IPv6 half".

Everything in etcd is untrusted, so this is also where the one acceptance rule for a
remote lease lives: the key and value codec (``decode_kv``: whole-string keys, bounded
values, any decoding failure a rejection), the per-lease checks (``check_remote``), the
VTEP MAC claims (``claim_macs``), ``judge`` for a snapshot and ``LeaseView`` for a watch.
The daemon, ``overlayctl`` and ``diagnose`` all use it, so they cannot disagree.
Nothing here does I/O.
"""

from __future__ import annotations

import enum
import json
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
    ip_network,
)
from typing import Any, TypeAlias, TypeVar

from overlay.errors import LeaseValueTooLarge, RegistryError

# Whole-string forms: ``fullmatch`` (``$`` would let a trailing newline through), and
# the parsed value must re-encode to the very same text (no ``010.`` leading zeros).
# Flannel's dual-stack form appends ``&<IPv6 network address>-<len>`` (Go prints the
# address as RFC 5952, which is also Python's ``compressed`` form).
_KEY_RE = re.compile(r"(\d{1,3}(?:\.\d{1,3}){3})-(\d{1,2})(?:&([0-9a-f:]{2,39})-(\d{1,3}))?")
_KEY6_RE = re.compile(r"([0-9a-f:]{2,39})-(\d{1,3})")  # IPv6-only: ours, not Flannel's
_MAC_RE = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")
MAX_VALUE_BYTES = 64 * 1024  # a lease value is ~150 bytes; anything near this is hostile
IPNetwork: TypeAlias = IPv4Network | IPv6Network
IPAddress: TypeAlias = IPv4Address | IPv6Address
_NO_IPV4 = IPv4Address(0)  # PublicIP as Flannel writes an unset one (an IPv6-only lease)


class KeySubnet4(IPv4Network):
    """A lease key's IPv4 subnet, equal to (and hashed like) the ``IPv4Network`` it is,
    with the hash computed once: a resync looks each lease's subnet up about 16 times
    (view, rules, backend, owners) and ``IPv4Network`` derives its hash from two
    ``int()`` conversions each time (0.27 against 0.05 us; 1000 leases: ~3.6 ms)."""

    def __hash__(self) -> int:
        d = self.__dict__
        h: int | None = d.get("_hash")
        if h is None:
            h = d["_hash"] = IPv4Network.__hash__(self)
        return h

    def __repr__(self) -> str:
        return f"IPv4Network({str(self)!r})"


class KeySubnet6(IPv6Network):
    """``KeySubnet4`` for an IPv6-only lease's key."""

    def __hash__(self) -> int:
        d = self.__dict__
        h: int | None = d.get("_hash")
        if h is None:
            h = d["_hash"] = IPv6Network.__hash__(self)
        return h

    def __repr__(self) -> str:
        return f"IPv6Network({str(self)!r})"


@dataclass(frozen=True)
class SubnetKeyName:
    """The last element of a lease key, parsed: ``10.244.1.0-24``, Flannel's
    dual-stack ``10.244.1.0-24&fd00:10:244:1::-64`` (``ipv6`` set), or an IPv6-only
    ``fd00:10:244:1::-64`` (``subnet`` is IPv6, ``ipv6`` None)."""

    subnet: IPNetwork  # the lease's identity
    ipv6: IPv6Network | None = None

    def encode(self) -> str:
        return subnet_to_key(self.subnet, self.ipv6)


def subnet_to_key(subnet: IPNetwork, ipv6: IPv6Network | None = None) -> str:
    """``10.244.1.0/24`` -> ``10.244.1.0-24`` (Flannel's key form); with ``ipv6``
    Flannel's dual-stack ``10.244.1.0-24&fd00:10:244:1::-64``; an IPv6 ``subnet`` (an
    IPv6-only lease) -> ``fd00:10:244:1::-64``."""
    one = f"{subnet.network_address}-{subnet.prefixlen}"
    if ipv6 is not None and subnet.version == 6:
        raise ValueError(f"an IPv6-only key has no second half: {subnet} & {ipv6}")
    return one if ipv6 is None else f"{one}&{ipv6.network_address}-{ipv6.prefixlen}"


def lease_key(lease: Lease) -> str:
    """The key name a lease lives at (dual-stack when it has an IPv6 half)."""
    return subnet_to_key(lease.subnet, lease.ipv6_subnet)


def parse_key_name(name: str) -> SubnetKeyName:
    """``10.244.1.0-24`` (or ``…&fd00:10:244:1::-64``) -> its subnet(s); ValueError
    unless ``name`` is exactly the canonical encoding (no whitespace, no path, no
    leading zeros, no host bits, the IPv6 address compressed as Go prints it)."""
    m = _KEY_RE.fullmatch(name)
    if not m:
        m6 = _KEY6_RE.fullmatch(name)
        if not m6:
            raise ValueError(f"not a subnet key: {name!r}")
        parsed = SubnetKeyName(KeySubnet6(f"{m6.group(1)}/{m6.group(2)}", strict=True))
        if parsed.encode() != name:
            raise ValueError(f"not a canonical subnet key: {name!r} "
                             f"(expected {parsed.encode()!r})")
        return parsed
    v6 = None
    if m.group(3) is not None:
        v6 = IPv6Network(f"{m.group(3)}/{m.group(4)}", strict=True)
    parsed = SubnetKeyName(KeySubnet4(f"{m.group(1)}/{m.group(2)}", strict=True), v6)
    if parsed.encode() != name:
        raise ValueError(f"not a canonical subnet key: {name!r} (expected {parsed.encode()!r})")
    return parsed


def key_to_name(key: str, prefix: str | None = None) -> SubnetKeyName:
    """A subnet key back to its subnet(s); strict.

    With ``prefix`` (``<prefix>/subnets/``) the key must be that prefix followed by one
    key name, nothing else: an alias of another node's key (extra segments, a newline)
    must not decode to that node's subnet.  Without it, ``key`` is a bare key name.
    """
    if prefix is not None:
        if not key.startswith(prefix):
            raise ValueError(f"not under {prefix!r}: {key!r}")
        key = key[len(prefix):]
    return parse_key_name(key)


def key_to_subnet(key: str, prefix: str | None = None) -> IPNetwork:
    """A subnet key's identity (its IPv4 subnet, or an IPv6-only key's IPv6 subnet);
    strict, see ``key_to_name``."""
    return key_to_name(key, prefix).subnet


def parse_subnet_arg(text: str) -> IPNetwork:
    """A subnet typed by a user: ``10.244.1.0/24`` or ``10.244.1.0-24`` (an IPv6-only
    lease's ``fd00:10:244:1::/64`` or ``fd00:10:244:1::-64``)."""
    try:
        if "-" in text and "/" not in text:
            return key_to_subnet(text)
        return ip_network(text, strict=True)
    except ValueError as e:
        raise ValueError(f"{text!r} is not a subnet (e.g. 10.244.1.0/24): {e}") from e


def normalize_mac(mac: str) -> str:
    m = mac.strip().lower().replace("-", ":")
    if not _MAC_RE.fullmatch(m):
        raise ValueError(f"not a MAC address: {mac!r}")
    return m


@dataclass(frozen=True, slots=True)
class LeaseAttrs:
    """What a node publishes about itself in its lease (an IPv6-only lease's: its
    PublicIPv6 in ``public_ip``, its BackendV6Data in ``vni``/``vtep_mac``/``extra``)."""

    public_ip: IPAddress
    backend_type: str = "vxlan"
    vni: int | None = 1
    vtep_mac: str | None = None
    # BackendData keys we do not interpret, kept so a round trip loses nothing.
    extra: tuple[tuple[str, Any], ...] = ()
    # The IPv6 half (Flannel's PublicIPv6 and BackendV6Data {VNI, VtepMAC}).
    public_ipv6: IPv6Address | None = None
    v6_vni: int | None = None
    v6_vtep_mac: str | None = None
    v6_extra: tuple[tuple[str, Any], ...] = ()

    @property
    def dual_stack(self) -> bool:
        """Whether the value carries an IPv6 half (and so is written in Flannel's
        dual-stack shape)."""
        return (self.public_ipv6 is not None or self.v6_vni is not None
                or self.v6_vtep_mac is not None or bool(self.v6_extra))

    @property
    def ipv6_only(self) -> bool:
        """An IPv6-only lease's attributes (written as Flannel's IPv6 fields)."""
        return self.public_ip.version == 6

    def to_dict(self) -> dict[str, Any]:
        data = _backend_data(self.extra, self.vni, self.vtep_mac)
        if self.ipv6_only:  # Flannel's struct with only the IPv6 fields set
            out: dict[str, Any] = {"PublicIP": str(_NO_IPV4), "PublicIPv6": str(self.public_ip)}
            if self.backend_type:
                out["BackendType"] = self.backend_type
            if data:
                out["BackendV6Data"] = data
            return out
        if not self.dual_stack:  # an IPv4-only value is written exactly as before
            return {"PublicIP": str(self.public_ip), "BackendType": self.backend_type,
                    "BackendData": data}
        # Flannel's struct order; PublicIPv6 has no omitempty (null when absent), the
        # others do.
        out = {
            "PublicIP": str(self.public_ip),
            "PublicIPv6": None if self.public_ipv6 is None else str(self.public_ipv6)}
        if self.backend_type:
            out["BackendType"] = self.backend_type
        out["BackendData"] = data
        v6 = _backend_data(self.v6_extra, self.v6_vni, self.v6_vtep_mac)
        if v6:
            out["BackendV6Data"] = v6
        return out

    def to_json(self) -> str:
        if self.dual_stack or self.ipv6_only:  # byte for byte what Flannel's json.Marshal writes
            return json.dumps(self.to_dict(), separators=(",", ":"))
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, raw: str | bytes, ipv6_only: bool = False) -> LeaseAttrs:
        """Decode a lease value (``ipv6_only``: of an IPv6-only key); ``RegistryError``
        for anything that is not one.

        Bounded (``MAX_VALUE_BYTES``), and *any* exception while decoding (a huge
        number, nesting deep enough for RecursionError, bad UTF-8, wrong types) becomes
        that error: one bad value must never escape into the watch that read it.
        """
        if len(raw) > MAX_VALUE_BYTES:
            raise LeaseValueTooLarge(f"lease value of {len(raw)} bytes is larger than "
                                     f"{MAX_VALUE_BYTES}")
        try:
            obj = json.loads(raw)
            return cls.from_dict_v6(obj) if ipv6_only else cls.from_dict(obj)
        except Exception as e:
            raise RegistryError(f"malformed lease value {_preview(raw)}: "
                                f"{type(e).__name__}: {_preview(str(e))}") from e

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> LeaseAttrs:
        """Typed fields only; ValueError/TypeError name the field that is wrong."""
        if not isinstance(obj, dict):
            raise TypeError("lease value must be a JSON object")
        vni, mac, extra = _parse_backend_data(obj.get("BackendData"), "BackendData")
        ip = obj.get("PublicIP")
        btype = obj.get("BackendType", "vxlan")
        if not isinstance(ip, str):
            raise TypeError(f"PublicIP must be a string, got {type(ip).__name__}")
        if not isinstance(btype, str):
            raise TypeError(f"BackendType must be a string, got {type(btype).__name__}")
        ip6 = obj.get("PublicIPv6")
        if ip6 is not None and not isinstance(ip6, str):
            raise TypeError(f"PublicIPv6 must be a string, got {type(ip6).__name__}")
        if ip6 and "%" in ip6:  # ipaddress takes fe80::1%eth0; Go's ParseIP does not
            raise ValueError("PublicIPv6 must not carry a scope (%zone)")
        v6_vni, v6_mac, v6_extra = _parse_backend_data(obj.get("BackendV6Data"),
                                                       "BackendV6Data")
        return cls(
            public_ip=IPv4Address(ip),
            # one "vxlan" for thousands of leases, not a copy per decoded value
            backend_type=sys.intern(btype),
            vni=vni,
            vtep_mac=mac,
            extra=extra,
            public_ipv6=IPv6Address(ip6) if ip6 else None,
            v6_vni=v6_vni,
            v6_vtep_mac=v6_mac,
            v6_extra=v6_extra,
        )

    @classmethod
    def from_dict_v6(cls, obj: Mapping[str, Any]) -> LeaseAttrs:
        """An IPv6-only lease's value: PublicIPv6 and BackendV6Data; an IPv4 field that
        says anything (a PublicIP other than Go's unset one, a BackendData) is an error,
        since nothing would use it."""
        full = cls.from_dict({"PublicIP": str(_NO_IPV4), **obj}) if isinstance(obj, dict) \
            else cls.from_dict(obj)
        if full.public_ip != _NO_IPV4:
            raise ValueError(f"PublicIP {full.public_ip} in an IPv6-only lease (only "
                             f"{_NO_IPV4} or none)")
        if full.vni is not None or full.vtep_mac is not None or full.extra:
            raise ValueError("BackendData in an IPv6-only lease (BackendV6Data only)")
        if full.public_ipv6 is None:
            raise ValueError("no PublicIPv6 in an IPv6-only lease")
        return cls(full.public_ipv6, full.backend_type, full.v6_vni, full.v6_vtep_mac,
                   full.v6_extra)


def _backend_data(extra: tuple[tuple[str, Any], ...], vni: int | None,
                  mac: str | None) -> dict[str, Any]:
    data: dict[str, Any] = dict(extra)
    if vni is not None:
        data["VNI"] = vni
    if mac is not None:
        data["VtepMAC"] = mac
    return data


def _parse_backend_data(data: Any, name: str
                        ) -> tuple[int | None, str | None, tuple[tuple[str, Any], ...]]:
    """(VNI, VtepMAC, the other keys) of a BackendData or BackendV6Data object."""
    if data is None:
        return None, None, ()
    if not isinstance(data, dict):
        raise TypeError(f"{name} must be an object")
    data = dict(data)
    vni = data.pop("VNI", None)
    mac = data.pop("VtepMAC", None)
    if vni is not None and (type(vni) is not int or not 0 <= vni < 1 << 24):
        raise ValueError(f"{name}.VNI must be an integer 0..{(1 << 24) - 1}")
    if mac is not None and not isinstance(mac, str):
        raise TypeError(f"{name}.VtepMAC must be a string, got {type(mac).__name__}")
    return vni, normalize_mac(mac) if mac else None, tuple(sorted(data.items()))


def _preview(raw: str | bytes, limit: int = 80) -> str:
    """A short, one-line printable form of untrusted text for messages and logs."""
    text = repr(raw[:limit])
    return text + ("..." if len(raw) > limit else "")


@dataclass(frozen=True, slots=True)
class Lease:
    """A subnet held by a node (or reserved for one)."""

    subnet: IPNetwork  # IPv6 for an IPv6-only lease
    attrs: LeaseAttrs
    expiration: datetime | None = None  # None for a reservation
    etcd_lease_id: int = 0  # 0: no etcd lease, i.e. a reservation
    mod_revision: int = 0  # etcd mod_revision of the key when read
    ttl: int | None = None  # granted TTL in seconds, when known
    create_revision: int = 0  # etcd create_revision: who was first (VTEP MAC claims)
    # The IPv6 half of a dual-stack lease (its key's ``&…`` part); ``subnet`` stays the
    # lease's identity.
    ipv6_subnet: IPv6Network | None = None

    @property
    def reserved(self) -> bool:
        return self.etcd_lease_id == 0

    @property
    def gateway(self) -> IPAddress:
        """The first host address, held by the node's bridge (``.1``)."""
        return self.subnet.network_address + 1

    @property
    def vtep_address(self) -> IPv4Interface | IPv6Interface:
        """The VXLAN device's address: the subnet's network address as a /32 (/128)."""
        if isinstance(self.subnet, IPv6Network):
            return IPv6Interface((self.subnet.network_address, 128))
        return IPv4Interface((self.subnet.network_address, 32))

    @property
    def ipv6_gateway(self) -> IPv6Address | None:
        """The IPv6 subnet's first host address, held by the node's bridge."""
        return None if self.ipv6_subnet is None else self.ipv6_subnet.network_address + 1

    @property
    def ipv6_vtep_address(self) -> IPv6Interface | None:
        """The IPv6 VXLAN device's address: the IPv6 subnet's network address /128."""
        if self.ipv6_subnet is None:
            return None
        return IPv6Interface((self.ipv6_subnet.network_address, 128))


class EventType(enum.Enum):
    ADDED = "added"  # created or updated (a PUT)
    REMOVED = "removed"  # deleted or expired


@dataclass(frozen=True, slots=True)
class LeaseEvent:
    type: EventType
    lease: Lease  # for REMOVED only ``subnet`` is meaningful
    revision: int = 0
    # A REMOVED whose key now holds a value that is rejected (the subnet's lease is gone
    # for the data plane; the key stays in etcd): why.
    rejection: Rejection | None = None


@dataclass(frozen=True)
class LeaseBatch:
    """What the data plane must do, derived from a snapshot or from events."""

    added: tuple[Lease, ...] = ()
    removed: tuple[Lease, ...] = ()
    changed: tuple[tuple[Lease, Lease], ...] = ()  # (old, new): attrs or IPv6 half differ

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)


def decode_kv(prefix: str, key: bytes, value: bytes
              ) -> tuple[SubnetKeyName, LeaseAttrs] | tuple[str, str, IPNetwork | None]:
    """One key/value read under ``prefix`` (``<prefix>/subnets/``): (key name, attrs),
    or (reason, detail, subnet-or-None) when it is rejected.  Never raises."""
    try:
        name = key_to_name(key.decode(), prefix)
    except (ValueError, UnicodeDecodeError):
        return Reason.BAD_KEY, f"not a subnet key: {_preview(key)}", None
    subnet = name.subnet
    try:
        return name, LeaseAttrs.from_json(value, ipv6_only=subnet.version == 6)
    except LeaseValueTooLarge as e:
        return Reason.VALUE_TOO_LARGE, str(e), subnet
    except RegistryError as e:
        return Reason.BAD_VALUE, str(e), subnet


def printable_key(key: str, limit: int = 200) -> str:
    """An untrusted key as one printable line: newlines, control characters and bytes
    that are not UTF-8 (kept as surrogates by the registry) shown as escapes."""
    raw = key.encode("utf-8", "surrogateescape")
    text = raw[:limit].decode("utf-8", "backslashreplace")
    out = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
    return out + ("..." if len(raw) > limit else "")


_SHELL_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789/._-:&")


def etcdctl_del(key: str, endpoints: str = "") -> str:
    """The exact shell command that deletes ``key`` (any bytes: a trailing newline too)."""
    ep = f"--endpoints={endpoints} " if endpoints else ""
    raw = key.encode("utf-8", "surrogateescape")
    if raw and all(b in _SHELL_SAFE for b in raw):
        return f"ETCDCTL_API=3 etcdctl {ep}del '{key}'"
    # printf octal escapes rebuild every byte; the X keeps $(...) from eating newlines.
    esc = "".join(chr(b) if b in _SHELL_SAFE else f"\\{b:03o}" for b in raw)
    return f"k=$(printf '{esc}X') && ETCDCTL_API=3 etcdctl {ep}del \"${{k%X}}\""


# ---- the acceptance rule for a remote lease ---------------------------------------------

class Reason:
    """Why a key under ``subnets/`` is not used: short stable slugs (metric labels)."""

    BAD_KEY = "bad-key"
    BAD_VALUE = "bad-value"
    VALUE_TOO_LARGE = "value-too-large"
    SUBNET_OUTSIDE_NETWORK = "subnet-outside-network"
    SUBNET_LENGTH = "subnet-length"
    OWN_SUBNET = "own-subnet"
    PUBLIC_IP_UNUSABLE = "public-ip-unusable"
    PUBLIC_IP_IN_NETWORK = "public-ip-in-network"
    PUBLIC_IP_OWN = "public-ip-own"
    VTEP_MAC_UNUSABLE = "vtep-mac-unusable"
    VTEP_MAC_CLAIMED = "vtep-mac-claimed"
    VNI_MISMATCH = "vni-mismatch"
    BACKEND_TYPE = "backend-type"
    SUBNET_CLAIMED = "subnet-claimed"  # another key holds the same IPv4 subnet (older)
    # An IPv4 (or dual-stack) key in an IPv6-only network, or an IPv6-only key in one
    # with IPv4.
    FAMILY_MISMATCH = "family-mismatch"
    # The IPv6 half of a dual-stack lease: rejected alone, the IPv4 half stays in use.
    IPV6_NOT_ENABLED = "ipv6-not-enabled"
    IPV6_SUBNET_OUTSIDE_NETWORK = "ipv6-subnet-outside-network"
    IPV6_SUBNET_LENGTH = "ipv6-subnet-length"
    IPV6_OWN_SUBNET = "ipv6-own-subnet"
    IPV6_SUBNET_CLAIMED = "ipv6-subnet-claimed"
    PUBLIC_IPV6_MISSING = "public-ipv6-missing"
    PUBLIC_IPV6_UNUSABLE = "public-ipv6-unusable"
    PUBLIC_IPV6_IN_NETWORK = "public-ipv6-in-network"
    PUBLIC_IPV6_OWN = "public-ipv6-own"
    V6_VTEP_MAC_UNUSABLE = "v6-vtep-mac-unusable"
    V6_VTEP_MAC_CLAIMED = "v6-vtep-mac-claimed"
    V6_VNI_MISMATCH = "v6-vni-mismatch"


OUTSIDE_RANGE = "outside-range"  # warnings, not rejections
NO_VTEP_MAC = "no-vtep-mac"


@dataclass(frozen=True)
class Rejection:
    """A key under ``subnets/`` that is not used, and why."""

    key: str  # as read; bytes that are not UTF-8 kept as surrogates (surrogateescape)
    reason: str  # a ``Reason`` slug
    detail: str  # one human line
    mod_revision: int = 0
    subnet: IPNetwork | None = None  # when the key itself parsed


@dataclass(frozen=True)
class Verdict:
    """The rule's answer for one lease: ``reason`` None means accepted."""

    reason: str | None = None
    detail: str = ""
    warning: str | None = None  # e.g. ``OUTSIDE_RANGE`` for an accepted lease

    @property
    def ok(self) -> bool:
        return self.reason is None


ACCEPTED = Verdict()
# No VtepMAC: nothing wrong (a reservation made before its node started, or a DirectRouting
# peer), but nothing to put in an FDB entry either; the backend decides what it can do.
NO_MAC = Verdict(warning=NO_VTEP_MAC, detail="no VtepMAC in the lease (yet)")


def _net_range(net: IPNetwork) -> tuple[int, int]:
    return int(net.network_address), int(net.broadcast_address)


# Public IPs no node can be reached at, as int ranges (checked without ipaddress's
# per-call property lookups, since this runs per lease):  0/8 "this network" (0.0.0.0
# included), 127/8 loopback, 224/4 multicast, 240/4 reserved incl. 255.255.255.255, and
# 169.254/16 link-local: assigned when DHCP failed, never routed between nodes, and home
# of the cloud metadata service (169.254.169.254), which a rogue lease must not be able
# to aim our VXLAN traffic at.
_UNUSABLE_IPS = tuple(_net_range(IPv4Network(n)) for n in (
    "0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4"))


@dataclass(frozen=True)
class LeaseRules:
    """What a remote lease is checked against: the network config and this node."""

    network: IPNetwork
    subnet_len: int
    subnet_min: IPAddress
    subnet_max: IPAddress
    vni: int
    own_subnets: frozenset[IPNetwork] = frozenset()
    own_ips: frozenset[IPAddress] = frozenset()
    own_mac: str | None = None
    # The IPv6 half (None: IPv6 is not enabled, every lease's IPv6 half is unused).
    ipv6_network: IPv6Network | None = None
    ipv6_subnet_len: int = 64
    own_ipv6_subnets: frozenset[IPv6Network] = frozenset()
    own_ipv6s: frozenset[IPv6Address] = frozenset()
    own_v6_mac: str | None = None
    # The Network as ints, computed once: the checks run per lease.
    net_lo: int = field(init=False, repr=False, compare=False)
    net_hi: int = field(init=False, repr=False, compare=False)
    min_int: int = field(init=False, repr=False, compare=False)
    max_int: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        lo, hi = _net_range(self.network)
        for name, v in (("net_lo", lo), ("net_hi", hi), ("min_int", int(self.subnet_min)),
                        ("max_int", int(self.subnet_max))):
            object.__setattr__(self, name, v)

    @classmethod
    def from_config(cls, cfg: Any, own_subnets: Iterable[IPNetwork] = (),
                    own_ips: Iterable[IPAddress] = (), own_mac: str | None = None
                    ) -> LeaseRules:
        """From a ``NetworkConfig`` (duck-typed: the lease layer sits below config).  An
        IPv6-only config's primary family is IPv6 and it has no second one."""
        v6 = cfg.ipv6_network if cfg.dual_stack else None
        return cls(cfg.network, cfg.subnet_len, cfg.subnet_min, cfg.subnet_max,
                   cfg.backend.vni, frozenset(own_subnets), frozenset(own_ips), own_mac,
                   ipv6_network=v6, ipv6_subnet_len=getattr(cfg, "ipv6_subnet_len", 64))

    def with_own_ipv6(self, own_subnets: Iterable[IPv6Network] = (),
                      own_ips: Iterable[IPv6Address] = (),
                      own_mac: str | None = None) -> LeaseRules:
        """This node's IPv6 half, so a lease claiming it is refused (its IPv6 half)."""
        return replace(self, own_ipv6_subnets=frozenset(own_subnets),
                       own_ipv6s=frozenset(own_ips), own_v6_mac=own_mac)

    def with_own(self, own_subnets: Iterable[IPNetwork] = (),
                 own_ips: Iterable[IPAddress] | None = None) -> LeaseRules:
        return replace(self, own_subnets=frozenset(own_subnets),
                       own_ips=self.own_ips if own_ips is None else frozenset(own_ips))


def check_remote(lease: Lease, rules: LeaseRules) -> Verdict:
    """Whether a remote lease may be programmed (the VTEP MAC claim aside: that needs
    every lease, see ``claim_macs``).  Pure and cheap: integer comparisons only."""
    if lease.subnet.version != rules.network.version:
        return _wrong_family(lease, rules)
    base = int(lease.subnet.network_address)
    bad = _check_subnet(lease.subnet, base, rules) or _check_attrs(lease.attrs, rules)
    if bad is not None:
        return bad
    if rules.min_int <= base <= rules.max_int:
        return ACCEPTED if lease.attrs.vtep_mac else NO_MAC
    return Verdict(warning=OUTSIDE_RANGE if lease.attrs.vtep_mac else f"{OUTSIDE_RANGE},"
                   f"{NO_VTEP_MAC}", detail=f"{lease.subnet} is outside [{rules.subnet_min}"
                   f", {rules.subnet_max}] (accepted: inside the Network)")


def _wrong_family(lease: Lease, rules: LeaseRules) -> Verdict:
    if rules.network.version == 6:
        return Verdict(Reason.FAMILY_MISMATCH, f"an IPv4 key ({lease.subnet}) in an "
                       f"IPv6-only network ({rules.network}, EnableIPv4 false)")
    return Verdict(Reason.FAMILY_MISMATCH, f"an IPv6-only key ({lease.subnet}) in a network "
                   f"with IPv4 ({rules.network}); dual-stack keys name both halves")


def _check_subnet(subnet: IPNetwork, base: int, rules: LeaseRules) -> Verdict | None:
    if subnet.prefixlen != rules.subnet_len:
        return Verdict(Reason.SUBNET_LENGTH, f"{subnet} is not a /{rules.subnet_len} "
                       "(SubnetLen)")
    if not rules.net_lo <= base <= rules.net_hi:
        return Verdict(Reason.SUBNET_OUTSIDE_NETWORK, f"{subnet} is outside the Network "
                       f"{rules.network}")
    if rules.own_subnets and subnet in rules.own_subnets:
        return Verdict(Reason.OWN_SUBNET, f"{subnet} is this node's own subnet")
    return None


def _unusable_ip(ip: int) -> bool:
    """See ``_UNUSABLE_IPS`` (the same ranges, unrolled: this runs per lease)."""
    top = ip >> 24
    return top == 0 or top == 127 or top >= 224 or ip >> 16 == 0xA9FE


def _check_attrs(a: LeaseAttrs, rules: LeaseRules) -> Verdict | None:
    if a.backend_type != "vxlan":
        return Verdict(Reason.BACKEND_TYPE, f"BackendType {a.backend_type!r}, not vxlan")
    if a.vni is not None and a.vni != rules.vni:
        return Verdict(Reason.VNI_MISMATCH, f"VNI {a.vni}, the network's is {rules.vni}")
    ip = int(a.public_ip)
    if a.public_ip.version != rules.network.version or not usable_public_ip(a.public_ip):
        return Verdict(Reason.PUBLIC_IP_UNUSABLE, f"{_ip_field(a)} {a.public_ip} is not a "
                       "routable unicast address")
    if rules.net_lo <= ip <= rules.net_hi:
        return Verdict(Reason.PUBLIC_IP_IN_NETWORK, f"PublicIP {a.public_ip} is inside the "
                       f"pod Network {rules.network}")
    if rules.own_ips and a.public_ip in rules.own_ips:
        return Verdict(Reason.PUBLIC_IP_OWN, f"PublicIP {a.public_ip} is this node's own")
    return _check_mac(a.vtep_mac, rules)


def _ip_field(a: LeaseAttrs) -> str:
    """The value's field that ``public_ip`` came from."""
    return "PublicIPv6" if a.ipv6_only else "PublicIP"


def usable_public_ip(ip: IPAddress) -> bool:
    """The lease rule's test of a public IP, for the rules of other kinds (node records)."""
    if isinstance(ip, IPv6Address):
        return usable_public_ipv6(ip)
    return not _unusable_ip(int(ip))


def usable_mac(mac: str) -> bool:
    """A normalized MAC that can be a VTEP's: unicast and not all zeros."""
    return not (int(mac[:2], 16) & 1 or mac == "00:00:00:00:00:00")


def _check_mac(mac: str | None, rules: LeaseRules) -> Verdict | None:
    if not mac:
        return None  # see NO_MAC
    if not usable_mac(mac):
        return Verdict(Reason.VTEP_MAC_UNUSABLE, f"VtepMAC {mac} is not a unicast, "
                       "non-zero MAC")
    if mac == rules.own_mac:
        return Verdict(Reason.VTEP_MAC_CLAIMED, f"VtepMAC {mac} is this node's own")
    return None


def claim_macs(leases: Iterable[Lease]) -> dict[str, IPAddress]:
    """Per VTEP MAC the public IP that holds it: the one of the lease created first
    (etcd create_revision; the subnet breaks ties).  A lease with that MAC and another
    public IP is rejected (``vtep-mac-claimed``), so a second lease cannot flip a node's
    FDB entry back and forth."""
    first: dict[str, Lease] = {}
    for lease in leases:
        mac = lease.attrs.vtep_mac
        if mac is None:
            continue
        cur = first.get(mac)
        if cur is None or _older(lease, cur):
            first[mac] = lease
    return {mac: lease.attrs.public_ip for mac, lease in first.items()}


def _key_older(a: Lease, b: Lease) -> bool:
    """Of two keys with one IPv4 subnet, whether ``a`` was created first (the key name
    breaks ties: two keys made in one transaction)."""
    return (a.create_revision, lease_key(a)) < (b.create_revision, lease_key(b))


def _older(a: Lease, b: Lease) -> bool:
    return (a.create_revision, int(a.subnet.network_address)) < (
        b.create_revision, int(b.subnet.network_address))


def claim_rejection(lease: Lease, holder: IPAddress, key: str = "") -> Rejection:
    return Rejection(key or lease_key(lease), Reason.VTEP_MAC_CLAIMED,
                     f"VtepMAC {lease.attrs.vtep_mac} belongs to {holder} (an older lease)",
                     lease.mod_revision, lease.subnet)


# ---- the IPv6 half of a dual-stack lease ----------------------------------------------
#
# A lease whose IPv6 half is bad keeps its IPv4 half: the IPv4 subnet is the lease's
# identity and what every node of the cluster routes, so one wrong IPv6 field must not
# cut IPv4.  The IPv6 half is then not used (``ipv4_only``) and the reason is kept
# beside the lease, for ``overlayctl leases list`` and diagnose.

def check_ipv6(lease: Lease, rules: LeaseRules) -> Verdict:
    """Whether the IPv6 half of an (IPv4-accepted) lease may be programmed; the claims
    (another lease with the same IPv6 subnet or v6 VTEP MAC) aside, see ``ipv6_claims``.
    A lease with no IPv6 half at all is ``ACCEPTED`` (nothing to use)."""
    a, sub = lease.attrs, lease.ipv6_subnet
    if sub is None and not a.dual_stack:
        return ACCEPTED
    net = rules.ipv6_network
    if net is None:
        return Verdict(Reason.IPV6_NOT_ENABLED, "the network config does not enable IPv6 "
                       "(EnableIPv6); the lease's IPv6 half is not used")
    if sub is None:
        return Verdict(Reason.IPV6_SUBNET_OUTSIDE_NETWORK, "the key has no IPv6 subnet but "
                       "the value has IPv6 fields")
    if sub.prefixlen != rules.ipv6_subnet_len:
        return Verdict(Reason.IPV6_SUBNET_LENGTH, f"{sub} is not a /{rules.ipv6_subnet_len} "
                       "(IPv6SubnetLen)")
    if not sub.subnet_of(net):
        return Verdict(Reason.IPV6_SUBNET_OUTSIDE_NETWORK, f"{sub} is outside the "
                       f"IPv6Network {net}")
    if sub in rules.own_ipv6_subnets:
        return Verdict(Reason.IPV6_OWN_SUBNET, f"{sub} is this node's own IPv6 subnet")
    return _check_ipv6_attrs(a, rules, net)


def _check_ipv6_attrs(a: LeaseAttrs, rules: LeaseRules, net: IPv6Network) -> Verdict:
    ip = a.public_ipv6
    if ip is None:
        return Verdict(Reason.PUBLIC_IPV6_MISSING, "no PublicIPv6 in the lease: its node "
                       "has no IPv6 underlay address")
    if not usable_public_ipv6(ip):
        return Verdict(Reason.PUBLIC_IPV6_UNUSABLE, f"PublicIPv6 {ip} is not a routable "
                       "unicast address")
    if ip in net:
        return Verdict(Reason.PUBLIC_IPV6_IN_NETWORK, f"PublicIPv6 {ip} is inside the pod "
                       f"IPv6Network {net}")
    if ip in rules.own_ipv6s:
        return Verdict(Reason.PUBLIC_IPV6_OWN, f"PublicIPv6 {ip} is this node's own")
    if a.v6_vni is not None and a.v6_vni != rules.vni:
        return Verdict(Reason.V6_VNI_MISMATCH, f"BackendV6Data VNI {a.v6_vni}, the "
                       f"network's is {rules.vni}")
    mac = a.v6_vtep_mac
    if mac is None:
        return Verdict(warning=NO_VTEP_MAC, detail="no BackendV6Data VtepMAC in the lease (yet)")
    if not usable_mac(mac):
        return Verdict(Reason.V6_VTEP_MAC_UNUSABLE, f"BackendV6Data VtepMAC {mac} is not a "
                       "unicast, non-zero MAC")
    if mac == rules.own_v6_mac:
        return Verdict(Reason.V6_VTEP_MAC_CLAIMED, f"BackendV6Data VtepMAC {mac} is this "
                       "node's own")
    return ACCEPTED


# ::/8 (unspecified, loopback, IPv4-mapped/compatible), link-local, multicast.
_UNUSABLE_IPV6 = tuple(IPv6Network(n) for n in ("::/8", "fe80::/10", "ff00::/8"))


def usable_public_ipv6(ip: IPv6Address) -> bool:
    return not any(ip in n for n in _UNUSABLE_IPV6)


def ipv4_only(lease: Lease) -> Lease:
    """The lease without its IPv6 half: what the data plane gets when that half is
    rejected (or IPv6 is off), so it programs IPv4 only."""
    if lease.ipv6_subnet is None and not lease.attrs.dual_stack:
        return lease
    a = replace(lease.attrs, public_ipv6=None, v6_vni=None, v6_vtep_mac=None, v6_extra=())
    return replace(lease, attrs=a, ipv6_subnet=None)


def ipv6_claims(group: Iterable[Lease]) -> dict[IPNetwork, Rejection]:
    """The claims among leases whose IPv6 half passed ``check_ipv6``: per IPv6 subnet the
    lease created first holds it, per v6 VTEP MAC the PublicIPv6 of the lease created
    first (as ``claim_macs`` for IPv4).  Returns the IPv6 halves that lose, by subnet."""
    by_net: dict[IPv6Network, Lease] = {}
    by_mac: dict[str, Lease] = {}
    members = list(group)
    for lease in members:
        assert lease.ipv6_subnet is not None
        cur = by_net.get(lease.ipv6_subnet)
        if cur is None or _older(lease, cur):
            by_net[lease.ipv6_subnet] = lease
        mac = lease.attrs.v6_vtep_mac
        if mac is not None:
            cur = by_mac.get(mac)
            if cur is None or _older(lease, cur):
                by_mac[mac] = lease
    out = {}
    for lease in members:
        assert lease.ipv6_subnet is not None
        holder = by_net[lease.ipv6_subnet]
        key = lease_key(lease)
        if holder is not lease:
            out[lease.subnet] = Rejection(
                key, Reason.IPV6_SUBNET_CLAIMED, f"IPv6 subnet {lease.ipv6_subnet} belongs "
                f"to {holder.subnet}'s lease (an older one)", lease.mod_revision, lease.subnet)
            continue
        mac = lease.attrs.v6_vtep_mac
        if mac is not None and by_mac[mac].attrs.public_ipv6 != lease.attrs.public_ipv6:
            out[lease.subnet] = Rejection(
                key, Reason.V6_VTEP_MAC_CLAIMED, f"BackendV6Data VtepMAC {mac} belongs to "
                f"{by_mac[mac].attrs.public_ipv6} (an older lease)", lease.mod_revision,
                lease.subnet)
    return out


def judge_ipv6(accepted: Iterable[Lease], rules: LeaseRules
               ) -> tuple[list[Lease], dict[IPNetwork, Rejection]]:
    """The IPv6 rule over leases whose IPv4 half is accepted: (the leases as the data
    plane uses them, i.e. ``ipv4_only`` where the IPv6 half is rejected; why, by subnet)."""
    accepted = list(accepted)
    rejected: dict[IPNetwork, Rejection] = {}
    passed = []
    for lease in accepted:
        v = check_ipv6(lease, rules)
        if v.reason is not None:
            rejected[lease.subnet] = Rejection(lease_key(lease), v.reason, v.detail,
                                               lease.mod_revision, lease.subnet)
        elif lease.ipv6_subnet is not None:
            passed.append(lease)
    rejected.update(ipv6_claims(passed))
    return [ipv4_only(x) if x.subnet in rejected else x for x in accepted], rejected


def ipv6_status(lease: Lease, rules: LeaseRules | None,
                rejected: Mapping[IPNetwork, Rejection]) -> str:
    """The IPv6 half in one word or two, for tables: ``ok``, ``none (…)``,
    ``rejected: <reason>``."""
    r = rejected.get(lease.subnet)
    if r is not None:
        return f"rejected: {r.reason}"
    if rules is None or rules.ipv6_network is None:
        return "-"
    if lease.ipv6_subnet is None:
        return "none (no IPv6 subnet in its key)"
    return "ok" if lease.attrs.v6_vtep_mac else f"ok ({NO_VTEP_MAC})"


def _subnet_claims(leases: Iterable[Lease]) -> tuple[list[Lease], list[Rejection]]:
    """Two keys with one IPv4 subnet (``X`` and ``X&v6``, or two IPv6 halves): the key
    created first holds it, the other is rejected alone."""
    out, dups = _subnet_holders(leases)
    first = {x.subnet: x for x in out}
    return out, [Rejection(lease_key(d), Reason.SUBNET_CLAIMED, f"{d.subnet} is held by "
                           f"the older key {lease_key(first[d.subnet])}", d.mod_revision,
                           d.subnet) for d in dups]


def _subnet_holders(leases: Iterable[Lease]) -> tuple[list[Lease], list[Lease]]:
    """(the key holding each IPv4 subnet, the others)."""
    first: dict[IPNetwork, Lease] = {}
    dups: list[Lease] = []
    for lease in leases:
        cur = first.get(lease.subnet)
        if cur is None:
            first[lease.subnet] = lease
        elif _key_older(lease, cur):
            first[lease.subnet] = lease
            dups.append(cur)
        else:
            dups.append(lease)
    return list(first.values()), dups


@dataclass(frozen=True)
class Judgement:
    """The whole rule's answer for a snapshot."""

    accepted: list[Lease]  # as the data plane uses them (``ipv4_only`` if IPv6 rejected)
    rejected: list[Rejection]  # keys not used at all
    warnings: dict[IPNetwork, str]
    ipv6_rejected: dict[IPNetwork, Rejection]  # accepted leases whose IPv6 half is not


def judge_all(leases: Iterable[Lease], rules: LeaseRules) -> Judgement:
    """The whole rule over a snapshot, both halves.  ``LeaseView`` gives the same answer
    incrementally."""
    unique, rejected = _subnet_claims(leases)
    passed, warnings = [], {}
    for lease in unique:
        v = check_remote(lease, rules)
        if v.reason is not None:  # not ``v.ok``: the type checker narrows this
            rejected.append(Rejection(lease_key(lease), v.reason, v.detail,
                                      lease.mod_revision, lease.subnet))
            continue
        if v.warning:
            warnings[lease.subnet] = v.warning
        passed.append(lease)
    holders = claim_macs(passed)
    accepted = []
    for lease in passed:
        holder = holders.get(lease.attrs.vtep_mac) if lease.attrs.vtep_mac else None
        if holder is not None and holder != lease.attrs.public_ip:
            rejected.append(claim_rejection(lease, holder))
            warnings.pop(lease.subnet, None)
        else:
            accepted.append(lease)
    used, v6_rejected = judge_ipv6(accepted, rules)
    return Judgement(used, rejected, warnings, v6_rejected)


def judge(leases: Iterable[Lease], rules: LeaseRules
          ) -> tuple[list[Lease], list[Rejection], dict[IPNetwork, str]]:
    """The whole rule over a snapshot: (accepted, rejected, warnings by subnet); see
    ``judge_all`` for why an accepted lease's IPv6 half is not used.

    The one function ``overlayctl leases list`` and ``diagnose`` use; the watch uses
    ``LeaseView``, which gives the same answer incrementally."""
    j = judge_all(leases, rules)
    return j.accepted, j.rejected, j.warnings


@dataclass
class LeaseView:
    """Remote leases as the watcher knows them; own subnet excluded.

    With ``rules`` every lease goes through the acceptance rule: ``leases`` holds the
    accepted ones, ``rejected`` why the others (by subnet) are not used.  A lease that
    passed the per-lease checks but lost a VTEP MAC claim waits in ``losers``, and is
    accepted once the older holder goes away.  A second key with an IPv4 subnet already
    held (``X`` beside ``X&v6``) waits in ``shadows`` the same way.  An accepted lease
    whose IPv6 half is rejected keeps its place in ``leases`` (as read) and its reason in
    ``ipv6_rejected``; ``used`` (and every batch) gives it as ``ipv4_only``.
    """

    own: IPNetwork | None = None
    leases: dict[IPNetwork, Lease] = field(default_factory=dict)
    rules: LeaseRules | None = None
    rejected: dict[IPNetwork, Rejection] = field(default_factory=dict)
    losers: dict[IPNetwork, Lease] = field(default_factory=dict)
    ipv6_rejected: dict[IPNetwork, Rejection] = field(default_factory=dict)
    shadows: dict[IPNetwork, list[Lease]] = field(default_factory=dict)
    # Leases by VTEP MAC: a lone subnet or, for a MAC several leases carry, a list (a list
    # per lease would cost ~70 bytes each, for groups that nearly always have one member).
    _by_mac: dict[str, IPNetwork | list[IPNetwork]] = field(default_factory=dict)
    # Leases the per-lease checks rejected, kept so ``set_rules`` can judge them again.
    _raw: dict[IPNetwork, Lease] = field(default_factory=dict)
    # Accepted leases whose IPv6 half passed ``check_ipv6``, by IPv6 subnet and v6 MAC
    # (the groups ``ipv6_claims`` decides), and the group keys of each.
    _v6_net: dict[IPv6Network, set[IPNetwork]] = field(default_factory=dict)
    _v6_mac: dict[str, set[IPNetwork]] = field(default_factory=dict)
    _v6_keys: dict[IPNetwork, tuple[IPv6Network, str | None]] = field(default_factory=dict)
    # Subnets whose entry in ``rejected`` the last reset/apply may have changed.
    touched: set[IPNetwork] = field(default_factory=set)
    # Keys whose rejection the last reset/apply withdrew (other than the subnet's own).
    cleared: list[str] = field(default_factory=list)

    def used(self, lease: Lease) -> Lease:
        """An accepted lease as the data plane uses it."""
        return ipv4_only(lease) if lease.subnet in self.ipv6_rejected else lease

    def used_leases(self) -> list[Lease]:
        return [self.used(lease) for lease in self.leases.values()]

    def shadow_rejections(self, subnets: Iterable[IPNetwork]) -> list[Rejection]:
        out = []
        for subnet in subnets:
            holder = self.leases.get(subnet) or self.losers.get(subnet) or self._raw.get(subnet)
            for lease in self.shadows.get(subnet, ()):
                held = f"the older key {lease_key(holder)}" if holder else "an older key"
                out.append(Rejection(lease_key(lease), Reason.SUBNET_CLAIMED,
                                     f"{subnet} is held by {held}", lease.mod_revision, subnet))
        return out

    def reset(self, snapshot: Iterable[Lease]) -> LeaseBatch:
        """Replace the view by a full listing; return the difference."""
        snapshot = [lease for lease in snapshot if lease.subnet != self.own]
        old = self._used_map()
        if self.rules is None:
            self.leases = {lease.subnet: lease for lease in snapshot}
        else:
            self.touched = set(self.rejected) | set(self.shadows)
            self.cleared = []
            self.leases, self.losers, self._by_mac, self.rejected, self._raw = {}, {}, {}, {}, {}
            self.ipv6_rejected, self._v6_net, self._v6_mac, self._v6_keys = {}, {}, {}, {}
            unique, dups = _subnet_holders(snapshot)
            self.shadows = {}
            for lease in dups:
                self.shadows.setdefault(lease.subnet, []).append(lease)
            for lease in unique:
                self._admit(lease, self.rules)
            # Only MACs with several leases need a claim decided.
            self._settle({m for m, s in self._by_mac.items() if isinstance(s, list)}, {})
            self._settle_v6(set(self.leases), {}, self.rules)
            self.touched |= set(self.rejected) | set(self.shadows)
        return diff_leases(old, self._used_map())

    def _used_map(self) -> dict[IPNetwork, Lease]:
        if not self.ipv6_rejected:  # nearly always: no copy per lease
            return dict(self.leases)
        return {s: self.used(lease) for s, lease in self.leases.items()}

    def apply(self, events: Iterable[LeaseEvent]) -> LeaseBatch:
        """Apply watch events in order; return their net effect.

        Costs what the events touch, not what the view holds: ``before`` keeps each
        touched subnet's accepted lease as it was, and only those are compared."""
        before: dict[IPNetwork, Lease | None] = {}
        macs: set[str] = set()
        self.touched = set()
        self.cleared = []
        for ev in events:
            subnet = ev.lease.subnet
            if subnet == self.own:
                continue
            self.touched.add(subnet)
            self._remember(subnet, before)
            if self.rules is None:
                if ev.type is EventType.ADDED:
                    self.leases[subnet] = ev.lease
                else:
                    self.leases.pop(subnet, None)
                continue
            held = self._unshadow(ev)
            if held is None:
                continue
            self._drop(subnet, macs)
            if held.type is EventType.ADDED:
                mac = self._admit(held.lease, self.rules)
                if mac:
                    macs.add(mac)
            elif held.rejection is not None:
                self.rejected[subnet] = held.rejection
        if self.rules is not None:
            self._settle(macs, before)
            self._settle_v6(self.touched, before, self.rules)
        return self._net(before)

    def _holder(self, subnet: IPNetwork) -> Lease | None:
        return self.leases.get(subnet) or self.losers.get(subnet) or self._raw.get(subnet)

    def _unshadow(self, ev: LeaseEvent) -> LeaseEvent | None:
        """An event on a key whose IPv4 subnet another key holds (or held): settle which
        key holds the subnet; None when the event does not touch the holder."""
        # One IPv4 subnet: two keys differ by their IPv6 half alone.
        subnet, v6 = ev.lease.subnet, ev.lease.ipv6_subnet
        shadows = self.shadows.get(subnet) if self.shadows else None
        if shadows:
            kept = [x for x in shadows if x.ipv6_subnet != v6]
            if len(kept) != len(shadows):
                self.cleared.append(lease_key(ev.lease))
            if kept:
                self.shadows[subnet] = kept
            else:
                del self.shadows[subnet]
        holder = self._holder(subnet)
        if holder is not None and holder.ipv6_subnet != v6:
            if ev.type is EventType.REMOVED:
                return None  # a shadow went away (or a key we never held)
            if _key_older(holder, ev.lease):
                self.shadows.setdefault(subnet, []).append(ev.lease)
                return None
            self.shadows.setdefault(subnet, []).append(holder)
            self.cleared.append(lease_key(holder))
            return ev
        if not self.shadows or subnet not in self.shadows:
            return ev
        # The holder went away (or was re-created, so it is younger now): the oldest
        # key takes the subnet.
        waiting = self.shadows.pop(subnet)
        if ev.type is EventType.ADDED:
            waiting.append(ev.lease)
        waiting.sort(key=lambda x: (x.create_revision, lease_key(x)))
        if waiting[1:]:
            self.shadows[subnet] = waiting[1:]
        if waiting[0] is not ev.lease:
            self.cleared.append(lease_key(waiting[0]))
        return LeaseEvent(EventType.ADDED, waiting[0], ev.revision)

    def set_rules(self, rules: LeaseRules) -> LeaseBatch:
        """Judge every known lease again (e.g. this node's subnet changed)."""
        everything = [*self.leases.values(), *self.losers.values(), *self._raw.values(),
                      *(x for group in self.shadows.values() for x in group)]
        self.rules = rules
        return self.reset(everything)

    def _remember(self, subnet: IPNetwork, before: dict[IPNetwork, Lease | None]) -> None:
        if subnet not in before:
            lease = self.leases.get(subnet)
            before[subnet] = None if lease is None else self.used(lease)

    def _net(self, before: Mapping[IPNetwork, Lease | None]) -> LeaseBatch:
        added, removed, changed = [], [], []
        for subnet, was in before.items():
            lease = self.leases.get(subnet)
            now = None if lease is None else self.used(lease)
            if was is None:
                if now is not None:
                    added.append(now)
            elif now is None:
                removed.append(was)
            elif _differ(was, now):
                changed.append((was, now))
        return LeaseBatch(added=tuple(added), removed=tuple(removed), changed=tuple(changed))

    def _admit(self, lease: Lease, rules: LeaseRules) -> str | None:
        """Check one lease; accepted (for now: ``_settle`` decides MAC claims) if it
        passes.  Returns its VTEP MAC ("" for none), None if it was rejected."""
        v = check_remote(lease, rules)
        subnet = lease.subnet
        if v.reason is not None:  # not ``v.ok``: the type checker narrows this
            self.rejected[subnet] = Rejection(lease_key(lease), v.reason, v.detail,
                                              lease.mod_revision, subnet)
            self._raw[subnet] = lease
            return None
        self.leases[subnet] = lease
        mac = lease.attrs.vtep_mac or ""
        if mac:
            had = self._by_mac.get(mac)
            if had is None:
                self._by_mac[mac] = subnet
            elif isinstance(had, list):
                had.append(subnet)
            else:
                self._by_mac[mac] = [had, subnet]
        return mac

    def _drop(self, subnet: IPNetwork, macs: set[str]) -> None:
        """Forget whatever the view had at ``subnet`` (a new event replaces it)."""
        gone = self.rejected.pop(subnet, None)
        if gone is not None:
            self.cleared.append(gone.key)
        self._raw.pop(subnet, None)
        old = self.leases.pop(subnet, None) or self.losers.pop(subnet, None)
        if old is None or not old.attrs.vtep_mac:
            return
        mac = old.attrs.vtep_mac
        group = self._by_mac.get(mac)
        if isinstance(group, list):
            if subnet in group:
                group.remove(subnet)
            if len(group) == 1:
                self._by_mac[mac] = group[0]
        elif group == subnet:
            del self._by_mac[mac]
        macs.add(mac)

    def _settle(self, macs: set[str], before: dict[IPNetwork, Lease | None]) -> None:
        """Decide the VTEP MAC claims of the groups in ``macs`` (only those changed)."""
        for mac in macs:
            members = self._by_mac.get(mac) if mac else None
            if members is None:
                continue
            if not isinstance(members, list):  # nearly every MAC: nothing to claim against
                self.touched.add(members)
                self._win(members, before)
                continue
            self.touched.update(members)
            group = [self.leases.get(s) or self.losers[s] for s in members]
            holder = claim_macs(group).get(mac)
            for lease in group:
                if holder is not None and holder != lease.attrs.public_ip:
                    self._lose(lease, holder, before)
                else:
                    self._win(lease.subnet, before)

    def _win(self, subnet: IPNetwork, before: dict[IPNetwork, Lease | None]) -> None:
        if subnet in self.losers:
            self._remember(subnet, before)
            self.leases[subnet] = self.losers.pop(subnet)
        rej = self.rejected.get(subnet) if self.rejected else None
        if rej is not None and rej.reason == Reason.VTEP_MAC_CLAIMED:
            del self.rejected[subnet]

    def _lose(self, lease: Lease, holder: IPAddress,
              before: dict[IPNetwork, Lease | None]) -> None:
        subnet = lease.subnet
        if subnet in self.leases:
            self._remember(subnet, before)
            del self.leases[subnet]
        self.losers[subnet] = lease
        self.rejected[subnet] = claim_rejection(lease, holder)

    def _settle_v6(self, subnets: Iterable[IPNetwork],
                   before: dict[IPNetwork, Lease | None], rules: LeaseRules) -> None:
        """Decide the IPv6 halves of ``subnets`` and of every lease that shares an IPv6
        subnet or v6 VTEP MAC with one of them (only those can have changed)."""
        nets: set[IPv6Network] = set()
        macs: set[str] = set()
        for subnet in subnets:
            if self._v6_keys:
                self._v6_forget(subnet, nets, macs)
            lease = self.leases.get(subnet)
            if lease is None or (lease.ipv6_subnet is None and not lease.attrs.dual_stack):
                if self.ipv6_rejected:  # an IPv4-only lease: nothing to decide
                    self._v6_set(subnet, None, before)
                continue
            v = check_ipv6(lease, rules)
            if v.reason is not None:
                self._v6_set(subnet, Rejection(lease_key(lease), v.reason, v.detail,
                                               lease.mod_revision, subnet), before)
            elif lease.ipv6_subnet is None:
                self._v6_set(subnet, None, before)
            else:
                self._v6_join(lease, lease.ipv6_subnet, nets, macs)
        members: set[IPNetwork] = set()
        for net in nets:
            members |= self._v6_net.get(net, set())
        for mac in macs:
            members |= self._v6_mac.get(mac, set())
        group = [self.leases[s] for s in members]
        lost = ipv6_claims(group)
        for lease in group:
            self._v6_set(lease.subnet, lost.get(lease.subnet), before)

    def _v6_join(self, lease: Lease, net: IPv6Network, nets: set[IPv6Network],
                 macs: set[str]) -> None:
        mac = lease.attrs.v6_vtep_mac
        self._v6_keys[lease.subnet] = (net, mac)
        self._v6_net.setdefault(net, set()).add(lease.subnet)
        nets.add(net)
        if mac is not None:
            self._v6_mac.setdefault(mac, set()).add(lease.subnet)
            macs.add(mac)

    def _v6_forget(self, subnet: IPNetwork, nets: set[IPv6Network], macs: set[str]) -> None:
        keys = self._v6_keys.pop(subnet, None)
        if keys is None:
            return
        net, mac = keys
        group = self._v6_net.get(net)
        if group is not None:
            group.discard(subnet)
            if not group:
                del self._v6_net[net]
        mgroup = self._v6_mac.get(mac) if mac is not None else None
        if mgroup is not None and mac is not None:
            mgroup.discard(subnet)
            if not mgroup:
                del self._v6_mac[mac]
        nets.add(net)
        if mac is not None:
            macs.add(mac)

    def _v6_set(self, subnet: IPNetwork, rejection: Rejection | None,
                before: dict[IPNetwork, Lease | None]) -> None:
        had = self.ipv6_rejected.get(subnet)
        if had == rejection:
            return
        self._remember(subnet, before)
        if rejection is None:
            del self.ipv6_rejected[subnet]
        else:
            self.ipv6_rejected[subnet] = rejection

    def warnings(self) -> dict[IPNetwork, str]:
        """Accepted leases the rule warns about (outside [SubnetMin, SubnetMax])."""
        r = self.rules
        if r is None:
            return {}
        return {s: OUTSIDE_RANGE for s in self.leases
                if not r.min_int <= int(s.network_address) <= r.max_int}


_K = TypeVar("_K")


def diff_leases(old: Mapping[_K, Lease], new: Mapping[_K, Lease]) -> LeaseBatch:
    """Added, removed and changed leases between two views.

    A renewal (same attrs, new expiry) is not a change for the data plane.
    """
    added = tuple(new[s] for s in new if s not in old)
    removed = tuple(old[s] for s in old if s not in new)
    changed = tuple((old[s], new[s]) for s in new if s in old and _differ(old[s], new[s]))
    return LeaseBatch(added=added, removed=removed, changed=changed)


def _differ(old: Lease, new: Lease) -> bool:
    """A change for the data plane: the attributes or the IPv6 half (a re-keyed lease
    keeps its IPv4 subnet, so it is the same lease, changed)."""
    return old.attrs != new.attrs or old.ipv6_subnet != new.ipv6_subnet
