"""The crop classifier's adapter: the fitted map, the classifier with it, its checkpoint form."""

import pytest
import torch
import torch.nn.functional as F

from zutiscli.artefacts.checkpoint import load_checkpoint, save_checkpoint
from zutiscli.data.classes import ClassQuery
from zutiscli.errors import ArtefactError
from zutiscli.models.crop_classifier import CropAdapter, CropClassifier, fit_crop_adapter
from zutiscli.ops.embedding_map import apply_embedding_map, fit_embedding_map


def distorted_problem(seed=0, n=120, k=4, d=16):
    """Embeddings near their class's text vector, then mixed by a fixed linear distortion that makes
    the zero-shot rule misname many of them."""
    g = torch.Generator().manual_seed(seed)
    text = F.normalize(torch.randn(k, d, generator=g), dim=-1)
    labels = torch.arange(n) % k
    mix = torch.eye(d) + 2.0 * torch.randn(d, d, generator=g) / d**0.5  # drawn first: the same for any n
    clean = text[labels] + 0.3 * torch.randn(n, d, generator=g)
    return clean @ mix, labels, text


def accuracy(embeddings, labels, text):
    return float(((embeddings @ text.T).argmax(1) == labels).float().mean())


def test_fitted_map_names_the_examples_better_and_is_deterministic():
    x, y, text = distorted_problem()
    before = accuracy(F.normalize(x, dim=-1), y, text)
    weight = fit_embedding_map(x, y, text, scale=50.0)
    assert weight.shape == (16, 16) and weight.dtype == torch.float32
    assert before < 0.8 and accuracy(apply_embedding_map(x, weight), y, text) > 0.95
    # and on fresh examples of the same distortion, not only the fitted ones
    x2, y2, _ = distorted_problem(seed=0, n=240)
    assert accuracy(apply_embedding_map(x2[120:], weight), y2[120:], text) > \
        accuracy(F.normalize(x2[120:], dim=-1), y2[120:], text)
    assert torch.equal(weight, fit_embedding_map(x, y, text, scale=50.0))


def test_decay_holds_the_map_at_the_identity():
    x, y, text = distorted_problem()
    loose = fit_embedding_map(x, y, text, scale=50.0, decay=0.0)
    tight = fit_embedding_map(x, y, text, scale=50.0, decay=100.0)
    assert (tight - torch.eye(16)).norm() < 0.1 * (loose - torch.eye(16)).norm()
    assert torch.equal(fit_embedding_map(x, y, text, scale=50.0, steps=0), torch.eye(16))


@pytest.mark.parametrize("args", [
    (torch.zeros(3, 8), torch.zeros(3, dtype=torch.long), torch.zeros(2, 4)),   # widths differ
    (torch.zeros(3, 4), torch.zeros(2, dtype=torch.long), torch.zeros(2, 4)),   # one label short
    (torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), torch.zeros(2, 4)),   # nothing to fit
    (torch.zeros(3, 4), torch.tensor([0, 1, 2]), torch.zeros(2, 4)),            # label 2 of 2 classes
])
def test_bad_inputs_are_refused(args):
    with pytest.raises(ValueError):
        fit_embedding_map(*args, scale=10.0)


def test_classifier_with_an_identity_adapter_is_the_classifier_without(tiny_backbone):
    classes = [ClassQuery(n, n) for n in ("circle", "square", "star")]
    image = (torch.rand(40, 40, 3, generator=torch.Generator().manual_seed(3)) * 255).to(torch.uint8).numpy()
    masks = torch.zeros(2, 40, 40, dtype=torch.bool)
    masks[0, 5:20, 5:20] = True
    masks[1, 22:38, 10:30] = True
    plain = CropClassifier(tiny_backbone, classes)(image, masks.numpy())
    dim = tiny_backbone.embed_dim
    same = CropClassifier(tiny_backbone, classes, adapter=torch.eye(dim))(image, masks.numpy())
    assert plain.shape == (2, 3) and torch.allclose(plain.sum(1), torch.ones(2))
    assert torch.allclose(plain, same, atol=1e-6)
    flipped = CropClassifier(tiny_backbone, classes, adapter=-torch.eye(dim))(image, masks.numpy())
    assert not torch.allclose(plain, flipped, atol=1e-3)  # the map is applied


def two_object_scenes(count, generator):
    """``count`` random 32 x 32 scenes, each with a square of class 0 and a larger one of class 1."""
    scenes = []
    for _ in range(count):
        masks = torch.zeros(2, 32, 32, dtype=torch.bool)
        masks[0, 2:12, 2:12] = True
        masks[1, 15:30, 15:30] = True
        scenes.append((torch.rand(3, 32, 32, generator=generator), masks, torch.tensor([0, 1])))
    return scenes


def test_fit_crop_adapter_on_scenes_records_its_clip_and_data(tiny_backbone):
    g = torch.Generator().manual_seed(0)
    scenes = two_object_scenes(3, g)
    scenes[2][1][1, 15, 15] = False  # nothing changes the count
    scenes.append((torch.rand(3, 32, 32, generator=g), torch.zeros(1, 32, 32, dtype=torch.bool),
                   torch.tensor([1])))  # an empty mask is left out
    adapter = fit_crop_adapter(tiny_backbone, scenes, ["circle", "square"])
    assert adapter.scenes == 4 and adapter.objects == 6 and adapter.classes == ("circle", "square")
    assert (adapter.model, adapter.pretrained) == (tiny_backbone.spec.name, tiny_backbone.spec.pretrained)
    assert adapter.weight.shape == (tiny_backbone.embed_dim,) * 2
    assert 0 <= adapter.accuracy_before <= 1 and adapter.accuracy_after >= adapter.accuracy_before
    assert adapter.fits(tiny_backbone.spec.name, tiny_backbone.spec.pretrained, tiny_backbone.embed_dim)
    assert not adapter.fits(tiny_backbone.spec.name, "other.pt", tiny_backbone.embed_dim)
    assert fit_crop_adapter(tiny_backbone, scenes[-1:], ["circle", "square"]) is None
    held = fit_crop_adapter(tiny_backbone, scenes, ["circle", "square"], decay=100.0)
    identity = torch.eye(tiny_backbone.embed_dim)
    assert held.decay == 100.0 and (held.weight - identity).norm() < (adapter.weight - identity).norm()
    assert adapter.views == 0 and adapter.summary()["views"] == 0


def test_recoloured_views_are_what_the_map_is_fitted_on(tiny_backbone, monkeypatch):
    """With views = n the map sees n recoloured views of each crop (not the crop itself), the same
    views for the same seed; the accuracies stay those of the crops as they are."""
    scenes = two_object_scenes(3, torch.Generator().manual_seed(1))
    import zutiscli.models.crop_classifier as module

    seen = []
    real_fit = module.fit_embedding_map
    def recording_fit(x, y, *args, **kwargs):
        seen.append((x, y))
        return real_fit(x, y, *args, **kwargs)

    monkeypatch.setattr(module, "fit_embedding_map", recording_fit)
    plain = fit_crop_adapter(tiny_backbone, scenes, ["circle", "square"])
    two = fit_crop_adapter(tiny_backbone, scenes, ["circle", "square"], views=2, seed=5)
    again = fit_crop_adapter(tiny_backbone, scenes, ["circle", "square"], views=2, seed=5)
    other = fit_crop_adapter(tiny_backbone, scenes, ["circle", "square"], views=2, seed=6)
    (x0, y0), (x2, y2), (x2b, _), (x2c, _) = seen
    assert x0.shape[0] == 6 and x2.shape[0] == 12 and y2.tolist() == [0, 1] * 6 and torch.equal(y0, y2[:6])
    assert not torch.allclose(x2[:6], x0, atol=1e-4) and not torch.allclose(x2[:6], x2[6:], atol=1e-4)
    assert torch.equal(x2, x2b) and torch.equal(two.weight, again.weight) and not torch.equal(x2, x2c)
    assert two.views == 2 and two.objects == plain.objects == 6
    assert two.accuracy_before == plain.accuracy_before  # measured on the crops as they are
    with pytest.raises(ValueError, match="views"):
        fit_crop_adapter(tiny_backbone, scenes, ["circle", "square"], views=-1)


def test_adapter_round_trips_through_a_safe_checkpoint(tmp_path):
    adapter = CropAdapter(torch.randn(8, 8), "ViT-B-16", "openai", 300, 1021, 0.81, 0.88, 0.1, ("cat", "dog"), 3)
    save_checkpoint(tmp_path / "m.pt", {"config": {}, "classes": [], "model": {}, "crop_adapter": adapter.to_dict()})
    back = CropAdapter.from_dict(load_checkpoint(tmp_path / "m.pt")["crop_adapter"], where="m.pt")
    assert torch.equal(back.weight, adapter.weight) and back.summary() == adapter.summary()
    assert (back.model, back.pretrained, back.views) == ("ViT-B-16", "openai", 3)
    broken = adapter.to_dict() | {"weight": torch.zeros(8, 4)}
    with pytest.raises(ArtefactError, match="m.pt: malformed crop adapter"):
        CropAdapter.from_dict(broken, where="m.pt")
    with pytest.raises(ArtefactError, match="malformed crop adapter"):
        CropAdapter.from_dict({"weight": torch.eye(8)}, where="m.pt")


def test_an_adapter_that_names_its_own_crops_worse_is_not_kept(tiny_backbone, monkeypatch):
    from zutiscli.engine import crop_adapter as engine

    scenes = two_object_scenes(2, torch.Generator().manual_seed(2))
    weight = torch.eye(tiny_backbone.embed_dim)

    def fitted(before, after):
        return lambda *args: CropAdapter(weight, "m", "p", 2, 4, before, after)

    said = []
    monkeypatch.setattr(engine, "fit_crop_adapter", fitted(0.485, 0.16))
    assert engine.fit_on_scenes(tiny_backbone, scenes, ["circle", "square"], 2, 0.1, 3, 0, said.append) is None
    assert "48.5% -> 16.0%" in said[-1] and "none is saved" in said[-1]
    monkeypatch.setattr(engine, "fit_crop_adapter", fitted(0.5, 0.75))
    kept = engine.fit_on_scenes(tiny_backbone, scenes, ["circle", "square"], 2, 0.1, 3, 0, said.append)
    assert kept is not None and kept.accuracy_after == 0.75 and "none" not in said[-1]
