"""The two biases ReCLIP++ (Wang & Kang) measures in a semantic segmenter: class preference and space preference.

* **Class preference** (ReCLIP++'s Table VII, left): in the confusion matrix, row ``i`` normalised
  by the class's ground-truth pixels, the share labelled ``i`` minus the largest share given to any
  one other class; averaged over the classes with ground-truth pixels. 1 = no confusion, negative =
  a class is mostly read as another one. :func:`class_preference` also lists the largest
  off-diagonal shares (a cow read as a dog).
* **Space preference** (Table VII, right; Fig. 1a): mIoU as a function of the distance of an
  object's centroid from the image centre, and the mean slope of that curve between neighbouring
  distance bins (``(-inf, 0]`` when centred objects fare better; 0 = no preference). The paper
  leaves the per-object IoU to its appendix; here an object's IoU is taken inside its bounding box:
  ``|M & P| / |(M | P) & box|`` with ``M`` its mask and ``P`` the pixels predicted as its class, so
  that predictions elsewhere in the image (or on another object of its class in the box) do not
  count against it. Distances are normalised: 0 at
  the centre, 1 at a corner. Per bin, each class's intersections and unions are summed over its
  objects there, then the IoUs averaged over the classes present in the bin.

Pure functions over numpy arrays.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["DISTANCE_BINS", "class_preference", "distance_bin", "object_distance", "object_overlap",
           "space_preference"]

#: Equal-width bins of the normalised centroid distance ``[0, 1]``.
DISTANCE_BINS = 5


def class_preference(conf: np.ndarray, names: Sequence[str], top: int = 5) -> dict[str, Any]:
    """ReCLIP++'s class-preference score and the largest confusions of a confusion matrix.

    Args:
        conf: ``(G, G)`` or ``(G, G + 1)`` pixel counts, rows = ground truth, columns = predicted in
            the same class order (a last extra column, pixels predicted as no class, counts in the
            row's total but is never "another class").
        names: ``G`` class names.
        top: how many of the largest off-diagonal shares to list.

    Returns:
        ``{"score": mean over classes with pixels of (own share - largest other share) or None,
        "largest_confusions": [{"truth", "predicted", "fraction"}, ...]}`` (fractions of the truth
        class's pixels, largest first, zero shares left out).
    """
    conf = np.asarray(conf, dtype=np.float64)
    classes = conf.shape[0]
    if conf.ndim != 2 or conf.shape[1] not in (classes, classes + 1) or len(names) != classes:
        raise ValueError(f"expected a (G, G) or (G, G + 1) matrix and G names, got {conf.shape} and {len(names)}")
    totals = conf.sum(axis=1)
    present = totals > 0
    shares = np.divide(conf[:, :classes], totals[:, None], out=np.zeros((classes, classes)), where=present[:, None])
    others = shares.copy()
    np.fill_diagonal(others, -np.inf)
    scores = np.diag(shares) - others.max(axis=1) if classes > 1 else np.diag(shares)
    np.fill_diagonal(others, 0.0)
    order = np.argsort(-others, axis=None, kind="stable")[:max(0, top)]
    largest = [{"truth": names[i], "predicted": names[j], "fraction": float(others[i, j])}
               for i, j in zip(*np.unravel_index(order, others.shape)) if others[i, j] > 0]
    return {"score": float(scores[present].mean()) if present.any() else None, "largest_confusions": largest}


def object_distance(mask: np.ndarray) -> float:
    """The distance of a ``(H, W)`` mask's centroid from the image centre: 0 at the centre, 1 at a corner."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        raise ValueError("an empty mask has no centroid")
    height, width = mask.shape
    dy = (rows.mean() + 0.5) - height / 2
    dx = (cols.mean() + 0.5) - width / 2
    return float(np.hypot(dy, dx) / np.hypot(height / 2, width / 2))


def object_overlap(mask: np.ndarray, predicted: np.ndarray, label: int,
                   truth: np.ndarray | None = None) -> tuple[int, int]:
    """``(intersection, union)`` in pixels of an object's ``(H, W)`` mask and the pixels of
    ``predicted`` (``(H, W)`` int labels) that are ``label``, inside the mask's bounding box.

    ``truth`` (``(H, W)`` ground-truth labels): predicted pixels that lie on another object of the
    same class in the box are that object's, not false positives of this one."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return 0, 0
    box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    own, hit = mask[box], predicted[box] == label
    if truth is not None:
        hit &= own | (truth[box] != label)
    return int(np.count_nonzero(own & hit)), int(np.count_nonzero(own | hit))


def space_preference(intersection: np.ndarray, union: np.ndarray, objects: np.ndarray) -> dict[str, Any]:
    """mIoU by distance bin and the mean slope between neighbouring bins.

    Args:
        intersection, union: ``(B, C)`` pixel sums per distance bin (:data:`DISTANCE_BINS` equal
            bins of ``[0, 1]``) and class, from :func:`object_overlap`.
        objects: ``(B,)`` objects per bin.

    Returns:
        ``{"bins": [{"distance": [low, high], "objects": n, "mIoU": value or None}, ...],
        "score": mean of (mIoU difference / distance difference) between consecutive bins that
        hold objects, or None with fewer than two such bins}``.
    """
    intersection = np.asarray(intersection, dtype=np.float64)
    union = np.asarray(union, dtype=np.float64)
    bins = intersection.shape[0]
    edges = np.linspace(0.0, 1.0, bins + 1)
    rows = []
    points = []
    for b in range(bins):
        seen = union[b] > 0
        miou = float((intersection[b, seen] / union[b, seen]).mean()) if seen.any() else None
        rows.append({"distance": [round(float(edges[b]), 4), round(float(edges[b + 1]), 4)], "objects": int(objects[b]),
                     "mIoU": miou})
        if miou is not None:
            points.append(((edges[b] + edges[b + 1]) / 2, miou))
    slopes = [(m1 - m0) / (d1 - d0) for (d0, m0), (d1, m1) in zip(points, points[1:])]
    return {"bins": rows, "score": float(np.mean(slopes)) if slopes else None}


def distance_bin(distance: float, bins: int = DISTANCE_BINS) -> int:
    """The bin of a normalised distance (the last bin includes 1)."""
    return min(bins - 1, max(0, int(distance * bins)))
