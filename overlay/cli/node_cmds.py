"""``overlayctl nodes [delete NAME]`` and ``overlayctl connectivity``: the nodes' status
records and the health mesh's node-by-node matrix, read from etcd (any node, no flags
beyond etcd's)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click

from overlay.cli import CLIContext, cli, global_options, print_json, print_table
from overlay.cluster.keys import dns_subdomain_problem
from overlay.cluster.mesh import (
    BROKEN,
    OK,
    BrokenPair,
    Cell,
    MeshMember,
    broken_pairs,
    matrix,
    record_vtep_problem,
)
from overlay.cluster.nodes import NodeRejection, NodeStatus
from overlay.cluster.nodestore import NodeListing, delete_node, read_nodes
from overlay.cluster.store import ObjectStore
from overlay.errors import ConfigError
from overlay.lease import IPNetwork, Lease, printable_key
from overlay.subnet.registry import EtcdRegistry
from overlay.util.text import age, rfc3339

# Past this many nodes the matrix (N x N cells) is left out; the broken pairs are not.
MAX_MATRIX = 40
HEADERS = ["NAME", "STATUS", "SUBNET", "PUBLIC-IP", "PEERS", "VERSION", "AGE"]
WIDE = ["VTEP-MAC", "REASON"]

# What each cause most likely means, for the lines under the matrix.
LIKELY = {
    "no-answer": "nothing came back over the overlay: UDP 8472 filtered between the nodes, "
                 "the peer's VXLAN device down, or the underlay cut",
    "mtu": "small probes pass but full-size ones with DF do not: the underlay's path MTU is "
           "below the overlay MTU + 50 (set Backend.MTU or fix the underlay; the kernel keeps "
           "the lower path MTU it learnt for 10 minutes: `ip route flush cache`)",
    "stale-vtep": "the VTEP MAC in use is not the lease's: a stale neighbour/FDB entry or "
                  "record (restart the node's overlayd, or wait for its reconcile)",
}


def _read(obj: CLIContext) -> tuple[NodeListing, dict[IPNetwork, Lease]]:
    with EtcdRegistry(obj.etcd_options()) as reg:
        leases = {lease.subnet: lease for lease in reg.list_subnets(with_expiration=False).leases}
        return read_nodes(ObjectStore(reg), leases), leases


def _peers(st: NodeStatus) -> str:
    mesh = st.record.mesh
    return "-" if mesh is None else f"{mesh.peers_reachable}/{mesh.peers_total}"


def _status_text(st: NodeStatus) -> str:
    return st.status if st.ready else f"{st.status} ({st.reason})"


def node_to_dict(st: NodeStatus, now: datetime) -> dict[str, Any]:
    r, mesh = st.record, st.record.mesh
    return {"name": r.name, "status": st.status, "reason": st.reason,
            "subnet": str(r.subnet), "public_ip": str(r.public_ip), "vtep_mac": r.vtep_mac,
            "version": r.version, "started_at": rfc3339(r.started_at),
            "age_seconds": int((now - r.started_at).total_seconds()),
            "heartbeat": st.heartbeat,
            "peers_reachable": mesh.peers_reachable if mesh else None,
            "peers_total": mesh.peers_total if mesh else None,
            "mesh": mesh.to_dict() if mesh else None}


def _rejected_dict(r: NodeRejection) -> dict[str, Any]:
    return {"key": printable_key(r.key), "rejected": r.reason, "detail": r.detail,
            "mod_revision": r.mod_revision}


def _row(st: NodeStatus, now: datetime, wide: bool) -> list[Any]:
    r = st.record
    row = [r.name, st.status if wide else _status_text(st), r.subnet, r.public_ip,
           _peers(st), r.version, age((now - r.started_at).total_seconds())]
    return row + [r.vtep_mac, st.reason or "-"] if wide else row


@cli.group("nodes", invoke_without_command=True)
@global_options
@click.pass_context
def nodes_group(ctx: click.Context) -> None:
    """The cluster's nodes: STATUS Ready only while the node's record says so and its
    heartbeat lives; PEERS is what its health mesh reached."""
    if ctx.invoked_subcommand is None:
        _list(ctx.ensure_object(CLIContext))


def _list(obj: CLIContext) -> None:
    listing, _ = _read(obj)
    now = datetime.now(UTC)
    if obj.json:
        print_json([node_to_dict(st, now) for st in listing.statuses]
                   + [_rejected_dict(r) for r in listing.rejected])
        return
    rows = [_row(st, now, obj.wide) for st in listing.statuses]
    blank = ["-"] * (len(HEADERS) + (len(WIDE) if obj.wide else 0) - 2)
    rows += [[printable_key(r.key), f"rejected: {r.reason}", *blank] for r in listing.rejected]
    print_table(HEADERS + (WIDE if obj.wide else []), rows)


@nodes_group.command("delete")
@global_options
@click.argument("name")
@click.option("--force", is_flag=True, help="Delete even while its heartbeat is alive.")
@click.pass_obj
def nodes_delete(obj: CLIContext, name: str, force: bool) -> None:
    """Delete node NAME's record, heartbeat and pods (a node gone for good)."""
    problem = dns_subdomain_problem(name)
    if problem:
        raise ConfigError(f"node name {name!r}: {problem}")
    with EtcdRegistry(obj.etcd_options()) as reg:
        deleted, pods = delete_node(ObjectStore(reg), name, force)
    click.echo(f"node {name} deleted ({len(deleted)} key{'s' if len(deleted) != 1 else ''}, "
               f"{pods} pod{'s' if pods != 1 else ''})")


# ---- connectivity ------------------------------------------------------------------

def members(listing: NodeListing, leases: dict[IPNetwork, Lease]) -> list[MeshMember]:
    out = []
    for st in listing.statuses:
        lease = leases.get(st.record.subnet)
        out.append(MeshMember(st.record.name, st.record.subnet, st.ready, st.record.mesh,
                              record_vtep_problem(st.record.vtep_mac,
                                                  lease.attrs.vtep_mac if lease else None)))
    return out


def _cell_text(cell: Cell, now: datetime) -> str:
    if cell.state not in (OK, BROKEN):
        return "?"
    text = cell.state if cell.state == OK else f"{cell.cause}"
    return f"{text} {age((now - cell.since).total_seconds())}" if cell.since else text


def _cell_dict(cell: Cell, now: datetime) -> dict[str, Any]:
    return {"state": cell.state, "cause": cell.cause or None,
            "since": rfc3339(cell.since) if cell.since else None,
            "age_seconds": int((now - cell.since).total_seconds()) if cell.since else None}


def _pair_dict(p: BrokenPair) -> dict[str, Any]:
    return {"from": p.source, "to": p.target, "cause": p.cause, "detail": p.detail,
            "since": rfc3339(p.since) if p.since else None, "likely": LIKELY[p.cause]}


@cli.command("connectivity")
@global_options
@click.pass_obj
def connectivity(obj: CLIContext) -> None:
    """The health mesh: a row per probing node, a column per probed node (ok or the
    cause, with how long it has held; ? when the prober is not Ready), then each broken
    pair with its likely cause.  Above 40 nodes the matrix is left out."""
    listing, leases = _read(obj)
    found = members(listing, leases)
    pairs = broken_pairs(found)
    now = datetime.now(UTC)
    names = [st.record.name for st in listing.statuses]
    small = len(names) <= MAX_MATRIX
    cells = matrix(found) if small else {}
    if obj.json:
        print_json({"nodes": names,
                    "matrix": {s: {t: _cell_dict(c, now) for t, c in row.items()}
                               for s, row in cells.items()} if small else None,
                    "broken": [_pair_dict(p) for p in pairs],
                    "broken_pairs": sorted({tuple(sorted((p.source, p.target)))
                                            for p in pairs})})
        return
    if small:
        rows = [[src] + ["-" if dst == src else _cell_text(cells[src][dst], now)
                         for dst in names] for src in names]
        print_table(["FROM \\ TO"] + names, rows)
    else:
        click.echo(f"{len(names)} nodes: matrix omitted (more than {MAX_MATRIX}); per node:")
        print_table(["NODE", "STATUS", "PEERS"],
                    [[st.record.name, st.status, _peers(st)] for st in listing.statuses])
    for p in pairs:
        click.echo(f"{p.source} -> {p.target}: {p.cause}: {p.detail}; likely "
                   f"{LIKELY[p.cause]}")
    if not pairs and names:
        click.echo("no broken pairs")
