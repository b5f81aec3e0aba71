"""The one way this project runs a helper program (nft, iptables-restore, ip, ping).

``run`` raises ``ProgramError`` (an ``OverlayError``) when the program is missing,
cannot be executed, does not answer in time, or (``check=True``) exits non-zero; each
caller turns it into its own error (a ``ConfigError`` naming the package to install,
a ``CNIError``, a ``LabError``) by its ``reason``, never by its message.
``run_quiet`` never raises: for readers (diagnose) that report what they could not run.
stdin is ``/dev/null`` unless ``input`` is given, so a program never waits on ours.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Sequence

from overlay.errors import OverlayError

log = logging.getLogger(__name__)

# Why a program did not give a usable answer; the shell's exit codes for each.
MISSING, CANNOT_RUN, TIMEOUT, FAILED = "missing", "cannot-run", "timeout", "failed"
_EXIT_CODES = {MISSING: 127, CANNOT_RUN: 126, TIMEOUT: 124}


class ProgramError(OverlayError):
    """A helper program could not be run, timed out, or failed (``check=True``)."""

    def __init__(self, message: str, argv: Sequence[str], reason: str,
                 returncode: int | None = None, stderr: str = ""):
        super().__init__(message)
        self.argv = list(argv)
        self.reason = reason
        self.returncode = returncode if returncode is not None else _EXIT_CODES[reason]
        self.stderr = stderr


def run(argv: Sequence[str], *, check: bool = False, input: str | None = None,
        timeout: float = 30.0, capture: bool = True,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (no shell); text in and out, captured unless ``capture=False``."""
    argv = list(argv)
    log.debug("run: %s", " ".join(argv))
    try:
        cp = subprocess.run(argv, capture_output=capture, text=True, timeout=timeout,
                            input=input, env=env,
                            stdin=None if input is not None else subprocess.DEVNULL)
    except FileNotFoundError as e:
        raise ProgramError(f"{argv[0]} not installed", argv, MISSING) from e
    except subprocess.TimeoutExpired as e:
        raise ProgramError(f"{' '.join(argv)} timed out after {timeout}s", argv,
                           TIMEOUT) from e
    except OSError as e:  # EACCES, ENOEXEC, ...: the shell's "cannot execute"
        raise ProgramError(f"cannot run {argv[0]}: {e.strerror or e}", argv, CANNOT_RUN) from e
    if check and cp.returncode != 0:
        lines = ((cp.stderr or cp.stdout) or "").strip().splitlines()
        last = lines[-1] if lines else f"exit {cp.returncode}"
        raise ProgramError(f"{' '.join(argv)}: {last}", argv, FAILED, cp.returncode,
                           (cp.stderr or "").strip())
    return cp


def run_quiet(argv: list[str], timeout: float = 5.0) -> tuple[int, str, str]:
    """(exit status, stdout, stderr); 127 if the program is missing, 126 if it cannot be
    run (not executable, wrong format, ...), 124 on timeout."""
    try:
        p = run(argv, timeout=timeout)
    except ProgramError as e:
        return e.returncode, "", str(e)
    return p.returncode, p.stdout, p.stderr.strip()
