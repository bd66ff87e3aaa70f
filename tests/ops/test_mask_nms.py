"""Mask NMS: the fast implementation against the literal per-pair reference, hand cases, pycocotools IoU."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from zutiscli.ops.mask_nms import mask_iou_matrix, mask_nms, pool_masks, reference_mask_nms
from zutiscli.ops.masks import iou_from_counts, mask_iou


def blob_proposals(
    seed: int, count: int = 30, size: int = 64, objects: int = 5, classes: int = 3
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decoder-like proposals: jittered ellipses around a few objects (so many pairs overlap).

    Returns masks ``(count, size, size)`` bool, scores ``(count,)`` float64 in [0.05, 1) and
    labels ``(count,)`` int64 in ``[0, classes)``.
    """
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    centres = rng.uniform(0.2 * size, 0.8 * size, (objects, 2))
    radii = rng.uniform(0.08 * size, 0.25 * size, (objects, 2))
    masks = []
    for _ in range(count):
        obj = int(rng.integers(objects))
        cx, cy = centres[obj] + rng.normal(0.0, 0.05 * size, 2)
        rx, ry = radii[obj] * rng.uniform(0.7, 1.3, 2)
        angle = rng.uniform(0.0, math.pi)
        dx, dy = xs - cx, ys - cy
        u = (dx * math.cos(angle) + dy * math.sin(angle)) / rx
        v = (-dx * math.sin(angle) + dy * math.cos(angle)) / ry
        masks.append(u * u + v * v <= 1.0)
    return np.stack(masks), rng.uniform(0.05, 1.0, count), rng.integers(0, classes, count)


VARIANTS = [
    ("hard", "gaussian"),
    ("linear", "gaussian"),
    ("gaussian", "gaussian"),
    ("matrix", "gaussian"),
    ("matrix", "linear"),
    ("none", "gaussian"),
]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("with_labels", [False, True])
@pytest.mark.parametrize("method,kernel", VARIANTS)
def test_matches_reference(seed: int, with_labels: bool, method: str, kernel: str) -> None:
    masks, scores, labels = blob_proposals(seed)
    options = dict(method=method, kernel=kernel, score_threshold=0.1 if seed % 2 else 0.0,
                   max_detections=12 if seed == 3 else 100)
    keep, new = mask_nms(masks, scores, labels if with_labels else None, **options)
    ref_keep, ref_new = reference_mask_nms(masks, scores, labels if with_labels else None, **options)
    np.testing.assert_array_equal(keep, ref_keep)
    np.testing.assert_allclose(new, ref_new, rtol=0, atol=1e-5)
    assert keep.dtype == np.int64 and new.dtype == np.float32
    assert np.all(np.diff(new) <= 0)  # sorted by final score
    if method == "hard":
        assert 0 < len(keep) < len(scores)  # the blobs do overlap: suppression happened


def test_soft_masks_and_torch_inputs_are_binarised_at_half() -> None:
    masks, scores, labels = blob_proposals(7)
    rng = np.random.default_rng(7)
    soft = np.where(masks, rng.uniform(0.51, 1.0, masks.shape), rng.uniform(0.0, 0.5, masks.shape))
    expected = mask_nms(masks, scores, labels)
    for got in (
        mask_nms(soft.astype(np.float32), scores, labels),
        mask_nms(torch.from_numpy(soft), torch.from_numpy(scores), torch.from_numpy(labels)),
    ):
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_allclose(got[1], expected[1])


def _strips() -> np.ndarray:
    """Three 1-row masks with hand-computable IoUs: A-B 0.8, A-C 1/3, B-C 0.2."""
    masks = np.zeros((3, 1, 20), dtype=bool)
    masks[0, 0, 0:10] = True  # A
    masks[1, 0, 0:8] = True  # B
    masks[2, 0, 5:15] = True  # C
    return masks


def test_hand_computed_decays() -> None:
    masks, scores = _strips(), np.array([0.9, 0.8, 0.7])
    np.testing.assert_allclose(mask_iou_matrix(masks.reshape(3, -1))[0], [1.0, 0.8, 1 / 3])
    # hard: B (0.8) and C (1/3) exceed 0.3 with A; per class (C alone in class 2) C survives
    assert mask_nms(masks, scores)[0].tolist() == [0]
    assert mask_nms(masks, scores, np.array([1, 1, 2]))[0].tolist() == [0, 2]
    # linear soft-NMS: A decays B by 0.2 and C by 2/3; then C (0.467) is picked before B (0.16),
    # and C-B (0.2) is under the threshold
    keep, new = mask_nms(masks, scores, method="linear")
    assert keep.tolist() == [0, 2, 1]
    np.testing.assert_allclose(new, [0.9, 0.7 * 2 / 3, 0.8 * 0.2], rtol=1e-6)
    # gaussian soft-NMS, sigma 0.5: C is picked second, then B decays by A and by C
    keep, new = mask_nms(masks, scores, method="gaussian")
    f = lambda x: math.exp(-x * x / 0.5)  # noqa: E731
    assert keep.tolist() == [0, 2, 1]
    np.testing.assert_allclose(new, [0.9, 0.7 * f(1 / 3), 0.8 * f(0.8) * f(0.2)], rtol=1e-6)
    # matrix NMS: C's decay by B is compensated by B's own overlap with A:
    # min(f(1/3) / f(0), f(0.2) / f(0.8)) = f(1/3)
    keep, new = mask_nms(masks, scores, method="matrix")
    assert keep.tolist() == [0, 2, 1]
    np.testing.assert_allclose(new, [0.9, 0.7 * f(1 / 3), 0.8 * f(0.8)], rtol=1e-6)
    keep, new = mask_nms(masks, scores, method="matrix", kernel="linear")
    assert keep.tolist() == [0, 2, 1]  # B: (1 - 0.8) / 1; C: min((1 - 1/3) / 1, (1 - 0.2) / (1 - 0.8))
    np.testing.assert_allclose(new, [0.9, 0.7 * 2 / 3, 0.8 * 0.2], rtol=1e-6)


def test_exact_duplicates_ties_and_empty_masks() -> None:
    masks = np.zeros((4, 8, 8), dtype=bool)
    masks[0:2, 2:6, 2:6] = True  # two identical masks with equal scores
    scores = np.array([0.5, 0.5, 0.4, 0.3])  # masks 2 and 3 empty: IoU 0 with everything
    keep, new = mask_nms(masks, scores)
    assert keep.tolist() == [0, 2, 3]  # the tie goes to the lower index
    for kernel in ("linear", "gaussian"):  # linear: the duplicate's compensation 1 - 1 = 0
        np.testing.assert_array_equal(
            mask_nms(masks, scores, method="matrix", kernel=kernel)[0],
            reference_mask_nms(masks, scores, method="matrix", kernel=kernel)[0],
        )
    # linear soft-NMS takes the duplicate to exactly 0, which the score threshold 0 drops
    assert mask_nms(masks, scores, method="linear")[0].tolist() == [0, 2, 3]
    for method in ("hard", "matrix", "gaussian"):
        keep, new = mask_nms(np.zeros((0, 8, 8), dtype=bool), np.zeros(0), method=method)
        assert keep.shape == (0,) and new.shape == (0,)
    assert mask_nms(masks, scores, max_detections=0)[0].shape == (0,)
    with pytest.raises(ValueError, match="scores"):
        mask_nms(masks, scores[:3])
    with pytest.raises(ValueError, match="method"):
        mask_nms(masks, scores, method="soft")


def test_iou_matrix_equals_pycocotools() -> None:
    masks, _, _ = blob_proposals(11, count=25, size=96)
    masks[3] = False  # an empty mask: IoU 0 everywhere, as in pycocotools
    rles = mask_utils.encode(np.asfortranarray(np.moveaxis(masks, 0, -1).astype(np.uint8)))
    expected = mask_utils.iou(rles, rles, [0] * len(rles))
    got = mask_iou_matrix(masks.reshape(len(masks), -1))
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)
    # the float path (einsum / torch matmul) gives the same IoUs for 0/1 masks, and soft IoU otherwise
    as_float = masks.reshape(len(masks), -1).astype(np.float32)
    np.testing.assert_allclose(mask_iou_matrix(as_float), expected, rtol=1e-12)
    soft = np.array([[0.5, 1.0, 0.0], [0.25, 1.0, 1.0]], dtype=np.float32)
    np.testing.assert_allclose(mask_iou_matrix(soft)[0, 1], (0.125 + 1.0) / (1.5 + 2.25 - 1.125))
    other, _, _ = blob_proposals(12, count=7, size=96)
    rles_other = mask_utils.encode(np.asfortranarray(np.moveaxis(other, 0, -1).astype(np.uint8)))
    np.testing.assert_allclose(
        mask_iou_matrix(masks, other), mask_utils.iou(rles, rles_other, [0] * 7), rtol=1e-12, atol=0
    )


def test_pool_masks() -> None:
    masks = np.zeros((3, 10, 10), dtype=bool)
    masks[0, 0:4, 0:4] = True  # exactly 4 cells of 2x2 -> with factor 4: one full cell
    masks[1, 0:2, 0:3] = True  # covers 6 of 16 pixels of cell (0, 0): under half -> kept as touched
    masks[2, 8:10, 8:10] = True  # border cell (rows 8-9, cols 8-9) is 2x2 = 4 valid pixels, all on
    pooled = pool_masks(masks, 4)
    assert pooled.shape == (3, 3, 3)
    assert pooled[0].tolist() == [[True, False, False], [False] * 3, [False] * 3]
    assert pooled[1].sum() == 1 and pooled[1, 0, 0]
    assert pooled[2].sum() == 1 and pooled[2, 2, 2]
    fractions = pool_masks(masks, 4, binary=False)
    assert fractions.dtype == np.float32
    np.testing.assert_allclose(fractions[1, 0, 0], 6 / 16)
    np.testing.assert_allclose(fractions[2, 2, 2], 1.0)  # border cells count their in-image pixels
    grid = np.random.default_rng(0).random((5, 64, 48)) < 0.5
    reference = grid.reshape(5, 8, 8, 6, 8).mean(axis=(2, 4)) >= 0.5
    np.testing.assert_array_equal(pool_masks(grid, 8), reference)


@pytest.mark.parametrize("with_labels", [False, True])
@pytest.mark.parametrize("factor,pooling", [(4, "binary"), (8, "soft")])
def test_downsampled_decisions_agree(with_labels: bool, factor: int, pooling: str) -> None:
    """Hard NMS on pooled 256 x 256 blob masks keeps the same proposals as at full resolution.

    Binary pooling to a 64 x 64 grid (ZUTIS's native mask grid for 512-pixel inputs) and soft
    pooling to a coarser 32 x 32 grid both agree on >= 99% of the proposals (binary pooling to
    32 x 32 only reaches ~97% on these deliberately overlapping proposals).
    """
    agree = total = 0
    for seed in range(12):
        masks, scores, labels = blob_proposals(seed, count=60, size=256, objects=8)
        labels = labels if with_labels else None
        full = mask_nms(masks, scores, labels)[0]
        coarse = mask_nms(masks, scores, labels, downsample=factor, pooling=pooling)[0]
        assert 0 < len(full) < len(scores)
        agree += int(np.sum(np.isin(np.arange(len(scores)), full) == np.isin(np.arange(len(scores)), coarse)))
        total += len(scores)
    assert agree / total >= 0.99, f"{agree}/{total}"


def test_one_iou_rule_for_empty_masks() -> None:
    """Two empty masks have IoU 0 (an empty mask never matches), pairwise and all-pairs alike."""
    empty = np.zeros((4, 5), dtype=bool)
    full = np.ones((4, 5), dtype=bool)
    half = np.zeros((4, 5), dtype=bool)
    half[:, :2] = True
    assert mask_iou(empty, empty) == 0.0
    assert mask_iou(empty, full) == 0.0
    assert mask_iou(full, full) == 1.0
    assert mask_iou(half, full) == pytest.approx(0.4)
    assert mask_iou(half.astype(np.uint8), full.astype(np.float32)) == pytest.approx(0.4)  # non-zero = foreground
    assert iou_from_counts(0, 0) == 0.0 and iou_from_counts(3, 4) == 0.75
    stack = np.stack([empty, full, half, empty])
    pairwise = np.array([[mask_iou(a, b) for b in stack] for a in stack])
    for masks in (stack, stack.astype(np.float32)):  # bit-packed and matrix-product paths
        np.testing.assert_array_equal(mask_iou_matrix(masks), pairwise)
        np.testing.assert_array_equal(mask_iou_matrix(masks, stack[:2]), pairwise[:, :2])
    assert np.diag(mask_iou_matrix(stack)).tolist() == [0.0, 1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="shapes differ"):
        mask_iou(empty, np.zeros((5, 4), dtype=bool))


def test_reference_nms_keeps_two_empty_masks() -> None:
    """Under the rule, duplicate empty proposals do not suppress each other."""
    masks = np.zeros((2, 3, 3), dtype=bool)
    for nms in (mask_nms, reference_mask_nms):
        assert nms(masks, np.array([0.9, 0.8]))[0].tolist() == [0, 1]
