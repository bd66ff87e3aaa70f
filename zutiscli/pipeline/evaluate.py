"""`zutis evaluate`: the metrics of the seed papers on standard benchmarks and on any COCO-format data.

The stage reads the prediction (:func:`zutiscli.artefacts.predictions.load_prediction`: a
``zutis predict`` directory, a COCO results or panoptic JSON, a directory of label PNGs) and the
ground truth (:func:`zutiscli.artefacts.groundtruth.load_ground_truth`: a COCO instances or
panoptic JSON, a ``zutis evaluate prepare`` or ``zutis synth scenes`` directory, a directory of
label PNGs), scores one against the other (:func:`zutiscli.engine.evaluator.score`: how images
and classes are matched, and every metric, are described there), and writes ``metrics.json``
(fractions in [0, 1]) and its manifest (kind ``zutis.metrics``).

``zutis evaluate prepare`` turns a user's copy of a benchmark into such a ground truth
(:func:`prepare_dataset`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

from zutiscli.artefacts.atomic import atomic_write_json
from zutiscli.artefacts.coco import load_coco
from zutiscli.artefacts.groundtruth import PrepareResult, _GtWriter, _norm, _rasterise, _stem, load_ground_truth
from zutiscli.artefacts.labelmap import IGNORE_8BIT, read_label_map
from zutiscli.artefacts.manifest import relative_to, write_manifest
from zutiscli.artefacts.predictions import load_prediction
from zutiscli.artefacts.rundir import check_output_dir, prepare_output_dir
from zutiscli.engine.evaluator import BACKENDS, IOU_TYPES, MATCH_MODES, TASKS, Log, Progress, headline, score
from zutiscli.errors import ArtefactError, UsageError


# ---- configuration --------------------------------------------------------------------------
def parse_class_map(text: str | None) -> dict[str, str]:
    """``"tv=television,sofa=couch"`` -> ``{"tv": "television", "sofa": "couch"}`` (pred -> gt)."""
    if text is None:
        return {}
    mapping: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue  # "tv=television," is forgiven; a list of nothing is not (below)
        if "=" not in item:
            raise UsageError(f"--classes item {item.strip()!r} has no '='; write PRED_NAME=GT_NAME, e.g. --classes tv=television")
        pred, gt = (_norm(part) for part in item.split("=", 1))
        if not pred or not gt:
            raise UsageError(f"--classes item {item.strip()!r} needs a name on both sides of '='")
        if pred in mapping and mapping[pred] != gt:
            raise UsageError(f"--classes maps {pred!r} twice ({mapping[pred]!r} and {gt!r})")
        mapping[pred] = gt
    if not mapping:
        raise UsageError(f"--classes {text!r} maps no class; write PRED_NAME=GT_NAME pairs separated by commas, "
                         f"e.g. --classes tv=television, or leave --classes out")
    return mapping


@dataclass
class EvaluateConfig:
    """Options of ``zutis evaluate`` (scores and IoUs in [0, 1])."""

    pred: str
    gt: str
    gt_semantic: str | None = None
    gt_panoptic_dir: str | None = None
    tasks: Sequence[str] = ()  # empty = every task the inputs allow
    class_map: dict[str, str] = field(default_factory=dict)
    agnostic: bool = True
    match: str = "names"
    match_score: float = 0.6
    match_iou: float = 0.7
    match_iou_type: str = "bbox"
    iou_types: Sequence[str] = IOU_TYPES
    max_dets: Sequence[int] = (1, 10, 100)
    backend: str = "pycocotools"

    def validate(self) -> None:
        for task in self.tasks:
            if task not in TASKS:
                raise UsageError(f"--task {task!r} is not one of {', '.join(TASKS)} (or all)")
        if self.match not in MATCH_MODES:
            raise UsageError(f"--match {self.match!r} is not one of {', '.join(MATCH_MODES)}")
        if self.match_iou_type not in IOU_TYPES:
            raise UsageError(f"--match-iou-type {self.match_iou_type!r} is not segm or bbox")
        if not 0 <= self.match_score <= 1 or not 0 <= self.match_iou < 1:
            raise UsageError("--match-score must lie in [0, 1] and --match-iou in [0, 1)")
        if not self.iou_types or any(t not in IOU_TYPES for t in self.iou_types):
            raise UsageError(f"--iou-type must be segm, bbox or both (got {', '.join(self.iou_types) or 'nothing'})")
        if len(self.max_dets) != 3 or any(int(d) < 1 for d in self.max_dets):
            raise UsageError("--max-dets needs three positive numbers, e.g. 1,10,100")
        if self.backend not in BACKENDS:
            raise UsageError(f"--backend {self.backend!r} is not one of {', '.join(BACKENDS)}")


@dataclass
class EvaluateResult:
    """Where ``metrics.json`` was written and what it holds."""

    path: Path
    metrics: dict[str, Any]
    warnings: list[str]
    seconds: float


# ---- the stage ------------------------------------------------------------------------------
def evaluate(config: EvaluateConfig, output: str | Path | None = None, progress: Progress | None = None,
             log: Log | None = None) -> EvaluateResult:
    """Run ``zutis evaluate``: score ``config.pred`` against ``config.gt``, write ``metrics.json``."""
    config.validate()
    start = time.perf_counter()
    check_output_dir(output, "evaluate")  # refuse an unusable -o before the scoring, create nothing yet
    pred = load_prediction(config.pred)
    truth = load_ground_truth(config.gt, config.gt_semantic, config.gt_panoptic_dir)
    metrics = score(pred, truth, config, progress=progress, log=log)
    seconds = time.perf_counter() - start
    metrics["seconds"] = round(seconds, 3)  # the whole stage, reading included
    warnings, tasks = metrics["warnings"], metrics["tasks"]
    out = prepare_output_dir(output, "evaluate")
    atomic_write_json(out / "metrics.json", metrics)
    inputs = [Path(config.pred), *truth.inputs]
    params = {k: v for k, v in vars(config).items()}
    params["tasks"] = tasks
    params["iou_types"] = list(config.iou_types)
    params["max_dets"] = list(config.max_dets)
    write_manifest(out, "zutis.metrics", inputs=inputs, params=params, summary=headline(metrics))
    return EvaluateResult(out, metrics, warnings, seconds)


# ---- dataset adapters: `zutis evaluate prepare NAME --root DIR` -----------------------------
DATASETS = ("coco20k", "coco-val2017", "voc2012", "coca", "imagenet-s919", "imagenet-s300", "imagenet-s50", "cub2011")
COCO20K_SIZE = 19_817
VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")


@dataclass
class PrepareConfig:
    """Options of ``zutis evaluate prepare`` (``threshold`` in [0, 1] of the mask's grey range)."""

    name: str
    root: str
    file_list: str | None = None
    split: str | None = None
    class_names: str | None = None
    threshold: float = 0.5

    def validate(self) -> None:
        if self.name not in DATASETS:
            raise UsageError(f"unknown dataset {self.name!r}; choose one of {', '.join(DATASETS)}")
        if not Path(self.root).is_dir():
            raise ArtefactError(f"--root {self.root}: no such directory")
        if not 0 < self.threshold < 1:
            raise UsageError("--threshold must lie in (0, 1)")


def _unique_stems(paths: Sequence[Path], root: Path) -> list[str]:
    """File stems, or relative paths joined with ``__`` where stems collide."""
    stems = [p.stem for p in paths]
    counts: dict[str, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    return [s if counts[s] == 1 else "__".join(p.relative_to(root).with_suffix("").parts)
            for s, p in zip(stems, paths)]


def _find_dir(root: Path, candidates: Iterable[str], what: str) -> Path:
    for candidate in candidates:
        path = root / candidate
        if path.is_dir():
            return path
    raise ArtefactError(f"--root {root}: no {what} found (looked for {', '.join(candidates)})")


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as image:
            return image.size
    except OSError as exc:
        raise ArtefactError(f"{path}: cannot be read as an image ({exc})") from None


def prepare_dataset(config: PrepareConfig, output: str | Path | None = None, progress: Progress | None = None,
                    log: Log | None = None) -> PrepareResult:
    """Turn the user's copy of a benchmark into zutis ground truth (see each ``_prepare_*``)."""
    config.validate()
    say = log or (lambda message: None)
    root = Path(config.root)
    preparer = {
        "coco20k": _prepare_coco20k, "coco-val2017": _prepare_coco_val2017, "voc2012": _prepare_voc,
        "coca": _prepare_coca, "cub2011": _prepare_cub,
    }.get(config.name, _prepare_imagenet_s)
    check_output_dir(output, "prepare")
    checked = preparer(config, root, None, progress, say, dry=True)  # validate the layout before writing
    del checked
    out = prepare_output_dir(output, "prepare")
    return preparer(config, root, out, progress, say, dry=False)


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


def _prepare_coco20k(config: PrepareConfig, root: Path, out: Path | None, progress: Progress | None, log: Log,
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


def _prepare_coco_val2017(config: PrepareConfig, root: Path, out: Path | None, progress: Progress | None, log: Log,
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


def _voc_root(root: Path) -> Path:
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir() and (candidate / "SegmentationClass").is_dir():
            return candidate
    raise ArtefactError(f"--root {root}: no JPEGImages/ and SegmentationClass/ found (give VOCdevkit/VOC2012)")


def _prepare_voc(config: PrepareConfig, root: Path, out: Path | None, progress: Progress | None, log: Log,
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


def _prepare_coca(config: PrepareConfig, root: Path, out: Path | None, progress: Progress | None, log: Log,
                  dry: bool) -> PrepareResult | None:
    """CoCA (co-saliency, 80 classes, 1,295 images): ``image/CLASS/*.jpg`` + ``binary/CLASS/*.png``.

    Semantic only: label = 1 + position of CLASS in the sorted folder names (the order ZUTIS
    uses) where the binary mask exceeds ``threshold``, else 0 (background).
    """
    base = root / "CoCA" if (root / "CoCA").is_dir() and not (root / "image").is_dir() else root
    images_dir = _find_dir(base, ["image", "images", "Image"], "image/ folder")
    masks_dir = _find_dir(base, ["binary", "GroundTruth", "gt"], "binary/ mask folder")
    classes = sorted(p.name for p in images_dir.iterdir() if p.is_dir())
    if not classes:
        raise ArtefactError(f"{images_dir}: holds no class folders")
    images = sorted(p for c in classes for p in (images_dir / c).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if dry:
        return None
    assert out is not None
    writer = _GtWriter(out, "coca", ["background", *classes])
    stems = _unique_stems(images, images_dir)
    level = config.threshold * 255
    for number, (image, stem) in enumerate(zip(images, stems), start=1):
        cls = classes.index(image.parent.name) + 1
        mask_path = masks_dir / image.parent.name / f"{image.stem}.png"
        if not mask_path.is_file():
            raise ArtefactError(f"{mask_path}: missing mask of {image}")
        with Image.open(mask_path) as mask_image:
            mask = np.asarray(mask_image.convert("L")) > level
        width, height = _image_size(image)
        writer.add_image(image, width, height, stem, np.where(mask, cls, 0))
        if progress is not None:
            progress(number, len(images))
    return writer.finish({"root": relative_to(out, base), "threshold": config.threshold})


def _imagenet_s_names(config: PrepareConfig, wnids: list[str]) -> list[str]:
    """Class names: ``--class-names FILE`` (names in class-id order, or ``wnid name, synonyms`` lines
    as ImageNet's ``LOC_synset_mapping.txt``), else the WordNet ids themselves."""
    if not config.class_names:
        return wnids
    lines = [line.strip() for line in Path(config.class_names).read_text(encoding="utf-8").splitlines() if line.strip()]
    first = lines[0].split(maxsplit=1)[0] if lines else ""
    if first.startswith("n") and first[1:].isdigit():
        table = {}
        for line in lines:
            parts = line.split(maxsplit=1)
            table[parts[0]] = parts[1].split(",")[0].strip() if len(parts) > 1 else parts[0]
        missing = [w for w in wnids if w not in table]
        if missing:
            raise ArtefactError(f"--class-names {config.class_names}: no name for {missing[0]} ({len(missing)} missing)")
        return [table[w] for w in wnids]
    if len(lines) != len(wnids):
        raise ArtefactError(f"--class-names {config.class_names}: has {len(lines)} names for {len(wnids)} classes")
    return lines


def _prepare_imagenet_s(config: PrepareConfig, root: Path, out: Path | None, progress: Progress | None, log: Log,
                        dry: bool) -> PrepareResult | None:
    """ImageNet-S (919, 300 or 50 classes), validation split by default.

    The official annotations are RGB PNGs whose class id is ``R + 256 G`` (0 other/background,
    1000 ignore), as the LUSSeg/ImageNet-S README states; class id i is the i-th WordNet id in
    sorted order. Output: 16-bit label PNGs (65535 = ignore) when there are more than 254 classes.
    """
    size = config.name.rsplit("s", 1)[-1]
    base = root / f"ImageNetS{size}" if (root / f"ImageNetS{size}").is_dir() else root
    split = config.split or "validation"
    images_dir = base / split
    seg_dir = base / f"{split}-segmentation"
    if not seg_dir.is_dir() or not images_dir.is_dir():
        raise ArtefactError(f"--root {root}: no ImageNetS{size}/{split}/ and {split}-segmentation/ found")
    wnids = sorted(p.name for p in seg_dir.iterdir() if p.is_dir())
    if len(wnids) != int(size):
        raise ArtefactError(f"{seg_dir}: has {len(wnids)} class folders, expected {size}; class ids follow the sorted "
                            f"WordNet ids of all {size} classes")
    names = _imagenet_s_names(config, wnids)
    masks = sorted(p for w in wnids for p in (seg_dir / w).iterdir() if p.suffix.lower() == ".png")
    if dry:
        return None
    assert out is not None
    writer = _GtWriter(out, config.name, ["background", *names])
    for number, mask_path in enumerate(masks, start=1):
        with Image.open(mask_path) as mask_image:
            rgb = np.asarray(mask_image.convert("RGB")).astype(np.int64)
        ids = rgb[..., 0] + 256 * rgb[..., 1]
        ignore = (ids == 1000) | (ids > len(wnids))
        image = None
        for ext in (".JPEG", ".jpg", ".jpeg", ".png"):
            candidate = images_dir / mask_path.parent.name / f"{mask_path.stem}{ext}"
            if candidate.is_file():
                image = candidate
                break
        if image is None:
            raise ArtefactError(f"{mask_path}: its image is not in {images_dir / mask_path.parent.name}")
        height, width = ids.shape
        writer.add_image(image, width, height, mask_path.stem, np.where(ignore, 0, ids), ignore)
        if progress is not None:
            progress(number, len(masks))
    return writer.finish({"root": relative_to(out, base), "split": split, "class_names": config.class_names})


def _prepare_cub(config: PrepareConfig, root: Path, out: Path | None, progress: Progress | None, log: Log,
                 dry: bool) -> PrepareResult | None:
    """CUB-200-2011 foreground/background (split ``test`` by default: 5,794 images).

    Masks from the separate ``segmentations/`` download (inside the dataset folder or beside it),
    greyscale annotator agreement, binarised at ``threshold`` (0.5 by default: an assumption, the
    papers do not agree on one) into 0 background / 1 bird.
    """
    base = root / "CUB_200_2011" if (root / "CUB_200_2011").is_dir() else root
    for needed in ("images.txt", "train_test_split.txt"):
        if not (base / needed).is_file():
            raise ArtefactError(f"--root {root}: no {needed}; point --root at CUB_200_2011")
    seg_root = next((p for p in (base / "segmentations", base.parent / "segmentations") if p.is_dir()), None)
    if seg_root is None:
        raise ArtefactError(f"--root {root}: no segmentations/ folder (the separate CUB segmentation download) inside "
                            f"or beside {base}")
    split = config.split or "test"
    if split not in ("test", "train", "all"):
        raise UsageError("--split for cub2011 is test, train or all")
    paths = dict(line.split(maxsplit=1) for line in (base / "images.txt").read_text().splitlines() if line.strip())
    training = dict(line.split() for line in (base / "train_test_split.txt").read_text().splitlines() if line.strip())
    chosen = [i for i in paths if split == "all" or (training.get(i) == "1") == (split == "train")]
    if dry:
        return None
    assert out is not None
    writer = _GtWriter(out, "cub2011", ["background", "bird"])
    rel = [Path(paths[i].strip()) for i in chosen]
    stems = _unique_stems([base / "images" / r for r in rel], base / "images")
    level = config.threshold * 255
    for number, (image_id, r, stem) in enumerate(zip(chosen, rel, stems), start=1):
        mask_path = seg_root / r.with_suffix(".png")
        if not mask_path.is_file():
            raise ArtefactError(f"{mask_path}: missing mask")
        with Image.open(mask_path) as mask_image:
            mask = np.asarray(mask_image.convert("L")) > level
        writer.add_image(base / "images" / r, mask.shape[1], mask.shape[0], stem, mask.astype(np.int64),
                         image_id=int(image_id))
        if progress is not None:
            progress(number, len(chosen))
    return writer.finish({"root": relative_to(out, base), "split": split, "threshold": config.threshold})
