"""The options of ``zutis copypaste`` about the dataset it writes, importable without torch.

The scenes' own options are :class:`zutiscli.data.copypaste_config.CopyPasteConfig` (shared with
online training); these are the ones of the written dataset: how many scenes, from which seed, in
which image format, by how many processes. :mod:`zutiscli.pipeline.copypaste` writes the dataset.
"""

from __future__ import annotations

from dataclasses import dataclass

from zutiscli.config_fields import check_choices, not_an_option, option
from zutiscli.data.copypaste_config import CopyPasteConfig
from zutiscli.errors import UsageError

#: Image formats of the written scenes: PIL format name and save options.
FORMATS = {"jpg": ("JPEG", {"quality": 95}), "png": ("PNG", {})}


@dataclass(frozen=True)
class CopyPasteDatasetConfig:
    """How ``zutis copypaste`` writes its scenes: how many, from which seed, in which format, by how
    many processes (the arguments of :func:`zutiscli.pipeline.copypaste.write_dataset` after the
    scene config), from which pseudo-labels (``source``) and how each scene is made (``scene``)."""

    count: int = option(1000, "Number of scenes.", flag="--n", short="-n")
    seed: int = option(0, "Seed; same seed -> same bytes (and the same scenes as online training).")
    image_format: str = option("jpg", "Scene image format.", flag="--format", choices=tuple(FORMATS))
    workers: int = option(0, "Worker processes (0 = in this process).")
    source: str = not_an_option("", "the command's PSEUDOLABELS argument: the pseudo-label directory")
    scene: CopyPasteConfig = not_an_option(default_factory=CopyPasteConfig,
                                           why="how each scene is made: the command's scene options")

    def validate(self) -> None:
        """Refuse values that cannot work (:class:`UsageError`), the scene's options included,
        before any input is read."""
        check_choices(self)
        if self.count < 1:
            raise UsageError(f"--n must be at least 1 (got {self.count})")
        if self.workers < 0:
            raise UsageError(f"--workers must be >= 0 (got {self.workers}); 0 writes the scenes in this process")
        self.scene.validate()


#: The dataset defaults, also those of :func:`zutiscli.pipeline.copypaste.write_dataset`.
DATASET_DEFAULTS = CopyPasteDatasetConfig()
