"""Random NetworkPolicies over the e2e model (namespaces x/y/z, pods a/b/c, ports 80/81),
for checking the compiled table against the evaluator beyond the hand-written cases.
Seeded: a failure names its seed and replays exactly."""

from __future__ import annotations

import random
from typing import Any

from .cases import NAMESPACES, POD_NAMES, pod_ip, policy


def _selector(rng: random.Random, key: str, values: tuple[str, ...]) -> dict[str, Any]:
    kind = rng.choice(["empty", "labels", "in", "notin", "exists", "missing"])
    if kind == "labels":
        return {"matchLabels": {key: rng.choice(values)}}
    if kind in ("in", "notin"):
        return {"matchExpressions": [{"key": key, "operator": "In" if kind == "in" else "NotIn",
                                      "values": rng.sample(values, rng.randint(1, 2))}]}
    if kind == "exists":
        return {"matchExpressions": [{"key": key, "operator": "Exists"}]}
    if kind == "missing":
        return {"matchExpressions": [{"key": "absent", "operator": "DoesNotExist"}]}
    return {}


def _peer(rng: random.Random) -> dict[str, Any]:
    kind = rng.choice(["pod", "ns", "both", "block"])
    if kind == "block":
        ns, name = rng.choice(NAMESPACES), rng.choice(POD_NAMES)
        node = pod_ip(ns, name).packed[2]
        return {"ipBlock": {"cidr": f"10.244.{node}.0/24", "except": [f"{pod_ip(ns, name)}/32"]}}
    out: dict[str, Any] = {}
    if kind in ("pod", "both"):
        out["podSelector"] = _selector(rng, "pod", POD_NAMES)
    if kind in ("ns", "both"):
        out["namespaceSelector"] = _selector(rng, "ns", NAMESPACES)
    return out


def _port(rng: random.Random) -> dict[str, Any]:
    proto = rng.choice(["TCP", "UDP"])
    kind = rng.choice(["number", "range", "named", "proto"])
    out: dict[str, Any] = {"protocol": proto}
    if kind == "number":
        out["port"] = rng.choice([80, 81])
    elif kind == "range":
        out.update(port=rng.choice([79, 80, 81]), endPort=81)
    elif kind == "named":
        out["port"] = f"serve-{rng.choice([80, 81])}-{rng.choice(['tcp', 'udp'])}"
    return out


def _rule(rng: random.Random, peers_field: str) -> dict[str, Any]:
    rule: dict[str, Any] = {}
    if rng.random() < 0.7:
        rule[peers_field] = [_peer(rng) for _ in range(rng.randint(1, 2))]
    if rng.random() < 0.6:
        rule["ports"] = [_port(rng) for _ in range(rng.randint(1, 2))]
    return rule


def random_policy(rng: random.Random, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"podSelector": _selector(rng, "pod", POD_NAMES)}
    types = rng.choice([None, ["Ingress"], ["Egress"], ["Ingress", "Egress"]])
    if types is not None:
        spec["policyTypes"] = types
    if rng.random() < 0.8:
        spec["ingress"] = [_rule(rng, "from") for _ in range(rng.randint(0, 2))]
    if rng.random() < 0.6:
        spec["egress"] = [_rule(rng, "to") for _ in range(rng.randint(0, 2))]
    return policy(name, rng.choice(NAMESPACES), spec)


def random_policies(seed: int, count: int = 3) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [random_policy(rng, f"rand{i}") for i in range(count)]
