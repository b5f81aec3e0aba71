"""read_small_file: the one rule for reading a small file anything may have put there."""

import os

import pytest

from overlay.util.fsutil import (
    FileTooLarge,
    SmallFileError,
    os_reason,
    read_small_file,
    read_small_text,
)
from tests.deadline import deadline


def test_reads_a_regular_file_up_to_the_bound(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 10)
    assert read_small_file(str(path), 10) == b"x" * 10
    assert read_small_file(str(path), 11) == b"x" * 10
    path.write_bytes(b"")
    assert read_small_file(str(path), 10) == b""


def test_over_the_bound_is_file_too_large(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 11)
    with pytest.raises(FileTooLarge) as e:
        read_small_file(str(path), 10)
    assert e.value.limit == 10 and os_reason(e.value) == "larger than 10 bytes"
    assert isinstance(e.value, SmallFileError) and isinstance(e.value, OSError)


@pytest.mark.parametrize("make, kind", [
    (lambda p: os.mkfifo(p), "a FIFO"),
    (lambda p: os.symlink("/dev/zero", p), "a character device"),
    (lambda p: os.mkdir(p), "a directory"),
])
def test_anything_but_a_regular_file_is_refused_at_once(tmp_path, make, kind):
    path = tmp_path / "f"
    make(str(path))
    with deadline(), pytest.raises(SmallFileError) as e:
        read_small_file(str(path), 100)
    assert str(e.value) == os_reason(e.value) == f"not a regular file ({kind})"


def test_system_errors_stay_os_errors_with_a_reason(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        read_small_file(str(tmp_path / "none"), 10)
    assert os_reason(e.value) == "No such file or directory"


def test_no_descriptor_is_left_open(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        with pytest.raises(SmallFileError):
            read_small_file(str(fifo), 10)
    assert len(os.listdir("/proc/self/fd")) == before


def test_text_is_strict_utf8(tmp_path):
    path = tmp_path / "f"
    path.write_bytes("caf\u00e9\n".encode())
    assert read_small_text(str(path), 100) == "caf\u00e9\n"
    path.write_bytes(b"caf\xe9\n")
    with pytest.raises(SmallFileError, match="^not UTF-8 text$"):
        read_small_text(str(path), 100)


def test_a_symlink_is_refused_when_not_followed(tmp_path):
    (tmp_path / "real").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert read_small_file(str(tmp_path / "link"), 10) == b"x"
    with pytest.raises(OSError):
        read_small_file(str(tmp_path / "link"), 10, follow_symlinks=False)
