"""Unit tests of the lab's dual-stack parts: addresses, the state record, the seed config,
CNI results with both families, overlayd's flags, and the command line's refusals."""

from __future__ import annotations

import json
import os
import random
import string
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path

import pytest
from click.testing import CliRunner

from overlay.config import parse_network_config
from overlay.lab.cli import cli
from overlay.lab.lab import Lab, network_config
from overlay.lab.runtime import result_ips
from overlay.lab.spec import POD_NETWORK6, LabError, LabSpec
from overlay.lab.state import LabState, PodRecord, load_state, save_state


def _prefix() -> str:
    return "ovlt" + "".join(random.choices(string.ascii_lowercase, k=4))


def test_ipv6_underlay_addresses_read_like_the_ipv4_ones():
    spec = LabSpec("ovlab", "/tmp/x")
    assert str(spec.node_ip6("node1")) == "fd00:192:168:1::11"
    assert str(spec.node_interface6("node3")) == "fd00:192:168:1::13/64"
    assert spec.node_ip6("node99") == IPv6Address("fd00:192:168:1::109")
    assert len({spec.node_ip6(f"node{i}") for i in range(1, 100)}) == 99
    assert spec.etcd_endpoint6 == "http://[fd00:192:168:1::1]:2379"


def test_state_keeps_its_families_and_ipv4_only_nodes(tmp_path):
    st = LabState("ovlt", 1, ["node1", "node2"], families="dual", no_ipv6=["node2"])
    st.pods["pod-node1-1"] = PodRecord("pod-node1-1", "node1", "c1", "10.244.1.2",
                                       ip6="fd00:10:244:1::2")
    path = str(tmp_path / "lab.json")
    save_state(path, st)
    back = load_state(path)
    assert back is not None and back.families == "dual" and back.no_ipv6 == ["node2"]
    assert back.node_has_ipv6("node1") and not back.node_has_ipv6("node2")
    assert back.families_list() == [4, 6]
    pod = back.pods["pod-node1-1"]
    assert pod.address(4) == "10.244.1.2" and pod.address(6) == "fd00:10:244:1::2"
    back.drop_node("node2")
    assert back.no_ipv6 == []


def test_an_ipv6_only_pods_first_address_is_not_taken_for_ipv4():
    pod = PodRecord("p", "node1", "c1", "fd00:10:244:1::2", ip6="fd00:10:244:1::2")
    assert pod.address(4) is None and pod.address(6) == "fd00:10:244:1::2"
    assert LabState("x", 1, families="ipv6").families_list() == [6]
    assert LabState("x", 1).families_list() == [4] and not LabState("x", 1).has_ipv6()


@pytest.mark.parametrize("extra", [{"families": "ipv5"}, {"no_ipv6": ["node7"]}])
def test_damaged_families_are_refused(tmp_path, extra):
    path = tmp_path / "lab.json"
    path.write_text(json.dumps({"prefix": "ovlt", "nodes": ["node1"], "pods_per_node": 1,
                                **extra}))
    with pytest.raises(LabError, match="damaged"):
        load_state(str(path))


def test_a_state_from_before_dual_stack_is_ipv4_only(tmp_path):
    path = tmp_path / "lab.json"
    path.write_text('{"prefix": "ovlt", "nodes": ["node1"], "pods_per_node": 1, '
                    '"pods": [{"name": "pod-node1-1", "node": "node1", "container_id": "c", '
                    '"ip": "10.244.1.2"}]}')
    st = load_state(str(path))
    assert st is not None and st.families == "ipv4" and st.no_ipv6 == []
    assert st.pods["pod-node1-1"].ip6 is None


@pytest.mark.parametrize("families,v4", [("dual", True), ("ipv6", False)])
def test_the_seed_config_is_flannels_schema_and_the_parser_takes_it(families, v4):
    raw = network_config(families)
    assert raw["EnableIPv6"] is True and raw["EnableIPv4"] is v4
    assert raw["IPv6Network"] == POD_NETWORK6 and raw["IPv6SubnetLen"] == 64
    assert ("Network" in raw) is v4
    cfg = parse_network_config(json.dumps(raw).encode())
    assert cfg.enable_ipv6 and cfg.enable_ipv4 is v4
    assert cfg.ipv6_network == IPv6Network(POD_NETWORK6) and cfg.ipv6_subnet_len == 64


def test_result_ips_takes_each_family():
    dual = {"ips": [{"address": "10.244.1.2/24"}, {"address": "fd00:10:244:1::2/64"}]}
    assert result_ips(dual) == ("10.244.1.2", "fd00:10:244:1::2")
    assert result_ips({"ips": [{"address": "fd00:10:244:1::3/64"}]}) == (
        "fd00:10:244:1::3", "fd00:10:244:1::3")
    assert result_ips({"ips": [{"address": "10.244.1.2/24"}]}) == ("10.244.1.2", None)
    with pytest.raises(LabError, match="no IP address"):
        result_ips({"ips": []})


def test_overlayd_gets_public_ipv6_only_where_the_underlay_has_it(tmp_path):
    lab = Lab(LabSpec("ovlt", str(tmp_path)))
    lab.state = LabState("ovlt", 1, ["node1", "node2"], families="dual", no_ipv6=["node2"])
    one, two = lab.daemon_argv("node1"), lab.daemon_argv("node2")
    assert one[one.index("--public-ipv6") + 1] == "fd00:192:168:1::11"
    assert "--public-ipv6" not in two and two[two.index("--public-ip") + 1] == "192.168.1.12"
    lab.state = LabState("ovlt", 1, ["node1"])
    assert "--public-ipv6" not in lab.daemon_argv("node1")


def _recorded(tmp_path, families="ipv4", no_ipv6=()):
    prefix = _prefix()
    st = LabState(prefix, 1, ["node1", "node2"], families=families, no_ipv6=list(no_ipv6))
    st.pods["pod-node1-1"] = PodRecord("pod-node1-1", "node1", "c1", "10.244.1.2",
                                       ip6="fd00:10:244:1::2" if families != "ipv4" else None)
    st.pods["pod-node2-1"] = PodRecord("pod-node2-1", "node2", "c2", "10.244.2.2")
    spec = LabSpec(prefix, str(tmp_path))
    save_state(spec.state_file, st)
    return spec


@pytest.mark.parametrize("argv,code,msg", [
    (["up", "--dual-stack"], 1, "cannot switch to dual-stack"),
    (["add-node", "--no-ipv6"], 1, "--no-ipv6 is for a dual-stack lab"),
    (["matrix", "--family", "6"], 1, "has no IPv6 pod addresses"),
    (["probe", "pod-node1-1", "pod-node2-1", "--family", "6"], 2, "has no IPv6 address"),
    (["probe", "pod-node1-1", "pod-node2-1", "--family", "5"], 2, "'5' is not one of"),
])
def test_cli_refuses_a_family_the_lab_does_not_have(tmp_path, argv, code, msg):
    if os.geteuid() != 0:
        pytest.skip("overlay-lab needs root")
    spec = _recorded(tmp_path)
    before = Path(spec.state_file).read_text()
    got = CliRunner().invoke(cli, [*argv, "--name", spec.prefix, "--lab-dir", str(tmp_path)])
    assert got.exit_code == code, got.output
    assert msg in got.output and "Traceback" not in got.output, got.output
    assert Path(spec.state_file).read_text() == before


def test_cli_status_of_a_dual_stack_lab_shows_both_families(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("overlay-lab needs root")
    spec = _recorded(tmp_path, "dual", no_ipv6=["node2"])
    args = ["--name", spec.prefix, "--lab-dir", str(tmp_path)]
    got = CliRunner().invoke(cli, ["status", *args])
    assert got.exit_code == 0, got.output
    assert "PUBLIC-IPV6" in got.output and "IPV6-SUBNET" in got.output
    node1 = next(line for line in got.output.splitlines() if line.startswith("node1 "))
    assert "fd00:192:168:1::11" in node1
    assert "node2: no IPv6: its underlay has no IPv6 address" in got.output
    st = json.loads(CliRunner().invoke(cli, ["status", "-o", "json", *args]).output)
    assert st["families"] == "dual"
    assert [n["public_ipv6"] for n in st["nodes"]] == ["fd00:192:168:1::11", None]
    assert [p["ipv6"] for p in st["pods"]] == ["fd00:10:244:1::2", None]


def test_the_cheat_sheet_of_a_dual_stack_lab_pings_both_families():
    from overlay.lab.cli import cheat_sheet
    text = "\n".join(cheat_sheet(LabSpec(), ["node1"], "/b", "pod-node1-1", "10.244.2.2",
                                 "fd00:10:244:2::2"))
    assert "pod-node1-1 -- ping -c3 10.244.2.2" in text
    assert "pod-node1-1 -- ping -c3 fd00:10:244:2::2" in text
    assert "fd00" not in "\n".join(cheat_sheet(LabSpec(), ["node1"], "/b", "p", "10.244.2.2"))
