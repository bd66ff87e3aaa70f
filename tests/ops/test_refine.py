"""Post-processing of discovered masks: resizing, hole filling, components, DenseCRF, bilateral solver."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from zutiscli.ops.refine import (
    bilateral_refine,
    bilateral_solve,
    densecrf_refine,
    fill_holes,
    largest_component,
    refine_mask,
    remove_small,
    split_components,
    upsample_mask,
)


def _iou(first: np.ndarray, second: np.ndarray) -> float:
    return float((first & second).sum() / (first | second).sum())


def _two_colour_image(truth: np.ndarray, seed: int = 0, noise: float = 5.0) -> np.ndarray:
    """``(H, W, 3)`` uint8: red-ish inside ``truth``, blue-ish outside, plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    inside = np.array([210.0, 50.0, 40.0])
    outside = np.array([40.0, 90.0, 170.0])
    image = np.where(truth[..., None], inside, outside) + rng.normal(0.0, noise, truth.shape + (3,))
    return np.clip(image, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------- upsample_mask


def test_upsample_matches_torch_bilinear():
    rng = np.random.default_rng(0)
    soft = rng.random((5, 7)).astype(np.float32)
    ours = upsample_mask(soft, (20, 23))
    theirs = torch.nn.functional.interpolate(
        torch.from_numpy(soft)[None, None], size=(20, 23), mode="bilinear", align_corners=False
    )[0, 0].numpy()
    assert ours.shape == (20, 23) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_upsample_bool_and_torch_inputs():
    mask = np.zeros((4, 4), dtype=bool)
    mask[1:3, 1:3] = True
    from_numpy = upsample_mask(mask, (16, 16))
    from_torch = upsample_mask(torch.from_numpy(mask), (16, 16))
    np.testing.assert_array_equal(from_numpy, from_torch)
    assert from_numpy.min() >= 0.0 and from_numpy.max() <= 1.0
    assert from_numpy[8, 8] == 1.0 and from_numpy[0, 0] == 0.0
    np.testing.assert_array_equal(upsample_mask(np.ones((3, 5)), (7, 11)), np.ones((7, 11), np.float32))
    with pytest.raises(ValueError):
        upsample_mask(np.zeros((2, 2, 2)), (4, 4))


# ------------------------------------------------------------------------------ binary morphology


def test_fill_holes_fills_a_ring():
    ring = np.zeros((9, 9), dtype=bool)
    ring[2:7, 2:7] = True
    ring[4, 4] = False
    filled = fill_holes(ring)
    assert filled[4, 4] and filled.sum() == 25
    open_c = ring.copy()
    open_c[4, 2:5] = False  # the gap reaches the outside: not a hole
    assert not fill_holes(open_c)[4, 3]


def test_largest_component_keeps_the_biggest():
    mask = np.zeros((10, 10), dtype=bool)
    mask[0:2, 0:2] = True
    mask[5:9, 5:9] = True
    kept = largest_component(mask)
    assert kept.sum() == 16 and kept[6, 6] and not kept[0, 0]
    assert not largest_component(np.zeros((4, 4), dtype=bool)).any()


def test_split_components_counts_orders_and_filters():
    mask = np.zeros((12, 12), dtype=bool)
    mask[0:2, 0:2] = True  # 4
    mask[4:7, 4:7] = True  # 9
    mask[9:12, 0:5] = True  # 15
    parts = split_components(mask)
    assert [int(p.sum()) for p in parts] == [15, 9, 4]
    assert np.array_equal(np.logical_or.reduce(parts), mask)
    assert [int(p.sum()) for p in split_components(mask, min_area=5)] == [15, 9]
    assert split_components(np.zeros((3, 3), dtype=bool)) == []


def test_split_components_connectivity():
    diagonal = np.eye(4, dtype=bool)
    assert len(split_components(diagonal)) == 1  # 8-connectivity by default
    assert len(split_components(diagonal, connectivity=4)) == 4


def test_remove_small_drops_specks():
    mask = np.zeros((10, 10), dtype=bool)
    mask[1:6, 1:6] = True
    mask[8, 8] = True
    cleaned = remove_small(mask, min_area=3)
    assert cleaned.sum() == 25 and not cleaned[8, 8]


def test_refine_mask_modes():
    mask = np.zeros((20, 20), dtype=bool)
    mask[2:10, 2:10] = True
    mask[5, 5] = False  # a hole
    mask[14:17, 14:17] = True
    mask[0, 19] = True  # a speck
    largest = refine_mask(mask)
    assert len(largest) == 1 and largest[0].sum() == 64  # hole filled, only the big square
    assert len(refine_mask(mask, mode="split")) == 3
    assert [int(m.sum()) for m in refine_mask(mask, mode="split", min_area_fraction=5 / 400)] == [64, 9]
    whole = refine_mask(mask, mode="none", min_area_fraction=5 / 400)
    assert len(whole) == 1 and whole[0].sum() == 73 and not whole[0][0, 19]
    assert not refine_mask(mask, fill_holes=False)[0][5, 5]
    assert refine_mask(mask, min_area_fraction=0.5) == []
    assert refine_mask(np.zeros((5, 5), dtype=bool)) == []
    soft = mask.astype(np.float32) * 0.8
    assert refine_mask(soft)[0].sum() == 64
    assert refine_mask(soft, threshold=0.9) == []
    with pytest.raises(ValueError):
        refine_mask(mask, mode="biggest")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------- DenseCRF


def _blurry_square(size: int = 96) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sharp square image, its true mask, and a blurry, too-large probability of it."""
    truth = np.zeros((size, size), dtype=bool)
    truth[30:66, 28:70] = True
    image = _two_colour_image(truth)
    too_big = ndimage.binary_dilation(truth, iterations=5)
    prob = 0.15 + 0.7 * ndimage.gaussian_filter(too_big.astype(np.float64), 4.0)
    return image, truth, prob.astype(np.float32)


def test_densecrf_snaps_to_the_square():
    pytest.importorskip("pydensecrf.densecrf")
    image, truth, prob = _blurry_square()
    baseline = _iou(prob > 0.5, truth)
    refined = densecrf_refine(image, prob)
    assert refined.dtype == bool and refined.shape == truth.shape
    assert baseline < 0.8
    assert _iou(refined, truth) >= 0.95
    cutler = densecrf_refine(image, prob, pos_w=7, pos_xy=3, bi_w=10, bi_xy=50, bi_rgb=5)
    assert _iou(cutler, truth) >= 0.95


def test_densecrf_rejects_bad_inputs():
    pytest.importorskip("pydensecrf.densecrf")
    image, _, prob = _blurry_square(32)
    with pytest.raises(ValueError):
        densecrf_refine(image.astype(np.float32), prob)
    with pytest.raises(ValueError):
        densecrf_refine(image[:16], prob)


# ------------------------------------------------------------------------------ bilateral solver


def _ellipse_from_patches(size: int = 160, patch: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image of an ellipse, its true mask, and the bilinear upsampling of its patch coverage."""
    ys, xs = np.mgrid[0:size, 0:size]
    truth = ((ys - 0.47 * size) / (0.28 * size)) ** 2 + ((xs - 0.53 * size) / (0.34 * size)) ** 2 < 1.0
    coverage = truth.reshape(size // patch, patch, size // patch, patch).mean(axis=(1, 3))
    return _two_colour_image(truth, noise=8.0), truth, upsample_mask(coverage, (size, size))


def test_bilateral_refine_improves_on_bilinear_threshold():
    image, truth, soft = _ellipse_from_patches()
    baseline = _iou(soft > 0.5, truth)
    refined = bilateral_refine(image, soft)
    assert refined.dtype == bool and refined.shape == truth.shape
    assert _iou(refined, truth) > baseline + 0.01
    assert _iou(refined, truth) >= 0.99


def test_bilateral_refine_fixes_a_blurry_square():
    image, truth, prob = _blurry_square()
    assert _iou(bilateral_refine(image, prob), truth) >= 0.95


def test_bilateral_solve_properties():
    image, truth, soft = _ellipse_from_patches(64, 8)
    constant = bilateral_solve(image, np.full(truth.shape, 0.3, np.float32))
    np.testing.assert_allclose(constant, 0.3, atol=1e-4)
    grey = np.ascontiguousarray(image[..., 0])  # red channel: 210 inside, 40 outside
    assert _iou(bilateral_solve(grey, soft) > 0.5, truth) >= _iou(soft > 0.5, truth)
    # Zero confidence on the right half: values there come from the left half through the grid.
    confidence = np.ones(truth.shape)
    confidence[:, 32:] = 0.0
    solved = bilateral_solve(image, soft, confidence)
    assert np.isfinite(solved).all()
    again = bilateral_solve(image, soft, confidence)
    np.testing.assert_array_equal(solved, again)


def test_bilateral_solve_of_many_targets_equals_one_at_a_time():
    image, truth, soft = _ellipse_from_patches(64, 8)
    targets = np.stack([soft, 1.0 - soft, np.full(truth.shape, 0.3, np.float32)])
    together = bilateral_solve(image, targets)
    assert together.shape == targets.shape and together.dtype == np.float32
    for one, target in zip(together, targets):
        np.testing.assert_allclose(one, bilateral_solve(image, target), atol=1e-6)
    refined = bilateral_refine(image, targets[:2])
    assert refined.shape == (2, 64, 64) and refined.dtype == bool
    assert _iou(refined[0], truth) >= 0.99 and _iou(refined[1], ~truth) >= 0.99
