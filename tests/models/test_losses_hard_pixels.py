"""MaskDistill's hard-pixel mining in the semantic loss."""

import math

import pytest
import torch
import torch.nn.functional as F

from zutiscli.models.losses import IGNORE_INDEX, semantic_loss


def _batch():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 8, 8, generator=generator, requires_grad=True)
    targets = torch.randint(0, 4, (2, 8, 8), generator=generator)
    targets[0, :2] = IGNORE_INDEX  # ignored pixels are never mined
    return logits, targets


def test_all_pixels_is_the_plain_loss():
    logits, targets = _batch()
    assert torch.equal(semantic_loss(logits, targets, 1.0), semantic_loss(logits, targets))


def test_the_hardest_fraction_of_the_valid_pixels_is_averaged():
    logits, targets = _batch()
    per_pixel = F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="none")
    valid = per_pixel[targets != IGNORE_INDEX]
    count = math.ceil(0.2 * valid.numel())
    expected = valid.sort(descending=True).values[:count].mean()
    assert semantic_loss(logits, targets, 0.2).item() == pytest.approx(expected.item(), rel=1e-6)
    assert semantic_loss(logits, targets, 0.2) > semantic_loss(logits, targets)


def test_only_the_mined_pixels_get_gradients():
    logits, targets = _batch()
    semantic_loss(logits, targets, 0.2).backward()
    touched = (logits.grad.abs().sum(1) > 0)
    valid = (targets != IGNORE_INDEX)
    assert touched.sum() == math.ceil(0.2 * valid.sum()) and not (touched & ~valid).any()


def test_no_valid_pixel_gives_zero():
    logits, targets = _batch()
    targets[:] = IGNORE_INDEX
    assert semantic_loss(logits, targets, 0.2).item() == 0.0
