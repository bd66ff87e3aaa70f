"""COCO instances JSON with RLE masks: build, write atomically, read with validation.

Files written here open unchanged in pycocotools, detectron2 and FiftyOne. ``file_name`` of an
image is a POSIX path relative to a recorded image root, never absolute.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from zutiscli.artefacts.atomic import atomic_write_json
from zutiscli.errors import ArtefactError
from zutiscli.ops.masks import encode_mask, rle_area, rle_bbox


class CocoBuilder:
    """Accumulates categories, images and mask annotations; ids start at 1 as in COCO."""

    def __init__(self, categories: list[str] | None = None, info: dict[str, Any] | None = None):
        self.info = dict(info or {})
        self.categories: list[dict[str, Any]] = []
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self._category_ids: dict[str, int] = {}
        for name in categories or []:
            self.category_id(name)

    def category_id(self, name: str, supercategory: str = "object") -> int:
        """Id of category ``name``, added on first use."""
        if name not in self._category_ids:
            new_id = len(self.categories) + 1
            self.categories.append({"id": new_id, "name": name, "supercategory": supercategory})
            self._category_ids[name] = new_id
        return self._category_ids[name]

    def add_image(self, file_name: str, width: int, height: int, **extra: Any) -> int:
        """Add an image record; returns its id."""
        image_id = len(self.images) + 1
        self.images.append({"id": image_id, "file_name": file_name, "width": int(width), "height": int(height), **extra})
        return image_id

    def add_mask(
        self,
        image_id: int,
        category: str | int,
        mask: np.ndarray | dict[str, Any],
        *,
        score: float | None = None,
        **extra: Any,
    ) -> int:
        """Add one instance mask (``(H, W)`` array or an RLE dict); area and bbox are computed."""
        rle = mask if isinstance(mask, dict) else encode_mask(mask)
        category_id = category if isinstance(category, int) else self.category_id(category)
        ann_id = len(self.annotations) + 1
        ann: dict[str, Any] = {
            "id": ann_id,
            "image_id": int(image_id),
            "category_id": int(category_id),
            "segmentation": rle,
            "area": rle_area(rle),
            "bbox": rle_bbox(rle),
            "iscrowd": 0,
        }
        if score is not None:
            ann["score"] = float(score)
        ann.update(extra)
        self.annotations.append(ann)
        return ann_id

    def to_dict(self) -> dict[str, Any]:
        return {
            "info": self.info,
            "images": self.images,
            "annotations": self.annotations,
            "categories": self.categories,
        }

    def write(self, path: str | Path) -> Path:
        """Write the dataset atomically as compact JSON."""
        return atomic_write_json(path, self.to_dict(), indent=None)


def load_coco(path: str | Path) -> dict[str, Any]:
    """Read a COCO instances JSON and check its structure; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ArtefactError(f"{path}: no such file (expected a COCO instances JSON)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtefactError(f"{path}: is not valid JSON ({exc}); expected a COCO instances JSON") from None
    if not isinstance(data, dict):
        raise ArtefactError(f"{path}: is not a COCO instances JSON (top level is not an object)")
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data.get(k), list)]
    if missing:
        raise ArtefactError(f"{path}: is not a COCO instances JSON (no {', '.join(missing)} list)")
    for key, fields in (("images", ("id",)), ("categories", ("id",)), ("annotations", ("image_id", "category_id"))):
        for position, entry in enumerate(data[key]):
            if not isinstance(entry, dict):
                raise ArtefactError(f"{path}: {key}[{position}] is not an object; the file is corrupt")
            for field in fields:
                value = entry.get(field)
                if not isinstance(value, (int, str)) or isinstance(value, bool):
                    raise ArtefactError(f"{path}: {key}[{position}] has no valid {field!r} (an integer); "
                                        f"the file is corrupt")
    image_ids = {img.get("id") for img in data["images"]}
    category_ids = {cat.get("id") for cat in data["categories"]}
    for ann in data["annotations"]:
        if ann.get("image_id") not in image_ids:
            raise ArtefactError(f"{path}: annotation {ann.get('id')} refers to unknown image {ann.get('image_id')}")
        if ann.get("category_id") not in category_ids:
            raise ArtefactError(
                f"{path}: annotation {ann.get('id')} refers to unknown category {ann.get('category_id')}"
            )
    return data
