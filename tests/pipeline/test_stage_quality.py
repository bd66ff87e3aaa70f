"""Scoring retrieval and pseudo-labels against a synthetic pile's hidden ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from zutiscli.artefacts.manifest import write_manifest
from zutiscli.pipeline.stage_quality import HiddenTruth, pseudolabel_quality, retrieval_precision


def _rle(box: tuple[int, int, int, int], size: int = 16) -> dict:
    mask = np.zeros((size, size), dtype=np.uint8)
    y0, y1, x0, x1 = box
    mask[y0:y1, x0:x1] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


@pytest.fixture
def pile(tmp_path: Path) -> Path:
    """Three images: a.png holds a star (rows 0-8), b.png a circle, c.png a star and a circle."""
    root = tmp_path / "pile"
    (root / "hidden").mkdir(parents=True)
    images = [{"id": i + 1, "file_name": f"images/{n}.png", "width": 16, "height": 16} for i, n in enumerate("abc")]
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 1, "segmentation": _rle((0, 8, 0, 8))},
        {"id": 2, "image_id": 2, "category_id": 2, "segmentation": _rle((0, 16, 0, 16))},
        {"id": 3, "image_id": 3, "category_id": 2, "segmentation": _rle((8, 16, 8, 16))},
        {"id": 4, "image_id": 3, "category_id": 1, "segmentation": _rle((0, 4, 0, 4))},
    ]
    categories = [{"id": 1, "name": "star"}, {"id": 2, "name": "circle"}]
    (root / "hidden" / "instances.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": categories}))
    return root


def _archives(tmp_path: Path, classes: dict[str, list[str]]) -> Path:
    root = tmp_path / "archives"
    root.mkdir()
    entries = {name: {"phrase": name, "images": [{"path": f"../pile/images/{f}.png", "score": 0.5, "index": 0, "row": i}
                                                 for i, f in enumerate(files)]}
               for name, files in classes.items()}
    (root / "archives.json").write_text(json.dumps({"k": 2, "indices": [], "classes": entries}))
    write_manifest(root, "zutis.archives")
    return root


def _pseudolabels(tmp_path: Path, objects: list[tuple[str, int, tuple]]) -> Path:
    root = tmp_path / "pseudolabels"
    root.mkdir()
    names = ["star", "circle"]
    images, annotations = [], []
    for number, (file, category, box) in enumerate(objects, start=1):
        images.append({"id": number, "file_name": f"../pile/images/{file}.png", "width": 16, "height": 16})
        annotations.append({"id": number, "image_id": number, "category_id": category, "segmentation": _rle(box)})
    (root / "pseudolabels.json").write_text(json.dumps({
        "images": images, "annotations": annotations,
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)]}))
    write_manifest(root, "zutis.pseudolabels")
    return root


def test_retrieval_precision_counts_images_that_truly_hold_the_class(tmp_path: Path, pile: Path) -> None:
    archives = _archives(tmp_path, {"star": ["a", "b", "c", "c"], "circle": ["b", "c"]})
    assert retrieval_precision(archives, HiddenTruth(pile)) == {"star": 0.75, "circle": 1.0}


def test_pseudo_masks_are_scored_against_the_best_true_object_of_their_class(tmp_path: Path, pile: Path) -> None:
    labels = _pseudolabels(tmp_path, [
        ("a", 1, (0, 8, 0, 8)),    # exact: IoU 1
        ("a", 1, (0, 8, 0, 4)),    # half of the star: IoU 0.5
        ("b", 1, (0, 8, 0, 8)),    # no star in b: IoU 0
        ("c", 2, (8, 16, 8, 16)),  # c's circle, not its star: IoU 1
    ])
    quality = pseudolabel_quality(labels, HiddenTruth(pile))
    assert quality["star"] == {"mean_iou": 0.5, "iou_at_least_0.5": pytest.approx(2 / 3, abs=1e-4), "masks": 3}
    assert quality["circle"] == {"mean_iou": 1.0, "iou_at_least_0.5": 1.0, "masks": 1}
