"""Training scenes: the deterministic stream of scenes a run trains on, and the batches of each iteration.

A training source is a pseudo-label directory (scenes made online by copy-paste), a copy-paste
dataset written by ``zutis copypaste``, ``zutis synth scenes`` (supervised by their ground
truth), or a ``zutis predict`` directory (another method's semantic maps and instances as labels:
ReCo+ trains on ReCo's predictions). Either way item ``g`` of the stream is the same scene in every run with the same seed, and
iteration ``t`` trains on items ``t * batch + 0 .. t * batch + batch-1``, split across the
data-parallel ranks: a resumed or distributed run sees exactly the scenes of a single
uninterrupted run.

An item is ``(image, semantic, masks, classes)``: a float image (3, S, S) in [0, 1], the semantic
map (S, S) int64 (0 background, 1..C, 255 ignore), instance masks (N, S, S) bool and their class
indices (N,) int64 counted without the background (0..C-1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from zutiscli.artefacts.labelmap import read_label_png
from zutiscli.artefacts.manifest import Manifest, read_manifest, resolve_relative
from zutiscli.artefacts.pseudolabels import load_pseudolabels
from zutiscli.artefacts.scenes import load_scenes, predicted_scenes
from zutiscli.data.copypaste import CopyPasteConfig, CopyPasteDataset, ObjectPool
from zutiscli.data.workers import worker_loader
from zutiscli.errors import UsageError
from zutiscli.ops.masks import decode_mask

#: The artefact kinds a run trains on.
SOURCE_KINDS = ("zutis.pseudolabels", "zutis.clusters", "zutis.dataset", "zutis.synth", "zutis.predictions")


class IterationBatches(torch.utils.data.Sampler):
    """Index lists of iterations ``start .. total-1``: this rank's share of ``t * batch + j``."""

    def __init__(self, start: int, total: int, batch: int, rank: int = 0, world: int = 1):
        self.start, self.total, self.batch, self.rank, self.world = start, total, batch, rank, world

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    def __iter__(self):
        for iteration in range(self.start, self.total):
            yield [iteration * self.batch + j for j in range(self.rank, self.batch, self.world)]


class DiskScenes(torch.utils.data.Dataset):
    """A scene directory read back (or the COCO file ``coco`` of scenes elsewhere, such as
    :func:`zutiscli.artefacts.scenes.predicted_scenes`); global item ``g`` walks seeded per-epoch permutations.

    Scenes of another side than ``size`` are resized to it (bilinear image, nearest labels).
    """

    def __init__(self, directory: Path, size: int, seed: int, coco: dict[str, Any] | None = None):
        self.directory = directory
        coco = coco if coco is not None else load_scenes(directory)
        self.images = sorted(coco["images"], key=lambda img: img["id"])
        self.categories = coco["categories"]
        self.annotations: dict[int, list[dict]] = {}
        for ann in coco["annotations"]:
            self.annotations.setdefault(ann["image_id"], []).append(ann)
        self.size = size
        self.seed = seed
        self._perms: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return 2**62

    def _position(self, index: int) -> int:
        epoch, offset = divmod(index, len(self.images))
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(len(self.images))}
        return int(self._perms[epoch][offset])

    def __getitem__(self, index: int):
        import torch.nn.functional as F

        from zutiscli.data.images import load_image

        record = self.images[self._position(index)]
        image = torch.from_numpy(np.asarray(load_image(resolve_relative(self.directory, record["file_name"]))).copy())
        image = image.permute(2, 0, 1).float().div_(255)
        semantic = torch.from_numpy(read_label_png(resolve_relative(self.directory, record["semantic"])).astype(np.int64))
        anns = self.annotations.get(record["id"], [])
        masks = torch.from_numpy(np.stack([decode_mask(a["segmentation"]) for a in anns])) if anns else \
            torch.zeros((0, *semantic.shape), dtype=torch.bool)
        classes = torch.tensor([a["category_id"] - 1 for a in anns], dtype=torch.int64)
        if image.shape[-1] != self.size or image.shape[-2] != self.size:
            image = F.interpolate(image[None], size=(self.size, self.size), mode="bilinear", align_corners=False)[0]
            semantic = F.interpolate(semantic[None, None].float(), size=(self.size, self.size), mode="nearest")[0, 0].long()
            masks = F.interpolate(masks[None].float(), size=(self.size, self.size), mode="nearest")[0] > 0.5 \
                if len(masks) else torch.zeros((0, self.size, self.size), dtype=torch.bool)
        return image, semantic, masks, classes


def collate(items):
    """A batch: images (B, 3, S, S), semantic maps (B, S, S), and per scene its masks and classes as lists."""
    images = torch.stack([item[0] for item in items])
    semantic = torch.stack([item[1] for item in items])
    return images, semantic, [item[2] for item in items], [item[3] for item in items]


def scene_loader(dataset: Any, start: int, total: int, batch: int, rank: int = 0, world: int = 1,
                 workers: int = 0, pin_memory: bool = False) -> Any:
    """The batches of iterations ``start .. total-1`` for this rank, read by ``workers`` processes
    (:func:`zutiscli.data.workers.worker_loader`: they leave Ctrl-C to the main process, so that it
    can save a checkpoint, and an unreadable scene stops the run with its own error)."""
    return worker_loader(
        dataset, workers, batch_sampler=IterationBatches(start, total, batch, rank, world),
        collate_fn=collate, pin_memory=pin_memory, prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )


def source_manifest(source: str) -> Manifest:
    """The manifest of a training source: pseudo-labels, a copy-paste dataset, ``zutis synth scenes`` or predictions."""
    manifest = read_manifest(source, SOURCE_KINDS)
    if manifest.kind == "zutis.synth":
        kind = manifest.params.get("kind")
        if kind != "scenes":
            raise UsageError(f"{source}: is a `zutis synth {kind}` directory; training reads pseudo-labels, "
                             "a copy-paste dataset, or `zutis synth scenes` (supervised by their ground truth)")
    return manifest


def scene_classes(manifest: Manifest, categories: list[dict[str, Any]]) -> list[str]:
    """A scene directory's class names: its manifest's, else its COCO categories' in id order."""
    return list(manifest.summary.get("classes") or []) or [c["name"] for c in sorted(categories, key=lambda c: c["id"])]


def training_scenes(source: str, paste: CopyPasteConfig, size: int, seed: int, total_items: int
                    ) -> tuple[torch.utils.data.Dataset, list[str], str]:
    """``(dataset, class names, source kind)`` of a training source.

    Pseudo-labels give ``total_items`` scenes made online by copy-paste with ``paste``; a scene
    directory gives its scenes at ``size`` pixels, in a fresh ``seed``-ed order every epoch.
    """
    manifest = source_manifest(source)
    if manifest.kind in ("zutis.pseudolabels", "zutis.clusters"):
        labels = object_labels(source, manifest)
        pool = ObjectPool(labels)
        return CopyPasteDataset(pool, paste, seed, total_items), labels.classes, manifest.kind
    coco, classes = labelled_scenes(source, manifest)
    return DiskScenes(Path(source), size, seed, coco), classes, manifest.kind


def object_labels(source: str | Path, manifest: Manifest, *, check_masks: bool = True):
    """The objects copy-paste draws from: a pseudo-label directory's, or a clusters directory's
    masks with their clusters as classes (:func:`zutiscli.artefacts.clusters.cluster_labels`).
    ``check_masks``: as :func:`zutiscli.artefacts.pseudolabels.load_pseudolabels` takes it."""
    if manifest.kind == "zutis.clusters":
        from zutiscli.artefacts.clusters import cluster_labels, read_clusters

        return cluster_labels(read_clusters(source))
    return load_pseudolabels(source, check_masks=check_masks)


def labelled_scenes(source: str, manifest: Manifest) -> tuple[dict[str, Any], list[str]]:
    """``(COCO file, class names)`` of a scene source: a scene directory's own, or a predictions
    directory's (:func:`zutiscli.artefacts.scenes.predicted_scenes`, the classes it was predicted for)."""
    if manifest.kind == "zutis.predictions":
        coco = predicted_scenes(source)
        return coco, list(manifest.params.get("classes") or []) or scene_classes(manifest, coco["categories"])
    coco = load_scenes(Path(source))
    return coco, scene_classes(manifest, coco["categories"])
