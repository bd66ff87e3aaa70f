"""What the dataset adapters share: the preparer signature and small file helpers."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

from PIL import Image

from zutiscli.artefacts.groundtruth import PrepareResult
from zutiscli.errors import ArtefactError

if TYPE_CHECKING:
    from zutiscli.data.prepare_config import PrepareConfig

Log = Callable[[str], None]
Progress = Callable[[int, int], None]
#: ``preparer(config, root, out, progress, log, dry)``: with ``dry`` it only checks the layout under
#: ``root`` (raising a one-line error) and returns None; else it writes the ground truth into ``out``.
Preparer = Callable[["PrepareConfig", Path, "Path | None", "Progress | None", Log, bool], "PrepareResult | None"]


def _unique_stems(paths: Sequence[Path], root: Path) -> list[str]:
    """File stems, or relative paths joined with ``__`` where stems collide."""
    stems = [p.stem for p in paths]
    counts: dict[str, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    return [s if counts[s] == 1 else "__".join(p.relative_to(root).with_suffix("").parts)
            for s, p in zip(stems, paths)]


def _find_dir(root: Path, candidates: Iterable[str], what: str) -> Path:
    for candidate in candidates:
        path = root / candidate
        if path.is_dir():
            return path
    raise ArtefactError(f"--root {root}: no {what} found (looked for {', '.join(candidates)})")


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as image:
            return image.size
    except OSError as exc:
        raise ArtefactError(f"{path}: cannot be read as an image ({exc})") from None
