"""`zutis synth`: write the shapes world to disk as ordinary image folders with COCO ground truth.

Three kinds of data (see :mod:`zutiscli.shapes.world`):

``pile``
    ``images/*.png`` -- an unlabelled collection to index, like ImageNet or PASS. Its ground truth
    (objects, masks) is kept aside in ``hidden/instances.json`` for measuring retrieval and saliency.
``scenes``
    ``images/*.png`` with ``instances.json`` (COCO instances, RLE masks, one category per shape,
    the colour of each object in its ``colour`` field, each image's label map in its ``semantic``
    field) and ``semantic/*.png`` (label maps: 0 = background, 1..6 = shapes in :data:`SHAPES`
    order) -- the evaluation set, or ground-truth training data for ``zutis train``.
``pairs``
    ``images/*.png`` with ``captions.jsonl`` (``{"file_name", "caption"}`` per line) -- image-caption
    pairs for contrastive training.

Every image is a pure function of (seed, kind, index): two runs with the same arguments write
identical bytes, and different seeds give disjoint-looking data (use one seed per split).
"""

from __future__ import annotations

import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

import numpy as np
from PIL import Image

from zutiscli.artefacts.atomic import atomic_path, atomic_write_json, atomic_write_text
from zutiscli.artefacts.coco import CocoBuilder
from zutiscli.artefacts.groundtruth import CLASSES_FILE
from zutiscli.artefacts.labelmap import write_label_png
from zutiscli.artefacts.lock import holding_locks
from zutiscli.artefacts.manifest import write_manifest
from zutiscli.artefacts.rundir import prepare_output_dir
from zutiscli.data.workers import quiet_worker
from zutiscli.ops.masks import encode_masks
from zutiscli.ops.panoptic import panoptic_to_rgb
from zutiscli.pipeline.synth_config import DEFAULT_SIZES, FORMATS, KINDS, SynthConfig  # noqa: F401 - the stage's options
from zutiscli.shapes.stuff import STUFF
from zutiscli.shapes.world import SHAPES, Sample, ShapeObject, caption_sample, pile_sample, scene_sample

#: Where ``--panoptic`` scenes keep their COCO panoptic PNGs (and, with ``.json``, the annotations).
PANOPTIC_DIR = "panoptic"
#: Panoptic segment id of the first named stuff material (objects are numbered from 1).
STUFF_SEGMENT = 1000


def _sample(config: SynthConfig, index: int) -> Sample:
    if config.kind == "pile":
        return pile_sample(config.seed, index, config.image_size, split=config.split, stuff=config.stuff,
                           varied=config.varied)
    if config.kind == "scenes":
        return scene_sample(config.seed, index, config.image_size, config.min_objects, config.max_objects,
                            stuff=config.stuff, split=config.split, varied=config.varied)
    return caption_sample(config.seed, index, config.image_size, stuff=config.stuff, varied=config.varied)


def semantic_classes(stuff: bool) -> list[str]:
    """The names of a scene's semantic labels, label ``i`` = entry ``i``: background, the shapes, then the stuff."""
    return ["background", *SHAPES, *(STUFF if stuff else ())]


def semantic_map(sample: Sample) -> np.ndarray:
    """``(H, W)`` uint8 labels of a sample: 0 background, 1 + index in :data:`SHAPES` for objects,
    ``1 + len(SHAPES) + index in STUFF`` for named stuff (:func:`semantic_classes`)."""
    labels = np.zeros(sample.image.shape[:2], dtype=np.uint8)
    if sample.stuff is not None:
        labels[sample.stuff > 0] = sample.stuff[sample.stuff > 0] + len(SHAPES)
    for obj, mask in zip(sample.objects, sample.masks):
        labels[mask] = SHAPES.index(obj.shape) + 1
    return labels


def panoptic_map(sample: Sample) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The COCO panoptic ground truth of a sample: ``(H, W)`` int32 segment ids and ``segments_info``.

    Object ``i`` is segment ``i + 1`` (later objects over earlier ones, as in :func:`semantic_map`);
    each named stuff material the objects leave visible is one segment, id ``STUFF_SEGMENT + index
    in STUFF``; 0 is unlabelled. Each segment is ``{"id", "category_id" (its semantic label),
    "iscrowd": 0, "isthing": 1 or 0, "area" (pixels), "bbox" ([x, y, w, h], pixels)}``; objects
    hidden entirely are left out.
    """
    segments = np.zeros(sample.image.shape[:2], dtype=np.int32)
    if sample.stuff is not None:
        segments[sample.stuff > 0] = STUFF_SEGMENT + sample.stuff[sample.stuff > 0].astype(np.int32) - 1
    for number, mask in enumerate(sample.masks, start=1):
        segments[mask] = number
    described = [(number, SHAPES.index(obj.shape) + 1, 1) for number, obj in enumerate(sample.objects, start=1)]
    described += [(STUFF_SEGMENT + k, len(SHAPES) + 1 + k, 0) for k in range(len(STUFF))] if sample.stuff is not None else []
    info = []
    for number, category, isthing in described:
        rows, cols = np.nonzero(segments == number)
        if rows.size == 0:
            continue
        x, y = int(cols.min()), int(rows.min())
        info.append({"id": number, "category_id": category, "iscrowd": 0, "isthing": isthing,
                     "area": int(rows.size), "bbox": [x, y, int(cols.max()) - x + 1, int(rows.max()) - y + 1]})
    return segments, info


def _save_image(array: np.ndarray, path: Path, config: SynthConfig) -> None:
    with atomic_path(path, fsync=False) as tmp:
        options = {"quality": config.jpeg_quality} if config.image_format == "jpg" else {}
        Image.fromarray(array).save(tmp, format=FORMATS[config.image_format], **options)


#: Fewest images written by worker processes: starting them takes about 2 s, ~300 images' work.
_MIN_PARALLEL = 500


class _Written(NamedTuple):
    """What the parent needs of one written sample (no pixels: they cross the process boundary)."""

    height: int
    width: int
    objects: list[ShapeObject]
    rles: list[dict[str, Any]]  # COCO RLE of each object's visible mask, same order
    caption: str | None
    segments: list[dict[str, Any]] | None  # panoptic segments_info, with --panoptic


def _write_sample(config: SynthConfig, images_dir: Path, semantic_dir: Path, digits: int, index: int) -> _Written:
    """Generate sample ``index``, write its image (and label map, for scenes); return its annotations."""
    sample = _sample(config, index)
    name = f"{index:0{digits}d}"
    _save_image(sample.image, images_dir / f"{name}.{config.image_format}", config)
    segments = None
    if config.kind == "scenes" or (config.kind == "pile" and config.stuff):
        write_label_png(semantic_dir / f"{name}.png", semantic_map(sample))
    if config.kind == "scenes":
        if config.panoptic:
            ids, segments = panoptic_map(sample)
            with atomic_path(semantic_dir.parent / PANOPTIC_DIR / f"{name}.png", fsync=False) as tmp:
                Image.fromarray(panoptic_to_rgb(ids)).save(tmp, format="PNG")
    height, width = sample.image.shape[:2]
    return _Written(height, width, sample.objects, encode_masks(sample.masks), sample.caption, segments)


def _written_samples(config: SynthConfig, images_dir: Path, semantic_dir: Path, digits: int) -> Iterator[_Written]:
    """The samples ``0 .. count - 1`` in order, each written to disk first, by ``config.workers`` processes."""
    write = partial(_write_sample, config, images_dir, semantic_dir, digits)
    if config.workers == 0 or config.count < _MIN_PARALLEL:
        yield from map(write, range(config.count))
        return
    # Spawned (not forked) workers: the caller may hold torch's thread pools; this module does not import torch.
    pool = ProcessPoolExecutor(config.workers, mp_context=multiprocessing.get_context("spawn"), initializer=quiet_worker)
    try:
        yield from pool.map(write, range(config.count), chunksize=32)
    finally:  # on an error or Ctrl-C, the images not yet started are not drawn
        pool.shutdown(wait=True, cancel_futures=True)


@holding_locks
def write_synth(
    config: SynthConfig,
    output: str | Path | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Generate ``config.count`` samples into ``output`` (default ``runs/synth/N``); return the directory.

    ``progress(done, total)`` is called after each image; ``log(message)`` gets one line when done.
    The manifest is written last.
    """
    config.validate()
    start = time.perf_counter()
    out = prepare_output_dir(output, "synth")
    images_dir = out / "images"
    images_dir.mkdir(exist_ok=True)
    # a pile's semantic maps are hidden ground truth, beside its instances (`zutis cluster --ground-truth`)
    truth_dir = out / "hidden" if config.kind == "pile" else out
    semantic_maps = config.kind == "scenes" or (config.kind == "pile" and config.stuff)
    if semantic_maps:
        (truth_dir / "semantic").mkdir(parents=True, exist_ok=True)
    panoptic: dict[str, Any] | None = None
    if config.panoptic:
        (out / PANOPTIC_DIR).mkdir(exist_ok=True)
        panoptic = {"info": {"description": "zutis shapes world: scenes (COCO panoptic)", "seed": config.seed},
                    "images": [], "annotations": [],
                    "categories": [{"id": i, "name": name, "supercategory": "shape" if i <= len(SHAPES) else "stuff",
                                    "isthing": int(i <= len(SHAPES))}
                                   for i, name in enumerate(semantic_classes(config.stuff)) if i > 0]}
    coco = CocoBuilder(list(SHAPES), info={"description": f"zutis shapes world: {config.kind}", "seed": config.seed})
    captions: list[str] = []
    digits = max(6, len(str(config.count - 1)))
    objects = 0
    suffix = "." + config.image_format
    for index, written in enumerate(_written_samples(config, images_dir, truth_dir / "semantic", digits)):
        name = f"{index:0{digits}d}"
        file_name = f"{name}{suffix}"
        extra = {"semantic": f"semantic/{name}.png"} if semantic_maps else {}
        image_id = coco.add_image(f"images/{file_name}", written.width, written.height, **extra)
        for obj, rle in zip(written.objects, written.rles):
            coco.add_mask(image_id, obj.shape, rle, colour=obj.colour, colour_shape=f"{obj.colour} {obj.shape}")
        objects += len(written.objects)
        if panoptic is not None:
            panoptic["images"].append({"id": image_id, "file_name": f"images/{file_name}", "width": written.width,
                                       "height": written.height})
            panoptic["annotations"].append({"image_id": image_id, "file_name": f"{name}.png",
                                            "segments_info": written.segments})
        if config.kind == "pairs":
            captions.append(json.dumps({"file_name": f"images/{file_name}", "caption": written.caption}))
        if progress is not None:
            progress(index + 1, config.count)
    if config.kind == "pile":
        coco.write(out / "hidden" / "instances.json")
    else:
        coco.write(out / "instances.json")
    if config.kind == "pairs":
        atomic_write_text(out / "captions.jsonl", "\n".join(captions) + "\n")
    if panoptic is not None:
        atomic_write_json(out / f"{PANOPTIC_DIR}.json", panoptic, indent=None)
    if config.stuff and config.kind != "pairs":  # names the semantic labels beyond the shapes (`zutis evaluate` reads it)
        atomic_write_text(truth_dir / CLASSES_FILE, "\n".join(semantic_classes(True)) + "\n")
    params = asdict(config) | {"size": config.image_size}
    params.pop("workers")
    write_manifest(
        out,
        "zutis.synth",
        params=params,
        summary={
            "images": config.count,
            "objects": objects,
            "classes": list(SHAPES),
            "seconds": round(time.perf_counter() - start, 3),
        },
    )
    if log is not None:
        log(f"wrote {config.count} {config.kind} images with {objects} objects to {out}")
    return out
