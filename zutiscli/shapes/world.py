"""The procedural "shapes world": coloured shapes on textured backgrounds, with exact masks.

Three deterministic samplers stand in for the real data sources of the pipeline:

* :func:`pile_sample` -- unlabelled "ImageNet-like" images (mostly one object; hidden ground truth).
* :func:`scene_sample` -- evaluation scenes with several, possibly occluding, instances.
* :func:`caption_sample` -- image--caption pairs for contrastive (CLIP) training, never showing a
  held-out colour--shape pair so that zero-shot composition can be tested.

Every sample is a pure function of ``(seed, index)`` (plus the keyword arguments): each call builds
its own generator from ``SeedSequence([seed, kind, index])``, so samples are independent,
order-free and parallelisable, and the same arguments give byte-identical arrays.

Units: positions and sizes in pixels (see :mod:`zutiscli.shapes.raster` for the geometry),
rotations in degrees counter-clockwise, colours 8-bit RGB.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from zutiscli.shapes.noise import smooth_field
from zutiscli.shapes.raster import (
    RASTER_SHAPES,
    ROTATION_PERIOD,
    UNIT_AREA,
    Footprint,
    rasterise,
)

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "white")
CLASS_NAMES: tuple[str, ...] = SHAPES

# Reference RGB (uint8 scale) of each colour name; drawn objects are jittered around it.
BASE_RGB: dict[str, tuple[int, int, int]] = {
    "red": (210, 35, 35),
    "green": (40, 170, 60),
    "blue": (40, 85, 215),
    "yellow": (235, 210, 35),
    "purple": (140, 55, 185),
    "white": (240, 240, 240),
}

# (colour, shape) pairs that caption_sample never draws nor names.
DEFAULT_HELD_OUT: frozenset[tuple[str, str]] = frozenset(
    {("purple", "star"), ("yellow", "ring"), ("green", "triangle")}
)

# A kept object must show at least this many pixels and this fraction of its nominal area.
MIN_VISIBLE_PIXELS = 40
MIN_VISIBLE_FRACTION = 0.3
SUPERSAMPLE = 3

_KIND_PILE = 1
_KIND_SCENE = 2
_KIND_CAPTION = 3
_KIND_STUFF = 4
_KIND_SHIFT = 5
_KIND_VARIED = 6

#: Splits a pile or scene can be drawn from: ``train`` (what every training stage sees) and
#: ``shift`` (held-out backgrounds, stuff looks and lighting: :mod:`zutiscli.shapes.shift`).
SPLITS: tuple[str, ...] = ("train", "shift")

assert SHAPES == RASTER_SHAPES


@dataclass(frozen=True)
class ShapeObject:
    """One drawn object.

    Attributes:
        shape: one of :data:`SHAPES`.
        colour: one of :data:`COLOURS`.
        cx, cy: centre in pixels (continuous image coordinates, origin at the top-left corner).
        size: reference diameter in pixels (the shape's extent; see :mod:`zutiscli.shapes.raster`).
        rotation: degrees counter-clockwise on screen (0.0 for circle and ring).
    """

    shape: str
    colour: str
    cx: float
    cy: float
    size: float
    rotation: float


@dataclass
class Sample:
    """One generated image with its ground truth.

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB.
        objects: drawn objects in painting order (later objects are on top).
        masks: ``(N, H, W)`` bool visible (modal) masks, ``N == len(objects)``, same order;
            pairwise disjoint and each non-empty.
        caption: text for caption samples, else None.
        stuff: ``(H, W)`` uint8 named background under the objects, ``1 + index`` in
            :data:`zutiscli.shapes.stuff.STUFF` (scenes drawn with ``stuff=True``), else None.
    """

    image: np.ndarray
    objects: list[ShapeObject]
    masks: np.ndarray
    caption: str | None
    stuff: np.ndarray | None = None


def object_name(obj: ShapeObject) -> str:
    """The class name of an object (its shape), e.g. ``"circle"``."""
    return obj.shape


def colour_shape_name(obj: ShapeObject) -> str:
    """Colour and shape of an object, e.g. ``"red circle"``."""
    return f"{obj.colour} {obj.shape}"


def plural(shape: str) -> str:
    """English plural of a shape name (``"cross"`` -> ``"crosses"``)."""
    return shape + "es" if shape.endswith("s") else shape + "s"


def allowed_pairs(
    held_out: frozenset[tuple[str, str]] = DEFAULT_HELD_OUT,
) -> tuple[tuple[str, str], ...]:
    """All ``(colour, shape)`` pairs not in ``held_out``, in vocabulary order."""
    _check_held_out(held_out)
    return tuple((c, s) for c in COLOURS for s in SHAPES if (c, s) not in held_out)


def nominal_area(obj: ShapeObject) -> float:
    """Exact area in square pixels of the object's shape (unoccluded, unclipped)."""
    return UNIT_AREA[obj.shape] * (obj.size / 2.0) ** 2


def render_mask(obj: ShapeObject, size: int) -> np.ndarray:
    """Full (amodal, ignoring occlusion) mask of one object.

    Args:
        obj: the object.
        size: image side in pixels.

    Returns:
        ``(size, size)`` bool, True where the object covers >= 0.5 of a pixel.
    """
    return _footprint(obj, size).full_mask()


def min_diameter(shape: str) -> float:
    """Smallest size (pixels) at which a shape's area is 1.5x :data:`MIN_VISIBLE_PIXELS`."""
    return 2.0 * math.sqrt(1.5 * MIN_VISIBLE_PIXELS / UNIT_AREA[shape])


# --------------------------------------------------------------------------------------------
# Internals: random generators, layout, appearance.


def _rng(seed: int, kind: int, index: int) -> np.random.Generator:
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    return np.random.default_rng(np.random.SeedSequence([int(seed), kind, int(index)]))


def _check_size(size: int) -> None:
    if size < 16:
        raise ValueError(f"image size must be >= 16 pixels, got {size}")


def _check_held_out(held_out: frozenset[tuple[str, str]]) -> None:
    for pair in held_out:
        if len(pair) != 2 or pair[0] not in COLOURS or pair[1] not in SHAPES:
            raise ValueError(f"held-out pair {pair!r} is not a (colour, shape) pair of the vocabulary")


def _footprint(obj: ShapeObject, size: int) -> Footprint:
    return rasterise(obj.shape, obj.cx, obj.cy, obj.size, obj.rotation, size, size, SUPERSAMPLE)


def _random_rotation(rng: np.random.Generator, shape: str) -> float:
    period = ROTATION_PERIOD[shape]
    return 0.0 if period == 0.0 else float(rng.uniform(0.0, 360.0))


class _Layout:
    """Objects placed so far with their footprints and visible masks.

    A candidate is accepted only if it and every earlier object keep at least
    ``max(MIN_VISIBLE_PIXELS, MIN_VISIBLE_FRACTION * max(nominal area, in-image area))`` visible
    pixels, so no object ever has to be dropped after painting.
    """

    def __init__(self, size: int):
        self.size = size
        self.objects: list[ShapeObject] = []
        self.footprints: list[Footprint] = []
        self.visible: list[np.ndarray] = []  # each (size, size) bool
        self.counts: list[int] = []
        self.needed: list[float] = []

    def __len__(self) -> int:
        return len(self.objects)

    def try_add(self, obj: ShapeObject) -> bool:
        """Add ``obj`` on top of the current objects if all visibility constraints hold."""
        fp = _footprint(obj, self.size)
        mbox = fp.mask_box
        area = int(np.count_nonzero(mbox))
        needed = max(float(MIN_VISIBLE_PIXELS), MIN_VISIBLE_FRACTION * max(nominal_area(obj), area))
        if area < needed:
            return False
        box = fp.box
        lost = [int(np.count_nonzero(vis[box] & mbox)) for vis in self.visible]
        for count, need, loss in zip(self.counts, self.needed, lost):
            if count - loss < need:
                return False
        for j, loss in enumerate(lost):
            if loss:
                self.visible[j][box] &= ~mbox
                self.counts[j] -= loss
        full = np.zeros((self.size, self.size), dtype=bool)
        full[box] = mbox
        self.objects.append(obj)
        self.footprints.append(fp)
        self.visible.append(full)
        self.counts.append(area)
        self.needed.append(needed)
        return True

    def masks(self) -> np.ndarray:
        """``(N, size, size)`` bool visible masks."""
        if not self.visible:
            return np.zeros((0, self.size, self.size), dtype=bool)
        return np.stack(self.visible)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.asarray(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32) * np.float32(255.0)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """``(size, size, 3)`` float32 RGB in [0, 255]: muted base colour plus texture.

    The texture combines (at random, at least one of) low-frequency colour blobs, straight
    stripes and fine pixel noise; none of them forms compact shape-like regions.
    """
    hue = float(rng.random())
    sat = float(rng.uniform(0.05, 0.45))
    val = float(rng.uniform(0.25, 0.62))
    base = _hsv(hue, sat, val)
    img = np.empty((size, size, 3), dtype=np.float32)
    img[...] = base
    use = rng.random(3) < np.array([0.65, 0.4, 0.75])  # blobs, stripes, noise
    if not use.any():
        use[int(rng.integers(3))] = True
    if use[0]:
        other = _hsv(
            hue + float(rng.uniform(-0.18, 0.18)),
            float(np.clip(sat + rng.uniform(-0.15, 0.15), 0.0, 0.5)),
            float(np.clip(val + rng.uniform(-0.2, 0.2), 0.15, 0.7)),
        )
        field = smooth_field(rng, size, int(rng.integers(2, 6)))
        img += field[:, :, None] * (other - base)[None, None, :]
    if use[1]:
        period = float(rng.uniform(4.0, 16.0))
        angle = float(rng.uniform(0.0, math.pi))
        phase = float(rng.uniform(0.0, 2.0 * math.pi))
        amplitude = float(rng.uniform(5.0, 16.0))
        coords = np.arange(size, dtype=np.float32) + 0.5
        cos_a, sin_a = np.float32(math.cos(angle)), np.float32(math.sin(angle))
        proj = coords[None, :] * cos_a + coords[:, None] * sin_a
        wave = np.sin(proj * np.float32(2.0 * math.pi / period) + np.float32(phase))
        sharp = float(rng.uniform(0.5, 3.0))
        wave = np.tanh(sharp * wave) / np.float32(math.tanh(sharp))
        tint = amplitude * (0.75 + 0.25 * rng.standard_normal(3)).astype(np.float32)
        img += wave[:, :, None] * tint[None, None, :]
    if use[2]:
        sigma = float(rng.uniform(3.0, 11.0))
        noise = rng.standard_normal((size, size, 1), dtype=np.float32) * np.float32(sigma)
        noise = noise + rng.standard_normal((size, size, 3), dtype=np.float32) * np.float32(0.3 * sigma)
        img += noise
    np.clip(img, 0.0, 255.0, out=img)
    return img


def _object_rgb(rng: np.random.Generator, colour: str) -> np.ndarray:
    """Jittered ``(3,)`` float32 RGB of a colour name: brightness, saturation and tint noise."""
    rgb = np.asarray(BASE_RGB[colour], dtype=np.float32)
    rgb = rgb * np.float32(rng.uniform(0.82, 1.08))
    desat = np.float32(rng.uniform(0.0, 0.15))
    rgb = rgb * (1.0 - desat) + rgb.mean() * desat
    rgb = rgb + rng.normal(0.0, 7.0, 3).astype(np.float32)
    return np.clip(rgb, 0.0, 255.0)


def _paint(rng: np.random.Generator, img: np.ndarray, obj: ShapeObject, fp: Footprint) -> None:
    """Alpha-blend one object into ``img`` ((H, W, 3) float32) using its coverage as alpha.

    The object colour gets a subtle linear shading gradient and fine texture noise.
    """
    rgb = _object_rgb(rng, obj.colour)
    gradient = np.float32(rng.uniform(0.0, 0.14))
    direction = float(rng.uniform(0.0, 2.0 * math.pi))
    grain = np.float32(rng.uniform(0.0, 6.0))
    cov = fp.coverage
    h, w = cov.shape
    if h == 0 or w == 0:
        return
    r = obj.size / 2.0
    xs = (np.arange(fp.x0, fp.x0 + w, dtype=np.float32) + 0.5 - np.float32(obj.cx)) * np.float32(
        math.cos(direction) / r
    )
    ys = (np.arange(fp.y0, fp.y0 + h, dtype=np.float32) + 0.5 - np.float32(obj.cy)) * np.float32(
        math.sin(direction) / r
    )
    shade = 1.0 + gradient * np.clip(ys[:, None] + xs[None, :], -1.0, 1.0)
    colour = shade[:, :, None] * rgb[None, None, :]
    colour += rng.standard_normal((h, w, 1), dtype=np.float32) * grain
    np.clip(colour, 0.0, 255.0, out=colour)
    alpha = cov[:, :, None]
    region = img[fp.box]
    region += alpha * (colour - region)


def _render(rng: np.random.Generator, background: np.ndarray, layout: _Layout) -> np.ndarray:
    """Paint the layout's objects in order onto ``background``; returns ``(H, W, 3)`` uint8."""
    img = background
    for obj, fp in zip(layout.objects, layout.footprints):
        _paint(rng, img, obj, fp)
    return np.rint(np.clip(img, 0.0, 255.0)).astype(np.uint8)


def _pick_pair(
    rng: np.random.Generator, pairs: Sequence[tuple[str, str]], shape: str | None = None
) -> tuple[str, str]:
    """A uniformly random ``(colour, shape)`` from ``pairs`` (restricted to ``shape`` if given)."""
    if shape is not None:
        subset = [p for p in pairs if p[1] == shape]
        if subset:
            pairs = subset
    return pairs[int(rng.integers(len(pairs)))]


def _pile_layout(rng: np.random.Generator, size: int, pairs: Sequence[tuple[str, str]]) -> _Layout:
    """Object layout of a pile-like image: ~80% one object, ~12% two, ~8% none."""
    layout = _Layout(size)
    u = float(rng.random())
    n = 0 if u < 0.08 else (2 if u < 0.20 else 1)
    if n == 1:
        colour, shape = _pick_pair(rng, pairs)
        centred = rng.random() < 0.7
        lo = min_diameter(shape)
        for attempt in range(40):
            if centred and attempt < 20:
                d = max(lo, float(rng.uniform(0.45, 0.85)) * size)
                cx, cy = size / 2.0 + rng.normal(0.0, 0.06 * size, 2)
            else:
                d = max(lo, float(rng.uniform(0.22, 0.42)) * size)
                r = d / 2.0
                cx, cy = rng.uniform(0.8 * r, size - 0.8 * r, 2)
            obj = ShapeObject(shape, colour, float(cx), float(cy), d, _random_rotation(rng, shape))
            if layout.try_add(obj):
                break
    elif n == 2:
        first = _pick_pair(rng, pairs)
        same_shape = rng.random() < 0.35
        second = _pick_pair(rng, pairs, first[1] if same_shape else None)
        for colour, shape in (first, second):
            lo = min_diameter(shape)
            for _ in range(40):
                d = max(lo, float(rng.uniform(0.26, 0.5)) * size)
                r = d / 2.0
                cx, cy = rng.uniform(0.8 * r, size - 0.8 * r, 2)
                obj = ShapeObject(shape, colour, float(cx), float(cy), d, _random_rotation(rng, shape))
                if layout.try_add(obj):
                    break
    return layout


# --------------------------------------------------------------------------------------------
# Public samplers.


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")


def _shifted(seed: int, kind: int, index: int, split: str) -> np.random.Generator | None:
    """The generator of a shift-split sample's background and lighting (``None`` for the train split)."""
    return _rng(seed, _KIND_SHIFT * 16 + kind, index) if split == "shift" else None


def _varied(seed: int, kind: int, index: int, varied: bool, split: str = "train") -> np.random.Generator | None:
    """The generator of a varied sample's background, clutter and lighting (``None`` without ``varied``)."""
    if not varied:
        return None
    if split != "train":
        raise ValueError("varied backgrounds are training looks; the shift split draws its own")
    return _rng(seed, _KIND_VARIED * 16 + kind, index)


def _vary_background(varied: np.random.Generator | None, background: np.ndarray, stuff: bool) -> np.ndarray:
    """A varied sample's background: one of the varied families with clutter (named stuff is kept as drawn)."""
    if varied is None or stuff:
        return background
    from zutiscli.shapes.variety import add_clutter, varied_background

    background = varied_background(varied, background.shape[0])
    add_clutter(varied, background)
    return background


def _vary_light(varied: np.random.Generator | None, image: np.ndarray) -> np.ndarray:
    if varied is None:
        return image
    from zutiscli.shapes.variety import adjust_light

    return adjust_light(varied, image)


def pile_sample(
    seed: int, index: int, size: int = 64, split: str = "train", stuff: bool = False, varied: bool = False,
) -> Sample:
    """An unlabelled, ImageNet-like image of the shapes world.

    About 80% of images hold one object (70% of those large and near the centre, the rest small
    and anywhere), 12% two objects (35% of them of the same shape), 8% none. All 36
    colour--shape pairs occur.

    Args:
        seed, index: non-negative ints; the sample is a pure function of them (and ``size``).
        size: image side in pixels (>= 16).
        split: ``"train"`` or ``"shift"`` (the same objects over held-out backgrounds, relit).
        stuff: draw the objects over named stuff (:func:`zutiscli.shapes.stuff.stuff_background`);
            the objects are the same as without it.
        varied: draw the objects over one of the varied training backgrounds with clutter, and
            change the lighting (:mod:`zutiscli.shapes.variety`; over named stuff, the lighting
            alone); train split only. The objects are the same as without it.

    Returns:
        A :class:`Sample` with ``caption=None``; ``objects``/``masks`` (and with ``stuff=True`` the
        ``stuff`` labels) are the hidden ground truth.
    """
    _check_size(size)
    _check_split(split)
    vary = _varied(seed, _KIND_PILE, index, varied, split)
    rng = _rng(seed, _KIND_PILE, index)
    background = _background(rng, size)  # drawn in every case: the objects do not depend on the background
    shift = _shifted(seed, _KIND_PILE, index, split)
    stuff_labels = None
    if stuff:
        from zutiscli.shapes.stuff import stuff_background

        background, stuff_labels = stuff_background(_rng(seed, _KIND_STUFF * 16 + _KIND_PILE, index), size,
                                                    shift is not None)
    elif shift is not None:
        from zutiscli.shapes.shift import shift_background

        background = shift_background(shift, size)
    background = _vary_background(vary, background, stuff)
    layout = _pile_layout(rng, size, allowed_pairs(frozenset()))
    image = _vary_light(vary, _render(rng, background, layout))
    if shift is not None:
        from zutiscli.shapes.shift import relight

        image = relight(shift, image)
    return Sample(image, list(layout.objects), layout.masks(), None, stuff_labels)


def scene_sample(
    seed: int, index: int, size: int = 128, min_objects: int = 1, max_objects: int = 8, stuff: bool = False,
    split: str = "train", varied: bool = False,
) -> Sample:
    """An evaluation scene with several, possibly occluding, objects.

    The object count is uniform in ``[min_objects, max_objects]`` (fewer only if placement is
    impossible, in which case a ValueError is raised when below ``min_objects``). Half of the
    scenes draw all objects from one or two shapes (each such shape keeping one colour half of
    the time), so repeated instances of a class are common. Overlaps are allowed, but every
    object keeps ``>= MIN_VISIBLE_FRACTION`` of its nominal area and ``>= MIN_VISIBLE_PIXELS``
    pixels visible: a candidate that would break this (for itself or an earlier object) is
    re-drawn at a new position (and gradually smaller size). All 36 colour--shape pairs occur.

    Args:
        seed, index: non-negative ints; the sample is a pure function of all arguments.
        size: image side in pixels (>= 16).
        min_objects, max_objects: bounds on the object count, ``0 <= min <= max``.
        stuff: draw the objects over named stuff (:func:`zutiscli.shapes.stuff.stuff_background`)
            instead of an unnamed texture; the objects are the same either way.
        split: ``"train"`` or ``"shift"``: the same objects over backgrounds (or stuff looks) no
            training uses, relit (:mod:`zutiscli.shapes.shift`).
        varied: the same objects over a varied training background with clutter, relit mildly
            (:mod:`zutiscli.shapes.variety`; over named stuff, the lighting alone); train split only.

    Returns:
        A :class:`Sample` with ``caption=None`` (and ``stuff`` labels with ``stuff=True``).
    """
    _check_size(size)
    if not 0 <= min_objects <= max_objects:
        raise ValueError(f"need 0 <= min_objects <= max_objects, got {min_objects}, {max_objects}")
    _check_split(split)
    vary = _varied(seed, _KIND_SCENE, index, varied, split)
    rng = _rng(seed, _KIND_SCENE, index)
    background = _background(rng, size)  # drawn in every case: the objects do not depend on the background
    shift = _shifted(seed, _KIND_SCENE, index, split)
    stuff_labels = None
    if stuff:
        from zutiscli.shapes.stuff import stuff_background

        background, stuff_labels = stuff_background(_rng(seed, _KIND_STUFF, index), size, shift is not None)
    elif shift is not None:
        from zutiscli.shapes.shift import shift_background

        background = shift_background(shift, size)
    background = _vary_background(vary, background, stuff)
    n_target = int(rng.integers(min_objects, max_objects + 1))
    shapes: tuple[str, ...] = SHAPES
    fixed_colour: dict[str, str] = {}
    if rng.random() < 0.5:
        k = int(rng.integers(1, 3))
        shapes = tuple(SHAPES[i] for i in rng.choice(len(SHAPES), size=k, replace=False))
        for shape in shapes:
            if rng.random() < 0.5:
                fixed_colour[shape] = COLOURS[int(rng.integers(len(COLOURS)))]
    layout = _Layout(size)
    d_lo, d_hi = 0.14 * size, 0.42 * size
    failures = 0
    budget = 40 * n_target + 40
    while len(layout) < n_target and budget > 0:
        budget -= 1
        shape = shapes[int(rng.integers(len(shapes)))]
        colour = fixed_colour.get(shape) or COLOURS[int(rng.integers(len(COLOURS)))]
        lo = max(d_lo, min_diameter(shape))
        hi = max(lo, d_hi * 0.85 ** min(failures, 8))
        d = float(rng.uniform(lo, hi))
        margin = 0.3 * d / 2.0
        cx, cy = rng.uniform(margin, size - margin, 2)
        obj = ShapeObject(shape, colour, float(cx), float(cy), d, _random_rotation(rng, shape))
        if layout.try_add(obj):
            failures = 0
        else:
            failures += 1
    if len(layout) < min_objects:
        raise ValueError(
            f"could not place {min_objects} objects in a {size}x{size} scene; "
            "use a larger size or fewer objects"
        )
    image = _vary_light(vary, _render(rng, background, layout))
    if shift is not None:
        from zutiscli.shapes.shift import relight

        image = relight(shift, image)
    return Sample(image, list(layout.objects), layout.masks(), None, stuff_labels)


# Caption templates. Fields: {c} colour, {s} shape, {z} size word, {p} position phrase.
_SINGLE_TEMPLATES: tuple[str, ...] = (
    "a photo of a {c} {s}",
    "a {s}",
    "a {c} shape",
    "there is a {s} in the scene",
    "a {c} {s} on a textured background",
    "a {z} {c} {s}",
    "a picture of a {s}",
    "a {c} object",
    "an image containing a {c} {s}",
    "a {s} shape",
    "something {c}",
    "a rendering of a {c} {s}",
    "a single {s}",
    "one {c} {s}",
    "the {s} is {c}",
    "a {c} {s} {p}",
    "{s}",
    "a drawing of a {c} {s}",
    "a {z} {s}",
    "the colour {c}",
)
_PAIR_TEMPLATES: tuple[str, ...] = (
    "a {c1} {s1} and a {c2} {s2}",
    "a {s1} and a {s2}",
    "a {c1} shape and a {c2} shape",
    "two shapes: a {s1} and a {s2}",
    "a photo of a {c1} {s1} next to a {c2} {s2}",
)
_EMPTY_TEMPLATES: tuple[str, ...] = (
    "an empty background",
    "nothing",
    "a textured background with no objects",
    "no shapes, just texture",
    "an empty scene",
    "a blank textured pattern",
)


def _size_word(obj: ShapeObject, image_size: int) -> str:
    rel = obj.size / image_size
    return "small" if rel < 0.4 else ("large" if rel > 0.6 else "medium-sized")


def _position_phrase(obj: ShapeObject, image_size: int) -> str:
    col = min(2, int(3 * obj.cx / image_size))
    row = min(2, int(3 * obj.cy / image_size))
    vertical = ("top", "", "bottom")[row]
    horizontal = ("left", "", "right")[col]
    if not vertical and not horizontal:
        return "in the centre"
    if vertical and horizontal:
        return f"in the {vertical} {horizontal} corner"
    return f"at the {vertical or horizontal}"


def _caption(rng: np.random.Generator, objects: list[ShapeObject], image_size: int) -> str:
    """A caption naming (some attributes of) exactly the objects present."""
    if not objects:
        return _EMPTY_TEMPLATES[int(rng.integers(len(_EMPTY_TEMPLATES)))]
    if len(objects) == 1:
        obj = objects[0]
        template = _SINGLE_TEMPLATES[int(rng.integers(len(_SINGLE_TEMPLATES)))]
        return template.format(
            c=obj.colour, s=obj.shape, z=_size_word(obj, image_size), p=_position_phrase(obj, image_size)
        )
    a, b = objects[0], objects[1]
    if rng.random() < 0.5:
        a, b = b, a
    template = _PAIR_TEMPLATES[int(rng.integers(len(_PAIR_TEMPLATES)))]
    if a.shape == b.shape and template in (_PAIR_TEMPLATES[1], _PAIR_TEMPLATES[3]):
        return f"two {plural(a.shape)}"
    if a.colour == b.colour and template == _PAIR_TEMPLATES[2]:
        return f"two {a.colour} shapes"
    return template.format(c1=a.colour, s1=a.shape, c2=b.colour, s2=b.shape)


def caption_sample(
    seed: int,
    index: int,
    size: int = 64,
    held_out: frozenset[tuple[str, str]] = DEFAULT_HELD_OUT,
    stuff: bool = False,
    varied: bool = False,
) -> Sample:
    """An image--caption pair for contrastive training.

    Images follow the pile distribution (~80% one object, ~12% two, ~8% none) but only with
    colour--shape pairs outside ``held_out``; captions are drawn from varied templates naming the
    colour, the shape or both of the object(s) present (never an absent shape or colour), or
    saying the image is empty.

    Args:
        seed, index: non-negative ints; the sample is a pure function of all arguments.
        size: image side in pixels (>= 16).
        held_out: ``(colour, shape)`` pairs that are never drawn (hence never captioned).
        stuff: draw the objects over named stuff; the caption then names the objects alone, the
            objects and the stuff under the largest one ("a red star on sand"), or the stuff alone
            ("the sky above water"), a third of the time each (the stuff alone when there is no object).
        varied: the same objects and caption over a varied training background with clutter,
            relit mildly (:mod:`zutiscli.shapes.variety`; over named stuff, the lighting alone).

    Returns:
        A :class:`Sample` whose ``caption`` is a lower-case English string.
    """
    _check_size(size)
    pairs = allowed_pairs(held_out)
    if not pairs:
        raise ValueError("held_out excludes every colour-shape pair")
    vary = _varied(seed, _KIND_CAPTION, index, varied)
    rng = _rng(seed, _KIND_CAPTION, index)
    background = _background(rng, size)
    layout = _pile_layout(rng, size, pairs)
    caption = _caption(rng, layout.objects, size)
    stuff_labels = None
    if stuff:
        from zutiscli.shapes.stuff import describe_stuff, stuff_background, stuff_under

        own = _rng(seed, _KIND_STUFF * 16 + _KIND_CAPTION, index)  # the objects and their caption stay as they are
        background, stuff_labels = stuff_background(own, size)
        choice = 2 if not layout.objects else int(own.integers(3))
        caption = caption.replace(" on a textured background", "")
        if choice == 1:
            largest = max(layout.objects, key=lambda obj: obj.size)
            caption = f"{caption} {stuff_under(stuff_labels, largest.cx, largest.cy)}"
        elif choice == 2:
            caption = describe_stuff(own, stuff_labels)
    background = _vary_background(vary, background, stuff)
    image = _vary_light(vary, _render(rng, background, layout))
    return Sample(image, list(layout.objects), layout.masks(), caption, stuff_labels)
