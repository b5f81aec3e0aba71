#!/usr/bin/env python3
"""Dual-stack CNI ADD/DEL wall time: this plugin vs the reference bridge + host-local
with one range per family, same run; and what the IPv6 half costs this plugin (its
dual-stack ADD against its own IPv4-only ADD, interleaved).

Everything happens inside namespaces this script makes (prefix ``ovcni-bd``): a "node"
namespace in which the plugins run (one process per call, as a runtime runs them) and
one pod namespace per attachment.  Each round: reference ADD (bridge, host-local with
``ranges`` [[IPv4], [IPv6]], hairpin, so it turns DAD off in the pod as ours does),
overlay dual-stack ADD via the warm server, overlay IPv4-only ADD via the same server,
overlay dual-stack ADD in-process (every fourth round); then the DELs.  Medians per
variant, ratios against the reference; ``--repeat R`` runs it R times and reports each
run's ratios and their median and range.

    sudo .venv/bin/python bench/bench_cni_dualstack.py [--rounds 30] [--repeat 3] [--json]
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_cni import REF_BIN, Variant, sh, summarize

PREFIX = "ovcni-bd"
NODE = f"{PREFIX}-node"
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LABELS = ("reference", "overlay-dual", "overlay-v4", "overlay-dual-fb")


def variants(work: str, sock: str) -> list[Variant]:
    python = sys.executable
    entry = os.path.join(HERE, "cni-plugin", "overlay")
    common = {"cniVersion": "1.0.0", "hairpinMode": True, "mtu": 1450,
              "isDefaultGateway": True}

    def ours(label: str, bridge: str, n: int, dual: bool, socket: str) -> Variant:
        conf = {**common, "name": f"{PREFIX}-{label}", "type": "overlay", "bridge": bridge,
                "subnet": f"10.252.{n}.0/24", "network": "10.252.0.0/16", "dataDir": work}
        if dual:
            conf.update(ipv6Subnet=f"fd00:252:0:{n}::/64", ipv6Network="fd00:252::/56")
        return Variant(label, [python, "-IS", entry], conf, {"OVERLAY_CNI_SOCKET": socket})

    reference = Variant("reference", [os.path.join(REF_BIN, "bridge")], {
        **common, "name": f"{PREFIX}-ref", "type": "bridge", "bridge": "ovcni-bdr",
        "isGateway": True,
        "ipam": {"type": "host-local", "dataDir": work,
                 # isDefaultGateway gives each family its default route
                 "ranges": [[{"subnet": "10.252.1.0/24"}], [{"subnet": "fd00:252:0:1::/64"}]]}},
        {})
    return [reference, ours("overlay-dual", "ovcni-bdd", 2, True, sock),
            ours("overlay-v4", "ovcni-bd4", 3, False, sock),
            ours("overlay-dual-fb", "ovcni-bdf", 4, True, os.path.join(work, "absent.sock"))]


def inner(rounds: int) -> dict:
    """Runs inside the node namespace."""
    work = tempfile.mkdtemp(prefix=f"{PREFIX}-")
    sock = os.path.join(work, "cni.sock")
    server = subprocess.Popen(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {HERE!r}); "
         "from overlay.cni.plugin import main; main()", "serve", "--socket", sock],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(sock):
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("warm server did not start")
            time.sleep(0.02)
        vs = variants(work, sock)
        fallback_rounds = max(3, rounds // 4)
        for r in range(rounds):
            chosen = [v for v in vs if v.label != "overlay-dual-fb" or r < fallback_rounds]
            for v in chosen:
                v.add.append(v.call("ADD", f"{v.label}-{r}", f"{PREFIX}-{v.label}-{r}"))
            for v in chosen:
                v.dele.append(v.call("DEL", f"{v.label}-{r}", f"{PREFIX}-{v.label}-{r}"))
        out = summarize(vs)
        out["overlay-dual"]["add_vs_v4"] = (out["overlay-dual"]["add_median_ms"]
                                            / out["overlay-v4"]["add_median_ms"])
        return out
    finally:
        server.terminate()
        server.wait(10)
        for bridge in ("ovcni-bdr", "ovcni-bdd", "ovcni-bd4", "ovcni-bdf"):
            sh("ip", "link", "del", bridge, check=False)
        shutil.rmtree(work, ignore_errors=True)


def outer(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print("bench_cni_dualstack needs root (network namespaces)", file=sys.stderr)
        return 1
    made, runs = [], []
    try:
        for ns in [NODE] + [f"{PREFIX}-{label}-{r}" for r in range(args.rounds)
                            for label in LABELS]:
            sh("ip", "netns", "add", ns)
            made.append(ns)
        for _ in range(args.repeat):
            proc = subprocess.run(["ip", "netns", "exec", NODE, sys.executable,
                                   os.path.abspath(__file__), "--inner", "--rounds",
                                   str(args.rounds)], capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stderr, file=sys.stderr)
                return 1
            runs.append(json.loads(proc.stdout))
    finally:
        for ns in reversed(made):
            sh("ip", "netns", "del", ns, check=False)
    figures = {"dual warm ADD / reference": [r["overlay-dual"]["add_ratio"] for r in runs],
               "dual in-process ADD / reference": [r["overlay-dual-fb"]["add_ratio"]
                                                   for r in runs],
               "dual warm DEL / reference": [r["overlay-dual"]["del_ratio"] for r in runs],
               "dual warm ADD / IPv4-only warm ADD": [r["overlay-dual"]["add_vs_v4"]
                                                      for r in runs]}
    if args.json:
        print(json.dumps({"runs": runs, "figures": figures}, indent=2))
        return 0
    for i, result in enumerate(runs, 1):
        print(f"run {i}/{len(runs)}: {'variant':16} {'ADD med':>8} {'DEL med':>8}  n")
        for label, r in result.items():
            print(f"{'':9}{label:16} {r['add_median_ms']:8.1f} {r['del_median_ms']:8.1f}  "
                  f"{r['n']}")
    for name, values in figures.items():
        print(f"{name:36} median {statistics.median(values):.2f}x "
              f"(range {min(values):.2f}-{max(values):.2f}, {len(values)} run(s))")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=1, help="whole runs (default 1)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rounds < 1 or args.repeat < 1:
        parser.error("--rounds and --repeat must be >= 1")
    if args.inner:
        print(json.dumps(inner(args.rounds)))
        return 0
    return outer(args)


if __name__ == "__main__":
    sys.exit(main())
