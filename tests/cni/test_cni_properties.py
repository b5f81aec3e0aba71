"""Property-based tests of the CNI env/stdin parsers: whatever a runtime (or a peer of the
warm server) hands in, the answer is the project's own CNI error, never another exception."""

import json
import socket
import time
import warnings

from hypothesis import HealthCheck, given, settings, strategies as st

from overlay.cni import server, skel
from overlay.cni.netconf import parse_netconf
from overlay.errors import CNIError

KEYS = ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH"]
COMMANDS = st.sampled_from(list(skel.COMMANDS) + ["", "add", "ADD\n", "DEL "])
# Plausible values with hostile edges: names with whitespace/newlines/unicode/surrogates.
NAMEISH = st.one_of(st.sampled_from(["c1", "eth0", "c1\n", "eth0\n", " c1", "..", ".", "a" * 16,
                                     "IgnoreUnknown=1;IP=10.244.1.5", "K\n=1", "=", ";;"]),
                    st.text(max_size=40),
                    st.text(st.characters(codec="utf-8"), max_size=20))
ENV = st.fixed_dictionaries({"CNI_COMMAND": COMMANDS},
                            optional=dict.fromkeys(KEYS[1:], NAMEISH))
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda kids: st.lists(kids, max_size=4)
                    | st.dictionaries(st.text(max_size=10), kids, max_size=4),
                    max_leaves=20)
CONFIG_KEYS = ["cniVersion", "name", "type", "bridge", "subnet", "network", "mtu", "dataDir",
               "subnetFile", "isDefaultGateway", "hairpinMode", "ipMasq", "runtimeConfig",
               "prevResult", "cni.dev/valid-attachments"]
CONFIG = st.dictionaries(st.sampled_from(CONFIG_KEYS), JSON | st.sampled_from(
    ["1.1.0", "0.4.0", "ovnet", "10.244.1.0/24", "cni0", 1450, True]), max_size=8)
# A config that passes everything but, perhaps, its name: reaches the name rules.
NEAR_VALID = st.fixed_dictionaries({"cniVersion": st.sampled_from(skel.SUPPORTED_VERSIONS),
                                    "name": st.one_of(st.just("ovnet"), NAMEISH),
                                    "type": st.just("overlay")})
STDIN = st.one_of(st.binary(max_size=200), CONFIG.map(lambda c: json.dumps(c).encode()),
                  JSON.map(lambda j: json.dumps(j).encode()),
                  NEAR_VALID.map(lambda c: json.dumps(c).encode()))


def _record(req):
    return {"cniVersion": req.cni_version}


HANDLERS = dict.fromkeys(("ADD", "DEL", "CHECK", "STATUS", "GC"), _record)


@settings(max_examples=400, deadline=None)
@given(env=ENV, stdin=STDIN)
def test_run_answers_every_input_with_one_result_or_one_cni_error(env, stdin):
    code, out = skel.run(env, stdin, HANDLERS)
    assert out.endswith(b"\n") and out.count(b"\n") == 1
    doc = json.loads(out)
    if code:
        assert code == 1 and isinstance(doc["code"], int) and doc["code"] != skel.ERR_INTERNAL
    else:
        assert "code" not in doc


@settings(max_examples=400, deadline=None)
@given(env=ENV, stdin=STDIN)
def test_an_accepted_request_carries_whole_valid_names(env, stdin):
    try:
        req = skel.parse_request(env, stdin)
    except CNIError:
        return
    for name in (req.container_id, req.ifname, req.config.get("name", "")):
        assert name == name.strip() and "\n" not in name
    if req.command in ("ADD", "CHECK", "DEL"):
        assert req.container_id == env["CNI_CONTAINERID"]  # the one string, not a cleaned one


@settings(max_examples=400, deadline=None)
@given(config=CONFIG)
def test_netconf_parser_raises_only_cni_errors(config):
    config = dict(config, name="ovnet")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # e.g. ipaddress fed a bool: a wrong type slipped by
            conf = parse_netconf(config, "1.1.0")
    except CNIError as e:
        assert e.code == CNIError.INVALID_CONFIG
        return
    assert conf.name == "ovnet"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.one_of(st.binary(max_size=300),
                     st.builds(lambda e, s, rest: b"OVCNI1 %d %d 0\n" % (e, s) + rest,
                               st.integers(0, 1 << 40), st.integers(0, 1 << 40),
                               st.binary(max_size=100))))
def test_the_servers_request_reader_only_accepts_or_refuses(raw):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        a.sendall(raw)
        a.shutdown(socket.SHUT_WR)
        try:
            got = server._read_request(b, time.monotonic() + 2)
        except (ValueError, CNIError, server.RequestTimeout):
            return
        assert got is None or (isinstance(got[0], dict) and isinstance(got[1], bytes))
    finally:
        a.close()
        b.close()


# Hypothesis's from_regex honours "$" as Python does: it also draws "name\n".
REGEX_NAMES = st.from_regex(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]{0,20}$")


@settings(max_examples=300, deadline=None)
@given(name=REGEX_NAMES, ifname=st.one_of(st.just("eth0"), REGEX_NAMES),
       command=st.sampled_from(["ADD", "CHECK", "DEL"]))
def test_names_are_accepted_only_whole(name, ifname, command):
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": name, "CNI_IFNAME": ifname,
           "CNI_NETNS": "/var/run/netns/x", "CNI_PATH": "/usr/lib/cni"}
    stdin = json.dumps({"cniVersion": "1.1.0", "name": name, "type": "overlay"}).encode()
    try:
        req = skel.parse_request(env, stdin)
    except CNIError as e:
        assert e.code in (CNIError.INVALID_ENV, CNIError.INVALID_CONFIG)
        return
    assert "\n" not in req.container_id + req.ifname + req.config["name"]
    assert req.container_id == name and req.ifname == ifname
