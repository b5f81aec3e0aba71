"""overlayd's runtime file: written root-only and atomically, read through one rule."""

import json
import os
import stat
from ipaddress import IPv4Address

import pytest

from overlay.errors import ConfigError
from overlay.runtimefile import (
    MAX_BYTES,
    RuntimeInfo,
    load_runtime_file,
    parse_runtime,
    write_runtime_file,
)
from overlay.subnet.etcdconf import make_etcd_options, read_password_file

INFO = RuntimeInfo(
    version="0.2.0", pid=42, node_name="node1",
    etcd_endpoints=("https://192.168.1.1:2379", "https://192.168.1.2:2379"),
    etcd_prefix="/overlay/network", subnet_file="/run/overlay/subnet.env",
    cni_conf_dir="/etc/cni/net.d", cni_bin_dir="/opt/cni/bin:/usr/lib/cni",
    etcd_cafile="/etc/overlay/ca.pem", etcd_username="overlay",
    etcd_password_file="/etc/overlay/etcd-password", healthz_addr="127.0.0.1:9099",
    cni_socket="/run/overlay/cni.sock", vxlan_device="overlay.1",
    public_ip=IPv4Address("192.168.1.11"), bridge="cni0")


def good() -> dict:
    return INFO.to_dict()


def test_written_root_only_and_read_back(tmp_path):
    path = tmp_path / "run" / "overlayd.json"
    write_runtime_file(str(path), INFO)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_runtime_file(str(path)) == INFO
    assert [p.name for p in path.parent.iterdir()] == ["overlayd.json"]  # no temp left


def test_an_existing_directory_keeps_its_mode(tmp_path):
    tmp_path.chmod(0o755)
    write_runtime_file(str(tmp_path / "overlayd.json"), INFO)
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755


def test_the_etcd_flags_name_the_password_file_never_a_password():
    flags = INFO.etcd_flags()
    assert flags["password_file"] == "/etc/overlay/etcd-password" and "password" not in flags
    assert flags["endpoints"] == "https://192.168.1.1:2379,https://192.168.1.2:2379"


def test_unknown_fields_are_ignored_and_a_newer_schema_read():
    obj = good() | {"schema": 7, "future": {"x": [1] * 100}}
    assert parse_runtime(json.dumps(obj).encode()) == INFO


def test_optional_fields_may_be_null_or_absent():
    obj = good()
    for key in ("healthz_addr", "cni_socket", "vxlan_device", "public_ip", "bridge"):
        obj[key] = None
    del obj["etcd"]["cafile"]
    info = parse_runtime(json.dumps(obj).encode())
    assert info.healthz_addr is None and info.bridge is None and info.etcd_cafile is None


def _with(path: str, value) -> dict:
    obj = good()
    *parents, last = path.split(".")
    target = obj
    for p in parents:
        target = target[p]
    target[last] = value
    return obj


@pytest.mark.parametrize("obj, words", [
    ([], "not an overlayd runtime file"),
    (good() | {"kind": "other"}, "not an overlayd runtime file"),
    (good() | {"schema": "1"}, "schema"),
    (good() | {"schema": True}, "schema"),
    (_with("etcd", "http://x"), "etcd: expected an object"),
    (_with("etcd.endpoints", []), "etcd.endpoints"),
    (_with("etcd.endpoints", ["ftp://x"]), "etcd.endpoints"),
    (_with("etcd.endpoints", ["http://a:1"] * 65), "etcd.endpoints"),
    (_with("subnet_file", "relative/subnet.env"), "subnet_file"),
    (_with("subnet_file", "/x\n/y"), "control characters"),
    (_with("subnet_file", "/" + "a" * 5000), "longer than"),
    (_with("cni_bin_dir", "/opt/cni/bin:lib"), "cni_bin_dir"),
    (_with("etcd.password_file", 3), "etcd.password_file"),
    (_with("healthz_addr", "localhost"), "healthz_addr"),
    (_with("vxlan_device", "a/b"), "vxlan_device"),
    (_with("bridge", "x" * 16), "bridge"),
    (_with("public_ip", "10.0.0.300"), "public_ip"),
    (_with("node_name", "Node_1"), "node_name"),
    (_with("pid", 0), "pid"),
])
def test_a_bad_field_is_one_error_naming_it(obj, words):
    with pytest.raises(ConfigError) as e:
        parse_runtime(json.dumps(obj).encode(), "/run/overlay/overlayd.json")
    text = str(e.value)
    assert words in text and "/run/overlay/overlayd.json" in text and "\n" not in text


def test_not_json_or_too_big_or_not_a_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"\xff{")
    with pytest.raises(ConfigError, match="not JSON"):
        load_runtime_file(str(bad))
    bad.write_bytes(b" " * (MAX_BYTES + 1))
    with pytest.raises(ConfigError, match="larger than"):
        load_runtime_file(str(bad))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_runtime_file(str(fifo))
    with pytest.raises(ConfigError, match="cannot read"):
        load_runtime_file(str(tmp_path / "missing.json"))


def test_password_file_gives_the_password_and_is_remembered(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    opts = make_etcd_options(username="root", password_file=str(pw))
    assert opts.password == "s3cret" and opts.password_file == str(pw)
    direct = make_etcd_options(username="root", password="given", password_file=str(pw))
    assert direct.password == "given" and direct.password_file is None


@pytest.mark.parametrize("content, words", [
    (b"", "alone on one line"), (b"\n", "alone on one line"), (b"a\nb\n", "alone on one line"),
    (b"\xff", "not UTF-8"), (b"x" * 5000, "larger than"),
])
def test_a_bad_password_file_is_one_error(tmp_path, content, words):
    pw = tmp_path / "pw"
    pw.write_bytes(content)
    with pytest.raises(ConfigError, match=words):
        read_password_file(str(pw))
    with pytest.raises(ConfigError, match="cannot read"):
        read_password_file(str(tmp_path / "none"))


def test_policy_log_denied_round_trips_and_defaults_to_off():
    import dataclasses

    loud = dataclasses.replace(INFO, policy_log_denied=True)
    assert parse_runtime(json.dumps(loud.to_dict()).encode()).policy_log_denied is True
    older = good()
    del older["policy_log_denied"]  # written by an overlayd before the setting
    assert parse_runtime(json.dumps(older).encode()).policy_log_denied is False
    with pytest.raises(ConfigError, match="policy_log_denied 'yes': expected true or false"):
        parse_runtime(json.dumps({**good(), "policy_log_denied": "yes"}).encode())
