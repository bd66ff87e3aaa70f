"""The ZUTIS model: shapes, stop-gradient, open-vocabulary text, and that it can learn."""

import pytest
import torch

from zutiscli.models.clip import ModelSpec, load_backbone
from zutiscli.models.losses import semantic_loss, zutis_loss
from zutiscli.models.zutis import ZutisConfig, ZutisModel

SMALL = dict(num_queries=8, decoder_layers=2, decoder_heads=2, decoder_ffn=64, mlp_hidden=32)


def tiny_model(checkpoint, **overrides):
    config = ZutisConfig(backbone={"name": "zutis-tiny", "pretrained": str(checkpoint)}, **{**SMALL, **overrides})
    return ZutisModel(load_backbone(ModelSpec("zutis-tiny", str(checkpoint))), config)


def batch(size=32, count=2):
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(count, 3, size, size, generator=gen)
    semantic = torch.zeros(count, size, size, dtype=torch.long)
    instances = []
    for b in range(count):
        masks = torch.zeros(2, size, size, dtype=torch.bool)
        masks[0, 4:14, 4:14] = True
        masks[1, 18 - b:30, 16:28] = True
        semantic[b][masks[0]] = 1
        semantic[b][masks[1]] = 2
        semantic[b, 0, :4] = 255
        instances.append(masks)
    return images, semantic, instances


def test_output_shapes_and_text_cache(tiny_checkpoint):
    model = tiny_model(tiny_checkpoint)
    text = model.text_embeddings(["circle", "star"])
    assert text.shape == (3, 32) and model.text_embeddings(["circle", "star"]) is text
    out = model(torch.randn(2, 3, 48, 32), text)
    assert out["dense"].shape == (2, 6, 4, 32)
    assert torch.allclose(out["dense"].norm(dim=-1), torch.ones(2, 6, 4), atol=1e-5)
    assert out["semantic_logits"].shape == (2, 3, 6, 4)
    assert out["mask_logits"].shape == (2, 2, 8, 12, 8)
    other = model.text_embeddings(["a brand new class"])
    assert other.shape == (2, 32)  # any class names, no retraining


def test_projection_starts_as_clip_projection(tiny_checkpoint):
    model = tiny_model(tiny_checkpoint)
    assert torch.equal(model.projection.detach(), model.backbone.model.visual.proj.detach())
    assert not any(p.requires_grad for p in model.backbone.model.transformer.parameters())  # text tower frozen
    assert all(p.requires_grad for p in model.encoder_parameters())


@pytest.mark.parametrize("stop_gradient", [True, False])
def test_stop_gradient_blocks_decoder_gradients_into_encoder(tiny_checkpoint, stop_gradient):
    model = tiny_model(tiny_checkpoint, stop_gradient=stop_gradient)
    images, semantic, instances = batch()
    out = model(images, model.text_embeddings(["a", "b"]))
    from zutiscli.models.losses import mask_loss

    mask_loss(out["mask_logits"], instances)["mask"].backward()
    encoder_grads = [p.grad for p in model.encoder_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    if stop_gradient:
        assert not encoder_grads
    else:
        assert encoder_grads
    assert model.decoder.query_feat.weight.grad.abs().sum() > 0


def test_semantic_loss_ignores_255_and_averages_per_image():
    logits = torch.zeros(2, 3, 4, 4)
    logits[:, 1] = 5.0
    targets = torch.ones(2, 4, 4, dtype=torch.long)
    low = semantic_loss(logits, targets)
    targets[0, :2] = 255
    targets[0, 2:] = 1
    assert torch.allclose(semantic_loss(logits, targets), low)
    targets[1] = 2
    assert semantic_loss(logits, targets) > low


def test_overfits_a_fixed_batch(tiny_checkpoint):
    # raw cosines (the default) bound the CE away from zero (>= 0.24 for 3 classes); a temperature
    # lets the overfit reach near zero
    torch.manual_seed(0)
    model = tiny_model(tiny_checkpoint, temperature=0.1)
    model.train()
    images, semantic, instances = batch()
    text = model.text_embeddings(["square one", "square two"])
    optimiser = torch.optim.AdamW([
        {"params": model.encoder_parameters(), "lr": 1e-3},
        {"params": model.head_parameters(), "lr": 3e-3},
    ], weight_decay=0.0)
    first = None
    for step in range(150):
        losses = zutis_loss(model(images, text), semantic, instances)
        optimiser.zero_grad()
        losses["loss"].backward()
        optimiser.step()
        if first is None:
            first = {k: v.item() for k, v in losses.items()}
    last = {k: v.item() for k, v in losses.items()}
    # the semantic logits live on the 4x4 patch grid of a 32px image, so boundary pixels keep some
    # CE after bilinear upsampling; the masks (8x8 targets) are fit exactly
    assert last["ce"] < 0.3 * first["ce"]
    assert last["mask"] < 0.05 * first["mask"]
    assert last["dice"] < 0.05


@pytest.mark.parametrize("positional_values", [False, True])
def test_positional_values_let_masks_tell_identical_pixels_apart(tiny_checkpoint, positional_values):
    """Identical tokens give one logit for every pixel of a query, unless positions are added to the values."""
    model = tiny_model(tiny_checkpoint, positional_values=positional_values)
    tokens = torch.ones(1, 4, 4, model.backbone.width)
    logits = model.mask_logits(tokens)[-1, 0]  # (Q, 8, 8)
    spread = (logits.flatten(1).max(1).values - logits.flatten(1).min(1).values).max()
    assert (spread > 1e-3) == positional_values
    if positional_values:
        assert "value_positions.weight" in model.state_dict()
