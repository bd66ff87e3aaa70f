"""`zutis compare`: every method on the same scenes, scored the same way, one table and one picture."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from zutiscli.cli.from_config import ConfigValues, from_config
from zutiscli.cli.options import DryRunOpt, JsonOpt, OutputOpt, QuietOpt, Reporter, print_dry_run
from zutiscli.pipeline.compare_config import CompareConfig


@from_config(CompareConfig, into="options")
def compare(
    scenes: Annotated[Path, typer.Argument(help="A `zutis synth scenes` directory (images and ground truth), or images with --gt.")],
    run: Annotated[Optional[List[str]], typer.Option("--run", help="A method to run, repeatable: maskclip, reco:REFERENCES, zutis:RUN, reclip:RUN; LABEL= in front names its row.", show_default=False)] = None,
    options: ConfigValues = None,
    output: OutputOpt = None,
    dry_run: DryRunOpt = False,
    json_mode: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Run several methods on the same scenes and score them alike: one table, compare.json, compare.png.

    Example: zutis compare data/scenes --run maskclip --run zutis:runs/train/demo --model shapes-clip --pretrained builtin -o runs/compare
    """
    from rich.markup import escape

    from zutiscli.pipeline.compare import compare as run_compare, plan_compare
    from zutiscli.pipeline.compare_config import RunSpec

    reporter = Reporter(json_mode, quiet)
    config = CompareConfig(images=str(scenes), runs=tuple(RunSpec.parse(text) for text in run or ()), **options)
    config.validate()
    if dry_run:
        print_dry_run(reporter, plan_compare(config, output))
        return
    result = run_compare(config, output, log=reporter.log, warn=lambda message: reporter.warn(escape(message)))
    reporter.result({"runs": result.rows}, path=result.path, text=result.table)
