"""The options of ``zutis train --method reclip`` (:class:`ReclipTrainConfig`), importable without torch.

ReCLIP++'s rectification stage shares the names of ``zutis train``'s general options (``--lr``,
``--iterations``, ``--crop``, ``--device``, ...) but not their defaults: its own are the fields
below (the paper's SGD, lr 0.01, weight decay 5e-4, poly 0.9; momentum 0.9 and the Gumbel scale as
the official code). Its own options (``--bias``, ``--no-mask-decoder``, ...) are listed under
their own heading in ``zutis train --help``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from zutiscli.config_fields import check_choices, field_default, not_an_option, option, option_spec
from zutiscli.errors import UsageError
from zutiscli.pipeline.hypotheses_config import HypothesesConfig, parse_ratio, ratio_text

PANEL = "ReCLIP++ (--method reclip)"
_BIAS_MODES = ("subtract", "add", "none")  # zutiscli.models.reclip.BIAS_MODES, without importing torch
_HYPOTHESES = {f.name: f for f in fields(HypothesesConfig)}


@dataclass
class ReclipTrainConfig:
    """Every option of a ReCLIP++ rectification run (saved in its run directory and checkpoints)."""

    source: str = not_an_option("", "the command's SOURCE argument")
    classes: str | None = option(
        None, "Class names, comma-separated, when SOURCE is an image folder (label hypotheses are made first, into "
        "the run's hypotheses/); a `zutis hypotheses` directory brings its own.", metavar="A,B,...",
        show_default=False, panel=PANEL)
    window: float = option(
        field_default(_HYPOTHESES["window"]), "Hypotheses made for an image folder: window side as a fraction of the "
        "image's sides.", metavar="R", parse=parse_ratio, text=ratio_text, panel=PANEL)
    threshold: float = option(
        field_default(_HYPOTHESES["threshold"]), "Hypotheses made for an image folder: keep the classes detected in "
        "more than this fraction of the crops.", panel=PANEL)
    background: bool = option(
        True, "Count \"background\" among every image's hypothesised classes, so that its mask too must look like "
        "its text (off: the official code's, which trains on object classes only and scores none of the background).",
        flag="--background/--no-background", panel=PANEL)
    teacher: str | None = option(
        None, "Distil this rectification run (ReCLIP++'s second stage): a student (CLIP's image tower, learning) "
        "inherits its CLIP and its Query head, bias and decoder, frozen; SOURCE defaults to the teacher's "
        "hypotheses.",
        metavar="RUN", kind="path", show_default=False, panel=PANEL)
    feat_weight: float = option(0.5, "Distillation: weight of the L1 to CLIP's features (alpha).", panel=PANEL)
    text_weight: float = option(0.5, "Distillation: weight of the contrastive loss on the student's masks (beta).",
                                panel=PANEL)
    bias: str = option(
        "subtract", "How the learned bias logits meet CLIP's: subtract (ReCLIP++), add (its Table V ablation), none "
        "(no Reference prompt, no positional term).", choices=_BIAS_MODES, panel=PANEL)
    position: bool = option(
        True, "The bias's positional (space-preference) term; off: one learned vector for every patch.",
        flag="--position/--no-position", panel=PANEL)
    mask_decoder: bool = option(
        True, "The mask decoder (5x5 conv + batch norm over the rectified logits and CLIP's features).",
        flag="--mask-decoder/--no-mask-decoder", panel=PANEL)
    context_tokens: int | None = option(
        None, "Learned word embeddings of the Reference prompt (default: as many as the text context holds beside "
        "the longest class name: 74 for one-token names in CLIP's 77; the paper: 73).", show_default=False, panel=PANEL)
    momentum: float = option(0.9, "SGD momentum.", panel=PANEL)
    gumbel_scale: float = option(100.0, "Decoder logits x this before the Gumbel-Softmax.", panel=PANEL)
    gumbel_tau: float = option(1.0, "Gumbel-Softmax temperature.", panel=PANEL)
    resize_min: float = option(
        1.0, "Training crops are cut from the image resized to --crop x U(resize-min, resize-max) on its short side.",
        panel=PANEL)
    resize_max: float = option(2.0, "Largest resize of --resize-min.", panel=PANEL)
    # shared with zutis train's options of the same names (their help is there); these are ReCLIP++'s defaults
    model: str = not_an_option("ViT-B-16", "zutis train's --model")
    pretrained: str | None = not_an_option(None, "zutis train's --pretrained")
    iterations: int = not_an_option(20_000, "zutis train's --iterations")
    batch_size: int = not_an_option(16, "zutis train's --batch-size")
    crop: int = not_an_option(512, "zutis train's --crop")
    lr: float = not_an_option(0.01, "zutis train's --lr")
    weight_decay: float = not_an_option(5e-4, "zutis train's --weight-decay")
    poly_power: float = not_an_option(0.9, "zutis train's --poly-power")
    min_lr: float = not_an_option(0.0, "zutis train's --min-lr")
    seed: int = not_an_option(0, "zutis train's --seed")
    workers: int | None = not_an_option(None, "zutis train's --workers")
    device: str = not_an_option("auto", "zutis train's --device")
    precision: str = not_an_option("auto", "zutis train's --precision")
    checkpoint_every: int = not_an_option(1000, "zutis train's --checkpoint-every")
    log_every: int = not_an_option(10, "zutis train's --log-every")
    max_minutes: float | None = not_an_option(None, "zutis train's --max-minutes")

    @property
    def loader_workers(self) -> int:
        """Data-loading processes (:func:`~zutiscli.data.workers.loader_processes`)."""
        from zutiscli.data.workers import loader_processes

        return loader_processes(self.workers)

    def validate(self) -> None:
        check_choices(self)
        for name in ("iterations", "batch_size", "crop", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(self, name)})")
        for name in ("lr", "gumbel_scale", "gumbel_tau"):
            if not getattr(self, name) > 0:
                raise UsageError(f"--{name.replace('_', '-')} must be > 0 (got {getattr(self, name)})")
        if self.context_tokens is not None and self.context_tokens < 1:
            raise UsageError(f"--context-tokens must be >= 1 (got {self.context_tokens})")
        if not 0 < self.resize_min <= self.resize_max:
            raise UsageError(f"--resize-min and --resize-max must satisfy 0 < min <= max "
                             f"(got {self.resize_min}, {self.resize_max})")
        if not 0 < self.window <= 1:
            raise UsageError(f"--window must lie in (0, 1] (got {self.window:g})")
        if not 0 <= self.threshold < 1:
            raise UsageError(f"--threshold must lie in [0, 1) (got {self.threshold:g})")
        for name in ("feat_weight", "text_weight"):
            if not getattr(self, name) >= 0:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 0 (got {getattr(self, name)})")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise UsageError(f"--max-minutes must be > 0 (got {self.max_minutes})")

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "config") -> "ReclipTrainConfig":
        """A config from option values (flags, a recipe, a checkpoint), each checked against its type."""
        from zutiscli.pipeline.train_config import _typed

        kinds = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(data) - set(kinds))
        if unknown:
            raise UsageError(f"{where}: option(s) {', '.join(unknown)} are not options of --method reclip")
        return cls(**{name: _typed(value, kinds[name], name, where) for name, value in data.items()})


#: The options ``zutis train --method reclip`` shares with ``zutis train`` (by name): its fields that are
#: no option of its own.
SHARED = tuple(f.name for f in fields(ReclipTrainConfig) if f.name != "source" and option_spec(f) is None)
