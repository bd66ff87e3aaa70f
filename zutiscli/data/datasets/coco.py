"""COCO adapters: COCO-20K (LOST's 19,817 COCO2014-train images) and COCO val2017."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from zutiscli.artefacts.coco import load_coco
from zutiscli.artefacts.groundtruth import PrepareResult, _GtWriter, _norm, _rasterise, _stem
from zutiscli.artefacts.manifest import relative_to
from zutiscli.data.datasets.common import Log, Progress
from zutiscli.errors import ArtefactError, UsageError

if TYPE_CHECKING:
    from zutiscli.data.prepare_config import PrepareConfig


COCO20K_SIZE = 19_817


def _coco_images_dir(root: Path, split: str) -> tuple[Path, Path]:
    annotations = root / "annotations" / f"instances_{split}.json"
    if not annotations.is_file():
        raise ArtefactError(f"--root {root}: no annotations/instances_{split}.json; point --root at the COCO directory "
                            f"holding annotations/ and {split}/")
    images = root / split
    if not images.is_dir():
        raise ArtefactError(f"--root {root}: no {split}/ image directory")
    return annotations, images


def _rebased_coco(data: dict[str, Any], images_dir: Path, out: Path, keep: set[int] | None) -> dict[str, Any]:
    images = [dict(img, file_name=relative_to(out, images_dir / img["file_name"]))
              for img in data["images"] if keep is None or int(img["id"]) in keep]
    anns = [a for a in data["annotations"] if keep is None or int(a["image_id"]) in keep]
    return {"info": dict(data.get("info") or {}), "images": images, "annotations": anns,
            "categories": data["categories"]}


def prepare_coco20k(config: PrepareConfig, root: Path, out: Path | None, progress: Progress | None, log: Log,
                     dry: bool) -> PrepareResult | None:
    """COCO-20K: the 19,817 COCO2014-train images of LOST's ``coco_20k_filenames.txt`` (instances only).

    The list is not shipped with any library here: pass it with ``--file-list``. Lines are file
    names (``COCO_train2014_000000000009.jpg``, with or without a directory); an image is chosen
    by its file name, or by the COCO id in the name's last ``_`` field when names differ.
    """
    if not config.file_list:
        raise UsageError("coco20k needs LOST's list of its 19,817 file names (coco_20k_filenames.txt from the LOST "
                         "repository; no library here ships it): pass --file-list coco_20k_filenames.txt")
    listed = Path(config.file_list)
    if not listed.is_file():
        raise ArtefactError(f"--file-list {listed}: no such file")
    annotations, images_dir = _coco_images_dir(root, config.split or "train2014")
    if dry:
        return None
    names = [line.strip() for line in listed.read_text(encoding="utf-8").splitlines() if line.strip()]
    log(f"reading {annotations}")
    data = load_coco(annotations)
    by_name = {Path(img["file_name"]).name: int(img["id"]) for img in data["images"]}
    ids = {int(img["id"]) for img in data["images"]}
    keep: set[int] = set()
    unknown = []
    for name in names:
        base = Path(name).name
        if base in by_name:
            keep.add(by_name[base])
            continue
        digits = base.rsplit("_", 1)[-1].split(".")[0]
        if digits.isdigit() and int(digits) in ids:
            keep.add(int(digits))
        else:
            unknown.append(name)
    if unknown:
        raise ArtefactError(f"--file-list {listed}: {len(unknown)} name(s) are not in {annotations} "
                            f"(first: {unknown[0]!r}); is --root the COCO2014 directory?")
    if len(keep) != COCO20K_SIZE:
        log(f"note: the list names {len(keep)} images, not the {COCO20K_SIZE:,} of COCO-20K")
    assert out is not None
    instances = _rebased_coco(data, images_dir, out, keep)
    writer = _GtWriter(out, "coco20k", ["background"] + [_norm(c["name"]) for c in data["categories"]])
    for img in instances["images"]:
        writer.images.append({"id": int(img["id"]), "file_name": img["file_name"], "stem": _stem(img["file_name"]),
                              "width": img["width"], "height": img["height"]})
    return writer.finish({"root": relative_to(out, root), "file_list": str(listed), "split": config.split or "train2014"},
                         instances)


def prepare_coco_val2017(config: PrepareConfig, root: Path, out: Path | None, progress: Progress | None, log: Log,
                          dry: bool) -> PrepareResult | None:
    """COCO val2017: instances as they are, plus semantic label PNGs of the 80 thing classes + background.

    Label i is the i-th category in id order (1..80, as ZUTIS renumbers them); 0 is background;
    pixels claimed by two classes are 255 (ignore). Crowd regions count as their class.
    """
    split = config.split or "val2017"
    annotations, images_dir = _coco_images_dir(root, split)
    if dry:
        return None
    assert out is not None
    data = load_coco(annotations)
    cats = sorted(data["categories"], key=lambda c: int(c["id"]))
    index_of = {int(c["id"]): i + 1 for i, c in enumerate(cats)}
    writer = _GtWriter(out, "coco-val2017", ["background"] + [_norm(c["name"]) for c in cats])
    by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(int(ann["image_id"]), []).append(ann)
    instances = _rebased_coco(data, images_dir, out, None)
    for number, img in enumerate(data["images"], start=1):
        labels = _rasterise(by_image.get(int(img["id"]), []), int(img["height"]), int(img["width"]), index_of)
        writer.add_image(images_dir / img["file_name"], img["width"], img["height"], _stem(img["file_name"]),
                         np.where(labels < 0, 0, labels), labels < 0, image_id=int(img["id"]))
        if progress is not None:
            progress(number, len(data["images"]))
    return writer.finish({"root": relative_to(out, root), "split": split}, instances)
