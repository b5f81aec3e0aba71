"""A node's status record (``<prefix>/nodes/<name>``): its value, the JSON codec, the one
rule every record read from etcd passes, and the rule for a node's STATUS.  Pure: no I/O.

The record persists (a dead node's stays, so ``overlayctl nodes`` can say it is dead);
liveness is the separate heartbeat key ``<prefix>/heartbeats/<name>`` on a short etcd
lease.  A node is ``Ready`` only when its record says so *and* its heartbeat exists: a
SIGKILLed overlayd cannot rewrite its record, but its heartbeat lease runs out.

Any node can write any key, so a record is used only once ``judge_node`` accepted it:
the name comes from the key (the value's own ``name`` must agree), the public IP is a
usable unicast address, the subnet a network, the VTEP MAC unicast and non-zero, every
string and list bounded, and (given the accepted leases) the subnet is not another public
IP's lease.  A bad record is rejected alone, with a reason slug and one line.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from ipaddress import IPv4Address, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Any

from overlay.cluster.keys import nodes_prefix, split_single
from overlay.cluster.mesh import CAUSES, MAX_BROKEN_LISTED, MAX_DETAIL, BrokenPeer, MeshSummary
from overlay.lease import IPNetwork, Lease, normalize_mac, usable_mac, usable_public_ip
from overlay.util import jsontext
from overlay.util.text import rfc3339

MAX_RECORD_BYTES = 64 * 1024  # a record is ~500 bytes, ~10 KiB with every broken peer listed
MAX_TEXT = 256  # version, reason, and any other free text
READY, NOT_READY = "Ready", "NotReady"


class Reason:
    """Why a key under ``nodes/`` is not used: short stable slugs (metric labels)."""

    BAD_KEY = "bad-key"
    VALUE_TOO_LARGE = "value-too-large"
    BAD_VALUE = "bad-value"
    NAME_MISMATCH = "name-mismatch"
    PUBLIC_IP_UNUSABLE = "public-ip-unusable"
    VTEP_MAC_UNUSABLE = "vtep-mac-unusable"
    SUBNET_TAKEN = "subnet-taken"


@dataclass(frozen=True)
class NodeRecord:
    name: str
    public_ip: IPv4Address | IPv6Address  # IPv6 in an IPv6-only network
    subnet: IPNetwork | IPv6Network
    vtep_mac: str
    version: str
    started_at: datetime
    ready: bool
    reason: str = ""  # why not ready, in the node's words ("" when ready)
    heartbeat_ttl: int = 10  # seconds: a missing heartbeat means at least this long silent
    probe_interval: float = 10.0
    mesh: MeshSummary | None = None  # None until the first probe round

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "public_ip": str(self.public_ip),
                "subnet": str(self.subnet), "vtep_mac": self.vtep_mac,
                "version": self.version, "started_at": rfc3339(self.started_at),
                "ready": self.ready, "reason": self.reason,
                "heartbeat_ttl": self.heartbeat_ttl, "probe_interval": self.probe_interval,
                "mesh": self.mesh.to_dict() if self.mesh else None}

    def encode(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()


@dataclass(frozen=True)
class NodeRejection:
    """A key under ``nodes/`` that is not used, and why."""

    key: str
    reason: str  # a ``Reason`` slug
    detail: str  # one human line
    mod_revision: int = 0


@dataclass(frozen=True)
class NodeStatus:
    """A record with its liveness: STATUS and the reason shown for it."""

    record: NodeRecord
    heartbeat: bool

    @property
    def ready(self) -> bool:
        return self.record.ready and self.heartbeat

    @property
    def status(self) -> str:
        return READY if self.ready else NOT_READY

    @property
    def reason(self) -> str:
        """The node's own reason when it said it is not ready (e.g. it stopped cleanly),
        else the missing heartbeat; "" when Ready."""
        if self.ready:
            return ""
        if not self.record.ready:
            return self.record.reason or "not ready"
        return f"no heartbeat for over {self.record.heartbeat_ttl}s"


class _Bad(ValueError):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def _get(obj: Mapping[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = obj.get(name)
    if isinstance(value, bool) and kind is not bool:
        raise _Bad(Reason.BAD_VALUE, f"{name}: a boolean, expected {_kind(kind)}")
    if not isinstance(value, kind):
        raise _Bad(Reason.BAD_VALUE, f"{name}: expected {_kind(kind)}, got {value!r:.60}")
    if isinstance(value, str) and len(value) > MAX_TEXT:
        raise _Bad(Reason.BAD_VALUE, f"{name}: {len(value)} characters (at most {MAX_TEXT})")
    if isinstance(value, str) and not value.isprintable():
        # shown in tables and logs: an escape sequence or a '\r' would rewrite the screen
        raise _Bad(Reason.BAD_VALUE, f"{name}: {value!r:.60} holds a control character")
    return value


def _kind(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def _time(obj: Mapping[str, Any], name: str) -> datetime:
    text = _get(obj, name, str)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise _Bad(Reason.BAD_VALUE, f"{name}: {text!r:.60} is not an RFC 3339 time") from None
    if when.tzinfo is None:
        raise _Bad(Reason.BAD_VALUE, f"{name}: {text!r:.60} has no time zone")
    return when


def _ip(obj: Mapping[str, Any], name: str) -> IPv4Address | IPv6Address:
    text = _get(obj, name, str)
    try:
        if "%" in text:  # ipaddress takes a scope; no public IP has one
            raise ValueError(text)
        ip = ip_address(text)
    except ValueError:
        raise _Bad(Reason.BAD_VALUE, f"{name}: {text!r:.60} is not an IP address") from None
    return ip


def _subnet(obj: Mapping[str, Any], name: str) -> IPNetwork | IPv6Network:
    text = _get(obj, name, str)
    try:
        return ip_network(text)  # strict: host bits set is not a network
    except ValueError:
        raise _Bad(Reason.BAD_VALUE, f"{name}: {text!r:.60} is not an IP network") from None


def _mac(text: str) -> str:
    try:
        mac = normalize_mac(text)
    except ValueError:
        raise _Bad(Reason.VTEP_MAC_UNUSABLE, f"vtep_mac: {text!r:.60} is not a MAC") from None
    if not usable_mac(mac):
        raise _Bad(Reason.VTEP_MAC_UNUSABLE, f"vtep_mac {mac} is not a unicast, non-zero MAC")
    return mac


def _broken(obj: Any) -> BrokenPeer:
    if not isinstance(obj, dict):
        raise _Bad(Reason.BAD_VALUE, "mesh.broken: an entry is not an object")
    cause = _get(obj, "cause", str)
    if cause not in CAUSES:
        raise _Bad(Reason.BAD_VALUE, f"mesh.broken: unknown cause {cause!r:.40}")
    detail = _get(obj, "detail", str)
    return BrokenPeer(_subnet(obj, "subnet"), _ip(obj, "public_ip"), cause,
                      _time(obj, "since"), detail[:MAX_DETAIL])


def _mesh(obj: Any) -> MeshSummary | None:
    if obj is None:
        return None
    if not isinstance(obj, dict):
        raise _Bad(Reason.BAD_VALUE, "mesh: expected an object or null")
    total, reachable = _get(obj, "peers_total", int), _get(obj, "peers_reachable", int)
    if not 0 <= reachable <= total <= 1_000_000:
        raise _Bad(Reason.BAD_VALUE, f"mesh: {reachable}/{total} peers is impossible")
    broken = _get(obj, "broken", list)
    if len(broken) > MAX_BROKEN_LISTED or len(broken) > total - reachable:
        raise _Bad(Reason.BAD_VALUE, f"mesh.broken: {len(broken)} entries for "
                   f"{total - reachable} broken peers (at most {MAX_BROKEN_LISTED} listed)")
    return MeshSummary(total, reachable, tuple(_broken(b) for b in broken),
                       _time(obj, "since"))


def decode_node(name: str, value: bytes) -> NodeRecord:
    """The record in ``value`` for the node ``name`` (from its key); ``_Bad`` otherwise."""
    if len(value) > MAX_RECORD_BYTES:
        raise _Bad(Reason.VALUE_TOO_LARGE, f"{len(value)} bytes (at most {MAX_RECORD_BYTES})")
    try:
        obj = jsontext.loads(value)
    except ValueError:
        raise _Bad(Reason.BAD_VALUE, "not a JSON document") from None
    if not isinstance(obj, dict):
        raise _Bad(Reason.BAD_VALUE, "not a JSON object")
    if _get(obj, "name", str) != name:
        raise _Bad(Reason.NAME_MISMATCH, f"its name {obj['name']!r:.60} is not its key's")
    public_ip = _ip(obj, "public_ip")
    if not usable_public_ip(public_ip):
        raise _Bad(Reason.PUBLIC_IP_UNUSABLE, f"public_ip {public_ip} is not a routable "
                   "unicast address")
    subnet = _subnet(obj, "subnet")
    if subnet.version != public_ip.version:  # one family: IPv4's, or IPv6-only's
        raise _Bad(Reason.BAD_VALUE, f"subnet {subnet} and public_ip {public_ip} are of "
                   "different families")
    ttl, interval = _get(obj, "heartbeat_ttl", int), _get(obj, "probe_interval", (int, float))
    if not (1 <= ttl <= 86400 and 0 < interval <= 86400):
        raise _Bad(Reason.BAD_VALUE, f"heartbeat_ttl {ttl} / probe_interval {interval} out "
                   "of range")
    return NodeRecord(name, public_ip, subnet, _mac(_get(obj, "vtep_mac", str)),
                      _get(obj, "version", str), _time(obj, "started_at"),
                      _get(obj, "ready", bool), _get(obj, "reason", str), ttl, float(interval),
                      _mesh(obj.get("mesh")))


def judge_node(key: str, value: bytes, prefix: str,
               leases: Mapping[IPNetwork, Lease] | None = None,
               mod_revision: int = 0
               ) -> NodeRecord | NodeRejection:
    """The one rule for a key under ``nodes/``: the record, or why it is not used.  With
    ``leases`` (the accepted ones), a record claiming a subnet leased to another public IP
    is rejected; one whose subnet has no lease (expired: the node is gone) is kept."""
    name = split_single(key, nodes_prefix(prefix))
    if name is None:
        return NodeRejection(key, Reason.BAD_KEY, "not nodes/<a DNS-1123 name>", mod_revision)
    try:
        record = decode_node(name, value)
    except _Bad as e:
        return NodeRejection(key, e.reason, str(e), mod_revision)
    return judge_node_lease(key, record, leases, mod_revision)


def judge_node_lease(key: str, record: NodeRecord,
                     leases: Mapping[IPNetwork, Lease] | None,
                     mod_revision: int = 0) -> NodeRecord | NodeRejection:
    """``judge_node``'s second half, for a record already decoded: against ``leases``."""
    lease = leases.get(record.subnet) if leases is not None else None
    if lease is not None and lease.attrs.public_ip != record.public_ip:
        return NodeRejection(key, Reason.SUBNET_TAKEN, f"subnet {record.subnet} is leased to "
                             f"{lease.attrs.public_ip}, not {record.public_ip}", mod_revision)
    return record
