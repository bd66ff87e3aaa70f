"""The options of ``zutis evaluate run`` (:class:`EvaluateConfig`), importable without numpy or torch.

The command line builds ``zutis evaluate run --help`` from these fields; :mod:`zutiscli.pipeline.evaluate`
scores (and exports :class:`EvaluateConfig` too). The options of ``zutis evaluate prepare`` are
:class:`zutiscli.data.prepare_config.PrepareConfig`.

List options are typed as text on the command line (``--max-dets 1,10,100``); the ``parse_*``
functions here read that text, the ``*_text`` functions write a value back (``--help`` shows the
field's default that way).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from zutiscli.config_fields import check_choices, join_commas, not_an_option, option, split_commas
from zutiscli.engine.evaluator_choices import BACKENDS, IOU_TYPES, MATCH_MODES, TASKS
from zutiscli.errors import UsageError

#: COCOeval's maxDets: recall at 1, 10 and 100 detections; AP at the last
MAX_DETS = (1, 10, 100)


def parse_tasks(text: str) -> list[str]:
    """``"auto"`` (or nothing) -> ``[]`` (every task the inputs allow); ``"all"`` -> every task;
    ``"instance,semantic"`` -> those."""
    text = text.strip()
    return [] if text in ("auto", "") else list(TASKS) if text == "all" else split_commas(text)


def tasks_text(tasks: Sequence[str]) -> str:
    """The tasks as ``--task`` takes them (none = ``"auto"``)."""
    return join_commas(tasks) or "auto"


def parse_class_map(text: str | None) -> dict[str, str]:
    """``"tv=television,sofa=couch"`` -> ``{"tv": "television", "sofa": "couch"}`` (pred -> gt)."""
    from zutiscli.artefacts.groundtruth import _norm  # names as the ground truth normalises them

    if text is None:
        return {}
    mapping: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue  # "tv=television," is forgiven; a list of nothing is not (below)
        if "=" not in item:
            raise UsageError(f"--classes item {item.strip()!r} has no '='; write PRED_NAME=GT_NAME, e.g. --classes tv=television")
        pred, gt = (_norm(part) for part in item.split("=", 1))
        if not pred or not gt:
            raise UsageError(f"--classes item {item.strip()!r} needs a name on both sides of '='")
        if pred in mapping and mapping[pred] != gt:
            raise UsageError(f"--classes maps {pred!r} twice ({mapping[pred]!r} and {gt!r})")
        mapping[pred] = gt
    if not mapping:
        raise UsageError(f"--classes {text!r} maps no class; write PRED_NAME=GT_NAME pairs separated by commas, "
                         f"e.g. --classes tv=television, or leave --classes out")
    return mapping


def class_map_text(mapping: dict[str, str]) -> str | None:
    """The class map as ``--classes`` takes it (none = no option)."""
    return ",".join(f"{pred}={gt}" for pred, gt in mapping.items()) or None


def parse_max_dets(text: str) -> list[int]:
    """``"1,10,100"`` -> ``[1, 10, 100]`` (``validate`` checks there are three)."""
    try:
        return [int(value) for value in split_commas(text)]
    except ValueError:
        raise UsageError(f"--max-dets {text!r}: give three integers, e.g. {join_commas(MAX_DETS)}") from None


@dataclass
class EvaluateConfig:
    """Options of ``zutis evaluate`` (scores and IoUs in [0, 1]); each field's help is the command's."""

    pred: str = not_an_option(why="the command's PRED argument")
    gt: str = option(help="Ground truth: COCO instances or panoptic JSON, a `zutis evaluate prepare` or "
                     "`zutis synth scenes` directory, or a directory of label PNGs.", kind="path", show_default=False)
    gt_semantic: str | None = option(
        None, "Directory of ground-truth label PNGs (named by image stem; classes.txt names the labels).",
        kind="path", show_default=False)
    gt_panoptic_dir: str | None = option(
        None, "PNG folder of a COCO panoptic GT JSON (default: the folder named like the JSON).", kind="path",
        show_default=False)
    tasks: Sequence[str] = option(  # empty = every task the inputs allow
        (), "What to score; auto = whatever the inputs allow.", flag="--task", metavar=f"auto|all|{join_commas(TASKS)}",
        parse=parse_tasks, text=tasks_text)
    class_map: dict[str, str] = option(
        help="Rename predicted classes to ground-truth names, e.g. tv=television.", default_factory=dict,
        flag="--classes", metavar="PRED=GT,...", parse=parse_class_map, text=class_map_text, show_default=False)
    agnostic: bool = option(True, "Also score instances class-agnostically (all categories merged).",
                            flag="--agnostic/--no-agnostic")
    match: str = option(
        "names", "How predicted ids meet GT classes: by name, or (cluster ids) one-to-one Hungarian or many-to-one "
        "majority (U2Seg).", choices=MATCH_MODES)
    match_score: float = option(0.6, "Instance cluster matching: only detections scoring at least this vote (U2Seg: 0.6).")
    match_iou: float = option(0.7, "Instance cluster matching: a vote needs IoU above this with a GT instance (U2Seg: 0.7).")
    match_iou_type: str = option("bbox", "IoU of boxes (U2Seg) or masks for the vote.", choices=tuple(sorted(IOU_TYPES)))
    mapping: str | None = option(
        None, "Score cluster ids with the mapping an earlier evaluation wrote (its output directory or "
        "cluster_mapping.json) instead of matching again, e.g. one found on the validation split.", kind="path",
        show_default=False)
    iou_types: Sequence[str] = option(IOU_TYPES, "COCOeval IoU types.", flag="--iou-type", metavar=join_commas(IOU_TYPES),
                                      parse=split_commas, text=join_commas)
    max_dets: Sequence[int] = option(MAX_DETS, "COCOeval maxDets (AP uses the last).", metavar=join_commas(MAX_DETS),
                                     parse=parse_max_dets, text=join_commas)
    backend: str = option("pycocotools", "COCOeval implementation.", choices=BACKENDS)

    def validate(self) -> None:
        check_choices(self)
        for task in self.tasks:
            if task not in TASKS:
                raise UsageError(f"--task {task!r} is not one of {', '.join(TASKS)} (or all)")
        if not 0 <= self.match_score <= 1 or not 0 <= self.match_iou < 1:
            raise UsageError("--match-score must lie in [0, 1] and --match-iou in [0, 1)")
        if not self.iou_types or any(t not in IOU_TYPES for t in self.iou_types):
            raise UsageError(f"--iou-type must be segm, bbox or both (got {', '.join(self.iou_types) or 'nothing'})")
        if len(self.max_dets) != 3 or any(int(d) < 1 for d in self.max_dets):
            raise UsageError(f"--max-dets needs three positive numbers, e.g. {join_commas(MAX_DETS)}")
