"""Features of stuff: a frozen encoder's dense features of the patches no object mask covers.

U2Seg labels "stuff" with STEGO, which clusters DINO's dense features. Here the stuff of a pile is
found the same way without a trained head: every image is fed to a frozen encoder at its own size
(sides rounded down to whole patches, as ``zutis predict`` feeds it; ``zutis cluster`` uses a CLIP's
patch tokens after some of its blocks, :meth:`zutiscli.models.clip.ClipBackbone.block_tokens`), and
the patches that the image's discovered masks leave uncovered (at most :data:`STUFF_COVER` of their
pixels under a mask) are the stuff samples; up to ``per_image`` of them per image, drawn with a
seed. :func:`zutiscli.ops.kmeans.spherical_kmeans` then makes them stuff clusters
(``zutis cluster --stuff-k``), and at predict time each pixel that no thing claims takes its
nearest stuff centroid (:class:`zutiscli.methods.predict.zutis.StuffProbe`).

Images are decoded in ``workers`` threads in order; inputs of one size are embedded ``batch_size``
at a time in that order, so the samples do not depend on the number of workers. Each image's draw
is seeded by its position, so the samples of images embedded by an earlier, interrupted run
(``done``) are those this run would draw; ``embedded`` hears of each batch's new samples, for the
caller to commit them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from zutiscli.errors import ImageLoadError, ZutisError

__all__ = ["STUFF_COVER", "ImageSamples", "StuffImage", "StuffSamples", "cell_shares", "stuff_samples"]

#: A patch is a stuff sample when at most this fraction of its pixels lie under a discovered mask.
STUFF_COVER = 0.1


@dataclass(frozen=True)
class StuffImage:
    """One image of the pile and the RLEs of the masks found in it (the things to leave out)."""

    path: Path
    rles: tuple[dict[str, Any], ...]


@dataclass
class StuffSamples:
    """What :func:`stuff_samples` drew.

    Attributes:
        features: ``(N, D)`` float32, unit rows: the sampled patches' embeddings.
        image: ``(N,)`` int64: the input image of each row (its position in the caller's list).
        cell: ``(N,)`` int64: the patch of each row, ``row * grid_width + column`` on its image's grid.
        grids: per input image its patch grid ``(rows, columns)`` (``(0, 0)`` when it could not be read).
        failed: ``(path, reason)`` of each image that could not be read.
    """

    features: np.ndarray
    image: np.ndarray
    cell: np.ndarray
    grids: list[tuple[int, int]]
    failed: list[tuple[str, str]] = field(default_factory=list)


def cell_shares(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """``(H, W)`` bool or float mask -> ``(rows, columns)`` float32: the share of each grid cell it covers
    (area interpolation: each cell averages the pixels that fall in it)."""
    tensor = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    return F.interpolate(tensor, size=grid, mode="area")[0, 0].numpy()


#: What one image gave: its patch grid ``(rows, columns)``, the ``(n,)`` int64 cells drawn and their
#: ``(n, D)`` float32 unit embeddings.
ImageSamples = tuple[tuple[int, int], np.ndarray, np.ndarray]


class _Inputs:
    """Item ``k`` -> ``(i, model input (3, h, w) or None, candidate cells or None, failure reason)``
    of image ``i = order[k]``; safe to index from threads."""

    def __init__(self, images: Sequence[StuffImage], order: Sequence[int], patch: int, max_size: int | None,
                 per_image: int, cover: float, seed: int):
        self.images, self.order, self.patch, self.max_size = images, order, patch, max_size
        self.per_image, self.cover, self.seed = per_image, cover, seed

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, number: int) -> tuple[int, torch.Tensor | None, np.ndarray | None, str | None]:
        from zutiscli.data.images import load_image
        from zutiscli.engine.predict import resize_for_model
        from zutiscli.ops.masks import decode_mask

        index = self.order[number]
        item = self.images[index]
        try:
            rgb = np.asarray(load_image(item.path))
        except ImageLoadError as exc:
            return index, None, None, exc.reason
        height, width = rgb.shape[:2]
        union = np.zeros((height, width), dtype=bool)
        for rle in item.rles:
            if tuple(int(v) for v in rle["size"]) != (height, width):
                return index, None, None, (f"is {width} x {height} pixels but its masks are {rle['size'][1]} x "
                                           f"{rle['size'][0]}; the file changed after it was pseudo-labelled")
            union |= decode_mask(rle).astype(bool)
        pixels = resize_for_model(rgb, self.max_size, self.patch)
        grid = (pixels.shape[1] // self.patch, pixels.shape[2] // self.patch)
        free = np.flatnonzero(cell_shares(union, grid).reshape(-1) <= self.cover)
        if len(free) > self.per_image:
            chosen = np.random.default_rng([self.seed, index]).choice(len(free), self.per_image, replace=False)
            free = free[np.sort(chosen)]
        return index, pixels, free.astype(np.int64), None


@torch.no_grad()
def stuff_samples(
    images: Sequence[StuffImage],
    encode: Callable[[torch.Tensor], torch.Tensor],
    *,
    patch: int,
    max_size: int | None = None,
    per_image: int = 64,
    cover: float = STUFF_COVER,
    seed: int = 0,
    batch_size: int = 32,
    workers: int = 0,
    progress: Callable[[int, int], None] | None = None,
    done: Mapping[int, ImageSamples] | None = None,
    embedded: Callable[[list[tuple[int, ImageSamples]]], None] | None = None,
) -> StuffSamples:
    """Embed the uncovered patches of every image (see the module docstring).

    Args:
        images: the pile's images, each with its discovered masks.
        encode: ``(B, 3, h, w)`` float32 RGB in [0, 1] (CPU) -> ``(B, h / patch, w / patch, D)``
            dense embeddings (any float dtype and device; L2-normalised here, in float32).
        patch: the encoder's patch side, pixels.
        max_size: cap on the long side fed to the encoder (``None``: the image's own size).
        per_image: most samples drawn from one image.
        cover: a patch is a sample when at most this share of it lies under a mask.
        seed: seed of the draw (per image: ``(seed, image position)``).
        batch_size: images per call of ``encode`` (consecutive images of one input size).
        workers: threads decoding images (0: in this thread).
        progress: ``progress(images done, images to do)``.
        done: image position -> its samples, for images an earlier run embedded: not read again,
            their samples taken as given.
        embedded: called with ``[(image position, its samples), ...]`` after each batch the encoder
            embedded.

    Returns:
        The samples of every image, ``done``'s and the new, in image order.

    Raises:
        ZutisError: the encoder gave a non-finite embedding.
    """
    from zutiscli.data.thread_batches import thread_items

    found: dict[int, ImageSamples] = dict(done or {})
    order = [index for index in range(len(images)) if index not in found]
    failed: list[tuple[str, str]] = []
    pending: list[tuple[int, torch.Tensor, np.ndarray]] = []
    finished = 0

    def flush() -> None:
        nonlocal finished
        batch = torch.stack([pixels for _, pixels, _ in pending])
        dense = F.normalize(encode(batch).float(), dim=-1).cpu()
        if not torch.isfinite(dense).all():
            raise ZutisError("the model gave non-finite dense features (NaN or infinity); run with --precision fp32")
        new = []
        for (index, _, chosen), tokens in zip(pending, dense):
            rows = tokens.reshape(-1, tokens.shape[-1])[torch.from_numpy(chosen)].numpy()
            new.append((index, ((int(tokens.shape[0]), int(tokens.shape[1])), chosen, rows)))
        found.update(new)
        if embedded is not None:
            embedded(new)
        finished += len(pending)
        pending.clear()
        if progress is not None:
            progress(finished, len(order))

    for index, pixels, chosen, reason in thread_items(
            _Inputs(images, order, patch, max_size, per_image, cover, seed), workers):
        if pixels is None:
            failed.append((str(images[index].path), str(reason)))
            finished += 1
            continue
        if pending and tuple(pixels.shape) != tuple(pending[0][1].shape):
            flush()
        pending.append((index, pixels, chosen))
        if len(pending) >= batch_size:
            flush()
    if pending:
        flush()
    grids: list[tuple[int, int]] = [(0, 0)] * len(images)
    for index, (grid, _, _) in found.items():
        grids[index] = grid
    kept = [(index, found[index]) for index in sorted(found)]
    if not kept:
        return StuffSamples(np.zeros((0, 0), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64), grids, failed)
    return StuffSamples(np.ascontiguousarray(np.concatenate([rows for _, (_, _, rows) in kept]), dtype=np.float32),
                        np.concatenate([np.full(len(cells), index, dtype=np.int64) for index, (_, cells, _) in kept]),
                        np.concatenate([cells for _, (_, cells, _) in kept]), grids, failed)
