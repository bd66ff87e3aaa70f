"""`zutis copypaste`: multi-object training scenes from single-object pseudo-labels."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zutiscli.cli.from_config import ConfigValues, from_config
from zutiscli.cli.options import DryRunOpt, JsonOpt, OutputOpt, ProgressBar, QuietOpt, Reporter, print_dry_run
from zutiscli.data.copypaste_config import CopyPasteConfig
from zutiscli.pipeline.copypaste_config import CopyPasteDatasetConfig


# --help lists the number of scenes and the seed, then the scenes' options, then how they are written.
@from_config(CopyPasteDatasetConfig, into="dataset", only=("count", "seed"))
@from_config(CopyPasteConfig, into="scene")
@from_config(CopyPasteDatasetConfig, into="writing", only=("image_format", "workers"))
def copypaste(
    pseudo_dir: Annotated[Path, typer.Argument(help="Pseudo-label directory written by `zutis pseudolabel`, or clusters of `zutis cluster` (the clusters are the classes).")],
    dataset: ConfigValues = None,
    scene: ConfigValues = None,
    writing: ConfigValues = None,
    output: OutputOpt = None,
    dry_run: DryRunOpt = False,
    json_mode: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Synthesise copy-paste scenes (images, COCO instances, semantic PNGs) from pseudo-labels.

    Example: zutis copypaste data/pseudo -n 20 -o data/scenes-train
    """
    from zutiscli.artefacts.manifest import read_manifest
    from zutiscli.pipeline.copypaste import copypaste as run_copypaste, plan_dataset

    reporter = Reporter(json_mode, quiet)
    config = CopyPasteConfig(**scene)
    run = CopyPasteDatasetConfig(**dataset, **writing, source=str(pseudo_dir), scene=config)
    config.validate()
    if dry_run:
        print_dry_run(reporter, plan_dataset(pseudo_dir, run.count, config, run.seed, output, run.workers,
                                             run.image_format))
        return
    with ProgressBar(reporter, "copypaste", unit="scenes") as bar:
        out = run_copypaste(run, output, progress=bar)
    summary = read_manifest(out).summary
    reporter.log(f"wrote {summary['images']} scenes with {summary['instances']} instances in {summary['seconds']:.1f} s")
    reporter.result({"images": summary["images"], "instances": summary["instances"]}, path=out)
