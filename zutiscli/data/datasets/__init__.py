"""Benchmark adapters of ``zutis evaluate prepare NAME --root DIR``: one module per dataset family.

Each adapter turns the user's copy of a benchmark into the ground truth ``zutis evaluate`` reads
(:class:`zutiscli.artefacts.groundtruth._GtWriter`: ``gt.json``, ``classes.txt``, ``semantic/``,
``instances.json``). :data:`PREPARERS` maps each dataset name to its preparer (the
:data:`~zutiscli.data.datasets.common.Preparer` signature); a new benchmark is one module plus
one entry there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from zutiscli.artefacts.groundtruth import PrepareResult
from zutiscli.artefacts.rundir import check_output_dir, prepare_output_dir
from zutiscli.data.datasets import coca, coco, cub, imagenet_s, voc
from zutiscli.data.datasets.common import Log, Preparer, Progress
from zutiscli.errors import ArtefactError, UsageError

__all__ = ["DATASETS", "PREPARERS", "PrepareConfig", "PrepareResult", "prepare_dataset"]

#: dataset name -> preparer, in the order the command lists them
PREPARERS: dict[str, Preparer] = {
    "coco20k": coco.prepare_coco20k,
    "coco-val2017": coco.prepare_coco_val2017,
    "voc2012": voc.prepare_voc,
    "coca": coca.prepare_coca,
    "imagenet-s919": imagenet_s.prepare_imagenet_s,
    "imagenet-s300": imagenet_s.prepare_imagenet_s,
    "imagenet-s50": imagenet_s.prepare_imagenet_s,
    "cub2011": cub.prepare_cub,
}
DATASETS = tuple(PREPARERS)


@dataclass
class PrepareConfig:
    """Options of ``zutis evaluate prepare`` (``threshold`` in [0, 1] of the mask's grey range)."""

    name: str
    root: str
    file_list: str | None = None
    split: str | None = None
    class_names: str | None = None
    threshold: float = 0.5

    def validate(self) -> None:
        if self.name not in DATASETS:
            raise UsageError(f"unknown dataset {self.name!r}; choose one of {', '.join(DATASETS)}")
        if not Path(self.root).is_dir():
            raise ArtefactError(f"--root {self.root}: no such directory")
        if not 0 < self.threshold < 1:
            raise UsageError("--threshold must lie in (0, 1)")


def prepare_dataset(config: PrepareConfig, output: str | Path | None = None, progress: Progress | None = None,
                    log: Log | None = None) -> PrepareResult:
    """Turn the user's copy of a benchmark into zutis ground truth (see each ``prepare_*``)."""
    config.validate()
    say = log or (lambda message: None)
    root = Path(config.root)
    preparer = PREPARERS[config.name]
    check_output_dir(output, "prepare")
    checked = preparer(config, root, None, progress, say, dry=True)  # validate the layout before writing
    del checked
    out = prepare_output_dir(output, "prepare")
    return preparer(config, root, out, progress, say, dry=False)
