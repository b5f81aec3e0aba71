"""``overlay-cni``: the CNI plugin in-process, and ``overlay-cni serve`` (the warm server).

Without arguments it is a CNI plugin: env + stdin in, result or error JSON on stdout.
This is also what the executable entry ``cni-plugin/overlay`` falls back to, in its own
process, when no warm server answers (correct, but it pays the plugin's module imports on
every call, so they are kept to what a command needs).
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Mapping, Sequence
from typing import BinaryIO

from overlay.cni import skel
from overlay.util import lazylog

log = lazylog.get_logger(__name__)

LOG_FILE_ENV = "OVERLAY_CNI_LOG_FILE"


def setup_logging(level: int, log_file: str | None = None) -> None:
    import logging  # here only: the in-process plugin mostly never needs it (lazylog)

    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    handlers[0].setLevel(level)
    if log_file:
        try:
            file_handler = logging.FileHandler(log_file)
        except OSError as e:  # a bad log path must not cost the runtime its JSON answer
            print(f"overlay CNI plugin: cannot log to {log_file}: {e.strerror}; "
                  "logging to stderr only", file=sys.stderr)
            log_file = None
        else:
            file_handler.setLevel(logging.INFO)
            handlers.append(file_handler)
    logging.basicConfig(level=min(level, logging.INFO) if log_file else level,
                        format=fmt, handlers=handlers)


def run(env: Mapping[str, str], stdin: BinaryIO, stdout: BinaryIO) -> int:
    """One CNI invocation with its I/O given (tests pass dicts and BytesIO)."""
    # only when a command really runs (not for --help); no policy is known in-process
    from overlay.cni.commands import UNENFORCED_HANDLERS

    code, out = skel.run(env, stdin.read(), UNENFORCED_HANDLERS)
    stdout.write(out)
    stdout.flush()
    return code


def serve(socket_path: str) -> int:
    import signal
    import threading

    from overlay.cni.commands import UNENFORCED_HANDLERS
    from overlay.cni.server import CNIServer

    server = CNIServer(socket_path, UNENFORCED_HANDLERS)  # no overlayd: no policy known
    try:
        server.bind()
    except OSError as e:
        log.error("cannot listen on %s: %s", socket_path, e)
        return 1
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.serve_forever()
    return 0


def main(argv: Sequence[str] | None = None, stdin: bytes | None = None) -> None:
    """``stdin``: the request's bytes when the executable entry already read them."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "serve":
        import argparse

        from overlay.cni.server import DEFAULT_SOCKET

        parser = argparse.ArgumentParser(prog="overlay-cni serve",
                                         description="Serve CNI requests warm on a unix socket.")
        parser.add_argument("--socket", default=DEFAULT_SOCKET,
                            help=f"unix socket path (default {DEFAULT_SOCKET})")
        parser.add_argument("--log-file", help="also log INFO to this file")
        parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
        args = parser.parse_args(argv[1:])
        setup_logging(lazylog.DEBUG if args.verbose else lazylog.INFO, args.log_file)
        sys.exit(serve(args.socket))
    if argv and argv[0] == "--version":
        from overlay.util.version import version_line  # only here: the plugin starts lean

        print(version_line("overlay-cni"))
        sys.exit(0)
    if argv and argv[0] in ("-h", "--help"):
        print("overlay-cni: the overlay CNI plugin (CNI_COMMAND=ADD|DEL|CHECK|VERSION|STATUS|GC "
              "with the network config on stdin)\n"
              "overlay-cni serve [--socket PATH]: the warm server for cni-plugin/overlay\n"
              "overlay-cni --version: print the version and exit")
        sys.exit(0)
    log_file = os.environ.get(LOG_FILE_ENV)
    if log_file:
        setup_logging(lazylog.WARNING, log_file)
    else:  # stderr keeps WARNING and up: INFO lines need not import logging at all
        lazylog.defer(lazylog.WARNING, lambda: setup_logging(lazylog.WARNING))
    if not os.environ.get("CNI_COMMAND"):
        print(f"overlay CNI plugin: CNI protocol versions supported: "
              f"{', '.join(skel.SUPPORTED_VERSIONS)}", file=sys.stderr)
    source = sys.stdin.buffer if stdin is None else io.BytesIO(stdin)
    sys.exit(run(os.environ, source, sys.stdout.buffer))


if __name__ == "__main__":
    main()
