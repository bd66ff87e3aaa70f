"""The hypotheses artefact (kind ``zutis.hypotheses``): the classes each image is thought to hold,
what ``zutis hypotheses`` writes (ReCLIP++'s image-level label hypotheses).

Layout::

    manifest.json       kind zutis.hypotheses; model; params (classes, window, threshold, mode);
                        summary {"images", "failed", "mean_classes", with ground truth "precision",
                        "recall", "per_class"}
    hypotheses.jsonl    one line per image, in input order: {"image": path relative to this
                        directory, "classes": [names, in class-list order], "frequency": {name:
                        share of the crops (mode crops) or softmax probability (mode image)}, only
                        non-zero ones}; an image that could not be read: {"image", "failed": reason}

Written atomically, the manifest last: a directory without one is unfinished.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zutiscli.artefacts.manifest import Manifest, read_manifest, resolve_relative
from zutiscli.errors import ArtefactError

KIND = "zutis.hypotheses"
HYPOTHESES_NAME = "hypotheses.jsonl"

_REMEDY = "the hypotheses are damaged: make them again with `zutis hypotheses` into a new -o directory"


@dataclass(frozen=True)
class Hypothesis:
    """One image's hypothesis: its path, the classes kept and every class's non-zero frequency
    (``failed``: why the image could not be read, and no classes)."""

    image: Path
    classes: tuple[str, ...]
    frequency: dict[str, float]
    failed: str | None = None


@dataclass
class Hypotheses:
    """A read ``zutis.hypotheses`` directory: its manifest, class list and one hypothesis per image."""

    path: Path
    manifest: Manifest
    classes: list[str]
    images: list[Hypothesis]


def read_hypotheses(directory: str | Path) -> Hypotheses:
    """Read a finished hypotheses directory; :class:`ArtefactError` naming the file and line when it is damaged."""
    manifest = read_manifest(directory, KIND)
    root = Path(manifest.root or directory)
    file = root / HYPOTHESES_NAME
    classes = manifest.params.get("classes")
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise ArtefactError(f"{root / 'manifest.json'}: field 'params.classes' is not a list of names; {_REMEDY}")
    known = set(classes)
    images = []
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ArtefactError(f"{file}: cannot be read ({exc}); {_REMEDY}") from None
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
            image = resolve_relative(root, row["image"])
            chosen = tuple(row.get("classes", []))
            frequency = {str(k): float(v) for k, v in (row.get("frequency") or {}).items()}
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ArtefactError(f"{file}: line {number} is not a hypothesis ({exc}); {_REMEDY}") from None
        if not set(chosen) <= known or not set(frequency) <= known:
            raise ArtefactError(f"{file}: line {number} names a class not in params.classes; {_REMEDY}")
        images.append(Hypothesis(image, chosen, frequency, row.get("failed")))
    return Hypotheses(root, manifest, list(classes), images)


def hypothesis_record(directory: Path, item: Hypothesis) -> dict[str, Any]:
    """The ``hypotheses.jsonl`` line of ``item`` (its image relative to ``directory``)."""
    from zutiscli.artefacts.manifest import relative_to

    if item.failed is not None:
        return {"image": relative_to(directory, item.image), "failed": item.failed}
    return {"image": relative_to(directory, item.image), "classes": list(item.classes),
            "frequency": {name: round(value, 6) for name, value in item.frequency.items() if value > 0}}
