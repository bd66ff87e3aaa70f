"""The demo's training recipe (zutiscli/recipes/demo.yaml, demo-fast.yaml) trains the model the demo always trained."""

from dataclasses import asdict

import pytest
import yaml

from zutiscli import recipes
from zutiscli.data.copypaste import CopyPasteConfig
from zutiscli.errors import UsageError
from zutiscli.pipeline.demo import _scene_paste, _train_config, preset
from zutiscli.pipeline.train import TrainConfig

# What the demo's training set before its recipe became a file (every other option at its default;
# the CLIP is shapes-clip-v2 since it became the demo's).
BEFORE = dict(source="copypaste", model="shapes-clip-v2", pretrained="builtin", num_queries=20, decoder_layers=3,
              decoder_heads=4, decoder_ffn=512, mlp_hidden=128, positional_values=True, iterations=700, batch_size=8,
              crop=128, lr=5e-4, encoder_lr_mult=0.3, temperature=0.1, max_objects=6, scale_min=0.14,
              scale_max=0.42, canvas_min=0.3, outside=0.0, crop_adapter_scenes=1000, crop_adapter_views=3, seed=0,
              workers=1, device="auto", precision="fp32", checkpoint_every=700, log_every=14)
FAST_BEFORE = BEFORE | dict(iterations=300, checkpoint_every=300, log_every=6)
INFERENCE = dict(class_temperature=1.0, refine="bilateral", crop_weight=0.5, semantic_from="instances",
                 iou_threshold=0.5)
PASTE_BEFORE = CopyPasteConfig(size=128, max_objects=6, scale_range=(0.14, 0.42), canvas_scale=(0.3, 1.0), outside=0.0,
                               jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0)


@pytest.mark.parametrize("fast, before", [(False, BEFORE), (True, FAST_BEFORE)], ids=["demo", "fast"])
def test_the_recipe_trains_the_demo_model_of_before(fast, before):
    config = preset(fast)
    assert asdict(_train_config(config, "copypaste")) == asdict(TrainConfig(**before, inference=INFERENCE))
    assert _scene_paste(config) == PASTE_BEFORE  # the copy-paste scenes it trains on are made as before
    variant = asdict(_train_config(config, "copypaste", stop_gradient=False, temperature=1.0))
    assert variant == asdict(TrainConfig(**(before | dict(stop_gradient=False, temperature=1.0)), inference=INFERENCE))


def test_demo_options_override_the_recipe():
    config = preset(False, iterations=100, seed=3, workers=0, device="cpu", pretrained="weights.pt")
    trained = _train_config(config, "copypaste")
    assert (trained.iterations, trained.checkpoint_every, trained.log_every) == (100, 100, 2)
    assert (trained.seed, trained.workers, trained.device, trained.pretrained) == (3, 0, "cpu", "weights.pt")
    small = preset(True, iterations=2, crop=64, batch_size=2, crop_adapter_scenes=4)  # zutis train options
    assert small.training_options == {"crop": 64, "batch_size": 2, "crop_adapter_scenes": 4}
    trained = _train_config(small, "copypaste")
    assert (trained.crop, trained.batch_size, trained.crop_adapter_scenes, trained.log_every) == (64, 2, 4, 1)
    assert _scene_paste(small).size == 64
    with pytest.raises(UsageError, match=r"--iterations must be >= 1 \(got 0\)"):
        preset(False, iterations=0).validate()
    with pytest.raises(TypeError):
        preset(False, no_such_option=1)


def test_the_demo_recipes_agree():
    demo, fast = (yaml.safe_load(recipes.read(name)) for name in ("demo", "demo-fast"))
    differ = {key for key in demo.keys() | fast.keys() if demo.get(key) != fast.get(key)}
    assert differ == {"iterations", "checkpoint_every", "log_every"}
    # the inference the demo scores its model with: the one its recipe records in the checkpoints
    assert demo["inference"] == INFERENCE


@pytest.mark.parametrize("varied", [False, True])
def test_varied_draws_the_pile_alone_over_varied_looks(varied, tmp_path, monkeypatch):
    # the held-out scenes of both splits are the usual ones whatever the pile's looks
    from zutiscli.pipeline import demo, index, synth

    drawn = []

    class Drawn(Exception):
        pass

    def write_synth(config, output=None, **_):
        drawn.append(config)
        return output

    def build_index(*_, **__):
        raise Drawn

    monkeypatch.setattr(synth, "write_synth", write_synth)
    monkeypatch.setattr(index, "build_index", build_index)
    with pytest.raises(Drawn):
        demo.run_demo(preset(True, varied=varied), tmp_path / "demo")
    assert [(c.kind, c.split, c.varied) for c in drawn] == [
        ("pile", "train", varied), ("scenes", "train", False), ("scenes", "shift", False)]


@pytest.mark.parametrize("model", ["shapes-clip", "shapes-clip-v2"])
def test_the_chain_indexes_with_the_chosen_shapes_clip(model, tmp_path, monkeypatch):
    from zutiscli.pipeline import demo, index, synth

    indexed = []

    class Indexed(Exception):
        pass

    def build_index(config, *_, **__):
        indexed.append(config)
        raise Indexed

    monkeypatch.setattr(synth, "write_synth", lambda config, output=None, **_: output)
    monkeypatch.setattr(index, "build_index", build_index)
    config = preset(True, model=model)
    with pytest.raises(Indexed):
        demo.run_demo(config, tmp_path / "demo")
    assert (indexed[0].model, indexed[0].pretrained) == (model, "builtin")
    assert config.training("scenes").model == model
