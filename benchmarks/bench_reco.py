"""Benchmark ReCo: `zutis cosegment` over six archives, and `zutis predict --method reco` per image
against MaskCLIP per image, on the shapes world with the shipped shapes-clip.

Run by hand (not a test):

    python benchmarks/bench_reco.py                         # k 50, 6 classes, 100 scenes of 128 px
    python benchmarks/bench_reco.py --k 10,50,100 --threads 1 --repeats 3

Setup (untimed, in ``--dir`` or a temporary directory): a pile (``--pile`` images, seed 0), its
index and per-class archives of the six shapes (``--k`` at most, duplicates excluded), and
``--images`` test scenes of ``--size`` pixels.

Timed, best of ``--repeats``, wall and CPU seconds of this process (CPU seconds hold on a busy
machine): (a) ``cosegment`` of the six classes for each ``k`` (the whole stage: loading the
models, reading and resizing the images, the features, the language gate, the blockwise support,
the previews off); (b) ``predict_in_memory`` of the scenes with ``--method reco`` and with
``--method maskclip``, both through the predict engine, task ``all``; printed per image, and
ReCo over MaskCLIP measured in the same run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import Timer  # noqa: E402

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring")


def setup(root: Path, args: argparse.Namespace) -> tuple[Path, Path]:
    """``(archives directory, scenes directory)`` of the benchmark, written once into ``root``."""
    from zutiscli.data.classes import ClassQuery
    from zutiscli.pipeline.index import IndexConfig, build_index
    from zutiscli.pipeline.retrieve import RetrieveConfig, retrieve
    from zutiscli.pipeline.synth import SynthConfig, write_synth

    pile = write_synth(SynthConfig("pile", args.pile, seed=0), root / "pile")
    index = build_index(IndexConfig(sources=[str(pile / "images")], model="shapes-clip", pretrained="builtin",
                                    workers=0), root / "index").path
    retrieve(RetrieveConfig(indices=(index,), classes=tuple(ClassQuery(n, n) for n in SHAPES), k=max(args.k),
                            exclude_duplicates=True), root / "archives", warn=lambda message: None)
    scenes = write_synth(SynthConfig("scenes", args.images, seed=1, size=args.size, max_objects=6), root / "scenes")
    return root / "archives", scenes


def best(runs: list[Timer]) -> Timer:
    return min(runs, key=lambda timer: timer.wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=lambda text: [int(v) for v in text.split(",")], default=[50])
    parser.add_argument("--pile", type=int, default=2000)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from zutiscli.data.classes import ClassQuery
    from zutiscli.pipeline.cosegment import CosegmentConfig, cosegment
    from zutiscli.pipeline.predict import PredictConfig, predict_in_memory

    root = args.dir or Path(tempfile.mkdtemp(prefix="bench-reco-"))
    archives, scenes = setup(root, args)
    print(f"setup in {root}: {args.pile} pile images, {args.images} scenes of {args.size} px; "
          f"torch threads {torch.get_num_threads()}")
    references = None
    for k in args.k:
        runs = []
        for repeat in range(args.repeats):
            with Timer() as timer:
                result = cosegment(CosegmentConfig(archives=str(archives), k=k, preview=0), root / f"refs-{k}-{repeat}")
            runs.append(timer)
            references = result.path
        fastest = best(runs)
        print(f"cosegment, k {k}, {len(SHAPES)} classes ({result.images} images): {fastest.wall:.2f} s wall, "
              f"{fastest.cpu:.2f} s CPU")
    classes = tuple(ClassQuery(n, n) for n in SHAPES)
    common = dict(inputs=[str(scenes / "images")], classes=classes, task="all", device="cpu", precision="fp32")
    methods = {"reco": dict(method="reco", references=str(references), background_threshold=0.3),
               "maskclip": dict(method="maskclip", model="shapes-clip", pretrained="builtin", components=True)}
    timings: dict[str, Timer] = {}
    runs_of: dict[str, list[Timer]] = {name: [] for name in methods}
    for _ in range(args.repeats):  # interleaved, so that background load hits both alike
        for name, options in methods.items():
            with Timer() as timer:
                predict_in_memory(PredictConfig(**common, **options))
            runs_of[name].append(timer)
    for name, runs in runs_of.items():
        timings[name] = best(runs)
        print(f"predict --method {name}: {1000 * timings[name].wall / args.images:.1f} ms/image wall, "
              f"{1000 * timings[name].cpu / args.images:.1f} ms/image CPU")
    print(f"ReCo / MaskCLIP per image: {timings['reco'].wall / timings['maskclip'].wall:.2f}x wall, "
          f"{timings['reco'].cpu / timings['maskclip'].cpu:.2f}x CPU")


if __name__ == "__main__":
    main()
