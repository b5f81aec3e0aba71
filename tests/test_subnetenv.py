"""subnet.env: format, parse errors, atomic write."""

import os
from ipaddress import IPv4Interface, IPv4Network

import pytest

from overlay.errors import SubnetEnvError
from overlay.subnetenv import SubnetEnv, load_subnet_env, parse_subnet_env, write_subnet_env

ENV = SubnetEnv(IPv4Network("10.244.0.0/16"), IPv4Interface("10.244.1.1/24"), 1450)


def test_format_matches_the_contract():
    assert ENV.format() == ("OVERLAY_NETWORK=10.244.0.0/16\nOVERLAY_SUBNET=10.244.1.1/24\n"
                            "OVERLAY_MTU=1450\nOVERLAY_IPMASQ=false\n")


def test_write_then_load_round_trip(tmp_path):
    path = str(tmp_path / "run" / "subnet.env")
    write_subnet_env(path, ENV)
    assert load_subnet_env(path) == ENV
    assert oct(os.stat(path).st_mode & 0o777) == "0o644"
    assert os.listdir(tmp_path / "run") == ["subnet.env"]  # no temp file left behind


def test_write_replaces_atomically(tmp_path):
    path = str(tmp_path / "subnet.env")
    write_subnet_env(path, ENV)
    fd = os.open(path, os.O_RDONLY)  # a reader holding the old file keeps the old content
    try:
        new = SubnetEnv(ENV.network, IPv4Interface("10.244.2.1/24"), 1400, True)
        write_subnet_env(path, new)
        assert os.read(fd, 4096).decode() == ENV.format()
    finally:
        os.close(fd)
    assert load_subnet_env(path) == new


def test_parse_tolerates_comments_quotes_and_blank_lines():
    text = ('# written by overlayd\n\nOVERLAY_NETWORK="10.244.0.0/16"\n'
            'OVERLAY_SUBNET=10.244.1.1/24\nOVERLAY_MTU=1450\n')
    env = parse_subnet_env(text)
    assert env == ENV and env.ipmasq is False


@pytest.mark.parametrize("text, why", [
    ("OVERLAY_NETWORK=10.244.0.0/16\nOVERLAY_MTU=1450\n", "OVERLAY_SUBNET is missing"),
    ("OVERLAY_NETWORK=10.244.0.0/16\nOVERLAY_SUBNET=10.244.1.1/24\n", "OVERLAY_MTU is missing"),
    ("OVERLAY_NETWORK=10.244.0.0/16\nOVERLAY_SUBNET=10.245.1.1/24\nOVERLAY_MTU=1450\n",
     "outside OVERLAY_NETWORK"),
    ("OVERLAY_NETWORK=10.244.0.0/16\nOVERLAY_SUBNET=10.244.1.1/24\nOVERLAY_MTU=9\n",
     "out of range"),
    ("OVERLAY_NETWORK=10.244.0.0/16\nOVERLAY_SUBNET=x\nOVERLAY_MTU=1450\n", "malformed"),
    ("garbage line\n", "expected KEY=VALUE"),
    ("OVERLAY_NETWORK=10.244.0.0/16\nOVERLAY_SUBNET=10.244.1.1/24\nOVERLAY_MTU=1450\n"
     "OVERLAY_IPMASQ=maybe\n", "OVERLAY_IPMASQ='maybe': expected true or false"),
])
def test_parse_errors_say_what_is_wrong(text, why):
    with pytest.raises(SubnetEnvError, match=why):
        parse_subnet_env(text)


def test_missing_file_tells_what_to_check(tmp_path):
    with pytest.raises(SubnetEnvError, match="is overlayd running"):
        load_subnet_env(str(tmp_path / "nope.env"))


def test_write_failure_is_a_subnet_env_error_naming_the_flag(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    env = SubnetEnv(IPv4Network("10.244.0.0/16"), IPv4Interface("10.244.1.1/24"), 1450, False)
    with pytest.raises(SubnetEnvError) as e:
        write_subnet_env(str(blocker / "subnet.env"), env)  # parent is a file: ENOTDIR
    assert "--subnet-file" in str(e.value) and str(blocker) in str(e.value)
