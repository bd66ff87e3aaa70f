"""PASCAL VOC2012 segmentation adapter."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from zutiscli.artefacts.groundtruth import PrepareResult, _GtWriter
from zutiscli.artefacts.labelmap import IGNORE_8BIT, read_label_map
from zutiscli.artefacts.manifest import relative_to
from zutiscli.data.datasets.common import Log, Progress
from zutiscli.errors import ArtefactError

if TYPE_CHECKING:
    from zutiscli.data.prepare_config import PrepareConfig


VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")


def _voc_root(root: Path) -> Path:
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir() and (candidate / "SegmentationClass").is_dir():
            return candidate
    raise ArtefactError(f"--root {root}: no JPEGImages/ and SegmentationClass/ found (give VOCdevkit/VOC2012)")


def prepare_voc(config: PrepareConfig, root: Path, out: Path | None, progress: Progress | None, log: Log,
                 dry: bool) -> PrepareResult | None:
    """PASCAL VOC2012 segmentation (default split ``val``, 1,449 images).

    Semantic: ``SegmentationClass`` as is (0 background, 1..20 classes, 255 void). Instances:
    each index of ``SegmentationObject`` (not 0 or 255) is one instance, its class the majority
    ``SegmentationClass`` value under it.
    """
    voc = _voc_root(root)
    split = config.split or "val"
    listing = voc / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not listing.is_file():
        raise ArtefactError(f"{listing}: no such split list (splits: train, val, trainval)")
    stems = [line.strip().split()[0] for line in listing.read_text().splitlines() if line.strip()]
    has_objects = (voc / "SegmentationObject").is_dir()
    if dry:
        return None
    assert out is not None
    from zutiscli.artefacts.coco import CocoBuilder

    coco = CocoBuilder(list(VOC_CLASSES), info={"description": f"PASCAL VOC2012 {split}"})
    writer = _GtWriter(out, "voc2012", ["background", *VOC_CLASSES])
    for number, stem in enumerate(stems, start=1):
        image = voc / "JPEGImages" / f"{stem}.jpg"
        values, _ = read_label_map(voc / "SegmentationClass" / f"{stem}.png")
        height, width = values.shape
        writer.add_image(image, width, height, stem, np.where(values == IGNORE_8BIT, 0, values),
                         values == IGNORE_8BIT)
        image_id = coco.add_image(relative_to(out, image), width, height)
        writer.images[-1]["id"] = image_id
        if has_objects:
            objects, _ = read_label_map(voc / "SegmentationObject" / f"{stem}.png")
            for k in np.unique(objects):
                if k == 0 or k == IGNORE_8BIT:
                    continue
                mask = objects == k
                classes = values[mask]
                classes = classes[(classes > 0) & (classes <= len(VOC_CLASSES))]
                if classes.size == 0:
                    continue
                cls = int(np.bincount(classes).argmax())
                coco.add_mask(image_id, VOC_CLASSES[cls - 1], mask)
        if progress is not None:
            progress(number, len(stems))
    return writer.finish({"root": relative_to(out, voc), "split": split},
                         coco.to_dict() if has_objects else None)
