"""Square crops around object masks, the pixels outside each mask painted over: what a CLIP image
encoder is shown to name one object of a scene (mask-crop classification, as in ZegFormer, OVSeg
and MaskCLIP+'s proposal classification); or the whole image with the pixels outside each mask
painted over (:func:`masked_square_images`, MaskDistill's masked image).

Images are ``(3, H, W)`` float tensors (any range: colours are not rescaled); masks ``(N, H, W)``
bool; sizes in pixels.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["colour_jittered", "masked_square_crops", "masked_square_images"]

_CHUNK = 16


def _check_image_and_masks(image: torch.Tensor, masks: torch.Tensor) -> None:
    """``ValueError`` unless ``image`` is ``(3, H, W)`` and ``masks`` ``(N, H, W)`` of the same size."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be (3, H, W), got shape {tuple(image.shape)}")
    if masks.ndim != 3 or masks.shape[1:] != image.shape[1:]:
        raise ValueError(f"masks must be (N, H, W) with the image's size, got {tuple(masks.shape)} for "
                         f"an image of {tuple(image.shape)}")


def masked_square_crops(
    image: torch.Tensor,
    masks: torch.Tensor,
    size: int,
    *,
    margin: float = 0.2,
    fill: Sequence[float] = (0.0, 0.0, 0.0),
) -> torch.Tensor:
    """One square crop per mask, centred on the mask's box, resampled bilinearly to ``size``.

    The crop's side is the box's longer side times ``1 + 2 * margin``; pixels outside the mask,
    and any part of the crop beyond the image, take the colour ``fill`` (give the encoder's
    normalisation mean so that they become zeros after normalisation). An empty mask gives a
    crop of ``fill`` only.

    Args:
        image: ``(3, H, W)`` float.
        masks: ``(N, H, W)`` bool (or anything whose non-zeros mark the object), same ``H, W``.
        size: side of the returned crops, pixels.
        margin: context around the box on each side, as a fraction of the box's longer side.
        fill: ``(3,)`` colour of the painted-over pixels, in the units of ``image``.

    Returns:
        ``(N, 3, size, size)`` float, on the image's device, in its dtype.
    """
    _check_image_and_masks(image, masks)
    if size < 1 or margin < 0:
        raise ValueError(f"size must be >= 1 and margin >= 0, got {size} and {margin}")
    count, height, width = masks.shape
    dtype = image.dtype if image.is_floating_point() else torch.float32
    if count == 0:
        return torch.zeros(0, 3, size, size, dtype=dtype, device=image.device)
    binary = masks.to(device=image.device).bool()
    colour = torch.tensor(list(fill), dtype=dtype, device=image.device).view(1, 3, 1, 1)
    rows, cols = binary.any(dim=2), binary.any(dim=1)  # (N, H), (N, W)
    present = rows.any(dim=1)
    ys = torch.arange(height, device=image.device)
    xs = torch.arange(width, device=image.device)
    big = max(height, width) + 1
    y0 = torch.where(rows, ys, big).amin(dim=1).to(dtype)
    y1 = torch.where(rows, ys, -1).amax(dim=1).to(dtype) + 1
    x0 = torch.where(cols, xs, big).amin(dim=1).to(dtype)
    x1 = torch.where(cols, xs, -1).amax(dim=1).to(dtype) + 1
    side = torch.maximum(y1 - y0, x1 - x0) * (1 + 2 * margin)
    side = torch.where(present, side, torch.ones_like(side))
    centre_y = torch.where(present, (y0 + y1) / 2, torch.zeros_like(side))
    centre_x = torch.where(present, (x0 + x1) / 2, torch.zeros_like(side))
    # affine_grid maps the output's [-1, 1] square to input coordinates (align_corners=False:
    # -1 and 1 are the outer edges of the first and last pixel).
    theta = torch.zeros(count, 2, 3, dtype=dtype, device=image.device)
    theta[:, 0, 0] = side / width
    theta[:, 0, 2] = 2 * centre_x / width - 1
    theta[:, 1, 1] = side / height
    theta[:, 1, 2] = 2 * centre_y / height - 1
    grid = F.affine_grid(theta, [count, 3, size, size], align_corners=False)
    # Painted-over pixels are zero in (image - fill), and so is grid_sample's padding beyond the
    # image. Chunks bound the memory to _CHUNK full-size copies of the image.
    base = image.to(dtype)[None] - colour
    crops = [
        F.grid_sample(base * binary[start:start + _CHUNK, None].to(dtype), grid[start:start + _CHUNK],
                      mode="bilinear", padding_mode="zeros", align_corners=False)
        for start in range(0, count, _CHUNK)
    ]
    return torch.cat(crops) + colour


def masked_square_images(
    image: torch.Tensor,
    masks: torch.Tensor,
    size: int,
    *,
    fill: Sequence[float] = (0.0, 0.0, 0.0),
) -> torch.Tensor:
    """The whole image once per mask, the pixels outside the mask painted over, padded to a square
    and resized to ``size`` (MaskDistill's "masked image", whose [CLS] token names the object).

    The image is centred in a square of side ``max(H, W)`` whose margins take the colour ``fill``,
    as do the pixels outside each mask; image and masks are resized bilinearly with antialiasing,
    so a mask's edge blends into ``fill`` over about one output pixel. An empty mask gives ``fill``
    only.

    Args:
        image: ``(3, H, W)`` float.
        masks: ``(N, H, W)`` bool (or anything whose non-zeros mark the object), same ``H, W``.
        size: side of the returned images, pixels.
        fill: ``(3,)`` colour of the painted-over pixels, in the units of ``image``.

    Returns:
        ``(N, 3, size, size)`` float, on the image's device, in its dtype.
    """
    _check_image_and_masks(image, masks)
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    count, height, width = masks.shape
    dtype = image.dtype if image.is_floating_point() else torch.float32
    colour = torch.tensor(list(fill), dtype=dtype, device=image.device).view(1, 3, 1, 1)
    if count == 0:
        return torch.zeros(0, 3, size, size, dtype=dtype, device=image.device)
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    padding = (left, side - width - left, top, side - height - top)  # F.pad: last dim first

    def square(batch: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, size, size), zero margins
        padded = F.pad(batch, padding)
        return F.interpolate(padded, size=(size, size), mode="bilinear", align_corners=False, antialias=True)

    # (image - fill) * mask is zero outside the mask and in the margins: resized, then fill added back.
    base = square(image.to(dtype)[None] - colour)  # (1, 3, size, size)
    weights = torch.cat([square(masks[start:start + _CHUNK, None].to(device=image.device, dtype=dtype))
                         for start in range(0, count, _CHUNK)])  # (N, 1, size, size)
    return base * weights + colour


def colour_jittered(
    crops: torch.Tensor,
    generator: torch.Generator,
    *,
    hue: float = 0.5,
    hue_prob: float = 0.8,
    grayscale_prob: float = 0.2,
) -> torch.Tensor:
    """Each crop with its hue turned by a random amount (probability ``hue_prob``) and then made
    grey (probability ``grayscale_prob``): the same objects in colours they were not seen in.

    Args:
        crops: ``(N, 3, S, S)`` float RGB in [0, 1].
        generator: the source of every random choice (CPU); the same state gives the same views.
        hue: the largest turn, as a fraction of the colour circle (0.5 = any hue; the official
            copy-paste's ColorJitter uses 0.2).
        hue_prob, grayscale_prob: probabilities in [0, 1].

    Returns:
        ``(N, 3, S, S)`` float in [0, 1], on the crops' device.
    """
    import torchvision.transforms.functional as TF

    if crops.ndim != 4 or crops.shape[1] != 3:
        raise ValueError(f"crops must be (N, 3, S, S), got shape {tuple(crops.shape)}")
    if not 0 <= hue <= 0.5:
        raise ValueError(f"hue must lie in [0, 0.5], got {hue}")
    count = crops.shape[0]
    turn = (torch.rand(count, generator=generator) * 2 - 1) * hue
    turned = torch.rand(count, generator=generator) < hue_prob
    grey = torch.rand(count, generator=generator) < grayscale_prob
    out = crops.clone()
    for index in torch.nonzero(turned).flatten().tolist():  # adjust_hue takes one factor per call
        out[index] = TF.adjust_hue(out[index], float(turn[index]))
    if grey.any():
        out[grey] = TF.rgb_to_grayscale(out[grey], num_output_channels=3)
    return out
