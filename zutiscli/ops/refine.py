"""Full-resolution post-processing of object masks found at patch resolution.

Conventions: a *patch-level* mask is ``(h, w)`` (bool, or float in ``[0, 1]`` for a soft mask); a
*pixel-level* mask is ``(H, W)``. Binary outputs are ``bool`` arrays; soft outputs are ``float32``
in ``[0, 1]``. Images are ``(H, W, 3)`` ``uint8`` RGB (``bilateral_refine`` also takes ``(H, W)``
grey). Sizes are ``(H, W)`` = (rows, columns) in pixels. Connected components use **8-connectivity**
(pixels touching at a corner belong together) unless ``connectivity=4`` is passed.

The usual pipeline for one saliency mask (what ZUTIS does after SelfMask)::

    soft = upsample_mask(patch_mask, (H, W))           # bilinear, (H, W) float32
    hard = bilateral_refine(image, soft)                # or densecrf_refine, or soft > 0.5
    masks = refine_mask(hard, fill_holes=True, mode="largest")

Inputs may be numpy arrays or torch tensors (moved to CPU); outputs are numpy arrays.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from scipy import ndimage
from scipy import sparse

from zutiscli.ops.arrays import to_numpy as _to_numpy

__all__ = [
    "upsample_mask",
    "fill_holes",
    "largest_component",
    "split_components",
    "remove_small",
    "refine_mask",
    "densecrf_refine",
    "bilateral_solve",
    "bilateral_refine",
]




def _structure(connectivity: int) -> np.ndarray:
    if connectivity == 8:
        return np.ones((3, 3), dtype=bool)
    if connectivity == 4:
        return ndimage.generate_binary_structure(2, 1)
    raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")


def _binary(mask: Any, threshold: float = 0.5) -> np.ndarray:
    """``(H, W)`` bool from a bool mask (as is) or a soft mask (``> threshold``)."""
    mask = _to_numpy(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected a (H, W) mask, got shape {tuple(mask.shape)}")
    if mask.dtype == bool:
        return mask
    if np.issubdtype(mask.dtype, np.floating):
        return mask > threshold
    return mask != 0


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """``(n_out, n_in)`` float32 linear-interpolation weights, half-pixel centres, edge clamped.

    Output sample ``i`` sits at input coordinate ``(i + 0.5) * n_in / n_out - 0.5`` (the
    ``align_corners=False`` convention of ``torch.nn.functional.interpolate``).
    """
    pos = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    pos = np.clip(pos, 0.0, n_in - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = pos - lo
    weights = np.zeros((n_out, n_in), dtype=np.float64)
    rows = np.arange(n_out)
    np.add.at(weights, (rows, lo), 1.0 - frac)
    np.add.at(weights, (rows, hi), frac)
    return weights.astype(np.float32)


def upsample_mask(mask: Any, size: tuple[int, int]) -> np.ndarray:
    """Bilinearly resize a patch-level mask to pixel resolution.

    Args:
        mask: ``(h, w)`` bool (read as 0/1) or float soft mask, numpy or torch.
        size: ``(H, W)`` output size in pixels.

    Returns:
        ``(H, W)`` float32 soft mask, values within the input's range (``[0, 1]`` for masks).
        Same sampling grid as ``F.interpolate(..., mode="bilinear", align_corners=False)``;
        computed as two small matrix products, ``O(H * w * h + H * W * w)``.
    """
    soft = _to_numpy(mask)
    if soft.ndim != 2:
        raise ValueError(f"upsample_mask expects a (h, w) mask, got shape {tuple(soft.shape)}")
    height, width = int(size[0]), int(size[1])
    if height <= 0 or width <= 0 or soft.size == 0:
        raise ValueError(f"cannot resize a {tuple(soft.shape)} mask to {(height, width)}")
    soft = soft.astype(np.float32)
    rows = _interp_matrix(height, soft.shape[0])
    cols = _interp_matrix(width, soft.shape[1])
    return (rows @ soft @ cols.T).astype(np.float32)


def fill_holes(mask: Any) -> np.ndarray:
    """``(H, W)`` bool mask with background regions not connected to the image border filled.

    Soft masks are thresholded at 0.5 first. Holes are 4-connected background regions (so a
    hole's outline may be 8-connected foreground), as in ``scipy.ndimage.binary_fill_holes``.
    """
    return ndimage.binary_fill_holes(_binary(mask))


def _components(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels ``(H, W)`` int32 (0 = background) and areas ``(n + 1,)`` (index 0 unused, set to 0)."""
    labels, count = ndimage.label(mask, structure=_structure(connectivity))
    areas = np.bincount(labels.ravel(), minlength=count + 1)
    areas[0] = 0
    return labels, areas


def largest_component(mask: Any, *, connectivity: int = 8) -> np.ndarray:
    """``(H, W)`` bool mask keeping only the largest connected component of ``mask``.

    Ties go to the component whose first pixel comes first in row-major order. An empty mask
    gives an empty mask.
    """
    binary = _binary(mask)
    labels, areas = _components(binary, connectivity)
    if areas.size <= 1:
        return np.zeros_like(binary)
    return labels == int(np.argmax(areas))


def split_components(mask: Any, min_area: int = 1, *, connectivity: int = 8) -> list[np.ndarray]:
    """Split a mask into its connected components.

    Args:
        mask: ``(H, W)`` bool (or soft, thresholded at 0.5), numpy or torch.
        min_area: components with fewer pixels (patches, for a patch-level mask) are dropped.
        connectivity: 8 (default; diagonal neighbours connect) or 4.

    Returns:
        One ``(H, W)`` bool mask per kept component, largest first (ties: row-major order of
        the component's first pixel). Empty list for an empty mask.
    """
    binary = _binary(mask)
    labels, areas = _components(binary, connectivity)
    order = sorted(range(1, areas.size), key=lambda label: (-int(areas[label]), label))
    return [labels == label for label in order if areas[label] >= max(int(min_area), 1)]


def remove_small(mask: Any, min_area: int, *, connectivity: int = 8) -> np.ndarray:
    """``(H, W)`` bool mask without the connected components smaller than ``min_area`` pixels."""
    binary = _binary(mask)
    labels, areas = _components(binary, connectivity)
    keep = areas >= int(min_area)
    keep[0] = False
    return keep[labels]


def refine_mask(
    mask: Any,
    *,
    fill_holes: bool = True,
    mode: Literal["largest", "split", "none"] = "largest",
    min_area_fraction: float = 0.0,
    threshold: float = 0.5,
    connectivity: int = 8,
) -> list[np.ndarray]:
    """Clean up one binary (or soft) object mask into zero or more object masks.

    Steps: binarise (soft masks: ``> threshold``), optionally fill holes, then by ``mode``:

    - ``"largest"``: keep the largest connected component (ZUTIS/SelfMask's choice);
    - ``"split"``: every connected component becomes its own mask (largest first), e.g. to undo
      MaskCut merging separate instances;
    - ``"none"``: keep the mask as a whole, minus components below the minimum area.

    Components (or, for ``"largest"``, the kept component) smaller than
    ``ceil(min_area_fraction * H * W)`` pixels (at least 1) are dropped.

    Args:
        mask: ``(H, W)`` bool or float mask, numpy or torch.

    Returns:
        List of ``(H, W)`` bool masks: at most one for ``"largest"`` and ``"none"``; empty when
        nothing survives.
    """
    if mode not in ("largest", "split", "none"):
        raise ValueError(f"mode must be 'largest', 'split' or 'none', got {mode!r}")
    binary = _binary(mask, threshold)
    if fill_holes:
        binary = ndimage.binary_fill_holes(binary)
    min_area = max(1, math.ceil(float(min_area_fraction) * binary.size))
    if mode == "split":
        return split_components(binary, min_area, connectivity=connectivity)
    if mode == "largest":
        kept = largest_component(binary, connectivity=connectivity)
        return [kept] if kept.sum() >= min_area else []
    kept = remove_small(binary, min_area, connectivity=connectivity)
    return [kept] if kept.any() else []


def _check_image(image: Any, shape: tuple[int, int]) -> np.ndarray:
    image = _to_numpy(image)
    if image.shape[:2] != shape:
        raise ValueError(f"image {tuple(image.shape)} and probability {shape} sizes differ")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    return image


def densecrf_refine(
    image: Any,
    fg_prob: Any,
    *,
    iterations: int = 10,
    pos_w: float = 3.0,
    pos_xy: float = 1.0,
    bi_w: float = 4.0,
    bi_xy: float = 67.0,
    bi_rgb: float = 3.0,
    clip: float = 1e-5,
) -> np.ndarray:
    """Binary fully connected CRF (Krähenbühl & Koltun 2011) over a foreground probability.

    Two labels (background, foreground) with unaries ``-log(clip(p))``, ``p`` clipped to
    ``[clip, 1 - clip]``; a Gaussian (smoothness) kernel of weight ``pos_w`` and spatial std
    ``pos_xy`` px, and a bilateral (appearance) kernel of weight ``bi_w``, spatial std ``bi_xy`` px
    and colour std ``bi_rgb`` (uint8 RGB units); Potts compatibility; ``iterations`` mean-field
    steps. The defaults are MaskDistill's and ReCo's (10 iterations, Gaussian w 3 xy 1, bilateral
    w 4 xy 67 rgb 3). MaskCut (CutLER / U2Seg) uses 10 iterations with Gaussian w 7 xy 3 and
    bilateral w 10 xy 50 rgb 5.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        fg_prob: ``(H, W)`` float foreground probability in ``[0, 1]``.

    Returns:
        ``(H, W)`` bool: pixels whose foreground marginal beats the background one.

    Needs ``pydensecrf`` (PyPI ``pydensecrf2`` on Python >= 3.11). Cost: linear in ``H * W`` per
    iteration (permutohedral lattice); ~0.3 s for 320 x 320, 10 iterations, on a busy 2-core CPU.
    """
    from zutiscli.ops.crf import dense_crf_labels

    prob = _to_numpy(fg_prob).astype(np.float32)
    if prob.ndim != 2:
        raise ValueError(f"fg_prob must be (H, W), got shape {tuple(prob.shape)}")
    rgb = _check_image(image, prob.shape)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"densecrf_refine needs a (H, W, 3) RGB image, got {tuple(rgb.shape)}")
    prob = np.clip(prob, clip, 1.0 - clip)
    marginals = dense_crf_labels(rgb, np.stack([1.0 - prob, prob]), iterations=iterations, pos_w=pos_w,
                                 pos_xy=pos_xy, bi_w=bi_w, bi_xy=bi_xy, bi_rgb=bi_rgb, clip=clip)
    return marginals[1] > marginals[0]


def _yuv(image: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` float64 full-range YCbCr (JPEG/BT.601) of a uint8 RGB image, 0..255 each."""
    rgb = image.astype(np.float64)
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    luma = 0.299 * red + 0.587 * green + 0.114 * blue
    cb = 128.0 - 0.168736 * red - 0.331264 * green + 0.5 * blue
    cr = 128.0 + 0.5 * red - 0.418688 * green - 0.081312 * blue
    return np.stack([luma, cb, cr], axis=-1)


def _bilateral_grid(
    image: np.ndarray, sigma_spatial: float, sigma_luma: float, sigma_chroma: float
) -> tuple[sparse.csr_matrix, sparse.csr_matrix]:
    """Splat matrix ``S`` ``(V, H*W)`` and blur matrix ``B`` ``(V, V)`` of a bilateral grid.

    Each pixel goes to the grid vertex ``round((x, y) / sigma_spatial, luma / sigma_luma,
    (cb, cr) / sigma_chroma)`` (5-D for colour, 3-D for grey images); only occupied vertices
    exist. ``B`` sums, over every grid dimension, the ``[1, 2, 1]`` filter between occupied
    vertices one step apart (so its diagonal is ``2 * dims``).
    """
    height, width = image.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width]
    coords = [np.round(xs / sigma_spatial), np.round(ys / sigma_spatial)]
    if image.ndim == 3 and image.shape[2] == 3:
        yuv = _yuv(image)
        coords += [
            np.round(yuv[..., 0] / sigma_luma),
            np.round(yuv[..., 1] / sigma_chroma),
            np.round(yuv[..., 2] / sigma_chroma),
        ]
    else:
        grey = image.reshape(height, width).astype(np.float64)
        coords.append(np.round(grey / sigma_luma))
    grid = np.stack([c.ravel().astype(np.int64) for c in coords], axis=1)  # (H*W, dims)
    extent = grid.max(axis=0) + 3  # room for the -1 / +1 neighbour of every occupied vertex
    grid += 1
    radix = np.cumprod(np.concatenate([[1], extent[:-1]])).astype(np.int64)
    keys = grid @ radix
    vertex_keys, vertex_of_pixel = np.unique(keys, return_inverse=True)
    n_vertices, n_pixels = vertex_keys.size, keys.size
    splat = sparse.csr_matrix(
        (np.ones(n_pixels), (vertex_of_pixel.ravel(), np.arange(n_pixels))), shape=(n_vertices, n_pixels)
    )
    dims = grid.shape[1]
    rows: list[np.ndarray] = [np.arange(n_vertices)]
    cols: list[np.ndarray] = [np.arange(n_vertices)]
    vals: list[np.ndarray] = [np.full(n_vertices, 2.0 * dims)]
    for dim in range(dims):
        for step in (-1, 1):
            neighbour = vertex_keys + step * radix[dim]
            where = np.searchsorted(vertex_keys, neighbour)
            where = np.minimum(where, n_vertices - 1)
            found = vertex_keys[where] == neighbour
            rows.append(np.flatnonzero(found))
            cols.append(where[found])
            vals.append(np.ones(int(found.sum())))
    blur = sparse.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n_vertices, n_vertices)
    )
    return splat, blur


def bilateral_solve(
    image: Any,
    target: Any,
    confidence: Any = None,
    *,
    sigma_spatial: float = 16.0,
    sigma_luma: float = 16.0,
    sigma_chroma: float = 8.0,
    lam: float = 256.0,
    iterations: int = 25,
) -> np.ndarray:
    """Edge-aware smoothing of ``target`` guided by ``image``: a simplified fast bilateral solver.

    Implements Barron & Poole's fast bilateral solver (ECCV 2016) with the grid simplified to
    nearest-vertex splatting: minimise over pixel values ``x``

        lam * sum_ij W_ij (x_i - x_j)^2 / 2  +  sum_i c_i (x_i - t_i)^2

    where ``W`` is a bilateral affinity approximated in a bilateral grid (pixels are splatted to
    the nearest vertex of a grid with cells ``sigma_spatial`` px, ``sigma_luma`` luma levels and
    ``sigma_chroma`` chroma levels, YCbCr 0..255; blurred with ``[1, 2, 1]`` along every grid
    axis; bistochastised by 10 Sinkhorn-style normalisation steps). The problem is solved in grid
    space, ``(lam * (D_m - D_n B D_n) + diag(S c)) y = S (c * t)``, by Jacobi-preconditioned
    conjugate gradients (``iterations`` steps, started from the confidence-weighted grid mean)
    and sliced back to pixels, ``x = S^T y``. Slicing is nearest-vertex, so the output is
    constant over pixels sharing a vertex (same spatial cell and colour bin): boundaries follow
    colour edges. Defaults are SelfMask's (as used by ZUTIS).

    Args:
        image: ``(H, W, 3)`` uint8 RGB or ``(H, W)`` uint8 grey guide.
        target: ``(H, W)`` float values to smooth (e.g. a bilinearly upsampled soft mask), or
            ``(N, H, W)``: ``N`` targets smoothed with one grid (built once).
        confidence: ``(H, W)`` non-negative float weights of the data term; ``None`` = all ones.

    Returns:
        float32 smoothed values, the shape of ``target``.

    Cost: ``O(H * W)`` to build the grid (one ``np.unique`` over pixel keys) plus ``iterations``
    sparse products on the ``V`` occupied vertices (at most ``H * W``, usually far fewer);
    ~0.03-0.06 s for 320 x 320 on a busy 2-core CPU (12k vertices for a noisy two-colour image).
    """
    values = _to_numpy(target).astype(np.float64)
    if values.ndim not in (2, 3):
        raise ValueError(f"target must be (H, W) or (N, H, W), got shape {tuple(values.shape)}")
    guide = _check_image(image, values.shape[-2:])
    if confidence is None:
        weights = np.ones(values.shape[-2] * values.shape[-1])
    else:
        weights = _to_numpy(confidence).astype(np.float64).ravel()
        if weights.size != values.shape[-2] * values.shape[-1]:
            raise ValueError("confidence must have the shape of one target, (H, W)")
    splat, blur = _bilateral_grid(guide, sigma_spatial, sigma_luma, sigma_chroma)
    counts = np.asarray(splat.sum(axis=1)).ravel()  # pixels per vertex, all >= 1
    norm = np.ones_like(counts)
    for _ in range(10):  # bistochastisation: D_n B D_n 1 ~= counts
        norm = np.sqrt(norm * counts / (blur @ norm))
    smooth = sparse.diags(counts) - sparse.diags(norm) @ blur @ sparse.diags(norm)
    splat_weights = splat @ weights
    system = (lam * smooth + sparse.diags(splat_weights)).tocsr()
    solved = []
    for one in values.reshape(-1, weights.size):  # one grid and one system for every target
        rhs = splat @ (weights * one)
        start = rhs / np.maximum(splat_weights, 1e-12)
        solved.append(splat.T @ _jacobi_cg(system, rhs, start, int(iterations)))
    return np.stack(solved).reshape(values.shape).astype(np.float32)


def _jacobi_cg(
    system: sparse.csr_matrix, rhs: np.ndarray, start: np.ndarray, iterations: int, rtol: float = 1e-5
) -> np.ndarray:
    """Jacobi-preconditioned conjugate gradients for a symmetric positive definite sparse system.

    Written out (rather than ``scipy.sparse.linalg.cg``) so that the vector reductions are plain
    element-wise numpy sums: multi-threaded BLAS ``dot`` on short vectors is slow on busy
    machines. Stops after ``iterations`` steps or when ``|r| <= rtol * |rhs|``.
    """
    inverse_diagonal = 1.0 / np.maximum(system.diagonal(), 1e-12)
    solution = start.copy()
    residual = rhs - system @ solution
    preconditioned = inverse_diagonal * residual
    direction = preconditioned.copy()
    rho = float(np.sum(residual * preconditioned))
    stop = (rtol * float(np.sqrt(np.sum(rhs * rhs)))) ** 2
    for _ in range(iterations):
        if float(np.sum(residual * residual)) <= stop:
            break
        product = system @ direction
        curvature = float(np.sum(direction * product))
        if curvature <= 0.0:
            break
        step = rho / curvature
        solution += step * direction
        residual -= step * product
        preconditioned = inverse_diagonal * residual
        rho_next = float(np.sum(residual * preconditioned))
        direction = preconditioned + (rho_next / rho) * direction if rho > 0 else preconditioned
        rho = rho_next
    return solution


def bilateral_refine(
    image: Any,
    fg_prob: Any,
    *,
    sigma_spatial: float = 16.0,
    sigma_luma: float = 16.0,
    sigma_chroma: float = 8.0,
    lam: float = 256.0,
    iterations: int = 25,
    threshold: float = 0.5,
) -> np.ndarray:
    """Snap a soft foreground mask to image edges with :func:`bilateral_solve`, then binarise.

    Args:
        image: ``(H, W, 3)`` uint8 RGB (or ``(H, W)`` uint8 grey).
        fg_prob: ``(H, W)`` float foreground probability in ``[0, 1]`` (confidence 1 everywhere),
            or ``(N, H, W)`` for ``N`` masks of one image (the grid is built once).

    Returns:
        bool, the shape of ``fg_prob``: solved values ``> threshold``. No pydensecrf needed.
    """
    return bilateral_solve(
        image,
        fg_prob,
        sigma_spatial=sigma_spatial,
        sigma_luma=sigma_luma,
        sigma_chroma=sigma_chroma,
        lam=lam,
        iterations=iterations,
    ) > threshold
