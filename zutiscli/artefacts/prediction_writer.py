"""The writer of a predictions directory (kind ``zutis.predictions``).

``predictions.json`` (COCO results: image_id, category_id, RLE segmentation, bbox, area, score),
``images.json`` (COCO images + categories; file names relative to the directory; each image's
``stem`` names its files), ``semantic/STEM.png`` (0 = background, i = the i-th class, 255 = ignore;
16-bit with 65535 = ignore when there are 255 classes or more), ``panoptic/STEM.png`` +
``panoptic.json`` (COCO panoptic), ``vis/STEM.jpg`` overlays, ``failed.jsonl`` (the inputs that
could not be read: ``{"path", "reason"}`` a line, paths relative to the directory) and
``manifest.json`` last.

The directory is created with the first image written: no readable image, no artefact (only
``failed.jsonl``, when there are several failures to list; see :func:`zutiscli.pipeline.predict.predict`).

While a run goes, it is resumable: every ``chunk_size`` images, once their label PNGs are on disk,
their records are committed as ``parts/NNNNNN.jsonl`` (:mod:`zutiscli.artefacts.parts`; a row per
image: ``path``, its ``record`` in ``images.json`` without the id, its COCO ``results`` and
panoptic ``segments`` without image ids, and its ``counts`` and ``semantic_classes``), beside
``parts/run.json``, what decides the outputs (model and settings). A rerun that finds the same
``run.json`` skips the committed images (:func:`committed_rows`); the JSON files are assembled at
the end, image ids ``1..N`` in input order as in a run never interrupted, and ``parts/`` removed.
Until the manifest is written the directory is marked unfinished, so other stages refuse it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from zutiscli.artefacts.atomic import atomic_path, atomic_write_json, atomic_write_text, fsync_dir
from zutiscli.artefacts.labelmap import IGNORE_8BIT, IGNORE_16BIT, write_label_map
from zutiscli.artefacts.lock import restart_unfinished
from zutiscli.artefacts.manifest import relative_to, resolve_relative, write_manifest
from zutiscli.artefacts.parts import PARTS_DIR, committed_parts, count_parts, read_parts, record_run, write_part
from zutiscli.artefacts.rundir import prepare_output_dir

KIND = "zutis.predictions"
RESULTS_NAME = "predictions.json"
IMAGES_NAME = "images.json"
PANOPTIC_NAME = "panoptic.json"
FAILED_NAME = "failed.jsonl"
FOLDERS = ("semantic", "panoptic", "vis")
#: What a killed run of ``zutis predict`` may have written (a rerun resumes in such a directory).
OWN_ENTRIES = frozenset({*FOLDERS, PARTS_DIR, FAILED_NAME, RESULTS_NAME, IMAGES_NAME, PANOPTIC_NAME, "shard.json"})


@dataclass
class ImageResult:
    """What was predicted for one image (for the command's summary)."""

    path: Path
    image_id: int
    counts: dict[str, int] = field(default_factory=dict)
    semantic_classes: list[str] = field(default_factory=list)


def committed_rows(out: Path, identity: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The rows an interrupted run into ``out`` committed (input path relative to ``out`` -> row),
    when it was run with ``identity`` (what decides the outputs: model and settings, as JSON);
    none when it committed nothing (whatever its settings: the rerun starts afresh). Raises
    :class:`ArtefactError` naming the first setting that differs
    (:func:`zutiscli.artefacts.parts.committed_parts`), so that a rerun never mixes two settings."""
    return read_parts(out, "predictions row") if committed_parts(out, identity, "predict") else {}


def write_failed_list(out: Path, failures: Sequence[tuple[str | Path, str]]) -> Path:
    """Write ``out/failed.jsonl`` (atomically) from ``(path, reason)`` pairs, paths relative to ``out``."""
    rows = [{"path": relative_to(out, path), "reason": reason} for path, reason in failures]
    return atomic_write_text(out / FAILED_NAME, "".join(json.dumps(row) + "\n" for row in rows))


def coco_results(image_id: int, instances: Any) -> list[dict[str, Any]]:
    """The COCO results of one image's :class:`zutiscli.ops.instances.Instances`: category, RLE
    segmentation, bbox ``[x, y, w, h]`` and area in pixels, score rounded to 6 decimals."""
    from zutiscli.ops.masks import encode_mask, rle_area, rle_bbox

    results = []
    for mask, score, label in zip(instances.masks, instances.scores, instances.labels):
        rle = encode_mask(mask)
        results.append({"image_id": image_id, "category_id": int(label), "segmentation": rle,
                        "bbox": rle_bbox(rle), "area": rle_area(rle), "score": round(float(score), 6)})
    return results


#: Smallest stuff segment of a panoptic prediction, as a fraction of the image's area: detectron2's
#: Panoptic FPN keeps stuff regions of >= 4096 pixels in images of about 800 x 1333.
MIN_STUFF_FRACTION = 4096 / (800 * 1333)


def panoptic_segments(semantic: np.ndarray, instances: Any, classes: int,
                      stuff: frozenset[int] = frozenset()) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """``(segment map (H, W), segments_info)`` of one image: its instances over its semantic map
    (:func:`zutiscli.ops.panoptic.merge_panoptic`), for ``classes`` class names of which the ids
    ``stuff`` (1-based) are stuff. Without stuff every class is a thing and there are no stuff
    segments; with it, each stuff class the instances leave uncovered over at least
    :data:`MIN_STUFF_FRACTION` of the image is one segment."""
    from zutiscli.ops.panoptic import merge_panoptic

    triple = (instances.masks, instances.scores, instances.labels) if instances is not None else None
    if triple is None:
        triple = (np.zeros((0, *semantic.shape), bool), np.zeros(0, np.float32), np.zeros(0, np.int64))
    things = [k for k in range(1, classes + 1) if k not in stuff] if stuff else None
    return merge_panoptic(semantic, triple, thing_ids=things, min_stuff_area=max(1, round(MIN_STUFF_FRACTION *
                                                                                        semantic.size)),
                          ignore_label=IGNORE_16BIT if classes >= IGNORE_8BIT else IGNORE_8BIT)


def categories(names: Sequence[str], stuff: frozenset[int] = frozenset()) -> list[dict[str, Any]]:
    """The COCO categories of class ``names`` (ids ``1..K``), ``isthing`` 0 for the ids in ``stuff``."""
    return [{"id": i, "name": name, "supercategory": "stuff" if i in stuff else "object",
             "isthing": int(i not in stuff)} for i, name in enumerate(names, start=1)]


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


class _Flusher:
    """Flushes written files to disk (fsync) on a background thread, as they come, so that waiting
    for the disk (1-10 ms a file here) overlaps the next images instead of adding up at the end;
    :meth:`wait` returns when every file is on disk and raises the first error."""

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        # the thread ends with the executor, also when a run is abandoned and the writer dropped
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zutis-predict-fsync")
        self.pending: list[Any] = []

    def add(self, path: Path) -> None:
        self.pending.append(self.executor.submit(_fsync_file, path))

    def flush(self) -> None:
        """Return when every file added so far is on disk; raises the first error."""
        pending, self.pending = self.pending, []
        for future in pending:
            future.result()

    def wait(self) -> None:
        try:
            self.flush()
        finally:
            self.executor.shutdown()


class PredictionsWriter:
    """A predict sink (:class:`zutiscli.engine.predict.Sink`) that writes a predictions directory.

    Args:
        output: the directory (``None``: a new ``runs/predict/N``); created with the first image.
        names: the class names, in order (category ids ``1..K``).
        tasks: any of ``semantic``, ``instance``, ``panoptic``.
        vis: write overlays.
        stems: the file stem of each image of the listing, by position in the listing.
        stuff: the ids (1-based) of the classes that are stuff (panoptic stuff segments).
        order: the listing position of each image the engine is given (``item.number`` -> position;
            default: the same), when a resumed run segments only part of the listing.
        committed: rows an interrupted run committed (:func:`committed_rows`), by listing position.
        identity: what decides the outputs (model and settings), written to ``parts/run.json``.
        chunk_size: images between two commits of the rows.
        restart: empty the (existing) directory first: what a killed run left before its first commit.
    """

    def __init__(self, output: str | Path | None, names: Sequence[str], tasks: set[str], vis: bool,
                 stems: Sequence[str], stuff: frozenset[int] = frozenset(), *, order: Sequence[int] | None = None,
                 committed: dict[int, dict[str, Any]] | None = None, identity: dict[str, Any] | None = None,
                 chunk_size: int = 256, restart: bool = False):
        self.output, self.names, self.tasks, self.vis, self.stems = output, list(names), tasks, vis, list(stems)
        self.stuff = frozenset(stuff)
        self.order = list(order) if order is not None else None
        self.identity, self.chunk_size, self.restart = identity, chunk_size, restart
        self.sixteen_bit = len(self.names) >= IGNORE_8BIT  # indices 1..K and 0 stay clear of the 8-bit ignore
        self.path: Path | None = None
        self.rows: dict[int, dict[str, Any]] = dict(committed or {})  # listing position -> row
        self.resumed = len(self.rows)
        self.given: dict[int, Path] = {}  # listing position -> the path as given, for this run's images
        self.uncommitted: list[dict[str, Any]] = []
        self.images: list[dict[str, Any]] = []  # set by finish(), as images.json lists them
        self.summaries: list[ImageResult] = []  # set by finish()
        self.failures: list[tuple[str, str]] = []
        self.numbers: list[int] = []  # set by finish(): the listing position of each image, in id order
        self._flusher: _Flusher | None = None  # the label and panoptic PNGs, fsynced before their rows commit
        self._part = 0

    def _directory(self) -> Path:
        """The run's directory, created and locked, marked unfinished until the manifest is written."""
        out = prepare_output_dir(self.output, "predict", resumable=True, mark=True)
        if self.restart:
            restart_unfinished(out)  # keeps the lock and the mark
            self.restart = False
        return out

    def _open(self) -> Path:
        out = self._directory()
        for folder in FOLDERS:
            if folder == "vis" and self.vis or folder in self.tasks:
                (out / folder).mkdir(exist_ok=True)
        (out / PARTS_DIR).mkdir(exist_ok=True)
        self._part = count_parts(out)
        if self.identity is not None:
            record_run(out, self.identity)
        return out

    def _drop_unlisted_files(self, out: Path) -> None:
        """Remove the label maps, panoptic PNGs and overlays that name no image of this listing: those
        of images an interrupted run segmented that the rerun no longer lists (their rows are dropped),
        and the temporaries of writes a kill cut short."""
        kept = {row["record"]["stem"] for row in self.rows.values()}
        for folder in FOLDERS:
            if (out / folder).is_dir():
                for path in (out / folder).iterdir():
                    if path.is_file() and path.stem not in kept:
                        path.unlink()

    def failed(self, path: Path, reason: str) -> None:
        self.failures.append((str(path), reason))

    def write_failures(self) -> Path:
        """Write ``failed.jsonl`` (the failures so far) and return it; creates the directory, without
        the artefact's folders, when no image was written."""
        out = self.path or self._directory()
        self.output = out  # a later open() uses this directory, not a new numbered one
        return write_failed_list(out, self.failures)

    def open(self) -> Path:
        """Create the directory now if not yet (a shard whose slice holds no image still writes its artefact)."""
        if self.path is None:
            self.path = self._open()
            self._flusher = _Flusher()
        return self.path

    def add(self, item: Any) -> None:
        """Write one :class:`zutiscli.engine.predict.Segmented` image's files; keep its row, and
        commit the rows every ``chunk_size`` images."""
        out = self.open()
        height, width = item.image.shape[:2]
        position = self.order[item.number] if self.order is not None else item.number
        stem = self.stems[position]
        record: dict[str, Any] = {"file_name": relative_to(out, item.path), "width": width, "height": height,
                                  "stem": stem}
        row: dict[str, Any] = {"path": record["file_name"], "record": record, "counts": {}, "semantic_classes": []}
        semantic, instances = item.semantic, item.instances
        if semantic is not None:
            present = np.flatnonzero(np.bincount(semantic.ravel())) if semantic.size else []  # as np.unique, 5x faster
            row["semantic_classes"] = [self.names[v - 1] for v in present if v > 0]
        if "semantic" in self.tasks:
            self._flusher.add(write_label_map(out / "semantic" / f"{stem}.png", semantic, sixteen_bit=self.sixteen_bit,
                                              fsync=False))
            record["semantic"] = f"semantic/{stem}.png"
        if instances is not None and "instance" in self.tasks:
            results = coco_results(0, instances)
            for result in results:
                del result["image_id"]  # given at the end, in input order
                name = self.names[result["category_id"] - 1]
                row["counts"][name] = row["counts"].get(name, 0) + 1
            row["results"] = results
        if "panoptic" in self.tasks:
            row["segments"] = self._panoptic(out, stem, semantic, instances)
        if self.vis:
            self._overlay(out, stem, item.image, semantic, instances)
        self.rows[position] = row
        self.given[position] = Path(item.path)
        self.uncommitted.append(row)
        if len(self.uncommitted) >= self.chunk_size:
            self.commit()

    def commit(self) -> None:
        """Commit the rows not yet committed (``parts/NNNNNN.jsonl``), once their PNGs are on disk."""
        if not self.uncommitted or self.path is None:
            return
        self._flusher.flush()
        for folder in ("semantic", "panoptic"):
            if (self.path / folder).is_dir():
                fsync_dir(self.path / folder)
        write_part(self.path, self._part, self.uncommitted)
        self._part += 1
        self.uncommitted = []

    def _panoptic(self, out: Path, stem: str, semantic: np.ndarray, instances: Any) -> list[dict[str, Any]]:
        from PIL import Image

        from zutiscli.ops.panoptic import panoptic_to_rgb

        segment_map, segments = panoptic_segments(semantic, instances, len(self.names), self.stuff)
        with atomic_path(out / "panoptic" / f"{stem}.png", fsync=False) as tmp:
            Image.fromarray(panoptic_to_rgb(segment_map)).save(tmp, format="PNG")
        self._flusher.add(out / "panoptic" / f"{stem}.png")
        return segments

    def _overlay(self, out: Path, stem: str, image: np.ndarray, semantic: np.ndarray | None, instances: Any) -> None:
        from PIL import Image

        from zutiscli.ops.overlay import render_overlay

        shown = instances is not None and "instance" in self.tasks
        overlay = render_overlay(image, self.names, semantic, instances.masks if shown else None,
                                 instances.labels if instances is not None else None,
                                 instances.scores if instances is not None else None)
        with atomic_path(out / "vis" / f"{stem}.jpg", fsync=False) as tmp:
            Image.fromarray(overlay).save(tmp, format="JPEG", quality=90)

    def finish(self, *, model: dict[str, Any], inputs: list[Any], params: dict[str, Any],
               summary: dict[str, Any]) -> Path:
        """Write the JSON files and, last, the manifest; returns the directory (which must exist).
        Images get ids ``1..N`` in listing order, the committed rows of an earlier run among them."""
        import shutil

        assert self.path is not None, "no image was written"
        out = self.path
        assert self._flusher is not None
        self._flusher.wait()  # the label and panoptic PNGs on disk before the manifest says the directory is done
        for folder in ("semantic", "panoptic"):
            if (out / folder).is_dir():
                fsync_dir(out / folder)
        if self.resumed:
            self._drop_unlisted_files(out)
        results: list[dict[str, Any]] = []
        panoptic: list[dict[str, Any]] = []
        self.images, self.summaries, self.numbers = [], [], sorted(self.rows)
        for image_id, position in enumerate(self.numbers, start=1):
            row = self.rows[position]
            self.images.append({"id": image_id, **row["record"]})
            results.extend({"image_id": image_id, **result} for result in row.get("results", ()))
            if "panoptic" in self.tasks:
                panoptic.append({"image_id": image_id, "file_name": f"{row['record']['stem']}.png",
                                 "segments_info": row.get("segments", [])})
            path = self.given.get(position) or resolve_relative(out, row["path"])
            self.summaries.append(ImageResult(path, image_id, dict(row["counts"]),
                                              list(row["semantic_classes"])))
        listed = categories(self.names, self.stuff)
        self.write_failures()
        atomic_write_text(out / RESULTS_NAME, json.dumps(results) + "\n")
        atomic_write_json(out / IMAGES_NAME, {"images": self.images, "categories": listed}, indent=None)
        if "panoptic" in self.tasks:
            atomic_write_json(out / PANOPTIC_NAME, {"images": self.images, "annotations": panoptic,
                                                    "categories": listed}, indent=None)
        resumed = {"resumed": self.resumed} if self.resumed else {}
        write_manifest(out, KIND, model=model, inputs=inputs, params=params,
                       summary={"images": len(self.images), "failed": len(self.failures),
                                "instances": len(results)} | resumed | summary)
        shutil.rmtree(out / PARTS_DIR, ignore_errors=True)  # the JSON files hold every row now
        return out


class PredictionsInMemory:
    """A predict sink that keeps what :class:`PredictionsWriter` would write, in memory, as a
    :class:`zutiscli.artefacts.predictions.Prediction` for :func:`zutiscli.engine.evaluator.score`.

    The same records as a predictions directory: image ids ``1..N`` in input order, COCO results
    with RLE masks and rounded scores, semantic maps, panoptic segments. ``stems`` as for the writer.
    """

    def __init__(self, names: Sequence[str], tasks: set[str], stems: Sequence[str],
                 source: str = "predictions in memory", stuff: frozenset[int] = frozenset()):
        self.names, self.tasks, self.stems, self.source = list(names), tasks, list(stems), source
        self.stuff = frozenset(stuff)
        self.images: list[Any] = []
        self.failures: list[tuple[str, str]] = []

    def failed(self, path: Path, reason: str) -> None:
        self.failures.append((str(path), reason))

    def add(self, item: Any) -> None:
        from zutiscli.artefacts.predictions import PredImage

        image_id = len(self.images) + 1
        stem = self.stems[item.number]
        semantic, instances = item.semantic, item.instances
        results = coco_results(image_id, instances) if instances is not None and "instance" in self.tasks else None
        panoptic = segments = None
        if "panoptic" in self.tasks:
            panoptic, segments = panoptic_segments(semantic, instances, len(self.names), self.stuff)
        file_stem = Path(item.path).stem if item.path is not None else stem
        self.images.append(PredImage(image_id, str(Path(item.path).resolve()) if item.path is not None else None,
                                     file_stem, semantic=semantic if "semantic" in self.tasks else None,
                                     alt_stem=stem if stem != file_stem else None, panoptic=panoptic,
                                     segments=segments, instances=results))

    def prediction(self) -> Any:
        """The :class:`zutiscli.artefacts.predictions.Prediction` of the images added so far."""
        from zutiscli.artefacts.groundtruth import _norm
        from zutiscli.artefacts.predictions import Prediction

        return Prediction(self.source, self.images, [_norm(name) for name in self.names])
