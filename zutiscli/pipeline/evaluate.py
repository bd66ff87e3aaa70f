"""`zutis evaluate`: the metrics of the seed papers on standard benchmarks and on any COCO-format data.

The stage reads the prediction (:func:`zutiscli.artefacts.predictions.load_prediction`: a
``zutis predict`` directory, a COCO results or panoptic JSON, a directory of label PNGs) and the
ground truth (:func:`zutiscli.artefacts.groundtruth.load_ground_truth`: a COCO instances or
panoptic JSON, a ``zutis evaluate prepare`` or ``zutis synth scenes`` directory, a directory of
label PNGs), scores one against the other (:func:`zutiscli.engine.evaluator.score`: how images
and classes are matched, and every metric, are described there), and writes ``metrics.json``
(fractions in [0, 1]) and its manifest (kind ``zutis.metrics``).

``zutis evaluate prepare`` turns a user's copy of a benchmark into such a ground truth
(:func:`prepare_dataset`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from zutiscli.artefacts.atomic import atomic_write_json
from zutiscli.artefacts.groundtruth import _norm, load_ground_truth
from zutiscli.artefacts.manifest import write_manifest
from zutiscli.artefacts.predictions import load_prediction
from zutiscli.artefacts.rundir import check_output_dir, prepare_output_dir
from zutiscli.data.datasets import PrepareConfig, prepare_dataset
from zutiscli.engine.evaluator import BACKENDS, IOU_TYPES, MATCH_MODES, TASKS, Log, Progress, headline, score
from zutiscli.errors import UsageError

#: the stage's two commands: ``zutis evaluate run`` (:func:`evaluate`) and ``zutis evaluate prepare``
#: (:func:`prepare_dataset`, whose adapters live in :mod:`zutiscli.data.datasets`)
__all__ = ["EvaluateConfig", "EvaluateResult", "evaluate", "parse_class_map", "PrepareConfig", "prepare_dataset"]


# ---- configuration --------------------------------------------------------------------------
def parse_class_map(text: str | None) -> dict[str, str]:
    """``"tv=television,sofa=couch"`` -> ``{"tv": "television", "sofa": "couch"}`` (pred -> gt)."""
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


@dataclass
class EvaluateConfig:
    """Options of ``zutis evaluate`` (scores and IoUs in [0, 1])."""

    pred: str
    gt: str
    gt_semantic: str | None = None
    gt_panoptic_dir: str | None = None
    tasks: Sequence[str] = ()  # empty = every task the inputs allow
    class_map: dict[str, str] = field(default_factory=dict)
    agnostic: bool = True
    match: str = "names"
    match_score: float = 0.6
    match_iou: float = 0.7
    match_iou_type: str = "bbox"
    iou_types: Sequence[str] = IOU_TYPES
    max_dets: Sequence[int] = (1, 10, 100)
    backend: str = "pycocotools"

    def validate(self) -> None:
        for task in self.tasks:
            if task not in TASKS:
                raise UsageError(f"--task {task!r} is not one of {', '.join(TASKS)} (or all)")
        if self.match not in MATCH_MODES:
            raise UsageError(f"--match {self.match!r} is not one of {', '.join(MATCH_MODES)}")
        if self.match_iou_type not in IOU_TYPES:
            raise UsageError(f"--match-iou-type {self.match_iou_type!r} is not segm or bbox")
        if not 0 <= self.match_score <= 1 or not 0 <= self.match_iou < 1:
            raise UsageError("--match-score must lie in [0, 1] and --match-iou in [0, 1)")
        if not self.iou_types or any(t not in IOU_TYPES for t in self.iou_types):
            raise UsageError(f"--iou-type must be segm, bbox or both (got {', '.join(self.iou_types) or 'nothing'})")
        if len(self.max_dets) != 3 or any(int(d) < 1 for d in self.max_dets):
            raise UsageError("--max-dets needs three positive numbers, e.g. 1,10,100")
        if self.backend not in BACKENDS:
            raise UsageError(f"--backend {self.backend!r} is not one of {', '.join(BACKENDS)}")


@dataclass
class EvaluateResult:
    """Where ``metrics.json`` was written and what it holds."""

    path: Path
    metrics: dict[str, Any]
    warnings: list[str]
    seconds: float


# ---- the stage ------------------------------------------------------------------------------
def evaluate(config: EvaluateConfig, output: str | Path | None = None, progress: Progress | None = None,
             log: Log | None = None) -> EvaluateResult:
    """Run ``zutis evaluate``: score ``config.pred`` against ``config.gt``, write ``metrics.json``."""
    config.validate()
    start = time.perf_counter()
    check_output_dir(output, "evaluate")  # refuse an unusable -o before the scoring, create nothing yet
    pred = load_prediction(config.pred)
    truth = load_ground_truth(config.gt, config.gt_semantic, config.gt_panoptic_dir)
    metrics = score(pred, truth, config, progress=progress, log=log)
    seconds = time.perf_counter() - start
    metrics["seconds"] = round(seconds, 3)  # the whole stage, reading included
    warnings, tasks = metrics["warnings"], metrics["tasks"]
    out = prepare_output_dir(output, "evaluate")
    atomic_write_json(out / "metrics.json", metrics)
    inputs = [Path(config.pred), *truth.inputs]
    params = {k: v for k, v in vars(config).items()}
    params["tasks"] = tasks
    params["iou_types"] = list(config.iou_types)
    params["max_dets"] = list(config.max_dets)
    write_manifest(out, "zutis.metrics", inputs=inputs, params=params, summary=headline(metrics))
    return EvaluateResult(out, metrics, warnings, seconds)
