"""``overlayctl config set``: its help states the defaults the parser really applies."""

import pytest
from click.testing import CliRunner

from overlay.cli import cli
from overlay.cli.config_cmds import build_config


def test_help_states_the_subnet_len_rule():
    r = CliRunner().invoke(cli, ["config", "set", "--help"], terminal_width=200)
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert ("[default: 24 for a /22 or larger network, else the network's prefix + 2]"
            in text), text
    assert "(default 24)" not in text
    assert "[default: 1]" in text and "[default: 8472]" in text


@pytest.mark.parametrize("network, length", [("10.244.0.0/16", 24), ("10.244.0.0/22", 24),
                                             ("10.244.0.0/23", 25), ("10.244.0.0/24", 26)])
def test_the_rule_the_help_states_is_what_config_set_stores(network, length):
    cfg = build_config(network, None, None, None, None)
    assert cfg.subnet_len == length and cfg.backend.vni == 1 and cfg.backend.port == 8472
