"""Scene directories read back: ``zutis copypaste`` (kind ``zutis.dataset``) and ``zutis synth scenes``,
and a ``zutis predict`` directory read as scenes (ReCo+: a model trained on another's predictions).

The first two hold ``images/``, ``semantic/*.png`` (0 background, 1..C classes, 255 ignore) and
``instances.json`` (COCO, RLE masks, categories 1..C), each image naming its semantic map in a
``semantic`` field. ``zutis copypaste`` writes them (:func:`zutiscli.pipeline.copypaste.write_dataset`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zutiscli.artefacts.coco import load_coco
from zutiscli.errors import ArtefactError

INSTANCES = "instances.json"


def load_scenes(directory: str | Path) -> dict[str, Any]:
    """The COCO file of a scene directory, checked for training.

    Raises :class:`ArtefactError` naming the file when it lists no image or an image names no
    semantic map (its ``semantic`` field).
    """
    directory = Path(directory)
    path = directory / INSTANCES
    coco = load_coco(path)
    if not coco["images"]:
        raise ArtefactError(f"{directory}: the dataset holds no images")
    unnamed = next((image for image in coco["images"] if "semantic" not in image), None)
    if unnamed is not None:
        raise ArtefactError(f"{path}: image {unnamed['file_name']} names no semantic map; "
                            "write the scenes again with this version of zutis")
    return coco


def predicted_scenes(directory: str | Path) -> dict[str, Any]:
    """A ``zutis predict`` directory as the COCO file of scenes: its images (absolute paths) with
    their predicted semantic maps, its predicted instances as annotations, its classes as categories.

    Raises :class:`ArtefactError` naming the directory when it holds no semantic maps (predict
    with ``--task semantic`` or ``all``) or no image.
    """
    from zutiscli.artefacts.predictions import load_prediction

    prediction = load_prediction(directory)
    if not prediction.images:
        raise ArtefactError(f"{directory}: the predictions hold no images")
    if not all(isinstance(image.semantic, Path) for image in prediction.images):
        raise ArtefactError(f"{directory}: holds no semantic maps to train on; predict with --task all (or semantic)")
    images = [{"id": image.id, "file_name": str(image.path), "semantic": str(Path(image.semantic).resolve())}
              for image in prediction.images]
    annotations = [dict(result, id=number, iscrowd=0) for number, result in enumerate(prediction.results or [], 1)]
    categories = [{"id": i, "name": name} for i, name in enumerate(prediction.names or [], start=1)]
    return {"images": images, "annotations": annotations, "categories": categories}
