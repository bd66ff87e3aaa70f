"""One writer per artefact directory, and the leftovers a killed writer may leave behind.

A stage that writes into a directory first takes an exclusive advisory lock on
``DIR/.zutis.lock`` (a POSIX record lock, ``fcntl``): the kernel drops it when the process dies,
however it dies, so a kill never leaves a stale lock. Unlike ``flock``, a record lock belongs to
the process, not to the open file: forked workers (DataLoader's) that outlive a killed main process
do not keep it. A second writer is refused in one line that names the holder's PID and command.
The lock file is removed when the lock is released.

While it holds the lock, a stage removes the temporary files of :func:`zutiscli.artefacts.atomic.atomic_path`
(``.NAME.XXXXXXXX.tmpSUFFIX``) that a killed writer left: nobody else can be writing them.

A stage that cannot resume (predict, evaluate, retrieve, ...) marks a directory it starts from
scratch with ``DIR/.zutis-unfinished`` (its stage name inside); :func:`zutiscli.artefacts.manifest.write_manifest`
removes the mark once the artefact is finished. A rerun of the same stage into a marked
directory that nobody holds starts it afresh, so a run killed half-way never blocks the rerun.

Locks taken inside a :func:`holding_locks` call are released when it returns; others are held
until the process exits.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Callable, TypeVar

from zutiscli.errors import ArtefactError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, one writer is the user's care
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".zutis.lock"
UNFINISHED_NAME = ".zutis-unfinished"

#: Names :func:`tempfile.mkstemp` gives in :func:`zutiscli.artefacts.atomic.atomic_path`: ``.`` + the
#: destination's name + ``.`` + 8 random characters + ``.tmp`` + the destination's suffix.
_TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.[^./]*)?$")

F = TypeVar("F", bound=Callable)


def is_temporary(name: str) -> bool:
    """Whether a file name is one an atomic write uses before its rename."""
    return bool(_TEMPORARY.match(name))


def is_own_leftover(name: str) -> bool:
    """Whether an entry of an output directory is zutis bookkeeping rather than content (lock, mark, temporary)."""
    return name in (LOCK_NAME, UNFINISHED_NAME) or is_temporary(name)


def content(directory: str | Path) -> list[Path]:
    """The entries of ``directory`` that are content (not :func:`is_own_leftover`), sorted by name."""
    return sorted(p for p in Path(directory).iterdir() if not is_own_leftover(p.name))


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Delete the atomic-write temporaries anywhere under ``directory``; returns what was deleted.

    Call it only while holding the directory's lock: then no live writer owns them.
    """
    removed = []
    for root, _dirs, files in os.walk(directory):
        for name in files:
            if is_temporary(name):
                path = Path(root) / name
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed.append(path)
    return removed


def _describe_holder(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        text = ""
    pid, _, command = text.partition(" ")
    if not pid.isdigit():
        return "another zutis process"
    return f"another zutis process (PID {pid}{', ' + command if command else ''})"


def _refusal(directory: Path) -> ArtefactError:
    return ArtefactError(f"{directory}: {_describe_holder(directory / LOCK_NAME)} is writing here; "
                         f"wait for it to finish or choose another -o directory")


class DirectoryLock:
    """An exclusive lock on one directory, held by this process; :meth:`release` gives it up."""

    def __init__(self, directory: Path, fd: int | None):
        self.directory = directory
        self._fd = fd

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            (self.directory / LOCK_NAME).unlink()
        os.close(self._fd)
        self._fd = None
        _held.pop(_key(self.directory), None)


def _key(directory: Path) -> str:
    return os.path.realpath(directory)


#: Locks this process holds, by the directory's real path (a second request is answered with the first).
_held: dict[str, DirectoryLock] = {}
#: One list per active :func:`holding_locks` call, innermost last: the locks it will release.
_scopes: list[list[DirectoryLock]] = []


def _command() -> str:
    words = [Path(sys.argv[0]).name if sys.argv else "python", *sys.argv[1:3]]
    return " ".join(w for w in words if w and "\n" not in w)[:120]


def lock_directory(directory: str | Path) -> DirectoryLock:
    """Take the exclusive lock on the existing ``directory`` and clear stale temporaries under it.

    Raises :class:`ArtefactError` naming the holder when another process holds it, or when the
    directory cannot hold a lock file (read-only). Re-entrant within one process.
    """
    directory = Path(directory)
    known = _held.get(_key(directory))
    if known is not None:
        return known
    if fcntl is None:  # pragma: no cover
        return DirectoryLock(directory, None)
    path = directory / LOCK_NAME
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ArtefactError(f"{directory}: cannot be written ({exc.strerror or exc}); "
                                f"choose another -o directory") from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise _refusal(directory) from None
        try:  # the holder before us may have removed the file between our open and our lock: start again
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} {_command()}\n".encode("utf-8", "replace"))
    lock = DirectoryLock(directory, fd)
    _held[_key(directory)] = lock
    if _scopes:
        _scopes[-1].append(lock)
    remove_stale_temporaries(directory)
    return lock


def held_here(directory: str | Path) -> bool:
    """Whether this process holds ``directory``'s lock."""
    return _key(Path(directory)) in _held


def check_unlocked(directory: str | Path) -> None:
    """Raise :class:`ArtefactError` when another process holds ``directory``'s lock (takes nothing)."""
    directory = Path(directory)
    path = directory / LOCK_NAME
    if fcntl is None or held_here(directory) or not path.is_file():
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        raise _refusal(directory) from None
    finally:
        os.close(fd)  # (closing drops every record lock this process has on the file: it holds none here)


def holding_locks(function: F) -> F:
    """Decorate a stage: the directory locks it takes are released when it returns or raises."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        _scopes.append([])
        try:
            return function(*args, **kwargs)
        finally:
            for lock in reversed(_scopes.pop()):
                lock.release()

    return wrapper  # type: ignore[return-value]


def mark_unfinished(directory: str | Path, stage: str) -> None:
    """Mark ``directory`` as the unfinished output of ``stage`` (cleared by ``write_manifest``)."""
    (Path(directory) / UNFINISHED_NAME).write_text(stage + "\n", encoding="utf-8")


def unfinished_stage(directory: str | Path) -> str | None:
    """The stage whose unfinished output ``directory`` is, or ``None`` when it is not marked."""
    try:
        return (Path(directory) / UNFINISHED_NAME).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def clear_unfinished_mark(directory: str | Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (Path(directory) / UNFINISHED_NAME).unlink()


def restart_unfinished(directory: str | Path) -> list[str]:
    """Empty the marked, unlocked-by-others ``directory`` of a killed run, keeping lock and mark.

    Returns the names removed. Call it only while holding the lock.
    """
    removed = []
    for entry in content(directory):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
        removed.append(entry.name)
    return removed

