"""Semantic label maps as palette PNGs (PASCAL VOC style): pixel value = class index, 255 = ignore.

Any image viewer shows them in colour, and every segmentation toolbox reads the indices back.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from PIL import Image

from zutiscli.artefacts.atomic import atomic_path
from zutiscli.errors import ArtefactError

IGNORE_INDEX = 255
IGNORE_8BIT = 255
IGNORE_16BIT = 65535


def voc_palette(entries: int = 256) -> list[int]:
    """The PASCAL VOC colour map as a flat ``[r0, g0, b0, r1, ...]`` list of ``3 * entries`` ints.

    Colour ``i`` spreads the bits of ``i`` over the high bits of the three channels, so
    neighbouring class indices get clearly different colours; index 0 is black, 255 is near white.
    """
    return list(_voc_palette(entries))


@functools.lru_cache(maxsize=4)
def _voc_palette(entries: int) -> tuple[int, ...]:
    """:func:`voc_palette`, computed once per size (~0.7 ms for 256 entries, once per PNG before)."""
    palette: list[int] = []
    for index in range(entries):
        r = g = b = 0
        value = index
        for shift in range(7, -1, -1):
            r |= ((value >> 0) & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        palette.extend((r, g, b))
    return tuple(palette)


def write_label_png(path: str | Path, labels: np.ndarray, *, fsync: bool = True) -> Path:
    """Write a ``(H, W)`` array of class indices (0..255) as a palette PNG, atomically (flushed to
    disk unless ``fsync`` is off: then the caller flushes, e.g. many files at once)."""
    if labels.ndim != 2:
        raise ValueError(f"labels must be (H, W), got shape {tuple(labels.shape)}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError("class indices must lie in 0..255")
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(voc_palette())
    with atomic_path(path, fsync=fsync) as tmp:
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


def read_label_map(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a label PNG as ``((H, W) int32 values, ignore value)``.

    8-bit palette/greyscale PNGs ignore 255; 16-bit greyscale PNGs ignore 65535. RGB images are
    refused (an ImageNet-S ``R + 256 G`` map must first go through ``zutis evaluate prepare``).
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            mode = image.mode
            if mode in ("P", "L"):
                return np.asarray(image, dtype=np.uint8).astype(np.int32), IGNORE_8BIT
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                return np.asarray(image).astype(np.int32), IGNORE_16BIT
            raise ArtefactError(
                f"{path}: is a {mode} image; label maps must be palette/greyscale PNGs of class indices "
                f"(8-bit, 255 = ignore, or 16-bit, 65535 = ignore); convert ImageNet-S RGB maps with "
                f"`zutis evaluate prepare imagenet-s919`"
            )
    except FileNotFoundError:
        raise ArtefactError(f"{path}: no such label map") from None
    except OSError as exc:
        raise ArtefactError(f"{path}: cannot be read as a label PNG ({exc})") from None


def write_label_map(path: str | Path, labels: np.ndarray, ignore: np.ndarray | None = None, *,
                    sixteen_bit: bool = False, fsync: bool = True) -> Path:
    """Write ``(H, W)`` class indices as an 8-bit palette PNG (255 = ignore) when they fit (and
    ``sixteen_bit`` is off), else as a 16-bit greyscale PNG (65535 = ignore). ``ignore`` is an
    optional ``(H, W)`` bool mask of ignored pixels."""
    labels = np.asarray(labels, dtype=np.int64)
    top = int(labels.max()) if labels.size else 0
    if top < IGNORE_8BIT and not sixteen_bit:
        out = labels.astype(np.uint8)
        if ignore is not None:
            out[ignore] = IGNORE_8BIT
        return write_label_png(path, out, fsync=fsync)
    if top >= IGNORE_16BIT:
        raise ValueError(f"class index {top} does not fit a 16-bit label map")
    out16 = labels.astype(np.uint16)
    if ignore is not None:
        out16[ignore] = IGNORE_16BIT
    with atomic_path(path, fsync=fsync) as tmp:
        Image.fromarray(out16).save(tmp, format="PNG")
    return Path(path)
