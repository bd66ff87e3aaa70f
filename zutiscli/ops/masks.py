"""Binary masks and their COCO run-length encoding (RLE), through pycocotools.

Conventions: a mask is a ``(H, W)`` array, any dtype, non-zero = foreground. An RLE is the COCO
compressed form ``{"size": [H, W], "counts": str}`` (counts as UTF-8 text, so it is JSON-ready).
Boxes are ``[x, y, width, height]`` in pixels (COCO ``bbox`` format), floats.

Mask IoU (one rule for the whole package): ``|A & B| / |A | B|`` in pixels, and **0 when the
union is empty**: two empty masks have IoU 0, so an empty mask never matches anything, itself
included. :func:`mask_iou` is the pairwise form; :func:`zutiscli.ops.mask_nms.mask_iou_matrix`
computes all pairs at once and finishes with :func:`iou_from_counts`, the same rule.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from pycocotools import mask as mask_utils


def iou_from_counts(intersection: Any, union: Any) -> Any:
    """IoU from pixel counts: ``intersection / union``, 0 where ``union`` is 0 (the empty-mask rule).

    Args:
        intersection: a count or an array of counts (any real dtype).
        union: same shape as ``intersection``.

    Returns:
        A Python float for scalar inputs, else a float64 array of the common shape.
    """
    inter = np.asarray(intersection, dtype=np.float64)
    total = np.asarray(union, dtype=np.float64)
    iou = np.zeros(np.broadcast(inter, total).shape, dtype=np.float64)
    np.divide(inter, total, out=iou, where=total > 0)
    return float(iou) if iou.ndim == 0 else iou


def mask_iou(first: np.ndarray, second: np.ndarray) -> float:
    """IoU of two ``(H, W)`` masks (any dtype, non-zero = foreground); 0.0 when both are empty.

    Raises ``ValueError`` when the shapes differ.
    """
    a = np.asarray(first) != 0
    b = np.asarray(second) != 0
    if a.shape != b.shape:
        raise ValueError(f"mask_iou: mask shapes differ: {a.shape} and {b.shape}")
    return iou_from_counts(np.count_nonzero(a & b), np.count_nonzero(a | b))


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """Encode one ``(H, W)`` mask as compressed RLE ``{"size": [H, W], "counts": str}``."""
    if mask.ndim != 2:
        raise ValueError(f"encode_mask expects a (H, W) mask, got shape {tuple(mask.shape)}")
    rle = mask_utils.encode(np.asfortranarray(mask != 0, dtype=np.uint8))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def encode_masks(masks: np.ndarray) -> list[dict[str, Any]]:
    """Encode a ``(N, H, W)`` stack of masks; returns N RLEs in order."""
    if masks.ndim != 3:
        raise ValueError(f"encode_masks expects (N, H, W) masks, got shape {tuple(masks.shape)}")
    if masks.shape[0] == 0:
        return []
    stack = np.asfortranarray(np.moveaxis(masks != 0, 0, -1).astype(np.uint8))
    return [
        {"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].decode("ascii")}
        for r in mask_utils.encode(stack)
    ]


def _as_pycoco(rle: dict[str, Any]) -> dict[str, Any]:
    counts = rle["counts"]
    if isinstance(counts, list):
        height, width = rle["size"]
        return mask_utils.frPyObjects(rle, height, width)
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    return {"size": list(rle["size"]), "counts": counts}


def decode_mask(rle: dict[str, Any]) -> np.ndarray:
    """Decode a compressed or uncompressed (list ``counts``) RLE to a ``(H, W)`` bool mask."""
    return mask_utils.decode(_as_pycoco(rle)).astype(bool)


def segmentation_to_rle(segmentation: Any, height: int, width: int) -> dict[str, Any]:
    """Turn any COCO ``segmentation`` (polygon list, uncompressed or compressed RLE) into compressed RLE."""
    if isinstance(segmentation, list):
        if not segmentation:
            return encode_mask(np.zeros((height, width), dtype=bool))
        parts = mask_utils.frPyObjects(segmentation, height, width)
        rle = mask_utils.merge(parts)
    else:
        rle = _as_pycoco(segmentation)
    counts = rle["counts"]
    return {
        "size": [int(rle["size"][0]), int(rle["size"][1])],
        "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
    }


def rle_iou_matrix(first: Sequence[dict[str, Any]], second: Sequence[dict[str, Any]]) -> np.ndarray:
    """IoU of every pair of two lists of RLEs of one image size, by the module's rule.

    Args:
        first: M RLEs (compressed or uncompressed).
        second: G RLEs of the same ``size`` as ``first``'s.

    Returns:
        ``(M, G)`` float64 (no crowd semantics: plain IoU).
    """
    if not len(first) or not len(second):
        return np.zeros((len(first), len(second)), dtype=np.float64)
    sizes = {tuple(rle["size"]) for rle in [*first, *second]}
    if len(sizes) != 1:
        raise ValueError(f"rle_iou_matrix: the masks are of several sizes: {sorted(sizes)}")
    iou = mask_utils.iou([_as_pycoco(r) for r in first], [_as_pycoco(r) for r in second], [0] * len(second))
    return np.asarray(iou, dtype=np.float64).reshape(len(first), len(second))


def rle_area(rle: dict[str, Any]) -> int:
    """Foreground pixel count of an RLE."""
    return int(mask_utils.area(_as_pycoco(rle)))


def rle_bbox(rle: dict[str, Any]) -> list[float]:
    """Tight ``[x, y, w, h]`` box of an RLE's foreground; ``[0, 0, 0, 0]`` for an empty mask."""
    return [float(v) for v in mask_utils.toBbox(_as_pycoco(rle))]


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def rle_problems(rles: Sequence[Any]) -> dict[int, str]:
    """Which of ``rles`` are not valid COCO RLEs, and why: position -> reason (empty when all are).

    An RLE is valid when ``size`` is ``[H, W]`` (integers >= 0) and ``counts`` is either a list of
    run lengths (integers >= 0) or the compressed string pycocotools writes, whose runs, decoded,
    are >= 0 and add up to exactly ``H * W``. pycocotools checks none of this: decoding an RLE whose
    runs fall short or run over reads or writes memory past the mask. The compressed strings are
    parsed together, with numpy, so checking a whole pseudo-label file costs about as much as
    reading it.
    """
    problems: dict[int, str] = {}
    strings: list[tuple[int, str, int]] = []
    for position, rle in enumerate(rles):
        if not isinstance(rle, dict):
            problems[position] = "is not an RLE object ({\"size\", \"counts\"})"
            continue
        size, counts = rle.get("size"), rle.get("counts")
        if not (isinstance(size, list) and len(size) == 2 and all(map(_is_count, size))):
            problems[position] = "has no size [height, width]"
        elif isinstance(counts, list):
            if not all(map(_is_count, counts)):
                problems[position] = "has counts that are not run lengths (integers >= 0)"
            elif sum(counts) != size[0] * size[1]:
                problems[position] = f"has runs of {sum(counts)} pixels in all, not {size[0]}x{size[1]}"
        elif isinstance(counts, str) and counts.isascii():
            strings.append((position, counts, size[0] * size[1]))
        else:
            problems[position] = "has counts that are neither a compressed RLE string nor a list of run lengths"
    problems.update(_compressed_problems(strings))
    return dict(sorted(problems.items()))


def _compressed_problems(strings: list[tuple[int, str, int]]) -> dict[int, str]:
    """:func:`rle_problems` of compressed counts: ``(position, counts, pixels)`` -> {position: reason}.

    The format (pycocotools' ``rleToString``): each run is a signed number in 5-bit groups, low
    group first, one character ``48 + group`` each, bit 0x20 set while more groups follow, bit 0x10
    of the last group the sign; runs from the third on are stored as the difference to the run two
    before.
    """
    if not strings:
        return {}
    count = len(strings)
    lengths = np.array([len(counts) for _, counts, _ in strings], dtype=np.int64)
    pixels = np.array([total for _, _, total in strings], dtype=np.int64)
    bounds = np.cumsum(lengths)  # where each string ends in the joined codes
    empty = lengths == 0
    bad = empty & (pixels != 0)
    why = np.full(count, "has runs that do not add up to its size", dtype=object)
    codes = np.frombuffer("".join(counts for _, counts, _ in strings).encode("ascii"), dtype=np.uint8)
    if len(codes):
        foreign = np.flatnonzero((codes < 48) | (codes > 111))
        if len(foreign):
            owners = np.unique(np.searchsorted(bounds, foreign, side="right"))
            why[owners] = "has counts with characters outside the compressed RLE alphabet"
            bad[owners] = True
        groups = (codes - 48) & 63  # uint8
        ends = (groups & 0x20) == 0
        last = bounds[~empty] - 1
        bad[~empty] |= ~ends[last]  # a string ends with the last group of a run
        ends[last] = True  # so that no run spans two strings
        stops = np.flatnonzero(ends)
        starts = np.empty_like(stops)
        starts[0] = 0
        starts[1:] = stops[:-1] + 1
        sizes = stops - starts + 1
        mask_of = np.searchsorted(bounds, starts, side="right")
        bad[mask_of[sizes > 7]] = True  # more than 35 bits: no mask is that large
        values = np.zeros(len(starts), dtype=np.int64)
        for place in range(7):
            within = sizes > place
            values[within] |= (groups[starts[within] + place] & 0x1F).astype(np.int64) << (5 * place)
        negative = (groups[stops] & 0x10) != 0
        values[negative] -= np.int64(1) << (5 * np.minimum(sizes[negative], 7))
        # runs 3, 4, ... are deltas to the run two before: cumulative sums along each mask's two
        # parity chains (runs 1, 3, 5... and runs 2, 4, 6...), from global sums less the mask's start
        begin = np.searchsorted(mask_of, np.arange(count), side="left")
        index = np.arange(len(starts)) - begin[mask_of]
        odd = (index & 1).astype(bool)
        runs = values.copy()
        for chain in (odd, ~odd & (index > 0)):
            sums = np.cumsum(values * chain)
            before = sums[np.maximum(begin - 1, 0)]
            before[begin == 0] = 0
            runs[chain] = (sums - before[mask_of])[chain]
        bad[mask_of[(runs < 0) | (runs > pixels[mask_of])]] = True
        covered = np.bincount(mask_of, weights=np.clip(runs, 0, None), minlength=count)
        bad |= ~empty & (covered != pixels)
    return {strings[i][0]: str(why[i]) for i in np.flatnonzero(bad)}
