"""An earlier release of this project installed beside this tree, for upgrade tests.

``git archive`` of the release's commit into a temporary directory and a venv of its own
there (``pip install`` from the machine's configured index, as a user would), cached by
commit id, so a second run costs nothing.  The commit id is the reference, not the tag:
a clean clone may lack tags.
"""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import sys
import tempfile

from overlay.lab.lab import program

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
# v0.1.0: the code from before the cluster objects (nodes/, pods/, schema): it reads
# only subnets/ and knows none of the lab's flags added since (node name, heartbeats and
# health mesh, runtime file, CNI dirs); ``unknown_flags`` finds them from the two helps.
V0_1_0 = "7e0936c80304999ca4e75870d27d564d50bf9d4f"
# The last commit giving Backend.MTU to overlay.<VNI> as is (before it became the outer
# MTU of both families): the upgrade test of that change starts a node on it.
INNER_BACKEND_MTU = "2fbf638c9b78d74782bb7128a68502c9cf63a539"
_FLAG_RE = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")


def help_flags(overlayd: str) -> frozenset[str]:
    """The long flags an ``overlayd`` program's ``--help`` names."""
    out = subprocess.run([overlayd, "--help"], check=True, capture_output=True, text=True,
                         timeout=60).stdout
    return frozenset(_FLAG_RE.findall(out))


def unknown_flags(bindir: str) -> frozenset[str]:
    """This tree's overlayd flags that the release in ``bindir`` lacks: what the lab must
    leave out of that release's command (derived, so a new flag needs no list kept by hand)."""
    ours = help_flags(program("overlayd"))
    return ours - help_flags(os.path.join(bindir, "overlayd"))


def release_dir(commit: str) -> str:
    return os.path.join(tempfile.gettempdir(), f"overlay-release-{commit}")


def install_release(commit: str) -> str:
    """The venv bin directory of ``commit``'s release (installed once, then reused)."""
    top = release_dir(commit)
    os.makedirs(top, exist_ok=True)
    bindir = os.path.join(top, "venv", "bin")
    done = os.path.join(top, "installed")
    with open(os.path.join(top, "lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test runs at once install it once
        if not os.path.exists(done):
            _install(commit, top)
            with open(done, "w") as f:
                f.write(commit + "\n")
    return bindir


def _install(commit: str, top: str) -> None:
    src = os.path.join(top, "src")
    subprocess.run(["rm", "-rf", src, os.path.join(top, "venv")], check=True)
    os.makedirs(src)
    archive = subprocess.run(["git", "-C", REPO, "archive", "--format=tar", commit],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", src], input=archive, check=True)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", os.path.join(top, "venv")], check=True)
    pip = os.path.join(top, "venv", "bin", "pip")
    p = subprocess.run([pip, "install", "-q", src], capture_output=True, text=True,
                       timeout=900)
    if p.returncode != 0:
        raise RuntimeError(f"installing {commit[:12]} failed: {p.stderr[-2000:]}")
