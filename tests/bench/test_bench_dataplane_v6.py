"""bench/bench_dataplane_v6.py's schedule and verdict, and lab-by-hand-v6.sh's input checks.

The measurements need two labs and root (the benchmark run is their test; the anchor's
kernel path is checked in tests/integration/test_lab_dualstack.py); what is checked here
is what turns figures into the verdict.
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from .benchmod import ROOT, load

load("bench_dataplane")
b6 = load("bench_dataplane_v6")


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


def test_measure_arm_is_pod_over_node_per_metric(monkeypatch: pytest.MonkeyPatch) -> None:
    pod, node = b6.Path_("pod", "a", "b", "fd00::2"), b6.Path_("node", "c", "d", "fd00::1")
    values = {"pod": 3.0, "node": 4.0}
    monkeypatch.setattr(b6, "METRICS", (b6.Metric("bulk TCP", "Gbit/s",
                                                  lambda p, a: values[p.label]),))
    got = b6.measure_arm(b6.Arm("a", node, pod), None, flip=True)
    assert got["bulk TCP"] == {"pod": 3.0, "node": 4.0, "rel": 0.75}


def test_blocks_keep_the_cycle_the_budget_and_the_minimum(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    order: list[str] = []

    def fake_measure(arm: Any, args: Any, flip: bool) -> dict[str, dict[str, float]]:
        order.append(arm.name)
        clock.sleep(5.0)
        rel = 0.9 if arm.name == "overlay" else 1.0
        return {m.name: {"pod": rel, "node": 1.0, "rel": rel} for m in b6.METRICS}

    monkeypatch.setattr(b6, "time", clock)
    monkeypatch.setattr(b6, "measure_arm", fake_measure)
    arms = {"ours": b6.Arm("overlay", *(b6.Path_("", "", "", ""),) * 2),
            "anchor": b6.Arm("anchor", *(b6.Path_("", "", "", ""),) * 2)}
    args = type("Args", (), {"budget": 1.0, "min_blocks": 4})()
    blocks = b6.run_blocks(arms, args, started=0.0)
    # four tested blocks even past the budget, the control block between them
    assert [b["kind"] for b in blocks] == ["ABBA", "BAAB", "control", "ABBA", "BAAB"]
    assert order[8:12] == ["anchor"] * 4
    tested, control = b6.summarize(blocks, False), b6.summarize(blocks, True)
    assert tested["bulk TCP"]["median"] == pytest.approx(0.9)
    assert control["bulk TCP"]["median"] == pytest.approx(1.0)
    assert tested["bulk TCP"]["median"] < b6.TARGET     # 0.9 of the anchor: not met


@pytest.mark.parametrize("env, argv, message", [
    ({"NODES": "x"}, ["up"], "NODES must be a number from 2 to 89, not 'x'"),
    ({"NODES": "90"}, ["up"], "NODES must be a number from 2 to 89, not 90"),
    ({"PREFIX": "Bad/Name"}, ["up"], "PREFIX must be lower-case letters"),
    ({}, ["sideways"], "usage:"),
])
def test_lab_by_hand_v6_rejects_bad_input_in_one_line(env: dict[str, str], argv: list[str],
                                                      message: str) -> None:
    cp = subprocess.run(["bash", str(ROOT / "bench" / "lab-by-hand-v6.sh"), *argv],
                        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **env},
                        capture_output=True, text=True)
    assert cp.returncode != 0
    assert message in cp.stderr and len(cp.stderr.strip().splitlines()) == 1
    assert cp.stdout == ""
