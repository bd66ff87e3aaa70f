"""Predictors: the ways ``zutis predict`` turns an image into dense class evidence, and that into masks.

A predictor method is one module of this package that registers a :class:`PredictMethod`: how to
load it for a class list (:meth:`PredictMethod.load` returns a :class:`Predictor`), what a dry run
reports of its weights, and the inference recipe it carries. The predict engine
(:mod:`zutiscli.engine.predict`) runs every predictor the same way: batched :meth:`Predictor.forward`
on images of one size, then :meth:`Predictor.postprocess` per image. Adding a method is one module
plus its registration here; nothing else branches on the method's name.

Images are ``(B, 3, h, w)`` float tensors in [0, 1] whose sides are multiples of
:attr:`Predictor.patch`; outputs are at the decoded image's own ``(H, W)``.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar

if TYPE_CHECKING:  # the registry is read by --help and completion, which must not import torch
    import numpy as np
    import torch

    from zutiscli.engine.inference import InferenceSettings


@dataclass
class RawPrediction:
    """Network outputs for one image.

    Attributes:
        dense: ``(h, w, D)`` float32 dense embeddings in the text space, on the patch grid.
        mask_logits: ``(Q, h', w')`` float32 query mask logits (ZUTIS: ``h' = 2h``), or ``None``.
        stuff: ``(h'', w'', S)`` float32 cosine similarity to the stuff centroids of a model's stuff
            probe (on the probe's patch grid), or ``None``.
        logits: ``(1 + K, h, w)`` float32 class logits on the patch grid, for a method that scores
            classes otherwise than by ``dense`` against the text (ReCLIP++'s rectified logits), or ``None``.
    """

    dense: "torch.Tensor"
    mask_logits: "torch.Tensor | None"
    stuff: "torch.Tensor | None" = None
    logits: "torch.Tensor | None" = None


class Predictor(ABC):
    """A loaded model that segments images for a fixed list of classes.

    Attributes:
        patch: input sides must be multiples of it (pixels).
        text: ``(1 + K, D)`` class text embeddings, index 0 = background (methods that classify in
            CLIP's text space).
        record: what the predictions' manifest says of the model (``{"checkpoint": ..., ...}``).
        recipe: the inference settings the model's training recipe chose (``{}``: none).
        inputs: files the predictions depend on (a checkpoint), for the manifest's fingerprints.
    """

    method: ClassVar[str]
    patch: int
    text: "torch.Tensor"
    record: dict[str, Any]
    recipe: dict[str, Any]
    inputs: list[Any]

    @abstractmethod
    def forward(self, images: "torch.Tensor") -> list[RawPrediction]:
        """``(B, 3, h, w)`` float images in [0, 1], one size -> raw outputs, one per image (one pass)."""

    @abstractmethod
    def postprocess(self, raw: RawPrediction, image: "np.ndarray", settings: "InferenceSettings", *,
                    semantic: bool, instances: bool) -> tuple[Any, Any]:
        """One image's raw outputs -> ``(semantic, instances)`` at the image's size.

        ``image`` is the decoded ``(H, W, 3)`` uint8 RGB image. ``semantic`` is ``(H, W)`` int64
        (0 = background, ``i`` = the ``i``-th class; every pixel labelled) or ``None`` when not
        asked for; ``instances`` a :class:`zutiscli.ops.instances.Instances` (labels in ``1..K``,
        best score first) or ``None``.
        """

    def prepare(self, settings: "InferenceSettings", config: Any, device: Any, dtype: Any,
                log: Callable[[str], None] | None, *, wants_instances: bool) -> None:
        """Load what the resolved ``settings`` need beyond the model (a crop classifier, say); default: nothing."""

    def close(self) -> None:
        """Release worker pools (the engine calls it when done)."""


@dataclass(frozen=True)
class PredictMethod:
    """A registered predictor method.

    Attributes:
        name: the ``--method`` value.
        summary: one line for ``--help``.
        module: the module that implements it (imported on first use, so ``--help`` stays light).
        trained: whether it needs a ``zutis train`` checkpoint (``--checkpoint``), or CLIP weights alone.
    """

    name: str
    summary: str
    module: str
    trained: bool

    def implementation(self) -> Any:
        return importlib.import_module(self.module)

    def load(self, config: Any, device: Any, dtype: Any, log: Callable[[str], None], *, model: Any = None
             ) -> Predictor:
        """The method's :class:`Predictor` for ``config.classes`` (``model``: an in-memory model instead of a file)."""
        return self.implementation().load(config, device, dtype, log, model=model)

    def plan(self, config: Any) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
        """For a dry run, without loading weights: ``(model entry, inference recipe, notes)``."""
        return self.implementation().plan(config)


METHODS: dict[str, PredictMethod] = {}


def register(method: PredictMethod) -> PredictMethod:
    METHODS[method.name] = method
    return method


register(PredictMethod("zutis", "a trained ZUTIS model (--checkpoint)", "zutiscli.methods.predict.zutis", True))
register(PredictMethod("maskclip", "the training-free MaskCLIP baseline (CLIP weights alone)",
                       "zutiscli.methods.predict.maskclip", False))
register(PredictMethod("reclip", "ReCLIP++'s rectified CLIP, trained by `zutis train --method reclip` (--checkpoint)",
                       "zutiscli.methods.predict.reclip", True))
register(PredictMethod("reco", "training-free ReCo: similarity to co-segmented references (--references)",
                       "zutiscli.methods.predict.reco", False))

#: How ``--method reco`` decides the background (``--background-rule``; here, not in
#: :mod:`zutiscli.methods.predict.reco`, because the options read it without importing torch).
RECO_BACKGROUND_RULES = ("share", "match")


def get(name: str) -> PredictMethod:
    """The registered method ``name``; a :class:`zutiscli.errors.UsageError` listing them otherwise."""
    from zutiscli.errors import UsageError

    if name not in METHODS:
        raise UsageError(f"--method {name!r} is not one of {', '.join(METHODS)}")
    return METHODS[name]
