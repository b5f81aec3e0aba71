"""Running a helper program (nft, iptables-save, ping) without ever raising."""

from __future__ import annotations

import subprocess


def run_quiet(argv: list[str], timeout: float = 5.0) -> tuple[int, str, str]:
    """(exit status, stdout, stderr); 127 if the program is missing, 126 if it cannot be
    run (not executable, wrong format, ...), 124 on timeout."""
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        return 127, "", f"{argv[0]} not installed"
    except subprocess.TimeoutExpired:
        return 124, "", f"{' '.join(argv)} timed out after {timeout}s"
    except OSError as e:  # EACCES, ENOEXEC, ...: the shell's "cannot execute"
        return 126, "", f"cannot run {argv[0]}: {e.strerror or e}"
    return p.returncode, p.stdout, p.stderr.strip()
