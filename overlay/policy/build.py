"""The inputs one node's policy table is compiled from, assembled from judged objects.

Pure: the judged policies, namespaces and pod records go in, and :class:`Inputs` comes
out, with this node's own pods (``local``: its name, IPs inside its subnet) beside every
pod of the cluster (a dual-stack pod's IPv6 addresses inside the node's IPv6 subnet).
overlayd's agent (``overlay.daemon.policyagent``) and ``overlayctl
diagnose``'s ``policy-table`` check both assemble through :func:`assemble`, so the table
the check expects is the one the daemon loads from the same etcd state.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv6Network

from overlay.cluster.pods import PodRecord
from overlay.lease import IPNetwork
from overlay.netlink.pod import host_veth_name
from overlay.policy import nft
from overlay.policy.model import NetworkPolicy
from overlay.policy.objects import Namespace
from overlay.policy.semantics import Pod


@dataclass
class Inputs:
    """The judged objects one table is compiled from."""
    policies: list[NetworkPolicy] = field(default_factory=list)
    namespaces: dict[str, Mapping[str, str]] = field(default_factory=dict)
    pods: list[Pod] = field(default_factory=list)
    local: list[nft.LocalPod] = field(default_factory=list)


def pod_of(record: PodRecord) -> Pod:
    """The registry's record as the policy code's pod (named ports only)."""
    return Pod(record.namespace, record.name, tuple(record.ips), record.label_values(),
               tuple(p for p in record.ports if p.name),
               record.node)


def is_local(record: PodRecord, node: str, subnet: IPNetwork | None,
             ipv6_subnet: IPv6Network | None = None) -> bool:
    """A pod of this node: its name, and its addresses of ``subnet``'s family (the
    node's own lease: IPv4, or IPv6 in an IPv6-only network; at least one) inside it, a
    dual-stack pod's IPv6 ones inside ``ipv6_subnet`` (None: the pod rule, ``judge_pod``,
    already tied them to the lease holding the IPv4 ones)."""
    if record.node != node or subnet is None:
        return False
    own = [ip for ip in record.ips if ip.version == subnet.version]
    other = [ip for ip in record.ips if ip.version != subnet.version]
    return bool(own) and all(ip in subnet for ip in own) and (
        ipv6_subnet is None or all(ip in ipv6_subnet for ip in other))


def assemble(policies: Iterable[NetworkPolicy], namespaces: Iterable[Namespace],
             records: Iterable[PodRecord], node: str, subnet: IPNetwork | None,
             ipv6_subnet: IPv6Network | None = None) -> Inputs:
    """The inputs of node ``node`` (own subnets ``subnet``, ``ipv6_subnet``) from judged
    objects."""
    out = Inputs(policies=list(policies),
                 namespaces={n.name: n.labels for n in namespaces})
    for r in records:
        pod = pod_of(r)
        out.pods.append(pod)
        if is_local(r, node, subnet, ipv6_subnet):
            out.local.append(nft.LocalPod(pod, host_veth_name(r.container_id, r.ifname)))
    return out
