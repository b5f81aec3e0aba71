"""``overlayctl trace``'s policy part: the NetworkPolicy verdict on one connection, and why.

Pure. :func:`resolve_endpoint` turns what the user typed (a pod IP, ``NS/NAME``, or
``NAME`` in namespace ``default``) into the policy code's :class:`Pod` or :class:`Host`
(an address of a node, named so "a pod and its own node" is recognised), and
:func:`build_verdict` explains :func:`overlay.policy.semantics.decide`, the evaluator the
nftables compiler is tested against: egress at the source (is it isolated, by which
policies, which of them allow it), ingress at the destination, and the overall verdict.
Either IP family: a connection is of the family of an address the user typed (IPv4 when
both ends are named: a pod's first address), and a dual-stack pod is shown and judged by
its address of that family (an ipBlock matches one family only).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from ipaddress import ip_address
from typing import Any

from overlay.cluster.keys import dns_label_problem, dns_subdomain_problem
from overlay.errors import ConfigError
from overlay.lease import Lease
from overlay.policy.model import DEFAULT_NAMESPACE, EGRESS, INGRESS, IPAddress, NetworkPolicy
from overlay.policy.semantics import Endpoint, Host, Namespaces, Pod, decide, isolating

PROTOCOLS = ("tcp", "udp", "sctp")


def endpoint_text(e: Endpoint, family: int | None = None) -> str:
    """An end as shown; a pod by its address of IP version ``family`` (None: its first)."""
    if isinstance(e, Pod):
        return f"{e.ref} ({(e.address(family) if family else None) or e.ip})"
    return f"{e.ip} (node {e.node})" if e.node else f"{e.ip} (no pod)"


def node_addresses(leases: Iterable[Lease], pods: Iterable[Pod]) -> dict[IPAddress, str]:
    """Each node's own addresses (public IP, VXLAN ``.0``, bridge gateway ``.1``, and
    their IPv6 counterparts on a dual-stack lease) -> the node's name, as its pods'
    records give it (a node without pods names no one)."""
    pods = list(pods)
    out: dict[IPAddress, str] = {}
    for lease in leases:
        node = next((p.node for p in sorted(pods, key=lambda p: p.ref)
                     if p.node and any(ip in lease.subnet for ip in p.ips)), "")
        if node:
            v6 = (lease.attrs.public_ipv6, lease.ipv6_gateway,
                  lease.ipv6_subnet.network_address if lease.ipv6_subnet else None)
            for ip in (lease.attrs.public_ip, lease.subnet.network_address, lease.gateway,
                       *v6):
                if ip is not None:
                    out[ip] = node
    return out


def connection_family(*typed: str) -> int:
    """The IP version of a traced connection: 6 when an address the user typed is IPv6."""
    for text in typed:
        try:
            if ip_address(text).version == 6:
                return 6
        except ValueError:
            continue
    return 4


def pod_name(text: str, what: str = "SRC") -> tuple[str, str]:
    """(namespace, name) of ``NS/NAME`` or ``NAME`` (namespace default); ConfigError if
    ``text`` is neither (nor an address: callers try that first)."""
    ns, sep, name = text.rpartition("/")
    ns = ns if sep else DEFAULT_NAMESPACE
    if (sep and dns_label_problem(ns)) or dns_subdomain_problem(name):
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise ConfigError(f"{what} {shown!r}: give a pod IP, NAMESPACE/NAME or NAME "
                          f"(namespace {DEFAULT_NAMESPACE})")
    return ns, name


def resolve_endpoint(text: str, pods: Sequence[Pod], nodes: Mapping[IPAddress, str],
                     what: str = "SRC") -> Endpoint:
    """A pod IP of either family (the pod holding it, that address first; else a node's
    or a foreign address), ``NS/NAME`` or ``NAME`` (namespace default) of the registry;
    ConfigError says what is wrong."""
    ip: IPAddress | None
    try:
        ip = ip_address(text)
    except ValueError:
        ip = None
    if ip is not None:
        pod = next((p for p in pods if ip in p.ips), None)
        if pod is None:
            return Host(ip, nodes.get(ip, ""))
        # the pod as a connection to this address sees it: that address first, so its
        # ``ip`` (and the connection's family) is the one typed
        return replace(pod, ips=(ip, *(a for a in pod.ips if a != ip)))
    ns, name = pod_name(text, what)
    pod = next((p for p in pods if p.namespace == ns and p.name == name), None)
    if pod is None:
        raise ConfigError(f'{what}: pods "{name}" not found in namespace "{ns}" (see '
                          "`overlayctl pods -A`)")
    if not pod.ips:
        raise ConfigError(f"{what}: pod {pod.ref} has no IP in the registry")
    return pod


@dataclass(frozen=True)
class Side:
    """One direction at one end: egress at the source, ingress at the destination."""
    direction: str  # Egress | Ingress
    endpoint: str
    is_pod: bool
    isolating: tuple[str, ...] = ()
    allowed_by: tuple[str, ...] = ()
    always: str = ""  # why the direction is not policed at all

    @property
    def allowed(self) -> bool:
        return bool(self.always) or not self.isolating or bool(self.allowed_by)

    def text(self) -> str:
        d = self.direction.lower()
        if self.always:
            return f"always allowed: {self.always}"
        if not self.is_pod:
            return f"no pod: {d} is not policed there"
        if not self.isolating:
            return f"not isolated for {d} (no policy selects it for {d}): allowed"
        isolated = f"isolated for {d} by {', '.join(self.isolating)}"
        if self.allowed_by:
            return f"{isolated}; allowed by {', '.join(self.allowed_by)}"
        return f"{isolated}; denied: no policy selecting it for {d} allows it"

    def to_dict(self) -> dict[str, Any]:
        return {"direction": self.direction, "endpoint": self.endpoint, "pod": self.is_pod,
                "isolated": bool(self.isolating), "isolating": list(self.isolating),
                "allowed_by": list(self.allowed_by), "allowed": self.allowed,
                "detail": self.text()}


@dataclass(frozen=True)
class PolicyVerdict:
    src: str
    dst: str
    port: int | None
    protocol: str
    allowed: bool | None  # None: not judged (no --port, or etcd unread)
    reason: str
    egress: Side | None = None
    ingress: Side | None = None

    @property
    def label(self) -> str:
        return {True: "allowed", False: "denied", None: "not judged"}[self.allowed]

    def to_dict(self) -> dict[str, Any]:
        return {"src": self.src, "dst": self.dst, "port": self.port,
                "protocol": self.protocol, "allowed": self.allowed, "verdict": self.label,
                "reason": self.reason,
                "egress": self.egress.to_dict() if self.egress else None,
                "ingress": self.ingress.to_dict() if self.ingress else None}


def _side(direction: str, at: Endpoint, allowed_by: tuple[str, ...],
          policies: Sequence[NetworkPolicy], always: str, family: int | None) -> Side:
    chosen = sorted(p.ref for p in isolating(policies, at, direction)) \
        if isinstance(at, Pod) and not always else []
    return Side(direction, endpoint_text(at, family), isinstance(at, Pod), tuple(chosen),
                tuple(sorted(allowed_by)), always)


def build_verdict(src: Endpoint, dst: Endpoint, port: int, protocol: str,
                  namespaces: Namespaces, policies: Sequence[NetworkPolicy],
                  family: int | None = None) -> PolicyVerdict:
    """The verdict on a new ``protocol`` connection ``src`` -> ``dst``:``port`` over IP
    version ``family`` (None: IPv6 if either end's ``ip`` is IPv6)."""
    proto = protocol.upper()
    # an end given by an IPv6 address has it as its ``ip`` (resolve_endpoint)
    family = family or max(src.ip.version, dst.ip.version)
    v = decide(src, dst, port, proto, namespaces, policies, family)
    always = v.reason if v.allowed and v.reason != "allowed" else ""
    eg = _side(EGRESS, src, v.egress.allowed_by, policies, always, family)
    ing = _side(INGRESS, dst, v.ingress.allowed_by, policies, always, family)
    return PolicyVerdict(endpoint_text(src, family), endpoint_text(dst, family), port,
                         protocol.lower(), v.allowed, always or v.reason, eg, ing)


def unjudged(src: str, dst: str, port: int | None, protocol: str, why: str) -> PolicyVerdict:
    return PolicyVerdict(src, dst, port, protocol.lower(), None, why)


def verdict_lines(v: PolicyVerdict) -> list[str]:
    """The verdict as ``trace`` prints it under the hops."""
    if v.allowed is None:
        return [f"policy: {v.reason}"]
    lines = [f"policy {v.protocol}/{v.port}: {v.label.upper()} ({v.reason})"]
    for side, where in ((v.egress, "egress at source     "),
                        (v.ingress, "ingress at destination")):
        if side is not None:
            lines.append(f"  {where} {side.endpoint}: {side.text()}")
    return lines
