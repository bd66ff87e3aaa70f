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


def prepare_output_dir(output: str | Path | None, stage: str, *, resumable: bool = False) -> Path:
    """Resolve a stage's output directory, creating it.

    ``None`` gives a fresh numbered run directory. An explicit directory must be empty or absent,
    unless the stage is ``resumable`` (then an existing one is handed back for the stage to check).
    """
    if output is None:
        return next_run_dir(stage)
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise ArtefactError(f"{out}: exists and is a file; give -o a directory path")
    if out.is_dir() and any(out.iterdir()) and not resumable:
        what = "a finished artefact" if (out / MANIFEST_NAME).is_file() else "not empty"
        raise ArtefactError(f"{out}: is {what}; choose a new -o directory or remove it")
    out.mkdir(parents=True, exist_ok=True)
    if not os.access(out, os.W_OK):
        raise ArtefactError(f"{out}: is not writable")
    return out
