"""`zutis evaluate`: the metrics of the seed papers on standard benchmarks and on any COCO-format data.

Inputs
------
PRED, one of
    - a ``zutis predict`` directory (kind ``zutis.predictions``): ``predictions.json`` (COCO results,
      ``category_id`` = position in the predicted class list), ``images.json`` (images + category
      names), ``semantic/STEM.png`` (0 background, i = i-th class, 255 unlabelled) and
      ``panoptic.json`` + ``panoptic/STEM.png``;
    - a COCO results JSON (a list; image and category ids already those of the ground truth);
    - a COCO panoptic JSON (its PNGs in the folder of the same stem beside it, or ``panoptic/``);
    - a directory of label PNGs named by image stem (values = ground-truth class indices, or
      cluster ids with ``match="hungarian"|"majority"``; a ``classes.txt`` inside names the values).

GT, one of
    - a COCO instances JSON; its ``file_name`` are resolved against the JSON's directory;
    - a directory written by ``zutis evaluate prepare`` (``gt.json`` describes it), or one holding
      ``instances.json`` and optionally ``semantic/`` (as ``zutis synth scenes`` writes);
    - a directory of label PNGs (``classes.txt`` inside or beside it names the values;
      line i names label i, line 0 is the background);
    - a COCO panoptic JSON (PNGs in the folder of the same stem, or ``gt_panoptic_dir``).

Label PNGs are 8-bit palette/greyscale (255 = ignore) or, for more than 255 classes (ImageNet-S),
16-bit greyscale (65535 = ignore).

Matching
--------
Images: a predicted image matches the ground-truth image with the same resolved absolute path;
when paths differ (the data moved, or a COCO JSON whose ``file_name`` is a bare name), by file
stem (name without extension), provided the stem is unique on both sides. Classes: by name
(exact, then case-insensitive); ``class_map`` renames predicted classes first (``pred=gt``).
Unsupervised predictions (cluster ids) are matched with ``match="hungarian"`` (one-to-one,
scipy ``linear_sum_assignment`` maximising overlap: semantic pixels, or instance votes) or
``match="majority"`` (many-to-one: semantic clusters to their majority class; instance clusters
as U2Seg does: detections with score >= 0.6 vote for the class of every GT instance they overlap
with box IoU > 0.7, each cluster takes its majority class, clusters without votes are dropped).

Metrics (fractions in [0, 1] in ``metrics.json``; see :mod:`zutiscli.ops.metrics`)
-----------------------------------------------------------------------------------
- instance: pycocotools ``COCOeval`` for ``segm`` and ``bbox``, ``maxDets [1, 10, 100]``, with
  categories (``useCats=1``) and class-agnostic (all categories merged into one, as CutLER and
  MaskDistill report): AP, AP50, AP75, APs/m/l, AR1/10/100, ARs/m/l, and AP per class.
- semantic: confusion-matrix mIoU (nanmean over classes present in GT or prediction; background
  is a class), pixel accuracy, mean accuracy, per-class IoU, ImageNet-S size-bucket mIoU, and
  where each class's pixels went (``main_confusions``; the full ``confusion`` matrix of pixel
  counts too, up to :data:`MAX_CONFUSION_CLASSES` classes).
  When the GT is an instances JSON, the semantic GT is rasterised from its masks (crowd regions
  included); pixels claimed by two classes become ignore.
- panoptic: PQ, SQ, RQ over all classes, things and stuff (COCO panoptic definition).
"""

from __future__ import annotations

import contextlib
import copy
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from PIL import Image

from zutiscli.artefacts.atomic import atomic_write_json
from zutiscli.artefacts.coco import load_coco
from zutiscli.artefacts.groundtruth import (
    CLASSES_FILE,
    GroundTruth,
    GtImage,
    PrepareResult,
    _GtWriter,
    _norm,
    _rasterise,
    _stem,
    load_ground_truth,
)
from zutiscli.artefacts.labelmap import IGNORE_8BIT, IGNORE_16BIT, read_label_map
from zutiscli.artefacts.manifest import relative_to, write_manifest
from zutiscli.artefacts.predictions import Prediction, PredImage, load_prediction
from zutiscli.artefacts.rundir import check_output_dir, prepare_output_dir
from zutiscli.errors import ArtefactError, UsageError, ZutisError
from zutiscli.ops import metrics as M
from zutiscli.ops.masks import segmentation_to_rle

TASKS = ("instance", "semantic", "panoptic")
MATCH_MODES = ("names", "hungarian", "majority")
IOU_TYPES = ("segm", "bbox")
BACKENDS = ("pycocotools", "faster-coco-eval")
AP_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")

Log = Callable[[str], None]
Progress = Callable[[int, int], None]


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


def _with_ignore(values: np.ndarray, ignore: int) -> np.ndarray:
    """int32 labels with the file's ignore value turned into -1."""
    out = values.astype(np.int32, copy=True)
    out[values == ignore] = -1
    return out


# ---- image and class matching ---------------------------------------------------------------
@dataclass
class ImageMatch:
    """Pairs of (predicted image, ground-truth image) and what was left over."""

    pairs: list[tuple[PredImage, GtImage]]
    pred_only: int
    gt_only: int
    by_path: int
    by_stem: int


def match_images(preds: Sequence[PredImage], gts: Sequence[GtImage]) -> ImageMatch:
    """Match by resolved path, then by unique stem (see the module docstring); one-to-one."""
    by_path = {g.path: g for g in gts if g.path}
    stems: dict[str, GtImage | None] = {}
    for g in gts:
        stems[g.stem] = None if g.stem in stems else g
    pred_stems: dict[str, int] = {}
    for p in preds:
        pred_stems[p.stem] = pred_stems.get(p.stem, 0) + 1
    used: set[int] = set()
    pairs: list[tuple[PredImage, GtImage]] = []
    n_path = n_stem = 0
    for p in preds:
        match = by_path.get(p.path) if p.path else None
        if match is not None and id(match) not in used:
            n_path += 1
        else:
            match = None
            for stem in (p.stem, p.alt_stem):
                candidate = stems.get(stem) if stem else None
                if candidate is not None and id(candidate) not in used and pred_stems.get(p.stem, 0) <= 1:
                    match = candidate
                    n_stem += 1
                    break
        if match is None:
            continue
        used.add(id(match))
        pairs.append((p, match))
    return ImageMatch(pairs, len(preds) - len(pairs), len(gts) - len(pairs), n_path, n_stem)


def match_names(pred_names: Sequence[str], gt_names: Sequence[str], class_map: dict[str, str],
                *, what: str = "classes") -> list[int]:
    """Index into ``gt_names`` of each predicted name (after ``class_map``); raises one clear error."""
    exact = {name: i for i, name in enumerate(gt_names)}
    folded: dict[str, int | None] = {}
    for i, name in enumerate(gt_names):
        key = name.casefold()
        folded[key] = None if key in folded else i
    found: list[int] = []
    missing: list[str] = []
    for name in pred_names:
        target = class_map.get(name, name)
        index = exact.get(target)
        if index is None:
            index = folded.get(target.casefold())
        if index is None:
            missing.append(name if target == name else f"{name}={target}")
            found.append(-1)
        else:
            found.append(index)
    if missing:
        shown = ", ".join(repr(m) for m in missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        known = ", ".join(repr(n) for n in list(gt_names)[:12]) + (", ..." if len(gt_names) > 12 else "")
        example = missing[0].split("=")[0]
        raise ZutisError(f"predicted {what} not in the ground truth: {shown} (ground truth has {known}); "
                         f"map them with --classes {example}=GT_NAME,...")
    return found


# ---- instance metrics (COCOeval) ------------------------------------------------------------
def _coco_api(backend: str):
    if backend == "faster-coco-eval":
        try:
            from faster_coco_eval import COCO, COCOeval_faster
        except ImportError:
            raise UsageError("--backend faster-coco-eval needs `pip install faster-coco-eval` "
                             "(numbers agree with pycocotools to ~1e-16, not bit for bit)") from None
        return COCO, COCOeval_faster
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    return COCO, COCOeval


def _coco_from_dict(COCO: Any, data: dict[str, Any]) -> Any:
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_evaluate(gt: dict[str, Any], results: list[dict[str, Any]], iou_type: str, *,
                  image_ids: Sequence[int] | None = None, max_dets: Sequence[int] = (1, 10, 100),
                  backend: str = "pycocotools") -> dict[str, Any]:
    """Run COCOeval (``useCats=1``) on a GT dict and a results list; both are copied, not changed.

    Returns ``{"AP": ..., ..., "ARl": ..., "per_class": {category_id: AP}}``: the 12 summary
    numbers of ``COCOeval.summarize`` (None where pycocotools reports -1, e.g. no GT of that
    size) and AP per category (mean precision over IoU 0.50:0.95, all areas, the largest maxDets,
    as detectron2 computes it; None for a category without GT).
    """
    COCO, COCOeval = _coco_api(backend)
    coco_gt = _coco_from_dict(COCO, copy.deepcopy(gt))
    if results:
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt = coco_gt.loadRes(copy.deepcopy(results))
    else:
        coco_dt = _coco_from_dict(COCO, {"images": list(gt["images"]), "annotations": [],
                                         "categories": list(gt["categories"])})
    evaluator = COCOeval(coco_gt, coco_dt, iou_type)
    evaluator.params.maxDets = [int(d) for d in max_dets]
    if image_ids is not None:
        evaluator.params.imgIds = sorted(int(i) for i in image_ids)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [float(v) for v in evaluator.stats[:12]]
    out: dict[str, Any] = {name: (None if value < 0 else value) for name, value in zip(AP_NAMES, stats)}
    precision = np.asarray(evaluator.eval["precision"])  # (T, R, K, A, M)
    per_class: dict[int, float | None] = {}
    for k, cat_id in enumerate(evaluator.params.catIds):
        values = precision[:, :, k, 0, -1]
        values = values[values > -1]
        per_class[int(cat_id)] = float(values.mean()) if values.size else None
    out["per_class"] = per_class
    return out


def _agnostic(gt: dict[str, Any], results: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """All categories merged into one (id 1, "object")."""
    merged = dict(gt)
    merged["categories"] = [{"id": 1, "name": "object", "supercategory": "object"}]
    merged["annotations"] = [dict(ann, category_id=1) for ann in gt["annotations"]]
    return merged, [dict(r, category_id=1) for r in results]


def _instance_results(pred: Prediction, truth: GroundTruth, matched: ImageMatch | None,
                      config: EvaluateConfig, warnings: list[str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Predicted instances with the ground truth's image and category ids; plus matching notes."""
    assert truth.instances is not None and pred.results is not None
    gt_cats = truth.instances["categories"]
    notes: dict[str, Any] = {}
    if pred.results_in_gt_space:
        known = {int(img["id"]) for img in truth.instances["images"]}
        results = [r for r in pred.results if int(r["image_id"]) in known]
        if len(results) < len(pred.results):
            warnings.append(f"{len(pred.results) - len(results)} result(s) refer to images not in the ground truth; skipped")
        if config.match == "names":
            return results, notes
        cluster_of = [int(r["category_id"]) for r in results]
    else:
        assert matched is not None
        image_map = {p.id: g.id for p, g in matched.pairs}
        results = []
        for r in pred.results:
            gt_image = image_map.get(int(r["image_id"]))
            if gt_image is not None:
                results.append(dict(r, image_id=gt_image))
        if config.match == "names":
            names = pred.names or []
            index = match_names(names, [_norm(c["name"]) for c in gt_cats], config.class_map)
            to_gt = {i + 1: int(gt_cats[j]["id"]) for i, j in enumerate(index)}
            out = []
            for r in results:
                category = to_gt.get(int(r["category_id"]))
                if category is None:
                    raise ArtefactError(f"{pred.source}: a prediction has category_id {r['category_id']}, "
                                        f"outside its {len(names)} classes")
                out.append(dict(r, category_id=category))
            return out, notes
        cluster_of = [int(r["category_id"]) for r in results]
    return _match_instance_clusters(results, cluster_of, truth, config, notes)


def _match_instance_clusters(results: list[dict[str, Any]], cluster_of: list[int], truth: GroundTruth,
                             config: EvaluateConfig, notes: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """U2Seg many-to-one (majority) or one-to-one (hungarian) matching of cluster ids to classes."""
    assert truth.instances is not None
    cats = truth.instances["categories"]
    cat_index = {int(c["id"]): i for i, c in enumerate(cats)}
    clusters = sorted(set(cluster_of))
    cluster_index = {c: i for i, c in enumerate(clusters)}
    images = {int(img["id"]): img for img in truth.instances["images"]}
    gt_by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in truth.instances["annotations"]:
        gt_by_image.setdefault(int(ann["image_id"]), []).append(ann)
    det_by_image: dict[int, list[int]] = {}
    for i, r in enumerate(results):
        det_by_image.setdefault(int(r["image_id"]), []).append(i)
    detections, ground = [], []
    for image_id, indices in det_by_image.items():
        anns = gt_by_image.get(image_id, [])
        img = images[image_id]
        if config.match_iou_type == "bbox":
            det_regions: Any = np.array([results[i]["bbox"] for i in indices], dtype=np.float64).reshape(-1, 4)
            gt_regions: Any = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        else:
            det_regions = [segmentation_to_rle(results[i]["segmentation"], img["height"], img["width"]) for i in indices]
            gt_regions = [segmentation_to_rle(a["segmentation"], img["height"], img["width"]) for a in anns]
        detections.append((np.array([cluster_index[cluster_of[i]] for i in indices]),
                           np.array([results[i].get("score", 1.0) for i in indices]), det_regions))
        ground.append((np.array([cat_index[int(a["category_id"])] for a in anns], dtype=np.int64), gt_regions))
    votes = M.cluster_votes(detections, ground, len(clusters), len(cats),
                            min_score=config.match_score, min_iou=config.match_iou)
    mapping = M.hungarian_mapping(votes) if config.match == "hungarian" else M.majority_mapping(votes)
    mapping[votes.sum(axis=0) == 0] = -1
    out = []
    for r, cluster in zip(results, cluster_of):
        target = mapping[cluster_index[cluster]]
        if target >= 0:
            out.append(dict(r, category_id=int(cats[target]["id"])))
    notes["cluster_mapping"] = {
        "mode": config.match, "min_score": config.match_score, "min_iou": config.match_iou,
        "iou_type": config.match_iou_type, "clusters": len(clusters),
        "mapped_clusters": int((mapping >= 0).sum()), "kept_detections": len(out), "detections": len(results),
        "mapping": {str(c): (_norm(cats[m]["name"]) if m >= 0 else None) for c, m in zip(clusters, mapping)},
    }
    return out, notes


def evaluate_instances(pred: Prediction, truth: GroundTruth, matched: ImageMatch | None,
                       config: EvaluateConfig, warnings: list[str], log: Log) -> dict[str, Any]:
    """COCOeval with and without categories, for each IoU type."""
    assert truth.instances is not None
    results, notes = _instance_results(pred, truth, matched, config, warnings)
    if pred.results_in_gt_space:
        image_ids = [int(img["id"]) for img in truth.instances["images"]]
    else:
        assert matched is not None
        image_ids = sorted({g.id for _, g in matched.pairs})
    gt = truth.instances
    names = {int(c["id"]): _norm(c["name"]) for c in gt["categories"]}
    out: dict[str, Any] = {"images": len(image_ids), "detections": len(results),
                           "ground_truth_instances": sum(1 for a in gt["annotations"] if int(a["image_id"]) in set(image_ids))}
    out.update(notes)
    agnostic_inputs = _agnostic(gt, results) if config.agnostic else None
    for iou_type in config.iou_types:
        log(f"COCOeval {iou_type} ({len(results)} detections, {len(image_ids)} images)")
        aware = coco_evaluate(gt, results, iou_type, image_ids=image_ids, max_dets=config.max_dets,
                              backend=config.backend)
        aware["per_class"] = {names[k]: v for k, v in aware["per_class"].items()}
        block: dict[str, Any] = {"class_aware": aware}
        if agnostic_inputs is not None:
            agnostic = coco_evaluate(*agnostic_inputs, iou_type, image_ids=image_ids, max_dets=config.max_dets,
                                     backend=config.backend)
            agnostic.pop("per_class")
            block["class_agnostic"] = agnostic
        out[iou_type] = block
    return out


# ---- semantic metrics -----------------------------------------------------------------------
#: Largest class count whose full confusion matrix is written to the metrics (ImageNet-S's 920
#: classes would add a million numbers; their main confusions are always written).
MAX_CONFUSION_CLASSES = 200


class ConfusionSum:
    """Running sum of a ``(G, P + 1)`` confusion matrix and its ``(4, G, P + 1)`` size buckets.

    ``num_classes`` / ``num_pred`` fix G / P; None lets them grow with the largest index seen.
    """

    def __init__(self, num_classes: int | None, num_pred: int | None):
        self.fixed_g = num_classes
        self.fixed_p = num_pred
        g = num_classes or 1
        p = num_pred or 1
        self.conf = np.zeros((g, p + 1), dtype=np.int64)
        self.buckets = np.zeros((len(M.SIZE_BUCKETS), g, p + 1), dtype=np.int64)

    def _grow(self, g: int, p: int) -> None:
        old_g, old_p = self.conf.shape[0], self.conf.shape[1] - 1
        if g <= old_g and p <= old_p:
            return
        g, p = max(g, old_g), max(p, old_p)

        def pad(a: np.ndarray) -> np.ndarray:
            out = np.zeros((*a.shape[:-2], g, p + 1), dtype=np.int64)
            out[..., :old_g, :old_p] = a[..., :, :old_p]
            out[..., :old_g, p] = a[..., :, old_p]
            return out

        self.conf = pad(self.conf)
        self.buckets = pad(self.buckets)

    def add(self, gt: np.ndarray, pred: np.ndarray) -> None:
        """Add one image: ``gt`` and ``pred`` ``(H, W)`` int arrays, -1 = ignore / no class."""
        g = self.fixed_g or max(int(gt.max()) + 1 if gt.size else 1, self.conf.shape[0])
        p = self.fixed_p or max(int(pred.max()) + 1 if pred.size else 1, self.conf.shape[1] - 1)
        self._grow(g, p)
        g, p = self.conf.shape[0], self.conf.shape[1] - 1
        conf = M.confusion_matrix(gt, pred, g, p, ignore_index=-1)
        self.conf += conf
        self.buckets += M.size_bucket_confusions(conf, gt.size, background=0)


def _pred_lut(pred: Prediction, truth: GroundTruth, config: EvaluateConfig) -> tuple[np.ndarray | None, int | None, list[str]]:
    """(value -> GT index lookup table or None for cluster ids, fixed P, GT names)."""
    gt_names = truth.semantic_names
    if config.match != "names":
        return None, None, gt_names or []
    pred_names = pred.names if pred.names is not None else (pred.semantic_names[1:] if pred.semantic_names else None)
    if pred_names is None:
        # a bare label directory without names: values are ground-truth indices already
        return None, (len(gt_names) if gt_names else None), gt_names or []
    if gt_names is None:
        raise ZutisError(f"the semantic ground truth has no class names ({CLASSES_FILE}), so predicted names cannot be "
                         f"matched to it; add a {CLASSES_FILE} (line i = name of label i) to the label directory")
    index = match_names(pred_names, gt_names[1:], config.class_map, what="semantic classes")
    lut = np.full(IGNORE_16BIT + 1, -1, dtype=np.int32)
    lut[0] = 0
    for value, target in enumerate(index, start=1):
        lut[value] = target + 1
    return lut, len(gt_names), gt_names


def evaluate_semantic(pred: Prediction, truth: GroundTruth, matched: ImageMatch, config: EvaluateConfig,
                      warnings: list[str], progress: Progress | None, log: Log) -> dict[str, Any]:
    """Confusion-matrix mIoU, accuracies, per-class IoU and size buckets over the matched images."""
    lut, fixed_p, gt_names = _pred_lut(pred, truth, config)
    fixed_g = len(gt_names) if gt_names else None
    if config.match != "names":
        fixed_p = None
    acc = ConfusionSum(fixed_g, fixed_p)
    pairs = [(p, g) for p, g in matched.pairs if p.semantic is not None]
    index_of: dict[int, int] = {}
    anns_by_image: dict[int, list[dict[str, Any]]] = {}
    if truth.semantic_from == "instances":
        assert truth.instances is not None
        index_of = {int(c["id"]): i + 1 for i, c in enumerate(truth.instances["categories"])}
        for ann in truth.instances["annotations"]:
            anns_by_image.setdefault(int(ann["image_id"]), []).append(ann)
    missing_gt = 0
    log(f"semantic: {len(pairs)} images, ground truth from {truth.semantic_from}")
    for number, (p, g) in enumerate(pairs, start=1):
        raw, ignore = read_label_map(p.semantic)  # type: ignore[arg-type]
        if lut is not None:
            predicted = lut[np.clip(raw, 0, IGNORE_16BIT)]
            predicted[raw == ignore] = -1
        else:
            predicted = _with_ignore(raw, ignore)
        if truth.semantic_from == "instances":
            height, width = raw.shape
            if g.height and g.width and (g.height, g.width) != (height, width):
                raise ArtefactError(f"{p.semantic}: is {width}x{height} but its ground-truth image is {g.width}x{g.height}")
            labels = _rasterise(anns_by_image.get(g.id, []), height, width, index_of)
        else:
            if g.semantic is None or not g.semantic.is_file():
                missing_gt += 1
                continue
            values, gt_ignore = read_label_map(g.semantic)
            labels = _with_ignore(values, gt_ignore)
            if labels.shape != predicted.shape:
                raise ArtefactError(f"{p.semantic}: is {predicted.shape[1]}x{predicted.shape[0]} but its ground truth "
                                    f"{g.semantic} is {labels.shape[1]}x{labels.shape[0]}")
        acc.add(labels, predicted)
        if progress is not None:
            progress(number, len(pairs))
    if missing_gt:
        warnings.append(f"{missing_gt} matched image(s) have no ground-truth label PNG; skipped")
    conf, buckets = acc.conf, acc.buckets
    out: dict[str, Any] = {"images": len(pairs) - missing_gt, "ground_truth": truth.semantic_from}
    if config.match != "names":
        clusters = conf[:, :-1]
        mapping = M.hungarian_mapping(clusters) if config.match == "hungarian" else M.majority_mapping(clusters)
        conf = M.remap_confusion(conf, mapping)
        buckets = M.remap_confusion(buckets, mapping)
        names_now = gt_names or [str(i) for i in range(conf.shape[0])]
        out["cluster_mapping"] = {"mode": config.match, "clusters": int(clusters.shape[1]),
                                  "mapping": {str(k): (names_now[m] if 0 <= m < len(names_now) else None)
                                              for k, m in enumerate(mapping)}}
    elif conf.shape[1] - 1 != conf.shape[0]:
        # bare label directories without names on either side: align P with G
        g = max(conf.shape[0], conf.shape[1] - 1)
        acc._grow(g, g)
        conf, buckets = acc.conf, acc.buckets
    scores = M.semantic_scores(conf)
    names = list(gt_names) if gt_names else [str(i) for i in range(conf.shape[0])]
    names = (names + [str(i) for i in range(len(names), conf.shape[0])])[: conf.shape[0]]
    out.update(scores.to_json(names))
    out["size_buckets"] = {k: M._num(v) for k, v in M.bucket_miou(buckets).items()}
    out["main_confusions"] = M.main_confusions(conf, names)
    if conf.shape[0] <= MAX_CONFUSION_CLASSES:
        out["confusion"] = {"classes": names + ["unlabelled"], "rows": "ground truth",
                            "columns": "predicted", "pixels": conf.tolist()}
    out["classes"] = int(conf.shape[0])
    out["classes_present"] = int(np.sum(~np.isnan(scores.iou)))
    return out


# ---- panoptic metrics -----------------------------------------------------------------------
def _panoptic_ids(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return M.rgb_to_id(np.asarray(image.convert("RGB")))
    except FileNotFoundError:
        raise ArtefactError(f"{path}: no such panoptic PNG") from None
    except OSError as exc:
        raise ArtefactError(f"{path}: cannot be read as a panoptic PNG ({exc})") from None


def evaluate_panoptic(pred: Prediction, truth: GroundTruth, matched: ImageMatch, config: EvaluateConfig,
                      warnings: list[str], progress: Progress | None, log: Log) -> dict[str, Any]:
    """PQ / SQ / RQ (all, things, stuff) over the matched images."""
    assert pred.panoptic is not None and truth.panoptic is not None
    assert pred.panoptic_dir is not None and truth.panoptic_dir is not None
    gt_cats = truth.panoptic["categories"]
    gt_index = {int(c["id"]): i for i, c in enumerate(gt_cats)}
    isthing = np.array([bool(c.get("isthing", 1)) for c in gt_cats])
    pred_cats = sorted(pred.panoptic.get("categories", []), key=lambda c: int(c["id"]))
    if config.match != "names":
        raise UsageError("panoptic evaluation matches classes by name only; drop --match or --task panoptic")
    to_gt = match_names([_norm(c["name"]) for c in pred_cats], [_norm(c["name"]) for c in gt_cats],
                        config.class_map, what="panoptic classes")
    pred_index = {int(c["id"]): t for c, t in zip(pred_cats, to_gt)}
    gt_anns = {int(a["image_id"]): a for a in truth.panoptic["annotations"]}
    pred_anns = {int(a["image_id"]): a for a in pred.panoptic["annotations"]}
    stats = np.zeros((4, len(gt_cats)), dtype=np.float64)
    done = 0
    log(f"panoptic: {len(matched.pairs)} images")
    for number, (p, g) in enumerate(matched.pairs, start=1):
        pa, ga = pred_anns.get(p.id), gt_anns.get(g.id)
        if pa is None or ga is None:
            continue
        gt_map = _panoptic_ids(truth.panoptic_dir / ga["file_name"])
        pred_map = _panoptic_ids(pred.panoptic_dir / pa["file_name"])
        if gt_map.shape != pred_map.shape:
            raise ArtefactError(f"{pred.panoptic_dir / pa['file_name']}: size differs from its ground truth "
                                f"{truth.panoptic_dir / ga['file_name']}")
        gseg = ga.get("segments_info", [])
        pseg = [s for s in pa.get("segments_info", []) if int(s["category_id"]) in pred_index]
        gt_segments = M.Segments([s["id"] for s in gseg], [gt_index[int(s["category_id"])] for s in gseg],
                                 [bool(s.get("iscrowd", 0)) for s in gseg])
        pred_segments = M.Segments([s["id"] for s in pseg], [pred_index[int(s["category_id"])] for s in pseg])
        stats += M.panoptic_stats(gt_map, gt_segments, pred_map, pred_segments, len(gt_cats))
        done += 1
        if progress is not None:
            progress(number, len(matched.pairs))
    summary = M.panoptic_quality(stats, isthing)
    per = summary.pop("per_class")
    out: dict[str, Any] = {"images": done}
    for group in ("all", "things", "stuff"):
        out[group] = {k: (M._num(v) if k != "n" else v) for k, v in summary[group].items()}
    out["PQ"], out["SQ"], out["RQ"] = out["all"]["PQ"], out["all"]["SQ"], out["all"]["RQ"]
    out["per_class"] = {_norm(c["name"]): {"PQ": M._num(per["PQ"][i]), "SQ": M._num(per["SQ"][i]),
                                            "RQ": M._num(per["RQ"][i]), "TP": int(per["TP"][i]),
                                            "FP": int(per["FP"][i]), "FN": int(per["FN"][i])}
                        for i, c in enumerate(gt_cats)}
    return out


# ---- the stage ------------------------------------------------------------------------------
def _possible_tasks(pred: Prediction, truth: GroundTruth) -> dict[str, str | None]:
    """task -> None if possible, else why not."""
    return {
        "instance": None if pred.results is not None and truth.instances is not None else (
            "the prediction holds no instances (predictions.json / COCO results)" if pred.results is None
            else "the ground truth holds no instances (a COCO instances JSON)"),
        "semantic": None if pred.has_semantic and truth.has_semantic else (
            "the prediction holds no semantic label maps" if not pred.has_semantic
            else "the ground truth has no semantic labels (label PNGs, or instances to rasterise)"),
        "panoptic": None if pred.panoptic is not None and truth.panoptic is not None else (
            "the prediction holds no panoptic.json" if pred.panoptic is None
            else "the ground truth is not a COCO panoptic JSON"),
    }


def evaluate(config: EvaluateConfig, output: str | Path | None = None, progress: Progress | None = None,
             log: Log | None = None) -> EvaluateResult:
    """Run ``zutis evaluate``: score ``config.pred`` against ``config.gt``, write ``metrics.json``."""
    config.validate()
    say = log or (lambda message: None)
    start = time.perf_counter()
    check_output_dir(output, "evaluate")  # refuse an unusable -o before the scoring, create nothing yet
    pred = load_prediction(config.pred)
    truth = load_ground_truth(config.gt, config.gt_semantic, config.gt_panoptic_dir)
    possible = _possible_tasks(pred, truth)
    if config.tasks:
        for task in config.tasks:
            if possible[task] is not None:
                raise ZutisError(f"cannot evaluate --task {task}: {possible[task]} ({config.pred} vs {config.gt})")
        tasks = [t for t in TASKS if t in config.tasks]
    else:
        tasks = [t for t in TASKS if possible[t] is None]
        if not tasks:
            reasons = "; ".join(f"{t}: {why}" for t, why in possible.items())
            raise ZutisError(f"nothing to evaluate between {config.pred} and {config.gt} ({reasons})")
    warnings: list[str] = []
    metrics: dict[str, Any] = {"tasks": tasks}
    matched: ImageMatch | None = None
    if not pred.results_in_gt_space or tasks != ["instance"]:
        gt_images = truth.images
        matched = match_images(pred.images, gt_images)
        if not matched.pairs:
            raise ZutisError(f"no predicted image of {config.pred} matches a ground-truth image of {config.gt} "
                             f"(by path or by file stem); are they the same images?")
        if matched.pred_only:
            warnings.append(f"{matched.pred_only} predicted image(s) have no ground truth; skipped")
        if matched.gt_only:
            warnings.append(f"{matched.gt_only} ground-truth image(s) were not predicted; not scored")
        metrics["images"] = {"matched": len(matched.pairs), "by_path": matched.by_path, "by_stem": matched.by_stem,
                             "predicted_only": matched.pred_only, "ground_truth_only": matched.gt_only}
    if "instance" in tasks:
        metrics["instance"] = evaluate_instances(pred, truth, matched, config, warnings, say)
    if "semantic" in tasks:
        assert matched is not None
        metrics["semantic"] = evaluate_semantic(pred, truth, matched, config, warnings, progress, say)
    if "panoptic" in tasks:
        assert matched is not None
        metrics["panoptic"] = evaluate_panoptic(pred, truth, matched, config, warnings, progress, say)
    seconds = time.perf_counter() - start
    metrics["warnings"] = warnings
    metrics["seconds"] = round(seconds, 3)
    out = prepare_output_dir(output, "evaluate")
    atomic_write_json(out / "metrics.json", metrics)
    inputs = [Path(config.pred), *truth.inputs]
    params = {k: v for k, v in vars(config).items()}
    params["tasks"] = tasks
    params["iou_types"] = list(config.iou_types)
    params["max_dets"] = list(config.max_dets)
    write_manifest(out, "zutis.metrics", inputs=inputs, params=params, summary=headline(metrics))
    return EvaluateResult(out, metrics, warnings, seconds)


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """The few numbers worth a glance: mask AP, mIoU, PQ (fractions)."""
    out: dict[str, Any] = {}
    inst = metrics.get("instance") or {}
    for iou_type in IOU_TYPES:
        if iou_type in inst:
            prefix = "mask_" if iou_type == "segm" else "box_"
            out[prefix + "AP"] = inst[iou_type]["class_aware"]["AP"]
            out[prefix + "AP50"] = inst[iou_type]["class_aware"]["AP50"]
            if "class_agnostic" in inst[iou_type]:
                out[prefix + "AP_agnostic"] = inst[iou_type]["class_agnostic"]["AP"]
    if "semantic" in metrics:
        out["mIoU"] = metrics["semantic"]["mIoU"]
        out["pixel_accuracy"] = metrics["semantic"]["pixel_accuracy"]
    if "panoptic" in metrics:
        out["PQ"] = metrics["panoptic"]["PQ"]
    return out


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
