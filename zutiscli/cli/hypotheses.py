"""`zutis hypotheses`: the classes each unlabelled image is thought to hold (ReCLIP++'s label hypotheses)."""

from __future__ import annotations

from typing import Annotated, List, Optional

import typer

from zutiscli.cli.from_config import ConfigValues, from_config
from zutiscli.cli.options import (ClassesFileOpt, DryRunOpt, JsonOpt, OutputOpt, ProgressBar, QuietOpt, Reporter,
                                  complete_class_names, print_dry_run)
from zutiscli.pipeline.hypotheses_config import HypothesesConfig


@from_config(HypothesesConfig, into="options")
def hypotheses(
    images: Annotated[List[str], typer.Argument(help="Image files, directories or globs.", show_default=False)],
    classes: Annotated[Optional[str], typer.Option("--classes", help="Comma-separated class names.", show_default=False, autocompletion=complete_class_names)] = None,
    classes_file: ClassesFileOpt = None,
    options: ConfigValues = None,
    output: OutputOpt = None,
    dry_run: DryRunOpt = False,
    json_mode: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Guess the classes each image holds from CLIP's votes over sliding crops (ReCLIP++), one line per image.

    Example: zutis hypotheses data/pile/images --classes circle,square,star --model shapes-clip --pretrained builtin --window 1/2 --ground-truth data/pile/hidden/instances.json -o data/hypotheses
    """
    from zutiscli.data.classes import parse_classes
    from zutiscli.pipeline.hypotheses import hypotheses as run_hypotheses, plan_hypotheses

    reporter = Reporter(json_mode, quiet)
    config = HypothesesConfig(inputs=tuple(images), classes=tuple(parse_classes(classes, classes_file)), **options)
    config.validate()
    if dry_run:
        print_dry_run(reporter, plan_hypotheses(config, output))
        return
    with ProgressBar(reporter, "hypotheses", unit="images") as bar:
        result = run_hypotheses(config, output, progress=bar, log=reporter.log)
    line = f"{len(result.images) - result.failed} images, {result.mean_classes:.2f} classes each in {result.seconds:.1f} s"
    if result.quality.get("precision") is not None or result.quality.get("recall") is not None:
        precision, recall = result.quality.get("precision"), result.quality.get("recall")
        line += f"; precision {precision if precision is None else f'{precision:.3f}'}, recall " \
                f"{recall if recall is None else f'{recall:.3f}'} against the ground truth"
    if result.failed:
        reporter.warn(f"{result.failed} image(s) could not be read; listed in hypotheses.jsonl")
    reporter.log(line)
    reporter.result({"images": len(result.images) - result.failed, "failed": result.failed,
                     "mean_classes": result.mean_classes, "precision": result.quality.get("precision"),
                     "recall": result.quality.get("recall"), "seconds": result.seconds}, path=result.path)
