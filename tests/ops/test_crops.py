"""Masked square crops around object masks (what the crop classifier shows CLIP)."""

from __future__ import annotations

import pytest
import torch

from zutiscli.ops.crops import colour_jittered, masked_square_crops

FILL = (0.25, 0.5, 0.75)


def scene() -> tuple[torch.Tensor, torch.Tensor]:
    """A 40 x 60 image: white, a red 10 x 10 square at rows 10-19, columns 30-39, and its mask."""
    image = torch.ones(3, 40, 60)
    image[:, 10:20, 30:40] = torch.tensor([1.0, 0.0, 0.0])[:, None, None]
    mask = torch.zeros(1, 40, 60, dtype=torch.bool)
    mask[0, 10:20, 30:40] = True
    return image, mask


def test_crop_is_centred_on_the_mask_and_paints_the_rest() -> None:
    image, mask = scene()
    # margin 0.5: the 10 px box becomes a 20 px crop; at 20 px out, one output pixel = one input pixel
    crop = masked_square_crops(image, mask, 20, margin=0.5, fill=FILL)
    assert crop.shape == (1, 3, 20, 20) and crop.dtype == torch.float32
    red = torch.tensor([1.0, 0.0, 0.0])
    torch.testing.assert_close(crop[0, :, 5:15, 5:15], red[:, None, None].expand(3, 10, 10))
    # the white image around the square is painted over: the border holds the fill colour only
    border = torch.cat([crop[0, :, :5].flatten(1), crop[0, :, 15:].flatten(1), crop[0, :, :, :5].flatten(1)], dim=1)
    torch.testing.assert_close(border, torch.tensor(FILL)[:, None].expand_as(border))


def test_crop_beyond_the_image_takes_the_fill_and_an_empty_mask_is_all_fill() -> None:
    image = torch.ones(3, 20, 20)
    masks = torch.zeros(2, 20, 20, dtype=torch.bool)
    masks[0, 0:4, 0:4] = True  # in the corner: most of the crop lies outside the image
    crops = masked_square_crops(image, masks, 16, margin=1.0, fill=FILL)
    fill = torch.tensor(FILL)[:, None, None]
    # the 12 px crop spans rows/columns -4..8: its first third is beyond the image, second third the mask
    torch.testing.assert_close(crops[0, :, :5, :], fill.expand(3, 5, 16))
    torch.testing.assert_close(crops[0, :, 6:10, 6:10], torch.ones(3, 4, 4))
    torch.testing.assert_close(crops[1], fill.expand(3, 16, 16))


def test_crops_of_many_masks_match_one_at_a_time() -> None:
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(3, 30, 50, generator=generator)
    masks = torch.rand(37, 30, 50, generator=generator) > 0.97  # more than one chunk, scattered boxes
    together = masked_square_crops(image, masks, 12)
    alone = torch.cat([masked_square_crops(image, masks[i:i + 1], 12) for i in range(37)])
    torch.testing.assert_close(together, alone)


def test_bad_shapes_are_refused() -> None:
    image, mask = scene()
    with pytest.raises(ValueError, match="masks must be"):
        masked_square_crops(image, mask[:, :20], 8)
    with pytest.raises(ValueError, match="image must be"):
        masked_square_crops(image[:1], mask, 8)
    assert masked_square_crops(image, mask[:0], 8).shape == (0, 3, 8, 8)


def test_colour_jittered_turns_hues_keeps_shapes_and_repeats_with_the_seed() -> None:
    crops = torch.zeros(64, 3, 8, 8)
    crops[:, 0, 2:6, 2:6] = 0.9  # a red square on black
    crops[:, 1:, 2:6, 2:6] = 0.1
    views = colour_jittered(crops, torch.Generator().manual_seed(0))
    again = colour_jittered(crops, torch.Generator().manual_seed(0))
    assert views.shape == crops.shape and torch.equal(views, again)
    assert views.min() >= 0 and views.max() <= 1
    assert torch.equal(views[:, :, :2], crops[:, :, :2])  # black stays black: only colours change
    inside = views[:, :, 3, 3]  # (64, 3) the square's colour in each view
    grey = (inside.max(1).values - inside.min(1).values) < 1e-3
    assert 4 <= int(grey.sum()) <= 24  # grey with probability 0.2
    red = (inside[:, 0] > 0.8) & (inside[:, 1] < 0.2) & (inside[:, 2] < 0.2)
    assert int(red.sum()) <= 24  # most views are no longer red
    brightest = inside.max(1).values
    assert torch.allclose(brightest[~grey], torch.full_like(brightest[~grey], 0.9), atol=1e-3)  # value kept
    assert torch.equal(colour_jittered(crops, torch.Generator().manual_seed(0), hue_prob=0.0, grayscale_prob=0.0),
                       crops)
    with pytest.raises(ValueError, match="hue"):
        colour_jittered(crops, torch.Generator(), hue=0.7)


def test_masked_square_image_is_the_whole_image_squared_with_the_outside_painted() -> None:
    from zutiscli.ops.crops import masked_square_images

    image, mask = scene()  # 40 x 60: padded to 60 x 60 (10 rows of fill above and below)
    empty = torch.zeros_like(mask)
    out = masked_square_images(image, torch.cat([mask, empty]), 60, fill=FILL)
    assert out.shape == (2, 3, 60, 60) and out.dtype == torch.float32
    red = torch.tensor([1.0, 0.0, 0.0])[:, None, None]
    fill = torch.tensor(FILL)[:, None, None]
    # at the input's own scale the square sits where it was, 10 rows down; everything else is fill
    torch.testing.assert_close(out[0, :, 20:30, 30:40], red.expand(3, 10, 10))
    expected = fill.expand(3, 60, 60).clone()
    expected[:, 20:30, 30:40] = red
    torch.testing.assert_close(out[0], expected)
    torch.testing.assert_close(out[1], fill.expand(3, 60, 60))  # an empty mask: fill only
    small = masked_square_images(image, mask, 30, fill=FILL)  # halved: a 5 px red square, antialiased edges
    torch.testing.assert_close(small[0, :, 11:14, 16:19], red.expand(3, 3, 3))
    assert masked_square_images(image, mask[:0], 8).shape == (0, 3, 8, 8)
    with pytest.raises(ValueError, match="masks must be"):
        masked_square_images(image, mask[:, :10], 8)
