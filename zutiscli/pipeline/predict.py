"""`zutis predict`: open-vocabulary semantic, instance and panoptic segmentation of any image.

Two predictors behind one interface:

``zutis`` (default)
    a trained ZUTIS checkpoint. Semantic = argmax over ``[background] + classes`` of the cosine of
    the dense embeddings with the class text embeddings (upsampled bilinearly). Instances = the
    last decoder layer's query masks, binarised at 0.5, each classified by the mean embedding
    inside it (sigmoid(5 cos)), scored by mean mask probability x class probability, background
    dropped, per-class mask NMS (IoU 0.3) at the decoder's resolution, then upsampled.
``maskclip``
    the training-free MaskCLIP baseline: CLIP's value-path dense embeddings against the class text
    embeddings (85-template ensemble, "background" as a class). Instances: each class's semantic
    mask in an image is one proposal (optionally split into connected components).

Outputs (kind ``zutis.predictions``): ``predictions.json`` (COCO results: image_id, category_id,
RLE segmentation, bbox, score), ``images.json`` (COCO images + categories sidecar, file names
relative to the output), ``semantic/NAME.png`` (0 = background, i = the i-th class, 255 = ignore;
16-bit with 65535 = ignore when there are 255 classes or more),
``panoptic/NAME.png`` + ``panoptic.json`` (COCO panoptic format), ``vis/NAME.jpg`` overlays.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from zutiscli.artefacts.atomic import atomic_path, atomic_write_json, atomic_write_text
from zutiscli.artefacts.checkpoint import load_checkpoint
from zutiscli.artefacts.labelmap import IGNORE_8BIT, IGNORE_16BIT, write_label_map
from zutiscli.artefacts.manifest import relative_to, write_manifest
from zutiscli.artefacts.rundir import check_output_dir, prepare_output_dir
from zutiscli.artefacts.runs import resolve_checkpoint
from zutiscli.data.classes import ClassQuery, safe_filenames
from zutiscli.errors import ArtefactError, ModelError, UsageError, ZutisError
from zutiscli.models.crop_classifier import CropAdapter, CropClassifier
from zutiscli.models.device import precision_name, resolve_device, resolve_precision
from zutiscli.ops.masks import encode_mask, rle_area, rle_bbox
from zutiscli.pipeline.plan import Plan, input_entry, output_plan, weights_plan

TASKS = ("semantic", "instance", "panoptic", "all")
NMS_METHODS = ("hard", "linear", "gaussian", "matrix", "none")
SEMANTIC_SOURCES = ("dense", "instances")


@dataclass
class PredictConfig:
    """Options of ``zutis predict`` (pixels for sizes; probabilities and IoUs in [0, 1])."""

    inputs: Sequence[str] = ()
    from_list: str | None = None
    classes: Sequence[ClassQuery] = ()
    method: str = "zutis"
    checkpoint: str | None = None
    model: str = "ViT-B-16"
    pretrained: str | None = None
    task: str = "all"
    device: str = "auto"
    precision: str = "fp32"
    max_size: int | None = None
    mask_threshold: float = 0.5
    class_temperature: float = 5.0
    score_threshold: float = 0.001
    nms: str = "hard"
    iou_threshold: float = 0.3
    sigma: float = 0.5
    max_detections: int = 100
    crf: bool = False
    crf_iterations: int = 10
    crf_pos_w: float = 3.0
    crf_pos_xy: float = 1.0
    crf_bi_w: float = 4.0
    crf_bi_xy: float = 67.0
    crf_bi_rgb: float = 3.0
    workers: int = 0
    components: bool = False
    refine: str = "none"
    semantic_from: str = "dense"
    crop_weight: float = 0.0
    crop_model: str | None = None
    crop_pretrained: str | None = None
    crop_adapter: bool = True
    vis: bool = True
    max_pixels: int | None = 178_956_970

    def validate(self) -> None:
        if not self.classes:
            raise UsageError("give the classes to segment: --classes a,b,c or --classes-file FILE")
        if any(q.name.lower() == "background" for q in self.classes):
            raise UsageError("'background' is always a class of its own; leave it out of --classes")
        if self.task not in TASKS:
            raise UsageError(f"--task {self.task!r} is not one of {', '.join(TASKS)}")
        if self.method not in ("zutis", "maskclip"):
            raise UsageError(f"--method {self.method!r} is not zutis or maskclip")
        if self.nms not in NMS_METHODS:
            raise UsageError(f"--nms {self.nms!r} is not one of {', '.join(NMS_METHODS)}")
        if self.max_size is not None and self.max_size < 32:
            raise UsageError(f"--max-size must be >= 32 (got {self.max_size})")
        for name in ("mask_threshold", "iou_threshold"):
            if not 0 < getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must lie in (0, 1)")
        if self.max_detections < 1:
            raise UsageError("--max-detections must be >= 1")
        if not self.class_temperature > 0:
            raise UsageError(f"--class-temperature must be > 0 (got {self.class_temperature}); it scales the "
                             "cosine in sigmoid(T x cos), and a negative one would favour the least likely class")
        from zutiscli.ops.instances import REFINERS

        if self.refine not in REFINERS:
            raise UsageError(f"--refine {self.refine!r} is not one of {', '.join(REFINERS)}")
        if self.refine != "none" and self.method != "zutis":
            raise UsageError("--refine refines the instance masks of --method zutis")
        if self.semantic_from not in SEMANTIC_SOURCES:
            raise UsageError(f"--semantic-from {self.semantic_from!r} is not one of {', '.join(SEMANTIC_SOURCES)}")
        if self.semantic_from == "instances" and self.method != "zutis":
            raise UsageError("--semantic-from instances needs the query masks of --method zutis")
        if self.semantic_from == "instances" and self.crf:
            raise UsageError("--crf smooths the dense class probabilities; --semantic-from instances does not "
                             "use them (give --refine for the instance masks instead)")
        if not 0 <= self.crop_weight <= 1:
            raise UsageError(f"--crop-weight must lie in [0, 1] (got {self.crop_weight}); 0 = the dense "
                             "embeddings alone, 1 = the crop classifier alone")
        if self.crop_weight > 0 and self.method != "zutis":
            raise UsageError("--crop-weight re-classifies the instances of --method zutis; MaskCLIP's "
                             "instances are its semantic regions")
        if (self.crop_model or self.crop_pretrained) and self.crop_weight == 0:
            raise UsageError("--crop-model/--crop-pretrained choose the crop classifier; give --crop-weight "
                             "above 0 to use it")

    @property
    def tasks(self) -> set[str]:
        return {"semantic", "instance", "panoptic"} if self.task == "all" else {self.task}

    @property
    def wants_instances(self) -> bool:
        """Instances are computed: asked for, or the semantic map is drawn from them."""
        return bool(self.tasks & {"instance", "panoptic"}) or (
            self.semantic_from == "instances" and bool(self.tasks & {"semantic"}))


# ---- checkpoints ----------------------------------------------------------------------------
def load_zutis(path: str | Path, device: torch.device, dtype: torch.dtype = torch.float32):
    """Build the ZUTIS model of a checkpoint file (its CLIP weights and crop adapter included); returns (model, classes)."""
    from zutiscli.models.clip import ModelSpec, load_backbone
    from zutiscli.models.zutis import ZutisConfig, ZutisModel

    data = load_checkpoint(path)
    config = ZutisConfig.from_dict(data["config"])
    backbone = load_backbone(ModelSpec(config.backbone["name"], "none"), device="cpu")
    model = ZutisModel(backbone, config)
    try:
        model.load_state_dict(data["model"])
    except RuntimeError as exc:
        raise ArtefactError(f"{path}: weights do not fit its own config ({str(exc).splitlines()[0][:160]})") from None
    if data.get("crop_adapter") is not None:
        model.crop_adapter = CropAdapter.from_dict(data["crop_adapter"], where=str(path))
    model.to(device=device).eval()
    model.backbone.model.to(dtype=dtype)  # the heads stay float32; only the ViT runs in bf16/fp16
    for param in model.parameters():
        param.requires_grad_(False)
    return model, list(data["classes"])


# ---- predictors -----------------------------------------------------------------------------
@dataclass
class RawPrediction:
    """Network outputs for one image: dense text-space embeddings ``(h, w, D)`` and query mask logits."""

    dense: torch.Tensor
    mask_logits: torch.Tensor | None


class ZutisPredictor:
    """A trained ZUTIS model with a class list (open vocabulary: any names)."""

    def __init__(self, model: Any, classes: Sequence[ClassQuery]):
        self.model = model
        self.backbone = model.backbone
        self.text = model.text_embeddings([q.phrase for q in classes]).to(self.backbone.device)

    def __call__(self, image: torch.Tensor) -> RawPrediction:
        """One ``(3, h, w)`` float image in [0, 1] -> its raw outputs."""
        return self.batch(image[None])[0]

    def batch(self, images: torch.Tensor) -> list[RawPrediction]:
        """``(B, 3, h, w)`` float images in [0, 1], one size -> raw outputs, one per image (one pass)."""
        images = self.backbone.normalise(images.to(self.backbone.device, self.backbone.dtype))
        tokens = self.backbone.dense_tokens(images)
        dense = self.model.dense_embeddings(tokens)
        masks = self.model.mask_logits(tokens)[-1]
        return [RawPrediction(d.float(), m.float()) for d, m in zip(dense, masks)]


class MaskClipPredictor:
    """The training-free MaskCLIP baseline over a CLIP model."""

    def __init__(self, backbone: Any, classes: Sequence[ClassQuery]):
        self.backbone = backbone
        names = ["background"] + [q.phrase for q in classes]
        self.text = backbone.encode_text(names, templates="ensemble").to(backbone.device)

    def __call__(self, image: torch.Tensor) -> RawPrediction:
        images = self.backbone.normalise(image[None].to(self.backbone.device, self.backbone.dtype))
        return RawPrediction(self.backbone.maskclip_embeddings(images)[0].float(), None)


# ---- writing --------------------------------------------------------------------------------
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


@dataclass
class ImageResult:
    """What was predicted for one image (for the summary)."""

    path: Path
    image_id: int
    counts: dict[str, int] = field(default_factory=dict)
    semantic_classes: list[str] = field(default_factory=list)


@dataclass
class PredictResult:
    """Summary of a run: directory, per-image results, failures, and the time split (seconds)."""

    path: Path
    images: list[ImageResult]
    failed: list[tuple[str, str]]
    timing: dict[str, float]


def _resize_for_model(image: np.ndarray, max_size: int | None, patch: int) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``(3, h, w)`` float in [0, 1]; long side capped, sides multiples of ``patch``."""
    height, width = image.shape[:2]
    scale = min(1.0, max_size / max(height, width)) if max_size else 1.0
    new_h = max(patch, int(round(height * scale)) // patch * patch)
    new_w = max(patch, int(round(width * scale)) // patch * patch)
    tensor = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255)
    if (new_h, new_w) != (height, width):
        tensor = F.interpolate(tensor[None], size=(new_h, new_w), mode="bilinear", align_corners=False,
                               antialias=True)[0]
    return tensor


def postprocess(raw: RawPrediction, text: torch.Tensor, image: np.ndarray, config: PredictConfig, *,
                semantic: bool = True, instances: bool = True, crf_pool: Any = None,
                crop_classifier: CropClassifier | None = None) -> tuple[np.ndarray | None, Any]:
    """One image's network outputs -> its semantic map and instances at the image's own size.

    Args:
        raw: the predictor's outputs for ``image`` (dense ``(h, w, D)``; query mask logits
            ``(Q, 2h, 2w)`` for ZUTIS, ``None`` for MaskCLIP).
        text: ``(1 + K, D)`` float class text embeddings of the predictor, index 0 = background.
        image: ``(H, W, 3)`` uint8 RGB, as decoded (the CRF reads its colours; its size is the
            output size).
        config: thresholds, NMS and CRF options (``config.method`` picks the instance rule).
        semantic: compute the semantic map.
        instances: compute the instances (MaskCLIP's come from its semantic map, which is then
            computed as well but returned only when ``semantic`` is set). With
            ``config.semantic_from == "instances"`` the semantic map is drawn from them
            (:func:`zutiscli.ops.panoptic.semantic_from_instances`), so they must be computed.
        crf_pool: a process pool for the CRF, or ``None`` to run it here.
        crop_classifier: classifies the instances a second time from crops of ``image``,
            weighted by ``config.crop_weight`` (ZUTIS only).

    Returns:
        ``(semantic, instances)``: ``semantic`` ``(H, W)`` int64, 0 = background, ``i`` = the
        ``i``-th class of ``config.classes`` (every pixel labelled; no ignore value), or ``None``;
        ``instances`` a :class:`zutiscli.ops.instances.Instances` (masks ``(N, H, W)`` bool,
        labels in ``1..K``, sorted by score) or ``None``.
    """
    from zutiscli.ops.instances import instances_from_queries, semantic_from_dense

    height, width = image.shape[:2]
    labels = probs = None
    from_instances = config.semantic_from == "instances" and raw.mask_logits is not None
    if (semantic and not from_instances) or (instances and raw.mask_logits is None):
        probs, labels = semantic_from_dense(raw.dense, text, (height, width))
        if config.crf:
            labels = _crf(image, probs, config, crf_pool)
        labels = np.asarray(labels, dtype=np.int64)
    found = None
    if instances:
        if raw.mask_logits is not None:
            second_opinion = None if crop_classifier is None else functools.partial(crop_classifier, image)
            found = instances_from_queries(
                raw.mask_logits, raw.dense, text, mask_threshold=config.mask_threshold,
                class_temperature=config.class_temperature, score_threshold=config.score_threshold,
                nms=config.nms, iou_threshold=config.iou_threshold, sigma=config.sigma,
                max_detections=config.max_detections, output_size=(height, width),
                refine=config.refine, image=image, crop_classifier=second_opinion,
                crop_weight=config.crop_weight)
        else:
            found = _maskclip_instances(labels, probs, config)
    if semantic and from_instances:
        from zutiscli.ops.panoptic import semantic_from_instances

        if found is None:
            raise ValueError("--semantic-from instances: the instances were not computed")
        labels = semantic_from_instances(found, (height, width))
    return (labels if semantic else None), found


def load_crop_classifier(config: PredictConfig, model: Any, device: torch.device, dtype: torch.dtype,
                         log: Callable[[str], None] | None = None) -> CropClassifier | None:
    """The crop classifier ``config`` asks for (``None`` at ``crop_weight`` 0 or with no instances):
    ``--crop-model/--crop-pretrained``, else the CLIP the ZUTIS ``model`` was trained from; with the
    model's crop adapter (``model.crop_adapter``) when ``config.crop_adapter`` and it belongs to that CLIP."""
    if config.crop_weight <= 0 or not config.wants_instances:
        return None
    from zutiscli.models.clip import ModelSpec, load_backbone

    base = model.config.backbone
    spec = ModelSpec(*_crop_choice(config, base["name"], base["pretrained"]))
    with _as_crop_classifier_error():
        backbone = load_backbone(spec, device=device, dtype=dtype)
    adapter = model.crop_adapter if config.crop_adapter else None
    if adapter is not None and not adapter.fits(spec.name, spec.pretrained, backbone.embed_dim):
        if log is not None:
            fitted_for = f"{adapter.model} ({adapter.pretrained})"
            why = f"maps {adapter.weight.shape[0]}-wide embeddings, not {backbone.embed_dim}" \
                if fitted_for == f"{spec.name} ({spec.pretrained})" else \
                f"was fitted for {fitted_for}, not for the crop classifier's {spec.name} ({spec.pretrained})"
            log(f"the checkpoint's crop adapter {why}; naming the crops without it")
        adapter = None
    if adapter is not None and log is not None:
        _note_unfitted_names(adapter, config.classes, log)
    return CropClassifier(backbone, config.classes, adapter=None if adapter is None else adapter.weight.to(device))


def _note_unfitted_names(adapter: CropAdapter, classes: Sequence[ClassQuery], log: Callable[[str], None]) -> None:
    """One line when some query names are not among those the adapter was fitted on: it serves any
    names, but a map fitted without a name can send crops of the fitted classes toward it, and blurs
    what the fitted names do not tell apart (colours, say)."""
    fitted = {name.casefold() for name in adapter.classes}
    unfitted = [query.name for query in classes if query.name.casefold() not in fitted]
    if not fitted or not unfitted:
        return
    log(f"the crop adapter was fitted on {_listed(adapter.classes)}; {len(unfitted)} of the {len(classes)} names "
        f"queried were not among them ({_listed(unfitted)}): --no-crop-adapter leaves it out, if they hinge on "
        "what the fitted names do not tell apart")


def _listed(names: Sequence[str], most: int = 5) -> str:
    """``a, b, c`` or ``a, b, c, d, e and 3 more``."""
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


@contextlib.contextmanager
def _as_crop_classifier_error() -> Iterator[None]:
    """Errors of the crop classifier's model say so: they name --model/--pretrained, which the user
    gave as --crop-model/--crop-pretrained (or left to the checkpoint)."""
    try:
        yield
    except (ModelError, ArtefactError, UsageError) as exc:
        raise type(exc)(f"crop classifier (--crop-model/--crop-pretrained): {exc}") from None


def _crop_choice(config: PredictConfig, name: str, pretrained: str) -> tuple[str, str]:
    """The crop classifier's (model, pretrained): the options where given, else the base CLIP's."""
    return config.crop_model or name, config.crop_pretrained or pretrained


def _crop_classifier_spec(config: PredictConfig, checkpoint: Path) -> tuple[str, str] | None:
    """The crop classifier's (model, pretrained) without loading the checkpoint: the options, else
    the run's ``config.json`` beside ``model.pt``; ``None`` when neither says."""
    if config.crop_model and config.crop_pretrained:
        return config.crop_model, config.crop_pretrained
    try:
        recorded = json.loads((checkpoint.parent / "config.json").read_text())
        return _crop_choice(config, str(recorded["model"]), str(recorded["pretrained"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def plan_predict(config: PredictConfig, output: str | Path | None = None) -> Plan:
    """What ``zutis predict`` would do (``--dry-run``): the checks of a real run, no weights loaded, nothing written."""
    from zutiscli.data.images import discover_images

    config.validate()
    found = discover_images(list(config.inputs), from_list=config.from_list)
    if not found.paths and not found.problems:
        raise ZutisError("no images found in " + ", ".join(map(str, config.inputs)))
    writes = output_plan(output, "predict")
    device = resolve_device(config.device)
    dtype = resolve_precision(config.precision, device)
    sources = [*map(str, config.inputs), *([str(config.from_list)] if config.from_list else [])]
    counts = {"images": len(found.paths)} | ({"missing_list_entries": len(found.problems)} if found.problems else {})
    reads = [input_entry(", ".join(sources), "images", **counts)]
    if config.method == "zutis":
        checkpoint = resolve_checkpoint(config.checkpoint)
        if not os.access(checkpoint, os.R_OK):
            raise ArtefactError(f"{checkpoint}: the checkpoint file is not readable; check its permissions")
        model = {"name": "zutis", "pretrained": str(checkpoint), "weights": str(checkpoint), "source": "file",
                 "bytes": checkpoint.stat().st_size}
    else:
        from zutiscli.pipeline.index import default_pretrained

        model = weights_plan(config.model, config.pretrained or default_pretrained(config.model))
    model |= {"device": str(device), "precision": precision_name(dtype)}
    notes = [f"skipped list entry {entry}: {reason}" for entry, reason in found.problems]
    if config.crop_weight > 0:
        crop = _crop_classifier_spec(config, checkpoint)
        if crop is None:
            notes.append("crop classifier: the CLIP the checkpoint was trained from (named inside model.pt, "
                         "not read by a dry run)")
        else:
            with _as_crop_classifier_error():
                model["crop_classifier"] = weights_plan(*crop)
    tasks = sorted(config.tasks)
    params = {"classes": [q.name for q in config.classes], "method": config.method, "tasks": tasks,
              "crf": config.crf, "refine": config.refine, "crop_weight": config.crop_weight,
              "crop_adapter": config.crop_adapter,
              "semantic_from": config.semantic_from, "vis": config.vis}
    work = {"images_to_segment": len(found.paths)}
    return Plan("predict", reads, writes, model, params, work, notes)


def predict(config: PredictConfig, output: str | Path | None = None,
            progress: Callable[[int, int], None] | None = None,
            log: Callable[[str], None] | None = None, *, model: Any = None) -> PredictResult:
    """Run ``zutis predict``; returns the per-image summary (the directory is ``result.path``).

    ``model`` is an in-memory ZUTIS model (``zutis train``'s periodic evaluation passes the one it
    is training) used instead of loading ``config.checkpoint``; only for ``method="zutis"``. It is
    run as it is: the caller sets eval mode, and its device and dtype are those of the model.
    """
    from zutiscli.data.images import ImageLoadError, discover_images, load_image

    config.validate()
    say = log or (lambda message: None)
    found = discover_images(list(config.inputs), from_list=config.from_list)
    if not found.paths and not found.problems:
        raise ZutisError("no images found in " + ", ".join(map(str, config.inputs)))
    check_output_dir(output, "predict")  # refuse an unusable -o before loading the model, create nothing yet
    device = resolve_device(config.device)
    dtype = resolve_precision(config.precision, device)
    names = [q.name for q in config.classes]
    if model is not None:
        if config.method != "zutis":
            raise UsageError(f"an in-memory model is a ZUTIS model; it cannot run --method {config.method}")
        predictor: Any = ZutisPredictor(model, config.classes)
        model_record = {"checkpoint": None, "in_memory": True, "backbone": model.config.backbone}
        patch = model.backbone.patch_size
        inputs_record: list[Any] = []
    elif config.method == "zutis":
        checkpoint = resolve_checkpoint(config.checkpoint)
        model, trained = load_zutis(checkpoint, device, dtype)
        predictor = ZutisPredictor(model, config.classes)
        model_record = {"checkpoint": str(checkpoint.resolve()), "trained_classes": trained,
                        "backbone": model.config.backbone}
        patch = model.backbone.patch_size
        inputs_record = [checkpoint]
    else:
        from zutiscli.models.clip import ModelSpec, load_backbone
        from zutiscli.pipeline.index import default_pretrained

        spec = ModelSpec(config.model, config.pretrained or default_pretrained(config.model))
        backbone = load_backbone(spec, device=device, dtype=dtype)
        predictor = MaskClipPredictor(backbone, config.classes)
        model_record = spec.describe() | {"method": "maskclip"}
        patch = backbone.patch_size
        inputs_record = []
    crop_classifier = load_crop_classifier(config, model, device, dtype, say)
    if crop_classifier is not None:
        model_record["crop_classifier"] = crop_classifier.backbone.spec.describe()
        model_record["crop_adapter"] = model.crop_adapter.summary() if crop_classifier.adapter is not None else None
    tasks = config.tasks
    out: Path | None = None  # created with the first readable image: no image, no artefact
    stems = safe_filenames([p.stem for p in found.paths]) if found.paths else []
    want_semantic = bool(tasks & {"semantic", "panoptic"}) or config.method == "maskclip"
    want_instances = config.wants_instances
    sixteen_bit = len(names) >= IGNORE_8BIT  # class indices 1..K and 0 must stay clear of the 8-bit ignore
    timing = {"decode": 0.0, "model": 0.0, "post": 0.0, "write": 0.0}
    images_json: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    panoptic_annotations: list[dict[str, Any]] = []
    summaries: list[ImageResult] = []
    failed: list[tuple[str, str]] = list(found.problems)
    crf_pool = None
    if config.crf and config.workers > 0 and ("semantic" in tasks or "panoptic" in tasks):
        import concurrent.futures as futures

        crf_pool = futures.ProcessPoolExecutor(config.workers)
    try:
        for number, path in enumerate(found.paths):
            clock = time.perf_counter()
            try:
                image = np.asarray(load_image(path, max_pixels=config.max_pixels))
            except ImageLoadError as exc:
                failed.append((str(path), exc.reason))
                say(f"skipped {path}: {exc.reason}")
                continue
            if out is None:
                out = _open_output(output, tasks, config.vis)
            height, width = image.shape[:2]
            tensor = _resize_for_model(image, config.max_size, patch)
            timing["decode"] += time.perf_counter() - clock
            clock = time.perf_counter()
            with torch.inference_mode():
                raw = predictor(tensor)
            timing["model"] += time.perf_counter() - clock
            clock = time.perf_counter()
            image_id = len(images_json) + 1
            stem = stems[number]
            record: dict[str, Any] = {"id": image_id, "file_name": relative_to(out, path), "width": width,
                                      "height": height, "stem": stem}
            summary = ImageResult(path, image_id)
            semantic, instances = postprocess(raw, predictor.text, image, config, semantic=want_semantic,
                                              instances=want_instances, crf_pool=crf_pool,
                                              crop_classifier=crop_classifier)
            if semantic is not None:
                summary.semantic_classes = [names[v - 1] for v in np.unique(semantic) if v > 0]
            timing["post"] += time.perf_counter() - clock
            clock = time.perf_counter()
            if "semantic" in tasks:
                write_label_map(out / "semantic" / f"{stem}.png", semantic, sixteen_bit=sixteen_bit)
                record["semantic"] = f"semantic/{stem}.png"
            if instances is not None and "instance" in tasks:
                for mask, score, label in zip(instances.masks, instances.scores, instances.labels):
                    rle = encode_mask(mask)
                    results.append({"image_id": image_id, "category_id": int(label), "segmentation": rle,
                                    "bbox": rle_bbox(rle), "area": rle_area(rle), "score": round(float(score), 6)})
                    summary.counts[names[int(label) - 1]] = summary.counts.get(names[int(label) - 1], 0) + 1
            if "panoptic" in tasks:
                panoptic_annotations.append(_write_panoptic(out, stem, image_id, semantic, instances, sixteen_bit))
            if config.vis:
                overlay = render_overlay(image, names, semantic, instances.masks if instances is not None and
                                         "instance" in tasks else None,
                                         instances.labels if instances is not None else None,
                                         instances.scores if instances is not None else None)
                from PIL import Image

                with atomic_path(out / "vis" / f"{stem}.jpg", fsync=False) as tmp:
                    Image.fromarray(overlay).save(tmp, format="JPEG", quality=90)
            images_json.append(record)
            summaries.append(summary)
            timing["write"] += time.perf_counter() - clock
            if progress is not None:
                progress(number + 1, len(found.paths))
    finally:
        if crf_pool is not None:
            crf_pool.shutdown()
    if out is None:
        where, reason = failed[0]
        if len(failed) == 1:
            raise ZutisError(f"{where}: {reason}; no image to segment, nothing was written")
        raise ZutisError(f"none of the {len(failed)} inputs is a readable image (e.g. {where}: {reason}); "
                         f"nothing was written")
    categories = [{"id": i + 1, "name": name, "supercategory": "object"} for i, name in enumerate(names)]
    atomic_write_text(out / "predictions.json", json.dumps(results) + "\n")
    atomic_write_json(out / "images.json", {"images": images_json, "categories": categories}, indent=None)
    if "panoptic" in tasks:
        atomic_write_json(out / "panoptic.json", {
            "images": images_json, "annotations": panoptic_annotations,
            "categories": [{"id": c["id"], "name": c["name"], "isthing": 1} for c in categories]}, indent=None)
    write_manifest(out, "zutis.predictions", model=model_record, inputs=inputs_record,
                   params={k: v for k, v in vars(config).items() if k not in ("classes", "inputs", "from_list")}
                   | {"classes": names},
                   summary={"images": len(images_json), "failed": len(failed),
                            "instances": len(results), "timing": {k: round(v, 3) for k, v in timing.items()}})
    return PredictResult(out, summaries, failed, timing)


def _open_output(output: str | Path | None, tasks: set[str], vis: bool) -> Path:
    """Create the output directory and the folders the tasks write into."""
    out = prepare_output_dir(output, "predict")
    for folder, wanted in (("semantic", "semantic" in tasks), ("panoptic", "panoptic" in tasks), ("vis", vis)):
        if wanted:
            (out / folder).mkdir(exist_ok=True)
    return out


def _crf(image: np.ndarray, probs: Any, config: PredictConfig, pool: Any) -> np.ndarray:
    from zutiscli.ops.crf import dense_crf_labels

    probs = probs.numpy() if hasattr(probs, "numpy") else np.asarray(probs)
    kwargs = dict(iterations=config.crf_iterations, pos_w=config.crf_pos_w, pos_xy=config.crf_pos_xy,
                  bi_w=config.crf_bi_w, bi_xy=config.crf_bi_xy, bi_rgb=config.crf_bi_rgb)
    refined = pool.submit(dense_crf_labels, image, probs, **kwargs).result() if pool else \
        dense_crf_labels(image, probs, **kwargs)
    return np.asarray(refined).argmax(0).astype(np.int64)


def _maskclip_instances(semantic: np.ndarray, probs: Any, config: PredictConfig):
    """MaskCLIP's instances: each class's semantic region is one proposal (or one per component)."""
    from scipy import ndimage

    from zutiscli.ops.instances import Instances

    probs = probs.numpy() if hasattr(probs, "numpy") else np.asarray(probs)
    masks, scores, labels = [], [], []
    for value in np.unique(semantic):
        if value == 0 or value == 255:
            continue
        region = semantic == value
        parts = [region]
        if config.components:
            labelled, count = ndimage.label(region)
            parts = [labelled == i for i in range(1, count + 1)]
        for part in parts:
            masks.append(part)
            scores.append(float(probs[value][part].mean()))
            labels.append(int(value))
    if not masks:
        shape = semantic.shape
        return Instances(np.zeros((0, *shape), bool), np.zeros(0, np.float32), np.zeros(0, np.int64),
                         np.zeros(0, np.float32), np.zeros(0, np.float32))
    scores_array = np.asarray(scores, dtype=np.float32)
    return Instances(np.stack(masks), scores_array, np.asarray(labels, dtype=np.int64), scores_array.copy(),
                     np.ones(len(masks), np.float32))


def _write_panoptic(out: Path, stem: str, image_id: int, semantic: np.ndarray, instances: Any,
                    sixteen_bit: bool = False) -> dict[str, Any]:
    from PIL import Image

    from zutiscli.ops.panoptic import merge_panoptic, panoptic_to_rgb

    triple = (instances.masks, instances.scores, instances.labels) if instances is not None else None
    segment_map, segments = merge_panoptic(semantic, triple, ignore_label=IGNORE_16BIT if sixteen_bit else IGNORE_8BIT)
    with atomic_path(out / "panoptic" / f"{stem}.png", fsync=False) as tmp:
        Image.fromarray(panoptic_to_rgb(segment_map)).save(tmp, format="PNG")
    return {"image_id": image_id, "file_name": f"{stem}.png", "segments_info": segments}

