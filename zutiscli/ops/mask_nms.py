"""Non-maximum suppression for instance masks: hard, soft (linear / Gaussian) and matrix NMS.

Conventions: ``N`` proposals; masks are ``(N, H, W)`` arrays, ``bool`` (as is), float
probabilities (foreground where ``> mask_threshold``, default 0.5) or integers (non-zero =
foreground), numpy or torch (moved to the CPU). Scores are ``(N,)`` non-negative floats (higher is
better); labels ``(N,)`` integers. With labels, suppression is **per class**: masks of different
labels never affect each other's scores. IoU of two binary masks = ``|A & B| / |A | B|`` in pixels;
two empty masks have IoU 0 (the package's one rule, :func:`zutiscli.ops.masks.mask_iou`).

Ordering and ties: "higher-scored" means earlier in the order by (score descending, input index
ascending); the same rule breaks ties everywhere, including in the returned order.

Methods (``f`` below is the score decay applied to proposal ``j`` by a selected proposal ``i``):

- ``"hard"``: greedy by score; a proposal is dropped when its IoU with an already kept proposal
  of the same class is ``> iou_threshold``. Scores are unchanged.
- ``"linear"`` soft-NMS (Bodla et al. 2017): repeatedly select the highest-scored remaining
  proposal ``i`` (re-sorting after every decay) and multiply the score of every remaining
  same-class proposal ``j`` by ``1 - IoU_ij`` when ``IoU_ij > iou_threshold`` (else by 1).
- ``"gaussian"`` soft-NMS: the same greedy loop with ``score_j *= exp(-IoU_ij^2 / sigma)`` for
  every remaining same-class ``j`` (no threshold).
- ``"matrix"`` NMS (SOLOv2, Wang et al. 2020), all decays at once from the original scores::

      decay_j   = min(1, min over same-class i ranked above j of  f(IoU_ij) / f(cmax_i))
      cmax_i    = max IoU of i with the same-class proposals ranked above i (0 if none)
      score_j  *= decay_j

  with kernel ``f(x) = exp(-x^2 / sigma)`` (``kernel="gaussian"``, SOLOv2's ``exp(-2 x^2)`` for
  sigma 0.5) or ``f(x) = 1 - x`` (``kernel="linear"``). A ratio whose denominator is 0 (``i`` is
  an exact duplicate of a higher proposal under the linear kernel) counts as ``+inf``: such an
  ``i`` is itself fully decayed and suppresses nothing. ``iou_threshold`` is not used. The cap at
  1 never binds within a class: its top proposal contributes ``f(IoU) / f(0) <= 1``.
- ``"none"``: no suppression.

After the method: proposals with final score ``<= score_threshold`` are dropped, the rest sorted
by final score (descending, ties by index) and the first ``max_detections`` kept.

:func:`mask_nms` computes all pairwise IoUs at once (:func:`mask_iou_matrix`: bit-packed
intersection counts for binary masks, a matrix product for soft ones), optionally on masks pooled
to a coarser grid (``downsample``). :func:`reference_mask_nms` is the literal definition, one IoU
at a time at full resolution, kept as the ground truth for tests and benchmarks.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch

from zutiscli.ops.arrays import to_numpy as _to_numpy
from zutiscli.ops.masks import iou_from_counts, mask_iou

__all__ = ["mask_iou_matrix", "mask_nms", "reference_mask_nms", "pool_masks", "NMS_METHODS"]

NMS_METHODS = ("hard", "linear", "gaussian", "matrix", "none")
Method = Literal["hard", "linear", "gaussian", "matrix", "none"]
Kernel = Literal["gaussian", "linear"]

# float32 adds integers exactly up to 2**24: binary intersections are exact below that many pixels.
_EXACT_FLOAT32_PIXELS = 1 << 24
# Float products up to this many multiply-adds use numpy einsum, larger ones torch (_products).
_EINSUM_MAX_MACS = 1 << 26
# Bit-packed intersections handle at most this many 64-bit words at a time (512 KiB: cache-sized
# blocks were fastest, 1.5-3x faster than 32 MiB ones).
_BLOCK_WORDS = 1 << 16




def _binarise(masks: Any, mask_threshold: float) -> np.ndarray:
    """``(N, ...)`` bool: bool masks as is, float masks ``> mask_threshold``, integers ``!= 0``."""
    array = _to_numpy(masks)
    if array.dtype == bool:
        return array
    if np.issubdtype(array.dtype, np.floating):
        return array > mask_threshold
    return array != 0


def _float_rows(masks: np.ndarray, dtype: type) -> np.ndarray:
    """``(N, P)`` contiguous float array of flattened masks (bool read as 0/1)."""
    flat = masks.reshape(masks.shape[0], -1)
    if flat.dtype == bool:
        flat = flat.view(np.uint8)
    return np.ascontiguousarray(flat, dtype=dtype)


def _areas(flat: np.ndarray) -> np.ndarray:
    """``(N,)`` float64 row sums of ``(N, P)`` masks (pixel counts for bool masks)."""
    if flat.dtype == bool:
        return np.count_nonzero(flat, axis=1).astype(np.float64)
    return flat.sum(axis=1, dtype=np.float64)


def _products(left: np.ndarray, right: np.ndarray | None) -> np.ndarray:
    """``left @ right.T`` (``right`` = ``left`` when None) as float64.

    Small products use numpy's own single-threaded ``einsum`` loops, not BLAS: right after
    multi-threaded torch work (a model forward) OpenBLAS's threads compete with torch's spinning
    ones and a ``100 x 4096`` product was measured to stall ~0.1 s instead of ~1 ms on 2 busy
    cores (einsum: ~6 ms). Large products go through torch's threaded matmul.
    """
    other = left if right is None else right
    if left.shape[0] * other.shape[0] * left.shape[1] <= _EINSUM_MAX_MACS:
        return np.einsum("ip,jp->ij", left, other, optimize=False).astype(np.float64)
    first = torch.from_numpy(left)
    second = first if right is None else torch.from_numpy(other)
    return (first @ second.T).double().numpy()


def _pack_words(flat: np.ndarray) -> np.ndarray:
    """``(N, P)`` bool -> ``(N, ceil(P / 64))`` uint64 bit-packed rows (zero padded)."""
    packed = np.packbits(flat, axis=1)
    pad = -packed.shape[1] % 8
    if pad:
        packed = np.pad(packed, ((0, 0), (0, pad)))
    return np.ascontiguousarray(packed).view(np.uint64)


def _bit_intersections(first: np.ndarray, second: np.ndarray | None) -> np.ndarray:
    """Exact ``(N, M)`` int64 pixel counts of ``first_i & second_j`` (``second`` = ``first`` if None).

    Rows are packed 64 pixels per word; each pair costs ``P / 64`` word ANDs and popcounts,
    done in blocks of rows (at most ``_BLOCK_WORDS`` words at a time). For one set only the
    upper triangle (including the diagonal) is computed and mirrored.
    """
    left = _pack_words(first)
    right = left if second is None else _pack_words(second)
    rows, cols, words = left.shape[0], right.shape[0], left.shape[1]
    out = np.empty((rows, cols), dtype=np.int64)
    step = max(1, _BLOCK_WORDS // max(1, cols * words))
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        first_col = start if second is None else 0
        block = np.bitwise_count(left[start:stop, None, :] & right[None, first_col:, :])
        counts = block.sum(axis=-1, dtype=np.int64)
        out[start:stop, first_col:] = counts
        if second is None:
            out[first_col:, start:stop] = counts.T
    return out


def mask_iou_matrix(masks: Any, other: Any = None) -> np.ndarray:
    """Pairwise IoU of flattened masks, all pairs at once.

    Args:
        masks: ``(N, P)`` (or ``(N, H, W)``, flattened) bool or float masks.
        other: optional ``(M, P)`` second set; default ``masks`` itself.

    Returns:
        ``(N, M)`` float64 IoU, ``inter / (area_a + area_b - inter)``, 0 where the union is 0
        (:func:`zutiscli.ops.masks.iou_from_counts`: two empty masks have IoU 0).

    Bool masks: intersections are exact integer pixel counts from bit-packed rows (64 pixels
    per word: AND + popcount, the binary form of the ``A @ B.T`` product; numpy >= 2), so the
    result is the exact count ratio rounded once, as pycocotools ``mask.iou`` with
    ``iscrowd=0``. Float masks (and bool masks on numpy < 2): ``A @ B.T`` in float32 (numpy
    einsum; torch for large products), exact for 0/1 values when ``P < 2**24`` (float64
    beyond), else the soft IoU ``sum(a * b) / (sum(a) + sum(b) - sum(a * b))``. The division
    is float64.

    Cost: ``O(N * M * P)`` (bool: ``/ 64`` word operations, upper triangle only for one set,
    single-threaded): ~1 ms for 100 masks of 64 x 64, ~0.05-0.09 s at 512 x 512 on a busy
    2-core CPU. No multi-threaded BLAS for small products (see ``_products``).
    """
    first = _to_numpy(masks)
    second = first if other is None else _to_numpy(other)
    if first.ndim < 2 or second.ndim < 2:
        raise ValueError(f"masks must be (N, P) or (N, H, W), got {first.shape} and {second.shape}")
    first_flat = first.reshape(first.shape[0], -1)
    second_flat = second.reshape(second.shape[0], -1)
    if first_flat.shape[1] != second_flat.shape[1]:
        raise ValueError(f"mask sizes differ: {first.shape[1:]} and {second.shape[1:]}")
    if first_flat.dtype == bool and second_flat.dtype == bool and hasattr(np, "bitwise_count"):
        inter = _bit_intersections(first_flat, None if other is None else second_flat).astype(np.float64)
        area_left = np.diag(inter).copy() if other is None else _areas(first_flat)
    else:
        pixels = first_flat.shape[1]
        dtype = np.float32 if pixels < _EXACT_FLOAT32_PIXELS else np.float64
        left = _float_rows(first_flat, dtype)
        inter = _products(left, None if other is None else _float_rows(second_flat, dtype))
        area_left = _areas(first_flat)
    area_right = area_left if other is None else _areas(second_flat)
    union = area_left[:, None] + area_right[None, :] - inter
    return iou_from_counts(inter, union)


def pool_masks(
    masks: Any, factor: int, *, mask_threshold: float = 0.5, binary: bool = True
) -> np.ndarray:
    """Average-pool binary masks by an integer factor (and, by default, re-binarise).

    Args:
        masks: ``(N, H, W)`` bool / float (binarised ``> mask_threshold`` first) / int masks.
        factor: cell side in pixels (>= 1).
        binary: ``True`` = re-binarise; ``False`` = return the coverage fractions.

    Returns:
        ``(N, ceil(H / factor), ceil(W / factor))``. ``binary=True``: bool, a cell is foreground
        when at least half of its pixels (of those inside the image, for border cells) are; a
        non-empty mask whose every cell is under half covered (an object smaller than a cell)
        keeps every cell it touches instead, so it does not vanish from the IoU computation.
        ``binary=False``: float32 fraction of each cell's (in-image) pixels that are foreground.

    Cost: one pass of uint8 additions over the ``N * H * W`` pixels (~8 ms for 100 masks of
    512 x 512).
    """
    mask = _binarise(masks, mask_threshold)
    if mask.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {mask.shape}")
    factor = int(factor)
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    if factor == 1:
        return mask.copy() if binary else mask.astype(np.float32)
    count, height, width = mask.shape
    rows, cols = -(-height // factor), -(-width // factor)
    if rows * factor != height or cols * factor != width:
        mask = np.pad(mask, ((0, 0), (0, rows * factor - height), (0, cols * factor - width)))
    pixels = np.ascontiguousarray(mask).view(np.uint8).reshape(count, rows, factor, cols * factor)
    row_dtype = np.uint8 if factor <= 255 else np.uint32
    row_sums = pixels[:, :, 0, :].astype(row_dtype)
    for offset in range(1, factor):  # contiguous, SIMD-friendly adds of whole pixel rows
        np.add(row_sums, pixels[:, :, offset, :], out=row_sums)
    cells = row_sums.reshape(count, rows, cols, factor)
    sums = cells[..., 0].astype(np.uint32)
    for offset in range(1, factor):
        sums += cells[..., offset]
    valid_rows = np.minimum(factor, height - factor * np.arange(rows))
    valid_cols = np.minimum(factor, width - factor * np.arange(cols))
    cell_area = (valid_rows[:, None] * valid_cols[None, :]).astype(np.uint32)
    if not binary:
        return (sums / cell_area).astype(np.float32)
    pooled = 2 * sums >= cell_area
    vanished = ~pooled.reshape(count, -1).any(axis=1) & sums.reshape(count, -1).any(axis=1)
    if vanished.any():
        pooled[vanished] = sums[vanished] > 0
    return pooled


def _check_inputs(masks: np.ndarray, scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray | None]:
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {masks.shape}")
    score_array = _to_numpy(scores).astype(np.float64).reshape(-1)
    if score_array.shape[0] != masks.shape[0]:
        raise ValueError(f"{masks.shape[0]} masks but {score_array.shape[0]} scores")
    label_array = None
    if labels is not None:
        label_array = _to_numpy(labels).reshape(-1)
        if label_array.shape[0] != masks.shape[0]:
            raise ValueError(f"{masks.shape[0]} masks but {label_array.shape[0]} labels")
    return score_array, label_array


def _check_method(method: str, kernel: str) -> None:
    if method not in NMS_METHODS:
        raise ValueError(f"method must be one of {', '.join(NMS_METHODS)}; got {method!r}")
    if kernel not in ("gaussian", "linear"):
        raise ValueError(f"kernel must be 'gaussian' or 'linear', got {kernel!r}")


def _rank_order(scores: np.ndarray) -> np.ndarray:
    """Indices by score descending, ties by index ascending (a stable sort)."""
    return np.argsort(-scores, kind="stable")


def _finish(
    final: np.ndarray, candidates: np.ndarray, score_threshold: float, max_detections: int
) -> tuple[np.ndarray, np.ndarray]:
    """Threshold, sort (score desc, index asc) and truncate the candidate proposals."""
    candidates = candidates[final[candidates] > score_threshold]
    candidates = candidates[np.lexsort((candidates, -final[candidates]))]
    candidates = candidates[: max(int(max_detections), 0)]
    return candidates.astype(np.int64), final[candidates].astype(np.float32)


def _hard(
    iou: np.ndarray, scores: np.ndarray, threshold: float, score_threshold: float, limit: int
) -> np.ndarray:
    kept: list[int] = []
    suppressed = np.zeros(scores.shape[0], dtype=bool)
    for index in _rank_order(scores):
        if len(kept) >= limit or scores[index] <= score_threshold:
            break  # the rest rank lower: they would be cut by the threshold or the limit
        if suppressed[index]:
            continue
        kept.append(int(index))
        suppressed |= iou[index] > threshold
    return np.asarray(kept, dtype=np.int64)


def _soft(
    iou: np.ndarray,
    scores: np.ndarray,
    method: str,
    threshold: float,
    sigma: float,
    score_threshold: float,
    limit: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy soft-NMS; returns the selected indices (in final order) and the decayed scores.

    A selected proposal's score never changes again, and every later selection scores at most as
    much, so selection stops at ``limit`` proposals or at the first score ``<= score_threshold``
    without changing the result of the full loop.
    """
    current = scores.copy()
    remaining = np.ones(scores.shape[0], dtype=bool)
    selected: list[int] = []
    while len(selected) < limit and remaining.any():
        candidate = np.where(remaining, current, -np.inf)
        best = int(np.argmax(candidate))  # first maximum: ties go to the lower index
        if candidate[best] <= score_threshold:
            break
        selected.append(best)
        remaining[best] = False
        overlap = iou[best][remaining]
        if method == "linear":
            factor = np.where(overlap > threshold, 1.0 - overlap, 1.0)
        else:
            factor = np.exp(-(overlap * overlap) / sigma)
        current[remaining] *= factor
    return np.asarray(selected, dtype=np.int64), current


def _kernel(values: np.ndarray, kernel: str, sigma: float) -> np.ndarray:
    if kernel == "gaussian":
        return np.exp(-(values * values) / sigma)
    return 1.0 - values


def _matrix(
    iou: np.ndarray, scores: np.ndarray, same_class: np.ndarray | None, kernel: str, sigma: float
) -> np.ndarray:
    """Matrix-NMS decayed scores ``(N,)`` float64 (see the module docstring)."""
    order = _rank_order(scores)
    ranked = iou[np.ix_(order, order)]
    above = np.triu(np.ones_like(ranked, dtype=bool), k=1)  # row i ranked above column j
    if same_class is not None:
        above &= same_class[np.ix_(order, order)]
    pair_iou = np.where(above, ranked, 0.0)
    compensation = pair_iou.max(axis=0)  # cmax of each proposal, by rank
    numerator = _kernel(pair_iou, kernel, sigma)
    denominator = _kernel(compensation, kernel, sigma)[:, None]
    ratio = np.full_like(ranked, np.inf)
    usable = above & (denominator > 0)
    np.divide(numerator, np.broadcast_to(denominator, ratio.shape), out=ratio, where=usable)
    decay = np.minimum(ratio.min(axis=0), 1.0)
    final = np.empty_like(scores)
    final[order] = scores[order] * decay
    return final


def mask_nms(
    masks: Any,
    scores: Any,
    labels: Any = None,
    *,
    method: Method = "hard",
    iou_threshold: float = 0.3,
    sigma: float = 0.5,
    kernel: Kernel = "gaussian",
    score_threshold: float = 0.0,
    max_detections: int = 100,
    downsample: int | None = None,
    pooling: Literal["binary", "soft"] = "binary",
    mask_threshold: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Suppress duplicate instance masks (hard, soft or matrix NMS; definitions in the module doc).

    Args:
        masks: ``(N, H, W)`` bool, float probabilities (foreground ``> mask_threshold``) or int.
        scores: ``(N,)`` non-negative scores.
        labels: ``(N,)`` int class labels for per-class NMS, or ``None`` (one class).
        method: ``"hard"``, ``"linear"``, ``"gaussian"``, ``"matrix"`` or ``"none"``.
        iou_threshold: IoU above which ``"hard"`` suppresses and ``"linear"`` decays.
        sigma: Gaussian kernel width (``"gaussian"``; ``"matrix"`` with ``kernel="gaussian"``).
        kernel: decay function of matrix NMS, ``"gaussian"`` or ``"linear"``.
        score_threshold: proposals whose final score is ``<= score_threshold`` are dropped.
        max_detections: at most this many proposals are returned.
        downsample: ``None``/1 = IoU at full resolution; ``k > 1`` = IoU on masks pooled by
            ``k`` (:func:`pool_masks`). IoUs then approximate the full-resolution ones: on
            deliberately overlapping shapes-world proposals at 512 x 512 with ``k = 8``, the hard
            NMS keep decisions agree on 98.5-99.1% of proposals (binary pooling) and 99.75-99.9%
            (soft) (benchmarks/bench_mask_nms.py). Passing masks already at the decoder's native
            resolution (before upsampling) is the same idea at no pooling cost.
        pooling: with ``downsample``: ``"binary"`` = IoU of the re-binarised pooled masks (cells
            at least half covered, like binary decoder masks at native resolution); ``"soft"`` =
            soft IoU
            ``sum(a b) / (sum a + sum b - sum(a b))`` of the pooled coverage fractions ``a, b``
            (same cost; closer to the full-resolution keep decisions on coarse grids, e.g. 99.7%
            vs 96.7% of blob proposals at 256 -> 32 x 32, but identical masks with partly covered
            border cells get IoU < 1).
        mask_threshold: probability above which a float mask's pixel is foreground.

    Returns:
        ``(keep, new_scores)``: ``keep`` ``(M,)`` int64 indices into the input, sorted by final
        score descending (ties by index), ``M <= max_detections``; ``new_scores`` ``(M,)``
        float32 final scores of those proposals (the input scores for ``"hard"``/``"none"``).

    Cost: one ``N x N`` IoU matrix (:func:`mask_iou_matrix`) plus ``O(N^2)`` for the method.
    """
    _check_method(method, kernel)
    binary = _binarise(masks, mask_threshold)
    score_array, label_array = _check_inputs(binary, scores, labels)
    count = binary.shape[0]
    limit = max(int(max_detections), 0)
    if count == 0 or limit == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    if method == "none":
        return _finish(score_array, np.arange(count), score_threshold, limit)
    if pooling not in ("binary", "soft"):
        raise ValueError(f"pooling must be 'binary' or 'soft', got {pooling!r}")
    if downsample is not None and int(downsample) > 1:
        pooled = pool_masks(binary, int(downsample), binary=pooling == "binary")
        iou = mask_iou_matrix(pooled.reshape(count, -1))
    else:
        iou = mask_iou_matrix(binary.reshape(count, -1))
    same_class = None
    if label_array is not None:
        same_class = label_array[:, None] == label_array[None, :]
        iou = np.where(same_class, iou, 0.0)
    if method == "hard":
        kept = _hard(iou, score_array, float(iou_threshold), float(score_threshold), limit)
        return _finish(score_array, kept, score_threshold, limit)
    if method in ("linear", "gaussian"):
        selected, final = _soft(
            iou, score_array, method, float(iou_threshold), float(sigma), float(score_threshold), limit
        )
        return _finish(final, selected, score_threshold, limit)
    final = _matrix(iou, score_array, same_class, kernel, float(sigma))
    return _finish(final, np.arange(count), score_threshold, limit)


def reference_mask_nms(
    masks: Any,
    scores: Any,
    labels: Any = None,
    *,
    method: Method = "hard",
    iou_threshold: float = 0.3,
    sigma: float = 0.5,
    kernel: Kernel = "gaussian",
    score_threshold: float = 0.0,
    max_detections: int = 100,
    mask_threshold: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """The literal definition of :func:`mask_nms`: Python loops, one full-resolution IoU at a time.

    Same arguments (no ``downsample``/``pooling``) and outputs as :func:`mask_nms`. First the IoU
    of every same-class pair is computed, one pair at a time at full resolution (the
    ``O(N^2 * H * W)`` numpy cost of the official code); then every step follows the module
    docstring with no shortcut (the whole greedy loop runs; thresholding and truncation come
    last). It is the ground truth for tests and the baseline of the benchmark.
    """
    _check_method(method, kernel)
    binary = _binarise(masks, mask_threshold)
    score_array, label_array = _check_inputs(binary, scores, labels)
    count = binary.shape[0]
    values = [float(s) for s in score_array]

    def same(i: int, j: int) -> bool:
        return label_array is None or label_array[i] == label_array[j]

    def iou(i: int, j: int) -> float:
        return mask_iou(binary[i], binary[j])

    # every same-class pair, one full-resolution IoU at a time (the O(N^2 * H * W) part)
    pair: dict[tuple[int, int], float] = {}
    for i in range(count):
        for j in range(i + 1, count):
            if same(i, j):
                pair[i, j] = pair[j, i] = iou(i, j)

    ranked = sorted(range(count), key=lambda i: (-values[i], i))
    final = list(values)
    survivors = list(range(count))
    if method == "hard":
        kept: list[int] = []
        for i in ranked:
            if all(pair.get((i, k), 0.0) <= iou_threshold for k in kept):
                kept.append(i)
        survivors = kept
    elif method in ("linear", "gaussian"):
        remaining = list(range(count))
        while remaining:
            best = max(remaining, key=lambda i: (final[i], -i))
            remaining.remove(best)
            for j in remaining:
                if (best, j) not in pair:
                    continue  # another class
                overlap = pair[best, j]
                if method == "linear":
                    if overlap > iou_threshold:
                        final[j] *= 1.0 - overlap
                else:
                    final[j] *= math.exp(-(overlap * overlap) / sigma)
    elif method == "matrix":

        def f(x: float) -> float:
            return math.exp(-(x * x) / sigma) if kernel == "gaussian" else 1.0 - x

        compensation = {
            i: max([pair[k, i] for k in ranked[:rank_i] if (k, i) in pair], default=0.0)
            for rank_i, i in enumerate(ranked)
        }
        for rank_j, j in enumerate(ranked):
            decay = 1.0
            for i in ranked[:rank_j]:
                if (i, j) not in pair:
                    continue
                denominator = f(compensation[i])
                ratio = f(pair[i, j]) / denominator if denominator > 0 else math.inf
                decay = min(decay, ratio)
            final[j] = values[j] * decay
    kept_scores = [(i, final[i]) for i in survivors if final[i] > score_threshold]
    kept_scores.sort(key=lambda item: (-item[1], item[0]))
    kept_scores = kept_scores[: max(int(max_detections), 0)]
    return (
        np.asarray([i for i, _ in kept_scores], dtype=np.int64),
        np.asarray([s for _, s in kept_scores], dtype=np.float32),
    )
