"""Atomic writes: every file and folder tokenscale produces goes through :func:`atomic_output`.

A writer writes into ``<out>.tmp`` (a file, or a folder with ``is_dir=True``); on success the temp is
fsynced (every file in it, for a folder), renamed onto ``<out>`` with ``os.replace`` and the parent folder is
fsynced, so a reader sees either the old complete output or the new complete one, never a partial one. On an
exception the temp is removed; after a hard kill only a ``*.tmp`` is left, which no reader opens and the
next writer removes. A folder that replaces an existing one is swapped through ``<out>.old`` (rename the old
aside, rename the new in, remove the old): a kill between the two renames leaves ``<out>.old`` complete,
which readers that care (the trainer's state) fall back to.

A full disk (or quota) ends in one :class:`tokenscale.TokenscaleError` naming the output and saying
"no space left on device", with the temp removed. Writers that cannot stream to a Python file (torch's
zip writer reports a full disk as ``RuntimeError: unexpected pos``) are recognised by the free space left.

This module imports neither torch nor h5py.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator

from tokenscale import TokenscaleError

__all__ = ["atomic_output", "write_text", "write_json", "fsync_dir", "fsync_tree", "remove", "is_full_disk",
           "disk_full_error"]

_FULL = (errno.ENOSPC, errno.EDQUOT)
_NEARLY_FULL_BYTES = 1 << 20  # below this, a failed write is reported as a full disk


def fsync_dir(path: os.PathLike | str) -> None:
    """fsync a folder's entry table (makes a rename in it durable); a no-op where the OS refuses."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def fsync_tree(path: os.PathLike | str) -> None:
    """fsync every regular file under ``path`` and every folder in it."""
    root = Path(path)
    for d, _, files in os.walk(root):
        for name in files:
            p = Path(d) / name
            if p.is_file() and not p.is_symlink():
                _fsync_file(p)
        fsync_dir(d)


def remove(path: os.PathLike | str) -> None:
    """Remove a file or folder if it exists (no error if it does not)."""
    p = Path(path)
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            p.unlink()


def _free_bytes(path: Path) -> int | None:
    for p in (path, *path.parents):
        if p.exists():
            try:
                return shutil.disk_usage(p).free
            except OSError:
                return None
    return None


def is_full_disk(exc: BaseException) -> bool:
    """Whether ``exc`` is an OS error saying the disk (or the quota) is full."""
    return isinstance(exc, OSError) and exc.errno in _FULL


def disk_full_error(exc: BaseException, path: os.PathLike | str) -> TokenscaleError | None:
    """A one-line error if ``exc`` (raised while writing ``path``) came from a full disk or quota, else None."""
    p = Path(path)
    full = is_full_disk(exc)
    full = full or "No space left on device" in str(exc) or "Disk quota exceeded" in str(exc)
    # a nested writer (a file inside an atomic folder) already said so: name the outer output instead
    full = full or (isinstance(exc, TokenscaleError) and "no space left on device" in str(exc))
    if not full and isinstance(exc, (OSError, RuntimeError)):
        free = _free_bytes(p.parent)
        full = free is not None and free < _NEARLY_FULL_BYTES
    if not full:
        return None
    return TokenscaleError(f"{p}: no space left on device (while writing it; free space and rerun)")


def _swap_in(tmp: Path, out: Path) -> None:
    if tmp.is_dir() and out.exists():
        old = out.with_name(out.name + ".old")
        remove(old)
        os.replace(out, old)
        os.replace(tmp, out)
        remove(old)
    else:
        os.replace(tmp, out)


@contextlib.contextmanager
def atomic_output(out_path: os.PathLike | str, *, is_dir: bool = False, unique: bool = False) -> Iterator[Path]:
    """Yield a temp path to write ``out_path`` into; publish it atomically when the block ends.

    ``is_dir=True`` yields an empty folder. A stale temp from a killed writer is removed first. ``unique=True``
    gives the temp a per-process name (``<out>.<pid>.<random>.tmp``), for outputs that several processes may
    write at once with the same content (a shared build cache): the last rename wins, none sees a partial file.
    """
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp" if unique else out.name + ".tmp")
    remove(tmp)
    if is_dir:
        tmp.mkdir()
    try:
        yield tmp
        if is_dir:
            fsync_tree(tmp)
        else:
            _fsync_file(tmp)
        _swap_in(tmp, out)
        fsync_dir(out.parent)
    except BaseException as e:
        # judged before the temp is removed: the free-space test needs the disk still as full as the writer saw it
        full = disk_full_error(e, out) if isinstance(e, Exception) else None
        remove(tmp)
        if full is not None:
            raise full from None
        raise


def write_text(path: os.PathLike | str, text: str) -> Path:
    """Atomically write a text file."""
    with atomic_output(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: os.PathLike | str, obj: Any, **kw: Any) -> Path:
    """Atomically write ``obj`` as JSON (indent 2, sorted keys unless given, trailing newline)."""
    kw.setdefault("indent", 2)
    kw.setdefault("sort_keys", True)
    return write_text(path, json.dumps(obj, **kw) + "\n")
