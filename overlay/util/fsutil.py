"""Atomic file writes (temp file in the same directory, fsync, rename), and the one rule
for reading a small file anything may have put there (``read_small_file``)."""

from __future__ import annotations

import contextlib
import os
import stat


def atomic_write(path: str, data: str | bytes, mode: int = 0o644, durable: bool = True,
                 dir_mode: int = 0o755) -> None:
    """Replace ``path`` with ``data`` so readers see the old or the new file, never half.
    A missing directory is made with ``dir_mode``; an existing one is left as it is.

    ``durable=False`` skips the fsync (several ms on ext4) for files that matter only
    until the next reboot, such as the CNI plugin's per-pod metadata: the rename is still
    atomic for every reader while the machine runs."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=dir_mode, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    # mkstemp's rule (a random name, O_EXCL, 0600) without ``tempfile``, whose imports
    # (shutil, random, bz2, lzma) cost the CNI plugin's in-process ADD ~3 ms.
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.urandom(8).hex()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class SmallFileError(OSError):
    """Why ``read_small_file`` handed back no bytes though the file could be opened: not
    a regular file, larger than the bound, or (``read_small_text``) not UTF-8.
    ``str(e)`` and ``e.strerror`` are the short reason alone, e.g. "not a regular file
    (a FIFO)", for the caller to put in its own one-line error naming the file."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = self.strerror = reason

    def __str__(self) -> str:
        return self.reason


class FileTooLarge(SmallFileError):
    """The file holds more than ``limit`` bytes (a caller may say what belongs there)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"larger than {limit} bytes")
        self.limit = limit


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a file"


def read_small_file(path: str, limit: int, follow_symlinks: bool = True) -> bytes:
    """The bytes of the small regular file ``path`` (a config file, a state file): the
    one rule for reading a file anything may have put there.

    Opened non-blocking (a FIFO planted there cannot hang us in ``open`` or ``read``),
    close-on-exec and without becoming a controlling terminal; anything but a regular
    file (FIFO, device such as /dev/zero, directory) is refused before a byte is read,
    and at most ``limit`` bytes are accepted (``FileTooLarge`` past that).  Failures are
    ``OSError``: the system's own (``FileNotFoundError``, ``PermissionError``...) or a
    ``SmallFileError``; either way ``e.strerror`` is a short reason without the path.
    ``follow_symlinks=False``: a symlink at ``path`` is refused (ELOOP)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    fd = os.open(path, flags if follow_symlinks else flags | os.O_NOFOLLOW)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise SmallFileError(f"not a regular file ({_kind(mode)})")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:  # a short read is not the end until read says 0 bytes
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > limit:
        raise FileTooLarge(limit)
    return b"".join(chunks)


def read_small_text(path: str, limit: int) -> str:
    """``read_small_file`` decoded as strict UTF-8 (``SmallFileError`` "not UTF-8 text")."""
    raw = read_small_file(path, limit)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SmallFileError("not UTF-8 text") from None


def os_reason(e: OSError) -> str:
    """The short reason of an ``OSError`` from the readers above, without the path."""
    return e.strerror or str(e)
