"""Benchmark adapters of ``zutis evaluate prepare NAME --root DIR``: one module per dataset family.

Each adapter turns the user's copy of a benchmark into the ground truth ``zutis evaluate`` reads
(:class:`zutiscli.artefacts.groundtruth._GtWriter`: ``gt.json``, ``classes.txt``, ``semantic/``,
``instances.json``). :data:`PREPARERS` maps each dataset name to its preparer (the
:data:`~zutiscli.data.datasets.common.Preparer` signature); a new benchmark is one module plus
one entry there, its name added to :data:`zutiscli.data.prepare_config.DATASETS` (the options of
the command, :class:`PrepareConfig`, live there, without numpy).
"""

from __future__ import annotations

from pathlib import Path

from zutiscli.artefacts.groundtruth import PrepareResult
from zutiscli.artefacts.lock import holding_locks
from zutiscli.artefacts.rundir import check_output_dir, prepare_output_dir
from zutiscli.data.datasets import coca, coco, cub, imagenet_s, voc
from zutiscli.data.datasets.common import Log, Preparer, Progress
from zutiscli.data.prepare_config import DATASETS, PrepareConfig

__all__ = ["DATASETS", "PREPARERS", "PrepareConfig", "PrepareResult", "prepare_dataset"]

#: dataset name -> preparer, in the order of DATASETS (a test holds the names equal)
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


@holding_locks
def prepare_dataset(config: PrepareConfig, output: str | Path | None = None, *, progress: Progress | None = None,
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
