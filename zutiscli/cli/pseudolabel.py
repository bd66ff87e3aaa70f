"""`zutis pseudolabel`: one or more named object masks per archive image (training-free mask discovery);
`zutis pseudolabel merge`: join the shards of a sharded run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, List, Optional

import typer

from zutiscli.cli.options import (
    DeviceOpt,
    DryRunOpt,
    JsonOpt,
    OutputOpt,
    PrecisionOpt,
    ProgressBar,
    QuietOpt,
    Reporter,
    complete_model_names,
    group_with_default,
    print_dry_run,
)
from zutiscli.methods.pseudolabel import get_labeller, labeller_names

_METHODS = "|".join(labeller_names())
_SQUARE = ", ".join(f"{name}: square side" for name in labeller_names() if get_labeller(name).square_input)
_SIZES = ", ".join(f"{get_labeller(name).default_size} {name}" for name in labeller_names()
                   if get_labeller(name).needs == "features")


app = group_with_default("pseudolabel", "run", (
        "Find the object in every archive image and name it after its archive (resumable, shardable). "
        "`zutis pseudolabel ARCHIVES` runs; `zutis pseudolabel merge SHARDS... -o DIR` joins shards."
    ))


def _print_per_class(reporter: Reporter, per_class: dict[str, dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table("class", "images", "masks", "empty", "failed", title="pseudo-labels per class")
    for name, stats in per_class.items():
        table.add_row(name, str(stats["images"]), str(stats["masks"]), str(stats["empty"]), str(stats["failed"]))
    reporter.console.print(table)


@app.command("run")
def pseudolabel(
    archives: Annotated[Path, typer.Argument(help="Archives directory written by `zutis retrieve`.")],
    method: Annotated[str, typer.Option("--method", metavar=_METHODS, help="Mask discovery method.")] = "spectral",
    model: Annotated[Optional[str], typer.Option("--model", help="ViT for features: open_clip name, timm:NAME or dino-vits8 etc. (default: the archives' model).", show_default=False, autocompletion=complete_model_names)] = None,
    pretrained: Annotated[Optional[str], typer.Option("--pretrained", help="Weights of --model (a local file for timm/DINO).", show_default=False)] = None,
    size: Annotated[Optional[int], typer.Option("--size", help=f"Input short side in pixels ({_SQUARE}); default {_SIZES}.", show_default=False)] = None,
    features: Annotated[str, typer.Option("--features", metavar="keys|tokens", help="Patch features for spectral clustering.")] = "keys",
    top_k: Annotated[float, typer.Option("--top-k", help="attention: fraction of patches kept by [CLS] attention.")] = 0.4,
    max_objects: Annotated[int, typer.Option("--max-objects", help="maskcut: objects per image.")] = 3,
    tau: Annotated[float, typer.Option("--tau", help="maskcut: affinity threshold.")] = 0.15,
    refine: Annotated[str, typer.Option("--refine", metavar="bilateral|densecrf|none", help="Edge-aware refinement of each mask.")] = "bilateral",
    components: Annotated[Optional[str], typer.Option("--components", metavar="largest|split|none", help="Keep the largest component or split components (default: split for maskcut, else largest).", show_default=False)] = None,
    fill_holes: Annotated[bool, typer.Option("--fill-holes/--keep-holes", help="Fill holes inside masks.")] = True,
    min_area: Annotated[float, typer.Option("--min-area", help="Drop masks below this fraction of the image.")] = 0.005,
    saliency_model: Annotated[Optional[Path], typer.Option("--saliency-model", help="onnx: single-channel saliency network (.onnx).", show_default=False)] = None,
    onnx_size: Annotated[int, typer.Option("--onnx-size", help="onnx: square input side.")] = 320,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    workers: Annotated[int, typer.Option("--workers", help="Processes for clustering and refinement (0 = this process).")] = 0,
    preview: Annotated[int, typer.Option("--preview", help="Write overlay JPEGs of N random results per class.")] = 0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of clustering and preview choice.")] = 0,
    shard: Annotated[Optional[str], typer.Option("--shard", metavar="I/N", help="Process slice I of N of the distinct images (0-based); default from SLURM array or torchrun. Writes OUTPUT/shard-I-of-N; join with `zutis pseudolabel merge`.", show_default=False)] = None,
    output: OutputOpt = None,
    dry_run: DryRunOpt = False,
    json_mode: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Find the object in every archive image and name it after its archive (resumable, shardable with --shard).

    Example: zutis pseudolabel data/archives --method spectral --size 64 -o data/pseudo
    """
    from zutiscli.data.shards import parse_shard
    from zutiscli.pipeline.pseudolabel import PseudolabelConfig, plan_pseudolabel, run_pseudolabel

    reporter = Reporter(json_mode, quiet)
    config = PseudolabelConfig(
        archives=str(archives), method=method, model=model, pretrained=pretrained, size=size, features=features,
        top_k=top_k, max_objects=max_objects, tau=tau, refine=refine, components=components, fill_holes=fill_holes,
        min_area=min_area, saliency_model=str(saliency_model) if saliency_model else None, onnx_size=onnx_size,
        device=device, precision=precision, workers=workers, preview=preview, seed=seed,
        shard=parse_shard(shard) if shard else None,
    )
    config.validate()
    if dry_run:
        print_dry_run(reporter, plan_pseudolabel(config, output))
        return
    with ProgressBar(reporter, f"pseudolabel ({method})") as bar:
        result = run_pseudolabel(config, output, progress=bar, log=reporter.log)
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
