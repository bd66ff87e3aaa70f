"""`zutis predict`: semantic, instance and panoptic segmentation of any images for any class names;
`zutis predict merge`: join the shards of a sharded run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

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
    complete_class_names,
    complete_model_names,
    print_dry_run,
)
from zutiscli.engine.inference import PAPER


class _RunByDefault(DefaultCommandGroup):
    default_command = "run"


app = typer.Typer(
    cls=_RunByDefault,
    no_args_is_help=True,
    help=(
        "Segment images for any class names with a trained model (or a training-free method). "
        "`zutis predict IMAGES... --classes a,b` runs; `zutis predict merge SHARDS... -o DIR` joins the shards of a --shard run."
    ),
)


def _recipe(name: str, what: str) -> str:
    """Help text of an inference setting: what it does, then where its value comes from by default."""
    value = getattr(PAPER, name)
    shown = {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value
    return f"{what} Default: the model's training recipe, else {shown} (the paper)."


@app.command("run")
def predict(
    images: Annotated[Optional[List[str]], typer.Argument(help="Image files, directories or globs.", show_default=False)] = None,
    classes: Annotated[Optional[str], typer.Option("--classes", help="Comma-separated class names (any: the text encoder is open-vocabulary).", show_default=False, autocompletion=complete_class_names)] = None,
    classes_file: Annotated[Optional[Path], typer.Option("--classes-file", help="One class per line (name or name<TAB>phrase).", show_default=False)] = None,
    from_list: Annotated[Optional[Path], typer.Option("--from-list", help="Text file of image paths.", show_default=False)] = None,
    checkpoint: Annotated[Optional[str], typer.Option("--checkpoint", help="Run directory or model file (default: $ZUTIS_CHECKPOINT, else the newest ./runs/train run).", show_default=False)] = None,
    method: Annotated[str, typer.Option("--method", metavar="zutis|maskclip", help="zutis: a trained ZUTIS model (--checkpoint); maskclip: the training-free MaskCLIP baseline (CLIP weights alone).")] = "zutis",
    model: Annotated[str, typer.Option("--model", help="maskclip: open_clip model name.", autocompletion=complete_model_names)] = "ViT-B-16",
    pretrained: Annotated[Optional[str], typer.Option("--pretrained", help="maskclip: weights (tag, file, builtin).", show_default=False)] = None,
    task: Annotated[str, typer.Option("--task", metavar="semantic|instance|panoptic|all", help="What to predict.")] = "all",
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    max_size: Annotated[Optional[int], typer.Option("--max-size", help="Cap the long side fed to the model (outputs stay at the original size).", show_default=False)] = None,
    inference: Annotated[str, typer.Option("--inference", metavar="recipe|paper", help="Start from the inference settings the model's training recipe recorded (recipe), or from the paper's (paper); options below override either.")] = "recipe",
    mask_threshold: Annotated[Optional[float], typer.Option("--mask-threshold", help=_recipe("mask_threshold", "Binarise query masks at this probability."), show_default=False)] = None,
    class_temperature: Annotated[Optional[float], typer.Option("--class-temperature", help=_recipe("class_temperature", "Class probability = sigmoid(T x cosine)."), show_default=False)] = None,
    score_threshold: Annotated[Optional[float], typer.Option("--score-threshold", help=_recipe("score_threshold", "Drop instances scoring at or below this."), show_default=False)] = None,
    nms: Annotated[Optional[str], typer.Option("--nms", metavar="hard|linear|gaussian|matrix|none", help=_recipe("nms", "Per-class mask NMS."), show_default=False)] = None,
    iou_threshold: Annotated[Optional[float], typer.Option("--iou-threshold", help=_recipe("iou_threshold", "NMS IoU threshold."), show_default=False)] = None,
    sigma: Annotated[Optional[float], typer.Option("--sigma", help=_recipe("sigma", "Gaussian (soft/matrix) NMS sigma."), show_default=False)] = None,
    max_detections: Annotated[Optional[int], typer.Option("--max-detections", help=_recipe("max_detections", "Most instances per image."), show_default=False)] = None,
    crf: Annotated[Optional[bool], typer.Option("--crf/--no-crf", help=_recipe("crf", "DenseCRF on the semantic class probabilities."), show_default=False)] = None,
    crf_iterations: Annotated[int, typer.Option("--crf-iterations", help="DenseCRF iterations.")] = 10,
    crf_pos_w: Annotated[float, typer.Option("--crf-pos-w", help="DenseCRF Gaussian kernel weight.")] = 3.0,
    crf_pos_xy: Annotated[float, typer.Option("--crf-pos-xy", help="DenseCRF Gaussian kernel spatial sigma.")] = 1.0,
    crf_bi_w: Annotated[float, typer.Option("--crf-bi-w", help="DenseCRF bilateral kernel weight.")] = 4.0,
    crf_bi_xy: Annotated[float, typer.Option("--crf-bi-xy", help="DenseCRF bilateral spatial sigma.")] = 67.0,
    crf_bi_rgb: Annotated[float, typer.Option("--crf-bi-rgb", help="DenseCRF bilateral colour sigma.")] = 3.0,
    workers: Annotated[int, typer.Option("--workers", help="Processes for the CRF (0 = this process).")] = 0,
    components: Annotated[bool, typer.Option("--components/--no-components", help="maskclip: split each class region into connected components.")] = False,
    refine: Annotated[Optional[str], typer.Option("--refine", metavar="none|bilateral|crf", help=_recipe("refine", "Snap each instance mask to the image's edges before classifying and NMS (bilateral solver, as for pseudo-masks; crf: DenseCRF). Not in the paper."), show_default=False)] = None,
    crop_weight: Annotated[Optional[float], typer.Option("--crop-weight", help=_recipe("crop_weight", "Also name each instance by a CLIP image encoder shown a masked crop of it: class probability = dense^(1-w) x crop^w (0 = the paper's dense rule alone). Not in the paper."), show_default=False)] = None,
    crop_model: Annotated[Optional[str], typer.Option("--crop-model", help="The crop classifier's open_clip model (default: the checkpoint's CLIP before training).", show_default=False, autocompletion=complete_model_names)] = None,
    crop_pretrained: Annotated[Optional[str], typer.Option("--crop-pretrained", help="The crop classifier's weights (tag, file, builtin; default: the checkpoint's).", show_default=False)] = None,
    crop_adapter: Annotated[bool, typer.Option("--crop-adapter/--no-crop-adapter", help="Map the crop embeddings with the adapter the checkpoint's training fitted for its CLIP (`zutis train --crop-adapter-scenes`), when it has one and the crop classifier is that CLIP.")] = True,
    semantic_from: Annotated[Optional[str], typer.Option("--semantic-from", metavar="dense|instances", help=_recipe("semantic_from", "Semantic map from the dense embeddings (the paper) or painted from the instances (each pixel: the best-scoring instance covering it, else background)."), show_default=False)] = None,
    vis: Annotated[bool, typer.Option("--vis/--no-vis", help="Write overlay JPEGs to vis/.")] = True,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Images of one size sent through the model together (1 gives outputs bit-identical to one at a time; larger is faster on a GPU).")] = 1,
    loader_workers: Annotated[Optional[int], typer.Option("--loader-workers", help="Processes decoding images (default: one per CPU but one, up to 4, from 16 images; 0 = this process).", show_default=False)] = None,
    shard: Annotated[Optional[str], typer.Option("--shard", metavar="I/N", help="Segment slice I of N (0-based); default from SLURM array or torchrun. Writes OUTPUT/shard-I-of-N; join with `zutis predict merge`.", show_default=False)] = None,
    output: OutputOpt = None,
    dry_run: DryRunOpt = False,
    json_mode: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Segment images for any class names with a trained model (or the MaskCLIP baseline).

    Example: zutis predict data/scenes/images --checkpoint runs/train/demo --classes circle,square,star --task instance -o preds
    """
    from zutiscli.data.classes import parse_classes
    from zutiscli.errors import UsageError
    from zutiscli.pipeline.index import parse_shard
    from zutiscli.pipeline.predict import PredictConfig, plan_predict, predict as run_predict

    reporter = Reporter(json_mode, quiet)
    config = PredictConfig(
        inputs=list(images or []), from_list=str(from_list) if from_list else None,
        classes=parse_classes(classes, classes_file), method=method, checkpoint=checkpoint, model=model,
        pretrained=pretrained, task=task, device=device, precision=precision, max_size=max_size,
        mask_threshold=mask_threshold, class_temperature=class_temperature, score_threshold=score_threshold,
        nms=nms, iou_threshold=iou_threshold, sigma=sigma, max_detections=max_detections, crf=crf,
        crf_iterations=crf_iterations, crf_pos_w=crf_pos_w, crf_pos_xy=crf_pos_xy, crf_bi_w=crf_bi_w,
        crf_bi_xy=crf_bi_xy, crf_bi_rgb=crf_bi_rgb, workers=workers, components=components, refine=refine,
        crop_weight=crop_weight, crop_model=crop_model, crop_pretrained=crop_pretrained, crop_adapter=crop_adapter,
        semantic_from=semantic_from, vis=vis, inference=inference, batch_size=batch_size,
        loader_workers=loader_workers, shard=parse_shard(shard) if shard else None,
    )
    if not config.inputs and not config.from_list:
        raise UsageError("give the images to segment (files, directories, globs) or --from-list FILE")
    config.validate()
    if dry_run:
        print_dry_run(reporter, plan_predict(config, output))
        return
    with ProgressBar(reporter, "predict") as bar:
        result = run_predict(config, output, progress=bar, log=reporter.log)
    for path, reason in result.failed:
        reporter.warn(f"skipped {path}: {reason}")
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
