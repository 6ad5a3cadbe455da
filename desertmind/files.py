"""Atomic file writes: the one way desertmind puts a file on disk.

A file is written to a temporary file in the same folder, flushed to disk (fsync) and renamed
over the target. A reader, a crash or a kill therefore sees either the old file or the whole new
one, never a half-written file; the temporary file is removed when writing fails.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from filelock import FileLock, Timeout

from desertmind.errors import FileLockedError, OutputError


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# read once: setting the umask on every write would race with threads creating files meanwhile
_FILE_MODE = 0o666 & ~_read_umask()


@contextmanager
def atomic_path(path: str | Path) -> Iterator[str]:
    """Yield a temporary file name beside ``path``; on a clean exit the file is fsynced and
    replaces ``path`` in one rename. On an error it is removed and ``path`` is untouched.

    The file gets the permissions an ordinary ``open`` would give it (the umask applies), not
    mkstemp's 0600. Its name carries the writer's process id (``.NAME.PID.xxxx.tmp``): a
    temporary file left by a killed writer (a checkpoint can be hundreds of MB) is removed by
    the next write of the same file, while another live writer's is left alone.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_orphans(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.",
                                   suffix=".tmp")
    except OSError as e:
        raise cannot_write(path, e) from e
    try:
        os.fchmod(fd, _FILE_MODE)
        os.close(fd)
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and not isinstance(e, OutputError) and e.errno is not None:
            raise cannot_write(path, e) from e
        raise


def cannot_write(path: Path, error: OSError) -> OutputError:
    """One line for a write that failed: which file, why, and the disk's free space (a full
    disk and a read-only folder say so in their own words)."""
    folder = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    free = ""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):  # what a read-only folder has is beside it
        try:
            free = f"; {shutil.disk_usage(folder).free / 2**20:.0f} MiB free on its disk"
        except OSError:
            pass
    out = OutputError(f"{path}: cannot write ({error.strerror or error}){free}; nothing was "
                      "replaced: choose a writable folder with space, or free some")
    out.errno, out.reason = error.errno, error.strerror
    return out


def _remove_orphans(path: Path) -> None:
    """Delete ``.NAME.PID.*.tmp`` files beside ``path`` whose writer is gone."""
    prefix = f".{path.name}."
    for tmp in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        pid = tmp.name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; see :func:`atomic_path`."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open writes whole files: mode 'w' or 'wb', not {mode!r}")
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically. A file name that is not UTF-8 (Python
    holds its bytes as surrogates) is written back as the same bytes, not refused."""
    return write_bytes(path, text.encode("utf-8", errors="surrogateescape"))


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    return write_text(path, json.dumps(data, indent=1))


def write_with(path: str | Path, writer: Callable[[IO], None]) -> Path:
    """Atomically write ``path`` through ``writer(binary_file)`` (torch.save, savefig, ...)."""
    with atomic_open(path, "wb") as f:
        writer(f)
    return Path(path)


def write_via_path(path: str | Path, writer: Callable[[str], None]) -> Path:
    """Atomically write ``path`` with a ``writer(temp_name)`` that only takes a file name
    (the ONNX exporter, OpenCV)."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path`` to fill; on a clean exit its files are fsynced
    and the folder is renamed to ``path`` in one step, so ``path`` is either absent or complete.

    If ``path`` appeared meanwhile (another process built the same thing), it is kept and the
    temporary folder is discarded. On an error the temporary folder is removed. A folder left by
    a killed process (``.NAME.tmp-PID`` whose PID is gone) is removed the next time.
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_dirs(path.parent, f".{path.name}.tmp-")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as e:
        raise cannot_write(path, e) from e
    try:
        yield tmp
        for f in tmp.iterdir():
            with open(f, "rb+") as handle:
                os.fsync(handle.fileno())
        try:
            os.rename(tmp, path)
        except OSError:
            if not path.is_dir():
                raise
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_stale_dirs(parent: Path, prefix: str) -> None:
    """Delete the folders ``PREFIX<pid>`` in ``parent`` whose process is gone (a kill left
    them behind)."""
    for stale in parent.glob(f"{glob.escape(prefix)}*"):
        pid = stale.name[len(prefix):]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def replace_dirs(staging: Path, parent: Path, names: tuple[str, ...]) -> None:
    """Move the folders ``names`` of ``staging`` into ``parent`` by renames, replacing those
    there (a name absent from ``staging`` is removed from ``parent``), then delete ``staging``.

    Only renames happen between the first and the last change, so a kill can interrupt the
    swap only in that instant; the folders' files must already be on disk (written with this
    module's atomic writers).
    """
    old = staging / ".replaced"
    old.mkdir()
    for name in names:
        if (parent / name).exists():
            os.rename(parent / name, old / name)
    for name in names:
        if (staging / name).exists():
            os.rename(staging / name, parent / name)
    fd = os.open(parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    shutil.rmtree(staging)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


#: folder locks this process holds: folder -> (lock, holders), so that two callbacks of one
#: run sharing a folder (best.ckpt and last.ckpt) share its lock
_HELD: dict[Path, tuple[FileLock, int]] = {}


def take_lock(folder: str | Path, what: str) -> Path:
    """Lock ``folder`` (``folder/.lock``, an ``flock`` through :mod:`filelock`) so that two
    processes never write the same files; the kernel releases it when the process dies, so
    no stale lock survives a crash or a kill. Taken again by this process, it is shared.
    Release it with :func:`release_lock`. ``what`` names the folder's owner in the message."""
    folder = Path(folder).resolve()
    if folder in _HELD:
        lock, holders = _HELD[folder]
        _HELD[folder] = (lock, holders + 1)
        return folder / ".lock"
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder / ".lock", mode=_FILE_MODE)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise FileLockedError(
            f"{folder}: {what} is being written by another process (it holds {lock.lock_file})"
            "; wait for it to end, or log this run elsewhere") from None
    _HELD[folder] = (lock, 1)
    return folder / ".lock"


def release_lock(lock: str | Path) -> None:
    """Release a lock taken by :func:`take_lock` (once every holder in this process has), and
    remove its folder if the run left nothing else there."""
    folder = Path(lock).parent.resolve()
    if folder not in _HELD:
        return
    held, holders = _HELD.pop(folder)
    if holders > 1:
        _HELD[folder] = (held, holders - 1)
        return
    try:  # removed while still held: a process that opens it afterwards makes a new one
        Path(held.lock_file).unlink()
        folder.rmdir()  # only when empty
    except OSError:
        pass
    held.release()
