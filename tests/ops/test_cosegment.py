"""ReCo's co-segmentation as pure functions: blockwise support equals the full adjacency's, seeds
find what the archive images share, and the gates weigh the matches."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zutiscli.ops.cosegment import (
    context_weights,
    patch_support,
    reference_embedding,
    reference_probability,
    seed_patches,
    text_gate,
)


def _features(k: int, n: int, c: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(k, n, c, generator=torch.Generator().manual_seed(seed)), dim=-1)


def _full_support(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The paper's four steps on the whole adjacency, written plainly."""
    k, n, c = features.shape
    adjacency = features.reshape(k * n, c) @ features.reshape(k * n, c).t() * weights.reshape(1, k * n)
    maxima = torch.stack([adjacency[:, j * n:(j + 1) * n].max(dim=1).values for j in range(k)], dim=1)
    return maxima.mean(dim=1).view(k, n)


@pytest.mark.parametrize("block_elements", [1, 60, 7 * 60, 10 ** 6])  # rows of 60 similarities: 1, 1, 7, all rows
def test_blockwise_support_equals_the_full_adjacency(block_elements) -> None:
    features = _features(5, 12, 8)
    weights = torch.rand(5, 12, generator=torch.Generator().manual_seed(1))
    got = patch_support(features, weights, block_elements=block_elements)
    assert torch.allclose(got, _full_support(features, weights), atol=1e-6)
    assert torch.allclose(patch_support(features), _full_support(features, torch.ones(5, 12)), atol=1e-6)


def test_seeds_find_what_every_image_shares() -> None:
    k, n, c = 8, 30, 16
    features = _features(k, n, c, seed=2)
    common = F.normalize(torch.randn(c, generator=torch.Generator().manual_seed(3)), dim=0)
    planted = torch.randint(0, n, (k,), generator=torch.Generator().manual_seed(4))
    noise = 0.05 * torch.randn(k, c, generator=torch.Generator().manual_seed(5))
    features[torch.arange(k), planted] = F.normalize(common + noise, dim=-1)
    seeds = seed_patches(patch_support(features))
    assert seeds.tolist() == planted.tolist()
    reference = reference_embedding(features, seeds)
    assert reference.norm().item() == pytest.approx(1.0, abs=1e-6) and float(reference @ common) > 0.99
    probability = reference_probability(features, reference[None])[..., 0]
    assert probability.shape == (k, n)
    assert (probability[torch.arange(k), planted] > 0.72).all() and probability.mean() < 0.55


def test_a_zero_gate_hides_a_patch_as_a_match() -> None:
    # the shared patch, gated out (as the language gate or context elimination would), supports nothing
    k, n, c = 6, 20, 16
    features = _features(k, n, c, seed=6)
    common = F.normalize(torch.randn(c, generator=torch.Generator().manual_seed(7)), dim=0)
    features[:, 0] = common
    open_gate = patch_support(features)
    assert seed_patches(open_gate).tolist() == [0] * k
    weights = torch.ones(k, n)
    weights[:, 0] = 0.0
    closed = patch_support(features, weights)
    assert (closed[:, 0] < open_gate[:, 0] - 0.5).all()
    assert 0 not in seed_patches(closed).tolist()


def test_context_weights_multiply_one_minus_each_context_probability() -> None:
    features = _features(2, 3, 4, seed=8)
    context = F.normalize(torch.randn(2, 4, generator=torch.Generator().manual_seed(9)), dim=-1)
    expected = (1 - torch.sigmoid(features @ context[0])) * (1 - torch.sigmoid(features @ context[1]))
    assert torch.allclose(context_weights(features, context), expected)
    assert torch.equal(context_weights(features, context[:0]), torch.ones(2, 3))


def test_text_gate_is_a_sharp_sigmoid_of_the_cosine() -> None:
    dense = torch.tensor([[3.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    text = torch.tensor([2.0, 0.0])
    gate = text_gate(dense, text)
    assert torch.allclose(gate, torch.sigmoid(10 * torch.tensor([1.0, 0.0, 2 ** -0.5])))
    assert text_gate(dense, torch.stack([text, text.flip(0)])).shape == (3, 2)


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\(k, n, C\)"):
        patch_support(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="weights"):
        patch_support(_features(2, 3, 4), torch.ones(3, 2))
    with pytest.raises(ValueError, match="seeds"):
        reference_embedding(_features(2, 3, 4), torch.zeros(3, dtype=torch.long))
