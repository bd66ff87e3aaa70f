"""Predictions for ``zutis evaluate``: the reader of what ``zutis predict`` (or another tool) wrote.

Reads (:func:`load_prediction`), ``pred`` being one of
    - a ``zutis predict`` directory (kind ``zutis.predictions``): ``predictions.json`` (COCO results,
      ``category_id`` = position in the predicted class list), ``images.json`` (images + category
      names), ``semantic/STEM.png`` (0 background, i = i-th class, 255 unlabelled) and
      ``panoptic.json`` + ``panoptic/STEM.png``;
    - a COCO results JSON (a list; image and category ids already those of the ground truth);
    - a COCO panoptic JSON (its PNGs in the folder of the same stem beside it, or ``panoptic/``);
    - a directory of label PNGs named by image stem (values = ground-truth class indices, or
      cluster ids with ``match="hungarian"|"majority"``; a ``classes.txt`` inside names the values).

In memory
---------
A predict loop can build a :class:`Prediction` without writing a folder and hand it to
:func:`zutiscli.engine.evaluator.score`: each :class:`PredImage` then carries its own outputs, in
the conventions of a ``zutis predict`` directory (class ``i`` = ``names[i - 1]``):

- ``semantic``: ``(H, W)`` integer numpy array, 0 background, ``i`` the i-th class, negative
  values unlabelled (ignored); the size of the image;
- ``panoptic`` + ``segments``: ``(H, W)`` integer numpy array of segment ids (0 = no segment) and
  the image's COCO ``segments_info`` (``id``, ``category_id``, optionally ``iscrowd``); segment
  categories are those of ``Prediction.panoptic = {"categories": [...]}`` when it is given (e.g.
  a stuff class outside ``names``), else category ``i`` is ``names[i - 1]``;
- ``instances``: the image's COCO result dicts (``category_id``, ``segmentation`` as RLE or
  polygons, ``bbox`` ``[x, y, w, h]`` in pixels, ``score``); their ``image_id`` is the image's
  ``id`` whatever they say.

``Prediction(source, images, names)`` with ``source`` a label for messages (e.g.
``"predictions in memory"``) is then all it takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zutiscli.artefacts.groundtruth import (
    CLASSES_FILE,
    _json_kind,
    _norm,
    _panoptic_folder,
    _resolve,
    _stem,
    read_names_file,
)
from zutiscli.artefacts.manifest import MANIFEST_NAME, read_json, read_manifest
from zutiscli.errors import ArtefactError


@dataclass
class PredImage:
    """One predicted image: its id in the predictions, resolved path, stem, semantic map; and, for
    a prediction held in memory, its panoptic segments and instances (see the module docstring)."""

    id: int
    path: str | None
    stem: str
    semantic: Path | np.ndarray | None = None  # label PNG, or (H, W) int labels in memory (< 0 = unlabelled)
    alt_stem: str | None = None  # predict's sanitised stem, when it differs from the file's
    panoptic: np.ndarray | None = None  # (H, W) int segment ids in memory (0 = none); files: Prediction.panoptic
    segments: list[dict[str, Any]] | None = None  # segments_info of ``panoptic``
    instances: list[dict[str, Any]] | None = None  # COCO results of this image in memory; files: Prediction.results


@dataclass
class Prediction:
    """What the prediction offers."""

    source: Path | str  # where it was read from, or a label for a prediction built in memory
    images: list[PredImage]
    names: list[str] | None  # predicted class names (category id i -> names[i - 1]); None = GT ids
    results: list[dict[str, Any]] | None = None  # COCO results
    results_in_gt_space: bool = False  # a bare results JSON: ids are the ground truth's
    semantic_names: list[str] | None = None  # label value -> name, for a label-PNG directory
    panoptic: dict[str, Any] | None = None
    panoptic_dir: Path | None = None

    @property
    def has_semantic(self) -> bool:
        return any(image.semantic is not None for image in self.images)

    @property
    def has_panoptic(self) -> bool:
        return self.panoptic is not None or any(image.panoptic is not None for image in self.images)

    def all_results(self) -> list[dict[str, Any]] | None:
        """The COCO results of the whole prediction: :attr:`results` as read, else the images'
        in-memory ``instances`` in image order, each with ``image_id`` set to its image's id; None
        when there are neither."""
        if self.results is not None:
            return self.results
        if all(image.instances is None for image in self.images):
            return None
        return [dict(r, image_id=image.id) for image in self.images for r in image.instances or ()]


def load_prediction(pred: str | Path) -> Prediction:
    """Read whatever prediction ``pred`` is (see the module docstring); errors name the file."""
    pred = Path(pred)
    if not pred.exists():
        raise ArtefactError(f"{pred}: no such file or directory (expected a `zutis predict` directory, a COCO "
                            f"results JSON or a directory of label PNGs)")
    if pred.is_file():
        data = read_json(pred, "COCO results or a COCO panoptic JSON")
        kind = _json_kind(data)
        if kind == "results":
            return Prediction(pred, [], None, results=check_results(pred, data), results_in_gt_space=True)
        if kind == "panoptic":
            folder = _panoptic_folder(pred)
            if folder is None:
                raise ArtefactError(f"{pred}: its panoptic PNGs are not in {pred.with_suffix('')}")
            images = [PredImage(int(img["id"]), _resolve(pred.parent, img["file_name"]), _stem(img["file_name"]))
                      for img in data.get("images", [])]
            names = [_norm(c["name"]) for c in data.get("categories", [])]
            return Prediction(pred, images, names, panoptic=data, panoptic_dir=folder)
        raise ArtefactError(f"{pred}: is not a COCO results list or a COCO panoptic JSON")
    if (pred / MANIFEST_NAME).is_file():
        read_manifest(pred, "zutis.predictions")
        return _predict_dir(pred)
    images = [PredImage(i + 1, None, p.stem, semantic=p) for i, p in enumerate(
        sorted(p for p in pred.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith(".")))]
    if not images:
        raise ArtefactError(f"{pred}: has no manifest.json and no label PNGs; expected a `zutis predict` directory")
    names = read_names_file(pred / CLASSES_FILE) if (pred / CLASSES_FILE).is_file() else None
    return Prediction(pred, images, None, semantic_names=names)


#: What ``zutis predict`` writes, for the messages about a damaged directory.
_REMEDY = "the predictions are damaged: predict again into a new -o directory"


def _field_error(file: Path, where: str, field: str, value: Any, expected: str) -> ArtefactError:
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    return ArtefactError(f"{file}: {where}: field {field!r} is {shown}, not {expected}; {_REMEDY}")


def _is_id(value: Any) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_results(file: Path, results: Any) -> list[dict[str, Any]]:
    """COCO results as read from ``file``, each record checked for what scoring reads: ``image_id``,
    ``category_id``, ``score``, ``bbox`` and ``segmentation`` (a valid RLE, or polygons)."""
    from zutiscli.ops.masks import rle_problems

    if not isinstance(results, list):
        raise ArtefactError(f"{file}: is not a list of COCO results")
    masks: list[tuple[int, Any]] = []
    for position, result in enumerate(results):
        where = f"result {position}"
        if not isinstance(result, dict):
            raise ArtefactError(f"{file}: {where} is not an object; {_REMEDY}")
        for field, check, expected in (("image_id", _is_id, "an image id"), ("category_id", _is_id, "a category id"),
                                       ("score", _is_number, "a number")):
            if field in result or field != "score":
                if not check(result.get(field)):
                    raise _field_error(file, where, field, result.get(field), expected)
        bbox = result.get("bbox")
        if bbox is not None and not (isinstance(bbox, list) and len(bbox) == 4 and all(map(_is_number, bbox))):
            raise _field_error(file, where, "bbox", bbox, "[x, y, width, height]")
        segmentation = result.get("segmentation")
        if isinstance(segmentation, list):
            if not all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 and all(map(_is_number, p))
                       for p in segmentation):
                raise _field_error(file, where, "segmentation", segmentation, "an RLE or polygons")
        elif segmentation is not None:
            masks.append((position, segmentation))
        elif bbox is None:
            raise ArtefactError(f"{file}: {where} has neither a segmentation nor a bbox; {_REMEDY}")
    for index, problem in rle_problems([rle for _, rle in masks]).items():
        raise ArtefactError(f"{file}: result {masks[index][0]}: field 'segmentation' {problem}; {_REMEDY}")
    return results


def _predict_dir(pred: Path) -> Prediction:
    file = pred / "images.json"
    sidecar = read_json(file, "the images.json of a `zutis predict` directory", expect=dict)
    records, categories = sidecar.get("images"), sidecar.get("categories")
    if not isinstance(records, list) or not isinstance(categories, list):
        raise ArtefactError(f"{file}: lacks its images or categories list")
    for position, category in enumerate(categories):
        if not isinstance(category, dict) or not isinstance(category.get("id"), int) or \
                not isinstance(category.get("name"), str):
            raise ArtefactError(f"{file}: categories[{position}] is not {{\"id\": integer, \"name\": string}}; "
                                f"{_REMEDY}")
    names = [_norm(c["name"]) for c in sorted(categories, key=lambda c: c["id"])]
    for position, record in enumerate(records):
        where = f"images[{position}]"
        if not isinstance(record, dict):
            raise ArtefactError(f"{file}: {where} is not an object; {_REMEDY}")
        for field, expected in (("id", "an integer"), ("file_name", "a string"), ("semantic", "a string or null"),
                                ("stem", "a string or null")):
            value = record.get(field)
            if not (isinstance(value, int) and not isinstance(value, bool) if field == "id" else
                    isinstance(value, str) or (value is None and expected.endswith("null"))):
                raise _field_error(file, where, field, value, expected)
    images = []
    for record in records:
        semantic = record.get("semantic")
        file_stem = _stem(record["file_name"])
        images.append(PredImage(int(record["id"]), _resolve(pred, record["file_name"]), file_stem,
                                semantic=(pred / semantic) if semantic else None,
                                alt_stem=record.get("stem") if record.get("stem") != file_stem else None))
    results = None
    if (pred / "predictions.json").is_file():
        results = check_results(pred / "predictions.json", read_json(pred / "predictions.json", "COCO results"))
    prediction = Prediction(pred, images, names, results=results)
    if (pred / "panoptic.json").is_file():
        prediction.panoptic = read_json(pred / "panoptic.json", "COCO panoptic predictions")
        prediction.panoptic_dir = pred / "panoptic"
    return prediction
