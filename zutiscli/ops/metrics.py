"""Segmentation metrics as pure array functions: confusion matrices, IoU, size buckets, cluster
matching (Hungarian and many-to-one), and panoptic quality.

Conventions
-----------
Label maps are ``(H, W)`` integer arrays of class indices. ``ignore_index`` marks ground-truth pixels
that are not scored (PASCAL VOC boundaries, crowd overlaps, ...). Ground-truth values outside
``[0, G)`` are treated as ignored too.

A **confusion matrix** in this module has shape ``(G, P + 1)`` and dtype int64: row ``g`` counts
the scored pixels whose ground truth is class ``g``, column ``p < P`` those predicted as class (or
cluster) ``p``, and the extra last column those whose prediction is *no class at all* (a value
outside ``[0, P)``, e.g. 255 "unlabelled" in a prediction). Such pixels are misses: they count in
the ground-truth total of their class and in no prediction's total, exactly as mmsegmentation's
``intersect_and_union`` does. Once predictions are in the ground-truth index space (``P == G``),
:func:`semantic_scores` turns the matrix into IoUs.

Definitions (the ones the ZUTIS, ReCo and STEGO evaluation code use)
--------------------------------------------------------------------
- IoU of class c = TP / (TP + FP + FN) = ``C[c, c] / (row_sum[c] + col_sum[c] - C[c, c])``;
  ``NaN`` when the union is empty, i.e. the class is in neither the ground truth nor the
  prediction (on scored pixels).
- mIoU = ``nanmean`` of the per-class IoUs: the mean over classes present in the ground truth or
  in the prediction. Background (index 0) is a class like any other, as in the ZUTIS paper.
  (The official ZUTIS ``RunningScore``, adapted from pytorch-semseg, computes the same
  ``np.nanmean(diag / (rows + cols - diag))``.)
- pixel accuracy = correctly labelled scored pixels / scored pixels; mean accuracy = ``nanmean``
  of per-class recall ``C[c, c] / row_sum[c]``.

Size buckets (ImageNet-S, Gao et al., "Large-scale Unsupervised Semantic Segmentation", TPAMI 2022;
as their ``evaluation/metric.py`` computes them, which the ZUTIS paper reports in its Table 5):
in each image, a ground-truth class c other than background has size
``ceil(100 * pixels_of_c / pixels_of_image)`` (percent, ignored pixels included in the
denominator) and falls in bucket S if size <= 5, MS if <= 25, ML if <= 50, else L. A bucket's
matrix accumulates, image by image, the confusion rows of the background and of the classes in
that bucket (only for images where the bucket holds at least one class). Bucket mIoU is the mean
IoU over the classes with ground-truth pixels in the bucket (background included). One deliberate
difference: the official script treats the ignore value (1000) like a class when it sorts pixels
into buckets, so predictions on ignored pixels count as false positives and an ignored region can
open a bucket; here ignored pixels are never scored, in buckets as everywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

#: Default ignore value of 8-bit label maps (PASCAL VOC convention).
IGNORE_INDEX = 255

#: ImageNet-S size buckets: (name, largest size in percent of the image, inclusive).
SIZE_BUCKETS: tuple[tuple[str, int], ...] = (("S", 5), ("MS", 25), ("ML", 50), ("L", 100))


# ---- confusion matrices ---------------------------------------------------------------------
def confusion_matrix(
    gt: np.ndarray,
    pred: np.ndarray,
    num_classes: int,
    num_pred: int | None = None,
    ignore_index: int | None = IGNORE_INDEX,
) -> np.ndarray:
    """Confusion matrix of one or many label maps (one ``np.bincount``).

    Args:
        gt: ground-truth class indices, any integer dtype and shape (usually ``(H, W)``).
        pred: predicted class (or cluster) indices, same shape as ``gt``.
        num_classes: G, the number of ground-truth classes (background included).
        num_pred: P, the number of predicted classes or clusters; defaults to G.
        ignore_index: ground-truth value that is not scored (None: none).

    Returns:
        ``(G, P + 1)`` int64: rows ground truth, columns prediction, last column "no class"
        (predicted values outside ``[0, P)``). Pixels whose ground truth is ``ignore_index`` or
        outside ``[0, G)`` are not counted.
    """
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
    num_pred = num_classes if num_pred is None else num_pred
    if num_classes < 1 or num_pred < 1:
        raise ValueError("need at least one ground-truth and one predicted class")
    g = gt.reshape(-1).astype(np.int64, copy=False)
    p = pred.reshape(-1).astype(np.int64, copy=False)
    valid = (g >= 0) & (g < num_classes)
    if ignore_index is not None:
        valid &= g != ignore_index
    g = g[valid]
    p = p[valid]
    p = np.where((p >= 0) & (p < num_pred), p, num_pred)
    width = num_pred + 1
    counts = np.bincount(g * width + p, minlength=num_classes * width)
    return counts.reshape(num_classes, width)


def _split(conf: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(tp, gt_total, pred_total)`` of a square-in-GT-space ``(G, G + 1)`` or ``(G, G)`` matrix."""
    conf = np.asarray(conf)
    classes = conf.shape[0]
    if conf.ndim != 2 or conf.shape[1] not in (classes, classes + 1):
        raise ValueError(f"expected a (G, G + 1) or (G, G) confusion matrix, got {conf.shape}")
    square = conf[:, :classes].astype(np.float64)
    tp = np.diag(square)
    gt_total = conf.sum(axis=1).astype(np.float64)
    pred_total = square.sum(axis=0)
    return tp, gt_total, pred_total


def per_class_iou(conf: np.ndarray) -> np.ndarray:
    """``(G,)`` float64 IoU per class of a ``(G, G + 1)`` matrix; NaN where the union is empty."""
    tp, gt_total, pred_total = _split(conf)
    union = gt_total + pred_total - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)


@dataclass
class SemanticScores:
    """Scores of a ``(G, G + 1)`` confusion matrix; fractions in [0, 1], NaN where undefined."""

    iou: np.ndarray  # (G,) float64, NaN for classes in neither ground truth nor prediction
    miou: float
    pixel_accuracy: float
    mean_accuracy: float
    gt_pixels: np.ndarray  # (G,) int64 scored ground-truth pixels per class
    pred_pixels: np.ndarray  # (G,) int64 predicted pixels per class (on scored pixels)

    def to_json(self, names: Sequence[str] | None = None) -> dict[str, Any]:
        names = list(names) if names is not None else [str(i) for i in range(len(self.iou))]
        return {
            "mIoU": _num(self.miou),
            "pixel_accuracy": _num(self.pixel_accuracy),
            "mean_accuracy": _num(self.mean_accuracy),
            "per_class_iou": {name: _num(v) for name, v in zip(names, self.iou)},
        }


def main_confusions(conf: np.ndarray, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Where each ground-truth class's pixels went: its recall and the label that took most of the rest.

    Args:
        conf: ``(G, G + 1)`` confusion matrix in ground-truth index space (last column: pixels
            predicted as no class).
        names: ``G`` class names.

    Returns:
        For every class with ground-truth pixels, ``{"correct": recall, "confused_with": name,
        "fraction": share}``: ``name`` is the other class (or ``"unlabelled"`` for the last column)
        that received the largest share of the class's pixels, ``share`` that share (fractions of
        the class's ground-truth pixels). ``confused_with`` is None when every pixel was right.
        Classes with no ground-truth pixels are left out.
    """
    conf = np.asarray(conf, dtype=np.float64)
    classes = conf.shape[0]
    if conf.ndim != 2 or conf.shape[1] != classes + 1 or len(names) != classes:
        raise ValueError(f"expected a (G, G + 1) confusion matrix and G names, got {conf.shape} and {len(names)}")
    labels = list(names) + ["unlabelled"]
    out: dict[str, dict[str, Any]] = {}
    for index, row in enumerate(conf):
        total = row.sum()
        if total <= 0:
            continue
        others = row.copy()
        others[index] = -1.0
        worst = int(others.argmax())
        share = float(others[worst] / total)
        out[labels[index]] = {"correct": float(row[index] / total),
                              "confused_with": labels[worst] if share > 0 else None, "fraction": share}
    return out


def _num(value: float) -> float | None:
    """A JSON-ready float (NaN -> None)."""
    value = float(value)
    return None if np.isnan(value) else value


def _nanmean(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def semantic_scores(conf: np.ndarray) -> SemanticScores:
    """mIoU (nanmean over classes present in ground truth or prediction), pixel and mean accuracy."""
    tp, gt_total, pred_total = _split(conf)
    iou = per_class_iou(conf)
    total = gt_total.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(gt_total > 0, tp / np.where(gt_total > 0, gt_total, 1), np.nan)
    return SemanticScores(
        iou=iou,
        miou=_nanmean(iou),
        pixel_accuracy=float(tp.sum() / total) if total > 0 else float("nan"),
        mean_accuracy=_nanmean(recall),
        gt_pixels=gt_total.astype(np.int64),
        pred_pixels=pred_total.astype(np.int64),
    )


# ---- ImageNet-S size buckets ----------------------------------------------------------------
def class_size_buckets(conf: np.ndarray, total_pixels: int, background: int | None = 0) -> np.ndarray:
    """Bucket index (0 S, 1 MS, 2 ML, 3 L) of each ground-truth class of ONE image; -1 if absent.

    Args:
        conf: the image's ``(G, P + 1)`` confusion matrix (row sums = pixels of each class).
        total_pixels: ``H * W`` of the image, ignored pixels included (ImageNet-S convention).
        background: index of the background class, which belongs to no bucket (None: none).

    Returns:
        ``(G,)`` int64.
    """
    counts = np.asarray(conf).sum(axis=1).astype(np.int64)
    if total_pixels <= 0:
        raise ValueError("total_pixels must be positive")
    size = -((-100 * counts) // int(total_pixels))  # ceil(100 * count / total), exact in integers
    buckets = np.full(counts.shape, -1, dtype=np.int64)
    lower = 0
    for index, (_, upper) in enumerate(SIZE_BUCKETS):
        buckets[(counts > 0) & (size > lower) & (size <= upper)] = index
        lower = upper
    if background is not None and 0 <= background < len(buckets):
        buckets[background] = -1
    return buckets


def size_bucket_confusions(conf: np.ndarray, total_pixels: int, background: int | None = 0) -> np.ndarray:
    """Split ONE image's ``(G, P + 1)`` confusion matrix into the four ImageNet-S size buckets.

    Returns ``(4, G, P + 1)`` int64: bucket b holds the rows of the classes in b plus the
    background row, or nothing when no class of the image falls in b. Sum over images, then score
    each with :func:`bucket_miou`.
    """
    conf = np.asarray(conf)
    buckets = class_size_buckets(conf, total_pixels, background)
    out = np.zeros((len(SIZE_BUCKETS), *conf.shape), dtype=np.int64)
    for index in range(len(SIZE_BUCKETS)):
        rows = buckets == index
        if not rows.any():
            continue
        if background is not None and 0 <= background < len(rows):
            rows = rows.copy()
            rows[background] = True
        out[index][rows] = conf[rows]
    return out


def bucket_miou(bucket_conf: np.ndarray) -> dict[str, float]:
    """mIoU of each size bucket of a summed ``(4, G, G + 1)`` array: mean IoU over classes with
    ground-truth pixels in the bucket (ImageNet-S ``mIoUs[i]``); NaN for an empty bucket."""
    result: dict[str, float] = {}
    for (name, _), conf in zip(SIZE_BUCKETS, np.asarray(bucket_conf)):
        tp, gt_total, pred_total = _split(conf)
        present = gt_total > 0
        union = gt_total + pred_total - tp
        result[name] = float(np.mean(tp[present] / union[present])) if present.any() else float("nan")
    return result


# ---- matching cluster ids to classes --------------------------------------------------------
def hungarian_mapping(table: np.ndarray) -> np.ndarray:
    """One-to-one assignment of predicted clusters to ground-truth classes maximising overlap.

    ``table`` is ``(G, K)``: overlap (pixels, or votes) of class g with cluster k -- for a
    confusion matrix of this module pass ``conf[:, :-1]`` (the "no class" column is not a
    cluster). Uses scipy's ``linear_sum_assignment(..., maximize=True)`` (the STEGO / MaskDistill
    protocol). Returns ``(K,)`` int64: the class of each cluster, -1 for clusters left without a
    class (when K > G).
    """
    table = _as_table(table)
    mapping = np.full(table.shape[1], -1, dtype=np.int64)
    rows, cols = linear_sum_assignment(table, maximize=True)
    mapping[cols] = rows
    return mapping


def majority_mapping(table: np.ndarray) -> np.ndarray:
    """Many-to-one assignment: each cluster gets the class it overlaps most (-1 if it overlaps none).

    ``table`` as in :func:`hungarian_mapping`. Ties go to the lower class index. Returns ``(K,)``.
    """
    table = _as_table(table)
    mapping = np.argmax(table, axis=0).astype(np.int64) if table.shape[0] else np.full(table.shape[1], -1)
    mapping[table.sum(axis=0) == 0] = -1
    return mapping


def _as_table(table: np.ndarray) -> np.ndarray:
    table = np.asarray(table)
    if table.ndim != 2:
        raise ValueError(f"expected a (G, K) table, got shape {table.shape}")
    return table.astype(np.float64)


def remap_confusion(conf: np.ndarray, mapping: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """Merge the cluster columns of a ``(G, K + 1)`` confusion matrix into class columns.

    ``mapping`` is ``(K,)``: the class of each cluster, -1 for none (its pixels become "no class").
    Returns ``(G, G + 1)`` (or ``(G, num_classes + 1)``) int64, ready for :func:`semantic_scores`.
    Works on a stack ``(..., G, K + 1)`` too (size buckets).
    """
    conf = np.asarray(conf)
    mapping = np.asarray(mapping, dtype=np.int64)
    clusters = conf.shape[-1] - 1
    if mapping.shape != (clusters,):
        raise ValueError(f"mapping has {mapping.shape[0]} entries for {clusters} clusters")
    classes = conf.shape[-2] if num_classes is None else num_classes
    target = np.where((mapping >= 0) & (mapping < classes), mapping, classes)
    target = np.append(target, classes)  # the "no class" column stays "no class"
    out = np.zeros((*conf.shape[:-1], classes + 1), dtype=np.int64)
    np.add.at(np.moveaxis(out, -1, 0), target, np.moveaxis(conf.astype(np.int64), -1, 0))
    return out


def remap_labels(labels: np.ndarray, mapping: np.ndarray, fill: int = -1) -> np.ndarray:
    """Apply a cluster -> class ``mapping`` to a label map; values outside the mapping get ``fill``."""
    labels = np.asarray(labels)
    mapping = np.asarray(mapping, dtype=np.int64)
    out = np.full(labels.shape, fill, dtype=np.int64)
    inside = (labels >= 0) & (labels < len(mapping))
    out[inside] = mapping[labels[inside]]
    out[out < 0] = fill
    return out


# ---- U2Seg many-to-one matching of instance clusters ----------------------------------------
def cluster_votes(
    detections: Sequence[tuple[np.ndarray, np.ndarray, Any]],
    ground_truth: Sequence[tuple[np.ndarray, Any]],
    num_clusters: int,
    num_classes: int,
    *,
    min_score: float = 0.6,
    min_iou: float = 0.7,
) -> np.ndarray:
    """Votes of instance clusters for classes, as U2Seg's evaluation counts them.

    For each image, every detection with ``score >= min_score`` votes, once per ground-truth
    instance it overlaps with ``IoU > min_iou``, for that instance's class. (U2Seg computes the
    IoU between boxes; pass boxes or RLE masks, see below.)

    Args:
        detections: per image ``(cluster_ids (N,) int, scores (N,) float, regions)``.
        ground_truth: per image ``(class_ids (M,) int, regions)``, same image order.
        regions: either an ``(N, 4)`` float array of ``[x, y, w, h]`` boxes, or a list of N
            pycocotools RLE dicts (``counts`` as bytes or str); both sides must use the same kind.
        num_clusters: K (cluster ids lie in ``[0, K)``).
        num_classes: C (class ids lie in ``[0, C)``).

    Returns:
        ``(C, K)`` int64 votes: ready for :func:`majority_mapping` (U2Seg) or
        :func:`hungarian_mapping` (one-to-one).
    """
    from pycocotools import mask as mask_utils

    votes = np.zeros((num_classes, num_clusters), dtype=np.int64)
    for (clusters, scores, det_regions), (classes, gt_regions) in zip(detections, ground_truth):
        clusters = np.asarray(clusters, dtype=np.int64)
        scores = np.asarray(scores, dtype=np.float64)
        classes = np.asarray(classes, dtype=np.int64)
        keep = np.nonzero(scores >= min_score)[0]
        if keep.size == 0 or classes.size == 0:
            continue
        dets = _take_regions(det_regions, keep)
        gts = _take_regions(gt_regions, np.arange(classes.size))
        ious = np.asarray(mask_utils.iou(dets, gts, [0] * classes.size), dtype=np.float64)
        ious = ious.reshape(keep.size, classes.size)
        det_index, gt_index = np.nonzero(ious > min_iou)
        np.add.at(votes, (classes[gt_index], clusters[keep[det_index]]), 1)
    return votes


def _take_regions(regions: Any, index: np.ndarray) -> Any:
    if isinstance(regions, np.ndarray):
        return np.asarray(regions, dtype=np.float64).reshape(-1, 4)[index]
    chosen = []
    for i in index:
        rle = dict(regions[int(i)])
        if isinstance(rle.get("counts"), str):
            rle["counts"] = rle["counts"].encode("ascii")
        chosen.append(rle)
    return chosen


# ---- panoptic quality (COCO panoptic definition, Kirillov et al. 2019; panopticapi) ----------
#: Stats rows of :func:`panoptic_stats`.
PQ_TP, PQ_FP, PQ_FN, PQ_IOU = range(4)


@dataclass
class Segments:
    """Segments of one panoptic map: ids in the ``(H, W)`` id map, class index, crowd flag."""

    ids: np.ndarray  # (S,) int64 segment ids (0 is VOID and never a segment)
    classes: np.ndarray  # (S,) int64 class indices in [0, C)
    iscrowd: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # (S,) bool

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids, dtype=np.int64).reshape(-1)
        self.classes = np.asarray(self.classes, dtype=np.int64).reshape(-1)
        crowd = np.asarray(self.iscrowd, dtype=bool).reshape(-1)
        self.iscrowd = crowd if crowd.size == self.ids.size else np.zeros(self.ids.size, dtype=bool)


def panoptic_stats(
    gt_map: np.ndarray,
    gt_segments: Segments,
    pred_map: np.ndarray,
    pred_segments: Segments,
    num_classes: int,
    *,
    void_threshold: float = 0.5,
) -> np.ndarray:
    """Per-class TP, FP, FN counts and matched IoU sum of ONE image (panopticapi's ``pq_compute``).

    Args:
        gt_map, pred_map: ``(H, W)`` integer segment-id maps (e.g. ``R + 256 G + 256**2 B`` of a
            COCO panoptic PNG). Id 0, and any id not listed in the segments, is VOID.
        gt_segments, pred_segments: the segments listed for each map; crowd flags on the GT side.
        num_classes: C.
        void_threshold: an unmatched prediction is not a false positive when more than this
            fraction of it lies on VOID or on a crowd region of its class.

    Returns:
        ``(4, C)`` float64 rows :data:`PQ_TP`, :data:`PQ_FP`, :data:`PQ_FN`, :data:`PQ_IOU`.

    Matching, as in the COCO panoptic definition: a GT and a predicted segment of the same class
    match when IoU > 0.5, where the union leaves out the predicted pixels that fall on VOID (so
    predicting over unlabelled pixels is not punished); crowd GT segments are never matched.
    Each unmatched non-crowd GT segment is a false negative; each unmatched prediction is a false
    positive unless more than ``void_threshold`` of its area lies on VOID or on its class's crowd
    region.
    """
    gt_map = np.asarray(gt_map, dtype=np.int64)
    pred_map = np.asarray(pred_map, dtype=np.int64)
    if gt_map.shape != pred_map.shape:
        raise ValueError(f"ground truth {gt_map.shape} and prediction {pred_map.shape} differ in shape")
    stats = np.zeros((4, num_classes), dtype=np.float64)
    # Relabel both maps to dense codes: 0 = VOID, 1..S = listed segments (in listed order).
    gt_code = _dense_codes(gt_map, gt_segments.ids)
    pred_code = _dense_codes(pred_map, pred_segments.ids)
    n_gt = gt_segments.ids.size + 1
    n_pred = pred_segments.ids.size + 1
    joint = np.bincount((gt_code * n_pred + pred_code).reshape(-1), minlength=n_gt * n_pred)
    joint = joint.reshape(n_gt, n_pred)
    gt_area = joint.sum(axis=1)
    pred_area = joint.sum(axis=0)
    gt_matched = np.zeros(n_gt, dtype=bool)
    pred_matched = np.zeros(n_pred, dtype=bool)
    for g, p in zip(*np.nonzero(joint[1:, 1:])):
        gi, pi = g + 1, p + 1
        if gt_segments.iscrowd[g]:
            continue
        if gt_segments.classes[g] != pred_segments.classes[p]:
            continue
        intersection = joint[gi, pi]
        union = pred_area[pi] + gt_area[gi] - intersection - joint[0, pi]
        iou = intersection / union if union > 0 else 0.0
        if iou > 0.5:
            cls = gt_segments.classes[g]
            stats[PQ_TP, cls] += 1
            stats[PQ_IOU, cls] += iou
            gt_matched[gi] = True
            pred_matched[pi] = True
    crowd_of_class: dict[int, list[int]] = {}
    for g in range(gt_segments.ids.size):
        if gt_segments.iscrowd[g]:
            crowd_of_class.setdefault(int(gt_segments.classes[g]), []).append(g + 1)
            continue
        if not gt_matched[g + 1]:
            stats[PQ_FN, gt_segments.classes[g]] += 1
    for p in range(pred_segments.ids.size):
        pi = p + 1
        if pred_matched[pi] or pred_area[pi] == 0:
            continue
        cls = int(pred_segments.classes[p])
        on_void = joint[0, pi] + sum(joint[c, pi] for c in crowd_of_class.get(cls, []))
        if on_void / pred_area[pi] > void_threshold:
            continue
        stats[PQ_FP, cls] += 1
    return stats


def panoptic_cluster_votes(
    gt_map: np.ndarray,
    gt_segments: Segments,
    pred_map: np.ndarray,
    pred_segments: Segments,
    num_clusters: int,
    num_classes: int,
) -> np.ndarray:
    """``(C, K)`` int64 votes of ONE image: ``[c, k]`` counts the predicted segments of cluster
    ``k`` (``pred_segments.classes`` are cluster indices) that match a non-crowd GT segment of class
    ``c`` as PQ matches segments, class-agnostically (IoU > 0.5, the predicted pixels on VOID left
    out of the union; at most one match per segment, as IoU > 0.5 implies). Summed over images,
    the table :func:`hungarian_mapping` and :func:`majority_mapping` take to map clusters to
    classes for PQ."""
    gt_map = np.asarray(gt_map, dtype=np.int64)
    pred_map = np.asarray(pred_map, dtype=np.int64)
    if gt_map.shape != pred_map.shape:
        raise ValueError(f"ground truth {gt_map.shape} and prediction {pred_map.shape} differ in shape")
    votes = np.zeros((num_classes, num_clusters), dtype=np.int64)
    gt_code = _dense_codes(gt_map, gt_segments.ids)
    pred_code = _dense_codes(pred_map, pred_segments.ids)
    n_gt, n_pred = gt_segments.ids.size + 1, pred_segments.ids.size + 1
    joint = np.bincount((gt_code * n_pred + pred_code).reshape(-1), minlength=n_gt * n_pred).reshape(n_gt, n_pred)
    gt_area, pred_area = joint.sum(axis=1), joint.sum(axis=0)
    for g, q in zip(*np.nonzero(joint[1:, 1:])):
        if gt_segments.iscrowd[g]:
            continue
        intersection = joint[g + 1, q + 1]
        union = pred_area[q + 1] + gt_area[g + 1] - intersection - joint[0, q + 1]
        if union > 0 and intersection / union > 0.5:
            votes[gt_segments.classes[g], pred_segments.classes[q]] += 1
    return votes


def _dense_codes(id_map: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Map segment ids to 1..S in listed order; VOID (0) and unlisted ids to 0."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size == 0:
        return np.zeros(id_map.shape, dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    position = np.searchsorted(sorted_ids, id_map)
    position = np.clip(position, 0, sorted_ids.size - 1)
    found = (sorted_ids[position] == id_map) & (id_map != 0)
    return np.where(found, order[position] + 1, 0)


def panoptic_quality(stats: np.ndarray, isthing: np.ndarray) -> dict[str, Any]:
    """PQ, SQ, RQ over all classes, things and stuff from summed :func:`panoptic_stats`.

    Per class: ``PQ = IoU_sum / (TP + FP/2 + FN/2)``, ``SQ = IoU_sum / TP``,
    ``RQ = TP / (TP + FP/2 + FN/2)``; ``PQ = SQ x RQ``. Averages are over the classes with
    ``TP + FP + FN > 0`` (panopticapi's ``pq_average``). Fractions in [0, 1]; NaN for an empty
    group. Returns ``{"all"|"things"|"stuff": {"PQ", "SQ", "RQ", "n"}, "per_class": {"PQ", "SQ",
    "RQ", "TP", "FP", "FN"} arrays (C,)}``.
    """
    stats = np.asarray(stats, dtype=np.float64)
    isthing = np.asarray(isthing, dtype=bool)
    tp, fp, fn, iou = stats
    denominator = tp + 0.5 * fp + 0.5 * fn
    counted = (tp + fp + fn) > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        pq = np.where(counted, iou / np.where(denominator > 0, denominator, 1), np.nan)
        sq = np.where(counted, np.where(tp > 0, iou / np.where(tp > 0, tp, 1), 0.0), np.nan)
        rq = np.where(counted, tp / np.where(denominator > 0, denominator, 1), np.nan)
    out: dict[str, Any] = {}
    for group, select in (("all", np.ones_like(isthing)), ("things", isthing), ("stuff", ~isthing)):
        chosen = select & counted
        n = int(chosen.sum())
        out[group] = {
            "PQ": float(pq[chosen].mean()) if n else float("nan"),
            "SQ": float(sq[chosen].mean()) if n else float("nan"),
            "RQ": float(rq[chosen].mean()) if n else float("nan"),
            "n": n,
        }
    out["per_class"] = {"PQ": pq, "SQ": sq, "RQ": rq, "TP": tp, "FP": fp, "FN": fn}
    return out


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """COCO panoptic PNG ``(H, W, 3)`` uint8 -> ``(H, W)`` int64 ids ``R + 256 G + 256**2 B``."""
    rgb = np.asarray(rgb)
    if rgb.ndim == 2:
        return rgb.astype(np.int64)
    rgb = rgb[..., :3].astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
