"""The shift split: the same objects over backgrounds, stuff looks and lighting that no training
uses; and the train split, byte for byte the world shapes-clip and the demo were made on."""

from __future__ import annotations

import colorsys
import hashlib

import numpy as np
import pytest

from zutiscli.errors import UsageError
from zutiscli.pipeline.synth_config import SynthConfig
from zutiscli.shapes.shift import FAMILIES, relight, shift_background
from zutiscli.shapes.stuff import material
from zutiscli.shapes.world import _background, caption_sample, pile_sample, scene_sample


def test_the_train_split_draws_the_world_it_always_drew():
    digest = hashlib.sha256()
    for i in range(6):
        for sample in (scene_sample(1, i, 64), pile_sample(0, i, 64), caption_sample(2, i, 64)):
            digest.update(sample.image.tobytes())
            digest.update(sample.masks.tobytes())
    assert digest.hexdigest() == "a2df854a39fade8dd9c3dcffb96aff129de80d2ef1f420de7bacb6540184f17b", \
        "the train split changed: shapes-clip, the demo's recipe and its floors were made on the old one"


@pytest.mark.parametrize("sampler", [lambda split: pile_sample(4, 3, 64, split=split),
                                     lambda split: scene_sample(4, 3, 64, split=split),
                                     lambda split: scene_sample(4, 3, 64, stuff=True, split=split)],
                         ids=["pile", "scenes", "scenes-over-stuff"])
def test_shift_keeps_the_objects_and_changes_everything_else(sampler):
    train, shift = sampler("train"), sampler("shift")
    assert train.objects == shift.objects and np.array_equal(train.masks, shift.masks)
    if train.stuff is not None:
        assert np.array_equal(train.stuff, shift.stuff)
    background = ~train.masks.any(axis=0)
    difference = np.abs(train.image.astype(int) - shift.image.astype(int))[background].mean()
    assert difference > 20
    assert np.array_equal(shift.image, sampler("shift").image)


def statistics(image: np.ndarray) -> tuple[float, float]:
    """(mean HSV saturation, mean absolute horizontal + vertical difference of the grey image)."""
    rgb = image.reshape(-1, 3) / 255.0
    saturation = np.mean([colorsys.rgb_to_hsv(*p)[1] for p in rgb[::7]])
    grey = image.mean(axis=2)
    return float(saturation), float(np.abs(np.diff(grey, axis=0)).mean() + np.abs(np.diff(grey, axis=1)).mean())


def test_shift_backgrounds_lie_outside_the_training_backgrounds():
    """Shift backgrounds are far more saturated, and most lie beyond every training background."""
    train = [statistics(_background(np.random.default_rng(s), 48)) for s in range(60)]
    shift = [statistics(shift_background(np.random.default_rng(s), 48)) for s in range(60)]
    train_sat, shift_sat = np.median([t[0] for t in train]), np.median([s[0] for s in shift])
    assert shift_sat > 2 * train_sat
    beyond = [s[0] > max(t[0] for t in train) or s[1] > max(t[1] for t in train) for s in shift]
    assert np.mean(beyond) > 0.6, "most shift backgrounds lie beyond every training background"


def test_every_family_is_drawn():
    seen = set()
    for seed in range(100):
        rng = np.random.default_rng(seed)
        seen.add(FAMILIES[int(rng.integers(len(FAMILIES)))])
        image = shift_background(np.random.default_rng(seed), 32)
        assert image.shape == (32, 32, 3) and image.dtype == np.float32 and 0 <= image.min() and image.max() <= 255
    assert seen == set(FAMILIES)


def test_relighting_changes_the_image_but_not_its_layout():
    image = scene_sample(2, 0, 48).image
    lit = relight(np.random.default_rng(0), image)
    assert lit.shape == image.shape and lit.dtype == np.uint8 and not np.array_equal(lit, image)
    assert np.corrcoef(lit.reshape(-1).astype(float), image.reshape(-1).astype(float))[0, 1] > 0.7


def test_shift_stuff_keeps_its_names_and_changes_its_look():
    for seed in range(5):
        sky = material("sky", np.random.default_rng(seed), 32, shift=True)
        assert sky[-4:].mean(axis=(0, 1))[0] > sky[-4:].mean(axis=(0, 1))[2], "a sunset: red near the horizon"
        for name in ("grass", "water", "brick"):
            usual = material(name, np.random.default_rng(seed), 32).mean(axis=(0, 1))
            shifted = material(name, np.random.default_rng(seed), 32, shift=True).mean(axis=(0, 1))
            assert np.abs(usual - shifted).max() > 30, name


def test_pairs_are_never_drawn_from_the_shift_split():
    SynthConfig("scenes", 1, split="shift").validate()
    SynthConfig("pile", 1, split="shift").validate()
    with pytest.raises(UsageError, match="never trained on"):
        SynthConfig("pairs", 1, split="shift").validate()
    with pytest.raises(UsageError, match="--split"):
        SynthConfig("scenes", 1, split="test").validate()


def test_the_clip_evaluation_pool_of_the_shift_split_holds_the_same_objects():
    from zutiscli.shapes.clip_eval import single_object_pool

    train, shift = single_object_pool(9, 72, 32), single_object_pool(9, 72, 32, split="shift")
    assert np.array_equal(train.shapes, shift.shapes) and np.array_equal(train.colours, shift.colours)
    assert np.array_equal(train.masks, shift.masks) and not np.array_equal(train.images, shift.images)


def test_the_train_splits_captions_are_the_ones_shapes_clip_was_trained_on():
    digest = hashlib.sha256()
    for i in range(200):
        digest.update(caption_sample(2, i, 64).caption.encode())
    assert digest.hexdigest() == "9854e17a0a9c1ffacdf194fc7cbaf18cd4161ca0cc51720f25b29bc7410d303e"
