"""install-cni and the repository's deployable files (no root)."""

import json
import os
import subprocess
import sys

from click.testing import CliRunner

from overlay.cli import cli
from overlay.cni.install import install_cni, portmap_warning, render_conflist, render_entry

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_repo_entry_and_conflist_match_what_install_writes():
    with open(os.path.join(ROOT, "cni-plugin", "overlay")) as f:
        assert f.read() == render_entry("/usr/bin/env -S python3", None)
    with open(os.path.join(ROOT, "cni-plugin", "10-overlay.conflist")) as f:
        conflist = json.load(f)
    assert conflist == json.loads(render_conflist())
    assert [p["type"] for p in conflist["plugins"]] == ["overlay", "portmap"]


def test_install_writes_atomically_and_is_idempotent(tmp_path):
    bin_dir, conf_dir = tmp_path / "bin", tmp_path / "net.d"
    first = install_cni(str(bin_dir), str(conf_dir))
    assert first.plugin_changed and first.conflist_changed and not first.portmap_found
    entry = (bin_dir / "overlay").read_text()
    assert entry.splitlines()[0] == f"#!{sys.executable} -IS"
    assert os.access(bin_dir / "overlay", os.X_OK)
    mtime = os.stat(bin_dir / "overlay").st_mtime_ns
    second = install_cni(str(bin_dir), str(conf_dir))
    assert not second.plugin_changed and not second.conflist_changed
    assert os.stat(bin_dir / "overlay").st_mtime_ns == mtime
    assert sorted(os.listdir(bin_dir)) == ["overlay"]  # no temp files left behind
    assert sorted(os.listdir(conf_dir)) == ["10-overlay.conflist"]


def test_install_repairs_a_changed_file(tmp_path):
    install_cni(str(tmp_path / "bin"), str(tmp_path / "conf"))
    (tmp_path / "conf" / "10-overlay.conflist").write_text("{}")
    again = install_cni(str(tmp_path / "bin"), str(tmp_path / "conf"))
    assert again.conflist_changed and not again.plugin_changed
    assert json.loads((tmp_path / "conf" / "10-overlay.conflist").read_text())["name"] == "overlay"


def test_installed_entry_runs_version_without_a_server(tmp_path):
    install_cni(str(tmp_path / "bin"), str(tmp_path / "conf"))
    env = {"CNI_COMMAND": "VERSION", "OVERLAY_CNI_SOCKET": str(tmp_path / "absent.sock"),
           "PATH": os.environ.get("PATH", "")}
    proc = subprocess.run([str(tmp_path / "bin" / "overlay")], input=b'{"cniVersion":"1.0.0"}',
                          env=env, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {
        "cniVersion": "1.0.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}


def test_cli_reports_and_warns_about_missing_portmap(tmp_path):
    runner = CliRunner()
    args = ["install-cni", "--bin-dir", str(tmp_path / "bin"), "--conf-dir", str(tmp_path / "c")]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0
    assert "overlay: installed" in result.stdout
    assert "portmap is missing" in result.stderr
    (tmp_path / "bin" / "portmap").write_text("#!/bin/sh\n")
    os.chmod(tmp_path / "bin" / "portmap", 0o755)
    result = runner.invoke(cli, ["-o", "json"] + args)
    assert json.loads(result.stdout)["portmap_found"] is True
    assert json.loads(result.stdout)["plugin_changed"] is False
    assert "portmap is missing" not in result.stderr


def test_cli_refuses_a_file_as_bin_dir(tmp_path):
    (tmp_path / "file").write_text("x")
    result = CliRunner().invoke(
        cli, ["install-cni", "--bin-dir", str(tmp_path / "file"), "--conf-dir", str(tmp_path)])
    assert result.exit_code != 0


def test_plugin_path_needs_only_the_standard_library():
    """The fallback runs the plugin under `python -IS` (no site-packages): a third-party
    import anywhere on the plugin's path would break it, and pyroute2 would cost ~190 ms."""
    code = (f"import sys; sys.path.insert(0, {ROOT!r}); "
            "import overlay.cni.plugin, overlay.cni.commands; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('pyroute2', 'click', 'pyetcd', "
            "'grpc', 'google')]; print(bad)")
    proc = subprocess.run([sys.executable, "-IS", "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_cli_writes_per_node_settings_into_the_conflist(tmp_path):
    result = CliRunner().invoke(cli, [
        "install-cni", "--bin-dir", str(tmp_path / "bin"), "--conf-dir", str(tmp_path / "conf"),
        "--bridge", "br-pods", "--subnet-file", "/run/node2/subnet.env",
        "--data-dir", "/var/lib/node2/ipam"])
    assert result.exit_code == 0, result.output
    conf = json.loads((tmp_path / "conf" / "10-overlay.conflist").read_text())
    overlay = conf["plugins"][0]
    assert (overlay["bridge"], overlay["subnetFile"], overlay["dataDir"]) == (
        "br-pods", "/run/node2/subnet.env", "/var/lib/node2/ipam")
    assert overlay["hairpinMode"] is True and conf["plugins"][1]["type"] == "portmap"


def test_cli_rejects_bad_settings_and_writes_nothing(tmp_path):
    for args, message in ((["--subnet-file", "relative/subnet.env"], "absolute path"),
                          (["--data-dir", "ipam"], "absolute path"),
                          (["--bridge", "../etc"], "not a valid interface name"),
                          (["--bridge", "a-very-long-bridge-name"], "not a valid interface name")):
        result = CliRunner().invoke(cli, ["install-cni", "--bin-dir", str(tmp_path / "bin"),
                                          "--conf-dir", str(tmp_path / "conf"), *args])
        assert result.exit_code == 1, (args, result.output)
        assert message in result.output and "Traceback" not in result.output
        assert not (tmp_path / "bin").exists() and not (tmp_path / "conf").exists()


def _portmap(directory):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "portmap").write_text("#!/bin/sh\n")
    os.chmod(directory / "portmap", 0o755)


def test_portmap_elsewhere_is_named_with_how_to_point_the_runtime_at_it(tmp_path):
    debian = tmp_path / "usr-lib-cni"
    _portmap(debian)
    dirs = (str(tmp_path / "opt"), str(debian))
    bin_dir = str(tmp_path / "bin")
    result = install_cni(bin_dir, str(tmp_path / "c"), portmap_dirs=dirs)
    assert not result.portmap_found and result.portmap_elsewhere == str(debian)
    warning = portmap_warning(result, bin_dir, dirs) or ""
    assert f"portmap is installed in {debian}" in warning
    assert f"CNI_PATH={bin_dir}:{debian}" in warning
    assert f"ln -s {debian}/portmap {bin_dir}/portmap" in warning
    assert "apt install" not in warning


def test_portmap_nowhere_names_the_places_searched(tmp_path):
    dirs = (str(tmp_path / "opt"), str(tmp_path / "usr-lib-cni"))
    bin_dir = str(tmp_path / "bin")
    result = install_cni(bin_dir, str(tmp_path / "c"), portmap_dirs=dirs)
    assert result.portmap_elsewhere is None
    warning = portmap_warning(result, bin_dir, dirs) or ""
    assert f"not found in {bin_dir}, {dirs[0]}, {dirs[1]}" in warning
    assert "apt install containernetworking-plugins" in warning


def test_portmap_in_bin_dir_needs_no_warning(tmp_path):
    _portmap(tmp_path / "bin")
    result = install_cni(str(tmp_path / "bin"), str(tmp_path / "c"),
                         portmap_dirs=(str(tmp_path / "bin"),))
    assert result.portmap_found and result.portmap_elsewhere is None
    assert portmap_warning(result, str(tmp_path / "bin")) is None


def test_cli_names_debians_portmap_on_this_machine(tmp_path):
    """bootstrap installs containernetworking-plugins, whose portmap is in /usr/lib/cni."""
    assert os.access("/usr/lib/cni/portmap", os.X_OK)
    bin_dir = tmp_path / "bin"
    result = CliRunner().invoke(cli, ["install-cni", "--bin-dir", str(bin_dir),
                                      "--conf-dir", str(tmp_path / "c")])
    assert result.exit_code == 0
    assert "portmap is installed in /usr/lib/cni" in result.stderr
    assert "install containernetworking-plugins" not in result.stderr
