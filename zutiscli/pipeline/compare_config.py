"""The options of ``zutis compare`` (:class:`CompareConfig`), importable without numpy or torch.

The command line builds ``zutis compare --help`` from these fields; :mod:`zutiscli.pipeline.compare`
runs it (and exports :class:`CompareConfig` too).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from zutiscli.config_fields import (
    check_choices, device_option, join_commas, not_an_option, option, precision_option, split_commas,
)
from zutiscli.errors import UsageError
from zutiscli.methods.predict import RECO_BACKGROUND_RULES

#: ``--run`` methods and what their argument names.
RUN_ARGUMENTS = {"maskclip": None, "reco": "references", "zutis": "checkpoint", "reclip": "checkpoint"}


@dataclass(frozen=True)
class RunSpec:
    """One ``--run``: ``[LABEL=]METHOD[:ARGUMENT]`` (``zutis:RUN``, ``reclip:RUN``, ``reco:REFERENCES``, ``maskclip``)."""

    label: str
    method: str
    argument: str | None

    @classmethod
    def parse(cls, text: str) -> "RunSpec":
        label, _, rest = text.partition("=") if "=" in text.split(":", 1)[0] else ("", "", text)
        method, _, argument = rest.partition(":")
        method = method.strip()
        if method not in RUN_ARGUMENTS:
            raise UsageError(f"--run {text}: {method!r} is not one of {', '.join(RUN_ARGUMENTS)} "
                             f"(e.g. --run maskclip --run reco:REFS --run zutis:RUN)")
        needs = RUN_ARGUMENTS[method]
        if needs and not argument:
            raise UsageError(f"--run {text}: {method} needs its {needs}, as {method}:{needs.upper()}")
        if not needs and argument:
            raise UsageError(f"--run {text}: {method} takes no argument (its CLIP is --model/--pretrained)")
        return cls(label.strip() or (f"{method}:{argument}" if argument else method), method, argument or None)


@dataclass
class CompareConfig:
    """Options of ``zutis compare``: every method on the same images, scored the same way.

    Each run is predicted in memory with ``zutis predict``'s engine (task ``all``, the method's own
    inference: a ZUTIS run's recipe, ReCo's and MaskCLIP's defaults) and scored with ``zutis
    evaluate``'s scoring against one ground truth: by class name, or for a model trained on
    clusters, its clusters matched to the classes as ``match`` says.
    """

    images: str = not_an_option("", "the command's SCENES argument")
    runs: Sequence[RunSpec] = not_an_option((), "from the repeatable --run option")
    gt: str | None = option(
        None, "Ground truth (default: SCENES, when it is a `zutis synth scenes` or `zutis evaluate prepare` "
        "directory).", kind="path", show_default=False)
    classes: str | None = option(
        None, "Comma-separated class names to segment (default: the ground truth's thing classes).",
        show_default=False)
    stuff: Sequence[str] = option(
        (), "Stuff classes, added to the classes: semantic and panoptic stuff segments, no instances.",
        metavar="A,B", parse=split_commas, text=join_commas, show_default=False)
    model: str = option("ViT-B-16", "maskclip: open_clip model name.", kind="model")
    pretrained: str | None = option(None, "maskclip: weights (tag, file, builtin).", show_default=False)
    background_threshold: float = option(
        0.9, "reco: background where no class holds this share of the maps (--background-rule match: where no "
        "reference matches this well).")
    background_rule: str = option(
        "share", "reco: background by class share (ZUTIS' comparison) or by reference match, as `zutis predict "
        "--background-rule`.", choices=RECO_BACKGROUND_RULES)
    match: str = option(
        "hungarian", "Runs of a model trained on clusters (`zutis train CLUSTERS`) predict cluster ids: how they "
        "meet the ground truth's classes, one-to-one or many-to-one (U2Seg), as `zutis evaluate --match`.",
        choices=("hungarian", "majority"))
    match_score: float = option(
        0.6, "Cluster runs: only detections scoring at least this vote for an instance class (U2Seg: 0.6).")
    picture: int = option(6, "Scenes shown in compare.png (0 = no picture).")
    device: str = device_option()
    precision: str = precision_option("fp32")

    def validate(self) -> None:
        check_choices(self)
        if not self.runs:
            raise UsageError("give the methods to compare: --run maskclip --run reco:REFS --run zutis:RUN")
        labels = [run.label for run in self.runs]
        if len(set(labels)) < len(labels):
            raise UsageError(f"--run: two runs are labelled {next(x for x in labels if labels.count(x) > 1)!r}; "
                             f"label them apart with LABEL=METHOD:...")
        if self.picture < 0:
            raise UsageError(f"--picture must be >= 0 (got {self.picture})")
        if not 0.0 <= self.match_score <= 1.0:
            raise UsageError(f"--match-score must lie in [0, 1] (got {self.match_score})")
        if not 0.0 <= self.background_threshold <= 1.0:
            raise UsageError(f"--background-threshold must lie in [0, 1] (got {self.background_threshold})")
