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

from typing import Any

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


def rle_area(rle: dict[str, Any]) -> int:
    """Foreground pixel count of an RLE."""
    return int(mask_utils.area(_as_pycoco(rle)))


def rle_bbox(rle: dict[str, Any]) -> list[float]:
    """Tight ``[x, y, w, h]`` box of an RLE's foreground; ``[0, 0, 0, 0]`` for an empty mask."""
    return [float(v) for v in mask_utils.toBbox(_as_pycoco(rle))]
