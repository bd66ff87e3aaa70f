"""Atomic file writes: a reader sees the old file or the whole new one, never a half-written one.

Every write goes to a temporary file in the destination's directory, is flushed and fsynced,
and is then renamed over the destination (``os.replace`` is atomic on POSIX within one file
system). The directory is fsynced afterwards so the rename itself survives a power loss.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from zutiscli.errors import DiskFullError

#: Below this many free bytes, a failed write is put down to the full disk (writers such as
#: ``np.save`` and ``torch.save`` report a short write without an errno).
NEARLY_FULL_BYTES = 1 << 20


def disk_full(exc: BaseException, directory: str | Path) -> bool:
    """Whether ``exc``, raised while writing into ``directory``, comes from a full file system or quota."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if not isinstance(exc, (OSError, RuntimeError, ValueError)):
        return False
    try:
        stats = os.statvfs(directory)
    except (OSError, AttributeError):
        return False
    return stats.f_bavail * stats.f_frsize < NEARLY_FULL_BYTES


def fsync_dir(directory: str | Path) -> None:
    """Flush a directory entry to disk (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(str(directory), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path, *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``.

    For writers that insist on a file name (``faiss.write_index``, ``np.save``, ``Image.save``)::

        with atomic_path(out / "index.faiss") as tmp:
            faiss.write_index(index, str(tmp))

    If the block raises, the temporary file is removed and ``path`` is left untouched; a failure
    that comes from a full disk is raised as :class:`~zutiscli.errors.DiskFullError` naming ``path``.
    The temporary name keeps the destination's suffix so suffix-sniffing writers behave.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    except OSError as exc:
        if disk_full(exc, path.parent if path.parent.is_dir() else "."):
            raise DiskFullError(path) from None
        raise
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        full = not isinstance(exc, DiskFullError) and disk_full(exc, path.parent)  # judged before the space is freed
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if full:
            raise DiskFullError(path) from None
        raise
    if fsync:
        fsync_dir(path.parent)


def link_or_copy(source: str | Path, target: str | Path) -> Path:
    """Give ``target`` the content of ``source``: a hard link when the file system allows it, else
    an atomic copy (across devices, say); returns ``target``."""
    import shutil

    try:
        os.link(source, target)
    except OSError:
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
    return Path(target)


def atomic_write_bytes(path: str | Path, data: bytes, *, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, *, fsync: bool = True) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; returns ``path``."""
    return atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def atomic_write_npy(path: str | Path, array: Any, *, fsync: bool = True) -> Path:
    """Write ``array`` (a numeric ndarray) to ``path`` in ``np.save`` format, atomically; returns ``path``.

    Object arrays are refused (no pickles): ``ValueError``, and ``path`` is left untouched.
    """
    import numpy as np

    with atomic_path(path, fsync=fsync) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, array, allow_pickle=False)
    return Path(path)


def atomic_write_json(path: str | Path, obj: Any, *, indent: int | None = 2, fsync: bool = True) -> Path:
    """Serialise ``obj`` as JSON (UTF-8, keys in insertion order) and write it atomically.

    NaN and infinity are refused (they are not JSON): ``ValueError`` before anything is written.
    """
    text = json.dumps(obj, indent=indent, ensure_ascii=False, allow_nan=False)
    return atomic_write_text(path, text + "\n", fsync=fsync)
