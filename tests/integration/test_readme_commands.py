"""The README as a test: every command of its ``<!-- lab-test -->`` blocks, run in order.

The commands run against one lab of the tests' own (prefix ``ovlt…``, a temporary base dir),
never the user's default ``ovlab``.  Substitution rule (``support.readme_commands.for_lab``):
each ``overlay-lab`` starting a command gets ``--name PREFIX --lab-dir DIR`` right after it;
nothing else changes.  Lines run in ``bash -c`` as root with the venv's bin dir first on PATH,
as the README tells a user to set it up.  Each must exit 0, print no traceback and finish within
COMMAND_TIMEOUT; ``overlay-lab down`` runs last, whatever block it is in.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from overlay.lab.lab import Lab
from overlay.lab.spec import LabSpec
from overlay.lab.system import ip
from tests.integration.support.labfixture import TEST_PREFIX
from tests.integration.support.readme_commands import (
    README,
    Command,
    commands,
    for_lab,
    in_run_order,
    marked_blocks,
)

COMMAND_TIMEOUT = 40.0   # seconds; `up` of three nodes is the slowest, well under this
TOTAL_BOUND = 60.0       # the whole walk-through


def test_the_marked_blocks_are_found_and_start_with_up():
    cmds = commands(README.read_text())
    assert len(marked_blocks(README.read_text())) >= 2
    assert cmds[0].line == "overlay-lab up"
    assert [c.line for c in in_run_order(cmds)][-1] == "overlay-lab down"


def test_the_substitution_names_the_test_lab_at_every_overlay_lab():
    line = for_lab("overlay-lab status | head -1; overlay-lab exec node1 -- overlayctl x",
                   "ovltx", "/tmp/d")
    assert line == ("overlay-lab --name ovltx --lab-dir /tmp/d status | head -1; "
                    "overlay-lab --name ovltx --lab-dir /tmp/d exec node1 -- overlayctl x")


def test_extraction_joins_continuations_and_drops_comments():
    text = ("x\n<!-- lab-test -->\n```sh\noverlay-lab up \\\n  --nodes 2   # two\n\n"
            "overlay-lab down\n```\n```sh\nnot-marked\n```\n")
    assert commands(text) == [Command("overlay-lab up --nodes 2", 4),
                              Command("overlay-lab down", 7)]


def _run(cmd: Command, name: str, base: str, env: dict[str, str]) -> str:
    """Run one README command; a description of what went wrong, or '' when it worked."""
    line = for_lab(cmd.line, name, base)
    where = f"README.md:{cmd.readme_line}: {cmd.line}"
    try:
        p = subprocess.run(["bash", "-o", "pipefail", "-c", line], capture_output=True,
                           text=True, env=env, timeout=COMMAND_TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return f"{where}: did not finish within {COMMAND_TIMEOUT:g} s"
    out = p.stdout + p.stderr
    if p.returncode != 0:
        return f"{where}: exit {p.returncode}\n{out[-2000:]}"
    if "Traceback" in out:
        return f"{where}: printed a traceback\n{out[-2000:]}"
    return ""


@pytest.mark.integration
@pytest.mark.slow
def test_every_marked_readme_command_works_as_written_on_a_lab():
    if os.geteuid() != 0:
        pytest.fail("needs root (namespaces): run under sudo ./cmd/run-tests")
    cmds = in_run_order(commands(README.read_text()))
    name = TEST_PREFIX
    base = tempfile.mkdtemp(prefix=f"{name}-readme-")
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.pop("OVERLAY_LAB_NAME", None)
    env.pop("OVERLAY_LAB_DIR", None)
    start = time.monotonic()
    try:
        for cmd in cmds:
            problem = _run(cmd, name, base, env)
            assert not problem, problem
        assert time.monotonic() - start < TOTAL_BOUND, "the walk-through took too long"
        assert not os.path.exists(os.path.join(base, name)), "down left the lab directory"
    finally:
        lab = Lab(LabSpec(name, base), progress=lambda m: None)
        if lab.state is not None:   # a command failed before `down`: remove what up made
            lab.down()
        shutil.rmtree(base, ignore_errors=True)


def _bridge_mac(spec: LabSpec) -> str:
    return ip("-br", "link", "show", "dev", spec.bridge, ns=spec.underlay_ns).stdout.split()[2]


@pytest.mark.integration
@pytest.mark.slow
def test_the_underlay_bridge_keeps_its_mac_while_nodes_come_and_go():
    """etcd's address is on the bridge: a MAC that follows the lowest port would leave every
    node's ARP entry for etcd stale after add-node/remove-node (the walk-through's diagnose
    then found etcd unreachable about one run in three)."""
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    base = tempfile.mkdtemp(prefix=f"{TEST_PREFIX}-bridge-")
    spec = LabSpec(TEST_PREFIX, base)
    flags = ["--name", spec.prefix, "--lab-dir", base]

    def lab(*args: str) -> None:
        subprocess.run(["overlay-lab", *flags, *args], env=env, check=True,
                       capture_output=True, timeout=COMMAND_TIMEOUT)
    try:
        lab("up", "--nodes", "1", "--pods-per-node", "0")
        mac = _bridge_mac(spec)
        for _ in range(8):   # a new port has the lowest MAC half the time: 1/256 to miss
            for args in (("add-node", "--pods", "0"), ("remove-node", "node2")):
                lab(*args)
                assert _bridge_mac(spec) == mac, args
    finally:
        left = Lab(spec, progress=lambda m: None)   # read from disk: knows every node added
        if left.state is not None:
            left.down()
        shutil.rmtree(base, ignore_errors=True)
