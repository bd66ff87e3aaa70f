"""Training-free object-mask discovery on synthetic ViT features with a known answer.

Features live on small patch grids; an "object" is a set of patches whose feature vectors are a
prototype plus noise, the background another prototype plus noise. Prototypes are orthonormal, so
cosine similarities between regions are ~0 and within regions ~1.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy import ndimage

from zutiscli.ops.attention_masks import cls_affinity_map, maskdistill_mask
from zutiscli.ops.maskcut import maskcut, ncut_bipartition, split_components
from zutiscli.ops.spectral import (
    border_mask,
    kmeans,
    salient_cluster,
    spectral_clustering,
    spectral_saliency,
    top_eigenvectors,
    vote,
)

CHANNELS = 32


def _iou(first: np.ndarray, second: np.ndarray) -> float:
    return float((first & second).sum() / (first | second).sum())


def _prototypes(count: int, seed: int = 0) -> np.ndarray:
    """``(count, CHANNELS)`` orthonormal rows."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(CHANNELS, count)))
    return basis.T


def _box(grid: int, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    mask = np.zeros((grid, grid), dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


def _features(
    regions: list[np.ndarray], grid: int = 24, noise: float = 0.1, seed: int = 0, rims: bool = False
) -> np.ndarray:
    """``(grid, grid, CHANNELS)`` float32: background prototype 0, region ``i`` prototype ``i + 1``.

    With ``rims``, the patches just outside each region are boundary patches mostly covered by
    the object: ``0.8 * object + 0.6 * background`` (cosine 0.8 / 0.6 to the two prototypes), so
    every object is weakly linked to the background as in real images.
    """
    protos = _prototypes(len(regions) + 1, seed)
    label = np.zeros((grid, grid), dtype=np.int64)
    for index, region in enumerate(regions, start=1):
        label[region] = index
    clean = protos[label]
    if rims:
        for index, region in enumerate(regions, start=1):
            rim = ndimage.binary_dilation(region) & ~region
            clean[rim] = 0.8 * protos[index] + 0.6 * protos[0]
    rng = np.random.default_rng(seed + 1)
    return (clean + noise * rng.normal(size=(grid, grid, CHANNELS))).astype(np.float32)


def _unit_rows(features: np.ndarray) -> np.ndarray:
    """``(h * w, C)`` L2-normalised feature rows."""
    rows = features.reshape(-1, features.shape[-1])
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


CENTRE = _box(24, 8, 16, 7, 17)


# ------------------------------------------------------------------------------------- spectral


def test_spectral_finds_the_centre_object():
    features = _features([CENTRE])
    result = spectral_saliency(features)
    assert result is not None
    mask, score = result
    assert mask.shape == (24, 24) and mask.dtype == bool
    assert _iou(mask, CENTRE) >= 0.9
    assert 0.0 <= score <= 1.0


def test_spectral_border_rule_beats_area():
    # The object covers 56 % of the image, the background only a frame: the cluster touching
    # the border least is still the object.
    big = _box(24, 3, 21, 3, 21)
    result = spectral_saliency(_features([big], seed=3), ks=(2,))
    assert result is not None
    assert _iou(result[0], big) >= 0.9 and result[1] == 1.0


def test_spectral_prefers_the_object_away_from_the_border():
    at_border = _box(24, 0, 8, 0, 10)
    features = _features([at_border, CENTRE], seed=5)
    labels = spectral_clustering(features, 3)
    assert labels is not None and len(np.unique(labels)) == 3
    result = spectral_saliency(features, ks=(3,))
    assert result is not None and _iou(result[0], CENTRE) >= 0.9


def test_spectral_is_deterministic_and_takes_torch():
    features = _features([CENTRE], noise=0.3, seed=7)
    first = spectral_saliency(features)
    second = spectral_saliency(features)
    from_torch = spectral_saliency(torch.from_numpy(features))
    assert first is not None and second is not None and from_torch is not None
    np.testing.assert_array_equal(first[0], second[0])
    assert first[1] == second[1]
    np.testing.assert_array_equal(first[0], from_torch[0])


def test_spectral_degenerate_inputs():
    assert spectral_saliency(np.ones((24, 24, CHANNELS), np.float32)) is None
    assert spectral_saliency(np.zeros((24, 24, CHANNELS), np.float32)) is None
    assert spectral_saliency(np.ones((1, 1, CHANNELS), np.float32)) is None
    assert spectral_saliency(_features([CENTRE]), ks=(1, 1000)) is None
    tiny = _features([_box(2, 0, 1, 0, 1)], grid=2)
    result = spectral_saliency(tiny)  # 4 patches: k in {2, 3}, all border
    assert result is not None and result[0].shape == (2, 2) and 0.0 <= result[1] <= 1.0
    with pytest.raises(ValueError):
        spectral_saliency(np.zeros((24, CHANNELS)))


def test_salient_cluster_rules():
    labels = np.zeros((6, 6), dtype=np.int64)
    labels[2:4, 2:4] = 1
    assert np.array_equal(salient_cluster(labels), labels == 1)
    # Two clusters off the border: the smaller wins the tie.
    labels[1, 1] = 2
    assert np.array_equal(salient_cluster(labels), labels == 2)
    # Vertical stripes: every cluster covers half of the border.
    stripes = np.tile(np.array([0, 0, 0, 1, 1, 1]), (6, 1))
    assert salient_cluster(stripes, max_border_fraction=0.4) is None
    assert salient_cluster(stripes, max_border_fraction=0.5) is not None
    assert border_mask((3, 4)).sum() == 10 and border_mask((2, 2)).all()


def test_vote_picks_the_consensus():
    a = _box(10, 2, 6, 2, 6)
    b = _box(10, 2, 6, 2, 7)
    outlier = _box(10, 7, 9, 7, 9)
    index, sums = vote([outlier, a, b])
    assert index in (1, 2) and sums[0] == 0.0
    assert vote([a])[0] == 0
    with pytest.raises(ValueError):
        vote([])


def test_arpack_eigenvectors_match_dense():
    features = _features([_box(16, 5, 11, 4, 12), _box(16, 12, 15, 1, 4)], grid=16, noise=0.4, seed=11)
    unit = _unit_rows(features)
    affinity = np.maximum(unit @ unit.T, 0.0)
    degree = affinity.sum(axis=1)
    normalized = (affinity / np.sqrt(degree)[:, None] / np.sqrt(degree)[None, :]).astype(np.float32)
    values, vectors = top_eigenvectors(normalized, 4)  # 256 nodes > 200: ARPACK
    size = normalized.shape[0]
    dense_values, dense_vectors = scipy.linalg.eigh(
        normalized.astype(np.float64), subset_by_index=[size - 4, size - 1], driver="evx"
    )
    np.testing.assert_allclose(values, dense_values[::-1], atol=1e-4)
    cosines = np.abs(np.sum(vectors * dense_vectors[:, ::-1], axis=0))
    assert cosines.min() > 0.999


def test_kmeans_is_deterministic():
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.normal(0, 0.1, (30, 2)), rng.normal(3, 0.1, (20, 2))])
    labels = kmeans(points, 2, seed=4)
    assert len(np.unique(labels[:30])) == 1 and len(np.unique(labels[30:])) == 1
    assert labels[0] != labels[-1]
    np.testing.assert_array_equal(labels, kmeans(points, 2, seed=4))


# -------------------------------------------------------------------------------------- MaskCut

LEFT = _box(24, 3, 9, 4, 10)
RIGHT = _box(24, 14, 21, 13, 20)


def test_maskcut_single_object():
    found = maskcut(_features([CENTRE], noise=0.05), n_objects=1)
    assert len(found) == 1
    mask, score = found[0]
    assert mask.shape == (24, 24) and mask.dtype == bool
    assert _iou(mask, CENTRE) >= 0.9 and 0.9 <= score <= 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_maskcut_finds_two_objects_in_two_iterations(seed):
    big, small = _box(24, 3, 11, 3, 11), _box(24, 14, 20, 13, 19)
    found = maskcut(_features([big, small], noise=0.05, seed=seed, rims=True))
    assert len(found) == 2  # the third cut only finds uniform background: stop
    first, second = found[0][0], found[1][0]
    assert not (first & second).any()
    assert _iou(first, ndimage.binary_dilation(big)) >= 0.9  # object + its boundary patches
    assert _iou(second, ndimage.binary_dilation(small)) >= 0.9
    assert 1.0 >= found[0][1] >= found[1][1] > 0.0


def test_maskcut_merges_look_alikes_and_split_components_separates_them():
    both = LEFT | RIGHT
    features = _features([both], noise=0.05, seed=4)
    found = maskcut(features)
    assert len(found) == 1  # after both squares, only uniform background is left: stop
    assert _iou(found[0][0], both) >= 0.9
    parts = split_components(found[0][0], min_area=4)
    assert len(parts) == 2
    assert _iou(parts[0], RIGHT) >= 0.9 and _iou(parts[1], LEFT) >= 0.9  # largest first
    # Keeping only the seed's connected component finds them one per iteration instead.
    separate = maskcut(features, seed_component=True)
    assert len(separate) == 2
    assert max(_iou(separate[0][0], LEFT), _iou(separate[0][0], RIGHT)) >= 0.9
    assert _iou(separate[0][0] | separate[1][0], both) >= 0.9


def test_maskcut_corner_rule_flips_to_the_other_side():
    # A thin band over the top and bottom rows (all 4 corners) against a large middle region.
    band = np.zeros((24, 24), dtype=bool)
    band[[0, 1, 22, 23], :] = True
    features = _features([band], noise=0.05, seed=6)
    unit = _unit_rows(features)
    affinity = np.where(unit @ unit.T > 0.15, 1.0, 1e-5).astype(np.float32)
    foreground, fiedler, cut = ncut_bipartition(affinity, (24, 24))
    seed = np.unravel_index(int(np.argmax(np.abs(fiedler))), (24, 24))
    assert band[seed]  # without the corner rule the band (the seed's side) would be foreground
    assert _iou(foreground, ~band) >= 0.95 and cut < 0.1
    found = maskcut(features, n_objects=1)
    assert _iou(found[0][0], ~band) >= 0.95


def test_maskcut_degenerate_inputs():
    assert maskcut(np.ones((24, 24, CHANNELS), np.float32)) == []
    assert maskcut(np.zeros((24, 24, CHANNELS), np.float32)) == []
    assert maskcut(np.ones((1, 1, CHANNELS), np.float32)) == []
    assert maskcut(_features([CENTRE]), n_objects=0) == []
    tiny = maskcut(_features([_box(2, 0, 1, 0, 1)], grid=2))
    assert len(tiny) <= 3 and all(m.shape == (2, 2) for m, _ in tiny)
    with pytest.raises(ValueError):
        maskcut(np.zeros((24, CHANNELS)))


def test_maskcut_is_deterministic_and_takes_torch():
    features = _features([_box(24, 3, 11, 3, 11), _box(24, 14, 20, 13, 19)], noise=0.05, seed=8, rims=True)
    first = maskcut(features)
    again = maskcut(features)
    from_torch = maskcut(torch.from_numpy(features).to(torch.float16))
    assert len(first) == len(again) == len(from_torch) == 2
    for (mask, score), (mask_again, score_again), (mask_torch, _) in zip(first, again, from_torch):
        np.testing.assert_array_equal(mask, mask_again)
        assert score == score_again
        assert _iou(mask, mask_torch) >= 0.95


# ---------------------------------------------------------------------------------- MaskDistill


def _attention_inputs(grid: int = 24, heads: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """[CLS] attention peaked on CENTRE and keys that agree within the object only."""
    rng = np.random.default_rng(seed)
    logits = np.where(CENTRE, 3.0, 0.0)[None] + 0.5 * rng.normal(size=(heads, grid, grid))
    attention = np.exp(logits) / np.exp(logits).sum(axis=(1, 2), keepdims=True)
    object_key, other = _prototypes(2, seed)
    background_key = other - 0.5 * object_key  # negative dot product with the object
    keys = np.where(CENTRE[..., None], object_key, background_key)
    keys = keys + 0.1 * rng.normal(size=keys.shape)
    return attention.astype(np.float32), keys.astype(np.float32)


def test_maskdistill_recovers_the_object():
    attention, keys = _attention_inputs()
    result = maskdistill_mask(attention, keys)
    assert result is not None
    mask, score = result
    assert mask.shape == (24, 24) and mask.dtype == bool
    assert _iou(mask, CENTRE) >= 0.9
    assert 0.5 < score <= 1.0  # attention is ~20x higher inside


def test_maskdistill_top_k_and_sign_filter():
    attention, keys = _attention_inputs(seed=1)
    # 40 % of 576 patches = 231 proposals, far more than the 80 object patches: the background
    # proposals are filtered out by A[s, j] > 0 and the mask still matches the object.
    assert CENTRE.sum() < 0.4 * CENTRE.size
    result = maskdistill_mask(attention, keys, top_k=0.4)
    assert result is not None and _iou(result[0], CENTRE) >= 0.9
    single = maskdistill_mask(attention, keys, top_k=1e-9)  # only the source
    assert single is not None and _iou(single[0], CENTRE) >= 0.9
    with pytest.raises(ValueError):
        maskdistill_mask(attention, keys, top_k=0.0)


def test_maskdistill_inputs_forms_agree():
    attention, keys = _attention_inputs(seed=2)
    per_head = maskdistill_mask(attention, keys)
    averaged = maskdistill_mask(cls_affinity_map(attention), keys)
    from_torch = maskdistill_mask(torch.from_numpy(attention), torch.from_numpy(keys))
    assert per_head is not None and averaged is not None and from_torch is not None
    np.testing.assert_array_equal(per_head[0], averaged[0])
    np.testing.assert_array_equal(per_head[0], from_torch[0])
    assert per_head[1] == pytest.approx(from_torch[1])
    again = maskdistill_mask(attention, keys)
    assert again is not None and np.array_equal(again[0], per_head[0]) and again[1] == per_head[1]


def test_maskdistill_degenerate_inputs():
    attention, keys = _attention_inputs(seed=3)
    assert maskdistill_mask(np.zeros_like(attention), keys) is None
    assert maskdistill_mask(attention, np.zeros_like(keys)) is None
    flat = np.full((2, 2), 0.25, np.float32)
    assert maskdistill_mask(flat, np.ones((2, 2, 4), np.float32)) is None
    tiny = maskdistill_mask(np.array([[0.7, 0.1], [0.1, 0.1]]), np.ones((2, 2, 4)))
    assert tiny is not None and tiny[0].all() and tiny[1] == 0.0  # whole image: no contrast
    with pytest.raises(ValueError):
        maskdistill_mask(attention, keys[:10])
