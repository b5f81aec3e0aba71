"""``overlayctl policy apply|get|delete`` and ``overlayctl namespaces
create|delete|label|list``: the NetworkPolicies and namespaces in etcd
(``overlay.policy.objects``).

Input is validated whole before anything is written: a manifest with one bad object,
one bad label argument, or one object in a namespace that does not exist, changes nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
import yaml

from overlay.cli import (
    CLIContext,
    cli,
    global_options,
    print_json,
    print_table,
    yaml_global_options,
)
from overlay.cluster.keys import dns_label_problem, dns_subdomain_problem
from overlay.cluster.store import ObjectStore
from overlay.errors import ConfigError
from overlay.lease import printable_key
from overlay.policy import objects
from overlay.policy.model import (
    DEFAULT_NAMESPACE,
    MAX_MANIFEST_BYTES,
    LabelSelector,
    NetworkPolicy,
    label_value_problem,
    load_manifests,
    qualified_name_problem,
    shown,
)
from overlay.subnet.registry import EtcdRegistry


@contextmanager
def _store(obj: CLIContext) -> Iterator[ObjectStore]:
    with EtcdRegistry(obj.etcd_options()) as reg:
        yield ObjectStore(reg)


def _read_manifest(path: str) -> str:
    try:
        if path == "-":
            data = sys.stdin.buffer.read(MAX_MANIFEST_BYTES + 1)
        else:
            with open(path, "rb") as f:
                data = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text") from None


def selector_text(sel: LabelSelector) -> str:
    """kubectl's POD-SELECTOR column: ``k=v,k in (a,b)``; ``<none>`` selects every pod."""
    parts = [f"{k}={v}" for k, v in sel.match_labels]
    for r in sel.match_expressions:
        values = ",".join(sorted(r.values))
        parts.append({"In": f"{r.key} in ({values})", "NotIn": f"{r.key} notin ({values})",
                      "Exists": r.key, "DoesNotExist": f"!{r.key}"}[r.operator])
    return ",".join(parts) or "<none>"


@cli.group("policy")
@global_options
def policy_group() -> None:
    """Apply, show and delete NetworkPolicies (networking.k8s.io/v1)."""


@policy_group.command("apply")
@global_options
@click.option("-f", "--filename", "path", required=True,
              help="A manifest (YAML, JSON, multi-document YAML or a List); - for stdin.")
@click.pass_obj
def policy_apply(obj: CLIContext, path: str) -> None:
    """Create or update every NetworkPolicy of a manifest (namespace 'default' when the
    object names none). Its namespaces must exist (`overlayctl namespaces create`, or a
    pod of the registry in it), else nothing is written."""
    policies = load_manifests(_read_manifest(path))
    for p in policies:
        objects.check_storable(p)
    with _store(obj) as store:
        objects.check_writable(store)
        objects.require_namespaces(store, (p.namespace for p in policies))
        results = []
        for p in policies:
            objects.ensure_namespace(store, p.namespace)
            results.append((p, objects.apply_policy(store, p)))
    if obj.json:
        print_json([{"namespace": p.namespace, "name": p.name, "result": r}
                    for p, r in results])
        return
    for p, r in results:
        click.echo(f"networkpolicy {p.ref} {r}")


def _policy_row(p: NetworkPolicy, wide: bool) -> list[Any]:
    row: list[Any] = [p.namespace, p.name, selector_text(p.pod_selector),
                      ",".join(sorted(p.policy_types)), "ok"]
    return row + [len(p.ingress), len(p.egress)] if wide else row


def _list_output(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "List", "items": items}


@policy_group.command("get")
@yaml_global_options
@click.option("-n", "--namespace", help="Only this namespace (default: all; 'default' "
              "when NAME is given).")
@click.option("-A", "--all-namespaces", is_flag=True,
              help="Every namespace (what a listing without -n shows; kubectl's spelling).")
@click.argument("name", required=False)
@click.pass_obj
def policy_get(obj: CLIContext, namespace: str | None, all_namespaces: bool,
               name: str | None) -> None:
    """List NetworkPolicies, or show one; -o json/yaml prints the objects themselves."""
    if all_namespaces and (namespace is not None or name is not None):
        raise ConfigError("-A lists every namespace: give it without -n and without NAME "
                          "(a policy is shown by NAMESPACE and NAME)")
    if namespace is not None and (problem := dns_label_problem(namespace)):
        raise ConfigError(f"namespace {shown(namespace)} {problem}")
    if name is not None and (problem := dns_subdomain_problem(name)):
        raise ConfigError(f"policy name {shown(name)} {problem}")
    ns = namespace or (DEFAULT_NAMESPACE if name else None)
    with _store(obj) as store:
        policies, rejected = objects.list_policies(store, ns)
    if name is not None:
        policies = [p for p in policies if p.name == name]
        rejected = [r for r in rejected if r.key.endswith(f"/{ns}/{name}")]
        if not policies and not rejected:
            raise ConfigError(f"no NetworkPolicy {ns}/{name} (see `overlayctl policy get`)")
    manifests = [p.manifest() for p in policies]
    doc: Any = manifests[0] if name is not None and manifests else _list_output(manifests)
    if obj.output == "yaml":
        click.echo(yaml.safe_dump(doc, sort_keys=False).rstrip())
    elif obj.json:
        print_json(doc)
    else:
        headers = ["NAMESPACE", "NAME", "POD-SELECTOR", "POLICY-TYPES", "STATUS"]
        headers += ["INGRESS-RULES", "EGRESS-RULES"] if obj.wide else []
        rows = [_policy_row(p, obj.wide) for p in policies]
        blank = ["-", "-"] if obj.wide else []
        rows += [[printable_key(r.key), "-", "-", "-", f"rejected: {r.reason}", *blank]
                 for r in rejected]
        print_table(headers, rows)
    for r in rejected:
        click.echo(f"warning: {printable_key(r.key)} is rejected (never enforced): "
                   f"{r.reason}", err=True)


def _split_ref(ref: str) -> tuple[str, str]:
    ns, sep, name = ref.partition("/")
    if not sep:
        raise ConfigError(f"{shown(ref)}: give the policy as NAMESPACE/NAME")
    if problem := dns_label_problem(ns):
        raise ConfigError(f"namespace {shown(ns)} {problem}")
    if problem := dns_subdomain_problem(name):
        raise ConfigError(f"policy name {shown(name)} {problem}")
    return ns, name


@policy_group.command("delete")
@global_options
@click.argument("ref", metavar="NAMESPACE/NAME")
@click.pass_obj
def policy_delete(obj: CLIContext, ref: str) -> None:
    """Delete one NetworkPolicy."""
    ns, name = _split_ref(ref)
    with _store(obj) as store:
        objects.check_writable(store)
        if not objects.delete_policy(store, ns, name):
            raise ConfigError(f"no NetworkPolicy {ns}/{name} (see `overlayctl policy get`)")
    click.echo(f"networkpolicy {ns}/{name} deleted")


@cli.group("namespaces")
@global_options
def namespaces_group() -> None:
    """Create, delete, list namespaces and set their labels (what namespaceSelectors
    match)."""


def parse_label_args(args: tuple[str, ...]) -> tuple[dict[str, str], list[str]]:
    """kubectl's ``key=value`` (set) and ``key-`` (remove) arguments, all checked."""
    set_labels: dict[str, str] = {}
    remove: list[str] = []
    for arg in args:
        key, eq, value = arg.partition("=")
        if not eq and arg.endswith("-"):
            key = arg[:-1]
        elif not eq:
            raise ConfigError(f"{shown(arg)}: give labels as key=value, or key- to remove one")
        if problem := qualified_name_problem(key):
            raise ConfigError(f"label key {shown(key)}: {problem}")
        if eq and (problem := label_value_problem(value)):
            raise ConfigError(f"label {key}={shown(value)}: value {problem}")
        if key in set_labels or key in remove:
            raise ConfigError(f"label {key} is given twice")
        if eq:
            set_labels[key] = value
        else:
            remove.append(key)
    return set_labels, remove


@namespaces_group.command("label")
@global_options
@click.argument("namespace")
@click.argument("labels", nargs=-1, required=True, metavar="KEY=VALUE... [KEY-]...")
@click.option("--overwrite", is_flag=True, help="Allow changing a label's existing value.")
@click.pass_obj
def namespaces_label(obj: CLIContext, namespace: str, labels: tuple[str, ...],
                     overwrite: bool) -> None:
    """Set or remove a namespace's labels (it must exist: created, or holding a pod)."""
    if problem := dns_label_problem(namespace):
        raise ConfigError(f"namespace {shown(namespace)} {problem}")
    set_labels, remove = parse_label_args(labels)
    objects.check_label_change(set_labels, remove)
    with _store(obj) as store:
        objects.check_writable(store)
        objects.require_namespaces(store, [namespace])
        ns = objects.label_namespace(store, namespace, set_labels, remove, overwrite)
    if obj.json:
        print_json({"name": ns.name, "labels": dict(sorted(ns.labels.items()))})
    else:
        click.echo(f"namespace {ns.name} labeled")


@namespaces_group.command("list")
@global_options
@click.pass_obj
def namespaces_list(obj: CLIContext) -> None:
    """Every namespace and its labels: those created, and those that exist without an
    object (``default``, and any namespace holding a pod; STATUS "implicit")."""
    with _store(obj) as store:
        namespaces, rejected = objects.list_namespaces(store)
        implicit = objects.implicit_namespaces(store, namespaces)
    rows = sorted([(n, False) for n in namespaces] + [(n, True) for n in implicit],
                  key=lambda row: row[0].name)
    if obj.json:
        print_json([{"name": n.name, "labels": dict(sorted(n.labels.items())),
                     "implicit": imp} for n, imp in rows]
                   + [{"key": printable_key(r.key), "rejected": r.reason} for r in rejected])
        return
    print_table(["NAME", "LABELS", "STATUS"],
                [[n.name, ",".join(f"{k}={v}" for k, v in sorted(n.labels.items())),
                  "implicit" if imp else "ok"] for n, imp in rows]
                + [[printable_key(r.key), "-", f"rejected: {r.reason}"] for r in rejected])


@namespaces_group.command("create")
@global_options
@click.argument("namespace")
@click.option("-l", "--label", "labels", multiple=True, metavar="KEY=VALUE",
              help="A label to create it with (repeatable).")
@click.option("--exist-ok", is_flag=True,
              help="Succeed without change when it exists already (scripts, the lab).")
@click.pass_obj
def namespaces_create(obj: CLIContext, namespace: str, labels: tuple[str, ...],
                      exist_ok: bool) -> None:
    """Create a namespace (with its automatic kubernetes.io/metadata.name label)."""
    if problem := dns_label_problem(namespace):
        raise ConfigError(f"namespace {shown(namespace)} {problem}")
    set_labels, remove = parse_label_args(labels)
    if remove:
        raise ConfigError(f"--label {remove[0]}-: give labels to create with as key=value")
    objects.check_label_change(set_labels, remove)
    with _store(obj) as store:
        objects.check_writable(store)
        ns = objects.create_namespace(store, namespace, set_labels)
    if ns is None and not exist_ok:
        raise ConfigError(f'namespaces "{namespace}" already exists (change its labels '
                          f"with `overlayctl namespaces label {namespace} ...`)")
    if obj.json:
        print_json({"name": namespace, "result": "created" if ns else "unchanged"})
    else:
        click.echo(f"namespace {namespace} {'created' if ns else 'unchanged'}")


@namespaces_group.command("delete")
@global_options
@click.argument("namespace")
@click.pass_obj
def namespaces_delete(obj: CLIContext, namespace: str) -> None:
    """Delete a namespace and every NetworkPolicy in it (as kubectl delete namespace).
    Pods stay until their runtime deletes them; while one is in the registry the
    namespace still exists, unlabelled."""
    if problem := dns_label_problem(namespace):
        raise ConfigError(f"namespace {shown(namespace)} {problem}")
    if namespace == DEFAULT_NAMESPACE:
        raise ConfigError(f'namespace "{namespace}" may not be deleted (as in Kubernetes); '
                          "delete its policies with `overlayctl policy delete`")
    with _store(obj) as store:
        objects.check_writable(store)
        deleted = objects.delete_namespace(store, namespace)
        pods_left = deleted is not None and objects.namespace_has_pods(store, namespace)
    if deleted is None:
        raise ConfigError(f'namespaces "{namespace}" not found (see `overlayctl '
                          f"namespaces list`)")
    if obj.json:
        print_json({"name": namespace, "result": "deleted", "policies_deleted": deleted,
                    "pods_remain": pods_left})
        return
    for ref in deleted:
        click.echo(f"networkpolicy {ref} deleted")
    click.echo(f"namespace {namespace} deleted")
    if pods_left:
        click.echo(f"note: pods of the registry remain in {namespace}: it exists, without "
                   "labels, until their runtime deletes them", err=True)
