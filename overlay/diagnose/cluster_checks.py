"""``overlayctl diagnose``'s cluster-wide checks: facts about the registry as a whole, the
same whichever node runs them (pure: ``gather.read_pods`` does the reading).

``pod-ips-unique``: no two pod records share an IP. The registry makes a duplicate
impossible by construction (each node publishes only what its own IPAM store handed out
from its own subnet, see ``overlay.cluster.pods``); this check is the proof on a live
cluster, and what finds a node whose IPAM store was copied or whose subnet was taken over.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from overlay.cluster.pods import PodRecord, duplicate_ips
from overlay.diagnose.state import FAIL, PASS, SKIP, CheckResult
from overlay.lease import Rejection


@dataclass(frozen=True)
class PodsState:
    """The accepted pod records and the rejected keys; ``error`` when etcd was not read."""
    records: list[PodRecord] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    error: str = ""


def check_pod_ips_unique(pods: PodsState) -> CheckResult:
    name, expected = "pod-ips-unique", "no two pod records share an IP"
    if pods.error:
        return CheckResult(name, SKIP, expected, f"pod registry not read: {pods.error}")
    ignored = f"; {len(pods.rejected)} rejected record(s) ignored" if pods.rejected else ""
    dup = duplicate_ips(pods.records)
    if not dup:
        return CheckResult(name, PASS, expected,
                           f"{len(pods.records)} pod(s), every IP held once{ignored}")
    shown = "; ".join(f"{ip}: " + ", ".join(f"{r.namespace}/{r.name} on {r.node}" for r in rs)
                      for ip, rs in sorted(dup.items(),
                                           key=lambda kv: (kv[0].version, int(kv[0])))[:5])
    return CheckResult(name, FAIL, expected, f"{len(dup)} IP(s) held by several pods: {shown}",
                       "each node publishes what its IPAM store holds: look for a copied "
                       "CNI data dir or two nodes on one subnet (`overlayctl leases list`)")


def run_cluster_checks(pods: PodsState) -> list[CheckResult]:
    return [check_pod_ips_unique(pods)]
