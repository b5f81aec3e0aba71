"""The key layout of the cluster's objects under the etcd prefix, and the one rule for
the names that become key segments.

::

    <prefix>/schema                     {"version": N}  (see overlay.cluster.schema)
    <prefix>/nodes/<node>               the node's status record (persistent)
    <prefix>/heartbeats/<node>          liveness, on a short etcd lease
    <prefix>/pods/<namespace>/<name>    a pod's registry record
    <prefix>/namespaces/<namespace>     a namespace and its labels
    <prefix>/policies/<namespace>/<name>  a NetworkPolicy object
    <prefix>/collected/<subnet>         a gone lease's pods were deleted (short etcd lease)

A name that fails the rule never becomes a key, and a key read back whose segments fail
it is rejected (an alias such as ``nodes/a/b`` or ``nodes/A`` names nothing).
"""

from __future__ import annotations

import re

# Kubernetes' DNS-1123 rules: a label (namespaces) is at most 63 characters, a subdomain
# (node and pod names) at most 253; lower-case alphanumerics, '-' (and '.' in a
# subdomain), starting and ending with an alphanumeric.
_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_LABEL_RE = re.compile(_LABEL)
_SUBDOMAIN_RE = re.compile(rf"{_LABEL}(\.{_LABEL})*")


def dns_label_problem(name: object) -> str | None:
    """Why ``name`` is not a DNS-1123 label (a namespace), or None."""
    if not isinstance(name, str) or not name:
        return "must be a non-empty string"
    if len(name) > 63:
        return f"is {len(name)} characters long (at most 63)"
    if not _LABEL_RE.fullmatch(name):
        return ("must be lower-case letters, digits and '-', starting and ending with a "
                "letter or digit")
    return None


def dns_subdomain_problem(name: object) -> str | None:
    """Why ``name`` is not a DNS-1123 subdomain (a node or pod name), or None."""
    if not isinstance(name, str) or not name:
        return "must be a non-empty string"
    if len(name) > 253:
        return f"is {len(name)} characters long (at most 253)"
    if not _SUBDOMAIN_RE.fullmatch(name):
        return ("must be lower-case letters, digits, '-' and '.', starting and ending with "
                "a letter or digit")
    return None


def _root(prefix: str) -> str:
    return prefix.rstrip("/")


def schema_key(prefix: str) -> str:
    return f"{_root(prefix)}/schema"


def nodes_prefix(prefix: str) -> str:
    return f"{_root(prefix)}/nodes/"


def node_key(prefix: str, node: str) -> str:
    return nodes_prefix(prefix) + node


def heartbeats_prefix(prefix: str) -> str:
    return f"{_root(prefix)}/heartbeats/"


def heartbeat_key(prefix: str, node: str) -> str:
    return heartbeats_prefix(prefix) + node


def pods_prefix(prefix: str, namespace: str | None = None) -> str:
    base = f"{_root(prefix)}/pods/"
    return base if namespace is None else f"{base}{namespace}/"


def pod_key(prefix: str, namespace: str, name: str) -> str:
    return f"{pods_prefix(prefix)}{namespace}/{name}"


def namespaces_prefix(prefix: str) -> str:
    return f"{_root(prefix)}/namespaces/"


def namespace_key(prefix: str, namespace: str) -> str:
    return namespaces_prefix(prefix) + namespace


def policies_prefix(prefix: str, namespace: str | None = None) -> str:
    base = f"{_root(prefix)}/policies/"
    return base if namespace is None else f"{base}{namespace}/"


def policy_key(prefix: str, namespace: str, name: str) -> str:
    return f"{policies_prefix(prefix)}{namespace}/{name}"


def collected_key(prefix: str, subnet_name: str) -> str:
    """The marker that a gone lease's pods were deleted; ``subnet_name`` is the lease
    key's last segment as the key codec writes it (``10.244.2.0-24``)."""
    return f"{_root(prefix)}/collected/{subnet_name}"


def split_single(key: str, base: str) -> str | None:
    """The node name of ``<base><node>`` (nodes/, heartbeats/), None if ``key`` is not
    exactly that with a valid name."""
    if not key.startswith(base):
        return None
    name = key[len(base):]
    return name if dns_subdomain_problem(name) is None else None


def split_namespaced(key: str, base: str) -> tuple[str, str] | None:
    """(namespace, name) of ``<base><namespace>/<name>`` (pods/, policies/), None if
    ``key`` is not exactly that with valid names."""
    if not key.startswith(base):
        return None
    parts = key[len(base):].split("/")
    if len(parts) != 2:
        return None
    ns, name = parts
    if dns_label_problem(ns) is not None or dns_subdomain_problem(name) is not None:
        return None
    return ns, name
