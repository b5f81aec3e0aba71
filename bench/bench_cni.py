#!/usr/bin/env python3
"""CNI ADD/DEL wall time: this plugin vs the reference bridge + host-local, same run.

Everything happens inside namespaces this script makes (prefix ``ovcni-bn``): a "node"
namespace in which both plugins run (as a runtime would run them, one process per call)
and one pod namespace per attachment.  Each round does, interleaved so noise hits all
alike: reference ADD, overlay ADD via the warm server, overlay ADD in-process (fallback);
then the same for DEL.  Reported: median and p99 per variant and the ratios
overlay/reference (targets: ADD median <= 1.5x, DEL median <= 1x, warm server).
When this venv's interpreter is not Debian's /usr/bin/python3 (e.g. a pyenv build with a
shared libpython, slower to start), the warm variant is also run with the entry started
by /usr/bin/python3 ("overlay-warm-sys") to show the interpreter's share.

    sudo .venv/bin/python bench/bench_cni.py [--rounds 40] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

PREFIX = "ovcni-bn"
NODE = f"{PREFIX}-node"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTRY = os.path.join(ROOT, "cni-plugin", "overlay")
REF_BIN = "/usr/lib/cni"


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=check, capture_output=True, text=True)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


class Variant:
    def __init__(self, label: str, argv: list[str], config: dict, env: dict[str, str]):
        self.label = label
        self.argv = argv
        self.stdin = json.dumps(config).encode()
        self.env = env
        self.add: list[float] = []
        self.dele: list[float] = []

    def call(self, command: str, container_id: str, netns: str) -> float:
        env = dict(self.env, CNI_COMMAND=command, CNI_CONTAINERID=container_id,
                   CNI_NETNS=f"/var/run/netns/{netns}", CNI_IFNAME="eth0", CNI_PATH=REF_BIN)
        start = time.perf_counter()
        proc = subprocess.run(self.argv, input=self.stdin, env=env, capture_output=True)
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"{self.label} {command} {container_id}: {proc.stdout!r} "
                               f"{proc.stderr!r}")
        return elapsed


def inner(args: argparse.Namespace) -> dict:
    """Runs inside the node namespace."""
    work = tempfile.mkdtemp(prefix=f"{PREFIX}-")
    sock = os.path.join(work, "cni.sock")
    python = sys.executable
    server_log = open(os.path.join(work, "srv.log"), "w")  # noqa: SIM115 (a child's log: open while the child runs)
    server = subprocess.Popen(
        [python, "-m", "overlay.cni.plugin", "serve", "--socket", sock, "-v"],
        stdout=subprocess.DEVNULL, stderr=server_log)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(sock):
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("warm server did not start")
            time.sleep(0.02)
        common = {"hairpinMode": True, "mtu": 1450}
        variants = [
            Variant("reference", [os.path.join(REF_BIN, "bridge")],
                    {"cniVersion": "1.0.0", "name": f"{PREFIX}-ref", "type": "bridge",
                     "bridge": "ovcni-bnr", "isGateway": True, "isDefaultGateway": True,
                     **common, "ipam": {"type": "host-local", "subnet": "10.251.1.0/24",
                                        "dataDir": work}}, {}),
            Variant("overlay-warm", [python, "-IS", ENTRY],
                    {"cniVersion": "1.0.0", "name": f"{PREFIX}-warm", "type": "overlay",
                     "bridge": "ovcni-bnw", "subnet": "10.251.2.0/24",
                     "isDefaultGateway": True, "dataDir": work, **common},
                    {"OVERLAY_CNI_SOCKET": sock}),
            Variant("overlay-fallback", [python, "-IS", ENTRY],
                    {"cniVersion": "1.0.0", "name": f"{PREFIX}-fb", "type": "overlay",
                     "bridge": "ovcni-bnf", "subnet": "10.251.3.0/24",
                     "isDefaultGateway": True, "dataDir": work, **common},
                    {"OVERLAY_CNI_SOCKET": os.path.join(work, "absent.sock")}),
        ]
        system_python = "/usr/bin/python3"
        if os.path.exists(system_python) and (os.path.realpath(system_python)
                                              != os.path.realpath(python)):
            # The same entry and server, the client started by Debian's python3 (what a
            # fresh machine's venv links to) instead of this venv's interpreter.
            variants.append(Variant(
                "overlay-warm-sys", [system_python, "-IS", ENTRY],
                {"cniVersion": "1.0.0", "name": f"{PREFIX}-sys", "type": "overlay",
                 "bridge": "ovcni-bns", "subnet": "10.251.4.0/24", "isDefaultGateway": True,
                 "dataDir": work, **common}, {"OVERLAY_CNI_SOCKET": sock}))
        fallback_rounds = max(3, args.rounds // 4)
        for r in range(args.rounds):
            for v in variants:
                if v.label == "overlay-fallback" and r >= fallback_rounds:
                    continue
                v.add.append(v.call("ADD", f"{v.label}-{r}", f"{PREFIX}-{v.label}-{r}"))
            for v in variants:
                if v.label == "overlay-fallback" and r >= fallback_rounds:
                    continue
                v.dele.append(v.call("DEL", f"{v.label}-{r}", f"{PREFIX}-{v.label}-{r}"))
        return summarize(variants)
    finally:
        server.terminate()
        server.wait(10)
        server_log.close()
        for bridge in ("ovcni-bnr", "ovcni-bnw", "ovcni-bnf", "ovcni-bns"):
            sh("ip", "link", "del", bridge, check=False)
        if os.environ.get("OVCNI_BENCH_KEEP_LOG"):
            shutil.copy(os.path.join(work, "srv.log"), os.environ["OVCNI_BENCH_KEEP_LOG"])
        shutil.rmtree(work, ignore_errors=True)


def summarize(variants: list[Variant]) -> dict:
    out: dict = {}
    for v in variants:
        out[v.label] = {
            "add_median_ms": statistics.median(v.add) * 1000,
            "add_p99_ms": pct(v.add, .99) * 1000,
            "del_median_ms": statistics.median(v.dele) * 1000,
            "del_p99_ms": pct(v.dele, .99) * 1000,
            "n": len(v.add)}
    ref = out["reference"]
    for label in [v.label for v in variants if v.label != "reference"]:
        out[label]["add_ratio"] = out[label]["add_median_ms"] / ref["add_median_ms"]
        out[label]["del_ratio"] = out[label]["del_median_ms"] / ref["del_median_ms"]
    return out


def outer(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print("bench_cni needs root (network namespaces)", file=sys.stderr)
        return 1
    pods = [f"{PREFIX}-{label}-{r}" for r in range(args.rounds)
            for label in ("reference", "overlay-warm", "overlay-fallback", "overlay-warm-sys")]
    made = []
    try:
        for ns in [NODE] + pods:
            sh("ip", "netns", "add", ns)
            made.append(ns)
        proc = subprocess.run(["ip", "netns", "exec", NODE, sys.executable,
                               os.path.abspath(__file__), "--inner", "--rounds", str(args.rounds)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return 1
        result = json.loads(proc.stdout)
    finally:
        for ns in reversed(made):
            sh("ip", "netns", "del", ns, check=False)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{'variant':18} {'ADD med':>8} {'ADD p99':>8} {'DEL med':>8} {'DEL p99':>8} "
              f"{'ADD x':>6} {'DEL x':>6}  n")
        for label, r in result.items():
            print(f"{label:18} {r['add_median_ms']:8.1f} {r['add_p99_ms']:8.1f} "
                  f"{r['del_median_ms']:8.1f} {r['del_p99_ms']:8.1f} "
                  f"{r.get('add_ratio', 1):6.2f} {r.get('del_ratio', 1):6.2f}  {r['n']}")
        warm = result["overlay-warm"]
        add_ok = "met" if warm["add_ratio"] <= 1.5 else "MISSED"
        del_ok = "met" if warm["del_ratio"] <= 1.0 else "MISSED"
        print(f"targets (warm server): ADD <= 1.5x: {add_ok}, DEL <= 1x: {del_ok}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        print(json.dumps(inner(args)))
        return 0
    return outer(args)


if __name__ == "__main__":
    sys.exit(main())
