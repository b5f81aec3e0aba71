"""Lease values, the subnet key codec, and the pure lease-watch diff.

A lease lives at ``<prefix>/subnets/10.244.1.0-24`` with a JSON value::

    {"PublicIP": "192.168.1.11", "BackendType": "vxlan",
     "BackendData": {"VNI": 1, "VtepMAC": "0e:..."}}

attached to an etcd lease (TTL).  A key with no etcd lease is a *reservation*.
Nothing here does I/O.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any, Iterable, Mapping

from .errors import RegistryError

_KEY_RE = re.compile(r"^(\d{1,3}(?:\.\d{1,3}){3})-(\d{1,2})$")
_MAC_RE = re.compile(r"^[0-9a-f]{2}(?::[0-9a-f]{2}){5}$")


def subnet_to_key(subnet: IPv4Network) -> str:
    """``10.244.1.0/24`` -> ``10.244.1.0-24`` (Flannel's key form)."""
    return f"{subnet.network_address}-{subnet.prefixlen}"


def key_to_subnet(key: str) -> IPv4Network:
    """The last path element of a subnet key back to a network; strict."""
    name = key.rsplit("/", 1)[-1]
    m = _KEY_RE.match(name)
    if not m:
        raise ValueError(f"not a subnet key: {key!r}")
    return IPv4Network(f"{m.group(1)}/{m.group(2)}", strict=True)


def parse_subnet_arg(text: str) -> IPv4Network:
    """A subnet typed by a user: ``10.244.1.0/24`` or ``10.244.1.0-24``."""
    try:
        if "-" in text and "/" not in text:
            return key_to_subnet(text)
        return IPv4Network(text, strict=True)
    except ValueError as e:
        raise ValueError(f"{text!r} is not a subnet (e.g. 10.244.1.0/24): {e}") from e


def normalize_mac(mac: str) -> str:
    m = mac.strip().lower().replace("-", ":")
    if not _MAC_RE.match(m):
        raise ValueError(f"not a MAC address: {mac!r}")
    return m


@dataclass(frozen=True)
class LeaseAttrs:
    """What a node publishes about itself in its lease."""

    public_ip: IPv4Address
    backend_type: str = "vxlan"
    vni: int | None = 1
    vtep_mac: str | None = None
    # BackendData keys we do not interpret, kept so a round trip loses nothing.
    extra: tuple[tuple[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = dict(self.extra)
        if self.vni is not None:
            data["VNI"] = self.vni
        if self.vtep_mac is not None:
            data["VtepMAC"] = self.vtep_mac
        return {"PublicIP": str(self.public_ip), "BackendType": self.backend_type,
                "BackendData": data}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, raw: str | bytes) -> "LeaseAttrs":
        try:
            obj = json.loads(raw)
            return cls.from_dict(obj)
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise RegistryError(f"malformed lease value {raw!r}: {e}") from e

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> "LeaseAttrs":
        data = dict(obj.get("BackendData") or {})
        vni = data.pop("VNI", None)
        mac = data.pop("VtepMAC", None)
        return cls(
            public_ip=IPv4Address(obj["PublicIP"]),
            backend_type=str(obj.get("BackendType", "vxlan")),
            vni=int(vni) if vni is not None else None,
            vtep_mac=normalize_mac(mac) if mac else None,
            extra=tuple(sorted(data.items())),
        )


@dataclass(frozen=True)
class Lease:
    """A subnet held by a node (or reserved for one)."""

    subnet: IPv4Network
    attrs: LeaseAttrs
    expiration: datetime | None = None  # None for a reservation
    etcd_lease_id: int = 0  # 0: no etcd lease, i.e. a reservation
    mod_revision: int = 0  # etcd mod_revision of the key when read
    ttl: int | None = None  # granted TTL in seconds, when known

    @property
    def reserved(self) -> bool:
        return self.etcd_lease_id == 0

    @property
    def gateway(self) -> IPv4Address:
        """The first host address, held by the node's bridge (``.1``)."""
        return self.subnet.network_address + 1

    @property
    def vtep_address(self) -> IPv4Interface:
        """The VXLAN device's address: the subnet's network address as a /32."""
        return IPv4Interface((self.subnet.network_address, 32))


class EventType(enum.Enum):
    ADDED = "added"  # created or updated (a PUT)
    REMOVED = "removed"  # deleted or expired


@dataclass(frozen=True)
class LeaseEvent:
    type: EventType
    lease: Lease  # for REMOVED only ``subnet`` is meaningful
    revision: int = 0


@dataclass(frozen=True)
class LeaseBatch:
    """What the data plane must do, derived from a snapshot or from events."""

    added: tuple[Lease, ...] = ()
    removed: tuple[Lease, ...] = ()
    changed: tuple[tuple[Lease, Lease], ...] = ()  # (old, new): attrs differ

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)


@dataclass
class LeaseView:
    """Remote leases as the watcher knows them; own subnet excluded."""

    own: IPv4Network | None = None
    leases: dict[IPv4Network, Lease] = field(default_factory=dict)

    def reset(self, snapshot: Iterable[Lease]) -> LeaseBatch:
        """Replace the view by a full listing; return the difference."""
        new = {l.subnet: l for l in snapshot if l.subnet != self.own}
        batch = diff_leases(self.leases, new)
        self.leases = new
        return batch

    def apply(self, events: Iterable[LeaseEvent]) -> LeaseBatch:
        """Apply watch events in order; return their net effect."""
        new = dict(self.leases)
        for ev in events:
            subnet = ev.lease.subnet
            if subnet == self.own:
                continue
            if ev.type is EventType.ADDED:
                new[subnet] = ev.lease
            else:
                new.pop(subnet, None)
        batch = diff_leases(self.leases, new)
        self.leases = new
        return batch


def diff_leases(old: Mapping[IPv4Network, Lease], new: Mapping[IPv4Network, Lease]) -> LeaseBatch:
    """Added, removed and changed leases between two views.

    A renewal (same attrs, new expiry) is not a change for the data plane.
    """
    added = tuple(new[s] for s in new if s not in old)
    removed = tuple(old[s] for s in old if s not in new)
    changed = tuple((old[s], new[s]) for s in new if s in old and old[s].attrs != new[s].attrs)
    return LeaseBatch(added=added, removed=removed, changed=changed)
