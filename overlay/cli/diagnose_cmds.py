"""``overlayctl diagnose`` and ``overlayctl trace SRC_IP DST_IP``."""

from __future__ import annotations

import ipaddress
from typing import Any

import click

from overlay.cli import (
    CLIContext,
    cli,
    global_options,
    print_json,
    print_table,
    runtime_default,
)
from overlay.cni.install import DEFAULT_BIN_DIR, DEFAULT_CONF_DIR
from overlay.cni.netconf import DEFAULT_BRIDGE
from overlay.subnetenv import DEFAULT_SUBNET_FILE

# overlay.diagnose.gather / overlay.diagnose.trace are imported inside the commands: they pull in
# the kernel and etcd readers, which every other overlayctl command should not pay for at start-up.

# The JSON's words; FAIL upper-case only as emphasis (the same word), so table and JSON agree.
STATUS_MARK = {"pass": "pass", "fail": "FAIL", "warn": "warn", "skip": "skip"}
# Long FOUND/DETAIL cells wrap at this width rather than being cut.
CELL_WIDTH = 90


def _cidr(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
          ) -> tuple[ipaddress.IPv4Network, ...]:
    out = []
    for v in values:
        try:
            out.append(ipaddress.IPv4Network(v, strict=True))
        except ValueError as e:
            raise click.BadParameter(f"{v!r} is not an IPv4 CIDR (e.g. 10.96.0.0/12): {e}") from e
    return tuple(out)


def _ipv4(ctx: click.Context, param: click.Parameter, value: str | None
          ) -> ipaddress.IPv4Address | None:
    if value is None:
        return None
    try:
        return ipaddress.IPv4Address(value)
    except ValueError as e:
        raise click.BadParameter(f"{value!r} is not an IPv4 address") from e


def _hostport(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None or value == "":  # '' : do not ask /readyz, even if the runtime file can
        return value
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"{value!r}: expected HOST:PORT (e.g. 127.0.0.1:9100)")
    return value


@cli.command()
@global_options
@click.option("--cni-conf-dir", default=DEFAULT_CONF_DIR, show_default=True,
              help="Where the runtime reads CNI configs.")
@click.option("--cni-bin-dir", default=DEFAULT_BIN_DIR, show_default=True,
              help="Where the runtime finds CNI plugin binaries (colon-separated list, "
                   "like CNI_PATH).")
@click.option("--service-cidr", multiple=True, callback=_cidr,
              help="Service CIDR to check for overlap with the pod network (repeatable).")
@click.option("--subnet-file",
              help=f"overlayd's subnet.env [default: the CNI config's subnetFile, else "
                   f"{DEFAULT_SUBNET_FILE}].")
@click.option("--vxlan-device", help="VXLAN device name [default: overlay.<VNI>].")
@click.option("--bridge", help=f"Pod bridge [default: the CNI config's, else {DEFAULT_BRIDGE}].")
@click.option("--public-ip", callback=_ipv4,
              help="This node's public IP [default: the VXLAN device's local address].")
@click.option("--healthz-addr", callback=_hostport,
              help="overlayd's --healthz-addr, to check /readyz [default: the runtime "
                   "file's; '' to look for the overlayd process instead].")
@click.option("--probe/--no-probe", default=True, show_default=True,
              help="Ping every peer across the overlay (DF, path MTU size).")
@click.option("--probe-count", type=click.IntRange(1, 10), default=2, show_default=True,
              help="Echo requests per peer.")
@click.option("--probe-timeout", type=click.FloatRange(0.1, 10), default=1.0, show_default=True,
              help="Seconds to wait for the replies (all peers are probed at once).")
@click.pass_context
def diagnose(ctx: click.Context, cni_conf_dir: str, cni_bin_dir: str,
             service_cidr: tuple[ipaddress.IPv4Network, ...], subnet_file: str | None,
             vxlan_device: str | None, bridge: str | None,
             public_ip: ipaddress.IPv4Address | None, healthz_addr: str | None,
             probe: bool, probe_count: int, probe_timeout: float) -> None:
    """Run the pod-network troubleshooting checklist on this node.

    Run it on the node (for a lab node: `overlay-lab exec NODE -- overlayctl diagnose`):
    every option defaults to what the node's overlayd runs with (its runtime file). Every
    check says what it expected, what it found and how to fix it. Exits 1 when any check
    fails. With etcd unreachable the local checks still run; the others are skipped.
    """
    from overlay.diagnose.gather import diagnose as run
    from overlay.diagnose.state import DiagnoseOptions

    obj = ctx.ensure_object(CLIContext)
    rt = obj.runtime

    def pick(name: str, value: Any) -> Any:  # the option's name is the runtime field's
        return runtime_default(ctx, name, value, getattr(rt, name, None))

    opts = DiagnoseOptions(
        cni_conf_dir=pick("cni_conf_dir", cni_conf_dir),
        cni_bin_dir=pick("cni_bin_dir", cni_bin_dir),
        service_cidrs=service_cidr, subnet_file=pick("subnet_file", subnet_file),
        vxlan_device=pick("vxlan_device", vxlan_device), bridge=pick("bridge", bridge),
        public_ip=pick("public_ip", public_ip), healthz_addr=pick("healthz_addr", healthz_addr),
        probe=probe, probe_count=probe_count, probe_timeout=probe_timeout)
    report = run(opts, obj.etcd_options())
    if obj.json:
        print_json(report.to_dict())
    else:
        _print_report(report)
    if report.failed:
        raise SystemExit(1)


def _print_report(report: Any) -> None:
    f = report.facts
    click.echo(f"node {f.public_ip or '?'}  subnet {f.own_subnet or '?'}  "
               f"device {f.vxlan_name}  bridge {f.bridge_name}  peers {len(f.remotes)}")
    print_table(["CHECK", "STATUS", "FOUND"],
                [(c.name, STATUS_MARK[c.status], c.found) for c in report.checks],
                wrap=CELL_WIDTH)
    bad = [c for c in report.checks if c.status in ("fail", "warn")]
    for c in bad:
        click.echo("")
        click.echo(f"{STATUS_MARK[c.status]} {c.name}")
        click.echo(f"  expected: {c.expected}")
        click.echo(f"  found:    {c.found}")
        if c.fix:
            click.echo(f"  fix:      {c.fix}")
    n = report.counts()
    click.echo("")
    click.echo(f"{len(report.checks)} checks: {n['pass']} passed, {n['fail']} failed, "
               f"{n['warn']} warnings, {n['skip']} skipped")
    if report.skipped():
        click.echo("skipped: " + ", ".join(
            f"{c.name} ({c.found})" for c in report.checks if c.status == "skip"))


@cli.command()
@global_options
@click.argument("src", callback=_ipv4)
@click.argument("dst", callback=_ipv4)
@click.option("--vxlan-device", help="VXLAN device name [default: overlay.<VNI>].")
@click.option("--bridge", default=DEFAULT_BRIDGE, show_default=True, help="Pod bridge.")
@click.pass_context
def trace(ctx: click.Context, src: ipaddress.IPv4Address, dst: ipaddress.IPv4Address,
          vxlan_device: str | None, bridge: str) -> None:
    """The path a packet takes from pod SRC to pod DST, hop by hop.

    Run it on SRC's node. Each hop (source node and bridge, route, VXLAN device, remote
    VTEP MAC and public IP, destination node) is marked in place, missing or wrong.
    Exits 1 when a hop is missing or wrong.
    """
    from overlay.diagnose.trace import trace_path

    obj = ctx.ensure_object(CLIContext)
    rt = obj.runtime
    vxlan_device = runtime_default(ctx, "vxlan_device", vxlan_device,
                                   getattr(rt, "vxlan_device", None))
    bridge = runtime_default(ctx, "bridge", bridge, getattr(rt, "bridge", None))
    result = trace_path(src, dst, obj.etcd_options(), vxlan_device=vxlan_device, bridge=bridge)
    if obj.json:
        print_json(result.to_dict())
    else:
        click.echo(f"trace {src} -> {dst}")
        print_table(["HOP", "STATUS", "DETAIL"],
                    [(h.name, h.status, h.detail) for h in result.hops], wrap=CELL_WIDTH)
        for h in result.hops:
            if h.fix:
                click.echo(f"  {h.name}: fix: {h.fix}")
        if result.note:
            click.echo(result.note)
    if not result.ok:
        raise SystemExit(1)
