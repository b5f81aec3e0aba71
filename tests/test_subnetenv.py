"""subnet.env: format, parse errors, atomic write, the one rule for reading it."""

import os
from ipaddress import IPv4Interface, IPv4Network

import pytest

from overlay.errors import SubnetEnvError
from overlay.subnetenv import SubnetEnv, load_subnet_env, parse_subnet_env, write_subnet_env
from tests.deadline import deadline

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
    ("OVERLAY_NETWORK=10.244.0.0/16\nOVERLAY_SUBNET=10.244.1.1\nOVERLAY_MTU=1450\n",
     "subnet.env:2: OVERLAY_SUBNET 10.244.1.1 has no prefix length"),
    ("OVERLAY_NETWORK=10.244.0.0/16\nOVERLAY_SUBNET=10.244.1.0/24\nOVERLAY_MTU=1450\n",
     "OVERLAY_SUBNET 10.244.1.0/24 is its subnet's own address, not a gateway"),
    ("OVERLAY_NETWORK=10.244.0.0/16\nOVERLAY_SUBNET=10.244.1.255/24\nOVERLAY_MTU=1450\n",
     "OVERLAY_SUBNET 10.244.1.255/24 is its subnet's broadcast address"),
    ("OVERLAY_MTU=1450\nOVERLAY_IPV6_NETWORK=fd00:10:244::/56\n"
     "OVERLAY_IPV6_SUBNET=fd00:10:244:1::/64\n",
     "OVERLAY_IPV6_SUBNET fd00:10:244:1::/64 is its subnet's own address"),
    ("garbage line\n", "expected KEY=VALUE"),
    ("OVERLAY_NETWORK=10.244.0.0/16\nOVERLAY_SUBNET=10.244.1.1/24\nOVERLAY_MTU=1450\n"
     "OVERLAY_IPMASQ=maybe\n", "subnet.env:4: OVERLAY_IPMASQ: expected true or false"),
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


VALID = "OVERLAY_NETWORK=10.244.0.0/16\nOVERLAY_SUBNET=10.244.1.1/24\nOVERLAY_MTU=1450\n"


def _one_line_naming(e, path):
    text = str(e.value)
    assert str(path) in text and "\n" not in text, text
    return text


def test_a_non_utf8_byte_even_in_a_comment_is_one_error_naming_the_file(tmp_path):
    path = tmp_path / "subnet.env"
    path.write_bytes(b"# caf\xe9\n" + VALID.encode())
    with pytest.raises(SubnetEnvError) as e:
        load_subnet_env(str(path))
    assert "not UTF-8" in _one_line_naming(e, path)


def test_a_fifo_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "subnet.env"
    os.mkfifo(fifo)
    with deadline(), pytest.raises(SubnetEnvError) as e:
        load_subnet_env(str(fifo))
    assert "not a regular file" in _one_line_naming(e, fifo)


def test_a_symlink_to_dev_zero_is_refused_not_read_forever(tmp_path):
    link = tmp_path / "subnet.env"
    link.symlink_to("/dev/zero")
    with deadline(), pytest.raises(SubnetEnvError) as e:
        load_subnet_env(str(link))
    assert "not a regular file" in _one_line_naming(e, link)


def test_a_huge_file_is_refused(tmp_path):
    from overlay.subnetenv import MAX_BYTES
    path = tmp_path / "subnet.env"
    path.write_text(VALID + "#" * MAX_BYTES + "\n")
    with pytest.raises(SubnetEnvError) as e:
        load_subnet_env(str(path))
    assert f"larger than {MAX_BYTES} bytes" in _one_line_naming(e, path)
    path.write_text(VALID + "# a comment\n" * 100)  # well under the bound: fine
    assert load_subnet_env(str(path)) == ENV


SECRET = "s3cr3tHash"


@pytest.mark.parametrize("text, words", [
    (f"root:$6${SECRET}:19000:0:99999:7:::\n", ["x:1:", "expected KEY=VALUE"]),
    (f"# ok\n\nOVERLAY_NETWORK=10.244.0.0/16\nOVERLAY_SUBNET={SECRET}\nOVERLAY_MTU=1450\n",
     ["x:4:", "OVERLAY_SUBNET", "malformed"]),
    (f"OVERLAY_NETWORK={SECRET}\nOVERLAY_SUBNET=10.244.1.1/24\nOVERLAY_MTU=1450\n",
     ["x:1:", "OVERLAY_NETWORK", "malformed"]),
    (f"OVERLAY_NETWORK=10.244.0.0/16\nOVERLAY_SUBNET=10.244.1.1/24\nOVERLAY_MTU={SECRET}\n",
     ["x:3:", "OVERLAY_MTU", "whole number"]),
    (VALID + f"OVERLAY_IPMASQ={SECRET}\n", ["x:4:", "OVERLAY_IPMASQ"]),
    (VALID + f"OVERLAY_IPV6_NETWORK={SECRET}\nOVERLAY_IPV6_SUBNET=fd00:10:244:1::1/64\n",
     ["x:4:", "OVERLAY_IPV6_NETWORK", "malformed IPv6"]),
    (VALID + f"OVERLAY_IPV6_NETWORK=fd00:10:244::/56\nOVERLAY_IPV6_SUBNET={SECRET}\n",
     ["x:5:", "OVERLAY_IPV6_SUBNET", "malformed IPv6"]),
    (VALID + f"OVERLAY_IPV6_NETWORK=fd00:10:244::/56\nOVERLAY_IPV6_SUBNET=fe80::1%{SECRET}\n",
     ["x:5:", "OVERLAY_IPV6_SUBNET", "scope"]),
    (f"{SECRET}=1\n" + VALID.replace("OVERLAY_MTU=1450", f"OVERLAY_MTU=x{SECRET}"),
     ["x:4:", "OVERLAY_MTU"]),
])
def test_parse_errors_name_the_line_never_its_content(text, words):
    """--subnet-file may name any file (/etc/shadow): an error must not print its lines."""
    with pytest.raises(SubnetEnvError) as e:
        parse_subnet_env(text, source="x")
    msg = str(e.value)
    assert SECRET not in msg and "\n" not in msg, msg
    for w in words:
        assert w in msg, msg


def test_parsed_values_still_show_where_they_help():
    with pytest.raises(SubnetEnvError) as e:
        parse_subnet_env(VALID.replace("1450", "9"), source="x")
    assert str(e.value) == "x:3: OVERLAY_MTU 9 is out of range 576..65535"


def test_cni_add_gets_a_config_error_not_an_internal_one(tmp_path):
    from overlay.cni.netconf import parse_netconf
    from overlay.errors import CNIError
    path = tmp_path / "subnet.env"
    path.write_bytes(b"# \xff\n" + VALID.encode())
    conf = parse_netconf({"name": "n", "subnetFile": str(path)}, "1.1.0")
    with pytest.raises(CNIError) as e:
        conf.load_node_subnet()
    assert e.value.code == 7 and "not UTF-8" in str(e.value.details)
    path.unlink()
    os.mkfifo(path)
    with deadline(), pytest.raises(CNIError) as e:
        conf.load_node_subnet()
    assert e.value.code == 7 and "not a regular file" in str(e.value.details)


def test_diagnose_reads_subnet_env_by_the_same_rule(tmp_path):
    from overlay.diagnose.gather import read_subnet_env
    fifo = tmp_path / "subnet.env"
    os.mkfifo(fifo)
    with deadline(), pytest.raises(SubnetEnvError, match="not a regular file"):
        read_subnet_env(str(fifo))
    with pytest.raises(SubnetEnvError, match="overlayd writes it once"):
        read_subnet_env(str(tmp_path / "none.env"))
