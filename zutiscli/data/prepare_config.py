"""The options of ``zutis evaluate prepare`` (:class:`PrepareConfig`), importable without numpy or torch.

The command line builds ``zutis evaluate prepare --help`` from these fields; the benchmark adapters
of :mod:`zutiscli.data.datasets` write the ground truth (one preparer per name of :data:`DATASETS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from zutiscli.config_fields import not_an_option, option
from zutiscli.errors import ArtefactError, UsageError

#: the benchmarks ``zutis evaluate prepare`` knows, in the order the command lists them
#: (:data:`zutiscli.data.datasets.PREPARERS` has a preparer for each)
DATASETS = ("coco20k", "coco-val2017", "voc2012", "coca", "imagenet-s919", "imagenet-s300", "imagenet-s50", "cub2011")


@dataclass
class PrepareConfig:
    """Options of ``zutis evaluate prepare`` (``threshold`` in [0, 1] of the mask's grey range)."""

    name: str = not_an_option(why="the command's NAME argument")
    root: str = option(help="Your local copy of the dataset.", kind="path", show_default=False)
    file_list: str | None = option(None, "coco20k: LOST's coco_20k_filenames.txt (required).", kind="path",
                                   show_default=False)
    split: str | None = option(None, "Split (default: val2017 / train2014 / val / validation / test).",
                               show_default=False)
    class_names: str | None = option(
        None, "imagenet-s: names in class-id order, or LOC_synset_mapping.txt (default: WordNet ids).", kind="path",
        show_default=False)
    threshold: float = option(0.5, "coca, cub2011: binarise masks above this fraction of white.")

    def validate(self) -> None:
        if self.name not in DATASETS:
            raise UsageError(f"unknown dataset {self.name!r}; choose one of {', '.join(DATASETS)}")
        if not Path(self.root).is_dir():
            raise ArtefactError(f"--root {self.root}: no such directory")
        if not 0 < self.threshold < 1:
            raise UsageError("--threshold must lie in (0, 1)")
