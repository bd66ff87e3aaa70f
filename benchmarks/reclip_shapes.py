"""ReCLIP++ beside MaskCLIP, ReCo and ZUTIS on the demo's shapes world: test and shift splits, mIoU and
the two bias measures, and the paper's ablations.

Needs a finished `zutis demo -o DEMO` (its pile, scenes, shift split, references and trained ZUTIS
model; its CLIP and ReCo's background rule are read from DEMO/metrics.json). Trains on the demo's
unlabelled pile (label hypotheses of the six shape names, windows of ``--window``), every variant for
the same iterations (with ``--chosen`` only the chosen recipe and its distillation: the rows of the
README's comparison), then runs `zutis compare` on the test and shift scenes and prints markdown
tables (percent; the bias scores as evaluate gives them).

    python benchmarks/reclip_shapes.py DEMO -o WORK [--chosen] [--iterations 600] [--distil-iterations 300]

The recipe row marked "chosen" was picked on a separate validation set of scenes (see docs/reclip.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

SHAPES = "circle,square,triangle,star,cross,ring"


def zutis(*args: object) -> None:
    command = [sys.executable, "-m", "zutiscli", *map(str, args), "-q"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stderr}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("demo", type=Path)
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--window", default="1/2")
    parser.add_argument("--iterations", type=int, default=600)
    parser.add_argument("--distil-iterations", type=int, default=300)
    parser.add_argument("--chosen", action="store_true", help="train only the chosen recipe and its distillation")
    args = parser.parse_args()
    work, demo = args.output, args.demo
    work.mkdir(parents=True, exist_ok=True)
    recipe = json.loads((demo / "metrics.json").read_text())["config"]
    clip = ["--model", recipe["model"], "--pretrained", recipe["pretrained"]]
    # ReCo as `zutis demo` ran it
    reco = ["--background-threshold", recipe.get("reco_threshold", 0.3),
            "--background-rule", recipe.get("reco_rule", "share")]
    common = [*clip, "--batch-size", "8", "--crop", "128", "--workers", "1", "--iterations", args.iterations]
    clock = time.perf_counter()
    steps: dict[str, float] = {}

    def timed(name: str, *command: object) -> None:
        if (work / name / "manifest.json").is_file():
            return
        start = time.perf_counter()
        zutis(*command, "-o", work / name)
        steps[name] = round(time.perf_counter() - start, 1)

    timed("hyp", "hypotheses", demo / "pile" / "images", "--classes", SHAPES, *clip, "--window", args.window,
          "--ground-truth", demo / "pile" / "hidden" / "instances.json")
    timed("hyp-image", "hypotheses", demo / "pile" / "images", "--classes", SHAPES, *clip, "--mode", "image",
          "--threshold", "0.1", "--ground-truth", demo / "pile" / "hidden" / "instances.json")
    variants = {
        "rec": [],  # the paper's rectification
        "rec-nodecoder": ["--no-mask-decoder"],  # chosen on validation
        "rec-add": ["--bias", "add"],
        "rec-noposition": ["--no-position"],
        "rec-nobias": ["--bias", "none"],
        "rec-nobackground": ["--no-background"],
        "rec-nodecoder-add": ["--no-mask-decoder", "--bias", "add"],
        "rec-nodecoder-noposition": ["--no-mask-decoder", "--no-position"],
    }
    if args.chosen:
        variants = {"rec-nodecoder": variants["rec-nodecoder"]}
    for name, extra in variants.items():
        timed(name, "train", "--method", "reclip", work / "hyp", *common, *extra)
    others = [] if args.chosen else ["rec-wholeimage"]
    for name in others:
        timed(name, "train", "--method", "reclip", work / "hyp-image", *common)
    distil = ["--batch-size", "8", "--crop", "128", "--workers", "1", "--iterations", args.distil_iterations]
    distillations = {"distil": [], "distil-nofeat": ["--feat-weight", "0"], "distil-notext": ["--text-weight", "0"],
                     "distil-maskonly": ["--feat-weight", "0", "--text-weight", "0"]}
    if args.chosen:
        distillations = {"distil": []}
    for name, extra in distillations.items():
        timed(name, "train", "--method", "reclip", "--teacher", work / "rec-nodecoder", *distil, *extra)
    runs = ["--run", "MaskCLIP=maskclip", "--run", f"ReCo=reco:{demo / 'references'}",
            "--run", f"ZUTIS=zutis:{demo / 'train'}"]
    runs += [arg for name in [*variants, *others, *distillations] for arg in ("--run", f"{name}=reclip:{work / name}")]
    for split, scenes in (("test", demo / "scenes"), ("shift", demo / "shift" / "scenes")):
        timed(f"compare-{split}", "compare", scenes, *runs, *clip, "--classes", SHAPES, "--picture", "8", *reco)
    print(f"# {time.perf_counter() - clock:.0f} s; steps: {json.dumps(steps)}")
    for name in ("hyp", "hyp-image"):
        summary = json.loads((work / name / "manifest.json").read_text())["summary"]
        print(f"hypotheses {name}: precision {summary.get('precision')}, recall {summary.get('recall')}, "
              f"classes per image {summary.get('mean_classes')}")
    tables = {split: _rows(work / f"compare-{split}") for split in ("test", "shift")}
    print("\n| run | mIoU | class pref. | space pref. | shift mIoU | shift class | shift space |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, (miou, klass, space) in tables["test"].items():
        s_miou, s_class, s_space = tables["shift"].get(label, (None, None, None))
        print(f"| {label} | {_f(miou, 100)} | {_f(klass)} | {_f(space)} | {_f(s_miou, 100)} | {_f(s_class)} | "
              f"{_f(s_space)} |")


def _rows(compare: Path) -> dict[str, tuple]:
    document = json.loads((compare / "compare.json").read_text())
    rows = {}
    for number, label in enumerate(document["runs"], start=1):
        metrics = json.loads((compare / "runs" / str(number) / "metrics.json").read_text())["semantic"]
        bias = metrics.get("bias") or {}
        rows[label] = (metrics.get("mIoU"), (bias.get("class_preference") or {}).get("score"),
                       (bias.get("space_preference") or {}).get("score"))
    return rows


def _f(value: float | None, scale: float = 1.0) -> str:
    return "" if value is None else f"{value * scale:.1f}" if scale != 1.0 else f"{value:.2f}"


if __name__ == "__main__":
    main()
