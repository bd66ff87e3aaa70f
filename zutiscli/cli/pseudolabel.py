"""`zutis pseudolabel`: object masks in every archive image, named by the archive, or in every image of
a pile, unnamed (training-free mask discovery); `zutis pseudolabel merge`: join the shards of a sharded run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, List

import typer

from zutiscli.cli.from_config import ConfigValues, from_config
from zutiscli.cli.options import (
    DryRunOpt,
    JsonOpt,
    OutputOpt,
    ProgressBar,
    QuietOpt,
    Reporter,
    group_with_default,
    print_dry_run,
)
from zutiscli.pipeline.pseudolabel_config import PseudolabelConfig


app = group_with_default("pseudolabel", "run", (
        "Find the objects in every archive image and name them after its archive, or in every image of a "
        "pile, unnamed (resumable, shardable). `zutis pseudolabel INPUT...` runs; `zutis pseudolabel merge "
        "SHARDS... -o DIR` joins shards."
    ))


def _print_per_class(reporter: Reporter, per_class: dict[str, dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table("class", "images", "masks", "empty", "failed", title="pseudo-labels per class")
    for name, stats in per_class.items():
        table.add_row(name, str(stats["images"]), str(stats["masks"]), str(stats["empty"]), str(stats["failed"]))
    reporter.console.print(table)


@app.command("run")
@from_config(PseudolabelConfig, into="options")
def pseudolabel(
    inputs: Annotated[List[Path], typer.Argument(
        help="Archives directory (`zutis retrieve`: masks named by their archive), an index (`zutis index`), or "
             "image files, directories and globs (masks unnamed; `zutis cluster` groups them).",
        metavar="INPUT...")],
    options: ConfigValues = None,
    output: OutputOpt = None,
    dry_run: DryRunOpt = False,
    json_mode: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Find the objects in every archive image and name them after its archive, or in every image of a pile,
    unnamed (resumable, shardable with --shard).

    Archives name the masks; a pile (image files, directories, an index) leaves them unnamed, for
    `zutis cluster` (e.g. zutis pseudolabel photos/ --method maskcut --model dino-vits8 --pretrained dino.pth).

    Example: zutis pseudolabel data/archives --method spectral --size 64 -o data/pseudo
    """
    from rich.markup import escape

    from zutiscli.pipeline.pseudolabel import plan_pseudolabel, run_pseudolabel

    reporter = Reporter(json_mode, quiet)
    config = PseudolabelConfig(inputs=tuple(map(str, inputs)), **options)
    config.validate()
    if dry_run:
        print_dry_run(reporter, plan_pseudolabel(config, output))
        return
    with ProgressBar(reporter, f"pseudolabel ({config.method})") as bar:
        result = run_pseudolabel(config, output, progress=bar, log=reporter.log,
                                 warn=lambda message: reporter.warn(escape(message)))
    reporter.log(f"{result.images} images: {result.masks} masks, {result.empty} with nothing found, "
                 f"{result.failed} unreadable, in {result.seconds:.1f} s")
    if not json_mode and not quiet:
        _print_per_class(reporter, result.per_class)
    reporter.result({"images": result.images, "masks": result.masks, "empty": result.empty, "failed": result.failed,
                     "per_class": result.per_class}, path=result.path)


@app.command("merge")
def merge(
    shards: Annotated[List[Path], typer.Argument(help="The shard directories of one sharded run (e.g. runs/pseudo/shard-*-of-8).")],
    output: OutputOpt = None,
    dry_run: DryRunOpt = False,
    json_mode: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Join the shards of one `zutis pseudolabel --shard I/N` run into the directory an unsharded run writes.

    Example: zutis pseudolabel merge data/pseudo-shards/shard-0-of-2 data/pseudo-shards/shard-1-of-2 -o data/pseudo-all
    """
    from zutiscli.pipeline.pseudolabel import merge_pseudolabels, plan_merge_pseudolabels

    reporter = Reporter(json_mode, quiet)
    if dry_run:
        print_dry_run(reporter, plan_merge_pseudolabels(shards, output))
        return
    result = merge_pseudolabels(shards, output)
    reporter.log(f"merged {len(shards)} shards: {result.images} images, {result.masks} masks, {result.empty} with "
                 f"nothing found, {result.failed} unreadable")
    if not json_mode and not quiet:
        _print_per_class(reporter, result.per_class)
    reporter.result({"images": result.images, "masks": result.masks, "empty": result.empty, "failed": result.failed,
                     "per_class": result.per_class, "merged_from": len(shards)}, path=result.path)
