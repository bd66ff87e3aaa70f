"""Where a stage writes when the user gives no ``-o``: ``./runs/<stage>/<N>``, N counting up."""

from __future__ import annotations

import os
from pathlib import Path

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


def next_run_dir(stage: str, root: str | Path = DEFAULT_RUNS_ROOT) -> Path:
    """Create and return ``root/stage/N`` with N one above the highest existing number.

    Safe against concurrent callers: creation is exclusive, a lost race moves on to N+1.
    """
    base = Path(root) / stage
    base.mkdir(parents=True, exist_ok=True)
    existing = numbered_runs(stage, root)
    number = int(existing[-1].name) + 1 if existing else 1
    while True:
        candidate = base / str(number)
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            number += 1


def _nearest_existing(path: Path) -> Path:
    """``path`` itself or its closest ancestor that exists (the current directory at worst)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def check_output_dir(output: str | Path | None, stage: str, *, resumable: bool = False,
                     root: str | Path = DEFAULT_RUNS_ROOT) -> tuple[Path, str]:
    """Check, without creating anything, that a stage could write to ``output``.

    Applies the rules of :func:`prepare_output_dir` and returns ``(directory, state)``: the
    directory that would be used (for ``None``, the numbered run directory that would be created
    next) and its state, ``"new"`` (absent), ``"empty"`` or ``"existing"`` (not empty; only for a
    ``resumable`` stage, which checks the contents itself). Raises :class:`ArtefactError` when the
    path is a file, a non-empty directory of a non-resumable stage, or cannot be created.
    """
    if output is None:
        runs = numbered_runs(stage, root)
        out = Path(root) / stage / str(int(runs[-1].name) + 1 if runs else 1)
    else:
        out = Path(output)
    if out.exists() and not out.is_dir():
        raise ArtefactError(f"{out}: exists and is a file; give -o a directory path")
    if out.is_dir():
        if any(out.iterdir()):
            if not resumable:
                what = "a finished artefact" if (out / MANIFEST_NAME).is_file() else "not empty"
                raise ArtefactError(f"{out}: is {what}; choose a new -o directory or remove it")
            state = "existing"
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


def prepare_output_dir(output: str | Path | None, stage: str, *, resumable: bool = False) -> Path:
    """Resolve a stage's output directory, creating it.

    ``None`` gives a fresh numbered run directory. An explicit directory must be empty or absent,
    unless the stage is ``resumable`` (then an existing one is handed back for the stage to check).
    The rules are those of :func:`check_output_dir`.
    """
    if output is None:
        return next_run_dir(stage)
    out, _ = check_output_dir(output, stage, resumable=resumable)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ArtefactError(f"{out}: cannot be created ({exc.strerror or exc}); choose another -o directory") from None
    return out
