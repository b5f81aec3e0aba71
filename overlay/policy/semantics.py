"""Kubernetes' NetworkPolicy semantics as a pure function: is this connection allowed?

This is the oracle the nftables compiler (``overlay.policy.nft``) is tested against, and
what ``trace`` will explain a verdict with. The rules, from the API reference:

* A pod is *isolated* for ingress (egress) once any policy whose ``policyTypes`` holds
  Ingress (Egress) selects it; a pod no policy isolates allows everything that way.
* An isolated pod allows the union of the rules of every policy isolating it.
* A connection needs egress allowed at its source *and* ingress at its destination.
* A peer with a namespaceSelector and a podSelector needs both; a peer with only a
  podSelector means the policy's own namespace; the peers of a rule are alternatives;
  ``from``/``to`` absent or empty is every peer; an ipBlock is its CIDR minus its excepts.
* A rule's ports default to all; a named port resolves on the destination pod.
* Traffic between a pod and its own node, and a pod's traffic to itself, is always allowed.
  Replies of an allowed connection are allowed (conntrack, in the data plane).
* A connection is of one IP family: a dual-stack pod is known by its address of that
  family, so an ipBlock (one family, as in Kubernetes) never matches the other family's
  connections, while selectors match the pod whatever the family.

Pods are the minimal local :class:`Pod` (the registry's PodRecord carries these fields).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from overlay.cluster.pods import Port
from overlay.policy.model import (
    EGRESS,
    INGRESS,
    IPAddress,
    NetworkPolicy,
    Peer,
    PolicyPort,
    Rule,
)

# Kubernetes labels every namespace with its own name (since 1.21).
NAME_LABEL = "kubernetes.io/metadata.name"


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    ips: tuple[IPAddress, ...]
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    ports: tuple[Port, ...] = ()  # the registry's: named ports resolve on them
    node: str = ""

    @property
    def ip(self) -> IPAddress:
        """The pod's first address (a dual-stack pod's IPv4 one)."""
        return self.ips[0]

    def address(self, family: int) -> IPAddress | None:
        """The pod's address of IP version ``family`` (4 or 6), None if it has none."""
        return next((ip for ip in self.ips if ip.version == family), None)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def named_port(self, name: str, protocol: str) -> int | None:
        return next((p.port for p in self.ports if p.name == name and p.protocol == protocol),
                    None)


@dataclass(frozen=True)
class Host:
    """An address that is no pod: ``node`` names the node when it is one of theirs."""
    ip: IPAddress
    node: str = ""


Endpoint = Pod | Host
Namespaces = Mapping[str, Mapping[str, str]]


@dataclass(frozen=True)
class Decision:
    """One direction at one pod: isolated or not, and the policies that allow it."""
    isolated: bool
    allowed_by: tuple[str, ...] = ()

    @property
    def allowed(self) -> bool:
        return not self.isolated or bool(self.allowed_by)


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str
    egress: Decision = Decision(False)
    ingress: Decision = Decision(False)


def namespace_labels(namespaces: Namespaces, ns: str) -> dict[str, str]:
    """A namespace's labels, with the automatic ``kubernetes.io/metadata.name``."""
    return {**namespaces.get(ns, {}), NAME_LABEL: ns}


def selects(policy: NetworkPolicy, pod: Pod) -> bool:
    return policy.namespace == pod.namespace and policy.pod_selector.matches(pod.labels)


def isolating(policies: Iterable[NetworkPolicy], pod: Pod, direction: str
              ) -> list[NetworkPolicy]:
    """The policies of ``direction`` selecting ``pod`` (non-empty: it is isolated)."""
    return [p for p in policies if direction in p.policy_types and selects(p, pod)]


def peer_matches(peer: Peer, policy_ns: str, other: Endpoint, namespaces: Namespaces,
                 family: int | None = None) -> bool:
    """Whether ``other`` (the far end) is this peer of a policy of ``policy_ns``, on a
    connection of IP version ``family`` (None: ``other``'s first address's)."""
    if peer.ip_block is not None:
        ip = other.address(family) if isinstance(other, Pod) and family else other.ip
        return ip is not None and peer.ip_block.contains(ip)
    if not isinstance(other, Pod):
        return False  # selectors name pods only
    if peer.namespace_selector is None:
        in_ns = other.namespace == policy_ns
    else:
        in_ns = peer.namespace_selector.matches(namespace_labels(namespaces, other.namespace))
    return in_ns and (peer.pod_selector is None or peer.pod_selector.matches(other.labels))


def port_matches(ports: Sequence[PolicyPort], port: int | None, protocol: str,
                 dst: Endpoint) -> bool:
    """Whether (``protocol``, ``port``) at ``dst`` is one of a rule's ports."""
    if not ports:
        return True
    for p in ports:
        if p.protocol != protocol:
            continue
        if p.port is None:
            return True
        if port is None:
            continue
        if isinstance(p.port, str):
            if isinstance(dst, Pod) and dst.named_port(p.port, protocol) == port:
                return True
        elif p.port <= port <= (p.end_port or p.port):
            return True
    return False


def rule_matches(rule: Rule, policy_ns: str, other: Endpoint, dst: Endpoint, port: int | None,
                 protocol: str, namespaces: Namespaces, family: int | None = None) -> bool:
    peers_ok = rule.peers is None or any(peer_matches(peer, policy_ns, other, namespaces, family)
                                         for peer in rule.peers)
    return peers_ok and port_matches(rule.ports, port, protocol, dst)


def _decide(pod: Pod, direction: str, other: Endpoint, dst: Endpoint, port: int | None,
            protocol: str, namespaces: Namespaces, policies: Sequence[NetworkPolicy],
            family: int) -> Decision:
    chosen = isolating(policies, pod, direction)
    if not chosen:
        return Decision(False)
    allowing = tuple(p.ref for p in chosen
                     if any(rule_matches(r, p.namespace, other, dst, port, protocol, namespaces,
                                         family)
                            for r in (p.ingress if direction == INGRESS else p.egress)))
    return Decision(True, allowing)


def _always_allowed(src: Endpoint, dst: Endpoint) -> str:
    # the same pod: two containers may share a name, never their addresses
    if isinstance(src, Pod) and isinstance(dst, Pod) and (
            src.ref == dst.ref and src.ips == dst.ips):
        return "a pod's traffic to itself"
    pod, host = (src, dst) if isinstance(src, Pod) else (dst, src)
    if isinstance(pod, Pod) and isinstance(host, Host) and host.node and host.node == pod.node:
        return "traffic between a pod and its own node"
    return ""


def connection_family(src: Endpoint, dst: Endpoint) -> int:
    """A connection's IP version: a host end's address says it, else the source pod's
    first address."""
    host = next((e for e in (src, dst) if isinstance(e, Host)), None)
    return (host or src).ip.version


def decide(src: Endpoint, dst: Endpoint, port: int | None, protocol: str,
           namespaces: Namespaces, policies: Sequence[NetworkPolicy],
           family: int | None = None) -> Verdict:
    """The verdict on a new connection from ``src`` to ``dst`` (``port`` None for a
    protocol without ports) over IP version ``family`` (None: :func:`connection_family`),
    and why."""
    if why := _always_allowed(src, dst):
        return Verdict(True, why)
    fam = family or connection_family(src, dst)
    eg = (_decide(src, EGRESS, dst, dst, port, protocol, namespaces, policies, fam)
          if isinstance(src, Pod) else Decision(False))
    ing = (_decide(dst, INGRESS, src, dst, port, protocol, namespaces, policies, fam)
           if isinstance(dst, Pod) else Decision(False))
    if not eg.allowed:
        return Verdict(False, "no policy allows egress from the source", eg, ing)
    if not ing.allowed:
        return Verdict(False, "no policy allows ingress to the destination", eg, ing)
    return Verdict(True, "allowed", eg, ing)


def allowed(src: Endpoint, dst: Endpoint, port: int | None, protocol: str,
            pods: Sequence[Pod], namespaces: Namespaces,
            policies: Sequence[NetworkPolicy]) -> bool:
    """Whether a new connection ``src`` -> ``dst`` on (``protocol``, ``port``) is allowed.

    ``pods`` is the cluster's pods: a :class:`Host` whose address is a pod's is judged
    as that pod (a peer is known by its address on the wire, which says the family)."""
    family = connection_family(src, dst)
    by_ip = {ip: p for p in pods for ip in p.ips}
    src = by_ip.get(src.ip, src) if isinstance(src, Host) else src
    dst = by_ip.get(dst.ip, dst) if isinstance(dst, Host) else dst
    return decide(src, dst, port, protocol, namespaces, policies, family).allowed
