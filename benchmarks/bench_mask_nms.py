"""Benchmark mask NMS: per-pair loop vs one dense IoU matmul vs IoU at the decoder's native resolution.

Run by hand (not a test):

    python benchmarks/bench_mask_nms.py --scenes 5 --proposals 100 --size 512 --factor 8

Proposals imitate a query decoder's output on shapes-world scenes: each of the ``--proposals``
masks is a shapes-world object re-rendered with its centre, size and rotation jittered, so most
objects get several overlapping near-duplicates (IoUs spread across the 0.3 threshold). With
``--source decoder`` (default) each proposal is what ZUTIS produces: a probability map on the
native grid (``size / factor``; here the rendered mask's cell coverage), binarised at 0.5 for the
native-grid masks and bilinearly upsampled to ``size`` then binarised for the full-resolution
masks (as ``instances_from_queries`` does). With ``--source rendered`` the full-resolution masks
are the sharp renderings themselves and the native-grid masks their pooled versions (harder: the
full-resolution masks carry detail the grid cannot see). Per scene, in one process on the same
cores:

- (i)   ``reference_mask_nms``: the literal definition, one full-resolution IoU per pair (numpy);
- (ii)  the IoU matrix alone by one dense float32 matmul at full resolution (``mask_iou_matrix``
        on float masks: torch ``A @ A.T``);
- (ii') ``mask_nms`` at full resolution: exact IoUs from bit-packed masks (AND + popcount);
- (iii) ``mask_nms`` on the masks at the decoder's native grid (``size / factor``, e.g. 64 x 64),
        i.e. NMS before upsampling (``instances_from_queries(..., nms_scale=1)``);
- (iii') the same on the native probability maps upsampled x2 (bilinear) and binarised, what
        ``instances_from_queries`` does by default (``nms_scale=2``), upsampling included;
- (iv)  ``mask_nms(..., downsample=factor)`` on the full-resolution masks (pooling included), with
        ``pooling="binary"`` and ``"soft"``.

Printed: best-of-``--repeats`` time per scene (median over scenes), ratios to (i) (targets: (iii)
>= 20x), and the keep-decision agreement with (i) over all proposals (target >= 99%); (ii') must
agree 100% (checked).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from zutiscli.ops.mask_nms import mask_iou_matrix, mask_nms, pool_masks, reference_mask_nms
from zutiscli.shapes.world import SHAPES, render_mask, scene_sample


def proposals(
    scene: int, count: int, size: int, factor: int, source: str
) -> tuple[np.ndarray, np.ndarray, torch.Tensor, np.ndarray, np.ndarray]:
    """Full-resolution ``(count, size, size)`` and native-grid bool masks, native probability maps
    ``(count, size / factor, size / factor)`` float32, scores and labels."""
    rng = np.random.default_rng(scene)
    sample = scene_sample(2024, scene, size=size, min_objects=6, max_objects=10)
    rendered, labels = [], []
    while len(rendered) < count:
        obj = sample.objects[int(rng.integers(len(sample.objects)))]
        jittered = dataclasses.replace(
            obj,
            cx=obj.cx + rng.normal(0.0, 0.12 * obj.size),
            cy=obj.cy + rng.normal(0.0, 0.12 * obj.size),
            size=obj.size * float(rng.uniform(0.75, 1.25)),
            rotation=obj.rotation + float(rng.normal(0.0, 10.0)),
        )
        mask = render_mask(jittered, size)
        if mask.any():
            rendered.append(mask)
            labels.append(SHAPES.index(obj.shape))
    full = np.stack(rendered)
    probs = torch.from_numpy(pool_masks(full, factor, binary=False))  # native-grid "probabilities"
    native = (probs > 0.5).numpy()
    if source == "decoder":
        full = (upsample(probs, factor) > 0.5).numpy()
    return full, native, probs, rng.uniform(0.05, 1.0, count), np.asarray(labels, dtype=np.int64)


def upsample(probs: torch.Tensor, scale: int) -> torch.Tensor:
    """Bilinear (``align_corners=False``) upsampling of ``(N, h, w)`` maps by ``scale``."""
    return F.interpolate(probs[None], scale_factor=scale, mode="bilinear", align_corners=False)[0]


def best_time(function: Callable[[], object], repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def decisions(keep: np.ndarray, count: int) -> np.ndarray:
    return np.isin(np.arange(count), keep)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenes", type=int, default=5)
    parser.add_argument("--proposals", type=int, default=100)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--factor", type=int, default=8, help="full size / native decoder mask size")
    parser.add_argument("--source", default="decoder", choices=["decoder", "rendered"])
    parser.add_argument("--method", default="hard", choices=["hard", "linear", "gaussian", "matrix"])
    parser.add_argument("--per-class", action="store_true", help="labels = object shape (per-class NMS)")
    parser.add_argument("--repeats", type=int, default=5, help="best-of repeats for the fast variants")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    names = [
        "(i) per-pair loop",
        "(ii) matmul IoU only",
        "(ii') full-res exact",
        "(iii) native grid",
        "(iii') native x2",
        "(iv) pool binary",
        "(iv) pool soft",
    ]
    times: dict[str, list[float]] = {name: [] for name in names}
    agree: dict[str, int] = {name: 0 for name in names}
    kept_reference = total = 0
    for scene in range(args.scenes):
        masks, native, probs, scores, labels = proposals(
            scene, args.proposals, args.size, args.factor, args.source
        )
        labels_or_none = labels if args.per_class else None
        options = dict(method=args.method)
        runs: dict[str, tuple[Callable[[], object], int]] = {
            names[0]: (lambda: reference_mask_nms(masks, scores, labels_or_none, **options), 1),
            names[1]: (
                lambda: mask_iou_matrix(masks.reshape(len(masks), -1).astype(np.float32)),
                args.repeats,
            ),
            names[2]: (lambda: mask_nms(masks, scores, labels_or_none, **options), args.repeats),
            names[3]: (lambda: mask_nms(native, scores, labels_or_none, **options), args.repeats),
            names[4]: (
                lambda: mask_nms(upsample(probs, 2) > 0.5, scores, labels_or_none, **options),
                args.repeats,
            ),
            names[5]: (
                lambda: mask_nms(masks, scores, labels_or_none, downsample=args.factor, **options),
                args.repeats,
            ),
            names[6]: (
                lambda: mask_nms(
                    masks, scores, labels_or_none, downsample=args.factor, pooling="soft", **options
                ),
                args.repeats,
            ),
        }
        results = {}
        for name, (run, repeats) in runs.items():
            seconds, results[name] = best_time(run, repeats)
            times[name].append(seconds)
        reference = decisions(results[names[0]][0], args.proposals)
        for name in names:
            if name != names[1]:
                agree[name] += int(np.sum(decisions(results[name][0], args.proposals) == reference))
        np.testing.assert_array_equal(results[names[2]][0], results[names[0]][0])
        np.testing.assert_allclose(results[names[2]][1], results[names[0]][1], atol=1e-5)
        kept_reference += int(reference.sum())
        total += args.proposals

    native_size = -(-args.size // args.factor)
    print(
        f"mask NMS ({args.method}{', per class' if args.per_class else ''}, {args.source} proposals): "
        f"{args.scenes} scenes x "
        f"{args.proposals} proposals at {args.size}x{args.size}, native grid {native_size}x{native_size}; "
        f"reference keeps {kept_reference}/{total}; torch threads {torch.get_num_threads()}"
    )
    base = statistics.median(times[names[0]])
    print(f"{'variant':22s} {'median s':>10s} {'x vs (i)':>9s} {'agreement':>10s}")
    for name in names:
        median = statistics.median(times[name])
        agreement = "-" if name == names[1] else f"{agree[name] / total:.2%}"
        print(f"{name:22s} {median:10.4f} {base / median:9.1f} {agreement:>10s}")


if __name__ == "__main__":
    main()
