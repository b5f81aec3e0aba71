"""``--version`` on every installed tool: one line, ``<program> <package version>``."""

import os
import subprocess
import sys
from importlib import metadata

import pytest

BIN = os.path.dirname(sys.executable)


@pytest.mark.parametrize("prog", ["overlayctl", "overlayd", "overlay-cni"])
def test_each_tool_prints_its_version_in_one_line(prog):
    proc = subprocess.run([os.path.join(BIN, prog), "--version"], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "CNI_COMMAND": ""})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{prog} {metadata.version('overlay')}\n"
    assert proc.stderr == ""
