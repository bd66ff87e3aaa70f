"""The options of ``zutis synth pile|scenes|pairs`` (:class:`SynthConfig`), importable without numpy.

The command line builds each kind's ``--help`` from these fields and :func:`command_defaults`;
:mod:`zutiscli.pipeline.synth` writes the data.
"""

from __future__ import annotations

from dataclasses import dataclass

from zutiscli.config_fields import check_choices, not_an_option, option
from zutiscli.errors import UsageError

KINDS = ("pile", "scenes", "pairs")
#: What ``--split`` takes (the shapes world's :data:`zutiscli.shapes.world.SPLITS`, without importing numpy).
SPLITS = ("train", "shift")
FORMATS = {"png": "PNG", "jpg": "JPEG"}
DEFAULT_SIZES = {"pile": 64, "scenes": 128, "pairs": 64}

#: Images ``zutis synth KIND`` writes without ``-n``.
DEFAULT_COUNTS = {"pile": 1000, "scenes": 100, "pairs": 1000}

#: Seeds ``zutis synth KIND`` uses without ``--seed``: one per kind, so that the default pile,
#: scenes and pairs are different draws of the world. (:class:`SynthConfig` and the Python API
#: default to seed 0 for every kind.)
DEFAULT_SEEDS = {"pile": 0, "scenes": 1, "pairs": 2}


def command_defaults(kind: str) -> dict[str, int]:
    """The defaults of ``zutis synth KIND`` that differ by kind: ``count``, ``seed`` and ``size``."""
    return {"count": DEFAULT_COUNTS[kind], "seed": DEFAULT_SEEDS[kind], "size": DEFAULT_SIZES[kind]}


@dataclass(frozen=True)
class SynthConfig:
    """What to generate. ``size`` is the side of the square images in pixels (None = kind default).

    ``workers`` processes render and encode the images (0 = this process); the bytes written do
    not depend on it, and it is not recorded in the manifest.
    """

    kind: str = not_an_option(why="the subcommand: pile, scenes or pairs")
    count: int = option(help="Number of images.", flag="--count", short="-n")
    seed: int = option(0, "Seed; same seed -> same bytes. Use one seed per split.")
    size: int | None = option(None, "Image side in pixels.")
    min_objects: int = option(1, "Fewest objects per scene.")
    max_objects: int = option(8, "Most objects per scene.")
    image_format: str = option("png", "Image file format.", flag="--format", choices=tuple(FORMATS))
    panoptic: bool = option(False, "Also write COCO panoptic ground truth: panoptic.json and panoptic/*.png.")
    stuff: bool = option(False, "Draw the objects over named stuff (sky, grass, water, sand, brick, wood): "
                                "labelled in the scenes' ground truth and the pile's hidden one, named in the pairs' captions.")
    split: str = option("train", "train, or shift: the same objects over backgrounds, stuff looks and lighting "
                                 "no training uses (to measure robustness).", choices=SPLITS)
    varied: bool = option(False, "Draw the objects over varied training backgrounds (flat, gradients, stripes, grids, "
                                 "smooth noise, blobs, mosaics, scribbles) with clutter and milder lighting changes; "
                                 "the same objects, none of the shift split's looks. Train split only.")
    jpeg_quality: int = not_an_option(90, "Python API only: quality of jpg images")
    workers: int = option(0, "Processes rendering the images (0 = this process); the bytes do not depend on it.")

    def validate(self) -> None:
        check_choices(self)
        if self.kind not in KINDS:
            raise UsageError(f"unknown synth kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        if self.count < 1:
            raise UsageError(f"-n must be at least 1 (got {self.count})")
        if self.seed < 0:
            raise UsageError(f"--seed must be >= 0 (got {self.seed})")
        if self.size is not None and not 16 <= self.size <= 4096:
            raise UsageError(f"--size must lie in 16..4096 pixels (got {self.size})")
        if not 1 <= self.min_objects <= self.max_objects:
            raise UsageError(
                f"need 1 <= --min-objects <= --max-objects (got {self.min_objects}, {self.max_objects})"
            )
        if self.workers < 0:
            raise UsageError(f"--workers must be >= 0 (got {self.workers})")
        if self.panoptic and self.kind != "scenes":
            raise UsageError(f"--panoptic: only scenes have panoptic ground truth (not {self.kind})")
        if self.split == "shift" and self.kind == "pairs":
            raise UsageError("--split shift: pairs train shapes-clip, and the shift split is never trained on")
        if self.varied and self.split != "train":
            raise UsageError("--varied draws training looks; the shift split has its own (drop --varied or --split shift)")

    @property
    def image_size(self) -> int:
        return self.size or DEFAULT_SIZES[self.kind]
