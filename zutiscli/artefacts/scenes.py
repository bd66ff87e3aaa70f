"""Scene directories read back: ``zutis copypaste`` (kind ``zutis.dataset``) and ``zutis synth scenes``.

Both hold ``images/``, ``semantic/*.png`` (0 background, 1..C classes, 255 ignore) and
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
