"""The recipe of a ``shapes-clip`` training run (:class:`TrainClipConfig`), apart from the training
code so that the command line reads its defaults without importing torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from zutiscli.shapes.world import DEFAULT_HELD_OUT

#: Names of the rules deciding which in-batch image--caption pairs are positives.
POSITIVE_RULES: tuple[str, ...] = ("truth", "content", "caption")


@dataclass
class TrainClipConfig:
    """Recipe of a ``shapes-clip`` training run (every field is recorded with the weights).

    Attributes:
        model: open_clip model name (a config in ``zutiscli/models/configs``, or any open_clip
            architecture).
        init: the weights training starts from: ``"none"`` (random initialisation, as the shipped
            weights were trained), ``"builtin"`` (the shipped weights) or a weights file of ``model``
            (e.g. an earlier ``zutis synth train-clip`` run's): fine-tuning.
        seed: seeds the weight initialisation (torch) and the training stream (caption samples
            and augmentation); the same seed gives the same weights on the same machine.
        steps: optimiser steps; ``steps * batch_size`` fresh samples are drawn, none repeated.
        batch_size: image--caption pairs per step.
        lr: peak learning rate of AdamW (after linear warm-up, then cosine decay to
            ``lr * min_lr_ratio``).
        min_lr_ratio: final learning rate as a fraction of ``lr``.
        warmup: linear warm-up steps.
        weight_decay: decoupled AdamW weight decay on matrices (not on biases, norms,
            positional/class embeddings or the logit scale).
        betas, eps: AdamW moment coefficients and epsilon (CLIP's large-batch values).
        grad_clip: maximum global gradient L2 norm (0 disables clipping).
        image_size: side of the square training images, pixels; None = the model's input size.
        held_out: ``(colour, shape)`` pairs never shown in training (zero-shot composition test).
        hflip: probability of mirroring an image left-right (its caption's "left"/"right" are
            swapped accordingly).
        stuff: probability that a training pair is drawn over named stuff
            (:mod:`zutiscli.shapes.stuff`), its caption then naming the objects, the objects and
            the stuff under the largest, or the stuff alone (:func:`zutiscli.shapes.world.caption_sample`).
        varied: probability that a training pair is drawn over a varied training background with
            clutter and milder lighting changes (:mod:`zutiscli.shapes.variety`; over named stuff,
            the lighting alone); the objects and caption are the same as without it.
        dense: weight of the patch-aligned contrastive term (:func:`zutiscli.shapes.clip_train.patch_aligned_loss`)
            added to the loss: each caption is scored against every image's MaskCLIP value-path
            patch embeddings, pooled by their similarity to that caption (PACL, Mukhoti et al.
            2023), so that the patches MaskCLIP reads carry what the captions name. 0 trains the
            pooled embedding alone, as CLIP does.
        dense_temperature: temperature of the softmax over patches in that pooling.
        text_noise: probability that a caption gets 1--3 random content-free vocabulary tokens
            inserted (:func:`insert_noise_tokens`), so that unseen words in prompts are ignored.
        positives: which image--caption pairs count as matches in the loss: ``"truth"`` (caption
            ``j`` truly describes image ``i``, :func:`positive_matrix`), ``"content"`` (images ``i``
            and ``j`` hold the same colour--shape pairs) or ``"caption"`` (identical captions).
        device: where to train: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        precision: autocast of the forward pass: ``auto`` (bf16 on CUDA, fp32 on the CPU, where
            the shipped weights were trained), ``fp32``, ``bf16`` or ``fp16`` (CUDA only, with a
            gradient scaler). The weights and the optimiser stay fp32; the stream of samples is
            the same whatever the device and precision.
        threads: torch intra-op threads during training (the previous value is restored).
        workers: data-generation processes running ahead of the optimiser (0 = generate in the
            training process; the stream is identical either way).
        log_every: steps between progress reports (and loss-curve points).
        checkpoint_every: when > 0 (a multiple of ``log_every``), save the full training state
            every that many steps to ``<output>.ckpt`` (:func:`checkpoint_path`); a later call with
            the same recipe and output resumes from it (the stream is a function of the step, so
            a resumed run equals an uninterrupted one). The checkpoint is deleted at the end; 0
            saves none.
        eval_pool: when > 0, run :func:`zutiscli.shapes.clip_eval.evaluate_shapes_clip` with this
            pool size on the trained weights, on the train and the shift split, and return its
            metrics; 0 skips it.
    """

    model: str = "shapes-clip"
    init: str = "none"
    seed: int = 0
    steps: int = 6000
    batch_size: int = 128
    lr: float = 1e-3
    min_lr_ratio: float = 0.0
    warmup: int = 200
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    grad_clip: float = 1.0
    image_size: int | None = None
    held_out: frozenset[tuple[str, str]] = field(default_factory=lambda: DEFAULT_HELD_OUT)
    hflip: float = 0.5
    stuff: float = 0.0
    varied: float = 0.0
    dense: float = 0.0
    dense_temperature: float = 0.05
    text_noise: float = 0.0
    positives: str = "truth"
    device: str = "auto"
    precision: str = "auto"
    threads: int = 2
    workers: int = 1
    log_every: int = 50
    checkpoint_every: int = 250
    eval_pool: int = 2000

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict of the recipe (held-out pairs as sorted ``"colour shape"`` strings)."""
        out = asdict(self)
        out["betas"] = list(self.betas)
        out["held_out"] = sorted(f"{c} {s}" for c, s in self.held_out)
        return out

    def recipe_key(self) -> dict[str, Any]:
        """The fields that decide the trained weights (not the device, precision, threads, workers,
        logging or evaluation: a run may resume on another device)."""
        out = self.to_json()
        for name in ("device", "precision", "threads", "workers", "log_every", "checkpoint_every", "eval_pool"):
            out.pop(name)
        return out

    def validate(self) -> None:
        """Raise ValueError on an impossible recipe."""
        if self.steps < 1 or self.batch_size < 2:
            raise ValueError(f"need steps >= 1 and batch_size >= 2, got {self.steps}, {self.batch_size}")
        if not self.lr > 0 or self.warmup < 0 or self.weight_decay < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("need lr > 0, warmup >= 0, weight_decay >= 0 and 0 <= min_lr_ratio <= 1")
        if self.threads < 1 or self.workers < 0 or self.log_every < 1 or self.eval_pool < 0:
            raise ValueError("need threads >= 1, workers >= 0, log_every >= 1 and eval_pool >= 0")
        if self.checkpoint_every < 0 or (self.checkpoint_every and self.checkpoint_every % self.log_every):
            raise ValueError("checkpoint_every must be 0 or a positive multiple of log_every")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be one of auto, fp32, bf16, fp16, got {self.precision!r}")
        if self.positives not in POSITIVE_RULES:
            raise ValueError(f"positives must be one of {', '.join(POSITIVE_RULES)}, got {self.positives!r}")
        if self.dense < 0 or not self.dense_temperature > 0:
            raise ValueError(f"need dense >= 0 and dense_temperature > 0, got {self.dense}, {self.dense_temperature}")
        if self.image_size is not None and self.image_size < 8:
            raise ValueError(f"image_size must be >= 8 pixels, got {self.image_size}")
        if not self.init:
            raise ValueError("init must be none, builtin or a weights file")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if not all(0.0 <= p <= 1.0 for p in (self.hflip, self.stuff, self.varied, self.text_noise)):
            raise ValueError(f"hflip, stuff, varied and text_noise must be probabilities, got {self.hflip}, "
                             f"{self.stuff}, {self.varied}, {self.text_noise}")
