"""Namespaces and NetworkPolicies in etcd, each kind with its one validation rule.

::

    <prefix>/namespaces/<ns>          {"apiVersion":"v1","kind":"Namespace","metadata":
                                        {"name":"<ns>","labels":{..., "kubernetes.io/
                                        metadata.name":"<ns>"}}}
    <prefix>/policies/<ns>/<name>     the networking.k8s.io/v1 NetworkPolicy object itself

Any node can write etcd, so every object read back passes :func:`parse_namespace_kv` or
:func:`parse_policy_kv` (key segments by ``overlay.cluster.keys``, a bounded value, the
object's own rule, and the key agreeing with the object's names); a bad one is rejected
alone, with its reason, and a rejected policy never becomes a rule. Writes are the
ObjectStore's create or compare-and-swap replace.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from overlay.cluster import keys
from overlay.cluster.schema import read_schema
from overlay.cluster.store import KV, MAX_OBJECT_BYTES, ObjectStore
from overlay.errors import ConfigError, RegistryError
from overlay.policy.model import (
    DEFAULT_NAMESPACE,
    NetworkPolicy,
    PolicyError,
    parse_labels,
    parse_policy,
    shown,
)
from overlay.policy.semantics import NAME_LABEL
from overlay.util import jsontext

log = logging.getLogger(__name__)
T = TypeVar("T")

CREATED, CONFIGURED, UNCHANGED = "created", "configured", "unchanged"
_RETRIES = 5  # compare-and-swap races lost to another writer


@dataclass(frozen=True)
class Namespace:
    name: str
    labels: Mapping[str, str]
    mod_revision: int = 0

    def to_json(self) -> bytes:
        return json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {
            "name": self.name, "labels": dict(sorted(self.labels.items()))}},
            separators=(",", ":")).encode()


class NamespaceNotFound(ConfigError):
    """What the API server answers for an object in a namespace nobody created."""

    def __init__(self, name: str):
        super().__init__(f'namespaces "{name}" not found (create it first: '
                         f'overlayctl namespaces create {name})')
        self.name = name


@dataclass(frozen=True)
class Rejected:
    """An object under namespaces/ or policies/ that failed its rule."""
    key: str
    reason: str


def new_namespace(name: str, labels: Mapping[str, str] | None = None) -> Namespace:
    """A namespace carrying the automatic ``kubernetes.io/metadata.name`` label."""
    if problem := keys.dns_label_problem(name):
        raise ConfigError(f"namespace {shown(name)} {problem}")
    return Namespace(name, {**(labels or {}), NAME_LABEL: name})


def _decode(kv: KV) -> object:
    if len(kv.value) > MAX_OBJECT_BYTES:
        raise PolicyError(f"value is {len(kv.value)} bytes (at most {MAX_OBJECT_BYTES})")
    try:
        return jsontext.loads(kv.value)
    except ValueError as e:
        raise PolicyError(f"value is not JSON: {e}") from None


def parse_namespace_kv(prefix: str, kv: KV) -> Namespace:
    """The one rule for ``namespaces/<ns>``; PolicyError says why not."""
    name = kv.key.removeprefix(keys.namespaces_prefix(prefix))
    if not kv.key.startswith(keys.namespaces_prefix(prefix)) or keys.dns_label_problem(name):
        raise PolicyError("key is not namespaces/<DNS-1123 label>")
    obj = _decode(kv)
    if not isinstance(obj, dict) or obj.get("apiVersion") != "v1" or \
            obj.get("kind") != "Namespace" or set(obj) - {"apiVersion", "kind", "metadata"}:
        raise PolicyError("value is not a v1 Namespace")
    meta = obj.get("metadata")
    if not isinstance(meta, dict) or set(meta) - {"name", "labels"} or meta.get("name") != name:
        raise PolicyError("metadata must hold name (the key's) and labels only")
    labels = parse_labels(meta.get("labels"), "metadata.labels")
    if labels.get(NAME_LABEL, name) != name:
        raise PolicyError(f"label {NAME_LABEL} must be the namespace's name")
    return Namespace(name, {**labels, NAME_LABEL: name}, kv.mod_revision)


def parse_policy_kv(prefix: str, kv: KV) -> NetworkPolicy:
    """The one rule for ``policies/<ns>/<name>``; PolicyError says why not."""
    split = keys.split_namespaced(kv.key, keys.policies_prefix(prefix))
    if split is None:
        raise PolicyError("key is not policies/<namespace>/<name>")
    policy = parse_policy(_decode(kv), default_namespace="")
    if (policy.namespace, policy.name) != split:
        raise PolicyError(f"the object is {policy.ref}, not the key's {'/'.join(split)}")
    return policy


def _list_judged(store: ObjectStore, base: str, parse: Callable[[str, KV], T]
                 ) -> tuple[list[T], list[Rejected]]:
    """Every key under ``base`` through its kind's rule ``parse``: the good, the rejected."""
    kvs, _ = store.list(base)
    good, bad = [], []
    for kv in kvs:
        try:
            good.append(parse(store.prefix, kv))
        except PolicyError as e:
            bad.append(Rejected(kv.key, str(e)))
    return good, bad


def list_namespaces(store: ObjectStore) -> tuple[list[Namespace], list[Rejected]]:
    good, bad = _list_judged(store, keys.namespaces_prefix(store.prefix), parse_namespace_kv)
    return sorted(good, key=lambda n: n.name), bad


def implicit_namespaces(store: ObjectStore, created: Iterable[Namespace]) -> list[Namespace]:
    """The namespaces that exist without an object under ``namespaces/`` (see
    :func:`namespace_exists`): ``default`` and those holding a pod of the registry, each
    with only its automatic label, as the policy agent judges them."""
    from overlay.cluster.pods import decodable_records, list_pod_kvs

    kvs, _ = list_pod_kvs(store)
    names = {DEFAULT_NAMESPACE} | {r.namespace for _, r in decodable_records(kvs)}
    names -= {n.name for n in created}
    return [new_namespace(n) for n in sorted(names) if not keys.dns_label_problem(n)]


def list_policies(store: ObjectStore, namespace: str | None = None
                  ) -> tuple[list[NetworkPolicy], list[Rejected]]:
    good, bad = _list_judged(store, keys.policies_prefix(store.prefix, namespace),
                             parse_policy_kv)
    return sorted(good, key=lambda p: p.ref), bad


def check_writable(store: ObjectStore) -> None:
    """Refuse to write when etcd records a schema this release does not know."""
    if store.get(keys.schema_key(store.prefix)) is not None:
        status = read_schema(store)
        if not status.writable:
            raise RegistryError(status.problem)


def get_namespace(store: ObjectStore, name: str) -> Namespace | None:
    kv = store.get(keys.namespace_key(store.prefix, name))
    return None if kv is None else parse_namespace_kv(store.prefix, kv)


def namespace_has_pods(store: ObjectStore, name: str) -> bool:
    """Whether a pod record of the registry is in ``name`` (one that decodes: a stray key
    under ``pods/<name>/`` makes no namespace)."""
    from overlay.cluster.pods import decodable_records, list_pod_kvs

    kvs, _ = list_pod_kvs(store, name)
    return any(r.namespace == name for _, r in decodable_records(kvs))


def namespace_exists(store: ObjectStore, name: str) -> bool:
    """A namespace exists once created (``namespaces create``, or the implicit
    ``default``) or while a pod of the registry is in it (kubelet's and the lab's pods)."""
    return (name == DEFAULT_NAMESPACE or store.get(keys.namespace_key(store.prefix, name))
            is not None or namespace_has_pods(store, name))


def require_namespaces(store: ObjectStore, names: Iterable[str]) -> None:
    """Refuse, as the API server does, when any of ``names`` does not exist."""
    for name in sorted(set(names)):
        if not namespace_exists(store, name):
            raise NamespaceNotFound(name)


def create_namespace(store: ObjectStore, name: str, labels: Mapping[str, str]
                     ) -> Namespace | None:
    """Create ``namespaces/<name>`` with ``labels``; None if it is there already."""
    check_label_change(labels, ())
    ns = new_namespace(name, labels)
    if not store.create(keys.namespace_key(store.prefix, name), ns.to_json())[0]:
        return None
    log.info("namespace %s created: %s", name, dict(ns.labels))
    return ns


def delete_namespace(store: ObjectStore, name: str) -> list[str] | None:
    """Delete ``name`` and its policies, as ``kubectl delete namespace`` removes what is in
    it: the object first (so no policy is applied into it meanwhile), then each policy.
    The refs of the policies deleted, or None when there was no namespace object and no
    policy. Pods stay: their runtime removes them."""
    gone = store.delete(keys.namespace_key(store.prefix, name))
    kvs, _ = store.list(keys.policies_prefix(store.prefix, name))
    deleted = []
    for kv in kvs:
        if store.delete(kv.key, kv.mod_revision):
            deleted.append(kv.key.removeprefix(keys.policies_prefix(store.prefix)))
    if not gone and not deleted:
        return None
    log.info("namespace %s deleted with %d policies", name, len(deleted))
    return deleted


def ensure_namespace(store: ObjectStore, name: str) -> bool:
    """Create ``namespaces/<name>`` with its automatic label if absent; True if created."""
    created, _ = store.create(keys.namespace_key(store.prefix, name),
                              new_namespace(name).to_json())
    if created:
        log.info("namespace %s created", name)
    return created


def check_label_change(set_labels: Mapping[str, str], remove: Iterable[str]) -> None:
    if NAME_LABEL in set_labels or NAME_LABEL in remove:
        raise ConfigError(f"label {NAME_LABEL} is set automatically and cannot be changed")


def label_namespace(store: ObjectStore, name: str, set_labels: Mapping[str, str],
                    remove: list[str], overwrite: bool = False) -> Namespace:
    """Add, change (only with ``overwrite``, as kubectl) or remove labels, by
    compare-and-swap; a namespace that exists only by its pods gets its object now."""
    check_label_change(set_labels, remove)
    key = keys.namespace_key(store.prefix, name)
    for _ in range(_RETRIES):
        kv = store.get(key)
        current = new_namespace(name) if kv is None else parse_namespace_kv(store.prefix, kv)
        clash = [k for k, v in set_labels.items()
                 if k in current.labels and current.labels[k] != v]
        if clash and not overwrite:
            raise ConfigError(f"namespace {name} already has a value for label "
                              f"{clash[0]} ({current.labels[clash[0]]!r}); use --overwrite")
        labels = {k: v for k, v in current.labels.items() if k not in remove}
        updated = Namespace(name, {**labels, **set_labels})
        ok = (store.create(key, updated.to_json())[0] if kv is None
              else store.replace(key, updated.to_json(), kv.mod_revision))
        if ok:
            log.info("namespace %s labels: %s", name, dict(updated.labels))
            return updated
    raise RegistryError(f"namespace {name} kept changing under us; try again")


def check_storable(policy: NetworkPolicy) -> None:
    """Refuse a policy larger than any node would read back (the store's bound)."""
    size = len(policy.source.encode())
    if size > MAX_OBJECT_BYTES:
        raise PolicyError(f"{policy.ref} is {size} bytes stored; at most {MAX_OBJECT_BYTES}")


def apply_policy(store: ObjectStore, policy: NetworkPolicy) -> str:
    """Create or replace ``policies/<ns>/<name>``: created, configured or unchanged."""
    key = keys.policy_key(store.prefix, policy.namespace, policy.name)
    value = policy.source.encode()
    for _ in range(_RETRIES):
        kv = store.get(key)
        if kv is None:
            if store.create(key, value)[0]:
                log.info("policy %s created", policy.ref)
                return CREATED
            continue
        if kv.value == value:
            return UNCHANGED
        if store.replace(key, value, kv.mod_revision):
            log.info("policy %s configured", policy.ref)
            return CONFIGURED
    raise RegistryError(f"policy {policy.ref} kept changing under us; try again")


def delete_policy(store: ObjectStore, namespace: str, name: str) -> bool:
    deleted = store.delete(keys.policy_key(store.prefix, namespace, name))
    if deleted:
        log.info("policy %s/%s deleted", namespace, name)
    return deleted
