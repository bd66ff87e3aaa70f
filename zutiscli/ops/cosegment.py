"""ReCo's co-segmentation (Shin, Xie & Albanie 2022, Sec. 3.1-3.2): pure functions on dense features.

For one class, the ``k`` images of its archive give ``k x n`` patch features (``n = h * w`` patches
per image, L2-normalised). ReCo builds the adjacency ``A`` (``kn x kn`` cosine similarities), takes
for each patch its best match in every archive image (column maximum of each ``n``-wide block),
averages those ``k`` maxima (the patch's *support*), picks each image's best-supported patch as its
*seed*, and averages the seed features into the class's *reference* embedding. Pixels of a new
image are then scored by ``sigmoid(reference . feature)``.

Two gates weight the columns of ``A`` (each patch as a match for the others) before the maxima:
the language gate (``sigmoid(10 cos)`` of MaskCLIP's dense CLIP features with the class's text
embedding) and context elimination (``prod_c (1 - sigmoid(cos))`` with the references of context
classes such as sky or road).

:func:`patch_support` never holds ``A`` whole: it computes ``block`` rows at a time. The official
code slices each image's columns as ``[start, start + end)`` (so from the second image on, a block
reaches into the following images); here each maximum is over exactly one image's patches, as the
paper describes.

Shapes: ``k`` archive images, ``n`` patches each, ``C`` feature channels, ``m`` context classes.
"""

from __future__ import annotations

import torch

#: ReCo's temperature of the language gate, ``sigmoid(10 cos)`` (official code).
TEXT_GATE_TEMPERATURE = 10.0

#: Similarities held at once by :func:`patch_support` (float32: 64 MiB).
DEFAULT_BLOCK_ELEMENTS = 1 << 24


def _check_features(features: torch.Tensor) -> tuple[int, int, int]:
    if features.dim() != 3:
        raise ValueError(f"features must be (k, n, C), got shape {tuple(features.shape)}")
    k, n, c = features.shape
    if k == 0 or n == 0:
        raise ValueError(f"features hold no patch: shape {tuple(features.shape)}")
    return k, n, c


def patch_support(features: torch.Tensor, weights: torch.Tensor | None = None, *,
                  block_elements: int = DEFAULT_BLOCK_ELEMENTS) -> torch.Tensor:
    """Each patch's support: the mean over the ``k`` images of its best weighted match in each.

    ``support[i, p] = mean_j max_q A[(i, p), (j, q)] * weights[j, q]`` with ``A`` the cosine
    similarities of all patches, the patch itself included (its own image's block, as in ReCo).

    Args:
        features: ``(k, n, C)`` float patch features, L2-normalised along ``C``.
        weights: ``(k, n)`` float in [0, 1], each patch's weight as a match (the gates); ``None`` = 1.
        block_elements: the most similarities computed at once (rows of ``A`` are taken in blocks of
            ``max(1, block_elements // (k n))``).

    Returns:
        ``(k, n)`` float32 support, in [-1, 1].
    """
    k, n, c = _check_features(features)
    flat = features.reshape(k * n, c).float()
    columns = flat.t()
    gate = None
    if weights is not None:
        if weights.shape != (k, n):
            raise ValueError(f"weights must be (k, n) = {(k, n)}, got {tuple(weights.shape)}")
        gate = weights.reshape(1, k * n).float()
    rows = max(1, block_elements // (k * n))
    out = torch.empty(k * n, dtype=torch.float32, device=flat.device)
    for start in range(0, k * n, rows):
        similarity = flat[start:start + rows] @ columns  # (r, k n)
        if gate is not None:
            similarity = similarity * gate
        out[start:start + rows] = similarity.view(-1, k, n).amax(dim=2).mean(dim=1)
    return out.view(k, n)


def seed_patches(support: torch.Tensor) -> torch.Tensor:
    """``(k,)`` int64: the index (``0 .. n-1``, row-major over the ``h x w`` grid) of each image's
    best-supported patch, ``support`` ``(k, n)``."""
    if support.dim() != 2:
        raise ValueError(f"support must be (k, n), got shape {tuple(support.shape)}")
    return support.argmax(dim=1)


def reference_embedding(features: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """``(C,)`` float32: the L2-normalised mean of the seed features (``features`` ``(k, n, C)``,
    ``seeds`` ``(k,)`` from :func:`seed_patches`)."""
    k, _, _ = _check_features(features)
    if seeds.shape != (k,):
        raise ValueError(f"seeds must be (k,) = ({k},), got {tuple(seeds.shape)}")
    chosen = features[torch.arange(k, device=features.device), seeds.to(features.device)].float()
    return torch.nn.functional.normalize(chosen.mean(dim=0), dim=0)


def reference_probability(features: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """``sigmoid(reference . feature)``: each patch's probability of each class (ReCo's Eq. 2).

    Args:
        features: ``(..., C)`` L2-normalised patch features.
        references: ``(K, C)`` L2-normalised reference embeddings.

    Returns:
        ``(..., K)`` float32 in ``(0.27, 0.73)`` (a sigmoid of cosines).
    """
    return torch.sigmoid(features.float() @ references.float().t())


def context_weights(features: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """Context elimination's weights: ``prod_c (1 - sigmoid(context_c . feature))``.

    Args:
        features: ``(..., C)`` L2-normalised patch features.
        context: ``(m, C)`` L2-normalised references of the context classes (``m`` may be 0).

    Returns:
        ``(...)`` float32 in (0, 1]; all ones when ``m == 0``.
    """
    if context.shape[0] == 0:
        return torch.ones(features.shape[:-1], dtype=torch.float32, device=features.device)
    return (1.0 - reference_probability(features, context)).prod(dim=-1)


def text_gate(dense: torch.Tensor, text: torch.Tensor, temperature: float = TEXT_GATE_TEMPERATURE) -> torch.Tensor:
    """ReCo's language gate: ``sigmoid(temperature * cos)`` of dense CLIP features and class text.

    Args:
        dense: ``(..., E)`` dense CLIP embeddings (MaskCLIP's value path; normalised here).
        text: ``(E,)`` or ``(K, E)`` class text embeddings (normalised here).
        temperature: ReCo's 10.

    Returns:
        ``(...)`` for one text, ``(..., K)`` for several; float32 in (0, 1).
    """
    dense = torch.nn.functional.normalize(dense.float(), dim=-1)
    text = torch.nn.functional.normalize(text.float(), dim=-1)
    return torch.sigmoid(temperature * (dense @ text.t() if text.dim() == 2 else dense @ text))
