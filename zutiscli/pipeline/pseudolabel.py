"""`zutis pseudolabel`: object masks for every archive image (named by its archive), or for every
image of a pile (an index, image files or directories: masks unnamed, for ``zutis cluster``), by
training-free mask discovery. What the inputs become is :mod:`zutiscli.pipeline.pseudolabel_inputs`.

Methods are plug-ins (:mod:`zutiscli.methods.pseudolabel`, one module each, ``--method NAME``):
``spectral`` (default, SelfMask's spectral voting), ``attention`` (MaskDistill), ``maskcut``
(CutLER/U2Seg, several objects) and ``onnx`` (any saliency network). A method turns an image and
the last-block features of a ViT (:mod:`zutiscli.models.backbones`), or its own saliency map, into
soft object masks; what follows is the same for all of them.

Each found mask is upsampled bilinearly to the image, refined (bilateral solver by default, or
DenseCRF, or a plain threshold), holes filled, then the largest component kept (or components
split), and small specks dropped. An image where nothing is found is reported in ``empty.jsonl``,
never given an empty mask. Masks are class-agnostic, so an image in several archives is processed
once and named after each archive.

The stage is resumable: results are committed in chunks (``parts/*.jsonl``); a rerun skips images
already done. ``pseudolabels.json`` (COCO) is assembled at the end, in the artefact's canonical
order (layout and order in :mod:`zutiscli.artefacts.pseudolabels`).

Cluster scale: ``shard=(i, n)`` (``--shard I/N``, else a SLURM array task or torchrun's
RANK/WORLD_SIZE, see :mod:`zutiscli.data.shards`) keeps the distinct archive images whose path
hashes to ``i`` modulo ``n`` (an image in two archives lands in one shard) and writes a complete,
resumable pseudo-label directory ``<output>/shard-i-of-n``. :func:`merge_pseudolabels` joins the
``n`` shards into the directory the unsharded run would have written.
"""

from __future__ import annotations

import concurrent.futures as futures
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from zutiscli.artefacts.atomic import atomic_write_text
from zutiscli.artefacts.coco import CocoBuilder
from zutiscli.artefacts.archives import read_archives
from zutiscli.artefacts.manifest import (
    MANIFEST_NAME,
    InputRef,
    read_json,
    read_manifest,
    relative_to,
    resolve_relative,
    write_manifest,
)
from zutiscli.artefacts.parts import PARTS_DIR, RUN_NAME, check_run, count_parts, read_parts, record_run, write_part
from zutiscli.artefacts.pseudolabels import EMPTY_NAME, FAILED_NAME, PSEUDOLABELS_NAME
from zutiscli.artefacts.lock import holding_locks
from zutiscli.artefacts.rundir import check_output_dir, check_resumable_dir, prepare_output_dir
from zutiscli.data.shards import distinct_directories, shard_dir_name, shard_from_environment, shard_of, shard_output
from zutiscli.data.workers import as_is, quiet_worker, worker_loader
from zutiscli.errors import ArtefactError, ZutisError
from zutiscli.models.device import precision_name, resolve_device, resolve_precision
from zutiscli.ops.masks import encode_mask
from zutiscli.pipeline.archive_models import feature_model, named_by_manifest
from zutiscli.pipeline.failures import check_failures
from zutiscli.pipeline.plan import Plan, input_entry, output_plan, weights_plan
from zutiscli.pipeline.pseudolabel_config import REFINERS, PseudolabelConfig  # noqa: F401 - exported here too
from zutiscli.pipeline.pseudolabel_inputs import PseudolabelInputs, pile, read_inputs
from zutiscli.pipeline.pseudolabel_predictions import predictions_input, pseudolabels_from_predictions

#: Manifest params that may differ between the shards of one run (they change no mask).
SHARD_FREE_PARAMS = ("shard", "workers", "chunk_size", "device")


#: Images per backbone forward pass (same input shape only; MaskCut's square inputs always are).
FEATURE_BATCH = 16


# ---- per-image work (runs in worker processes when --workers > 0) ---------------------------
def _refine(image: np.ndarray, soft: np.ndarray, config: PseudolabelConfig) -> list[np.ndarray]:
    from zutiscli.ops.refine import bilateral_refine, densecrf_refine, refine_mask

    if config.refine == "bilateral":
        hard = bilateral_refine(image, soft)
    elif config.refine == "densecrf":
        hard = densecrf_refine(image, soft)
    else:
        hard = soft > 0.5
    area = image.shape[0] * image.shape[1]
    masks = refine_mask(hard, fill_holes=config.fill_holes, mode=config.component_mode,
                        min_area_fraction=config.min_area)
    return [m for m in masks if m.sum() >= max(1, config.min_area * area)]


def discover_objects(image: np.ndarray, features: dict[str, np.ndarray] | None, saliency: np.ndarray | None,
                     config: PseudolabelConfig) -> list[tuple[np.ndarray, float | None]]:
    """Object masks of one image: ``[(mask (H, W) bool, score or None), ...]``, disjoint, largest first.

    ``image``: ``(H, W, 3)`` uint8; ``features``: the last block's ``tokens``/``keys``/``cls_attention``
    at patch resolution (numpy) for methods that need ViT features; ``saliency``: an ``(H, W)``
    probability map for methods with their own saliency network. The method proposes soft masks
    (:meth:`~zutiscli.methods.pseudolabel.PseudoLabeller.propose`); each is refined, and pixels
    already taken by an earlier (more salient) object are removed from later ones.
    """
    height, width = image.shape[:2]
    found = config.labeller.propose(image, features, saliency, config)
    objects: list[tuple[np.ndarray, float | None]] = []
    taken = np.zeros((height, width), dtype=bool)
    for soft, score in found:
        for mask in _refine(image, soft, config):
            mask = mask & ~taken
            if mask.sum() >= max(1, config.min_area * height * width):
                objects.append((mask, None if score is None else float(score)))
                taken |= mask
    objects.sort(key=lambda item: -int(item[0].sum()))
    return objects


def _work(item: tuple[int, np.ndarray, dict | None, np.ndarray | None, PseudolabelConfig]):
    index, image, features, saliency, config = item
    objects = discover_objects(image, features, saliency, config)
    return index, [{"rle": encode_mask(mask), "score": score} for mask, score in objects]


# ---- model side -----------------------------------------------------------------------------
class _Images(torch.utils.data.Dataset):
    """Decodes an archive image and resizes it for the backbone (short side or square)."""

    def __init__(self, paths: list[Path], size: int, square: bool, patch: int):
        self.paths, self.size, self.square, self.patch = paths, size, square, patch

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        from zutiscli.data.images import ImageLoadError, load_image

        try:
            image = np.asarray(load_image(self.paths[index]))
        except ImageLoadError as exc:
            return index, None, exc.reason
        height, width = image.shape[:2]
        if self.square:
            new_h = new_w = self.size
        else:
            scale = self.size / min(height, width)
            new_h, new_w = round(height * scale), round(width * scale)
        new_h = max(self.patch, new_h // self.patch * self.patch)
        new_w = max(self.patch, new_w // self.patch * self.patch)
        tensor = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float().div_(255)
        tensor = F.interpolate(tensor, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
        return index, image, tensor[0]


# ---- the stage ------------------------------------------------------------------------------
@dataclass
class PseudolabelResult:
    """Summary of a run: directory, counts (unique images processed, masks, empty, failed)."""

    path: Path
    images: int
    processed: int
    masks: int
    empty: int
    failed: int
    seconds: float
    per_class: dict[str, dict[str, int]] = field(default_factory=dict)
    shard: tuple[int, int] | None = None


def _resolve_shard(config: PseudolabelConfig) -> tuple[int, int] | None:
    """The run's shard: ``config.shard``, else the environment's; None for an unsharded run (N = 1)."""
    shard = tuple(config.shard) if config.shard is not None else shard_from_environment()
    return shard if shard is not None and shard[1] > 1 else None


def _in_shard(images: list[Path], shard: tuple[int, int] | None) -> list[Path]:
    """The images of ``shard`` (all of them when None), in the given order."""
    if shard is None:
        return images
    return [path for path in images if shard_of(path, shard[1]) == shard[0]]


def _check_output(output: str | Path | None, shard: tuple[int, int] | None = None) -> tuple[Path, str]:
    """Where the pseudo-labels would go and its state (see :func:`check_output_dir`), creating nothing.

    An existing directory must be a pseudo-label directory (to resume or redo) or hold only what
    an interrupted run leaves; anything else is refused rather than written into. A sharded run
    writes into ``output/shard-i-of-n`` and needs an explicit ``output`` (the shards' jobs would
    otherwise each number a run directory of their own).
    """
    if shard is not None:
        output = shard_output(output, shard, "pseudolabel")
    own = {PARTS_DIR, PSEUDOLABELS_NAME, EMPTY_NAME, FAILED_NAME, "preview"}
    return check_resumable_dir(output, "pseudolabel", own, "pseudo-label", finished_kind="zutis.pseudolabels")


def _unique_images(archives: dict[str, list[Any]]) -> list[Path]:
    """The distinct images of all archives, in archive order (an image in two archives is processed once)."""
    unique: list[Path] = []
    seen: set[Path] = set()
    for hits in archives.values():
        for hit in hits:
            if hit.path not in seen:
                seen.add(hit.path)
                unique.append(hit.path)
    return unique


def _done(rows: dict[str, dict[str, Any]], out: Path, images: list[Path]) -> set[Path]:
    """The ``images`` a resumed run skips: those with a committed row, except the failed ones
    (tried again: the files may have been fixed since)."""
    return {path for path in images if not rows.get(relative_to(out, path), {"failed": True}).get("failed")}


def _check_settings(out: Path, config: PseudolabelConfig, inputs: PseudolabelInputs,
                    model_record: dict[str, Any]) -> dict[str, Any]:
    """What decides the masks (model and settings; ``parts/run.json``), checked against what the rows
    already in ``out`` were made with: another method, model or setting is refused, naming it (a
    directory written before ``run.json`` existed: its manifest's method and model). Returns it."""
    identity = {"model": model_record, "params": {"source": inputs.source} | {
        k: v for k, v in asdict(config).items() if k not in ("inputs", "preview", *SHARD_FREE_PARAMS)}}
    if not check_run(out, identity, "pseudolabel") and (out / MANIFEST_NAME).is_file():
        previous = read_manifest(out, "zutis.pseudolabels")
        if previous.params.get("method") != config.method or previous.model != model_record:
            raise ZutisError(f"{out}: holds pseudo-labels of another method or model; use a new -o directory")
    return identity


def _prepare_output(output: str | Path | None, shard: tuple[int, int] | None) -> Path:
    """Create the run's directory (``output/shard-i-of-n`` for a shard), checked by :func:`_check_output`."""
    if shard is not None:
        output = shard_output(output, shard, "pseudolabel")  # the shard's directory is the one it writes and locks
    return prepare_output_dir(output, "pseudolabel", resumable=True)


def plan_pseudolabel(config: PseudolabelConfig, output: str | Path | None = None) -> Plan:
    """What ``zutis pseudolabel`` would do (``--dry-run``): the checks of a real run, no weights loaded, nothing written."""
    config.validate()
    predicted = predictions_input(config.inputs)
    if predicted is not None:
        return Plan("pseudolabel", [input_entry(predicted, "zutis.predictions")],
                    output_plan(output, "pseudolabel"), None,
                    {"source": "predictions", "min_score": config.min_score, "top_fraction": config.top_fraction},
                    {}, ["the instances scoring >= --min-score become the pseudo-labels, named by their class"])
    inputs = read_inputs(config.inputs)
    archives = inputs.archives
    every = _unique_images(archives)
    shard = _resolve_shard(config)
    unique = _in_shard(every, shard)
    out, state = _check_output(output, shard)
    device = resolve_device(config.device)
    labeller = config.labeller
    if labeller.needs == "saliency":
        model = labeller.plan_saliency(config)
        record: dict[str, Any] = labeller.describe_saliency(config)
    else:
        from zutiscli.models.backbones import describe_backbone

        name, pretrained = feature_model(config.model, config.pretrained, inputs.model_dir)
        dtype = resolve_precision(config.precision, device)
        with named_by_manifest(config.model, config.pretrained, inputs.model_dir):
            model = weights_plan(name, pretrained) | {"precision": precision_name(dtype)}
        record = describe_backbone(name, pretrained)
    model["device"] = str(device)
    done = 0
    if state == "existing":
        _check_settings(out, config, inputs, record)
        done = len(_done(read_parts(out, "pseudo-label row"), out, unique))
    path, kind = inputs.describe()
    counts = {"classes": len(archives)} if inputs.named else {}
    reads = [input_entry(path, kind, **counts, images=len(every))]
    params = {"source": inputs.source, "method": config.method, "size": config.input_size, "refine": config.refine,
              "components": config.component_mode, "workers": config.workers}
    params |= {name: getattr(config, name) for name in labeller.options}  # what this method reads
    work = {"already_processed": done, "images_to_process": len(unique) - done}
    if shard is not None:
        params["shard"] = f"{shard[0]}/{shard[1]}"
        work = {"images_in_shard": len(unique)} | work
    return Plan("pseudolabel", reads, {"path": str(out), "state": state}, model, params, work)


@holding_locks
def run_pseudolabel(config: PseudolabelConfig, output: str | Path | None = None, *,
                    progress: Callable[[int, int], None] | None = None,
                    log: Callable[[str], None] | None = None,
                    warn: Callable[[str], None] | None = None) -> PseudolabelResult:
    """Run ``zutis pseudolabel``; returns the summary (the directory is ``result.path``).

    Unreadable images are skipped and listed in ``failed.jsonl``; when all of them fail the run
    stops with :class:`ZutisError` and writes no manifest, when some do ``warn`` gets one line
    (:func:`zutiscli.pipeline.failures.check_failures`).
    """
    config.validate()
    say = log or (lambda message: None)
    predicted = predictions_input(config.inputs)
    if predicted is not None:  # re-mining: a model's confident predictions, no discovery to run
        done = pseudolabels_from_predictions(config, predicted, output, log=say)
        return PseudolabelResult(done.path, done.images, done.images, done.masks, done.empty, 0, done.seconds,
                                 done.per_class)
    start = time.perf_counter()
    inputs = read_inputs(config.inputs)
    archives = inputs.archives
    every = _unique_images(archives)
    if inputs.problems and warn is not None:
        entry, reason = inputs.problems[0]
        warn(f"{len(inputs.problems)} listed entr{'y' if len(inputs.problems) == 1 else 'ies'} could not be read "
             f"and {'was' if len(inputs.problems) == 1 else 'were'} skipped (e.g. {entry}: {reason})")
    shard = _resolve_shard(config)
    unique = _in_shard(every, shard)
    _check_output(output, shard)

    device = resolve_device(config.device)
    backbone = None
    saliency = None
    model_record: dict[str, Any]
    labeller = config.labeller
    if labeller.needs == "saliency":
        saliency = labeller.load_saliency(config)
        model_record = labeller.describe_saliency(config)
        patch = 1
    else:
        from zutiscli.models.backbones import describe_backbone, load_dense_backbone

        name, pretrained = feature_model(config.model, config.pretrained, inputs.model_dir)
        dtype = resolve_precision(config.precision, device)
        with named_by_manifest(config.model, config.pretrained, inputs.model_dir):
            backbone = load_dense_backbone(name, pretrained, device=device, dtype=dtype)
        model_record = describe_backbone(name, pretrained)
        patch = backbone.patch_size

    out = _prepare_output(output, shard)
    identity = _check_settings(out, config, inputs, model_record)
    (out / PARTS_DIR).mkdir(exist_ok=True)
    record_run(out, identity)
    done = _done(read_parts(out, "pseudo-label row"), out, unique)
    todo = [p for p in unique if p not in done]
    if len(todo) < len(unique):
        say(f"{len(unique) - len(todo)} image(s) already processed; {len(todo)} to go")

    # A saliency-network method resizes images itself: the loader only decodes (16 px tensors, unused).
    dataset = _Images(todo, config.input_size if labeller.needs == "features" else 16,
                      square=labeller.square_input, patch=patch)
    loader = worker_loader(dataset, 1 if len(todo) > 1 else 0, batch_size=None, shuffle=False, collate_fn=as_is)
    pool = futures.ProcessPoolExecutor(config.workers, initializer=quiet_worker) if config.workers > 0 else None
    sizes: dict[int, dict[str, int]] = {}
    pending: dict[int, dict[str, Any]] = {}
    in_flight: set[futures.Future] = set()
    state = {"next": 0, "part": count_parts(out), "completed": 0}
    buffer: list[dict[str, Any]] = []

    def commit(force: bool = False) -> None:
        """Move finished rows to the buffer in input order; write a part when it is full."""
        while state["next"] in pending:
            buffer.append(pending.pop(state["next"]))
            state["next"] += 1
        if buffer and (force or len(buffer) >= config.chunk_size):
            write_part(out, state["part"], buffer)
            state["part"] += 1
            buffer.clear()

    def record(index: int, masks: list[dict] | None, reason: str | None = None) -> None:
        row: dict[str, Any] = {"path": relative_to(out, todo[index]), "masks": masks or [], **sizes.get(index, {})}
        if reason is not None:
            row["failed"] = reason
        pending[index] = row
        state["completed"] += 1
        if progress is not None:
            progress(state["completed"], len(todo))
        commit()

    def drain(limit: int) -> None:
        while len(in_flight) > limit:
            finished, _ = futures.wait(in_flight, return_when=futures.FIRST_COMPLETED)
            for item in finished:
                in_flight.discard(item)
                record(*item.result())

    def dispatch(index: int, image: np.ndarray, features: dict[str, np.ndarray] | None,
                 saliency_map: np.ndarray | None) -> None:
        job = (index, image, features, saliency_map, config)
        if pool is None:
            record(*_work(job))
        else:
            in_flight.add(pool.submit(_work, job))
            drain(2 * config.workers - 1)

    # Images whose model inputs share a shape go through the backbone together (one forward pass
    # for up to FEATURE_BATCH images); each is then masked on its own, in input order.
    batch: list[tuple[int, np.ndarray, torch.Tensor]] = []

    def flush() -> None:
        if not batch:
            return
        feats = backbone.last_block_features(backbone.normalise(torch.stack([b[2] for b in batch]).to(device)))
        tokens, keys, attention = (t.float().cpu().numpy() for t in (feats.tokens, feats.keys, feats.cls_attention))
        for row, (index, image, _) in enumerate(batch):
            dispatch(index, image, {"tokens": tokens[row], "keys": keys[row], "cls_attention": attention[row]}, None)
        batch.clear()

    try:
        with torch.inference_mode():
            for index, image, payload in loader:
                if image is None:
                    record(index, None, payload)
                    continue
                image = np.asarray(image)
                sizes[index] = {"width": int(image.shape[1]), "height": int(image.shape[0])}
                if saliency is not None:
                    dispatch(index, image, None, saliency(image))
                    continue
                if batch and batch[0][2].shape != payload.shape:
                    flush()
                batch.append((index, image, payload))
                if len(batch) >= FEATURE_BATCH:
                    flush()
            flush()
            drain(0)
            commit(force=True)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return _finish(config, out, inputs, model_record, start, shard, warn)


def _assemble(out: Path, archives: dict[str, list], results: dict[str, dict[str, Any]], method: str,
              preview: int, seed: int) -> tuple[dict[str, dict[str, int]], int]:
    """Write ``pseudolabels.json``, ``empty.jsonl``, ``failed.jsonl`` (and previews) from per-image rows.

    The order is the artefact's canonical one (archives in order, each by rank), whatever order
    the rows were made in; archive images without a row (other shards' images) are left out.
    Returns the per-class counts and the number of masks.
    """
    classes = list(archives)
    builder = CocoBuilder(classes, info={"description": f"zutis pseudo-labels ({method})"})
    empty_rows: list[str] = []
    failed_rows: list[str] = []
    per_class: dict[str, dict[str, int]] = {}
    total_masks = 0
    for class_index, (name, hits) in enumerate(archives.items()):
        stats = {"images": 0, "masks": 0, "empty": 0, "failed": 0}
        for rank, hit in enumerate(hits):
            rel = relative_to(out, hit.path)
            row = results.get(rel)
            if row is None:
                continue
            if row.get("failed"):
                stats["failed"] += 1
                failed_rows.append(json.dumps({"path": rel, "class": name, "reason": row["failed"]}))
                continue
            if not row["masks"]:
                stats["empty"] += 1
                empty_rows.append(json.dumps({"path": rel, "class": name}))
                continue
            image_id = builder.add_image(rel, row["width"], row["height"], archive=name, rank=rank)
            for mask in row["masks"]:
                builder.add_mask(image_id, class_index + 1, mask["rle"], score=mask["score"])
            stats["images"] += 1
            stats["masks"] += len(row["masks"])
        per_class[name] = stats
        total_masks += stats["masks"]
    builder.write(out / PSEUDOLABELS_NAME)
    atomic_write_text(out / EMPTY_NAME, "".join(line + "\n" for line in empty_rows))
    atomic_write_text(out / FAILED_NAME, "".join(line + "\n" for line in failed_rows))
    if preview:
        write_previews(out, builder, classes, preview, seed)
    return per_class, total_masks


def _summary(processed: int, per_class: dict[str, dict[str, int]], masks: int, seconds: float) -> dict[str, Any]:
    return {
        "images": processed,
        "masks": masks,
        "empty": sum(s["empty"] for s in per_class.values()),
        "failed": sum(s["failed"] for s in per_class.values()),
        "per_class": per_class,
        "seconds": round(seconds, 2),
    }


def _finish(config: PseudolabelConfig, out: Path, inputs: PseudolabelInputs, model_record: dict[str, Any],
            start: float, shard: tuple[int, int] | None,
            warn: Callable[[str], None] | None = None) -> PseudolabelResult:
    archives = inputs.archives
    results = read_parts(out, "pseudo-label row")
    per_class, total_masks = _assemble(out, archives, results, config.method, config.preview, config.seed)
    entries = [(hit.path, results[rel]) for hits in archives.values() for hit in hits
               if (rel := relative_to(out, hit.path)) in results]  # as failed.jsonl counts them: once per archive
    failures = [(str(path), row["failed"]) for path, row in entries if row.get("failed")]
    check_failures(failures, len(entries), out / FAILED_NAME, what="archive images" if inputs.named else "images",
                   warn=warn)
    seconds = time.perf_counter() - start
    summary = _summary(len(results), per_class, total_masks, seconds)
    params = {"source": inputs.source}
    params |= {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items() if k != "inputs"}
    params["shard"] = list(shard) if shard is not None else None
    write_manifest(out, "zutis.pseudolabels", model=model_record, inputs=inputs.refs(out), params=params,
                   summary=summary)
    return PseudolabelResult(out, len(results), len(results), total_masks, summary["empty"], summary["failed"],
                             seconds, per_class, shard)


def write_previews(out: Path, builder: CocoBuilder, classes: list[str], count: int, seed: int) -> None:
    """``preview/<class>/<rank>.jpg``: ``count`` random results per class, mask tinted and outlined."""
    from PIL import Image
    from scipy import ndimage

    from zutiscli.artefacts.atomic import atomic_path
    from zutiscli.data.classes import safe_filenames
    from zutiscli.data.images import load_image
    from zutiscli.ops.masks import decode_mask

    names = safe_filenames(classes)
    rng = np.random.default_rng(seed)
    by_image: dict[int, list[dict]] = {}
    for ann in builder.annotations:
        by_image.setdefault(ann["image_id"], []).append(ann)
    colours = np.array([[230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48], [145, 30, 180], [70, 240, 240]])
    for class_index, name in enumerate(classes):
        images = [img for img in builder.images if img["archive"] == name]
        if not images:
            continue
        chosen = rng.choice(len(images), size=min(count, len(images)), replace=False)
        folder = out / "preview" / names[class_index]
        folder.mkdir(parents=True, exist_ok=True)
        for position in sorted(chosen):
            record = images[position]
            pixels = np.asarray(load_image(resolve_relative(out, record["file_name"]))).astype(np.float32)
            for number, ann in enumerate(by_image.get(record["id"], [])):
                mask = decode_mask(ann["segmentation"])
                colour = colours[number % len(colours)]
                pixels[mask] = 0.55 * pixels[mask] + 0.45 * colour
                edge = mask & ~ndimage.binary_erosion(mask, iterations=max(1, round(min(mask.shape) / 150)))
                pixels[edge] = colour
            with atomic_path(folder / f"{record['rank']:04d}.jpg") as tmp:
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(tmp, format="JPEG", quality=90)


# ---- merging the shards of a run ------------------------------------------------------------
@dataclass
class _Shards:
    """The checked shards of one sharded run, in shard order."""

    directories: list[Path]
    manifests: list[Any]
    count: int
    archives_dir: Path

    @property
    def named(self) -> bool:
        """Whether the shards hold pseudo-labels of archives (else of a pile of images)."""
        return self.manifests[0].params.get("source", "archives") == "archives"


def _check_shards(shards: list[str | Path]) -> _Shards:
    """Read the shard directories and check that they are exactly the ``N`` shards of one run.

    Refused (one line naming the directory): a directory given twice, one that is not a finished
    pseudo-label directory or not a shard, shards of different runs (another N, other archives,
    another model or other settings, see :data:`SHARD_FREE_PARAMS`), a shard given twice, and a
    missing shard (named by the directory where it would be). :func:`merge_pseudolabels` also
    refuses shards that together miss an archive image (naming the image).
    """
    directories = distinct_directories(shards, "shard directory", "OUT/shard-*-of-N")
    manifests = [read_manifest(d, "zutis.pseudolabels") for d in directories]
    placed: dict[int, int] = {}
    first = directories[0]
    reference = manifests[0]

    def where(manifest: Any) -> tuple[Path, str]:
        ref = manifest.inputs[0] if manifest.inputs else None
        if ref is None:
            raise ArtefactError(f"{manifest.root}: its manifest names no archives; rerun this shard")
        return resolve_relative(manifest.root, ref.path), ref.fingerprint

    count = None
    for position, (directory, manifest) in enumerate(zip(directories, manifests)):
        shard = manifest.params.get("shard")
        if not (isinstance(shard, list) and len(shard) == 2):
            raise ArtefactError(f"{directory}: is not a shard (its manifest has no params.shard); merge the "
                                f"shard-I-of-N directories of one `zutis pseudolabel --shard I/N` run")
        index, total = int(shard[0]), int(shard[1])
        if count is None:
            count = total
        elif total != count:
            raise ArtefactError(f"{directory}: is shard {index}/{total}, but {first} is one of {count} shards; "
                                f"merge the shards of one run")
        if index in placed:
            raise ArtefactError(f"{directory}: is shard {index}/{total} again (also {directories[placed[index]]}); "
                                f"give each shard once")
        placed[index] = position
        path, print_ = where(manifest)
        if position == 0:
            archives_dir, archives_print = path, print_
        if os.path.realpath(path) != os.path.realpath(archives_dir) or print_ != archives_print:
            raise ArtefactError(f"{directory}: holds pseudo-labels of the archives {path}, but {first} of "
                                f"{archives_dir} (or the archives changed in between); merge the shards of one run")
        if manifest.model != reference.model:
            raise ArtefactError(f"{directory}: was made with another model than {first}; merge the shards of one run")
        for key in sorted(set(manifest.params) | set(reference.params)):
            if key not in SHARD_FREE_PARAMS and manifest.params.get(key) != reference.params.get(key):
                raise ArtefactError(f"{directory}: was made with {key} = {manifest.params.get(key)!r}, but {first} "
                                    f"with {reference.params.get(key)!r}; merge the shards of one run")
    assert count is not None
    missing = [i for i in range(count) if i not in placed]
    if missing:
        expected = first.parent / shard_dir_name((missing[0], count))
        raise ArtefactError(f"{expected}: shard {missing[0]}/{count} is missing; give all {count} shard directories "
                            f"(run `zutis pseudolabel --shard {missing[0]}/{count}` first if it has not run)")
    order = [placed[i] for i in range(count)]
    return _Shards([directories[i] for i in order], [manifests[i] for i in order], count, archives_dir)


def plan_merge_pseudolabels(shards: list[str | Path], output: str | Path | None = None) -> Plan:
    """What ``zutis pseudolabel merge`` would do (``--dry-run``): the checks of a real merge, nothing written."""
    checked = _check_shards(list(shards))
    out, state = check_output_dir(output, "pseudolabel")
    reads = [input_entry(d, f"zutis.pseudolabels, shard {m.params['shard'][0]}/{m.params['shard'][1]}",
                         images=m.summary.get("images"), masks=m.summary.get("masks"))
             for d, m in zip(checked.directories, checked.manifests)]
    if checked.named:
        archives = read_archives(checked.archives_dir)
        reads.append(input_entry(checked.archives_dir, "zutis.archives", classes=len(archives),
                                 images=len(_unique_images(archives))))
    params = {"method": checked.manifests[0].params.get("method"), "shards": checked.count}
    work = {"images": sum(int(m.summary.get("images", 0)) for m in checked.manifests),
            "masks": sum(int(m.summary.get("masks", 0)) for m in checked.manifests)}
    # No model is loaded: the shards' masks are copied, and the shards' model is recorded as theirs.
    return Plan("pseudolabel merge", reads, {"path": str(out), "state": state}, None, params, work)


@holding_locks
def merge_pseudolabels(shards: list[str | Path], output: str | Path | None = None,
                       log: Callable[[str], None] | None = None) -> PseudolabelResult:
    """Join the ``N`` shard directories of one sharded run into one pseudo-label directory.

    Shards of a pile (an index or image files: no archives) hold its images between them; the
    merged pile is their union, in the pile's canonical order (:func:`pile`).

    The result equals what the unsharded run writes: the same images, annotations, ids and order
    in ``pseudolabels.json`` (the canonical order of :mod:`zutiscli.artefacts.pseudolabels`), the
    same ``empty.jsonl``/``failed.jsonl`` and previews, and the same manifest params with
    ``shard`` null (``summary.merged_from`` = N). The archives the shards were made from are read
    again for the class order and ranks, so they must still be where the shards' manifests say.
    Refusals are listed in :func:`_check_shards`. Returns the summary (``result.path``).
    """
    say = log or (lambda message: None)
    start = time.perf_counter()
    checked = _check_shards(list(shards))
    check_output_dir(output, "pseudolabel")  # refused before the shards' rows are read
    found: dict[Path, dict[str, Any]] = {}
    for directory in checked.directories:
        for path, row in read_parts(directory).items():
            found.setdefault(resolve_relative(directory, path), row)
    if checked.named:
        archives = read_archives(checked.archives_dir)
        unique = _unique_images(archives)
        absent = [path for path in unique if path not in found]
        if absent:
            raise ArtefactError(f"{absent[0]}: this archive image is in none of the shards ({len(absent)} such); "
                                f"were the shards run with the archives at another path? rerun them from "
                                f"{checked.archives_dir}")
    else:
        archives = pile(list(found))
        unique = _unique_images(archives)
    out = prepare_output_dir(output, "pseudolabel")
    rows: dict[str, dict[str, Any]] = {}
    for path, row in found.items():
        rel = relative_to(out, path)
        rows[rel] = row | {"path": rel}
    order = {relative_to(out, path): number for number, path in enumerate(unique)}
    (out / PARTS_DIR).mkdir(exist_ok=True)
    write_part(out, 0, sorted(rows.values(), key=lambda row: order.get(row["path"], len(order))))
    settings = checked.directories[0] / PARTS_DIR / RUN_NAME  # the shards' settings (checked alike), if recorded
    if settings.is_file():
        record_run(out, read_json(settings, "the settings of `zutis pseudolabel`'s results"))
    reference = checked.manifests[0]
    params = dict(reference.params) | {"shard": None}
    per_class, masks = _assemble(out, archives, rows, str(params.get("method")), int(params.get("preview") or 0),
                                 int(params.get("seed") or 0))
    seconds = time.perf_counter() - start
    summary = _summary(len(rows), per_class, masks, seconds) | {"merged_from": checked.count}
    inputs = [checked.archives_dir] if checked.named else [
        InputRef(relative_to(out, resolve_relative(reference.root, ref.path)), ref.fingerprint, ref.kind)
        for ref in reference.inputs]
    write_manifest(out, "zutis.pseudolabels", model=reference.model, inputs=inputs, params=params, summary=summary)
    say(f"merged {checked.count} shards: {len(rows)} images")
    return PseudolabelResult(out, len(rows), len(rows), masks, summary["empty"], summary["failed"], seconds,
                             per_class)
