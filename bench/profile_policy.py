#!/usr/bin/env python3
"""Where pod-to-pod TCP's CPU goes with NetworkPolicies in force (issue 13's remaining gap).

bench_dataplane.py --policies says how much slower bulk pod-to-pod TCP is with N policies;
this says where that time goes. On two project labs alike (bench_dataplane.py's, one with
N policies selecting the measured pods), each round runs a bulk ``iperf3`` pod-to-pod flow
of ``--seconds`` on each lab in turn (the order alternates) and samples the whole machine
with ``perf record -a`` for ``--sample`` seconds in its middle. A round's figures are the
shares of the busy CPU (samples outside the idle loop) spent in netfilter, by part:
conntrack, nftables' chains, the hook walk, br_netfilter's bridge hooks and the rest of
netfilter, and the flow's cost: busy CPU-seconds per gigabit moved, which needs no
symbol's classification. The summary gives each lab's median over the rounds and the
per-round difference (with N policies minus none; the cost's in percent) with its range:
what the policies add.

``--extra-nft FILE`` loads an nft file of your own into the policy lab's node namespaces
before the rounds (to try a variant of the table's surroundings, such as a conntrack
exemption, without touching the project's table).

    sudo .venv/bin/python bench/profile_policy.py [--policies 100] [--rounds 6] [--json]

Needs ``perf`` (Debian: ``apt-get install linux-perf``) and ``iperf3``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench_dataplane import (  # noqa: E402  (a sibling: bench/ is on sys.path)
    IPERF_PORT,
    Path_,
    policy_labs,
    servers,
)

from overlay.lab.system import in_netns, run  # noqa: E402
from overlay.util.fsutil import atomic_write  # noqa: E402

# A symbol's part, first match wins; None for everything outside netfilter.
IDLE = re.compile(r"(^|_)idle|safe_halt|mwait")
PARTS = (("br_netfilter", re.compile(r"^br_nf|^brnf|ip_sabotage|^nf_bridge")),
         # siphash keys conntrack's table; ipv4_get_l4proto is its header parse (no other
         # user on this path: both are absent from a profile without policies)
         ("conntrack", re.compile(r"conntrack|^nf_ct_|^__nf_ct|confirm|^tcp_in_window|defrag"
                                  r"|siphash|^ipv[46]_get_l4proto")),
         ("nftables", re.compile(r"^_*nft_|^nf_tables")),
         ("hooks", re.compile(r"^_*nf_hook|^nf_ingress|^nf_reinject")),
         ("other", re.compile(r"^_*nf_|^nfnetlink|^xt_|^ipt_")))
PART_NAMES = tuple(name for name, _ in PARTS)
# Each flow's figures, in the order the summary and the table give them.
FIGURES = ("gbps", "busy", "cost", "netfilter", *PART_NAMES)
REPORT_LINE = re.compile(r"^\s*([\d.]+)%\s+\[.\]\s+(\S+)")


def part_of(symbol: str) -> str | None:
    """The netfilter part a kernel symbol belongs to, or None."""
    for name, pattern in PARTS:
        if pattern.search(symbol):
            return name
    return None


def shares(report: str) -> dict[str, Any]:
    """From ``perf report --no-children --sort symbol --stdio``'s text: ``busy`` (percent of
    all samples outside the idle loop), each part's and ``netfilter``'s share of the busy
    samples (percent), and ``top``: the five netfilter symbols with the largest shares."""
    idle, parts = 0.0, dict.fromkeys(PART_NAMES, 0.0)
    symbols: list[tuple[float, str]] = []
    total = 0.0
    for line in report.splitlines():
        m = REPORT_LINE.match(line)
        if m is None:
            continue
        pct, symbol = float(m.group(1)), m.group(2)
        total += pct
        if IDLE.search(symbol):
            idle += pct
            continue
        part = part_of(symbol)
        if part is not None:
            parts[part] += pct
            symbols.append((pct, symbol))
    busy = total - idle
    if busy <= 0:
        raise ValueError("the profile holds no busy samples")
    out: dict[str, Any] = {name: 100 * pct / busy for name, pct in parts.items()}
    out["netfilter"] = sum(out[name] for name in PART_NAMES)
    out["busy"] = busy
    top = sorted(symbols, reverse=True)[:5]
    out["top"] = {s: round(100 * p / busy, 3) for p, s in top}
    return out


def profile_flow(path: Path_, seconds: int, sample: float, workdir: str) -> dict[str, Any]:
    """One bulk flow on ``path`` with ``perf record -a`` for ``sample`` seconds in its
    middle: the flow's Gbit/s and the profile's shares."""
    data = os.path.join(workdir, "perf.data")
    client = subprocess.Popen(in_netns(path.src_ns, ["iperf3", "-c", path.dst_ip, "-p",
                                                     str(IPERF_PORT), "-t", str(seconds), "-J"]),
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        time.sleep((seconds - sample) / 2)
        run(["perf", "record", "-a", "-F", "999", "-o", data, "--", "sleep", str(sample)],
            timeout=sample + 60)
        out, _ = client.communicate(timeout=seconds + 20)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    flow = json.loads(out)
    if "error" in flow:
        raise RuntimeError(f"iperf3 {path.label}: {flow['error']}")
    report = run(["perf", "report", "-i", data, "--no-children", "--sort", "symbol",
                  "--stdio", "-q"], timeout=120).stdout
    gbps = float(flow["end"]["sum_received"]["bits_per_second"]) / 1e9
    got = shares(report)
    return {"gbps": gbps, **got, "cost": cost(got["busy"], gbps)}


def cost(busy: float, gbps: float, cpus: int | None = None) -> float:
    """CPU-seconds the machine was busy per gigabit moved: ``busy`` percent of ``cpus``
    (all of them by default) at ``gbps``. Unlike the shares, it needs no symbol's part:
    it is what a flow pays per byte, whatever the kernel names the code."""
    return busy / 100 * (cpus or os.cpu_count() or 1) / gbps


def summarize(rounds: Iterable[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per arm, each figure's median and range over the rounds; ``added``: the per-round
    difference (policies minus none) of each share, and the cost's growth in percent,
    median and range."""
    rounds = list(rounds)
    out: dict[str, dict[str, Any]] = {}
    for arm in ("policies", "none"):
        out[arm] = {k: _spread([r[arm][k] for r in rounds]) for k in FIGURES}
    out["added"] = {k: _spread([r["policies"][k] - r["none"][k] for r in rounds])
                    for k in ("netfilter", *PART_NAMES)}
    # the cost's growth in percent of the no-policy lab's, each round's own
    out["added"]["cost"] = _spread([100 * (r["policies"]["cost"] / r["none"]["cost"] - 1)
                                    for r in rounds])
    return out


def _spread(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policies", type=int, default=100, metavar="N",
                    help="policies in force on the first lab (default 100)")
    ap.add_argument("--rounds", type=int, default=6, help="rounds, each lab once (default 6)")
    ap.add_argument("--seconds", type=int, default=6, help="length of one flow (default 6)")
    ap.add_argument("--sample", type=float, default=3.0,
                    help="seconds of perf sampling in each flow's middle (default 3)")
    ap.add_argument("--extra-nft", metavar="FILE",
                    help="an nft file loaded into the policy lab's node namespaces first")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--save", metavar="PATH", help="also write the figures as JSON to PATH")
    args = ap.parse_args()
    if args.policies < 1 or args.rounds < 1 or not 0 < args.sample < args.seconds:
        sys.exit("error: --policies >= 1, --rounds >= 1 and 0 < --sample < --seconds")
    if args.extra_nft and not os.path.isfile(args.extra_nft):
        sys.exit(f"error: --extra-nft {args.extra_nft}: no such file")
    missing = [t for t in ("perf", "iperf3") if shutil.which(t) is None]
    if missing:
        sys.exit(f"error: {', '.join(missing)} not installed (Debian: apt-get install "
                 f"{' '.join('linux-perf' if t == 'perf' else t for t in missing)})")
    started = time.monotonic()
    rounds: list[dict[str, dict[str, Any]]] = []
    with policy_labs(args.policies) as (with_policies, without), \
            tempfile.TemporaryDirectory(prefix="ovlb-perf-") as workdir:
        if args.extra_nft:
            for ns in (with_policies.node.src_ns, with_policies.node.dst_ns):
                run(in_netns(ns, ["nft", "-f", os.path.abspath(args.extra_nft)]))
        arms = {"policies": with_policies, "none": without}
        for arm in arms.values():
            run(in_netns(arm.pod.src_ns, ["ping", "-c", "2", "-i", "0.2", "-W", "1",
                                          arm.pod.dst_ip]))
        with servers([arm.pod for arm in arms.values()], sockperf=False):
            for n in range(args.rounds):
                order = ("policies", "none") if n % 2 == 0 else ("none", "policies")
                got = {name: profile_flow(arms[name].pod, args.seconds, args.sample, workdir)
                       for name in order}
                rounds.append(got)
                print(f"  round {n + 1}: netfilter {got['policies']['netfilter']:.2f} % of busy "
                      f"with policies, {got['none']['netfilter']:.2f} % without; "
                      f"{got['policies']['gbps']:.2f} / {got['none']['gbps']:.2f} Gbit/s",
                      file=sys.stderr)
    summary = {"policies": args.policies, "rounds": rounds, "summary": summarize(rounds),
               "seconds": args.seconds, "sample": args.sample, "extra_nft": args.extra_nft,
               "took_s": time.monotonic() - started,
               "loadavg": Path("/proc/loadavg").read_text().split()[:3]}
    if args.save:
        atomic_write(args.save, json.dumps(summary, indent=2) + "\n")
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    report(summary)


def report(summary: dict[str, Any]) -> None:
    s = summary["summary"]
    print(f"{len(summary['rounds'])} rounds in {summary['took_s']:.0f} s: a {summary['seconds']} s "
          f"bulk pod-to-pod flow per lab, perf sampling {summary['sample']} s of it; "
          f"shares are percent of the busy CPU, median (min-max) over the rounds; cost is "
          f"busy CPU-seconds per gigabit (added: percent more than without policies)")
    print(f"{'':<14}" + "".join(f"{c:>21}" for c in FIGURES))
    rows = ((f"{summary['policies']} policies", s["policies"]), ("no policy", s["none"]),
            ("added", s["added"]))
    for label, figures in rows:
        cells = [_cell(figures[c], 3 if c == "cost" and label != "added" else 2)
                 if c in figures else "" for c in FIGURES]
        print(f"{label:<14}" + "".join(f"{cell:>21}" for cell in cells))


def _cell(spread: dict[str, float], digits: int) -> str:
    return (f"{spread['median']:.{digits}f} ({spread['min']:.{digits}f}-"
            f"{spread['max']:.{digits}f})")


if __name__ == "__main__":
    main()
