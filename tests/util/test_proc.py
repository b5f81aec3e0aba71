"""The one subprocess runner, and how each caller turns its failures into its errors."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from overlay.errors import CNIError, ConfigError, OverlayError
from overlay.util import proc
from overlay.util.proc import ProgramError, run, run_quiet


def test_output_is_captured_and_input_is_given():
    cp = run(["sh", "-c", "read x; echo out $x; echo err >&2"], input="in\n")
    assert (cp.returncode, cp.stdout, cp.stderr) == (0, "out in\n", "err\n")


def test_stdin_is_empty_without_input():
    assert run(["cat"], timeout=5).stdout == ""  # would hang on an inherited terminal


def test_check_raises_with_the_last_line_of_stderr():
    with pytest.raises(ProgramError) as ei:
        run(["sh", "-c", "echo one >&2; echo two >&2; exit 3"], check=True)
    e = ei.value
    assert isinstance(e, OverlayError) and e.reason == proc.FAILED and e.returncode == 3
    assert str(e).endswith(": two") and e.stderr == "one\ntwo"
    assert run(["sh", "-c", "exit 3"]).returncode == 3  # check=False: the caller decides


def test_missing_cannot_run_and_timeout_are_told_apart(tmp_path):
    with pytest.raises(ProgramError) as ei:
        run([str(tmp_path / "absent")])
    assert (ei.value.reason, ei.value.returncode) == (proc.MISSING, 127)
    plain = tmp_path / "plain"
    plain.write_text("#!/bin/sh\n")  # not executable
    with pytest.raises(ProgramError) as ei:
        run([str(plain)])
    assert (ei.value.reason, ei.value.returncode) == (proc.CANNOT_RUN, 126)
    with pytest.raises(ProgramError) as ei:
        run(["sleep", "5"], timeout=0.2)
    assert (ei.value.reason, ei.value.returncode) == (proc.TIMEOUT, 124)
    assert run_quiet(["sleep", "5"], timeout=0.2)[0] == 124


def test_nft_missing_is_a_config_error_naming_the_package(monkeypatch, tmp_path):
    from overlay.masq import nft
    monkeypatch.setattr(nft, "NFT", str(tmp_path / "nft"))
    m = nft.Masquerade(IPv4Network("10.244.0.0/16"), IPv4Network("10.244.3.0/24"), True)
    with pytest.raises(ConfigError, match="Debian package nftables"):
        m.ensure()


def test_iptables_missing_is_a_cni_firewall_error(monkeypatch):
    from overlay.cni.skel import ERR_FIREWALL
    from overlay.masq import iptables
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(CNIError) as ei:
        iptables.add_masq("net", "c1", "eth0", IPv4Address("10.244.3.5"),
                          IPv4Network("10.244.0.0/16"))
    assert ei.value.code == ERR_FIREWALL and "cannot run iptables-restore" in str(ei.value)


def test_lab_run_speaks_lab_errors(tmp_path):
    from overlay.lab.spec import LabError
    from overlay.lab.system import run as lab_run
    with pytest.raises(LabError, match=r"not installed \(run cmd/bootstrap.sh\)"):
        lab_run([str(tmp_path / "absent")])
    with pytest.raises(LabError, match="no answer within 0.2 s"):
        lab_run(["sleep", "5"], timeout=0.2)
    with pytest.raises(LabError, match=r"sh -c echo bad >&2; exit 1: bad$"):
        lab_run(["sh", "-c", "echo bad >&2; exit 1"])
    assert lab_run(["sh", "-c", "exit 1"], check=False).returncode == 1
