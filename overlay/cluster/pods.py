"""The pod registry's values: ``PodRecord`` under ``<prefix>/pods/<namespace>/<name>``, its
JSON codec, the one acceptance rule (``judge_pod``), label precedence, and the few store
operations every user of the registry shares.

A record says where a pod is (node, IPs, container ID, ifname), what it is called
(namespace and name, from the runtime's ``K8S_POD_NAMESPACE``/``K8S_POD_NAME``) and the
labels and named ports NetworkPolicy selects by. Any node can write etcd, so every record
read back passes ``judge_pod`` before use; a bad one is rejected alone.

**Duplicate pod IPs are impossible by construction**: a node publishes only addresses its
own host-local IPAM store handed out, that store allocates each address once (one
``O_EXCL`` file per address under ``flock``), and it allocates only from the node's own
subnet, which the subnet manager gives to one node at a time. ``judge_pod`` enforces the
second half (a record's IPs lie inside its node's accepted subnet), so a record claiming
another node's addresses is rejected rather than shown; ``overlayctl diagnose``'s
``pod-ips-unique`` check verifies the whole.

**Labels and their precedence.** Runtimes do not hand a CNI plugin a pod's Kubernetes
labels. Labels come from sources, lowest precedence first (``PRECEDENCE``): the CNI
conventions' ``args.cni.labels`` (``cni``), a Kubernetes API watcher (``kubernetes``: the
seam, no source yet) and ``overlayctl pods label`` (``cli``). Per key the highest source
wins, and the record keeps each label's source, so a republish after a new sandbox keeps
what an operator set by hand.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv6Address, IPv6Network
from typing import TYPE_CHECKING, Any, Protocol

from overlay.cluster.keys import (
    dns_label_problem,
    dns_subdomain_problem,
    pod_key,
    pods_prefix,
    split_namespaced,
)
from overlay.lease import IPNetwork, Lease, LeaseRules, Rejection, judge
from overlay.util import jsontext
from overlay.util.containerid import container_id_problem as _container_id_problem

if TYPE_CHECKING:  # the etcd client is not imported by the values (the CNI plugin uses them)
    from overlay.cluster.store import KV, ObjectStore

log = logging.getLogger(__name__)

SOURCE_CNI = "cni"
SOURCE_KUBERNETES = "kubernetes"
SOURCE_CLI = "cli"
PRECEDENCE = (SOURCE_CNI, SOURCE_KUBERNETES, SOURCE_CLI)  # lowest first: later wins per key

PROTOCOLS = ("TCP", "UDP", "SCTP")
DEFAULT_NAMESPACE = "default"

# Bounds: a record is a few hundred bytes; these keep a hostile one small to hold.
# Each source of labels brings at most MAX_SOURCE_LABELS (the plugin keeps 64, `pods
# label` refuses more), so a record holds up to that many of each and, at Kubernetes'
# longest labels (a 317-character key, a 63-character value), about 85 KB.
MAX_SOURCE_LABELS = 64
# Why a record whose node's lease is gone is rejected (its IPs' subnet has no lease): the
# ordinary state between a node's removal and the lease-gone GC deleting its pods.
NO_LEASE = "no accepted lease holds them"
MAX_LABELS = MAX_SOURCE_LABELS * 3  # PRECEDENCE's sources
MAX_RECORD_BYTES = 128 * 1024
MAX_IPS = 8
MAX_PORTS = 64
MAX_IFNAME = 15

# Kubernetes' label syntax: a key is an optional DNS-1123 subdomain prefix and '/', then a
# name of at most 63 characters; a value is empty or a name.
_LABEL_NAME_RE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_PORT_NAME_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")  # IANA_SVC_NAME, at most 15


class PodReason:
    """Why a key under ``pods/`` is not used: short stable slugs (metric labels)."""

    BAD_KEY = "bad-key"
    BAD_VALUE = "bad-value"
    VALUE_TOO_LARGE = "value-too-large"
    NAME_MISMATCH = "name-mismatch"
    IP_OUTSIDE_SUBNET = "ip-outside-node-subnet"


class PodValueError(ValueError):
    """A pod record's value (or a part of it) breaks the rule; the message is one line."""


@dataclass(frozen=True)
class Label:
    value: str
    source: str  # one of PRECEDENCE


@dataclass(frozen=True)
class Port:
    name: str
    port: int
    protocol: str = "TCP"


@dataclass(frozen=True)
class PodRecord:
    namespace: str
    name: str
    ips: tuple[IPv4Address | IPv6Address, ...]  # IPv4 first; a dual-stack pod's IPv6 after
    node: str
    container_id: str
    ifname: str
    labels: Mapping[str, Label] = field(default_factory=dict)
    ports: tuple[Port, ...] = ()
    created: datetime = field(default_factory=lambda: datetime.now(UTC))
    mod_revision: int = 0  # etcd's, when read back (not part of the value)

    @property
    def ip(self) -> IPv4Address | IPv6Address | None:
        return self.ips[0] if self.ips else None

    def label_values(self) -> dict[str, str]:
        return {k: lab.value for k, lab in self.labels.items()}

    def key(self, prefix: str) -> str:
        return pod_key(prefix, self.namespace, self.name)


# ---- the parts' rules ----------------------------------------------------------------

def label_key_problem(key: object) -> str | None:
    """Why ``key`` is not a Kubernetes label key, or None."""
    if not isinstance(key, str) or not key:
        return "must be a non-empty string"
    prefix, slash, name = key.rpartition("/")
    if slash and dns_subdomain_problem(prefix) is not None:
        return f"prefix {prefix!r} must be a DNS-1123 subdomain"
    if not name or len(name) > 63 or not _LABEL_NAME_RE.fullmatch(name):
        return ("name part must be 1-63 characters: letters, digits, '-', '_', '.', "
                "starting and ending with a letter or digit")
    return None


def label_value_problem(value: object) -> str | None:
    """Why ``value`` is not a Kubernetes label value, or None."""
    if not isinstance(value, str):
        return "must be a string"
    if value and (len(value) > 63 or not _LABEL_NAME_RE.fullmatch(value)):
        return ("must be empty or 1-63 characters: letters, digits, '-', '_', '.', "
                "starting and ending with a letter or digit")
    return None


def label_problem(key: object, value: object) -> str | None:
    """Why ``key=value`` is not a Kubernetes label (a line naming the part), or None."""
    p = label_key_problem(key)
    if p is not None:
        return f"label key {key!r} {p}"
    p = label_value_problem(value)
    return f"label {key}={value!r}: value {p}" if p is not None else None


def parse_port(obj: object) -> Port:
    """A ``{name, port, protocol}`` object (protocol optional, default TCP)."""
    if not isinstance(obj, dict) or not set(obj) <= {"name", "port", "protocol"}:
        raise PodValueError(f"a port must be an object of name, port, protocol: {obj!r:.80}")
    name, port, proto = obj.get("name", ""), obj.get("port"), obj.get("protocol", "TCP")
    if not isinstance(name, str) or (name and (len(name) > 15
                                               or not _PORT_NAME_RE.fullmatch(name))):
        raise PodValueError(f"port name {name!r:.40} must be an IANA service name "
                            "(at most 15 lower-case letters, digits and '-')")
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise PodValueError(f"port {port!r:.40} must be an integer in 1..65535")
    if not isinstance(proto, str) or proto.upper() not in PROTOCOLS:
        raise PodValueError(f"port protocol {proto!r:.40} must be one of {', '.join(PROTOCOLS)}")
    return Port(name, port, proto.upper())


def identity_problem(namespace: object, name: object) -> str | None:
    """Why ``namespace/name`` cannot name a pod record, or None."""
    p = dns_label_problem(namespace)
    if p is not None:
        return f"namespace {namespace!r:.80} {p}"
    p = dns_subdomain_problem(name)
    return f"pod name {name!r:.80} {p}" if p is not None else None


def _node_problem(node: object) -> str | None:
    p = dns_subdomain_problem(node)
    return f"node {node!r:.80} {p}" if p is not None else None


def container_id_problem(value: object) -> str | None:
    """The plugin's CNI_CONTAINERID rule (:mod:`overlay.util.containerid`)."""
    problem = _container_id_problem(value)
    return f"container ID {value!r:.80} {problem}" if problem else None


# ---- label precedence -----------------------------------------------------------------

class LabelSource(Protocol):
    """A future source of labels (e.g. a Kubernetes API watcher): ``name`` is one of
    ``PRECEDENCE`` and is recorded as each of its labels' source."""

    name: str

    def labels_for(self, namespace: str, name: str) -> Mapping[str, str]: ...


def merge_labels(by_source: Mapping[str, Mapping[str, str]]) -> dict[str, Label]:
    """Every source's labels, the higher source (``PRECEDENCE``) winning per key."""
    out: dict[str, Label] = {}
    for source in PRECEDENCE:
        for key, value in by_source.get(source, {}).items():
            out[key] = Label(value, source)
    return dict(sorted(out.items()))


def labels_by_source(labels: Mapping[str, Label]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for key, lab in labels.items():
        out.setdefault(lab.source, {})[key] = lab.value
    return out


def with_cli_labels(record: PodRecord, set_: Mapping[str, str],
                    remove: Iterable[str]) -> PodRecord:
    """``overlayctl pods label``: set keys (source ``cli``, winning over the others) and
    remove keys whatever their source; PodValueError if the pod would carry more than
    MAX_SOURCE_LABELS of the operator's (a record every reader rejects would drop the pod
    out of its policies' reach)."""
    labels = {k: v for k, v in record.labels.items() if k not in set(remove)}
    labels.update({k: Label(v, SOURCE_CLI) for k, v in set_.items()})
    if (cli := sum(lab.source == SOURCE_CLI for lab in labels.values())) > MAX_SOURCE_LABELS:
        raise PodValueError(f"{cli} labels set with `pods label`: at most {MAX_SOURCE_LABELS}")
    return replace(record, labels=dict(sorted(labels.items())))


# ---- codec ----------------------------------------------------------------------------

def _rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def encode_pod(record: PodRecord) -> bytes:
    obj = {
        "namespace": record.namespace, "name": record.name,
        "ips": [str(ip) for ip in record.ips], "node": record.node,
        "containerID": record.container_id, "ifname": record.ifname,
        "labels": {k: {"value": lab.value, "source": lab.source}
                   for k, lab in record.labels.items()},
        "ports": [{"name": p.name, "port": p.port, "protocol": p.protocol}
                  for p in record.ports],
        "created": _rfc3339(record.created),
    }
    return json.dumps(obj, separators=(",", ":")).encode()


_FIELDS = {"namespace", "name", "ips", "node", "containerID", "ifname", "labels", "ports",
           "created"}


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):  # a later duplicate would silently win
        raise PodValueError("duplicate field")
    return out


_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4_RE = re.compile(rf"{_OCTET}(\.{_OCTET}){{3}}")  # dotted quad, no leading zeros


def _ip(text: object) -> IPv4Address | IPv6Address:
    # The whole-string shape first, then the integer: IPv4Address(str) parses in pure
    # Python, a tenth of a 10 000-pod listing.
    if isinstance(text, str) and ":" in text and len(text) <= 39:
        return _ip6(text)
    if not isinstance(text, str) or not _IPV4_RE.fullmatch(text):
        raise PodValueError(f"ips: {text!r:.40} is not an IPv4 or IPv6 address")
    a, b, c, d = map(int, text.split("."))
    return IPv4Address((a << 24) | (b << 16) | (c << 8) | d)


def _ip6(text: str) -> IPv6Address:
    try:
        ip = IPv6Address(text) if "%" not in text else None  # a scope: never a pod's
    except ValueError:
        ip = None
    if ip is None or str(ip) != text:  # RFC 5952 text only: one spelling per address
        raise PodValueError(f"ips: {text!r:.40} is not an IPv6 address in RFC 5952 form")
    return ip


def _ips(raw: object) -> tuple[IPv4Address | IPv6Address, ...]:
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_IPS:
        raise PodValueError(f"ips must be a list of 1-{MAX_IPS} IP addresses")
    ips = tuple(_ip(ip) for ip in raw)
    if len(set(ips)) != len(ips):
        raise PodValueError("ips must be distinct")
    if not isinstance(ips[0], IPv4Address) and any(isinstance(ip, IPv4Address) for ip in ips):
        raise PodValueError("ips must start with the pod's IPv4 address")  # IPv6-only: none
    return ips


def _labels(raw: object) -> dict[str, Label]:
    if not isinstance(raw, dict) or len(raw) > MAX_LABELS:
        raise PodValueError(f"labels must be an object of at most {MAX_LABELS} labels")
    out = {}
    for key, lab in raw.items():
        if not isinstance(lab, dict) or set(lab) != {"value", "source"}:
            raise PodValueError(f"label {key!r:.60} must be {{value, source}}")
        problem = label_problem(key, lab["value"])
        if problem:
            raise PodValueError(problem)
        if lab["source"] not in PRECEDENCE:
            raise PodValueError(f"label {key!r:.60}: unknown source {lab['source']!r:.40}")
        out[key] = Label(lab["value"], lab["source"])
    return dict(sorted(out.items()))


_CREATED_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def _created(raw: object) -> datetime:
    # fromisoformat after a shape check: strptime took a fifth of a 10 000-pod listing
    if not isinstance(raw, str) or not _CREATED_RE.fullmatch(raw):
        raise PodValueError(f"created {raw!r:.40} is not YYYY-MM-DDTHH:MM:SSZ")
    try:
        return datetime.fromisoformat(raw)
    except ValueError:
        raise PodValueError(f"created {raw!r:.40} is not a valid time") from None


def decode_pod(value: bytes, mod_revision: int = 0) -> PodRecord:
    """A record's value, strictly (exact fields and types, bounded); PodValueError."""
    if len(value) > MAX_RECORD_BYTES:
        raise PodValueError(f"value is {len(value)} bytes (at most {MAX_RECORD_BYTES})")
    try:
        obj = jsontext.loads(value, object_pairs_hook=_no_duplicates)
    except ValueError as e:
        raise PodValueError(f"not JSON: {e}") from None
    if not isinstance(obj, dict) or set(obj) != _FIELDS:
        raise PodValueError(f"must be an object with exactly {', '.join(sorted(_FIELDS))}")
    problem = (identity_problem(obj["namespace"], obj["name"]) or _node_problem(obj["node"])
               or container_id_problem(obj["containerID"]))
    if problem:
        raise PodValueError(problem)
    ifname = obj["ifname"]
    if not isinstance(ifname, str) or not 0 < len(ifname) <= MAX_IFNAME:
        raise PodValueError(f"ifname {ifname!r:.40} must be 1-{MAX_IFNAME} characters")
    ports = obj["ports"]
    if not isinstance(ports, list) or len(ports) > MAX_PORTS:
        raise PodValueError(f"ports must be a list of at most {MAX_PORTS}")
    return PodRecord(obj["namespace"], obj["name"], _ips(obj["ips"]), obj["node"],
                     obj["containerID"], ifname, _labels(obj["labels"]),
                     tuple(parse_port(p) for p in ports), _created(obj["created"]),
                     mod_revision)


# ---- the acceptance rule ---------------------------------------------------------------

@dataclass(frozen=True)
class PodRules:
    """What a record's IPs are checked against: each node's accepted subnet where the
    caller knows it (``node_subnets``), else the accepted subnet leases (the IPs must all
    lie in one of them).  A dual-stack record's IPv6 addresses must lie in the IPv6
    subnet of that same lease (``lease_ipv6``, by the lease's IPv4 subnet)."""

    # An IPv6-only network's leases (and so its pods' subnets) are IPv6.
    node_subnets: Mapping[str, IPNetwork] = field(default_factory=dict)
    lease_subnets: frozenset[IPNetwork] = frozenset()
    lease_ipv6: Mapping[IPNetwork, IPv6Network] = field(default_factory=dict)
    # with_nodes' rules: a record naming a node without a (believed) node record is
    # rejected, where without node records any accepted lease holding its IPs will do
    nodes_known: bool = False
    # the leases by (family, prefix length) and network as an int, computed once: the
    # rule runs per record, and ipaddress objects are slow to build (10 000 pods per listing)
    _by_int: dict[tuple[int, int], dict[int, IPNetwork]] = field(init=False, repr=False,
                                                                 compare=False)

    def __post_init__(self) -> None:
        by_int: dict[tuple[int, int], dict[int, IPNetwork]] = {}
        for s in self.lease_subnets:
            by_int.setdefault((s.version, s.prefixlen), {})[int(s.network_address)] = s
        object.__setattr__(self, "_by_int", by_int)

    def with_nodes(self, node_subnets: Mapping[str, IPNetwork]) -> PodRules:
        """These rules, each node's pods held to its own record's subnet (where that
        subnet is an accepted lease: a record naming any other is not believed)."""
        own = {n: s for n, s in node_subnets.items() if s in self.lease_subnets}
        return PodRules(node_subnets=own, lease_subnets=self.lease_subnets,
                        lease_ipv6=self.lease_ipv6, nodes_known=True)

    def subnet_for(self, node: str,
                   ips: Sequence[IPv4Address | IPv6Address]) -> IPNetwork | None:
        """The accepted subnet holding every one of ``ips`` for ``node`` (its IPv6
        half holding the IPv6 ones; an IPv6-only pod's, the IPv6 lease), or None."""
        v6 = [ip for ip in ips if isinstance(ip, IPv6Address)]
        v4 = [ip for ip in ips if isinstance(ip, IPv4Address)]
        if not v6 or not v4:
            return self._subnet_for(node, ips)  # one family: the lease's own
        subnet = self._subnet_for(node, v4)
        half = self.lease_ipv6.get(subnet) if subnet is not None else None
        return subnet if half is not None and all(ip in half for ip in v6) and (
            node_address_problem(half, v6) is None) else None

    def _subnet_for(self, node: str, ips: Sequence[IPv4Address | IPv6Address]
                    ) -> IPNetwork | None:
        if not ips:
            return None
        subnet = self._holding(node, ips)
        return None if subnet is None or node_address_problem(subnet, ips) else subnet

    def _holding(self, node: str, ips: Sequence[IPv4Address | IPv6Address]
                 ) -> IPNetwork | None:
        if node in self.node_subnets:
            subnet = self.node_subnets[node]
            return subnet if all(ip in subnet for ip in ips) else None
        if self.nodes_known:
            return None  # a node no believed record names: its pods are not either
        bits = ips[0].max_prefixlen
        for (version, plen), nets in self._by_int.items():
            if version != ips[0].version:
                continue
            mask = ((1 << bits) - 1) ^ ((1 << (bits - plen)) - 1)
            candidate = nets.get(int(ips[0]) & mask)
            if candidate is not None and all(int(ip) & mask == int(candidate.network_address)
                                             for ip in ips):
                return candidate
        return None


def node_address_problem(subnet: IPNetwork | IPv6Network,
                         ips: Iterable[IPv4Address | IPv6Address]) -> str | None:
    """Why one of ``ips`` is the node's own address in ``subnet``, never a pod's, or
    None: the network address (the VTEP's), the first host (the bridge's gateway) and, in
    IPv4, the broadcast address."""
    base = int(subnet.network_address)
    own = {base, base + 1} | ({int(subnet.broadcast_address)} if subnet.version == 4 else set())
    hit = next((ip for ip in ips if ip.version == subnet.version and int(ip) in own), None)
    return None if hit is None else f"{hit} is node {subnet}'s own address, not a pod's"


def believed_node_subnets(claims: Iterable[tuple[str, IPNetwork]]) -> dict[str, IPNetwork]:
    """Each node's subnet by its node record (``claims``: name, subnet), leaving out
    every subnet two records claim: which node holds it is then not known, and believing
    either would let one node's record speak for the other's pods."""
    holders: dict[IPNetwork, set[str]] = {}
    for name, subnet in claims:
        holders.setdefault(subnet, set()).add(name)
    return {next(iter(names)): subnet for subnet, names in holders.items()
            if len(names) == 1}


def rules_from_leases(config: Any, leases: Iterable[Lease]) -> PodRules:
    """The accepted subnet leases (``overlay.lease.judge`` under the network ``config``;
    none without a config), which pod IPs must lie in."""
    if config is None:
        return PodRules()
    accepted, _, _ = judge(leases, LeaseRules.from_config(config))
    return PodRules(lease_subnets=frozenset(lease.subnet for lease in accepted),
                    lease_ipv6={lease.subnet: lease.ipv6_subnet for lease in accepted
                                if lease.ipv6_subnet is not None})


def rules_with_nodes(config: Any, leases: Iterable[Lease], nodes: Iterable[Any]) -> PodRules:
    """``rules_from_leases`` held to the node records ``nodes`` (each with ``name`` and
    ``subnet``): what every reader of the registry judges pods by."""
    return rules_from_leases(config, leases).with_nodes(
        believed_node_subnets((n.name, n.subnet) for n in nodes))


def judge_pod(kv: KV, base: str, rules: PodRules) -> PodRecord | Rejection:
    """The one rule for a key under ``pods/`` (``base`` is ``pods_prefix(prefix)``): the
    key names a valid namespace/name, the value decodes strictly and names the same pod,
    and its IPs lie inside its node's accepted subnet."""
    names = split_namespaced(kv.key, base)
    if names is None:
        return Rejection(kv.key, PodReason.BAD_KEY, "not <prefix>/pods/<namespace>/<name> "
                         "with DNS-1123 names", kv.mod_revision)
    if len(kv.value) > MAX_RECORD_BYTES:
        return Rejection(kv.key, PodReason.VALUE_TOO_LARGE, f"{len(kv.value)} bytes",
                         kv.mod_revision)
    try:
        record = decode_pod(kv.value, kv.mod_revision)
    except PodValueError as e:
        return Rejection(kv.key, PodReason.BAD_VALUE, str(e), kv.mod_revision)
    if (record.namespace, record.name) != names:
        return Rejection(kv.key, PodReason.NAME_MISMATCH, f"the value names "
                         f"{record.namespace}/{record.name}", kv.mod_revision)
    if rules.subnet_for(record.node, record.ips) is None:
        return Rejection(kv.key, PodReason.IP_OUTSIDE_SUBNET, _outside(record, rules),
                         kv.mod_revision)
    return record


def _outside(record: PodRecord, rules: PodRules) -> str:
    """Why ``subnet_for`` found no subnet for ``record``: one line."""
    where = rules.node_subnets.get(record.node)
    ips = ", ".join(map(str, record.ips))
    leased = next((s for s in rules.lease_subnets if record.ips[0] in s), None)
    if where is None and rules.nodes_known and leased is not None:
        return (f"node {record.node} has no node record of its own (none, or its subnet "
                "is claimed by another too)")
    held = where or leased
    halves = [held, rules.lease_ipv6.get(held)] if held is not None else []
    own = next((p for h in halves if h is not None
                and (p := node_address_problem(h, record.ips))), None)
    return own or f"{ips} not inside node {record.node}'s subnet ({where or NO_LEASE})"


def judge_pods(kvs: Iterable[KV], base: str, rules: PodRules
               ) -> tuple[list[PodRecord], list[Rejection]]:
    accepted: list[PodRecord] = []
    rejected: list[Rejection] = []
    for kv in kvs:
        got = judge_pod(kv, base, rules)
        if isinstance(got, Rejection):
            rejected.append(got)
        else:
            accepted.append(got)
    return accepted, rejected


def duplicate_ips(records: Iterable[PodRecord]
                  ) -> dict[IPv4Address | IPv6Address, list[PodRecord]]:
    """Every IP held by more than one record (what ``pod-ips-unique`` reports)."""
    holders: dict[IPv4Address | IPv6Address, list[PodRecord]] = {}
    for r in records:
        for ip in r.ips:
            holders.setdefault(ip, []).append(r)
    return {ip: rs for ip, rs in holders.items() if len(rs) > 1}


def split_ambiguous(records: Iterable[PodRecord]
                    ) -> tuple[list[PodRecord], list[tuple[PodRecord, str]]]:
    """The records no other record shares an IP with, and the others with why: which of
    two claims to an IP is true is not known, and believing either could widen what a
    policy allows, so readers that enforce or explain policy use neither."""
    records = list(records)
    shared = {id(r): ip for ip, rs in duplicate_ips(records).items() for r in rs}
    kept = [r for r in records if id(r) not in shared]
    return kept, [(r, f"{shared[id(r)]} is held by another record too")
                  for r in records if id(r) in shared]


# ---- store operations --------------------------------------------------------------------

def list_pod_kvs(store: ObjectStore, namespace: str | None = None) -> tuple[list[KV], int]:
    return store.list(pods_prefix(store.prefix, namespace))


def decodable_records(kvs: Iterable[KV]) -> Iterable[tuple[KV, PodRecord]]:
    """Records that decode, whatever their IPs: deleting needs no subnet judgement (a
    node gone for good no longer has an accepted lease)."""
    for kv in kvs:
        try:
            yield kv, decode_pod(kv.value, kv.mod_revision)
        except PodValueError:
            continue


def delete_pods_where(store: ObjectStore, select: Callable[[PodRecord], bool], why: str,
                      kvs: Iterable[KV] | None = None) -> int:
    """Delete every decodable record ``select(record)`` picks (of ``kvs``, a listing
    already made, else one made now), each only if unchanged since it was read (CAS);
    how many went. Idempotent."""
    if kvs is None:
        kvs, _ = list_pod_kvs(store)
    gone = 0
    for kv, record in decodable_records(kvs):
        if select(record) and store.delete(kv.key, mod_revision=kv.mod_revision):
            gone += 1
    if gone:
        log.info("deleted %d pod record(s): %s", gone, why)
    return gone


def delete_pods_of_node(store: ObjectStore, node: str) -> int:
    """A node gone for good (``overlayctl nodes delete``): its pods leave the registry."""
    return delete_pods_where(store, lambda r: r.node == node, f"node {node} is gone")


def delete_pods_in_subnet(store: ObjectStore, subnet: IPNetwork) -> int:
    """A subnet lease expired or released: the pods of the node that held it go. A
    valid record's IPs lie inside its node's subnet, so the IPs name the node's pods."""
    return delete_pods_where(store, lambda r: any(ip in subnet for ip in r.ips),
                             f"subnet lease {subnet} is gone")
