"""ZUTIS instance and semantic inference on hand-built model outputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from zutiscli.ops.instances import Instances, instances_from_queries, semantic_from_dense
from zutiscli.ops.refine import upsample_mask

D = 4
E = np.eye(D, dtype=np.float32)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def query(
    rows: slice = slice(None),
    cols: slice = slice(None),
    inside: float = 6.0,
    outside: float = -6.0,
    size: int = 8,
) -> np.ndarray:
    """``(size, size)`` logits: ``inside`` on the block, ``outside`` elsewhere."""
    logits = np.full((size, size), outside, dtype=np.float32)
    logits[rows, cols] = inside
    return logits


def test_cat_survives_background_dropped_and_class_from_mean_embedding() -> None:
    # classes: background e0, cat e1, dog (e1 + e2), fox (e1 - e2)
    text = np.stack([E[0], E[1], unit(E[1] + E[2]), unit(E[1] - E[2])])
    dense = np.zeros((4, 4, D), dtype=np.float32)
    dense[:2, :2] = unit(E[1] + E[2])  # every pixel of the top rows is a pure dog or fox...
    dense[:2, 2:] = unit(E[1] - E[2])
    dense[2:] = E[0]  # ...and the bottom rows are background
    # query 0: rows 0-2 of the 8 x 8 mask grid, which upsample from the top patch rows only;
    # its MEAN embedding is along e1: cat, with cos 1 (per-pixel votes would say dog / fox)
    # query 1: rows 5-7, pure background -> dropped
    logits = np.stack([query(rows=slice(0, 3)), query(rows=slice(5, 8), inside=8.0)])
    result = instances_from_queries(logits, dense, text)
    assert isinstance(result, Instances) and len(result) == 1
    assert result.labels.tolist() == [1] and result.labels.dtype == np.int64
    np.testing.assert_allclose(result.class_probs, [sigmoid(5.0)], rtol=1e-5)
    np.testing.assert_allclose(result.quality, [sigmoid(6.0)], rtol=1e-5)
    np.testing.assert_allclose(result.scores, [sigmoid(6.0) * sigmoid(5.0)], rtol=1e-5)
    assert result.scores.dtype == result.class_probs.dtype == result.quality.dtype == np.float32
    expected = np.zeros((8, 8), dtype=bool)
    expected[0:3] = True
    np.testing.assert_array_equal(result.masks[0], expected)  # output_size None: the mask grid
    # the class temperature is the 5 in sigmoid(5 * cos)
    sharper = instances_from_queries(logits, dense, text, class_temperature=10.0)
    np.testing.assert_allclose(sharper.class_probs, [sigmoid(10.0)], rtol=1e-5)


def test_class_embedding_is_mean_of_bilinearly_upsampled_dense() -> None:
    rng = np.random.default_rng(0)
    dense = rng.normal(size=(5, 6, D)).astype(np.float32)
    dense /= np.linalg.norm(dense, axis=-1, keepdims=True)
    text = rng.normal(size=(7, D)).astype(np.float32)
    text /= np.linalg.norm(text, axis=-1, keepdims=True)
    logits = rng.normal(0.0, 3.0, size=(12, 10, 12)).astype(np.float32)
    result = instances_from_queries(logits, dense, text, nms="none", score_threshold=0.0)
    # independent route: refine.upsample_mask (numpy interpolation matrices) channel by channel
    up = np.stack([upsample_mask(dense[..., d], (10, 12)) for d in range(D)], axis=-1)
    probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    expected = []
    for q in range(12):
        inside = probs[q] > 0.5
        if not inside.any():
            continue
        mean = up[inside].mean(axis=0)
        cos = text @ (mean / np.linalg.norm(mean))
        class_probs = 1.0 / (1.0 + np.exp(-5.0 * cos))
        label = int(np.argmax(class_probs))
        if label:
            expected.append((probs[q][inside].mean() * class_probs[label], label, class_probs[label]))
    expected.sort(key=lambda item: -item[0])
    assert len(result) == len(expected) > 3
    np.testing.assert_allclose(result.scores, [e[0] for e in expected], rtol=1e-4)
    assert result.labels.tolist() == [e[1] for e in expected]
    np.testing.assert_allclose(result.class_probs, [e[2] for e in expected], rtol=1e-4)


def test_duplicates_suppressed_within_a_class_only() -> None:
    text = np.stack([E[0], E[1], E[2]])  # background, cat, dog
    dense = np.zeros((4, 4, D), dtype=np.float32)
    dense[:, :2] = E[2]  # left half dog
    dense[:, 2:] = E[1]  # right half cat
    dog = query(cols=slice(0, 6))  # mean 4 dog + 2 cat columns (after upsampling) -> dog
    cat = query(cols=slice(2, 8))  # mean 2 dog + 4 cat -> cat; IoU with dog = 4/8 > 0.3
    dog_again = query(cols=slice(0, 6), inside=3.0)  # the dog mask, lower quality
    logits = np.stack([dog, cat, dog_again])
    result = instances_from_queries(logits, dense, text)
    assert sorted(result.labels.tolist()) == [1, 2]
    assert len(result) == 2  # dog_again suppressed, cat kept despite IoU 0.5 with dog
    np.testing.assert_allclose(sorted(result.quality), [sigmoid(6.0)] * 2, rtol=1e-5)
    assert len(instances_from_queries(logits, dense, text, nms="none")) == 3
    assert len(instances_from_queries(logits, dense, text, iou_threshold=0.6)) == 2  # dup IoU is 1
    assert len(instances_from_queries(logits, dense, text, nms="gaussian")) == 3  # decayed, not dropped
    native = instances_from_queries(logits, dense, text, nms_scale=1)  # IoUs on the 8 x 8 masks
    np.testing.assert_array_equal(native.labels, result.labels)
    with pytest.raises(ValueError, match="nms_scale"):
        instances_from_queries(logits, dense, text, nms_scale=0)
    # torch inputs give the same result
    same = instances_from_queries(torch.from_numpy(logits), torch.from_numpy(dense), torch.from_numpy(text))
    np.testing.assert_allclose(same.scores, result.scores)


def test_score_threshold_max_detections_empty_queries_and_output_size() -> None:
    text = np.stack([E[0], E[1]])
    dense = np.broadcast_to(E[1], (4, 4, D)).copy()  # everything is cat
    logits = np.stack(
        # disjoint bands, symmetric logits +-(k + 1)
        [query(rows=slice(2 * k, 2 * k + 2), inside=k + 1.0, outside=-k - 1.0) for k in range(4)]
        + [np.full((8, 8), -5.0, dtype=np.float32)]  # empty mask: no instance, no NaN
    )
    result = instances_from_queries(logits, dense, text)
    expected = [sigmoid(k + 1.0) * sigmoid(5.0) for k in (3, 2, 1, 0)]
    np.testing.assert_allclose(result.scores, expected, rtol=1e-5)
    assert np.all(np.isfinite(result.scores))
    top = instances_from_queries(logits, dense, text, max_detections=2)
    np.testing.assert_allclose(top.scores, expected[:2], rtol=1e-5)
    cut = instances_from_queries(logits, dense, text, score_threshold=(expected[1] + expected[2]) / 2)
    assert len(cut) == 2
    assert len(instances_from_queries(logits, dense, text, score_threshold=1.0)) == 0
    # masks come out at output_size: band k covers rows [2k, 2k + 2) of 8 -> [8k, 8k + 8) of 32
    # (symmetric logits: the upsampled probability crosses 0.5 half-way between grid rows)
    sized = instances_from_queries(logits, dense, text, output_size=(32, 48))
    assert sized.masks.shape == (4, 32, 48) and sized.masks.dtype == bool
    for mask, k in zip(sized.masks, (3, 2, 1, 0)):
        expected_mask = np.zeros((32, 48), dtype=bool)
        expected_mask[8 * k : 8 * k + 8] = True
        np.testing.assert_array_equal(mask, expected_mask)
    nothing = instances_from_queries(np.full((3, 8, 8), -4.0), dense, text, output_size=(20, 30))
    assert len(nothing) == 0 and nothing.masks.shape == (0, 20, 30)


def _two_squares() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A 32 x 32 image with two sharp squares (left dark grey, right white, on black), blobby
    queries over them (an 8 x 8 mask grid of logits), a cat-everywhere dense map and the truth."""
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    image[6:26, 2:14] = 90
    image[6:26, 18:30] = 255
    truth = np.zeros((2, 32, 32), dtype=bool)
    truth[0, 6:26, 2:14] = True
    truth[1, 6:26, 18:30] = True
    # blobby: each query covers its square's cells plus a ring of one cell, at lower confidence
    left = query(rows=slice(1, 7), cols=slice(0, 4), inside=1.0, outside=-6.0)
    left[2:6, 1:3] = 6.0
    right = query(rows=slice(1, 7), cols=slice(4, 8), inside=1.0, outside=-6.0)
    right[2:6, 5:7] = 6.0
    text = np.stack([E[0], E[1], E[2]])  # background, cat, dog
    dense = np.broadcast_to(E[1], (4, 4, D)).copy()  # the dense embeddings say cat everywhere
    return image, np.stack([left, right]), dense, text, truth


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_refined_masks_follow_the_image_edges() -> None:
    image, logits, dense, text, truth = _two_squares()
    raw = instances_from_queries(logits, dense, text, output_size=(32, 32), nms="none")
    refined = instances_from_queries(logits, dense, text, output_size=(32, 32), nms="none", refine="bilateral",
                                     image=image)
    order = np.argsort([m.nonzero()[1].mean() for m in refined.masks])  # left square first
    for mask, true in zip(refined.masks[order], truth):
        assert _iou(mask, true) >= 0.95
    raw_order = np.argsort([m.nonzero()[1].mean() for m in raw.masks])
    assert all(_iou(m, t) < 0.9 for m, t in zip(raw.masks[raw_order], truth))  # the blobs were worse
    np.testing.assert_allclose(np.sort(refined.quality), np.sort(raw.quality))  # scored as predicted
    with pytest.raises(ValueError, match="needs the image"):
        instances_from_queries(logits, dense, text, output_size=(32, 32), refine="bilateral")
    with pytest.raises(ValueError, match="refine must be"):
        instances_from_queries(logits, dense, text, refine="sharpen")
    with pytest.raises(ValueError, match="output size"):
        instances_from_queries(logits, dense, text, output_size=(32, 32), refine="bilateral", image=image[:16])


def test_crop_classifier_votes_with_the_dense_embeddings() -> None:
    image, logits, dense, text, _ = _two_squares()
    seen: list[np.ndarray] = []

    def bright_is_dog(masks: np.ndarray) -> np.ndarray:
        """dog for the white square, cat for the grey one, from the pixels each mask holds."""
        seen.append(masks)
        bright = np.array([image[m].mean() > 200 for m in masks])
        return np.where(bright[:, None], [[0.1, 0.9]], [[0.9, 0.1]])

    common = dict(output_size=(32, 32), refine="bilateral", image=image, class_temperature=5.0)
    dense_only = instances_from_queries(logits, dense, text, **common)
    assert dense_only.labels.tolist() == [1, 1] and not seen  # weight 0: the classifier is not asked
    both = instances_from_queries(logits, dense, text, crop_classifier=bright_is_dog, crop_weight=0.5, **common)
    assert len(seen) == 1 and seen[0].shape == (2, 32, 32) and seen[0].dtype == bool  # refined masks
    white = [i for i, m in enumerate(both.masks) if image[m].mean() > 200]
    assert len(white) == 1 and both.labels[white[0]] == 2 and both.labels[1 - white[0]] == 1
    # geometric ensemble: p_dog = sigmoid(5 cos_dog) ** 0.5 * 0.9 ** 0.5, cos_dog = 0
    np.testing.assert_allclose(both.class_probs[white[0]], math.sqrt(sigmoid(0.0) * 0.9), rtol=1e-5)
    np.testing.assert_allclose(both.scores, both.quality * both.class_probs, rtol=1e-6)
    # weight 1: the crop classifier alone, and the same labels without any refinement
    alone = instances_from_queries(logits, dense, text, crop_classifier=bright_is_dog, crop_weight=1.0,
                                   output_size=(32, 32))
    np.testing.assert_allclose(np.sort(alone.class_probs), [0.9, 0.9], rtol=1e-6)
    with pytest.raises(ValueError, match="expected"):
        instances_from_queries(logits, dense, text, crop_classifier=lambda m: np.ones((len(m), 5)),
                               crop_weight=0.5, output_size=(32, 32))
    with pytest.raises(ValueError, match="crop_weight"):
        instances_from_queries(logits, dense, text, crop_classifier=bright_is_dog, crop_weight=1.5)


def test_semantic_argmax_on_constructed_dense_map() -> None:
    text = np.stack([E[0], E[1], E[2], E[3]])
    dense = np.zeros((4, 4, D), dtype=np.float32)
    dense[:2, :2], dense[:2, 2:], dense[2:, :2], dense[2:, 2:] = E[0], E[1], E[2], unit(E[3] + 0.5 * E[1])
    probs, labels = semantic_from_dense(dense, text, (16, 20))
    assert probs.shape == (4, 16, 20) and probs.dtype == np.float32
    assert labels.shape == (16, 20) and labels.dtype == np.uint8
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, rtol=1e-5)
    assert labels[2, 2] == 0 and labels[2, 17] == 1 and labels[13, 2] == 2 and labels[13, 17] == 3
    np.testing.assert_array_equal(labels, probs.argmax(axis=0))
    # raw cosine logits: a pure pixel has softmax exp(1) / (exp(1) + 3)
    np.testing.assert_allclose(probs[1, 2, 17], math.e / (math.e + 3), rtol=1e-5)
    sharp, sharp_labels = semantic_from_dense(dense, text, (16, 20), temperature=0.1)
    np.testing.assert_array_equal(sharp_labels, labels)
    assert sharp[1, 2, 17] > 0.99
    with pytest.raises(ValueError):
        semantic_from_dense(dense, text[:, :3], (16, 20))


def test_semantic_labels_are_torch_argmax_of_the_probabilities_ties_included():
    """The labels (numpy's argmax) are exactly torch's argmax over the class dimension."""
    generator = torch.Generator().manual_seed(3)
    dense = torch.randn(8, 8, 16, generator=generator)
    dense[:4] = 0  # all-zero embeddings: every class ties
    text = torch.randn(5, 16, generator=generator)
    text[3] = text[2]  # two classes tie everywhere
    probs, labels = semantic_from_dense(dense, text, (24, 24))
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, torch.from_numpy(probs).argmax(dim=0).numpy())
    assert (labels[:10] == 0).all() and not (labels == 3).any()  # rows 10-11 blend with the next patch row
