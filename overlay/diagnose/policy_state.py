"""The NetworkPolicy state in etcd as overlayd judges it, for ``trace`` and ``diagnose``.

One read of ``policies/``, ``namespaces/`` and ``pods/``, each key through its kind's one
rule, pods judged against the accepted leases and node records exactly as the daemon's
agent does (``rules_with_nodes``: a record is believed only inside the
subnet of the node it names), so what these commands explain or expect is what the nodes
enforce. Rejected keys are kept (counted and named by the callers), never used.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

from overlay.cluster.pods import PodRecord, split_ambiguous
from overlay.diagnose.state import ClusterState
from overlay.errors import OverlayError
from overlay.lease import Rejection
from overlay.policy.model import NetworkPolicy
from overlay.policy.objects import Namespace, Rejected
from overlay.subnet.etcdconf import EtcdOptions

log = logging.getLogger(__name__)


@dataclass
class PolicyState:
    policies: list[NetworkPolicy] = field(default_factory=list)
    namespaces: list[Namespace] = field(default_factory=list)
    records: list[PodRecord] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)  # policies/, namespaces/
    rejected_pods: list[Rejection] = field(default_factory=list)
    error: str = ""  # etcd was not read

    def unambiguous(self) -> list[PodRecord]:
        """The records no other record shares an IP with: the pods every node's table
        holds (``overlay.policy.build.assemble`` believes neither of two claims)."""
        return split_ambiguous(self.records)[0]

    @property
    def namespace_labels(self) -> dict[str, dict[str, str]]:
        return {n.name: dict(n.labels) for n in self.namespaces}


def gather_policy(opts: EtcdOptions, cluster: ClusterState, timeout: float = 3.0
                  ) -> PolicyState:
    """The judged policies, namespaces and pods (``error`` set when etcd failed)."""
    if not cluster.available:
        return PolicyState(error=cluster.error or "no network config in etcd")
    from overlay.cluster.keys import pods_prefix
    from overlay.cluster.nodestore import read_nodes
    from overlay.cluster.pods import judge_pods, list_pod_kvs, rules_with_nodes
    from overlay.cluster.store import ObjectStore
    from overlay.policy.objects import list_namespaces, list_policies
    from overlay.subnet.registry import EtcdRegistry

    try:
        with EtcdRegistry(replace(opts, timeout=min(opts.timeout, timeout))) as reg:
            store = ObjectStore(reg)
            policies, bad_policies = list_policies(store)
            namespaces, bad_namespaces = list_namespaces(store)
            kvs, _ = list_pod_kvs(store)
            nodes = read_nodes(store, {lease.subnet: lease for lease in cluster.leases})
    except OverlayError as e:
        log.info("etcd unavailable for the policy state: %s", e)
        return PolicyState(error=str(e))
    rules = rules_with_nodes(cluster.config, cluster.leases,
                             (st.record for st in nodes.statuses))
    records, bad_pods = judge_pods(kvs, pods_prefix(store.prefix), rules)
    return PolicyState(policies, namespaces, records, bad_policies + bad_namespaces, bad_pods)
