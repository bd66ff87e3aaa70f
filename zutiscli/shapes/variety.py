"""Varied training backgrounds of the shapes world: many looks, clutter and lighting, none of the shift split's.

The default world (:func:`zutiscli.shapes.world._background`) paints every object over one narrow
family: a muted colour with soft blobs, soft stripes and fine noise. A model trained only there
takes any busy or saturated background for an object. The varied draw (``varied=True`` in the
samplers, ``zutis synth ... --varied``, ``zutis synth train-clip --varied``) paints the same objects
over one of :data:`FAMILIES` -- flat colours, gradients, soft stripes, thin grids, smooth noise at
several scales and saturations, blurred blobs, high-contrast mosaics and scribbles -- adds clutter
(irregular coloured blobs that are not shapes) and changes the lighting (brightness and contrast).

None of this is the shift split's (:mod:`zutiscli.shapes.shift`: checkerboards, plaids, zigzags,
blocky multi-scale colour noise, hard colour bands; gamma and colour casts): a model trained on the
varied draw is still measured on looks it never saw. Everything is a pure function of the generator
given; images are float32 RGB on the 8-bit scale.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np

from zutiscli.shapes.noise import smooth_field

FAMILIES: tuple[str, ...] = ("flat", "gradient", "stripes", "grid", "noise", "blobs", "mosaic", "scribble")


def _colour(rng: np.random.Generator, saturation: tuple[float, float] = (0.0, 1.0),
            value: tuple[float, float] = (0.1, 0.95)) -> np.ndarray:
    """``(3,)`` float32 RGB on the 8-bit scale of a random hue in the given saturation and value ranges."""
    rgb = colorsys.hsv_to_rgb(float(rng.random()), float(rng.uniform(*saturation)), float(rng.uniform(*value)))
    return np.asarray(rgb, dtype=np.float32) * np.float32(255.0)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = np.arange(size, dtype=np.float32) + 0.5
    return np.broadcast_to(c[None, :], (size, size)), np.broadcast_to(c[:, None], (size, size))


def _flat(rng: np.random.Generator, size: int) -> np.ndarray:
    return np.broadcast_to(_colour(rng), (size, size, 3)).copy()


def _gradient(rng: np.random.Generator, size: int) -> np.ndarray:
    x, y = _grid(size)
    if rng.random() < 0.5:  # linear, any direction
        angle = float(rng.uniform(0.0, 2.0 * math.pi))
        t = (x - size / 2) * math.cos(angle) + (y - size / 2) * math.sin(angle)
        t = t / (size * 0.75) + 0.5
    else:  # radial, from a random centre
        cx, cy = rng.uniform(0.0, size, 2)
        t = np.hypot(x - cx, y - cy) / (size * float(rng.uniform(0.6, 1.4)))
    t = np.clip(t, 0.0, 1.0).astype(np.float32)[..., None]
    return _colour(rng) * (1.0 - t) + _colour(rng) * t


def _stripes(rng: np.random.Generator, size: int) -> np.ndarray:
    """Regular soft stripes of two colours (sinusoidal profile), any direction and period."""
    x, y = _grid(size)
    angle = float(rng.uniform(0.0, math.pi))
    period = float(rng.uniform(0.05, 0.35)) * size
    wave = 0.5 + 0.5 * np.sin((x * math.cos(angle) + y * math.sin(angle)) * (2.0 * math.pi / period))
    wave = wave.astype(np.float32)[..., None]
    return _colour(rng) * (1.0 - wave) + _colour(rng) * wave


def _thin_grid(rng: np.random.Generator, size: int) -> np.ndarray:
    """Thin axis-aligned lines (1-2 px) of one colour on a flat one: graph paper, tiles, a fence."""
    x, y = _grid(size)
    img = _flat(rng, size)
    period = float(rng.uniform(0.08, 0.3)) * size
    width = float(rng.uniform(0.8, 2.0))
    offset = rng.uniform(0.0, period, 2)
    lines = ((x + offset[0]) % period < width) | ((y + offset[1]) % period < width)
    img[lines] = _colour(rng)
    return img


def _noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth value noise at one scale (2-8 cells a side), per channel, of a random saturation.

    Smooth at every scale: the shift split's colour noise is blocky and summed over scales."""
    cells = int(rng.choice((2, 3, 5, 8)))
    img = np.stack([smooth_field(rng, size, cells) for _ in range(3)], axis=-1) * np.float32(255.0)
    grey = img.mean(axis=2, keepdims=True)
    return grey + (img - grey) * np.float32(rng.uniform(0.0, 1.5))


def _blobs(rng: np.random.Generator, size: int) -> np.ndarray:
    """Blurred Gaussian blobs of several colours over a base colour."""
    x, y = _grid(size)
    img = _flat(rng, size)
    for _ in range(int(rng.integers(2, 7))):
        cx, cy = rng.uniform(0.0, size, 2)
        sigma = float(rng.uniform(0.08, 0.3)) * size
        weight = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2.0 * sigma * sigma)).astype(np.float32)[..., None]
        img = img * (1.0 - weight) + _colour(rng) * weight
    return img


def _mosaic(rng: np.random.Generator, size: int) -> np.ndarray:
    """Voronoi cells of strong, contrasting colours: a busy, high-contrast pattern."""
    x, y = _grid(size)
    seeds = rng.uniform(0.0, size, (int(rng.integers(12, 48)), 2)).astype(np.float32)
    cell = np.argmin((x[None] - seeds[:, 0, None, None]) ** 2 + (y[None] - seeds[:, 1, None, None]) ** 2, axis=0)
    colours = np.stack([_colour(rng, (0.3, 1.0), (0.2, 1.0)) for _ in range(len(seeds))])
    return colours[cell]


def _scribble(rng: np.random.Generator, size: int) -> np.ndarray:
    """Random thick polyline strokes of several colours over a base colour."""
    x, y = _grid(size)
    img = _flat(rng, size)
    for _ in range(int(rng.integers(3, 10))):
        points = rng.uniform(-0.1 * size, 1.1 * size, (int(rng.integers(2, 5)), 2))
        width = float(rng.uniform(0.01, 0.05)) * size + 0.6
        near = np.zeros((size, size), dtype=bool)
        for (ax, ay), (bx, by) in zip(points[:-1], points[1:]):
            dx, dy = bx - ax, by - ay
            t = np.clip(((x - ax) * dx + (y - ay) * dy) / max(dx * dx + dy * dy, 1e-6), 0.0, 1.0)
            near |= np.hypot(x - ax - t * dx, y - ay - t * dy) < width
        img[near] = _colour(rng, (0.2, 1.0))
    return img


_FAMILY = {"flat": _flat, "gradient": _gradient, "stripes": _stripes, "grid": _thin_grid, "noise": _noise,
           "blobs": _blobs, "mosaic": _mosaic, "scribble": _scribble}


def varied_background(rng: np.random.Generator, size: int, family: str | None = None) -> np.ndarray:
    """``(size, size, 3)`` float32 RGB in [0, 255] of one of :data:`FAMILIES` (random unless ``family``), with grain."""
    if family is None:
        family = FAMILIES[int(rng.integers(len(FAMILIES)))]
    elif family not in _FAMILY:
        raise ValueError(f"unknown background family {family!r}; choose one of {', '.join(FAMILIES)}")
    img = _FAMILY[family](rng, size).astype(np.float32)
    img += rng.standard_normal((size, size, 1), dtype=np.float32) * np.float32(rng.uniform(0.0, 6.0))
    return np.clip(img, 0.0, 255.0)


def add_clutter(rng: np.random.Generator, img: np.ndarray, count: int | None = None) -> int:
    """Paint irregular coloured blobs (not any of the world's shapes) into ``img`` in place.

    Args:
        rng: the generator.
        img: ``(size, size, 3)`` float32 RGB background, before any object is drawn.
        count: blobs to paint (default: 0-3 at random).

    Returns:
        The number of blobs painted. Each is a thresholded smooth-noise field inside a random box
        of 8-30% of the side, soft-edged, in a random colour (often as saturated as an object's).
    """
    size = img.shape[0]
    if count is None:
        count = int(rng.integers(0, 4))
    for _ in range(count):
        side = max(4, int(float(rng.uniform(0.08, 0.3)) * size))
        x0, y0 = (int(v) for v in rng.integers(0, max(1, size - side), 2))
        field = smooth_field(rng, side, 3)
        u = (np.arange(side, dtype=np.float32) + 0.5) / side - 0.5
        field = field - 2.0 * (u[None, :] ** 2 + u[:, None] ** 2)  # fade out toward the box's edges
        alpha = np.clip((field - 0.2) * 6.0, 0.0, 1.0)[..., None]
        region = img[y0:y0 + side, x0:x0 + side]
        region += alpha[: region.shape[0], : region.shape[1]] * (_colour(rng, (0.2, 1.0), (0.3, 1.0)) - region)
    return count


def adjust_light(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """A finished ``(H, W, 3)`` uint8 image under other lighting: brightness and contrast only.

    Milder than the shift split's :func:`zutiscli.shapes.shift.relight` and without its gamma and
    colour cast: contrast x0.75-1.25 about mid-grey, brightness +-0.1 of the range.
    """
    x = image.astype(np.float32) / np.float32(255.0)
    x = (x - 0.5) * np.float32(rng.uniform(0.75, 1.25)) + 0.5 + np.float32(rng.uniform(-0.1, 0.1))
    return np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)
