"""`zutis copypaste`: multi-object training scenes from single-object pseudo-labels."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from zutiscli.cli.options import DryRunOpt, JsonOpt, OutputOpt, ProgressBar, QuietOpt, Reporter, print_dry_run


def copypaste(
    pseudo_dir: Annotated[Path, typer.Argument(help="Pseudo-label directory written by `zutis pseudolabel`.")],
    count: Annotated[int, typer.Option("--n", "-n", help="Number of scenes.")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Seed; same seed -> same bytes (and the same scenes as online training).")] = 0,
    size: Annotated[int, typer.Option("--size", help="Scene side in pixels.")] = 384,
    max_objects: Annotated[int, typer.Option("--max-objects", help="Most archive images per scene (canvas included).")] = 10,
    same_class_prob: Annotated[float, typer.Option("--same-class-prob", help="Chance that all objects come from one archive.")] = 0.5,
    scale_min: Annotated[float, typer.Option("--scale-min", help="Smallest pasted object, as a fraction of the side.")] = 0.1,
    scale_max: Annotated[float, typer.Option("--scale-max", help="Largest pasted object, as a fraction of the side.")] = 1.0,
    canvas_min: Annotated[float, typer.Option("--canvas-min", help="Smallest scale of the canvas (first) image, shrunk onto its own background colour (1 = full size, the official recipe).")] = 1.0,
    canvas_max: Annotated[float, typer.Option("--canvas-max", help="Largest scale of the canvas image.")] = 1.0,
    outside: Annotated[float, typer.Option("--outside", help="Largest share of an object's box placed beyond the scene's edge, where it is cut off, as objects are in photographs (0 = every object inside, as pasted by the official code before its crop).")] = 0.0,
    hflip_prob: Annotated[float, typer.Option("--hflip-prob", help="Horizontal flip probability.")] = 0.5,
    jitter_prob: Annotated[float, typer.Option("--jitter-prob", help="Colour jitter (0.8, 0.8, 0.8, 0.2) probability.")] = 0.8,
    grayscale_prob: Annotated[float, typer.Option("--grayscale-prob", help="Grayscale probability.")] = 0.2,
    blur_prob: Annotated[float, typer.Option("--blur-prob", help="Gaussian blur probability.")] = 0.5,
    min_visible: Annotated[float, typer.Option("--min-visible-fraction", help="Drop an occluded instance showing less than this fraction of itself.")] = 0.25,
    image_format: Annotated[str, typer.Option("--format", metavar="jpg|png", help="Scene image format.")] = "jpg",
    workers: Annotated[int, typer.Option("--workers", help="Worker processes (0 = in this process).")] = 0,
    output: OutputOpt = None,
    dry_run: DryRunOpt = False,
    json_mode: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Synthesise copy-paste scenes (images, COCO instances, semantic PNGs) from pseudo-labels.

    Example: zutis copypaste data/pseudo -n 20 -o data/scenes-train
    """
    from zutiscli.artefacts.manifest import read_manifest
    from zutiscli.data.copypaste import CopyPasteConfig
    from zutiscli.pipeline.copypaste import plan_dataset, write_dataset

    reporter = Reporter(json_mode, quiet)
    config = CopyPasteConfig(
        size=size, max_objects=max_objects, same_class_prob=same_class_prob, scale_range=(scale_min, scale_max),
        canvas_scale=(canvas_min, canvas_max), outside=outside, hflip_prob=hflip_prob, jitter_prob=jitter_prob,
        grayscale_prob=grayscale_prob, blur_prob=blur_prob,
        min_visible_fraction=min_visible,
    )
    config.validate()
    if dry_run:
        print_dry_run(reporter, plan_dataset(pseudo_dir, count, config, seed, output, workers, image_format))
        return
    with ProgressBar(reporter, "copypaste", unit="scenes") as bar:
        out = write_dataset(pseudo_dir, count, config, seed, output, workers, image_format, progress=bar)
    summary = read_manifest(out).summary
    reporter.log(f"wrote {summary['images']} scenes with {summary['instances']} instances in {summary['seconds']:.1f} s")
    reporter.result({"images": summary["images"], "instances": summary["instances"]}, path=out)
