"""One feature per object mask: each image decoded once, its masks' views cut, embedded in batches.

A mask's *view* is what the encoder sees of it (:mod:`zutiscli.ops.crops`):

- ``"crop"``: a square crop around the mask, the outside painted ``fill`` (mask-crop CLIP);
- ``"image"``: the whole image squared, the outside of the mask painted ``fill`` (MaskDistill's
  masked image, for a [CLS] token).

Images are decoded, and their views cut, in ``workers`` threads of this process
(:func:`zutiscli.data.thread_batches.thread_items`), in order; the views are then embedded
``batch_size`` at a time, always the same views together whatever the number of workers, so the
features do not depend on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from zutiscli.errors import ImageLoadError, ZutisError

__all__ = ["VIEWS", "ImageMasks", "MaskFeatures", "embed_masks", "group_by_image", "image_views"]

#: What the encoder is shown of a mask (see the module docstring).
VIEWS = ("crop", "image")


@dataclass(frozen=True)
class ImageMasks:
    """The masks of one image file: its path, each mask's position in the caller's list, its RLE."""

    path: Path
    positions: tuple[int, ...]
    rles: tuple[dict[str, Any], ...]


@dataclass
class MaskFeatures:
    """What :func:`embed_masks` computed.

    Attributes:
        features: ``(M, D)`` float32, unit rows, ordered by ``positions``.
        positions: ``(M,)`` int64 ascending: the caller's position of each embedded mask.
        failed: ``(image path, reason)`` of each image that could not be read (its masks are left out).
    """

    features: np.ndarray
    positions: np.ndarray
    failed: list[tuple[str, str]] = field(default_factory=list)


def group_by_image(paths: Sequence[Path], rles: Sequence[dict[str, Any]]) -> list[ImageMasks]:
    """Masks grouped by image file, in the order images first appear (``paths[i]`` is mask ``i``'s image)."""
    groups: dict[Path, tuple[list[int], list[dict[str, Any]]]] = {}
    for position, (path, rle) in enumerate(zip(paths, rles)):
        positions, masks = groups.setdefault(Path(path), ([], []))
        positions.append(position)
        masks.append(rle)
    return [ImageMasks(path, tuple(positions), tuple(masks)) for path, (positions, masks) in groups.items()]


def image_views(path: Path, rles: Sequence[dict[str, Any]], size: int, view: str, fill: Sequence[float],
                margin: float = 0.2) -> torch.Tensor:
    """The views of one image's masks: ``(n, 3, size, size)`` float32 RGB in [0, 1] (CPU).

    Raises :class:`ImageLoadError` when the file cannot be decoded or its size is not its masks'.
    """
    from zutiscli.data.images import load_image
    from zutiscli.ops.crops import masked_square_crops, masked_square_images
    from zutiscli.ops.masks import decode_mask

    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
    image = load_image(path)
    height, width = (int(v) for v in rles[0]["size"])
    if (image.height, image.width) != (height, width):
        raise ImageLoadError(path, f"is {image.width} x {image.height} pixels but its masks are {width} x {height}; "
                                   f"the file changed after it was pseudo-labelled")
    pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float().div_(255)
    masks = torch.from_numpy(np.stack([decode_mask(rle) for rle in rles]))
    if view == "crop":
        return masked_square_crops(pixels, masks, size, margin=margin, fill=fill)
    return masked_square_images(pixels, masks, size, fill=fill)


class _Views:
    """Images -> ``(group index, views or None, failure reason or None)``, safe to index from threads."""

    def __init__(self, groups: Sequence[ImageMasks], size: int, view: str, fill: Sequence[float], margin: float):
        self.groups, self.size, self.view, self.fill, self.margin = groups, size, view, tuple(fill), margin

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        group = self.groups[index]
        try:
            return index, image_views(group.path, group.rles, self.size, self.view, self.fill, self.margin), None
        except ImageLoadError as exc:
            return index, None, exc.reason


@torch.no_grad()
def embed_masks(
    groups: Sequence[ImageMasks],
    encode: Callable[[torch.Tensor], torch.Tensor],
    *,
    size: int,
    view: str,
    fill: Sequence[float],
    margin: float = 0.2,
    batch_size: int = 64,
    workers: int = 0,
    progress: Callable[[int, int], None] | None = None,
    embedded: Callable[[Sequence[int], np.ndarray], None] | None = None,
) -> MaskFeatures:
    """Embed every mask of ``groups``, each image decoded once.

    Args:
        groups: the images and their masks (:func:`group_by_image`).
        encode: ``(B, 3, size, size)`` float32 RGB in [0, 1] (CPU) -> ``(B, D)`` features (any
            float dtype and device; they are L2-normalised here, in float32).
        size: side of the views, pixels.
        view: ``"crop"`` or ``"image"`` (module docstring).
        fill: ``(3,)`` RGB in [0, 1] painted outside the masks (e.g. the encoder's mean colour).
        margin: context around a mask's box in its crop, a fraction of the box's longer side.
        batch_size: views per call of ``encode``.
        workers: threads decoding images and cutting views (0: in this thread).
        progress: ``progress(masks done, masks in all)``.
        embedded: ``embedded(positions, features)`` after each batch: the caller's positions of the
            masks just embedded and their ``(n, D)`` float32 unit features (e.g. to commit them as
            the run goes; the batches are the same with it or without).

    Returns:
        :class:`MaskFeatures`.

    Raises:
        ZutisError: the encoder gave a non-finite feature.
    """
    from zutiscli.data.thread_batches import thread_items

    total = sum(len(group.positions) for group in groups)
    pending: list[torch.Tensor] = []  # views cut, not yet embedded (fewer than batch_size)
    positions: list[int] = []  # the caller's position of every view cut, in order
    chunks: list[torch.Tensor] = []  # features, in the same order
    failed: list[tuple[str, str]] = []
    done = 0

    def flush(count: int) -> None:
        nonlocal pending, done
        views = torch.cat(pending) if len(pending) > 1 else pending[0]
        batch, rest = views[:count], views[count:]
        features = F.normalize(encode(batch).float(), dim=-1).cpu()
        if not torch.isfinite(features).all():
            raise ZutisError("the model gave non-finite features (NaN or infinity); run with --precision fp32")
        chunks.append(features)
        if embedded is not None:
            embedded(positions[done:done + count], features.numpy())
        pending = [rest] if len(rest) else []
        done += count
        if progress is not None:
            progress(done, total)

    for index, views, reason in thread_items(_Views(groups, size, view, fill, margin), workers):
        group = groups[index]
        if views is None:
            failed.append((str(group.path), str(reason)))
            total -= len(group.positions)
            continue
        pending.append(views)
        positions.extend(group.positions)
        while sum(len(v) for v in pending) >= batch_size:
            flush(batch_size)
    if pending:
        flush(sum(len(v) for v in pending))
    if not chunks:
        return MaskFeatures(np.zeros((0, 0), dtype=np.float32), np.zeros(0, dtype=np.int64), failed)
    features = torch.cat(chunks).numpy()
    order = np.argsort(np.asarray(positions, dtype=np.int64), kind="stable")
    return MaskFeatures(np.ascontiguousarray(features[order]), np.asarray(positions, dtype=np.int64)[order], failed)
