"""``overlayctl leases list|show|watch|reserve|release``: the subnet leases in etcd."""

from __future__ import annotations

import json
import queue
import threading
import time
from datetime import UTC, datetime
from ipaddress import ip_address
from typing import Any

import click

from overlay.cli import CLIContext, Seconds, cli, global_options, print_json, print_table
from overlay.errors import ConfigError, LeaseNotFound, OverlayError, RegistryError
from overlay.lease import (
    EventType,
    IPNetwork,
    Lease,
    LeaseEvent,
    LeaseRules,
    LeaseView,
    Rejection,
    ipv6_status,
    judge_all,
    lease_key,
    normalize_mac,
    parse_subnet_arg,
    printable_key,
)
from overlay.subnet import reservations
from overlay.subnet.registry import EtcdRegistry, WatchUpdate
from overlay.util.text import rfc3339

HEADERS = ["SUBNET", "PUBLIC-IP", "VTEP-MAC", "VNI", "EXPIRES", "STATUS"]
# -o wide: the IPv6 half of a dual-stack lease, and whether it is used (and why not).
WIDE = ["IPV6-SUBNET", "PUBLIC-IPV6", "V6-VTEP-MAC", "IPV6"]


@cli.group("leases")
@global_options
def leases_group() -> None:
    """List, inspect, watch, reserve and release subnet leases."""


def lease_to_dict(lease: Lease) -> dict[str, Any]:
    out = {
        "subnet": str(lease.subnet),
        "public_ip": str(lease.attrs.public_ip),
        "vtep_mac": lease.attrs.vtep_mac,
        "vni": lease.attrs.vni,
        "expires": rfc3339(lease.expiration) if lease.expiration else None,
        "reserved": lease.reserved,
    }
    a = lease.attrs
    if lease.ipv6_subnet is not None or a.dual_stack:  # IPv4-only leases: as before
        out.update(ipv6_subnet=str(lease.ipv6_subnet) if lease.ipv6_subnet else None,
                   public_ipv6=str(a.public_ipv6) if a.public_ipv6 else None,
                   v6_vtep_mac=a.v6_vtep_mac, v6_vni=a.v6_vni)
    return out


def _wide_cells(lease: Lease, ipv6: str) -> list[Any]:
    a = lease.attrs
    return [lease.ipv6_subnet or "-", a.public_ipv6 or "-", a.v6_vtep_mac or "-", ipv6]


def _expires_text(lease: Lease) -> str:
    if lease.reserved:
        return "never (reserved)"
    if lease.expiration is None:
        return "<unknown>"
    left = int((lease.expiration - datetime.now(UTC)).total_seconds())
    h, rest = divmod(max(left, 0), 3600)
    m, s = divmod(rest, 60)
    rel = f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
    return f"{rfc3339(lease.expiration)} ({rel})"


def lease_row(lease: Lease) -> list[Any]:
    return [lease.subnet, lease.attrs.public_ip, lease.attrs.vtep_mac, lease.attrs.vni,
            _expires_text(lease)]


def _subnet_arg(text: str) -> IPNetwork:
    try:
        return parse_subnet_arg(text)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _rules(reg: EtcdRegistry) -> LeaseRules | None:
    """The acceptance rule from the network config; None (nothing judged) without one."""
    try:
        return LeaseRules.from_config(reg.get_config())
    except (ConfigError, RegistryError):
        return None


def lease_status(rules: LeaseRules | None, leases: list[Lease],
                 rejected: list[Rejection]) -> tuple[dict[str, str], dict[str, str]]:
    """(STATUS, IPV6) per lease key name and STATUS per rejected key: ``ok``, a warning,
    or ``rejected: <reason>`` (the rule of ``overlay.lease.judge_all``; no own node
    here).  IPV6 says whether the IPv6 half is used: ``ok``, ``none (...)``,
    ``rejected: <reason>`` (the IPv4 half stays in use), ``-`` without IPv6."""
    out: dict[str, str] = {r.key: f"rejected: {r.reason}" for r in rejected}
    if rules is None:
        out.update({lease_key(x): "unchecked (no valid network config)" for x in leases})
        return out, {lease_key(x): "-" for x in leases}
    j = judge_all(leases, rules)
    out.update({lease_key(x): j.warnings.get(x.subnet, "ok") for x in leases})
    out.update({r.key: f"rejected: {r.reason}" for r in j.rejected})
    v6 = {lease_key(x): ipv6_status(x, rules, j.ipv6_rejected) for x in leases}
    for x in leases:
        k = lease_key(x)
        if out[k].startswith("rejected: "):
            v6[k] = "-"
        elif v6[k].startswith("rejected: "):
            out[k] += f" (ipv6 {v6[k]})"
    return out, v6


def _rejected_row(r: Rejection, status: str) -> list[Any]:
    return [r.subnet or printable_key(r.key), "-", "-", "-", "-", status]


def _rejected_dict(r: Rejection) -> dict[str, Any]:
    return {"key": printable_key(r.key), "subnet": str(r.subnet) if r.subnet else None,
            "rejected": r.reason, "detail": r.detail, "mod_revision": r.mod_revision}


@leases_group.command("list")
@global_options
@click.pass_obj
def leases_list(obj: CLIContext) -> None:
    """All leases and reservations, lowest subnet first; STATUS says which are used."""
    with EtcdRegistry(obj.etcd_options()) as reg:
        listing = reg.list_subnets(with_expiration=True)
        rules = _rules(reg)
    leases = sorted(listing.leases, key=lambda x: (x.subnet.version, x.subnet, lease_key(x)))
    rejected = sorted(listing.rejected, key=lambda r: r.key)
    status, v6 = lease_status(rules, leases, rejected)
    if obj.json:
        out = []
        for lease in leases:
            d = lease_to_dict(lease)
            st = status[lease_key(lease)]
            if st.startswith("rejected: "):  # accepted ones keep exactly their keys
                d["rejected"] = st[len("rejected: "):]
            if "ipv6_subnet" in d or v6[lease_key(lease)] != "-":
                d["ipv6_status"] = v6[lease_key(lease)]
            out.append(d)
        print_json(out + [_rejected_dict(r) for r in rejected])
    else:
        wide = obj.wide
        blank = ["-"] * len(WIDE) if wide else []
        print_table(HEADERS + (WIDE if wide else []),
                    [lease_row(lease) + [status[lease_key(lease)]]
                     + (_wide_cells(lease, v6[lease_key(lease)]) if wide else [])
                     for lease in leases]
                    + [_rejected_row(r, status[r.key]) + blank for r in rejected])


@leases_group.command("show")
@global_options
@click.argument("subnet")
@click.pass_obj
def leases_show(obj: CLIContext, subnet: str) -> None:
    """One lease in detail (SUBNET as 10.244.1.0/24 or 10.244.1.0-24)."""
    net = _subnet_arg(subnet)
    with EtcdRegistry(obj.etcd_options()) as reg:
        lease = reg.get_subnet(net)
        key = reg.key_for(net, lease.ipv6_subnet) if isinstance(lease, Lease) else ""
        rules = _rules(reg) if isinstance(lease, Lease) else None
    if lease is None:
        raise LeaseNotFound(f"no lease or reservation for {net} (see `overlayctl leases list`)")
    if isinstance(lease, Rejection):
        _show_rejected(obj, lease)
        return
    statuses, v6 = lease_status(rules, [lease], [])
    status, v6_status = statuses[lease_key(lease)], v6[lease_key(lease)]
    if obj.json:
        d = lease_to_dict(lease)
        # hex, as the table and etcdctl show it (0, a reservation, as null)
        d.update(key=key, etcd_lease_id=_lease_id(lease), ttl=lease.ttl,
                 mod_revision=lease.mod_revision, backend_type=lease.attrs.backend_type)
        if status.startswith("rejected: "):
            d["rejected"] = status[len("rejected: "):]
        if "ipv6_subnet" in d or v6_status != "-":
            d["ipv6_status"] = v6_status
        print_json(d)
        return
    rows = [("Subnet", lease.subnet), ("Key", key), ("Public IP", lease.attrs.public_ip),
            ("Backend", lease.attrs.backend_type), ("VNI", lease.attrs.vni),
            ("VTEP MAC", lease.attrs.vtep_mac), ("Reserved", "yes" if lease.reserved else "no"),
            ("Expires", _expires_text(lease)), ("TTL", lease.ttl),
            ("etcd lease", _lease_id(lease)),
            ("Revision", lease.mod_revision), ("Status", status)]
    if lease.ipv6_subnet is not None or v6_status != "-":
        a = lease.attrs
        rows += [("IPv6 subnet", lease.ipv6_subnet), ("Public IPv6", a.public_ipv6),
                 ("V6 VNI", a.v6_vni), ("V6 VTEP MAC", a.v6_vtep_mac), ("IPv6", v6_status)]
    _print_rows(rows)


def _lease_id(lease: Lease) -> str | None:
    """The etcd lease ID in hex (etcdctl's base, used in every output); None: a reservation."""
    return f"{lease.etcd_lease_id:x}" if lease.etcd_lease_id else None


def _print_rows(rows: list[tuple[str, Any]]) -> None:
    for name, value in rows:
        click.echo(f"{name + ':':<12}{'<none>' if value is None else value}")


def _show_rejected(obj: CLIContext, r: Rejection) -> None:
    if obj.json:
        print_json(_rejected_dict(r))
        return
    _print_rows([("Subnet", r.subnet), ("Key", printable_key(r.key)),
                 ("Status", f"rejected: {r.reason}"), ("Why", r.detail),
                 ("Revision", r.mod_revision)])


MAX_WATCH_TIMEOUT = 7 * 86400.0  # a week: longer is "no --timeout"

# kubectl's watch words: a new key, a changed key, a key deleted or expired.
ADDED, MODIFIED, DELETED = "ADDED", "MODIFIED", "DELETED"


def _event_line(kind: str, lease: Lease, as_json: bool, revision: int) -> str:
    if as_json:
        d = lease_to_dict(lease)
        d.update(event=kind, revision=revision)
        if kind == DELETED:
            d.update(expires=None)
        return json.dumps(d)
    if kind == DELETED:
        return f"{DELETED} {lease.subnet}"
    return (f"{kind} {lease.subnet} public-ip={lease.attrs.public_ip} "
            f"vtep-mac={lease.attrs.vtep_mac or '<none>'} vni={lease.attrs.vni} "
            f"{'reserved' if lease.reserved else 'leased'}")


def _event_kind(view: LeaseView, ev: LeaseEvent) -> str:
    """The word for one event, from what the view held before it (a PUT on a known key
    is a modification)."""
    if ev.type is EventType.REMOVED:
        return DELETED
    return MODIFIED if ev.lease.subnet in view.leases else ADDED


def _update_lines(view: LeaseView, update: WatchUpdate, as_json: bool) -> list[str]:
    if update.snapshot is None:
        lines = []
        events = update.events
        for i, ev in enumerate(events):  # one at a time: each event's word depends on the last
            nxt = events[i + 1] if i + 1 < len(events) else None
            if (ev.type is EventType.REMOVED and nxt is not None
                    and nxt.type is EventType.ADDED and nxt.revision == ev.revision
                    and nxt.lease.subnet == ev.lease.subnet and ev.lease.subnet in view.leases):
                view.apply([ev])  # a re-key (one transaction): the next PUT is MODIFIED
                view.leases[ev.lease.subnet] = ev.lease
                continue
            kind = _event_kind(view, ev)
            view.apply([ev])
            lines.append(_event_line(kind, ev.lease, as_json, ev.revision))
        return lines
    batch = view.reset(update.snapshot)  # after a compaction: print the net difference
    return ([_event_line(ADDED, lease, as_json, update.revision) for lease in batch.added]
            + [_event_line(MODIFIED, new, as_json, update.revision) for _, new in batch.changed]
            + [_event_line(DELETED, lease, as_json, update.revision) for lease in batch.removed])


@leases_group.command("watch")
@global_options
@click.option("--count", type=click.IntRange(min=1), help="Exit after this many events.")
@click.option("--timeout", type=Seconds(0, MAX_WATCH_TIMEOUT),
              help="Exit after this many seconds (at most a week; without it, never).")
@click.pass_obj
def leases_watch(obj: CLIContext, count: int | None, timeout: float | None) -> None:
    """Print one line per lease event (JSON lines with -o json) until Ctrl-C.

    Each line starts with ADDED (a new key), MODIFIED (a changed key, e.g. a lease renewed
    with new attributes or a subnet reserved again) or DELETED (deleted or expired), as
    kubectl's watch does. With --timeout it ends with one line on stderr saying so.
    """
    reg = EtcdRegistry(obj.etcd_options())
    stop = threading.Event()
    out: queue.Queue = queue.Queue()
    try:
        leases, rev = reg.list_leases(with_expiration=False)
        view = LeaseView()
        view.reset(leases)

        def pump() -> None:
            try:
                for update in reg.watch_leases(rev + 1, stop):
                    out.put(update)
            except OverlayError as e:
                out.put(e)
            finally:
                out.put(None)

        threading.Thread(target=pump, daemon=True, name="overlayctl-watch").start()
        _print_updates(out, view, obj.json, count, timeout)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        reg.close()


def _print_updates(out: queue.Queue, view: LeaseView, as_json: bool, count: int | None,
                   timeout: float | None) -> None:
    deadline = None if timeout is None else time.monotonic() + timeout
    printed = 0
    while True:
        if deadline is not None and time.monotonic() >= deadline:
            # stderr, so stdout stays only events (JSON lines with -o json)
            click.echo(f"watch timed out after {timeout:g}s ({printed} "
                       f"event{'' if printed == 1 else 's'})", err=True)
            return
        wait = 0.2 if deadline is None else max(0.0, min(0.2, deadline - time.monotonic()))
        try:
            item = out.get(timeout=wait)
        except queue.Empty:
            continue
        if item is None:
            return
        if isinstance(item, OverlayError):
            raise item
        for line in _update_lines(view, item, as_json):
            click.echo(line)
            printed += 1
            if count is not None and printed >= count:
                return


@leases_group.command("reserve")
@global_options
@click.argument("subnet")
@click.option("--public-ip", required=True, metavar="IP", help="The node the subnet is for.")
@click.option("--vtep-mac", metavar="MAC", help="Optional VTEP MAC (the node's daemon sets it).")
@click.pass_obj
def leases_reserve(obj: CLIContext, subnet: str, public_ip: str, vtep_mac: str | None) -> None:
    """Reserve SUBNET for the node with --public-ip (never expires, never reassigned).

    An existing lease of the same node is turned into a reservation.
    """
    net = _subnet_arg(subnet)
    try:
        if "%" in public_ip:  # ip_address takes a scope; no public IP has one
            raise ValueError(f"{public_ip!r} carries a scope")
        ip = ip_address(public_ip)  # an IPv6-only network's nodes: their IPv6 address
        mac = normalize_mac(vtep_mac) if vtep_mac else None
    except ValueError as e:
        raise ConfigError(f"--public-ip/--vtep-mac: {e}") from None
    with EtcdRegistry(obj.etcd_options()) as reg:
        lease = reservations.reserve(reg, net, ip, mac)
    if obj.json:
        print_json(lease_to_dict(lease))
    else:
        click.echo(f"reserved {lease.subnet} for {lease.attrs.public_ip}")


@leases_group.command("release")
@global_options
@click.argument("subnet")
@click.option("--yes", is_flag=True, help="Confirm: the node holding it loses its subnet.")
@click.pass_obj
def leases_release(obj: CLIContext, subnet: str, yes: bool) -> None:
    """Delete the lease or reservation of SUBNET (the holder, if running, re-acquires)."""
    net = _subnet_arg(subnet)
    if not yes:
        raise ConfigError(f"releasing {net} takes it away from its node; add --yes to confirm")
    with EtcdRegistry(obj.etcd_options()) as reg:
        reservations.release(reg, net)
    if obj.json:
        print_json({"released": str(net)})
    else:
        click.echo(f"released {net}")
