"""`zutis evaluate`: the metrics of the seed papers on standard benchmarks and on any COCO-format data.

The stage reads the prediction (:func:`zutiscli.artefacts.predictions.load_prediction`: a
``zutis predict`` directory, a COCO results or panoptic JSON, a directory of label PNGs) and the
ground truth (:func:`zutiscli.artefacts.groundtruth.load_ground_truth`: a COCO instances or
panoptic JSON, a ``zutis evaluate prepare`` or ``zutis synth scenes`` directory, a directory of
label PNGs), scores one against the other (:func:`zutiscli.engine.evaluator.score`: how images
and classes are matched, and every metric, are described there), and writes ``metrics.json``
(fractions in [0, 1]) and its manifest (kind ``zutis.metrics``); cluster ids matched to classes
(``--match hungarian|majority``) also write ``cluster_mapping.json``, which ``--mapping`` reuses
(:mod:`zutiscli.artefacts.cluster_mapping`).

``zutis evaluate prepare`` turns a user's copy of a benchmark into such a ground truth
(:func:`prepare_dataset`).

The options live without numpy, for the command line's ``--help``: :class:`EvaluateConfig` in
:mod:`zutiscli.pipeline.evaluate_config`, :class:`PrepareConfig` in :mod:`zutiscli.data.prepare_config`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zutiscli.artefacts.atomic import atomic_write_json
from zutiscli.artefacts.cluster_mapping import cluster_mapping_document, write_cluster_mapping
from zutiscli.artefacts.groundtruth import load_ground_truth
from zutiscli.artefacts.lock import holding_locks
from zutiscli.artefacts.manifest import write_manifest
from zutiscli.artefacts.predictions import load_prediction
from zutiscli.artefacts.rundir import check_output_dir, prepare_output_dir
from zutiscli.data.datasets import PrepareConfig, prepare_dataset
from zutiscli.engine.evaluator import Log, Progress, headline, score
from zutiscli.pipeline.evaluate_config import EvaluateConfig, parse_class_map

#: the stage's two commands: ``zutis evaluate run`` (:func:`evaluate`) and ``zutis evaluate prepare``
#: (:func:`prepare_dataset`, whose adapters live in :mod:`zutiscli.data.datasets`)
__all__ = ["EvaluateConfig", "EvaluateResult", "evaluate", "parse_class_map", "PrepareConfig", "prepare_dataset"]


@dataclass
class EvaluateResult:
    """Where ``metrics.json`` was written and what it holds."""

    path: Path
    metrics: dict[str, Any]
    warnings: list[str]
    seconds: float


# ---- the stage ------------------------------------------------------------------------------
@holding_locks
def evaluate(config: EvaluateConfig, output: str | Path | None = None, *, progress: Progress | None = None,
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
    document = cluster_mapping_document(metrics, str(config.pred), str(config.gt))
    if document is not None:
        write_cluster_mapping(out, document)
    inputs = [Path(config.pred), *truth.inputs]
    params = {k: v for k, v in vars(config).items()}
    params["tasks"] = tasks
    params["iou_types"] = list(config.iou_types)
    params["max_dets"] = list(config.max_dets)
    write_manifest(out, "zutis.metrics", inputs=inputs, params=params, summary=headline(metrics))
    return EvaluateResult(out, metrics, warnings, seconds)
