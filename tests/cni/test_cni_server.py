"""The warm server and the executable entry's wire protocol, with fake handlers (no root)."""

import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time

import pytest

from overlay.cni import server as server_mod
from overlay.cni.server import CNIServer
from overlay.errors import NetlinkOpError
from tests.trickle import trickle_until_closed

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENTRY = os.path.join(ROOT, "cni-plugin", "overlay")
CONF = {"cniVersion": "1.0.0", "name": "ovcni-unit", "type": "overlay"}


class Seen:
    def __init__(self):
        self.requests = []

    def table(self):
        def add(req):
            self.requests.append(req)
            return {"cniVersion": req.cni_version, "echo": req.config.get("blob", "")[:10],
                    "size": len(req.config.get("blob", "")), "netns_fd": req.netns_fd is not None}
        return {"ADD": add, "DEL": lambda req: self.requests.append(req)}


class SeenServer(CNIServer):
    """A server whose handlers record what they saw (``seen``)."""

    seen: Seen


@pytest.fixture
def server(tmp_path):
    seen = Seen()
    srv = SeenServer(str(tmp_path / "cni.sock"), handlers=seen.table())
    srv.bind()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    srv.seen = seen
    try:
        yield srv
    finally:
        srv.shutdown()
        thread.join(10)


def call(sock_path, env, stdin, timeout=60):
    full = {"OVERLAY_CNI_SOCKET": sock_path, "PATH": os.environ.get("PATH", "")}
    full.update(env)
    return subprocess.run([sys.executable, "-IS", ENTRY], input=stdin, env=full,
                          capture_output=True, timeout=timeout)


ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0",
       "CNI_NETNS": "/proc/self/ns/net", "CNI_ARGS": "IgnoreUnknown=1", "NOT_CNI": "x",
       "CNI_PATH": "/usr/lib/cni"}


def test_socket_is_private(server):
    mode = stat.S_IMODE(os.stat(server.socket_path).st_mode)
    assert mode == 0o600


def test_request_round_trip_with_large_stdin_and_fds(server):
    blob = "x" * 300_000  # several socket buffers
    proc = call(server.socket_path, ENV, json.dumps(dict(CONF, blob=blob)).encode())
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"cniVersion": "1.0.0", "echo": "x" * 10,
                                       "size": 300_000, "netns_fd": True}
    req = server.seen.requests[-1]
    assert (req.container_id, req.ifname, req.args) == ("c1", "eth0", {"IgnoreUnknown": "1"})


def test_errors_and_exit_codes_pass_through(server):
    proc = call(server.socket_path, dict(ENV, CNI_IFNAME="x" * 16), json.dumps(CONF).encode())
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["code"] == 4
    proc = call(server.socket_path, {"CNI_COMMAND": "VERSION"}, b"")
    assert proc.returncode == 0 and "supportedVersions" in json.loads(proc.stdout)
    proc = call(server.socket_path, dict(ENV, CNI_COMMAND="DEL"), json.dumps(CONF).encode())
    assert proc.returncode == 0 and proc.stdout == b""


def test_cni_variables_are_forwarded(server):
    call(server.socket_path, dict(ENV, CNI_PATH="/opt/cni/bin:/usr/lib/cni"),
         json.dumps(CONF).encode())
    req = server.seen.requests[-1]
    assert (req.path, req.netns) == ("/opt/cni/bin:/usr/lib/cni", "/proc/self/ns/net")


def test_entry_falls_back_in_process_without_a_server(tmp_path):
    proc = call(str(tmp_path / "absent.sock"), {"CNI_COMMAND": "VERSION"},
                b'{"cniVersion": "0.4.0"}')
    assert proc.returncode == 0
    assert json.loads(proc.stdout)["cniVersion"] == "0.4.0"


def test_garbage_request_is_dropped_and_server_keeps_serving(server):
    s = socket.socket(socket.AF_UNIX)
    s.connect(server.socket_path)
    s.sendall(b"HELLO 1 2 3\n")
    s.shutdown(socket.SHUT_WR)
    assert s.recv(100) == b""  # closed without an answer
    s.close()
    proc = call(server.socket_path, {"CNI_COMMAND": "VERSION"}, b"")
    assert proc.returncode == 0


def _entry_against(tmp_path, reply: bytes | None) -> subprocess.CompletedProcess[bytes]:
    """The entry's ADD against a fake server that reads the request, then sends ``reply``
    (None: nothing) and closes."""
    path = str(tmp_path / "fake.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(1)

    def answer():
        conn, _ = listener.accept()
        conn.recv(65536)
        if reply is not None:
            conn.sendall(reply)
        conn.close()

    t = threading.Thread(target=answer)
    t.start()
    proc = call(path, ENV, json.dumps(CONF).encode())
    t.join(10)
    listener.close()
    return proc


@pytest.mark.parametrize("reply", [b"256\n", b"99999999999999999999\n", b"2\n{}", b"-1\n"])
def test_a_reply_code_other_than_0_or_1_is_try_again(tmp_path, reply):
    # Found by probing: 256 ended the entry as a success with no result, and a code past
    # a C int in a traceback.
    proc = _entry_against(tmp_path, reply)
    assert proc.returncode == 1 and proc.stderr == b""
    assert json.loads(proc.stdout)["code"] == 11


def test_server_dying_mid_request_is_try_again(tmp_path):
    proc = _entry_against(tmp_path, None)
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["code"] == 11


def test_stale_socket_is_replaced_but_a_live_one_is_not(tmp_path, server):
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()  # a socket file nobody listens on
    fresh = CNIServer(str(stale)).bind()
    fresh.shutdown()
    assert not stale.exists()
    with pytest.raises(OSError, match="already answers"):
        CNIServer(server.socket_path).bind()


def _umask_now():
    with open("/proc/self/status") as f:  # reading it does not change it (os.umask would)
        return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))


def test_bind_leaves_the_umask_alone_and_is_private_before_listening(tmp_path, monkeypatch):
    seen = {}

    class Spy(socket.socket):
        def bind(self, address):
            if self.family == socket.AF_UNIX:  # not the warm-up's netlink socket
                seen["umask"] = _umask_now()
            return super().bind(address)

        def listen(self, *args):
            seen["mode"] = stat.S_IMODE(os.stat(path).st_mode)
            return super().listen(*args)

    path = str(tmp_path / "cni.sock")
    before = _umask_now()
    monkeypatch.setattr(socket, "socket", Spy)
    srv = CNIServer(path).bind()
    monkeypatch.undo()
    srv.shutdown()
    assert seen == {"umask": before, "mode": 0o600}


def test_failed_warm_up_leaves_no_listening_socket(tmp_path, monkeypatch):
    def broken():
        raise NetlinkOpError("netlink unavailable", 1)

    monkeypatch.setattr(server_mod, "_warm_up", broken)
    path = tmp_path / "cni.sock"
    with pytest.raises(NetlinkOpError):
        CNIServer(str(path)).bind()
    assert not path.exists()  # so the entry falls back in-process instead of waiting


def test_a_request_thread_that_cannot_start_is_dropped_and_serving_goes_on(server,
                                                                          monkeypatch):
    failures: list[threading.Thread] = []

    class Flaky(threading.Thread):
        def start(self):
            if self.name == "cni-request" and not failures:
                failures.append(self)
                raise RuntimeError("can't start new thread")
            return super().start()

    monkeypatch.setattr(threading, "Thread", Flaky)
    proc = call(server.socket_path, {"CNI_COMMAND": "VERSION"}, b"", timeout=20)
    assert failures and proc.returncode == 1 and json.loads(proc.stdout)["code"] == 11
    proc = call(server.socket_path, {"CNI_COMMAND": "VERSION"}, b"", timeout=20)
    assert proc.returncode == 0, proc.stderr


def test_unexpected_end_of_serving_removes_the_socket(tmp_path):
    class Broken:
        def __init__(self, sock):
            self.sock = sock

        def accept(self):
            raise RuntimeError("unexpected")

        def __getattr__(self, name):
            return getattr(self.sock, name)

    path = tmp_path / "cni.sock"
    srv = CNIServer(str(path)).bind()
    srv._sock = Broken(srv._sock)  # type: ignore[assignment]  # a socket double
    with pytest.raises(RuntimeError):
        srv.serve_forever()
    assert not path.exists()
    proc = call(str(path), {"CNI_COMMAND": "VERSION"}, b"", timeout=20)
    assert proc.returncode == 0  # answered in-process
    srv.shutdown()


def test_unwritable_log_file_still_answers_with_json(tmp_path):
    proc = call(str(tmp_path / "absent.sock"),
                {"CNI_COMMAND": "VERSION", "OVERLAY_CNI_LOG_FILE": str(tmp_path / "no" / "x.log")},
                b'{"cniVersion": "1.0.0"}')
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["cniVersion"] == "1.0.0"
    assert b"cannot log to" in proc.stderr and b"Traceback" not in proc.stderr


# --- nothing a peer does holds the server ----------------------------------------------

def _serve(srv):
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    return thread


def _idle(path, n):
    conns = []
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        conns.append(s)
    return conns


def _closed_by_server(s, within):
    s.settimeout(within)
    try:
        return s.recv(100) == b""
    except TimeoutError:
        return False


def test_an_idle_connection_is_closed_after_the_request_deadline(tmp_path):
    srv = CNIServer(str(tmp_path / "cni.sock"), handlers={}, request_deadline=0.5).bind()
    _serve(srv)
    try:
        idle, = _idle(srv.socket_path, 1)
        started = time.monotonic()
        assert _closed_by_server(idle, within=3)
        assert 0.4 < time.monotonic() - started < 2.0
        idle.close()
    finally:
        srv.shutdown()


def test_a_slow_loris_is_closed_at_the_deadline_not_per_byte(tmp_path):
    srv = CNIServer(str(tmp_path / "cni.sock"), handlers={}, request_deadline=1.0).bind()
    _serve(srv)
    try:
        s, = _idle(srv.socket_path, 1)
        took = trickle_until_closed(s, b"OVCNI1 10 10 0\n" + b"x" * 20, every=0.2)
        assert took is not None and took < 2.5
        s.close()
    finally:
        srv.shutdown()


def _seen_server(tmp_path, **bounds) -> tuple[CNIServer, Seen]:
    """A serving server with ``bounds`` whose handlers record what they saw."""
    seen = Seen()
    srv = CNIServer(str(tmp_path / "cni.sock"), handlers=seen.table(), **bounds).bind()
    _serve(srv)
    return srv, seen


def test_beyond_the_pending_bound_the_entry_runs_in_process(tmp_path):
    srv, seen = _seen_server(tmp_path, max_connections=3, max_pending=3)
    conns = _idle(srv.socket_path, 3)
    try:
        time.sleep(0.2)
        # In-process VERSION echoes the stdin's version: the stdin the entry had already
        # read for the server reached the fallback whole.
        proc = call(srv.socket_path, {"CNI_COMMAND": "VERSION"}, b'{"cniVersion": "0.4.0"}',
                    timeout=20)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["cniVersion"] == "0.4.0"
        assert len(srv._threads) <= 3
        for s in conns:
            s.close()
        time.sleep(0.2)
        proc = call(srv.socket_path, ENV, json.dumps(CONF).encode(), timeout=20)
        assert proc.returncode == 0 and seen.requests  # served warm again
    finally:
        srv.shutdown()


def test_a_flood_past_the_bound_is_counted_and_logged_once(tmp_path, caplog):
    # each BUSY answer was one warning: 256 idle connections renewed every 5 s were 256
    # lines per 5 s; now the first is logged, the rest counted (overlayd exports them)
    srv, _ = _seen_server(tmp_path, max_connections=2, max_pending=2)
    conns = _idle(srv.socket_path, 2)
    try:
        time.sleep(0.2)
        with caplog.at_level("WARNING", logger="overlay.cni.server"):
            for s in _idle(srv.socket_path, 20):
                s.settimeout(5)
                assert s.recv(16) == server_mod.BUSY
                s.close()
        assert srv.refusals.counts()["busy"] == 20
        assert caplog.text.count("connections held (the bound)") == 1
    finally:
        for s in conns:
            s.close()
        srv.shutdown()


def test_refusals_log_each_reason_once_per_interval_and_say_what_they_left_out(caplog):
    now = [100.0]
    refusals = server_mod.Refusals(interval=10.0, clock=lambda: now[0])
    with caplog.at_level("WARNING", logger="overlay.cni.server"):
        for _ in range(5):
            refusals.note("busy", "busy %d", 1)
        refusals.note("deadline", "deadline")  # another reason has its own interval
        now[0] += 10.0
        refusals.note("busy", "busy %d", 2)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["busy 1", "deadline", "busy 2 (and 4 more like it in the last 10 s)"]
    assert refusals.counts() == {"busy": 6, "deadline": 1, "malformed": 0, "oversized": 0,
                                 "peer": 0}


def test_idle_connections_hold_no_slot_a_request_needs(tmp_path):
    # Found by probing: 64 connections that never sent a request took every slot, so a
    # real ADD was sent back in-process, which with policies in force refuses it (11).
    srv, seen = _seen_server(tmp_path, max_connections=3, max_pending=10)
    conns = _idle(srv.socket_path, 6)
    try:
        time.sleep(0.2)
        proc = call(srv.socket_path, ENV, json.dumps(CONF).encode(), timeout=20)
        assert proc.returncode == 0, proc.stderr
        assert len(seen.requests) == 1  # served warm, by the test's handler
    finally:
        for s in conns:
            s.close()
        srv.shutdown()


def _slow_server(tmp_path, hold: float, slot_wait: float):
    """A server of one slot whose ADD holds it ``hold`` seconds; ``entered`` is set when
    an ADD runs, ``ran`` counts them."""
    entered, ran = threading.Event(), []

    def slow_add(req):
        ran.append(req)
        entered.set()
        time.sleep(hold)
        return {"cniVersion": req.cni_version, "n": len(ran)}

    srv = CNIServer(str(tmp_path / "cni.sock"), handlers={"ADD": slow_add},
                    max_connections=1, slot_wait=slot_wait).bind()
    _serve(srv)
    return srv, entered, ran


def test_a_request_past_the_running_bound_waits_for_a_slot(tmp_path):
    srv, entered, ran = _slow_server(tmp_path, hold=1.0, slot_wait=20)
    first: dict[str, subprocess.CompletedProcess[bytes]] = {}
    try:
        caller = threading.Thread(target=lambda: first.update(
            proc=call(srv.socket_path, ENV, json.dumps(CONF).encode(), timeout=20)))
        caller.start()
        assert entered.wait(10)
        started = time.monotonic()
        second = call(srv.socket_path, ENV, json.dumps(CONF).encode(), timeout=20)
        caller.join(20)
        assert second.returncode == 0 and first["proc"].returncode == 0
        assert json.loads(second.stdout)["n"] == 2  # warm, after the first freed the slot
        assert len(ran) == 2 and time.monotonic() - started > 0.5
    finally:
        srv.shutdown()


def test_a_request_waiting_past_slot_wait_runs_in_process(tmp_path, caplog):
    srv, entered, _ = _slow_server(tmp_path, hold=3.0, slot_wait=0.3)
    try:
        caller = threading.Thread(target=lambda: call(srv.socket_path, ENV,
                                                      json.dumps(CONF).encode(), timeout=20))
        caller.start()
        assert entered.wait(10)
        with caplog.at_level("WARNING", logger="overlay.cni.server"):
            proc = call(srv.socket_path, {"CNI_COMMAND": "VERSION"},
                        b'{"cniVersion": "0.4.0"}', timeout=20)
        assert proc.returncode == 0 and json.loads(proc.stdout)["cniVersion"] == "0.4.0"
        assert "requests running (the bound)" in caplog.text
        caller.join(20)
    finally:
        srv.shutdown()


def test_twenty_idle_connections_neither_block_requests_nor_shutdown(server):
    conns = _idle(server.socket_path, 20)
    try:
        started = time.monotonic()
        proc = call(server.socket_path, ENV, json.dumps(CONF).encode(), timeout=20)
        assert proc.returncode == 0 and server.seen.requests
        assert time.monotonic() - started < 1.0
        started = time.monotonic()
        server.shutdown()
        assert time.monotonic() - started < 1.0  # was 10 s per idle connection
        assert all(_closed_by_server(s, within=1) for s in conns)
    finally:
        for s in conns:
            s.close()


def test_shutdown_lets_a_started_request_finish(tmp_path):
    entered = threading.Event()

    def slow_add(req):
        entered.set()
        time.sleep(1.0)
        return {"cniVersion": req.cni_version, "done": True}

    srv = CNIServer(str(tmp_path / "cni.sock"), handlers={"ADD": slow_add}).bind()
    _serve(srv)
    result: dict[str, subprocess.CompletedProcess[bytes]] = {}
    caller = threading.Thread(target=lambda: result.update(
        proc=call(srv.socket_path, ENV, json.dumps(CONF).encode(), timeout=20)))
    caller.start()
    assert entered.wait(10)
    srv.shutdown()
    caller.join(20)
    assert result["proc"].returncode == 0
    assert json.loads(result["proc"].stdout)["done"] is True


def test_shutdown_deadline_is_total_not_per_request(tmp_path):
    release = threading.Event()
    entered = threading.Semaphore(0)

    def stuck_add(req):
        entered.release()
        release.wait(30)
        return {"cniVersion": req.cni_version}

    srv = CNIServer(str(tmp_path / "cni.sock"), handlers={"ADD": stuck_add}).bind()
    _serve(srv)
    callers = [subprocess.Popen([sys.executable, "-IS", ENTRY], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=dict(ENV, OVERLAY_CNI_SOCKET=srv.socket_path,
                                         CNI_CONTAINERID=f"c{i}"))
               for i in range(3)]
    try:
        for p in callers:
            assert p.stdin is not None  # stdin=PIPE
            p.stdin.write(json.dumps(CONF).encode())
            p.stdin.close()
        for _ in callers:
            assert entered.acquire(timeout=10)
        started = time.monotonic()
        srv.shutdown(timeout=1.0)
        assert time.monotonic() - started < 2.0
    finally:
        release.set()
        for p in callers:
            p.wait(20)


def test_oversized_request_header_gets_the_in_process_error(server):
    s, = _idle(server.socket_path, 1)
    s.sendall(b"OVCNI1 10 %d 0\n" % (64 << 30))  # claims 64 GiB and sends nothing more
    s.settimeout(5)
    reply = s.recv(65536)
    s.close()
    code, _, out = reply.partition(b"\n")
    assert code == b"1" and json.loads(out)["code"] == 7
