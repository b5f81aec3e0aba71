"""``overlay-lab``: up, status, exec, add-node, remove-node, down."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence

from overlay import __version__
from overlay.errors import OverlayError
from overlay.lab.lab import BIN_DIR, Lab
from overlay.lab.matrix import Endpoint, reachability, render
from overlay.lab.spec import (
    DEFAULT_BASE_DIR,
    DEFAULT_NODES,
    DEFAULT_PODS_PER_NODE,
    DEFAULT_PREFIX,
    MAX_NODES,
    MAX_PODS_PER_NODE,
    LabSpec,
)
from overlay.lab.system import in_netns
from overlay.util.text import format_table

log = logging.getLogger(__name__)


def _count(lo: int, hi: int):
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not lo <= n <= hi:
            raise argparse.ArgumentTypeError(f"{n} is out of range {lo}..{hi}")
        return n
    return parse


def _add_common(parser: argparse.ArgumentParser, top: bool) -> None:
    """The options every command takes, before or after the command's name.

    The top-level parser holds the defaults; each command's copy defaults to SUPPRESS so
    that an option given before the command is not reset by the command's own parser."""
    def default(value: object) -> object:
        return value if top else argparse.SUPPRESS
    parser.add_argument("--name", default=default(os.environ.get("OVERLAY_LAB_NAME",
                                                                  DEFAULT_PREFIX)),
                        help="the lab's name, prefixing all its namespaces "
                             f"(default {DEFAULT_PREFIX})")
    parser.add_argument("--lab-dir", default=default(os.environ.get("OVERLAY_LAB_DIR",
                                                                     DEFAULT_BASE_DIR)),
                        help="where labs keep pid files, logs and etcd data "
                             f"(default {DEFAULT_BASE_DIR})")
    parser.add_argument("-v", "--verbose", action="count", default=default(0),
                        help="more logging (-vv: debug)")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    _add_common(common, top=False)

    p = argparse.ArgumentParser(prog="overlay-lab", description=(
        "A multi-node overlay cluster on one machine: nodes and pods are network namespaces, "
        "the underlay is a bridge in a namespace of its own, etcd runs on the underlay."))
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_common(p, top=True)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", parents=[common], help="create the lab, or repair a running one")
    up.add_argument("--nodes", type=_count(1, MAX_NODES), default=None,
                    help=f"number of nodes (default {DEFAULT_NODES}, or the running lab's)")
    up.add_argument("--pods-per-node", type=_count(0, MAX_PODS_PER_NODE), default=None,
                    help=f"pods on each node (default {DEFAULT_PODS_PER_NODE}, "
                         "or the running lab's)")
    up.add_argument("--no-matrix", action="store_true", help="skip the reachability matrix")

    st = sub.add_parser("status", parents=[common], help="nodes, daemons and pods of the lab")
    st.add_argument("-o", "--output", choices=["table", "json"], default="table")

    ex = sub.add_parser("exec", parents=[common],
                        help="run a command in a node's or pod's namespace (or 'underlay')")
    ex.add_argument("target", metavar="TARGET", help="node1, pod-node1-1, underlay, ...")
    ex.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ...")

    an = sub.add_parser("add-node", parents=[common], help="add a node (and its pods)")
    an.add_argument("--pods", type=_count(0, MAX_PODS_PER_NODE), default=None,
                    help="pods on the new node (default: the lab's pods per node)")

    rn = sub.add_parser("remove-node", parents=[common],
                        help="stop a node's daemon, delete its lease and namespaces")
    rn.add_argument("node", metavar="NAME")

    sub.add_parser("down", parents=[common], help="remove everything the lab made")
    sub.add_parser("matrix", parents=[common], help="print the pod-to-pod reachability matrix")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    level = (logging.WARNING if args.verbose == 0 else
             logging.INFO if args.verbose == 1 else logging.DEBUG)
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if os.geteuid() != 0:
        sys.exit("error: overlay-lab needs root (it creates network namespaces)")
    try:
        sys.exit(run(args))
    except OverlayError as e:
        sys.exit(f"error: {e}")
    except BrokenPipeError:  # stdout's reader left while something else wrote to it
        _stdout_to_devnull()
        sys.exit(141)
    except OSError as e:  # e.g. a full disk or a file the lab cannot write
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit("interrupted; run `overlay-lab up` again to finish or `overlay-lab down`")


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


def run(args: argparse.Namespace) -> int:
    lab = Lab(LabSpec(args.name, args.lab_dir), progress=lambda m: say(f"==> {m}"))
    if args.command == "exec":
        return cmd_exec(lab, args.target, args.cmd)
    if args.command == "status":
        return cmd_status(lab, args.output)
    if args.command == "matrix":
        return print_matrix(lab)
    with lab.lock() as lock:
        if args.command == "up":
            start = time.monotonic()
            lab.up(args.nodes, args.pods_per_node)
            say(f"==> lab {lab.spec.prefix} is up ({time.monotonic() - start:.1f} s)")
            return summary(lab, matrix=not args.no_matrix)
        if args.command == "add-node":
            node = lab.add_node(args.pods)
            say(f"added {node}")
            return print_matrix(lab)
        if args.command == "remove-node":
            lab.remove_node(args.node)
            return 0
        if args.command == "down":
            lab.down()
            lock.remove = True
            return 0
    raise AssertionError(args.command)


def summary(lab: Lab, matrix: bool) -> int:
    say("")
    say("Leases (overlayctl leases list):")
    got = lab.overlayctl("leases", "list", check=False)
    say((got.stdout or got.stderr).rstrip())
    rc = print_matrix(lab) if matrix else 0
    say("")
    pods = endpoints(lab)
    far = [p for p in pods if pods and p.node != pods[0].node]
    for line in cheat_sheet(lab.spec, lab.state.nodes if lab.state else [], BIN_DIR,
                            pods[0].name if far else None, far[0].ip if far else None):
        say(line)
    return rc


def lab_flags(spec: LabSpec) -> str:
    """The options naming this lab, as a user has to repeat them (empty for the default)."""
    flag = "" if spec.prefix == DEFAULT_PREFIX else f" --name {spec.prefix}"
    if spec.base_dir != DEFAULT_BASE_DIR:
        flag += f" --lab-dir {spec.base_dir}"
    return flag


def cheat_sheet(spec: LabSpec, nodes: list[str], bin_dir: str, pod: str | None = None,
                far_ip: str | None = None) -> list[str]:
    """What to type next: the tools on PATH, overlayctl and diagnose on a node, the logs."""
    flag = lab_flags(spec)
    node = nodes[0] if nodes else "node1"
    lines = [f"Tools:     export PATH={bin_dir}:$PATH   "
             "(overlay-lab, overlayctl, overlayd, overlay-cni; or use the cmd/ links)"]
    if pod and far_ip:
        lines.append(f"Try:       overlay-lab exec{flag} {pod} -- ping -c3 {far_ip}")
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


def endpoints(lab: Lab) -> list[Endpoint]:
    state = lab.state
    assert state is not None
    return [Endpoint(p.name, lab.spec.pod_ns(p.name), p.ip, p.node)
            for p in sorted(state.pods.values(), key=lambda p: (p.node, p.name)) if p.ip]


def print_matrix(lab: Lab) -> int:
    lab._need_state()
    pods = endpoints(lab)
    if len(pods) < 2:
        say("(fewer than two pods: no reachability matrix)")
        return 0
    m = reachability(pods)
    bad = sum(1 for ok in m.values() if not ok)
    say("")
    say(f"Pod-to-pod reachability (ping -c1 -W1 from each pod to every other; {len(m)} pairs):")
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
    say(f"lab {st['name']} ({st['dir']}); etcd {e['endpoint']} in {e['netns']}: "
        f"{'healthy' if e['healthy'] else 'DOWN'} (pid {e['pid']})")
    say("")
    say(format_table(["NODE", "NETNS", "PUBLIC-IP", "SUBNET", "PID", "READY", "HEALTHZ"],
                     [[n["name"], n["netns"], n["public_ip"], n["subnet"], n["pid"],
                       "yes" if n["ready"] else "no", n["healthz"]] for n in st["nodes"]]))
    say("(each HEALTHZ address is inside its node's namespace: "
        "overlay-lab exec NODE -- curl http://ADDR/readyz)")
    say("")
    say(format_table(["POD", "NETNS", "NODE", "IP"],
                     [[p["name"], p["netns"] if p["present"] else p["netns"] + " (missing)",
                       p["node"], p["ip"]] for p in st["pods"]]))
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
