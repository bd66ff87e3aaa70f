"""MaskCut (CutLER, Wang et al. 2023; the instance pseudo-labeller of U2Seg): iterated normalised cuts.

For ONE image's last-block key features, repeat up to ``n_objects`` times:

1. Affinity on L2-normalised keys: ``W_ij = 1`` if ``cos(k_i, k_j) > tau`` else ``eps`` (a binary
   graph, ``tau = 0.15``, ``eps = 1e-5``). Patches already assigned to an object keep only ``eps``
   links (their rows and columns are set to ``eps``), as in MaskCut's masking of found objects.
2. Normalised cut (Shi & Malik): the second smallest generalised eigenvector of
   ``(D - W) x = lambda D x`` (the Fiedler vector), computed as ``x = D^-1/2 y`` with ``y`` the
   second largest eigenvector of ``D^-1/2 W D^-1/2`` (ARPACK, see ``spectral.top_eigenvectors``).
3. Bipartition at the vector's mean. The foreground is the side holding the patch with the
   largest ``|x|`` (the seed); if that side covers 2 or more of the 4 corner patches, the other
   side is taken instead (a rule of MaskCut's implementation).
   Patches of earlier objects are never the seed, do not count as corners and are removed from
   the new foreground (so they are never found twice).
4. With ``seed_component=True`` the foreground is further cut down to the connected component
   (8-connectivity) holding the seed.

The loop stops early when the cut is degenerate: the relaxed cut value ``lambda`` is not below
``1 - 1e-6`` (no bipartition better than a random one, e.g. constant keys), or the foreground is
empty or takes every remaining patch. Each object's score is ``clip(1 - lambda, 0, 1)``: 1 for a
perfectly isolated group of patches, towards 0 when the cut severs as much affinity as it keeps.

MaskCut is known to merge separate instances of similar appearance into one mask; pass the masks
through :func:`split_components` to separate them. (Even objects of different appearance are
taken together by the first cut when each is nearly disconnected from the background: cutting
all of them off at once severs about as few edges and balances the volumes better.) After the
first object, cutting off the ``eps``-linked patches of earlier objects costs ``lambda`` about
equal to the uncovered fraction of the image; a further object is found only when its own cut is
cheaper, otherwise the foreground comes out empty or total and the loop stops.

Keys may be numpy arrays or torch tensors (any float dtype; computed in float32 on the CPU).
Cost: one ``(N, N)`` float32 matrix (``N = h * w``; 164 MB at 80 x 80) and one ARPACK solve per
object; 80 x 80 patches, 3 objects: ~3-3.7 s on a busy 2-core CPU.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from .refine import split_components
from .spectral import top_eigenvectors

from zutiscli.ops.arrays import to_numpy as _to_numpy

__all__ = ["maskcut", "ncut_bipartition", "split_components"]




def _corner_count(mask: np.ndarray) -> int:
    """How many of the 4 corner patches of a ``(h, w)`` mask are foreground."""
    return int(mask[0, 0]) + int(mask[0, -1]) + int(mask[-1, 0]) + int(mask[-1, -1])


def ncut_bipartition(
    affinity: np.ndarray, grid: tuple[int, int], exclude: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """One normalised-cut bipartition of a patch graph, with MaskCut's foreground rules.

    Args:
        affinity: ``(N, N)`` symmetric non-negative float32 affinity, ``N = h * w`` row-major.
            Overwritten (normalised in place).
        grid: ``(h, w)``.
        exclude: optional ``(h, w)`` bool, patches of earlier objects: they are never the
            seed, do not count as corners, and are left out of the returned foreground.

    Returns:
        ``(foreground, fiedler, cut)``: ``(h, w)`` bool foreground side (seed side, corner rule
        applied), ``(h, w)`` float64 Fiedler vector ``x`` (sign unspecified) and the generalised
        eigenvalue ``lambda`` (relaxed normalised-cut value, ``>= 0``).
    """
    degree = affinity.sum(axis=1, dtype=np.float64)
    scale = (1.0 / np.sqrt(np.maximum(degree, 1e-30))).astype(affinity.dtype)
    affinity *= scale[:, None]
    affinity *= scale[None, :]
    values, vectors = top_eigenvectors(affinity, 2)
    fiedler = vectors[:, 1].astype(np.float64) * scale.astype(np.float64)
    cut = float(1.0 - values[1])
    allowed = np.ones(fiedler.size, dtype=bool) if exclude is None else ~np.asarray(exclude).ravel()
    side = fiedler > fiedler.mean()
    seed = int(np.argmax(np.where(allowed, np.abs(fiedler), -1.0)))
    foreground = (side if side[seed] else ~side) & allowed
    if _corner_count(foreground.reshape(grid)) >= 2:
        foreground = ~foreground & allowed
    return foreground.reshape(grid), fiedler.reshape(grid), cut


def maskcut(
    keys: Any,
    *,
    n_objects: int = 3,
    tau: float = 0.15,
    eps: float = 1e-5,
    seed_component: bool = False,
) -> list[tuple[np.ndarray, float]]:
    """Discover up to ``n_objects`` object masks in one image by iterated normalised cuts.

    Args:
        keys: ``(h, w, C)`` last-block key features of one image (heads concatenated, e.g.
            ``LastBlockFeatures.keys[i]``), numpy or torch.
        n_objects: maximum number of objects (MaskCut's N, default 3).
        tau: cosine threshold of the binary affinity (CutLER: 0.15).
        eps: affinity of non-edges and of patches of already found objects.
        seed_component: keep only the 8-connected component holding the seed patch (the
            patch with the largest ``|x|`` inside the foreground) of each object.

    Returns:
        ``[(mask, score), ...]`` in discovery order: ``(h, w)`` bool patch-level masks (pairwise
        disjoint) and scores ``clip(1 - lambda, 0, 1)`` in ``[0, 1]``. Empty when the first cut
        is already degenerate (e.g. constant keys, or fewer than 2 patches).
    """
    array = _to_numpy(keys)
    if array.ndim != 3:
        raise ValueError(f"maskcut expects (h, w, C) keys, got shape {tuple(array.shape)}")
    height, width, channels = array.shape
    grid = (height, width)
    count = height * width
    if count < 2 or n_objects < 1:
        return []
    unit = array.reshape(count, channels).astype(np.float32)
    unit /= np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12)
    similar = (unit @ unit.T) > tau
    covered = np.zeros(count, dtype=bool)
    results: list[tuple[np.ndarray, float]] = []
    for _ in range(n_objects):
        if count - int(covered.sum()) < 2:
            break
        affinity = np.where(similar, np.float32(1.0), np.float32(eps))
        affinity[covered, :] = eps
        affinity[:, covered] = eps
        foreground, fiedler, cut = ncut_bipartition(affinity, grid, covered.reshape(grid))
        del affinity
        if cut >= 1.0 - 1e-6:
            break
        flat = foreground.ravel()
        remaining = ~covered
        if not flat.any() or np.array_equal(flat, remaining):
            break
        mask = flat.reshape(grid)
        if seed_component:
            magnitude = np.where(mask, np.abs(fiedler), -1.0)
            seed = np.unravel_index(int(np.argmax(magnitude)), grid)
            labels, _ = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
            mask = labels == labels[seed]
        covered |= mask.ravel()
        results.append((mask, float(np.clip(1.0 - cut, 0.0, 1.0))))
    return results
