"""Benchmark `zutis index` end to end against the CPU bound and the model ceiling, in one run.

Run by hand (not a test):

    python benchmarks/bench_index.py --images 500 --model shapes-clip --precision fp32
    python benchmarks/bench_index.py --images 100 --model ViT-B-16 --precision fp32

It writes (once, cached in --dir) a folder of 640x480 JPEGs from the shapes world, then measures in
one process, with the worker processes (or decoding and model threads) `zutis index` chooses (or
--workers, --threads):

- t_decode, CPU time per image of reading, hashing, decoding and preprocessing one image as a
  decoding worker does (one thread, serially), for the path `zutis index` takes
  (:func:`zutiscli.data.images.read_image`: one read, JPEG decoded at a reduced DCT scale) and for
  the path it took before (the file stat'ed, read and hashed, opened again to decode, and a third
  time for its size); the two give the same tensors, which is checked;
- t_model, CPU time per image of the model on pre-decoded tensors, with one torch thread, on the
  slices the stage cuts each batch into (one per worker process, or per model thread);
- (b) the bound on N cores, N / (t_decode + t_model): every core busy with nothing but decoding
  and the model (N = the cores this process may use); (b') the same with t_decode and t_model
  measured on N cores at once (N decoding processes, then N model processes), which counts what
  sharing caches, memory and (on virtual machines) physical cores costs;
- (a) the model ceiling, wall images/s of the model alone on pre-decoded tensors: the best of the
  stage's slices in N processes, the same slices on N threads, and torch's way (whole batches, N
  intra-op threads); on CUDA, whole batches;
- the stage itself (`build_index`, the embedding loop without model loading): wall images/s, and
  its CPU time per image (main process and worker processes);
- ratios: e2e / (a) and e2e / (b); and the work share (t_decode + t_model) / e2e CPU per image,
  which says how much of the stage's CPU time went to decoding and the model (1.00: no CPU time
  spent elsewhere). Wall throughput needs a quiet machine; the work share holds on a busy one too;
- with --compare-threads, the stage with decoding threads and model threads in its own process
  (`--decode-in threads`) in the same rounds; with --split, one more run with the CPU time of
  decoding, of the model and of the main thread measured inside it; with --compare-decoders, the
  JPEG decoders at hand (PIL draft, PIL full size, torchvision, simplejpeg where installed);
- with --steady, the stage once more in each round on the first quarter of the images: the rate
  at scale, (images - quarter) / (seconds - the quarter's seconds), which a long run keeps once
  the workers have started, and the fixed cost every run pays once (starting and joining them);
- with --host-tax, in each round a pure-Python loop's CPU time on all cores at once over one
  alone: work that shares no cache or memory still costs more when every core runs, and the
  ratio e2e / (b) cannot pass 1 / that tax.

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


def jpeg_decoders(paths: list[Path], size: int, rounds: int) -> None:
    """Print the CPU time per image (one thread, file bytes already in memory) of the JPEG decoders at
    hand, each giving the RGB pixels the stage resizes: PIL with draft mode (libjpeg-turbo scaling in
    the DCT domain to the smallest scale keeping both sides >= ``size``: the stage's), PIL in full,
    torchvision.io.decode_jpeg (libjpeg-turbo, full size: it has no DCT scaling) and, where it is
    installed (it is not a dependency), simplejpeg at the same DCT scale; and whether each gives the
    stage's pixels (the full-size decoders cannot: they see 4-16x as many pixels before the resize)."""
    import io

    from torchvision.io import decode_jpeg

    blobs = [path.read_bytes() for path in paths]

    def pil(data: bytes, draft: bool) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as image:
            if draft:
                image.draft("RGB", (size, size))
            return np.asarray(image.convert("RGB"))

    decoders: dict[str, Callable[[bytes], np.ndarray]] = {
        "PIL, draft (the stage's)": lambda data: pil(data, True),
        "PIL, full size": lambda data: pil(data, False),
        "torchvision decode_jpeg, full size": lambda data: decode_jpeg(
            torch.frombuffer(bytearray(data), dtype=torch.uint8)).permute(1, 2, 0).numpy(),
    }
    try:
        import simplejpeg

        decoders["simplejpeg, same DCT scale"] = lambda data: simplejpeg.decode_jpeg(
            data, colorspace="RGB", min_height=size, min_width=size)
    except ImportError:
        print("  (simplejpeg not installed: pip install simplejpeg to measure it too)")
    with torch_threads(1):
        times = cpu_per_item(decoders, blobs, rounds)
    reference = [decoders["PIL, draft (the stage's)"](data) for data in blobs[:50]]
    for name, decoder in decoders.items():
        pixels = [decoder(data) for data in blobs[:50]]
        same = all(a.shape == b.shape and np.array_equal(a, b) for a, b in zip(pixels, reference))
        print(f"  {name:36s} {times[name] * 1000:7.3f} ms   {pixels[0].shape[1]}x{pixels[0].shape[0]} px, "
              f"{'the same pixels' if same else 'other pixels'}")


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


def _work_share(slices: list[int]) -> tuple[float, float]:
    """In a forked process: (CPU seconds, wall seconds) of decoding and embedding the slices
    ``slices`` of ``_SHARED["bounds"]`` in turn, as a worker process of the stage does, one torch thread."""
    from zutiscli.pipeline.index import _collate

    dataset, backbone, bounds = _SHARED["dataset"], _SHARED["backbone"], _SHARED["bounds"]
    torch.set_num_threads(1)
    start, wall = time.process_time(), time.perf_counter()
    with torch.inference_mode():
        for number in slices:
            _, tensor, _, _ = _collate([dataset[item] for item in range(bounds[number], bounds[number + 1])])
            backbone.encode_images(tensor).numpy().astype(np.float16)
    return time.process_time() - start, time.perf_counter() - wall


def work_all_cores(dataset, backbone, slice_size: int, cores: int) -> tuple[float, float]:
    """The stage's work with nothing else: ``cores`` forked processes at once, each decoding and
    embedding its share of the slices in turn (one torch thread), nothing sent back. Returns CPU
    seconds per image and wall images/s (process start left out)."""
    from zutiscli.pipeline.index import _slice_bounds

    _SHARED.update(dataset=dataset, backbone=backbone, bounds=_slice_bounds(len(dataset), cores, slice_size))
    shares = [list(range(first, len(_SHARED["bounds"]) - 1, cores)) for first in range(cores)]
    with multiprocessing.get_context("fork").Pool(cores) as pool:
        pool.map(_noop, range(cores))  # started before the clock
        results = pool.map(_work_share, shares, chunksize=1)
    return sum(cpu for cpu, _ in results) / len(dataset), len(dataset) / max(wall for _, wall in results)


def _model_share(share: list[int]) -> tuple[float, float]:
    """In a forked process: (CPU seconds, wall seconds) of the model on the slices ``share`` of
    ``_SHARED["slices"]``, one torch thread."""
    backbone, slices = _SHARED["backbone"], _SHARED["slices"]
    torch.set_num_threads(1)
    with torch.inference_mode():
        backbone.encode_images(slices[share[0]] if share else slices[0])  # warm-up
        start, wall = time.process_time(), time.perf_counter()
        for number in share:
            backbone.encode_images(slices[number])
        return time.process_time() - start, time.perf_counter() - wall


def model_all_cores(backbone, tensors: torch.Tensor, slice_size: int, cores: int) -> tuple[float, float]:
    """The model in ``cores`` forked processes at once, one torch thread each, each on its share of
    the stage's slices (at most ``slice_size`` images): (CPU seconds per image, wall images/s from
    the first slice to the last process's end, warm-up and process start left out)."""
    from zutiscli.pipeline.index import _slice_bounds

    bounds = _slice_bounds(len(tensors), cores, slice_size)  # as the stage cuts them: every process ends together
    _SHARED["backbone"] = backbone
    _SHARED["slices"] = [tensors[first:last] for first, last in zip(bounds, bounds[1:])]
    shares = [list(range(first, len(_SHARED["slices"]), cores)) for first in range(cores)]
    with multiprocessing.get_context("fork").Pool(cores) as pool:
        pool.map(_noop, range(cores))  # started before the clock
        results = pool.map(_model_share, shares, chunksize=1)
    return sum(cpu for cpu, _ in results) / len(tensors), len(tensors) / max(wall for _, wall in results)


def _noop(_: int) -> None:
    return None


def _spin(loops: int) -> float:
    """CPU seconds of a pure-Python loop of ``loops`` steps: arithmetic on a few objects, which
    touches no memory beyond the core's own caches."""
    start, total = time.process_time(), 0
    for step in range(loops):
        total += step * step % 7
    return time.process_time() - start


def host_tax(cores: int, loops: int = 10_000_000) -> float:
    """How much more CPU time the same work costs when ``cores`` processes run it at once than when
    one runs it with the other cores idle: the ratio of :func:`_spin`'s CPU seconds, all cores at
    once (their mean) over one alone. Work that shares no cache or memory: what is left is the
    machine's own (clock boost, a virtual machine's host, hyper-threads)."""
    with multiprocessing.get_context("fork").Pool(cores) as pool:
        pool.map(_noop, range(cores))  # started before the clock
        alone = pool.apply(_spin, (loops,))
        together = pool.map(_spin, [loops] * cores, chunksize=1)
    return statistics.mean(together) / alone


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
    return {"rate": result.images_per_second, "seconds": extra["embed_seconds"], "images": result.embedded,
            "cpu": extra["embed_cpu_seconds"] / max(1, result.embedded),
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
    """One ``build_index`` run with the CPU time of each kind of work inside it measured per thread
    (``time.thread_time``), in this process and in its worker processes alike (the totals are
    shared memory the forked workers add to): decoding (an image read, hashed, decoded and
    preprocessed), the model (a slice's forward pass), and the main thread during the loop (starting
    the workers, taking their results, records, chunk commits but the last). Seconds per image."""
    import zutiscli.engine.ordered_forward as ordered_forward
    import zutiscli.pipeline.index as index_module

    totals = {kind: multiprocessing.get_context("fork").Value("d", 0.0) for kind in ("decode", "model")}

    def timed(kind: str, function: Callable) -> Callable:
        def run(*args):
            start = time.thread_time()
            try:
                return function(*args)
            finally:
                with totals[kind].get_lock():
                    totals[kind].value += time.thread_time() - start
        return run

    def slices_timing(self, files, bounds, embed):
        made(self, files, bounds, timed("model", embed))

    main_thread = [0.0]

    def loop_timing(*args):  # the main thread from the loop's start to its last batch
        start = time.thread_time()
        try:
            yield from embedded(*args)
        finally:
            main_thread[0] = time.thread_time() - start

    read, forward, made = index_module._ImageFiles.__getitem__, ordered_forward._run, index_module._EmbeddedSlices.__init__
    embedded = index_module._embedded
    index_module._ImageFiles.__getitem__ = timed("decode", read)
    ordered_forward._run = timed("model", forward)
    index_module._EmbeddedSlices.__init__ = slices_timing
    index_module._embedded = loop_timing
    out = Path(tempfile.mkdtemp()) / "index"
    try:
        result = build_index(config, out)
    finally:
        index_module._ImageFiles.__getitem__, ordered_forward._run = read, forward
        index_module._EmbeddedSlices.__init__, index_module._embedded = made, embedded
        shutil.rmtree(out.parent, ignore_errors=True)
    count = max(1, result.embedded)
    return {"decode": totals["decode"].value / count, "model": totals["model"].value / count,
            "main thread": main_thread[0] / count}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--model", default="shapes-clip")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=IndexConfig.batch_size,
                        help="images per batch (default: zutis index's --batch-size)")
    parser.add_argument("--workers", type=int, default=None, help="decoding threads or processes (default: as zutis index)")
    parser.add_argument("--threads", type=int, default=None, help="model threads on CPU (default: as zutis index)")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "zutis-bench-index-jpegs")
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds of (t_decode, t_model, each variant of the stage); medians are reported")
    parser.add_argument("--decode-rounds", type=int, default=3, help="passes of each decoding path; the best is kept")
    parser.add_argument("--compare-decoders", action="store_true",
                        help="also time the JPEG decoders at hand (PIL draft, PIL full, torchvision, simplejpeg)")
    parser.add_argument("--split", action="store_true",
                        help="also run the stage once more with each kind of work's CPU time measured inside it")
    parser.add_argument("--compare-threads", action="store_true",
                        help="also run the stage with decoding threads and model threads (--decode-in threads)")
    parser.add_argument("--steady", action="store_true",
                        help="also run the stage on the first quarter of the images in each round: the rate at "
                             "scale (the images beyond the quarter over the time they added) and the run's fixed cost")
    parser.add_argument("--host-tax", action="store_true",
                        help="also measure in each round how much more CPU a pure-Python loop costs on all cores at "
                             "once than on one alone")
    args = parser.parse_args()
    if args.steady and args.images // 4 <= args.batch_size:
        parser.error(f"--steady needs a first quarter of more than one batch: --images {4 * (args.batch_size + 1)} "
                     f"or more (the stage decodes a batch or less in its own process)")

    paths = make_images(args.dir, args.images)
    device = resolve_device(args.device)
    dtype = resolve_precision(args.precision, device)
    torch.manual_seed(0)
    backbone = load_backbone(ModelSpec(args.model, "none"), device=device, dtype=dtype)
    weights = Path(tempfile.mkdtemp()) / "weights.pt"
    save_weights(backbone, weights)
    listing = weights.parent / "images.txt"  # one input, as a cluster job's --from-list
    listing.write_text("".join(f"{path.resolve()}\n" for path in paths), encoding="utf-8")
    config = IndexConfig(from_list=str(listing), model=args.model, pretrained=str(weights),
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
    if args.compare_decoders:
        print("JPEG decoders, CPU per image (one thread, bytes in memory; decoding only):")
        jpeg_decoders(paths, size, args.decode_rounds)

    # the model: CPU per image on one thread, then the ceiling
    # the stage cuts each batch in one slice per worker process (or per model thread)
    in_processes = decode_in == "processes" and device.type == "cpu"
    slice_size = -(-args.batch_size // max(1, workers if in_processes else threads))
    if device.type != "cpu":
        model_ceiling = ceiling(backbone, tensors, args.batch_size, 0, None)
        print(f"(a) model ceiling        {model_ceiling:8.1f} images/s")
        runs = [stage_run(config) for _ in range(args.repeats)]
        print(describe_runs("zutis index (e2e)", runs))
        e2e = statistics.median(r["rate"] for r in runs)
        print(f"ratio e2e / (a)          {e2e / model_ceiling:8.2f}   target >= 0.95 where the model dominates")
        shutil.rmtree(weights.parent, ignore_errors=True)
        return 0

    thread_way = ceiling(backbone, tensors, args.batch_size, cores, None)
    torch_way = ceiling(backbone, tensors, args.batch_size, cores, intra_op=cores)
    _, process_way = model_all_cores(backbone, tensors, slice_size, cores)
    model_ceiling = max(thread_way, torch_way, process_way)
    print(f"(a) model ceiling        {model_ceiling:8.1f} images/s   (slices of {slice_size} in {cores} processes "
          f"{process_way:.1f}, on {cores} threads {thread_way:.1f}; whole batches on {cores} torch threads "
          f"{torch_way:.1f})")

    # rounds: the bound's t_decode and t_model and each variant of the stage, one after the other, so
    # that a change of load touches them alike; each round's ratio uses that round's bound
    variants = {"zutis index (e2e)": config}
    if args.compare_threads:
        variants["decoding threads"] = replace(config, decode_in="threads")
    if args.steady:
        quarter = weights.parent / "quarter.txt"
        quarter.write_text("".join(f"{path.resolve()}\n" for path in paths[:len(paths) // 4]), encoding="utf-8")
        variants["first quarter"] = replace(config, from_list=str(quarter))
    taxes = []
    runs: dict[str, list[dict]] = {label: [] for label in variants}
    bounds, decodes, models, busy, busy_walls = [], [], [], [], []
    for _ in range(args.repeats):
        with torch_threads(1):
            decodes.append(cpu_per_item({"chosen": lambda path: chosen[number[path]]}, paths, 1)["chosen"])
        models.append(model_cpu(backbone, tensors, slice_size))
        bounds.append(cores / (decodes[-1] + models[-1]))
        cpu, wall = work_all_cores(chosen, backbone, slice_size, cores)
        busy.append(cpu)
        busy_walls.append(wall)
        for label, variant in variants.items():
            runs[label].append(stage_run(variant))
        if args.host_tax:
            taxes.append(host_tax(cores))
    t_model, t_decode, t_busy = statistics.median(models), statistics.median(decodes), statistics.median(busy)
    busy_bounds = [cores / t for t in busy]
    print(f"model, CPU per image (one thread, slices of {slice_size})      {t_model * 1000:7.3f} ms   (median of "
          f"{args.repeats} rounds; decoding {t_decode * 1000:.3f} ms)")
    print(f"(b) bound N / (t_decode + t_model), N = {cores}   {statistics.median(bounds):8.1f} images/s   (median; rounds "
          f"{', '.join(f'{b:.1f}' for b in bounds)})")
    print(f"(b') bound N / t, t measured with {cores} cores at once, each decoding and embedding its slices in turn and "
          f"nothing else: t {t_busy * 1000:.3f} ms ({t_busy / (t_decode + t_model):.2f} x t_decode + t_model) -> "
          f"{statistics.median(busy_bounds):.1f} images/s (that work's wall rate {statistics.median(busy_walls):.1f})")
    for label in variants:
        print(describe_runs(label, runs[label]))
    ours = runs["zutis index (e2e)"]
    ratios = [run["rate"] / bound for run, bound in zip(ours, bounds)]
    busy_ratios = [run["rate"] / bound for run, bound in zip(ours, busy_bounds)]
    e2e = statistics.median(run["rate"] for run in ours)
    e2e_cpu = statistics.median(run["cpu"] for run in ours)
    print(f"ratio e2e / (a)          {e2e / model_ceiling:8.2f}   target >= 0.95 where the model dominates")
    print(f"ratio e2e / (b)          {statistics.median(ratios):8.2f}   target >= 0.95   (median of the rounds' ratios "
          f"{', '.join(f'{r:.2f}' for r in ratios)})")
    print(f"ratio e2e / (b')         {statistics.median(busy_ratios):8.2f}   (rounds "
          f"{', '.join(f'{r:.2f}' for r in busy_ratios)})")
    print(f"work share               {(t_decode + t_model) / e2e_cpu:8.2f}   (t_decode + t_model) / e2e CPU per image "
          f"(with (b')'s t: {t_busy / e2e_cpu:.2f})")
    if args.steady:
        # the same stage at two sizes in each round: what the images beyond the quarter added is the
        # rate a long run keeps; the rest of the time is what every run pays once (workers started, joined)
        steady = [(whole["images"] - part["images"]) / (whole["seconds"] - part["seconds"])
                  for whole, part in zip(ours, runs["first quarter"])]
        fixed = [whole["seconds"] - whole["images"] / rate for whole, rate in zip(ours, steady)]
        print(f"at scale                 {statistics.median(steady):8.1f} images/s   ({len(paths) - len(paths) // 4} images "
              f"beyond the first {len(paths) // 4} over the time they added; rounds "
              f"{', '.join(f'{r:.1f}' for r in steady)}); fixed cost of a run {statistics.median(fixed) * 1000:.0f} ms")
        print(f"ratio at scale / (b)     {statistics.median(r / b for r, b in zip(steady, bounds)):8.2f}   (rounds "
              f"{', '.join(f'{r / b:.2f}' for r, b in zip(steady, bounds))}); / (b') "
              f"{statistics.median(r / b for r, b in zip(steady, busy_bounds)):.2f}")
    if taxes:
        print(f"host tax                 {statistics.median(taxes):8.2f}   CPU of a pure-Python loop on {cores} cores at "
              f"once / on one alone (rounds {', '.join(f'{t:.2f}' for t in taxes)}): e2e / (b) cannot pass "
              f"1 / tax = {1 / statistics.median(taxes):.2f}")
    if args.split:
        split = stage_split(config)
        print(f"inside the stage, CPU per image: decoding {split['decode'] * 1000:.3f} ms ({split['decode'] / t_decode:.2f} "
              f"x alone), model {split['model'] * 1000:.3f} ms ({split['model'] / t_model:.2f} x alone), main thread "
              f"{split['main thread'] * 1000:.3f} ms (starting workers, taking results, records, commits)")
    for label in [label for label in variants if label not in ("zutis index (e2e)", "first quarter")]:
        theirs = [run["rate"] for run in runs[label]]
        per_round = [run["rate"] / other for run, other in zip(ours, theirs)]
        print(f"ratio e2e / {label:22s} {statistics.median(per_round):5.2f}   (median of the rounds; theirs "
              f"{statistics.median(r / b for r, b in zip(theirs, bounds)):.2f} x (b), work share "
              f"{(t_decode + t_model) / statistics.median(run['cpu'] for run in runs[label]):.2f})")
    shutil.rmtree(weights.parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
