"""`zutis predict`: semantic, instance and panoptic segmentation of any images for any class names;
`zutis predict merge`: join the shards of a sharded run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from zutiscli.cli.from_config import ConfigValues, from_config
from zutiscli.cli.options import (
    ClassesFileOpt,
    DryRunOpt,
    JsonOpt,
    OutputOpt,
    ProgressBar,
    QuietOpt,
    Reporter,
    complete_class_names,
    group_with_default,
    print_dry_run,
)
from zutiscli.pipeline.predict_config import PredictConfig


app = group_with_default("predict", "run", (
        "Segment images for any class names with a trained model (or a training-free method). "
        "`zutis predict IMAGES... --classes a,b` runs; `zutis predict merge SHARDS... -o DIR` joins the shards of a --shard run."
    ))


@app.command("run")
@from_config(PredictConfig, into="options")
def predict(
    images: Annotated[Optional[List[str]], typer.Argument(help="Image files, directories or globs.", show_default=False)] = None,
    classes: Annotated[Optional[str], typer.Option("--classes", help="Comma-separated class names (any: the text encoder is open-vocabulary; default for a zutis --checkpoint: the classes or clusters it was trained on).", show_default=False, autocompletion=complete_class_names)] = None,
    classes_file: ClassesFileOpt = None,
    options: ConfigValues = None,
    output: OutputOpt = None,
    dry_run: DryRunOpt = False,
    json_mode: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Segment images for any class names with a trained model (or the MaskCLIP baseline).

    Example: zutis predict data/scenes/images --checkpoint runs/train/demo --classes circle,square,star --task instance -o preds
    """
    from rich.markup import escape

    from zutiscli.data.classes import with_stuff
    from zutiscli.errors import UsageError
    from zutiscli.pipeline.predict import classes_to_segment, plan_predict, predict as run_predict

    reporter = Reporter(json_mode, quiet)
    trained, stuff = classes_to_segment(classes, classes_file, options.get("method", PredictConfig.method),
                                        options.get("checkpoint"), options.pop("stuff", ()))
    queries = with_stuff(trained, stuff)
    config = PredictConfig(inputs=list(images or []), classes=queries, stuff=stuff, **options)
    if not config.inputs and not config.from_list:
        raise UsageError("give the images to segment (files, directories, globs) or --from-list FILE")
    config.validate()
    if dry_run:
        print_dry_run(reporter, plan_predict(config, output))
        return
    with ProgressBar(reporter, "predict") as bar:
        result = run_predict(config, output, progress=bar, log=reporter.log,
                             warn=lambda message: reporter.warn(escape(message)))
    total = sum(result.timing.values()) or 1.0
    reporter.log("time: " + ", ".join(f"{k} {v:.2f} s ({100 * v / total:.0f}%)" for k, v in result.timing.items()))
    lines = []
    for item in result.images:
        parts = [f"{n} x{c}" for n, c in sorted(item.counts.items())] or ["no instances"]
        semantic = f"; semantic: {', '.join(item.semantic_classes)}" if item.semantic_classes else ""
        lines.append(f"{item.path}: {', '.join(parts)}{semantic}")
    reporter.result({
        "images": [{"path": str(i.path), "image_id": i.image_id, "instances": i.counts,
                    "semantic_classes": i.semantic_classes} for i in result.images],
        "failed": [{"path": p, "reason": r} for p, r in result.failed],
        "timing": {k: round(v, 4) for k, v in result.timing.items()},
    }, path=result.path, text="\n".join(lines))


@app.command("merge")
def merge(
    shards: Annotated[List[Path], typer.Argument(help="The shard directories of one run (e.g. runs/predict/1/shard-*).")],
    output: OutputOpt = None,
    json_mode: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Join the shards of a `zutis predict --shard I/N` run into the directory an unsharded run writes.

    Example: zutis predict merge preds-shards/shard-0-of-2 preds-shards/shard-1-of-2 -o preds-all
    """
    from zutiscli.artefacts.manifest import read_manifest
    from zutiscli.pipeline.predict import merge_predictions

    reporter = Reporter(json_mode, quiet)
    out = merge_predictions(shards, output, log=reporter.log)
    summary = read_manifest(out).summary
    reporter.result({"images": summary["images"], "failed": summary["failed"], "instances": summary["instances"],
                     "merged_from": len(shards)}, path=out)
