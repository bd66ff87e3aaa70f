"""Per-class archives (kind ``zutis.archives``): ``archives.json``, its writer's text form and its reader.

``archives.json`` is ``{"k": K, "indices": [...], "classes": {name: {"phrase": ..., "images": [{"path",
"score", "index", "row"}, ...]}}}``, best hit first, paths relative to the directory; one line per
class header and per hit, so it greps.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from zutiscli.artefacts.manifest import read_manifest, resolve_relative
from zutiscli.errors import ArtefactError

ARCHIVES_NAME = "archives.json"


@dataclass(frozen=True)
class ArchiveHit:
    """One image of an archive: ``path`` absolute (resolved), ``score`` cosine similarity, its index and row."""

    path: Path
    score: float
    index: int
    row: int


def archives_text(k: int, indices: Sequence[str], classes: dict[str, Any]) -> str:
    """``archives.json`` as text: valid JSON with one line per class header and per hit (grep-able)."""
    def dump(value: Any) -> str:
        return json.dumps(value, ensure_ascii=False, allow_nan=False)

    lines = ["{", f' "k": {dump(k)},', f' "indices": {dump(list(indices))},', ' "classes": {']
    names = list(classes)
    for position, name in enumerate(names):
        entry = classes[name]
        lines.append(f'  {dump(name)}: {{"phrase": {dump(entry["phrase"])}, "images": [')
        hits = entry["images"]
        lines.extend(f"   {dump(hit)}{',' if i + 1 < len(hits) else ''}" for i, hit in enumerate(hits))
        lines.append("  ]}" + ("," if position + 1 < len(names) else ""))
    lines.extend([" }", "}"])
    return "\n".join(lines) + "\n"


def read_archives(directory: str | Path) -> dict[str, list[ArchiveHit]]:
    """Read a ``zutis.archives`` directory: class name -> hits best first, paths resolved.

    Raises :class:`ArtefactError` (naming the file) when it is not a finished archives directory.
    """
    manifest = read_manifest(directory, "zutis.archives")
    path = Path(manifest.root or directory) / ARCHIVES_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {
            name: [ArchiveHit(resolve_relative(path.parent, hit["path"]), float(hit["score"]), int(hit["index"]),
                              int(hit["row"])) for hit in entry["images"]]
            for name, entry in data["classes"].items()
        }
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtefactError(f"{path}: unreadable archives ({exc}); the artefact is corrupt") from None


def archive_phrases(directory: str | Path) -> dict[str, str]:
    """Class name -> the phrase its archive was retrieved with, of a ``zutis.archives`` directory."""
    manifest = read_manifest(directory, "zutis.archives")
    path = Path(manifest.root or directory) / ARCHIVES_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {name: str(entry.get("phrase") or name) for name, entry in data["classes"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ArtefactError(f"{path}: unreadable archives ({exc}); the artefact is corrupt") from None
