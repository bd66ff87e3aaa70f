"""Named stuff: materials a person would recognise, regions with natural boundaries, and scenes
whose objects do not depend on what they are drawn over."""

from __future__ import annotations

import numpy as np
import pytest

from zutiscli.shapes.stuff import STUFF, material, stuff_background, stuff_layout
from zutiscli.shapes.world import scene_sample


def mean_rgb(name: str, seed: int) -> np.ndarray:
    return material(name, np.random.default_rng(seed), 64).reshape(-1, 3).mean(axis=0)


@pytest.mark.parametrize("seed", range(30))
def test_each_material_has_the_colour_its_name_promises(seed):
    r, g, b = mean_rgb("sky", seed)
    assert b > r + 40 and b > 150, "sky: light and blue"
    r, g, b = mean_rgb("grass", seed)
    assert g > r + 30 and g > b + 30, "grass: green"
    r, g, b = mean_rgb("water", seed)
    assert b > r + 50 and b > g, "water: blue, darker than sky"
    assert mean_rgb("water", seed).mean() < mean_rgb("sky", seed).mean()
    r, g, b = mean_rgb("sand", seed)
    assert r > b + 40 and g > b + 20 and r > 150, "sand: light and yellowish"
    r, g, b = mean_rgb("brick", seed)
    assert r > g + 40 and r > b + 40, "brick: red"
    r, g, b = mean_rgb("wood", seed)
    assert r > g > b and r < 200, "wood: brown"


def test_materials_are_told_apart_by_their_texture_statistics():
    """Nearest centroid on (mean colour, horizontal and vertical gradient energy) recognises every material."""
    def features(name, seed):
        img = material(name, np.random.default_rng(seed), 64)
        grey = img.mean(axis=2)
        return np.concatenate([img.reshape(-1, 3).mean(0) / 255,
                               [np.abs(np.diff(grey, axis=1)).mean() / 10, np.abs(np.diff(grey, axis=0)).mean() / 10]])
    centroids = np.stack([np.mean([features(n, s) for s in range(10)], axis=0) for n in STUFF])
    for name in STUFF:
        for seed in range(100, 110):
            guess = STUFF[int(np.argmin(np.linalg.norm(centroids - features(name, seed), axis=1)))]
            assert guess == name


@pytest.mark.parametrize("seed", range(40))
def test_layouts_have_one_to_three_named_regions_each_present(seed):
    regions, names = stuff_layout(np.random.default_rng(seed), 48)
    assert 1 <= len(names) <= 3 and len(set(names)) == len(names) and set(names) <= set(STUFF)
    assert set(np.unique(regions)) == set(range(len(names)))
    if "sky" in names:  # sky is above: its region starts at the top row
        assert (regions[0] == names.index("sky")).any()


def test_layouts_cover_every_material_and_kind_of_view():
    seen, counts = set(), set()
    for seed in range(200):
        _, names = stuff_layout(np.random.default_rng(seed), 32)
        seen.update(names)
        counts.add(len(names))
    assert seen == set(STUFF) and counts == {1, 2, 3}


def test_stuff_background_labels_every_pixel_and_is_deterministic():
    a = stuff_background(np.random.default_rng(7), 40)
    b = stuff_background(np.random.default_rng(7), 40)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    image, labels = a
    assert image.shape == (40, 40, 3) and image.dtype == np.float32 and 0 <= image.min() and image.max() <= 255
    assert labels.dtype == np.uint8 and labels.min() >= 1 and labels.max() <= len(STUFF)


def test_scenes_over_stuff_keep_the_same_objects_and_label_the_rest():
    for index in range(4):
        plain = scene_sample(3, index, 64)
        over = scene_sample(3, index, 64, stuff=True)
        assert plain.objects == over.objects and np.array_equal(plain.masks, over.masks)
        assert plain.stuff is None and over.stuff.shape == (64, 64) and over.stuff.min() >= 1
        assert not np.array_equal(plain.image, over.image)
    assert np.array_equal(scene_sample(3, 0, 64, stuff=True).image, scene_sample(3, 0, 64, stuff=True).image)


def test_piles_over_stuff_keep_the_same_objects_on_both_splits():
    from zutiscli.shapes.world import pile_sample

    for split in ("train", "shift"):
        for index in range(4):
            plain = pile_sample(3, index, 64, split=split)
            over = pile_sample(3, index, 64, split=split, stuff=True)
            assert plain.objects == over.objects and np.array_equal(plain.masks, over.masks)
            assert plain.stuff is None and over.stuff.shape == (64, 64) and over.stuff.min() >= 1
            assert not np.array_equal(plain.image, over.image)
    # the pile's stuff is not the scenes' of the same seed and index
    assert not np.array_equal(pile_sample(3, 0, 64, stuff=True).stuff, scene_sample(3, 0, 64, stuff=True).stuff)


def test_captions_over_stuff_name_only_what_is_there():
    from zutiscli.shapes.stuff import _NOUN, _UNDER, STUFF as NAMES
    from zutiscli.shapes.world import caption_sample

    kinds = {"objects": 0, "objects and stuff": 0, "stuff": 0}
    for index in range(150):
        plain, over = caption_sample(6, index, 48), caption_sample(6, index, 48, stuff=True)
        assert plain.objects == over.objects and np.array_equal(plain.masks, over.masks)
        present = {NAMES[v - 1] for v in np.unique(over.stuff)}
        named = {name for name in NAMES if _NOUN[name] in over.caption or _UNDER[name] in over.caption}
        assert named <= present, (over.caption, present)
        under = [name for name in NAMES if over.caption.endswith(" " + _UNDER[name])]
        if under and over.objects:
            largest = max(over.objects, key=lambda o: o.size)
            assert NAMES[over.stuff[min(47, int(largest.cy)), min(47, int(largest.cx))] - 1] == under[0]
            kinds["objects and stuff"] += 1
        elif named:
            kinds["stuff"] += 1
        else:
            kinds["objects"] += 1
            assert over.caption == plain.caption.replace(" on a textured background", "")
        assert "textured background" not in over.caption
    assert min(kinds.values()) > 25, kinds
