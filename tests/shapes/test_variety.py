"""Varied training backgrounds: the same objects over many looks, with clutter and lighting, none of
the shift split's; the default draw untouched."""

from __future__ import annotations

import numpy as np
import pytest

from zutiscli.errors import UsageError
from zutiscli.pipeline.synth_config import SynthConfig
from zutiscli.shapes.clip_recipe import TrainClipConfig
from zutiscli.shapes.clip_train import caption_batch
from zutiscli.shapes.shift import FAMILIES as SHIFT_FAMILIES
from zutiscli.shapes.variety import FAMILIES, add_clutter, adjust_light, varied_background
from zutiscli.shapes.world import _background, caption_sample, pile_sample, scene_sample


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_draws_a_deterministic_background(family):
    image = varied_background(np.random.default_rng(3), 40, family)
    assert image.shape == (40, 40, 3) and image.dtype == np.float32
    assert 0.0 <= image.min() and image.max() <= 255.0
    assert np.array_equal(image, varied_background(np.random.default_rng(3), 40, family))


def test_the_families_are_not_the_shift_splits():
    assert not set(FAMILIES) & set(SHIFT_FAMILIES)
    with pytest.raises(ValueError, match="unknown background family 'checker'"):
        varied_background(np.random.default_rng(0), 32, "checker")


def test_varied_backgrounds_are_wider_than_the_default_ones():
    """The default backgrounds are muted; the varied ones reach saturated and busy looks."""
    def saturation(image):
        return float((image.max(axis=2) - image.min(axis=2)).mean() / 255.0)

    def busyness(image):
        grey = image.mean(axis=2)
        return float(np.abs(np.diff(grey, axis=0)).mean() + np.abs(np.diff(grey, axis=1)).mean())

    default = [_background(np.random.default_rng(s), 48) for s in range(60)]
    varied = [varied_background(np.random.default_rng(s), 48) for s in range(60)]
    assert max(map(saturation, varied)) > 1.5 * max(map(saturation, default))
    assert np.mean([busyness(v) > max(map(busyness, default)) for v in varied]) > 0.05
    assert np.mean([saturation(v) > max(map(saturation, default)) for v in varied]) > 0.2


@pytest.mark.parametrize("sampler", [lambda varied: pile_sample(5, 2, 64, varied=varied),
                                     lambda varied: scene_sample(5, 2, 64, varied=varied),
                                     lambda varied: caption_sample(5, 2, 64, varied=varied),
                                     lambda varied: scene_sample(5, 2, 64, stuff=True, varied=varied)],
                         ids=["pile", "scenes", "pairs", "scenes-over-stuff"])
def test_varied_keeps_the_objects_and_caption_and_changes_the_look(sampler):
    plain, varied = sampler(False), sampler(True)
    assert plain.objects == varied.objects and np.array_equal(plain.masks, varied.masks)
    assert plain.caption == varied.caption
    if plain.stuff is not None:
        assert np.array_equal(plain.stuff, varied.stuff)
    assert not np.array_equal(plain.image, varied.image)
    assert np.array_equal(varied.image, sampler(True).image)


def test_varied_is_for_the_train_split_only():
    with pytest.raises(ValueError, match="shift split draws its own"):
        pile_sample(0, 0, 64, split="shift", varied=True)
    with pytest.raises(UsageError, match="--varied draws training looks"):
        SynthConfig(kind="scenes", count=2, varied=True, split="shift").validate()


def test_clutter_paints_a_few_blobs_and_counts_them():
    image = np.full((64, 64, 3), 100.0, dtype=np.float32)
    assert add_clutter(np.random.default_rng(1), image, count=0) == 0 and (image == 100.0).all()
    assert add_clutter(np.random.default_rng(1), image, count=3) == 3
    changed = (image != 100.0).any(axis=2)
    assert 0 < changed.mean() < 0.5, "a few blobs, not the whole image"


def test_lighting_changes_brightness_and_contrast_but_keeps_the_picture():
    image = scene_sample(2, 0, 48).image
    lit = adjust_light(np.random.default_rng(0), image)
    assert lit.shape == image.shape and lit.dtype == np.uint8 and not np.array_equal(lit, image)
    assert np.corrcoef(lit.reshape(-1).astype(float), image.reshape(-1).astype(float))[0, 1] > 0.95


def test_caption_batches_draw_the_asked_share_over_varied_backgrounds():
    plain = caption_batch(0, 1, 32, 32)
    every = caption_batch(0, 1, 32, 32, varied=1.0)
    some = caption_batch(0, 1, 32, 32, varied=0.5)
    assert plain[1] == every[1] == some[1], "the captions do not depend on the look"
    changed = [not np.array_equal(a, b) for a, b in zip(plain[0], every[0])]
    assert all(changed)
    share = np.mean([not np.array_equal(a, b) for a, b in zip(plain[0], some[0])])
    assert 0.2 < share < 0.8
    with pytest.raises(ValueError, match="must be probabilities"):
        TrainClipConfig(varied=1.5).validate()
