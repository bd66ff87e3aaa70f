"""Benchmark `zutis evaluate` instance metrics: COCO-val-sized synthetic data, pycocotools vs faster-coco-eval.

Builds a COCO-val-like ground truth (default 5,000 images of 480 x 640 with 3-12 polygon
instances over 80 categories) and detections (default 20 per image: jittered copies of the
ground truth with some class errors, plus random false positives, RLE masks, random scores), then
times:

1. plain pycocotools: ``COCO`` + ``loadRes`` + ``COCOeval(segm)`` evaluate / accumulate / summarize;
2. ``zutiscli.engine.evaluator.coco_evaluate`` with the pycocotools backend (same work, plus copies);
3. the same with ``--backend faster-coco-eval`` (when installed), checking the 12 numbers agree;
4. the full default ``zutis evaluate`` instance block (segm + bbox, class-aware + agnostic) with both.

Usage: python benchmarks/bench_evaluate.py [--images 5000] [--dets 20] [--skip-full]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils


def _polygon(rng: np.random.Generator, cx: float, cy: float, rx: float, ry: float) -> list[float]:
    angles = np.sort(rng.uniform(0, 2 * np.pi, size=10))
    radius = rng.uniform(0.7, 1.0, size=10)
    xs = cx + rx * radius * np.cos(angles)
    ys = cy + ry * radius * np.sin(angles)
    return np.stack([xs, ys], axis=1).reshape(-1).round(2).tolist()


def make_data(images: int, dets: int, seed: int = 0, height: int = 480, width: int = 640):
    """(gt dict with polygon masks, results list with RLE masks)."""
    rng = np.random.default_rng(seed)
    categories = [{"id": i + 1, "name": f"class {i + 1}", "supercategory": "thing"} for i in range(80)]
    gt_images, annotations, results = [], [], []
    ann_id = 1
    for image_id in range(1, images + 1):
        gt_images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": width, "height": height})
        objects = []
        for _ in range(int(rng.integers(3, 13))):
            rx, ry = rng.uniform(5, 150, size=2)
            cx, cy = rng.uniform(rx, width - rx), rng.uniform(ry, height - ry)
            category = int(rng.integers(1, 81))
            poly = _polygon(rng, cx, cy, rx, ry)
            rle = mask_utils.merge(mask_utils.frPyObjects([poly], height, width))
            annotations.append({"id": ann_id, "image_id": image_id, "category_id": category, "segmentation": [poly],
                                "area": float(mask_utils.area(rle)), "bbox": mask_utils.toBbox(rle).tolist(),
                                "iscrowd": 0})
            objects.append((cx, cy, rx, ry, category))
            ann_id += 1
        for k in range(dets):
            if k < len(objects):
                cx, cy, rx, ry, category = objects[k]
                cx, cy = cx + rng.normal(0, 4), cy + rng.normal(0, 4)
                rx, ry = rx * rng.uniform(0.8, 1.2), ry * rng.uniform(0.8, 1.2)
                if rng.random() < 0.2:
                    category = int(rng.integers(1, 81))
            else:
                rx, ry = rng.uniform(5, 120, size=2)
                cx, cy = rng.uniform(rx, width - rx), rng.uniform(ry, height - ry)
                category = int(rng.integers(1, 81))
            rle = mask_utils.merge(mask_utils.frPyObjects([_polygon(rng, cx, cy, rx, ry)], height, width))
            results.append({"image_id": image_id, "category_id": category,
                            "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
                            "bbox": mask_utils.toBbox(rle).tolist(), "score": float(rng.random())})
    return {"images": gt_images, "annotations": annotations, "categories": categories}, results


def plain_pycocotools(gt_path: Path, results_path: Path, iou_type: str = "segm") -> tuple[float, list[float]]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(gt_path))
        dt = coco.loadRes(str(results_path))
        evaluator = COCOeval(coco, dt, iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return time.perf_counter() - start, [float(v) for v in evaluator.stats]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--dets", type=int, default=20, help="detections per image")
    parser.add_argument("--skip-full", action="store_true", help="skip the full segm+bbox x aware+agnostic run")
    args = parser.parse_args()

    from zutiscli.engine.evaluator import AP_NAMES, coco_evaluate
    from zutiscli.pipeline.evaluate import EvaluateConfig, evaluate

    start = time.perf_counter()
    gt, results = make_data(args.images, args.dets)
    print(f"data: {len(gt['images'])} images, {len(gt['annotations'])} GT instances, {len(results)} detections "
          f"({time.perf_counter() - start:.1f} s to build)")
    try:
        import faster_coco_eval  # noqa: F401

        fast_available = True
    except ImportError:
        fast_available = False
    with tempfile.TemporaryDirectory() as tmp:
        gt_path, results_path = Path(tmp) / "gt.json", Path(tmp) / "results.json"
        gt_path.write_text(json.dumps(gt))
        results_path.write_text(json.dumps(results))

        seconds, reference = plain_pycocotools(gt_path, results_path)
        print(f"plain pycocotools (segm, class-aware): {seconds:.1f} s  AP={reference[0]:.4f}")

        start = time.perf_counter()
        ours = coco_evaluate(gt, results, "segm")
        seconds = time.perf_counter() - start
        same = [ours[n] for n in AP_NAMES] == [None if v < 0 else v for v in reference]
        print(f"zutis coco_evaluate, pycocotools backend: {seconds:.1f} s  identical to plain: {same}")

        if fast_available:
            start = time.perf_counter()
            fast = coco_evaluate(gt, results, "segm", backend="faster-coco-eval")
            seconds = time.perf_counter() - start
            diffs = [abs((fast[n] or -1) - (ours[n] or -1)) for n in AP_NAMES]
            print(f"zutis coco_evaluate, faster-coco-eval backend: {seconds:.1f} s  max |diff| of the 12 numbers: "
                  f"{max(diffs):.2e}; identical: {max(diffs) == 0}")
        else:
            print("faster-coco-eval not installed: pip install faster-coco-eval")

        if not args.skip_full:
            for backend in ("pycocotools", "faster-coco-eval") if fast_available else ("pycocotools",):
                start = time.perf_counter()
                evaluate(EvaluateConfig(pred=str(results_path), gt=str(gt_path), backend=backend),
                         Path(tmp) / f"out-{backend}")
                print(f"zutis evaluate (segm+bbox x aware+agnostic), {backend}: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
