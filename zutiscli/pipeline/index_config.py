"""The options of ``zutis index`` (:class:`IndexConfig`), importable without torch.

The command line builds ``zutis index --help`` from these fields; :mod:`zutiscli.pipeline.index`
runs the stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from zutiscli.config_fields import device_option, not_an_option, option, precision_option
from zutiscli.data.limits import DEFAULT_MAX_PIXELS
from zutiscli.data.shards import check_shard, parse_shard
from zutiscli.errors import UsageError

DEFAULT_MODEL = "ViT-L-14-336"


@dataclass
class IndexConfig:
    """Options of ``zutis index``; each field's help is the command's."""

    sources: Sequence[str] = not_an_option((), "the command's IMAGES arguments")
    from_list: str | None = option(
        None, "Text file of image paths, one per line (relative to the current directory).", kind="path")
    model: str = option(DEFAULT_MODEL, "open_clip model name (the paper retrieves with ViT-L-14-336).", kind="model")
    pretrained: str | None = option(
        None, "Tag, checkpoint file, builtin or none (default: shipped weights, else openai).", show_default=False)
    batch_size: int = option(64, "Images per forward pass.")
    workers: int | None = option(
        None, "Decoding processes (default: cores - 1 on CPU, up to 8).", show_default=False)
    device: str = device_option()
    precision: str = precision_option()
    faiss: str = option("Flat", "faiss factory string; Flat = exact search (no index file), e.g. IVF4096,PQ64.")
    shard: tuple[int, int] | None = option(
        None, "Embed slice I of N (0-based); default from SLURM array or torchrun. Writes OUTPUT/shard-I-of-N.",
        metavar="I/N", parse=parse_shard, show_default=False)
    chunk_size: int = option(1024, "Images per committed chunk (what an interruption can lose).")
    max_pixels: int | None = option(DEFAULT_MAX_PIXELS, "Refuse images with more pixels (decompression bombs).")
    faiss_train_size: int = not_an_option(100_000, "Python API only: vectors that train an approximate index")
    seed: int = not_an_option(0, "Python API only: seed of the faiss training sample")

    def validate(self) -> None:
        if not self.sources and not self.from_list:
            raise UsageError("give at least one image directory, file or glob, or --from-list FILE")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1 (got {self.batch_size})")
        if self.chunk_size < 1:
            raise UsageError(f"--chunk-size must be >= 1 (got {self.chunk_size})")
        if self.workers is not None and self.workers < 0:
            raise UsageError(f"--workers must be >= 0 (got {self.workers})")
        if self.shard is not None:
            check_shard(self.shard)
