"""Semantic label maps as palette PNGs (PASCAL VOC style): pixel value = class index, 255 = ignore.

Any image viewer shows them in colour, and every segmentation toolbox reads the indices back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from zutiscli.artefacts.atomic import atomic_path
from zutiscli.errors import ArtefactError

IGNORE_INDEX = 255


def voc_palette(entries: int = 256) -> list[int]:
    """The PASCAL VOC colour map as a flat ``[r0, g0, b0, r1, ...]`` list of ``3 * entries`` ints.

    Colour ``i`` spreads the bits of ``i`` over the high bits of the three channels, so
    neighbouring class indices get clearly different colours; index 0 is black, 255 is near white.
    """
    palette = []
    for index in range(entries):
        r = g = b = 0
        value = index
        for shift in range(7, -1, -1):
            r |= ((value >> 0) & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        palette.extend((r, g, b))
    return palette


def write_label_png(path: str | Path, labels: np.ndarray) -> Path:
    """Write a ``(H, W)`` array of class indices (0..255) as a palette PNG, atomically."""
    if labels.ndim != 2:
        raise ValueError(f"labels must be (H, W), got shape {tuple(labels.shape)}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError("class indices must lie in 0..255")
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(voc_palette())
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", optimize=False)
    return Path(path)


def read_label_png(path: str | Path) -> np.ndarray:
    """Read a label PNG back to a ``(H, W)`` uint8 array of class indices.

    Palette (``P``) and greyscale (``L``) PNGs are accepted; anything else is refused, since an RGB
    rendering of labels cannot be turned back into indices reliably.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            if image.mode not in ("P", "L"):
                raise ArtefactError(
                    f"{path}: is a {image.mode} image; label maps must be palette or greyscale PNGs of class indices"
                )
            return np.array(image, dtype=np.uint8)
    except FileNotFoundError:
        raise ArtefactError(f"{path}: no such label map") from None
    except OSError as exc:
        raise ArtefactError(f"{path}: cannot be read as a label PNG ({exc})") from None
