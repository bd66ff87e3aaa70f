"""`zutis copypaste`: write a dataset of copy-paste scenes from a pseudo-label directory.

The scenes are exactly those online training draws for the same seed (both use
:func:`zutiscli.data.copypaste.synthesize` with :func:`scene_rng`), so a dataset on disk is a
faithful, inspectable sample of what the model is trained on.

Output (kind ``zutis.dataset``): ``images/*.jpg|png``, ``instances.json`` (COCO, RLE masks,
categories = the pseudo-label classes, ids 1..C), ``semantic/*.png`` (0 background, 1..C classes,
255 ignore), ``manifest.json``.
"""

from __future__ import annotations

import io
import multiprocessing
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from PIL import Image

from zutiscli.artefacts.atomic import atomic_write_bytes
from zutiscli.artefacts.coco import CocoBuilder
from zutiscli.artefacts.labelmap import write_label_png
from zutiscli.artefacts.lock import holding_locks
from zutiscli.artefacts.manifest import read_manifest, write_manifest
from zutiscli.artefacts.rundir import prepare_output_dir
from zutiscli.data.copypaste import CopyPasteConfig, ObjectPool, scene_rng, synthesize
from zutiscli.data.workers import quiet_worker
from zutiscli.ops.masks import encode_masks
from zutiscli.pipeline.copypaste_config import DATASET_DEFAULTS, FORMATS, CopyPasteDatasetConfig
from zutiscli.pipeline.plan import Plan, input_entry, output_plan

_worker_state: dict = {}


#: What copy-paste takes its objects from: pseudo-labels, or clusters (the clusters are the classes).
OBJECT_SOURCES = ("zutis.pseudolabels", "zutis.clusters")


def _objects(source: str | Path, *, check_masks: bool = True):
    """The objects to paste and the source's manifest kind (:func:`zutiscli.data.scenes.object_labels`)."""
    from zutiscli.data.scenes import object_labels

    manifest = read_manifest(source, OBJECT_SOURCES)
    return object_labels(source, manifest, check_masks=check_masks), manifest.kind


def _init_worker(pseudo_dir: str, config: CopyPasteConfig, seed: int, out: str, image_format: str) -> None:
    import torch

    # A scene is many small tensor ops: one thread each is fastest, and several worker
    # processes with several threads each would oversubscribe the cores.
    torch.set_num_threads(1)
    labels, _ = _objects(pseudo_dir, check_masks=False)  # the parent process checked them
    _worker_state.update(pool=ObjectPool(labels), config=config, seed=seed, out=Path(out), image_format=image_format)


def _init_pool_worker(*args) -> None:
    """A worker process of the pool: quiet on Ctrl-C (:func:`quiet_worker`), then as :func:`_init_worker`."""
    quiet_worker()
    _init_worker(*args)


def _make_scene(index: int) -> tuple[int, list[dict], list[int]]:
    state = _worker_state
    scene = synthesize(state["pool"], state["config"], scene_rng(state["seed"], index))
    name = f"{index:06d}"
    kind, options = FORMATS[state["image_format"]]
    buffer = io.BytesIO()
    Image.fromarray(scene.image).save(buffer, format=kind, **options)
    atomic_write_bytes(state["out"] / "images" / f"{name}.{state['image_format']}", buffer.getvalue(), fsync=False)
    write_label_png(state["out"] / "semantic" / f"{name}.png", scene.semantic)
    return index, encode_masks(scene.masks), [int(c) for c in scene.classes]


def _check_options(config: CopyPasteConfig, count: int, image_format: str, workers: int) -> None:
    """Refuse option values that cannot work (:class:`UsageError`), before any input is read."""
    CopyPasteDatasetConfig(count=count, image_format=image_format, workers=workers, scene=config).validate()


def plan_dataset(
    pseudo_dir: str | Path,
    count: int,
    config: CopyPasteConfig = CopyPasteConfig(),
    seed: int = DATASET_DEFAULTS.seed,
    output: str | Path | None = None,
    workers: int = DATASET_DEFAULTS.workers,
    image_format: str = DATASET_DEFAULTS.image_format,
) -> Plan:
    """What ``zutis copypaste`` would do (``--dry-run``): the checks of a real run, nothing written."""
    _check_options(config, count, image_format, workers)
    labels, kind = _objects(pseudo_dir)
    pool = ObjectPool(labels)
    writes = output_plan(output, "copypaste")
    reads = [input_entry(pseudo_dir, kind, classes=len(labels.classes),
                         classes_with_objects=len(pool.nonempty), images=len(pool.image_objects),
                         objects=len(labels.objects))]
    params = {"size": config.size, "max_objects": config.max_objects, "seed": seed, "format": image_format,
              "workers": workers}
    work = {"scenes": count, "files": 2 * count + 2}
    return Plan("copypaste", reads, writes, None, params, work)


@holding_locks
def copypaste(config: CopyPasteDatasetConfig, output: str | Path | None = None, *,
              progress: Callable[[int, int], None] | None = None,
              log: Callable[[str], None] | None = None) -> Path:
    """The ``zutis copypaste`` stage: ``config.count`` scenes from the pseudo-labels of
    ``config.source``, each made as ``config.scene`` says, into ``output`` (default
    ``runs/copypaste/N``); returns the directory. ``progress(done, total)`` counts scenes (the
    options are checked by :func:`write_dataset`, before it reads anything)."""
    out = write_dataset(config.source, config.count, config.scene, config.seed, output, config.workers,
                        config.image_format, progress=progress)
    if log is not None:
        log(f"wrote {config.count} scenes to {out}")
    return out


@holding_locks
def write_dataset(
    pseudo_dir: str | Path,
    count: int,
    config: CopyPasteConfig = CopyPasteConfig(),
    seed: int = DATASET_DEFAULTS.seed,
    output: str | Path | None = None,
    workers: int = DATASET_DEFAULTS.workers,
    image_format: str = DATASET_DEFAULTS.image_format,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Synthesise ``count`` scenes into ``output`` (default ``runs/copypaste/N``); returns the directory."""
    _check_options(config, count, image_format, workers)
    start = time.perf_counter()
    labels, _ = _objects(pseudo_dir)
    ObjectPool(labels)  # refuses an empty pool before anything is written
    out = prepare_output_dir(output, "copypaste")
    (out / "images").mkdir(exist_ok=True)
    (out / "semantic").mkdir(exist_ok=True)
    coco = CocoBuilder(labels.classes, info={"description": "zutis copy-paste scenes", "seed": seed})
    results: dict[int, tuple[list[dict], list[int]]] = {}
    init_args = (str(pseudo_dir), config, seed, str(out), image_format)
    if workers > 0:
        context = multiprocessing.get_context("spawn")
        with context.Pool(workers, initializer=_init_pool_worker, initargs=init_args) as pool:
            for done, (index, rles, classes) in enumerate(pool.imap_unordered(_make_scene, range(count), chunksize=4), 1):
                results[index] = (rles, classes)
                if progress:
                    progress(done, count)
    else:
        import torch

        threads = torch.get_num_threads()
        try:
            _init_worker(*init_args)
            for index in range(count):
                _, rles, classes = _make_scene(index)
                results[index] = (rles, classes)
                if progress:
                    progress(index + 1, count)
        finally:
            torch.set_num_threads(threads)
    instances = 0
    for index in range(count):
        image_id = coco.add_image(f"images/{index:06d}.{image_format}", config.size, config.size,
                                  semantic=f"semantic/{index:06d}.png")
        rles, classes = results[index]
        for rle, cls in zip(rles, classes):
            coco.add_mask(image_id, cls + 1, rle)
        instances += len(rles)
    coco.write(out / "instances.json")
    write_manifest(
        out,
        "zutis.dataset",
        model=labels.manifest.model,
        inputs=[Path(pseudo_dir)],
        params={"count": count, "seed": seed, "image_format": image_format, **asdict(config)},
        summary={"images": count, "instances": instances, "classes": labels.classes,
                 "seconds": round(time.perf_counter() - start, 3)},
    )
    return out
