"""The ground-truth class of each pseudo-label mask, from a COCO instances JSON of the same images.

Images are paired by path: a ground-truth image whose ``file_name``, joined to the JSON's folder,
is the mask's image file; else the one whose ``file_name`` is the longest tail of that file's path
(``val2017/0001.jpg`` pairs with ``/data/coco/val2017/0001.jpg``); else the only one of that file
name; a pair must agree on the image size. Within a pair of images, each mask takes the class of the
(non-crowd) instance it overlaps best, when that IoU reaches the threshold
(:func:`zutiscli.ops.cluster_quality.best_overlap_labels`); other masks stay unmatched (-1).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

import numpy as np

from zutiscli.artefacts.coco import load_coco
from zutiscli.errors import ArtefactError, UsageError

__all__ = ["TruthLabels", "truth_labels"]


@dataclass
class TruthLabels:
    """Ground-truth classes of a list of masks.

    Attributes:
        labels: ``(N,)`` int64, index into ``classes`` of each mask's class, -1 when unmatched.
        classes: the ground truth's category names, in category id order.
        images: distinct images of the masks; ``images_paired``: how many of them the ground truth has
            (paired, and of the same size).
    """

    labels: np.ndarray
    classes: list[str]
    images: int
    images_paired: int


def _tail(file_name: str) -> tuple[str, ...]:
    """The parts of a ``file_name`` that a path must end with (``.``/``..`` and roots dropped)."""
    parts = PurePosixPath(file_name.replace("\\", "/")).parts
    return tuple(part for part in parts if part not in (".", "..", "/"))


class _ImagePairs:
    """Finds the ground-truth image record of an image file (see the module docstring)."""

    def __init__(self, gt_file: Path, images: list[dict[str, Any]]):
        self.exact: dict[str, dict[str, Any]] = {}
        self.by_name: dict[str, list[tuple[tuple[str, ...], dict[str, Any]]]] = {}
        folder = os.path.abspath(gt_file.parent)
        for record in images:
            name = record.get("file_name")
            if not isinstance(name, str) or not name.strip():
                raise ArtefactError(f"{gt_file}: image {record.get('id')}: field 'file_name' is {name!r}, not a path; "
                                    f"give a COCO instances JSON whose images name their files")
            self.exact.setdefault(os.path.normpath(os.path.join(folder, name)), record)
            tail = _tail(name)
            if tail:
                self.by_name.setdefault(tail[-1], []).append((tail, record))

    def find(self, path: Path) -> dict[str, Any] | None:
        full = os.path.normpath(os.path.abspath(path))
        if full in self.exact:
            return self.exact[full]
        parts = Path(full).parts
        candidates = self.by_name.get(parts[-1], [])
        if len(candidates) == 1:
            return candidates[0][1]
        matching = [(len(tail), record) for tail, record in candidates if parts[-len(tail):] == tail]
        if not matching:
            return None
        longest = max(length for length, _ in matching)
        best = [record for length, record in matching if length == longest]
        return best[0] if len(best) == 1 else None


def truth_labels(gt_file: str | Path, paths: Sequence[Path], rles: Sequence[dict[str, Any]],
                 threshold: float = 0.5) -> TruthLabels:
    """The ground-truth class of each mask (``paths[i]``'s image, ``rles[i]`` its mask).

    Raises :class:`ArtefactError` (naming the file) when ``gt_file`` is not a COCO instances JSON,
    and :class:`UsageError` when none of its images is an image of the masks.
    """
    from zutiscli.ops.cluster_quality import best_overlap_labels
    from zutiscli.ops.masks import rle_iou_matrix, segmentation_to_rle

    gt_file = Path(gt_file)
    data = load_coco(gt_file)
    categories = sorted(data["categories"], key=lambda c: c["id"])
    class_of = {c["id"]: number for number, c in enumerate(categories)}
    classes = [str(c.get("name", c["id"])) for c in categories]
    pairs = _ImagePairs(gt_file, data["images"])
    instances: dict[Any, list[dict[str, Any]]] = {}
    for ann in data["annotations"]:
        if not ann.get("iscrowd", 0) and ann.get("segmentation") is not None:
            instances.setdefault(ann["image_id"], []).append(ann)

    by_image: dict[Path, list[int]] = {}
    for position, path in enumerate(paths):
        by_image.setdefault(Path(path), []).append(position)
    labels = np.full(len(paths), -1, dtype=np.int64)
    paired = resized = 0
    for path, positions in by_image.items():
        record = pairs.find(path)
        if record is None:
            continue
        height, width = (int(v) for v in rles[positions[0]]["size"])
        if (record.get("height"), record.get("width")) not in ((height, width), (None, None)):
            resized += 1  # another picture of the same name, or another size: its instances do not lie over these masks
            continue
        paired += 1
        anns = instances.get(record["id"], [])
        try:
            truth = [segmentation_to_rle(ann["segmentation"], height, width) for ann in anns]
        except (TypeError, ValueError, KeyError) as exc:
            raise ArtefactError(f"{gt_file}: image {record['id']}: an instance's 'segmentation' is not a polygon "
                                f"or RLE ({exc}); give a valid COCO instances JSON") from None
        truth_sizes = [ann for ann, rle in zip(anns, truth) if list(rle["size"]) != [height, width]]
        if truth_sizes:
            raise ArtefactError(f"{gt_file}: annotation {truth_sizes[0].get('id')}: its RLE is not of its image's "
                                f"size {height} x {width}")
        iou = rle_iou_matrix([rles[p] for p in positions], truth)
        classes_of_truth = np.array([class_of[ann["category_id"]] for ann in anns], dtype=np.int64)
        labels[positions] = best_overlap_labels(iou, classes_of_truth, threshold)
    if paired == 0:
        sizes = f", {resized} of the same name have another size" if resized else ""
        raise UsageError(f"--ground-truth {gt_file}: none of its {len(data['images'])} images is one of the "
                         f"{len(by_image)} pseudo-labelled images (paired by relative path or file name{sizes}); "
                         f"give the ground truth of the same images")
    return TruthLabels(labels, classes, len(by_image), paired)


def stuff_truth_labels(gt_file: str | Path, paths: Sequence[Path], grids: Sequence[tuple[int, int]],
                       image: np.ndarray, cell: np.ndarray, share: float = 0.5) -> TruthLabels | None:
    """The ground-truth class of each stuff sample (a patch ``cell[i]`` of image ``paths[image[i]]``,
    on that image's patch grid ``grids[image[i]]``), from the semantic maps a COCO instances JSON
    names (field ``semantic`` of its images, a label PNG relative to the JSON's folder) and the
    label names of the ``classes.txt`` beside it (label ``i`` = line ``i``).

    A sample takes the label covering at least ``share`` of its patch (-1 otherwise, or when its
    image is not paired); ``classes`` are the names of the labels, background included. ``None``
    when the ground truth has no semantic maps or no names for them (a pile drawn without stuff).
    """
    from zutiscli.artefacts.groundtruth import CLASSES_FILE, read_names_file
    from zutiscli.artefacts.labelmap import read_label_png
    from zutiscli.engine.stuff_features import cell_shares

    gt_file = Path(gt_file)
    names_file = gt_file.parent / CLASSES_FILE
    data = load_coco(gt_file)
    if not names_file.is_file() or not any(isinstance(r.get("semantic"), str) for r in data["images"]):
        return None
    classes = read_names_file(names_file)
    pairs = _ImagePairs(gt_file, data["images"])
    labels = np.full(len(cell), -1, dtype=np.int64)
    rows_of: dict[int, list[int]] = {}
    for row, owner in enumerate(image.tolist()):
        rows_of.setdefault(owner, []).append(row)
    paired = 0
    for owner, rows in rows_of.items():
        record = pairs.find(Path(paths[owner]))
        if record is None or not isinstance(record.get("semantic"), str):
            continue
        semantic_file = gt_file.parent / record["semantic"]
        try:
            semantic = read_label_png(semantic_file)
        except (OSError, ValueError) as exc:
            raise ArtefactError(f"{semantic_file}: cannot be read as a label map ({exc}); give the ground truth "
                                f"`zutis synth` wrote") from None
        paired += 1
        present = [int(v) for v in np.unique(semantic) if 0 <= v < len(classes)]
        shares = np.stack([cell_shares(semantic == value, grids[owner]).reshape(-1) for value in present])
        best = shares.argmax(0)
        chosen = cell[rows]
        winner = np.asarray(present, dtype=np.int64)[best[chosen]]
        labels[rows] = np.where(shares[best[chosen], chosen] >= share, winner, -1)
    if paired == 0:
        return None
    return TruthLabels(labels, classes, len(rows_of), paired)


#: A named semantic label is in an image when it covers at least this share of its pixels.
LABEL_PRESENT = 0.005


def image_classes(gt_file: str | Path, paths: Sequence[Path]) -> list[set[str] | None]:
    """The class names each image holds according to a COCO instances JSON: its instances'
    categories, and with semantic maps named by a ``classes.txt`` beside the JSON the labels other
    than background covering at least :data:`LABEL_PRESENT` of it. ``None`` for an image the JSON
    does not have (paired as in :func:`truth_labels`); a :class:`UsageError` when it has none of them.
    """
    from zutiscli.artefacts.groundtruth import CLASSES_FILE, read_names_file
    from zutiscli.artefacts.labelmap import read_label_png

    gt_file = Path(gt_file)
    data = load_coco(gt_file)
    names = {c["id"]: str(c.get("name", c["id"])) for c in data["categories"]}
    label_names = read_names_file(gt_file.parent / CLASSES_FILE) if (gt_file.parent / CLASSES_FILE).is_file() else None
    present: dict[Any, set[str]] = {}
    for ann in data["annotations"]:
        if not ann.get("iscrowd", 0):
            present.setdefault(ann["image_id"], set()).add(names[ann["category_id"]])
    pairs = _ImagePairs(gt_file, data["images"])
    found: list[set[str] | None] = []
    for path in paths:
        record = pairs.find(Path(path))
        if record is None:
            found.append(None)
            continue
        classes = set(present.get(record["id"], set()))
        if label_names is not None and isinstance(record.get("semantic"), str):
            labels = read_label_png(gt_file.parent / record["semantic"])
            counts = np.bincount(labels.reshape(-1), minlength=len(label_names))
            classes |= {label_names[v] for v in np.flatnonzero(counts >= LABEL_PRESENT * labels.size)
                        if v < len(label_names) and label_names[v] != "background"}
        found.append(classes)
    if all(item is None for item in found):
        raise UsageError(f"--ground-truth {gt_file}: none of its {len(data['images'])} images is one of the {len(paths)} "
                         f"images (paired by relative path or file name); give the ground truth of the same images")
    return found
