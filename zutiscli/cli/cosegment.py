"""`zutis cosegment`: ReCo's reference embedding of each class, co-segmented from its archive."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zutiscli.cli.from_config import ConfigValues, from_config
from zutiscli.cli.options import DryRunOpt, JsonOpt, OutputOpt, ProgressBar, QuietOpt, Reporter, print_dry_run
from zutiscli.pipeline.cosegment_config import CosegmentConfig


@from_config(CosegmentConfig, into="options")
def cosegment(
    archives: Annotated[Path, typer.Argument(help="Archives directory written by `zutis retrieve` (ReCo: -k 50).")],
    options: ConfigValues = None,
    output: OutputOpt = None,
    dry_run: DryRunOpt = False,
    json_mode: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Co-segment each class's archive into one reference embedding (ReCo; resumable per class).

    Example: zutis cosegment data/archives -k 10 --preview 4 -o data/references
    """
    from rich.markup import escape

    from zutiscli.pipeline.cosegment import cosegment as run_cosegment, plan_cosegment

    reporter = Reporter(json_mode, quiet)
    config = CosegmentConfig(archives=str(archives), **options)
    config.validate()
    if dry_run:
        print_dry_run(reporter, plan_cosegment(config, output))
        return
    with ProgressBar(reporter, "cosegment", unit="classes") as bar:
        result = run_cosegment(config, output, progress=bar, log=reporter.log)
    if result.failed:
        reporter.warn(escape(f"{len(result.failed)} archive image(s) could not be read and were left out, e.g. "
                             f"{result.failed[0][0]}: {result.failed[0][1]}"))
    reporter.log(f"{len(result.classes)} references from {result.images} archive images in {result.seconds:.1f} s")
    reporter.result({"classes": result.classes, "images": result.images, "failed": len(result.failed),
                     "seconds": result.seconds}, path=result.path)
