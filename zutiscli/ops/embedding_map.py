"""A linear map of image embeddings fitted so that they name labelled examples better, text untouched.

A CLIP classifier names an image embedding ``e`` by ``softmax(scale * e . t_k)`` over the unit
text embeddings ``t_k`` of the classes. :func:`fit_embedding_map` learns a ``(D, D)`` matrix
``M``, starting from the identity, such that ``normalise(e @ M)`` is named right on labelled
examples; the text side stays as it is, so the map can be used with any class names, also names
it was not fitted on. A penalty ``decay * ||M - I||^2`` (squared Frobenius norm) keeps it near the
identity. Full-batch Adam from a fixed start: the result is a pure function of the inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["apply_embedding_map", "fit_embedding_map"]


def apply_embedding_map(embeddings: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``(N, D)`` embeddings and a ``(D, D)`` map -> ``(N, D)`` unit vectors ``normalise(e @ M)``."""
    return F.normalize(embeddings @ weight.to(embeddings), dim=-1)


def fit_embedding_map(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    text: torch.Tensor,
    scale: float,
    *,
    steps: int = 300,
    lr: float = 1e-3,
    decay: float = 0.1,
) -> torch.Tensor:
    """Fit the map on labelled embeddings.

    Args:
        embeddings: ``(N, D)`` image embeddings (any norm), N >= 1.
        labels: ``(N,)`` int64 class indices into ``text``.
        text: ``(K, D)`` unit text embeddings of the classes.
        scale: the logit scale (CLIP's ``logit_scale.exp()``, ~100).
        steps, lr: full-batch Adam steps and learning rate.
        decay: weight of the squared distance of the map from the identity.

    Returns:
        ``(D, D)`` float32 map on the CPU.
    """
    if embeddings.ndim != 2 or text.ndim != 2 or embeddings.shape[1] != text.shape[1]:
        raise ValueError(f"need (N, D) embeddings and (K, D) text, got {tuple(embeddings.shape)} and {tuple(text.shape)}")
    if labels.shape != (embeddings.shape[0],) or embeddings.shape[0] == 0:
        raise ValueError(f"need one label per embedding (and at least one), got {tuple(labels.shape)}")
    if int(labels.min()) < 0 or int(labels.max()) >= text.shape[0]:
        raise ValueError(f"labels must lie in 0..{text.shape[0] - 1}")
    x = embeddings.detach().float().cpu()
    y = labels.detach().long().cpu()
    t = text.detach().float().cpu()
    identity = torch.eye(x.shape[1])
    weight = identity.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([weight], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            logits = scale * apply_embedding_map(x, weight) @ t.T
            loss = F.cross_entropy(logits, y) + decay * (weight - identity).square().sum()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    return weight.detach()
