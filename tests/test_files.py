"""The atomic writer: whole files or none, and ordinary permissions."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from desertmind.files import write_text, write_with


def test_written_file_has_the_umask_mode_not_mkstemps_0600(tmp_path: Path):
    mask = os.umask(0o022)
    os.umask(mask)
    path = write_text(tmp_path / "a.txt", "hello")
    assert path.read_text() == "hello"
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask


def test_a_failing_writer_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path):
    path = write_text(tmp_path / "b.txt", "old")

    def fail(f) -> None:
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_with(path, fail)
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.txt"]


def test_a_killed_writers_temporary_file_is_removed_by_the_next_write(tmp_path: Path):
    from desertmind.files import write_bytes

    target = tmp_path / "best.ckpt"
    orphan = tmp_path / ".best.ckpt.999999999.abcd.tmp"  # its writer is gone
    busy = tmp_path / ".best.ckpt.1.efgh.tmp"  # a live process (pid 1) is still writing
    other = tmp_path / ".last.ckpt.999999999.ijkl.tmp"  # another file's: not ours to judge
    for p in (orphan, busy, other):
        p.write_bytes(b"x" * 100)
    write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert not orphan.exists() and busy.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [target.name, busy.name, other.name])
