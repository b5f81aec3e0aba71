"""overlayctl's options default to the node's runtime file; flags and env still win."""

import json
from ipaddress import IPv4Address
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

import overlay.diagnose.gather
import overlay.diagnose.trace
from overlay.cli import cli
from overlay.runtimefile import write_runtime_file
from tests.test_runtimefile import INFO


@pytest.fixture
def seen(monkeypatch):
    """(DiagnoseOptions or trace keywords, EtcdOptions) of each diagnose/trace run."""
    calls: list = []

    def fake_diagnose(opts, etcd):
        calls.append((opts, etcd))
        return SimpleNamespace(to_dict=lambda: {"checks": []}, failed=False)

    def fake_trace(src, dst, etcd, **kw):
        calls.append((kw, etcd))
        return SimpleNamespace(to_dict=lambda: {"hops": []}, ok=True)

    monkeypatch.setattr(overlay.diagnose.gather, "diagnose", fake_diagnose)
    monkeypatch.setattr(overlay.diagnose.trace, "trace_path", fake_trace)
    return calls


@pytest.fixture
def runtime(tmp_path, monkeypatch):
    """A runtime file as overlayd writes it, named by OVERLAYCTL_RUNTIME_FILE."""
    pw = tmp_path / "etcd-password"
    pw.write_text("s3cret\n")
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    info = INFO.__class__(**{**INFO.__dict__, "etcd_password_file": str(pw),
                             "etcd_cafile": str(ca)})
    path = tmp_path / "overlayd.json"
    write_runtime_file(str(path), info)
    monkeypatch.setenv("OVERLAYCTL_RUNTIME_FILE", str(path))
    return info


def run(args):
    return CliRunner().invoke(cli, ["-o", "json", *args], catch_exceptions=False)


def test_no_flags_diagnose_uses_every_runtime_setting(seen, runtime):
    r = run(["diagnose"])
    assert r.exit_code == 0, r.output
    (opts, etcd), = seen
    assert (opts.subnet_file, opts.cni_conf_dir, opts.cni_bin_dir) == (
        runtime.subnet_file, runtime.cni_conf_dir, runtime.cni_bin_dir)
    assert (opts.vxlan_device, opts.bridge, opts.healthz_addr) == ("overlay.1", "cni0",
                                                                   "127.0.0.1:9099")
    assert opts.public_ip == IPv4Address("192.168.1.11")
    assert [str(e) for e in etcd.endpoints] == list(runtime.etcd_endpoints)
    assert etcd.cafile == runtime.etcd_cafile and etcd.username == "overlay"
    assert etcd.password == "s3cret"  # read from the file the runtime file names


def test_flags_and_env_win_option_by_option(seen, runtime, monkeypatch, tmp_path):
    monkeypatch.setenv("OVERLAYCTL_DIAGNOSE_BRIDGE", "br9")
    r = run(["diagnose", "--subnet-file", "/tmp/x.env", "--etcd-prefix", "/other",
             "--etcd-password", "given"])
    assert r.exit_code == 0, r.output
    (opts, etcd), = seen
    assert opts.subnet_file == "/tmp/x.env" and opts.bridge == "br9"
    assert opts.cni_conf_dir == runtime.cni_conf_dir  # not given: still the runtime's
    assert etcd.prefix == "/other" and etcd.password == "given"
    assert etcd.endpoints[0].host == "192.168.1.1"


def test_trace_takes_the_device_and_bridge_from_it(seen, runtime):
    assert run(["trace", "10.244.1.2", "10.244.2.2"]).exit_code == 0
    (kw, etcd), = seen
    kw.pop("cluster")  # the leases, read once for the hops and the policy part
    assert kw == {"vxlan_device": "overlay.1", "bridge": "cni0"}
    assert etcd.endpoints[0].host == "192.168.1.1"


def test_an_empty_name_ignores_it(seen, runtime):
    assert run(["--runtime-file", "", "diagnose"]).exit_code == 0
    (opts, etcd), = seen
    assert opts.subnet_file is None and str(etcd.endpoints[0]) == "http://127.0.0.1:2379"


@pytest.mark.parametrize("content, words", [
    (None, "cannot read it"), ("{", "not JSON"), ('{"kind": "overlayd-runtime"}', "schema"),
])
def test_a_missing_or_bad_file_is_one_line_and_nothing_runs(seen, tmp_path, content, words):
    path = tmp_path / "overlayd.json"
    if content is not None:
        path.write_text(content)
    r = CliRunner().invoke(cli, ["--runtime-file", str(path), "diagnose"])
    assert r.exit_code == 1 and "Traceback" not in r.output and seen == []
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and str(path) in lines[0]


def test_the_file_it_reads_is_what_the_daemon_writes(tmp_path):
    from overlay.daemon.flags import parse_settings
    from overlay.daemon.runtime import publish_runtime
    from overlay.runtimefile import load_runtime_file
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    conf = tmp_path / "net.d"
    conf.mkdir()
    (conf / "10-overlay.conflist").write_text(json.dumps({
        "cniVersion": "1.0.0", "name": "overlay",
        "plugins": [{"type": "overlay", "bridge": "br7"}]}))
    path = tmp_path / "run" / "overlayd.json"
    s = parse_settings(["--etcd-endpoints", "http://10.0.0.1:2379", "--etcd-username", "u",
                        "--etcd-password-file", str(pw), "--runtime-file", str(path),
                        "--node-name", "n1", "--cni-conf-dir", str(conf),
                        "--cni-bin-dir", "/a:/b", "--healthz-addr", "127.0.0.1:9"], environ={})
    publish_runtime(s, "overlay.1", IPv4Address("192.168.1.11"))
    assert "s3cret" not in path.read_text()
    info = load_runtime_file(str(path))
    assert info.etcd_password_file == str(pw) and info.etcd_username == "u"
    assert (info.bridge, info.vxlan_device, info.cni_bin_dir) == ("br7", "overlay.1", "/a:/b")
    assert info.node_name == "n1" and info.healthz_addr == "127.0.0.1:9"


def test_install_cni_installs_where_overlayd_looks(runtime, tmp_path, monkeypatch):
    info = runtime.__class__(**{**runtime.__dict__, "cni_conf_dir": str(tmp_path / "conf"),
                                "cni_bin_dir": f"{tmp_path / 'bin'}:/usr/lib/cni",
                                "subnet_file": str(tmp_path / "subnet.env")})
    write_runtime_file(str(tmp_path / "rt.json"), info)
    monkeypatch.setenv("OVERLAYCTL_RUNTIME_FILE", str(tmp_path / "rt.json"))
    r = run(["install-cni", "--data-dir", str(tmp_path / "ipam")])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["plugin"] == str(tmp_path / "bin" / "overlay")
    conflist = json.loads((tmp_path / "conf" / "10-overlay.conflist").read_text())
    assert conflist["plugins"][0]["subnetFile"] == str(tmp_path / "subnet.env")


def test_the_default_file_is_used_when_present_and_skipped_when_absent(seen, tmp_path,
                                                                        monkeypatch):
    import overlay.cli
    monkeypatch.delenv("OVERLAYCTL_RUNTIME_FILE")
    monkeypatch.setattr(overlay.cli, "DEFAULT_RUNTIME_FILE", str(tmp_path / "overlayd.json"))
    assert run(["diagnose"]).exit_code == 0  # no overlayd on this machine: the defaults
    plain = INFO.__class__(**{**INFO.__dict__, "etcd_cafile": None, "etcd_username": None,
                              "etcd_password_file": None})
    write_runtime_file(str(tmp_path / "overlayd.json"), plain)
    r = run(["diagnose"])
    assert r.exit_code == 0, r.output
    (absent, _), (present, etcd) = seen
    assert absent.subnet_file is None and present.subnet_file == INFO.subnet_file
    assert etcd.endpoints[0].host == "192.168.1.1"
