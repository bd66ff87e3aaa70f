"""CUB-200-2011 foreground/background adapter."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from zutiscli.artefacts.groundtruth import PrepareResult, _GtWriter
from zutiscli.artefacts.manifest import relative_to
from zutiscli.data.datasets.common import Log, Progress, _unique_stems
from zutiscli.errors import ArtefactError, UsageError

if TYPE_CHECKING:
    from zutiscli.data.prepare_config import PrepareConfig


def prepare_cub(config: PrepareConfig, root: Path, out: Path | None, progress: Progress | None, log: Log,
                 dry: bool) -> PrepareResult | None:
    """CUB-200-2011 foreground/background (split ``test`` by default: 5,794 images).

    Masks from the separate ``segmentations/`` download (inside the dataset folder or beside it),
    greyscale annotator agreement, binarised at ``threshold`` (0.5 by default: an assumption, the
    papers do not agree on one) into 0 background / 1 bird.
    """
    base = root / "CUB_200_2011" if (root / "CUB_200_2011").is_dir() else root
    for needed in ("images.txt", "train_test_split.txt"):
        if not (base / needed).is_file():
            raise ArtefactError(f"--root {root}: no {needed}; point --root at CUB_200_2011")
    seg_root = next((p for p in (base / "segmentations", base.parent / "segmentations") if p.is_dir()), None)
    if seg_root is None:
        raise ArtefactError(f"--root {root}: no segmentations/ folder (the separate CUB segmentation download) inside "
                            f"or beside {base}")
    split = config.split or "test"
    if split not in ("test", "train", "all"):
        raise UsageError("--split for cub2011 is test, train or all")
    paths = dict(line.split(maxsplit=1) for line in (base / "images.txt").read_text().splitlines() if line.strip())
    training = dict(line.split() for line in (base / "train_test_split.txt").read_text().splitlines() if line.strip())
    chosen = [i for i in paths if split == "all" or (training.get(i) == "1") == (split == "train")]
    if dry:
        return None
    assert out is not None
    writer = _GtWriter(out, "cub2011", ["background", "bird"])
    rel = [Path(paths[i].strip()) for i in chosen]
    stems = _unique_stems([base / "images" / r for r in rel], base / "images")
    level = config.threshold * 255
    for number, (image_id, r, stem) in enumerate(zip(chosen, rel, stems), start=1):
        mask_path = seg_root / r.with_suffix(".png")
        if not mask_path.is_file():
            raise ArtefactError(f"{mask_path}: missing mask")
        with Image.open(mask_path) as mask_image:
            mask = np.asarray(mask_image.convert("L")) > level
        writer.add_image(base / "images" / r, mask.shape[1], mask.shape[0], stem, mask.astype(np.int64),
                         image_id=int(image_id))
        if progress is not None:
            progress(number, len(chosen))
    return writer.finish({"root": relative_to(out, base), "split": split, "threshold": config.threshold})
