"""Contact sheets: square thumbnails tiled in a grid under a title line, for people to look at."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["tile_sheet"]

#: Pixels of the title band, of the caption band under each tile, and between tiles.
TITLE_HEIGHT = 26
CAPTION_HEIGHT = 15
GAP = 2
BACKGROUND = (24, 24, 24)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one fixed bitmap font
        return ImageFont.load_default()


def tile_sheet(tiles: np.ndarray, title: str, *, columns: int = 8,
               captions: Sequence[str] | None = None) -> np.ndarray:
    """Tile ``N`` square thumbnails row by row under ``title``, each with an optional caption.

    Args:
        tiles: ``(N, S, S, 3)`` uint8 RGB thumbnails, ``S`` pixels each, in reading order.
        title: one line drawn in the band above the grid.
        columns: tiles per row (fewer when ``N`` is smaller; at least one).
        captions: ``N`` short texts drawn under their tiles, or ``None`` for no caption band.

    Returns:
        ``(H, W, 3)`` uint8 RGB: ``W = c * S + (c + 1) * GAP`` with ``c = min(columns, N)``
        (one column for ``N = 0``), ``H = TITLE_HEIGHT + r * (S + caption + GAP) + GAP`` with
        ``r`` rows.
    """
    from PIL import Image, ImageDraw

    tiles = np.asarray(tiles)
    if tiles.ndim != 4 or tiles.shape[3] != 3 or tiles.shape[1] != tiles.shape[2] or tiles.dtype != np.uint8:
        raise ValueError(f"tiles must be (N, S, S, 3) uint8, got {tiles.shape} {tiles.dtype}")
    if columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    if captions is not None and len(captions) != len(tiles):
        raise ValueError(f"{len(captions)} captions for {len(tiles)} tiles")
    count, side = tiles.shape[0], tiles.shape[1]
    across = max(1, min(columns, count))
    rows = max(1, math.ceil(count / across))
    caption = CAPTION_HEIGHT if captions is not None else 0
    width = across * side + (across + 1) * GAP
    height = TITLE_HEIGHT + rows * (side + caption + GAP) + GAP
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    draw.text((GAP + 3, 5), title, fill=(255, 255, 255), font=_font(15))
    small = _font(11)
    for number in range(count):
        row, column = divmod(number, across)
        x = GAP + column * (side + GAP)
        y = TITLE_HEIGHT + row * (side + caption + GAP)
        sheet.paste(Image.fromarray(tiles[number]), (x, y))
        if captions is not None:
            draw.text((x + 2, y + side + 1), captions[number], fill=(210, 210, 210), font=small)
    return np.asarray(sheet)
