"""The options of ``zutis index`` (:class:`IndexConfig`), importable without torch.

The command line builds ``zutis index --help`` from these fields; :mod:`zutiscli.pipeline.index`
runs the stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from zutiscli.config_fields import check_choices, device_option, not_an_option, option, precision_option
from zutiscli.data.limits import DEFAULT_MAX_PIXELS
from zutiscli.data.shards import check_shard, parse_shard
from zutiscli.data.workers import cores_per_process
from zutiscli.errors import UsageError

DEFAULT_MODEL = "ViT-L-14-336"
#: Where ``zutis index`` decodes images: ``auto`` is processes (on CPU each also running the model),
#: or threads on a CPU where ``--threads`` is given or processes cannot be forked.
DECODE_IN = ("auto", "threads", "processes")
#: Decoding processes feeding a GPU at most, unless ``--workers`` says otherwise (each holds a copy
#: of the loader's state); on CPU, where each process also runs the model, they follow the cores.
MAX_DECODE_PROCESSES = 8


@dataclass
class IndexConfig:
    """Options of ``zutis index``; each field's help is the command's."""

    sources: Sequence[str] = not_an_option((), "the command's IMAGES arguments")
    from_list: str | None = option(
        None, "Text file of image paths, one per line (relative to the current directory).", kind="path")
    model: str = option(DEFAULT_MODEL, "open_clip model name (the paper retrieves with ViT-L-14-336).", kind="model")
    pretrained: str | None = option(
        None, "Tag, checkpoint file, builtin or none (default: shipped weights, else openai).", show_default=False)
    batch_size: int = option(64, "Images per batch (on CPU the worker processes, or --threads model threads, "
                                 "each embed a slice of every batch).")
    workers: int | None = option(
        None, "Worker processes (or threads, see --decode-in) decoding the images; on CPU each process also "
        "runs the model on its images (default: one per core; feeding a GPU, at most 8).", show_default=False)
    decode_in: str = option(
        "auto", "Decode in worker processes (on CPU each embeds what it decodes on its own core, one torch thread; "
        "on CUDA they feed the GPU) or in threads of this process, with --threads model threads (no worker "
        "processes). auto: processes, or threads on CPU where --threads is given or processes cannot be forked.",
        choices=DECODE_IN)
    threads: int | None = option(
        None, "Model threads on CPU with decoding threads, each embedding a slice of every batch on one core "
        "(default: one per core; giving it chooses decoding threads). Worker processes run one torch thread "
        "each: set --workers. Unused on CUDA.", show_default=False)
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
        check_choices(self)
        if not self.sources and not self.from_list:
            raise UsageError("give at least one image directory, file or glob, or --from-list FILE")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1 (got {self.batch_size})")
        if self.chunk_size < 1:
            raise UsageError(f"--chunk-size must be >= 1 (got {self.chunk_size})")
        if self.workers is not None and self.workers < 0:
            raise UsageError(f"--workers must be >= 0 (got {self.workers})")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads must be >= 1 (got {self.threads})")
        if self.decode_in == "processes" and self.threads not in (None, 1):
            raise UsageError(f"--threads {self.threads} needs --decode-in threads: a worker process runs the model on "
                             f"one torch thread (OpenMP cannot start more in a forked process); set --workers instead")
        if self.shard is not None:
            check_shard(self.shard)

    def decode_threads(self, device_type: str) -> bool:
        """Whether images are decoded in threads of this process (else in worker processes):
        ``decode_in``, where ``auto`` means processes, or threads on a CPU where ``threads`` is given
        (model threads are the threads way's) or processes cannot be forked (the workers get the
        model by forking)."""
        if self.decode_in == "auto":
            return device_type == "cpu" and (self.threads is not None or not can_fork())
        return self.decode_in == "threads"

    def decode_workers(self, device_type: str = "cpu", cores: int | None = None) -> int:
        """Threads or processes decoding images: ``workers``, else one per core of this process
        (:func:`cores_per_process`, or ``cores``); processes feeding a GPU at most
        :data:`MAX_DECODE_PROCESSES`. On CPU worker processes embed what they decode, and with
        decoding threads, decoders and model threads share the cores as the work demands."""
        if self.workers is not None:
            return self.workers
        count = cores_per_process() if cores is None else cores
        return min(MAX_DECODE_PROCESSES, count) if device_type != "cpu" else count

    def model_threads(self, device_type: str, cores: int | None = None, workers: int | None = None) -> int:
        """Threads running the model: ``0`` on CUDA (the forward pass runs in the calling thread, as
        the GPU does the work); on CPU with decoding threads ``threads``, else one per core
        (:func:`zutiscli.engine.ordered_forward.forward_in_order`); with worker processes 1, the
        torch threads of each (GNU OpenMP, torch's, cannot start a team of threads in a process
        forked from one that used it: the worker would hang), or with ``workers`` 0 (the images
        embedded in this process) one per core. ``cores``: default :func:`cores_per_process`;
        ``workers``: default :meth:`decode_workers`."""
        if device_type != "cpu":
            return 0
        count = cores_per_process() if cores is None else cores
        if self.decode_threads(device_type):
            return self.threads if self.threads is not None else count
        workers = self.decode_workers(device_type, count) if workers is None else workers
        return 1 if workers else count


def can_fork() -> bool:
    """Whether this platform can start worker processes by forking (POSIX; not Windows)."""
    import multiprocessing

    return "fork" in multiprocessing.get_all_start_methods()


