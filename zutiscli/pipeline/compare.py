"""`zutis compare`: every method on the same images, scored the same way, in one table and one picture.

Each ``--run`` (``maskclip``, ``reco:REFERENCES``, ``zutis:RUN``, ``reclip:RUN``, optionally ``LABEL=`` in front)
is predicted in memory by ``zutis predict``'s engine (task ``all``: semantic maps, instances and
panoptic segments) and scored by ``zutis evaluate``'s scoring against one ground truth. A ZUTIS run
trained on clusters (``zutis train CLUSTERS``) segments its own clusters, matched to the classes
by ``--match`` (and shown in compare.png as the classes they were matched to). Writes::

    compare.json   per run: method, source, headline metrics (mIoU, pixel accuracy, mask AP, AP50,
                   class-agnostic AP, PQ and its things / stuff split where scored), seconds per image
    compare.txt    the same as an aligned table
    runs/N/metrics.json   each run's full metrics, N its position
    compare.png    a column per scene, ground truth on top, then a row per run (semantic maps)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from zutiscli.artefacts.lock import holding_locks
from zutiscli.errors import UsageError
from zutiscli.pipeline.compare_config import RUN_ARGUMENTS, CompareConfig, RunSpec  # noqa: F401 - exported here too
from zutiscli.pipeline.failures import send_warning

#: The columns of the table, in order (those no run has are left out).
COLUMNS = ("mIoU", "pixel_accuracy", "mask_AP", "mask_AP50", "mask_AP_agnostic", "PQ", "PQ_things", "PQ_stuff")


@dataclass
class CompareResult:
    """Where it went and, per run label, its headline metrics and seconds per image."""

    path: Path
    rows: dict[str, dict[str, Any]]
    table: str


def _scenes_and_truth(config: CompareConfig) -> tuple[Path, Path]:
    """``(image directory, ground truth)``: SCENES' ``images/`` and SCENES itself for a scenes directory."""
    scenes = Path(config.images)
    if not scenes.exists():
        raise UsageError(f"{scenes}: no such file or directory; give a `zutis synth scenes` directory or images")
    if scenes.is_dir() and (scenes / "images").is_dir() and config.gt is None:
        return scenes / "images", scenes
    if config.gt is None:
        raise UsageError(f"{scenes}: is not a scenes directory with its ground truth; give --gt")
    return scenes, Path(config.gt)


def _classes(config: CompareConfig, truth: Any) -> list[Any]:
    from zutiscli.data.classes import ClassQuery, parse_classes, with_stuff

    if config.classes is not None:
        queries = parse_classes(config.classes, None)
    else:
        categories = sorted((truth.instances or {}).get("categories") or [], key=lambda c: c["id"])
        if not categories:
            raise UsageError(f"{truth.source}: names no thing classes; give --classes")
        queries = [ClassQuery(c["name"], c["name"]) for c in categories]
    queries = with_stuff(queries, config.stuff)
    known = {name.casefold() for name in [*(truth.semantic_names or ()), *(
        c["name"] for c in (truth.instances or {}).get("categories") or ())]}
    unknown = [q.name for q in queries if q.name.casefold() not in known]
    if known and unknown:
        raise UsageError(f"--classes {','.join(unknown)}: not in the ground truth {truth.source} (it names "
                         f"{', '.join(sorted(known - {'background'}))}); every method is scored by class name")
    return queries


def _cluster_classes(run: RunSpec) -> tuple[list[Any], tuple[str, ...]] | None:
    """The clusters of a ZUTIS run trained on clusters (its classes, then its stuff clusters) and the
    names of its stuff clusters; None for any other run."""
    from zutiscli.artefacts.checkpoint import trained_classes
    from zutiscli.artefacts.runs import resolve_checkpoint
    from zutiscli.data.classes import ClassQuery

    if run.method != "zutis":
        return None
    classes, clusters, stuff = trained_classes(resolve_checkpoint(run.argument))
    return ([ClassQuery(name, name) for name in classes + stuff], tuple(stuff)) if clusters else None


def _predict_config(config: CompareConfig, run: RunSpec, images: Path, classes: list[Any],
                    clusters: tuple[list[Any], tuple[str, ...]] | None = None) -> Any:
    """How ``run`` predicts: ``classes`` (and the stuff), or a cluster model's clusters (and its stuff clusters)."""
    from zutiscli.pipeline.predict import PredictConfig

    options: dict[str, Any] = dict(inputs=[str(images)], classes=tuple(clusters[0] if clusters else classes),
                                   method=run.method, stuff=clusters[1] if clusters else tuple(config.stuff),
                                   task="all", vis=False, device=config.device, precision=config.precision)
    if RUN_ARGUMENTS[run.method] == "checkpoint":
        options["checkpoint"] = run.argument
    elif run.method == "reco":
        options.update(references=run.argument, background_threshold=config.background_threshold,
                       background_rule=config.background_rule)
    else:
        options.update(model=config.model, pretrained=config.pretrained, components=True)
    return PredictConfig(**options)


def format_table(rows: dict[str, dict[str, Any]]) -> str:
    """The runs' headline metrics (percent) and seconds per image as an aligned text table."""
    columns = [c for c in COLUMNS if any(row["metrics"].get(c) is not None for row in rows.values())]
    width = max([len("run"), *map(len, rows)]) + 2
    lines = ["run".ljust(width) + "".join(c.rjust(len(c) + 2) for c in columns) + "s/image".rjust(9)]
    for label, row in rows.items():
        cells = [(c, row["metrics"].get(c)) for c in columns]
        lines.append(label.ljust(width) + "".join(("-" if v is None else f"{100 * v:.1f}").rjust(len(c) + 2)
                                                  for c, v in cells) + f"{row['seconds_per_image']:.3f}".rjust(9))
    return "\n".join(lines)


def _prepared(config: CompareConfig, plans: bool = True) -> tuple[Path, Path, Any, list[Any], list[Any], list[Any]]:
    """``(images, ground truth path, truth, classes, each run's clusters or None, each run's
    PredictConfig)``, every run's options checked, and with ``plans`` its weights too (before the
    first run; a dry run plans each run whole)."""
    from zutiscli.artefacts.groundtruth import load_ground_truth
    from zutiscli.methods.predict import get

    config.validate()
    images, gt = _scenes_and_truth(config)
    truth = load_ground_truth(gt)
    classes = _classes(config, truth)
    clusters = [_cluster_classes(run) for run in config.runs]
    predict_configs = [_predict_config(config, run, images, classes, found) for run, found in zip(config.runs, clusters)]
    for predict_config in predict_configs:
        predict_config.validate()
        if plans:
            get(predict_config.method).plan(predict_config)
    return images, gt, truth, classes, clusters, predict_configs


def plan_compare(config: CompareConfig, output: str | Path | None = None) -> Any:
    """What ``zutis compare`` would do (``--dry-run``): the checks of a real run (every run's options,
    checkpoint, references and weights; the ground truth and the classes), no weights loaded,
    nothing written."""
    from zutiscli.pipeline.plan import Plan, input_entry, output_plan
    from zutiscli.pipeline.predict import plan_predict

    images, gt, truth, classes, clusters, predict_configs = _prepared(config, plans=False)  # plan_predict plans them
    writes = output_plan(output, "compare")
    reads, notes, count = [], [], 0
    for run, predict_config, found in zip(config.runs, predict_configs, clusters):
        plan = plan_predict(predict_config)
        count = plan.work["images_to_segment"]
        model = plan.model or {}
        method = run.method + (f" (clusters, {config.match})" if found else "")
        reads.append(input_entry(run.argument or model.get("name"), f"--run {run.label}", method=method,
                                 model=model.get("name"), weights=model.get("weights") or model.get("pretrained")))
        notes.extend(f"{run.label}: {note}" for note in plan.notes)
    names = [q.name for q in classes]
    reads[:0] = [input_entry(images, "images", images=count),
                 input_entry(gt, "ground truth", images=len(truth.images))]
    params = {"runs": [run.label for run in config.runs], "classes": names, "stuff": list(config.stuff),
              "match": config.match, "match_score": config.match_score, "picture": config.picture,
              "device": config.device, "precision": config.precision}
    work = {"runs": len(config.runs), "images_to_segment": count * len(config.runs)}
    return Plan("compare", reads, writes, None, params, work, notes)


@holding_locks
def compare(config: CompareConfig, output: str | Path | None = None, *,
            progress: Callable[[int, int], None] | None = None,
            log: Callable[[str], None] | None = None,
            warn: Callable[[str], None] | None = None) -> CompareResult:
    """Run ``zutis compare``; returns the directory, the rows and the text table.

    ``progress(done, total)`` counts the runs. A run that labels every pixel of every image
    background gets a ``"warning"`` in its row and one line to ``warn`` (default:
    :func:`warnings.warn`): its scores say nothing of its method."""
    from zutiscli.artefacts.atomic import atomic_write_json, atomic_write_text
    from zutiscli.artefacts.manifest import write_manifest
    from zutiscli.artefacts.rundir import prepare_output_dir
    from zutiscli.engine.evaluator import headline, score
    from zutiscli.pipeline.evaluate import EvaluateConfig
    from zutiscli.pipeline.predict import predict_in_memory

    say = log or (lambda message: None)
    images, gt, truth, classes, clusters, predict_configs = _prepared(config)
    out = prepare_output_dir(output, "compare")
    rows: dict[str, dict[str, Any]] = {}
    predictions = []
    for number, (run, predict_config, found) in enumerate(zip(config.runs, predict_configs, clusters), start=1):
        say(f"[{number}/{len(config.runs)}] {run.label}")
        start = time.perf_counter()
        prediction = predict_in_memory(predict_config, log=say)
        seconds = time.perf_counter() - start
        matching = dict(match=config.match, match_score=config.match_score) if found else {}
        metrics = score(prediction, truth, EvaluateConfig(pred=run.label, gt=str(gt), **matching))
        if found:
            prediction = _as_matched_classes(prediction, metrics, [q.name for q in classes])
        atomic_write_json(out / "runs" / str(number) / "metrics.json", metrics)
        glance = dict(headline(metrics))  # unrounded, as evaluate writes them: the table rounds once
        rows[run.label] = {"method": run.method + (f" (clusters, {config.match})" if found else ""),
                           "source": run.argument, "metrics": glance,
                           "seconds": round(seconds, 2),
                           "seconds_per_image": round(seconds / max(1, len(prediction.images)), 4)}
        if _background_only(prediction):
            held = ("share of ReCo's maps" if config.background_rule == "share" else "reference match")
            hint = (f"; lower --background-threshold (now {config.background_threshold:g}: no class held that "
                    f"{held} anywhere)" if run.method == "reco" else "")
            rows[run.label]["warning"] = "every pixel of every image labelled background"
            send_warning(warn, f"{run.label} labelled every pixel of every image background{hint}", stacklevel=2)
        predictions.append(prediction)
        if progress is not None:
            progress(number, len(config.runs))
        say(f"    {run.label}: " + ", ".join(f"{k} {100 * v:.1f}" for k, v in glance.items() if isinstance(v, float)))
    table = format_table(rows)
    names = [q.name for q in classes]
    if config.picture:
        write_compare_picture(out / "compare.png", truth, list(rows), predictions, names, config.picture)
    atomic_write_text(out / "compare.txt", table + "\n")
    atomic_write_json(out / "compare.json", {"images": str(images), "gt": str(gt), "classes": names,
                                             "stuff": list(config.stuff), "runs": rows})
    write_manifest(out, "zutis.comparison", inputs=[p for p in (images, gt) if p.exists()],
                   params={"runs": [run.label for run in config.runs], "classes": names, "stuff": list(config.stuff),
                           "model": config.model, "pretrained": config.pretrained,
                           "background_threshold": config.background_threshold,
                           "background_rule": config.background_rule, "match": config.match,
                           "match_score": config.match_score, "device": config.device, "precision": config.precision},
                   summary={"runs": {label: row["metrics"] for label, row in rows.items()}})
    return CompareResult(out, rows, table)


def _background_only(prediction: Any) -> bool:
    """Whether ``prediction`` has semantic maps and they hold nothing but background (0; -1: no class)."""
    maps = [image.semantic for image in prediction.images if isinstance(image.semantic, np.ndarray)]
    return bool(maps) and all(int(semantic.max(initial=0)) <= 0 for semantic in maps)


def _as_matched_classes(prediction: Any, metrics: dict[str, Any], names: list[str]) -> Any:
    """A cluster run's prediction with its semantic maps relabelled as the classes (``1 + index in
    names``; 0 background or no class) its clusters were matched to, for the picture."""
    import dataclasses

    from zutiscli.ops.metrics import remap_labels

    mapping = ((metrics.get("semantic") or {}).get("cluster_mapping") or {}).get("mapping")
    if not mapping:
        return prediction
    folded = [name.casefold() for name in names]
    labels = ["background", *(prediction.names or [])]
    table = np.zeros(len(labels), dtype=np.int64)
    for value, label in enumerate(labels):
        target = (mapping.get(label) or "").casefold()
        table[value] = folded.index(target) + 1 if target in folded else 0
    images = [dataclasses.replace(image, semantic=remap_labels(image.semantic, table, fill=-1))
              if isinstance(image.semantic, np.ndarray) else image for image in prediction.images]
    return dataclasses.replace(prediction, images=images)


def _gt_labels(truth: Any, image: Any, names: list[str]) -> np.ndarray | None:
    """A ground-truth image's semantic map with labels as ``1 + index in names`` (others 0), or None."""
    from zutiscli.artefacts.labelmap import read_label_png

    if image.semantic is None:
        return None
    labels = read_label_png(image.semantic).astype(np.int64)
    written = truth.semantic_names or []
    table = np.zeros(max(int(labels.max()) + 1, len(written), 1), dtype=np.int64)
    folded = [n.casefold() for n in names]
    for value, name in enumerate(written):
        if name.casefold() in folded:
            table[value] = folded.index(name.casefold()) + 1
    return table[np.clip(labels, 0, len(table) - 1)]


def write_compare_picture(path: Path, truth: Any, labels: list[str], predictions: list[Any], names: list[str],
                          count: int, tile: int = 160) -> Path:
    """``compare.png``: a column per scene (the first ``count`` of the ground truth), the image and
    its ground truth on top, then each run's semantic map, one colour per class throughout."""
    from PIL import Image, ImageDraw

    from zutiscli.artefacts.atomic import atomic_path
    from zutiscli.data.images import load_image
    from zutiscli.ops.overlay import render_overlay

    shown = sorted(truth.images, key=lambda image: image.id)[:count]
    margin = 150
    rows = ["image", "ground truth", *labels]
    canvas = Image.new("RGB", (margin + len(shown) * tile, len(rows) * tile), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for row, label in enumerate(rows):
        draw.text((4, row * tile + tile // 2 - 6), label[:22], fill=(0, 0, 0))
    by_stem = [{image.stem: image for image in prediction.images} for prediction in predictions]

    def put(array: np.ndarray, row: int, column: int) -> None:
        picture = Image.fromarray(array).resize((tile, tile), Image.NEAREST)
        canvas.paste(picture, (margin + column * tile, row * tile))

    for column, image in enumerate(shown):
        rgb = np.asarray(load_image(image.path)) if image.path else None
        if rgb is None:
            continue
        put(rgb, 0, column)
        gt_labels = _gt_labels(truth, image, names)
        if gt_labels is not None:
            put(render_overlay(rgb, names, gt_labels, None, None, None), 1, column)
        for row, found in enumerate(by_stem, start=2):
            mine = found.get(image.stem)
            if mine is not None and isinstance(mine.semantic, np.ndarray):
                put(render_overlay(rgb, names, np.where(mine.semantic < 0, 0, mine.semantic), None, None, None),
                    row, column)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path
