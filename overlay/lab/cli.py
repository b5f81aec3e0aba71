"""``overlay-lab``: up, status, exec, add-node, remove-node, pod add|del, probe, matrix, down.

A click command line like overlayctl's: ``--name``, ``--lab-dir`` and ``-v`` are accepted
before or after the command (:func:`_lab_options` adds them to the group and to every
command; each one given is merged into the shared :class:`LabOptions` as it is parsed,
so one given after the command wins).  Bad input is one line and a non-zero exit: click's
usage errors exit 2, what the lab refuses (an unknown node or pod) exits 1.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import click
from click.core import ParameterSource

from overlay import __version__
from overlay.errors import OverlayError
from overlay.lab.lab import BIN_DIR, Lab
from overlay.lab.matrix import Endpoint, reachability, render
from overlay.lab.probe import DEFAULT_TIMEOUT, PROTOCOLS, Target, probe
from overlay.lab.spec import (
    DEFAULT_BASE_DIR,
    DEFAULT_NAMESPACE,
    DEFAULT_NODES,
    DEFAULT_PODS_PER_NODE,
    DEFAULT_PREFIX,
    MAX_NODES,
    MAX_PODS_PER_NODE,
    RESPONDER_PORTS,
    LabError,
    LabSpec,
    parse_labels,
)
from overlay.lab.system import in_netns
from overlay.util.text import format_table

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class LabOptions:
    """The options naming the lab, wherever on the command line they were given."""

    name: str = DEFAULT_PREFIX
    lab_dir: str = DEFAULT_BASE_DIR
    verbose: int = 0


def _log_level(verbose: int) -> int:
    return logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG


def _set_option(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    assert param.name is not None
    if ctx.get_parameter_source(param.name) not in (ParameterSource.DEFAULT, None):
        setattr(ctx.ensure_object(LabOptions), param.name, value)


def _add_verbose(ctx: click.Context, param: click.Parameter, value: int) -> None:
    obj = ctx.ensure_object(LabOptions)   # -v counts wherever given: `-v status -v` is -vv
    obj.verbose += value or 0
    logging.getLogger().setLevel(_log_level(obj.verbose))


def _lab_options(top: bool) -> Callable[[F], F]:
    """``--name``, ``--lab-dir`` and ``-v`` for the group (``top``) or a command (see
    above).  Only the group's read OVERLAY_LAB_NAME / OVERLAY_LAB_DIR: were a command's to
    read them too, the variable would override an option given before the command."""
    def add(f: F) -> F:
        common: dict[str, Any] = {"expose_value": False, "show_default": True}
        f = click.option("-v", "--verbose", count=True, callback=_add_verbose,
                         help="More logging on stderr (-vv: debug).", expose_value=False)(f)
        f = click.option("--lab-dir", envvar="OVERLAY_LAB_DIR" if top else None,
                         default=DEFAULT_BASE_DIR, callback=_set_option, metavar="DIR",
                         help="Where labs keep pid files, logs and etcd data.", **common)(f)
        return click.option("--name", envvar="OVERLAY_LAB_NAME" if top else None,
                            default=DEFAULT_PREFIX, callback=_set_option, metavar="PREFIX",
                            help="The lab's name, prefixing all its namespaces.", **common)(f)
    return add


lab_options = _lab_options(top=False)


class LabGroup(click.Group):
    """Turns what the lab refuses into one line on stderr and exit 1, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OverlayError as e:
            _fail(f"error: {e}")
        except BrokenPipeError:  # stdout's reader left while something else wrote to it
            _stdout_to_devnull()
            sys.exit(141)
        except OSError as e:  # e.g. a full disk or a file the lab cannot write
            _fail(f"error: {e}")
        except KeyboardInterrupt:
            _fail("interrupted; run `overlay-lab up` again to finish or `overlay-lab down`")


def _fail(line: str) -> NoReturn:
    click.echo(line, err=True)
    sys.exit(1)


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(f"overlay-lab {__version__}")
        ctx.exit(0)


@click.group(cls=LabGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True,
              callback=_print_version, help="Print the version and exit.")
@_lab_options(top=True)
@click.pass_context
def cli(ctx: click.Context) -> None:
    """A multi-node overlay cluster on one machine: nodes and pods are network namespaces,
    the underlay is a bridge in a namespace of its own, etcd runs on the underlay.

    --name, --lab-dir and -v may be given before or after the command."""
    obj = ctx.ensure_object(LabOptions)
    logging.basicConfig(level=_log_level(obj.verbose), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def open_lab(obj: LabOptions) -> Lab:
    """The lab the options name (root only: it works on network namespaces)."""
    if os.geteuid() != 0:
        _fail("error: overlay-lab needs root (it creates network namespaces)")
    return Lab(LabSpec(obj.name, obj.lab_dir), progress=lambda m: say(f"==> {m}"))


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="overlay-lab")


# --------------------------------------------------------------------------- commands
def _count(hi: int) -> click.IntRange:
    return click.IntRange(0, hi)


@cli.command()
@lab_options
@click.option("--nodes", type=click.IntRange(1, MAX_NODES), default=None,
              help=f"Number of nodes (default {DEFAULT_NODES}, or the running lab's).")
@click.option("--pods-per-node", type=_count(MAX_PODS_PER_NODE), default=None,
              help=f"Pods on each node (default {DEFAULT_PODS_PER_NODE}, or the running lab's).")
@click.option("--no-matrix", is_flag=True, help="Skip the reachability matrix.")
@click.option("--dual-stack", "families", flag_value="dual", default=None,
              help="IPv4 and IPv6: the underlay gets fd00:192:168:1::/64 too, the pods "
                   "an address from 10.244.0.0/16 and one from fd00:10:244::/56.")
@click.option("--ipv6-only", "families", flag_value="ipv6",
              help="Pods in fd00:10:244::/56 only (EnableIPv4 false).")
@click.pass_obj
def up(obj: LabOptions, nodes: int | None, pods_per_node: int | None, no_matrix: bool,
       families: str | None) -> None:
    """Create the lab, or repair a running one (a new lab is IPv4 only unless
    --dual-stack or --ipv6-only is given; a running one keeps its families)."""
    lab = open_lab(obj)
    with lab.lock():
        start = time.monotonic()
        lab.up(nodes, pods_per_node, families)
        say(f"==> lab {lab.spec.prefix} is up ({time.monotonic() - start:.1f} s)")
        sys.exit(summary(lab, matrix=not no_matrix))


@cli.command()
@lab_options
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@click.pass_obj
def status(obj: LabOptions, output: str) -> None:
    """Nodes, daemons and pods of the lab."""
    sys.exit(cmd_status(open_lab(obj), output))


@cli.command("exec", context_settings={"ignore_unknown_options": True,
                                       "allow_interspersed_args": False})
@lab_options
@click.argument("target", metavar="TARGET")
@click.argument("cmd", nargs=-1, type=click.UNPROCESSED, metavar="-- CMD ...")
@click.pass_obj
def exec_(obj: LabOptions, target: str, cmd: tuple[str, ...]) -> None:
    """Run a command in a node's or pod's namespace (or 'underlay').

    TARGET: node1, pod-node1-1, NS/NAME, underlay, ..."""
    sys.exit(cmd_exec(open_lab(obj), target, list(cmd)))


@cli.command("add-node")
@lab_options
@click.option("--pods", type=_count(MAX_PODS_PER_NODE), default=None,
              help="Pods on the new node (default: the lab's pods per node).")
@click.option("--no-ipv6", is_flag=True,
              help="In a dual-stack lab: a node whose underlay has no IPv6 address.")
@click.pass_obj
def add_node(obj: LabOptions, pods: int | None, no_ipv6: bool) -> None:
    """Add a node (and its pods)."""
    lab = open_lab(obj)
    with lab.lock():
        node = lab.add_node(pods, no_ipv6=no_ipv6)
        say(f"added {node}")
        sys.exit(print_matrix(lab))


@cli.command("remove-node")
@lab_options
@click.argument("node", metavar="NAME")
@click.pass_obj
def remove_node(obj: LabOptions, node: str) -> None:
    """Stop a node's daemon, delete its lease and namespaces."""
    lab = open_lab(obj)
    with lab.lock():
        lab.remove_node(node)


@cli.command()
@lab_options
@click.pass_obj
def down(obj: LabOptions) -> None:
    """Remove everything the lab made."""
    lab = open_lab(obj)
    with lab.lock() as lock:
        lab.down()
        lock.remove = True


def _port_option(f: F) -> F:
    return click.option("--port", type=click.IntRange(1, 65535), default=None,
                        help=f"Destination port (default {RESPONDER_PORTS[0]}; every lab pod "
                             f"answers on {' and '.join(map(str, RESPONDER_PORTS))}).")(f)


def _protocol_option(f: F) -> F:
    return click.option("--protocol", type=click.Choice(PROTOCOLS), default=None,
                        help="tcp (default) or udp.")(f)


@cli.command()
@lab_options
@_port_option
@_protocol_option
@click.option("--family", type=click.Choice(["4", "6", "all"]), default="all",
              show_default=True, help="Which addresses to test: IPv4, IPv6 or every family "
                                      "the lab has (one matrix each).")
@click.pass_obj
def matrix(obj: LabOptions, port: int | None, protocol: str | None, family: str) -> None:
    """Print the pod-to-pod reachability matrix (ping; with --port/--protocol, a
    connection to each pod's responder)."""
    lab = open_lab(obj)
    families = None if family == "all" else [int(family)]
    if port is None and protocol is None:
        sys.exit(print_matrix(lab, families=families))
    sys.exit(print_matrix(lab, port or RESPONDER_PORTS[0], protocol or PROTOCOLS[0],
                          families=families))


@cli.command("probe")
@lab_options
@click.argument("source", metavar="FROM")
@click.argument("dest", metavar="TO")
@_port_option
@_protocol_option
@click.option("--timeout", type=click.FloatRange(0.1, 30), default=DEFAULT_TIMEOUT,
              show_default=True, help="Seconds to wait for an answer.")
@click.option("--family", type=click.Choice(["4", "6"]), default=None,
              help="Probe TO's IPv4 or IPv6 address (default: its first one).")
@click.pass_obj
def probe_cmd(obj: LabOptions, source: str, dest: str, port: int | None,
              protocol: str | None, timeout: float, family: str | None) -> None:
    """Does a connection from pod FROM reach pod TO's responder? One line saying why;
    exit 0 if it does, 1 if not, 2 if FROM or TO names no pod. FROM and TO: a lab pod's
    name, or NS/NAME."""
    lab = open_lab(obj)
    port, protocol = port or RESPONDER_PORTS[0], protocol or PROTOCOLS[0]
    version = int(family) if family else None
    try:
        a, b = lab.find_pod(source), lab.find_pod(dest)
        addr = lab.pod_address(b, version)
    except LabError as e:   # exit 1 means "not reachable": a bad name is not that
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    got = lab.probe(a.ref, b.ref, port, protocol, timeout, version)
    say(f"{'reachable' if got.ok else 'unreachable'}: {a.ref} -> {b.ref} ({addr}) "
        f"{protocol}/{port}: {got.why}")
    sys.exit(0 if got.ok else 1)


@cli.group("pod", cls=LabGroup)
def pod_group() -> None:
    """Add or delete a lab pod (a namespace attached by CNI, with a responder)."""


@pod_group.command("add")
@lab_options
@click.argument("pod_name", metavar="NAME")
@click.option("--node", required=True, metavar="NODE", help="The node to attach it on.")
@click.option("--namespace", "-n", default=DEFAULT_NAMESPACE, show_default=True,
              metavar="NS", help="The pod's namespace.")
@click.option("--labels", default="", metavar="K=V,...",
              help="Labels, passed to the CNI plugin as args.cni.labels.")
@click.pass_obj
def pod_add(obj: LabOptions, pod_name: str, node: str, namespace: str, labels: str) -> None:
    """Add pod NAME on NODE."""
    lab = open_lab(obj)
    parsed = parse_labels(labels)
    with lab.lock():
        pod = lab.add_pod(pod_name, node, namespace, parsed)
    say(f"added pod {pod.ref}: {' '.join(filter(None, dict.fromkeys([pod.ip, pod.ip6])))} "
        f"on {pod.node}")


@pod_group.command("del")
@lab_options
@click.argument("ref", metavar="NS/NAME")
@click.pass_obj
def pod_del(obj: LabOptions, ref: str) -> None:
    """Delete a lab pod (CNI DEL, its responder and namespace)."""
    lab = open_lab(obj)
    with lab.lock():
        pod = lab.del_pod(ref)
    say(f"deleted pod {pod.ref}")


def say(msg: str) -> None:
    """One line on stdout; once the reader has gone (``| head -1``) the rest is dropped
    quietly and the command carries on, so an ``up`` never stops half-way through."""
    try:
        print(msg, flush=True)
    except BrokenPipeError:
        _stdout_to_devnull()


def _stdout_to_devnull() -> None:
    """Point stdout at /dev/null: later writes, and the flush at exit, go nowhere."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def summary(lab: Lab, matrix: bool) -> int:
    say("")
    state = lab._need_state()
    holds = ("holds 10.244.<i>.0/24" if state.has_ipv4() else
             "holds fd00:10:244:<i>::/64 (IPv6-only)")
    say(f"Nodes (the example cluster: node<i> at 192.168.1.1<i> {holds}"
        + ("; IPv6 at fd00:192:168:1::1<i>" if state.has_ipv6() else "") + "):")
    say(node_table(lab))
    say("")
    say("Leases (overlayctl leases list):")
    got = lab.overlayctl("leases", "list", check=False)
    say((got.stdout or got.stderr).rstrip())
    rc = print_matrix(lab) if matrix else 0
    say("")
    pods = endpoints(lab)
    far = [p for p in pods if pods and p.node != pods[0].node]
    far6 = lab.state.pods[far[0].name].ip6 if far and lab.state else None
    for line in cheat_sheet(lab.spec, lab.state.nodes if lab.state else [], BIN_DIR,
                            pods[0].name if far else None, far[0].ip if far else None,
                            far6 if far6 != (far[0].ip if far else None) else None):
        say(line)
    return rc


def node_table(lab: Lab) -> str:
    """NODE, NODE-IP, POD-CIDR: the subnet each node's overlayd really holds (its
    subnet.env), so a reservation that did not take shows; with IPv6, its IPv6 columns."""
    state = lab.state
    assert state is not None
    if not state.has_ipv6():
        return format_table(["NODE", "NODE-IP", "POD-CIDR"],
                            [[n, lab.spec.node_ip(n), lab.node_subnet(n)] for n in state.nodes])
    rows = [[n, lab.spec.node_ip(n), lab.spec.node_ip6(n) if state.node_has_ipv6(n) else None,
             lab.node_subnet(n) if state.has_ipv4() else None, lab.node_subnet6(n)]
            for n in state.nodes]
    return format_table(["NODE", "NODE-IP", "NODE-IPV6", "POD-CIDR", "POD-CIDR-V6"], rows)


def lab_flags(spec: LabSpec) -> str:
    """The options naming this lab, as a user has to repeat them (empty for the default)."""
    flag = "" if spec.prefix == DEFAULT_PREFIX else f" --name {spec.prefix}"
    if spec.base_dir != DEFAULT_BASE_DIR:
        flag += f" --lab-dir {spec.base_dir}"
    return flag


def cheat_sheet(spec: LabSpec, nodes: list[str], bin_dir: str, pod: str | None = None,
                far_ip: str | None = None, far_ip6: str | None = None) -> list[str]:
    """What to type next: the tools on PATH, overlayctl and diagnose on a node, the logs."""
    flag = lab_flags(spec)
    node = nodes[0] if nodes else "node1"
    lines = [f"Tools:     export PATH={bin_dir}:$PATH   "
             "(overlay-lab, overlayctl, overlayd, overlay-cni; or use the cmd/ links)"]
    if pod and far_ip:
        lines.append(f"Try:       overlay-lab exec{flag} {pod} -- ping -c3 {far_ip}")
    if pod and far_ip6:
        lines.append(f"           overlay-lab exec{flag} {pod} -- ping -c3 {far_ip6}")
    lines += [
        f"On a node: overlay-lab exec{flag} {node} -- overlayctl leases list",
        f"Diagnose:  overlay-lab exec{flag} {node} -- overlayctl diagnose",
        "           (exec points overlayctl at the node's overlayd runtime file)",
        f"Logs:      {spec.node_file(node, 'overlayd.log')} (one per node), "
        f"{os.path.join(spec.lab_dir, 'etcd.log')}",
        f"Status:    overlay-lab status{flag}",
        f"Tear down: overlay-lab down{flag}",
    ]
    return lines


def endpoints(lab: Lab, family: int | None = None) -> list[Endpoint]:
    """The pods with an address of IP version ``family`` (None: each pod's first one)."""
    state = lab.state
    assert state is not None
    pods = sorted(state.pods.values(), key=lambda p: (p.node, p.key))
    addrs = [(p, p.ip if family is None else p.address(family)) for p in pods]
    return [Endpoint(p.key, lab.spec.pod_ns(p.key), a, p.node) for p, a in addrs if a]


def print_matrix(lab: Lab, port: int | None = None, protocol: str | None = None,
                 families: list[int] | None = None) -> int:
    """The matrix by ping, or (``port`` and ``protocol`` given) by probing each pod's
    responder, once per IP version in ``families`` (default: each the lab has); 1 if
    any pair failed."""
    state = lab._need_state()
    rc = 0
    for family in families or state.families_list():
        if family not in state.families_list():
            raise LabError(f"lab {lab.spec.prefix} has no IPv{family} pod addresses "
                           f"(its families: {state.families})")
        rc |= _print_matrix(lab, family, port, protocol)
    return rc


def _print_matrix(lab: Lab, family: int, port: int | None, protocol: str | None) -> int:
    state = lab._need_state()
    pods = endpoints(lab, family)
    if len(pods) < 2:
        say(f"(fewer than two pods with an IPv{family} address: no reachability matrix)")
        return 0
    if port is None or protocol is None:
        m = reachability(pods)
        how = "ping -c1 -W1 from each pod to every other"
    else:
        refs = {key: pod.ref for key, pod in state.pods.items()}
        m = reachability(pods, check=lambda a, b: probe(
            a.netns, Target(refs[b.name], b.ip), port, protocol).ok)
        how = f"{protocol}/{port} from each pod to every other pod's responder"
    bad = sum(1 for ok in m.values() if not ok)
    say("")
    over = f" over IPv{family}" if state.has_ipv6() else ""
    say(f"Pod-to-pod reachability{over} ({how}; {len(m)} pairs):")
    say(render(pods, m))
    if bad:
        say(f"{bad} of {len(m)} pairs FAILED; see `overlay-lab status` and the overlayd logs "
            f"under {lab.spec.lab_dir}")
        return 1
    say(f"all {len(m)} pairs reachable")
    return 0


def cmd_status(lab: Lab, output: str) -> int:
    st = lab.status()
    if output == "json":
        say(json.dumps(st, indent=2))
        return 0
    e = st["etcd"]
    six = st["families"] != "ipv4"
    say(f"lab {st['name']} ({st['dir']}); etcd {e['endpoint']} in {e['netns']}: "
        f"{'healthy' if e['healthy'] else 'DOWN'} (pid {e['pid']})"
        + (f"; pod network {st['families']}" if six else ""))
    say("")
    v6_node = ["PUBLIC-IPV6", "IPV6-SUBNET"] if six else []
    say(format_table(["NODE", "NETNS", "PUBLIC-IP", *v6_node[:1], "SUBNET", *v6_node[1:],
                      "PID", "READY", "HEALTHZ"],
                     [[n["name"], n["netns"], n["public_ip"],
                       *([n["public_ipv6"]] if six else []), n["subnet"],
                       *([n["ipv6_subnet"]] if six else []), n["pid"],
                       "yes" if n["ready"] else "no", n["healthz"]] for n in st["nodes"]]))
    say("(each HEALTHZ address is inside its node's namespace: "
        "overlay-lab exec NODE -- curl http://ADDR/readyz)")
    for n in st["nodes"]:
        if n["ipv6_missing"]:
            say(f"{n['name']}: no IPv6: {n['ipv6_missing']}")
    say("")
    say(format_table(["NAMESPACE", "POD", "NETNS", "NODE", "IP", *(["IPV6"] if six else []),
                      "LABELS"],
                     [[p["namespace"], p["name"],
                       p["netns"] if p["present"] else p["netns"] + " (missing)",
                       p["node"], p["ip"], *([p["ipv6"]] if six else []),
                       ",".join(f"{k}={v}" for k, v in sorted(p["labels"].items())) or None]
                      for p in st["pods"]]))
    return 0


def cmd_exec(lab: Lab, target: str, cmd: list[str]) -> int:
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        cmd = [os.environ.get("SHELL", "/bin/sh")]
    ns = lab.resolve_target(target)
    env = lab.exec_env(ns, os.environ)
    argv = in_netns(ns, cmd)
    sys.stdout.flush()
    # The command gets the default SIGPIPE (Python ignores it, and an ignored signal
    # stays ignored across exec), so `exec ... | head` ends it as a shell would.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    # ip netns exec looks the command up on the PATH it is given, so the venv's
    # overlayctl is found even from a plain root PATH.
    os.execvpe(argv[0], argv, env)
    return 127  # not reached
