"""`zutis index`: embed images once with CLIP; `zutis index merge`: join shard indices."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, List, Optional

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
from zutiscli.pipeline.index_config import IndexConfig


app = group_with_default("index", "build", (
        "Embed an image collection once with CLIP (resumable, appendable, shardable). "
        "`zutis index IMAGES...` builds an index; `zutis index merge SHARDS... -o DIR` joins shards."
    ))


def _summary_text(summary: dict[str, Any], seconds: float, rate: float, embedded: int, skipped: int, failed: int) -> str:
    return (
        f"indexed {summary['images']} images ({embedded} new, {skipped} already there, {failed} failed) "
        f"in {seconds:.1f} s, {rate:.1f} images/s"
    )


@app.command("build")
@from_config(IndexConfig, into="options")
def build(
    images: Annotated[Optional[List[str]], typer.Argument(help="Image directories (recursive), files or globs.", show_default=False)] = None,
    options: ConfigValues = None,
    output: OutputOpt = None,
    dry_run: DryRunOpt = False,
    json_mode: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Embed images with CLIP into an index directory (rerun to resume or to add new images).

    Example: zutis index data/pile --model shapes-clip -o data/index
    """
    from rich.markup import escape

    from zutiscli.pipeline.index import build_index, plan_index

    reporter = Reporter(json_mode, quiet)
    config = IndexConfig(sources=list(images or []), **options)
    config.validate()
    if dry_run:
        print_dry_run(reporter, plan_index(config, output))
        return
    with ProgressBar(reporter, "index") as bar:
        result = build_index(config, output, progress=bar, log=reporter.log,
                             warn=lambda message: reporter.warn(escape(message)))
    from zutiscli.artefacts.manifest import read_manifest

    summary = read_manifest(result.path).summary
    reporter.log(_summary_text(summary, result.seconds, result.images_per_second, result.embedded, result.skipped, result.failed))
    reporter.result(
        {
            "images": summary["images"],
            "embedded": result.embedded,
            "skipped": result.skipped,
            "failed": result.failed,
            "failed_total": summary["failed"],
            "dim": summary["dim"],
            "seconds": round(result.seconds, 3),
            "images_per_second": round(result.images_per_second, 2),
            "shard": summary.get("shard"),
        },
        path=result.path,
    )


@app.command("merge")
def merge(
    shards: Annotated[List[Path], typer.Argument(help="Index directories to join (e.g. runs/index/1/shard-*).")],
    faiss: Annotated[Optional[str], typer.Option("--faiss", help="faiss factory string for the merged index (default: as the shards).", show_default=False)] = None,
    output: OutputOpt = None,
    json_mode: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Join indices built with the same model (shards of one collection, or several collections).

    Example: zutis index merge data/shards/shard-0-of-2 data/shards/shard-1-of-2 -o data/index-all
    """
    from zutiscli.artefacts.manifest import read_manifest
    from zutiscli.pipeline.index import merge_indices

    reporter = Reporter(json_mode, quiet)
    out = merge_indices(shards, output, faiss_factory=faiss, log=reporter.log)
    summary = read_manifest(out).summary
    reporter.log(f"merged {len(shards)} indices: {summary['images']} images, {summary['failed']} failed")
    reporter.result({"images": summary["images"], "failed": summary["failed"], "merged_from": len(shards)}, path=out)
