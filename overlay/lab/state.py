"""The lab's record of what it made (``lab.json``), written before each part is made.

``down`` and ``remove-node`` act only on names found here, so a lab never removes
something it did not create.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from overlay.lab.spec import (
    DEFAULT_NAMESPACE,
    MAX_PODS_PER_NODE,
    LabError,
    check_families,
    check_namespace,
    check_pod_name,
    node_index,
    pod_key,
)
from overlay.util.fsutil import atomic_write


@dataclass
class PodRecord:
    name: str
    node: str
    container_id: str
    ip: str | None = None      # the pod's first address (IPv4 in a dual-stack lab)
    result: dict[str, Any] | None = None
    namespace: str = DEFAULT_NAMESPACE
    labels: dict[str, str] = field(default_factory=dict)
    # False for a pod made by ``pod add``: ``up`` repairs it but never counts it.
    counted: bool = True
    ip6: str | None = None     # its IPv6 address (a dual-stack or IPv6-only lab)

    def address(self, family: int) -> str | None:
        """The pod's address of IP version ``family`` (4 or 6), if it has one."""
        if family == 6:
            return self.ip6
        return self.ip if self.ip is not None and ":" not in self.ip else None

    @property
    def key(self) -> str:
        """The pod's key in :attr:`LabState.pods` (see :func:`overlay.lab.spec.pod_key`)."""
        return pod_key(self.namespace, self.name)

    @property
    def ref(self) -> str:
        """``NS/NAME``, as the pod registry and ``overlayctl pods`` name it."""
        return f"{self.namespace}/{self.name}"

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> PodRecord:
        pod = cls(**raw)
        check_pod_name(pod.name)
        check_namespace(pod.namespace)
        if not isinstance(pod.labels, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in pod.labels.items()):
            raise ValueError(f"pod {pod.name}: labels must map strings to strings")
        node_index(pod.node)
        return pod


@dataclass
class LabState:
    prefix: str
    pods_per_node: int
    nodes: list[str] = field(default_factory=list)
    pods: dict[str, PodRecord] = field(default_factory=dict)
    # Nodes made by ``add-node --pods N``: their own pod count, which ``up`` keeps.
    node_pods: dict[str, int] = field(default_factory=dict)
    # The pod network's families (spec.FAMILIES); chosen by the first ``up``.
    families: str = "ipv4"
    # Nodes of a dual-stack lab made with no IPv6 underlay address (``add-node --no-ipv6``).
    no_ipv6: list[str] = field(default_factory=list)

    def has_ipv4(self) -> bool:
        return self.families != "ipv6"

    def has_ipv6(self) -> bool:
        return self.families != "ipv4"

    def node_has_ipv6(self, node: str) -> bool:
        """Does ``node``'s underlay carry IPv6 (a dual-stack or IPv6-only lab's node made
        without ``--no-ipv6``)?"""
        return self.has_ipv6() and node not in self.no_ipv6

    def families_list(self) -> list[int]:
        """The IP versions of the pod network, 4 first."""
        return [f for f, on in ((4, self.has_ipv4()), (6, self.has_ipv6())) if on]

    def add_node(self, node: str, pods: int | None = None) -> None:
        if node not in self.nodes:
            self.nodes.append(node)
            self.nodes.sort(key=node_index)
        if pods is not None:
            self.node_pods[node] = pods

    def drop_node(self, node: str) -> None:
        self.nodes.remove(node)
        self.node_pods.pop(node, None)
        if node in self.no_ipv6:
            self.no_ipv6.remove(node)

    def pods_wanted(self, node: str) -> int:
        """How many pods ``node`` should have: what add-node asked for, else the lab's."""
        return self.node_pods.get(node, self.pods_per_node)

    def pods_of(self, node: str) -> list[PodRecord]:
        return sorted((p for p in self.pods.values() if p.node == node), key=lambda p: p.key)

    def to_json(self) -> str:
        return json.dumps({"prefix": self.prefix, "pods_per_node": self.pods_per_node,
                           "nodes": self.nodes, "node_pods": self.node_pods,
                           "families": self.families, "no_ipv6": self.no_ipv6,
                           "pods": [asdict(p) for p in sorted(self.pods.values(),
                                                              key=lambda p: p.key)]},
                          indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str) -> LabState:
        try:
            raw = json.loads(text)
            pods = {pod.key: pod for pod in map(PodRecord.from_dict, raw.get("pods", []))}
            node_pods = {str(n): int(c) for n, c in raw.get("node_pods", {}).items()}
            state = cls(raw["prefix"], int(raw["pods_per_node"]), list(raw["nodes"]), pods,
                        node_pods, check_families(str(raw.get("families", "ipv4"))),
                        [str(n) for n in raw.get("no_ipv6", [])])
            if set(state.no_ipv6) - set(state.nodes):
                raise ValueError(f"no_ipv6 names nodes not in the lab: "
                                 f"{sorted(set(state.no_ipv6) - set(state.nodes))}")
            for n in state.nodes:
                node_index(n)
            if any(not 0 <= c <= MAX_PODS_PER_NODE for c in node_pods.values()):
                raise ValueError(f"node_pods counts out of range 0..{MAX_PODS_PER_NODE}")
            if set(node_pods) - set(state.nodes):
                raise ValueError(f"node_pods names nodes not in the lab: "
                                 f"{sorted(set(node_pods) - set(state.nodes))}")
        except (ValueError, KeyError, TypeError, AttributeError, LabError) as e:
            raise LabError(f"{source} is damaged ({e}); remove the lab's namespaces with "
                           "`ip netns delete` and the directory by hand") from e
        return state


def load_state(path: str) -> LabState | None:
    try:
        with open(path) as f:
            return LabState.from_json(f.read(), path)
    except FileNotFoundError:
        return None


def save_state(path: str, state: LabState) -> None:
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    atomic_write(path, state.to_json(), mode=0o644)
