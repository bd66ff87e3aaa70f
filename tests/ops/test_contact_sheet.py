"""Contact sheets: thumbnails tiled under a title, each with its caption."""

import numpy as np
import pytest

from zutiscli.ops.contact_sheet import CAPTION_HEIGHT, GAP, TITLE_HEIGHT, tile_sheet


def test_tiles_land_in_reading_order_with_the_documented_size():
    tiles = np.zeros((5, 10, 10, 3), dtype=np.uint8)
    for number in range(5):
        tiles[number] = 40 * (number + 1)
    sheet = tile_sheet(tiles, "cluster 0: 5 masks", columns=3, captions=[str(n) for n in range(5)])
    rows = 2
    assert sheet.shape == (TITLE_HEIGHT + rows * (10 + CAPTION_HEIGHT + GAP) + GAP, 3 * 10 + 4 * GAP, 3)
    assert sheet.dtype == np.uint8
    for number in range(5):
        row, column = divmod(number, 3)
        x, y = GAP + column * (10 + GAP), TITLE_HEIGHT + row * (10 + CAPTION_HEIGHT + GAP)
        assert (sheet[y:y + 10, x:x + 10] == 40 * (number + 1)).all()
    assert sheet[:TITLE_HEIGHT].max() > 200  # the title is drawn in white


def test_no_captions_and_no_tiles():
    assert tile_sheet(np.zeros((2, 8, 8, 3), np.uint8), "t").shape == (TITLE_HEIGHT + 8 + 2 * GAP, 2 * 8 + 3 * GAP, 3)
    assert tile_sheet(np.zeros((0, 8, 8, 3), np.uint8), "empty").shape[0] > TITLE_HEIGHT
    with pytest.raises(ValueError, match="captions"):
        tile_sheet(np.zeros((2, 8, 8, 3), np.uint8), "t", captions=["one"])
    with pytest.raises(ValueError, match="uint8"):
        tile_sheet(np.zeros((2, 8, 8, 3), np.float32), "t")
