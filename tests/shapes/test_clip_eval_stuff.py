"""The named-stuff measurements of shapes-clip: stuff retrieval and MaskCLIP over things and stuff,
checked against oracles that know each scene's truth (they must score exactly 1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zutiscli.shapes.clip_eval import STUFF_SHOWN, scene_dense_miou, stuff_retrieval
from zutiscli.shapes.stuff import STUFF
from zutiscli.shapes.world import SHAPES, scene_sample

NAMES = ["background", *SHAPES, *STUFF]


class _Oracle:
    """A stand-in backbone that answers from the scenes' ground truth, in the order they are drawn.

    Text embeddings are one-hot over :data:`NAMES`; image and dense embeddings are one-hot (or
    multi-hot, normalised) over the classes truly shown, so a correct measurement scores 1.
    """

    def __init__(self, seed: int, split: str, size: int, max_objects: int):
        self.image_size = (size, size)
        self.embed_dim = len(NAMES)
        self.device = torch.device("cpu")
        self._scenes = (scene_sample(seed, i, size, 0, max_objects, stuff=True, split=split) for i in range(10**6))

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def encode_text(self, names, templates="ensemble") -> torch.Tensor:
        return torch.eye(len(NAMES))[[NAMES.index(n) for n in names]]

    def _truth(self, sample) -> np.ndarray:
        label = sample.stuff.astype(np.int64) + len(SHAPES)
        for obj, mask in zip(sample.objects, sample.masks):
            label[mask] = 1 + SHAPES.index(obj.shape)
        return label

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        rows = []
        for _ in range(len(images)):
            label = self._truth(next(self._scenes))
            counts = np.bincount(label.ravel(), minlength=len(NAMES)).astype(np.float32)
            counts[: 1 + len(SHAPES)] = 0
            rows.append(torch.from_numpy(counts >= STUFF_SHOWN * label.size).float())
        return F.normalize(torch.stack(rows), dim=-1)

    def maskclip_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        labels = torch.from_numpy(np.stack([self._truth(next(self._scenes)) for _ in range(len(images))]))
        return F.one_hot(labels, len(NAMES)).float()  # a 1-pixel patch grid


@pytest.mark.parametrize("split", ["train", "shift"])
def test_scene_miou_of_an_oracle_is_one(split) -> None:
    oracle = _Oracle(7, split, 64, max_objects=8)
    result = scene_dense_miou(oracle, seed=7, scenes=12, size=64, split=split, batch_size=5)
    assert result["miou"] == result["things"] == 1.0
    assert set(result["iou"]) == set(SHAPES) | set(STUFF)


def test_scene_miou_counts_background_and_swapped_labels_as_misses() -> None:
    oracle = _Oracle(3, "train", 64, max_objects=8)
    truthful = oracle.maskclip_embeddings

    def swapped(images):
        dense = truthful(images)
        return torch.cat([dense[..., :1], dense[..., 2:3], dense[..., 1:2], dense[..., 3:]], dim=-1)

    oracle.maskclip_embeddings = swapped  # circle <-> square
    result = scene_dense_miou(oracle, seed=3, scenes=20, size=64, batch_size=10)
    assert result["iou"]["circle"] == result["iou"]["square"] == 0.0
    assert result["iou"]["star"] == 1.0 and result["stuff"] == 1.0


def test_stuff_retrieval_of_an_oracle_is_one() -> None:
    oracle = _Oracle(11, "train", 32, max_objects=2)
    result = stuff_retrieval(oracle, seed=11, pool_size=120, k=10)
    assert set(result["per_query"]) == set(STUFF)
    assert result["min"] == 1.0


def test_stuff_retrieval_of_a_blind_model_is_low() -> None:
    oracle = _Oracle(11, "train", 32, max_objects=2)
    oracle.encode_images = lambda images: F.normalize(torch.ones(len(images), len(NAMES)), dim=-1)
    result = stuff_retrieval(oracle, seed=11, pool_size=120, k=10)
    assert result["mean"] < 0.7
