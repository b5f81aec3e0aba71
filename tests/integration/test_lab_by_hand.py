"""bench/lab-by-hand.sh, the data-plane anchor, against the real kernel: up gives a
working pod-to-pod path across nodes through flannel.1, down leaves nothing."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "lab-by-hand.sh"
PREFIX = "ovd-lbh"


def script(action: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), action], capture_output=True, text=True,
                          env={**os.environ, "PREFIX": PREFIX, "NODES": "2"}, timeout=60)


def ours() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return sorted(line.split()[0] for line in out.splitlines()
                  if line.startswith(f"{PREFIX}-"))


def test_up_gives_pod_to_pod_over_vxlan_and_down_removes_all() -> None:
    assert ours() == [], "leftovers from an earlier run"
    try:
        up = script("up")
        assert up.returncode == 0, up.stderr
        assert ours() == sorted(f"{PREFIX}-{n}" for n in
                                ("underlay", "node1", "node2", "pod1", "pod2"))
        again = script("up")
        assert again.returncode == 1 and "exists already" in again.stderr
        ping = subprocess.run(["ip", "netns", "exec", f"{PREFIX}-pod1", "ping", "-c", "2",
                               "-i", "0.2", "-W", "1", "10.245.2.2"],
                              capture_output=True, text=True)
        assert ping.returncode == 0, ping.stdout
        # the packets went through the VXLAN device, not some other way
        stats = subprocess.run(["ip", "-n", f"{PREFIX}-node1", "-s", "-j", "link", "show",
                                "flannel.1"], capture_output=True, text=True, check=True)
        assert json.loads(stats.stdout)[0]["stats64"]["tx"]["packets"] >= 2
    finally:
        down = script("down")
    assert down.returncode == 0, down.stderr
    assert ours() == []
