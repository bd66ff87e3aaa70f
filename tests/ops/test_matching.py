import itertools

import numpy as np
import torch
import torch.nn.functional as F

from zutiscli.ops.matching import hungarian_match, matched_mask_loss, pairwise_bce, pairwise_dice


def test_pairwise_costs_equal_direct_computation():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 40, generator=gen)
    targets = (torch.rand(3, 40, generator=gen) > 0.5).float()
    bce = pairwise_bce(logits, targets)
    dice = pairwise_dice(logits, targets)
    for q in range(5):
        for n in range(3):
            direct = F.binary_cross_entropy_with_logits(logits[q], targets[n])
            assert torch.allclose(bce[q, n], direct, atol=1e-5)
            p = logits[q].sigmoid()
            expected = 1 - (2 * (p * targets[n]).sum() + 1) / (p.sum() + targets[n].sum() + 1)
            assert torch.allclose(dice[q, n], expected, atol=1e-6)


def test_hungarian_equals_brute_force():
    rng = np.random.default_rng(1)
    for trial in range(30):
        queries = int(rng.integers(1, 6))
        targets = int(rng.integers(1, queries + 1))
        cost = torch.tensor(rng.random((queries, targets)))
        rows, cols = hungarian_match(cost)
        got = cost[rows, cols].sum().item()
        best = min(sum(cost[perm[j], j].item() for j in range(targets))
                   for perm in itertools.permutations(range(queries), targets))
        assert abs(got - best) < 1e-9
        assert list(cols) == list(range(targets)) and len(set(rows.tolist())) == targets


def test_matched_loss_finds_the_right_queries_and_is_zero_for_perfect_masks():
    targets = torch.zeros(2, 16)
    targets[0, :8] = 1
    targets[1, 8:] = 1
    logits = torch.full((4, 16), -20.0)
    logits[2, 8:] = 20.0  # query 2 predicts target 1 perfectly
    logits[3, :8] = 20.0  # query 3 predicts target 0 perfectly
    bce, dice, queries = matched_mask_loss(logits, targets)
    assert list(queries) == [3, 2]
    assert bce.item() < 1e-6 and dice.item() < 1e-6


def test_no_targets_gives_zero_with_gradient():
    logits = torch.randn(3, 10, requires_grad=True)
    bce, dice, queries = matched_mask_loss(logits, torch.zeros(0, 10))
    (bce + dice).backward()
    assert bce.item() == 0 and len(queries) == 0 and logits.grad is not None
