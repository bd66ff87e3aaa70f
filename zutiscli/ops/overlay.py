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

    canvas = image.astype(np.float32)  # a copy
    corners: dict[int, tuple[int, int]] = {}  # mask index -> (x, y) of its bounding box's top-left corner
    if masks is not None and len(masks):
        outline = max(1, round(min(image.shape[:2]) / 200))
        order = np.argsort(scores)[::-1]
        for rank, index in enumerate(order):
            rows, cols = np.flatnonzero(masks[index].any(axis=1)), np.flatnonzero(masks[index].any(axis=0))
            if not len(rows):
                continue
            corners[int(index)] = int(cols[0]), int(rows[0])
            # the mask's bounding box and `outline` pixels around it (within the image): the erosion
            # sees the same neighbourhood as on the whole image, where outside pixels count as 0
            window = (slice(max(0, rows[0] - outline), rows[-1] + 1 + outline),
                      slice(max(0, cols[0] - outline), cols[-1] + 1 + outline))
            mask, part = masks[index][window], canvas[window]
            colour = _PALETTE[rank % len(_PALETTE)]
            # 0.5 * pixel + 0.5 * colour inside the mask, computed over the window (float32, the same
            # values as on the masked pixels alone, without gathering and scattering them)
            blend = part * 0.5
            blend += 0.5 * colour
            np.copyto(part, blend, where=mask[..., None])
            edge = mask & ~_eroded(mask, outline)
            np.copyto(part, colour, where=edge[..., None])
    elif semantic is not None:
        # every labelled pixel blended with its class's colour in one pass (the regions are disjoint)
        labels_map = np.asarray(semantic)
        blend = canvas * 0.5
        blend += 0.5 * _PALETTE[(labels_map - 1) % len(_PALETTE)]
        np.copyto(canvas, blend, where=(labels_map > 0)[..., None])
    picture = Image.fromarray(np.clip(canvas, 0, 255, out=canvas).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    if masks is not None and len(masks):
        for rank, index in enumerate(np.argsort(scores)[::-1]):
            if int(index) in corners:
                text = f"{names[labels[index] - 1]} {scores[index]:.2f}"
                x, y = corners[int(index)][0], max(0, corners[int(index)][1] - 11)
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


def _eroded(mask: np.ndarray, iterations: int) -> np.ndarray:
    """``(H, W)`` bool mask eroded ``iterations`` times by the 4-neighbour cross, pixels outside
    counting as background: ``scipy.ndimage.binary_erosion(mask, iterations=iterations)``, in a
    tenth of its time."""
    eroded = mask.copy()
    for _ in range(iterations):
        inner = eroded.copy()
        inner[1:] &= eroded[:-1]
        inner[:-1] &= eroded[1:]
        inner[:, 1:] &= eroded[:, :-1]
        inner[:, :-1] &= eroded[:, 1:]
        inner[0] = inner[-1] = False
        inner[:, 0] = inner[:, -1] = False
        eroded = inner
    return eroded
