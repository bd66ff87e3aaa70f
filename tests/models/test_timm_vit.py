import pytest
import torch

from zutiscli.errors import ModelError
from zutiscli.models.timm_vit import is_timm_name, load_timm_vit

SMALL = dict(depth=2, embed_dim=48, num_heads=3)


@pytest.fixture(scope="module")
def dino_file(tmp_path_factory):
    torch.manual_seed(3)
    backbone = load_timm_vit("dino-vits8", "none", **SMALL)
    path = tmp_path_factory.mktemp("dino") / "dino_small.pth"
    torch.save(backbone.model.state_dict(), path)
    return path, backbone


def _images(size, batch=2):
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(0))


def test_aliases():
    assert is_timm_name("dino-vits8") and is_timm_name("timm:vit_base_patch8_224")
    assert not is_timm_name("ViT-B-16")


def test_checkpoint_reload_identical_and_dino_wrappers(dino_file, tmp_path):
    path, reference = dino_file
    loaded = load_timm_vit("dino-vits8", str(path), **SMALL)
    images = _images((32, 40))
    with torch.no_grad():
        assert torch.equal(loaded.dense_tokens(images), reference.dense_tokens(images))
    wrapped = tmp_path / "checkpoint.pth"
    state = torch.load(path, weights_only=True)
    torch.save({"teacher": {f"backbone.{k}": v for k, v in state.items()},
                "student": {f"backbone.{k}": v * 0 for k, v in state.items()}}, wrapped)
    flat = {f"teacher.{k}": v for k, v in torch.load(wrapped, weights_only=True)["teacher"].items()}
    torch.save(flat, wrapped)
    teacher = load_timm_vit("dino-vits8", str(wrapped), **SMALL)
    with torch.no_grad():
        assert torch.equal(teacher.dense_tokens(images), reference.dense_tokens(images))


def test_dense_tokens_match_timm_at_native_size(dino_file):
    _, backbone = dino_file
    images = _images((224, 224), batch=1)
    with torch.no_grad():
        ours = backbone.dense_tokens(images)
        theirs = backbone.model.forward_features(images)[:, 1:]
    assert ours.shape == (1, 28, 28, 48)
    assert torch.allclose(ours.reshape(1, -1, 48), theirs, atol=1e-5)


def test_last_block_attention_matches_timm(dino_file):
    _, backbone = dino_file
    images = _images((40, 56))
    attention = backbone.model.blocks[-1].attn
    captured = {}
    attention.fused_attn = False
    handle = attention.attn_drop.register_forward_hook(lambda m, i, o: captured.setdefault("w", i[0]))
    try:
        with torch.no_grad():
            feats = backbone.last_block_features(images)
            backbone.model.forward_features(images)
    finally:
        handle.remove()
        attention.fused_attn = True
    assert feats.grid == (5, 7) and feats.keys.shape == (2, 5, 7, 48)
    assert torch.allclose(feats.cls_attention.reshape(2, 3, -1), captured["w"][:, :, 0, 1:], atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(feats.tokens, backbone.dense_tokens(images), atol=1e-5)


def test_errors(tmp_path, dino_file):
    with pytest.raises(ModelError, match="no such checkpoint file"):
        load_timm_vit("dino-vits8", str(tmp_path / "missing.pth"), **SMALL)
    with pytest.raises(ModelError, match="timm has no model"):
        load_timm_vit("timm:not_a_model")
    path, _ = dino_file
    with pytest.raises(ModelError, match="does not fit"):
        load_timm_vit("dino-vits8", str(path), depth=3, embed_dim=48, num_heads=3)


def test_cls_token_is_timm_s_after_the_final_norm(dino_file):
    _, backbone = dino_file
    images = _images((32, 40))
    with torch.no_grad():
        cls = backbone.cls_tokens(images)
        expected = backbone.model.forward_features(images)[:, 0]
    assert cls.shape == (2, 48) and cls.dtype == torch.float32
    assert torch.allclose(cls, expected, atol=1e-6)
