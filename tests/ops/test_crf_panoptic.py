"""Multi-class DenseCRF refinement and panoptic merging / PNG encoding."""

from __future__ import annotations

import numpy as np
import pytest

from zutiscli.ops.crf import dense_crf_labels
from zutiscli.ops.instances import Instances
from zutiscli.ops.panoptic import merge_panoptic, panoptic_to_rgb, rgb_to_panoptic, semantic_from_instances


def boundary_iou(labels: np.ndarray, truth: np.ndarray, band: np.ndarray) -> float:
    """Mean over classes present of the IoU restricted to a band around the true edges."""
    scores = []
    for label in np.unique(truth[band]):
        pred, true = (labels == label) & band, (truth == label) & band
        scores.append((pred & true).sum() / (pred | true).sum())
    return float(np.mean(scores))


def test_crf_snaps_blurry_shifted_probabilities_to_colour_edges() -> None:
    pytest.importorskip("pydensecrf.densecrf")
    height, width = 48, 96
    rng = np.random.default_rng(0)
    xs = np.broadcast_to(np.arange(width), (height, width))
    truth = np.digitize(xs, [32, 64])  # three vertical stripes: classes 0, 1, 2
    colours = np.array([[200, 40, 40], [40, 160, 60], [40, 60, 200]])
    image = np.clip(colours[truth] + rng.integers(-8, 9, (height, width, 3)), 0, 255).astype(np.uint8)
    # class probabilities whose edges are blurred (3 px) and shifted 6 px off the colour edges
    edge_logits = [np.zeros((height, width)), (xs - 38) / 3.0, (xs - 70) / 3.0]
    cumulative = [1.0 / (1.0 + np.exp(-e)) for e in edge_logits[1:]]
    probs = np.stack([1 - cumulative[0], cumulative[0] - cumulative[1], cumulative[1]]).astype(np.float32)
    band = (np.abs(xs - 32) < 10) | (np.abs(xs - 64) < 10)
    before = boundary_iou(probs.argmax(axis=0), truth, band)
    refined = dense_crf_labels(image, probs)
    assert refined.shape == probs.shape and refined.dtype == np.float32
    np.testing.assert_allclose(refined.sum(axis=0), 1.0, atol=1e-4)
    after = boundary_iou(refined.argmax(axis=0), truth, band)
    assert before < 0.6 and after > 0.95, (before, after)
    # weak pairwise terms leave the unaries' decision unchanged
    weak = dense_crf_labels(image, probs, pos_w=0.0, bi_w=0.0)
    np.testing.assert_array_equal(weak.argmax(axis=0), probs.argmax(axis=0))
    with pytest.raises(ValueError):
        dense_crf_labels(image[:, :50], probs)
    # a read-only image (as np.asarray gives for a decoded PIL image) is accepted, same result
    frozen = image.copy()
    frozen.flags.writeable = False
    np.testing.assert_array_equal(dense_crf_labels(frozen, probs), refined)


def _rect(shape: tuple[int, int], rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[rows, cols] = True
    return mask


def test_merge_panoptic_things_first_then_stuff() -> None:
    shape = (20, 30)
    semantic = np.zeros(shape, dtype=np.int64)
    semantic[:, 20:] = 5  # stuff class 5 on the right (60 px in the unclaimed part)
    semantic[15:, :10] = 6  # stuff class 6, small (50 px minus the claimed ones)
    semantic[0:5, 0:5] = 1  # thing class 1 pixels with no instance: stay unlabelled
    masks = np.stack(
        [
            _rect(shape, slice(0, 10), slice(5, 15)),  # A: score 0.6, overlaps B's corner
            _rect(shape, slice(5, 15), slice(10, 20)),  # B: score 0.9, pasted first (100 px)
            _rect(shape, slice(6, 14), slice(11, 19)),  # C: score 0.5, inside B -> dropped
            _rect(shape, slice(0, 4), slice(22, 26)),  # D: score 0.7 on the stuff region
        ]
    )
    scores = np.array([0.6, 0.9, 0.5, 0.7])
    labels = np.array([1, 2, 2, 1])
    segment_map, info = merge_panoptic(
        semantic, (masks, scores, labels), thing_ids={1, 2}, min_stuff_area=40
    )
    assert segment_map.dtype == np.int32 and segment_map.shape == shape
    things = [s for s in info if s["isthing"]]
    assert [s["category_id"] for s in things] == [2, 1, 1]  # B, D, A (descending score); C gone
    b, d, a = things
    assert b["area"] == 100 and d["area"] == 16
    assert a["area"] == 100 - 25  # A loses the 5 x 5 corner that B claimed first
    assert np.all(segment_map[5:10, 10:15] == b["id"])
    assert np.all(segment_map[0:4, 22:26] == d["id"])  # instances override the stuff label
    stuff = {s["category_id"]: s for s in info if not s["isthing"]}
    assert set(stuff) == {5, 6}
    assert stuff[5]["area"] == 20 * 10 - 16
    assert stuff[6]["area"] == 5 * 10
    assert np.all(segment_map[0:5, 0:5] == 0)  # unclaimed thing-class pixels stay unlabelled
    for segment in info:
        assert segment["area"] == int(np.sum(segment_map == segment["id"]))
    assert sorted(s["id"] for s in info) == list(range(1, len(info) + 1))
    # a mostly covered instance is dropped: A keeps 75% of its area, so a 0.8 threshold drops it
    _, strict = merge_panoptic(semantic, (masks, scores, labels), thing_ids={1, 2}, overlap_threshold=0.8)
    assert [s["category_id"] for s in strict if s["isthing"]] == [2, 1]
    # stuff below min_stuff_area is left unlabelled
    _, big = merge_panoptic(semantic, (masks, scores, labels), thing_ids={1, 2}, min_stuff_area=100)
    assert {s["category_id"] for s in big if not s["isthing"]} == {5}
    # an Instances object works too; without thing_ids every class is a thing: no stuff
    as_float = scores.astype(np.float32)
    instances = Instances(masks, as_float, labels, as_float, as_float)
    _, info_things = merge_panoptic(semantic, instances)
    assert all(s["isthing"] for s in info_things) and len(info_things) == 3


def test_panoptic_rgb_round_trip() -> None:
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 1 << 24, size=(7, 9)).astype(np.int32)
    ids[0, :4] = [0, 1, 256, 65536]
    rgb = panoptic_to_rgb(ids)
    assert rgb.dtype == np.uint8 and rgb.shape == (7, 9, 3)
    assert rgb[0, 1].tolist() == [1, 0, 0] and rgb[0, 2].tolist() == [0, 1, 0]
    assert rgb[0, 3].tolist() == [0, 0, 1]
    np.testing.assert_array_equal(rgb_to_panoptic(rgb), ids)
    with pytest.raises(ValueError):
        panoptic_to_rgb(np.array([[1 << 24]]))


def test_semantic_from_instances_paints_the_best_instance_over_background() -> None:
    masks = np.zeros((3, 6, 8), dtype=bool)
    masks[0, 0:4, 0:4] = True  # class 2, score 0.9
    masks[1, 2:6, 2:6] = True  # class 1, score 0.5: loses the overlap, keeps 12 of 16 pixels
    masks[2, 0:4, 0:4] = True  # class 3, score 0.4: a duplicate of the first, claims nothing
    scores = np.array([0.9, 0.5, 0.4])
    labels = np.array([2, 1, 3])
    semantic = semantic_from_instances((masks, scores, labels), (6, 8))
    expected = np.zeros((6, 8), dtype=np.int64)
    expected[2:6, 2:6] = 1
    expected[0:4, 0:4] = 2
    np.testing.assert_array_equal(semantic, expected)
    assert semantic.dtype == np.int64
    # an instance left with less than half of its mask is dropped, as in the panoptic merge
    mostly_taken = semantic_from_instances((masks[:2], scores[:2], labels[:2]), (6, 8), overlap_threshold=0.8)
    assert set(np.unique(mostly_taken)) == {0, 2}
    nothing = semantic_from_instances((masks[:0], scores[:0], labels[:0]), (6, 8))
    assert nothing.shape == (6, 8) and not nothing.any()


def test_overlay_erosion_is_scipys():
    """The overlay's outline erosion equals scipy.ndimage.binary_erosion (cross, outside = background)."""
    from scipy import ndimage

    from zutiscli.ops.overlay import _eroded

    rng = np.random.default_rng(0)
    for shape in ((1, 1), (1, 5), (3, 7), (40, 60)):
        for iterations in (1, 2, 3):
            for density in (0.3, 0.9):
                mask = rng.random(shape) < density
                assert np.array_equal(_eroded(mask, iterations), ndimage.binary_erosion(mask, iterations=iterations))


def test_panoptic_segments_of_a_prediction_split_things_and_stuff() -> None:
    from zutiscli.artefacts.prediction_writer import MIN_STUFF_FRACTION, categories, panoptic_segments
    from zutiscli.ops.instances import Instances

    semantic = np.zeros((100, 100), np.int64)
    semantic[:50] = 3  # stuff "sky", half the image
    semantic[50:, :] = 2  # stuff "grass"
    semantic[60:70, 60:70] = 1  # a thing
    semantic[99, 99] = 4  # a speck of stuff "sand": under MIN_STUFF_FRACTION of the image
    thing = np.zeros((1, 100, 100), bool)
    thing[0, 60:70, 60:70] = True
    found = Instances(thing, np.ones(1, np.float32), np.ones(1, np.int64), np.ones(1, np.float32), np.ones(1, np.float32))
    ids, segments = panoptic_segments(semantic, found, 4, frozenset({2, 3, 4}))
    assert [(s["category_id"], s["isthing"], s["area"]) for s in segments] == [(1, True, 100), (2, False, 4899),
                                                                               (3, False, 5000)]
    assert 1 < MIN_STUFF_FRACTION * semantic.size < 100
    assert (ids[60:70, 60:70] == 1).all() and (ids[:50] == 3).all() and ids[99, 99] == 0
    plain_ids, plain = panoptic_segments(semantic, found, 4)  # no stuff: every class a thing, instances only
    assert [s["category_id"] for s in plain] == [1] and (plain_ids[:50] == 0).all()
    assert [c["isthing"] for c in categories(["star", "grass", "sky", "sand"], frozenset({2, 3, 4}))] == [1, 0, 0, 0]


def test_instances_without_some_labels_keep_the_rest_in_order() -> None:
    from zutiscli.ops.instances import Instances

    masks = np.zeros((3, 4, 4), bool)
    found = Instances(masks, np.array([0.9, 0.8, 0.7], np.float32), np.array([1, 5, 2]), np.zeros(3, np.float32),
                      np.arange(3, dtype=np.float32))
    kept = found.without({5})
    assert kept.labels.tolist() == [1, 2] and kept.quality.tolist() == [0.0, 2.0] and kept.masks.shape == (2, 4, 4)
    assert found.without(set()) is found and len(found.without({1, 2, 5})) == 0


def test_fill_stuff_puts_things_first_and_drops_stuff_lying_mostly_under_things() -> None:
    from zutiscli.ops.panoptic import fill_stuff

    things = np.zeros((4, 10), np.int64)
    things[:, :3] = 2  # a thing over the left 12 pixels
    stuff = np.full((4, 10), 7, np.int64)  # stuff 7 everywhere but ...
    stuff[:, :3] = 8  # ... stuff 8 lies wholly under the thing: dropped (nothing of it shows anyway)
    stuff[0, 3] = 8  # one more pixel of 8 outside: 12 of 13 covered (92%) -> dropped, that pixel stays 0
    stuff[1:, 3] = 9  # stuff 9: 3 pixels, none covered -> kept
    out = fill_stuff(things, stuff)
    assert (out[:, :3] == 2).all() and out[0, 3] == 0 and (out[1:, 3] == 9).all() and (out[:, 4:] == 7).all()
    # at exactly the threshold it is dropped, just below it is kept
    stuff[0, 3], stuff[:, :3] = 8, 7  # 8: 1 pixel, none covered; 7 covers 12 things + 24 free of 36 -> 33%
    assert fill_stuff(things, stuff)[0, 3] == 8
    assert fill_stuff(things, stuff, max_covered=1 / 3)[0, 5] == 0 and fill_stuff(things, stuff, max_covered=0.34)[0, 5] == 7
