import os
import zipfile

import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU

from zutiscli.errors import ModelError
from zutiscli.models import clip as clip_mod
from zutiscli.models.clip import ModelSpec, ensemble_templates, load_backbone, load_state_dict, resolve_pretrained

TINY = "zutis-tiny"


def _images(size=(32, 32), batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, *size, generator=gen)


def _outputs(backbone):
    with torch.no_grad():
        return (
            backbone.encode_images(_images()),
            backbone.encode_text(["red circle", "star"], templates="names"),
            backbone.dense_tokens(_images((40, 56))),
        )


def test_none_gives_random_init_with_expected_shapes(tiny_backbone):
    img, txt, dense = _outputs(tiny_backbone)
    assert img.shape == (2, 32) and txt.shape == (2, 32) and dense.shape == (2, 5, 7, 32)
    assert img.dtype == torch.float32
    assert torch.allclose(img.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(txt.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert sum(p.numel() for p in tiny_backbone.parameters()) < 500_000


def test_checkpoint_file_reloads_identically(tiny_backbone, tiny_checkpoint):
    reloaded = load_backbone(ModelSpec(TINY, str(tiny_checkpoint)))
    for a, b in zip(_outputs(tiny_backbone), _outputs(reloaded)):
        assert torch.equal(a, b)
    other = load_backbone(ModelSpec(TINY, "none"))
    assert not torch.equal(_outputs(other)[0], _outputs(tiny_backbone)[0])


def test_checkpoint_wrappers_are_unwrapped(tiny_backbone, tmp_path):
    state = tiny_backbone.model.state_dict()
    wrapped = tmp_path / "ddp.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, wrapped)
    reloaded = load_backbone(ModelSpec(TINY, str(wrapped)))
    assert torch.equal(_outputs(reloaded)[0], _outputs(tiny_backbone)[0])


def test_safetensors_checkpoint(tiny_backbone, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_backbone.model.state_dict().items()}, str(path))
    reloaded = load_backbone(ModelSpec(TINY, str(path)))
    assert torch.equal(_outputs(reloaded)[0], _outputs(tiny_backbone)[0])


def test_checkpoint_that_needs_unpickling_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, path)
    with pytest.raises(ModelError, match="weights_only=True"):
        load_state_dict(path)


def test_mismatched_checkpoint_is_one_clear_error(tmp_path, tiny_backbone):
    state = dict(tiny_backbone.model.state_dict())
    state.pop("text_projection")
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "wrong.pt"
    torch.save(state, path)
    with pytest.raises(ModelError) as err:
        load_backbone(ModelSpec(TINY, str(path)))
    message = str(err.value)
    assert str(path) in message and "1 weights missing" in message and "1 unexpected" in message
    assert f"does not fit model {TINY}:" in message


def test_fp16_weights_of_another_architecture_are_one_clear_error(tmp_path, tiny_backbone):
    # fp16 files are what train-clip and the shipped weights are: their positions must be resizable,
    # and tensors of another width must say so, not fail inside torch
    path = tmp_path / "tiny-fp16.pt"
    torch.save({k: v.half() for k, v in tiny_backbone.model.state_dict().items()}, path)
    with pytest.raises(ModelError, match=r"tiny-fp16.pt: does not fit model shapes-clip: size mismatch"):
        load_backbone(ModelSpec("shapes-clip", str(path)))
    reloaded = load_backbone(ModelSpec(TINY, str(path)))
    assert all(v.dtype == torch.float32 for v in reloaded.model.state_dict().values() if v.is_floating_point())


def test_missing_file_and_unknown_names(tmp_path):
    with pytest.raises(ModelError, match="no such checkpoint file"):
        load_backbone(ModelSpec(TINY, str(tmp_path / "absent.pt")))
    with pytest.raises(ModelError, match="not an open_clip model name"):
        load_backbone(ModelSpec("ViT-Q-99", "none"))
    with pytest.raises(ModelError, match="neither a checkpoint file nor a tag.*openai"):
        resolve_pretrained(ModelSpec("ViT-B-16", "not-a-tag"))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ModelError, match="garbage.pt"):
        load_backbone(ModelSpec(TINY, str(garbage)))


def test_uncached_tag_offline_says_pass_a_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as err:
        resolve_pretrained(ModelSpec("ViT-B-16", "openai"), cache_dir=str(tmp_path))
    assert "--pretrained /path/to/file.pt" in str(err.value)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(clip_mod, "_reachable", lambda cfg, timeout=3.0: False)
    with pytest.raises(ModelError, match="no network"):
        resolve_pretrained(ModelSpec("ViT-B-16", "openai"), cache_dir=str(tmp_path))


def _fake_hf_cache(cache: os.PathLike, repo: str, filename: str, source) -> None:
    org, name = repo.split("/")
    base = os.path.join(cache, f"models--{org}--{name}")
    os.makedirs(os.path.join(base, "refs"))
    revision = "0" * 40
    with open(os.path.join(base, "refs", "main"), "w") as handle:
        handle.write(revision)
    snapshot = os.path.join(base, "snapshots", revision)
    os.makedirs(snapshot)
    os.link(source, os.path.join(snapshot, filename))


def test_cached_tag_loads_without_network_and_honours_quick_gelu(tiny_backbone, tiny_checkpoint, tmp_path, monkeypatch):
    from open_clip import pretrained as registry

    monkeypatch.setitem(
        registry._PRETRAINED, TINY,
        {"testtag": registry._pcfg(hf_hub="zutis-test/tiny-clip/", quick_gelu=True, mean=(0.5, 0.5, 0.5))},
    )
    monkeypatch.setattr(clip_mod, "_reachable", lambda cfg, timeout=3.0: pytest.fail("network was tried"))
    _fake_hf_cache(tmp_path, "zutis-test/tiny-clip", "open_clip_pytorch_model.bin", tiny_checkpoint)
    backbone = load_backbone(ModelSpec(TINY, "testtag"), cache_dir=str(tmp_path))
    assert isinstance(backbone.model.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)
    assert backbone.mean == (0.5, 0.5, 0.5)
    # same weights, different activation: outputs differ from the GELU model
    assert not torch.allclose(_outputs(backbone)[0], _outputs(tiny_backbone)[0])
    assert torch.equal(backbone.model.visual.proj, tiny_backbone.model.visual.proj)


def test_plain_names_use_gelu(tiny_backbone):
    assert not isinstance(tiny_backbone.model.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)


def test_openai_torchscript_archive_loads_with_quick_gelu(tmp_path):
    torch.manual_seed(7)
    reference = load_backbone(ModelSpec(TINY, "none"))
    scripted = torch.jit.script(reference.model)
    path = tmp_path / "openai-style.pt"
    torch.jit.save(scripted, str(path))
    assert zipfile.is_zipfile(path)
    state, is_archive = load_state_dict(path)
    assert is_archive
    loaded = load_backbone(ModelSpec(TINY, str(path)))
    assert isinstance(loaded.model.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)
    assert torch.equal(loaded.model.visual.proj, reference.model.visual.proj)


def test_dense_tokens_match_open_clip_at_native_size(tiny_backbone):
    images = _images()
    with torch.no_grad():
        ours = tiny_backbone.dense_tokens(images)
        theirs = tiny_backbone.model.visual.forward_intermediates(
            images, indices=1, normalize_intermediates=True, output_fmt="NLC"
        )["image_intermediates"][-1]
    assert torch.allclose(ours.reshape(2, -1, ours.shape[-1]), theirs, atol=1e-6)


@pytest.mark.parametrize("size, grid", [((32, 32), (4, 4)), ((64, 48), (8, 6)), ((20, 100), (2, 12))])
def test_dense_tokens_at_any_size(tiny_backbone, size, grid):
    with torch.no_grad():
        tokens = tiny_backbone.dense_tokens(_images(size, batch=1))
        embeddings = tiny_backbone.dense_embeddings(_images(size, batch=1))
    assert tokens.shape == (1, *grid, tiny_backbone.width)
    assert embeddings.shape == (1, *grid, tiny_backbone.embed_dim)
    assert torch.allclose(embeddings.norm(dim=-1), torch.ones(1, *grid), atol=1e-5)


def test_interpolated_positions_are_smooth_resamplings(tiny_backbone):
    base = tiny_backbone.model.visual.grid_size
    assert tiny_backbone.positional_embedding(base) is tiny_backbone.model.visual.positional_embedding
    doubled = tiny_backbone.positional_embedding((base[0] * 2, base[1] * 2))
    assert doubled.shape == (1 + 4 * base[0] * base[1], tiny_backbone.width)
    original = tiny_backbone.model.visual.positional_embedding
    assert torch.equal(doubled[0], original[0])
    # bicubic downsampling of the upsampled grid returns close to the original grid
    grid = doubled[1:].reshape(1, base[0] * 2, base[1] * 2, -1).permute(0, 3, 1, 2)
    back = F.interpolate(grid, size=tuple(base), mode="bilinear", align_corners=False, antialias=True)
    back = back.permute(0, 2, 3, 1).reshape(-1, original.shape[-1])
    rel = (back - original[1:]).norm() / original[1:].norm()
    assert rel < 0.5


def test_position_cache_follows_weight_updates(tiny_checkpoint):
    backbone = load_backbone(ModelSpec(TINY, str(tiny_checkpoint)))
    images = _images((48, 48), batch=1)
    with torch.no_grad():
        first = backbone.dense_tokens(images)
        assert torch.equal(first, backbone.dense_tokens(images))
        backbone.model.visual.positional_embedding.add_(0.5)
        assert not torch.allclose(first, backbone.dense_tokens(images))


def test_gradients_reach_positional_embedding_when_training(tiny_checkpoint):
    backbone = load_backbone(ModelSpec(TINY, str(tiny_checkpoint)))
    pos = backbone.model.visual.positional_embedding
    pos.requires_grad_(True)
    backbone.dense_tokens(_images((48, 40), batch=1)).sum().backward()
    assert pos.grad is not None and pos.grad.abs().sum() > 0


def test_template_ensemble():
    templates = ensemble_templates()
    assert len(templates) == 85 and len(set(templates)) == 85
    assert all(t.count("{}") == 1 for t in templates)
    assert "a photo of a {}." in templates and "there is a {} in the scene." in templates


def test_ensemble_is_mean_of_normalised_prompts(tiny_backbone):
    names = ["red circle", "blue star", "x{}y"]
    with torch.no_grad():
        got = tiny_backbone.encode_text(names, batch_size=37)
        for i, name in enumerate(names):
            prompts = [t.replace("{}", name) for t in ensemble_templates()]
            per = F.normalize(tiny_backbone.model.encode_text(tiny_backbone.tokenizer(prompts)).float(), dim=-1)
            assert torch.allclose(got[i], F.normalize(per.mean(0), dim=-1), atol=1e-5)
        bare = tiny_backbone.encode_text(names, templates="names")
        direct = F.normalize(tiny_backbone.model.encode_text(tiny_backbone.tokenizer(names)).float(), dim=-1)
        assert torch.allclose(bare, direct, atol=1e-6)
        custom = tiny_backbone.encode_text(["cat"], templates=["a {}", "the {}"])
        assert custom.shape == (1, 32)
    assert not torch.allclose(got, bare)


def test_bf16_weights_run_and_agree(tiny_checkpoint):
    fp32 = load_backbone(ModelSpec(TINY, str(tiny_checkpoint)))
    bf16 = load_backbone(ModelSpec(TINY, str(tiny_checkpoint)), dtype=torch.bfloat16)
    assert bf16.dtype is torch.bfloat16
    with torch.no_grad():
        a = fp32.encode_images(_images())
        b = bf16.encode_images(_images())
    assert b.dtype == torch.float32
    assert F.cosine_similarity(a, b).min() > 0.97


def test_model_spec_describes_files_with_fingerprint(tiny_checkpoint):
    described = ModelSpec(TINY, str(tiny_checkpoint)).describe()
    assert described["weights_fingerprint"].startswith("blake2b")
    assert ModelSpec("ViT-B-16", "openai").describe() == {"name": "ViT-B-16", "pretrained": "openai"}


def test_builtin_without_shipped_weights_is_clear():
    with pytest.raises(ModelError, match="ships no weights for zutis-tiny"):
        load_backbone(ModelSpec(TINY, "builtin"))


def test_last_block_features_agree_with_the_model(tiny_backbone):
    images = _images((48, 40), batch=2)
    with torch.no_grad():
        feats = tiny_backbone.last_block_features(images)
        tokens = tiny_backbone.dense_tokens(images)
        block = tiny_backbone.model.visual.transformer.resblocks[-1]
        # recompute the last block's attention with torch's own module and compare the [CLS] row
        x, _ = tiny_backbone._embed(images)
        for earlier in tiny_backbone.model.visual.transformer.resblocks[:-1]:
            x = earlier(x)
        y = block.ln_1(x)
        _, weights = block.attn(y, y, y, need_weights=True, average_attn_weights=False)
    assert feats.grid == (6, 5)
    assert torch.allclose(feats.tokens, tokens, atol=1e-6)
    assert feats.keys.shape == feats.queries.shape == feats.values.shape == (2, 6, 5, tiny_backbone.width)
    heads = block.attn.num_heads
    assert feats.cls_attention.shape == (2, heads, 6, 5)
    assert torch.allclose(feats.cls_attention.reshape(2, heads, -1), weights[:, :, 0, 1:], atol=1e-5)
    assert (feats.cls_attention.sum(dim=(-1, -2)) < 1).all()


def test_maskclip_embeddings_are_the_value_path(tiny_backbone):
    images = _images((40, 48), batch=1)
    with torch.no_grad():
        got = tiny_backbone.maskclip_embeddings(images)
        x, _ = tiny_backbone._embed(images)
        for block in tiny_backbone.model.visual.transformer.resblocks[:-1]:
            x = block(x)
        last = tiny_backbone.model.visual.transformer.resblocks[-1]
        width = tiny_backbone.width
        v = F.linear(last.ln_1(x), last.attn.in_proj_weight[2 * width:], last.attn.in_proj_bias[2 * width:])
        expected = tiny_backbone.model.visual.ln_post(last.attn.out_proj(v))[:, 1:] @ tiny_backbone.model.visual.proj
        expected = F.normalize(expected, dim=-1).reshape(1, 5, 6, -1)
    assert got.shape == (1, 5, 6, tiny_backbone.embed_dim)
    assert torch.allclose(got, expected, atol=1e-5)
    # ... and the same from the values of the last block's features, with no second pass
    with torch.no_grad():
        again = tiny_backbone.maskclip_from_values(tiny_backbone.last_block_features(images).values)
    assert torch.allclose(again, got, atol=1e-5)


def test_encode_with_dense_pools_like_encode_image_and_trains(tiny_backbone):
    images = _images((32, 32), batch=2)
    with torch.no_grad():
        pooled, dense = tiny_backbone.encode_with_dense(images)
        assert torch.allclose(F.normalize(pooled, dim=-1), tiny_backbone.encode_images(images), atol=1e-5)
        assert torch.allclose(F.normalize(dense, dim=-1), tiny_backbone.maskclip_embeddings(images), atol=1e-6)
    weight = tiny_backbone.model.visual.transformer.resblocks[-1].attn.in_proj_weight
    weight.requires_grad_(True)
    try:
        tiny_backbone.encode_with_dense(images)[1].sum().backward()
        width = tiny_backbone.width
        assert weight.grad[2 * width:].abs().sum() > 0  # the value projection learns from the dense path
        assert weight.grad[:2 * width].abs().sum() == 0  # queries and keys do not enter it
    finally:
        weight.requires_grad_(False)
        weight.grad = None


def test_zutis_cache_dir_is_passed_to_open_clip(monkeypatch, tmp_path):
    """With ZUTIS_CACHE_DIR set, cache lookups and open_clip's model loader use $ZUTIS_CACHE_DIR/models."""
    import open_clip

    import zutiscli.models.clip as clip

    seen = {}
    real_create = open_clip.create_model

    def create_model(name, *args, cache_dir=None, **kwargs):
        seen["create"] = cache_dir
        return real_create(name, *args, cache_dir=cache_dir, **kwargs)

    def lookup(cfg, cache_dir):
        seen["lookup"] = cache_dir
        return None

    def download(cfg, cache_dir=None):
        seen["download"] = cache_dir
        raise OSError("no network in tests")

    monkeypatch.setenv("ZUTIS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(open_clip, "create_model", create_model)
    monkeypatch.setattr(open_clip, "download_pretrained", download)
    monkeypatch.setattr(clip, "_hf_cache_lookup", lookup)
    monkeypatch.setattr(clip, "_url_cache_lookup", lookup)
    monkeypatch.setattr(clip, "_reachable", lambda cfg: True)
    expected = str(tmp_path / "cache" / "models")
    load_backbone(ModelSpec(TINY, "none"))
    assert seen["create"] == expected
    with pytest.raises(ModelError, match="could not download"):
        resolve_pretrained(ModelSpec("ViT-B-16", "openai"))
    assert seen["lookup"] == expected and seen["download"] == expected
    monkeypatch.delenv("ZUTIS_CACHE_DIR")
    assert clip.model_cache_dir() is None and clip.model_cache_dir("/x") == "/x"


def test_cls_token_is_what_clip_projects_into_its_image_embedding(tiny_backbone):
    images = _images((32, 32), batch=2)
    with torch.no_grad():
        cls = tiny_backbone.cls_tokens(images)
        pooled = tiny_backbone.model.encode_image(images)
    assert cls.shape == (2, tiny_backbone.width) and cls.dtype == torch.float32
    assert torch.allclose(tiny_backbone.project(cls), pooled, atol=1e-6)
    assert tiny_backbone.cls_tokens(_images((48, 40), batch=1)).shape == (1, tiny_backbone.width)  # any size


def test_cls_token_of_a_tower_that_averages_its_patches_is_refused():
    averaging = load_backbone(ModelSpec("shapes-clip", "none"))
    with pytest.raises(ModelError, match="pools its patch tokens \\(avg\\).*--features clip"):
        averaging.cls_tokens(_images((64, 64), batch=1))
