"""Benchmark `zutis predict` end to end against the model-forward ceiling, with its time split.

Run by hand (not a test):

    python benchmarks/bench_predict.py                                    # 100 scenes of 256 x 256, task all
    python benchmarks/bench_predict.py --images 20 --size 128 --task semantic,instance,all
    python benchmarks/bench_predict.py --threads 1 --clock cpu --batch-size 1,8 --parts
    python benchmarks/bench_predict.py --checkpoint runs/train/3 --device cuda --precision fp16

Setup (untimed, in ``--dir`` or a temporary directory): ``--images`` shapes-world scenes of
``--size`` pixels written by ``write_synth`` (``zutis synth scenes``; all of one size, so the engine
can batch them), and a checkpoint. With ``--checkpoint`` (a ``zutis train`` run directory or a
model file) that model is used. Without it a ZUTIS model is built with random initialisation
(seeded) over ``--model`` (default ``shapes-clip``, ``--pretrained builtin`` when the package ships
its weights, else ``none``) with the decoder sizes given here (default: the demo's, 20 queries and
3 layers), and saved exactly as ``zutis train`` saves its final ``model.pt``. A random model's
masks are noise, so it usually finds more instances than a trained one would; the printed
instances per image tell how much post-processing had to do.

Measured, interleaved in one process so that background load hits every variant alike, best of
``--repeats``, for each ``--batch-size`` (a comma-separated list, e.g. ``1,8``):

- (a) the model-forward ceiling: every scene decoded and resized for the model as the engine does
  it (:func:`zutiscli.engine.predict.resize_for_model`), held in memory, then the predictor that
  ``predict`` builds (:func:`zutiscli.pipeline.predict.open_engine`) run on stacks of
  ``batch`` inputs, ``Predictor.forward`` under ``torch.inference_mode``, synchronised on CUDA;
  images/s;
- (b) ``predict()`` on the scene folder for each ``--task`` at that ``batch_size``, the whole call
  (checkpoint loading, text embeddings, the engine's loop with its decode workers and writer
  thread, the JSON files, the fsyncs and the manifest); images/s, and the engine's own
  :class:`zutiscli.engine.predict.Timing` split.

The split, ``--clock wall`` (default): the engine's wall seconds; ``decode`` is the main thread's
wait for decoded images, ``write`` is the writer thread's time, which overlaps the main thread's,
so the parts can add up to more than the call. ``--clock cpu``: the engine's clock is swapped
during the call for ``time.thread_time`` (CPU seconds of the thread that reads it; every interval
the engine times starts and ends on one thread), so ``model`` and ``post`` are the main thread's
CPU seconds and ``write`` the writer thread's. The call's total is then this process's CPU time
(user + system, all threads) plus that of the decode worker processes, which the DataLoader
joins when the loop ends (``RUSAGE_CHILDREN``), shown as ``workers``; ``setup`` is the process's
CPU time outside the four parts (loading, text embeddings, the final files, the DataLoader's
own threads). With more than one torch thread the model's other threads land in ``setup``: use
``--threads 1`` with ``--clock cpu``. CPU seconds do not see waits for the disk (fsync) or for a
core, which is the point on a busy machine.

Printed: e2e / ceiling (images/s of (b) over (a), wall seconds; target >= 0.85 on a GPU), the same
ratio in CPU seconds, the non-model fraction of (b), ``1 - model / total`` (target <= 15% on
CPUs), with the split of the fastest run and the split rebuilt from each part's best over the
repeats ("part minima"), and, with two batch sizes or more, each one's images/s over the first's.
``--parts`` adds, per image (CPU ms of one thread, on the ceiling's outputs), what each step of
post-processing and writing costs on its own: the semantic map (and its argmax in torch and in
numpy), the instances, RLE encoding, panoptic merging and its PNG, the semantic PNG, the overlay
and its JPEG, and the wall time of one fsync per semantic PNG (as the writer now does them at
the end). On CUDA the engine synchronises after each batch's forward pass, so its split is
meaningful there too.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

TARGET_GPU_RATIO = 0.85
TARGET_CPU_NON_MODEL = 0.15
SPLIT_KEYS = ("decode", "model", "post", "write")


from _timing import Timer as _Timer, cpu_seconds as _cpu_seconds  # noqa: E402 (benchmarks/ is on sys.path)


def _children_cpu_seconds() -> float:
    """User + system CPU time of this process's finished, joined child processes."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Run:
    """One timed run: wall and CPU seconds (this process; ``workers``: its joined children),
    ``predict``'s own split (empty for the ceiling), and the per-batch forward times (ceiling only)
    and instances found (``predict`` only)."""

    wall: float
    cpu: float
    workers: float = 0.0
    split: dict[str, float] = field(default_factory=dict)
    per_batch: list[float] = field(default_factory=list)
    instances: int = 0


# ---- setup --------------------------------------------------------------------------------------
def make_scenes(root: Path, args: argparse.Namespace) -> Path:
    """Write the scene folder with ``zutis synth scenes``; returns its ``images`` directory."""
    from zutiscli.pipeline.synth import SynthConfig, write_synth

    config = SynthConfig("scenes", args.images, seed=args.seed, size=args.size, image_format=args.format)
    return write_synth(config, root / "scenes") / "images"


def default_pretrained(model: str) -> str:
    """``builtin`` when the package ships weights for ``model``, else ``none`` (never a download)."""
    from zutiscli.models.clip import BUILTIN_DIR

    return "builtin" if (BUILTIN_DIR / f"{model}.pt").is_file() else "none"


def make_checkpoint(root: Path, args: argparse.Namespace) -> Path:
    """A randomly initialised ZUTIS model saved as ``zutis train`` saves its final file."""
    from zutiscli.artefacts.checkpoint import save_checkpoint
    from zutiscli.artefacts.runs import FINAL
    from zutiscli.models.clip import ModelSpec, load_backbone
    from zutiscli.models.zutis import ZutisConfig, ZutisModel
    from zutiscli.shapes.world import SHAPES

    torch.manual_seed(args.seed)
    pretrained = args.pretrained or default_pretrained(args.model)
    backbone = load_backbone(ModelSpec(args.model, pretrained), device="cpu", dtype=torch.float32)
    config = ZutisConfig(
        backbone={"name": args.model, "pretrained": pretrained}, num_queries=args.queries,
        decoder_layers=args.decoder_layers, decoder_heads=args.decoder_heads, decoder_ffn=args.decoder_ffn,
        mlp_hidden=args.mlp_hidden,
    )
    model = ZutisModel(backbone, config)
    run_dir = root / "run"
    run_dir.mkdir()
    return save_checkpoint(run_dir / FINAL, {"config": model.config.to_dict(), "classes": list(SHAPES),
                                             "model": model.state_dict(), "iteration": 0})


# ---- (a) the model-forward ceiling ---------------------------------------------------------------
class Ceiling:
    """The scenes decoded and resized once, and the predictor ``predict`` would build, for timing
    bare forward passes."""

    def __init__(self, images: list[Path], config: Any, device: torch.device, dtype: torch.dtype):
        from zutiscli.data.images import load_image
        from zutiscli.pipeline.predict import open_engine

        self.engine, _, _ = open_engine(config, device, dtype, lambda message: None)
        self.predictor = self.engine.predictor
        self.rgb = [np.asarray(load_image(path, max_pixels=config.max_pixels)) for path in images]
        self.tensors = [self.engine.model_input(rgb) for rgb in self.rgb]
        self.device = device

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _batches(self, batch: int) -> list[torch.Tensor]:
        return [torch.stack(self.tensors[start:start + batch]) for start in range(0, len(self.tensors), batch)]

    def warm_up(self, batch: int, count: int = 2) -> None:
        """A few untimed forward passes (allocator, kernels, lazy initialisation)."""
        with torch.inference_mode():
            for stack in self._batches(batch)[:count]:
                self.predictor.forward(stack)
        self._sync()

    def run(self, batch: int) -> Run:
        """One timed pass over every image, ``batch`` images per forward pass."""
        stacks = self._batches(batch)  # stacking is the engine's work too, but kept out of the ceiling
        per_batch = []
        with _Timer() as timer:
            for stack in stacks:
                start = time.perf_counter()
                with torch.inference_mode():
                    self.predictor.forward(stack)
                self._sync()
                per_batch.append(time.perf_counter() - start)
        return Run(timer.wall, timer.cpu, per_batch=per_batch)

    def close(self) -> None:
        self.predictor.close()


# ---- (b) predict() end to end --------------------------------------------------------------------
class _ThreadClock:
    """Stands in for the ``time`` module inside ``zutiscli.engine.predict``: its ``perf_counter``
    reads the CPU seconds of the calling thread, so the engine's ``Timing`` comes out in CPU
    seconds per thread (main thread: decode wait, model, post; writer thread: write)."""

    perf_counter = staticmethod(time.thread_time)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def run_predict(config: Any, output: Path, clock: str) -> Run:
    """One ``predict()`` call into ``output`` (removed afterwards, untimed); its split is in wall
    seconds, or in per-thread CPU seconds when ``clock`` is ``"cpu"``."""
    import zutiscli.engine.predict as engine
    import zutiscli.pipeline.predict as stage

    if clock == "cpu":
        engine.time = _ThreadClock()
    children = _children_cpu_seconds()
    try:
        with _Timer() as timer:
            result = stage.predict(config, output)
    finally:
        engine.time = time
    workers = _children_cpu_seconds() - children
    if result.failed:
        raise SystemExit(f"predict failed on {len(result.failed)} image(s): {result.failed[:3]}")
    instances = sum(sum(image.counts.values()) for image in result.images)
    shutil.rmtree(output)
    return Run(timer.wall, timer.cpu, workers=workers, split=dict(result.timing), instances=instances)


# ---- the parts of post-processing and writing, one by one ----------------------------------------
def time_parts(ceiling: Ceiling, names: list[str], root: Path, count: int) -> dict[str, float]:
    """Per image, in CPU ms of this thread (``fsync``: wall ms), each step on its own, on the
    ceiling's first ``count`` images."""
    from PIL import Image

    from zutiscli.artefacts.labelmap import write_label_map
    from zutiscli.ops.instances import instances_from_queries, semantic_from_dense
    from zutiscli.ops.masks import encode_mask, rle_area, rle_bbox
    from zutiscli.ops.overlay import render_overlay
    from zutiscli.ops.panoptic import merge_panoptic, panoptic_to_rgb

    settings = ceiling.engine.settings
    text = ceiling.predictor.text
    folder = root / "parts"
    folder.mkdir(exist_ok=True)
    totals: dict[str, float] = {}

    def clocked(key: str, function: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.thread_time()
        value = function(*args, **kwargs)
        totals[key] = totals.get(key, 0.0) + time.thread_time() - start
        return value

    images = list(zip(ceiling.tensors, ceiling.rgb))[:count]
    for number, (tensor, rgb) in enumerate(images):
        with torch.inference_mode():
            raw = ceiling.predictor.forward(tensor[None])[0]
        size = rgb.shape[:2]
        probs, labels = clocked("semantic_from_dense", semantic_from_dense, raw.dense, text, size)
        tensor_probs = torch.from_numpy(probs)
        clocked("  argmax, torch", lambda: tensor_probs.argmax(dim=0).numpy())
        clocked("  argmax, numpy", lambda: probs.argmax(axis=0))
        found = clocked("instances_from_queries", instances_from_queries,
                        raw.mask_logits, raw.dense, text, mask_threshold=settings.mask_threshold,
                        class_temperature=settings.class_temperature, score_threshold=settings.score_threshold,
                        nms=settings.nms, iou_threshold=settings.iou_threshold, sigma=settings.sigma,
                        max_detections=settings.max_detections, output_size=size)

        def rle() -> None:
            for mask in found.masks:
                encoded = encode_mask(mask)
                rle_bbox(encoded), rle_area(encoded)

        clocked("RLE encoding (+ bbox, area)", rle)
        labels = labels.astype(np.int64)
        semantic_png = folder / f"{number}-semantic.png"
        clocked("semantic PNG", write_label_map, semantic_png, labels, fsync=False)
        start = time.perf_counter()
        with open(semantic_png, "rb") as handle:
            os.fsync(handle.fileno())
        totals["fsync of the semantic PNG (wall)"] = totals.get("fsync of the semantic PNG (wall)", 0.0) \
            + time.perf_counter() - start
        triple = (found.masks, found.scores, found.labels)
        segment_map, _ = clocked("panoptic merge", merge_panoptic, labels, triple, ignore_label=255)
        clocked("panoptic PNG", lambda: Image.fromarray(panoptic_to_rgb(segment_map)).save(
            folder / f"{number}-panoptic.png", format="PNG"))
        overlay = clocked("overlay (render)", render_overlay, rgb, names, labels, found.masks, found.labels,
                          found.scores)
        clocked("overlay (JPEG)", lambda: Image.fromarray(overlay).save(folder / f"{number}.jpg", format="JPEG",
                                                                        quality=90))
        totals["instances"] = totals.get("instances", 0) + len(found)
    shutil.rmtree(folder)
    return {key: (1000 * value if key != "instances" else value) / len(images) for key, value in totals.items()}


# ---- report --------------------------------------------------------------------------------------
def _split(run: Run, clock: str) -> dict[str, float]:
    """A run's parts in seconds of its clock: the engine's four, "workers" (CPU clock: decode
    workers' CPU seconds) and "setup" = the call's total minus the loop's parts."""
    parts = {key: run.split[key] for key in SPLIT_KEYS}
    if clock == "cpu":
        return parts | {"workers": run.workers, "setup": run.cpu - sum(parts.values())}
    return parts | {"workers": 0.0, "setup": run.wall - sum(parts.values())}


def report(args: argparse.Namespace, checkpoint: Path, device: torch.device, dtype: torch.dtype,
           classes: list[str], batches: list[int], ceiling: dict[int, list[Run]],
           runs: dict[tuple[str, int], list[Run]], load: tuple[float, float]) -> None:
    """Print the figures and the verdicts against the targets."""
    from zutiscli.models.device import precision_name

    images, clock = args.images, args.clock
    model_text = "given" if args.checkpoint else (
        f"{args.model}, pretrained {args.pretrained or default_pretrained(args.model)}, random init, "
        f"{args.queries} queries, {args.decoder_layers} decoder layers")
    print(f"zutis predict: {images} shapes-world scenes of {args.size}x{args.size} ({args.format}); "
          f"checkpoint {checkpoint} ({model_text}); {len(classes)} classes; device {device}, "
          f"{precision_name(dtype)}, torch threads {torch.get_num_threads()}; vis {'on' if args.vis else 'off'}"
          f"{', crf' if args.crf else ''}; best of {args.repeats}; load average {load[0]:.1f} -> {load[1]:.1f} "
          f"on {os.cpu_count()} CPUs")
    rates: dict[tuple[str, int], float] = {}
    ceiling_wall: dict[int, float] = {}
    ceiling_cpu: dict[int, float] = {}
    for batch in batches:
        best = min(ceiling[batch], key=lambda run: run.wall)
        ceiling_wall[batch] = best.wall
        ceiling_cpu[batch] = min(run.cpu for run in ceiling[batch])
        rates[("ceiling", batch)] = images / best.wall
        median_ms = 1000 * statistics.median(best.per_batch) / batch
        print(f"(a) model-forward ceiling, batch {batch}: {images / best.wall:.1f} images/s ({best.wall:.3f} s wall, "
              f"median {median_ms:.2f} ms per image; {ceiling_cpu[batch]:.3f} s cpu, "
              f"{1000 * ceiling_cpu[batch] / images:.2f} ms cpu per image); all passes "
              f"{', '.join(f'{run.wall:.3f}' for run in ceiling[batch])} s wall")
    print("(b) predict() end to end; cpu e2e/ceil = ceiling cpu s / predict cpu s (process + decode workers)")
    print(f"  {'task':9s} {'batch':>5s} {'wall s':>7s} {'img/s':>7s} {'e2e/ceil':>8s} {'cpu s':>7s} "
          f"{'cpu e2e/ceil':>12s} {'inst/img':>8s}  all wall s")
    for (task, batch), task_runs in runs.items():
        best = min(task_runs, key=lambda run: run.wall)
        cpu = min(run.cpu + run.workers for run in task_runs)
        rate = images / best.wall
        rates[(task, batch)] = rate
        print(f"  {task:9s} {batch:5d} {best.wall:7.3f} {rate:7.1f} {rate / rates[('ceiling', batch)]:8.2f} "
              f"{cpu:7.3f} {ceiling_cpu[batch] / cpu:12.2f} {best.instances / images:8.1f}  "
              f"{', '.join(f'{run.wall:.3f}' for run in task_runs)}")
    print(f"    split of predict() in {clock} seconds, % of the call's total; model/ceil = predict's own "
          f"model seconds over the ceiling pass's (same batch):")
    keys = (*SPLIT_KEYS, "workers", "setup")
    print(f"  {'task':9s} {'batch':>5s} {'from':12s} " + " ".join(f"{key:>7s}" for key in keys)
          + f" {'non-model':>9s} {'loop only':>9s} {'model/ceil':>10s}")
    verdicts = []
    for (task, batch), task_runs in runs.items():
        ceiling_model = ceiling_cpu[batch] if clock == "cpu" else ceiling_wall[batch]
        best = min(task_runs, key=lambda run: run.cpu + run.workers if clock == "cpu" else run.wall)
        minima = {key: min(_split(run, clock)[key] for run in task_runs) for key in keys}
        for source, parts in (("fastest run", _split(best, clock)), ("part minima", minima)):
            total = sum(parts.values())
            loop = total - parts["setup"]
            print(f"  {task:9s} {batch:5d} {source:12s} " + " ".join(f"{100 * parts[key] / total:6.1f}%" for key in keys)
                  + f" {100 * (1 - parts['model'] / total):8.1f}% {100 * (1 - parts['model'] / loop):8.1f}%"
                  f" {parts['model'] / ceiling_model:10.2f}")
        rate = rates[(task, batch)]
        non_model = 1.0 - minima["model"] / sum(minima.values())
        if device.type == "cuda":
            ratio = rate / rates[("ceiling", batch)]
            verdicts.append(f"{task} batch {batch}: e2e/ceiling {ratio:.2f} (target >= {TARGET_GPU_RATIO}: "
                            f"{'ok' if ratio >= TARGET_GPU_RATIO else 'MISSED'})")
        else:
            verdicts.append(f"{task} batch {batch}: non-model {100 * non_model:.0f}% "
                            f"(target <= {100 * TARGET_CPU_NON_MODEL:.0f}%: "
                            f"{'ok' if non_model <= TARGET_CPU_NON_MODEL else 'MISSED'})")
    if len(batches) > 1:
        first = batches[0]
        print(f"  images/s over batch {first}'s (same run):")
        for name in ("ceiling", *dict.fromkeys(task for task, _ in runs)):
            print(f"  {name:9s} " + ", ".join(
                f"batch {batch}: {rates[(name, batch)]:.1f} images/s = {rates[(name, batch)] / rates[(name, first)]:.2f}x"
                for batch in batches))
    print("targets (" + ("GPU: e2e >= 0.85 x ceiling" if device.type == "cuda" else
                         "CPU: everything but the model <= 15% of the total, part minima") + "): "
          + "; ".join(verdicts))


def main() -> None:
    from zutiscli.pipeline.predict import TASKS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100, help="shapes-world scenes to predict on")
    parser.add_argument("--size", type=int, default=256, help="side of the square scenes in pixels")
    parser.add_argument("--format", default="png", choices=["png", "jpg"], help="file format of the scenes")
    parser.add_argument("--checkpoint", help="a trained run directory or model.pt (default: a random model)")
    parser.add_argument("--model", default="shapes-clip", help="backbone of the random model")
    parser.add_argument("--pretrained", default=None,
                        help="backbone weights of the random model (default: builtin if shipped, else none)")
    parser.add_argument("--queries", type=int, default=20, help="decoder queries of the random model")
    parser.add_argument("--decoder-layers", type=int, default=3)
    parser.add_argument("--decoder-heads", type=int, default=4)
    parser.add_argument("--decoder-ffn", type=int, default=512)
    parser.add_argument("--mlp-hidden", type=int, default=128)
    parser.add_argument("--classes", default="circle,square,triangle,star,cross,ring",
                        help="comma-separated class names given to predict")
    parser.add_argument("--task", default="all",
                        help=f"comma-separated tasks, each timed on its own ({', '.join(TASKS)})")
    parser.add_argument("--batch-size", default="1",
                        help="comma-separated batch sizes, each timed on its own (e.g. 1,8; predict --batch-size)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--max-size", type=int, default=None, help="predict --max-size")
    parser.add_argument("--no-vis", dest="vis", action="store_false", help="predict --no-vis (no overlay JPEGs)")
    parser.add_argument("--crf", action="store_true", help="predict --crf")
    parser.add_argument("--loader-workers", type=int, default=None, help="predict --loader-workers (default: its own)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each variant; the fastest counts")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                        help="clock of the engine's split: wall seconds, or each thread's CPU seconds")
    parser.add_argument("--parts", type=int, nargs="?", const=20, default=0, metavar="N",
                        help="also time each step of post-processing and writing on its own, over N images (20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the scenes and of the random model")
    parser.add_argument("--dir", type=Path, default=None,
                        help="working directory, kept (must be empty or absent; default: a temp dir, removed)")
    args = parser.parse_args()
    tasks = [task.strip() for task in args.task.split(",") if task.strip()]
    unknown = [task for task in tasks if task not in TASKS]
    if unknown or not tasks:
        parser.error(f"--task: {', '.join(unknown) or 'nothing given'}; choose from {', '.join(TASKS)}")
    try:
        batches = [int(value) for value in args.batch_size.split(",") if value.strip()]
    except ValueError:
        parser.error(f"--batch-size {args.batch_size!r}: comma-separated integers")
    if not batches or min(batches) < 1:
        parser.error("--batch-size: give batch sizes >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)

    from zutiscli.artefacts.runs import resolve_checkpoint
    from zutiscli.data.classes import ClassQuery
    from zutiscli.models.device import resolve_device, resolve_precision
    from zutiscli.pipeline.predict import PredictConfig

    temporary = args.dir is None
    root = Path(tempfile.mkdtemp(prefix="bench_predict_")) if temporary else args.dir
    if not temporary:
        if root.exists() and any(root.iterdir()):
            parser.error(f"--dir {root}: not empty")
        root.mkdir(parents=True, exist_ok=True)
    try:
        images_dir = make_scenes(root, args)
        images = sorted(images_dir.iterdir())
        checkpoint = resolve_checkpoint(args.checkpoint) if args.checkpoint else make_checkpoint(root, args)
        device = resolve_device(args.device)
        dtype = resolve_precision(args.precision, device)
        classes = [name.strip() for name in args.classes.split(",") if name.strip()]
        configs = {
            (task, batch): PredictConfig(
                inputs=[str(images_dir)], classes=tuple(ClassQuery(name, name) for name in classes),
                checkpoint=str(checkpoint), task=task, device=args.device, precision=args.precision,
                max_size=args.max_size, crf=args.crf, vis=args.vis, batch_size=batch,
                loader_workers=args.loader_workers)
            for task in tasks for batch in batches
        }
        ceiling = Ceiling(images, configs[(tasks[0], batches[0])], device, dtype)
        for batch in batches:
            ceiling.warm_up(batch)
        ceiling_runs: dict[int, list[Run]] = {batch: [] for batch in batches}
        runs: dict[tuple[str, int], list[Run]] = {key: [] for key in configs}
        load_before = os.getloadavg()[0]
        for repeat in range(max(1, args.repeats)):
            for batch in batches:
                ceiling_runs[batch].append(ceiling.run(batch))
            for (task, batch), config in configs.items():
                runs[(task, batch)].append(run_predict(config, root / "out" / f"{task}-{batch}-{repeat}", args.clock))
            print(f"repeat {repeat + 1}: " + ", ".join(f"ceiling b{batch} {ceiling_runs[batch][-1].wall:.3f} s"
                                                        for batch in batches) + ", "
                  + ", ".join(f"{task} b{batch} {runs[(task, batch)][-1].wall:.3f} s" for task, batch in configs),
                  file=sys.stderr)
        load_after = os.getloadavg()[0]
        report(args, checkpoint, device, dtype, classes, batches, ceiling_runs, runs, (load_before, load_after))
        if args.parts:
            parts = time_parts(ceiling, classes, root, min(args.parts, len(images)))
            found = parts.pop("instances")
            print(f"parts, each on its own, per image over {min(args.parts, len(images))} images "
                  f"({found:.1f} instances per image), CPU ms of one thread unless marked wall:")
            for key, value in parts.items():
                print(f"  {key:36s} {value:8.2f} ms")
        ceiling.close()
    finally:
        if temporary:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
