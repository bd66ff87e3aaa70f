"""Named stuff for the shapes world: procedural materials filling regions with natural boundaries.

Six materials a caption can name (:data:`STUFF`): sky, grass, water, sand, brick and wood, each a
texture a person would recognise (a pale gradient with clouds, vertical blades, horizontal
ripples, grain with dunes, bricks in offset rows with mortar, planks with wavy grain). A scene's
background is one to three regions of them (:func:`stuff_background`), laid out as a view would
be: a horizon (sky above land or water), a shore (water beside sand or grass, along a wavy line),
a wall (brick or wood above the ground), or one material throughout.

Everything is a pure function of the generator it is given; colours are float32 RGB on the 8-bit
scale, ``(size, size, 3)``; region maps are ``(size, size)`` uint8 indices into :data:`STUFF`.
"""

from __future__ import annotations

import math

import numpy as np

from zutiscli.shapes.noise import smooth_field

STUFF: tuple[str, ...] = ("sky", "grass", "water", "sand", "brick", "wood")

#: The colours of each material, in the look every split but the shift split uses...
LOOK: dict[str, tuple[tuple[float, float, float], ...]] = {
    "sky": ((70, 130, 220), (175, 210, 240), (245, 245, 245)),  # zenith, horizon, clouds
    "grass": ((55, 140, 40),),
    "water": ((35, 95, 150), (225, 230, 235)),  # water, glints
    "sand": ((210, 185, 130),),
    "brick": ((165, 65, 45), (200, 195, 185)),  # brick, mortar
    "wood": ((150, 100, 55),),
}
#: ... and in the shift split's (the same names, never trained on): a sunset sky, dry grass, murky
#: water, wet sand, grey stone with dark mortar, pale painted wood.
SHIFT_LOOK: dict[str, tuple[tuple[float, float, float], ...]] = {
    "sky": ((90, 60, 140), (245, 150, 80), (250, 205, 175)),
    "grass": ((150, 145, 60),),
    "water": ((60, 95, 80), (190, 200, 170)),
    "sand": ((140, 115, 80),),
    "brick": ((120, 120, 125), (60, 60, 60)),
    "wood": ((200, 180, 150),),
}

#: Materials that can be above a horizon or a wall line, and those that can be the ground below.
_ABOVE = ("sky", "brick", "wood")
_GROUND = ("grass", "water", "sand")


def _curve(rng: np.random.Generator, size: int, amplitude: float) -> np.ndarray:
    """``(size,)`` float32: a smooth random line, zero-mean, about ``amplitude`` pixels high."""
    knots = rng.standard_normal(int(rng.integers(3, 7))).astype(np.float32)
    x = np.linspace(0.0, len(knots) - 1, size, dtype=np.float32)
    line = np.interp(x, np.arange(len(knots), dtype=np.float32), knots).astype(np.float32)
    line += np.float32(0.15) * np.sin(x * np.float32(rng.uniform(4, 9)) + np.float32(rng.uniform(0, 6.3)))
    return (line - line.mean()) * np.float32(amplitude)


def _jitter(rng: np.random.Generator, rgb: tuple[float, float, float], spread: float = 14.0) -> np.ndarray:
    return np.clip(np.asarray(rgb, np.float32) + rng.normal(0.0, spread, 3).astype(np.float32), 0, 255)


def _sky(rng: np.random.Generator, size: int, look) -> np.ndarray:
    top, low = _jitter(rng, look[0]), _jitter(rng, look[1])
    t = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
    img = np.broadcast_to(top + t * (low - top), (size, size, 3)).copy()
    clouds = smooth_field(rng, size, int(rng.integers(3, 6))) * 0.6 + smooth_field(rng, size, 9) * 0.4
    cover = np.clip((clouds - rng.uniform(0.5, 0.7)) * 4.0, 0.0, 1.0)[..., None]
    return img + cover * (np.asarray(look[2], np.float32) - img)


def _grass(rng: np.random.Generator, size: int, look) -> np.ndarray:
    base = _jitter(rng, look[0], 6)
    blades = rng.standard_normal((size // 3 + 1, size)).astype(np.float32)
    blades = np.repeat(blades, 3, axis=0)[:size]  # streaks three pixels tall: blades
    patches = smooth_field(rng, size, int(rng.integers(3, 7))) - 0.5
    shade = 1.0 + 0.12 * blades + 0.35 * patches
    img = base * shade[..., None]
    img[..., 1] += 10.0 * blades
    return img


def _water(rng: np.random.Generator, size: int, look) -> np.ndarray:
    base = _jitter(rng, look[0], 12)
    y = np.arange(size, dtype=np.float32)[:, None]
    x = np.arange(size, dtype=np.float32)[None, :]
    period = float(rng.uniform(3.0, 7.0))
    warp = smooth_field(rng, size, 4) * np.float32(rng.uniform(4, 12))
    ripples = np.sin((y + warp + 0.15 * np.sin(x / 5.0)) * np.float32(2 * math.pi / period))
    img = base * (1.0 + 0.12 * ripples)[..., None]
    glints = np.clip((ripples - 0.85) * 6.0, 0.0, 1.0) * (smooth_field(rng, size, 6) > 0.55)
    return img + glints[..., None] * (np.asarray(look[1], np.float32) - img)


def _sand(rng: np.random.Generator, size: int, look) -> np.ndarray:
    base = _jitter(rng, look[0], 5) * np.float32(rng.uniform(0.9, 1.05))
    dunes = smooth_field(rng, size, int(rng.integers(2, 5))) - 0.5
    grain = rng.standard_normal((size, size)).astype(np.float32)
    return base * (1.0 + 0.18 * dunes + 0.06 * grain)[..., None]


def _brick(rng: np.random.Generator, size: int, look) -> np.ndarray:
    brick, mortar = _jitter(rng, look[0], 12), _jitter(rng, look[1], 8)
    height = float(rng.uniform(0.07, 0.13)) * size
    width = height * float(rng.uniform(2.0, 2.6))
    joint = max(1.0, height * 0.14)
    y = np.arange(size, dtype=np.float32)[:, None] + np.float32(rng.uniform(0, height))
    x = np.arange(size, dtype=np.float32)[None, :] + np.float32(rng.uniform(0, width))
    row = np.floor(y / height)
    x = x + (row % 2) * np.float32(width / 2)
    in_joint = ((y % height) < joint) | ((x % width) < joint)
    tone = rng.normal(1.0, 0.08, (int(size / height) + 3, int(size / width) + 4)).astype(np.float32)
    column = np.floor(x / width).astype(np.int64) % tone.shape[1]
    shade = tone[row.astype(np.int64) % tone.shape[0], column]
    img = brick * shade[..., None]
    img = np.where(in_joint[..., None], mortar, img)
    return img * (1.0 + 0.05 * rng.standard_normal((size, size, 1)).astype(np.float32))


def _wood(rng: np.random.Generator, size: int, look) -> np.ndarray:
    base = _jitter(rng, look[0], 6) * np.float32(rng.uniform(0.85, 1.1))
    y = np.arange(size, dtype=np.float32)[:, None]
    x = np.arange(size, dtype=np.float32)[None, :]
    plank = float(rng.uniform(0.15, 0.3)) * size
    warp = smooth_field(rng, size, 3) * np.float32(rng.uniform(3, 8))
    grain = np.sin((y + warp + 0.03 * x) * np.float32(2 * math.pi / rng.uniform(2.5, 5.0)))
    seams = (y % plank) < 1.0
    tone = rng.normal(1.0, 0.07, int(size / plank) + 2).astype(np.float32)[(y // plank).astype(np.int64)]
    img = base * (tone * (1.0 + 0.1 * grain))[..., None]
    return np.where(seams[..., None], img * 0.6, img)


_MATERIALS = {"sky": _sky, "grass": _grass, "water": _water, "sand": _sand, "brick": _brick, "wood": _wood}


def material(name: str, rng: np.random.Generator, size: int, shift: bool = False) -> np.ndarray:
    """``(size, size, 3)`` float32 RGB in [0, 255]: the texture of material ``name`` (one of :data:`STUFF`),
    in its usual :data:`LOOK` or, with ``shift``, the shift split's :data:`SHIFT_LOOK`."""
    look = (SHIFT_LOOK if shift else LOOK)[name]
    return np.clip(_MATERIALS[name](rng, size, look), 0.0, 255.0).astype(np.float32)


def stuff_layout(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[str]]:
    """One to three regions with natural boundaries: ``(size, size)`` uint8 region numbers and their materials.

    Region ``k`` of the map is material ``names[k]``; every region is non-empty.
    """
    kind = rng.choice(["one", "horizon", "wall", "shore", "three"], p=[0.15, 0.3, 0.2, 0.15, 0.2])
    y = np.arange(size, dtype=np.float32)[:, None]
    x = np.arange(size, dtype=np.float32)[None, :]
    regions = np.zeros((size, size), dtype=np.uint8)
    if kind == "one":
        return regions, [str(rng.choice(STUFF))]
    if kind == "shore":  # water on one side of a wavy, slanted line, sand or grass on the other
        slope = float(rng.uniform(-0.8, 0.8))
        offset = float(rng.uniform(0.3, 0.7)) * size
        line = offset + slope * (x - size / 2) + _curve(rng, size, 0.05 * size)[None, :]
        regions[y > line] = 1
        names = ["water", str(rng.choice(("sand", "grass")))]
        if rng.random() < 0.5:
            names.reverse()
    else:
        top = "sky" if kind in ("horizon", "three") else str(rng.choice(("brick", "wood")))
        level = float(rng.uniform(0.3, 0.65)) * size
        wobble = 0.01 if kind == "wall" else 0.04
        horizon = level + _curve(rng, size, wobble * size)[None, :]
        regions[y > horizon] = 1
        ground = [str(g) for g in rng.permutation(_GROUND)]
        names = [top, ground[0]]
        if kind == "three":  # a shore below the horizon: the ground splits left and right
            split = float(rng.uniform(0.3, 0.7)) * size + _curve(rng, size, 0.06 * size)[:, None]
            regions[(y > horizon) & (x > split + 0.4 * (y - level))] = 2
            names.append(ground[1])
    present = [k for k in range(len(names)) if (regions == k).any()]
    if len(present) < len(names):  # a boundary drawn outside the image: renumber what is left
        remap = np.zeros(len(names), dtype=np.uint8)
        remap[present] = np.arange(len(present), dtype=np.uint8)
        regions, names = remap[regions], [names[k] for k in present]
    return regions, names


def stuff_background(rng: np.random.Generator, size: int, shift: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A background of named stuff: ``(size, size, 3)`` float32 RGB and ``(size, size)`` uint8 labels,
    ``1 + index in STUFF`` of the material at each pixel; ``shift`` draws the materials in their
    shift-split look."""
    regions, names = stuff_layout(rng, size)
    img = np.empty((size, size, 3), dtype=np.float32)
    labels = np.empty((size, size), dtype=np.uint8)
    for k, name in enumerate(names):
        where = regions == k
        img[where] = material(name, rng, size, shift)[where]
        labels[where] = STUFF.index(name) + 1
    light = np.float32(rng.uniform(0.8, 1.15))  # the scene's lighting
    return np.clip(img * light, 0.0, 255.0), labels


#: How a caption names each material, as a background and as the thing an object lies on or before.
_NOUN = {"sky": "the sky", "grass": "grass", "water": "water", "sand": "sand", "brick": "a brick wall",
         "wood": "wooden planks"}
_UNDER = {"sky": "against the sky", "grass": "on grass", "water": "on water", "sand": "on sand",
          "brick": "in front of a brick wall", "wood": "on wood"}


def describe_stuff(rng: np.random.Generator, labels: np.ndarray) -> str:
    """A phrase naming the stuff of a ``(H, W)`` label map (``1 + index in STUFF``) and how it lies:
    ``"the sky above sand"``, ``"water beside grass"``, ``"grass"``, ``"the sky, water and sand"``."""
    present = [int(v) for v in np.unique(labels) if v > 0]
    ys, xs = np.indices(labels.shape)
    centre = {v: (ys[labels == v].mean(), xs[labels == v].mean()) for v in present}
    present.sort(key=lambda v: centre[v][0])  # top first
    names = [_NOUN[STUFF[v - 1]] for v in present]
    if len(names) == 1:
        return names[0] if rng.random() < 0.6 else f"a view of {names[0]}"
    if len(names) == 2:
        (y0, x0), (y1, x1) = centre[present[0]], centre[present[1]]
        relation = "above" if abs(y1 - y0) >= abs(x1 - x0) else "beside"
        return f"{names[0]} {relation} {names[1]}"
    return f"{names[0]}, {names[1]} and {names[2]}"


def stuff_under(labels: np.ndarray, x: float, y: float) -> str:
    """``"on sand"``, ``"against the sky"``...: the stuff at pixel ``(x, y)`` as a phrase for an object there."""
    row = min(labels.shape[0] - 1, max(0, int(y)))
    col = min(labels.shape[1] - 1, max(0, int(x)))
    return _UNDER[STUFF[int(labels[row, col]) - 1]]
