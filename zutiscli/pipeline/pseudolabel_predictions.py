"""``zutis pseudolabel PRED``: a model's confident predictions as the next round's pseudo-labels.

MaskDistill re-mines its masks (predictions scoring >= 0.9 become the pseudo-labels of the next
round) and U2Seg self-trains (>= 0.7). Given one ``zutis predict`` directory (of a ZUTIS model over
the training images, say), this keeps its instances that score at least ``min_score`` (and, with
``top_fraction``, only that best-scoring share of them), each named by its predicted class, and
writes them as a pseudo-label directory that ``zutis train`` reads like any other.

When the predicting model was trained on clusters, its class bank (one embedding per cluster)
goes along as ``class_bank.npy`` (rows in category order) with the model that embeds, so the next
round trains on the same clusters with the same classifier
(:func:`zutiscli.artefacts.class_bank.source_class_bank`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from zutiscli.artefacts.class_bank import CLASS_BANK_NAME
from zutiscli.artefacts.manifest import MANIFEST_NAME, read_manifest, relative_to
from zutiscli.errors import ArtefactError, ZutisError

def predictions_input(inputs: tuple[str, ...]) -> Path | None:
    """The ``zutis predict`` directory among ``inputs`` when it is the only input, else None."""
    if len(inputs) != 1 or not (Path(inputs[0]) / MANIFEST_NAME).is_file():
        return None
    directory = Path(inputs[0])
    try:  # a glance at the kind; any other artefact is read (and refused) as the other sources are
        kind = json.loads((directory / MANIFEST_NAME).read_text(encoding="utf-8")).get("kind")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return None
    return directory if kind == "zutis.predictions" else None


def kept_scores(scores: np.ndarray, min_score: float, top_fraction: float | None) -> np.ndarray:
    """``(N,)`` bool: the instances kept, those scoring ``>= min_score`` and, given ``top_fraction``,
    among the ``ceil(top_fraction x N)`` best-scoring of all N (ties broken by position)."""
    keep = scores >= min_score
    if top_fraction is not None and scores.size:
        count = int(np.ceil(top_fraction * scores.size))
        best = np.zeros(scores.size, dtype=bool)
        best[np.argsort(-scores, kind="stable")[:count]] = True
        keep &= best
    return keep


def _class_bank(record: dict[str, Any], names: list[str], where: Path) -> np.ndarray | None:
    """Rows of the predicting checkpoint's class bank for ``names`` (None: it has none)."""
    from zutiscli.artefacts.checkpoint import load_checkpoint

    checkpoint = record.get("checkpoint")
    if not checkpoint:
        return None
    if not Path(checkpoint).is_file():
        raise ArtefactError(f"{where}: its model {checkpoint} is gone; the class bank of a model trained on clusters "
                            f"is read from it (predict again, or put the run back)")
    data = load_checkpoint(checkpoint, mmap=True)
    bank = (data.get("config") or {}).get("class_bank") or []
    if not bank:
        return None
    rows = data["model"]["class_bank"].float().numpy()
    missing = [name for name in names if name not in bank]
    if missing:
        raise ArtefactError(f"{where}: classes {', '.join(missing[:4])} are not among the clusters of {checkpoint}; "
                            f"predict the model's own clusters (no --classes)")
    return np.stack([rows[bank.index(name)] for name in names]).astype(np.float32)


@dataclass
class Remined:
    """What :func:`pseudolabels_from_predictions` wrote: the directory, the predicted images, the
    masks kept, the images left with none, seconds, and per class its images and masks."""

    path: Path
    images: int
    masks: int
    empty: int
    seconds: float
    per_class: dict[str, dict[str, int]]


def pseudolabels_from_predictions(config: Any, directory: Path, output: str | Path | None,
                                  log: Callable[[str], None] | None = None) -> Remined:
    """Write the confident instances of the predictions ``directory`` as pseudo-labels (see the
    module docstring); ``config`` has ``min_score`` and ``top_fraction``."""
    from zutiscli.artefacts.atomic import atomic_write_npy
    from zutiscli.artefacts.coco import CocoBuilder
    from zutiscli.artefacts.manifest import write_manifest
    from zutiscli.artefacts.predictions import load_prediction
    from zutiscli.artefacts.pseudolabels import PSEUDOLABELS_NAME
    from zutiscli.artefacts.rundir import check_output_dir, prepare_output_dir

    say = log or (lambda message: None)
    start = time.perf_counter()
    manifest = read_manifest(directory, "zutis.predictions")
    prediction = load_prediction(directory)
    names = list(prediction.names or [])
    results = list(prediction.results or [])
    if not names or not results:
        raise ZutisError(f"{directory}: holds no predicted instances to re-mine (predict with --task all or instance)")
    check_output_dir(output, "pseudolabel")
    bank = _class_bank(dict(manifest.model or {}), names, directory)
    scores = np.array([float(r.get("score", 1.0)) for r in results])
    keep = kept_scores(scores, config.min_score, config.top_fraction)
    if not keep.any():
        raise ZutisError(f"{directory}: no instance scores >= {config.min_score} (the best scores "
                         f"{scores.max():.3f}); lower --min-score, or keep the best with --min-score 0 --top-fraction F")
    out = prepare_output_dir(output, "pseudolabel")
    images = {image.id: image for image in prediction.images}
    builder = CocoBuilder(names, info={"description": f"zutis pseudo-labels re-mined from {directory}"})
    image_ids: dict[int, int] = {}
    per_class = {name: {"images": 0, "masks": 0, "empty": 0, "failed": 0} for name in names}
    seen: dict[str, set[int]] = {name: set() for name in names}
    for result in sorted((r for r, k in zip(results, keep) if k), key=lambda r: (int(r["image_id"]), -r["score"])):
        image = images[int(result["image_id"])]
        height, width = result["segmentation"]["size"]
        if image.id not in image_ids:
            image_ids[image.id] = builder.add_image(relative_to(out, image.path), int(width), int(height))
        name = names[int(result["category_id"]) - 1]
        builder.add_mask(image_ids[image.id], int(result["category_id"]), result["segmentation"],
                         score=float(result["score"]))
        per_class[name]["masks"] += 1
        seen[name].add(image.id)
    for name in names:
        per_class[name]["images"] = len(seen[name])
    builder.write(out / PSEUDOLABELS_NAME)
    model = dict((manifest.model or {}).get("backbone") or {})
    if bank is not None:
        atomic_write_npy(out / CLASS_BANK_NAME, bank)
    seconds = time.perf_counter() - start
    masks = int(keep.sum())
    say(f"{masks} of {len(results)} instances kept (score >= {config.min_score}"
        + (f", best {config.top_fraction:.0%}" if config.top_fraction is not None else "") + f") in {len(image_ids)} "
        f"of {len(images)} images" + ("; the model's class bank goes along" if bank is not None else ""))
    summary = {"images": len(image_ids), "masks": masks, "empty": len(images) - len(image_ids), "failed": 0,
               "per_class": per_class, "seconds": round(seconds, 2), "predicted_instances": len(results),
               "lowest_kept_score": round(float(scores[keep].min()), 4), "class_bank": bank is not None}
    params = {"source": "predictions", "min_score": config.min_score, "top_fraction": config.top_fraction}
    write_manifest(out, "zutis.pseudolabels", model=model, inputs=[directory], params=params, summary=summary)
    return Remined(out, len(images), masks, summary["empty"], seconds, per_class)
