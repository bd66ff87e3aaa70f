"""The options of ``zutis cosegment`` (:class:`CosegmentConfig`), importable without numpy or torch.

The command line builds ``zutis cosegment --help`` from these fields; :mod:`zutiscli.pipeline.cosegment`
runs the stage (and exports :class:`CosegmentConfig` too).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from zutiscli.config_fields import (
    check_choices, device_option, join_commas, not_an_option, option, precision_option, split_commas,
)
from zutiscli.errors import UsageError

#: The patch features ``--features`` may co-segment (:class:`zutiscli.models.features.LastBlockFeatures`).
FEATURES = ("tokens", "keys")

#: ReCo's context classes (official code): their references suppress their regions elsewhere.
RECO_CONTEXT = ("tree", "sky", "building", "road", "person")


@dataclass
class CosegmentConfig:
    """Options of ``zutis cosegment`` (sizes in pixels).

    ReCo's co-segmentation (:mod:`zutiscli.ops.cosegment`) of each class's best ``k`` archive
    images into one reference embedding; ReCo's defaults: k 50, the language gate on, context
    classes ``tree, sky, building, road, person`` (here none unless ``context`` names them: each
    needs an archive of its own).
    """

    archives: str = not_an_option("", "the command's ARCHIVES argument")
    k: int = option(50, "Archive images co-segmented per class, best first (ReCo: 50).", flag="-k")
    model: str | None = option(
        None, "Co-segmentation encoder: open_clip name, timm:NAME or dino-vits16 etc. (ReCo: DeiT-S/16-SIN; "
        "default: the archives' CLIP).", kind="model", show_default=False)
    pretrained: str | None = option(None, "Weights of --model (a local file for timm/DINO).", show_default=False)
    features: str = option(
        "tokens", "Patch features co-segmented: the encoder's last-block output tokens, or that block's attention "
        "keys (what MaskCut and MaskDistill group).", choices=FEATURES)
    size: int | None = option(
        None, "Side of the square encoder input (default: the encoder's own input size, 224 for timm ViTs).",
        show_default=False)
    text_gate: bool = option(
        True, "ReCo's language gate: weigh each patch as a match by sigmoid(10 cos) of the archives' CLIP "
        "(MaskCLIP dense features) with the class's text.", flag="--text-gate/--no-text-gate")
    context: Sequence[str] = option(
        (), f"Context classes (ReCo: {join_commas(RECO_CONTEXT)}), each an archive in ARCHIVES: co-segmented "
        "first, their references then suppress their regions in the other classes' co-segmentation.",
        metavar="A,B", parse=split_commas, text=join_commas, show_default=False)
    preview: int = option(8, "Archive images per class drawn in preview/ with the reference's similarity and "
                             "the seed (0 = none).")
    batch_size: int = option(16, "Images per forward pass.", short="-b")
    device: str = device_option()
    precision: str = precision_option("fp32")

    def validate(self) -> None:
        check_choices(self)
        if self.k < 2:
            raise UsageError(f"-k must be >= 2: co-segmentation needs images to compare (got {self.k})")
        if self.size is not None and self.size < 16:
            raise UsageError(f"--size must be >= 16 pixels (got {self.size})")
        if self.preview < 0 or self.batch_size < 1:
            raise UsageError("--preview must be >= 0 and --batch-size >= 1")
        if len({name.casefold() for name in self.context}) < len(self.context):
            raise UsageError(f"--context {join_commas(self.context)}: a class is named twice")
