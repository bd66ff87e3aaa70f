"""Panoptic merging of instance ("thing") and semantic ("stuff") predictions, and the COCO PNG encoding.

Conventions: a *segment map* is ``(H, W)`` int32 with 0 = unlabelled and ``1..S`` = segment ids;
``segments_info`` describes each segment as ``{"id", "category_id", "isthing", "area"}``
(``category_id`` = class index into the model's class list, 1..K-1; ``area`` in pixels), as in the
COCO panoptic format. COCO panoptic PNGs store ``id = R + 256 * G + 256**2 * B``.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from zutiscli.ops.arrays import to_numpy as _to_numpy

__all__ = ["STUFF_MAX_COVERED", "fill_stuff", "merge_panoptic", "semantic_from_instances", "panoptic_to_rgb",
           "rgb_to_panoptic"]

#: U2Seg drops a stuff class from an image when things cover this share of its pixels or more.
STUFF_MAX_COVERED = 0.7



def _unpack_instances(instances: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(masks, scores, labels)`` from a 3-tuple or an object with those attributes."""
    if all(hasattr(instances, name) for name in ("masks", "scores", "labels")):
        masks, scores, labels = instances.masks, instances.scores, instances.labels
    else:
        masks, scores, labels = instances
    return _to_numpy(masks), _to_numpy(scores).reshape(-1), _to_numpy(labels).reshape(-1)


def merge_panoptic(
    semantic_labels: Any,
    instances: Any,
    *,
    thing_ids: Iterable[int] | None = None,
    overlap_threshold: float = 0.5,
    min_stuff_area: int = 4096,
    score_threshold: float = 0.0,
    ignore_label: int | None = 255,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Merge instances and a semantic map into one panoptic segmentation, things first (U2Seg).

    1. Instances whose label is a thing class and whose score is ``> score_threshold`` are
       pasted in descending score order (ties by input order): each pixel goes to the first
       instance that claims it. An instance whose newly claimed area (pixels not taken by a
       higher-scored instance) is ``< overlap_threshold`` of its own mask area, or zero, is
       dropped; otherwise it becomes a thing segment over the pixels it claimed.
    2. Each remaining pixel takes its semantic label if that label is a stuff class: one
       segment per stuff class whose unclaimed area is ``>= min_stuff_area`` pixels. Background
       (0), ``ignore_label``, thing classes and smaller stuff regions stay 0 (unlabelled).

    Args:
        semantic_labels: ``(H, W)`` int class map, 0 = background.
        instances: ``(masks (N, H, W) bool, scores (N,), labels (N,) int)`` or an object with
            ``masks``, ``scores``, ``labels`` attributes (e.g. :class:`~zutiscli.ops.instances.Instances`).
        thing_ids: classes that are things. ``None`` = every non-background class is a thing
            (ZUTIS's classes are all objects): instance-only output, no stuff segments.
        overlap_threshold: minimum fraction of an instance's mask it must claim to survive.
        min_stuff_area: minimum pixel count of a stuff segment (detectron2's Panoptic FPN
            default 4096; scale it with the image area).
        score_threshold: instances scoring ``<= score_threshold`` are ignored.
        ignore_label: semantic value never turned into a segment (``None``: no such value).

    Returns:
        ``(segment_map, segments_info)``: ``(H, W)`` int32 map, 0 = unlabelled, ids 1.. in the
        order of ``segments_info`` (things by descending score, then stuff by class index).
    """
    semantic = _to_numpy(semantic_labels)
    if semantic.ndim != 2:
        raise ValueError(f"semantic_labels must be (H, W), got shape {semantic.shape}")
    masks, scores, labels = _unpack_instances(instances)
    if masks.ndim != 3 or masks.shape[1:] != semantic.shape:
        raise ValueError(f"instance masks {masks.shape} do not match the semantic map {semantic.shape}")
    if not masks.shape[0] == scores.shape[0] == labels.shape[0]:
        raise ValueError(f"{masks.shape[0]} masks, {scores.shape[0]} scores, {labels.shape[0]} labels")
    things = None if thing_ids is None else {int(c) for c in thing_ids}

    def is_thing(label: int) -> bool:
        return label != 0 and (things is None or label in things)

    segment_map = np.zeros(semantic.shape, dtype=np.int32)
    claimed = np.zeros(semantic.shape, dtype=bool)
    segments: list[dict[str, Any]] = []
    for index in np.argsort(-scores.astype(np.float64), kind="stable"):
        label = int(labels[index])
        if not is_thing(label) or not float(scores[index]) > score_threshold:
            continue
        mask = masks[index] != 0
        area = int(np.count_nonzero(mask))
        free = mask & ~claimed
        free_area = int(np.count_nonzero(free))
        if free_area == 0 or free_area < overlap_threshold * area:
            continue
        segment_id = len(segments) + 1
        segment_map[free] = segment_id
        claimed |= free
        segments.append({"id": segment_id, "category_id": label, "isthing": True, "area": free_area})

    if things is not None:
        unclaimed = semantic[~claimed]
        present, counts = np.unique(unclaimed, return_counts=True)
        for label, count in zip(present.tolist(), counts.tolist()):
            if label == 0 or label == ignore_label or label in things or count < min_stuff_area:
                continue
            region = (semantic == label) & ~claimed
            segment_id = len(segments) + 1
            segment_map[region] = segment_id
            segments.append(
                {"id": segment_id, "category_id": int(label), "isthing": False, "area": int(count)}
            )
    return segment_map, segments


def fill_stuff(things: Any, stuff: Any, *, max_covered: float = STUFF_MAX_COVERED) -> np.ndarray:
    """Things first, then stuff, as U2Seg merges its things with STEGO's stuff.

    Every pixel with a thing label keeps it; every other pixel takes its stuff label, unless things
    cover ``max_covered`` or more of that stuff label's pixels in the image (a stuff class that lies
    mostly under objects describes them, not the background): its pixels stay 0.

    Args:
        things: ``(H, W)`` int class map, 0 where no thing is.
        stuff: ``(H, W)`` int stuff class of every pixel (things' pixels included).
        max_covered: share of a stuff class's pixels under things at which it is dropped.

    Returns:
        ``(H, W)`` int64 class map.
    """
    things = _to_numpy(things).astype(np.int64)
    stuff = _to_numpy(stuff).astype(np.int64)
    if things.shape != stuff.shape or things.ndim != 2:
        raise ValueError(f"things {things.shape} and stuff {stuff.shape} must be one (H, W)")
    labels, inverse, counts = np.unique(stuff, return_inverse=True, return_counts=True)
    covered = np.bincount(inverse.reshape(-1), weights=(things > 0).reshape(-1), minlength=len(labels))
    kept = np.where(covered < max_covered * counts, labels, 0)
    return np.where(things > 0, things, kept[inverse.reshape(stuff.shape)])


def semantic_from_instances(instances: Any, size: tuple[int, int], *, overlap_threshold: float = 0.5) -> np.ndarray:
    """A semantic map drawn from instances alone: the class of each thing segment of
    :func:`merge_panoptic` (instances claim pixels in descending score), background elsewhere.

    Args:
        instances: as for :func:`merge_panoptic` (masks ``(N, H, W)`` bool at ``size``).
        size: ``(H, W)`` in pixels.
        overlap_threshold: as for :func:`merge_panoptic`.

    Returns:
        ``(H, W)`` int64 class map, 0 = background.
    """
    placeholder = np.zeros(size, dtype=np.int64)
    segment_map, segments = merge_panoptic(placeholder, instances, overlap_threshold=overlap_threshold)
    lookup = np.zeros(len(segments) + 1, dtype=np.int64)
    for segment in segments:
        lookup[segment["id"]] = segment["category_id"]
    return lookup[segment_map]


def panoptic_to_rgb(segment_map: Any) -> np.ndarray:
    """``(H, W)`` int segment ids (0 <= id < 2**24) -> ``(H, W, 3)`` uint8 COCO panoptic PNG colours.

    ``R = id % 256``, ``G = (id // 256) % 256``, ``B = id // 256**2``.
    """
    ids = _to_numpy(segment_map).astype(np.int64)
    if ids.ndim != 2:
        raise ValueError(f"segment_map must be (H, W), got shape {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= 1 << 24):
        raise ValueError("segment ids must be in [0, 2**24) to fit in an RGB PNG")
    # the three low bytes of each id as a little-endian uint32 (3x faster than % and // per channel)
    return np.ascontiguousarray(ids.astype("<u4").view(np.uint8).reshape(*ids.shape, 4)[..., :3])


def rgb_to_panoptic(rgb: Any) -> np.ndarray:
    """``(H, W, 3)`` uint8 COCO panoptic PNG colours -> ``(H, W)`` int32 segment ids."""
    colours = _to_numpy(rgb)
    if colours.ndim != 3 or colours.shape[2] != 3:
        raise ValueError(f"rgb must be (H, W, 3), got shape {colours.shape}")
    colours = colours.astype(np.int32)
    return colours[..., 0] + 256 * colours[..., 1] + 65536 * colours[..., 2]
