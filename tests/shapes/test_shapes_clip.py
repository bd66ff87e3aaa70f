"""Tests of shapes-clip: its training function, its evaluation and the weights shipped in the package."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from zutiscli.models.clip import BUILTIN_DIR, ModelSpec, load_backbone
from zutiscli.shapes.clip_eval import (
    evaluate_shapes_clip,
    maskclip_dense_embeddings,
    precision_at_k,
    single_object_pool,
)
from zutiscli.shapes.clip_train import (
    TrainClipConfig,
    caption_batch,
    caption_slots,
    caption_stuff,
    describes,
    learning_rate,
    patch_aligned_loss,
    multi_positive_loss,
    names_objects,
    positive_matrix,
    train_shapes_clip,
)
from zutiscli.shapes.world import COLOURS, DEFAULT_HELD_OUT, SHAPES, ShapeObject

WEIGHTS = BUILTIN_DIR / "shapes-clip.pt"
RECIPE = BUILTIN_DIR / "shapes-clip.json"


def _obj(colour: str, shape: str) -> ShapeObject:
    return ShapeObject(shape, colour, 32.0, 32.0, 30.0, 0.0)


# ---------------------------------------------------------------------------------------------
# Caption parsing, positives, loss.


@pytest.mark.parametrize(
    "caption, slots",
    [
        ("a photo of a red circle", (("red", "circle"),)),
        ("a star shape", ((None, "star"),)),
        ("something blue", (("blue", None),)),
        ("a small white square in the top left corner", (("white", "square"),)),
        ("two blue shapes", (("blue", None), ("blue", None))),
        ("two crosses", ((None, "cross"), (None, "cross"))),
        ("two shapes: a ring and a triangle", ((None, "ring"), (None, "triangle"))),
        ("a photo of a red star next to a green ring", (("red", "star"), ("green", "ring"))),
        ("no shapes, just texture", ()),
        ("an empty scene", ()),
    ],
)
def test_caption_slots(caption, slots) -> None:
    assert caption_slots(caption) == slots


def test_describes_counts_and_pairs_objects() -> None:
    red_circle, blue_star = _obj("red", "circle"), _obj("blue", "star")
    assert describes(caption_slots("a circle"), [red_circle])
    assert not describes(caption_slots("a circle"), [blue_star])
    assert not describes(caption_slots("a circle"), [red_circle, blue_star])
    assert describes(caption_slots("a blue star and a red shape"), [red_circle, blue_star])
    assert not describes(caption_slots("a red star and a blue circle"), [red_circle, blue_star])
    assert describes(caption_slots("nothing"), [])


def test_positive_matrix_matches_describes_and_own_captions() -> None:
    _, captions, objects, stuff = caption_batch(3, 0, 96, size=32, hflip=0.5)
    assert not any(stuff)
    positives = positive_matrix(objects, captions)
    expected = torch.tensor([[describes(caption_slots(c), o) for c in captions] for o in objects])
    assert torch.equal(positives, expected)
    assert positives.diagonal().all()
    assert positives.sum() > 96  # captions repeat and are partial: many off-diagonal positives


@pytest.mark.parametrize(
    "caption, stuff, objects_named",
    [
        ("a red star on sand", {"sand"}, True),
        ("the sky above wooden planks", {"sky", "wood"}, False),
        ("a circle in front of a brick wall", {"brick"}, True),
        ("the sky, water and sand", {"sky", "water", "sand"}, False),
        ("a view of grass", {"grass"}, False),
        ("an empty scene", set(), True),
        ("two blue shapes", set(), True),
    ],
)
def test_caption_stuff(caption, stuff, objects_named) -> None:
    assert caption_stuff(caption) == stuff
    assert names_objects(caption) is objects_named


def test_positives_over_named_stuff() -> None:
    star, ring = _obj("red", "star"), _obj("blue", "ring")
    objects = [[star], [star], [ring], []]
    stuff = [frozenset({"sand", "sky"}), frozenset({"grass"}), frozenset({"sand"}), frozenset({"sky", "sand"})]
    captions = ["a red star on sand", "a star", "sand", "the sky above sand"]
    got = positive_matrix(objects, captions, stuff)
    expected = torch.tensor([
        [True, True, True, True],  # a stuff-only caption says nothing of the objects
        [False, True, False, False],  # no sand under the second star
        [False, False, True, False],  # a ring is no red star; no sky for the last caption
        [False, False, True, True],  # the empty scene over sky and sand: only the stuff captions
    ])
    assert torch.equal(got, expected)
    # Without stuff, a caption naming a material describes no image but its own.
    assert positive_matrix(objects, captions)[:, 2].tolist() == [False, False, True, False]


def test_training_stream_over_named_stuff() -> None:
    images, captions, objects, stuff = caption_batch(7, 1, 64, size=32, stuff=0.5)
    over = [bool(s) for s in stuff]
    assert 10 < sum(over) < 54
    assert all(not caption_stuff(c) for c, o in zip(captions, over) if not o)
    assert sum(bool(caption_stuff(c)) for c in captions) > 10
    for caption, shown in zip(captions, stuff):
        assert caption_stuff(caption) <= shown, (caption, shown)
    again = caption_batch(7, 1, 64, size=32, stuff=0.5)
    assert (again[0] == images).all() and again[1] == captions


def test_training_stream_never_shows_held_out_pairs_and_mirrors_captions() -> None:
    images, captions, objects, _ = caption_batch(5, 2, 64, size=32, hflip=1.0)
    assert images.shape == (64, 32, 32, 3) and images.dtype.name == "uint8"
    assert all((o.colour, o.shape) not in DEFAULT_HELD_OUT for objs in objects for o in objs)
    plain_images, plain_captions, _, _ = caption_batch(5, 2, 64, size=32, hflip=0.0)
    assert (images == plain_images[:, :, ::-1]).all()
    swap = {"left": "right", "right": "left"}
    assert captions == [" ".join(swap.get(w, w) for w in c.split()) for c in plain_captions]


def test_multi_positive_loss_reduces_to_infonce_with_identity_targets() -> None:
    gen = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(6, 8, generator=gen), dim=-1)
    txt = F.normalize(torch.randn(6, 8, generator=gen), dim=-1)
    scale = torch.tensor(2.0)
    logits = scale.exp() * img @ txt.t()
    infonce = 0.5 * (F.cross_entropy(logits, torch.arange(6)) + F.cross_entropy(logits.t(), torch.arange(6)))
    assert torch.allclose(multi_positive_loss(img, txt, scale, torch.eye(6, dtype=torch.bool)), infonce)
    # Several positives: each row (column) is a cross-entropy against its positives, normalised.
    pos = torch.rand(6, 6, generator=gen) < 0.4
    pos.fill_diagonal_(True)
    log_rows, log_cols = logits.log_softmax(dim=1), logits.log_softmax(dim=0)
    i2t = sum(-log_rows[i, pos[i]].mean() for i in range(6)) / 6
    t2i = sum(-log_cols[pos[:, j], j].mean() for j in range(6)) / 6
    assert torch.allclose(multi_positive_loss(img, txt, scale, pos), 0.5 * (i2t + t2i))


def test_learning_rate_warms_up_then_decays() -> None:
    cfg = TrainClipConfig(steps=100, warmup=10, lr=1e-3)
    rates = [learning_rate(cfg, s) for s in range(100)]
    assert rates[0] == pytest.approx(1e-4) and rates[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(rates[9:], rates[10:])) and rates[-1] < 1e-5


# ---------------------------------------------------------------------------------------------
# The training function (a few steps of the tiny test model).


def _tiny_config(**overrides) -> TrainClipConfig:
    base = dict(model="zutis-tiny", image_size=32, seed=4, steps=24, batch_size=24, lr=3e-3, warmup=2,
                threads=1, workers=0, log_every=4, checkpoint_every=0, eval_pool=0)
    return TrainClipConfig(**(base | overrides))


def test_train_shapes_clip_learns_saves_and_is_deterministic(tmp_path) -> None:
    reports = []
    first = train_shapes_clip(_tiny_config(), tmp_path / "a.pt", progress=lambda *a: reports.append(a))
    second = train_shapes_clip(_tiny_config(), tmp_path / "b.pt")
    losses = [loss for _, loss in first["loss_curve"]]
    assert all(map(lambda v: v == v and abs(v) < 1e6, losses))
    assert losses[-1] < losses[0]
    assert [r[0] for r in reports] == [4, 8, 12, 16, 20, 24] and reports[-1][1] == 24
    assert {"loss", "lr", "temperature", "seconds", "seconds_per_step"} <= set(reports[-1][2])
    a = torch.load(tmp_path / "a.pt", weights_only=True)
    b = torch.load(tmp_path / "b.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(v.dtype == torch.float16 for v in a.values() if v.is_floating_point())
    assert first["config"]["seed"] == 4 and first["steps"] == 24 and "torch" in first["versions"]
    json.dumps(first)
    backbone = load_backbone(ModelSpec("zutis-tiny", str(tmp_path / "a.pt")))
    assert backbone.dtype == torch.float32
    other = train_shapes_clip(_tiny_config(seed=5, steps=4), tmp_path / "c.pt")
    c = torch.load(tmp_path / "c.pt", weights_only=True)
    assert not torch.equal(a["visual.conv1.weight"], c["visual.conv1.weight"])
    assert other["steps"] == 4


@pytest.mark.slow
def test_the_report_measures_both_splits(tmp_path) -> None:
    report = train_shapes_clip(_tiny_config(steps=4, eval_pool=36), tmp_path / "m.pt")
    assert report["metrics"]["pool"]["split"] == "train" and report["metrics_shift"]["pool"]["split"] == "shift"
    assert report["metrics"]["pool"]["size"] == 36 and "maskclip_scenes" in report["metrics_shift"]["stuff"]


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path) -> None:
    from zutiscli.shapes.clip_train import checkpoint_path

    train_shapes_clip(_tiny_config(steps=12), tmp_path / "whole.pt")

    def interrupt(step, steps, stats):
        if step == 8:
            raise KeyboardInterrupt

    config = _tiny_config(steps=12, checkpoint_every=4)
    with pytest.raises(KeyboardInterrupt):
        train_shapes_clip(config, tmp_path / "parts.pt", progress=interrupt)
    assert checkpoint_path(tmp_path / "parts.pt").is_file() and not (tmp_path / "parts.pt").exists()
    report = train_shapes_clip(config, tmp_path / "parts.pt")
    assert report["resumed_from_step"] == 8  # the step-8 checkpoint was written before the interruption
    assert not checkpoint_path(tmp_path / "parts.pt").exists()
    a = torch.load(tmp_path / "whole.pt", weights_only=True)
    b = torch.load(tmp_path / "parts.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # another recipe ignores a checkpoint it did not write
    with pytest.raises(KeyboardInterrupt):
        train_shapes_clip(config, tmp_path / "other.pt", progress=interrupt)
    assert train_shapes_clip(_tiny_config(steps=12, checkpoint_every=4, lr=2e-3), tmp_path / "other.pt")[
        "resumed_from_step"] is None


def test_training_under_bf16_autocast_learns_and_records_it(tmp_path) -> None:
    """The autocast path (CUDA's production path) through its CPU twin: bf16 forward, fp32 loss and weights."""
    fp32 = train_shapes_clip(_tiny_config(steps=12), tmp_path / "fp32.pt")
    bf16 = train_shapes_clip(_tiny_config(steps=12, precision="bf16"), tmp_path / "bf16.pt")
    assert (fp32["device"], fp32["autocast"], bf16["autocast"]) == ("cpu", "none", "bf16")
    losses = [loss for _, loss in bf16["loss_curve"]]
    assert losses[-1] < losses[0]
    assert abs(losses[-1] - fp32["loss_curve"][-1][1]) < 0.25 * fp32["loss_curve"][-1][1], "bf16 learns as fp32 does"
    a = torch.load(tmp_path / "fp32.pt", weights_only=True)
    b = torch.load(tmp_path / "bf16.pt", weights_only=True)
    assert not torch.equal(a["visual.conv1.weight"], b["visual.conv1.weight"])
    assert _tiny_config(precision="bf16", device="cpu").recipe_key() == _tiny_config().recipe_key(), \
        "a run resumes on another device or precision"
    with pytest.raises(ValueError, match="precision must be one of"):
        _tiny_config(precision="half").validate()


def test_train_config_is_validated(tmp_path) -> None:
    with pytest.raises(ValueError):
        train_shapes_clip(_tiny_config(steps=0), tmp_path / "x.pt")
    with pytest.raises(ValueError):
        train_shapes_clip(_tiny_config(image_size=64), tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


# ---------------------------------------------------------------------------------------------
# Evaluation helpers.


def test_single_object_pool_is_balanced_and_deterministic() -> None:
    pool = single_object_pool(seed=9, pool_size=72, size=32)
    assert pool.images.shape == (72, 32, 32, 3) and pool.masks.shape == (72, 32, 32)
    counts = torch.bincount(torch.from_numpy(pool.colours * len(SHAPES) + pool.shapes), minlength=36)
    assert (counts == 2).all()
    assert pool.masks.reshape(72, -1).any(axis=1).all()
    again = single_object_pool(seed=9, pool_size=72, size=32)
    assert (again.images == pool.images).all()


def test_precision_at_k() -> None:
    sim = torch.tensor([[0.9, 0.8, 0.1, 0.7], [0.1, 0.2, 0.3, 0.4]])
    rel = torch.tensor([[True, False, False, True], [True, True, True, False]])
    assert torch.allclose(precision_at_k(sim, rel, k=2), torch.tensor([0.5, 0.5]))


def test_maskclip_dense_embeddings_shape(tiny_backbone) -> None:
    x = torch.randn(2, 3, 40, 48)
    out = maskclip_dense_embeddings(tiny_backbone, x)
    assert out.shape == (2, 5, 6, tiny_backbone.embed_dim) and out.dtype == torch.float32
    assert torch.allclose(out.norm(dim=-1), torch.ones(2, 5, 6), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# The shipped weights.


@pytest.fixture(scope="module")
def shipped():
    return load_backbone(ModelSpec("shapes-clip", "builtin"))


@pytest.fixture(scope="module")
def shipped_metrics(shipped):
    return evaluate_shapes_clip(shipped, pool_size=2000, dense=False)


def test_shipped_file_is_small_fp16_with_recipe() -> None:
    assert WEIGHTS.stat().st_size <= 20 * 1024 * 1024
    state = torch.load(WEIGHTS, weights_only=True)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    recipe = json.loads(RECIPE.read_text())
    assert recipe["model"] == "shapes-clip" and recipe["config"]["steps"] == recipe["steps"]
    assert {"torch", "open_clip"} <= set(recipe["versions"])
    assert recipe["train_seconds"] > 0 and "retrieval" in recipe["metrics"]


def test_shipped_shape_retrieval(shipped_metrics) -> None:
    # Querying with each shape name: precision@50 >= 0.95 for every shape.
    by_name = shipped_metrics["retrieval"]["shape"]["names"]["per_query"]
    assert set(by_name) == set(SHAPES)
    assert min(by_name.values()) >= 0.95, by_name
    # With the 85-template ensemble (what `zutis retrieve` uses by default) the shipped weights give
    # 0.94 for "star" (47 of 50) and >= 0.96 for the others.
    ensemble = shipped_metrics["retrieval"]["shape"]["ensemble"]
    assert ensemble["mean"] >= 0.95 and min(ensemble["per_query"].values()) >= 0.93, ensemble["per_query"]


def test_shipped_colour_shape_retrieval_including_held_out_pairs(shipped_metrics) -> None:
    pairs = shipped_metrics["retrieval"]["colour_shape"]["ensemble"]
    assert len(pairs["per_query"]) == len(COLOURS) * len(SHAPES)
    assert pairs["mean"] >= 0.90, pairs
    assert pairs["held_out_mean"] >= 0.90, pairs
    held = {f"{c} {s}": pairs["per_query"][f"{c} {s}"] for c, s in DEFAULT_HELD_OUT}
    assert min(held.values()) >= 0.90, held


def test_shipped_zero_shot_classification(shipped_metrics) -> None:
    assert shipped_metrics["classification"]["shape"]["ensemble"] >= 0.95
    assert shipped_metrics["classification"]["colour"]["ensemble"] >= 0.95


def test_shipped_metrics_match_the_recorded_ones(shipped_metrics) -> None:
    recorded = json.loads(RECIPE.read_text())["metrics"]
    assert recorded["pool"]["size"] == 2000
    for kind in ("shape", "colour_shape"):
        a = recorded["retrieval"][kind]["ensemble"]["mean"]
        b = shipped_metrics["retrieval"][kind]["ensemble"]["mean"]
        assert abs(a - b) < 0.01, (kind, a, b)


def test_shipped_dense_tokens(shipped) -> None:
    pool = single_object_pool(seed=1, pool_size=4, size=64)
    x = shipped.normalise(torch.from_numpy(pool.images).permute(0, 3, 1, 2).float() / 255.0)
    dense = shipped.dense_embeddings(x)
    assert dense.shape == (4, 8, 8, shipped.embed_dim)
    with torch.no_grad():
        pooled = shipped.encode_images(x)
    # Average pooling: the pooled embedding is the (normalised) mean of the unnormalised patch embeddings.
    mean_patch = F.normalize(shipped.project(shipped.dense_tokens(x)).float().mean(dim=(1, 2)), dim=-1)
    assert torch.allclose(pooled, mean_patch, atol=1e-4)


def test_patch_aligned_loss_pools_the_patches_like_each_caption() -> None:
    gen = torch.Generator().manual_seed(1)
    text = F.normalize(torch.randn(3, 8, generator=gen), dim=-1)
    noise = F.normalize(torch.randn(3, 16, 8, generator=gen), dim=-1)
    positives = torch.eye(3, dtype=torch.bool)
    scale = torch.tensor(3.0)
    # Each image holds its caption in one of 16 patches (the rest noise): the loss finds it.
    dense = noise.clone()
    dense[torch.arange(3), torch.tensor([0, 7, 15])] = text
    found = patch_aligned_loss(dense.view(3, 4, 4, 8), text, scale, positives, temperature=0.01)
    missing = patch_aligned_loss(noise, text, scale, positives, temperature=0.01)
    assert found < missing
    # A very low temperature scores a caption by its best patch; a high one by the mean patch.
    sharp = patch_aligned_loss(dense, text, scale, positives, temperature=1e-4)
    best = (torch.einsum("bnd,td->btn", dense, text)).amax(dim=-1)
    assert torch.allclose(sharp, multi_positive_loss_from_scores(best, scale, positives), atol=1e-4)


def multi_positive_loss_from_scores(scores, scale, positives):
    logits = scale.exp() * scores
    return 0.5 * (F.cross_entropy(logits, positives.float().argmax(1)) + F.cross_entropy(logits.t(), positives.float().argmax(0)))


def test_training_with_the_dense_term(tmp_path) -> None:
    report = train_shapes_clip(_tiny_config(dense=1.0, steps=8), tmp_path / "d.pt")
    losses = [loss for _, loss in report["loss_curve"]]
    assert all(v == v for v in losses) and report["config"]["dense"] == 1.0
    plain = train_shapes_clip(_tiny_config(steps=8), tmp_path / "p.pt")
    assert plain["loss_curve"] != report["loss_curve"]


# ---------------------------------------------------------------------------------------------
# shapes-clip-v2: the same architecture fine-tuned with named stuff, varied looks and the
# patch-aligned term (its recipe beside it). The targets of a shapes-clip that MaskCLIP, ReCo and
# ReCLIP++ can start from, on held-out images of the train split.

V2_WEIGHTS = BUILTIN_DIR / "shapes-clip-v2.pt"
V2_RECIPE = BUILTIN_DIR / "shapes-clip-v2.json"


@pytest.fixture(scope="module")
def v2_metrics():
    return evaluate_shapes_clip(load_backbone(ModelSpec("shapes-clip-v2", "builtin")), pool_size=2000)


def test_v2_file_is_small_fp16_with_its_recipe_and_both_splits_metrics() -> None:
    assert V2_WEIGHTS.stat().st_size <= 20 * 1024 * 1024
    state = torch.load(V2_WEIGHTS, weights_only=True)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    assert state.keys() == torch.load(WEIGHTS, weights_only=True).keys()  # the same architecture
    recipe = json.loads(V2_RECIPE.read_text())
    assert recipe["model"] == "shapes-clip-v2" and recipe["config"]["steps"] == recipe["steps"]
    assert recipe["config"]["init"] == "builtin" and len(recipe["init_sha256"]) == 64
    assert recipe["config"]["stuff"] > 0 and recipe["config"]["dense"] > 0
    assert recipe["metrics"]["pool"]["split"] == "train" and recipe["metrics_shift"]["pool"]["split"] == "shift"


def test_v2_starts_from_the_shipped_shapes_clip() -> None:
    import hashlib

    assert hashlib.sha256(WEIGHTS.read_bytes()).hexdigest() == json.loads(V2_RECIPE.read_text())["init_sha256"]


def test_v2_shape_retrieval_and_zero_shot(v2_metrics) -> None:
    by_name = v2_metrics["retrieval"]["shape"]["names"]["per_query"]
    assert min(by_name.values()) >= 0.95, by_name
    assert v2_metrics["retrieval"]["shape"]["ensemble"]["mean"] >= 0.95, v2_metrics["retrieval"]["shape"]["ensemble"]
    assert v2_metrics["retrieval"]["colour_shape"]["ensemble"]["held_out_mean"] >= 0.90
    assert v2_metrics["classification"]["shape"]["ensemble"] >= 0.95
    assert v2_metrics["classification"]["colour"]["ensemble"] >= 0.95


def test_v2_stuff_names_retrieve_their_material(v2_metrics) -> None:
    retrieval = v2_metrics["stuff"]["retrieval"]
    assert retrieval["mean"] >= 0.90, retrieval["per_query"]


def test_v2_maskclip_labels_things_and_stuff_as_a_real_clip_does(v2_metrics) -> None:
    # MaskCLIP over scenes of things on named stuff: mIoU over the twelve classes >= 0.25 (shapes-clip: 0.02).
    scenes = v2_metrics["stuff"]["maskclip_scenes"]
    assert scenes["miou"] >= 0.25, scenes


def test_v2_metrics_match_the_recorded_ones(v2_metrics) -> None:
    recorded = json.loads(V2_RECIPE.read_text())["metrics"]
    for read in (lambda m: m["retrieval"]["shape"]["ensemble"]["mean"], lambda m: m["stuff"]["retrieval"]["mean"],
                 lambda m: m["stuff"]["maskclip_scenes"]["miou"]):
        assert abs(read(recorded) - read(v2_metrics)) < 0.01
