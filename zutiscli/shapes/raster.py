"""Vectorised rasterisation of the shapes-world primitives (numpy only).

Geometry conventions (shared with :mod:`zutiscli.shapes.world`):

* Image coordinates are continuous pixel units: pixel ``(row i, col j)`` covers
  ``[j, j + 1) x [i, i + 1)`` and its centre is ``(x, y) = (j + 0.5, i + 0.5)``; ``y`` grows downwards.
* A shape is given by its centre ``(cx, cy)`` (pixels), ``size`` (pixels; the diameter of the
  shape's reference circle, i.e. ``r = size / 2`` is the unit of the shape's local frame) and
  ``rotation`` (degrees, counter-clockwise as seen on screen).
* In the local frame ``(u, v)`` (``v`` up, unit = ``r``), at rotation 0:
  circle = unit disc; ring = unit disc minus a disc of radius :data:`RING_INNER`;
  square = axis-aligned with half-side :data:`SQUARE_HALF`; triangle = equilateral, circumradius
  :data:`TRIANGLE_RADIUS`, apex up; star = five points, outer radius 1, inner radius
  :data:`STAR_INNER`, a point up; cross = plus sign, arms reaching 1, half-width
  :data:`CROSS_HALF_WIDTH`.
* Coverage is estimated with ``supersample x supersample`` point samples per pixel; the boolean
  mask of a shape is ``coverage >= 0.5``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

RASTER_SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring")

RING_INNER = 0.55
SQUARE_HALF = 0.8
TRIANGLE_RADIUS = 1.1
STAR_INNER = 0.45
CROSS_HALF_WIDTH = 0.3

_STAR_STEP = 2.0 * math.pi / 5.0

# Exact area of each shape in units of r**2 (r = size / 2).
UNIT_AREA: dict[str, float] = {
    "circle": math.pi,
    "ring": math.pi * (1.0 - RING_INNER**2),
    "square": 4.0 * SQUARE_HALF**2,
    "triangle": 3.0 * math.sqrt(3.0) / 4.0 * TRIANGLE_RADIUS**2,
    "star": 5.0 * 1.0 * STAR_INNER * math.sin(_STAR_STEP / 2.0),
    "cross": 8.0 * CROSS_HALF_WIDTH - 4.0 * CROSS_HALF_WIDTH**2,
}

# Radius of the smallest centred disc containing the shape, in units of r.
UNIT_EXTENT: dict[str, float] = {
    "circle": 1.0,
    "ring": 1.0,
    "square": SQUARE_HALF * math.sqrt(2.0),
    "triangle": TRIANGLE_RADIUS,
    "star": 1.0,
    "cross": math.hypot(1.0, CROSS_HALF_WIDTH),
}

# Smallest rotation (degrees) mapping the shape onto itself; 0 = every rotation does.
ROTATION_PERIOD: dict[str, float] = {
    "circle": 0.0,
    "ring": 0.0,
    "square": 90.0,
    "triangle": 120.0,
    "star": 72.0,
    "cross": 90.0,
}


def inside_unit_shape(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Point-in-shape test in the shape's local frame.

    Args:
        shape: one of :data:`RASTER_SHAPES`.
        u, v: float arrays of equal shape, local coordinates in units of ``r`` (``v`` points up).

    Returns:
        bool array of the same shape as ``u``: True where the point lies inside the shape.
    """
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "ring":
        rr = u * u + v * v
        return (rr <= 1.0) & (rr >= RING_INNER * RING_INNER)
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= SQUARE_HALF
    if shape == "triangle":
        # Edge outward normals at -90, 30 and 150 degrees; inradius = circumradius / 2.
        h = TRIANGLE_RADIUS / 2.0
        c = math.sqrt(3.0) / 2.0
        half_v = 0.5 * v
        return (v >= -h) & (c * u + half_v <= h) & (half_v - c * u <= h)
    if shape == "star":
        # Fold the angle (measured from +v) into [0, 36 deg] around a point; then test the
        # side of the edge from the outer vertex A=(1, 0) to the inner vertex B.
        theta = np.arctan2(u, v)
        alpha = np.mod(theta, _STAR_STEP)
        phi = np.minimum(alpha, _STAR_STEP - alpha)
        rho = np.sqrt(u * u + v * v)
        px = rho * np.cos(phi)
        py = rho * np.sin(phi)
        bx = STAR_INNER * math.cos(_STAR_STEP / 2.0)
        by = STAR_INNER * math.sin(_STAR_STEP / 2.0)
        # cross((B - A), (P - A)) >= 0 <=> P on the origin's side (origin gives by > 0).
        return (bx - 1.0) * py - by * (px - 1.0) >= 0.0
    if shape == "cross":
        au = np.abs(u)
        av = np.abs(v)
        return (np.maximum(au, av) <= 1.0) & (np.minimum(au, av) <= CROSS_HALF_WIDTH)
    raise ValueError(f"unknown shape {shape!r}; expected one of {RASTER_SHAPES}")


@dataclass(frozen=True)
class Footprint:
    """Rasterised coverage of one shape inside its (image-clipped) bounding box.

    Attributes:
        y0, x0: top-left pixel of the box in the image (int, rows / cols).
        coverage: ``(h, w)`` float32 in ``[0, 1]``: fraction of each pixel covered by the shape.
        height, width: size of the full image in pixels.
    """

    y0: int
    x0: int
    coverage: np.ndarray
    height: int
    width: int

    @property
    def box(self) -> tuple[slice, slice]:
        """``(rows, cols)`` slices of the box inside the full image."""
        h, w = self.coverage.shape
        return slice(self.y0, self.y0 + h), slice(self.x0, self.x0 + w)

    @property
    def mask_box(self) -> np.ndarray:
        """``(h, w)`` bool: pixels with coverage >= 0.5 (the object's mask inside the box)."""
        return self.coverage >= 0.5

    def full_mask(self) -> np.ndarray:
        """``(height, width)`` bool: the shape's mask at image resolution (ignores occlusion)."""
        out = np.zeros((self.height, self.width), dtype=bool)
        out[self.box] = self.mask_box
        return out


def rasterise(
    shape: str,
    cx: float,
    cy: float,
    size: float,
    rotation: float,
    height: int,
    width: int,
    supersample: int = 3,
) -> Footprint:
    """Rasterise one shape with supersampled coverage.

    Args:
        shape: one of :data:`RASTER_SHAPES`.
        cx, cy: centre in pixels (continuous; ``(0, 0)`` is the top-left corner of the image).
        size: reference diameter in pixels (``r = size / 2``), must be > 0.
        rotation: degrees, counter-clockwise on screen.
        height, width: image size in pixels.
        supersample: samples per pixel along each axis (``supersample**2`` in total), >= 1.

    Returns:
        A :class:`Footprint` whose box is the shape's bounding box clipped to the image
        (possibly empty, ``(0, 0)``, when the shape lies outside the image).
    """
    if size <= 0:
        raise ValueError(f"size must be > 0, got {size}")
    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    r = size / 2.0
    ext = UNIT_EXTENT[shape] * r + 1.0
    x0 = max(0, math.floor(cx - ext))
    x1 = min(width, math.ceil(cx + ext))
    y0 = max(0, math.floor(cy - ext))
    y1 = min(height, math.ceil(cy + ext))
    if x1 <= x0 or y1 <= y0:
        return Footprint(min(y0, height), min(x0, width), np.zeros((0, 0), np.float32), height, width)
    ss = supersample
    offsets = (np.arange(ss, dtype=np.float32) + 0.5) / ss
    xs = (np.arange(x0, x1, dtype=np.float32)[:, None] + offsets[None, :]).ravel() - np.float32(cx)
    # Local frame has v pointing up, so flip the image's y axis.
    ys = np.float32(cy) - (np.arange(y0, y1, dtype=np.float32)[:, None] + offsets[None, :]).ravel()
    theta = math.radians(rotation)
    c = np.float32(math.cos(theta) / r)
    s = np.float32(math.sin(theta) / r)
    u = (c * xs)[None, :] + (s * ys)[:, None]
    v = (c * ys)[:, None] - (s * xs)[None, :]
    inside = inside_unit_shape(shape, u, v)
    h, w = y1 - y0, x1 - x0
    counts = inside.reshape(h, ss, w, ss).sum(axis=(1, 3), dtype=np.int32)
    coverage = counts.astype(np.float32) / np.float32(ss * ss)
    return Footprint(y0, x0, coverage, height, width)
