"""`zutis predict`: open-vocabulary semantic, instance and panoptic segmentation of any image.

The stage wires a predictor method (:mod:`zutiscli.methods.predict`: ``zutis``, ``maskclip``) and
its inference settings (:mod:`zutiscli.engine.inference`: the model's recipe unless an option
overrides one, or the paper's with ``inference="paper"``) into the predict engine
(:mod:`zutiscli.engine.predict`), which streams the images into a predictions directory
(:mod:`zutiscli.artefacts.prediction_writer`). ``shard=(i, n)`` segments the images whose path
hashes to ``i`` modulo ``n`` into ``OUTPUT/shard-i-of-n``; :func:`merge_predictions` joins shards
into the directory an unsharded run writes. The options, :class:`PredictConfig`, live in
:mod:`zutiscli.pipeline.predict_config` (no torch there, for the command line's ``--help``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from zutiscli.artefacts.lock import holding_locks
from zutiscli.artefacts.manifest import read_json, read_manifest, relative_to, resolve_relative, write_manifest
from zutiscli.artefacts.parts import read_parts
from zutiscli.artefacts.prediction_writer import (FAILED_NAME, FOLDERS, IMAGES_NAME, KIND, OWN_ENTRIES, PANOPTIC_NAME,
                                                  RESULTS_NAME, ImageResult, PredictionsWriter, committed_rows,
                                                  write_failed_list)
from zutiscli.artefacts.rundir import check_output_dir, check_resumable_dir, prepare_output_dir
from zutiscli.data.classes import safe_filenames
from zutiscli.engine import inference
from zutiscli.errors import ArtefactError, UsageError, ZutisError
from zutiscli.pipeline.failures import check_failures, summary as failure_summary
from zutiscli.pipeline.plan import Plan, input_entry
from zutiscli.pipeline.predict_config import TASKS, PredictConfig  # noqa: F401 - TASKS for importers

SHARD_NAME = "shard.json"
#: Options that change no output: an interrupted run may be finished with other values.
RESUME_FREE_PARAMS = ("batch_size", "loader_workers", "chunk_size", "device")

__all__ = ["PredictConfig", "PredictResult", "ImageResult", "predict", "plan_predict", "merge_predictions"]


@dataclass
class PredictResult:
    """Summary of a run: directory, per-image results, failures, and the time split (seconds)."""

    path: Path
    images: list[ImageResult]
    failed: list[tuple[str, str]]
    timing: dict[str, float]


def _listing(config: PredictConfig) -> tuple[Any, list[Path], list[str], tuple[int, int] | None, list[int]]:
    """``(found, this shard's images, their stems, shard, their positions in the whole listing)``;
    stems are those of the whole listing, so a shard names its files as the unsharded run does.
    ``found.problems`` (inputs that name no readable file) are the whole listing's: a shard reports
    its own (:func:`zutiscli.data.shards.shard_entries`)."""
    from zutiscli.data.images import discover_images
    from zutiscli.data.shards import shard_from_environment, shard_of

    found = discover_images(list(config.inputs), from_list=config.from_list)
    if not found.paths and not found.problems:
        raise ZutisError("no images found in " + ", ".join(map(str, config.inputs)))
    stems = safe_filenames([p.stem for p in found.paths]) if found.paths else []
    shard = config.shard or shard_from_environment()
    if shard is not None and shard[1] > 1:
        keep = [i for i, path in enumerate(found.paths) if shard_of(path, shard[1]) == shard[0]]
        return found, [found.paths[i] for i in keep], [stems[i] for i in keep], shard, keep
    return found, list(found.paths), stems, None, list(range(len(found.paths)))


def _output(output: str | Path | None, shard: tuple[int, int] | None) -> str | Path | None:
    """Where a (shard of a) run writes: a shard writes ``OUTPUT/shard-I-of-N`` (``-o`` required)."""
    from zutiscli.data.shards import shard_output

    return output if shard is None else shard_output(output, shard, "predict")


def _check_output(output: str | Path | None) -> tuple[Path, str]:
    """Where a run writes and its state, creating nothing: an existing directory must be what an
    interrupted run of ``zutis predict`` left (to be resumed); a finished one, or one holding
    anything else, is refused (:func:`zutiscli.artefacts.rundir.check_resumable_dir`)."""
    return check_resumable_dir(output, "predict", OWN_ENTRIES, "predictions")


def _resumed(out: Path, listing: list[Path], identity: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """The rows an interrupted run into ``out`` committed for images of ``listing``, by listing
    position (:func:`zutiscli.artefacts.prediction_writer.committed_rows`)."""
    rows = committed_rows(out, identity)
    if not rows:
        return {}
    where = {relative_to(out, path): number for number, path in enumerate(listing)}
    return {where[path]: row for path, row in rows.items() if path in where}


def _problems(found: Any, shard: tuple[int, int] | None) -> list[tuple[str, str]]:
    from zutiscli.data.shards import shard_entries

    return shard_entries(found.problems, shard)


def plan_predict(config: PredictConfig, output: str | Path | None = None) -> Plan:
    """What ``zutis predict`` would do (``--dry-run``): the checks of a real run, no weights loaded, nothing written."""
    from zutiscli.methods.predict import get
    from zutiscli.models.device import precision_name, resolve_device, resolve_precision

    config.validate()
    found, listing, _, shard, _ = _listing(config)
    out, state = _check_output(_output(output, shard))
    writes = {"path": str(out), "state": state}
    device = resolve_device(config.device)
    dtype = resolve_precision(config.precision, device)
    sources = [*map(str, config.inputs), *([str(config.from_list)] if config.from_list else [])]
    counts = {"images": len(found.paths)} | ({"unreadable_entries": len(found.problems)} if found.problems else {})
    reads = [input_entry(", ".join(sources), "images", **counts)]
    model, recipe, method_notes = get(config.method).plan(config)
    model |= {"device": str(device), "precision": precision_name(dtype)}
    settings, origin = config.settings(recipe)
    problems = _problems(found, shard)
    notes = ([failure_summary(problems, len(listing) + len(problems))] if problems else []) + method_notes
    notes.append(inference.describe(settings, origin))
    params = {"classes": [q.name for q in config.classes], "stuff": list(config.stuff), "method": config.method,
              "tasks": sorted(config.tasks),
              "inference": settings.to_dict(), "crop_adapter": config.crop_adapter, "vis": config.vis,
              "batch_size": config.batch_size}
    if shard is not None:
        params["shard"] = f"{shard[0]}/{shard[1]}"
    work = {"images_to_segment": len(listing)}
    if state == "existing":  # what an interrupted run committed (its settings are checked once the model loads)
        where = {relative_to(out, path) for path in listing}
        done = sum(path in where for path in read_parts(out, "predictions row"))
        work = {"already_segmented": done, "images_to_segment": len(listing) - done}
    return Plan("predict", reads, writes, model, params, work, notes)


def classes_to_segment(classes: str | None, classes_file: str | Path | None, method: str,
                       checkpoint: str | None, stuff: Sequence[str] = ()) -> tuple[list[Any], tuple[str, ...]]:
    """``(classes, stuff)`` to segment: those of ``--classes`` or ``--classes-file`` and ``--stuff``;
    with neither list, for a ZUTIS or ReCLIP++ checkpoint given (``checkpoint`` or ``$ZUTIS_CHECKPOINT``), the
    classes it was trained for (a model trained on clusters: its clusters, ``cluster-00``, ...) and,
    unless ``stuff`` is given, the stuff clusters that travel with it (``stuff-00``, ...)."""
    import os

    from zutiscli.data.classes import ClassQuery, parse_classes

    given = checkpoint is not None or os.environ.get("ZUTIS_CHECKPOINT")
    if classes is None and classes_file is None and method in ("zutis", "reclip") and given:
        from zutiscli.artefacts.checkpoint import trained_classes
        from zutiscli.artefacts.runs import resolve_checkpoint

        trained, _, own_stuff = trained_classes(resolve_checkpoint(checkpoint))
        return [ClassQuery(name, name) for name in trained], tuple(stuff) or tuple(own_stuff)
    return parse_classes(classes, classes_file), tuple(stuff)


@holding_locks
def predict(config: PredictConfig, output: str | Path | None = None, *,
            progress: Callable[[int, int], None] | None = None,
            log: Callable[[str], None] | None = None, model: Any = None,
            warn: Callable[[str], None] | None = None) -> PredictResult:
    """Run ``zutis predict``; returns the per-image summary (the directory is ``result.path``).

    ``model`` is an in-memory ZUTIS model used instead of loading ``config.checkpoint`` (only for
    ``method="zutis"``), run as it is: the caller sets eval mode; its device and dtype are the model's.

    Inputs that cannot be read are skipped and listed in ``failed.jsonl``. When none can be read
    the run stops with :class:`ZutisError` and writes no artefact (only ``failed.jsonl``, when it
    lists more than the one input the message names); when some fail ``warn`` gets one line
    (:func:`zutiscli.pipeline.failures.check_failures`).
    """
    from zutiscli.models.device import resolve_device, resolve_precision

    config.validate()
    say = log or (lambda message: None)
    found, listing, stems, shard, positions = _listing(config)
    target = _output(output, shard)
    if shard is not None:
        say(f"shard {shard[0]}/{shard[1]}: {len(listing)} of {len(found.paths)} images")
    out, state = _check_output(target)  # refuse an unusable -o before loading the model, create nothing yet
    device = resolve_device(config.device)
    dtype = resolve_precision(config.precision, device)
    engine, settings, origin = open_engine(config, device, dtype, say, model=model)
    names = [q.name for q in config.classes]
    params = {k: v for k, v in vars(config).items() if k not in ("classes", "inputs", "from_list", "shard")}
    params |= {"classes": names, "settings": settings.to_dict(), "settings_from": origin,
               "shard": list(shard) if shard else None}
    identity = {"model": engine.predictor.record,
                "params": {k: v for k, v in params.items() if k not in RESUME_FREE_PARAMS}}
    try:
        committed = _resumed(out, listing, identity) if state == "existing" else {}
    except BaseException:
        engine.predictor.close()
        raise
    order = [number for number in range(len(listing)) if number not in committed]
    todo = [listing[number] for number in order]
    if committed:
        say(f"{out}: {len(committed)} image(s) already segmented by an interrupted run; {len(todo)} to go")
    writer = PredictionsWriter(target, names, config.tasks, config.vis, stems, stuff=config.stuff_ids, order=order,
                               committed=committed, identity=identity, chunk_size=config.chunk_size,
                               restart=state == "existing" and not committed)
    problems = _problems(found, shard)
    for entry, reason in problems:
        writer.failed(entry, reason)
    try:
        if committed:
            writer.open()
        timing = engine.run(todo, writer, batch_size=config.batch_size,
                            workers=config.decode_workers(len(todo)), max_pixels=config.max_pixels,
                            progress=progress).as_dict()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: keep the images segmented since the last commit for the rerun
        writer.commit()
        raise
    finally:
        engine.predictor.close()
    if writer.path is None and shard is not None and not listing and not problems:
        say(f"shard {shard[0]}/{shard[1]} holds none of the {len(found.paths)} images; writing it empty")
        writer.open()
    if writer.path is None and not writer.failures:
        raise ZutisError("no image to segment")
    listed = writer.path / FAILED_NAME if writer.path is not None else \
        writer.write_failures() if len(writer.failures) > 1 else None
    check_failures(writer.failures, len(listing) + len(problems), listed, warn=warn)
    if shard is not None:  # where each image stood in the whole listing, for the merge to restore its order
        from zutiscli.artefacts.atomic import atomic_write_json

        atomic_write_json(writer.path / SHARD_NAME, {"shard": list(shard), "listed": len(found.paths),
                                                     "positions": [positions[n] for n in sorted(writer.rows)]},
                          indent=None)
    path = writer.finish(model=engine.predictor.record, inputs=engine.predictor.inputs, params=params,
                         summary={"timing": {k: round(v, 3) for k, v in timing.items()}})
    return PredictResult(path, writer.summaries, writer.failures, timing)


def open_engine(config: PredictConfig, device: Any, dtype: Any, log: Callable[[str], None], *, model: Any = None,
                recipe: dict[str, Any] | None = None) -> tuple[Any, inference.InferenceSettings, dict[str, str]]:
    """Load ``config``'s predictor (or wrap the in-memory ``model``, whose inference recipe is
    ``recipe``), resolve its inference settings (logged in one line) and load what they need;
    returns ``(engine, settings, origin)``. The caller closes ``engine.predictor``."""
    from zutiscli.engine.predict import PredictEngine
    from zutiscli.methods.predict import get

    predictor = get(config.method).load(config, device, dtype, log, model=model)
    if model is not None:
        predictor.recipe = dict(recipe or {})
    try:
        settings, origin = config.settings(predictor.recipe)
        log(inference.describe(settings, origin))
        wants_instances = config.wants_instances_with(settings)
        predictor.prepare(settings, config, device, dtype, log, wants_instances=wants_instances)
    except BaseException:
        predictor.close()
        raise
    engine = PredictEngine(predictor, settings, semantic=bool(config.tasks & {"semantic", "panoptic"}),
                           instances=wants_instances, max_size=config.max_size, stuff=config.stuff_ids)
    return engine, settings, origin


def predict_in_memory(config: PredictConfig, *, model: Any = None, recipe: dict[str, Any] | None = None,
                      log: Callable[[str], None] | None = None) -> Any:
    """Segment ``config``'s images and keep the outputs in memory, as the
    :class:`zutiscli.artefacts.predictions.Prediction` that scoring reads (``zutis train``'s
    held-out evaluation; ``model`` as for :func:`predict`, its inference recipe ``recipe``).
    Nothing is written."""
    from zutiscli.artefacts.prediction_writer import PredictionsInMemory
    from zutiscli.models.device import resolve_device, resolve_precision

    config.validate()
    say = log or (lambda message: None)
    found, listing, stems, _, _ = _listing(config)
    device = resolve_device(config.device)
    dtype = resolve_precision(config.precision, device)
    engine, _, _ = open_engine(config, device, dtype, say, model=model, recipe=recipe)
    sink = PredictionsInMemory([q.name for q in config.classes], config.tasks, stems, stuff=config.stuff_ids)
    try:
        engine.run(listing, sink, batch_size=config.batch_size, workers=0, max_pixels=config.max_pixels)
    finally:
        engine.predictor.close()
    failures = [*found.problems, *sink.failures]
    if failures:
        say(failure_summary(failures, len(listing) + len(found.problems)))
    return sink.prediction()


# ---- merging shards -------------------------------------------------------------------------
@holding_locks
def merge_predictions(shards: Sequence[str | Path], output: str | Path | None = None,
                      log: Callable[[str], None] | None = None) -> Path:
    """Join the shard directories of one sharded ``zutis predict`` run into one predictions directory.

    The result is the directory an unsharded run writes: images in the order of the run's listing
    (the order the shards' images had in it), ids ``1..N`` in that order, the shards' files moved
    under their own names. Refuses directories of different runs (classes, method, settings, model)
    or a set of shards with one missing, naming the directory.
    """
    import json

    from zutiscli.artefacts.atomic import atomic_write_json, atomic_write_text, link_or_copy
    from zutiscli.data.shards import distinct_directories

    say = log or (lambda message: None)
    manifests = []
    for shard in distinct_directories(shards, "shard directory", "preds/shard-*-of-N"):
        manifest = read_manifest(shard, KIND)
        if not manifest.params.get("shard") or not (shard / SHARD_NAME).is_file():
            raise ArtefactError(f"{shard}: is not a shard of a sharded `zutis predict` run (no --shard)")
        manifests.append((shard, manifest))
    first_dir, first = manifests[0]
    count = int(first.params["shard"][1])
    comparable = ("classes", "method", "task", "settings", "max_size", "vis", "checkpoint", "model", "pretrained")
    seen: dict[int, Path] = {}
    for shard, manifest in manifests:
        index, total = (int(v) for v in manifest.params["shard"])
        if total != count:
            raise ArtefactError(f"{shard}: is shard {index} of {total}, but {first_dir} is one of {count}; "
                                f"merge the shards of one run")
        for key in comparable:
            if manifest.params.get(key) != first.params.get(key):
                raise ArtefactError(f"{shard}: was run with another {key} than {first_dir}; merge the shards of one run")
        if (manifest.model or {}).get("checkpoint") != (first.model or {}).get("checkpoint"):
            raise ArtefactError(f"{shard}: was run with another model than {first_dir}; merge the shards of one run")
        if index in seen:
            raise UsageError(f"{shard}: shard {index} is given twice (also as {seen[index]}); give each shard once")
        seen[index] = shard
    missing = sorted(set(range(count)) - set(seen))
    if missing:
        raise UsageError(f"shard(s) {', '.join(f'{i}/{count}' for i in missing)} missing: give all {count} "
                         f"shard directories of the run")
    check_output_dir(output, "predict")
    parts = []
    for shard, _ in sorted(manifests, key=lambda item: int(item[1].params["shard"][0])):
        images = read_json(shard / IMAGES_NAME, "the images of a `zutis predict` shard")
        results = read_json(shard / RESULTS_NAME, "the COCO results of a `zutis predict` shard")
        panoptic = read_json(shard / PANOPTIC_NAME, "COCO panoptic predictions") \
            if (shard / PANOPTIC_NAME).is_file() else None
        layout = read_json(shard / SHARD_NAME, "where the shard's images stood in the run's listing")
        parts.append((shard, images, results, panoptic, layout))
    entries = []
    listed = categories = panoptic_categories = None
    for shard, images, results, panoptic, layout in parts:
        try:
            if categories is None:  # the shards' classes are the same (checked above): the first's
                categories = images["categories"]
                panoptic_categories = panoptic["categories"] if panoptic is not None else None
            if listed is not None and layout["listed"] != listed:
                raise ArtefactError(f"{shard}: its run listed {layout['listed']} images, another shard's {listed}; "
                                    f"merge the shards of one run")
            listed = layout["listed"]
            by_image: dict[int, list[dict[str, Any]]] = {}
            for result in results:
                by_image.setdefault(result["image_id"], []).append(result)
            segments = {a["image_id"]: a for a in (panoptic or {}).get("annotations", [])}
            for record, order in zip(images["images"], layout["positions"], strict=True):
                entries.append((order, shard, record, by_image.get(record["id"], []), segments.get(record["id"])))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ArtefactError(f"{shard}: its {IMAGES_NAME}, {RESULTS_NAME} or {SHARD_NAME} is not what "
                                f"`zutis predict --shard` writes; the shard is corrupt, run it again") from None
    failures = []
    for shard, _, _, _, _ in parts:  # shards written before failed.jsonl existed have none
        failed_list = shard / FAILED_NAME
        lines = failed_list.read_text(encoding="utf-8").splitlines() if failed_list.is_file() else []
        for number, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
                failures.append((resolve_relative(shard, row["path"]), str(row["reason"])))
            except (ValueError, KeyError, TypeError):
                raise ArtefactError(f"{failed_list}: line {number} is not a failure record; the shard is corrupt, "
                                    f"run it again") from None
    entries.sort(key=lambda entry: entry[0])
    out = prepare_output_dir(output, "predict")
    folders = [name for name in FOLDERS if (first_dir / name).is_dir()]
    for name in folders:
        (out / name).mkdir(exist_ok=True)
    merged_images, merged_results, merged_panoptic = [], [], []
    for image_id, (_, shard, record, results, segment) in enumerate(entries, start=1):
        stem = record["stem"]
        for name, suffix in (("semantic", ".png"), ("panoptic", ".png"), ("vis", ".jpg")):
            source = shard / name / f"{stem}{suffix}"
            if name in folders and source.is_file():
                link_or_copy(source, out / name / f"{stem}{suffix}")
        file_name = relative_to(out, resolve_relative(shard, record["file_name"]))
        merged_images.append(record | {"id": image_id, "file_name": file_name})
        merged_results.extend(result | {"image_id": image_id} for result in results)
        if segment is not None:
            merged_panoptic.append(segment | {"image_id": image_id})
    atomic_write_text(out / RESULTS_NAME, json.dumps(merged_results) + "\n")
    atomic_write_json(out / IMAGES_NAME, {"images": merged_images, "categories": categories}, indent=None)
    if panoptic_categories is not None:
        atomic_write_json(out / PANOPTIC_NAME, {"images": merged_images, "annotations": merged_panoptic,
                                                  "categories": panoptic_categories}, indent=None)
    write_failed_list(out, failures)
    failed = sum(int(m.summary.get("failed", 0)) for _, m in manifests)
    params = dict(first.params) | {"shard": None, "merged_from": count}
    write_manifest(out, KIND, model=first.model, inputs=[shard for shard, _ in manifests], params=params,
                   summary={"images": len(merged_images), "failed": failed, "instances": len(merged_results)})
    say(f"merged {count} shards: {len(merged_images)} images, {len(merged_results)} instances")
    return out

