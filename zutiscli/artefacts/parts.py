"""Committed parts of a resumable stage's results: ``DIR/parts/NNNNNN.jsonl``, one JSON row per input.

A resumable stage (``zutis pseudolabel``, ``zutis predict``) commits its per-image rows in chunks as
it goes, each chunk one file written atomically (whole or absent after a kill), and assembles its
artefact from them at the end; a rerun into the same directory skips the inputs that have a row.
Every row has a ``"path"`` (the input, relative to the directory); the rest is the stage's.
``parts/run.json`` records what decides the rows (model and settings): a rerun with other settings
is refused (:func:`check_run`) rather than mixing the rows of two settings in one artefact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Iterator

from zutiscli.artefacts.atomic import atomic_write_json, atomic_write_text
from zutiscli.artefacts.lock import is_temporary
from zutiscli.errors import ArtefactError

PARTS_DIR = "parts"
RUN_NAME = "run.json"  # in PARTS_DIR

__all__ = ["PARTS_DIR", "RUN_NAME", "check_run", "committed_parts", "count_parts", "iter_parts", "read_parts",
           "record_run", "write_part"]


def _as_json(identity: dict[str, Any]) -> Any:
    return json.loads(json.dumps(identity, default=str))


def check_run(directory: str | Path, identity: dict[str, Any], stage: str) -> bool:
    """Whether ``directory`` records the settings of its rows (``parts/run.json``); raises
    :class:`ArtefactError` naming the first setting that differs from ``identity`` (a mapping of
    JSON values, e.g. ``{"model": ..., "params": {...}}``; nested mappings are compared key by key)."""
    from zutiscli.artefacts.manifest import read_json

    run_file = Path(directory) / PARTS_DIR / RUN_NAME
    if not run_file.is_file():
        return False
    recorded, ours = read_json(run_file, f"the settings of `zutis {stage}`'s results"), _as_json(identity)
    if recorded != ours:
        differs, a, b = "settings", recorded, ours
        while isinstance(a, dict) and isinstance(b, dict):
            key = next((k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)), None)
            if key is None:
                break
            differs, a, b = key, a.get(key), b.get(key)
        raise ArtefactError(f"{directory}: holds `zutis {stage}` results made with another {differs}; rerun with the "
                            f"same settings to finish them, or choose a new -o directory (or remove it)")
    return True


def committed_parts(directory: str | Path, identity: dict[str, Any], stage: str) -> bool:
    """Whether ``directory`` holds committed parts to go on from, made with ``identity``; raises
    :class:`ArtefactError` when they were made with other settings (:func:`check_run`) or their
    settings are missing. A directory with no part has nothing to keep, whatever its settings."""
    if not count_parts(directory):
        return False
    if not check_run(directory, identity, stage):
        raise ArtefactError(f"{Path(directory) / PARTS_DIR}: holds results without the settings they were made "
                            f"with ({RUN_NAME}); remove {directory} or choose a new -o directory")
    return True


def record_run(directory: str | Path, identity: dict[str, Any]) -> Path:
    """Write ``parts/run.json`` (the folder must exist): what decides the rows, for :func:`check_run`."""
    return atomic_write_json(Path(directory) / PARTS_DIR / RUN_NAME, _as_json(identity))


def _parts(directory: str | Path) -> list[Path]:
    """The committed parts, by name (an atomic write's temporary that a kill left is none)."""
    return sorted(p for p in (Path(directory) / PARTS_DIR).glob("*.jsonl") if not is_temporary(p.name))


def iter_parts(directory: str | Path, what: str = "row") -> Iterator[tuple[Path, list[dict[str, Any]]]]:
    """Each committed part of ``directory`` in order, with its rows. Raises :class:`ArtefactError`,
    naming the file, on a line that is not such a row (``what`` names the row in the message)."""
    for part in _parts(directory):
        rows = []
        for number, line in enumerate(part.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                    if not isinstance(row, dict) or not isinstance(row["path"], str):
                        raise TypeError
                except (ValueError, KeyError, TypeError):
                    raise ArtefactError(f"{part}: line {number} is not a {what}; "
                                        f"delete the file and rerun to redo its images") from None
                rows.append(row)
        yield part, rows


def read_parts(directory: str | Path, what: str = "row") -> dict[str, dict[str, Any]]:
    """The committed rows of ``directory``: input path (relative) -> row; a later row for the same
    path wins. Raises :class:`ArtefactError`, naming the file, on a line that is not such a row
    (``what`` names the row in the message)."""
    return {row["path"]: row for _, rows in iter_parts(directory, what) for row in rows}


def count_parts(directory: str | Path) -> int:
    """How many parts ``directory`` holds (the next part's number)."""
    return len(_parts(directory))


def write_part(directory: str | Path, number: int, rows: Iterable[dict[str, Any]]) -> Path:
    """Commit rows atomically as ``parts/<number>.jsonl`` (the folder must exist)."""
    text = "".join(json.dumps(row) + "\n" for row in rows)
    return atomic_write_text(Path(directory) / PARTS_DIR / f"{number:06d}.jsonl", text)
