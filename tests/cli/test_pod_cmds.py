"""``overlayctl pods``' argument rules: bad input is one line and exit 1, before etcd."""

import pytest
from click.testing import CliRunner

from overlay.cli import cli
from overlay.cli.pod_cmds import parse_label_args, parse_pod_ref
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
