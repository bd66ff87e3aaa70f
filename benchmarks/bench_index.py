"""Benchmark `zutis index` end to end against the model's ceiling and the no-waste bound.

Run by hand (not a test):

    python benchmarks/bench_index.py --images 500 --model ViT-B-16 --precision auto

It writes (once, cached in --dir) a folder of 640x480 JPEGs from the shapes world, then measures in
one process, on the same cores:

- t_decode: reading + decoding + preprocessing one image (what a DataLoader worker does), serially;
- (a) the model-forward ceiling: the same model, precision and batch size on pre-decoded tensors;
- (b) the no-waste bound 1 / (t_model + t_decode): what a CPU that must both decode and run the
  model could do with zero overhead;
- the stage itself (`build_index`, loop time without model loading), and its ratio to (a) and (b).

Targets: on a GPU machine e2e >= 0.9 x (a); on CPUs where decoding and the model share the cores,
e2e >= 0.9 x (b). Weights are random (--pretrained none): speed does not depend on them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from zutiscli.models.clip import ModelSpec, load_backbone
from zutiscli.models.device import precision_name, resolve_device, resolve_precision
from zutiscli.pipeline.index import IndexConfig, _ImageFiles, build_index
from zutiscli.shapes.world import scene_sample


def make_images(directory: Path, count: int) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = directory / f"{index:05d}.jpg"
        if not path.exists():
            pixels = scene_sample(100, index, size=640).image[:480]
            Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def measure_decode(backbone, paths: list[Path]) -> float:
    dataset = _ImageFiles(paths, backbone.transform(), backbone.image_size[0], None)
    for item in range(min(10, len(paths))):  # warm the page cache and code paths
        dataset[item]
    start = time.perf_counter()
    for item in range(len(paths)):
        dataset[item]
    return (time.perf_counter() - start) / len(paths)


def measure_model(backbone, paths: list[Path], batch_size: int) -> float:
    dataset = _ImageFiles(paths, backbone.transform(), backbone.image_size[0], None)
    tensors = torch.stack([dataset[i][1] for i in range(len(paths))])
    with torch.inference_mode():
        backbone.encode_images(tensors[:batch_size])  # warm-up
        start = time.perf_counter()
        for first in range(0, len(tensors), batch_size):
            backbone.encode_images(tensors[first:first + batch_size])
    return (time.perf_counter() - start) / len(tensors)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default: as zutis index)")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "zutis-bench-index-jpegs")
    parser.add_argument("--repeats", type=int, default=1, help="end-to-end runs; the median is reported")
    args = parser.parse_args()

    paths = make_images(args.dir, args.images)
    device = resolve_device(args.device)
    dtype = resolve_precision(args.precision, device)
    torch.manual_seed(0)
    backbone = load_backbone(ModelSpec(args.model, "none"), device=device, dtype=dtype)
    weights = Path(tempfile.mkdtemp()) / "weights.pt"
    from zutiscli.models.clip import save_weights

    save_weights(backbone, weights)
    print(f"{len(paths)} JPEGs 640x480 | {args.model} {precision_name(dtype)} on {device} | "
          f"batch {args.batch_size} | {os.cpu_count()} cores | torch threads {torch.get_num_threads()}")

    t_decode = measure_decode(backbone, paths)
    t_model = measure_model(backbone, paths, args.batch_size)
    ceiling = 1.0 / t_model
    bound = 1.0 / (t_model + t_decode)
    print(f"t_decode  {t_decode * 1000:8.2f} ms/image  ({1 / t_decode:7.1f} images/s on one core)")
    print(f"(a) model ceiling        {ceiling:8.1f} images/s")
    print(f"(b) no-waste bound       {bound:8.1f} images/s")

    rates = []
    for _ in range(args.repeats):
        out = Path(tempfile.mkdtemp()) / "index"
        config = IndexConfig(sources=[str(args.dir)], model=args.model, pretrained=str(weights),
                             batch_size=args.batch_size, workers=args.workers, device=args.device,
                             precision=args.precision, chunk_size=1024)
        result = build_index(config, out)
        rates.append(result.images_per_second)
        shutil.rmtree(out.parent, ignore_errors=True)
    e2e = statistics.median(rates)
    print(f"zutis index (e2e)        {e2e:8.1f} images/s   (workers {result.extra['workers']}, "
          f"runs {', '.join(f'{r:.1f}' for r in rates)})")
    print(f"ratio e2e / (a)          {e2e / ceiling:8.2f}")
    print(f"ratio e2e / (b)          {e2e / bound:8.2f}   target >= 0.90 on CPU")
    shutil.rmtree(weights.parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
