"""`zutis index`: embed images once with CLIP; `zutis index merge`: join shard indices."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, List, Optional

import typer

from zutiscli.cli.options import (
    DefaultCommandGroup,
    DeviceOpt,
    DryRunOpt,
    JsonOpt,
    OutputOpt,
    PrecisionOpt,
    ProgressBar,
    QuietOpt,
    Reporter,
    complete_model_names,
    print_dry_run,
)


class _BuildByDefault(DefaultCommandGroup):
    default_command = "build"


app = typer.Typer(
    cls=_BuildByDefault,
    no_args_is_help=True,
    help=(
        "Embed an image collection once with CLIP (resumable, appendable, shardable). "
        "`zutis index IMAGES...` builds an index; `zutis index merge SHARDS... -o DIR` joins shards."
    ),
)


def _summary_text(summary: dict[str, Any], seconds: float, rate: float, embedded: int, skipped: int, failed: int) -> str:
    return (
        f"indexed {summary['images']} images ({embedded} new, {skipped} already there, {failed} failed) "
        f"in {seconds:.1f} s, {rate:.1f} images/s"
    )


@app.command("build")
def build(
    images: Annotated[Optional[List[str]], typer.Argument(help="Image directories (recursive), files or globs.", show_default=False)] = None,
    from_list: Annotated[Optional[Path], typer.Option("--from-list", help="Text file of image paths, one per line (relative to the current directory).")] = None,
    model: Annotated[str, typer.Option("--model", help="open_clip model name (the paper retrieves with ViT-L-14-336).", autocompletion=complete_model_names)] = "ViT-L-14-336",
    pretrained: Annotated[Optional[str], typer.Option("--pretrained", help="Tag, checkpoint file, builtin or none (default: shipped weights, else openai).", show_default=False)] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per forward pass.")] = 64,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Decoding processes (default: cores - 1 on CPU, up to 8).", show_default=False)] = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    faiss: Annotated[str, typer.Option("--faiss", help="faiss factory string; Flat = exact search (no index file), e.g. IVF4096,PQ64.")] = "Flat",
    shard: Annotated[Optional[str], typer.Option("--shard", metavar="I/N", help="Embed slice I of N (0-based); default from SLURM array or torchrun. Writes OUTPUT/shard-I-of-N.", show_default=False)] = None,
    chunk_size: Annotated[int, typer.Option("--chunk-size", help="Images per committed chunk (what an interruption can lose).")] = 1024,
    max_pixels: Annotated[int, typer.Option("--max-pixels", help="Refuse images with more pixels (decompression bombs).")] = 178_956_970,
    output: OutputOpt = None,
    dry_run: DryRunOpt = False,
    json_mode: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Embed images with CLIP into an index directory (rerun to resume or to add new images).

    Example: zutis index data/pile --model shapes-clip -o data/index
    """
    from zutiscli.data.shards import parse_shard
    from zutiscli.pipeline.index import IndexConfig, build_index, plan_index

    reporter = Reporter(json_mode, quiet)
    config = IndexConfig(
        sources=list(images or []),
        from_list=str(from_list) if from_list else None,
        model=model,
        pretrained=pretrained,
        batch_size=batch_size,
        workers=workers,
        device=device,
        precision=precision,
        faiss=faiss,
        shard=parse_shard(shard) if shard else None,
        chunk_size=chunk_size,
        max_pixels=max_pixels,
    )
    config.validate()
    if dry_run:
        print_dry_run(reporter, plan_index(config, output))
        return
    with ProgressBar(reporter, "index") as bar:
        result = build_index(config, output, progress=bar, log=reporter.log)
    from zutiscli.artefacts.manifest import read_manifest

    summary = read_manifest(result.path).summary
    if result.failed:
        reporter.warn(f"{result.failed} image(s) could not be read; see {result.path / 'failed.jsonl'}")
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
