"""The CNI skeleton: validation, version checks, and error JSON exactly once (no root)."""

import errno
import json

import pytest

from overlay.cni import skel
from overlay.errors import CNIError, IPAMError, NetlinkOpError, SubnetEnvError

CONF = {"cniVersion": "1.1.0", "name": "ovcni-test", "type": "overlay"}
ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/var/run/netns/x",
       "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"}


class Recorder:
    """Handlers that record the requests they get and answer a fixed shape."""

    def __init__(self):
        self.calls = []

    def handler(self, name):
        def run(request):
            self.calls.append((name, request))
            return {"cniVersion": request.cni_version, "ok": name} if name == "ADD" else None
        return run

    @property
    def table(self):
        return {c: self.handler(c) for c in ("ADD", "DEL", "CHECK", "STATUS", "GC")}


def run(env, config=CONF, raw=None):
    rec = Recorder()
    stdin = raw if raw is not None else json.dumps(config).encode()
    code, out = skel.run(env, stdin, rec.table)
    return code, out, rec


def error_of(code, out):
    assert code == 1
    assert out.count(b"\n") == 1, "exactly one JSON document on stdout"
    doc = json.loads(out)
    assert set(doc) <= {"cniVersion", "code", "msg", "details"}
    return doc


@pytest.mark.parametrize("version", skel.SUPPORTED_VERSIONS)
def test_add_dispatches_with_each_supported_version(version):
    code, out, rec = run(ENV, dict(CONF, cniVersion=version))
    assert code == 0
    assert json.loads(out) == {"cniVersion": version, "ok": "ADD"}
    (name, request), = rec.calls
    assert (request.container_id, request.ifname, request.netns) == ("c1", "eth0",
                                                                      "/var/run/netns/x")


def test_version_lists_supported_versions_and_echoes_input_version():
    code, out, rec = run({"CNI_COMMAND": "VERSION"}, {"cniVersion": "0.4.0"})
    assert code == 0 and not rec.calls
    assert json.loads(out) == {"cniVersion": "0.4.0",
                               "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}
    code, out, _ = run({"CNI_COMMAND": "VERSION"}, raw=b"")
    assert json.loads(out)["cniVersion"] == "1.1.0"


BAD_ENV = [
    ({}, 4, "CNI_COMMAND"),
    ({"CNI_COMMAND": "BOGUS"}, 4, "unknown CNI_COMMAND"),
    (dict(ENV, CNI_CONTAINERID=""), 4, "CNI_CONTAINERID"),
    (dict(ENV, CNI_CONTAINERID="../../etc/passwd"), 4, "CNI_CONTAINERID"),
    (dict(ENV, CNI_CONTAINERID="-starts-with-dash"), 4, "CNI_CONTAINERID"),
    (dict(ENV, CNI_CONTAINERID="has space"), 4, "CNI_CONTAINERID"),
    # The pod registry's bound: a longer ID would get a pod no record names, outside the
    # policies that select it.
    (dict(ENV, CNI_CONTAINERID="c" * 257), 4, "CNI_CONTAINERID is too long"),
    (dict(ENV, CNI_CONTAINERID="c" * 257 + "/"), 4, "CNI_CONTAINERID"),
    (dict(ENV, CNI_COMMAND="DEL", CNI_CONTAINERID="c" * 300 + "/x"), 4, "invalid characters"),
    (dict(ENV, CNI_IFNAME="a" * 16), 4, "CNI_IFNAME"),
    (dict(ENV, CNI_IFNAME="."), 4, "CNI_IFNAME"),
    (dict(ENV, CNI_IFNAME=".."), 4, "CNI_IFNAME"),
    (dict(ENV, CNI_IFNAME="eth/0"), 4, "CNI_IFNAME"),
    (dict(ENV, CNI_IFNAME="eth:0"), 4, "CNI_IFNAME"),
    (dict(ENV, CNI_IFNAME="eth 0"), 4, "CNI_IFNAME"),
    ({k: v for k, v in ENV.items() if k != "CNI_NETNS"}, 4, "CNI_NETNS"),
    ({k: v for k, v in ENV.items() if k != "CNI_IFNAME"}, 4, "CNI_IFNAME"),
    (dict(ENV, CNI_ARGS="IP"), 4, "CNI_ARGS"),
    # the reference skel requires CNI_PATH for ADD, CHECK and DEL
    ({k: v for k, v in ENV.items() if k != "CNI_PATH"}, 4,
     "required env variables [CNI_PATH] missing"),
    (dict(ENV, CNI_PATH=""), 4, "required env variables [CNI_PATH] missing"),
    ({k: v for k, v in dict(ENV, CNI_COMMAND="DEL").items() if k != "CNI_PATH"}, 4,
     "required env variables [CNI_PATH] missing"),
    ({k: v for k, v in dict(ENV, CNI_COMMAND="CHECK").items() if k != "CNI_PATH"}, 4,
     "required env variables [CNI_PATH] missing"),
    # A trailing newline passed `re.match("...$")`: "c1\n" then named other IPAM files
    # and another veth than "c1" (two pods, one IP).  Whole-string rules reject it.
    (dict(ENV, CNI_CONTAINERID="c1\n"), 4, "CNI_CONTAINERID"),
    (dict(ENV, CNI_COMMAND="DEL", CNI_CONTAINERID="c1\n"), 4, "CNI_CONTAINERID"),
    (dict(ENV, CNI_CONTAINERID="\nc1"), 4, "CNI_CONTAINERID"),
    (dict(ENV, CNI_IFNAME="eth0\n"), 4, "CNI_IFNAME"),
    (dict(ENV, CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAME\n=web"), 4, "CNI_ARGS"),
    # Over the size bound (1 MiB of CNI_* variables), yet within what execve allows.
    (dict(ENV, **{f"CNI_PAD{i}": "x" * (120 << 10) for i in range(9)}), 4, "too large"),
]


@pytest.mark.parametrize("env,code,needle", BAD_ENV)
def test_bad_environment_is_rejected_before_any_handler(env, code, needle):
    rc, out, rec = run(env)
    doc = error_of(rc, out)
    assert doc["code"] == code
    assert needle in doc["msg"] + doc.get("details", "")
    assert not rec.calls


def test_fifteen_character_ifname_is_fine():
    rc, _, rec = run(dict(ENV, CNI_IFNAME="a" * 15))
    assert rc == 0 and rec.calls


def test_a_container_id_of_256_characters_is_fine():
    rc, _, rec = run(dict(ENV, CNI_CONTAINERID="c" * 256))
    assert rc == 0 and rec.calls


def test_a_network_name_of_255_characters_is_fine():
    rc, _, rec = run(ENV, dict(CONF, name="n" * 255))
    assert rc == 0 and rec.calls


@pytest.mark.parametrize("command,served", [("DEL", True), ("CHECK", False), ("GC", False)])
def test_only_del_is_served_a_longer_network_name(command, served):
    # the runtime's cleanup after the refused ADD must not fail again; the rest is code 7
    rc, out, rec = run(dict(ENV, CNI_COMMAND=command), dict(CONF, name="n" * 256))
    assert (rc, bool(rec.calls)) == ((0, True) if served else (1, False))
    if not served:
        assert error_of(rc, out)["code"] == 7


@pytest.mark.parametrize("command", ["DEL", "CHECK"])
def test_only_add_is_refused_a_longer_container_id(command):
    # a runtime cleans up after the refused ADD: its DEL must not fail again
    rc, _, rec = run(dict(ENV, CNI_COMMAND=command, CNI_CONTAINERID="c" * 300))
    assert rc == 0 and rec.calls


BAD_STDIN = [
    (b"", 6, "no network config"),
    (b"   \n", 6, "no network config"),
    (b"{not json", 6, "not valid JSON"),
    (b"[1, 2]", 6, "not a JSON object"),
    (json.dumps({"name": "n"}).encode(), 6, "cniVersion"),
    (json.dumps({"cniVersion": "banana", "name": "n"}).encode(), 6, "cniVersion"),
    (json.dumps({"cniVersion": "9.9.9", "name": "n"}).encode(), 1, "incompatible"),
    (json.dumps({"cniVersion": "0.2.0", "name": "n"}).encode(), 1, "incompatible"),
    (json.dumps({"cniVersion": "1.1.0"}).encode(), 7, "name"),
    (json.dumps({"cniVersion": "1.1.0", "name": "../etc"}).encode(), 7, "network name"),
    (json.dumps({"cniVersion": "1.1.0", "name": "ovnet\n"}).encode(), 7, "network name"),
    (json.dumps({"cniVersion": "1.1.0", "name": "n" * 256}).encode(), 7, "too long"),
    (b"[" * 100_000 + b"]" * 100_000, 6, "not valid JSON"),
    (json.dumps({"cniVersion": "1.1.0", "name": "n", "pad": "x" * (4 << 20)}).encode(), 7,
     "too large"),
]


@pytest.mark.parametrize("stdin,code,needle", BAD_STDIN)
def test_bad_stdin_is_rejected_before_any_handler(stdin, code, needle):
    rc, out, rec = run(ENV, raw=stdin)
    doc = error_of(rc, out)
    assert doc["code"] == code
    assert needle in doc["msg"] + doc.get("details", "")
    assert not rec.calls


@pytest.mark.parametrize("command,version,minimum", [
    ("CHECK", "0.3.0", "0.4.0"), ("CHECK", "0.3.1", "0.4.0"),
    ("STATUS", "1.0.0", "1.1.0"), ("GC", "1.0.0", "1.1.0"), ("GC", "0.4.0", "1.1.0"),
])
def test_commands_newer_than_the_config_version_are_refused(command, version, minimum):
    rc, out, rec = run(dict(ENV, CNI_COMMAND=command), dict(CONF, cniVersion=version))
    doc = error_of(rc, out)
    assert doc["code"] == 1 and doc["cniVersion"] == version
    assert f"does not allow {command}" in doc["msg"] and minimum in doc["details"]
    assert not rec.calls


@pytest.mark.parametrize("command", ["CHECK", "STATUS", "GC", "DEL"])
def test_commands_dispatch_on_new_enough_versions(command):
    env = dict(ENV, CNI_COMMAND=command)
    rc, out, rec = run(env)
    assert rc == 0 and out == b"" and rec.calls[0][0] == command


def test_del_needs_no_netns_and_status_gc_need_no_container():
    env = {k: v for k, v in ENV.items() if k != "CNI_NETNS"}
    assert run(dict(env, CNI_COMMAND="DEL"))[0] == 0
    assert run({"CNI_COMMAND": "STATUS"})[0] == 0
    assert run({"CNI_COMMAND": "GC"})[0] == 0  # neither needs CNI_PATH (reference skel)


def test_handler_errors_become_error_json_once():
    def fail(request):
        raise CNIError(11, "try later", "because")

    def crash(request):
        raise KeyError("boom")

    for handler, code in ((fail, 11), (crash, skel.ERR_INTERNAL)):
        rc, out = skel.run(ENV, json.dumps(CONF).encode(), {"ADD": handler})
        doc = error_of(rc, out)
        assert doc["code"] == code and doc["cniVersion"] == "1.1.0"


def test_cni_args_are_parsed():
    rc, _, rec = run(dict(ENV, CNI_ARGS="IgnoreUnknown=1;IP=10.0.0.5;K8S_POD_NAME=web"))
    assert rec.calls[0][1].args == {"IgnoreUnknown": "1", "IP": "10.0.0.5",
                                    "K8S_POD_NAME": "web"}


@pytest.mark.parametrize("error, code, details", [
    (NetlinkOpError("link not found", errno.ENODEV), skel.ERR_KERNEL, f"errno {errno.ENODEV}"),
    (IPAMError("no IP addresses available"), skel.ERR_IPAM, None),
    (SubnetEnvError("subnet.env is malformed"), skel.ERR_INTERNAL, None),
])
def test_project_errors_map_to_codes_in_one_place(error, code, details):
    """Whatever a command lets through gets its code here (e.g. IPAM failing in CHECK)."""
    def fail(request):
        raise error

    for command in ("ADD", "CHECK", "DEL", "GC"):
        rc, out = skel.run(dict(ENV, CNI_COMMAND=command), json.dumps(CONF).encode(),
                           {command: fail})
        doc = error_of(rc, out)
        assert (doc["code"], doc["msg"], doc.get("details")) == (code, str(error), details)


def test_error_json_echoes_the_input_version_when_it_is_a_string():
    def fail(request):
        raise CNIError(11, "later")

    conf = dict(CONF, cniVersion="0.4.0")
    assert error_of(*skel.run(ENV, json.dumps(conf).encode(), {"ADD": fail}))["cniVersion"] \
        == "0.4.0"
    for raw in (b"", b"[1]", b"{bad", json.dumps(dict(CONF, cniVersion=7)).encode()):
        assert error_of(*skel.run(ENV, raw, {"ADD": fail}))["cniVersion"] == "1.1.0"


def test_mac_rule_is_whole_string():
    from overlay.cni.netconf import is_mac

    assert is_mac("0a:58:0a:f4:01:02")
    assert not is_mac("0a:58:0a:f4:01:02\n")


def test_status_and_gc_drop_container_names_they_do_not_use():
    """Found by tests/cni/test_cni_properties.py: STATUS carried CNI_IFNAME='\\r' on unvalidated."""
    stdin = json.dumps({"cniVersion": "1.1.0", "name": "ovnet", "type": "overlay"}).encode()
    for command in ("STATUS", "GC"):
        req = skel.parse_request({"CNI_COMMAND": command, "CNI_IFNAME": "\r",
                                  "CNI_CONTAINERID": "c1\n"}, stdin)
        assert (req.container_id, req.ifname) == ("", "")
