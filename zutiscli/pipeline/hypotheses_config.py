"""The options of ``zutis hypotheses`` (:class:`HypothesesConfig`), importable without numpy or torch.

The command line builds ``zutis hypotheses --help`` from these fields; :mod:`zutiscli.pipeline.hypotheses`
runs the stage (and exports :class:`HypothesesConfig` too).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

from zutiscli.config_fields import check_choices, device_option, not_an_option, option, precision_option
from zutiscli.errors import UsageError

#: How the classes of an image are hypothesised: ReCLIP++'s sliding crops, or ReCLIP's whole image.
MODES = ("crops", "image")


def parse_ratio(text: str) -> float:
    """``1/6`` or ``0.1667`` -> float; a :class:`UsageError` otherwise."""
    try:
        return float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise UsageError(f"--window {text!r}: give a fraction of the image's sides, e.g. 1/6 or 0.25") from None


def ratio_text(value: float) -> str:
    """0.1666... -> ``1/6``; other values as they are."""
    fraction = Fraction(value).limit_denominator(64)
    return f"{fraction.numerator}/{fraction.denominator}" if abs(float(fraction) - value) < 1e-9 else f"{value:g}"


@dataclass
class HypothesesConfig:
    """Options of ``zutis hypotheses``: ReCLIP++'s image-level label hypotheses (Sec. III-D).

    Per image, windows of ``window`` times its sides slide with a stride of half a window; each
    crop, resized to CLIP's input, is classified by its global embedding against the classes'
    Query text embeddings (the 85-template ensemble); the classes detected in more than
    ``threshold`` of the crops are the image's hypothesis. ReCLIP++: window 1/6, threshold 7% on
    PASCAL VOC and Cityscapes, 0 elsewhere. ``mode="image"`` is ReCLIP's: the classes whose
    similarity to the whole image's embedding, as a softmax over the classes at CLIP's
    temperature, exceeds ``threshold``.
    """

    inputs: tuple[str, ...] = not_an_option((), "the command's IMAGES arguments")
    classes: Sequence = not_an_option((), "read from --classes or --classes-file")
    window: float = option(1 / 6, "Window side as a fraction of the image's sides (ReCLIP++: 1/6).", metavar="R",
                           parse=parse_ratio, text=ratio_text)
    threshold: float = option(
        0.0, "Keep the classes detected in more than this fraction of the crops (ReCLIP++: 0.07 on VOC and "
        "Cityscapes, 0 elsewhere); with --mode image, the classes whose softmax probability exceeds it.")
    background: bool = option(
        True, "Let the crops vote for a \"background\" class too (never hypothesised), as PASCAL VOC's background "
        "class does in ReCLIP++: a crop of no listed class then need not vote for one.",
        flag="--background/--no-background")
    mode: str = option("crops", "crops: ReCLIP++'s sliding windows; image: ReCLIP's whole image.", choices=MODES)
    model: str = option("ViT-B-16", "CLIP model (open_clip name).", kind="model")
    pretrained: str | None = option(None, "Weights of --model: tag, file, builtin or none (default: its usual ones).",
                                    show_default=False)
    ground_truth: str | None = option(
        None, "COCO instances JSON of the same images (file_name matched by relative path or name): the hypotheses' "
        "precision and recall against the classes each image holds (and its named semantic labels, with a "
        "classes.txt beside it).", kind="path", metavar="COCO_JSON", show_default=False)
    batch_size: int = option(128, "Crops per forward pass.", short="-b")
    device: str = device_option()
    precision: str = precision_option()

    def validate(self) -> None:
        check_choices(self)
        if not self.inputs:
            raise UsageError("give the images to hypothesise over (files, directories, globs)")
        if len(self.classes) < 2:
            raise UsageError("give at least two classes (--classes a,b): a hypothesis chooses among them")
        if not 0 < self.window <= 1:
            raise UsageError(f"--window must lie in (0, 1] (got {ratio_text(self.window)})")
        if not 0 <= self.threshold < 1:
            raise UsageError(f"--threshold must lie in [0, 1) (got {self.threshold})")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1 (got {self.batch_size})")
