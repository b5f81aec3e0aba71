"""``overlayctl pods``' argument rules: bad input is one line and exit 1, before etcd."""

import pytest
from click.testing import CliRunner

from overlay.cli import cli
from overlay.cli.pod_cmds import parse_label_args, parse_pod_ref, pod_row
from overlay.errors import ConfigError


def test_label_args_set_and_remove():
    assert parse_label_args(["app=web", "tier=", "old-"]) == ({"app": "web", "tier": ""},
                                                             ["old"])


@pytest.mark.parametrize("args", [["app"], ["=x"], ["bad key=x"], ["k=a b"], ["-"],
                                  ["k=v", "k-"], ["k" * 64 + "=v"]])
def test_bad_label_args_are_refused(args):
    with pytest.raises(ConfigError):
        parse_label_args(args)


def test_pod_refs():
    assert parse_pod_ref("shop/web-1") == ("shop", "web-1")
    assert parse_pod_ref("web-1") == ("default", "web-1")
    for bad in ("Shop/web", "shop/", "a/b/c", "shop/Web_1"):
        with pytest.raises(ConfigError):
            parse_pod_ref(bad)


@pytest.mark.parametrize("argv", [["pods", "label", "Bad/x", "a=b"],
                                  ["pods", "label", "default/x", "a b"],
                                  ["pods", "-A", "-n", "default"],
                                  ["pods", "-n", "Not_A_Namespace"]])
def test_bad_input_is_one_line_and_exit_1_without_etcd(argv):
    # an unreachable endpoint: had the command gone to etcd it would fail differently
    r = CliRunner().invoke(cli, argv + ["--etcd-endpoints", "http://127.0.0.1:9"])
    assert r.exit_code == 1, r.output
    assert r.output.count("\n") == 1 and r.output.startswith("error: "), r.output


def test_the_wide_row_shows_a_dual_stack_pods_ipv6_address():
    from datetime import UTC, datetime
    from ipaddress import ip_address

    from overlay.cluster.pods import PodRecord

    now = datetime.now(UTC)
    dual = PodRecord("shop", "web", (ip_address("10.244.1.5"), ip_address("fd00:10:244:1::5")),
                     "node1", "c1" * 6, "eth0", {}, (), now)
    assert pod_row(dual, True, now)[2] == ip_address("10.244.1.5")
    assert pod_row(dual, True, now)[5] == "fd00:10:244:1::5"
    v4 = PodRecord("shop", "web", (ip_address("10.244.1.5"),), "node1", "c1", "eth0", {}, (),
                   now)
    assert pod_row(v4, True, now)[5] is None and len(pod_row(v4, False, now)) == 5
