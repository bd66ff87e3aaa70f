"""Spherical k-means with faiss: separated groups found, every result reproducible, bad input refused."""

import faiss
import numpy as np
import pytest

from zutiscli.ops import kmeans
from zutiscli.ops.kmeans import spherical_kmeans


def _groups(count=5, per=30, dim=16, spread=0.25, seed=0):
    """``count`` tight groups of unit vectors around random directions: (vectors, true group)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(count, dim))
    x = np.repeat(centres, per, axis=0) + spread * rng.normal(size=(count * per, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), np.repeat(np.arange(count), per)


def test_finds_separated_groups_with_unit_centroids_and_cosine_distances():
    x, truth = _groups()
    result = spherical_kmeans(x, 5, seed=1)
    # each cluster is one group (up to renaming)
    assert {tuple(sorted(set(truth[result.assignment == c]))) for c in range(5)} == {(g,) for g in range(5)}
    np.testing.assert_array_equal(np.sort(result.sizes), [30] * 5)
    np.testing.assert_allclose(np.linalg.norm(result.centroids, axis=1), 1, atol=1e-5)
    cosine = (x * result.centroids[result.assignment]).sum(axis=1)
    np.testing.assert_allclose(result.distance, 1 - cosine, atol=1e-5)
    assert result.assignment.dtype == np.int64 and result.distance.dtype == np.float32
    assert result.centroids.dtype == np.float32 and result.centroids.shape == (5, 16)
    assert result.similarity == pytest.approx(float(cosine.mean()), abs=1e-5)


def test_same_seed_same_result_other_seed_may_differ():
    x, _ = _groups(count=8, per=20, spread=0.9, seed=3)  # overlapping groups: the start matters
    first, second = spherical_kmeans(x, 6, seed=7), spherical_kmeans(x, 6, seed=7)
    assert np.array_equal(first.assignment, second.assignment)
    assert np.array_equal(first.centroids, second.centroids) and np.array_equal(first.distance, second.distance)


def test_result_does_not_depend_on_the_threads_the_process_set(monkeypatch):
    x, _ = _groups(count=8, per=40, dim=32, spread=0.8, seed=5)
    before = faiss.omp_get_max_threads()
    reference = spherical_kmeans(x, 7, seed=2)
    assert faiss.omp_get_max_threads() == before  # the count is restored
    faiss.omp_set_num_threads(2)
    try:
        again = spherical_kmeans(x, 7, seed=2)
    finally:
        faiss.omp_set_num_threads(before)
    assert np.array_equal(reference.assignment, again.assignment)
    assert np.array_equal(reference.centroids, again.centroids)
    # and were k-means itself to run on two threads, this machine's faiss would still agree
    monkeypatch.setattr(kmeans, "KMEANS_THREADS", 2)
    assert np.array_equal(spherical_kmeans(x, 7, seed=2).centroids, reference.centroids)


def test_k_equal_to_n_and_repeated_vectors():
    x = np.eye(3, dtype=np.float32)
    result = spherical_kmeans(x, 3)
    assert sorted(result.assignment.tolist()) == [0, 1, 2]
    np.testing.assert_allclose(result.distance, 0, atol=1e-6)
    same = np.repeat(x[:1], 4, axis=0)  # four equal vectors, two clusters: one may stay empty
    result = spherical_kmeans(same, 2)
    assert result.sizes.sum() == 4


@pytest.mark.parametrize("features, k, message", [
    (np.zeros((4,), np.float32), 2, "must be"),
    (np.ones((3, 2), np.float32), 4, "k must lie"),
    (np.ones((3, 2), np.float32), 0, "k must lie"),
    (np.array([[np.nan, 1.0], [1.0, 0.0]], np.float32), 2, "NaN"),
])
def test_bad_input_is_refused(features, k, message):
    with pytest.raises(ValueError, match=message):
        spherical_kmeans(features, k)
    with pytest.raises(ValueError, match="restarts"):
        spherical_kmeans(np.eye(3, dtype=np.float32), 2, restarts=0)
