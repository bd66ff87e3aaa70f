"""ReCLIP++'s rectified CLIP (``zutis train --method reclip``): the decoder's logits ``M_o``, upsampled
bilinearly to the image, their softmax and argmax (DenseCRF on request). Instances: each class's
region as one proposal (one per connected component with ``--components``), as for MaskCLIP.

The rectifier is tied to the classes it was trained for (its bias logits and decoder have one
channel per class): it segments those, in any order, and refuses other class lists. It is not
open-vocabulary; MaskCLIP (``--method maskclip``) is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from zutiscli.data.classes import ClassQuery
from zutiscli.methods.predict import Predictor, RawPrediction
from zutiscli.methods.predict.common import CrfOptions, DenseSemantic
from zutiscli.methods.predict.maskclip import region_instances


def load_rectifier(path: str | Path, device: Any, dtype: torch.dtype = torch.float32) -> tuple[Any, list[str]]:
    """The :class:`zutiscli.models.reclip.Rectifier` of a checkpoint file (its CLIP loaded as its config
    names it), in eval mode without gradients, and its trained class names."""
    from zutiscli.artefacts.checkpoint import check_method, check_weights_fit, load_checkpoint
    from zutiscli.models.clip import ModelSpec, load_backbone, named_by
    from zutiscli.models.reclip import Rectifier, RectifierConfig

    data = load_checkpoint(path, map_location="cpu")
    check_method(data, path, "reclip")
    config = RectifierConfig.from_dict(data["config"], where=str(path))
    phrases = data.get("phrases") or data["classes"]
    query = data["model"].get("query")
    if query is None or query.ndim != 2 or query.shape[0] != len(data["classes"]) + 1:
        from zutiscli.errors import ArtefactError

        raise ArtefactError(f"{path}: its Query features do not match its classes; the file is damaged or was edited")
    with named_by(path, model="its config names backbone", weights="its config names weights"):
        backbone = load_backbone(ModelSpec(config.backbone["name"], config.backbone["pretrained"]), device=device,
                                 dtype=dtype)
    model = Rectifier(backbone, config, [str(p) for p in phrases], query=query)
    check_weights_fit(model, data["model"], path, remedy="the file is damaged or was edited; predict with the "
                      "model.pt its training run wrote")
    model.load_state_dict(data["model"])
    model.to(device).eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model, [str(name) for name in data["classes"]]


class ReclipPredictor(Predictor):
    """A rectified CLIP segmenting its trained classes (``order``: the trained channel of each class asked)."""

    method = "reclip"

    def __init__(self, model: Any, order: Sequence[int], *, crf: CrfOptions = CrfOptions(),
                 components: bool = False, record: dict[str, Any] | None = None, inputs: list[Any] | None = None):
        self.model = model
        self.patch = model.backbone.patch_size
        self.channels = torch.tensor([0, *order], dtype=torch.long)
        self.text = model.query[self.channels]
        self.components = components
        self.recipe: dict[str, Any] = {}
        self.record = record or {}
        self.inputs = inputs or []
        self._dense = DenseSemantic(crf)

    def forward(self, images: torch.Tensor) -> list[RawPrediction]:
        backbone = self.model.backbone
        images = backbone.normalise(images.to(backbone.device, backbone.dtype))
        with torch.no_grad():
            out = self.model(images)
        features = out["features"].permute(0, 2, 3, 1)
        logits = out["output"][:, self.channels.to(out["output"].device)]
        return [RawPrediction(f.float(), None, None, l.float()) for f, l in zip(features, logits)]

    def postprocess(self, raw: RawPrediction, image: np.ndarray, settings: Any, *, semantic: bool,
                    instances: bool) -> tuple[np.ndarray | None, Any]:
        height, width = image.shape[:2]
        logits = F.interpolate(raw.logits[None].cpu(), size=(height, width), mode="bilinear", align_corners=False)[0]
        probs = torch.softmax(logits, dim=0)
        labels = self._dense.crf_labels(image, probs) if settings.crf else probs.argmax(0).numpy().astype(np.int64)
        found = region_instances(labels, probs, self.components) if instances else None
        return (labels if semantic else None), found

    def close(self) -> None:
        self._dense.close()


def class_order(asked: Sequence[ClassQuery], trained: Sequence[str], checkpoint: Path) -> list[int]:
    """The trained channel (1-based) of each class asked; a :class:`UsageError` unless they are the trained classes."""
    from zutiscli.errors import UsageError

    names = [q.name for q in asked]
    if sorted(names) != sorted(trained):
        raise UsageError(f"{checkpoint}: ReCLIP++ segments the classes it was trained for ({', '.join(trained)}), in "
                         f"any order, not others: its bias and decoder have one channel per class (it is not "
                         f"open-vocabulary). Give those, or train on yours (`zutis train --method reclip`)")
    return [trained.index(name) + 1 for name in names]


def load(config: Any, device: torch.device, dtype: torch.dtype, log: Callable[[str], None], *,
         model: Any = None) -> ReclipPredictor:
    """The predictor of ``config.checkpoint`` (a run directory or its ``model.pt``) for ``config.classes``."""
    from zutiscli.artefacts.checkpoint import check_method, load_checkpoint
    from zutiscli.artefacts.runs import resolve_checkpoint
    from zutiscli.errors import UsageError

    if model is not None:
        raise UsageError("an in-memory model is a ZUTIS model; it cannot run --method reclip")
    checkpoint = resolve_checkpoint(config.checkpoint)
    peek = load_checkpoint(checkpoint, mmap=True)
    check_method(peek, checkpoint, "reclip")  # before CLIP loads: a wrong file is refused at once
    order = class_order(config.classes, [str(c) for c in peek["classes"]], checkpoint)
    rectifier, trained = load_rectifier(checkpoint, device, dtype)
    record = {"checkpoint": str(checkpoint.resolve()), "trained_classes": trained,
              "backbone": rectifier.config.backbone, "method": "reclip", "bias": rectifier.config.bias,
              "position": rectifier.config.position, "decoder": rectifier.config.decoder,
              "student": rectifier.config.student}
    return ReclipPredictor(rectifier, order, crf=CrfOptions.of(config), components=config.components, record=record,
                           inputs=[checkpoint])


def plan(config: Any) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """Dry run: the checkpoint and the CLIP it names; ReCLIP++ has no inference recipe."""
    from zutiscli.artefacts.checkpoint import check_method, load_checkpoint
    from zutiscli.artefacts.runs import resolve_checkpoint
    from zutiscli.models.locate import weights_plan

    checkpoint = resolve_checkpoint(config.checkpoint)
    data = load_checkpoint(checkpoint, mmap=True)
    check_method(data, checkpoint, "reclip")
    class_order(config.classes, [str(c) for c in data["classes"]], checkpoint)
    backbone = (data.get("config") or {}).get("backbone") or {}
    model = {"name": "reclip", "pretrained": str(checkpoint), "weights": str(checkpoint), "source": "file",
             "bytes": checkpoint.stat().st_size,
             "clip": weights_plan(str(backbone.get("name")), str(backbone.get("pretrained")))}
    return model, {}, []
