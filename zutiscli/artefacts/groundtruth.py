"""Ground truth for ``zutis evaluate``: its reader, and the writer of prepared benchmarks.

Reads (:func:`load_ground_truth`), ``gt`` being one of
    - a COCO instances JSON; its ``file_name`` are resolved against the JSON's directory;
    - a directory written by ``zutis evaluate prepare`` (``gt.json`` describes it), or one holding
      ``instances.json`` and optionally ``semantic/`` and ``panoptic.json`` + ``panoptic/`` (as
      ``zutis synth scenes [--panoptic]`` writes);
    - a directory of label PNGs (``classes.txt`` inside or beside it names the values;
      line i names label i, line 0 is the background);
    - a COCO panoptic JSON (PNGs in the folder of the same stem, or ``gt_panoptic_dir``).

Label PNGs are 8-bit palette/greyscale (255 = ignore) or, for more than 255 classes (ImageNet-S),
16-bit greyscale (65535 = ignore). When the ground truth is an instances JSON, its semantic labels
are rasterised from its masks (:func:`_rasterise`: crowd regions included; pixels claimed by two
classes become ignore).

Writes (:class:`_GtWriter`, for ``zutis evaluate prepare``): ``gt.json`` (format ``zutis.gt``,
schema 1: dataset, params, classes, image records, where the semantic PNGs and instances are),
``classes.txt``, ``semantic/STEM.png`` and ``instances.json``.
"""

from __future__ import annotations

import os
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from zutiscli.artefacts.atomic import atomic_write_json, atomic_write_text
from zutiscli.artefacts.coco import load_coco
from zutiscli.artefacts.labelmap import IGNORE_8BIT, IGNORE_16BIT, write_label_map
from zutiscli.artefacts.manifest import read_json
from zutiscli.artefacts.manifest import relative_to
from zutiscli.errors import ArtefactError
from zutiscli.ops.masks import decode_mask, segmentation_to_rle

GT_INDEX = "gt.json"
CLASSES_FILE = "classes.txt"


def _norm(name: str) -> str:
    return unicodedata.normalize("NFC", str(name).strip())



def read_names_file(path: str | Path) -> list[str]:
    """A ``classes.txt`` of label names: line i names label i (blank lines end nothing: all kept,
    trailing blank lines dropped)."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ArtefactError(f"{path}: cannot read the class names ({exc})") from None
    lines = [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    return [_norm(line) for line in lines]


# ---- ground truth ---------------------------------------------------------------------------
@dataclass
class GtImage:
    """One ground-truth image: id (COCO id, or position), resolved path, stem, size in pixels."""

    id: int
    path: str | None
    stem: str
    width: int | None = None
    height: int | None = None
    semantic: Path | None = None  # label PNG, when the semantic GT is stored as PNGs


@dataclass
class GroundTruth:
    """What the ground truth offers: instances, semantic labels, panoptic segments."""

    source: Path
    images: list[GtImage]
    instances: dict[str, Any] | None = None
    semantic_names: list[str] | None = None  # index -> name; None = indices are the names
    semantic_from: str | None = None  # "labels" | "instances"
    panoptic: dict[str, Any] | None = None
    panoptic_dir: Path | None = None
    inputs: list[Path] = field(default_factory=list)

    @property
    def has_semantic(self) -> bool:
        return self.semantic_from is not None


def _json_kind(data: Any) -> str:
    if isinstance(data, list):
        return "results"
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        anns = data["annotations"]
        if anns and isinstance(anns[0], dict) and "segments_info" in anns[0]:
            return "panoptic"
        cats = data.get("categories") or []
        if not anns and cats and isinstance(cats[0], dict) and "isthing" in cats[0]:
            return "panoptic"
        return "instances"
    return "unknown"


def _resolve(root: Path, name: str) -> str:
    return os.path.realpath(os.path.join(root, name))


def _stem(name: str) -> str:
    return Path(str(name)).stem


def _label_dir_images(directory: Path) -> list[GtImage]:
    pngs = sorted(p for p in directory.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith("."))
    return [GtImage(i + 1, None, p.stem, semantic=p) for i, p in enumerate(pngs)]


def _names_near(directory: Path) -> list[str] | None:
    for candidate in (directory / CLASSES_FILE, directory.parent / CLASSES_FILE):
        if candidate.is_file():
            return read_names_file(candidate)
    return None


def _names_from_categories(categories: list[dict[str, Any]]) -> list[str]:
    """Label names when label value = category id (the shapes-world convention)."""
    top = max((int(c["id"]) for c in categories), default=0)
    names = [f"class {i}" for i in range(top + 1)]
    names[0] = "background"
    for cat in categories:
        names[int(cat["id"])] = _norm(cat["name"])
    return names


def load_ground_truth(gt: str | Path, gt_semantic: str | Path | None = None,
                      gt_panoptic_dir: str | Path | None = None) -> GroundTruth:
    """Read whatever ground truth ``gt`` is (see the module docstring); errors name the file."""
    gt = Path(gt)
    if not gt.exists():
        raise ArtefactError(f"--gt {gt}: no such file or directory")
    truth: GroundTruth
    if gt.is_file():
        data = read_json(gt, "a COCO instances or panoptic JSON")
        kind = _json_kind(data)
        if kind == "instances":
            truth = _instances_truth(gt, load_coco(gt))
        elif kind == "panoptic":
            truth = _panoptic_truth(gt, data, gt_panoptic_dir)
        else:
            raise ArtefactError(f"{gt}: is neither a COCO instances nor a COCO panoptic JSON (a results list "
                                f"is a prediction, not ground truth)")
    elif (gt / GT_INDEX).is_file():
        truth = _prepared_truth(gt)
    elif (gt / "instances.json").is_file():
        truth = _instances_truth(gt / "instances.json", load_coco(gt / "instances.json"))
        if gt_semantic is None and (gt / "semantic").is_dir():
            gt_semantic = gt / "semantic"
        if (gt / "panoptic.json").is_file():  # `zutis synth scenes --panoptic`: the same images' panoptic segments
            panoptic = _panoptic_truth(gt / "panoptic.json", read_json(gt / "panoptic.json", "a COCO panoptic JSON"),
                                       gt_panoptic_dir)
            truth.panoptic, truth.panoptic_dir = panoptic.panoptic, panoptic.panoptic_dir
            truth.inputs.append(gt / "panoptic.json")
    else:
        images = _label_dir_images(gt)
        if not images:
            raise ArtefactError(f"--gt {gt}: holds no {GT_INDEX}, instances.json or label PNGs; give a COCO JSON, "
                                f"a `zutis evaluate prepare` directory or a directory of label PNGs")
        truth = GroundTruth(gt, images, semantic_names=_names_near(gt), semantic_from="labels", inputs=[gt])
    if gt_semantic is not None:
        _attach_semantic(truth, Path(gt_semantic))
    elif truth.instances is not None and truth.semantic_from is None:
        truth.semantic_from = "instances"
        truth.semantic_names = ["background"] + [_norm(c["name"]) for c in truth.instances["categories"]]
    return truth


def _instances_truth(path: Path, data: dict[str, Any]) -> GroundTruth:
    root = path.parent
    images = [GtImage(int(img["id"]), _resolve(root, img["file_name"]), _stem(img["file_name"]),
                      img.get("width"), img.get("height")) for img in data["images"]]
    return GroundTruth(path, images, instances=data, inputs=[path])


def _panoptic_truth(path: Path, data: dict[str, Any], png_dir: str | Path | None) -> GroundTruth:
    folder = Path(png_dir) if png_dir is not None else _panoptic_folder(path)
    if folder is None or not folder.is_dir():
        raise ArtefactError(f"{path}: its panoptic PNGs are not in {path.with_suffix('')}; pass --gt-panoptic-dir DIR")
    root = path.parent
    images = [GtImage(int(img["id"]), _resolve(root, img["file_name"]), _stem(img["file_name"]),
                      img.get("width"), img.get("height")) for img in data.get("images", [])]
    return GroundTruth(path, images, panoptic=data, panoptic_dir=folder, inputs=[path])


def _panoptic_folder(json_path: Path) -> Path | None:
    for candidate in (json_path.with_suffix(""), json_path.parent / "panoptic"):
        if candidate.is_dir():
            return candidate
    return None


def _prepared_truth(directory: Path) -> GroundTruth:
    index = read_json(directory / GT_INDEX, "a `zutis evaluate prepare` index")
    if not isinstance(index, dict) or index.get("format") != "zutis.gt":
        raise ArtefactError(f"{directory / GT_INDEX}: is not a `zutis evaluate prepare` index")
    instances = None
    if index.get("instances"):
        instances = load_coco(directory / index["instances"])
    images = []
    semantic_dir = directory / index["semantic"] if index.get("semantic") else None
    for number, img in enumerate(index.get("images", []), start=1):
        stem = img.get("stem") or _stem(img["file_name"])
        images.append(GtImage(int(img.get("id", number)), _resolve(directory, img["file_name"]), stem,
                              img.get("width"), img.get("height"),
                              semantic=(semantic_dir / f"{stem}.png") if semantic_dir else None))
    truth = GroundTruth(directory, images, instances=instances, inputs=[directory])
    if semantic_dir is not None:
        truth.semantic_from = "labels"
        truth.semantic_names = [_norm(n) for n in index.get("classes", [])] or _names_near(semantic_dir)
    return truth


def _attach_semantic(truth: GroundTruth, directory: Path) -> None:
    if not directory.is_dir():
        raise ArtefactError(f"--gt-semantic {directory}: no such directory of label PNGs")
    by_stem = {p.stem: p for p in directory.iterdir() if p.suffix.lower() == ".png"}
    if not by_stem:
        raise ArtefactError(f"--gt-semantic {directory}: holds no label PNGs")
    if truth.instances is None and truth.panoptic is None:  # a label directory replaces another
        truth.images = _label_dir_images(directory)
        truth.semantic_from = "labels"
        truth.semantic_names = _names_near(directory)
        truth.inputs = [directory]
        return
    for image in truth.images:
        image.semantic = by_stem.get(image.stem)
    truth.semantic_from = "labels"
    names = _names_near(directory)
    if names is None and truth.instances is not None:
        names = _names_from_categories(truth.instances["categories"])
    truth.semantic_names = names
    truth.inputs.append(directory)



def _rasterise(anns: list[dict[str, Any]], height: int, width: int, index_of: dict[int, int]) -> np.ndarray:
    """Semantic labels from instance masks: 0 background, class index, -1 where two classes claim a pixel."""
    owner = np.zeros((height, width), dtype=np.int32)
    conflict = np.zeros((height, width), dtype=bool)
    for ann in anns:
        cls = index_of[int(ann["category_id"])]
        mask = decode_mask(segmentation_to_rle(ann["segmentation"], height, width))
        free = mask & (owner == 0)
        conflict |= mask & ~free & (owner != cls)
        owner[free] = cls
    owner[conflict] = -1
    return owner



# ---- prepared benchmarks (`zutis evaluate prepare`) ------------------------------------------
@dataclass
class PrepareResult:
    """A prepared ground truth: its directory, image and class counts, instance count (None when
    the benchmark has no instances), whether it holds semantic label PNGs."""

    path: Path
    images: int
    classes: int
    instances: int | None
    semantic: bool


class _GtWriter:
    """Writes a prepared ground truth: ``gt.json``, ``classes.txt``, ``semantic/``, ``instances.json``."""

    def __init__(self, out: Path, name: str, classes: Sequence[str]):
        self.out = out
        self.name = name
        self.classes = list(classes)
        self.images: list[dict[str, Any]] = []
        self.semantic = False

    def add_image(self, path: Path, width: int, height: int, stem: str, labels: np.ndarray | None = None,
                  ignore: np.ndarray | None = None, image_id: int | None = None) -> None:
        record = {"id": image_id if image_id is not None else len(self.images) + 1,
                  "file_name": relative_to(self.out, path), "stem": stem, "width": int(width), "height": int(height)}
        if labels is not None:
            write_label_map(self.out / "semantic" / f"{stem}.png", labels, ignore,
                            sixteen_bit=len(self.classes) > IGNORE_8BIT)
            self.semantic = True
        self.images.append(record)

    def finish(self, params: dict[str, Any], instances: dict[str, Any] | None = None) -> PrepareResult:
        if instances is not None:
            atomic_write_json(self.out / "instances.json", instances, indent=None)
        atomic_write_text(self.out / CLASSES_FILE, "\n".join(self.classes) + "\n")
        atomic_write_json(self.out / GT_INDEX, {
            "format": "zutis.gt", "schema": 1, "dataset": self.name, "params": params,
            "classes": self.classes, "semantic": "semantic" if self.semantic else None,
            "instances": "instances.json" if instances is not None else None,
            "ignore_index": IGNORE_8BIT if len(self.classes) <= IGNORE_8BIT else IGNORE_16BIT,
            "images": self.images,
        }, indent=None)
        return PrepareResult(self.out, len(self.images), len(self.classes),
                             len(instances["annotations"]) if instances is not None else None, self.semantic)
