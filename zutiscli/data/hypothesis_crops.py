"""Training crops of unlabelled images with their label hypotheses (ReCLIP++'s rectification data).

Sample ``n`` of a run is image ``permutation_e[n mod N]`` of epoch ``e = n // N`` (a seeded
permutation per epoch), resized to ``crop x U(resize_min, resize_max)`` on its short side, cut at a
random ``crop x crop`` window and flipped with probability 1/2, all drawn from a generator seeded by
``(seed, n)``: a resumed or distributed run sees exactly the crops of an uninterrupted one. The
image's hypothesis (the classes of the whole image) goes with each of its crops, as in ReCLIP++.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F


class HypothesisCrops(torch.utils.data.Dataset):
    """Sample number -> ``(image (3, crop, crop) float32 in [0, 1], hypothesised channels)``.

    Args:
        paths: the training images.
        hypotheses: per image, its hypothesised class channels (1-based; 0 is the background).
        crop: the crop side in pixels.
        resize: ``(min, max)`` of the short side's resize, in crops.
        seed: the seed of the order and the crops.
    """

    def __init__(self, paths: Sequence[Path], hypotheses: Sequence[Sequence[int]], crop: int,
                 resize: tuple[float, float], seed: int):
        if len(paths) != len(hypotheses) or not paths:
            raise ValueError("one hypothesis per image, and at least one image")
        self.paths, self.hypotheses = list(paths), [list(h) for h in hypotheses]
        self.crop, self.resize, self.seed = crop, resize, seed
        self._order: tuple[int, torch.Tensor | None] = (-1, None)  # (epoch, its permutation)

    def __len__(self) -> int:  # samples are numbered without end; the sampler says which
        return 2 ** 62

    def image_of(self, number: int) -> int:
        """The image index of sample ``number``."""
        epoch, place = divmod(number, len(self.paths))
        if self._order[0] != epoch:  # drawn once per epoch (in each worker), not once per sample
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._order = (epoch, torch.randperm(len(self.paths), generator=generator))
        return int(self._order[1][place])

    def __getitem__(self, number: int) -> tuple[torch.Tensor, list[int]]:
        from zutiscli.data.images import load_image

        index = self.image_of(number)
        rng = np.random.default_rng((self.seed, number))
        rgb = np.asarray(load_image(self.paths[index]))
        image = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).float().div_(255)
        height, width = image.shape[1:]
        short = self.crop * rng.uniform(*self.resize)
        scale = short / min(height, width)
        size = (max(self.crop, round(height * scale)), max(self.crop, round(width * scale)))
        image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
        top = int(rng.integers(0, size[0] - self.crop + 1))
        left = int(rng.integers(0, size[1] - self.crop + 1))
        image = image[:, top:top + self.crop, left:left + self.crop]
        if rng.random() < 0.5:
            image = image.flip(-1)
        return image.contiguous(), self.hypotheses[index]


def collate_crops(items: list[tuple[torch.Tensor, list[int]]]) -> tuple[torch.Tensor, list[list[int]]]:
    """A batch: images ``(B, 3, S, S)`` and each image's hypothesised channels."""
    return torch.stack([item[0] for item in items]), [item[1] for item in items]


def crop_loader(dataset: HypothesisCrops, start: int, total: int, batch: int, rank: int = 0, world: int = 1,
                workers: int = 0, pin_memory: bool = False) -> Any:
    """The batches of iterations ``start .. total-1`` for this rank, decoded by ``workers`` processes.

    The loader draws its worker seeds from a generator of its own: the global one is the Gumbel
    noise's, which a resumed run must find exactly where the checkpoint left it."""
    from zutiscli.data.scenes import IterationBatches
    from zutiscli.data.workers import worker_loader

    return worker_loader(dataset, workers, batch_sampler=IterationBatches(start, total, batch, rank, world),
                         collate_fn=collate_crops, pin_memory=pin_memory, prefetch_factor=4 if workers else None,
                         persistent_workers=False, generator=torch.Generator().manual_seed(0))
