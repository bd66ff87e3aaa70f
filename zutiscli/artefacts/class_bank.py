"""The class bank a training source carries: one embedding per class for sources whose classes
have no text, the clusters of ``zutis cluster`` (their centroids) or pseudo-labels re-mined from a
model trained on clusters (``class_bank.npy`` beside ``pseudolabels.json``, rows in category order).

``zutis train`` gives such a source's classes these rows as its classifier (the model's class bank).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zutiscli.artefacts.manifest import read_manifest

#: The class bank that travels with pseudo-labels re-mined from a model trained on clusters.
CLASS_BANK_NAME = "class_bank.npy"


@dataclass
class SourceBank:
    """The class bank of a training source: ``(C, D)`` float32 rows, what they are (``clip``
    features for centroids and class banks) and the model that embeds them (manifest record)."""

    rows: np.ndarray
    features: str
    model: dict[str, Any]


def source_class_bank(source: str | Path) -> SourceBank | None:
    """The class bank a training source carries: a clusters directory's centroids, or the class bank
    of pseudo-labels re-mined from a model trained on clusters; None for any other source."""
    source = Path(source)
    manifest = read_manifest(source)
    if manifest.kind == "zutis.clusters":
        from zutiscli.artefacts.clusters import read_clusters

        clusters = read_clusters(source)
        return SourceBank(np.ascontiguousarray(clusters.centroids, dtype=np.float32), clusters.features,
                          dict(clusters.manifest.model or {}))
    if manifest.kind == "zutis.pseudolabels" and (source / CLASS_BANK_NAME).is_file():
        rows = np.load(source / CLASS_BANK_NAME, allow_pickle=False)
        return SourceBank(np.ascontiguousarray(rows, dtype=np.float32), "clip", dict(manifest.model or {}))
    return None
