"""ReCLIP++'s bias measures (zutiscli.ops.bias) on hand-made confusions and objects."""

from __future__ import annotations

import numpy as np
import pytest

from zutiscli.ops.bias import class_preference, distance_bin, object_distance, object_overlap, space_preference


def test_class_preference_is_own_share_minus_the_largest_other_share():
    conf = np.array([[8, 2, 0, 0, 0],   # a: 0.8 - 0.2 = 0.6
                     [6, 4, 0, 0, 0],   # b: 0.4 - 0.6 = -0.2 (read as a)
                     [0, 0, 5, 0, 5],   # c: the "no class" column counts in the total, never as another class
                     [0, 0, 0, 0, 0]])  # d: no pixels, left out
    found = class_preference(conf, ["a", "b", "c", "d"])
    assert found["score"] == pytest.approx((0.6 - 0.2 + 0.5) / 3)
    assert found["largest_confusions"] == [{"truth": "b", "predicted": "a", "fraction": pytest.approx(0.6)},
                                           {"truth": "a", "predicted": "b", "fraction": pytest.approx(0.2)}]
    square = class_preference(np.eye(3) * 5, ["a", "b", "c"])
    assert square["score"] == 1.0 and square["largest_confusions"] == []
    with pytest.raises(ValueError):
        class_preference(np.zeros((2, 4)), ["a", "b"])


def test_object_distance_runs_from_the_centre_to_a_corner():
    mask = np.zeros((10, 20), bool)
    mask[4:6, 9:11] = True
    assert object_distance(mask) == pytest.approx(0.0)
    corner = np.zeros((10, 20), bool)
    corner[0, 0] = True
    assert object_distance(corner) == pytest.approx(np.hypot(4.5, 9.5) / np.hypot(5, 10))
    assert [distance_bin(d) for d in (0.0, 0.19, 0.2, 0.99, 1.0)] == [0, 0, 1, 4, 4]


def test_object_overlap_counts_only_inside_the_objects_box():
    mask = np.zeros((8, 8), bool)
    mask[2:4, 2:6] = True  # 8 pixels, box rows 2-3, cols 2-5
    predicted = np.zeros((8, 8), int)
    predicted[2, 2:6] = 3  # 4 pixels of the object
    predicted[7, :] = 3  # far away: outside the box, not counted
    assert object_overlap(mask, predicted, 3) == (4, 8)
    predicted[3, 2:4] = 3  # ... and 2 pixels on another object of class 3 inside the box
    truth = np.zeros((8, 8), int)
    truth[3, 2:4] = 3
    assert object_overlap(mask, predicted, 3) == (6, 8)
    assert object_overlap(mask & (truth == 0), predicted, 3) == (4, 8)  # without truth: a false positive ...
    assert object_overlap(mask & (truth == 0), predicted, 3, truth) == (4, 6)  # ... with it, not this one's
    predicted[2:4, 2:6] = 1
    assert object_overlap(mask, predicted, 3) == (0, 8)


def test_space_preference_averages_the_slopes_between_filled_bins():
    intersection = np.array([[8, 0], [0, 0], [3, 3], [0, 0], [0, 0]], float)
    union = np.array([[10, 0], [0, 0], [10, 10], [0, 0], [0, 0]], float)
    found = space_preference(intersection, union, np.array([2, 0, 3, 0, 0]))
    assert [b["mIoU"] for b in found["bins"]] == [pytest.approx(0.8), None, pytest.approx(0.3), None, None]
    assert found["bins"][2]["distance"] == [0.4, 0.6] and found["bins"][2]["objects"] == 3
    assert found["score"] == pytest.approx((0.3 - 0.8) / 0.4)  # centred objects fare better: negative
    assert space_preference(intersection[:1], union[:1], np.array([2]))["score"] is None
