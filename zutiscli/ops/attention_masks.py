"""MaskDistill's initial object mask from a ViT's last attention block (Van Gansbeke et al. 2022).

For ONE image (paper, Sec. 3.2):

1. ``a_CLS``: the [CLS]-to-patch affinity averaged over heads. We use the last block's softmax
   attention of the [CLS] query (``LastBlockFeatures.cls_attention``, ``(heads, h, w)``); the
   paper's dot products ``q_CLS . k_j`` give the same per-head ranking (softmax is monotone), so
   only the head averaging differs. A ``(h, w)`` map (already averaged, or raw ``q . k`` logits)
   is accepted as well.
2. Proposals ``P``: the top ``top_k`` fraction of patches by ``a_CLS`` (``ceil(top_k * N)``,
   at least 1; default 40 %); source ``s = argmax a_CLS`` (first patch on ties).
3. Patch affinity ``A = K K^T`` from the last-block keys with heads concatenated, i.e. the SUM
   over heads of the per-head key dot products. The paper averages over heads; that is the sum
   divided by the number of heads, so every sign test below is the same.
4. ``P' = {j in P : A[s, j] > 0}``; ``mask[j] = 1`` iff ``sum_{i in P'} A[i, j] > 0``.

Score (ours, not the paper's): the contrast of the head-averaged [CLS] attention inside vs
outside the mask, ``clip((m_in - m_out) / (m_in + m_out), 0, 1)`` on the attention shifted to
a minimum of 0; 0 when the mask is no more attended than the rest (or covers every patch),
towards 1 when the attention falls inside the mask only.

Inputs may be numpy arrays or torch tensors (any float dtype; computed in float64 on the CPU).
Cost: no ``(N, N)`` matrix is formed, since ``sum_{i in P'} k_i . k_j = k_j . (sum_{i in P'} k_i)``:
``O(N * C)`` for ``N = h * w`` patches, a few milliseconds for 80 x 80 patches, 384 channels.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from zutiscli.ops.arrays import to_numpy as _to_numpy

__all__ = ["maskdistill_mask", "cls_affinity_map"]




def cls_affinity_map(cls_attention: Any) -> np.ndarray:
    """``(h, w)`` float64 [CLS]-to-patch affinity averaged over heads.

    Args:
        cls_attention: ``(heads, h, w)`` per-head attention (or logits), or ``(h, w)`` already
            averaged; numpy or torch.
    """
    array = _to_numpy(cls_attention).astype(np.float64)
    if array.ndim == 3:
        return array.mean(axis=0)
    if array.ndim == 2:
        return array
    raise ValueError(f"cls_attention must be (heads, h, w) or (h, w), got shape {tuple(array.shape)}")


def maskdistill_mask(
    cls_attention: Any,
    keys: Any,
    *,
    top_k: float = 0.4,
) -> tuple[np.ndarray, float] | None:
    """One object mask per image from [CLS] attention and key affinities (MaskDistill).

    Args:
        cls_attention: ``(heads, h, w)`` [CLS]-to-patch attention of the last block (e.g.
            ``LastBlockFeatures.cls_attention[i]``) or a ``(h, w)`` head-averaged map.
        keys: ``(h, w, C)`` last-block keys, heads concatenated (``LastBlockFeatures.keys[i]``).
        top_k: fraction of patches kept as proposals, in ``(0, 1]``.

    Returns:
        ``(mask, score)``: ``(h, w)`` bool patch-level mask and a score in ``[0, 1]`` (see the
        module docstring). None when the [CLS] map is constant (e.g. all zeros: no source to
        start from) or the mask comes out empty (e.g. zero keys).
    """
    if not 0.0 < top_k <= 1.0:
        raise ValueError(f"top_k must be in (0, 1], got {top_k}")
    attention = cls_affinity_map(cls_attention)
    key_array = _to_numpy(keys).astype(np.float64)
    if key_array.ndim != 3 or key_array.shape[:2] != attention.shape:
        raise ValueError(
            f"keys must be (h, w, C) on the attention's {attention.shape} grid, got {tuple(key_array.shape)}"
        )
    grid = attention.shape
    flat = attention.ravel()
    if not np.all(np.isfinite(flat)) or float(flat.max() - flat.min()) <= 0.0:
        return None
    count = flat.size
    n_proposals = min(count, max(1, math.ceil(top_k * count)))
    order = np.argsort(-flat, kind="stable")
    proposals = order[:n_proposals]
    source = int(order[0])
    key_rows = key_array.reshape(count, -1).astype(np.float64)
    from_source = key_rows[proposals] @ key_rows[source]
    kept = proposals[from_source > 0]
    if kept.size == 0:
        return None
    votes = key_rows @ key_rows[kept].sum(axis=0)  # sum_{i in P'} A[i, j] for every j
    mask = (votes > 0).reshape(grid)
    if not mask.any():
        return None
    shifted = attention - attention.min()
    inside = float(shifted[mask].mean())
    outside = float(shifted[~mask].mean()) if (~mask).any() else inside
    total = inside + outside
    score = (inside - outside) / total if total > 0 else 0.0
    return mask, float(np.clip(score, 0.0, 1.0))
