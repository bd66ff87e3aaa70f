"""The shift split of the shapes world: backgrounds and lighting that no training ever sees.

Training data (``zutis synth pile``/``pairs``, the copy-paste scenes, shapes-clip's captions) draw
their backgrounds from :func:`zutiscli.shapes.world._background` (muted blobs, soft stripes, fine
noise) or from the named stuff in its usual look. The shift split keeps the same objects and
draws them over other families (:data:`FAMILIES`): saturated high-contrast checkerboards, plaids,
zigzags, multi-scale colour noise and hard-edged colour bands, and relights the finished image
(brightness, contrast, gamma, a colour cast). Its named stuff keeps its names but changes its
look (:data:`zutiscli.shapes.stuff.SHIFT_LOOK`: a sunset sky, dry grass, murky water, ...).

A quality figure that holds on the test split and falls on this one holds on one renderer only.
Everything is a pure function of the generator given; images are float32 RGB on the 8-bit scale.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np

FAMILIES: tuple[str, ...] = ("checker", "plaid", "zigzag", "colour-noise", "bands")


def _colour(rng: np.random.Generator, saturation: tuple[float, float] = (0.55, 1.0)) -> np.ndarray:
    rgb = colorsys.hsv_to_rgb(float(rng.random()), float(rng.uniform(*saturation)), float(rng.uniform(0.35, 1.0)))
    return np.asarray(rgb, dtype=np.float32) * np.float32(255.0)


def _coordinates(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres rotated by a random angle: ``(u, v)``, each ``(size, size)`` float32."""
    angle = float(rng.uniform(0.0, math.pi))
    c = np.arange(size, dtype=np.float32) + 0.5
    cos_a, sin_a = np.float32(math.cos(angle)), np.float32(math.sin(angle))
    return c[None, :] * cos_a + c[:, None] * sin_a, -c[None, :] * sin_a + c[:, None] * cos_a


def _checker(rng: np.random.Generator, size: int) -> np.ndarray:
    u, v = _coordinates(rng, size)
    cell = float(rng.uniform(0.04, 0.2)) * size
    odd = ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(bool)
    a, b = _colour(rng), _colour(rng)
    return np.where(odd[..., None], a, b)


def _plaid(rng: np.random.Generator, size: int) -> np.ndarray:
    u, v = _coordinates(rng, size)
    img = np.broadcast_to(_colour(rng, (0.2, 0.7)), (size, size, 3)).copy()
    for coordinate in (u, v):
        period = float(rng.uniform(0.06, 0.25)) * size
        width = period * float(rng.uniform(0.1, 0.4))
        line = (coordinate % period) < width
        img = np.where(line[..., None], 0.5 * img + 0.5 * _colour(rng), img)
    return img


def _zigzag(rng: np.random.Generator, size: int) -> np.ndarray:
    u, v = _coordinates(rng, size)
    period = float(rng.uniform(0.05, 0.18)) * size
    tooth = float(rng.uniform(0.5, 1.5)) * period
    wave = np.abs(((u / tooth) % 2.0) - 1.0) * period
    stripe = (((v + wave) / period) % 2.0) < 1.0
    return np.where(stripe[..., None], _colour(rng), _colour(rng))


def _colour_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    img = np.zeros((size, size, 3), dtype=np.float32)
    for cells in (2, 6, 18):  # several scales, strongly saturated
        grid = rng.random((cells + 1, cells + 1, 3)).astype(np.float32)
        index = np.minimum((np.arange(size) * cells // size), cells - 1)
        img += grid[index][:, index] * np.float32(255.0 / 3.0)
    grey = img.mean(axis=2, keepdims=True)
    return grey + (img - grey) * np.float32(rng.uniform(1.5, 2.5))


def _bands(rng: np.random.Generator, size: int) -> np.ndarray:
    u, _ = _coordinates(rng, size)
    edges = np.sort(rng.uniform(u.min(), u.max(), int(rng.integers(3, 9)))).astype(np.float32)
    colours = np.stack([_colour(rng) for _ in range(len(edges) + 1)])
    return colours[np.searchsorted(edges, u)]


_FAMILY = {"checker": _checker, "plaid": _plaid, "zigzag": _zigzag, "colour-noise": _colour_noise, "bands": _bands}


def shift_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """``(size, size, 3)`` float32 RGB in [0, 255] from one of :data:`FAMILIES`, with grain."""
    family = FAMILIES[int(rng.integers(len(FAMILIES)))]
    img = _FAMILY[family](rng, size).astype(np.float32)
    img += rng.standard_normal((size, size, 1), dtype=np.float32) * np.float32(rng.uniform(0.0, 8.0))
    return np.clip(img, 0.0, 255.0)


def relight(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Change a finished ``(H, W, 3)`` uint8 image's lighting: brightness, contrast, gamma and a colour cast."""
    x = image.astype(np.float32) / np.float32(255.0)
    x = (x - 0.5) * np.float32(rng.uniform(0.6, 1.4)) + 0.5 + np.float32(rng.uniform(-0.15, 0.15))
    x = np.clip(x, 0.0, 1.0) ** np.float32(rng.uniform(0.7, 1.4))
    x = x * (1.0 + rng.uniform(-0.15, 0.15, 3)).astype(np.float32)
    return np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)
