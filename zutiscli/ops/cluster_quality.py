"""How well clusters of masks agree with hidden ground-truth classes: matching, purity, NMI.

The masks of a pseudo-label directory are grouped into clusters without labels; a ground truth of
the same images gives some masks a class: the class of the ground-truth instance each mask overlaps
best, if that overlap reaches an IoU threshold (:func:`best_overlap_labels`). Masks without one
are *unmatched* (label ``-1``) and are left out of every score.

The scores read a contingency table ``table[cluster, class]`` of matched masks
(:func:`contingency_table`):

- purity: the fraction of matched masks whose cluster's majority class is their own,
  ``sum_k max_c table[k, c] / sum table`` (1 = every cluster holds one class);
- NMI: normalised mutual information ``I(K; C) / ((H(K) + H(C)) / 2)`` in nats (the arithmetic
  mean normalisation, scikit-learn's default), 1 when the partitions are the same, 0 when
  independent.

Pure numpy; nothing here reads files.
"""

from __future__ import annotations

import numpy as np

__all__ = ["best_overlap_labels", "contingency_table", "cluster_majority", "normalized_mutual_info", "purity"]


def best_overlap_labels(iou: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """The class of the ground-truth instance each mask overlaps best, or ``-1``.

    Args:
        iou: ``(M, G)`` float, IoU of mask ``m`` with ground-truth instance ``g`` (one image's).
        labels: ``(G,)`` int, the class index (>= 0) of each ground-truth instance.
        threshold: the least IoU that counts as a match (inclusive).

    Returns:
        ``(M,)`` int64: ``labels[argmax_g iou[m, g]]`` where that IoU is ``>= threshold``, else -1.
        Ties go to the first instance. Several masks may match the same instance (this is a
        labelling of masks, not a one-to-one matching).
    """
    iou = np.asarray(iou, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if iou.ndim != 2 or labels.shape != (iou.shape[1],):
        raise ValueError(f"iou must be (M, G) and labels (G,), got {iou.shape} and {labels.shape}")
    out = np.full(iou.shape[0], -1, dtype=np.int64)
    if iou.shape[1] == 0 or iou.shape[0] == 0:
        return out
    best = iou.argmax(axis=1)
    hit = iou[np.arange(iou.shape[0]), best] >= threshold
    out[hit] = labels[best[hit]]
    return out


def contingency_table(clusters: np.ndarray, labels: np.ndarray, num_clusters: int, num_classes: int) -> np.ndarray:
    """Counts of masks per (cluster, class); masks with label ``-1`` (unmatched) are left out.

    Args:
        clusters: ``(N,)`` int, cluster ids in ``[0, num_clusters)``.
        labels: ``(N,)`` int, class ids in ``[0, num_classes)`` or -1.
        num_clusters, num_classes: the table's shape.

    Returns:
        ``(num_clusters, num_classes)`` int64.
    """
    clusters = np.asarray(clusters, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    if clusters.shape != labels.shape or clusters.ndim != 1:
        raise ValueError(f"clusters and labels must be (N,) alike, got {clusters.shape} and {labels.shape}")
    if clusters.size and (clusters.min() < 0 or clusters.max() >= num_clusters):
        raise ValueError(f"cluster ids must lie in [0, {num_clusters})")
    if labels.size and (labels.min() < -1 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [-1, {num_classes})")
    table = np.zeros((num_clusters, num_classes), dtype=np.int64)
    keep = labels >= 0
    np.add.at(table, (clusters[keep], labels[keep]), 1)
    return table


def _checked(table: np.ndarray) -> np.ndarray:
    table = np.asarray(table)
    if table.ndim != 2 or (table.size and table.min() < 0):
        raise ValueError(f"a contingency table is a (K, C) array of counts >= 0, got shape {table.shape}")
    return table.astype(np.float64)


def purity(table: np.ndarray) -> float | None:
    """``sum_k max_c table[k, c] / sum(table)``: the share of masks in their cluster's majority class.

    Args:
        table: ``(K, C)`` counts (:func:`contingency_table`).

    Returns:
        A float in ``(0, 1]``; ``None`` for a table with no masks.
    """
    counts = _checked(table)
    total = counts.sum()
    if total == 0:
        return None
    return float(counts.max(axis=1).sum() / total) if counts.shape[1] else None


def _entropy(counts: np.ndarray, total: float) -> float:
    p = counts[counts > 0] / total
    return float(-(p * np.log(p)).sum())


def normalized_mutual_info(table: np.ndarray) -> float | None:
    """Normalised mutual information of the clusters and classes of a contingency table.

    ``NMI = I(K; C) / ((H(K) + H(C)) / 2)`` with natural logarithms, from the joint frequencies
    ``table / n``. When both partitions are single groups (``H(K) = H(C) = 0``) they are the same
    and NMI is 1; empty rows and columns change nothing.

    Args:
        table: ``(K, C)`` counts (:func:`contingency_table`).

    Returns:
        A float in ``[0, 1]``; ``None`` for a table with no masks.
    """
    counts = _checked(table)
    total = counts.sum()
    if total == 0:
        return None
    rows, cols = counts.sum(axis=1), counts.sum(axis=0)
    h_rows, h_cols = _entropy(rows, total), _entropy(cols, total)
    if h_rows + h_cols == 0:
        return 1.0
    k, c = np.nonzero(counts)
    joint = counts[k, c]
    mutual = float((joint / total * np.log(joint * total / (rows[k] * cols[c]))).sum())
    return float(min(1.0, max(0.0, mutual / ((h_rows + h_cols) / 2))))


def cluster_majority(table: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each cluster's majority class, its share of the cluster's matched masks, and that count.

    Args:
        table: ``(K, C)`` counts (:func:`contingency_table`).

    Returns:
        ``(majority, share, matched)``: ``(K,)`` int64 class index (the first on ties; -1 for a
        cluster without matched masks), ``(K,)`` float64 in ``[0, 1]`` (NaN without matched
        masks), ``(K,)`` int64 matched masks per cluster.
    """
    counts = _checked(table)
    matched = counts.sum(axis=1)
    majority = np.full(counts.shape[0], -1, dtype=np.int64)
    share = np.full(counts.shape[0], np.nan)
    some = matched > 0
    if counts.shape[1]:
        majority[some] = counts[some].argmax(axis=1)
        share[some] = counts[some].max(axis=1) / matched[some]
    return majority, share, matched.astype(np.int64)
