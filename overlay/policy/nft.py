"""NetworkPolicy compiled to one nftables table of our own, ``inet overlay-policy``, and
the one edge that loads it (libnftables or ``nft -f``: each load a single atomic
transaction, the table replaced whole, or changed in place when only pods changed:
:func:`update_script`).

What a node enforces is what :mod:`overlay.policy.semantics` decides, for its own pods:
egress for connections its pods open, ingress for connections to them (the peer's node
checks the other half). The shape keeps the *rules* growing with policies plus pods, never
their product: membership lives in sets (one of selected local pods per policy, one of
peer addresses and one of ports per policy rule), and each rule of a policy is one nft
rule matching those sets::

    src_<veth>  one per pod veth, on its ingress hook (stateless): only the pod's addresses
                (and IPv6 link-local and ``::``, which neighbour discovery needs)
    forward     ct established,related accept   (replies of allowed connections)
                IPv6 neighbour discovery accept; other IPv6 link-local drop
                ip saddr @isolated_egress jump check_egress   (ip6 ... @isolated_egress6)
                ip daddr @isolated_ingress jump check_ingress
    check_*     one rule per policy rule: selected pod . peer . port -> counter, allow;
                then each isolating policy's "denied" counter; drop

Pod-to-pod traffic on one bridge reaches the inet forward hook only while br_netfilter's
``bridge-nf-call-iptables`` is 1 (the daemon checks it, not this module). Named ports
resolve on the destination pod: a set of (address, protocol, port) per rule. Traffic
between a pod and its own node never crosses forward (input/output hooks), so it is never
filtered; a pod's traffic to itself never leaves its namespace. Both IP families: each
rule is compiled once per family that has addresses, into the same chains (``ipv6_addr``
sets named with a ``6``), and an ipBlock only into its own family's sets, as Kubernetes'
blocks are one family; a cluster without IPv6 pods gets no IPv6 set.

The source check is a base chain of its own per pod veth (:func:`source_chain`, hooked on
that one device), not one chain hooked on every veth: a new pod's chain is created in the
ADD's transaction beside its set elements, and nothing already hooked is touched, and per
packet the check is one compare instead of a concatenated set lookup. (At 100 policies an
ADD's transaction that grows a shared chain's device list took 14.3 ms through the ``nft``
CLI against 3.6 ms creating a chain instead; through libnftables in-process, as overlayd
loads, 1.44 ms against 1.58 ms: there the cost is nft's cache of the table's sets.)
So an ADD's :class:`Admission` is loaded by :func:`apply_admission` as nfnetlink messages
(``overlay.netlink.nftables``, 0.2-0.4 ms), and as nft text only for what those cannot say.
A DEL's :class:`Withdrawal` is its inverse (:func:`withdrawal`, :func:`apply_withdrawal`):
the pod's elements deleted and its veth's chain with them, so the compiles that would
follow a DEL have nothing to do.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import functools
import logging
import os
import re
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Network, ip_address
from typing import TYPE_CHECKING, Any, NamedTuple

from overlay.errors import NetlinkOpError, OverlayError
from overlay.policy.model import (
    EGRESS,
    IN,
    INGRESS,
    IPAddress,
    LabelSelector,
    NetworkPolicy,
    Peer,
    PolicyPort,
    Rule,
)
from overlay.policy.semantics import Namespaces, Pod, namespace_labels, peer_matches
from overlay.util.proc import FAILED, ProgramError, run

if TYPE_CHECKING:
    from overlay.netlink.nftables import Message, NftSocket

log = logging.getLogger(__name__)

FAMILY, TABLE = "inet", "overlay-policy"
# A device's ingress hook runs before any IP hook: a spoofed packet never creates a
# conntrack entry.
SOURCE_CHECK_PRIORITY = -500
# Denied-packet logging (``log_denied``): at most this many log lines per direction, after
# a burst; what exceeds it is dropped unlogged (the per-policy denied counters count all).
LOG_RATE, LOG_BURST = "10/second", 20
LOG_PREFIX = "overlay-policy denied {direction}: "
SPOOFED = "spoofed"  # the source checks' one named counter
SOURCE_CHAIN_PREFIX = "src_"
# What a veth name may hold to become part of nft text and a chain name: the shape of the
# project's own host-side names (``overlay.netlink.pod.host_veth_name``), at most 15 bytes.
_VETH_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")


class _Direction(NamedTuple):
    """A policy type as the table sees it: ``own`` matches the selected (local) pod's
    address, ``far`` the peer's (``saddr``/``daddr``, after a family's keyword)."""
    type: str
    short: str
    own: str
    far: str


_DIRECTIONS = (_Direction(EGRESS, "egress", "saddr", "daddr"),
               _Direction(INGRESS, "ingress", "daddr", "saddr"))


class Family(NamedTuple):
    """An IP family as the table sees it: its payload keyword, its set type and the
    suffix of its sets' names (IPv4's are unsuffixed, as they were before IPv6)."""
    version: int
    keyword: str
    type: str
    suffix: str


FAMILIES = (Family(4, "ip", "ipv4_addr", ""), Family(6, "ip6", "ipv6_addr", "6"))
# What a pod may send from besides its own IPv6 addresses: link-local (NDP needs it) and
# the unspecified address (duplicate address detection).
IPV6_LINK_LOCAL_SOURCES = ("fe80::/64", "::")


@dataclass(frozen=True)
class LocalPod:
    """A pod of this node and the host side of its veth (the source check's key)."""
    pod: Pod
    ifname: str


@dataclass(frozen=True)
class PolicyCounter:
    """What a named counter counts: packets one policy allowed or denied one way. Only
    packets opening a connection reach the policy chains (replies and the rest of an
    allowed connection pass conntrack first); an allowed one is counted once, by the first
    policy (in namespace/name order) whose rule matched, a denied one by every policy
    isolating the pod."""
    policy: str  # namespace/name
    direction: str  # Ingress | Egress
    verdict: str  # allowed | denied


class Role(NamedTuple):
    """Why elements are in a set (one set may serve several roles: equal sets are shared).
    ``selected``: the local pods policy ``policy`` selects; ``isolated``: the local pods
    isolated for ``direction``; ``peer``: the pods rule ``rule`` of that policy and
    direction names; ``named``: (address . protocol . port) of that rule's named ports;
    ``ports``: its numeric ports. ``family``: the IP version of the addresses it holds
    (sets are of one family)."""
    kind: str
    policy: int = -1
    direction: str = ""
    rule: int = -1
    family: int = 4


@dataclass(frozen=True, eq=False)
class TableIndex:
    """What a compiled table was made from and which set serves which role: enough to
    add one new local pod's elements without compiling again (:func:`admit_script`)."""
    policies: tuple[NetworkPolicy, ...]  # sorted by ref: policy i is policies[i]
    namespaces: Mapping[str, Mapping[str, str]]
    compiled: frozenset[int]  # policies selecting a local pod (their rules are loaded)
    roles: Mapping[str, tuple[Role, ...]]  # set name -> its roles
    unnamed: frozenset[Role]  # ("peer", ...) / ("named", ...) rules that named no one
    sources: Mapping[str, tuple[str, ...]]  # veth -> the addresses its source chain allows
    set_types: Mapping[str, tuple[str, bool]] = field(default_factory=dict)  # (type, interval)
    # what admissions derive from the fields above, built once per compiled table and
    # shared by the indexes ``admitted``/``withdrawn`` make of it (they change ``sources``)
    memo: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def peer_groups(self) -> Mapping[tuple[int, str, int], int]:
        """(policy, direction, rule) -> one number per distinct (peers, policy namespace):
        whether a pod is among a rule's peers is decided once per number (100 policies
        written from a few selectors name a few dozen)."""
        got = self.memo.get("peer_groups")
        if got is None:
            ids: dict[tuple[object, str], int] = {}
            got = {(i, d, j): ids.setdefault((rule.peers, p.namespace), len(ids))
                   for i, p in enumerate(self.policies) for d in (EGRESS, INGRESS)
                   for j, rule in enumerate(_rules_of(p, d)) if rule.peers is not None}
            self.memo["peer_groups"] = got
        return got

    @functools.cached_property
    def all_roles(self) -> frozenset[Role]:
        return frozenset(r for rs in self.roles.values() for r in rs)

    @functools.cached_property
    def pod_sets(self) -> tuple[tuple[str, tuple[Role, ...]], ...]:
        """The sets a pod can be added to (not the ports'), by name."""
        return tuple(sorted((n, rs) for n, rs in self.roles.items()
                            if any(r.kind != "ports" for r in rs)))


@dataclass
class CompiledTable:
    """A table as nft text, and as what an update compares: ``skeleton`` (the text
    without the sets' elements and the source chains), the sets' ``elements`` (as
    written) and the index's ``sources``. A table admitted into (:func:`admitted`) keeps
    its compiled text; its elements and sources are what the kernel then holds."""
    text: str
    counters: dict[str, PolicyCounter] = field(default_factory=dict)
    index: TableIndex | None = None  # None: not compiled by compile_table
    skeleton: str | None = None  # None: not compiled by compile_table
    elements: Mapping[str, frozenset[str]] = field(default_factory=dict)


def _ipv4(ips: Iterable[object]) -> list[IPv4Address]:
    return [ip for ip in ips if isinstance(ip, IPv4Address)]


def _ips(ips: Iterable[IPAddress], version: int) -> list[IPAddress]:
    return [ip for ip in ips if ip.version == version]


# An address set as merged, inclusive integer ranges: ipaddress objects cost ~10 us each,
# and a table of 1000 policies handles hundreds of thousands of addresses.
Range = tuple[int, int]


def _block_ranges(peer: Peer, version: int = 4) -> list[Range]:
    """An ipBlock as ranges of IP version ``version``: its CIDR minus its excepts (none
    for a block of the other family: a block is one family, as in Kubernetes)."""
    block = peer.ip_block
    if block is None or block.cidr.version != version:
        return []
    out = [(int(block.cidr.network_address), int(block.cidr.broadcast_address))]
    for exc in block.excepts:
        lo, hi = int(exc.network_address), int(exc.broadcast_address)
        out = [part for a, b in out
               for part in ((a, min(b, lo - 1)), (max(a, hi + 1), b)) if part[0] <= part[1]]
    return out


def merge_ranges(ranges: Iterable[Range]) -> list[Range]:
    """Sorted, disjoint and non-adjacent (what an nft interval set holds)."""
    out: list[Range] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _addr(n: int, version: int = 4) -> str:
    if version == 6:
        return socket.inet_ntop(socket.AF_INET6, n.to_bytes(16, "big"))
    return socket.inet_ntoa(n.to_bytes(4, "big"))


def range_text(r: Range, version: int = 4) -> str:
    lo = _addr(r[0], version)
    return lo if r[0] == r[1] else f"{lo}-{_addr(r[1], version)}"


class Cluster:
    """The cluster's pods indexed by namespace, with each peer's answer remembered: many
    policies share selectors, and 1000 policies over 10 000 pods must compile in well
    under a second (a scan per peer would be ten million selector matches)."""

    def __init__(self, pods: Sequence[Pod], namespaces: Namespaces):
        self.pods = list(pods)
        self.namespaces = namespaces
        self.by_ns: dict[str, list[Pod]] = {}
        self.by_label: dict[tuple[str, str], list[Pod]] = {}
        for p in self.pods:
            self.by_ns.setdefault(p.namespace, []).append(p)
            for label in p.labels.items():
                self.by_label.setdefault(label, []).append(p)
        self._peer_pods: dict[tuple[Peer, str], list[Pod]] = {}
        self._peer_ranges: dict[tuple[tuple[Peer, ...], str, int], list[Range]] = {}

    @staticmethod
    def _scope(peer: Peer, policy_ns: str) -> str:
        """The policy's namespace matters only to a peer with a bare podSelector."""
        return policy_ns if peer.ip_block is None and peer.namespace_selector is None else ""

    def peer_pods(self, peer: Peer, policy_ns: str) -> list[Pod]:
        """The pods ``peer`` (of a policy of ``policy_ns``) names."""
        key = (peer, self._scope(peer, policy_ns))
        if key not in self._peer_pods:
            if peer.ip_block is not None:
                found = [p for p in self.pods
                         if peer_matches(peer, policy_ns, p, {}, peer.ip_block.cidr.version)]
            else:
                sel = peer.namespace_selector
                nss = [policy_ns] if sel is None else [
                    ns for ns in self.by_ns
                    if sel.matches(namespace_labels(self.namespaces, ns))]
                found = self._select(peer.pod_selector, nss)
            self._peer_pods[key] = found
        return self._peer_pods[key]

    def _select(self, sel: LabelSelector | None, nss: list[str]) -> list[Pod]:
        """The pods of ``nss`` that ``sel`` matches, starting from the fewest candidates a
        label it requires (matchLabels, or In) names, not from every pod."""
        narrow = [] if sel is None else [
            *(self.by_label.get(label, []) for label in sel.match_labels),
            *([p for v in r.values for p in self.by_label.get((r.key, v), [])]
              for r in sel.match_expressions if r.operator == IN)]
        if not narrow:
            return [p for ns in nss for p in self.by_ns.get(ns, ())
                    if sel is None or sel.matches(p.labels)]
        wanted = set(nss)
        assert sel is not None
        return [p for p in min(narrow, key=len)
                if p.namespace in wanted and sel.matches(p.labels)]

    def peer_ranges(self, peers: tuple[Peer, ...], policy_ns: str, version: int = 4
                    ) -> list[Range]:
        """Every address of IP version ``version`` any of ``peers`` names (pods
        cluster-wide, ipBlocks of that family), merged."""
        key = (peers, "/".join(self._scope(p, policy_ns) for p in peers), version)
        if key not in self._peer_ranges:
            ranges: list[Range] = []
            for peer in peers:
                if peer.ip_block is not None:
                    ranges += _block_ranges(peer, version)
                else:
                    ranges += [(int(ip), int(ip)) for p in self.peer_pods(peer, policy_ns)
                               for ip in _ips(p.ips, version)]
            self._peer_ranges[key] = merge_ranges(ranges)
        return self._peer_ranges[key]

    def destinations(self, rule: Rule, policy_ns: str) -> list[Pod]:
        """The pods an egress rule's peers name (where its named ports resolve)."""
        if rule.peers is None:
            return self.pods
        seen: dict[tuple[str, tuple[IPAddress, ...]], Pod] = {}  # two pods may share a name
        for peer in rule.peers:
            seen.update(((p.ref, p.ips), p) for p in self.peer_pods(peer, policy_ns))
        return list(seen.values())


def _port_elements(ports: Sequence[PolicyPort]) -> list[str]:
    """``proto . port`` and ``proto . lo-hi`` for the numeric ports and the protocol-only
    ones, merged per protocol: a concatenated interval set refuses overlapping elements
    (``auto-merge`` does not apply to concatenations)."""
    by_proto: dict[str, list[Range]] = {}
    for p in ports:
        if p.port is None:
            by_proto.setdefault(p.protocol.lower(), []).append((0, 65535))
        elif isinstance(p.port, int):
            by_proto.setdefault(p.protocol.lower(), []).append((p.port, p.end_port or p.port))
    return [f"{proto} . {lo}" if lo == hi else f"{proto} . {lo}-{hi}"
            for proto, ranges in sorted(by_proto.items()) for lo, hi in merge_ranges(ranges)]


def _named_elements(ports: Sequence[PolicyPort], destinations: Iterable[Pod], version: int = 4
                    ) -> list[str]:
    """(address . protocol . port), addresses of IP version ``version``, of every
    destination pod that has a rule's named port."""
    out: set[str] = set()
    for p in ports:
        if not isinstance(p.port, str):
            continue
        for pod in destinations:
            number = pod.named_port(p.port, p.protocol)
            if number is not None:
                out.update(f"{ip} . {p.protocol.lower()} . {number}"
                           for ip in _ips(pod.ips, version))
    return sorted(out)


class _Builder:
    """Accumulates the table's sets, counters and chain rules."""

    def __init__(self) -> None:
        self.sets: list[str] = []
        self._set_names: dict[tuple[str, bool, str], str] = {}
        self.counters: dict[str, PolicyCounter] = {}
        self.chains: dict[str, list[str]] = {"check_egress": [], "check_ingress": []}
        self.denied: dict[str, list[str]] = {"egress": [], "ingress": []}
        self.roles: dict[str, list[Role]] = {}
        self.types: dict[str, tuple[str, bool]] = {}
        self.unnamed: set[Role] = set()
        self.compiled: set[int] = set()
        self.decls: list[str] = []  # the sets without their elements (the skeleton's)
        self.elements: dict[str, frozenset[str]] = {}
        # a pods-only peer set's addresses as text, by family and ranges: 1000 policies
        # name a few dozen distinct peer sets, each written out once
        self._addresses: dict[tuple[int, tuple[Range, ...]], tuple[list[str], str]] = {}

    def add_set(self, name: str, type_: str, elements: Iterable[object], role: Role,
                interval: bool = False) -> str:
        """A set of these elements: one already defined with the same ones is reused (a
        table of 1000 policies sharing a few selectors holds each address set once)."""
        texts = [str(e) for e in elements]
        return self._define(name, type_, interval, texts, ", ".join(texts), role)

    def add_addresses(self, name: str, fam: Family, ranges: Sequence[Range], role: Role
                      ) -> str:
        """:meth:`add_set` of every address in ``ranges`` (a plain set of family ``fam``)."""
        key = (fam.version, tuple(ranges))
        if key not in self._addresses:
            texts = [_addr(n, fam.version) for lo, hi in ranges for n in range(lo, hi + 1)]
            self._addresses[key] = texts, ", ".join(texts)
        texts, elems = self._addresses[key]
        return self._define(name, fam.type, False, texts, elems, role)

    def _define(self, name: str, type_: str, interval: bool, texts: list[str], elems: str,
                role: Role) -> str:
        key = (type_, interval, elems)
        if key not in self._set_names:
            self._set_names[key] = name
            self.types[name] = (type_, interval)
            flags = " flags interval; auto-merge;" if interval else ""
            body = f" elements = {{ {elems} }};" if elems else ""
            self.sets.append(f"\tset {name} {{ type {type_};{flags}{body} }}")
            self.decls.append(f"\tset {name} {{ type {type_};{flags} }}")
            self.elements[name] = frozenset(texts)
        self.roles.setdefault(self._set_names[key], []).append(role)
        return f"@{self._set_names[key]}"

    def add_counter(self, name: str, counter: PolicyCounter) -> str:
        self.counters[name] = counter
        return f'counter name "{name}"'


def _compile_rule(b: _Builder, tag: str, rule: Rule, policy: NetworkPolicy, direction: str,
                  selected: str, cluster: Cluster, local: Sequence[Pod], role: Role,
                  fam: Family = FAMILIES[0]) -> list[str]:
    """The nft rules (0-2) of one policy rule for one IP family: matches of the numeric
    and named ports."""
    own, far = next((f"{fam.keyword} {d.own}", f"{fam.keyword} {d.far}")
                    for d in _DIRECTIONS if d.type == direction)
    role = role._replace(family=fam.version)
    match = [f"{own} {selected}"]
    if rule.peers is not None:
        ranges = cluster.peer_ranges(rule.peers, policy.namespace, fam.version)
        if not ranges:
            b.unnamed.add(role._replace(kind="peer"))
            return []  # names nobody of this family: allows nothing
        if any(peer.ip_block is not None for peer in rule.peers):
            peers = b.add_set(f"{tag}_peer{fam.suffix}", fam.type,
                              (range_text(r, fam.version) for r in ranges),
                              role._replace(kind="peer"), interval=True)
        else:
            # pods only: a plain set of addresses, so a new pod is one cheap ``add element``
            # (adding to an interval set makes nft fetch every set's elements first: 2 ms
            # at 100 policies, against 0.02 ms)
            peers = b.add_addresses(f"{tag}_peer{fam.suffix}", fam, ranges,
                                    role._replace(kind="peer"))
        match.append(f"{far} {peers}")
    if not rule.ports:
        return [" ".join(match)]
    out = []
    if numeric := _port_elements(rule.ports):
        s = b.add_set(f"{tag}_port", "inet_proto . inet_service", numeric,
                      role._replace(kind="ports", family=4), interval=True)
        out.append(" ".join([*match, f"meta l4proto . th dport {s}"]))
    dests = local if direction == INGRESS else cluster.destinations(rule, policy.namespace)
    if named := _named_elements(rule.ports, dests, fam.version):
        s = b.add_set(f"{tag}_named{fam.suffix}", f"{fam.type} . inet_proto . inet_service",
                      named, role._replace(kind="named"))
        out.append(" ".join([*match, f"{fam.keyword} daddr . meta l4proto . th dport {s}"]))
    elif any(isinstance(p.port, str) for p in rule.ports):
        b.unnamed.add(role._replace(kind="named"))
    return out


def _selected_sets(b: _Builder, index: int, selected_pods: Sequence[Pod]
                   ) -> list[tuple[Family, str]]:
    """Policy ``index``'s sets of selected local pods, one per family any of them has
    an address of (a family none has gets no rules: its role is noted as unnamed)."""
    out = []
    for fam in FAMILIES:
        role = Role("selected", index, family=fam.version)
        ips = sorted({ip for p in selected_pods for ip in _ips(p.ips, fam.version)})
        if ips:
            out.append((fam, b.add_set(f"p{index}_sel{fam.suffix}", fam.type, ips, role)))
        else:
            b.unnamed.add(role)
    return out


def _compile_policy(b: _Builder, index: int, policy: NetworkPolicy,
                    selected_pods: Sequence[Pod], cluster: Cluster) -> None:
    """A policy's sets, its allow rules and its denied counters (it selects local pods),
    each rule once per IP family."""
    b.compiled.add(index)
    sels = _selected_sets(b, index, selected_pods)
    for direction, short, own, _ in _DIRECTIONS:
        if direction not in policy.policy_types:
            continue
        # Egress returns to forward, where ingress is checked next; ingress is the last.
        verdict = "return" if direction == EGRESS else "accept"
        allowed = b.add_counter(f"p{index}_{short}_allowed",
                                PolicyCounter(policy.ref, direction, "allowed"))
        for j, rule in enumerate(policy.egress if direction == EGRESS else policy.ingress):
            for fam, sel in sels:
                for match in _compile_rule(b, f"p{index}_{short[0]}{j}", rule, policy,
                                           direction, sel, cluster, selected_pods,
                                           Role("", index, direction, j), fam):
                    b.chains[f"check_{short}"].append(f"{match} {allowed} {verdict}")
        denied = b.add_counter(f"p{index}_{short}_denied",
                               PolicyCounter(policy.ref, direction, "denied"))
        b.denied[short] += [f"{fam.keyword} {own} {sel} {denied}" for fam, sel in sels]


def ipv6_sources(addresses: Iterable[IPAddress]) -> list[IPv6Network]:
    """What the source check lets a pod holding ``addresses`` send IPv6 from: its own
    IPv6 addresses (as /128s), link-local and ``::``, in the order nft lists an interval
    set (by address). The one list both the rule's text and its nfnetlink set are made of."""
    own = [IPv6Network(f"{ip}/128") for ip in _ips(addresses, 6)]
    return sorted({*own, *map(IPv6Network, IPV6_LINK_LOCAL_SOURCES)},
                  key=lambda n: int(n.network_address))


def ipv6_source_rule(addresses: Iterable[IPAddress], counter: str) -> str:
    """The source check's IPv6 rule for a pod holding ``addresses`` (its IPv4 ones are
    ignored): drop, counting with ``counter``, what does not come from one of
    :func:`ipv6_sources`. Written as nft lists it, so the drift check reads it back as
    compiled."""
    shown = ", ".join(str(n.network_address) if n.prefixlen == 128 else str(n)
                      for n in ipv6_sources(addresses))
    return f"meta protocol ip6 ip6 saddr != {{ {shown} }} {counter} drop"


class SourceChain(NamedTuple):
    """One pod veth's source check: a base chain hooked on that veth alone."""
    veth: str
    name: str
    header: str
    rules: tuple[str, ...]
    addresses: tuple[str, ...]  # what the rules allow, sorted (the index's record)


def veth_problem(veth: str) -> str | None:
    """Why ``veth`` cannot name a source chain (nor appear in nft text), or None."""
    if _VETH_NAME.fullmatch(veth) is None:
        return (f"veth name {veth[:20]!r} is not 1-15 letters, digits, '_', '.' or '-' "
                "(starting with a letter or digit)")
    return None


def source_chain(veth: str, addresses: Iterable[IPAddress]) -> SourceChain:
    """Stateless, on the veth's ingress hook: a packet a pod sends must carry one of its
    own addresses (a pod with NET_RAW cannot borrow an allowed peer's). It must be the
    veth's own hook: for bridged traffic the inet prerouting hook sees only ``cni0``.
    IPv6 only from the pod's own IPv6 addresses, link-local and ``::``
    (:func:`ipv6_source_rule`). ``veth`` must have passed :func:`veth_problem`. The one
    place a veth's check is written: the compiled table and an ADD's commands
    (:func:`admit_script`) both use it."""
    assert veth_problem(veth) is None, veth
    addresses = list(addresses)
    v4 = sorted(set(_ipv4(addresses)))
    shown = tuple(str(ip) for ip in v4)
    own = (shown[0] if len(shown) == 1 else "{ " + ", ".join(shown) + " }") if shown else ""
    counter = f'counter name "{SPOOFED}"'
    rules = (f"meta protocol ip ip saddr != {own} {counter} drop" if own
             else f"meta protocol ip {counter} drop",
             ipv6_source_rule(addresses, counter))
    header = (f'type filter hook ingress device "{veth}" priority {SOURCE_CHECK_PRIORITY}; '
              "policy accept;")
    v6 = tuple(str(ip) for ip in sorted(set(_ips(addresses, 6))))
    return SourceChain(veth, SOURCE_CHAIN_PREFIX + veth, header, rules, shown + v6)


def _source_chains(b: _Builder, local: Sequence[LocalPod]) -> list[SourceChain]:
    """Each local pod veth's source chain (a veth two records share allows both's
    addresses); a veth whose name fails :func:`veth_problem` gets none (logged)."""
    by_veth: dict[str, list[IPAddress]] = {}
    for lp in local:
        problem = veth_problem(lp.ifname)
        if problem:
            log.warning("pod %s: %s; no source check for it", lp.pod.ref, problem)
            continue
        by_veth.setdefault(lp.ifname, []).extend(lp.pod.ips)
    if by_veth:
        b.add_counter(SPOOFED, PolicyCounter("", "", SPOOFED))
    return [source_chain(veth, ips) for veth, ips in sorted(by_veth.items())]


# Before the policies, for IPv6 between pods on one bridge: neighbour discovery passes
# (untracked by conntrack; hop limit 255 is what the kernel insists on, so it was never
# routed), and any other link-local traffic is dropped, as no policy could name it (a pod
# could otherwise reach an isolated neighbour at its fe80:: address).
_LINK_LOCAL_RULES = ("icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } "
                     "ip6 hoplimit 255 accept",
                     "ip6 saddr fe80::/10 drop", "ip6 daddr fe80::/10 drop")


def compile_table(local: Sequence[LocalPod], pods: Sequence[Pod], namespaces: Namespaces,
                  policies: Sequence[NetworkPolicy], log_denied: bool = False) -> CompiledTable:
    """The whole table for a node whose pods are ``local``; ``pods`` is every pod of the
    cluster (peers are anywhere). With no policy selecting a local pod, the table is empty:
    nothing is filtered and the data plane pays nothing. ``log_denied``: each direction's
    drop is preceded by a kernel log line, at most ``LOG_RATE`` after ``LOG_BURST``."""
    b = _Builder()
    cluster = Cluster(pods, namespaces)
    local_by_ns: dict[str, list[Pod]] = {}
    for lp in local:
        local_by_ns.setdefault(lp.pod.namespace, []).append(lp.pod)
    isolated: dict[str, set[IPAddress]] = {EGRESS: set(), INGRESS: set()}
    ordered = tuple(sorted(policies, key=lambda p: p.ref))
    for i, policy in enumerate(ordered):
        selected = [p for p in local_by_ns.get(policy.namespace, ())
                    if policy.pod_selector.matches(p.labels)]
        if selected:
            _compile_policy(b, i, policy, selected, cluster)
            for direction in policy.policy_types:
                isolated[direction].update(ip for p in selected for ip in p.ips)
    namespace_copy = {ns: dict(labels) for ns, labels in namespaces.items()}
    if not b.counters:
        empty = f"table {FAMILY} {TABLE} {{\n}}\n"
        return CompiledTable(empty, {}, TableIndex(
            ordered, namespace_copy, frozenset(), {}, frozenset(), {}), empty)
    sources = _source_chains(b, local)
    forward = ["ct state established,related accept", *_LINK_LOCAL_RULES]
    for direction, short, own, _ in _DIRECTIONS:
        for fam in FAMILIES:
            role = Role("isolated", direction=direction, family=fam.version)
            if members := sorted(_ips(isolated[direction], fam.version)):
                isolated_set = b.add_set(f"isolated_{short}{fam.suffix}", fam.type, members,
                                         role)
                forward.append(f"{fam.keyword} {own} {isolated_set} jump check_{short}")
    counters = [f"\tcounter {name} {{ }}" for name in b.counters]
    chains = _chain("forward", "type filter hook forward priority filter; policy accept;",
                    forward)
    for short in ("egress", "ingress"):
        logged = [_log_rule(short)] if log_denied else []
        chains += _chain(f"check_{short}", "", [*b.chains[f"check_{short}"], *b.denied[short],
                                                 *logged, "drop"])
    lines = [f"table {FAMILY} {TABLE} {{", *b.sets, *counters]
    for sc in sources:
        lines += _chain(sc.name, sc.header, sc.rules)
    skeleton = "\n".join([f"table {FAMILY} {TABLE} {{", *b.decls, *counters, *chains, "}", ""])
    index = TableIndex(ordered, namespace_copy, frozenset(b.compiled),
                       {k: tuple(v) for k, v in b.roles.items()},
                       frozenset(b.unnamed), {sc.veth: sc.addresses for sc in sources},
                       dict(b.types))
    return CompiledTable("\n".join([*lines, *chains, "}", ""]), dict(b.counters), index,
                         skeleton, b.elements)


def _log_rule(short: str) -> str:
    """Logs a denied packet (rate-limited): its own anonymous counter shows how many were
    logged, the policies' denied counters how many were dropped."""
    prefix = LOG_PREFIX.format(direction=short)
    return (f"limit rate {LOG_RATE} burst {LOG_BURST} packets counter "
            f'log prefix "{prefix}" level info')


# -- one new local pod, without compiling again ------------------------------------------
def _selects(policy: NetworkPolicy, pod: Pod) -> bool:
    return policy.namespace == pod.namespace and policy.pod_selector.matches(pod.labels)


def _rules_of(policy: NetworkPolicy, direction: str) -> tuple[Rule, ...]:
    return policy.egress if direction == EGRESS else policy.ingress


def _names_pod(rule: Rule, policy: NetworkPolicy, pod: Pod, namespaces: Namespaces,
               blocks: bool) -> bool:
    """Whether ``pod`` is one of the rule's peers (by selector; by ipBlock too if
    ``blocks``: a block's range is in the peer set already, whoever holds its addresses)."""
    return rule.peers is not None and any(
        (blocks or peer.ip_block is None) and peer_matches(
            peer, policy.namespace, pod, namespaces,
            peer.ip_block.cidr.version if peer.ip_block is not None else None)
        for peer in rule.peers)


class _NewPod:
    """A new local pod as :func:`admit_script` judges it, each answer computed once (a
    table of 100 policies has hundreds of set roles)."""

    def __init__(self, idx: TableIndex, lp: LocalPod):
        self.idx, self.lp = idx, lp
        self.ips = {fam.version: {str(ip) for ip in _ips(lp.pod.ips, fam.version)}
                    for fam in FAMILIES}
        self.selected = {i for i, p in enumerate(idx.policies) if _selects(p, lp.pod)}
        self.isolated = {d for i in self.selected for d in idx.policies[i].policy_types}
        self._cache: dict[Role, set[str]] = {}
        self._groups = idx.peer_groups
        self._named: dict[tuple[int, bool], bool] = {}  # (peer group, blocks) -> named

    def _names(self, role: Role, rule: Rule, policy: NetworkPolicy, blocks: bool) -> bool:
        """:func:`_names_pod`, once per peer group."""
        key = (self._groups[role.policy, role.direction, role.rule], blocks)
        got = self._named.get(key)
        if got is None:
            got = self._named[key] = _names_pod(rule, policy, self.lp.pod,
                                                self.idx.namespaces, blocks)
        return got

    def wanted(self, role: Role) -> set[str]:
        """The elements the pod adds to a set serving ``role`` (what compile_table would
        put in it with the pod among the local pods)."""
        if role not in self._cache:
            self._cache[role] = self._wanted(role)
        return self._cache[role]

    def _wanted(self, role: Role) -> set[str]:
        pod, ips = self.lp.pod, self.ips[role.family]
        if role.kind == "isolated":
            return ips if role.direction in self.isolated else set()
        if role.kind == "ports" or (role.kind == "named" and not pod.ports):
            return set()  # (a pod without named ports is in no rule's named set)
        if role.kind == "selected":
            return ips if role.policy in self.selected else set()
        policy = self.idx.policies[role.policy]
        rule = _rules_of(policy, role.direction)[role.rule]
        if role.kind == "peer":
            return ips if rule.peers is not None and self._names(role, rule, policy, False) \
                else set()
        # "named": where the rule's named ports resolve: the selected pods for ingress,
        # the rule's peers (every pod without peers) for egress
        dest = (role.policy in self.selected if role.direction == INGRESS else
                rule.peers is None or self._names(role, rule, policy, True))
        return set(_named_elements(rule.ports, [pod], role.family)) if dest else set()


def admission(table: CompiledTable, lp: LocalPod) -> Admission | None:
    """The ``add element`` commands (one transaction) putting a new local pod into
    the loaded ``table`` exactly as compiling the table with it would (same inputs
    otherwise), so its first packet is judged, and its veth's source chain
    (:func:`source_chain`) created in the same transaction. None when adding elements
    cannot say it: a set shared by roles the pod splits, or a rule or set the pod would
    create (a policy selecting its first local pod, a direction isolating its first pod, a
    rule's peers naming their first pod), or its veth's chain already there with other
    addresses; the caller then replaces the table whole. Empty (``.empty``): no change
    (the table is empty and no policy selects the pod)."""
    idx = table.index
    if idx is None:
        return None
    new = _NewPod(idx, lp)
    if new.selected - idx.compiled:
        return None  # (the empty table compiled none)
    if not table.counters:
        return Admission((), None)
    if any(new.wanted(role) for role in idx.unnamed):
        return None
    for direction in (EGRESS, INGRESS):
        for fam in FAMILIES:
            isolated = Role("isolated", direction=direction, family=fam.version)
            if isolated not in idx.all_roles and new.wanted(isolated):
                return None
    if SPOOFED not in table.counters or veth_problem(lp.ifname):
        return None
    chain = source_chain(lp.ifname, lp.pod.ips)
    held = idx.sources.get(lp.ifname)
    if held is not None and held != chain.addresses:
        return None
    elements = []
    for name, set_roles in idx.pod_sets:
        wants = [new.wanted(role) for role in set_roles]
        if any(w != wants[0] for w in wants):
            return None
        if wants[0]:
            type_, interval = idx.set_types.get(name, ("", True))
            elements.append(SetElements(name, type_, interval, tuple(sorted(wants[0]))))
    return Admission(tuple(elements), chain if held is None else None)


def admit_script(table: CompiledTable, lp: LocalPod) -> str | None:
    """:func:`admission` as ``nft`` commands ("" when there is nothing to do)."""
    got = admission(table, lp)
    return None if got is None else got.script()


class SetElements(NamedTuple):
    set: str
    type: str  # the set's key type, e.g. ipv4_addr
    interval: bool
    elements: tuple[str, ...]


class Admission(NamedTuple):
    """What a new local pod adds to the loaded table: elements, and its veth's source
    chain unless the veth has one already."""
    elements: tuple[SetElements, ...]
    chain: SourceChain | None

    @property
    def empty(self) -> bool:
        return not self.elements and self.chain is None

    def script(self) -> str:
        """As ``nft`` commands: one ``nft -f`` (or libnftables) transaction."""
        lines = _element_commands("add", self.elements)
        if self.chain is not None:
            lines += _chain_commands(self.chain)
        return "".join(f"{line}\n" for line in lines)


def _element_commands(verb: str, elements: Iterable[SetElements]) -> list[str]:
    """``add`` or ``delete`` each set's elements, one command per set."""
    return [f"{verb} element {FAMILY} {TABLE} {e.set} {{ {', '.join(e.elements)} }}"
            for e in elements]


def _chain_commands(chain: SourceChain) -> list[str]:
    """``chain`` created, as commands added to a loaded table."""
    return [f"add chain {FAMILY} {TABLE} {chain.name} {{ {chain.header} }}",
            *(f"add rule {FAMILY} {TABLE} {chain.name} {r}" for r in chain.rules)]


def admitted(table: CompiledTable, lp: LocalPod, adm: Admission | None = None
             ) -> CompiledTable:
    """``table`` once ``adm`` (``admission(table, lp)`` when not given) is loaded: its
    index, elements and sources are what the kernel then holds; its text is what was
    compiled."""
    if table.index is None or veth_problem(lp.ifname):
        return table
    if adm is None:
        adm = admission(table, lp) or Admission((), None)
    elements = dict(table.elements)
    for e in adm.elements:
        elements[e.set] = elements.get(e.set, frozenset()) | frozenset(e.elements)
    sources = {**table.index.sources, lp.ifname: source_chain(lp.ifname, lp.pod.ips).addresses}
    return dataclasses.replace(table, index=dataclasses.replace(table.index, sources=sources),
                               elements=elements)


class Withdrawal(NamedTuple):
    """What a deleted local pod takes out of the loaded table: its elements, and its
    veth's source chain (by name) if the table holds one."""
    elements: tuple[SetElements, ...]
    chain: str | None

    @property
    def empty(self) -> bool:
        return not self.elements and self.chain is None

    def script(self) -> str:
        """As ``nft`` commands: one transaction."""
        lines = _element_commands("delete", self.elements)
        if self.chain is not None:
            lines.append(f"delete chain {FAMILY} {TABLE} {self.chain}")
        return "".join(f"{line}\n" for line in lines)


def withdrawal(table: CompiledTable, lp: LocalPod, remaining: Iterable[LocalPod]
               ) -> Withdrawal | None:
    """The ``delete element`` commands (and the source chain's ``delete chain``) taking a
    local pod whose DEL ran out of the loaded ``table``, leaving the table compiling it
    without the pod would give; ``remaining`` are the table's other local pods. The
    inverse of :func:`admission`, and as narrow: None when only a compile can say it
    (its address also held by a remaining pod or its veth shared with one, a set shared by
    roles the pod splits, an interval set it is in, an element the table lacks, a set it
    would empty or leave equal to another one). So the result is the very table a compile
    without the pod gives (diagnose's drift check finds nothing), not just its verdicts.

    Exact because a local pod's addresses are its own: the remote records holding an
    address of this node's subnets stand for nothing (``build.assemble``), so the pod's
    addresses and its named ports' elements are in a set only for it."""
    idx = table.index
    if idx is None or not table.counters:
        return None
    mine = set(lp.pod.ips)
    if any(o.ifname == lp.ifname or mine.intersection(o.pod.ips) for o in remaining):
        return None
    new = _NewPod(idx, lp)
    if new.selected - idx.compiled:
        return None
    elements, left = [], dict(table.elements)
    for name, set_roles in idx.pod_sets:
        wants = [new.wanted(role) for role in set_roles]
        if any(w != wants[0] for w in wants):
            return None
        if not wants[0]:
            continue
        type_, interval = idx.set_types.get(name, ("", True))
        have = table.elements.get(name, frozenset())
        if interval or not wants[0] <= have:
            return None
        elements.append(SetElements(name, type_, interval, tuple(sorted(wants[0]))))
        left[name] = have - wants[0]
        if not left[name]:
            return None  # the compile writes no empty set (nor the rules that use it)
    # a set left equal to another of its type: the compile would write it once, under
    # the other's name (a changed set cannot equal another changed one: both held it)
    changed = {e.set for e in elements}
    kept = {(idx.set_types.get(n), e) for n, e in table.elements.items() if n not in changed}
    if any((idx.set_types.get(n), left[n]) in kept for n in changed):
        return None
    held = idx.sources.get(lp.ifname)
    if held is not None and held != source_chain(lp.ifname, lp.pod.ips).addresses:
        return None
    return Withdrawal(tuple(elements), None if held is None else
                      f"{SOURCE_CHAIN_PREFIX}{lp.ifname}")


def withdrawn(table: CompiledTable, lp: LocalPod, w: Withdrawal) -> CompiledTable:
    """``table`` once ``w`` (``withdrawal(table, lp, ...)``) is loaded."""
    if table.index is None:
        return table
    elements = dict(table.elements)
    for e in w.elements:
        elements[e.set] = elements[e.set] - frozenset(e.elements)
    sources = {v: a for v, a in table.index.sources.items() if v != lp.ifname}
    return dataclasses.replace(table, index=dataclasses.replace(table.index, sources=sources),
                               elements=elements)


# -- a table changed in place ------------------------------------------------------------
def same_table(a: CompiledTable, b: CompiledTable) -> bool:
    """Whether loading ``b`` over ``a`` would change nothing in the kernel."""
    if a.skeleton is None or b.skeleton is None or a.index is None or b.index is None:
        return a.text == b.text
    return (a.skeleton == b.skeleton and a.elements == b.elements
            and a.index.sources == b.index.sources)


def update_script(held: CompiledTable, table: CompiledTable) -> str | None:
    """``nft`` commands turning the kernel's table ``held`` (as loaded or admitted into by
    us) into ``table`` in one transaction, when the two differ only in set elements and
    source chains ("" when in nothing); None when anything else differs (a set, counter,
    rule or chain; or either was not compiled by :func:`compile_table`): replace it whole.

    A plain set gets ``delete element`` for what went and ``add element`` for what came;
    an interval set is flushed and filled again (nft merges ranges, so its elements are
    not the texts it was given); a veth's source chain is deleted when its pod went,
    created when it came, and both when its addresses changed. Every command names one
    of our sets or chains; the kernel applies all of them or none."""
    if (held.skeleton is None or table.skeleton is None or held.index is None
            or table.index is None or held.skeleton != table.skeleton):
        return None
    removals: list[str] = []
    additions: list[str] = []
    for name, want in table.elements.items():
        have = held.elements.get(name, frozenset())
        if want == have:
            continue
        if table.index.set_types.get(name, ("", True))[1]:
            removals.append(f"flush set {FAMILY} {TABLE} {name}")
            gone, came = frozenset[str](), want
        else:
            gone, came = have - want, want - have
        if gone:
            removals.append(f"delete element {FAMILY} {TABLE} {name} "
                            f"{{ {', '.join(sorted(gone))} }}")
        if came:
            additions.append(f"add element {FAMILY} {TABLE} {name} "
                             f"{{ {', '.join(sorted(came))} }}")
    had, has = held.index.sources, table.index.sources
    for veth in sorted(had):
        if had[veth] != has.get(veth):
            removals.append(f"delete chain {FAMILY} {TABLE} {SOURCE_CHAIN_PREFIX}{veth}")
    for veth in sorted(has):
        if has[veth] != had.get(veth):
            additions += _chain_commands(source_chain(veth, map(ip_address, has[veth])))
    return "".join(f"{line}\n" for line in removals + additions)


_CHAIN_LINE = re.compile(r"\tchain (\S+) \{$")


def chain_rules(table: CompiledTable) -> dict[str, int]:
    """The chains the kernel holds while ``table`` is loaded (its source chains included,
    an ADD's too), each with its number of rules."""
    counts: dict[str, int] = {}
    chain: str | None = None
    for line in (table.skeleton or table.text).splitlines():
        if m := _CHAIN_LINE.match(line):
            chain = m[1]
            counts[chain] = 0
        elif line == "\t}":
            chain = None
        elif chain is not None and line.startswith("\t\t") and not line.startswith("\t\ttype "):
            counts[chain] += 1  # a rule (a base chain's "type ... hook" line is not)
    if table.index is not None:
        for veth, addresses in table.index.sources.items():
            sc = source_chain(veth, map(ip_address, addresses))
            counts[sc.name] = len(sc.rules)
    return counts


def kernel_rules(netns: str | None = None) -> dict[str, int] | None:
    """The chains of our table in the kernel, each with its number of rules (None: no
    table), from three nfnetlink dumps that fetch no set element (4 ms at 100 policies,
    27 ms at 1000, where ``nft list table`` takes ~0.4 s). NetlinkOpError when they fail."""
    try:
        with _nft_socket(netns) as sock:
            return sock.rules_per_chain(TABLE)
    except OSError as e:  # no socket (EMFILE, no nf_tables), no namespace
        raise NetlinkOpError(f"nfnetlink: {e.strerror or e}", e.errno or 0) from e


def _chain(name: str, header: str, rules: Sequence[str]) -> list[str]:
    return [f"\tchain {name} {{", *([f"\t\t{header}"] if header else []),
            *(f"\t\t{r}" for r in rules), "\t}"]


def replacement(table: CompiledTable) -> str:
    """One ``nft -f`` script replacing our table whole: created if absent, deleted and
    defined again in the same transaction, so there is never a moment without it."""
    return f"table {FAMILY} {TABLE} {{ }}\ndelete table {FAMILY} {TABLE}\n{table.text}"


class _LibNft:
    """libnftables (the library ``nft`` itself is built on, installed with it) called in
    this process: a load costs no fork and exec and no second parse of the ruleset's
    cache, which is most of a small transaction's time (0.02 ms vs 3 ms for an ``add
    element``; a 100-policy table 10 ms vs 27 ms). One context, used under a lock."""

    def __init__(self, path: str):
        lib = ctypes.CDLL(path)
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        self._lib, self._lock = lib, threading.Lock()
        self._ctx = lib.nft_ctx_new(0)
        if not self._ctx:
            raise OSError("nft_ctx_new failed")
        lib.nft_ctx_buffer_error(self._ctx)
        lib.nft_ctx_buffer_output(self._ctx)

    def run(self, script: str) -> None:
        with self._lock:
            rc = self._lib.nft_run_cmd_from_buffer(self._ctx, script.encode())
            err = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode(errors="replace")
        if rc != 0:
            lines = err.strip().splitlines()
            raise ProgramError(f"nft: {lines[0] if lines else 'transaction refused'}",
                               ["libnftables"], FAILED, 1, err.strip())


_libnft: list[_LibNft | None] = []  # [] not tried yet, [None] unavailable


def _library() -> _LibNft | None:
    if not _libnft:
        path = ctypes.util.find_library("nftables") or "libnftables.so.1"
        try:
            _libnft.append(_LibNft(path))
        except (OSError, AttributeError) as e:
            log.info("libnftables not usable (%s): loading policy tables with nft -f", e)
            _libnft.append(None)
    return _libnft[0]


def load_script(script: str, netns: str | None = None) -> None:
    """One atomic transaction (in ``netns`` if given: the tests' nodes, by ``nft -f``);
    a rejected script changes nothing and raises ``ProgramError``."""
    lib = _library() if netns is None else None
    if lib is not None:
        lib.run(script)
        return
    argv = ["nft", "-f", "-"]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    run(argv, input=script, check=True, timeout=30.0)


def apply_table(table: CompiledTable, netns: str | None = None, *,
                held: CompiledTable | None = None) -> bool:
    """Load ``table`` atomically. Given ``held``, what the kernel holds of ours (as we
    loaded it), only what differs when :func:`update_script` can say it (a pod came or
    went: no whole table to parse and commit); otherwise, or if the kernel refuses that,
    ours is replaced whole (``replacement``). True: replaced whole."""
    script = update_script(held, table) if held is not None else None
    if script is not None:
        try:
            if script:
                load_script(script, netns)
            log.info("policy table updated in place (%d command(s))", script.count("\n"))
            return False
        except ProgramError as e:
            log.warning("nft refused the policy table's update (%s); replacing it whole", e)
    try:
        load_script(replacement(table), netns)
    except ProgramError:
        log.warning("nft refused the policy table; the previous one stays in force")
        raise
    log.info("policy table loaded: %d counters", len(table.counters))
    return True


def apply_admission(adm: Admission, netns: str | None = None) -> None:
    """Load an ADD's :class:`Admission`: one transaction, all or nothing. Sent as an
    nfnetlink batch when it can be (:mod:`overlay.netlink.nftables`: no libnftables
    cache refresh, which costs ~1.2 ms at 100 policies), else as :meth:`Admission.script`
    (in ``netns`` if given: the tests' nodes)."""
    msgs = _netlink_messages(adm)
    if msgs is None:
        apply_script(adm.script(), netns)
        return
    try:
        with _nft_socket(netns) as sock:
            sock.transaction(msgs)
    except OverlayError:
        log.warning("nf_tables refused a new pod's policy elements; the table is unchanged")
        raise
    except OSError as e:  # no socket here (not permitted?): the text path works or says why
        log.debug("nfnetlink not usable (%s): loading the ADD's commands as text", e)
        apply_script(adm.script(), netns)


def apply_withdrawal(w: Withdrawal, netns: str | None = None) -> None:
    """Load a DEL's :class:`Withdrawal`: one transaction, all or nothing, as nfnetlink
    messages when it can be (see :func:`apply_admission`), else as its script
    (OverlayError: refused; the caller says so)."""
    msgs = _withdrawal_messages(w)
    if msgs is not None:
        try:
            with _nft_socket(netns) as sock:
                sock.transaction(msgs)
            return
        except OSError as e:  # no socket here: the text path works or says why
            log.debug("nfnetlink not usable (%s): loading the DEL's commands as text", e)
    load_script(w.script(), netns)


def _withdrawal_messages(w: Withdrawal) -> list[Message] | None:
    """The withdrawal's nfnetlink messages, or None when an element is not encoded here."""
    from overlay.netlink import nftables as nl

    try:
        msgs = _element_messages(w.elements, nl.del_elements_msg)
    except ValueError:
        return None
    if msgs is None:
        return None
    if w.chain is not None:
        msgs.append(nl.del_chain_msg(TABLE, w.chain))
    return msgs


def _netlink_messages(adm: Admission) -> list[Message] | None:
    """The admission's nfnetlink messages, or None when it holds what only nft's text
    can say (an interval set's element, a key of another type, a chain allowing several
    IPv4 addresses or an IPv6 set nft would merge)."""
    from overlay.netlink import nftables as nl

    try:
        msgs = _element_messages(adm.elements, nl.new_elements_msg)
        if msgs is None:
            return None
        if adm.chain is not None:
            chain = _chain_messages(adm.chain)
            if chain is None:
                return None
            msgs += chain
    except ValueError:
        return None
    return msgs


def _element_messages(elements: Sequence[SetElements], wrap: Callable[[bytes], Message]
                      ) -> list[Message] | None:
    """Each set's elements as one message (``wrap``: the new or the delete kind), or None
    when a set is an interval set or of a key type not encoded here. ValueError: an
    element that does not fit its key."""
    from overlay.netlink import nftables as nl

    if any(e.interval or e.type not in nl.KEY_TYPES for e in elements):
        return None
    return [wrap(nl.set_elements(TABLE, e.set, e.type, e.elements)) for e in elements]


def _chain_messages(chain: SourceChain) -> list[Message] | None:
    """``chain`` as :func:`overlay.netlink.nftables.source_chain_messages`, if it is the
    chain :func:`source_chain` writes for its addresses and holds at most one IPv4 one
    (a set of several is not encoded). ValueError: an address or a set not encoded."""
    from overlay.netlink import nftables as nl

    addresses = [ip_address(a) for a in chain.addresses]
    v4 = [a for a in addresses if isinstance(a, IPv4Address)]
    if len(v4) > 1 or veth_problem(chain.veth) or source_chain(chain.veth, addresses) != chain:
        return None
    # source_chain writes the IPv6 sources' set for every pod (checked just above)
    return nl.source_chain_messages(TABLE, chain.name, chain.veth, SOURCE_CHECK_PRIORITY,
                                    v4[0] if v4 else None, ipv6_sources(addresses), SPOOFED,
                                    nl.next_set_id())


_own_socket: list[NftSocket] = []  # this process's namespace: made once, kept


@contextlib.contextmanager
def _nft_socket(netns: str | None) -> Iterator[NftSocket]:
    """This process's nfnetlink socket (kept), or a new one in ``netns`` (closed after:
    a test's namespace may be gone, and its name reused, by the next call)."""
    from overlay.netlink import nftables
    from overlay.netlink.netns import require_netns, thread_in_netns

    if netns is None:
        with _sockets_lock:
            if not _own_socket:
                _own_socket.append(nftables.NftSocket())
        yield _own_socket[0]
        return
    fd = os.open(require_netns(netns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        with thread_in_netns(fd):
            sock = nftables.NftSocket()
    finally:
        os.close(fd)
    try:
        yield sock
    finally:
        sock.close()


_sockets_lock = threading.Lock()


def apply_script(script: str, netns: str | None = None) -> None:
    """Load ``admit_script``'s commands: one transaction, all or nothing. (Its cost is
    mostly nft refreshing its cache of the table's sets after any change: ~1.3 ms at
    100 policies; two transactions would pay it twice.)"""
    try:
        load_script(script, netns)
    except ProgramError:
        log.warning("nft refused a new pod's policy elements; the table is unchanged")
        raise
