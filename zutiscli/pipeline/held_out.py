"""Held-out evaluation during training: the model being trained, segmented and scored as it stands.

Every ``eval_every`` iterations and at the end of a run, rank 0 runs the model through the
predict engine of ``zutis predict`` (with the run's own inference recipe) on a held-out set,
keeping the predictions in memory, scores them as ``zutis evaluate`` does, writes
``evals/iter-NNNNNN/`` (``metrics.json`` and a ``zutis.metrics`` manifest) and appends
``{"iteration": N, "eval": headline}`` to the run's ``metrics.jsonl``. The random number
generators and the model's train/eval mode are put back afterwards, so a run with evaluation
trains exactly the weights of a run without.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from zutiscli.artefacts.manifest import write_manifest
from zutiscli.artefacts.runs import EVALS, METRICS
from zutiscli.engine.rng import preserved_rng
from zutiscli.errors import UsageError, ZutisError


@dataclass
class HeldOut:
    """A checked held-out set: the images to segment, the ground truth to score them against, the classes."""

    images: list[str]
    gt: str
    queries: list[Any] | None  # ClassQuery list from ``eval_classes``; None = the training classes


def held_out_set(eval_images: str | None, eval_gt: str | None, eval_classes: str | None = None) -> HeldOut | None:
    """The held-out set of a run (``--eval-images``, ``--eval-gt``, ``--eval-classes``), checked before any
    training; ``None`` when the run does not evaluate (neither images nor ground truth given).

    ``eval_images`` alone is a directory holding its own ground truth (``zutis synth scenes``:
    ``images/``, ``instances.json``, optional ``semantic/``; ``zutis evaluate prepare``:
    ``gt.json``), and the images segmented are those its ground truth lists. With ``eval_gt`` (any
    ground truth ``zutis evaluate`` reads) the images are ``eval_images/images`` (or
    ``eval_images`` itself), or, without ``eval_images``, those ``eval_gt`` lists. Every problem
    (a missing or unreadable path, no ground truth, no images, bad ``eval_classes``) is a one-line
    :class:`UsageError` naming the option and the path.
    """
    if not (eval_images or eval_gt):
        return None
    from zutiscli.data.classes import parse_classes
    from zutiscli.data.images import discover_images
    from zutiscli.artefacts.groundtruth import load_ground_truth

    folder = Path(eval_images) if eval_images else None
    if folder is not None:
        if not folder.is_dir():
            what = "is a file, not a directory" if folder.exists() else "no such directory"
            raise UsageError(f"--eval-images {folder}: {what}")
        _readable(folder, "--eval-images")
        if eval_gt is None and not any((folder / name).is_file() for name in ("instances.json", "gt.json")):
            raise UsageError(f"--eval-images {folder}: holds no instances.json or gt.json; give a `zutis synth "
                             f"scenes` or `zutis evaluate prepare` directory, or its ground truth with --eval-gt")
    option, gt = ("--eval-gt", Path(eval_gt)) if eval_gt else ("--eval-images", folder)
    assert gt is not None
    if not gt.exists():
        raise UsageError(f"{option} {gt}: no such file or directory")
    _readable(gt, option)
    try:
        truth = load_ground_truth(gt)
    except ZutisError as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        message = message.replace(f"--gt {gt}: ", "", 1)
        raise UsageError(f"{option} {message}" if message.startswith(str(gt)) else f"{option} {gt}: {message}") from None
    if folder is not None and eval_gt is not None:
        source = folder / "images" if (folder / "images").is_dir() else folder
        try:
            images = [str(path) for path in discover_images([source]).paths]
        except ZutisError as exc:
            raise UsageError(f"--eval-images {folder}: {str(exc).splitlines()[0]}") from None
        if not images:
            raise UsageError(f"--eval-images {source}: holds no images")
    else:
        if any(image.path is None for image in truth.images):
            raise UsageError(f"{option} {gt}: does not say where its images are; give them with --eval-images DIR")
        images = [str(image.path) for image in truth.images]
        if not images:
            raise UsageError(f"{option} {gt}: lists no images")
        for image in images:
            if not Path(image).is_file():
                raise UsageError(f"{option} {gt}: its image {image} does not exist")
            _readable(Path(image), option)
    queries = None
    if eval_classes is not None:
        try:
            queries = parse_classes(eval_classes, None)
        except ZutisError as exc:
            raise UsageError(str(exc).replace("--classes", "--eval-classes")) from None
        if any(query.name.lower() == "background" for query in queries):
            raise UsageError("--eval-classes: 'background' is always a class of its own; leave it out")
    return HeldOut(images, str(gt), queries)


def _readable(path: Path, option: str) -> None:
    """A :class:`UsageError` naming ``path`` unless it can be read (and, for a directory, listed)."""
    mode = os.R_OK | (os.X_OK if path.is_dir() else 0)
    if not os.access(path, mode):
        raise UsageError(f"{option} {path}: is not readable; check its permissions")


def eval_dir(run_dir: Path, iteration: int) -> Path:
    """Where the evaluation at ``iteration`` goes: ``evals/iter-NNNNNN``."""
    return run_dir / EVALS / f"iter-{iteration:06d}"


def evaluate_model(model: torch.nn.Module, held_out: HeldOut, classes: list[str], run_dir: Path, iteration: int,
                   device: torch.device, say: Callable[[str], None],
                   inference: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """Segment and score the held-out set with the model as it is at ``iteration``; returns the metrics line.

    Args:
        model: the ZUTIS model being trained (its mode is put back afterwards).
        held_out: the checked held-out set (:func:`held_out_set`).
        classes: the training classes, segmented when the held-out set names none.
        run_dir: the run directory: writes ``evals/iter-NNNNNN/`` and appends to ``metrics.jsonl``.
        iteration: the iteration the model has reached.
        device: where the model is.
        say: receives one line with the headline numbers, or why the evaluation failed.
        inference: the run's inference recipe (:class:`zutiscli.engine.inference.InferenceSettings`
            fields; ``None`` or empty = the paper's settings), used as ``zutis predict`` uses a
            checkpoint's.

    Returns:
        ``{"iteration": N, "eval": headline}``, or ``None`` when the evaluation failed (logged;
        the training goes on).
    """
    from zutiscli.artefacts.atomic import atomic_write_json
    from zutiscli.artefacts.groundtruth import load_ground_truth
    from zutiscli.data.classes import ClassQuery
    from zutiscli.engine.evaluator import headline, score
    from zutiscli.pipeline.evaluate import EvaluateConfig
    from zutiscli.pipeline.predict import PredictConfig, predict_in_memory

    was_training = model.training
    out = eval_dir(run_dir, iteration)
    queries = held_out.queries or [ClassQuery(name, name) for name in classes]
    with preserved_rng():
        try:
            if out.exists():
                shutil.rmtree(out)
            model.eval()
            predict_config = PredictConfig(inputs=held_out.images, classes=tuple(queries), method="zutis",
                                           device=str(device), task="all", vis=False)
            prediction = predict_in_memory(predict_config, model=model, recipe=dict(inference or {}))
            scoring = EvaluateConfig(pred=f"the held-out predictions at iteration {iteration}", gt=held_out.gt)
            truth = load_ground_truth(held_out.gt)
            metrics = score(prediction, truth, scoring)
            summary = headline(metrics)
            out.mkdir(parents=True)
            atomic_write_json(out / "metrics.json", metrics)
            params = dict(vars(scoring)) | {"tasks": metrics["tasks"], "iou_types": list(scoring.iou_types),
                                            "max_dets": list(scoring.max_dets), "iteration": iteration,
                                            "classes": [q.name for q in queries], "inference": dict(inference or {})}
            write_manifest(out, "zutis.metrics", inputs=list(truth.inputs), params=params, summary=summary)
        except ZutisError as exc:
            say(f"evaluation at iteration {iteration} failed: {str(exc).splitlines()[0]}")
            return None
        finally:
            model.train(was_training)
    record = {"iteration": iteration, "eval": summary}
    with open(run_dir / METRICS, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")

    def number(key: str) -> str:
        return f"{summary[key]:.4f}" if isinstance(summary.get(key), (int, float)) else "n/a"

    say(f"eval at iteration {iteration}: mIoU {number('mIoU')}, mask AP50 {number('mask_AP50')}")
    return record


def last_eval(metrics: Path) -> dict[str, Any] | None:
    """The last ``{"iteration", "eval"}`` line of a ``metrics.jsonl``, if any."""
    if not metrics.is_file():
        return None
    last = None
    for line in metrics.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "eval" in record:
            last = record
    return last


def drop_stale_evals(run_dir: Path, iteration: int) -> None:
    """Remove evaluations past ``iteration`` (left by an interrupted run that is being resumed)."""
    folder = run_dir / EVALS
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        name = entry.name.lstrip(".").split(".")[0]
        if entry.is_dir() and name.startswith("iter-") and name[5:].isdigit() and \
                (int(name[5:]) > iteration or entry.name.startswith(".")):
            shutil.rmtree(entry)
