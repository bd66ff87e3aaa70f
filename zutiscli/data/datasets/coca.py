"""CoCA co-saliency adapter."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from zutiscli.artefacts.groundtruth import PrepareResult, _GtWriter
from zutiscli.artefacts.manifest import relative_to
from zutiscli.data.datasets.common import Log, Progress, _find_dir, _image_size, _unique_stems
from zutiscli.errors import ArtefactError

if TYPE_CHECKING:
    from zutiscli.data.prepare_config import PrepareConfig


def prepare_coca(config: PrepareConfig, root: Path, out: Path | None, progress: Progress | None, log: Log,
                  dry: bool) -> PrepareResult | None:
    """CoCA (co-saliency, 80 classes, 1,295 images): ``image/CLASS/*.jpg`` + ``binary/CLASS/*.png``.

    Semantic only: label = 1 + position of CLASS in the sorted folder names (the order ZUTIS
    uses) where the binary mask exceeds ``threshold``, else 0 (background).
    """
    base = root / "CoCA" if (root / "CoCA").is_dir() and not (root / "image").is_dir() else root
    images_dir = _find_dir(base, ["image", "images", "Image"], "image/ folder")
    masks_dir = _find_dir(base, ["binary", "GroundTruth", "gt"], "binary/ mask folder")
    classes = sorted(p.name for p in images_dir.iterdir() if p.is_dir())
    if not classes:
        raise ArtefactError(f"{images_dir}: holds no class folders")
    images = sorted(p for c in classes for p in (images_dir / c).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if dry:
        return None
    assert out is not None
    writer = _GtWriter(out, "coca", ["background", *classes])
    stems = _unique_stems(images, images_dir)
    level = config.threshold * 255
    for number, (image, stem) in enumerate(zip(images, stems), start=1):
        cls = classes.index(image.parent.name) + 1
        mask_path = masks_dir / image.parent.name / f"{image.stem}.png"
        if not mask_path.is_file():
            raise ArtefactError(f"{mask_path}: missing mask of {image}")
        with Image.open(mask_path) as mask_image:
            mask = np.asarray(mask_image.convert("L")) > level
        width, height = _image_size(image)
        writer.add_image(image, width, height, stem, np.where(mask, cls, 0))
        if progress is not None:
            progress(number, len(images))
    return writer.finish({"root": relative_to(out, base), "threshold": config.threshold})
