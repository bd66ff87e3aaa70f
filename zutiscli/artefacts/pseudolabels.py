"""The pseudo-label artefact: one or more object masks per image, named by the image's archive, or
unnamed for a pile of images (one category, ``object``; ``params.source`` in the manifest says which:
``archives``, ``index`` or ``images``).

Layout of a pseudo-label directory (kind ``zutis.pseudolabels``)::

    manifest.json
    pseudolabels.json   COCO instances: images (file_name relative to this directory, width,
                        height, "archive": class name, "rank" in the archive), annotations (RLE
                        mask, area, bbox, category = the archive's class, "score" where the
                        method gives one), categories (the archive classes, ids 1..C in order)
    empty.jsonl         archive images on which the method found no object: {"path", "class"}
    failed.jsonl        archive images that could not be read: {"path", "class", "reason"}
    parts/*.jsonl       the per-image results as they were committed (what a resumed run skips):
                        {"path", "masks": [{"rle", "score"}], "width", "height"} or {"path",
                        "masks": [], "failed": reason}; one row per distinct image

Canonical order (the same however the work was split, so a merged sharded run equals the unsharded
one): images by archive (the categories' order), then by rank in the archive (a pile: by absolute
path); an image in several archives has one image record per archive. Annotations by image, then
by area (largest first).
Image and annotation ids count from 1 in that order; ``empty.jsonl`` and ``failed.jsonl`` follow
the same image order.

A run split with ``--shard I/N`` writes one such directory per shard (``shard-I-of-N``, with
``params.shard = [I, N]`` in its manifest); ``zutis pseudolabel merge`` joins them.

The copy-paste stage reads only this directory, so any mask source that writes this layout
(another saliency model, human masks for an upper bound) plugs into the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zutiscli.artefacts.coco import load_coco
from zutiscli.artefacts.manifest import Manifest, read_manifest, resolve_relative
from zutiscli.errors import ArtefactError

PSEUDOLABELS_NAME = "pseudolabels.json"
EMPTY_NAME = "empty.jsonl"
FAILED_NAME = "failed.jsonl"


@dataclass(frozen=True)
class PseudoObject:
    """One object mask of the pool: its image (absolute path), RLE, class index (0-based), score,
    image id, and its annotation's id in ``pseudolabels.json`` (its position from 1 where the
    annotation has no integer id)."""

    image: Path
    rle: dict[str, Any]
    class_index: int
    score: float | None
    image_id: int
    annotation_id: int = 0


@dataclass
class PseudoLabels:
    """A loaded pseudo-label directory: class names and objects grouped by class."""

    directory: Path
    manifest: Manifest
    classes: list[str]
    objects: list[PseudoObject]

    def by_class(self) -> list[list[PseudoObject]]:
        """Objects per class index, in file order."""
        groups: list[list[PseudoObject]] = [[] for _ in self.classes]
        for obj in self.objects:
            groups[obj.class_index].append(obj)
        return groups

    def by_image(self) -> dict[int, list[PseudoObject]]:
        """Objects per image id, in file order."""
        groups: dict[int, list[PseudoObject]] = {}
        for obj in self.objects:
            groups.setdefault(obj.image_id, []).append(obj)
        return groups


def load_pseudolabels(directory: str | Path, *, check_masks: bool = True) -> PseudoLabels:
    """Read and validate a pseudo-label directory; errors name the file, the record and the field.

    ``check_masks``: check every RLE (see :func:`zutiscli.ops.masks.rle_problems`); a process that
    reads a directory already checked by its parent may skip it.
    """
    from zutiscli.ops.masks import rle_problems

    directory = Path(directory)
    manifest = read_manifest(directory, "zutis.pseudolabels")
    file = directory / PSEUDOLABELS_NAME
    coco = load_coco(file)
    remedy = "the pseudo-labels are damaged: make them again with `zutis pseudolabel` into a new -o directory"
    ids = [c["id"] for c in coco["categories"]]
    if not all(isinstance(i, int) for i in ids) or sorted(ids) != list(range(1, len(ids) + 1)):
        raise ArtefactError(f"{file}: category ids must be 1..C in order")
    categories = sorted(coco["categories"], key=lambda c: c["id"])
    for category in categories:
        if not isinstance(category.get("name"), str):
            raise ArtefactError(f"{file}: category {category['id']}: field 'name' is not a string; {remedy}")
    images = {img["id"]: img for img in coco["images"]}
    for image in coco["images"]:
        _check_record(file, f"image {image['id']}", image, {"id": int, "file_name": str, "width": int, "height": int},
                      remedy)
    annotations = coco["annotations"]
    for ann in annotations:
        segmentation = ann.get("segmentation")
        if not isinstance(segmentation, dict) or "counts" not in segmentation:
            raise ArtefactError(f"{file}: annotation {ann.get('id')} has no RLE mask")
        if ann.get("score") is not None and not isinstance(ann["score"], (int, float)):
            raise ArtefactError(f"{file}: annotation {ann.get('id')}: field 'score' is not a number; {remedy}")
        image = images[ann["image_id"]]
        if segmentation.get("size") != [image["height"], image["width"]]:
            raise ArtefactError(f"{file}: annotation {ann.get('id')}: field 'segmentation.size' is "
                                f"{segmentation.get('size')!r}, not its image's [height, width] "
                                f"[{image['height']}, {image['width']}]; {remedy}")
    if check_masks:
        for position, problem in rle_problems([ann["segmentation"] for ann in annotations]).items():
            raise ArtefactError(f"{file}: annotation {annotations[position].get('id')}: field 'segmentation' "
                                f"{problem}; {remedy}")
    objects = []
    for position, ann in enumerate(annotations, 1):
        image = images[ann["image_id"]]
        ann_id = ann.get("id")
        objects.append(PseudoObject(
            image=resolve_relative(directory, image["file_name"]),
            rle=ann["segmentation"],
            class_index=int(ann["category_id"]) - 1,
            score=ann.get("score"),
            image_id=int(ann["image_id"]),
            annotation_id=ann_id if isinstance(ann_id, int) and not isinstance(ann_id, bool) else position,
        ))
    return PseudoLabels(directory, manifest, [c["name"] for c in categories], objects)


def _check_record(file: Path, what: str, record: dict[str, Any], fields: dict[str, type], remedy: str) -> None:
    for name, kind in fields.items():
        value = record.get(name)
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 1):
            expected = "a string" if kind is str else "an integer >= 1"
            raise ArtefactError(f"{file}: {what}: field {name!r} is {value!r}, not {expected}; {remedy}")
