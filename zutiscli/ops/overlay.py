"""Overlays of predictions on their image, for people to look at."""

from __future__ import annotations

from typing import Sequence

import numpy as np

_PALETTE = np.array([
    [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180], [70, 240, 240],
    [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128], [220, 190, 255], [170, 110, 40],
    [255, 250, 200], [128, 0, 0], [170, 255, 195], [128, 128, 0], [255, 215, 180], [0, 0, 128], [128, 128, 128],
], dtype=np.float32)


def render_overlay(image: np.ndarray, names: Sequence[str], semantic: np.ndarray | None,
                   masks: np.ndarray | None, labels: np.ndarray | None, scores: np.ndarray | None) -> np.ndarray:
    """An RGB overlay: semantic classes tinted (or instance masks tinted and outlined, with labels)."""
    from PIL import Image, ImageDraw
    from scipy import ndimage

    canvas = image.astype(np.float32).copy()
    if masks is not None and len(masks):
        outline = max(1, round(min(image.shape[:2]) / 200))
        order = np.argsort(scores)[::-1]
        for rank, index in enumerate(order):
            mask = masks[index]
            colour = _PALETTE[rank % len(_PALETTE)]
            canvas[mask] = 0.5 * canvas[mask] + 0.5 * colour
            edge = mask & ~ndimage.binary_erosion(mask, iterations=outline)
            canvas[edge] = colour
    elif semantic is not None:
        for value in np.unique(semantic):
            if value > 0:
                region = semantic == value
                canvas[region] = 0.5 * canvas[region] + 0.5 * _PALETTE[(value - 1) % len(_PALETTE)]
    picture = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    if masks is not None and len(masks):
        for rank, index in enumerate(np.argsort(scores)[::-1]):
            ys, xs = np.nonzero(masks[index])
            if len(ys):
                text = f"{names[labels[index] - 1]} {scores[index]:.2f}"
                x, y = int(xs.min()), max(0, int(ys.min()) - 11)
                box = draw.textbbox((x, y), text)
                draw.rectangle(box, fill=tuple(int(c) for c in _PALETTE[rank % len(_PALETTE)]))
                draw.text((x, y), text, fill=(0, 0, 0))
    elif semantic is not None:
        present = [int(v) for v in np.unique(semantic) if v > 0]
        for line, value in enumerate(present):
            ys, xs = np.nonzero(semantic == value)
            cy, cx = int(np.median(ys)), int(np.median(xs))
            draw.text((cx, cy), names[value - 1], fill=(255, 255, 255), stroke_width=1, stroke_fill=(0, 0, 0))
    return np.asarray(picture)

