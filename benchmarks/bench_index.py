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
import threading
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


def stage_run(config: IndexConfig) -> dict:
    """One ``build_index`` run: its loop's wall images/s (``rate``), CPU seconds per image (``cpu``:
    main process and decoding workers), the cores it kept busy, and what it chose."""
    out = Path(tempfile.mkdtemp()) / "index"
    try:
        result = build_index(config, out)
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)
    extra = result.extra
    return {"rate": result.images_per_second, "cpu": extra["embed_cpu_seconds"] / max(1, result.embedded),
            "busy": extra["embed_cpu_seconds"] / max(1e-9, extra["embed_seconds"]), "workers": extra["workers"],
            "threads": extra["threads"], "decode_in": extra["decode_in"]}


def describe_runs(label: str, runs: list[dict]) -> str:
    """One line: the median rate and CPU per image of ``runs``, every rate, and what the stage chose."""
    last = runs[-1]
    rates = ", ".join(f"{run['rate']:.1f}" for run in runs)
    return (f"{label:26s} {statistics.median(r['rate'] for r in runs):8.1f} images/s   ({last['workers']} decoding "
            f"{last['decode_in']}, model threads {last['threads'] or 'inline'}; runs "
            f"{rates}; CPU "
            f"{statistics.median(r['cpu'] for r in runs) * 1000:.3f} ms/image, "
            f"{statistics.median(r['busy'] for r in runs):.2f} cores busy)")


def stage_split(config: IndexConfig) -> dict[str, float]:
    """One ``build_index`` run decoding in threads, with the CPU time of each kind of work inside it
    measured per thread (``time.thread_time``): decoding (an image read, hashed, decoded and
    preprocessed), the model (a slice's forward pass), and the main thread (records, chunk commits,
    hand-offs). Seconds per image."""
    import zutiscli.engine.ordered_forward as ordered_forward
    import zutiscli.pipeline.index as index_module

    spent = {"decode": 0.0, "model": 0.0}
    lock = threading.Lock()

    def timed(kind: str, function: Callable) -> Callable:
        def run(*args):
            start = time.thread_time()
            try:
                return function(*args)
            finally:
                with lock:
                    spent[kind] += time.thread_time() - start
        return run

    read, forward = index_module._ImageFiles.__getitem__, ordered_forward._run
    index_module._ImageFiles.__getitem__ = timed("decode", read)
    ordered_forward._run = timed("model", forward)
    out = Path(tempfile.mkdtemp()) / "index"
    try:
        main_start = time.thread_time()
        result = build_index(replace(config, decode_in="threads"), out)
        spent["main thread"] = time.thread_time() - main_start
    finally:
        index_module._ImageFiles.__getitem__, ordered_forward._run = read, forward
        shutil.rmtree(out.parent, ignore_errors=True)
    return {kind: seconds / max(1, result.embedded) for kind, seconds in spent.items()}


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
    parser.add_argument("--workers", type=int, default=None, help="decoding threads or processes (default: as zutis index)")
    parser.add_argument("--threads", type=int, default=None, help="model threads on CPU (default: as zutis index)")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "zutis-bench-index-jpegs")
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds of (t_decode, t_model, each variant of the stage); medians are reported")
    parser.add_argument("--decode-rounds", type=int, default=3, help="passes of each decoding path; the best is kept")
    parser.add_argument("--compare-previous", action="store_true",
                        help="also run the stage with the previous choice of workers and threads")
    parser.add_argument("--split", action="store_true",
                        help="also run the stage once more with each kind of work's CPU time measured inside it")
    parser.add_argument("--compare-processes", action="store_true",
                        help="also run the stage decoding in worker processes (the CUDA default) instead of threads")
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
    workers, threads = config.decode_workers(device.type), config.model_threads(device.type)
    decode_in = "threads" if config.decode_threads(device.type) else "processes"
    size = backbone.image_size[0]
    print(f"{len(paths)} JPEGs 640x480 | {args.model} {precision_name(dtype)} on {device} ({size} px) | "
          f"batch {args.batch_size} | {cores} cores | {workers} decoding {decode_in}, "
          f"{threads or 'inline'} model threads")

    # decoding: CPU per image, one thread, the chosen path and the previous one
    transform = backbone.transform()
    chosen = _ImageFiles(paths, transform, size, None)
    previous = PreviousDecoding(transform, size)
    number = {path: item for item, path in enumerate(paths)}
    intra_op_before = torch.get_num_threads()
    torch.set_num_threads(1)
    times = cpu_per_item({"previous": previous, "chosen": lambda path: chosen[number[path]]}, paths,
                         args.decode_rounds)
    tensors = torch.stack([chosen[item][1] for item in range(len(paths))])
    difference = max(float((previous(path) - tensors[item]).abs().max()) for item, path in enumerate(paths[:50]))
    torch.set_num_threads(intra_op_before)
    t_decode = times["chosen"]
    print("decode, CPU per image (one thread):")
    print(f"  before: stat, read + hash, reopen to decode, reopen for size  {times['previous'] * 1000:7.3f} ms")
    print(f"  read_image: one read, JPEG draft decode, resize               {t_decode * 1000:7.3f} ms   "
          f"({times['previous'] / t_decode:.2f}x less; tensors max |difference| {difference:.1e})")

    # the model: CPU per image on one thread, then the ceiling
    slice_size = -(-args.batch_size // max(1, threads))
    if device.type != "cpu":
        model_ceiling = ceiling(backbone, tensors, args.batch_size, 0, None)
        print(f"(a) model ceiling        {model_ceiling:8.1f} images/s")
        runs = [stage_run(config) for _ in range(args.repeats)]
        print(describe_runs("zutis index (e2e)", runs))
        e2e = statistics.median(r["rate"] for r in runs)
        print(f"ratio e2e / (a)          {e2e / model_ceiling:8.2f}   target >= 0.95 where the model dominates")
        shutil.rmtree(weights.parent, ignore_errors=True)
        return 0

    stage_way = ceiling(backbone, tensors, args.batch_size, threads, None)
    torch_way = ceiling(backbone, tensors, args.batch_size, threads, intra_op=cores)
    model_ceiling = max(stage_way, torch_way)
    busy_decode = decode_cpu_all_cores(chosen, cores)
    busy_model = model_cpu_all_cores(backbone, tensors, slice_size, cores)
    busy_bound = cores / (busy_decode + busy_model)
    print(f"(a) model ceiling        {model_ceiling:8.1f} images/s   (slices on {threads} threads {stage_way:.1f}, "
          f"whole batches on {cores} torch threads {torch_way:.1f})")
    print(f"(b') bound with t measured on {cores} cores at once: t_decode {busy_decode * 1000:.3f} ms, t_model "
          f"{busy_model * 1000:.3f} ms -> {busy_bound:.1f} images/s")

    # rounds: the bound's t_decode and t_model and each variant of the stage, one after the other, so
    # that a change of load touches them alike; each round's ratio uses that round's bound
    variants = {"zutis index (e2e)": config}
    if args.compare_processes:
        variants["decoding in processes"] = replace(config, decode_in="processes")
    if args.compare_previous:
        variants["previous choice"] = replace(
            config, decode_in="processes", workers=max(1, min(8, cores - 1)) if args.workers is None else args.workers)
    runs: dict[str, list[dict]] = {label: [] for label in variants}
    bounds, decodes, models = [], [], []
    for _ in range(args.repeats):
        with torch_threads(1):
            decodes.append(cpu_per_item({"chosen": lambda path: chosen[number[path]]}, paths, 1)["chosen"])
        models.append(model_cpu(backbone, tensors, slice_size))
        bounds.append(cores / (decodes[-1] + models[-1]))
        for label, variant in variants.items():
            if label == "previous choice":
                with inline_model():
                    runs[label].append(stage_run(variant))
            else:
                runs[label].append(stage_run(variant))
    t_model, t_decode = statistics.median(models), statistics.median(decodes)
    print(f"model, CPU per image (one thread, slices of {slice_size})      {t_model * 1000:7.3f} ms   (median of "
          f"{args.repeats} rounds; decoding {t_decode * 1000:.3f} ms)")
    print(f"(b) bound N / (t_decode + t_model), N = {cores}   {statistics.median(bounds):8.1f} images/s   (median; rounds "
          f"{', '.join(f'{b:.1f}' for b in bounds)})")
    for label in variants:
        print(describe_runs(label, runs[label]))
    ours = runs["zutis index (e2e)"]
    ratios = [run["rate"] / bound for run, bound in zip(ours, bounds)]
    e2e = statistics.median(run["rate"] for run in ours)
    e2e_cpu = statistics.median(run["cpu"] for run in ours)
    print(f"ratio e2e / (a)          {e2e / model_ceiling:8.2f}   target >= 0.95 where the model dominates")
    print(f"ratio e2e / (b)          {statistics.median(ratios):8.2f}   target >= 0.95   (median of the rounds' ratios "
          f"{', '.join(f'{r:.2f}' for r in ratios)}; e2e / (b') {e2e / busy_bound:.2f})")
    print(f"work share               {(t_decode + t_model) / e2e_cpu:8.2f}   (t_decode + t_model) / e2e CPU per image "
          f"(with (b')'s t: {(busy_decode + busy_model) / e2e_cpu:.2f})")
    if args.split:
        split = stage_split(config)
        print(f"inside the stage, CPU per image: decoding {split['decode'] * 1000:.3f} ms ({split['decode'] / t_decode:.2f} "
              f"x alone), model {split['model'] * 1000:.3f} ms ({split['model'] / t_model:.2f} x alone), main thread "
              f"{split['main thread'] * 1000:.3f} ms (records, commits, hand-offs; it also waits)")
    for label in list(variants)[1:]:
        theirs = [run["rate"] for run in runs[label]]
        per_round = [run["rate"] / other for run, other in zip(ours, theirs)]
        print(f"ratio e2e / {label:22s} {statistics.median(per_round):5.2f}   (median of the rounds; theirs "
              f"{statistics.median(r / b for r, b in zip(theirs, bounds)):.2f} x (b), work share "
              f"{(t_decode + t_model) / statistics.median(run['cpu'] for run in runs[label]):.2f})")
    shutil.rmtree(weights.parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
