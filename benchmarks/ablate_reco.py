"""ReCo's ablations on a finished `zutis demo` run: one table, test split beside shift split.

Run by hand (not a test), after `zutis demo -o DEMO`; everything it writes goes under -o:

    python benchmarks/ablate_reco.py DEMO -o runs/ablate-reco            # ~5 minutes on 2 CPU cores
    python benchmarks/ablate_reco.py DEMO -o runs/ablate-reco --context-scenes 1000

Each variant co-segments the demo's archives (``zutis cosegment``, resumable: a rerun with the same
-o reuses what is there) and segments the demo's held-out scenes (``scenes/``) and the same objects
on the shift split (``shift/scenes/``) with ``zutis predict --method reco``, scored by ``zutis
evaluate`` (mIoU over background and the six shapes; mask AP50 of the connected components):

- the demo's ReCo: k 50, its CLIP's last-block tokens, language gate, background rule and
  threshold as the demo's (chosen on validation scenes, docs/reco.md), no CRF; the CLIP, the rule
  and the threshold are read from DEMO/metrics.json;
- the share rule at ZUTIS' comparison's threshold 0.9 and at 0.3 (the first release's choice);
  language gate off; CRF on;
- k in {10, 25, 100} (the archives hold the demo's -k, 250);
- co-segmented on the attention keys instead of the tokens.

With ``--recoplus N`` it also distils ReCo (the demo's row) into the demo's model: ReCo's
predictions over N unlabelled scenes (the demo's ablation: 3,000, seed 3) as the source of ``zutis
train --config demo``, scored like the rest (ReCo+ as ``zutis demo --ablation`` runs it).

With ``--context-scenes N`` it also measures context elimination: N scenes of the shapes over named
stuff (``zutis synth scenes --stuff``, another seed) are indexed as a pile, the six materials'
archives retrieved from it (k 50) and co-segmented as context (``zutis cosegment --context``), and
the demo's 100 scenes over named stuff (``stuff/scenes``, ``stuff/shift/scenes``) are segmented with
the shape names, with and without ``--context sky,grass,water,sand,brick,wood`` (the shapes' and the
materials' archives retrieved together, k 50, from the demo's pile and that one). The shapes' mean
IoU is reported there (the stuff is not a class of the prediction, so the background class is not
comparable). Context elimination only means something with a CLIP that knows the materials' names.

The demo's own MaskCLIP and ZUTIS rows are read from DEMO/metrics.json for reference.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

SHAPES = "circle,square,triangle,star,cross,ring"
STUFF = "sky,grass,water,sand,brick,wood"


def _evaluate(zs, pred: Path, scenes: Path, out: Path) -> dict:
    """``zutis evaluate``'s metrics of one prediction (reused when ``out`` holds them)."""
    if (out / "metrics.json").is_file():
        return json.loads((out / "metrics.json").read_text())
    if out.exists():
        shutil.rmtree(out)
    return zs.evaluate(pred, scenes / "instances.json", out, gt_semantic=str(scenes / "semantic")).metrics


def _scored(zs, scenes: Path, out: Path, **predict_options) -> dict:
    """``zutis predict`` of the scenes' shapes into ``out/predict`` (made again if a run was
    interrupted), scored into ``out/evaluate``; both reused when the metrics are there."""
    if not (out / "evaluate" / "metrics.json").is_file():
        if (out / "predict").exists():
            shutil.rmtree(out / "predict")
        zs.predict(scenes / "images", SHAPES, out / "predict", vis=False, **predict_options)
    return _evaluate(zs, out / "predict", scenes, out / "evaluate")


def _cosegmented(zs, archives: Path, out: Path, **options) -> Path:
    """``zutis cosegment`` of ``archives`` into ``out``, unless ``out`` holds finished references."""
    if not (out / "references.json").is_file():
        zs.cosegment(archives, out, **options)
    return out


def _shape_iou(metrics: dict) -> float:
    per_class = metrics["semantic"]["per_class_iou"]
    values = [per_class[name] for name in SHAPES.split(",") if per_class.get(name) is not None]
    return sum(values) / len(values) if values else float("nan")


def _cells(metrics: dict) -> tuple[float, float]:
    """mIoU and mask AP50 (percent) of ``zutis evaluate``'s metrics, or of a demo's headline."""
    from zutiscli.engine.evaluator import headline

    short = metrics if "mIoU" in metrics else headline(metrics)
    return 100 * short["mIoU"], 100 * short.get("mask_AP50", float("nan"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("demo", type=Path, help="a finished `zutis demo` output directory")
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--context-scenes", type=int, default=0,
                        help="scenes over named stuff to retrieve the materials from (0: no context ablation)")
    parser.add_argument("--recoplus", type=int, default=0,
                        help="unlabelled scenes to distil ReCo into the demo's model on (0: no ReCo+; the demo: 3000)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="the demo's background threshold (default: the demo's, from its metrics.json)")
    args = parser.parse_args()

    import zutiscli as zs
    from zutiscli.pipeline.demo_config import DemoConfig

    demo, out = args.demo, args.output
    out.mkdir(parents=True, exist_ok=True)
    recipe = json.loads((demo / "metrics.json").read_text())["config"]
    model, rule = recipe["model"], recipe.get("reco_rule", "share")
    threshold = recipe.get("reco_threshold", 0.3) if args.threshold is None else args.threshold
    splits = {"test": demo / "scenes", "shift": demo / "shift" / "scenes"}
    if not all((path / "instances.json").is_file() for path in splits.values()):
        sys.exit(f"{demo}: not a finished `zutis demo` run (scenes/ and shift/scenes/ needed)")

    started = time.perf_counter()
    references: dict[str, Path] = {}

    def refs(name: str, **options) -> Path:
        if name not in references:
            references[name] = _cosegmented(zs, demo / "archives", out / "references" / name, **options)
        return references[name]

    variants = [
        (f"ReCo as in the demo (k 50, tokens, gate, {rule} rule at {threshold:g})", "k50", {}, {}),
        ("share rule at 0.9 (ZUTIS' comparison)", "k50", {},
         {"background_rule": "share", "background_threshold": 0.9}),
        ("share rule at 0.3 (the first release's)", "k50", {},
         {"background_rule": "share", "background_threshold": 0.3}),
        ("language gate off", "k50", {}, {"text_gate": False}),
        ("CRF on", "k50", {}, {"crf": True}),
        ("k 10", "k10", {"k": 10}, {}),
        ("k 25", "k25", {"k": 25}, {}),
        ("k 100", "k100", {"k": 100}, {}),
        ("co-segmented on keys", "keys", {"features": "keys"}, {}),
    ]
    rows = []
    for label, refs_name, cosegment_options, predict_options in variants:
        reference = refs(refs_name, **cosegment_options)
        options = {"background_threshold": threshold, "background_rule": rule} | predict_options
        cells = []
        for split, scenes in splits.items():
            slug = label.split(" (")[0].replace(" ", "-").replace("'", "")
            cells += _cells(_scored(zs, scenes, out / "predict" / slug / split, method="reco",
                                    references=str(reference), **options))
        rows.append((label, *cells))
        print(f"{label}: {cells}", flush=True)

    demo_metrics = json.loads((demo / "metrics.json").read_text())["headline"]
    for name in ("maskclip", "zutis"):
        test, shift = demo_metrics.get(name), demo_metrics.get(f"{name}, shift split")
        if test and shift:
            rows.append((f"{name} (the demo's)", *_cells(test), *_cells(shift)))

    print("\n| variant | test mIoU | test mask AP50 | shift mIoU | shift mask AP50 |\n|---|---|---|---|---|")
    for label, *values in rows:
        print(f"| {label} | " + " | ".join(f"{v:.1f}" for v in values) + " |")

    if args.recoplus:
        root = out / "recoplus"
        unlabelled = root / "scenes"
        if not (unlabelled / "instances.json").is_file():
            zs.synth("scenes", args.recoplus, unlabelled, seed=DemoConfig.eval_seed + 2, size=128, min_objects=1,
                     max_objects=6)
        labels = root / "labels"
        if not (labels / "predictions.json").is_file():
            if labels.exists():
                shutil.rmtree(labels)
            zs.predict(unlabelled / "images", SHAPES, labels, method="reco", references=str(refs("k50")),
                       background_threshold=threshold, background_rule=rule, vis=False)
        run = root / "train"
        if not (run / "model.pt").is_file():
            zs.train(labels, run, config_file="demo", model=model, pretrained=_pretrained(demo), seed=0)
        cells = []
        for split, scenes in splits.items():
            cells += _cells(_scored(zs, scenes, root / "predict" / split, checkpoint=str(run)))
        print(f"\n| ReCo+ ({args.recoplus:,} scenes, the demo's model and recipe) | " +
              " | ".join(f"{v:.1f}" for v in cells) + " |")

    if args.context_scenes:
        pile = out / "context" / "pile"
        if not (pile / "instances.json").is_file():
            zs.synth("scenes", args.context_scenes, pile, stuff=True, seed=11)
        index = out / "context" / "index"
        manifest = index / "manifest.json"
        if not manifest.is_file() or not json.loads(manifest.read_text())["summary"].get("complete"):
            zs.index(pile / "images", index, model=model, pretrained=_pretrained(demo))
        archives = out / "context" / "archives"
        if not (archives / "archives.json").is_file():
            zs.retrieve([demo / "index", index], f"{SHAPES},{STUFF}", archives, k=50)
        plain = _cosegmented(zs, archives, out / "references" / "context-none")
        suppressed = _cosegmented(zs, archives, out / "references" / "context-stuff", context=STUFF)
        print("\n| over named stuff: shapes' mean IoU | test | shift |\n|---|---|---|")
        for label, reference, options in (("without context", plain, {}),
                                          ("the six materials as context", suppressed, {"context": STUFF})):
            cells = []
            for split, scenes in (("test", demo / "stuff" / "scenes"), ("shift", demo / "stuff" / "shift" / "scenes")):
                metrics = _scored(zs, scenes, out / "stuff" / label.split()[0] / split, method="reco",
                                  references=str(reference), background_threshold=threshold,
                                  background_rule=rule, **options)
                cells.append(100 * _shape_iou(metrics))
            print(f"| {label} | {cells[0]:.1f} | {cells[1]:.1f} |")
    print(f"\n({time.perf_counter() - started:.0f} s; outputs under {out})")
    return 0


def _pretrained(demo: Path) -> str:
    manifest = json.loads((demo / "manifest.json").read_text())
    return str(manifest.get("params", {}).get("pretrained", "builtin"))


if __name__ == "__main__":
    raise SystemExit(main())
