"""Unit tests of the lab's pure parts: names, addresses, state records, CNI helpers."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from overlay.lab.cli import cli
from overlay.lab.matrix import Endpoint, render
from overlay.lab.runtime import find_conflist, load_conflist, result_ip
from overlay.lab.spec import LabError, LabSpec, next_free_node, node_index
from overlay.lab.state import LabState, PodRecord, load_state, save_state


def _saved_state(path: str) -> LabState:
    """The state file's contents, which the test expects to exist."""
    state = load_state(path)
    assert state is not None, f"no lab state at {path}"
    return state


def test_names_carry_the_prefix_and_fit_link_names():
    spec = LabSpec("ovlab", "/tmp/x")
    assert spec.underlay_ns == "ovlab-underlay" and spec.bridge == "ovlab-br"
    assert spec.node_ns("node2") == "ovlab-node2"
    assert spec.pod_ns(spec.pod_name("node2", 1)) == "ovlab-pod-node2-1"
    assert len(LabSpec("abcdefgh").node_port("node99")) <= 15
    assert spec.lab_dir == "/tmp/x/ovlab" and spec.state_file == "/tmp/x/ovlab/lab.json"


def test_node_addresses_follow_the_example_cluster():
    assert [str(LabSpec.node_ip(f"node{i}")) for i in (1, 2, 3)] == [
        "192.168.1.11", "192.168.1.12", "192.168.1.13"]
    assert str(LabSpec.node_interface("node1")) == "192.168.1.11/24"
    assert LabSpec().etcd_endpoint == "http://192.168.1.1:2379"


@pytest.mark.parametrize("bad", ["", "OVLAB", "1lab", "ov-lab", "toolongname", "a b"])
def test_bad_prefix_is_refused(bad):
    with pytest.raises(LabError, match="lab name"):
        LabSpec(bad)


def test_lab_dir_must_leave_room_for_unix_sockets():
    with pytest.raises(LabError, match="too long"):
        LabSpec("ovlab", "/" + "x" * 90)
    LabSpec("ovlab", "/" + "x" * 60)


@pytest.mark.parametrize("bad", ["node0", "node100", "node", "pod-node1-1", "Node1"])
def test_bad_node_name_is_refused(bad):
    with pytest.raises(LabError, match="node name"):
        node_index(bad)


def test_next_free_node_reuses_the_lowest_gap():
    assert next_free_node([]) == "node1"
    assert next_free_node(["node1", "node3"]) == "node2"
    assert next_free_node(["node1", "node2"]) == "node3"
    with pytest.raises(LabError, match="99 nodes"):
        next_free_node([f"node{i}" for i in range(1, 100)])


def test_state_round_trips(tmp_path):
    st = LabState("ovlt", 2)
    st.add_node("node2")
    st.add_node("node10")
    st.add_node("node1")
    st.add_node("node1")
    st.pods["pod-node1-1"] = PodRecord("pod-node1-1", "node1", "ovlt-abc", "10.244.3.2",
                                       {"cniVersion": "1.1.0", "ips": []})
    path = tmp_path / "lab.json"
    save_state(str(path), st)
    back = _saved_state(str(path))
    assert back.nodes == ["node1", "node2", "node10"]
    assert back.pods == st.pods and back.pods_per_node == 2
    assert back.pods_of("node1")[0].ip == "10.244.3.2" and back.pods_of("node2") == []
    assert load_state(str(tmp_path / "missing.json")) is None


def test_damaged_state_says_what_to_do(tmp_path):
    path = tmp_path / "lab.json"
    path.write_text('{"prefix": "ovlt", "nodes": ["nodeX"], "pods_per_node": 2}')
    with pytest.raises(LabError, match="damaged"):
        load_state(str(path))


def test_conflist_lookup_and_single_conf(tmp_path):
    with pytest.raises(LabError, match="no CNI network configuration"):
        find_conflist(str(tmp_path))
    (tmp_path / "20-b.conflist").write_text(json.dumps(
        {"cniVersion": "1.0.0", "name": "b", "plugins": [{"type": "overlay"}]}))
    (tmp_path / "10-a.conf").write_text(json.dumps(
        {"cniVersion": "1.0.0", "name": "a", "type": "bridge"}))
    first = find_conflist(str(tmp_path))
    assert first.endswith("10-a.conf")
    conf = load_conflist(first)
    assert conf["name"] == "a" and conf["plugins"][0]["type"] == "bridge"
    (tmp_path / "00-bad.conflist").write_text("{nope")
    with pytest.raises(LabError, match="cannot read"):
        load_conflist(find_conflist(str(tmp_path)))


def test_result_ip():
    ips = [{"address": "10.244.1.2/24", "gateway": "10.244.1.1"}]
    assert result_ip({"ips": ips}) == "10.244.1.2"
    with pytest.raises(LabError, match="no IP"):
        result_ip({"ips": []})


def test_matrix_render_marks_failures():
    pods = [Endpoint("pod-node1-1", "ns1", "10.244.1.2", "node1"),
            Endpoint("pod-node2-1", "ns2", "10.244.2.2", "node2")]
    text = render(pods, {("pod-node1-1", "pod-node2-1"): True,
                         ("pod-node2-1", "pod-node1-1"): False}, color=False)
    lines = text.splitlines()
    assert lines[1].split()[-2:] == ["-", "ok"]
    assert lines[2].split()[-2:] == ["FAIL", "-"]


def _parse(argv):
    """(command name, its parameters, the shared LabOptions) as click parses ``argv``."""
    import click
    group: click.Group = cli
    ctx = cli.make_context("overlay-lab", list(argv))
    while True:
        name, cmd, rest = group.resolve_command(ctx, [*ctx._protected_args, *ctx.args])
        assert cmd is not None and name is not None
        ctx = cmd.make_context(name, rest, parent=ctx)
        if not isinstance(cmd, click.Group):
            return name, ctx.params, ctx.obj
        group = cmd


@pytest.mark.parametrize("argv", [["up", "--nodes", "0"], ["up", "--nodes", "100"],
                                  ["up", "--pods-per-node", "x"], ["frobnicate"],
                                  ["probe", "a"], ["probe", "a", "b", "--protocol", "icmp"],
                                  ["probe", "a", "b", "--port", "0"],
                                  ["matrix", "--port", "65536"], ["pod", "add", "x"]])
def test_cli_rejects_bad_arguments(argv):
    got = CliRunner().invoke(cli, argv)
    assert got.exit_code == 2, got.output
    assert "Traceback" not in got.output


def test_cli_defaults():
    name, params, obj = _parse(["up"])
    assert (name, obj.name, params["nodes"], params["pods_per_node"]) == ("up", "ovlab", None,
                                                                          None)
    name, params, _ = _parse(["exec", "node1", "--", "ip", "-o", "link"])
    assert name == "exec" and params["target"] == "node1"
    assert list(params["cmd"])[-3:] == ["ip", "-o", "link"]
    _, params, _ = _parse(["probe", "pod-node1-1", "web/db"])
    assert (params["source"], params["dest"], params["port"], params["protocol"]) == (
        "pod-node1-1", "web/db", None, None)
    _, params, _ = _parse(["pod", "add", "db", "--node", "node2", "-n", "web",
                           "--labels", "app=db"])
    assert (params["pod_name"], params["node"], params["namespace"], params["labels"]) == (
        "db", "node2", "web", "app=db")


@pytest.mark.parametrize("argv", [
    ["--name", "lab2", "--lab-dir", "/srv/labs", "status"],
    ["status", "--name", "lab2", "--lab-dir", "/srv/labs"],
    ["--name", "lab2", "status", "--lab-dir", "/srv/labs"],
    ["--name", "x", "--lab-dir", "/y", "status", "--name", "lab2", "--lab-dir", "/srv/labs"],
])
def test_cli_common_options_go_before_or_after_the_command(argv):
    name, _, obj = _parse(argv)
    assert (name, obj.name, obj.lab_dir) == ("status", "lab2", "/srv/labs")


def test_cli_common_options_keep_their_defaults_either_way(monkeypatch):
    monkeypatch.delenv("OVERLAY_LAB_NAME", raising=False)
    monkeypatch.delenv("OVERLAY_LAB_DIR", raising=False)
    for argv in (["status"], ["-v", "status"], ["status", "-v"], ["-v", "status", "-v"]):
        _, _, obj = _parse(argv)
        assert (obj.name, obj.lab_dir) == ("ovlab", "/var/lib/overlay-lab")
        assert obj.verbose == argv.count("-v")
    monkeypatch.setenv("OVERLAY_LAB_NAME", "fromenv")
    monkeypatch.setenv("OVERLAY_LAB_DIR", "/env/dir")
    assert (_parse(["status"])[2].name, _parse(["status"])[2].lab_dir) == ("fromenv", "/env/dir")
    assert _parse(["status", "--name", "given"])[2].name == "given"
    assert _parse(["--name", "given", "status"])[2].name == "given"
    assert _parse(["--lab-dir", "/given", "status"])[2].lab_dir == "/given"


def test_cli_version():
    got = CliRunner().invoke(cli, ["--version"])
    from overlay import __version__
    assert got.exit_code == 0 and got.output.strip() == f"overlay-lab {__version__}"


def test_cli_status_of_a_recorded_lab_names_pods_with_namespace_and_labels(tmp_path):
    """Runs the real command on a lab whose record exists but whose parts do not (no
    namespaces, no processes): everything shows as down, nothing fails."""
    if os.geteuid() != 0:
        pytest.skip("overlay-lab needs root")
    prefix = _random_prefix()
    st = LabState(prefix, 1, ["node1"])
    st.pods["web/db"] = PodRecord("db", "node1", "c1", "10.244.1.9", namespace="web",
                                  labels={"app": "db", "tier": "be"}, counted=False)
    save_state(LabSpec(prefix, str(tmp_path)).state_file, st)
    got = CliRunner().invoke(cli, ["status", "--name", prefix, "--lab-dir", str(tmp_path)])
    assert got.exit_code == 0, got.output
    row = [line for line in got.output.splitlines() if line.startswith("web ")]
    assert row and row[0].split()[:2] == ["web", "db"] and "app=db,tier=be" in row[0]
    assert f"{prefix}-web_db (missing)" in row[0]
    got = CliRunner().invoke(cli, ["-o", "json", "status"])
    assert got.exit_code == 2      # -o belongs to status, not to the group
    got = CliRunner().invoke(cli, ["status", "-o", "json", "--name", prefix,
                                   "--lab-dir", str(tmp_path)])
    pods = json.loads(got.output)["pods"]
    assert pods == [{"namespace": "web", "name": "db", "netns": f"{prefix}-web_db",
                     "node": "node1", "ip": "10.244.1.9", "ipv6": None,
                     "labels": {"app": "db", "tier": "be"}, "present": False,
                     "responder_pid": None}]


@pytest.mark.parametrize("argv,msg", [
    (["probe", "nosuch", "db"], "has no pod 'nosuch'"),
    (["probe", "Bad_Name", "db"], "pod name 'Bad_Name'"),
    (["pod", "del", "web/nosuch"], "has no pod 'web/nosuch'"),
    (["pod", "add", "db", "--node", "node1", "-n", "web"], "pod web/db exists already"),
    (["pod", "add", "x", "--node", "node7"], "has no node 'node7'"),
    (["pod", "add", "x", "--node", "node1", "--labels", "a=b,a=c"], "given twice"),
    (["pod", "add", "pod-node1-9", "--node", "node1"], "kept for the pods `up` makes"),
    (["exec", "web/nosuch", "--", "true"], "no node or pod"),
])
def test_cli_bad_input_is_one_line_and_changes_nothing(tmp_path, argv, msg):
    if os.geteuid() != 0:
        pytest.skip("overlay-lab needs root")
    prefix = _random_prefix()
    st = LabState(prefix, 1, ["node1"])
    st.pods["web/db"] = PodRecord("db", "node1", "c1", "10.244.1.9", namespace="web")
    spec = LabSpec(prefix, str(tmp_path))
    save_state(spec.state_file, st)
    before = Path(spec.state_file).read_text()
    got = CliRunner().invoke(cli, [*argv, "--name", prefix, "--lab-dir", str(tmp_path)]
                             if argv[0] != "exec" else
                             ["--name", prefix, "--lab-dir", str(tmp_path), *argv])
    lines = got.output.strip().splitlines()
    assert got.exit_code == (2 if argv[0] == "probe" else 1), got.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0], got.output
    assert Path(spec.state_file).read_text() == before


def test_pid_file_tracks_exactly_its_process(tmp_path):
    from overlay.lab.system import PidFile, start_process, stop_process
    pf = PidFile(str(tmp_path / "sleep.pid"))
    assert pf.read() is None and stop_process(pf) is False
    pid = start_process(["sleep", "30"], pf, str(tmp_path / "sleep.log"))
    assert pf.read() == pid
    # A pid file naming a live process with another start time is someone else's: ignored.
    other = PidFile(str(tmp_path / "other.pid"))
    (tmp_path / "other.pid").write_text(f"{pid} 1\n")
    assert other.read() is None and stop_process(other) is False
    assert stop_process(pf) is True
    assert pf.read() is None and not (tmp_path / "sleep.pid").exists()
    assert "sleep 30" in (tmp_path / "sleep.log").read_text()


# --- cmd/ scripts ------------------------------------------------------------------------
ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def _fake_venv(tmp_path, *programs, exit_codes=None):
    """A venv whose programs print their name and arguments (nothing real runs), then
    exit with ``exit_codes[name]`` (default 0)."""
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name in programs:
        code = (exit_codes or {}).get(name, 0)
        (bin_dir / name).write_text(f'#!/bin/sh\necho "{name} $*"\nexit {code}\n')
        (bin_dir / name).chmod(0o755)
    return tmp_path / "venv"


def _run_tests_copy(tmp_path, *args, exit_codes=None, **env):
    """A copy of run-tests beside a bootstrap.sh that does nothing (the test never
    installs), run with a fake venv: its result, stdout listing what it ran."""
    (tmp_path / "cmd").mkdir(parents=True)
    shutil.copy(ROOT / "cmd/run-tests", tmp_path / "cmd/run-tests")
    (tmp_path / "cmd/bootstrap.sh").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "cmd/bootstrap.sh").chmod(0o755)
    venv = _fake_venv(tmp_path, "python", "ruff", "mypy", exit_codes=exit_codes)
    full_env = {k: v for k, v in os.environ.items() if k != "OVERLAY_LINT"}
    full_env.update(env, OVERLAY_VENV=str(venv))
    return subprocess.run([str(tmp_path / "cmd/run-tests"), *args], capture_output=True,
                          text=True, env=full_env, timeout=30)


def _ran(cp):
    return [line.split()[0] for line in cp.stdout.splitlines()]


def test_run_tests_uses_overlay_venv(tmp_path):
    cp = _run_tests_copy(tmp_path, "tests/test_x.py")
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.startswith("python -m pytest") and "tests/test_x.py" in cp.stdout


def test_run_tests_lints_the_whole_tree_before_the_whole_suite(tmp_path):
    cp = _run_tests_copy(tmp_path)
    assert cp.returncode == 0, cp.stderr
    assert _ran(cp) == ["ruff", "mypy", "python"]
    ruff, mypy, pytest_line = cp.stdout.splitlines()
    assert ruff.split()[1] == "check"
    assert ruff.split()[-4:] == ["overlay", "tests", "bench", "cni-plugin/overlay"]
    assert mypy == "mypy "  # its files and flags come from pyproject.toml
    assert pytest_line.split()[-1] == "tests"


@pytest.mark.parametrize("failing", ["ruff", "mypy"])
def test_a_lint_finding_fails_the_command_and_the_tests_still_run(tmp_path, failing):
    cp = _run_tests_copy(tmp_path, exit_codes={failing: 1})
    assert cp.returncode == 1
    assert _ran(cp) == ["ruff", "mypy", "python"]
    assert f"failed: {failing}" in cp.stderr


def test_a_test_failure_keeps_pytests_exit_code(tmp_path):
    cp = _run_tests_copy(tmp_path, exit_codes={"python": 5, "ruff": 1})
    assert cp.returncode == 5 and "failed: ruff pytest" in cp.stderr


def test_chosen_tests_skip_lint_unless_asked(tmp_path):
    assert _ran(_run_tests_copy(tmp_path / "a", "tests/test_x.py")) == ["python"]
    forced = _run_tests_copy(tmp_path / "b", "tests/test_x.py", OVERLAY_LINT="1")
    assert _ran(forced) == ["ruff", "mypy", "python"]
    skipped = _run_tests_copy(tmp_path / "c", OVERLAY_LINT="0")
    assert _ran(skipped) == ["python"]


def test_lint_only_runs_no_tests(tmp_path):
    cp = _run_tests_copy(tmp_path, "--lint-only", exit_codes={"mypy": 1})
    assert _ran(cp) == ["ruff", "mypy"] and cp.returncode == 1


PROGRAMS = ("overlayd", "overlayctl", "overlay-cni", "overlay-lab")


def test_cmd_entry_points_are_links_to_one_script(tmp_path):
    assert {os.path.realpath(ROOT / "cmd" / p) for p in PROGRAMS} == {str(ROOT / "cmd/venv-exec")}
    venv = _fake_venv(tmp_path, *PROGRAMS)
    env = dict(os.environ, OVERLAY_VENV=str(venv))
    for prog in PROGRAMS:
        # Through a link to the link, as provision.sh installs them into /usr/local/bin.
        (tmp_path / prog).symlink_to(ROOT / "cmd" / prog)
        cp = subprocess.run([str(tmp_path / prog), "--help"], capture_output=True, text=True,
                            env=env, timeout=30)
        assert (cp.returncode, cp.stdout) == (0, f"{prog} --help\n"), cp.stderr
    cp = subprocess.run([str(ROOT / "cmd/venv-exec")], capture_output=True, text=True, env=env)
    assert cp.returncode == 2 and "one of its links" in cp.stderr
    cp = subprocess.run([str(ROOT / "cmd/overlayd")], capture_output=True, text=True,
                        env=dict(os.environ, OVERLAY_VENV=str(tmp_path / "none")))
    assert cp.returncode == 1 and "run cmd/bootstrap.sh" in cp.stderr


# --- the lab's own state ---------------------------------------------------------------
def _lab(tmp_path, nodes=("node1", "node2")):
    from overlay.lab.lab import Lab
    lab = Lab(LabSpec(_random_prefix(), str(tmp_path)), progress=lambda msg: None)
    lab.state = LabState(lab.spec.prefix, 1, list(nodes))
    return lab


def test_saves_from_parallel_threads_never_lose_a_pod(tmp_path, monkeypatch):
    """ensure_pods saves from one thread per node: a thread that built its snapshot first
    but writes it last must not drop another thread's pod from lab.json."""
    import overlay.lab.state as state_mod
    lab = _lab(tmp_path)
    real_write = state_mod.atomic_write
    first_in, second_done = threading.Event(), threading.Event()

    def write(path, data, mode=0o644):
        if not first_in.is_set():       # the first writer is held up just before writing
            first_in.set()
            second_done.wait(0.3)
            real_write(path, data, mode)
        else:
            real_write(path, data, mode)
            second_done.set()
    monkeypatch.setattr(state_mod, "atomic_write", write)

    def add(node):
        name = f"pod-{node}-1"
        lab.state.pods[name] = PodRecord(name, node, f"ovlt-{node}")
        lab._save()
    first = threading.Thread(target=add, args=("node1",))
    first.start()
    assert first_in.wait(5)
    add("node2")
    first.join()
    assert sorted(_saved_state(lab.spec.state_file).pods) == ["pod-node1-1", "pod-node2-1"]


class _FakeRuntime:
    """The part of a CNI runtime ensure_pod uses, with IPAM's one rule: an ADD for a
    container that still holds an IP fails (as host-local's and the overlay plugin's do)."""

    conflist = {"plugins": [{"type": "overlay"}]}

    def __init__(self, held):
        self.held, self.calls = held, []

    def add(self, att):
        self.calls.append("ADD")
        if att.container_id in self.held:
            raise LabError(f"duplicate allocation for {att.container_id}")
        self.held[att.container_id] = f"10.244.1.{len(self.held) + 2}"
        return {"ips": [{"address": self.held[att.container_id] + "/24"}]}

    def delete(self, att, cached):
        self.calls.append("DEL")
        self.held.pop(att.container_id, None)


def test_up_repairs_a_pod_whose_add_was_interrupted(tmp_path, monkeypatch):
    import overlay.lab.lab as lab_mod
    lab = _lab(tmp_path, nodes=("node1",))
    # The record is saved before the ADD; the ADD reserved an IP, then the lab was stopped
    # before it saved the result.
    pod = PodRecord("pod-node1-1", "node1", "ovlt-interrupted")
    lab.state.pods[pod.name] = pod
    runtime = _FakeRuntime({pod.container_id: "10.244.1.2"})
    monkeypatch.setattr(lab, "cni_runtime", lambda node: runtime)
    monkeypatch.setattr(lab_mod.sysx, "ensure_netns", lambda name: False)
    started: list[str] = []     # no namespace here for a responder to run in
    monkeypatch.setattr(lab, "ensure_responder", lambda pod: started.append(pod.ref))
    got = lab.ensure_pod("node1", 1)
    assert started == ["default/pod-node1-1"]
    assert runtime.calls == ["DEL", "ADD"] and got.ip and got.result is not None
    assert _saved_state(lab.spec.state_file).pods[pod.name].ip == got.ip
    # A pod made from scratch needs no DEL.
    runtime.calls.clear()
    lab.ensure_pod("node1", 2)
    assert runtime.calls == ["ADD"]


def _random_prefix() -> str:
    # Unit tests never meet a real lab: down() acts on namespaces of this name if present.
    return "ovlt" + "".join(random.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(4))


def _made_by_up(lab):
    """The files a two-node lab's ``up`` leaves under its dir (contents stand-ins)."""
    spec = lab.spec
    for pod in (PodRecord("pod-node1-1", "node1", "c1"),
                PodRecord("db", "node2", "c2", namespace="web", counted=False)):
        lab.state.pods[pod.key] = pod
    save_state(spec.state_file, lab.state)
    paths = [spec.pod_file(k, f) for k in lab.state.pods
             for f in ("responder.log", "responder.pid")]
    paths += [spec.node_file(n, f) for n in lab.state.nodes
             for f in ("subnet.env", "overlayd.log", "overlayd.pid", "policy-enforced",
                       "net.d/10-overlay.conflist",
                       "ipam/overlay/10.244.1.2", "state/vtep-mac")]
    paths += [os.path.join(spec.etcd_dir, "member/wal/0.wal"), spec.cni_bin_dir + "/overlay",
              os.path.join(spec.lab_dir, "etcd.log"), os.path.join(spec.lab_dir, "etcd.pid")]
    for path in paths:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "w").close()


def test_down_removes_what_up_made_and_only_that(tmp_path):
    from overlay.lab.lab import Lab
    spec = LabSpec(_random_prefix(), str(tmp_path))
    lab = Lab(spec, progress=lambda msg: None)
    lab.state = LabState(spec.prefix, 1, ["node1", "node2"])
    _made_by_up(lab)
    mine = [os.path.join(spec.lab_dir, "notes.txt"), spec.node_file("node2", "trace.pcap"),
            spec.node_file("node1", "keep/x.txt"), spec.pod_file("web/db", "db.pcap")]
    for path in mine:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write("mine\n")
    said: list[str] = []
    lab.progress = said.append
    lab.down()
    left = sorted(os.path.relpath(os.path.join(r, n), spec.lab_dir)
                  for r, _, names in os.walk(spec.lab_dir) for n in names)
    assert left == ["node1/keep/x.txt", "node2/trace.pcap", "notes.txt", "pods/web_db/db.pcap"]
    kept = [m for m in said if m.startswith("kept")]
    assert kept == [f"kept      {os.path.normpath(p)} (not made by the lab)"
                    for p in sorted(map(os.path.normpath, mine))]
    assert "4 path(s) the lab did not make stay" in said[-1]
    for path in mine:
        os.unlink(path)
    os.rmdir(spec.node_file("node1", "keep"))
    os.rmdir(spec.pod_dir("web/db"))
    os.rmdir(spec.pods_dir)
    # Without files of the user's, the lab dir goes too.
    lab = Lab(spec, progress=lambda msg: None)
    lab.state = LabState(spec.prefix, 1, ["node1", "node2"])
    _made_by_up(lab)
    lab.down()
    assert os.listdir(tmp_path) == []


def test_wait_ready_returns_at_the_first_readyz_200(tmp_path, monkeypatch):
    """overlayd binds its CNI socket before /readyz says 200, so readiness is all the lab
    waits for (a node whose warm CNI server is off has no socket at all)."""
    lab = _lab(tmp_path)
    polls: list[str] = []

    def ready(node: str) -> bool:
        polls.append(node)
        return True
    monkeypatch.setattr(lab, "daemon_pid", lambda node: 4242)
    monkeypatch.setattr(lab, "ready", ready)
    lab.wait_ready(["node1", "node2"], timeout=10)
    assert polls == ["node1", "node2"]


def test_format_table_is_shared_by_both_command_lines():
    from overlay.util.text import format_table
    text = format_table(["NODE", "SUBNET"], [["node1", "10.244.1.0/24"], ["node10", None]])
    assert text.splitlines() == ["NODE     SUBNET", "node1    10.244.1.0/24", "node10   <none>"]
    assert format_table(["POD", "IP"], []) == "POD   IP"


def test_netns_entered_refuses_what_is_not_a_namespace(tmp_path):
    from overlay.lab.system import netns_entered
    home = os.stat("/proc/thread-self/ns/net").st_ino
    with pytest.raises(LabError, match="does not exist"), \
            netns_entered(f"{_random_prefix()}-missing"):
        pass
    not_netns = tmp_path / "plain-file"    # an absolute path: taken as is
    not_netns.write_text("")
    with pytest.raises(LabError, match="cannot enter network namespace"), \
            netns_entered(str(not_netns)):
        pass
    with netns_entered("/proc/self/ns/net"):    # our own: entered and left
        pass
    assert os.stat("/proc/thread-self/ns/net").st_ino == home


def _lab_with_nodes(tmp_path, *nodes):
    from overlay.lab.lab import Lab
    lab = Lab(LabSpec("ovlt", str(tmp_path)))
    lab.state = LabState("ovlt", 1, list(nodes))
    lab.state.pods["pod-node1-1"] = PodRecord("pod-node1-1", "node1", "ovlt-c1", "10.244.1.2")
    return lab


def test_exec_env_puts_the_venv_first_and_points_overlayctl_at_the_node(tmp_path):
    from overlay.lab.lab import BIN_DIR
    lab = _lab_with_nodes(tmp_path, "node1", "node2")
    env = lab.exec_env(lab.spec.node_ns("node2"), {"PATH": "/usr/sbin:/usr/bin", "HOME": "/r"})
    assert env["PATH"].split(os.pathsep) == [BIN_DIR, "/usr/sbin", "/usr/bin"]
    assert os.access(os.path.join(BIN_DIR, "overlayctl"), os.X_OK)
    assert env["HOME"] == "/r"
    # On a node, overlayctl gets only the node's runtime file: the one its overlayd writes.
    assert {k for k in env if k.startswith("OVERLAYCTL_")} == {"OVERLAYCTL_RUNTIME_FILE"}
    assert env["OVERLAYCTL_RUNTIME_FILE"] == lab.spec.node_file("node2", "overlayd.json")
    argv = lab.daemon_argv("node2")
    assert argv[argv.index("--healthz-addr") + 1] == lab.healthz_addr("node2")
    assert argv[argv.index("--runtime-file") + 1] == env["OVERLAYCTL_RUNTIME_FILE"]
    assert argv[argv.index("--cni-conf-dir") + 1] == lab.spec.cni_conf_dir("node2")


def test_exec_env_into_a_pod_or_the_underlay(tmp_path):
    lab = _lab_with_nodes(tmp_path, "node1")
    pod = lab.exec_env(lab.spec.pod_ns("pod-node1-1"), {})
    assert pod["PATH"].endswith("/usr/bin:/sbin:/bin")
    assert not any(k.startswith("OVERLAYCTL_") for k in pod)
    under = lab.exec_env(lab.spec.underlay_ns, {})
    assert under["OVERLAYCTL_ETCD_ENDPOINTS"] == lab.spec.etcd_endpoint
    assert "OVERLAYCTL_RUNTIME_FILE" not in under


def test_exec_env_names_options_overlayctl_really_has(tmp_path):
    """overlayctl reads OVERLAYCTL_<OPTION> and OVERLAYCTL_<COMMAND>_<OPTION> (click's
    auto_envvar_prefix): every variable the lab sets must name one of its options."""
    from overlay.cli import cli
    lab = _lab_with_nodes(tmp_path, "node1")
    env = lab.exec_env(lab.spec.node_ns("node1"), {})
    known = {f"OVERLAYCTL_{p.name.upper()}" for p in cli.params}
    for name, cmd in cli.commands.items():
        known |= {f"OVERLAYCTL_{name.upper().replace('-', '_')}_{p.name.upper()}"
                  for p in cmd.params}
    assert {k for k in env if k.startswith("OVERLAYCTL_")} <= known


def test_up_ends_with_a_cheat_sheet_naming_this_lab():
    from overlay.lab.cli import cheat_sheet
    spec = LabSpec("ovlt", "/srv/labs")
    text = "\n".join(cheat_sheet(spec, ["node2", "node3"], "/opt/venv/bin",
                                 "pod-node2-1", "10.244.3.2"))
    assert "export PATH=/opt/venv/bin:$PATH" in text
    flag = "--name ovlt --lab-dir /srv/labs"
    assert f"overlay-lab exec {flag} node2 -- overlayctl leases list" in text
    assert f"overlay-lab exec {flag} node2 -- overlayctl diagnose" in text
    assert f"overlay-lab exec {flag} pod-node2-1 -- ping -c3 10.244.3.2" in text
    assert "/srv/labs/ovlt/node2/overlayd.log" in text and "/srv/labs/ovlt/etcd.log" in text
    assert f"overlay-lab down {flag}" in text
    default = "\n".join(cheat_sheet(LabSpec(), [], "/b"))
    assert "overlay-lab exec node1 -- overlayctl diagnose" in default and "Try:" not in default


def test_a_node_added_with_its_own_pod_count_keeps_it(tmp_path, monkeypatch):
    from overlay.lab.lab import Lab
    st = LabState("ovlt", 2, ["node1"])
    st.add_node("node2", pods=0)
    path = str(tmp_path / "lab.json")
    save_state(path, st)
    back = _saved_state(path)
    assert back.node_pods == {"node2": 0}
    assert [back.pods_wanted(n) for n in back.nodes] == [2, 0]
    # up's pod step asks each node for its own count
    lab = Lab(LabSpec("ovlt", str(tmp_path)))
    lab.state = back
    asked: dict[str, int] = {}
    monkeypatch.setattr(lab, "_ensure_pods_of", lambda node, n: asked.__setitem__(node, n))
    lab.ensure_pods(back.nodes)
    assert asked == {"node1": 2, "node2": 0}
    back.drop_node("node2")
    assert back.node_pods == {} and back.nodes == ["node1"]


def test_state_without_node_pods_still_loads_and_bad_counts_are_refused(tmp_path):
    path = tmp_path / "lab.json"
    path.write_text(json.dumps({"prefix": "ovlt", "pods_per_node": 1, "nodes": ["node1"]}))
    assert _saved_state(str(path)).pods_wanted("node1") == 1
    for bad in ({"node1": "x"}, {"node7": 1}, ["node1"], {"node1": -1}):
        path.write_text(json.dumps({"prefix": "ovlt", "pods_per_node": 1, "nodes": ["node1"],
                                    "node_pods": bad}))
        with pytest.raises(LabError, match="damaged"):
            load_state(str(path))


def test_output_to_a_closed_pipe_ends_quietly_and_the_work_goes_on():
    """`overlay-lab up | head -1`: every line after the reader left is dropped, the
    command still does all its work (here: counts to the end) and exits 0, silently."""
    code = ("import sys\nfrom overlay.lab.cli import say\n"
            "for i in range(20000):\n    say(f'line {i} ' + 'x' * 80)\n"
            "sys.stderr.write('finished\\n')\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().startswith(b"line 0 ")
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0
    assert err == "finished\n"


def test_a_node_can_run_another_overlayd_without_the_flags_it_lacks(tmp_path):
    from overlay.lab.lab import Lab, NodeDaemon
    old = NodeDaemon("/opt/old/bin/overlayd", frozenset({"--runtime-file", "--node-name"}))
    lab = Lab(LabSpec("ovlt", str(tmp_path)), daemons={"node2": old})
    mine, other = lab.daemon_argv("node1"), lab.daemon_argv("node2")
    assert "/opt/old/bin/overlayd" in other and "/opt/old/bin/overlayd" not in mine
    assert "--runtime-file" in mine and "--node-name" in mine
    assert "--runtime-file" not in other and "--node-name" not in other
    assert lab.spec.node_file("node2", "overlayd.json") not in other
    assert other[other.index("--healthz-addr") + 1] == lab.healthz_addr("node2")
    assert mine[mine.index("--node-name") + 1] == "node1"
