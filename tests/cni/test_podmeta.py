"""The plugin's pod metadata file: what ADD writes (shape-checked, bounded) and DEL removes."""

import json
import os
from ipaddress import IPv4Address, IPv6Address

from overlay.cni import commands, podmeta
from overlay.cni.skel import Request
from overlay.util.containerid import MAX_CONTAINER_ID


def meta(k8s=None, **config):
    """The metadata for CNI_ARGS ``k8s`` and the netconf ``config``."""
    return podmeta.meta_from_request("c0ffee", "eth0", k8s or {}, config)


def test_identity_comes_from_k8s_args_and_is_null_when_absent():
    m = meta({"K8S_POD_NAMESPACE": "shop", "K8S_POD_NAME": "web-1"})
    assert (m["namespace"], m["name"]) == ("shop", "web-1")
    podman = meta({"K8S_POD_NAME": "web-1"})
    assert (podman["namespace"], podman["name"]) == (None, "web-1")
    assert (meta()["namespace"], meta()["name"]) == (None, None)


def test_labels_from_args_cni_labels_keep_only_string_pairs():
    m = meta(args={"cni": {"labels": [{"key": "app", "value": "web"}, {"key": "n", "value": 1},
                                      "junk", {"key": ["x"]}, {"key": "e", "value": ""}]}})
    assert m["labels"] == [{"key": "app", "value": "web"}, {"key": "n", "value": 1},
                           {"key": "e", "value": ""}]  # ints pass the shape; the rule drops them


def test_labels_and_ports_are_bounded():
    many = [{"key": f"k{i}", "value": "v"} for i in range(1000)]
    m = meta(args={"cni": {"labels": many, "ports": [{"port": 1}] * 1000}})
    assert len(m["labels"]) == podmeta.MAX_ITEMS and len(m["ports"]) == podmeta.MAX_ITEMS
    long = meta({"K8S_POD_NAME": "x" * 10_000})
    assert long["name"] is None


def test_ports_from_args_else_port_mappings():
    declared = meta(args={"cni": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}},
                    runtimeConfig={"portMappings": [{"hostPort": 8080, "containerPort": 81}]})
    assert declared["ports"] == [{"name": "http", "port": 80, "protocol": "TCP"}]
    mapped = meta(runtimeConfig={"portMappings": [
        {"hostPort": 8080, "containerPort": 81, "protocol": "udp"}, {"hostPort": 1}]})
    assert mapped["ports"] == [{"port": 81, "protocol": "udp"}]


def test_write_is_atomic_beside_the_ipam_record_and_del_removes_it(tmp_path):
    m = meta({"K8S_POD_NAME": "web-1"})
    path = podmeta.write_meta(str(tmp_path), "overlay", m)
    assert path == str(tmp_path / "overlay" / "pods" / "c0ffee@eth0.json")
    written = tmp_path / "overlay" / "pods" / "c0ffee@eth0.json"
    assert json.loads(written.read_text()) == m and os.stat(path).st_mode & 0o777 == 0o600
    assert os.listdir(tmp_path / "overlay" / "pods") == ["c0ffee@eth0.json"]  # no temp left
    podmeta.remove_meta(str(tmp_path), "overlay", "c0ffee", "eth0")
    assert not os.path.exists(path)
    podmeta.remove_meta(str(tmp_path), "overlay", "c0ffee", "eth0")  # idempotent


def test_the_longest_container_id_gets_a_file_linux_can_name(tmp_path):
    # 256 characters (the bound) and a 15-character ifname made a name of 277 bytes:
    # "File name too long", and the ADD failed
    longest, ifname = "c" * MAX_CONTAINER_ID, "e" * 15
    names = {podmeta.meta_file_name(longest, ifname), podmeta.meta_file_name(longest, "eth0"),
             podmeta.meta_file_name(longest[:-1] + "d", ifname)}
    assert len(names) == 3 and all(len(n) <= podmeta.MAX_FILE_NAME for n in names)
    assert all("@" not in n for n in names)  # never a plain name's shape
    m = dict(meta(), containerID=longest, ifname=ifname)
    path = podmeta.write_meta(str(tmp_path), "overlay", m)
    assert os.path.basename(path) == podmeta.meta_file_name(longest, ifname)
    written = tmp_path / "overlay" / "pods" / os.path.basename(path)
    assert json.loads(written.read_text())["containerID"] == longest
    podmeta.remove_meta(str(tmp_path), "overlay", longest, ifname)
    assert os.listdir(tmp_path / "overlay" / "pods") == []
    # the longest plain name still fits with atomic_write's temporary name beside it
    fits = "c" * (podmeta.MAX_FILE_NAME - len("@eth0.json"))
    assert podmeta.meta_file_name(fits, "eth0") == fits + "@eth0.json"
    podmeta.write_meta(str(tmp_path), "overlay", dict(meta(), containerID=fits))
    assert podmeta.meta_file_name(fits + "c", "eth0") != fits + "c@eth0.json"


def test_add_writes_the_metadata_file_and_a_failure_is_an_ipam_error(tmp_path):
    config = {"cniVersion": "1.1.0", "name": "ovnet", "dataDir": str(tmp_path),
              "args": {"cni": {"labels": [{"key": "app", "value": "web"}]}}}
    req = Request("ADD", "1.1.0", config, "c1", "/x", "eth0", {"K8S_POD_NAME": "web"})
    conf = commands.parse_netconf(config, "1.1.0")
    commands._write_pod_meta(req, conf, [IPv4Address("10.1.1.2")])
    written = json.loads((tmp_path / "ovnet" / "pods" / "c1@eth0.json").read_text())
    assert written["labels"] == [{"key": "app", "value": "web"}] and written["name"] == "web"
    assert written["ips"] == ["10.1.1.2"]
    (tmp_path / "ro").write_text("a file where the store's directory should be")
    bad = commands.parse_netconf({**config, "dataDir": str(tmp_path / "ro")}, "1.1.0")
    try:
        commands._write_pod_meta(req, bad, [])
    except commands.IPAMError as e:
        assert "cannot write pod metadata" in str(e)
    else:
        raise AssertionError("a metadata file that cannot be written must fail the ADD")


def test_the_addresses_of_the_add_are_listed_ipv4_first():
    m = podmeta.meta_from_request("c0ffee", "eth0", {}, {},
                                  [IPv4Address("10.244.1.5"), IPv6Address("fd00:10:244:1::5")])
    assert m["ips"] == ["10.244.1.5", "fd00:10:244:1::5"]
    assert meta()["ips"] == []  # nothing given: nothing claimed


def _longest(key_char="k"):
    """The largest metadata meta_from_request keeps of printable ASCII: every count and
    length at its bound (the container ID a runtime's usual 64 hex digits)."""
    text = key_char * podmeta.MAX_TEXT
    labels = [{"key": text, "value": text}] * 1000
    ports = [{"name": text, "port": 65535, "protocol": text}] * 1000
    args = {"K8S_POD_NAMESPACE": "n" * podmeta.MAX_TEXT, "K8S_POD_NAME": "p" * podmeta.MAX_TEXT}
    return podmeta.meta_from_request("c" * 64, "eth0" * 3 + "abc", args,
                                     {"args": {"cni": {"labels": labels, "ports": ports}}},
                                     [IPv6Address("fd00:10:244:ffff:ffff:ffff:ffff:fffe")] * 2)


def test_whatever_ascii_the_plugin_keeps_fits_the_readers_bound(tmp_path):
    # The reader drops a larger file whole, and with it the pod's namespace, name and
    # labels: its registry record would fall back to default/<container ID>, out of reach
    # of the policies selecting it (16 KiB once held about 40 labels of Kubernetes' longest:
    # a 317-character key and a 63-character value).
    m = _longest()
    path = podmeta.write_meta(str(tmp_path), "overlay", m)
    assert os.path.getsize(path) <= podmeta.MAX_META_BYTES
    from overlay.cni.attachments import _read_json_file
    assert _read_json_file(path) == (m, "")


def test_a_larger_file_is_refused_and_nothing_is_written(tmp_path):
    m = _longest(key_char="\u00e9")  # each escaped as \u00e9: six bytes a character
    try:
        podmeta.write_meta(str(tmp_path), "overlay", m)
    except podmeta.MetaTooLarge as e:
        assert f"at most {podmeta.MAX_META_BYTES}" in str(e)
    else:
        raise AssertionError("an oversized metadata file must be refused")
    assert not (tmp_path / "overlay").exists()


def test_an_add_with_oversized_metadata_is_invalid_config(tmp_path):
    labels = [{"key": "\u00e9" * podmeta.MAX_TEXT, "value": "\u00e9" * podmeta.MAX_TEXT}] * 64
    config = {"cniVersion": "1.1.0", "name": "ovnet", "dataDir": str(tmp_path),
              "args": {"cni": {"labels": labels}}}
    req = Request("ADD", "1.1.0", config, "c1", "/x", "eth0", {"K8S_POD_NAME": "web"})
    conf = commands.parse_netconf(config, "1.1.0")
    try:
        commands._write_pod_meta(req, conf, [IPv4Address("10.1.1.2")])
    except commands.CNIError as e:
        assert e.code == commands.CNIError.INVALID_CONFIG and "too large" in str(e)
    else:
        raise AssertionError("an ADD whose metadata cannot be read back must fail")
