"""Purity, NMI, majority classes and mask-to-instance labelling, against values worked out by hand."""

import math

import numpy as np
import pytest

from zutiscli.ops.cluster_quality import (
    best_overlap_labels,
    cluster_majority,
    contingency_table,
    normalized_mutual_info,
    purity,
)


def test_contingency_table_counts_matched_masks_only():
    clusters = np.array([0, 0, 1, 1, 1, 2])
    labels = np.array([1, 1, 0, -1, 1, -1])
    table = contingency_table(clusters, labels, 3, 2)
    np.testing.assert_array_equal(table, [[0, 2], [1, 1], [0, 0]])
    with pytest.raises(ValueError, match="cluster ids"):
        contingency_table(np.array([3]), np.array([0]), 3, 2)
    with pytest.raises(ValueError, match="labels"):
        contingency_table(np.array([0]), np.array([2]), 3, 2)


def test_identical_partitions_score_one_and_independent_ones_zero():
    same = contingency_table(np.array([0, 0, 1, 1]), np.array([1, 1, 0, 0]), 2, 2)  # names permuted: no matter
    assert purity(same) == 1.0 and normalized_mutual_info(same) == pytest.approx(1.0, abs=1e-12)
    crossed = contingency_table(np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1]), 2, 2)
    assert purity(crossed) == 0.5 and normalized_mutual_info(crossed) == pytest.approx(0.0, abs=1e-12)


def test_purity_and_nmi_of_a_worked_example():
    # cluster 0: two masks of class 0; cluster 1: one of class 0, one of class 1 (n = 4).
    table = np.array([[2, 0], [1, 1]])
    assert purity(table) == 0.75  # (2 + 1) / 4
    # I = 2/4 ln(4*2 / (2*3)) + 1/4 ln(4*1 / (2*3)) + 1/4 ln(4*1 / (2*1))
    mutual = 0.5 * math.log(4 / 3) + 0.25 * math.log(2 / 3) + 0.25 * math.log(2)
    h_clusters = math.log(2)  # rows 2, 2
    h_classes = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))  # columns 3, 1
    expected = mutual / ((h_clusters + h_classes) / 2)
    assert normalized_mutual_info(table) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.343712, abs=1e-6)


def test_over_clustering_keeps_purity_and_lowers_nmi():
    # each class split into two pure clusters: every cluster is pure, but the partitions differ
    table = np.array([[3, 0], [3, 0], [0, 3], [0, 3]])
    assert purity(table) == 1.0
    # I = ln 2 (the class is known from the cluster); H(K) = ln 4, H(C) = ln 2
    assert normalized_mutual_info(table) == pytest.approx(math.log(2) / ((math.log(4) + math.log(2)) / 2))


def test_empty_rows_change_nothing_and_an_empty_table_has_no_score():
    table = np.array([[2, 0], [1, 1]])
    padded = np.array([[2, 0], [0, 0], [1, 1]])
    assert purity(padded) == purity(table)
    assert normalized_mutual_info(padded) == pytest.approx(normalized_mutual_info(table))
    assert purity(np.zeros((3, 2))) is None and normalized_mutual_info(np.zeros((3, 2))) is None
    # one cluster, one class: the same (trivial) partition
    assert normalized_mutual_info(np.array([[5]])) == 1.0
    # one cluster, two classes: nothing is told apart
    assert normalized_mutual_info(np.array([[2, 3]])) == 0.0


def test_cluster_majority_share_and_matched():
    majority, share, matched = cluster_majority(np.array([[1, 3], [0, 0], [2, 2]]))
    np.testing.assert_array_equal(majority, [1, -1, 0])  # ties: the first class
    np.testing.assert_allclose(share, [0.75, np.nan, 0.5])
    np.testing.assert_array_equal(matched, [4, 0, 4])


def test_best_overlap_labels_threshold_and_ties():
    iou = np.array([[0.2, 0.7, 0.1],   # best: instance 1 -> its class 5
                    [0.5, 0.5, 0.0],   # tie: the first instance, IoU exactly 0.5 counts
                    [0.49, 0.1, 0.0],  # below the threshold
                    [0.0, 0.0, 0.9]])  # several masks may take the same class
    labels = np.array([4, 5, 4])
    np.testing.assert_array_equal(best_overlap_labels(iou, labels, 0.5), [5, 4, -1, 4])
    np.testing.assert_array_equal(best_overlap_labels(np.zeros((2, 0)), np.zeros(0, int)), [-1, -1])
    with pytest.raises(ValueError):
        best_overlap_labels(iou, labels[:2])
