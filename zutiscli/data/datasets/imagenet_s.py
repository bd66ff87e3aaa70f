"""ImageNet-S adapter (919, 300 and 50 classes)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from zutiscli.artefacts.groundtruth import PrepareResult, _GtWriter
from zutiscli.artefacts.manifest import relative_to
from zutiscli.data.datasets.common import Log, Progress
from zutiscli.errors import ArtefactError

if TYPE_CHECKING:
    from zutiscli.data.prepare_config import PrepareConfig


def _imagenet_s_names(config: PrepareConfig, wnids: list[str]) -> list[str]:
    """Class names: ``--class-names FILE`` (names in class-id order, or ``wnid name, synonyms`` lines
    as ImageNet's ``LOC_synset_mapping.txt``), else the WordNet ids themselves."""
    if not config.class_names:
        return wnids
    lines = [line.strip() for line in Path(config.class_names).read_text(encoding="utf-8").splitlines() if line.strip()]
    first = lines[0].split(maxsplit=1)[0] if lines else ""
    if first.startswith("n") and first[1:].isdigit():
        table = {}
        for line in lines:
            parts = line.split(maxsplit=1)
            table[parts[0]] = parts[1].split(",")[0].strip() if len(parts) > 1 else parts[0]
        missing = [w for w in wnids if w not in table]
        if missing:
            raise ArtefactError(f"--class-names {config.class_names}: no name for {missing[0]} ({len(missing)} missing)")
        return [table[w] for w in wnids]
    if len(lines) != len(wnids):
        raise ArtefactError(f"--class-names {config.class_names}: has {len(lines)} names for {len(wnids)} classes")
    return lines


def prepare_imagenet_s(config: PrepareConfig, root: Path, out: Path | None, progress: Progress | None, log: Log,
                        dry: bool) -> PrepareResult | None:
    """ImageNet-S (919, 300 or 50 classes), validation split by default.

    The official annotations are RGB PNGs whose class id is ``R + 256 G`` (0 other/background,
    1000 ignore), as the LUSSeg/ImageNet-S README states; class id i is the i-th WordNet id in
    sorted order. Output: 16-bit label PNGs (65535 = ignore) when there are more than 254 classes.
    """
    size = config.name.rsplit("s", 1)[-1]
    base = root / f"ImageNetS{size}" if (root / f"ImageNetS{size}").is_dir() else root
    split = config.split or "validation"
    images_dir = base / split
    seg_dir = base / f"{split}-segmentation"
    if not seg_dir.is_dir() or not images_dir.is_dir():
        raise ArtefactError(f"--root {root}: no ImageNetS{size}/{split}/ and {split}-segmentation/ found")
    wnids = sorted(p.name for p in seg_dir.iterdir() if p.is_dir())
    if len(wnids) != int(size):
        raise ArtefactError(f"{seg_dir}: has {len(wnids)} class folders, expected {size}; class ids follow the sorted "
                            f"WordNet ids of all {size} classes")
    names = _imagenet_s_names(config, wnids)
    masks = sorted(p for w in wnids for p in (seg_dir / w).iterdir() if p.suffix.lower() == ".png")
    if dry:
        return None
    assert out is not None
    writer = _GtWriter(out, config.name, ["background", *names])
    for number, mask_path in enumerate(masks, start=1):
        with Image.open(mask_path) as mask_image:
            rgb = np.asarray(mask_image.convert("RGB")).astype(np.int64)
        ids = rgb[..., 0] + 256 * rgb[..., 1]
        ignore = (ids == 1000) | (ids > len(wnids))
        image = None
        for ext in (".JPEG", ".jpg", ".jpeg", ".png"):
            candidate = images_dir / mask_path.parent.name / f"{mask_path.stem}{ext}"
            if candidate.is_file():
                image = candidate
                break
        if image is None:
            raise ArtefactError(f"{mask_path}: its image is not in {images_dir / mask_path.parent.name}")
        height, width = ids.shape
        writer.add_image(image, width, height, mask_path.stem, np.where(ignore, 0, ids), ignore)
        if progress is not None:
            progress(number, len(masks))
    return writer.finish({"root": relative_to(out, base), "split": split, "class_names": config.class_names})
