"""ReCLIP++'s rectifier: the Reference prompt through CLIP's text encoder, the bias logits, the
rectified logits (zero bias = MaskCLIP), hard Gumbel-Softmax masks with gradients, the contrastive loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zutiscli.errors import ModelError
from zutiscli.models.clip import ModelSpec, load_backbone
from zutiscli.models.reclip import (ReferenceEncoder, Rectifier, RectifierConfig, context_room, hypothesis_loss,
                                    name_tokens)


@pytest.fixture(scope="module")
def shapes_clip():
    return load_backbone(ModelSpec("shapes-clip", "builtin"))


def config(**overrides):
    return RectifierConfig(backbone={"name": "shapes-clip", "pretrained": "builtin"}, context_tokens=4, **overrides)


def test_reference_prompt_of_real_words_is_clips_text_embedding(shapes_clip):
    """With the context set to the word embeddings of "a photo of", the Reference feature of a class
    is exactly CLIP's text embedding of "a photo of <class>": the prompt is placed and read as CLIP
    places and reads a tokenised text (start token, words, end token, positions, causal mask)."""
    clip, tokenizer = shapes_clip.model, shapes_clip.tokenizer
    names = ["background", "circle", "red star"]
    encoder = ReferenceEncoder(clip, tokenizer, names, 3)
    words = tokenizer(["a photo of"])[0, 1:4]
    with torch.no_grad():
        encoder.context.copy_(clip.token_embedding(words))
        ours = encoder()
        theirs = clip.encode_text(tokenizer([f"a photo of {name}" for name in names]))
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_context_room_is_what_the_text_context_leaves(shapes_clip):
    tokens = name_tokens(shapes_clip.tokenizer, ["circle", "red star"])
    assert [len(row) for row in tokens] == [2, 3]  # the name's tokens and the end token
    assert context_room(16, tokens) == 12  # 16 - start - "red star" - end
    with pytest.raises(ModelError, match="at most 12"):
        ReferenceEncoder(shapes_clip.model, shapes_clip.tokenizer, ["circle", "red star"], 13)


def test_zero_bias_gives_maskclips_logits(shapes_clip):
    """With the positional projection zeroed (so M_b = 0), the rectified logits are MaskCLIP's:
    its dense features against the classes' Query embeddings."""
    model = Rectifier(shapes_clip, config(decoder=False), ["circle", "square", "star"])
    with torch.no_grad():
        model.position.weight.zero_()
        model.position.bias.zero_()
    images = shapes_clip.normalise(torch.rand(2, 3, 64, 80))
    with torch.no_grad():
        out = model(images)
        dense = shapes_clip.maskclip_embeddings(images)
        text = shapes_clip.encode_text(["background", "circle", "square", "star"], templates="ensemble")
    maskclip = torch.einsum("bhwd,cd->bchw", dense, text)
    assert torch.count_nonzero(out["bias"]) == 0
    assert torch.allclose(out["rectified"], maskclip, atol=1e-6)
    assert torch.equal(out["output"], out["rectified"])  # no decoder: M_o = M
    assert out["rectified"].shape == (2, 4, 8, 10)


def test_bias_is_subtracted_added_or_absent(shapes_clip):
    images = shapes_clip.normalise(torch.rand(1, 3, 64, 64))
    torch.manual_seed(0)
    subtract = Rectifier(shapes_clip, config(decoder=False), ["circle", "square"])
    add = Rectifier(shapes_clip, config(decoder=False, bias="add"), ["circle", "square"])
    add.load_state_dict(subtract.state_dict())
    none = Rectifier(shapes_clip, config(decoder=False, bias="none"), ["circle", "square"])
    with torch.no_grad():
        a, b, c = subtract(images), add(images), none(images)
    assert torch.count_nonzero(a["bias"]) > 0
    assert torch.allclose(a["rectified"], a["query"] - a["bias"]) and torch.allclose(b["rectified"], b["query"] + a["bias"])
    assert "bias" not in c and torch.equal(c["rectified"], c["query"])
    assert [n for n, _ in none.named_parameters()] == []  # nothing to learn without bias or decoder


def test_space_free_bias_is_the_same_at_every_patch(shapes_clip):
    model = Rectifier(shapes_clip, config(position=False), ["circle", "square"])
    with torch.no_grad():
        model.constant.normal_()
        bias = model.bias_logits((5, 7))
    assert torch.allclose(bias, bias[:, :1, :1].expand_as(bias))
    positional = Rectifier(shapes_clip, config(), ["circle", "square"])
    bias = positional.bias_logits((5, 7)).detach()
    assert not torch.allclose(bias, bias[:, :1, :1].expand_as(bias))  # the positional term varies over the grid


def test_hard_gumbel_masks_are_one_hot_and_pass_gradients(shapes_clip):
    """Hard masks are exactly one-hot over the classes at every patch, and the loss built on them
    reaches every learned part: Reference context, positional projection, decoder (their .grad)."""
    model = Rectifier(shapes_clip, config(), ["circle", "square", "star"])
    model.train()
    out = model(shapes_clip.normalise(torch.rand(2, 3, 64, 64)))
    masks = model.hard_masks(out["output"])
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(masks.sum(1), torch.ones(2, 8, 8))
    loss = hypothesis_loss(out["features"], masks, model.query, [[1, 2], [3]], model.scale)
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_hypothesis_loss_by_hand():
    """Two patches, one image hypothesising class 1: the mask-pooled feature (mean over every patch)
    scored against each Query feature, cross-entropy towards class 1."""
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).T.reshape(1, 2, 1, 2)  # (B, D, h, w): patch 0 = e0, 1 = e1
    masks = torch.tensor([[[[0.0, 1.0]], [[1.0, 0.0]]]])  # (B, C, h, w): patch 0 -> class 1, patch 1 -> class 0
    query = torch.eye(2)
    loss = hypothesis_loss(features, masks, query, [[1]], scale=10.0)
    pooled = torch.tensor([0.5, 0.0])  # e0 over two patches
    assert loss == pytest.approx(float(F.cross_entropy(10.0 * pooled[None] @ query.T, torch.tensor([1]))))
    assert hypothesis_loss(features, masks, query, [[]], scale=10.0) is None


def test_a_text_tower_without_clips_transformer_is_refused():
    class Other(torch.nn.Module):
        pass

    with pytest.raises(ModelError, match="text transformer"):
        ReferenceEncoder(Other(), None, ["a", "b"], 2)


def test_bias_logits_are_kept_while_not_learning_and_follow_changed_weights(shapes_clip):
    """Without gradients the bias is computed once per grid (not CLIP's text encoder per batch), and
    a change of its weights (an optimiser step, a loaded state) is seen; while learning it carries
    gradients."""
    model = Rectifier(shapes_clip, config(), ["circle", "square"])
    with torch.no_grad():
        first = model.bias_logits((5, 7))
        assert model.bias_logits((5, 7)) is first and torch.equal(first, model._bias_logits((5, 7)))
        assert model.bias_logits((4, 4)).shape == (3, 4, 4)
        model.position.bias.add_(1.0)
        changed = model.bias_logits((5, 7))
        assert not torch.equal(changed, first) and torch.equal(changed, model._bias_logits((5, 7)))
        model.reference.context.mul_(2.0)
        assert torch.equal(model.bias_logits((5, 7)), model._bias_logits((5, 7)))
    assert model.bias_logits((5, 7)).requires_grad
