"""The executable entry without a warm server: it runs the plugin in its own process and
imports only what a command needs (issue 15: the cold ADD was 7.5x the reference plugins,
nearly all interpreter start-up and imports).  Real entry, real subprocess, real IPAM
store; nothing here reaches the kernel."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENTRY = os.path.join(ROOT, "cni-plugin", "overlay")

# Each cost the in-process plugin milliseconds per call (measured: see the README's CNI
# benchmark row) or is a third-party package that `python -IS` cannot even import.
NOT_ON_THE_COLD_PATH = {
    "logging", "dataclasses", "inspect", "hashlib", "_hashlib", "socket", "tempfile",
    "difflib", "overlay.config", "subprocess", "threading",
    "pyroute2", "pyetcd", "click", "grpc", "google"}


def entry(tmp_path, env, stdin, *python_flags):
    full = {"OVERLAY_CNI_SOCKET": str(tmp_path / "absent.sock"), "PATH": os.environ["PATH"]}
    full.update(env)
    return subprocess.run([sys.executable, *python_flags, "-IS", ENTRY], input=stdin,
                          env=full, capture_output=True, timeout=60)


def imported(stderr: bytes) -> set[str]:
    """Module names from ``-X importtime``'s report."""
    names = set()
    for line in stderr.decode().splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip())
    return names


def status_request(tmp_path):
    conf = {"cniVersion": "1.1.0", "name": "ovcni-cold", "type": "overlay",
            "subnet": "10.251.5.0/24", "dataDir": str(tmp_path / "ipam")}
    return {"CNI_COMMAND": "STATUS"}, json.dumps(conf).encode()


def test_a_command_runs_in_the_entrys_process_with_a_lean_import_graph(tmp_path):
    env, stdin = status_request(tmp_path)
    proc = entry(tmp_path, env, stdin, "-X", "importtime")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    modules = imported(proc.stderr)
    # the commands really ran here: their module was imported by this process
    assert {"overlay.cni.client", "overlay.cni.commands", "overlay.cni.ipam"} <= modules
    assert modules & NOT_ON_THE_COLD_PATH == set()


def test_a_warning_still_reaches_stderr_and_sets_up_logging_then(tmp_path):
    env, stdin = status_request(tmp_path)
    env.update(CNI_COMMAND="ADD", CNI_CONTAINERID="c1", CNI_IFNAME="eth0",
               CNI_NETNS=str(tmp_path / "no-such-netns"), CNI_PATH="/usr/lib/cni")
    proc = entry(tmp_path, env, stdin, "-X", "importtime")
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["code"] == 4
    lines = [ln for ln in proc.stderr.decode().splitlines() if not ln.startswith("import time")]
    assert any("WARNING overlay.cni.skel: CNI ADD c1/eth0 failed: code 4" in ln for ln in lines)
    assert "logging" in imported(proc.stderr)  # imported for the warning, not before


def test_a_log_file_is_set_up_at_once_and_gets_the_lines(tmp_path):
    env, stdin = status_request(tmp_path)
    log_file = tmp_path / "plugin.log"
    env.update(CNI_COMMAND="ADD", CNI_CONTAINERID="c1", CNI_IFNAME="eth0",
               CNI_NETNS=str(tmp_path / "no-such-netns"), CNI_PATH="/usr/lib/cni",
               OVERLAY_CNI_LOG_FILE=str(log_file))
    proc = entry(tmp_path, env, stdin)
    assert proc.returncode == 1
    assert "CNI ADD c1/eth0 failed: code 4" in log_file.read_text()
