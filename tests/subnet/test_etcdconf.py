"""etcd's endpoints and password file: any malformed form is one ConfigError line."""

import json
import os

import pytest
from click.testing import CliRunner

from overlay.cli import cli
from overlay.errors import ConfigError
from overlay.runtimefile import load_runtime_file
from overlay.subnet.etcdconf import Endpoint, parse_endpoints, read_password_file
from tests.deadline import deadline
from tests.test_runtimefile import good


@pytest.mark.parametrize("text, words", [
    ("http://[::1", "bad [IPv6] host"),
    ("http://[zz]:2379", "bad [IPv6] host"),
    ("http://[fe80::1%25eth0]:2379", "no %zone"),
    ("http://[1.2.3.4]:2379", "bad [IPv6] host"),
    ("http://[::1]x:2379", "bad HOST[:PORT]"),
    ("http://host:99999", "bad port"),
    ("http://host:abc", "bad port"),
    ("http://host:0", "bad port"),
    ("http://host:", "bad port"),
    ("http://host:-1", "bad port"),
    ("http://:2379", "bad HOST[:PORT]"),
    ("http://host:2379:1", "bad HOST[:PORT]"),
    ("http://ho st:2379", "spaces or control characters"),
    ("http://host\x1b:2379", "spaces or control characters"),
    ("http://user:pw@host:2379", "credentials do not go in the URL"),
    ("http://host:2379/v3", "path, query or fragment"),
    ("http://host:2379?x=1", "path, query or fragment"),
    ("ftp://host:2379", "expected http(s)://HOST:PORT"),
    ("http://ok:2379,http://[::1", "'http://[::1'"),
])
def test_a_malformed_endpoint_is_one_config_error(text, words):
    with pytest.raises(ConfigError) as e:
        parse_endpoints(text)
    msg = str(e.value)
    assert words in msg and "etcd endpoint" in msg and "\n" not in msg, msg


@pytest.mark.parametrize("text, want", [
    ("127.0.0.1", Endpoint("127.0.0.1", 2379, False)),
    ("HTTPS://Etcd-1.example:2380/", Endpoint("etcd-1.example", 2380, True)),
    ("http://[::1]:2379", Endpoint("::1", 2379, False)),
    ("https://[FD00::1]", Endpoint("fd00::1", 2379, True)),
])
def test_good_endpoints_and_their_text_reads_back(text, want):
    (ep,) = parse_endpoints(text)
    assert ep == want
    assert parse_endpoints(str(ep)) == (ep,)  # what the runtime file holds


def test_an_ipv6_endpoint_is_written_in_brackets():
    assert str(Endpoint("::1", 2379, False)) == "http://[::1]:2379"


@pytest.mark.parametrize("endpoint", ["http://[::1", "http://[zz]:2379", "http://h:99999"])
def test_overlayctl_says_one_line_for_a_bad_endpoint(endpoint, tmp_path):
    r = CliRunner().invoke(cli, ["--runtime-file", "", "--etcd-endpoints", endpoint,
                                 "leases", "list"])
    assert r.exit_code == 1, r.output
    assert "etcd endpoint" in r.output and "Traceback" not in r.output, r.output


def test_a_bad_endpoint_in_the_runtime_file_is_its_config_error(tmp_path):
    path = tmp_path / "overlayd.json"
    for endpoint in ("http://[::1", "http://[zz]:2379", "http://host:abc"):
        obj = good()
        obj["etcd"]["endpoints"] = [endpoint]
        path.write_text(json.dumps(obj))
        with pytest.raises(ConfigError) as e:
            load_runtime_file(str(path))
        assert str(path) in str(e.value) and "etcd.endpoints" in str(e.value)


def test_a_fifo_as_password_file_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "pw"
    os.mkfifo(fifo)
    with deadline(), pytest.raises(ConfigError) as e:
        read_password_file(str(fifo))
    assert str(fifo) in str(e.value) and "not a regular file" in str(e.value)
    os.unlink(fifo)
    os.symlink("/dev/zero", fifo)
    with deadline(), pytest.raises(ConfigError, match="not a regular file"):
        read_password_file(str(fifo))


def test_overlayctl_with_a_fifo_password_file_does_not_hang(tmp_path):
    fifo = tmp_path / "pw"
    os.mkfifo(fifo)
    with deadline():
        r = CliRunner().invoke(cli, ["--runtime-file", "", "--etcd-username", "root",
                                     "--etcd-password-file", str(fifo), "leases", "list"])
    assert r.exit_code == 1 and "not a regular file" in r.output, r.output
