#!/usr/bin/env python3
"""CNI ADD/DEL wall time: this plugin vs the reference bridge + host-local, same run.

Everything happens inside namespaces this script makes (prefix ``ovcni-bn``): a "node"
namespace in which both plugins run (as a runtime would run them, one process per call)
and one pod namespace per attachment.  Each round does, interleaved so noise hits all
alike: reference ADD, overlay ADD via the warm server, overlay ADD in-process (fallback,
every fourth round: it is the slow one); then the same for DEL.  Reported: median and p99
per variant and the ratios overlay/reference; targets (issue 15): warm ADD <= 1.2x,
fallback ADD <= 4x, warm DEL <= 0.5x, each a median.
When this venv's interpreter is not Debian's /usr/bin/python3 (e.g. a pyenv build with a
shared libpython, slower to start), the warm variant is also run with the entry started
by /usr/bin/python3 ("overlay-warm-sys") to show the interpreter's share.

``--repeat R`` runs the whole benchmark R times (fresh server and IPAM store each) and
reports every run's ratios and their median and range.  ``--stress N`` adds N CPU-bound
processes (stress-like, outside the namespaces, each stopping by itself after the
benchmark's expected length, at most 300 s) for the p99 target: warm ADD's p99 no worse
than the reference's under load.  ``--root DIR`` measures another checkout's plugin
(its entry and server) with this script, e.g. a ``git archive`` of the previous release.

    sudo .venv/bin/python bench/bench_cni.py [--rounds 40] [--repeat 5] [--stress 2] [--json]
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
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REF_BIN = "/usr/lib/cni"
STRESS_CAP = 300.0  # seconds: a stress process never outlives this, whatever happens here
TARGETS = {"warm ADD": 1.2, "fallback ADD": 4.0, "warm DEL": 0.5}


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
    entry = os.path.join(args.root, "cni-plugin", "overlay")
    server_log = open(os.path.join(work, "srv.log"), "w")  # noqa: SIM115 (a child's log: open while the child runs)
    # The server of the same checkout as the entry (--root), not whatever the venv has.
    server = subprocess.Popen(
        [python, "-c", f"import sys; sys.path.insert(0, {args.root!r}); "
         "from overlay.cni.plugin import main; main()", "serve", "--socket", sock, "-v"],
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
            Variant("overlay-warm", [python, "-IS", entry],
                    {"cniVersion": "1.0.0", "name": f"{PREFIX}-warm", "type": "overlay",
                     "bridge": "ovcni-bnw", "subnet": "10.251.2.0/24",
                     "isDefaultGateway": True, "dataDir": work, **common},
                    {"OVERLAY_CNI_SOCKET": sock}),
            Variant("overlay-fallback", [python, "-IS", entry],
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
                "overlay-warm-sys", [system_python, "-IS", entry],
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


def start_stress(count: int, seconds: float) -> list[subprocess.Popen]:
    """``count`` CPU-bound processes (a ``stress --cpu``): each stops by itself after
    ``seconds`` (capped), so a killed benchmark leaves no load behind for long."""
    seconds = min(seconds, STRESS_CAP)
    burn = (f"import time\nend = time.monotonic() + {seconds}\n"
            "while time.monotonic() < end:\n    sum(range(10000))\n")
    return [subprocess.Popen([sys.executable, "-c", burn]) for _ in range(count)]


def stop_stress(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(10)


def run_once(args: argparse.Namespace) -> dict:
    """One whole benchmark in the node namespace (fresh server and IPAM store)."""
    proc = subprocess.run(["ip", "netns", "exec", NODE, sys.executable, os.path.abspath(__file__),
                           "--inner", "--rounds", str(args.rounds), "--root", args.root],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    result: dict = json.loads(proc.stdout)
    return result


def aggregate(runs: list[dict]) -> dict:
    """Per target: every run's ratio, their median and range; p99s for the stress target."""
    def ratios(label: str, key: str) -> list[float]:
        return [run[label][key] for run in runs]

    out = {}
    for name, (label, key) in {"warm ADD": ("overlay-warm", "add_ratio"),
                               "fallback ADD": ("overlay-fallback", "add_ratio"),
                               "warm DEL": ("overlay-warm", "del_ratio")}.items():
        values = ratios(label, key)
        out[name] = {"runs": values, "median": statistics.median(values), "min": min(values),
                     "max": max(values), "target": TARGETS[name],
                     "met": statistics.median(values) <= TARGETS[name]}
    ref_p99 = [run["reference"]["add_p99_ms"] for run in runs]
    warm_p99 = [run["overlay-warm"]["add_p99_ms"] for run in runs]
    out["ADD p99 ms"] = {"reference": ref_p99, "overlay-warm": warm_p99,
                         "met": statistics.median(warm_p99) <= statistics.median(ref_p99)}
    return out


def outer(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print("bench_cni needs root (network namespaces)", file=sys.stderr)
        return 1
    pods = [f"{PREFIX}-{label}-{r}" for r in range(args.rounds)
            for label in ("reference", "overlay-warm", "overlay-fallback", "overlay-warm-sys")]
    made = []
    stress: list[subprocess.Popen] = []
    runs = []
    try:
        for ns in [NODE] + pods:
            sh("ip", "netns", "add", ns)
            made.append(ns)
        if args.stress:
            # ~0.25 s per round with the fallback's share, doubled for the load itself
            stress = start_stress(args.stress, 30 + 0.5 * args.rounds * args.repeat)
        for _ in range(args.repeat):
            runs.append(run_once(args))
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 1
    finally:
        stop_stress(stress)
        for ns in reversed(made):
            sh("ip", "netns", "del", ns, check=False)
    summary = aggregate(runs)
    if args.json:
        print(json.dumps({"runs": runs, "summary": summary, "stress": args.stress}, indent=2))
        return 0
    for i, result in enumerate(runs, 1):
        print(f"run {i}/{len(runs)}" + (f" (stress: {args.stress} CPU-bound processes)"
                                        if args.stress else ""))
        print(f"{'variant':18} {'ADD med':>8} {'ADD p99':>8} {'DEL med':>8} {'DEL p99':>8} "
              f"{'ADD x':>6} {'DEL x':>6}  n")
        for label, r in result.items():
            print(f"{label:18} {r['add_median_ms']:8.1f} {r['add_p99_ms']:8.1f} "
                  f"{r['del_median_ms']:8.1f} {r['del_p99_ms']:8.1f} "
                  f"{r.get('add_ratio', 1):6.2f} {r.get('del_ratio', 1):6.2f}  {r['n']}")
    for name in TARGETS:
        t = summary[name]
        print(f"{name:13} median {t['median']:.2f}x over {len(runs)} run(s) "
              f"(range {t['min']:.2f}-{t['max']:.2f}), target <= {t['target']}x: "
              f"{'met' if t['met'] else 'MISSED'}")
    p99 = summary["ADD p99 ms"]
    print(f"ADD p99       warm {statistics.median(p99['overlay-warm']):.1f} ms vs reference "
          f"{statistics.median(p99['reference']):.1f} ms (medians over runs): "
          f"{'met' if p99['met'] else 'MISSED'}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=1, help="whole runs (default 1)")
    parser.add_argument("--stress", type=int, default=0, metavar="N",
                        help="N CPU-bound processes running alongside (default none)")
    parser.add_argument("--root", default=HERE,
                        help="checkout whose plugin is measured (default this one)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rounds < 1 or args.repeat < 1 or args.stress < 0:
        parser.error("--rounds and --repeat must be >= 1, --stress >= 0")
    args.root = os.path.abspath(args.root)
    if not os.path.exists(os.path.join(args.root, "cni-plugin", "overlay")):
        parser.error(f"{args.root} holds no cni-plugin/overlay")
    if args.inner:
        print(json.dumps(inner(args)))
        return 0
    return outer(args)


if __name__ == "__main__":
    sys.exit(main())
