"""The options of ``zutis retrieve`` (:class:`RetrieveConfig`), importable without numpy or torch.

The command line builds ``zutis retrieve --help`` from these fields; :mod:`zutiscli.pipeline.retrieve`
runs the stage.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from zutiscli.config_fields import check_choices, device_option, not_an_option, option
from zutiscli.errors import UsageError

if TYPE_CHECKING:
    from zutiscli.data.classes import ClassQuery

PROMPT_MODES = ("ensemble", "names")
#: Hits on a contact sheet unless the Python API says otherwise.
CONTACT_COUNT = 48


@dataclass(frozen=True)
class RetrieveConfig:
    """Options of ``zutis retrieve``; each field's help is the command's.

    ``indices``: index directories (``zutis index`` output). ``classes``: what to retrieve.
    ``k``: images per archive (clamped to the number of active images, with a warning).
    ``prompts``: ``"ensemble"`` (85 templates) or ``"names"`` (bare phrases).
    ``model``/``pretrained``: optional; must name the indices' model (default: read from them).
    ``batch_size``: prompts per text-encoder forward pass. ``nprobe``: IVF lists visited when an
    index has ``index.faiss`` (None: ``max(32, nlist // 16)``). ``block_rows``: rows per exact-search
    block, a float32 buffer of ``block_rows * dim * 4`` bytes (None: 512 MiB worth). ``contact_count``: hits per contact sheet.
    """

    indices: tuple[Path, ...] = not_an_option(why="the command's INDEX_DIR arguments")
    classes: tuple[ClassQuery, ...] = not_an_option(why="read from --classes or --classes-file")
    k: int = option(500, "Images per class. More than the images in the indices: clamped, with a warning.",
                    flag=("-k", "--top-k"))
    prompts: str = option("ensemble", "Text to embed: the 85-template ensemble or the bare names.",
                          choices=PROMPT_MODES)
    exclude_duplicates: bool = option(
        False, "Disjoint archives: each image goes to the class that scores it highest among those with room.")
    contact_sheet: bool = option(
        False, f"Also write contact/<class>.jpg: the top {CONTACT_COUNT} hits with rank and score.")
    model: str | None = option(None, "Text model; default and only accepted value: the index's model.", kind="model")
    pretrained: str | None = option(None, "Weights; default: the index's (pass a path if its checkpoint moved).")
    device: str = device_option()
    batch_size: int = option(256, "Prompts per text-encoder batch.")
    nprobe: int | None = option(
        None, "IVF lists to visit when an index has index.faiss [default: max(32, nlist/16)].")
    block_rows: int | None = not_an_option(None, "Python API only: rows per exact-search block")
    contact_count: int = not_an_option(CONTACT_COUNT, "Python API only: hits per contact sheet")

    def validate(self) -> None:
        """Raise :class:`UsageError` for option values that cannot work."""
        check_choices(self)
        if not self.indices:
            raise UsageError("give at least one INDEX_DIR (written by `zutis index`)")
        if not self.classes:
            raise UsageError("no classes to retrieve")
        if self.k < 1:
            raise UsageError(f"-k must be at least 1 (got {self.k})")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1 (got {self.batch_size})")
        if self.nprobe is not None and self.nprobe < 1:
            raise UsageError(f"--nprobe must be at least 1 (got {self.nprobe})")
        if self.block_rows is not None and self.block_rows < 1:
            raise UsageError(f"block_rows must be at least 1 (got {self.block_rows})")
        if not 1 <= self.contact_count <= 1000:
            raise UsageError(f"contact_count must lie in 1..1000 (got {self.contact_count})")
        seen: dict[str, Path] = {}
        for index in self.indices:
            key = os.path.realpath(index)
            if key in seen:
                raise UsageError(f"{index}: the same index is given twice (also as {seen[key]})")
            seen[key] = Path(index)
