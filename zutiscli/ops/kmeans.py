"""Spherical k-means of unit vectors with faiss, reproducible bit for bit.

What MaskDistill and U2Seg do to give class-agnostic masks pseudo-classes: k-means over one
feature per mask, each cluster a pseudo-class. Spherical: centroids are renormalised to unit
length after every update and points go to the centroid of largest cosine similarity, so the
clusters are those of cosine distance.

Reproducibility: the same features, ``k``, ``seed``, ``iterations`` and ``restarts`` give the same
clusters, centroids and distances on every run. faiss draws its initial centroids (and, above
``max_points_per_centroid * k`` points, its training sample) from ``seed``; its BLAS and OpenMP
loops run here on a fixed number of threads (:data:`KMEANS_THREADS`), so no result depends on
how many cores the machine has or what the rest of the process set.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np

__all__ = ["KMEANS_THREADS", "KMeansResult", "spherical_kmeans"]

#: faiss (OpenMP and its OpenBLAS) threads during k-means: fixed, so that sums are reduced in one
#: order on every machine.
KMEANS_THREADS = 1


@dataclass(frozen=True)
class KMeansResult:
    """A clustering of ``N`` unit vectors into ``K`` clusters.

    Attributes:
        assignment: ``(N,)`` int64, the cluster of each vector (its most similar centroid).
        distance: ``(N,)`` float32, cosine distance ``1 - cos`` to that centroid, in ``[0, 2]``.
        centroids: ``(K, D)`` float32, unit rows.
        sizes: ``(K,)`` int64, vectors per cluster (a cluster may be empty when vectors repeat).
        similarity: mean cosine similarity of the vectors to their centroids (what the
            restarts compete on: the best of them is kept).
    """

    assignment: np.ndarray
    distance: np.ndarray
    centroids: np.ndarray
    sizes: np.ndarray
    similarity: float


@contextlib.contextmanager
def faiss_threads(count: int) -> Iterator[None]:
    """Within the block faiss runs on ``count`` OpenMP threads; the previous count comes back after."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(count)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def spherical_kmeans(
    features: np.ndarray,
    k: int,
    *,
    iterations: int = 25,
    restarts: int = 3,
    seed: int = 0,
    max_points_per_centroid: int = 256,
) -> KMeansResult:
    """Cluster unit vectors by cosine similarity with ``faiss.Kmeans(spherical=True)``.

    Args:
        features: ``(N, D)`` float32, finite, rows of unit length (they are not renormalised).
        k: number of clusters, ``1 <= k <= N``.
        iterations: Lloyd iterations per run (faiss ``niter``).
        restarts: runs from different random initial centroids; the one whose vectors are most
            similar to their centroids is kept (faiss ``nredo``).
        seed: seed of the initial centroids and of the training sample.
        max_points_per_centroid: above ``k`` times this many vectors faiss trains on a random
            sample of that size (its default, 256); every vector is assigned afterwards.

    Returns:
        :class:`KMeansResult`.

    Raises:
        ValueError: bad shapes, non-finite values, ``k`` outside ``[1, N]``, or ``iterations`` or
            ``restarts`` below 1.
    """
    import faiss

    x = np.ascontiguousarray(features, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] < 1:
        raise ValueError(f"features must be (N, D), got shape {x.shape}")
    count, dim = x.shape
    if not 1 <= k <= count:
        raise ValueError(f"k must lie in [1, N] = [1, {count}], got {k}")
    if iterations < 1 or restarts < 1:
        raise ValueError(f"iterations and restarts must be >= 1, got {iterations} and {restarts}")
    if not np.isfinite(x).all():
        raise ValueError("features hold NaN or infinite values")
    with faiss_threads(KMEANS_THREADS):
        kmeans = faiss.Kmeans(dim, int(k), niter=int(iterations), nredo=int(restarts), spherical=True,
                              seed=int(seed), verbose=False, min_points_per_centroid=1,
                              max_points_per_centroid=int(max_points_per_centroid))
        kmeans.train(x)
        centroids = np.ascontiguousarray(kmeans.centroids, dtype=np.float32).reshape(k, dim)
        norms = np.linalg.norm(centroids, axis=1, keepdims=True)
        centroids = centroids / np.where(norms > 0, norms, 1)
        index = faiss.IndexFlatIP(dim)
        index.add(centroids)
        similarity, nearest = index.search(x, 1)
    assignment = nearest[:, 0].astype(np.int64)
    cosine = similarity[:, 0].astype(np.float32)
    distance = np.clip(1.0 - cosine, 0.0, 2.0).astype(np.float32)
    sizes = np.bincount(assignment, minlength=k).astype(np.int64)
    return KMeansResult(assignment, distance, centroids.astype(np.float32), sizes,
                        float(cosine.astype(np.float64).mean()))
