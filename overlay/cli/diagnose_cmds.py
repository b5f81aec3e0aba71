"""``overlayctl diagnose`` and ``overlayctl trace SRC_IP DST_IP``."""

from __future__ import annotations

import ipaddress
from typing import Any

import click

from overlay.cli import (
    CLIContext,
    Seconds,
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
@click.option("--vxlan-device", help="VXLAN device name [default: overlay.<VNI>; "
                                     "overlay-v6.<VNI> on an IPv6-only network].")
@click.option("--bridge", help=f"Pod bridge [default: the CNI config's, else {DEFAULT_BRIDGE}].")
@click.option("--public-ip", callback=_ipv4,
              help="This node's public IP [default: the VXLAN device's local address; "
                   "an IPv6-only node's is always its device's].")
@click.option("--healthz-addr", callback=_hostport,
              help="overlayd's --healthz-addr, to check /readyz [default: the runtime "
                   "file's; '' to look for the overlayd process instead].")
@click.option("--probe/--no-probe", default=True, show_default=True,
              help="Ping every peer across the overlay (DF, path MTU size).")
@click.option("--probe-count", type=click.IntRange(1, 10), default=2, show_default=True,
              help="Echo requests per peer.")
@click.option("--probe-timeout", type=Seconds(0.1, 10), default=1.0, show_default=True,
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
        probe=probe, probe_count=probe_count, probe_timeout=probe_timeout,
        node_name=getattr(rt, "node_name", None),
        policy_log_denied=bool(getattr(rt, "policy_log_denied", False)))
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
@click.argument("src")
@click.argument("dst")
@click.option("--port", type=click.IntRange(1, 65535),
              help="Destination port: shows the NetworkPolicy verdict for it.")
@click.option("--protocol", type=click.Choice(["tcp", "udp", "sctp"], case_sensitive=False),
              default="tcp", show_default=True, help="Protocol of the --port verdict.")
@click.option("--policy-only", is_flag=True,
              help="Only the policy verdict (runs on any machine reaching etcd).")
@click.option("--vxlan-device", help="VXLAN device name [default: overlay.<VNI>].")
@click.option("--bridge", default=DEFAULT_BRIDGE, show_default=True, help="Pod bridge.")
@click.pass_context
def trace(ctx: click.Context, src: str, dst: str, port: int | None, protocol: str,
          policy_only: bool, vxlan_device: str | None, bridge: str) -> None:
    """The path a packet takes from pod SRC to pod DST, hop by hop, and the
    NetworkPolicy verdict on a connection to --port.

    SRC and DST are pod IPs or pod names (NAMESPACE/NAME, or NAME in namespace default)
    of the pod registry; two IPv6 pod IPs are traced over overlay-v6.<VNI> and the
    IPv6 underlay. Run it on SRC's node. Each hop (source node and bridge, route,
    VXLAN device, remote VTEP MAC and public IP, destination node) is marked in place,
    missing or wrong. With --port, the policy part says whether egress at SRC and
    ingress at DST are isolated, which policies allow them, and the verdict. Exits 1
    when a hop is missing or wrong, or when the policies deny the connection.
    """
    from overlay.diagnose.gather import gather_cluster
    from overlay.diagnose.trace import TraceResult, trace_path

    obj = ctx.ensure_object(CLIContext)
    rt = obj.runtime
    vxlan_device = runtime_default(ctx, "vxlan_device", vxlan_device,
                                   getattr(rt, "vxlan_device", None))
    bridge = runtime_default(ctx, "bridge", bridge, getattr(rt, "bridge", None))
    etcd = obj.etcd_options()
    cluster = gather_cluster(etcd)
    src_ip, dst_ip, verdict = _policy_part(etcd, cluster, src, dst, port, protocol)
    result = (TraceResult(src_ip, dst_ip) if policy_only else
              trace_path(src_ip, dst_ip, etcd, vxlan_device=vxlan_device, bridge=bridge,
                         cluster=cluster))
    if obj.json:
        print_json({**result.to_dict(), "policy": verdict.to_dict()})
    else:
        _print_trace(result, verdict, policy_only)
    if not result.ok or verdict.allowed is False:
        raise SystemExit(1)


def _policy_part(etcd: Any, cluster: Any, src: str, dst: str, port: int | None, protocol: str
                 ) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address,
                            ipaddress.IPv4Address | ipaddress.IPv6Address, Any]:
    """SRC and DST as addresses, and the policy verdict (not judged without --port)."""
    from overlay.diagnose.policy_state import gather_policy
    from overlay.diagnose.policy_trace import (
        build_verdict,
        endpoint_text,
        node_addresses,
        pod_name,
        resolve_endpoint,
        unjudged,
    )
    from overlay.errors import ConfigError
    from overlay.policy.build import pod_of

    src_ip, dst_ip = _address(src), _address(dst)
    for ip, text, what in ((src_ip, src, "SRC"), (dst_ip, dst, "DST")):
        if ip is None:
            pod_name(text, what)  # a malformed name is refused before etcd is read
    if src_ip is not None and dst_ip is not None and src_ip.version != dst_ip.version:
        from overlay.errors import ConfigError
        raise ConfigError(f"SRC {src_ip} and DST {dst_ip} are of different families: give "
                          "two IPv4 or two IPv6 pod addresses")
    if port is None and src_ip is not None and dst_ip is not None:
        return src_ip, dst_ip, unjudged(src, dst, None, protocol,
                                        "give --port P (and --protocol) for the "
                                        "NetworkPolicy verdict")
    state = gather_policy(etcd, cluster)
    if state.error:
        if src_ip is None or dst_ip is None:
            raise ConfigError(f"cannot look pod names up: {state.error}")
        return src_ip, dst_ip, unjudged(src, dst, port, protocol,
                                        f"not judged: etcd not read ({state.error})")
    pods = [pod_of(r) for r in state.unambiguous()]
    nodes = node_addresses(cluster.leases, pods)
    a = resolve_endpoint(src, pods, nodes, "SRC")
    b = resolve_endpoint(dst, pods, nodes, "DST")
    if port is None:
        v = unjudged(endpoint_text(a), endpoint_text(b), None, protocol,
                     "give --port P (and --protocol) for the NetworkPolicy verdict")
    else:
        v = build_verdict(a, b, port, protocol, state.namespace_labels, state.policies)
    return _ip(a.ip), _ip(b.ip), v


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _ip(ip: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """A resolved endpoint's address (a pod name resolves to its IPv4 one; give the
    IPv6 addresses to trace over IPv6)."""
    if not isinstance(ip, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        from overlay.errors import ConfigError
        raise ConfigError(f"{ip} is not an IP address")
    return ip


def _print_trace(result: Any, verdict: Any, policy_only: bool) -> None:
    from overlay.diagnose.policy_trace import verdict_lines

    click.echo(f"trace {result.src} -> {result.dst}")
    if not policy_only:
        print_table(["HOP", "STATUS", "DETAIL"],
                    [(h.name, h.status, h.detail) for h in result.hops], wrap=CELL_WIDTH)
        for h in result.hops:
            if h.fix:
                click.echo(f"  {h.name}: fix: {h.fix}")
        if result.note:
            click.echo(result.note)
    for line in verdict_lines(verdict):
        click.echo(line)
