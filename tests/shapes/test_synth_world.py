"""Tests of the procedural shapes world (zutiscli.shapes.world / raster)."""

from __future__ import annotations

import collections
import math
import re

import numpy as np
import pytest

from zutiscli.shapes.world import (
    BASE_RGB,
    CLASS_NAMES,
    COLOURS,
    DEFAULT_HELD_OUT,
    MIN_VISIBLE_FRACTION,
    MIN_VISIBLE_PIXELS,
    SHAPES,
    Sample,
    ShapeObject,
    allowed_pairs,
    caption_sample,
    colour_shape_name,
    nominal_area,
    object_name,
    pile_sample,
    plural,
    render_mask,
    scene_sample,
)

_BASE = np.array([BASE_RGB[c] for c in COLOURS], dtype=np.float64)
_SHAPE_WORDS = {s: s for s in SHAPES} | {plural(s): s for s in SHAPES}


def _same(a: Sample, b: Sample) -> bool:
    return (
        a.image.tobytes() == b.image.tobytes()
        and a.masks.shape == b.masks.shape
        and a.masks.tobytes() == b.masks.tobytes()
        and a.objects == b.objects
        and a.caption == b.caption
    )


def _nearest_base_colour(rgb: np.ndarray) -> str:
    return COLOURS[int(np.argmin(((_BASE - rgb) ** 2).sum(axis=1)))]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


@pytest.fixture(scope="module")
def piles() -> list[Sample]:
    return [pile_sample(11, i) for i in range(300)]


@pytest.fixture(scope="module")
def scenes() -> list[Sample]:
    return [scene_sample(12, i) for i in range(80)]


@pytest.fixture(scope="module")
def captions() -> list[Sample]:
    return [caption_sample(13, i) for i in range(500)]


# ---------------------------------------------------------------------------------------------
# Vocabulary and helpers.


def test_vocabulary_and_names() -> None:
    assert SHAPES == ("circle", "square", "triangle", "star", "cross", "ring")
    assert COLOURS == ("red", "green", "blue", "yellow", "purple", "white")
    assert CLASS_NAMES == SHAPES
    assert DEFAULT_HELD_OUT == frozenset({("purple", "star"), ("yellow", "ring"), ("green", "triangle")})
    obj = ShapeObject("star", "red", 10.0, 12.0, 20.0, 30.0)
    assert object_name(obj) == "star"
    assert colour_shape_name(obj) == "red star"
    assert plural("cross") == "crosses" and plural("ring") == "rings"
    assert len(allowed_pairs()) == 36 - 3
    # Base colours are far apart, so the colour names are learnable from pixels.
    d = np.sqrt(((_BASE[:, None] - _BASE[None]) ** 2).sum(-1))
    assert d[~np.eye(len(COLOURS), dtype=bool)].min() > 100


@pytest.mark.parametrize(
    "call",
    [
        lambda: pile_sample(-1, 0),
        lambda: pile_sample(0, -3),
        lambda: pile_sample(0, 0, size=8),
        lambda: scene_sample(0, 0, min_objects=3, max_objects=2),
        lambda: caption_sample(0, 0, held_out=frozenset({("pink", "star")})),
        lambda: caption_sample(0, 0, held_out=frozenset((c, s) for c in COLOURS for s in SHAPES)),
        lambda: scene_sample(0, 0, size=32, min_objects=40, max_objects=40),
    ],
)
def test_invalid_arguments_raise(call) -> None:
    with pytest.raises(ValueError):
        call()


# ---------------------------------------------------------------------------------------------
# Determinism.


@pytest.mark.parametrize("sampler", [pile_sample, scene_sample, caption_sample])
def test_deterministic_and_index_dependent(sampler) -> None:
    a, b = sampler(7, 3), sampler(7, 3)
    assert _same(a, b)
    assert a.image.tobytes() != sampler(7, 4).image.tobytes()
    assert a.image.tobytes() != sampler(8, 3).image.tobytes()


def test_order_independence() -> None:
    forward = [scene_sample(5, i) for i in range(6)]
    backward = []
    for i in reversed(range(6)):
        pile_sample(5, i)  # interleave other samplers: no shared state may leak
        caption_sample(5, i)
        backward.append(scene_sample(5, i))
    backward.reverse()
    assert all(_same(a, b) for a, b in zip(forward, backward))


def test_samplers_are_distinct_streams() -> None:
    # Same (seed, index) for different kinds must not give the same background.
    a, b = pile_sample(3, 9), caption_sample(3, 9)
    assert a.image.tobytes() != b.image.tobytes()


# ---------------------------------------------------------------------------------------------
# Masks.


def _check_sample_structure(s: Sample, size: int) -> None:
    assert s.image.shape == (size, size, 3) and s.image.dtype == np.uint8
    assert s.masks.dtype == bool and s.masks.shape == (len(s.objects), size, size)
    if len(s.objects):
        assert s.masks.reshape(len(s.objects), -1).any(axis=1).all(), "empty visible mask"
        assert s.masks.sum(axis=0).max() <= 1, "visible masks overlap"
    for o in s.objects:
        assert o.shape in SHAPES and o.colour in COLOURS
        assert o.size > 0 and 0.0 <= o.rotation < 360.0


def test_structure_all_samplers(piles, scenes, captions) -> None:
    for s in piles[:100]:
        _check_sample_structure(s, 64)
        assert s.caption is None
    for s in scenes:
        _check_sample_structure(s, 128)
        assert s.caption is None
    for s in captions[:100]:
        _check_sample_structure(s, 64)
        assert isinstance(s.caption, str) and s.caption
    _check_sample_structure(scene_sample(1, 2, size=96, min_objects=0, max_objects=3), 96)
    _check_sample_structure(pile_sample(1, 2, size=32), 32)


def test_visible_masks_are_amodal_minus_later_objects(scenes) -> None:
    for s in scenes[:30]:
        full = [render_mask(o, 128) for o in s.objects]
        covered = np.zeros((128, 128), dtype=bool)
        for k in reversed(range(len(s.objects))):
            np.testing.assert_array_equal(s.masks[k], full[k] & ~covered)
            covered |= full[k]


def test_mask_pixels_have_object_colour(piles) -> None:
    n = 0
    for s in piles[:150]:
        for o, m in zip(s.objects, s.masks):
            assert _nearest_base_colour(s.image[m].mean(axis=0)) == o.colour
            n += 1
    assert n > 100


def test_ring_has_hole_and_circle_area() -> None:
    ring = ShapeObject("ring", "red", 32.0, 32.0, 40.0, 0.0)
    m = render_mask(ring, 64)
    assert not m[32, 32] and not m[31, 31]
    assert m[32, 32 + 17] and m[32 - 17, 32]  # 0.85 r lies on the annulus
    for d in (10.0, 21.0, 40.0, 60.0):
        circle = ShapeObject("circle", "blue", 32.3, 31.7, d, 0.0)
        area = render_mask(circle, 64).sum()
        assert abs(area - math.pi * (d / 2) ** 2) <= 0.1 * math.pi * (d / 2) ** 2
    # nominal_area agrees with the rasteriser for every shape
    for shape in SHAPES:
        obj = ShapeObject(shape, "white", 40.2, 39.6, 50.0, 17.0)
        assert abs(render_mask(obj, 80).sum() - nominal_area(obj)) < 0.04 * nominal_area(obj)


def test_shapes_are_distinct() -> None:
    d = 50.0
    circle_area = math.pi * (d / 2) ** 2
    star = render_mask(ShapeObject("star", "red", 32.0, 32.0, d, 0.0), 64)
    assert star.sum() < 0.6 * circle_area
    cross = render_mask(ShapeObject("cross", "red", 32.0, 32.0, d, 0.0), 64)
    np.testing.assert_array_equal(cross, np.rot90(cross))
    np.testing.assert_array_equal(cross, cross[:, ::-1])
    assert not cross[32 - 15, 32 - 15] and cross[32, 32 - 22]  # empty corners, long arms
    tri = render_mask(ShapeObject("triangle", "red", 32.0, 32.0, d, 0.0), 64)
    assert tri[:32].sum() < tri[32:].sum()  # apex up: more area in the lower half
    assert not np.array_equal(tri, tri[::-1])

    # Shape features (fill ratio w.r.t. the circumscribed disc, compactness) differ.
    feats = {}
    for shape in SHAPES:
        rows = []
        for rot in (0.0, 13.0, 37.0, 71.0):
            rotation = 0.0 if shape in ("circle", "ring") else rot
            m = render_mask(ShapeObject(shape, "red", 32.0, 32.0, d, rotation), 64)
            p = np.pad(m, 1)
            interior = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
            perimeter = (m & ~interior).sum()
            rows.append((m.sum() / circle_area, m.sum() / perimeter**2))
        feats[shape] = np.mean(rows, axis=0)
    names = list(SHAPES)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            rel = np.abs(feats[a] - feats[b]) / np.maximum(feats[a], feats[b])
            assert rel.max() > 0.1, (a, b, feats[a], feats[b])


def test_rotation_symmetry() -> None:
    def m(shape: str, rot: float) -> np.ndarray:
        return render_mask(ShapeObject(shape, "red", 40.0, 40.0, 60.0, rot), 80)

    for shape, period in (("triangle", 120.0), ("star", 72.0), ("square", 90.0), ("cross", 90.0)):
        assert _iou(m(shape, 10.0), m(shape, 10.0 + period)) > 0.97, shape
        assert _iou(m(shape, 10.0), m(shape, 10.0 + period / 2)) < 0.85, shape


# ---------------------------------------------------------------------------------------------
# Pile statistics.


def test_pile_statistics(piles) -> None:
    counts = collections.Counter(len(s.objects) for s in piles)
    n = len(piles)
    assert abs(counts[0] / n - 0.08) < 0.05
    assert abs(counts[1] / n - 0.80) < 0.07
    assert abs(counts[2] / n - 0.12) < 0.06
    assert set(counts) <= {0, 1, 2}
    objs = [o for s in piles for o in s.objects]
    assert {o.shape for o in objs} == set(SHAPES)
    assert {o.colour for o in objs} == set(COLOURS)
    # Single objects: mostly large and central, sometimes small.
    singles = [s.objects[0] for s in piles if len(s.objects) == 1]
    rel = np.array([o.size / 64 for o in singles])
    assert 0.5 < (rel > 0.44).mean() < 0.85
    assert (rel < 0.43).mean() > 0.15
    # Rotated shapes really are rotated; symmetric ones are not.
    rots = [o.rotation for o in objs if o.shape in ("star", "triangle", "square", "cross")]
    assert np.std(rots) > 50
    assert all(o.rotation == 0.0 for o in objs if o.shape in ("circle", "ring"))


def test_backgrounds_are_textured(piles) -> None:
    empties = [s for s in piles if not s.objects]
    assert empties
    for s in piles[:50]:
        free = ~s.masks.any(axis=0)
        assert s.image[free].std(axis=0).max() > 2.0  # not a flat fill
    means = np.array([s.image.reshape(-1, 3).mean(0) for s in empties])
    assert means.std(axis=0).max() > 10  # base colour varies between images


# ---------------------------------------------------------------------------------------------
# Scenes.


def test_scene_counts_repeats_and_occlusion(scenes) -> None:
    counts = [len(s.objects) for s in scenes]
    assert min(counts) >= 1 and max(counts) <= 8
    assert len(set(counts)) >= 5
    assert any(len({o.shape for o in s.objects}) < len(s.objects) for s in scenes), "no repeated class"
    assert sum(len({o.shape for o in s.objects}) <= 2 and len(s.objects) >= 3 for s in scenes) >= 10
    occluded = 0
    for s in scenes:
        full = [render_mask(o, 128) for o in s.objects]
        for j in range(len(full)):
            if any((full[j] & s.masks[k]).any() for k in range(j + 1, len(full))):
                occluded += 1
    assert occluded >= 10


def test_scene_visible_area_constraint(scenes) -> None:
    for s in scenes:
        for o, m in zip(s.objects, s.masks):
            visible = int(m.sum())
            assert visible >= MIN_VISIBLE_PIXELS
            assert visible >= MIN_VISIBLE_FRACTION * nominal_area(o)
            assert visible >= MIN_VISIBLE_FRACTION * render_mask(o, 128).sum()


def test_scene_count_bounds_respected() -> None:
    for i in range(25):
        s = scene_sample(4, i, min_objects=3, max_objects=5)
        assert 3 <= len(s.objects) <= 5
    assert len(scene_sample(4, 0, min_objects=0, max_objects=0).objects) == 0


# ---------------------------------------------------------------------------------------------
# Captions.


def _words(caption: str) -> list[str]:
    return re.findall(r"[a-z\-]+", caption)


def test_held_out_pairs_never_drawn(captions) -> None:
    seen = set()
    for s in captions:
        for o in s.objects:
            assert (o.colour, o.shape) not in DEFAULT_HELD_OUT
            seen.add((o.colour, o.shape))
        for colour, shape in DEFAULT_HELD_OUT:
            assert f"{colour} {shape}" not in s.caption
    assert len(seen) >= 30  # every other pair still occurs
    custom = frozenset({("red", "circle"), ("blue", "square")})
    for i in range(200):
        s = caption_sample(0, i, held_out=custom)
        assert not {(o.colour, o.shape) for o in s.objects} & custom
    assert {(o.colour, o.shape) for i in range(300) for o in caption_sample(0, i).objects} & {
        ("red", "circle"),
        ("blue", "square"),
    }


def test_captions_name_what_is_present(captions) -> None:
    for s in captions:
        words = _words(s.caption)
        named_shapes = {_SHAPE_WORDS[w] for w in words if w in _SHAPE_WORDS}
        named_colours = {w for w in words if w in COLOURS}
        present_shapes = {o.shape for o in s.objects}
        present_colours = {o.colour for o in s.objects}
        assert named_shapes <= present_shapes, (s.caption, s.objects)
        assert named_colours <= present_colours, (s.caption, s.objects)
        if s.objects:
            assert named_shapes or named_colours, s.caption
    counts = collections.Counter(len(s.objects) for s in captions)
    assert counts[0] > 10 and counts[2] > 20


def test_caption_template_variety(captions) -> None:
    patterns = set()
    kinds = collections.Counter()
    for s in captions:
        words = _words(s.caption)
        abstract = " ".join(
            "{s}" if w in _SHAPE_WORDS else "{c}" if w in COLOURS else w for w in words
        )
        abstract = re.sub(r"\b(small|large|medium-sized)\b", "{z}", abstract)
        abstract = re.sub(r"\b(top|bottom|left|right|centre)\b", "{p}", abstract)
        patterns.add(abstract)
        has_s = "{s}" in abstract
        has_c = "{c}" in abstract
        kinds[(has_c, has_s)] += 1
    assert len(patterns) >= 15, sorted(patterns)
    assert kinds[(True, False)] > 30  # colour only
    assert kinds[(False, True)] > 30  # shape only
    assert kinds[(True, True)] > 30  # colour + shape


# ---------------------------------------------------------------------------------------------
# Learnability.


def test_colour_is_learnable_by_nearest_mean(piles, scenes) -> None:
    def feats(samples: list[Sample]) -> tuple[np.ndarray, list[str]]:
        x, y = [], []
        for s in samples:
            for o, m in zip(s.objects, s.masks):
                x.append(s.image[m].astype(float).mean(axis=0))
                y.append(o.colour)
        return np.array(x), y

    x_train, y_train = feats(piles)
    centroids = np.array([x_train[[c == y for y in y_train]].mean(axis=0) for c in COLOURS])
    x_test, y_test = feats(scenes)
    x_test, y_test = x_test[:200], y_test[:200]
    assert len(y_test) == 200
    learned = [COLOURS[int(np.argmin(((centroids - x) ** 2).sum(1)))] for x in x_test]
    assert np.mean([a == b for a, b in zip(learned, y_test)]) >= 0.95
    fixed = [_nearest_base_colour(x) for x in x_test]
    assert np.mean([a == b for a, b in zip(fixed, y_test)]) >= 0.95
