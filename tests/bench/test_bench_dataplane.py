"""bench/bench_dataplane.py's schedule and statistics, and lab-by-hand.sh's input checks.

The measurements themselves need two labs and root (the benchmark run is their test);
what is checked here is what turns figures into the verdict: the ABBA/BAAB/control
schedule and its budget, the per-block ratio, the bootstrap interval, the state diff.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from typing import Any

import pytest

from .benchmod import ROOT, load

bd = load("bench_dataplane")


def slot(arm: str, side: str, rel: float) -> dict[str, Any]:
    return {"arm": arm, "side": side,
            "figures": {m.name: {"pod": rel, "node": 1.0, "rel": rel} for m in bd.METRICS}}


def test_block_ratio_is_geometric_mean_of_tested_over_reference() -> None:
    slots = [slot("ours", "x", 0.8), slot("anchor", "y", 0.5), slot("anchor", "y", 2.0),
             slot("ours", "x", 1.25)]
    # geomean(0.8, 1.25) = 1.0, geomean(0.5, 2.0) = 1.0
    assert bd.block_ratio(slots, "bulk TCP") == pytest.approx(1.0)
    slots[0] = slot("ours", "x", 3.2)
    assert bd.block_ratio(slots, "bulk TCP") == pytest.approx(2.0)


def test_bootstrap_interval_brackets_the_median_and_is_reproducible() -> None:
    xs = [0.96, 0.99, 1.0, 1.01, 1.02, 1.03, 1.05, 0.97, 1.0]
    low, high = bd.bootstrap_median(xs)
    assert low <= 1.0 <= high
    assert min(xs) <= low and high <= max(xs)
    assert bd.bootstrap_median(xs) == (low, high)
    assert bd.bootstrap_median([1.0] * 5) == (1.0, 1.0)


def test_summarize_keeps_control_blocks_apart() -> None:
    tested = {"kind": "ABBA", "slots": [slot("ours", "x", 1.1), slot("anchor", "y", 1.0),
                                         slot("anchor", "y", 1.0), slot("ours", "x", 1.1)]}
    control = {"kind": "control", "slots": [slot("anchor", "y", 1.0), slot("anchor", "x", 0.9),
                                             slot("anchor", "x", 0.9), slot("anchor", "y", 1.0)]}
    blocks = [tested, control, tested]
    t, c = bd.summarize(blocks, "tested"), bd.summarize(blocks, "control")
    assert t["bulk TCP"]["blocks"] == pytest.approx([1.1, 1.1])
    assert c["bulk TCP"]["blocks"] == pytest.approx([0.9])


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_blocks_follow_the_cycle_and_stop_within_the_budget(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    measured: list[str] = []

    def fake_measure(arm: Any, args: Any, flip: bool) -> dict[str, dict[str, float]]:
        measured.append(arm.name)
        clock.sleep(10.0)  # a slot takes 10 s: a block 40 s
        return slot(arm.name, "", 1.0)["figures"]

    monkeypatch.setattr(bd, "time", clock)
    monkeypatch.setattr(bd, "measure_arm", fake_measure)
    ours = bd.Arm("overlay", *(bd.Path_("", "", "", ""),) * 2)
    anchor = bd.Arm("anchor", *(bd.Path_("", "", "", ""),) * 2)
    args = type("Args", (), {"budget": 200.0, "policies": 0})()
    blocks = bd.run_blocks({"ours": ours, "anchor": anchor}, args, started=0.0)
    assert [b["kind"] for b in blocks] == ["ABBA", "BAAB", "control", "ABBA", "BAAB"]
    assert clock.now <= 200.0
    assert measured[:4] == ["overlay", "anchor", "anchor", "overlay"]
    assert measured[8:12] == ["anchor"] * 4  # the control block: the anchor alone
    # Even a budget too small for one block gives two tested blocks (a median to report).
    clock.now = 0.0
    args.budget = 1.0
    assert [b["kind"] for b in bd.run_blocks({"ours": ours, "anchor": anchor}, args, 0.0)] \
        == ["ABBA", "BAAB"]


def test_measure_arm_inverts_latency(monkeypatch: pytest.MonkeyPatch) -> None:
    pod, node = bd.Path_("pod", "a", "b", "1"), bd.Path_("node", "c", "d", "2")
    values = {"pod": 4.0, "node": 2.0}
    monkeypatch.setattr(bd, "METRIC_KEYS", {
        "bulk": bd.Metric("rate", "x", True, lambda p, a: values[p.label]),
        "rr": bd.Metric("latency", "us", False, lambda p, a: values[p.label])})
    args = argparse.Namespace(warmup=0, metrics=["bulk", "rr"])
    got = bd.measure_arm(bd.Arm("a", node, pod), args, flip=False)
    assert got["rate"]["rel"] == 2.0 and got["latency"]["rel"] == 0.5


def test_a_warmup_run_goes_first_and_is_not_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    pod, node = bd.Path_("pod", "a", "b", "1"), bd.Path_("node", "c", "d", "2")
    runs: list[tuple[str, int]] = []

    def fake_bulk(path: Any, seconds: int, streams: int = 1) -> float:
        runs.append((path.label, seconds))
        return 1.0 if runs[1:] else 100.0  # the first (the warm-up) reads far off
    monkeypatch.setattr(bd, "bulk_gbps", fake_bulk)
    args = argparse.Namespace(warmup=1, metrics=["bulk"], seconds=2, streams=4)
    got = bd.measure_arm(bd.Arm("a", node, pod), args, flip=False)
    assert runs == [("pod", 1), ("pod", 2), ("node", 2)]
    assert set(got) == {"bulk TCP"} and got["bulk TCP"]["rel"] == 1.0


def _blocks(ratios: list[float]) -> list[dict[str, Any]]:
    return [{"kind": "ABBA", "slots": [slot("ours", "x", r), slot("anchor", "y", 1.0),
                                       slot("anchor", "y", 1.0), slot("ours", "x", r)]}
            for r in ratios]


def test_the_policy_verdict_needs_the_interval_low_end_too(
        capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(metrics=["bulk", "parallel"], policies=100, save=None, json=True,
                              tweak=[], anchor_udpcsum="", seconds=2, short=1, streams=4,
                              warmup=1)
    wide = [0.90, 0.93, 0.96, 0.96, 0.97, 0.99, 1.0]  # median 0.96, low end under 0.95
    bd.report(_blocks(wide), args, 1.0)
    out = json.loads(capsys.readouterr().out)
    assert out["tested"]["bulk TCP"]["median"] == pytest.approx(0.96)
    assert out["met"] is False and out["target"] == {"median": 0.95, "low": 0.95}
    assert out["metrics"] == ["bulk TCP", "parallel TCP"]
    bd.report(_blocks([0.96, 0.97, 0.96, 0.98, 0.97, 0.96, 0.97]), args, 1.0)
    assert json.loads(capsys.readouterr().out)["met"] is True


def test_the_policy_verdict_is_the_pod_paths_own_throughput(
        capsys: pytest.CaptureFixture[str], tmp_path: Any) -> None:
    """The policy table slows the node path too (conntrack for the whole node): pod/node
    then reads 1.0 while pods lose 8 %, and the verdict must be the 0.92."""
    def node_slowed(pod: float, node: float) -> dict[str, Any]:
        return {m.name: {"pod": pod, "node": node, "rel": pod / node} for m in bd.METRICS}

    blocks = [{"kind": "ABBA", "slots": [
        {"arm": "ours", "side": "x", "figures": node_slowed(9.2, 9.2 * 1.2)},
        {"arm": "anchor", "side": "y", "figures": node_slowed(10.0, 12.0)},
        {"arm": "anchor", "side": "y", "figures": node_slowed(10.0, 12.0)},
        {"arm": "ours", "side": "x", "figures": node_slowed(9.2, 9.2 * 1.2)}]}] * 5
    args = argparse.Namespace(metrics=["bulk"], policies=100, save=str(tmp_path / "run.json"),
                              json=True, tweak=[], anchor_udpcsum="", seconds=2, short=1,
                              streams=4, warmup=1)
    bd.report(blocks, args, 1.0)
    out = json.loads(capsys.readouterr().out)
    assert out["tested"]["bulk TCP"]["median"] == pytest.approx(1.0)
    assert out["pod_alone"]["tested"]["median"] == pytest.approx(0.92)
    assert out["met"] is False
    # the saved run reported again: the same verdict, in words
    again = argparse.Namespace(saved=args.save, json=False, save=None)
    bd.rereport(again)
    text = capsys.readouterr().out
    assert "pod-to-pod alone: median 0.920, interval low 0.920" in text and "NOT met" in text


def test_a_file_that_is_not_a_saved_run_is_one_line(tmp_path: Any) -> None:
    bad = tmp_path / "bad.json"
    for text in ('{"blocks": []}', "[]", "{"):
        bad.write_text(text)
        with pytest.raises(SystemExit) as e:
            bd.rereport(argparse.Namespace(saved=str(bad), json=False, save=None))
        assert "not a saved run" in str(e.value)


def test_diff_states_names_only_what_differs() -> None:
    ours = {"link vxlan": {"mtu": 1450, "ethtool.gro": "on"}, "sysctl": {"a": "1"},
            "nft hooks": ["type nat hook postrouting"]}
    anchor = {"link vxlan": {"mtu": 1450, "ethtool.gro": "off"}, "sysctl": {"a": "1"},
              "nft hooks": []}
    assert bd.diff_states(ours, anchor) == [
        "link vxlan: ethtool.gro: on | off",
        "nft hooks: ['type nat hook postrouting'] | []"]
    assert bd.diff_states(ours, ours) == []


@pytest.mark.parametrize("env, argv, message", [
    ({"NODES": "x"}, ["up"], "NODES must be a number from 2 to 200, not 'x'"),
    ({"NODES": "1"}, ["up"], "NODES must be a number from 2 to 200, not 1"),
    ({}, ["sideways"], "usage:"),
    ({"UDPCSUM": "maybe"}, ["up"], "UDPCSUM must be on or off, not 'maybe'"),
])
def test_lab_by_hand_rejects_bad_input_in_one_line(env: dict[str, str], argv: list[str],
                                                   message: str) -> None:
    cp = subprocess.run(["bash", str(ROOT / "bench" / "lab-by-hand.sh"), *argv],
                        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **env},
                        capture_output=True, text=True)
    assert cp.returncode != 0
    assert message in cp.stderr and len(cp.stderr.strip().splitlines()) == 1
    assert cp.stdout == ""
