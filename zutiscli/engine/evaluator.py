"""The evaluator: scores a prediction against a ground truth in memory and returns the metrics.

:func:`score` is the entry point; it reads the two sides as :mod:`zutiscli.artefacts.predictions`
and :mod:`zutiscli.artefacts.groundtruth` load them and writes nothing. ``zutis evaluate``
(:func:`zutiscli.pipeline.evaluate.evaluate`) reads them from disk, calls it, and writes the
result as ``metrics.json``.

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
PQ maps clusters by the segments PQ itself would match, class-agnostically. ``mapping`` (a
``cluster_mapping.json`` of an earlier evaluation) maps them as it says instead, per task.

Metrics (fractions in [0, 1] in ``metrics.json``; see :mod:`zutiscli.ops.metrics`)
-----------------------------------------------------------------------------------
- instance: pycocotools ``COCOeval`` for ``segm`` and ``bbox``, ``maxDets [1, 10, 100]``, with
  categories (``useCats=1``) and class-agnostic (all categories merged into one, as CutLER and
  MaskDistill report; for cluster ids every detection, its cluster matched to a class or not): AP,
  AP50, AP75, APs/m/l, AR1/10/100, ARs/m/l, and AP per class.
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
import dataclasses
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np
from PIL import Image

from zutiscli.artefacts.groundtruth import CLASSES_FILE, GroundTruth, GtImage, _norm, _rasterise
from zutiscli.artefacts.labelmap import IGNORE_16BIT, read_label_map
from zutiscli.artefacts.predictions import Prediction, PredImage
from zutiscli.engine.evaluator_choices import BACKENDS, IOU_TYPES, MATCH_MODES, TASKS  # noqa: F401 - exported
from zutiscli.errors import ArtefactError, UsageError, ZutisError
from zutiscli.ops import metrics as M
from zutiscli.ops.bias import DISTANCE_BINS, class_preference, distance_bin, object_distance, object_overlap, \
    space_preference
from zutiscli.ops.masks import segmentation_to_rle

AP_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")

Log = Callable[[str], None]
Progress = Callable[[int, int], None]


class ScoreOptions(Protocol):
    """The options :func:`score` reads; :class:`zutiscli.pipeline.evaluate.EvaluateConfig` has them
    all, and its ``validate()`` checks them (scores and IoUs in [0, 1])."""

    pred: str  # names the prediction in messages; nothing is read from it here
    gt: str  # names the ground truth in messages
    tasks: Sequence[str]  # empty = every task the inputs allow
    class_map: dict[str, str]
    agnostic: bool
    match: str
    match_score: float
    match_iou: float
    match_iou_type: str
    mapping: str | None  # a cluster_mapping.json (or its evaluate directory) to map clusters with
    iou_types: Sequence[str]
    max_dets: Sequence[int]
    backend: str


def _with_ignore(values: np.ndarray, ignore: int) -> np.ndarray:
    """int32 labels with the file's ignore value turned into -1."""
    out = values.astype(np.int32, copy=True)
    out[values == ignore] = -1
    return out


def _predicted_labels(image: PredImage) -> tuple[np.ndarray, np.ndarray, str]:
    """One predicted semantic map, from its PNG or from memory: ``(H, W)`` int32 values, ``(H, W)``
    bool unlabelled pixels, and what to call it in messages."""
    if isinstance(image.semantic, np.ndarray):
        values = np.asarray(image.semantic).astype(np.int32)
        return values, values < 0, f"the semantic map of {image.stem} (in memory)"
    values, ignore = read_label_map(image.semantic)  # type: ignore[arg-type]
    return values, values == ignore, str(image.semantic)


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


def _instance_results(pred: Prediction, truth: GroundTruth, matched: ImageMatch | None, config: ScoreOptions,
                      warnings: list[str], given: Given | None = None
                      ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """``(scored, every, notes)``: the predicted instances with the ground truth's image and category
    ids; the instances to score class-agnostically (cluster ids: every detection, whether its cluster
    was matched to a class or not; else the scored ones); the matching notes."""
    assert truth.instances is not None and pred.results is not None
    gt_cats = truth.instances["categories"]
    notes: dict[str, Any] = {}
    if pred.results_in_gt_space:
        known = {int(img["id"]) for img in truth.instances["images"]}
        results = [r for r in pred.results if int(r["image_id"]) in known]
        if len(results) < len(pred.results):
            warnings.append(f"{len(pred.results) - len(results)} result(s) refer to images not in the ground truth; skipped")
        if config.match == "names":
            return results, results, notes
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
            # stuff: named by the semantic ground truth, never an instance (COCO panoptic's split)
            stuff = set(truth.semantic_names or ()) - {_norm(c["name"]) for c in gt_cats} - {"background"}
            scored = [i for i, name in enumerate(names) if config.class_map.get(name, name) not in stuff]
            index = match_names([names[i] for i in scored], [_norm(c["name"]) for c in gt_cats], config.class_map)
            to_gt = {scored[k] + 1: int(gt_cats[j]["id"]) for k, j in enumerate(index)}
            if len(scored) < len(names):
                notes["stuff_not_scored"] = [n for i, n in enumerate(names) if i not in set(scored)]
            out = []
            for r in results:
                category = to_gt.get(int(r["category_id"]))
                if category is None:
                    if 1 <= int(r["category_id"]) <= len(names):
                        continue  # a stuff class
                    raise ArtefactError(f"{pred.source}: a prediction has category_id {r['category_id']}, "
                                        f"outside its {len(names)} classes")
                out.append(dict(r, category_id=category))
            return out, out, notes
        cluster_of = [int(r["category_id"]) for r in results]
    mapped, notes = _match_instance_clusters(results, cluster_of, truth, config, notes, pred, given)
    return mapped, results, notes


def _voted_mapping(votes: np.ndarray, mode: str) -> np.ndarray:
    """``(K,)`` class index of each cluster (-1: none) from ``(C, K)`` votes, one-to-one (``hungarian``)
    or many-to-one (``majority``); a cluster nothing voted for gets no class."""
    mapping = M.hungarian_mapping(votes) if mode == "hungarian" else M.majority_mapping(votes)
    mapping[votes.sum(axis=0) == 0] = -1
    return mapping


#: A mapping given to :func:`score` (``--mapping``): cluster -> ground-truth class name, None for none.
Given = dict[str, "str | None"]


def _given_mapping(given: Given, clusters: Sequence[str], classes: Sequence[str], task: str) -> np.ndarray:
    """``(K,)`` index into ``classes`` of each of ``clusters`` under a given mapping (-1: no class, also
    for a cluster the mapping does not know); raises one line for a class the ground truth lacks."""
    index = {_norm(name).casefold(): i for i, name in enumerate(classes)}
    out = np.full(len(clusters), -1, dtype=np.int64)
    for k, cluster in enumerate(clusters):
        target = given.get(cluster)
        if target is None:
            continue
        if _norm(target).casefold() not in index:
            raise ZutisError(f"--mapping: maps {task} cluster {cluster!r} to {target!r}, which the ground truth does "
                             f"not name ({', '.join(list(classes)[:12])}); was the mapping made on another dataset?")
        out[k] = index[_norm(target).casefold()]
    return out


def _cluster_label(pred: Prediction, category: int) -> str:
    """How ``cluster_mapping`` names a predicted category id: its name, or the id as text."""
    names = pred.names or []
    return names[category - 1] if 1 <= category <= len(names) else str(category)


def _match_instance_clusters(results: list[dict[str, Any]], cluster_of: list[int], truth: GroundTruth,
                             config: ScoreOptions, notes: dict[str, Any], pred: Prediction,
                             given: Given | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """U2Seg many-to-one (majority) or one-to-one (hungarian) matching of cluster ids to classes, or the
    mapping ``given`` (``--mapping``); the detections with their class, and the notes."""
    assert truth.instances is not None
    cats = truth.instances["categories"]
    clusters = sorted(set(cluster_of))
    cluster_index = {c: i for i, c in enumerate(clusters)}
    labels = [_cluster_label(pred, c) for c in clusters]
    if given is None:
        votes = _instance_votes(results, [cluster_index[c] for c in cluster_of], len(clusters), truth, config)
        mapping = _voted_mapping(votes, config.match)
    else:
        mapping = _given_mapping(given, labels, [c["name"] for c in cats], "instance")
    out = []
    for r, cluster in zip(results, cluster_of):
        target = mapping[cluster_index[cluster]]
        if target >= 0:
            out.append(dict(r, category_id=int(cats[target]["id"])))
    notes["cluster_mapping"] = {
        "mode": config.match, "min_score": config.match_score, "min_iou": config.match_iou,
        "iou_type": config.match_iou_type, "given": given is not None, "clusters": len(clusters),
        "mapped_clusters": int((mapping >= 0).sum()), "kept_detections": len(out), "detections": len(results),
        "mapping": {label: (_norm(cats[m]["name"]) if m >= 0 else None) for label, m in zip(labels, mapping)},
    }
    return out, notes


def _instance_votes(results: list[dict[str, Any]], cluster_of: list[int], count: int, truth: GroundTruth,
                    config: ScoreOptions) -> np.ndarray:
    """``(C, K)`` U2Seg votes of the detections ``results`` (``cluster_of``: each one's cluster index
    in ``[0, count)``) for the ground truth's instance classes (:func:`zutiscli.ops.metrics.cluster_votes`)."""
    assert truth.instances is not None
    cats = truth.instances["categories"]
    cat_index = {int(c["id"]): i for i, c in enumerate(cats)}
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
        detections.append((np.array([cluster_of[i] for i in indices]),
                           np.array([results[i].get("score", 1.0) for i in indices]), det_regions))
        ground.append((np.array([cat_index[int(a["category_id"])] for a in anns], dtype=np.int64), gt_regions))
    return M.cluster_votes(detections, ground, count, len(cats), min_score=config.match_score,
                           min_iou=config.match_iou)


def evaluate_instances(pred: Prediction, truth: GroundTruth, matched: ImageMatch | None,
                       config: ScoreOptions, warnings: list[str], log: Log, given: Given | None = None) -> dict[str, Any]:
    """COCOeval with and without categories, for each IoU type (cluster ids mapped by ``given``
    when it is given, else matched as ``config.match`` says)."""
    assert truth.instances is not None
    results, every, notes = _instance_results(pred, truth, matched, config, warnings, given)
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
    agnostic_inputs = _agnostic(gt, every) if config.agnostic else None
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


def _pred_lut(pred: Prediction, truth: GroundTruth, config: ScoreOptions) -> tuple[np.ndarray | None, int | None, list[str]]:
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


def _semantic_cluster_names(pred: Prediction) -> list[str]:
    """The names of the predicted label values, ``background`` first, where the prediction has them
    (a ``zutis predict`` directory, a ``classes.txt``); else none."""
    return list(pred.semantic_names or (["background", *pred.names] if pred.names is not None else []))


class _SpaceBias:
    """ReCLIP++'s space preference (:mod:`zutiscli.ops.bias`): per ground-truth instance, its centroid's
    distance from the image centre and its IoU with the pixels predicted as its class, summed per
    distance bin and class. Needs instances whose categories are named like the semantic classes."""

    def __init__(self, truth: GroundTruth, gt_names: Sequence[str] | None,
                 anns_by_image: dict[int, list[dict[str, Any]]]):
        self.index: dict[int, int] = {}
        self.anns = anns_by_image
        if truth.instances is not None and gt_names:
            position = {name: i for i, name in enumerate(gt_names)}
            self.index = {int(c["id"]): position[c["name"]] for c in truth.instances["categories"]
                          if c.get("name") in position}
        classes = len(gt_names or ())
        self.intersection = np.zeros((DISTANCE_BINS, classes))
        self.union = np.zeros((DISTANCE_BINS, classes))
        self.objects = np.zeros(DISTANCE_BINS, dtype=np.int64)

    def add(self, image_id: int, predicted: np.ndarray, truth: np.ndarray) -> None:
        """Add the objects of ground-truth image ``image_id`` against its ``(H, W)`` predicted labels
        and ground-truth labels (class indices)."""
        from pycocotools import mask as mask_utils

        height, width = predicted.shape
        for ann in self.anns.get(int(image_id), []):
            if ann.get("iscrowd", 0) or int(ann["category_id"]) not in self.index:
                continue
            mask = mask_utils.decode(segmentation_to_rle(ann["segmentation"], height, width)).astype(bool)
            if not mask.any():
                continue
            label = self.index[int(ann["category_id"])]
            where = distance_bin(object_distance(mask))
            inter, union = object_overlap(mask, predicted, label, truth)
            self.intersection[where, label] += inter
            self.union[where, label] += union
            self.objects[where] += 1

    def result(self) -> dict[str, Any] | None:
        return space_preference(self.intersection, self.union, self.objects) if self.objects.any() else None


def evaluate_semantic(pred: Prediction, truth: GroundTruth, matched: ImageMatch, config: ScoreOptions,
                      warnings: list[str], progress: Progress | None, log: Log, given: Given | None = None) -> dict[str, Any]:
    """Confusion-matrix mIoU, accuracies, per-class IoU and size buckets over the matched images."""
    lut, fixed_p, gt_names = _pred_lut(pred, truth, config)
    fixed_g = len(gt_names) if gt_names else None
    cluster_names = _semantic_cluster_names(pred) if config.match != "names" else []
    if config.match != "names":
        fixed_p = None
    acc = ConfusionSum(fixed_g, fixed_p)
    if cluster_names:  # every cluster the prediction names has a column, predicted here or not
        acc._grow(acc.conf.shape[0], len(cluster_names))
    pairs = [(p, g) for p, g in matched.pairs if p.semantic is not None]
    index_of: dict[int, int] = {}
    anns_by_image: dict[int, list[dict[str, Any]]] = {}  # the semantic truth's, and the space bias's objects
    if truth.instances is not None:
        for ann in truth.instances["annotations"]:
            anns_by_image.setdefault(int(ann["image_id"]), []).append(ann)
    if truth.semantic_from == "instances":
        assert truth.instances is not None
        index_of = {int(c["id"]): i + 1 for i, c in enumerate(truth.instances["categories"])}
    space = _SpaceBias(truth, gt_names, anns_by_image) if config.match == "names" else None
    missing_gt = 0
    log(f"semantic: {len(pairs)} images, ground truth from {truth.semantic_from}")
    for number, (p, g) in enumerate(pairs, start=1):
        raw, unlabelled, where = _predicted_labels(p)
        if lut is not None:
            predicted = lut[np.clip(raw, 0, IGNORE_16BIT)]
        else:
            predicted = raw.astype(np.int32, copy=True)
        predicted[unlabelled] = -1
        if truth.semantic_from == "instances":
            height, width = raw.shape
            if g.height and g.width and (g.height, g.width) != (height, width):
                raise ArtefactError(f"{where}: is {width}x{height} but its ground-truth image is {g.width}x{g.height}")
            labels = _rasterise(anns_by_image.get(g.id, []), height, width, index_of)
        else:
            if g.semantic is None or not g.semantic.is_file():
                missing_gt += 1
                continue
            values, gt_ignore = read_label_map(g.semantic)
            labels = _with_ignore(values, gt_ignore)
            if labels.shape != predicted.shape:
                raise ArtefactError(f"{where}: is {predicted.shape[1]}x{predicted.shape[0]} but its ground truth "
                                    f"{g.semantic} is {labels.shape[1]}x{labels.shape[0]}")
        acc.add(labels, predicted)
        if space is not None:
            space.add(g.id, predicted, labels)
        if progress is not None:
            progress(number, len(pairs))
    if missing_gt:
        warnings.append(f"{missing_gt} matched image(s) have no ground-truth label PNG; skipped")
    conf, buckets = acc.conf, acc.buckets
    out: dict[str, Any] = {"images": len(pairs) - missing_gt, "ground_truth": truth.semantic_from}
    if config.match != "names":
        clusters = conf[:, :-1]
        names_now = gt_names or [str(i) for i in range(conf.shape[0])]
        labels = [cluster_names[k] if k < len(cluster_names) else str(k) for k in range(clusters.shape[1])]
        if given is None:  # a cluster never predicted here is matched to nothing
            mapping = _voted_mapping(clusters, config.match)
        else:
            mapping = _given_mapping(given, labels, names_now, "semantic")
        conf = M.remap_confusion(conf, mapping)
        buckets = M.remap_confusion(buckets, mapping)
        out["cluster_mapping"] = {"mode": config.match, "given": given is not None, "clusters": int(clusters.shape[1]),
                                  "mapping": {label: (names_now[m] if 0 <= m < len(names_now) else None)
                                              for label, m in zip(labels, mapping)}}
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
    out["bias"] = {"class_preference": class_preference(conf, names),
                   "space_preference": space.result() if space is not None else None}
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


def _panoptic_pairs(pred: Prediction, truth: GroundTruth, matched: ImageMatch, pred_anns: dict[int, Any],
                    gt_anns: dict[int, Any]) -> Iterator[tuple[tuple[np.ndarray, list], tuple[np.ndarray, list]]]:
    """``((gt_map, gt_segments_info), (pred_map, pred_segments_info))`` of each matched image that
    both sides have a panoptic annotation for; a predicted map is the one in memory, else its PNG."""
    assert truth.panoptic_dir is not None
    for p, g in matched.pairs:
        in_memory = p.panoptic is not None
        pa = {"segments_info": p.segments or []} if in_memory else pred_anns.get(p.id)
        ga = gt_anns.get(g.id)
        if pa is None or ga is None:
            continue
        gt_map = _panoptic_ids(truth.panoptic_dir / ga["file_name"])
        if in_memory:
            pred_map = np.asarray(p.panoptic).astype(np.int64)
            where: Any = f"the panoptic map of {p.stem} (in memory)"
        else:
            assert pred.panoptic_dir is not None
            where = pred.panoptic_dir / pa["file_name"]
            pred_map = _panoptic_ids(where)
        if gt_map.shape != pred_map.shape:
            raise ArtefactError(f"{where}: size differs from its ground truth {truth.panoptic_dir / ga['file_name']}")
        yield (gt_map, ga.get("segments_info", [])), (pred_map, pa.get("segments_info", []))


def evaluate_panoptic(pred: Prediction, truth: GroundTruth, matched: ImageMatch, config: ScoreOptions,
                      warnings: list[str], progress: Progress | None, log: Log, given: Given | None = None) -> dict[str, Any]:
    """PQ / SQ / RQ (all, things, stuff) over the matched images.

    A predicted image's panoptic map is the one it holds in memory, else its PNG in
    ``pred.panoptic_dir``. Segment categories are those of ``pred.panoptic["categories"]``, or,
    without ``pred.panoptic``, category ``i`` is ``pred.names[i - 1]``.
    """
    assert pred.has_panoptic and truth.panoptic is not None and truth.panoptic_dir is not None
    gt_cats = truth.panoptic["categories"]
    gt_index = {int(c["id"]): i for i, c in enumerate(gt_cats)}
    isthing = np.array([bool(c.get("isthing", 1)) for c in gt_cats])
    if pred.panoptic is not None:
        pred_cats = sorted(pred.panoptic.get("categories", []), key=lambda c: int(c["id"]))
    else:
        pred_cats = [{"id": i + 1, "name": name} for i, name in enumerate(pred.names or [])]
    gt_anns = {int(a["image_id"]): a for a in truth.panoptic["annotations"]}
    pred_anns = {int(a["image_id"]): a for a in (pred.panoptic or {}).get("annotations", [])}
    notes: dict[str, Any] = {}
    if config.match == "names":
        to_gt = match_names([_norm(c["name"]) for c in pred_cats], [_norm(c["name"]) for c in gt_cats],
                            config.class_map, what="panoptic classes")
        pred_index = {int(c["id"]): t for c, t in zip(pred_cats, to_gt)}
    else:  # cluster ids: mapped to classes by the segments PQ would match, whatever their class
        if given is None:
            clusters = {int(c["id"]): k for k, c in enumerate(pred_cats)}
            votes = np.zeros((len(gt_cats), len(pred_cats)), dtype=np.int64)
            for (gt_map, gseg), (pred_map, pseg) in _panoptic_pairs(pred, truth, matched, pred_anns, gt_anns):
                pseg = [s for s in pseg if int(s["category_id"]) in clusters]
                votes += M.panoptic_cluster_votes(
                    gt_map, M.Segments([s["id"] for s in gseg], [gt_index[int(s["category_id"])] for s in gseg],
                                       [bool(s.get("iscrowd", 0)) for s in gseg]),
                    pred_map, M.Segments([s["id"] for s in pseg], [clusters[int(s["category_id"])] for s in pseg]),
                    len(pred_cats), len(gt_cats))
            mapping = _voted_mapping(votes, config.match)
        else:
            mapping = _given_mapping(given, [_norm(c["name"]) for c in pred_cats], [c["name"] for c in gt_cats],
                                     "panoptic")
        pred_index = {int(c["id"]): int(m) for c, m in zip(pred_cats, mapping) if m >= 0}
        notes["cluster_mapping"] = {
            "mode": config.match, "given": given is not None, "clusters": len(pred_cats),
            "mapped_clusters": len(pred_index),
            "mapping": {_norm(c["name"]): (_norm(gt_cats[m]["name"]) if m >= 0 else None)
                        for c, m in zip(pred_cats, mapping)}}
    stats = np.zeros((4, len(gt_cats)), dtype=np.float64)
    done = 0
    log(f"panoptic: {len(matched.pairs)} images")
    pairs = _panoptic_pairs(pred, truth, matched, pred_anns, gt_anns)
    for number, ((gt_map, gseg), (pred_map, pseg)) in enumerate(pairs, start=1):
        pseg = [s for s in pseg if int(s["category_id"]) in pred_index]
        gt_segments = M.Segments([s["id"] for s in gseg], [gt_index[int(s["category_id"])] for s in gseg],
                                 [bool(s.get("iscrowd", 0)) for s in gseg])
        pred_segments = M.Segments([s["id"] for s in pseg], [pred_index[int(s["category_id"])] for s in pseg])
        stats += M.panoptic_stats(gt_map, gt_segments, pred_map, pred_segments, len(gt_cats))
        done += 1
        if progress is not None:
            progress(number, len(matched.pairs))
    summary = M.panoptic_quality(stats, isthing)
    per = summary.pop("per_class")
    out: dict[str, Any] = {"images": done, **notes}
    for group in ("all", "things", "stuff"):
        out[group] = {k: (M._num(v) if k != "n" else v) for k, v in summary[group].items()}
    out["PQ"], out["SQ"], out["RQ"] = out["all"]["PQ"], out["all"]["SQ"], out["all"]["RQ"]
    out["per_class"] = {_norm(c["name"]): {"PQ": M._num(per["PQ"][i]), "SQ": M._num(per["SQ"][i]),
                                            "RQ": M._num(per["RQ"][i]), "TP": int(per["TP"][i]),
                                            "FP": int(per["FP"][i]), "FN": int(per["FN"][i])}
                        for i, c in enumerate(gt_cats)}
    return out


# ---- all tasks ------------------------------------------------------------------------------
def _possible_tasks(pred: Prediction, truth: GroundTruth) -> dict[str, str | None]:
    """task -> None if possible, else why not."""
    return {
        "instance": None if pred.results is not None and truth.instances is not None else (
            "the prediction holds no instances (predictions.json / COCO results)" if pred.results is None
            else "the ground truth holds no instances (a COCO instances JSON)"),
        "semantic": None if pred.has_semantic and truth.has_semantic else (
            "the prediction holds no semantic label maps" if not pred.has_semantic
            else "the ground truth has no semantic labels (label PNGs, or instances to rasterise)"),
        "panoptic": None if pred.has_panoptic and truth.panoptic is not None else (
            "the prediction holds no panoptic.json" if not pred.has_panoptic
            else "the ground truth is not a COCO panoptic JSON"),
    }


def _read_given(config: ScoreOptions, tasks: Sequence[str]) -> tuple[str, dict[str, Given]] | None:
    """``(mode, task -> mapping)`` of ``config.mapping`` (``--mapping``), None when none is given;
    refuses, in one line, a mapping without one of ``tasks``."""
    from zutiscli.artefacts.cluster_mapping import read_cluster_mapping

    where = getattr(config, "mapping", None)
    if not where:
        return None
    mode, maps = read_cluster_mapping(where)
    missing = [task for task in tasks if task not in maps]
    if missing:
        raise UsageError(f"--mapping {where}: maps clusters for {', '.join(maps)} only, not {', '.join(missing)}; "
                         f"score --task {','.join(t for t in tasks if t in maps) or 'semantic'} with it")
    return (mode if mode in MATCH_MODES and mode != "names" else "hungarian"), maps


def score(prediction: Prediction, truth: GroundTruth, config: ScoreOptions, *, progress: Progress | None = None,
          log: Log | None = None) -> dict[str, Any]:
    """Score ``prediction`` against ``truth``; the metrics of ``metrics.json``, nothing written.

    Args:
        prediction: as :func:`zutiscli.artefacts.predictions.load_prediction` reads it, or built
            in memory (its images' ``instances`` are gathered into one results list first).
        truth: as :func:`zutiscli.artefacts.groundtruth.load_ground_truth` reads it.
        config: the tasks, class matching and COCOeval options (:class:`ScoreOptions`).
        progress: ``progress(done, total)`` over the images of the semantic and panoptic tasks.
        log: ``log(message)`` for what is being scored.

    Returns:
        ``{"tasks": [...], "images": {...}, "instance": {...}, "semantic": {...},
        "panoptic": {...}, "warnings": [...], "seconds": s}``, one block per evaluated task
        (``images`` counts the matched images; absent for a bare COCO results JSON scored on
        instances alone). Scores are fractions in [0, 1]; ``seconds`` is the scoring time.

    Raises:
        ZutisError: a task of ``config.tasks`` the inputs do not allow, no task at all, or no
            predicted image matching a ground-truth image (one line naming both inputs).
    """
    say = log or (lambda message: None)
    start = time.perf_counter()
    gathered = prediction.all_results()
    if gathered is not prediction.results:  # instances held by the images in memory
        prediction = dataclasses.replace(prediction, results=gathered)
    possible = _possible_tasks(prediction, truth)
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
    given = _read_given(config, tasks)
    if given is not None and config.match == "names":  # a given mapping scores cluster ids
        config = dataclasses.replace(config, match=given[0])  # type: ignore[type-var]
    maps = given[1] if given is not None else {}
    warnings: list[str] = []
    metrics: dict[str, Any] = {"tasks": tasks}
    matched: ImageMatch | None = None
    if not prediction.results_in_gt_space or tasks != ["instance"]:
        gt_images = truth.images
        matched = match_images(prediction.images, gt_images)
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
        metrics["instance"] = evaluate_instances(prediction, truth, matched, config, warnings, say,
                                                 maps.get("instance"))
    if "semantic" in tasks:
        assert matched is not None
        metrics["semantic"] = evaluate_semantic(prediction, truth, matched, config, warnings, progress, say,
                                                maps.get("semantic"))
    if "panoptic" in tasks:
        assert matched is not None
        metrics["panoptic"] = evaluate_panoptic(prediction, truth, matched, config, warnings, progress, say,
                                                maps.get("panoptic"))
    metrics["warnings"] = warnings
    metrics["seconds"] = round(time.perf_counter() - start, 3)
    return metrics


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """The few numbers worth a glance: mask AP, mIoU, PQ, and PQ over things and over stuff where
    there are any (fractions)."""
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
        for group in ("things", "stuff"):
            if (metrics["panoptic"].get(group) or {}).get("n"):
                out[f"PQ_{group}"] = metrics["panoptic"][group]["PQ"]
    return out
