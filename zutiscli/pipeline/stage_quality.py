"""How good each stage's output is, measured against a synthetic pile's hidden ground truth.

``zutis synth pile`` keeps every image's true objects aside in ``hidden/instances.json``. With it,
the two stages before training can be scored on their own, so that a weak end result can be traced
to the stage that lost the quality:

- retrieval: for each archive (class name), the fraction of its images that truly hold an object
  of that class (precision at k);
- pseudo-labels: for each archive, the IoU of every pseudo-mask with the best-matching true object
  of the archive's class in its image (0 when the image holds none), its mean, and the fraction of
  masks with IoU >= 0.5.

Classes are matched by name: an archive named ``star`` is scored against true objects whose
category is ``star``. Units: fractions in [0, 1].
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from zutiscli.artefacts.coco import load_coco
from zutiscli.artefacts.manifest import resolve_relative


class HiddenTruth:
    """The true objects of a synthetic pile, by absolute image path and category name."""

    def __init__(self, pile_dir: str | Path):
        pile_dir = Path(pile_dir)
        coco = load_coco(pile_dir / "hidden" / "instances.json")
        names = {c["id"]: c["name"] for c in coco["categories"]}
        paths = {img["id"]: resolve_relative(pile_dir, img["file_name"]) for img in coco["images"]}
        self._objects: dict[Path, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
        for ann in coco["annotations"]:
            self._objects[paths[ann["image_id"]]].append((names[ann["category_id"]], ann["segmentation"]))

    def holds(self, image: Path, name: str) -> bool:
        """Whether ``image`` truly holds an object of class ``name``."""
        return any(cls == name for cls, _ in self._objects.get(image, ()))

    def masks(self, image: Path, name: str) -> list[dict[str, Any]]:
        """The RLEs of ``image``'s true objects of class ``name``."""
        return [rle for cls, rle in self._objects.get(image, ()) if cls == name]


def retrieval_precision(archives_dir: str | Path, truth: HiddenTruth) -> dict[str, float]:
    """``{archive name: precision}``: the fraction of the archive's images holding its class."""
    from zutiscli.artefacts.archives import read_archives

    precision = {}
    for name, archive in read_archives(archives_dir).items():
        hits = [truth.holds(hit.path, name) for hit in archive]
        precision[name] = round(float(np.mean(hits)), 4) if hits else 0.0
    return precision


def pseudolabel_quality(pseudolabels_dir: str | Path, truth: HiddenTruth) -> dict[str, dict[str, float]]:
    """``{class: {"mean_iou", "iou_at_least_0.5", "masks"}}`` of a pseudo-label directory."""
    from pycocotools import mask as mask_utils

    from zutiscli.artefacts.pseudolabels import load_pseudolabels

    labels = load_pseudolabels(pseudolabels_dir)
    ious: dict[str, list[float]] = {name: [] for name in labels.classes}
    for obj in labels.objects:
        name = labels.classes[obj.class_index]
        true = truth.masks(obj.image, name)
        best = float(mask_utils.iou([obj.rle], true, [0] * len(true)).max()) if true else 0.0
        ious[name].append(best)
    return {
        name: {"mean_iou": round(float(np.mean(values)), 4) if values else 0.0,
               "iou_at_least_0.5": round(float(np.mean(np.asarray(values) >= 0.5)), 4) if values else 0.0,
               "masks": len(values)}
        for name, values in ious.items()
    }
