"""Copy-paste synthesis of multi-object training scenes from single-object pseudo-labels.

One scene (ZUTIS, after Ghiasi et al.'s simple copy-paste; defaults of the official code):

1. Draw ``n ~ U{1..max_objects}`` archive objects; with probability ``same_class_prob`` all from
   one randomly chosen archive (teaches the separation of same-class instances), otherwise each
   from a random archive.
2. The first object's image is the canvas: its short side resized to ``size``, a random
   ``size x size`` crop taken; every pseudo-mask of that image is an instance. With
   ``canvas_scale`` below 1 (not in the official code, which keeps the canvas at full size), the
   crop is shrunk by ``f ~ U[canvas_scale]`` and laid at a random place on a square of its own
   background colour and noise, so that the canvas object is no larger than the pasted ones.
3. Each further object is cut out along its pseudo-mask (bounding-box crop), resized so that its
   long side is ``s * size`` with ``s ~ U[scale_range]``, and pasted at a random position. With
   ``outside`` above 0, up to that share of its box (and of a shrunk canvas) may fall beyond the
   scene's edge and is cut off there, as the official code's random scale, pad and crop cut
   objects at the border of its training crops; what stays inside is the object's area below.
4. Occlusion is honest: a pasted object hides what it covers; earlier instances lose those pixels
   and an instance left with less than ``min_visible_fraction`` of its pasted area (or fewer than
   ``min_visible_pixels`` pixels) is dropped, its remaining pixels marked ignore (255) in the
   semantic map so they teach neither class nor background.
5. Whole-scene augmentation: horizontal flip (p 0.5), colour jitter (brightness, contrast,
   saturation 0.8, hue 0.2; p 0.8, in random order), grayscale (p 0.2), Gaussian blur (p 0.5,
   kernel ~10% of the side, sigma in [0.1, 2]).

Every random choice comes from the ``numpy.random.Generator`` passed in, so a scene is a pure
function of (pool, config, seed): the offline ``zutis copypaste`` command and online training
produce the same scenes for the same seeds.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from zutiscli.artefacts.pseudolabels import PseudoLabels, PseudoObject
from zutiscli.data.copypaste_config import CopyPasteConfig
from zutiscli.errors import ArtefactError
from zutiscli.ops.masks import decode_mask

IGNORE = 255


@dataclass
class Scene:
    """A synthesised scene.

    - ``image``: ``(S, S, 3)`` uint8 RGB.
    - ``masks``: ``(N, S, S)`` bool, pairwise disjoint, each non-empty.
    - ``classes``: ``(N,)`` int64 class indices (0-based, into the pool's class list).
    - ``semantic``: ``(S, S)`` uint8: 0 background, ``class + 1`` objects, 255 ignore.
    """

    image: np.ndarray
    masks: np.ndarray
    classes: np.ndarray
    semantic: np.ndarray


class ObjectPool:
    """Pseudo-labelled objects by class, with their images decoded on demand (cached per process)."""

    def __init__(self, labels: PseudoLabels, cache_size: int = 256):
        self.classes = list(labels.classes)
        self.groups = labels.by_class()
        self.image_objects = labels.by_image()
        self.nonempty = [i for i, group in enumerate(self.groups) if group]
        if not self.nonempty:
            raise ArtefactError(f"{labels.directory}: holds no object masks to copy and paste")
        self._load = functools.lru_cache(maxsize=cache_size)(self._load_uncached)

    @staticmethod
    def _load_uncached(path: Path) -> np.ndarray:
        from zutiscli.data.images import load_image

        return np.asarray(load_image(path))

    def image(self, obj: PseudoObject) -> np.ndarray:
        """``(H, W, 3)`` uint8 pixels of an object's image; the mask size is checked against it."""
        pixels = self._load(obj.image)
        if tuple(obj.rle["size"]) != pixels.shape[:2]:
            raise ArtefactError(
                f"{obj.image}: is {pixels.shape[1]}x{pixels.shape[0]} but its pseudo-mask is "
                f"{obj.rle['size'][1]}x{obj.rle['size'][0]}; the pseudo-labels do not match the images"
            )
        return pixels

    def draw(self, config: CopyPasteConfig, rng: np.random.Generator) -> list[PseudoObject]:
        """The objects of one scene, canvas object first."""
        count = int(rng.integers(1, config.max_objects + 1))
        if rng.random() < config.same_class_prob:
            chosen = [int(rng.choice(self.nonempty))] * count
        else:
            chosen = [int(c) for c in rng.choice(self.nonempty, size=count)]
        return [self.groups[c][int(rng.integers(len(self.groups[c])))] for c in chosen]


def _resize(array: np.ndarray, width: int, height: int, nearest: bool) -> np.ndarray:
    image = Image.fromarray(array.astype(np.uint8) if not nearest else array.astype(np.uint8) * 255)
    resized = image.resize((width, height), Image.NEAREST if nearest else Image.BILINEAR)
    out = np.asarray(resized)
    return out > 127 if nearest else out


def _starts(size: int, extent: int, outside: float) -> tuple[int, int]:
    """``(low, high)`` for ``rng.integers``: the starts of an ``extent``-pixel span on a ``size``-pixel
    side that put at most ``outside x extent`` pixels of it beyond either edge (0: the span lies
    inside, where it fits)."""
    margin = int(extent * outside)
    return -margin, size - extent + margin + 1


def _overlap(start: int, extent: int, size: int) -> tuple[slice, slice]:
    """``(scene slice, span slice)``: the part of the span ``[start, start + extent)`` inside ``[0, size)``."""
    low, high = max(start, 0), min(start + extent, size)
    return slice(low, max(high, low)), slice(low - start, max(high, low) - start)


def _canvas(pool: ObjectPool, obj: PseudoObject, size: int, rng: np.random.Generator,
            canvas_scale: tuple[float, float] = (1.0, 1.0), outside: float = 0.0):
    """The scene's first image: short side resized to ``size``, a random ``size`` square crop taken.

    With ``canvas_scale`` below 1 the crop is then shrunk by ``f ~ U[canvas_scale]`` and laid at a
    random place on a ``size`` square filled with the image's own background: per channel, the
    mean and standard deviation of the pixels outside every pseudo-mask, as Gaussian noise. (The
    canvas object keeps its archive image's scale otherwise, larger than most objects of a scene.)
    """
    pixels = pool.image(obj)
    height, width = pixels.shape[:2]
    factor = size / min(height, width)
    new_w, new_h = max(size, round(width * factor)), max(size, round(height * factor))
    image = _resize(pixels, new_w, new_h, nearest=False)
    x0 = int(rng.integers(0, new_w - size + 1))
    y0 = int(rng.integers(0, new_h - size + 1))
    image = image[y0:y0 + size, x0:x0 + size]
    masks, classes = [], []
    taken = np.zeros((size, size), dtype=bool)
    for other in pool.image_objects.get(obj.image_id, [obj]):
        mask = _resize(decode_mask(other.rle), new_w, new_h, nearest=True)[y0:y0 + size, x0:x0 + size]
        mask &= ~taken  # masks of one image may overlap: the first listed keeps the pixel
        taken |= mask
        masks.append(mask)
        classes.append(other.class_index)
    lo, hi = canvas_scale
    if lo < 1.0:
        side = int(np.clip(round(float(rng.uniform(lo, hi)) * size), 1, size))
        if side < size:
            background = image[~taken].reshape(-1, 3).astype(np.float32) if (~taken).any() else \
                image.reshape(-1, 3).astype(np.float32)
            fill = rng.normal(background.mean(0), background.std(0) + 1e-3, (size, size, 3))
            scene = np.clip(np.rint(fill), 0, 255).astype(np.uint8)
            top, left = (int(v) for v in rng.integers(*_starts(size, side, outside), 2))
            rows, inner_rows = _overlap(top, side, size)
            cols, inner_cols = _overlap(left, side, size)
            scene[rows, cols] = _resize(image, side, side, nearest=False)[inner_rows, inner_cols]
            placed = []
            for mask in masks:
                full = np.zeros((size, size), dtype=bool)
                full[rows, cols] = _resize(mask, side, side, nearest=True)[inner_rows, inner_cols]
                placed.append(full)
            image, masks = scene, placed
    return np.array(image, dtype=np.uint8), masks, classes


def _cutout(pool: ObjectPool, obj: PseudoObject, size: int, rng: np.random.Generator, scale_range):
    pixels = pool.image(obj)
    mask = decode_mask(obj.rle)
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return None
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop, crop_mask = pixels[y0:y1, x0:x1], mask[y0:y1, x0:x1]
    target = float(rng.uniform(*scale_range)) * size
    factor = target / max(crop.shape[:2])
    new_h = int(np.clip(round(crop.shape[0] * factor), 1, size))
    new_w = int(np.clip(round(crop.shape[1] * factor), 1, size))
    crop = _resize(crop, new_w, new_h, nearest=False)
    crop_mask = _resize(crop_mask, new_w, new_h, nearest=True)
    return crop, crop_mask


def _photometric(image: np.ndarray, config: CopyPasteConfig, rng: np.random.Generator) -> np.ndarray:
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    if rng.random() < config.jitter_prob:
        brightness, contrast, saturation, hue = config.jitter
        ops = [
            (TF.adjust_brightness, rng.uniform(max(0.0, 1 - brightness), 1 + brightness)),
            (TF.adjust_contrast, rng.uniform(max(0.0, 1 - contrast), 1 + contrast)),
            (TF.adjust_saturation, rng.uniform(max(0.0, 1 - saturation), 1 + saturation)),
            (TF.adjust_hue, rng.uniform(-hue, hue)),
        ]
        for index in rng.permutation(len(ops)):
            function, factor = ops[index]
            tensor = function(tensor, float(factor))
    if rng.random() < config.grayscale_prob:
        tensor = TF.rgb_to_grayscale(tensor, num_output_channels=3)
    if rng.random() < config.blur_prob:
        kernel = max(3, int(config.blur_kernel_fraction * config.size) // 2 * 2 + 1)
        sigma = float(rng.uniform(*config.blur_sigma))
        tensor = TF.gaussian_blur(tensor, kernel_size=[kernel, kernel], sigma=[sigma, sigma])
    return tensor.permute(1, 2, 0).numpy()


def synthesize(pool: ObjectPool, config: CopyPasteConfig, rng: np.random.Generator) -> Scene:
    """One copy-paste scene (see the module docstring for the recipe)."""
    size = config.size
    objects = pool.draw(config, rng)
    image, masks, classes = _canvas(pool, objects[0], size, rng, config.canvas_scale, config.outside)
    pasted_area = [int(m.sum()) for m in masks]
    for obj in objects[1:]:
        cut = _cutout(pool, obj, size, rng, config.scale_range)
        if cut is None:
            continue
        crop, crop_mask = cut
        h, w = crop_mask.shape
        y0 = int(rng.integers(*_starts(size, h, config.outside)))
        x0 = int(rng.integers(*_starts(size, w, config.outside)))
        rows, crop_rows = _overlap(y0, h, size)
        cols, crop_cols = _overlap(x0, w, size)
        crop, crop_mask = crop[crop_rows, crop_cols], crop_mask[crop_rows, crop_cols]
        full = np.zeros((size, size), dtype=bool)
        full[rows, cols] = crop_mask
        region = image[rows, cols]
        region[crop_mask] = crop[crop_mask]
        for mask in masks:
            mask &= ~full
        masks.append(full)
        classes.append(obj.class_index)
        pasted_area.append(int(full.sum()))  # what lies inside the scene: a cut at its edge is not occlusion
    semantic = np.zeros((size, size), dtype=np.uint8)
    kept_masks, kept_classes = [], []
    for mask, cls, area in zip(masks, classes, pasted_area):
        visible = int(mask.sum())
        if visible == 0:
            continue
        if visible < config.min_visible_pixels or visible < config.min_visible_fraction * area:
            semantic[mask] = IGNORE
            continue
        semantic[mask] = cls + 1
        kept_masks.append(mask)
        kept_classes.append(cls)
    if rng.random() < config.hflip_prob:
        image = image[:, ::-1]
        semantic = semantic[:, ::-1]
        kept_masks = [m[:, ::-1] for m in kept_masks]
    image = _photometric(image, config, rng)
    stacked = np.stack(kept_masks) if kept_masks else np.zeros((0, size, size), dtype=bool)
    return Scene(
        image=np.ascontiguousarray(image, dtype=np.uint8),
        masks=np.ascontiguousarray(stacked),
        classes=np.asarray(kept_classes, dtype=np.int64),
        semantic=np.ascontiguousarray(semantic),
    )


def scene_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of scene ``index`` under ``seed`` (independent of every other scene)."""
    return np.random.default_rng(np.random.SeedSequence([seed, 7, index]))


class CopyPasteDataset(torch.utils.data.Dataset):
    """Scenes on the fly for training: item ``g`` is scene ``g`` of ``seed`` (see :func:`scene_rng`).

    Returns ``(image (3, S, S) float32 in [0, 1], semantic (S, S) int64, masks (N, S, S) bool,
    classes (N,) int64)``. Training asks for item ``iteration * batch_size + j``, so every scene is
    seen once and a resumed run sees exactly the scenes it would have seen.
    """

    def __init__(self, pool: ObjectPool, config: CopyPasteConfig, seed: int = 0, length: int = 10_000):
        self.pool = pool
        self.config = config
        self.seed = seed
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        scene = synthesize(self.pool, self.config, scene_rng(self.seed, index))
        image = torch.from_numpy(scene.image).permute(2, 0, 1).float().div_(255)
        return image, torch.from_numpy(scene.semantic.astype(np.int64)), torch.from_numpy(scene.masks), \
            torch.from_numpy(scene.classes)
