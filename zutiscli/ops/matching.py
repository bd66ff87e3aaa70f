"""Bipartite matching of predicted masks to target masks (DETR/Mask2Former style), and mask losses.

Costs and losses between ``Q`` predicted mask logits and ``N`` binary target masks over ``P``
pixels, all computed for every pair at once with matrix products:

- sigmoid binary cross-entropy, averaged over pixels;
- dice loss ``1 - (2 |p * t| + 1) / (|p| + |t| + 1)`` with ``p = sigmoid(logits)``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment


def pairwise_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``(Q, P)`` logits x ``(N, P)`` {0, 1} targets -> ``(Q, N)`` mean BCE of every pair."""
    pixels = logits.shape[1]
    positive = F.softplus(-logits)  # -log sigmoid(x)
    negative = F.softplus(logits)  # -log (1 - sigmoid(x))
    targets = targets.to(logits.dtype)
    return (positive @ targets.T + negative @ (1 - targets).T) / pixels


def pairwise_dice(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``(Q, P)`` logits x ``(N, P)`` {0, 1} targets -> ``(Q, N)`` dice loss of every pair."""
    probs = logits.sigmoid()
    targets = targets.to(probs.dtype)
    numerator = 2 * probs @ targets.T
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def hungarian_match(cost: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-cost one-to-one assignment of a ``(Q, N)`` cost matrix; ``(query_ids, target_ids)``.

    With ``Q >= N`` every target gets exactly one query. Pairs are sorted by target id.
    """
    rows, cols = linear_sum_assignment(cost.detach().float().cpu().numpy())
    order = np.argsort(cols)
    return rows[order].astype(np.int64), cols[order].astype(np.int64)


def matched_mask_loss(logits: torch.Tensor, targets: torch.Tensor, *, bce_weight: float = 1.0,
                      dice_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Match ``(Q, P)`` predictions to ``(N, P)`` targets on ``bce + dice`` cost; return the losses.

    Returns ``(bce, dice, query_ids)``: BCE and dice averaged over the matched pairs (zero, with
    gradient, when there is no target), and which query each target got. Unmatched queries get no
    mask loss.
    """
    if targets.shape[0] == 0:
        zero = logits.sum() * 0.0
        return zero, zero, np.zeros(0, dtype=np.int64)
    with torch.no_grad():
        cost = bce_weight * pairwise_bce(logits.float(), targets) + dice_weight * pairwise_dice(logits.float(), targets)
    queries, target_ids = hungarian_match(cost)
    chosen = logits[torch.as_tensor(queries, device=logits.device)].float()
    matched = targets[torch.as_tensor(target_ids, device=targets.device)].to(chosen.dtype)
    bce = F.binary_cross_entropy_with_logits(chosen, matched, reduction="none").mean(-1).mean()
    probs = chosen.sigmoid()
    dice = (1 - (2 * (probs * matched).sum(-1) + 1) / (probs.sum(-1) + matched.sum(-1) + 1)).mean()
    return bce, dice, queries
