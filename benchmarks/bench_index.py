"""Benchmark `zutis index` end to end against the CPU bound and the model ceiling, in one run.

Run by hand (not a test):

    python benchmarks/bench_index.py --images 500 --model shapes-clip --precision fp32
    python benchmarks/bench_index.py --images 100 --model ViT-B-16 --precision fp32

It writes (once, cached in --dir) a folder of 640x480 JPEGs from the shapes world, then measures in
one process, with the decoding workers and model threads `zutis index` chooses (or --workers,
--threads):

- t_decode, CPU time per image of reading, hashing, decoding and preprocessing one image as a
  decoding worker does (one thread, serially), for the path `zutis index` takes
  (:func:`zutiscli.data.images.read_image`: one read, JPEG decoded at a reduced DCT scale) and for
  the path it took before (the file stat'ed, read and hashed, opened again to decode, and a third
  time for its size); the two give the same tensors, which is checked;
- t_model, CPU time per image of the model on pre-decoded tensors, with one torch thread, on the
  slices of a batch that each model thread of the stage runs;
- (b) the bound on N cores, N / (t_decode + t_model): every core busy with nothing but decoding
  and the model (N = the cores this process may use); (b') the same with t_decode and t_model
  measured on N cores at once (N decoding processes, then N model threads), which counts what
  sharing caches, memory and (on virtual machines) physical cores costs;
- (a) the model ceiling, wall images/s of the model alone on pre-decoded tensors: the better of the
  stage's way (slices of each batch on its model threads) and torch's (whole batches, N intra-op
  threads); on CUDA, whole batches;
- the stage itself (`build_index`, the embedding loop without model loading): wall images/s, and
  its CPU time per image (main process and decoding workers);
- ratios: e2e / (a) and e2e / (b); and the work share (t_decode + t_model) / e2e CPU per image,
  which says how much of the stage's CPU time went to decoding and the model (1.00: no CPU time
  spent elsewhere). Wall throughput needs a quiet machine; the work share holds on a busy one too;
- with --compare-previous, the stage as it ran before, in the same run: one decoding worker fewer
  than the cores, the model in the main thread on torch's intra-op threads (decoding already by
  read_image).

Targets on CPU: with a model cheaper than or close to decoding (shapes-clip) e2e >= 0.95 x (b);
with a model that dominates (ViT-B-16) e2e >= 0.95 x (a). Weights are random (--pretrained none):
speed does not depend on them.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from zutiscli.data.images import load_image
from zutiscli.data.workers import available_cores
from zutiscli.engine.ordered_forward import forward_in_order
from zutiscli.models.clip import ModelSpec, load_backbone, save_weights
from zutiscli.models.device import precision_name, resolve_device, resolve_precision
from zutiscli.pipeline.index import IndexConfig, _ImageFiles, build_index
from zutiscli.shapes.world import scene_sample


def make_images(directory: Path, count: int) -> list[Path]:
    """``count`` 640x480 JPEGs (quality 90) of shapes-world scenes in ``directory``, written once."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = directory / f"{index:05d}.jpg"
        if not path.exists():
            pixels = scene_sample(100, index, size=640).image[:480]
            Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


class PreviousDecoding:
    """How a decoding worker handled one image before :func:`read_image`: stat, read and hash the
    file, open it again to decode (:func:`load_image`, same draft), and a third time to read the
    full-resolution size and EXIF orientation. Returns the preprocessed ``(3, S, S)`` tensor."""

    def __init__(self, transform, draft: int):
        self.transform = transform
        self.draft = draft

    def __call__(self, path: Path) -> torch.Tensor:
        path.stat()
        with open(path, "rb") as handle:
            hashlib.blake2b(handle.read(), digest_size=8).hexdigest()
        image = load_image(path, max_pixels=None, draft_size=(self.draft, self.draft))
        with Image.open(path) as header:
            header.size, header.getexif().get(0x0112, 1)
        return self.transform(image)


def cpu_per_item(functions: dict[str, Callable[[Path], object]], items: list[Path], rounds: int) -> dict[str, float]:
    """CPU seconds per item of each function (the best of ``rounds`` passes over ``items``, the
    functions' passes interleaved so that a change of machine load touches them alike)."""
    for function in functions.values():
        for item in items[:5]:
            function(item)
    best = {name: float("inf") for name in functions}
    for _ in range(rounds):
        for name, function in functions.items():
            start = time.process_time()
            for item in items:
                function(item)
            best[name] = min(best[name], (time.process_time() - start) / len(items))
    return best


@contextmanager
def torch_threads(count: int):
    """torch's intra-op threads set to ``count`` inside the block, restored after it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def model_cpu(backbone, tensors: torch.Tensor, slice_size: int) -> float:
    """CPU seconds per image of the model with one torch thread, on slices of ``slice_size``."""
    with torch_threads(1), torch.inference_mode():
        backbone.encode_images(tensors[:slice_size])  # warm-up
        start = time.process_time()
        for first in range(0, len(tensors), slice_size):
            backbone.encode_images(tensors[first:first + slice_size])
        return (time.process_time() - start) / len(tensors)


_SHARED: dict = {}  # what forked decoding processes read (set before they start)


def _decode_share(share: range) -> float:
    dataset = _SHARED["dataset"]
    torch.set_num_threads(1)
    start = time.process_time()
    for item in share:
        dataset[item]
    return time.process_time() - start


def decode_cpu_all_cores(dataset, cores: int) -> float:
    """CPU seconds per image of decoding with ``cores`` processes at once, each on its share."""
    _SHARED["dataset"] = dataset
    with multiprocessing.get_context("fork").Pool(cores) as pool:
        seconds = pool.map(_decode_share, [range(first, len(dataset), cores) for first in range(cores)])
    return sum(seconds) / len(dataset)


def model_cpu_all_cores(backbone, tensors: torch.Tensor, slice_size: int, cores: int) -> float:
    """CPU seconds per image of the model with ``cores`` threads at once (one torch thread each),
    each on its share of the slices."""
    slices = [tensors[first:first + slice_size] for first in range(0, len(tensors), slice_size)]

    def share(number: int) -> float:
        with torch.inference_mode():
            start = time.thread_time()
            for part in slices[number::cores]:
                backbone.encode_images(part)
            return time.thread_time() - start

    with torch_threads(1), ThreadPoolExecutor(cores) as pool:
        seconds = list(pool.map(share, range(cores)))
    return sum(seconds) / len(tensors)


def ceiling(backbone, tensors: torch.Tensor, batch_size: int, threads: int, intra_op: int | None) -> float:
    """Wall images/s of the model alone: ``forward_in_order`` with ``threads`` (0: inline), or, with
    ``intra_op``, whole batches inline on that many torch threads. Best of two passes."""
    device = backbone.device

    def embed(tensor: torch.Tensor) -> np.ndarray:
        return backbone.encode_images(tensor.to(device)).cpu().numpy()

    if intra_op is not None:
        threads = 0
    with torch_threads(torch.get_num_threads() if intra_op is None else intra_op):
        batches = [(first, tensors[first:first + batch_size]) for first in range(0, len(tensors), batch_size)]
        for _ in forward_in_order(batches[:1], embed, threads):  # warm-up
            pass
        rates = []
        for _ in range(2):
            start = time.perf_counter()
            for _ in forward_in_order(batches, embed, threads):
                pass
            if device.type == "cuda":
                torch.cuda.synchronize()
            rates.append(len(tensors) / (time.perf_counter() - start))
        return max(rates)


def end_to_end(config: IndexConfig, repeats: int, label: str) -> tuple[float, float]:
    """Run ``build_index`` ``repeats`` times; print and return the median of its loop's wall
    images/s and of its CPU seconds per image (main process and decoding workers)."""
    rates, cpu = [], []
    for _ in range(repeats):
        out = Path(tempfile.mkdtemp()) / "index"
        result = build_index(config, out)
        rates.append(result.images_per_second)
        cpu.append(result.extra["embed_cpu_seconds"] / max(1, result.embedded))
        busy = result.extra["embed_cpu_seconds"] / max(1e-9, result.extra["embed_seconds"])
        shutil.rmtree(out.parent, ignore_errors=True)
    rate, seconds = statistics.median(rates), statistics.median(cpu)
    print(f"{label:24s} {rate:8.1f} images/s   (workers {result.extra['workers']}, threads "
          f"{result.extra['threads'] or 'inline'}; runs {', '.join(f'{r:.1f}' for r in rates)}; "
          f"CPU {seconds * 1000:.3f} ms/image, {busy:.2f} cores busy in the last run)")
    return rate, seconds


@contextmanager
def inline_model():
    """The stage's model in the main thread on torch's own intra-op threads, as before model threads."""
    chosen = IndexConfig.model_threads
    IndexConfig.model_threads = lambda self, device_type, cores=None: 0
    try:
        yield
    finally:
        IndexConfig.model_threads = chosen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--model", default="shapes-clip")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch (zutis index: --batch-size)")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default: as zutis index)")
    parser.add_argument("--threads", type=int, default=None, help="model threads on CPU (default: as zutis index)")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "zutis-bench-index-jpegs")
    parser.add_argument("--repeats", type=int, default=1, help="end-to-end runs; the median is reported")
    parser.add_argument("--decode-rounds", type=int, default=3, help="passes of each decoding path; the best is kept")
    parser.add_argument("--compare-previous", action="store_true",
                        help="also run the stage with the previous choice of workers and threads")
    args = parser.parse_args()

    paths = make_images(args.dir, args.images)
    device = resolve_device(args.device)
    dtype = resolve_precision(args.precision, device)
    torch.manual_seed(0)
    backbone = load_backbone(ModelSpec(args.model, "none"), device=device, dtype=dtype)
    weights = Path(tempfile.mkdtemp()) / "weights.pt"
    save_weights(backbone, weights)
    config = IndexConfig(sources=[str(path) for path in paths], model=args.model, pretrained=str(weights),
                         batch_size=args.batch_size, workers=args.workers, threads=args.threads,
                         device=args.device, precision=args.precision, chunk_size=1024)
    cores = available_cores()
    workers, threads = config.decode_workers(), config.model_threads(device.type)
    size = backbone.image_size[0]
    print(f"{len(paths)} JPEGs 640x480 | {args.model} {precision_name(dtype)} on {device} ({size} px) | "
          f"batch {args.batch_size} | {cores} cores | {workers} decoding workers, "
          f"{threads or 'inline'} model threads")

    # decoding: CPU per image, one thread, the chosen path and the previous one
    transform = backbone.transform()
    chosen = _ImageFiles(paths, transform, size, None)
    previous = PreviousDecoding(transform, size)
    number = {path: item for item, path in enumerate(paths)}
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    times = cpu_per_item({"previous": previous, "chosen": lambda path: chosen[number[path]]}, paths,
                         args.decode_rounds)
    tensors = torch.stack([chosen[item][1] for item in range(len(paths))])
    difference = max(float((previous(path) - tensors[item]).abs().max()) for item, path in enumerate(paths[:50]))
    torch.set_num_threads(torch_threads)
    t_decode = times["chosen"]
    print("decode, CPU per image (one thread):")
    print(f"  before: stat, read + hash, reopen to decode, reopen for size  {times['previous'] * 1000:7.3f} ms")
    print(f"  read_image: one read, JPEG draft decode, resize               {t_decode * 1000:7.3f} ms   "
          f"({times['previous'] / t_decode:.2f}x less; tensors max |difference| {difference:.1e})")

    # the model: CPU per image on one thread, then the ceiling
    slice_size = -(-args.batch_size // max(1, threads))
    t_model = model_cpu(backbone, tensors.to(device), slice_size) if device.type == "cpu" else float("nan")
    if device.type == "cpu":
        print(f"model, CPU per image (one thread, slices of {slice_size})      {t_model * 1000:7.3f} ms")
        stage_way = ceiling(backbone, tensors, args.batch_size, threads, None)
        torch_way = ceiling(backbone, tensors, args.batch_size, threads, intra_op=cores)
        model_ceiling = max(stage_way, torch_way)
        bound = cores / (t_decode + t_model)
        busy_decode = decode_cpu_all_cores(chosen, cores)
        busy_model = model_cpu_all_cores(backbone, tensors, slice_size, cores)
        busy_bound = cores / (busy_decode + busy_model)
        print(f"(a) model ceiling        {model_ceiling:8.1f} images/s   (slices on {threads} threads {stage_way:.1f}, "
              f"whole batches on {cores} torch threads {torch_way:.1f})")
        print(f"(b) bound N / (t_decode + t_model), N = {cores}   {bound:8.1f} images/s   (t measured one at a time)")
        print(f"(b') the same, t measured on {cores} cores at once: t_decode {busy_decode * 1000:.3f} ms, t_model "
              f"{busy_model * 1000:.3f} ms -> {busy_bound:.1f} images/s")
    else:
        model_ceiling = ceiling(backbone, tensors, args.batch_size, 0, None)
        bound = float("nan")
        print(f"(a) model ceiling        {model_ceiling:8.1f} images/s")

    e2e, e2e_cpu = end_to_end(config, args.repeats, "zutis index (e2e)")
    print(f"ratio e2e / (a)          {e2e / model_ceiling:8.2f}   target >= 0.95 where the model dominates")
    if device.type == "cpu":
        print(f"ratio e2e / (b)          {e2e / bound:8.2f}   target >= 0.95   (e2e / (b') {e2e / busy_bound:.2f})")
        print(f"work share               {(t_decode + t_model) / e2e_cpu:8.2f}   (t_decode + t_model) / e2e CPU per image "
              f"(with (b')'s t: {(busy_decode + busy_model) / e2e_cpu:.2f})")
        if args.compare_previous:
            previous_config = replace(config, workers=max(1, min(8, cores - 1)) if args.workers is None else args.workers)
            with inline_model():
                old, old_cpu = end_to_end(previous_config, args.repeats, "previous choice (e2e)")
            print(f"ratio e2e / previous     {e2e / old:8.2f}   (previous: {old / bound:.2f} x (b), work share "
                  f"{(t_decode + t_model) / old_cpu:.2f})")
    shutil.rmtree(weights.parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
