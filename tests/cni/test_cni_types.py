"""Results per cniVersion, and the network config (no root)."""

from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest

from overlay.cni import skel
from overlay.cni.install import PluginSettings
from overlay.cni.netconf import parse_netconf
from overlay.cni.types import Interface, IPConfig, Result, Route, parse_result
from overlay.errors import CNIError, ConfigError

RESULT = Result(
    interfaces=(Interface("cni0", "0a:00:00:00:00:01", mtu=1450),
                Interface("veth1234", "0a:00:00:00:00:02", mtu=1450),
                Interface("eth0", "0a:00:00:00:00:03", "/var/run/netns/p", 1450)),
    ips=(IPConfig(IPv4Interface("10.244.1.2/24"), IPv4Address("10.244.1.1"), 2),),
    routes=(Route(IPv4Network("0.0.0.0/0"), IPv4Address("10.244.1.1")),),
)


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0"])
def test_legacy_results_carry_ip_version(version):
    d = RESULT.to_dict(version)
    assert d["cniVersion"] == version
    assert d["ips"] == [{"version": "4", "interface": 2, "address": "10.244.1.2/24",
                         "gateway": "10.244.1.1"}]
    assert all("mtu" not in i for i in d["interfaces"])


def test_1_0_0_has_no_ip_version_and_no_mtu():
    d = RESULT.to_dict("1.0.0")
    assert d["ips"] == [{"interface": 2, "address": "10.244.1.2/24", "gateway": "10.244.1.1"}]
    assert all("mtu" not in i for i in d["interfaces"])
    assert d["interfaces"][2]["sandbox"] == "/var/run/netns/p"
    assert "sandbox" not in d["interfaces"][0]
    assert d["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}]
    assert d["dns"] == {}


def test_1_1_0_adds_interface_mtu():
    d = RESULT.to_dict("1.1.0")
    assert [i["mtu"] for i in d["interfaces"]] == [1450, 1450, 1450]


@pytest.mark.parametrize("version", ["0.3.1", "1.0.0", "1.1.0"])
def test_parse_result_round_trips(version):
    assert parse_result(RESULT.to_dict(version)).ips == RESULT.ips


def test_parse_result_rejects_garbage():
    with pytest.raises(CNIError) as e:
        parse_result({"ips": [{"address": "nope"}]})
    assert e.value.code == 6


def test_netconf_defaults_and_overrides():
    conf = parse_netconf({"name": "n"}, "1.1.0")
    assert (conf.bridge, conf.subnet_file, conf.data_dir) == (
        "cni0", "/run/overlay/subnet.env", "/var/lib/cni/networks")
    conf = parse_netconf({"name": "n", "subnet": "10.9.3.0/24", "network": "10.9.0.0/16",
                          "mtu": 1400, "runtimeConfig": {"mac": "0A:58:0A:09:03:05"}}, "1.0.0")
    node = conf.load_node_subnet()
    assert (node.subnet, node.gateway, node.network, node.mtu) == (
        IPv4Network("10.9.3.0/24"), IPv4Address("10.9.3.1"), IPv4Network("10.9.0.0/16"), 1400)
    assert conf.mac == "0a:58:0a:09:03:05"


@pytest.mark.parametrize("config,needle", [
    ({"bridge": "a" * 16}, "bridge"),
    ({"bridge": ""}, "bridge"),
    ({"bridge": "cni:0"}, "bridge"),
    ({"bridge": "."}, "bridge"),
    ({"bridge": ".."}, "bridge"),
    ({"mtu": 100}, "mtu"),
    ({"mtu": "1450"}, "mtu"),
    ({"hairpinMode": "yes"}, "hairpinMode"),
    ({"subnet": "10.0.0.0/31"}, "too small"),
    ({"subnet": "banana"}, "subnet"),
    ({"subnet": "10.1.0.0/24", "network": "10.2.0.0/16"}, "outside"),
    ({"runtimeConfig": {"mac": "zz"}}, "mac"),
    # relative: the warm server resolved it against overlayd's working directory, the
    # runtime's plugin against its own (two IPAM stores for one network)
    ({"dataDir": "relative/dir"}, "dataDir\" must be an absolute path"),
    ({"subnetFile": "subnet.env"}, "subnetFile\" must be an absolute path"),
])
def test_netconf_errors_are_code_7(config, needle):
    with pytest.raises(CNIError) as e:
        parse_netconf(dict(config, name="n"), "1.1.0")
    assert e.value.code == 7 and needle in str(e.value) + e.value.details


def test_del_lets_a_relative_path_through_for_the_caller_to_skip():
    conf = parse_netconf({"name": "n", "dataDir": "rel"}, "1.1.0", relative_paths=True)
    assert conf.data_dir == "rel"


def test_missing_subnet_env_is_try_again_and_names_the_file(tmp_path):
    path = str(tmp_path / "subnet.env")
    conf = parse_netconf({"name": "n", "subnetFile": path}, "1.1.0")
    with pytest.raises(CNIError) as e:
        conf.load_node_subnet()
    assert e.value.code == 11
    assert path in e.value.msg and "overlayd" in e.value.details


def test_malformed_subnet_env_is_config_error(tmp_path):
    path = tmp_path / "subnet.env"
    path.write_text("OVERLAY_NETWORK=10.244.0.0/16\n")
    conf = parse_netconf({"name": "n", "subnetFile": str(path)}, "1.1.0")
    with pytest.raises(CNIError) as e:
        conf.load_node_subnet()
    assert e.value.code == 7 and "OVERLAY_SUBNET" in e.value.details


def test_subnet_env_supplies_subnet_and_mtu(tmp_path):
    path = tmp_path / "subnet.env"
    path.write_text("OVERLAY_NETWORK=10.244.0.0/16\nOVERLAY_SUBNET=10.244.7.1/24\n"
                    "OVERLAY_MTU=1450\nOVERLAY_IPMASQ=false\n")
    node = parse_netconf({"name": "n", "subnetFile": str(path)}, "1.1.0").load_node_subnet()
    assert (str(node.subnet), str(node.gateway), str(node.network), node.mtu) == (
        "10.244.7.0/24", "10.244.7.1", "10.244.0.0/16", 1450)


@pytest.mark.parametrize("name", ["cni0", "br-pods.1", "a" * 15, "", "a" * 16, ".", "..",
                                  "cni:0", "a/b", "br 0", "br\t0"])
def test_one_interface_name_rule_for_ifname_bridge_and_install(name):
    def rejects(check, error):
        try:
            check()
        except error:
            return True
        return False

    verdicts = {rejects(lambda: skel.validate_ifname(name), CNIError),
                rejects(lambda: parse_netconf({"name": "n", "bridge": name}, "1.1.0"),
                        CNIError),
                rejects(lambda: PluginSettings(bridge=name).validate(), ConfigError)}
    assert len(verdicts) == 1, name
