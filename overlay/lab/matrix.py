"""All-pairs pod-to-pod reachability: one bounded check per pair (a ping, or a probe of
the destination's responder), in parallel."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from overlay.lab.system import in_netns


@dataclass(frozen=True)
class Endpoint:
    name: str
    netns: str
    ip: str
    node: str


def ping(src_ns: str, dst_ip: str, count: int = 1, wait: float = 1.0, size: int | None = None,
         dont_fragment: bool = False, attempts: int = 1) -> bool:
    """``ping -c count -W wait`` from ``src_ns``; True if a reply came (within ``attempts``)."""
    argv = ["ping", "-n", "-q", "-c", str(count), "-W", f"{wait:g}"]
    if size is not None:
        argv += ["-s", str(size)]
    if dont_fragment:
        argv += ["-M", "do"]
    for _ in range(attempts):
        cp = subprocess.run(in_netns(src_ns, argv + [dst_ip]), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, timeout=count * wait + 5)
        if cp.returncode == 0:
            return True
    return False


Check = Callable[["Endpoint", "Endpoint"], bool]


def reachability(pods: list[Endpoint], attempts: int = 2, workers: int = 12,
                 check: Check | None = None) -> dict[tuple[str, str], bool]:
    """``check(from, to)`` for every ordered pair; by default a ping (``attempts`` tries)."""
    def by_ping(a: Endpoint, b: Endpoint) -> bool:
        return ping(a.netns, b.ip, attempts=attempts)
    one = check or by_ping
    pairs = [(a, b) for a in pods for b in pods if a.name != b.name]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda p: one(*p), pairs))
    return {(a.name, b.name): ok for (a, b), ok in zip(pairs, results, strict=True)}


def render(pods: list[Endpoint], matrix: dict[tuple[str, str], bool],
           color: bool | None = None) -> str:
    """Rows: from; columns: to.  ``ok`` / ``FAIL`` (green / red on a terminal)."""
    if color is None:
        color = sys.stdout.isatty()
    green, red, reset = ("\033[32m", "\033[31m", "\033[0m") if color else ("", "", "")
    labels = [p.name for p in pods]
    first = max([len("FROM \\ TO")] + [len(f"{p.name} ({p.ip})") for p in pods])
    widths = [max(len(lbl), 4) for lbl in labels]
    lines = [("FROM \\ TO".ljust(first) + "   "
              + "   ".join(lbl.ljust(w) for lbl, w in zip(labels, widths, strict=True))).rstrip()]
    for a in pods:
        cells = []
        for b, w in zip(pods, widths, strict=True):
            if a.name == b.name:
                cells.append("-".ljust(w))
            elif matrix[(a.name, b.name)]:
                cells.append(green + "ok".ljust(w) + reset)
            else:
                cells.append(red + "FAIL".ljust(w) + reset)
        lines.append((f"{a.name} ({a.ip})".ljust(first) + "   " + "   ".join(cells)).rstrip())
    return "\n".join(lines)
