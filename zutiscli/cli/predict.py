"""`zutis predict`: semantic, instance and panoptic segmentation of any images for any class names."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

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
    complete_class_names,
    complete_model_names,
    print_dry_run,
)


def predict(
    images: Annotated[Optional[List[str]], typer.Argument(help="Image files, directories or globs.", show_default=False)] = None,
    classes: Annotated[Optional[str], typer.Option("--classes", help="Comma-separated class names (any: the text encoder is open-vocabulary).", show_default=False, autocompletion=complete_class_names)] = None,
    classes_file: Annotated[Optional[Path], typer.Option("--classes-file", help="One class per line (name or name<TAB>phrase).", show_default=False)] = None,
    from_list: Annotated[Optional[Path], typer.Option("--from-list", help="Text file of image paths.", show_default=False)] = None,
    checkpoint: Annotated[Optional[str], typer.Option("--checkpoint", help="Run directory or model file (default: $ZUTIS_CHECKPOINT, else the newest ./runs/train run).", show_default=False)] = None,
    method: Annotated[str, typer.Option("--method", metavar="zutis|maskclip", help="A trained ZUTIS model, or the training-free MaskCLIP baseline.")] = "zutis",
    model: Annotated[str, typer.Option("--model", help="maskclip: open_clip model name.", autocompletion=complete_model_names)] = "ViT-B-16",
    pretrained: Annotated[Optional[str], typer.Option("--pretrained", help="maskclip: weights (tag, file, builtin).", show_default=False)] = None,
    task: Annotated[str, typer.Option("--task", metavar="semantic|instance|panoptic|all", help="What to predict.")] = "all",
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    max_size: Annotated[Optional[int], typer.Option("--max-size", help="Cap the long side fed to the model (outputs stay at the original size).", show_default=False)] = None,
    mask_threshold: Annotated[float, typer.Option("--mask-threshold", help="Binarise query masks at this probability.")] = 0.5,
    class_temperature: Annotated[float, typer.Option("--class-temperature", help="Class probability = sigmoid(T x cosine).")] = 5.0,
    score_threshold: Annotated[float, typer.Option("--score-threshold", help="Drop instances scoring at or below this.")] = 0.001,
    nms: Annotated[str, typer.Option("--nms", metavar="hard|linear|gaussian|matrix|none", help="Per-class mask NMS.")] = "hard",
    iou_threshold: Annotated[float, typer.Option("--iou-threshold", help="NMS IoU threshold.")] = 0.3,
    sigma: Annotated[float, typer.Option("--sigma", help="Gaussian (soft/matrix) NMS sigma.")] = 0.5,
    max_detections: Annotated[int, typer.Option("--max-detections", help="Most instances per image.")] = 100,
    crf: Annotated[bool, typer.Option("--crf/--no-crf", help="DenseCRF on the semantic class probabilities.")] = False,
    crf_iterations: Annotated[int, typer.Option("--crf-iterations", help="DenseCRF iterations.")] = 10,
    crf_pos_w: Annotated[float, typer.Option("--crf-pos-w", help="DenseCRF Gaussian kernel weight.")] = 3.0,
    crf_pos_xy: Annotated[float, typer.Option("--crf-pos-xy", help="DenseCRF Gaussian kernel spatial sigma.")] = 1.0,
    crf_bi_w: Annotated[float, typer.Option("--crf-bi-w", help="DenseCRF bilateral kernel weight.")] = 4.0,
    crf_bi_xy: Annotated[float, typer.Option("--crf-bi-xy", help="DenseCRF bilateral spatial sigma.")] = 67.0,
    crf_bi_rgb: Annotated[float, typer.Option("--crf-bi-rgb", help="DenseCRF bilateral colour sigma.")] = 3.0,
    workers: Annotated[int, typer.Option("--workers", help="Processes for the CRF (0 = this process).")] = 0,
    components: Annotated[bool, typer.Option("--components/--no-components", help="maskclip: split each class region into connected components.")] = False,
    refine: Annotated[str, typer.Option("--refine", metavar="none|bilateral|crf", help="Snap each instance mask to the image's edges before classifying and NMS (bilateral solver, as for pseudo-masks; crf: DenseCRF). Not in the paper.")] = "none",
    crop_weight: Annotated[float, typer.Option("--crop-weight", help="Also name each instance by a CLIP image encoder shown a masked crop of it: class probability = dense^(1-w) x crop^w (0 = the paper's dense rule alone). Not in the paper.")] = 0.0,
    crop_model: Annotated[Optional[str], typer.Option("--crop-model", help="The crop classifier's open_clip model (default: the checkpoint's CLIP before training).", show_default=False, autocompletion=complete_model_names)] = None,
    crop_pretrained: Annotated[Optional[str], typer.Option("--crop-pretrained", help="The crop classifier's weights (tag, file, builtin; default: the checkpoint's).", show_default=False)] = None,
    crop_adapter: Annotated[bool, typer.Option("--crop-adapter/--no-crop-adapter", help="Map the crop embeddings with the adapter the checkpoint's training fitted for its CLIP (`zutis train --crop-adapter-scenes`), when it has one and the crop classifier is that CLIP.")] = True,
    semantic_from: Annotated[str, typer.Option("--semantic-from", metavar="dense|instances", help="Semantic map from the dense embeddings (the paper) or painted from the instances (each pixel: the best-scoring instance covering it, else background).")] = "dense",
    vis: Annotated[bool, typer.Option("--vis/--no-vis", help="Write overlay JPEGs to vis/.")] = True,
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
        semantic_from=semantic_from, vis=vis,
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
