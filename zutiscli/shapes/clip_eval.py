"""Evaluate a CLIP backbone on the shapes world: retrieval, zero-shot classification, dense tokens.

Everything is measured on a pool of single-object, pile-like images (:func:`single_object_pool`,
drawn with :func:`zutiscli.shapes.world.pile_sample`, a sampler kind the caption training stream
never uses), which contains every colour--shape pair, including the pairs held out of training.

Metrics (all fractions in [0, 1]):

* text -> image retrieval precision@k (k = 50) for each shape name and each ``"colour shape"``
  query, with the 85-template ensemble (what ``zutis retrieve`` uses) and with bare names;
* zero-shot classification accuracy: shape (argmax over the six shape names), colour (argmax over
  ``"<colour> shape"``) and colour--shape pair (argmax over the 36 pairs);
* semantic quality of the dense patch embeddings: per-pixel argmax over the six shape names plus
  ``"background"`` (patch logits upsampled bilinearly to pixels), scored as mIoU over those seven
  classes, for the projected final tokens (:meth:`ClipBackbone.dense_embeddings`) and for
  MaskCLIP's value path (:func:`maskclip_dense_embeddings`).

Named stuff is measured apart, on evaluation scenes drawn over stuff (:func:`scene_sample` with
``stuff=True``, a sampler kind no training uses):

* stuff retrieval precision@k for each material name (an image is relevant when the material
  shows in at least :data:`STUFF_SHOWN` of its pixels), :func:`stuff_retrieval`;
* MaskCLIP over things and stuff: the value-path embeddings (:meth:`ClipBackbone.maskclip_embeddings`,
  what ``zutis predict --method maskclip`` uses) against ``"background"``, the six shapes and the six
  materials, scored as mIoU over the twelve classes of the scenes (:func:`scene_dense_miou`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from zutiscli.errors import ModelError
from zutiscli.models.clip import ClipBackbone
from zutiscli.shapes.stuff import STUFF
from zutiscli.shapes.world import COLOURS, DEFAULT_HELD_OUT, SHAPES, pile_sample, scene_sample

#: Default seed of the evaluation pool (pile kind; training uses the caption kind).
EVAL_SEED = 20_251
#: Smallest share of an image's visible pixels by which a material counts as shown in it.
STUFF_SHOWN = 0.05


@dataclass
class ShapePool:
    """Single-object images with their labels.

    Attributes:
        images: ``(N, H, W, 3)`` uint8 RGB.
        colours: ``(N,)`` int64 index into :data:`COLOURS`.
        shapes: ``(N,)`` int64 index into :data:`SHAPES`.
        masks: ``(N, H, W)`` bool mask of the one object.
    """

    images: np.ndarray
    colours: np.ndarray
    shapes: np.ndarray
    masks: np.ndarray

    def __len__(self) -> int:
        return int(self.images.shape[0])


def single_object_pool(seed: int = EVAL_SEED, pool_size: int = 2000, size: int = 64, split: str = "train") -> ShapePool:
    """The first ``pool_size`` single-object pile images of ``seed``, balanced over pairs.

    :func:`pile_sample` images ``0, 1, 2, ...`` of ``seed`` are scanned; an image is kept if it holds
    exactly one object and its colour--shape pair has fewer than ``ceil(pool_size / 36)`` images
    so far. Every pair thus gets ``floor`` or ``ceil(pool_size / 36)`` images, so precision@50 can
    reach 1 for every colour--shape query once ``pool_size >= 1800``.

    Args:
        seed: pile seed (non-negative).
        pool_size: number of images.
        size: image side, pixels.
        split: the pile's split, ``"train"`` or ``"shift"`` (the same objects, held-out looks).

    Returns:
        A :class:`ShapePool`; deterministic in its arguments.
    """
    if pool_size < 1:
        raise ValueError(f"pool_size must be >= 1, got {pool_size}")
    n_pairs = len(COLOURS) * len(SHAPES)
    quota = math.ceil(pool_size / n_pairs)
    counts = np.zeros((len(COLOURS), len(SHAPES)), dtype=np.int64)
    images = np.empty((pool_size, size, size, 3), dtype=np.uint8)
    masks = np.empty((pool_size, size, size), dtype=bool)
    colours = np.empty(pool_size, dtype=np.int64)
    shapes = np.empty(pool_size, dtype=np.int64)
    kept = 0
    index = 0
    while kept < pool_size:
        sample = pile_sample(seed, index, size, split=split)
        index += 1
        if len(sample.objects) != 1:
            continue
        obj = sample.objects[0]
        c, s = COLOURS.index(obj.colour), SHAPES.index(obj.shape)
        if counts[c, s] >= quota:
            continue
        counts[c, s] += 1
        images[kept], masks[kept] = sample.image, sample.masks[0]
        colours[kept], shapes[kept] = c, s
        kept += 1
    return ShapePool(images, colours, shapes, masks)


def _pixels(backbone: ClipBackbone, images: np.ndarray) -> torch.Tensor:
    """uint8 ``(B, H, W, 3)`` -> normalised float ``(B, 3, H, W)`` on the backbone's device."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(backbone.device).permute(0, 3, 1, 2).float() / 255.0
    return backbone.normalise(x)


@torch.no_grad()
def embed_images(backbone: ClipBackbone, images: np.ndarray, batch_size: int = 500) -> torch.Tensor:
    """Pooled embeddings ``(N, D)`` float32 (L2-normalised, CPU) of uint8 ``(N, H, W, 3)`` images."""
    chunks = [
        backbone.encode_images(_pixels(backbone, images[i:i + batch_size])).cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(chunks) if chunks else torch.zeros(0, backbone.embed_dim)


def precision_at_k(similarity: torch.Tensor, relevant: torch.Tensor, k: int = 50) -> torch.Tensor:
    """Precision@k of each query.

    Args:
        similarity: ``(Q, N)`` float, query-to-image scores.
        relevant: ``(Q, N)`` bool, which images are correct for each query.
        k: cut-off (clipped to N).

    Returns:
        ``(Q,)`` float32: fraction of correct images among each query's top k.
    """
    k = min(k, similarity.shape[1])
    top = similarity.topk(k, dim=1).indices
    return relevant.gather(1, top).float().mean(dim=1)


@torch.no_grad()
def maskclip_dense_embeddings(backbone: ClipBackbone, images: torch.Tensor) -> torch.Tensor:
    """MaskCLIP's dense embeddings: the last block's value path, ``(B, H // p, W // p, D)`` float32,
    L2-normalised (:meth:`ClipBackbone.encode_with_dense`).

    Args:
        backbone: a plain-ViT backbone whose blocks use ``torch.nn.MultiheadAttention``.
        images: ``(B, 3, H, W)`` normalised images.

    Raises:
        ValueError: the image tower is not a plain ViT with standard attention blocks.
    """
    if not backbone.is_vit:
        raise ValueError("MaskCLIP value embeddings need a plain ViT with nn.MultiheadAttention blocks")
    try:
        return backbone.maskclip_embeddings(images)
    except ModelError as exc:
        raise ValueError(str(exc)) from exc


def _confusion(pred: torch.Tensor, truth: torch.Tensor, classes: int) -> torch.Tensor:
    return torch.bincount(truth.flatten() * classes + pred.flatten(), minlength=classes * classes).view(
        classes, classes
    )


def _iou(confusion: torch.Tensor) -> tuple[float, list[float]]:
    conf = confusion.double()
    inter = conf.diag()
    union = conf.sum(0) + conf.sum(1) - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(inter, float("nan")))
    valid = iou[~torch.isnan(iou)]
    return float(valid.mean()) if len(valid) else float("nan"), [round(float(v), 4) for v in iou]


@torch.no_grad()
def dense_miou(
    backbone: ClipBackbone, pool: ShapePool, text: torch.Tensor, batch_size: int = 250
) -> dict[str, Any]:
    """mIoU of per-pixel zero-shot labels from dense patch embeddings.

    Args:
        backbone: the model.
        pool: images and masks; pixel truth is the object's shape index, or ``len(SHAPES)``
            (background) outside its mask.
        text: ``(len(SHAPES) + 1, D)`` text embeddings: the shapes, then "background".
        batch_size: images per forward pass.

    Returns:
        ``{"projected": {"miou", "iou"}, "maskclip": {"miou", "iou"} or None}``; ``iou`` lists the
        per-class IoU in the order shapes..., background.
    """
    classes = text.shape[0]
    size = pool.images.shape[1:3]
    methods = {"projected": backbone.dense_embeddings, "maskclip": lambda x: maskclip_dense_embeddings(backbone, x)}
    confusions = {name: torch.zeros(classes, classes, dtype=torch.long) for name in methods}
    failed: set[str] = set()
    for start in range(0, len(pool), batch_size):
        stop = min(len(pool), start + batch_size)
        x = _pixels(backbone, pool.images[start:stop])
        truth = torch.from_numpy(np.where(pool.masks[start:stop], pool.shapes[start:stop, None, None], classes - 1))
        for name, method in methods.items():
            if name in failed:
                continue
            try:
                dense = method(x).cpu()
            except ValueError:
                failed.add(name)
                continue
            logits = (dense @ text.t()).permute(0, 3, 1, 2)
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
            confusions[name] += _confusion(logits.argmax(dim=1), truth, classes)
    out: dict[str, Any] = {}
    for name in methods:
        if name in failed:
            out[name] = None
        else:
            miou, per_class = _iou(confusions[name])
            out[name] = {"miou": round(miou, 4), "iou": per_class}
    return out


def _stuff_scene(seed: int, index: int, size: int, split: str, max_objects: int):
    sample = scene_sample(seed, index, size, min_objects=0, max_objects=max_objects, stuff=True, split=split)
    visible = sample.stuff.copy()
    for mask in sample.masks:
        visible[mask] = 0
    return sample, visible


@torch.no_grad()
def stuff_retrieval(
    backbone: ClipBackbone, seed: int = EVAL_SEED, pool_size: int = 600, k: int = 50, split: str = "train"
) -> dict[str, Any]:
    """Text -> image precision@k of each material name over scenes of named stuff.

    The pool holds ``pool_size`` scenes at the backbone's input size, each with zero to two objects
    over one to three materials; an image is relevant to a material shown in at least
    :data:`STUFF_SHOWN` of its visible (not covered by an object) pixels. Queries use the
    85-template ensemble.

    Returns:
        ``{"mean", "min", "per_query": {material: precision}}`` (fractions, 4 decimals).
    """
    size = int(backbone.image_size[0])
    images = np.empty((pool_size, size, size, 3), dtype=np.uint8)
    shown = np.zeros((len(STUFF), pool_size), dtype=bool)
    for i in range(pool_size):
        sample, visible = _stuff_scene(seed, i, size, split, max_objects=2)
        images[i] = sample.image
        counts = np.bincount(visible.ravel(), minlength=len(STUFF) + 1)[1:]
        shown[:, i] = counts >= STUFF_SHOWN * visible.size
    text = backbone.encode_text(list(STUFF), templates="ensemble")
    precision = precision_at_k(text @ embed_images(backbone, images).t(), torch.from_numpy(shown), k)
    return _summary(precision, STUFF)


@torch.no_grad()
def scene_dense_miou(
    backbone: ClipBackbone, seed: int = EVAL_SEED, scenes: int = 200, size: int = 128, split: str = "train",
    batch_size: int = 25,
) -> dict[str, Any]:
    """MaskCLIP's per-pixel labels on scenes of things over named stuff, as mIoU.

    Each scene (``size`` pixels, one to eight objects over one to three materials) is labelled by the
    argmax of its value-path embeddings (:meth:`ClipBackbone.maskclip_embeddings`) against the
    ensemble text embeddings of ``"background"``, the shapes and the materials, upsampled bilinearly
    from patches to pixels. Ground truth: each object's shape on its visible mask, the material
    elsewhere. Pixels labelled ``"background"`` count as misses.

    Returns:
        ``{"miou", "things", "stuff", "iou": {class: IoU}}`` over the twelve classes (4 decimals).
    """
    names = list(SHAPES) + list(STUFF)
    text = backbone.encode_text(["background"] + names, templates="ensemble")
    classes = len(names) + 1
    confusion = torch.zeros(classes, classes, dtype=torch.long)
    for start in range(0, scenes, batch_size):
        images, truth = [], []
        for i in range(start, min(scenes, start + batch_size)):
            sample, _ = _stuff_scene(seed, i, size, split, max_objects=8)
            label = sample.stuff.astype(np.int64) + len(SHAPES)  # material m -> 1 + len(SHAPES) + m
            for obj, mask in zip(sample.objects, sample.masks):
                label[mask] = 1 + SHAPES.index(obj.shape)
            images.append(sample.image)
            truth.append(label)
        dense = backbone.maskclip_embeddings(_pixels(backbone, np.stack(images))).float().cpu()
        logits = F.interpolate((dense @ text.t()).permute(0, 3, 1, 2), size=(size, size), mode="bilinear",
                               align_corners=False)
        confusion += _confusion(logits.argmax(dim=1), torch.from_numpy(np.stack(truth)), classes)
    _, per_class = _iou(confusion)
    iou = dict(zip(names, per_class[1:]))
    return {
        "miou": round(float(np.nanmean(per_class[1:])), 4),
        "things": round(float(np.nanmean(per_class[1:1 + len(SHAPES)])), 4),
        "stuff": round(float(np.nanmean(per_class[1 + len(SHAPES):])), 4),
        "iou": iou,
        "scenes": scenes,
        "size": size,
    }


def _summary(values: torch.Tensor, names: Sequence[str]) -> dict[str, Any]:
    return {
        "mean": round(float(values.mean()), 4),
        "min": round(float(values.min()), 4),
        "per_query": {n: round(float(v), 4) for n, v in zip(names, values)},
    }


@torch.no_grad()
def evaluate_shapes_clip(
    backbone: ClipBackbone,
    seed: int = EVAL_SEED,
    pool_size: int = 2000,
    k: int = 50,
    held_out: frozenset[tuple[str, str]] = DEFAULT_HELD_OUT,
    dense: bool = True,
    split: str = "train",
    stuff: bool = True,
) -> dict[str, Any]:
    """Measure a backbone on held-out shapes-world images (see the module docstring).

    Args:
        backbone: a CLIP backbone (e.g. ``shapes-clip``); pool images are drawn at its input size.
        seed: seed of the single-object pool (:func:`single_object_pool`, pile sampler).
        pool_size: number of pool images (each of the 36 pairs gets ``~pool_size / 36``).
        k: retrieval cut-off.
        held_out: the pairs held out of training, reported separately.
        dense: also measure the dense patch embeddings (mIoU), projected and MaskCLIP.
        split: draw the pool from the ``"train"`` split or the ``"shift"`` split.
        stuff: also measure named stuff: :func:`stuff_retrieval` and, with ``dense``,
            :func:`scene_dense_miou` (MaskCLIP over things and stuff), on the same split.

    Returns:
        JSON-ready dict (fractions rounded to 4 decimals)::

            {"pool": {...}, "k": 50,
             "retrieval": {"shape": {"ensemble": {"mean", "min", "per_query"}, "names": {...}},
                           "colour_shape": {"ensemble": {..., "held_out_mean", "held_out_min",
                                                          "seen_mean"}, "names": {...}}},
             "classification": {"shape": {"ensemble", "names"}, "colour": {...}, "pair": {...}},
             "dense": {"projected": {"miou", "iou"}, "maskclip": {...}} (if dense),
             "stuff": {"retrieval": {...}, "maskclip_scenes": {...} (if dense)} (if stuff),
             "seconds": wall time}
    """
    start = time.perf_counter()
    size = int(backbone.image_size[0])
    pool = single_object_pool(seed, pool_size, size, split)
    image_emb = embed_images(backbone, pool.images)
    shape_truth = torch.from_numpy(pool.shapes)
    colour_truth = torch.from_numpy(pool.colours)
    pair_truth = colour_truth * len(SHAPES) + shape_truth
    pair_names = [f"{c} {s}" for c in COLOURS for s in SHAPES]
    held = torch.tensor([(c, s) in held_out for c in COLOURS for s in SHAPES])
    retrieval: dict[str, Any] = {"shape": {}, "colour_shape": {}}
    classification: dict[str, Any] = {"shape": {}, "colour": {}, "pair": {}}
    for templates in ("ensemble", "names"):
        shape_text = backbone.encode_text(list(SHAPES), templates=templates)
        pair_text = backbone.encode_text(pair_names, templates=templates)
        colour_text = backbone.encode_text([f"{c} shape" for c in COLOURS], templates=templates)
        shape_sim = shape_text @ image_emb.t()
        pair_sim = pair_text @ image_emb.t()
        shape_rel = torch.arange(len(SHAPES))[:, None] == shape_truth[None, :]
        pair_rel = torch.arange(len(pair_names))[:, None] == pair_truth[None, :]
        retrieval["shape"][templates] = _summary(precision_at_k(shape_sim, shape_rel, k), SHAPES)
        pair_p = precision_at_k(pair_sim, pair_rel, k)
        summary = _summary(pair_p, pair_names)
        summary["held_out_mean"] = round(float(pair_p[held].mean()), 4) if held.any() else None
        summary["held_out_min"] = round(float(pair_p[held].min()), 4) if held.any() else None
        summary["seen_mean"] = round(float(pair_p[~held].mean()), 4) if (~held).any() else None
        retrieval["colour_shape"][templates] = summary
        classification["shape"][templates] = round(float((shape_sim.argmax(0) == shape_truth).float().mean()), 4)
        colour_pred = (colour_text @ image_emb.t()).argmax(0)
        classification["colour"][templates] = round(float((colour_pred == colour_truth).float().mean()), 4)
        pair_pred = pair_sim.argmax(0)
        classification["pair"][templates] = round(float((pair_pred == pair_truth).float().mean()), 4)
        if held.any():
            in_held = held[pair_truth]
            classification["pair"][f"{templates}_held_out"] = round(
                float((pair_pred[in_held] == pair_truth[in_held]).float().mean()), 4
            )
    result: dict[str, Any] = {
        "pool": {"sampler": "pile_sample (single-object images, balanced over the 36 pairs)",
                 "seed": seed, "size": len(pool), "image_size": size, "split": split},
        "k": k,
        "held_out": sorted(f"{c} {s}" for c, s in held_out),
        "retrieval": retrieval,
        "classification": classification,
    }
    if dense:
        text = backbone.encode_text(list(SHAPES) + ["background"], templates="ensemble")
        result["dense"] = dense_miou(backbone, pool, text)
        result["dense"]["classes"] = list(SHAPES) + ["background"]
        result["dense"]["resolution"] = "patch logits upsampled bilinearly to pixels"
    if stuff:
        result["stuff"] = {"retrieval": stuff_retrieval(backbone, seed, k=k, split=split)}
        if dense:
            result["stuff"]["maskclip_scenes"] = scene_dense_miou(backbone, seed, split=split)
    result["seconds"] = round(time.perf_counter() - start, 2)
    return result
