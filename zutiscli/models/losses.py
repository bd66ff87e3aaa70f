"""ZUTIS training loss: pixel cross-entropy (semantic) + Hungarian-matched dice + BCE at every decoder layer.

Both terms are averaged per image first and then over the images of the batch, so the loss of a
batch split across data-parallel workers averages to exactly the loss of the whole batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from zutiscli.ops.matching import matched_mask_loss

IGNORE_INDEX = 255


def semantic_loss(logits: torch.Tensor, targets: torch.Tensor, hard_fraction: float = 1.0) -> torch.Tensor:
    """``logits (B, K, h, w)`` upsampled bilinearly to ``targets (B, H, W)`` (255 = ignore); mean CE.

    Cross-entropy is averaged over the valid pixels of each image, then over images (an image
    with no valid pixel contributes zero). With ``hard_fraction < 1`` (MaskDistill's hard-pixel
    mining, 0.2) it is the mean over the ``ceil(hard_fraction * n)`` largest per-pixel losses of
    the batch's ``n`` valid pixels instead (on each process of a data-parallel run: its share).
    """
    upsampled = F.interpolate(logits.float(), size=targets.shape[-2:], mode="bilinear", align_corners=False)
    per_pixel = F.cross_entropy(upsampled, targets.long(), ignore_index=IGNORE_INDEX, reduction="none")
    if hard_fraction < 1:
        losses = per_pixel[targets != IGNORE_INDEX]
        if losses.numel() == 0:
            return per_pixel.sum() * 0.0
        count = max(1, math.ceil(hard_fraction * losses.numel()))
        return losses.topk(count, sorted=False).values.mean()
    valid = (targets != IGNORE_INDEX).flatten(1)
    counts = valid.sum(1).clamp(min=1)
    return ((per_pixel.flatten(1) * valid).sum(1) / counts).mean()


def resize_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(N, H, W)`` bool masks -> ``(N, h, w)`` float {0, 1}: area average then threshold at 0.5."""
    if masks.shape[0] == 0:
        return masks.new_zeros((0, *size), dtype=torch.float32)
    area = F.interpolate(masks[:, None].float(), size=size, mode="area")[:, 0]
    return (area >= 0.5).float()


def mask_loss(mask_logits: torch.Tensor, instances: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Matched mask loss summed over decoder layers.

    ``mask_logits (L, B, Q, h, w)``; ``instances``: per image a ``(N_b, H, W)`` bool tensor of
    disjoint instance masks (resized to ``h x w``; instances that vanish are left out). For each
    layer and image the queries are matched to the instances on BCE + dice cost; the matched pairs'
    BCE + dice is averaged per image, then over images. Returns ``mask`` (sum over layers), and the
    last layer's ``bce`` and ``dice``.
    """
    layers, batch = mask_logits.shape[:2]
    size = tuple(mask_logits.shape[-2:])
    targets = []
    for masks in instances:
        small = resize_masks(masks.to(mask_logits.device), size)
        targets.append(small[small.flatten(1).sum(1) > 0].flatten(1))
    total = mask_logits.sum() * 0.0
    last_bce = last_dice = total
    for layer in range(layers):
        bce_sum = dice_sum = mask_logits.sum() * 0.0
        for image in range(batch):
            bce, dice, _ = matched_mask_loss(mask_logits[layer, image].flatten(1), targets[image])
            bce_sum = bce_sum + bce
            dice_sum = dice_sum + dice
        total = total + (bce_sum + dice_sum) / batch
        last_bce, last_dice = bce_sum / batch, dice_sum / batch
    return {"mask": total, "bce": last_bce, "dice": last_dice}


def zutis_loss(outputs: dict[str, torch.Tensor], semantic: torch.Tensor, instances: list[torch.Tensor],
               lambda_mask: float = 1.0, hard_fraction: float = 1.0) -> dict[str, torch.Tensor]:
    """Total = CE + ``lambda_mask`` x mask loss; returns every term (``loss`` is the total).
    ``hard_fraction``: the CE's hard-pixel mining (:func:`semantic_loss`)."""
    ce = semantic_loss(outputs["semantic_logits"], semantic, hard_fraction)
    masks = mask_loss(outputs["mask_logits"], instances)
    return {"loss": ce + lambda_mask * masks["mask"], "ce": ce, **masks}
