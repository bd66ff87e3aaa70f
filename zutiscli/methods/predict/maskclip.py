"""The training-free MaskCLIP baseline: CLIP's value-path dense embeddings against the class text
embeddings (85-template ensemble, "background" as a class). Instances: each class's semantic region
in an image is one proposal (with ``--components``, one per connected component)."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from zutiscli.data.classes import ClassQuery
from zutiscli.methods.predict import Predictor, RawPrediction
from zutiscli.methods.predict.common import CrfOptions, DenseSemantic


class MaskClipPredictor(Predictor):
    """MaskCLIP over a CLIP model."""

    method = "maskclip"

    def __init__(self, backbone: Any, classes: Sequence[ClassQuery], *, crf: CrfOptions = CrfOptions(),
                 components: bool = False, record: dict[str, Any] | None = None):
        self.backbone = backbone
        self.patch = backbone.patch_size
        names = ["background"] + [q.phrase for q in classes]
        self.text = backbone.encode_text(names, templates="ensemble").to(backbone.device)
        self.components = components
        self.recipe: dict[str, Any] = {}
        self.record = record or {}
        self.inputs: list[Any] = []
        self._dense = DenseSemantic(crf)

    def forward(self, images: torch.Tensor) -> list[RawPrediction]:
        images = self.backbone.normalise(images.to(self.backbone.device, self.backbone.dtype))
        return [RawPrediction(d.float(), None) for d in self.backbone.maskclip_embeddings(images)]

    def postprocess(self, raw: RawPrediction, image: np.ndarray, settings: Any, *, semantic: bool,
                    instances: bool) -> tuple[np.ndarray | None, Any]:
        probs, labels = self._dense(raw.dense, self.text, image, settings.crf)
        found = region_instances(labels, probs, self.components) if instances else None
        return (labels if semantic else None), found

    def close(self) -> None:
        self._dense.close()


def region_instances(semantic: np.ndarray, probs: Any, components: bool = False) -> Any:
    """Each class's region of ``semantic`` ``(H, W)`` as one instance (or one per connected
    component), scored by the mean probability ``probs`` ``(1 + K, H, W)`` of its class inside it."""
    from scipy import ndimage

    from zutiscli.ops.instances import Instances

    probs = probs.numpy() if hasattr(probs, "numpy") else np.asarray(probs)
    masks, scores, labels = [], [], []
    for value in np.unique(semantic):
        if value == 0 or value == 255:
            continue
        region = semantic == value
        parts = [region]
        if components:
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


def load(config: Any, device: torch.device, dtype: torch.dtype, log: Callable[[str], None], *,
         model: Any = None) -> MaskClipPredictor:
    """MaskCLIP with ``config.model`` / ``config.pretrained`` (default: the model's usual weights)."""
    from zutiscli.errors import UsageError
    from zutiscli.models.clip import ModelSpec, load_backbone
    from zutiscli.models.clip import default_pretrained

    if model is not None:
        raise UsageError("an in-memory model is a ZUTIS model; it cannot run --method maskclip")
    spec = ModelSpec(config.model, config.pretrained or default_pretrained(config.model))
    backbone = load_backbone(spec, device=device, dtype=dtype)
    return MaskClipPredictor(backbone, config.classes, crf=CrfOptions.of(config), components=config.components,
                             record=spec.describe() | {"method": "maskclip"})


def plan(config: Any) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """Dry run: the CLIP weights' entry; MaskCLIP has no recipe."""
    from zutiscli.models.clip import default_pretrained
    from zutiscli.models.locate import weights_plan

    return weights_plan(config.model, config.pretrained or default_pretrained(config.model)), {}, []
