"""What both steps of ``zutis cluster`` (the masks' clusters and the stuff clusters) share: the
check of ``k``, the decoding threads, and each cluster's majority class with the clusters' purity and
NMI against ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from zutiscli.artefacts.clusters import ClusterInfo
from zutiscli.errors import UsageError


def check_k(k: int, masks: int, where: Path | str, what: str = "masks") -> None:
    """A :class:`UsageError` when fewer ``what`` than the ``k`` clusters asked for are at hand."""
    if k > masks:
        raise UsageError(f"-k {k}: {where} holds {masks} {what}, fewer than the clusters asked for; give -k {masks} "
                         f"or less")


def decode_workers(config: Any) -> int:
    """Threads decoding images: ``--workers``, else one per core, at most 8."""
    from zutiscli.data.workers import cores_per_process

    return config.workers if config.workers is not None else min(8, cores_per_process())


def cluster_quality(assignment: np.ndarray, sizes: np.ndarray, truth: Any, positions: np.ndarray
                    ) -> tuple[list[ClusterInfo], dict[str, Any], list[str | None]]:
    """Per cluster its size (and with ground truth its majority class); purity, NMI and matched
    counts (empty without ground truth); each mask's ground-truth class or ``None``."""
    from zutiscli.ops.cluster_quality import cluster_majority, contingency_table, normalized_mutual_info, purity

    k = len(sizes)
    if truth is None:
        return [ClusterInfo(cluster=c, size=int(sizes[c])) for c in range(k)], {}, [None] * len(positions)
    labels = truth.labels[positions]
    table = contingency_table(assignment, labels, k, len(truth.classes))
    majority, share, matched = cluster_majority(table)
    infos = [ClusterInfo(cluster=c, size=int(sizes[c]),
                         majority=truth.classes[majority[c]] if majority[c] >= 0 else None,
                         share=None if np.isnan(share[c]) else float(share[c]), matched=int(matched[c]))
             for c in range(k)]
    quality = {"purity": purity(table), "nmi": normalized_mutual_info(table), "matched": int(matched.sum()),
               "unmatched": int((labels < 0).sum())}
    return infos, quality, [truth.classes[label] if label >= 0 else None for label in labels.tolist()]
