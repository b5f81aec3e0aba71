"""``overlayctl pods [-A | -n NS]`` and ``overlayctl pods label NS/NAME k=v… k-``: the pod
registry (``<prefix>/pods/``), as ``kubectl get pods -o wide`` shows pods.

Every record is judged by ``overlay.cluster.pods.judge_pod`` against the accepted subnet
leases before it is shown; rejected ones are counted on stderr, never listed as pods.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import click

from overlay.cli import CLIContext, cli, global_options, print_json, print_table
from overlay.cluster.keys import dns_label_problem, pod_key, pods_prefix
from overlay.cluster.nodestore import read_nodes
from overlay.cluster.pods import (
    DEFAULT_NAMESPACE,
    PodRecord,
    PodRules,
    PodValueError,
    decode_pod,
    encode_pod,
    identity_problem,
    judge_pods,
    label_problem,
    rules_with_nodes,
    with_cli_labels,
)
from overlay.cluster.schema import read_schema
from overlay.cluster.store import ObjectStore
from overlay.errors import ConfigError, OverlayError, RegistryError
from overlay.lease import printable_key
from overlay.subnet.registry import EtcdRegistry
from overlay.util.text import age, rfc3339

HEADERS = ["NAMESPACE", "NAME", "IP", "NODE", "AGE"]
WIDE = ["IPV6", "CONTAINER", "LABELS"]  # IPV6: a dual-stack pod's second address
CAS_TRIES = 5  # a label edit racing another writer re-reads and retries


def pod_rules(reg: EtcdRegistry) -> PodRules:
    """What the records are judged against: each node's subnet (its node record's, when
    that is an accepted lease), else the accepted subnet leases."""
    listing = reg.list_subnets(with_expiration=False)
    try:
        config = reg.get_config()
    except (ConfigError, RegistryError):
        config = None  # no valid network config: no lease is accepted, nor any pod
    nodes = read_nodes(ObjectStore(reg), {lease.subnet: lease for lease in listing.leases})
    return rules_with_nodes(config, listing.leases, (st.record for st in nodes.statuses))


def pod_to_dict(r: PodRecord) -> dict[str, Any]:
    return {"namespace": r.namespace, "name": r.name, "ip": str(r.ip) if r.ip else None,
            "ips": [str(ip) for ip in r.ips], "node": r.node, "labels": r.label_values(),
            "label_sources": {k: lab.source for k, lab in r.labels.items()},
            "container_id": r.container_id, "ifname": r.ifname,
            "ports": [{"name": p.name, "port": p.port, "protocol": p.protocol}
                      for p in r.ports],
            "created": rfc3339(r.created)}


def pod_row(r: PodRecord, wide: bool, now: datetime) -> list[Any]:
    row: list[Any] = [r.namespace, r.name, r.ip, r.node,
                      age((now - r.created).total_seconds())]
    if wide:
        labels = ",".join(f"{k}={lab.value}" for k, lab in r.labels.items())
        v6 = ",".join(str(ip) for ip in r.ips if ip.version == 6)
        row += [v6 or None, r.container_id[:12], labels or None]
    return row


@cli.group("pods", invoke_without_command=True)
@global_options
@click.option("-A", "--all-namespaces", is_flag=True, help="Pods of every namespace.")
@click.option("-n", "--namespace", help=f"Pods of this namespace [default: {DEFAULT_NAMESPACE}].")
@click.pass_context
def pods_group(ctx: click.Context, all_namespaces: bool, namespace: str | None) -> None:
    """The pod registry: NAMESPACE, NAME, IP, NODE, AGE (-o wide adds CONTAINER, LABELS)."""
    if ctx.invoked_subcommand is not None:
        return
    if all_namespaces and namespace:
        raise ConfigError("give -A or -n NAMESPACE, not both")
    ns = None if all_namespaces else namespace or DEFAULT_NAMESPACE
    problem = dns_label_problem(ns) if ns is not None else None
    if problem:
        raise ConfigError(f"-n {ns!r}: a namespace {problem}")
    obj = ctx.ensure_object(CLIContext)
    with EtcdRegistry(obj.etcd_options()) as reg:
        store = ObjectStore(reg)
        kvs, _ = store.list(pods_prefix(store.prefix, ns))
        records, rejected = judge_pods(kvs, pods_prefix(store.prefix), pod_rules(reg))
    records.sort(key=lambda r: (r.namespace, r.name))
    if rejected:
        first = rejected[0]
        click.echo(f"warning: {len(rejected)} pod record(s) rejected, e.g. "
                   f"{printable_key(first.key)}: {first.reason}: {first.detail}", err=True)
    now = datetime.now(UTC)
    if obj.json:
        print_json([pod_to_dict(r) for r in records], one_per_line=True)
    else:
        print_table(HEADERS + (WIDE if obj.wide else []),
                    [pod_row(r, obj.wide, now) for r in records])


def parse_pod_ref(text: str) -> tuple[str, str]:
    """``NS/NAME`` (or ``NAME`` in ``default``), validated."""
    ns, _, name = text.rpartition("/")
    ns = ns or DEFAULT_NAMESPACE
    problem = identity_problem(ns, name)
    if problem:
        raise ConfigError(f"{text!r}: {problem}")
    return ns, name


def parse_label_args(args: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """``key=value`` to set and ``key-`` to remove, each validated; ConfigError names the
    first bad one."""
    set_: dict[str, str] = {}
    remove: list[str] = []
    for arg in args:
        if "=" in arg:
            key, _, value = arg.partition("=")
            problem = label_problem(key, value)
            if problem is None:
                set_[key] = value
                continue
        elif arg.endswith("-"):
            key, problem = arg[:-1], label_problem(arg[:-1], "")
            if problem is None:
                remove.append(key)
                continue
        else:
            problem = "expected key=value or key-"
        raise ConfigError(f"{arg!r}: {problem}")
    if set(set_) & set(remove):
        raise ConfigError(f"label {sorted(set(set_) & set(remove))[0]!r} both set and removed")
    return set_, remove


@pods_group.command("label")
@global_options
@click.argument("pod")
@click.argument("labels", nargs=-1, required=True)
@click.pass_obj
def pods_label(obj: CLIContext, pod: str, labels: tuple[str, ...]) -> None:
    """Set (key=value) or remove (key-) labels of pod NS/NAME; an operator's labels win
    over the CNI's per key (compare-and-swap: a concurrent change is re-read)."""
    ns, name = parse_pod_ref(pod)
    set_, remove = parse_label_args(labels)
    with EtcdRegistry(obj.etcd_options()) as reg:
        store = ObjectStore(reg)
        schema = read_schema(store)
        if not schema.writable and schema.found is not None:
            raise ConfigError(schema.describe())
        record = _relabel(store, pod_key(store.prefix, ns, name), set_, remove)
    if obj.json:
        print_json(pod_to_dict(record))
    else:
        click.echo(f"pod {ns}/{name} labeled: "
                   + (",".join(f"{k}={lab.value}" for k, lab in record.labels.items())
                      or "<none>"))


def _relabel(store: ObjectStore, key: str, set_: dict[str, str],
             remove: list[str]) -> PodRecord:
    for _ in range(CAS_TRIES):
        held = store.get(key)
        if held is None:
            raise ConfigError(f"no pod {key.removeprefix(pods_prefix(store.prefix))} in the "
                              "registry (see `overlayctl pods -A`)")
        try:
            record = decode_pod(held.value)
        except PodValueError as e:
            raise ConfigError(f"the record at {printable_key(key)} is unusable: {e}") from None
        try:
            new = with_cli_labels(record, set_, remove)
        except PodValueError as e:
            raise ConfigError(f"pod {key.removeprefix(pods_prefix(store.prefix))}: {e}"
                              ) from None
        if store.replace(key, encode_pod(new), held.mod_revision):
            return new
    raise OverlayError(f"{printable_key(key)} kept changing; try again")
