"""Where a stage writes when the user gives no ``-o``: ``./runs/<stage>/<N>``, N counting up."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Collection

from zutiscli.artefacts.lock import (check_unlocked, content, held_here, lock_directory, mark_unfinished,
                                    restart_unfinished, unfinished_stage)
from zutiscli.artefacts.manifest import MANIFEST_NAME
from zutiscli.errors import ArtefactError

DEFAULT_RUNS_ROOT = Path("runs")


def numbered_runs(stage: str, root: str | Path = DEFAULT_RUNS_ROOT) -> list[Path]:
    """Existing numbered run directories of ``stage`` under ``root``, oldest (lowest N) first."""
    base = Path(root) / stage
    if not base.is_dir():
        return []
    runs = [p for p in base.iterdir() if p.is_dir() and p.name.isdigit()]
    return sorted(runs, key=lambda p: int(p.name))


def _cannot_create(path: Path, exc: OSError, advice: str = "pass -o DIR to write somewhere else") -> ArtefactError:
    return ArtefactError(f"{os.path.abspath(path)}: cannot be created ({exc.strerror or exc}); {advice}")


def next_run_dir(stage: str, root: str | Path = DEFAULT_RUNS_ROOT) -> Path:
    """Create and return ``root/stage/N`` with N one above the highest existing number.

    Safe against concurrent callers: creation is exclusive, a lost race moves on to N+1.
    """
    base = Path(root) / stage
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _cannot_create(base, exc) from None
    existing = numbered_runs(stage, root)
    number = int(existing[-1].name) + 1 if existing else 1
    while True:
        candidate = base / str(number)
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            number += 1
        except OSError as exc:
            raise _cannot_create(candidate, exc) from None


def _nearest_existing(path: Path) -> Path:
    """``path`` itself or its closest ancestor that exists (the current directory at worst)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def check_output_dir(output: str | Path | None, stage: str, *, resumable: bool = False,
                     root: str | Path = DEFAULT_RUNS_ROOT, _restartable: bool | None = None) -> tuple[Path, str]:
    """Check, without creating anything, that a stage could write to ``output``.

    Applies the rules of :func:`prepare_output_dir` and returns ``(directory, state)``: the
    directory that would be used (for ``None``, the numbered run directory that would be created
    next) and its state, ``"new"`` (absent), ``"empty"``, ``"existing"`` (not empty; only for a
    ``resumable`` stage, which checks the contents itself) or ``"unfinished"`` (the output of a
    killed run of this same stage, which :func:`prepare_output_dir` starts afresh). Zutis's own
    leftovers (lock file, atomic-write temporaries) are not content. Raises :class:`ArtefactError`
    when the path is a file, a non-empty directory of a non-resumable stage, a directory another
    process is writing, or cannot be created. ``_restartable`` is for :func:`prepare_output_dir`'s
    second look, once it holds the lock: whether the directory was free before it took it.
    """
    if output is None:
        runs = numbered_runs(stage, root)
        out = Path(root) / stage / str(int(runs[-1].name) + 1 if runs else 1)
    else:
        out = Path(output)
    if out.exists() and not out.is_dir():
        raise ArtefactError(f"{out}: exists and is a file; give -o a directory path")
    if out.is_dir():
        check_unlocked(out)
        if content(out):
            marked = unfinished_stage(out)
            if marked not in (None, stage) and not (out / MANIFEST_NAME).is_file():
                raise ArtefactError(f"{out}: holds the unfinished output of `zutis {marked}`; "
                                    f"choose a new -o directory or remove it")
            if resumable:
                state = "existing"
            elif marked == stage and not (out / MANIFEST_NAME).is_file() and (
                    not held_here(out) if _restartable is None else _restartable):
                state = "unfinished"  # a killed run's: nobody holds it (this process may be writing it)
            else:
                what = "a finished artefact" if (out / MANIFEST_NAME).is_file() else "not empty"
                raise ArtefactError(f"{out}: is {what}; choose a new -o directory or remove it")
        else:
            state = "empty"
        if not os.access(out, os.W_OK | os.X_OK):
            raise ArtefactError(f"{out}: is not writable; choose another -o directory")
        return out, state
    parent = _nearest_existing(out)
    if not parent.is_dir():
        raise ArtefactError(f"{out}: cannot be created because {parent} is a file; choose another -o directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ArtefactError(f"{out}: cannot be created in {parent} (not writable); choose another -o directory")
    return out, "new"


def check_resumable_dir(output: str | Path | None, stage: str, own: Collection[str], what: str, *,
                        finished_kind: str | None = None) -> tuple[Path, str]:
    """:func:`check_output_dir` for a resumable stage, whose existing directory must be its own: a
    finished artefact is refused (with ``finished_kind``, one of that kind is taken, its manifest
    checked), and an unfinished one holding entries other than ``own`` (the names the stage's
    output may have) is refused as not a zutis ``what`` directory."""
    from zutiscli.artefacts.manifest import read_manifest

    out, state = check_output_dir(output, stage, resumable=True)
    if state == "existing":
        if (out / MANIFEST_NAME).is_file():
            if finished_kind is None:
                raise ArtefactError(f"{out}: is a finished artefact; choose a new -o directory or remove it")
            read_manifest(out, finished_kind)
        else:
            foreign = [entry.name for entry in content(out) if entry.name not in own]
            if foreign:
                raise ArtefactError(f"{out}: is not empty (e.g. {foreign[0]}) and not a zutis {what} directory; "
                                    f"choose a new -o directory")
    return out, state


def prepare_output_dir(output: str | Path | None, stage: str, *, resumable: bool = False, lock: bool = True,
                       mark: bool | None = None) -> Path:
    """Resolve a stage's output directory, creating it and taking its lock.

    ``None`` gives a fresh numbered run directory. An explicit directory must be empty or absent,
    unless the stage is ``resumable`` (then an existing one is handed back for the stage to check)
    or it holds the unfinished output of a killed run of the same stage (then it is emptied).
    The rules are those of :func:`check_output_dir`. The directory's lock
    (:func:`zutiscli.artefacts.lock.lock_directory`) is taken unless ``lock`` is false (a caller
    that writes into a subdirectory locks that one); a non-resumable stage (or any, with ``mark``)
    marks the directory unfinished until its manifest is written, so that other stages refuse it.
    """
    if output is None:
        out, state = next_run_dir(stage), "new"
    else:
        restartable = not held_here(output)
        out, state = check_output_dir(output, stage, resumable=resumable)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _cannot_create(out, exc, "choose another -o directory") from None
    if lock:
        lock_directory(out)
        if not resumable and state != "new" and \
                check_output_dir(out, stage, _restartable=restartable)[1] == "unfinished":
            restart_unfinished(out)  # judged again under the lock: a writer may have finished meanwhile
        if (not resumable) if mark is None else mark:
            mark_unfinished(out, stage)
    return out
