"""The inputs one node's policy table is compiled from, assembled from judged objects.

Pure: the judged policies, namespaces and pod records, and this node's attachments as
its disk holds them, go in, and :class:`Inputs` comes out, with this node's own pods
(``local``: the attachments, never etcd's word for them) beside every pod of the cluster.
overlayd's agent (``overlay.daemon.policyagent``) and ``overlayctl
diagnose``'s ``policy-table`` check both assemble through :func:`assemble`, so the table
the check expects is the one the daemon loads from the same etcd state.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv6Network

from overlay.cluster.pods import PodRecord, split_ambiguous
from overlay.cni.attachments import LocalPod as Attachment
from overlay.lease import IPNetwork
from overlay.netlink.pod import host_veth_name
from overlay.policy import nft
from overlay.policy.model import EGRESS, INGRESS, LabelSelector, NetworkPolicy
from overlay.policy.objects import Namespace
from overlay.policy.semantics import Pod


@dataclass
class Inputs:
    """The judged objects one table is compiled from."""
    policies: list[NetworkPolicy] = field(default_factory=list)
    namespaces: dict[str, Mapping[str, str]] = field(default_factory=dict)
    pods: list[Pod] = field(default_factory=list)
    local: list[nft.LocalPod] = field(default_factory=list)
    # the local pods' veths that stand for more than one interface (each interface's
    # DEL takes only its own addresses: only a compile can say what stays)
    spanning: set[str] = field(default_factory=set)
    # accepted records not believed (an IP another record holds too): record, why
    dropped: list[tuple[PodRecord, str]] = field(default_factory=list)


def pod_of(record: PodRecord) -> Pod:
    """The registry's record as the policy code's pod (named ports only)."""
    return Pod(record.namespace, record.name, tuple(record.ips), record.label_values(),
               tuple(p for p in record.ports if p.name),
               record.node)


# Where a local pod of unknown identity (its metadata file missing or unusable) stands:
# no namespace, policy or record can be named so (DNS-1123 names only), so no policy of
# the cluster selects it, and QUARANTINE, isolating both ways with no rule, holds it.
UNKNOWN_NAMESPACE = "(identity-unknown)"
QUARANTINE = NetworkPolicy(
    UNKNOWN_NAMESPACE, "quarantine", LabelSelector(), frozenset({INGRESS, EGRESS}),
    source=json.dumps({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                       "metadata": {"name": "quarantine", "namespace": UNKNOWN_NAMESPACE},
                       "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}}))


def local_pod_of(att: Attachment, record: PodRecord | None, node: str) -> Pod:
    """The pod of one attachment on this node's disk: its name and IPs from the disk;
    its labels and named ports from the registry's record when that record is this
    attachment's (same name, container and IPs: an operator's ``pods label`` lives
    there), else the metadata file's. Of unknown identity, it is in
    ``UNKNOWN_NAMESPACE``, without labels, whatever etcd says."""
    if not att.identity_known:
        return Pod(UNKNOWN_NAMESPACE, att.container_id, att.ips, {}, (), node)
    ident = att.identity
    if record is not None and _is_record_of(record, att):
        return pod_of(record)
    return Pod(ident.namespace, ident.name, att.ips, dict(ident.labels),
               tuple(p for p in ident.ports if p.name), node)


def _is_record_of(record: PodRecord, att: Attachment) -> bool:
    return (record.namespace, record.name, record.container_id, tuple(record.ips)) == (
        att.identity.namespace, att.identity.name, att.container_id, att.ips)


def assemble(policies: Iterable[NetworkPolicy], namespaces: Iterable[Namespace],
             records: Iterable[PodRecord], node: str, subnet: IPNetwork | None,
             ipv6_subnet: IPv6Network | None = None, *,
             attached: Mapping[str, Attachment]) -> Inputs:
    """The inputs of node ``node`` (own subnets ``subnet``, ``ipv6_subnet``) from judged
    objects and the node's attachments on its own disk (``attached``, by container ID).

    Any node can write etcd, so the registry does not say which pods are this node's:
    the local pods (what the table isolates, and each veth's source check) are the
    attachments, and a record with an address in this node's subnets stands for nothing
    but its attachment's labels. Of the other records, every one holding an IP that
    another also holds is dropped (in ``dropped``): which is true is not known, and
    believing either could widen what a policy allows. While any policy is in force, a
    local pod of unknown identity is isolated both ways (``QUARANTINE``, added to the
    policies): which policies would select it is not known."""
    out = Inputs(policies=list(policies),
                 namespaces={n.name: n.labels for n in namespaces})
    own = [s for s in (subnet, ipv6_subnet) if s is not None]
    mine: dict[str, PodRecord] = {}
    remote: list[PodRecord] = []
    for r in records:
        if any(ip in s for s in own for ip in r.ips):
            att = attached.get(r.container_id) if r.node == node else None
            if att is not None and _is_record_of(r, att):  # (one key holds that name)
                mine[r.container_id] = r
        else:
            remote.append(r)
    kept, out.dropped = split_ambiguous(remote)
    out.pods.extend(pod_of(r) for r in kept)
    for cid in sorted(attached):
        # every attachment, even a second container under a name another holds (a
        # sandbox recreated before its old one's DEL): the publisher publishes only the
        # first, but each is a pod here, isolated and source-checked by its own veth
        att = attached[cid]
        pod = local_pod_of(att, mine.get(cid), node)
        out.pods.append(pod)
        out.local.append(nft.LocalPod(pod, host_veth_name(cid, att.ifname)))
        if att.interfaces > 1:
            out.spanning.add(out.local[-1].ifname)
    if out.policies and any(not att.identity_known for att in attached.values()):
        out.policies.append(QUARANTINE)
    return out
