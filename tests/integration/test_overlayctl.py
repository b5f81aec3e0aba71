"""overlayctl config/leases commands against a real etcd, including their errors."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from click.testing import CliRunner

from overlay.cli import cli
from overlay.lease import LeaseAttrs
from overlay.subnet.etcdconf import make_etcd_options
from overlay.subnet.registry import EtcdRegistry

from .support.etcd_server import EtcdServer, make_test_ca
from .test_registry import attrs, net

pytestmark = pytest.mark.integration

OVERLAYCTL = os.path.join(os.path.dirname(sys.executable), "overlayctl")



@pytest.fixture
def registry(etcd_server):
    reg = EtcdRegistry(make_etcd_options(etcd_server.endpoint))
    try:
        yield reg
    finally:
        reg.close()


def wait_watchers(server, n, timeout=15.0):
    """Poll etcd's own metrics until ``n`` watchers are registered (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(server.endpoint + "/metrics", timeout=2) as r:
            for line in r.read().decode().splitlines():
                if (line.startswith("etcd_debugging_mvcc_watcher_total ")
                        and float(line.split()[1]) >= n):
                    return
        time.sleep(0.05)
    raise AssertionError(f"no {n} watcher(s) registered in etcd after {timeout}s")


def one_line_error(result, *words):
    assert result.exit_code != 0, result.output
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    assert "Traceback" not in result.output
    for w in words:
        assert w in err, err
    return err


def test_config_get_before_set_says_how_to_set_it(ctl):
    one_line_error(ctl("config", "get"), "no network config", "overlayctl config set")


def test_config_set_get_with_flags(ctl):
    r = ctl("config", "set", "--network", "10.200.0.0/16", "--subnet-len", "25", "--vni", "7",
            "--port", "4789")
    assert r.exit_code == 0, r.output
    r = ctl("-o", "json", "config", "get")
    assert json.loads(r.stdout) == {"Network": "10.200.0.0/16", "SubnetLen": 25,
                                    "SubnetMin": "10.200.0.128", "SubnetMax": "10.200.255.128",
                                    "Backend": {"Type": "vxlan", "VNI": 7, "Port": 4789}}
    r = ctl("config", "get")
    header, row = r.stdout.splitlines()
    assert header.split() == ["NETWORK", "SUBNET-LEN", "SUBNET-MIN", "SUBNET-MAX", "SUBNETS",
                              "BACKEND", "VNI", "PORT"]
    assert row.split() == ["10.200.0.0/16", "25", "10.200.0.128", "10.200.255.128", "511",
                           "vxlan", "7", "4789"]


def test_config_set_from_file_and_stdin(ctl, tmp_path):
    f = tmp_path / "net.json"
    f.write_text('{"Network": "10.50.0.0/16", "Backend": {"Type": "vxlan", "VNI": 3}}')
    assert ctl("config", "set", "-f", str(f)).exit_code == 0
    assert json.loads(ctl("-o", "json", "config", "get").stdout)["Backend"]["VNI"] == 3
    assert ctl("config", "set", "-f", "-", input='{"Network": "10.60.0.0/16"}').exit_code == 0
    assert json.loads(ctl("-o", "json", "config", "get").stdout)["Network"] == "10.60.0.0/16"


@pytest.mark.parametrize("args, words", [
    (["--network", "10.244.0.1/16"], ["Network", "host bits"]),
    (["--network", "10.244.0.0/16", "--subnet-len", "31"], ["SubnetLen"]),
    (["--network", "10.244.0.0/16", "--vni", "0x"], None),  # click's own usage error
    (["--network", "10.244.0.0/16", "--port", "99999"], ["Backend.Port", "out of range"]),
    ([], ["--network"]),
    (["-f", "/nonexistent/net.json"], ["cannot read", "/nonexistent/net.json"]),
    (["-f", "x.json", "--network", "10.1.0.0/16"], ["either -f FILE"]),
])
def test_config_set_rejects_bad_input_and_writes_nothing(ctl, registry, args, words):
    ctl("config", "set", "--network", "10.244.0.0/16")
    before = registry.get_config()
    r = ctl("config", "set", *args)
    if words is None:
        assert r.exit_code == 2 and "Traceback" not in r.output
    else:
        one_line_error(r, *words)
    assert registry.get_config() == before


def test_config_set_rejects_bad_file_content(ctl, tmp_path):
    f = tmp_path / "bad.json"
    f.write_text('{"Network": "10.244.0.0/16", "SubnetMin": "10.244.1.7"}')
    one_line_error(ctl("config", "set", "-f", str(f)), "SubnetMin", "boundary")
    one_line_error(ctl("config", "get"), "no network config")


def test_leases_list_and_show(ctl, registry):
    ctl("config", "set", "--network", "10.244.0.0/16")
    registry.create_lease(net(2), attrs(12), 3600)
    registry.create_lease(net(1), LeaseAttrs(attrs(11).public_ip), None)
    r = ctl("leases", "list")
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["SUBNET", "PUBLIC-IP", "VTEP-MAC", "VNI", "EXPIRES", "STATUS"]
    assert lines[1].split()[:5] == ["10.244.1.0/24", "192.168.1.11", "<none>", "1", "never"]
    assert lines[2].split()[:4] == ["10.244.2.0/24", "192.168.1.12", "0e:00:00:00:01:0c", "1"]
    assert "(59m" in lines[2] or "(1h00m" in lines[2]
    assert lines[1].split()[-1] == "no-vtep-mac"  # a reservation whose node has not run yet
    assert lines[2].split()[-1] == "ok"
    data = json.loads(ctl("-o", "json", "leases", "list").stdout)
    assert [set(d) for d in data] == [{"subnet", "public_ip", "vtep_mac", "vni", "expires",
                                       "reserved"}] * 2
    assert data[0]["expires"] is None and data[0]["reserved"] is True
    assert data[1]["reserved"] is False
    assert data[1]["expires"].endswith("Z") and "." not in data[1]["expires"]  # RFC 3339, no µs
    r = ctl("leases", "show", "10.244.2.0-24")
    assert "Public IP:  192.168.1.12" in r.stdout and "Reserved:   no" in r.stdout
    d = json.loads(ctl("-o", "json", "leases", "show", "10.244.2.0/24").stdout)
    assert d["subnet"] == "10.244.2.0/24" and d["ttl"] == 3600
    assert d["key"] == "/overlay/network/subnets/10.244.2.0-24"
    lease_id = f"{registry.get_lease(net(2)).etcd_lease_id:x}"  # hex everywhere, as etcdctl
    assert d["etcd_lease_id"] == lease_id and f"etcd lease: {lease_id}" in r.stdout


def test_leases_list_empty_and_show_errors(ctl):
    r = ctl("leases", "list")
    assert r.exit_code == 0 and r.stdout.split() == ["SUBNET", "PUBLIC-IP", "VTEP-MAC", "VNI",
                                                     "EXPIRES", "STATUS"]
    assert json.loads(ctl("-o", "json", "leases", "list").stdout) == []
    one_line_error(ctl("leases", "show", "10.244.9.0/24"), "no lease", "10.244.9.0/24")
    one_line_error(ctl("leases", "show", "10.244.9.1/24"), "not a subnet")


def test_reserve_and_release(ctl, registry):
    one_line_error(ctl("leases", "reserve", "10.244.3.0/24", "--public-ip", "192.168.1.30"),
                   "no network config")
    ctl("config", "set", "--network", "10.244.0.0/16", "--vni", "4")
    r = ctl("leases", "reserve", "10.244.3.0/24", "--public-ip", "192.168.1.30")
    assert r.exit_code == 0 and "reserved 10.244.3.0/24" in r.stdout
    held = registry.get_lease(net(3))
    assert held.reserved and str(held.attrs.public_ip) == "192.168.1.30" and held.attrs.vni == 4
    one_line_error(ctl("leases", "reserve", "10.244.3.0/24", "--public-ip", "192.168.1.31"),
                   "held by 192.168.1.30", "release it first")
    one_line_error(ctl("leases", "reserve", "10.245.3.0/24", "--public-ip", "192.168.1.31"),
                   "not a subnet of the network's range")
    one_line_error(ctl("leases", "reserve", "10.244.4.0/24", "--public-ip", "300.1.1.1"),
                   "--public-ip")
    # a node's running lease becomes a reservation for that node
    registry.create_lease(net(5), attrs(50), 3600)
    r = ctl("-o", "json", "leases", "reserve", "10.244.5.0/24", "--public-ip", "192.168.1.50")
    assert json.loads(r.stdout)["reserved"] is True and registry.get_lease(net(5)).reserved
    assert registry.get_lease(net(5)).attrs.vtep_mac == attrs(50).vtep_mac
    one_line_error(ctl("leases", "release", "10.244.3.0/24"), "--yes")
    assert registry.get_lease(net(3)) is not None
    r = ctl("leases", "release", "10.244.3.0/24", "--yes")
    assert r.exit_code == 0 and registry.get_lease(net(3)) is None
    one_line_error(ctl("leases", "release", "10.244.3.0/24", "--yes"), "no lease")


def test_leases_watch_prints_one_line_per_event(ctl, registry, etcd_server):
    registry.create_lease(net(1), attrs(11), 3600)
    proc = subprocess.Popen([OVERLAYCTL, "--etcd-endpoints", etcd_server.endpoint, "-o", "json",
                             "leases", "watch", "--count", "3", "--timeout", "20"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_watchers(etcd_server, 1)
        registry.create_lease(net(2), attrs(12), 3600)
        registry.delete_lease(net(1))
        registry.create_lease(net(3), attrs(13), 3600)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert [(e["event"], e["subnet"]) for e in events] == [
        ("ADDED", "10.244.2.0/24"), ("DELETED", "10.244.1.0/24"), ("ADDED", "10.244.3.0/24")]
    assert events[0]["public_ip"] == "192.168.1.12"


def test_reserve_refuses_a_node_that_holds_a_live_lease(ctl, registry):
    ctl("config", "set", "--network", "10.244.0.0/16")
    held = registry.create_lease(net(2), attrs(12), 3600)
    err = one_line_error(ctl("leases", "reserve", "10.244.8.0/24", "--public-ip", "192.168.1.12"),
                         "192.168.1.12 already holds a live lease of 10.244.2.0/24",
                         f"etcd lease {held.etcd_lease_id:x}")
    assert ctl("leases", "reserve", "10.244.8.0/24", "--public-ip", "192.168.1.12").exit_code == 1
    now = registry.get_lease(net(2))
    assert registry.get_lease(net(8)) is None, err
    assert (now.attrs, now.mod_revision, now.etcd_lease_id) == (
        held.attrs, held.mod_revision, held.etcd_lease_id)


def test_reserving_a_held_subnet_again_shows_modified(ctl, registry, etcd_server):
    ctl("config", "set", "--network", "10.244.0.0/16")
    registry.create_lease(net(4), attrs(14), 3600)
    proc = subprocess.Popen([OVERLAYCTL, "leases", "watch", "--count", "1", "--timeout", "20",
                             "--etcd-endpoints", etcd_server.endpoint],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_watchers(etcd_server, 1)
        r = ctl("leases", "reserve", "10.244.4.0/24", "--public-ip", "192.168.1.14")
        assert r.exit_code == 0, r.output
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert out.startswith("MODIFIED 10.244.4.0/24 public-ip=192.168.1.14"), out
    assert out.rstrip().endswith(" reserved")


def test_leases_watch_timeout_says_so(etcd_server):
    p = subprocess.run([OVERLAYCTL, "leases", "watch", "--timeout", "1",
                        "--etcd-endpoints", etcd_server.endpoint],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and p.stdout == ""
    assert p.stderr == "watch timed out after 1s (0 events)\n"


def test_leases_watch_table_lines_and_ctrl_c(etcd_server, registry):
    proc = subprocess.Popen([OVERLAYCTL, "--etcd-endpoints", etcd_server.endpoint,
                             "leases", "watch"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None  # stdout=PIPE
    try:
        wait_watchers(etcd_server, 1)
        registry.create_lease(net(7), attrs(17), 3600)
        line = proc.stdout.readline()
        assert line.startswith("ADDED 10.244.7.0/24 public-ip=192.168.1.17")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "Traceback" not in err


def test_etcd_unreachable_real_console_script():
    p = subprocess.run([OVERLAYCTL, "--etcd-endpoints", "http://127.0.0.1:1", "leases", "list"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert p.stderr.startswith("error: etcd unreachable at http://127.0.0.1:1")


def test_bad_input_real_console_script(etcd_server):
    p = subprocess.run([OVERLAYCTL, "--etcd-endpoints", etcd_server.endpoint, "config", "set",
                        "--network", "banana"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and p.stderr == "error: Network: 'banana' is not a valid CIDR\n"
    p = subprocess.run([OVERLAYCTL, "--etcd-endpoints", "ftp://x", "leases", "list"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and p.stderr.startswith("error: etcd endpoint 'ftp://x'")


@pytest.mark.parametrize("cmd", [["config", "get"], ["config", "set", "--network", "10.1.0.0/16"],
                                 ["leases", "list"], ["leases", "show", "10.1.1.0/24"],
                                 ["leases", "watch", "--timeout", "1"],
                                 ["leases", "reserve", "10.1.1.0/24", "--public-ip", "10.0.0.1"],
                                 ["leases", "release", "10.1.1.0/24", "--yes"]])
def test_every_command_reports_unreachable_etcd_in_one_line(cmd):
    r = CliRunner().invoke(cli, ["--etcd-endpoints", "http://127.0.0.1:1", *cmd],
                           catch_exceptions=False)
    one_line_error(r, "etcd unreachable", "http://127.0.0.1:1")


def test_tls_flags_real_console_script(tmp_path):
    tls = make_test_ca(str(tmp_path))
    server = EtcdServer(name="ovlease-ctl-tls", tls=tls).start()
    try:
        base = [OVERLAYCTL, "--etcd-endpoints", server.endpoint, "--etcd-cafile", tls.ca]
        certs = ["--etcd-certfile", tls.client_cert, "--etcd-keyfile", tls.client_key]
        p = subprocess.run(base + certs + ["config", "set", "--network", "10.9.0.0/16"],
                           capture_output=True, text=True, timeout=30)
        assert p.returncode == 0, p.stderr
        p = subprocess.run(base + certs + ["-o", "json", "config", "get"],
                           capture_output=True, text=True, timeout=30)
        assert json.loads(p.stdout)["Network"] == "10.9.0.0/16"
        p = subprocess.run(base + ["config", "get"], capture_output=True, text=True, timeout=30)
        assert p.returncode == 1 and p.stderr.count("\n") == 1, p.stderr
        assert "TLS handshake failed" in p.stderr and "--etcd-certfile" in p.stderr
        p = subprocess.run(base + ["--etcd-certfile", tls.client_cert, "config", "get"],
                           capture_output=True, text=True, timeout=30)
        assert p.returncode == 1
        assert p.stderr == "error: --etcd-certfile and --etcd-keyfile must be given together\n"
    finally:
        server.cleanup()


@pytest.mark.parametrize("content, words", [
    (b'{"Network": "10.244.0.0/16\xff"}', ["not UTF-8"]),
    (b"[" * 50_000 + b"]" * 50_000, ["bytes", "limit"]),
    (b"[" * 5_000 + b"]" * 5_000, ["nested too deeply"]),
    (b'{"Network": "10.244.0.0/16", "Backend": {"VNI": 1e400}}', ["Backend.VNI"]),
    (b'{"Network": "10.244.0.0/16", "Backend": {"Typ": "vxlan"}}', ["did you mean Type?"]),
])
def test_config_set_rejects_hostile_files_in_one_line(ctl, registry, tmp_path, content, words):
    ctl("config", "set", "--network", "10.244.0.0/16")
    before = registry.get_config()
    f = tmp_path / "hostile.json"
    f.write_bytes(content)
    one_line_error(ctl("config", "set", "-f", str(f)), *words)
    one_line_error(ctl("config", "set", "-f", "-", input=content), *words)
    assert registry.get_config() == before


def test_config_get_of_a_hostile_stored_config_is_one_line(ctl, registry):
    for value, word in [(b"[" * 5000 + b"]" * 5000, "nested too deeply"),
                        (b'{"Network": "10.244.0.0/16", "SubnetLen": true}', "SubnetLen"),
                        (b"\xff\xfe{", "not UTF-8")]:
        registry.client().put(registry.config_key, value)
        one_line_error(ctl("config", "get"), word, registry.config_key)
        one_line_error(ctl("-o", "json", "config", "get"), word)


GARBAGE = {  # key suffix under subnets/ -> value: every hostile kind of issue 9
    b"10.244.2.0-24\n": b"rogue",  # an alias of a real node's key
    b"x/10.244.2.0-24": b"rogue",
    b"010.244.3.0-24": b"rogue",
    b"\xff\xfe": b"{}",
    b"10.244.4.0-24": b'{"PublicIP": "192.168.1.44", "BackendData": {"VNI": 1e400}}',
    b"10.244.5.0-24": b"[" * 20000 + b"]" * 20000,
    b"10.244.6.0-24": b'{"PublicIP": "192.168.1.46", "pad": "' + b"x" * 70000 + b'"}',
    b"10.244.7.0-24": b'{"PublicIP": "127.0.0.1", "BackendType": "vxlan", '
                      b'"BackendData": {"VNI": 1, "VtepMAC": "0e:00:00:00:00:07"}}',
    b"128.0.0.0-1": b'{"PublicIP": "192.168.1.48", "BackendType": "vxlan", '
                    b'"BackendData": {"VNI": 1, "VtepMAC": "0e:00:00:00:00:08"}}',
}


def put_garbage(registry):
    client = registry.client()
    for name, value in GARBAGE.items():
        client.put(registry.subnets_prefix.encode() + name, value)


def test_leases_list_shows_a_status_for_garbage_and_never_a_traceback(ctl, registry):
    ctl("config", "set", "--network", "10.244.0.0/16")
    registry.create_lease(net(2), attrs(12), 3600)
    put_garbage(registry)
    r = ctl("leases", "list")
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    rows = {line.split()[0]: line for line in r.stdout.splitlines()[1:]}
    assert rows["10.244.2.0/24"].endswith(" ok")
    assert rows["10.244.4.0/24"].endswith("rejected: bad-value")
    assert rows["10.244.5.0/24"].endswith("rejected: bad-value")
    assert rows["10.244.6.0/24"].endswith("rejected: value-too-large")
    assert rows["10.244.7.0/24"].endswith("rejected: public-ip-unusable")
    assert rows["128.0.0.0/1"].endswith("rejected: subnet-length")
    assert rows["/overlay/network/subnets/10.244.2.0-24\\n"].endswith("rejected: bad-key")
    assert sum(1 for line in rows.values() if line.endswith("rejected: bad-key")) == 4
    data = json.loads(ctl("-o", "json", "leases", "list").stdout)
    ok = [d for d in data if "rejected" not in d]
    assert [d["subnet"] for d in ok] == ["10.244.2.0/24"]
    assert set(ok[0]) == {"subnet", "public_ip", "vtep_mac", "vni", "expires", "reserved"}
    assert sorted(d["rejected"] for d in data if "rejected" in d) == sorted(
        ["bad-key"] * 4 + ["bad-value"] * 2 + ["value-too-large", "public-ip-unusable",
                                              "subnet-length"])
    for subnet in ("10.244.4.0/24", "10.244.5.0-24", "10.244.7.0/24"):
        r = ctl("leases", "show", subnet)
        assert r.exit_code == 0 and "Status:     rejected: " in r.stdout, r.output
    assert json.loads(ctl("-o", "json", "leases", "show", "10.244.6.0/24").stdout)[
        "rejected"] == "value-too-large"


def test_config_get_of_hostile_config_is_one_line(ctl, registry):
    for value in (b"[" * 20000 + b"]" * 20000, b"\xff", b'{"Network": 1e400}', b"null"):
        registry.client().put(registry.config_key, value)
        one_line_error(ctl("config", "get"), "network config")
