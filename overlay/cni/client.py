"""The executable entry's body: hand one CNI request to the warm server.

Imported by ``cni-plugin/overlay`` under ``python -IS`` (no site, no compile: this
module's cached bytecode loads in ~0.1 ms), so it may use only interpreter built-ins:
``_socket``, ``posix``, ``sys``.  When no server answers it runs the plugin in this
process (importing it only then) with stdin untouched; when the server is at its bound
of concurrent requests it answers BUSY and the entry runs the same fallback with the
stdin it already read.  See ``server`` for the wire format.  ``OVERLAY_CNI_SOCKET``
overrides the socket path.
"""

import _socket
import posix
import sys

SOCKET = posix.environ.get(b"OVERLAY_CNI_SOCKET", b"/run/overlay/cni.sock")
TIMEOUT = 300.0


def finish(code):
    """End the process with ``code`` once the answer is out: ``posix._exit`` skips the
    interpreter's teardown (module and object clean-up, ~1.5 ms of every call); the
    kernel closes the socket and the fds."""
    for stream in (sys.stdout, sys.stderr):
        try:  # noqa: SIM105 (contextlib is not a built-in: see the module's docstring)
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed pipe: nothing more can reach the runtime anyway
    posix._exit(code)


def fallback(stdin=None):
    # The in-process plugin needs only the standard library and the overlay package, and
    # this interpreter already runs it as it should (``-IS``, the package's root on
    # sys.path): it runs here, where an exec of a fresh interpreter cost ~8 ms more.
    # ``stdin``: the bytes already read for the server (BUSY); None leaves fd 0 unread.
    from overlay.cni.plugin import main

    try:
        main([], stdin)
    except SystemExit as e:  # the plugin's exit code, its output written and flushed
        finish(e.code if isinstance(e.code, int) else 1)


def open_ns(path):
    try:
        # O_NONBLOCK: a FIFO named as CNI_NETNS must not hang the entry in open().
        return posix.open(path, posix.O_RDONLY | posix.O_CLOEXEC | posix.O_NONBLOCK
                          | posix.O_NOCTTY)
    except OSError:
        return -1  # the server validates CNI_NETNS and says what is wrong


def main(root=None):
    """Answer one request and end the process (it never returns).  ``root`` (the
    directory holding the overlay package) is already on sys.path: the entry put it
    there; entries installed by earlier releases still pass it."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.connect(SOCKET)
    except OSError:
        sock.close()
        fallback()
    sock.settimeout(TIMEOUT)  # a hung server must not hang the runtime forever
    chunks = []
    while True:
        chunk = posix.read(0, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    stdin = b"".join(chunks)
    env = b"\0".join(k + b"=" + v for k, v in posix.environ.items() if k.startswith(b"CNI_"))
    fds = [open_ns(b"/proc/thread-self/ns/net")]
    netns = posix.environ.get(b"CNI_NETNS")
    if netns and fds[0] >= 0:
        fd = open_ns(netns)
        if fd >= 0:
            fds.append(fd)
    fds = [fd for fd in fds if fd >= 0]
    header = b"OVCNI1 %d %d %d\n" % (len(env), len(stdin), len(fds))
    anc = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS,
            b"".join(fd.to_bytes(4, sys.byteorder) for fd in fds))] if fds else []
    try:
        sent = sock.sendmsg([header + env + stdin], anc)
        payload = (header + env + stdin)[sent:]
        while payload:
            payload = payload[sock.send(payload):]
    except OSError:
        pass  # the server may have answered early (busy, too large): read what it said
    chunks = []
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    except OSError:
        pass
    for fd in fds:
        posix.close(fd)
    reply = b"".join(chunks)
    if reply == b"BUSY\n":
        sock.close()
        fallback(stdin)
    code, sep, out = reply.partition(b"\n")
    if not sep or code not in (b"0", b"1"):
        # The server accepted but died mid-request, or what answered is not our server
        # (a plugin exits 0 or 1; 256 would end this process as success): the runtime
        # should retry (code 11).
        sys.stdout.write('{"cniVersion": "1.1.0", "code": 11, "msg": "overlay CNI server '
                         'closed the connection", "details": "retry; check overlayd or '
                         'overlay-cni serve on ' + SOCKET.decode() + '"}\n')
        finish(1)
    posix.write(1, out)
    finish(1 if code == b"1" else 0)

