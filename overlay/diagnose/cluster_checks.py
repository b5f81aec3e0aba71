"""``overlayctl diagnose``'s cluster-wide checks: facts about the registry as a whole, the
same whichever node runs them (pure: ``gather.read_pods`` does the reading).

``pod-ips-unique``: no two pod records share an IP. The registry makes a duplicate
impossible by construction (each node publishes only what its own IPAM store handed out
from its own subnet, see ``overlay.cluster.pods``); this check is the proof on a live
cluster, and what finds a node whose IPAM store was copied or whose subnet was taken over.

``rejected-objects``: every key under ``policies/``, ``namespaces/``, ``pods/`` and
``nodes/`` that its kind's rule rejects (each node's overlayd logs and counts it once and
never uses it; this names them all in one place, with the command deleting each).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from overlay.cluster.pods import NO_LEASE, PodReason, PodRecord, duplicate_ips
from overlay.diagnose.state import FAIL, PASS, SKIP, WARN, CheckResult
from overlay.lease import Rejection, etcdctl_del, printable_key


@dataclass(frozen=True)
class PodsState:
    """The accepted pod records and the rejected keys; ``error`` when etcd was not read.
    ``rejected_objects``: (key, why) of the keys under ``policies/``, ``namespaces/`` and
    ``nodes/`` that fail their kind's rule (read in the same session)."""
    records: list[PodRecord] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    error: str = ""
    rejected_objects: list[tuple[str, str]] = field(default_factory=list)


MAX_LISTED = 20


def check_rejected_objects(pods: PodsState, endpoints: str = "") -> CheckResult:
    """Every key under policies/, namespaces/, pods/ and nodes/ that overlayd rejects
    (never enforced, never a peer, never shown as a node), why, and the command removing
    it."""
    name = "rejected-objects"
    expected = ("every key under policies/, namespaces/, pods/ and nodes/ is an object "
                "overlayd accepts")
    if pods.error:
        return CheckResult(name, SKIP, expected, f"not read: {pods.error}")
    # a removed node's pods wait for the lease-gone GC (any node's overlayd, within a
    # minute): rejected, but expected for a while
    gone = [r for r in pods.rejected if r.reason == PodReason.IP_OUTSIDE_SUBNET
            and r.detail.endswith(f"({NO_LEASE})")]
    gone_keys = {r.key for r in gone}
    bad = sorted([*pods.rejected_objects, *((r.key, f"{r.reason} ({r.detail})")
                                            for r in pods.rejected if r.key not in gone_keys)])
    waiting = (f"{len(gone)} record(s) of pods whose node's lease is gone, awaiting "
               "removal" if gone else "")
    if not bad:
        if gone:
            return CheckResult(name, WARN, expected, waiting + ": " + ", ".join(
                printable_key(r.key) for r in gone[:MAX_LISTED]),
                "overlayd on the remaining nodes deletes them within a minute of the lease "
                "going; if they stay, `overlayctl nodes delete NODE` removes a node gone "
                "for good with its pods")
        return CheckResult(name, PASS, expected, f"{len(pods.records)} pod record(s); no "
                           "pod, policy, namespace or node record rejected")
    shown = bad[:MAX_LISTED]
    more = f"; and {len(bad) - len(shown)} more" if len(bad) > len(shown) else ""
    found = "; ".join(f"{printable_key(key)}: {why}" for key, why in shown)
    return CheckResult(name, FAIL, expected, f"{len(bad)} rejected key(s): {found}{more}"
                       + (f" ({waiting})" if gone else ""),
                       "find what wrote them (`overlayctl policy get`, `pods -A` and `nodes` "
                       "list them too); if nothing should, delete each: "
                       + "; ".join(etcdctl_del(key, endpoints) for key, _ in shown))


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


def run_cluster_checks(pods: PodsState, endpoints: str = "") -> list[CheckResult]:
    return [check_pod_ips_unique(pods), check_rejected_objects(pods, endpoints)]
