"""`zutis hypotheses`: the classes each unlabelled image is thought to hold (ReCLIP++'s label hypotheses).

ReCLIP++ (Wang & Kang, Sec. III-D) needs, for its contrastive loss, the set of classes present in
each training image, and guesses it without labels: windows of ``r`` times the image's sides slide
over it with a stride of half a window (:func:`zutiscli.ops.windows.sliding_windows`), each crop
is resized to CLIP's input and classified by its global embedding against the classes' Query
text embeddings (the 85-template ensemble), and the classes detected in more than ``t`` of the
crops are the image's hypothesis (:func:`zutiscli.ops.windows.voted_classes`). ReCLIP's earlier
way, one embedding of the whole image, is ``--mode image`` (classes whose softmax probability at
CLIP's temperature exceeds ``t``), for the comparison.

Writes a ``zutis.hypotheses`` directory (:mod:`zutiscli.artefacts.hypotheses`), a line per image a
person can read; with ``--ground-truth`` the manifest has the hypotheses' precision and recall (per
class too) against the classes each image holds. Unreadable images are listed and skipped; when
none can be read nothing is written.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from zutiscli.artefacts.hypotheses import HYPOTHESES_NAME, KIND, Hypothesis, hypothesis_record
from zutiscli.artefacts.lock import holding_locks
from zutiscli.errors import UsageError, ZutisError
from zutiscli.pipeline.hypotheses_config import HypothesesConfig  # noqa: F401 - the stage's options

__all__ = ["HypothesesConfig", "HypothesesResult", "hypotheses", "hypothesis_quality"]


@dataclass
class HypothesesResult:
    """What a run wrote: the directory, the hypotheses, and with ground truth their precision and recall."""

    path: Path
    images: list[Hypothesis]
    failed: int
    mean_classes: float
    quality: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def hypothesis_quality(chosen: list[set[str]], truth: list[set[str] | None], classes: list[str]) -> dict[str, Any]:
    """Micro precision and recall of hypotheses against the classes each image holds (only classes
    of the list count; images without ground truth are left out), and per class."""
    known = set(classes)
    hits = chosen_total = true_total = 0
    per_class = {name: [0, 0, 0] for name in classes}  # hits, chosen, true
    for mine, theirs in zip(chosen, truth):
        if theirs is None:
            continue
        theirs = theirs & known
        hits += len(mine & theirs)
        chosen_total += len(mine)
        true_total += len(theirs)
        for name in mine:
            per_class[name][1] += 1
        for name in theirs:
            per_class[name][2] += 1
        for name in mine & theirs:
            per_class[name][0] += 1

    def ratio(a: int, b: int) -> float | None:
        return round(a / b, 6) if b else None

    return {"precision": ratio(hits, chosen_total), "recall": ratio(hits, true_total),
            "images_scored": sum(t is not None for t in truth),
            "per_class": {name: {"precision": ratio(h, c), "recall": ratio(h, t)}
                          for name, (h, c, t) in per_class.items()}}


class _Voter:
    """A frozen CLIP and the classes' Query embeddings: image -> the hypothesis' frequencies."""

    def __init__(self, config: HypothesesConfig, device: Any, dtype: Any):
        import torch

        from zutiscli.models.clip import ModelSpec, default_pretrained, load_backbone

        self.spec = ModelSpec(config.model, config.pretrained or default_pretrained(config.model))
        self.backbone = load_backbone(self.spec, device=device, dtype=dtype)
        with torch.no_grad():
            phrases = [q.phrase for q in config.classes] + (["background"] if config.background else [])
            self.text = self.backbone.encode_text(phrases, templates="ensemble")
        self.scale = float(self.backbone.model.logit_scale.exp())
        self.config = config

    def frequencies(self, rgb: np.ndarray) -> np.ndarray:
        """``(H, W, 3)`` uint8 -> ``(C,)`` frequency of each class among the crops (or its probability)."""
        import torch
        import torch.nn.functional as F

        from zutiscli.ops.windows import sliding_windows, voted_classes

        pixels = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).float().div_(255)
        height, width = rgb.shape[:2]
        if self.config.mode == "image":
            boxes = [(0, 0, height, width)]
        else:
            boxes = sliding_windows(height, width, self.config.window)
        size = tuple(int(s) for s in self.backbone.image_size)
        embedded = []
        with torch.no_grad():
            for start in range(0, len(boxes), self.config.batch_size):
                crops = torch.stack([pixels[:, top:top + h, left:left + w]
                                     for top, left, h, w in boxes[start:start + self.config.batch_size]])
                crops = F.interpolate(crops, size=size, mode="bilinear", align_corners=False, antialias=True)
                embedded.append(self.backbone.encode_images(self.backbone.normalise(crops)).float().cpu())
        similarity = torch.cat(embedded) @ self.text.float().cpu().T
        classes = len(self.config.classes)  # a last "background" row votes but is never hypothesised
        if self.config.mode == "image":
            return torch.softmax(self.scale * similarity[0], dim=0).numpy().astype(np.float64)[:classes]
        return voted_classes(similarity.argmax(1).numpy(), len(self.text), self.config.threshold)[1][:classes]


def _inputs(config: HypothesesConfig) -> tuple[Any, list[set[str] | None] | None]:
    """``(images found, each image's true classes or None)``, the options checked; a
    :class:`ZutisError` when no image is found."""
    from zutiscli.data.images import discover_images

    config.validate()
    if config.mode == "image" and config.threshold == 0:
        raise UsageError("--mode image keeps the classes whose probability exceeds --threshold; give one (e.g. 0.1)")
    found = discover_images(list(config.inputs))
    if not found.paths:
        why = f" ({found.problems[0][0]}: {found.problems[0][1]})" if found.problems else ""
        raise ZutisError(f"no images found in {', '.join(config.inputs)}{why}; give image files, directories or globs")
    truth = None
    if config.ground_truth:
        from zutiscli.engine.mask_truth import image_classes

        truth = image_classes(config.ground_truth, found.paths)
    return found, truth


def plan_hypotheses(config: HypothesesConfig, output: str | Path | None = None) -> Any:
    """What ``zutis hypotheses`` would do (``--dry-run``): the checks of a real run (options, images,
    ground truth, the CLIP's weights, the output directory), no weights loaded, nothing written."""
    from zutiscli.models.clip import default_pretrained
    from zutiscli.models.device import precision_name, resolve_device, resolve_precision
    from zutiscli.pipeline.plan import Plan, input_entry, output_plan, weights_plan

    found, truth = _inputs(config)
    writes = output_plan(output, "hypotheses")
    dtype = resolve_precision(config.precision, resolve_device(config.device))
    model = weights_plan(config.model, config.pretrained or default_pretrained(config.model)) | {
        "precision": precision_name(dtype)}
    reads = [input_entry(", ".join(config.inputs), "images", images=len(found.paths))]
    if truth is not None:
        reads.append(input_entry(config.ground_truth, "COCO instances",
                                 images_paired=sum(t is not None for t in truth)))
    params = {"classes": [q.name for q in config.classes], "mode": config.mode, "window": config.window,
              "threshold": config.threshold, "background": config.background}
    return Plan("hypotheses", reads, writes, model, params, {"images_to_vote_on": len(found.paths)})


@holding_locks
def hypotheses(config: HypothesesConfig, output: str | Path | None = None, *,
               progress: Callable[[int, int], None] | None = None,
               log: Callable[[str], None] | None = None) -> HypothesesResult:
    """Run ``zutis hypotheses``; returns what it wrote (the directory is ``result.path``)."""
    from zutiscli.artefacts.atomic import atomic_write_text
    from zutiscli.artefacts.manifest import write_manifest
    from zutiscli.artefacts.rundir import check_output_dir, prepare_output_dir
    from zutiscli.data.images import ImageLoadError, load_image
    from zutiscli.models.device import resolve_device, resolve_precision

    say = log or (lambda message: None)
    started = time.perf_counter()
    found, truth = _inputs(config)
    check_output_dir(output, "hypotheses")
    device = resolve_device(config.device)
    voter = _Voter(config, device, resolve_precision(config.precision, device))
    names = [q.name for q in config.classes]
    say(f"{config.mode}: {len(found.paths)} images, {len(names)} classes, {voter.spec.name} ({voter.spec.pretrained})")
    images: list[Hypothesis] = []
    for number, path in enumerate(found.paths, start=1):
        try:
            rgb = np.asarray(load_image(path))
        except ImageLoadError as exc:
            images.append(Hypothesis(Path(path), (), {}, exc.reason))
        else:
            frequency = voter.frequencies(rgb)
            chosen = tuple(name for name, f in zip(names, frequency) if f > config.threshold)
            images.append(Hypothesis(Path(path), chosen, {n: float(f) for n, f in zip(names, frequency) if f > 0}))
        if progress is not None:
            progress(number, len(found.paths))
    read = [item for item in images if item.failed is None]
    if not read:
        raise ZutisError(f"none of the {len(images)} images could be read (e.g. {images[0].image}: "
                         f"{images[0].failed}); nothing was written")
    quality = hypothesis_quality([set(item.classes) for item in read],
                                 [t for t, item in zip(truth, images) if item.failed is None], names) \
        if truth is not None else {}
    out = prepare_output_dir(output, "hypotheses")
    atomic_write_text(out / HYPOTHESES_NAME, "".join(json.dumps(hypothesis_record(out, item)) + "\n" for item in images))
    mean_classes = round(float(np.mean([len(item.classes) for item in read])), 4)
    seconds = round(time.perf_counter() - started, 2)
    summary = {"images": len(read), "failed": len(images) - len(read), "mean_classes": mean_classes,
               "seconds": seconds} | quality
    write_manifest(out, KIND, model=voter.spec.describe(),
                   inputs=[*(p for p in config.inputs if Path(p).exists()),
                           *([config.ground_truth] if config.ground_truth else [])],
                   params={"classes": names, "phrases": [q.phrase for q in config.classes], "mode": config.mode,
                           "window": config.window, "threshold": config.threshold, "background": config.background,
                           "templates": "ensemble"},
                   summary=summary)
    return HypothesesResult(out, images, len(images) - len(read), mean_classes, quality, seconds)
