"""Every bad input gets the same CNI answer from the warm server as from the in-process
plugin the executable entry falls back to (real handlers; no input here reaches the kernel).
"""

import json
import os
import subprocess
import sys
import threading

import pytest

from overlay.cni.server import CNIServer

from .test_cni_skel import BAD_ENV, BAD_STDIN, CONF, ENV

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENTRY = os.path.join(ROOT, "cni-plugin", "overlay")
GOOD = json.dumps(CONF).encode()


def _fifo_env(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    return dict(ENV, CNI_NETNS=str(fifo))


# (name, env or a function of tmp_path, stdin): the skeleton's bad inputs and the commands'.
COMMAND_LEVEL = [
    ("netns-absent", dict(ENV, CNI_NETNS="/nonexistent/netns"), GOOD),
    ("netns-not-a-netns", dict(ENV, CNI_NETNS="/etc/hostname"), GOOD),
    ("netns-a-directory", dict(ENV, CNI_NETNS="/"), GOOD),
    ("netns-a-fifo", _fifo_env, GOOD),
    ("args-unknown", dict(ENV, CNI_ARGS="FOO=1"), GOOD),
    ("args-bad-ip", dict(ENV, CNI_ARGS="IgnoreUnknown=1;IP=10.1.1"), GOOD),
    ("args-bad-mac", dict(ENV, CNI_ARGS="IgnoreUnknown=1;MAC=zz"), GOOD),
    ("mtu-string", ENV, json.dumps(dict(CONF, mtu="1450")).encode()),
    ("bridge-too-long", ENV, json.dumps(dict(CONF, bridge="b" * 16)).encode()),
    ("subnet-garbage", ENV, json.dumps(dict(CONF, subnet="10.1.1.0/33")).encode()),
    ("datadir-nul", ENV, json.dumps(dict(CONF, dataDir="/tmp/\u0000x")).encode()),
    ("mac-newline", ENV, json.dumps(dict(CONF, runtimeConfig={"mac": "0a:58:0a:f4:01:02\n"}))
     .encode()),
    ("check-no-prev", dict(ENV, CNI_COMMAND="CHECK"), GOOD),
    ("gc-no-list", dict(ENV, CNI_COMMAND="GC"), GOOD),
    ("stdin-not-utf8", ENV, b"\xff\xfe{"),
]
CASES = ([(f"env{i}", env, GOOD) for i, (env, _, _) in enumerate(BAD_ENV)]
         + [(f"stdin{i}", ENV, stdin) for i, (stdin, _, _) in enumerate(BAD_STDIN)]
         + COMMAND_LEVEL)


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("parity") / "cni.sock")
    srv = CNIServer(path).bind()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield path
    srv.shutdown()
    thread.join(10)


def _answer(sock_path, env, stdin):
    full = {"OVERLAY_CNI_SOCKET": sock_path, "PATH": os.environ.get("PATH", "")}
    full.update(env)
    proc = subprocess.run([sys.executable, "-IS", ENTRY], input=stdin, env=full,
                          capture_output=True, timeout=60)
    assert b"Traceback" not in proc.stderr, proc.stderr.decode()
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout  # exactly one JSON document
    return proc.returncode, json.loads(lines[0])["code"]


@pytest.mark.parametrize("name,env,stdin", CASES, ids=[c[0] for c in CASES])
def test_server_and_in_process_answer_every_bad_input_alike(warm, tmp_path, name, env, stdin):
    if callable(env):
        env = env(tmp_path)
    in_process = _answer(str(tmp_path / "absent.sock"), env, stdin)
    served = _answer(warm, env, stdin)
    assert served == in_process
    assert in_process[0] == 1 and in_process[1] not in (11, 999)  # a real answer, not a bug
