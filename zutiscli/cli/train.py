"""`zutis train`: train the ZUTIS segmenter on pseudo-labels (online copy-paste) or a copy-paste dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from zutiscli.cli.options import DeviceOpt, DryRunOpt, JsonOpt, OutputOpt, QuietOpt, Reporter, complete_model_names, err_console, print_dry_run

# Options that map one-to-one onto TrainConfig fields (name in the signature = field name).
_FIELDS = (
    "model", "pretrained", "num_queries", "decoder_layers", "decoder_heads", "decoder_ffn", "mlp_hidden",
    "temperature", "stop_gradient", "positional_values", "iterations", "batch_size", "crop", "lr",
    "encoder_lr_mult", "weight_decay", "poly_power", "min_lr", "lambda_mask", "max_objects", "same_class_prob",
    "scale_min", "scale_max", "canvas_min", "canvas_max", "outside", "crop_adapter_scenes", "crop_adapter_decay", "crop_adapter_views", "seed", "workers", "device", "precision",
    "checkpoint_every", "log_every", "max_minutes", "eval_images", "eval_gt", "eval_every", "eval_classes",
)


def train(
    ctx: typer.Context,
    source: Annotated[Optional[Path], typer.Argument(help="Pseudo-label directory (online copy-paste), copy-paste dataset, or `zutis synth scenes` (ground-truth supervision).", show_default=False)] = None,
    config_file: Annotated[Optional[Path], typer.Option("--config", metavar="FILE|NAME", help="Recipe of option values: a .yaml/.toml file, or a recipe shipped with zutis (official = the paper's, demo, demo-fast); flags given here override it.", show_default=False)] = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue the run in this directory exactly where it stopped.", show_default=False)] = None,
    model: Annotated[str, typer.Option("--model", help="open_clip ViT of the image encoder.", autocompletion=complete_model_names)] = "ViT-B-16",
    pretrained: Annotated[Optional[str], typer.Option("--pretrained", help="Tag, checkpoint file, builtin or none (default: shipped weights, else openai).", show_default=False)] = None,
    num_queries: Annotated[int, typer.Option("--num-queries", help="Learned queries of the instance decoder.")] = 100,
    decoder_layers: Annotated[int, typer.Option("--decoder-layers", help="Transformer decoder layers.")] = 6,
    decoder_heads: Annotated[int, typer.Option("--decoder-heads", help="Attention heads per decoder layer.")] = 8,
    decoder_ffn: Annotated[int, typer.Option("--decoder-ffn", help="Decoder feed-forward width.")] = 2048,
    mlp_hidden: Annotated[int, typer.Option("--mlp-hidden", help="Hidden width of the pixel and query MLPs.")] = 256,
    temperature: Annotated[float, typer.Option("--temperature", help="Semantic logits = cosine / temperature (1 = raw cosines, as the official code).")] = 1.0,
    stop_gradient: Annotated[bool, typer.Option("--stop-grad/--no-stop-grad", help="Detach patch tokens before the instance decoder (the paper's default).")] = True,
    positional_values: Annotated[bool, typer.Option("--positional-values/--no-positional-values", help="Add learned sine positions to the decoder's pixel values, so masks (query . value) can tell identical-looking instances apart (off = the paper's decoder).")] = False,
    iterations: Annotated[int, typer.Option("--iterations", help="Optimiser steps.")] = 20_000,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Global batch (split across processes).")] = 8,
    crop: Annotated[int, typer.Option("--crop", help="Training scene side in pixels.")] = 384,
    lr: Annotated[float, typer.Option("--lr", help="Learning rate of the heads.")] = 5e-5,
    encoder_lr_mult: Annotated[float, typer.Option("--encoder-lr-mult", help="Encoder learning rate = lr x this.")] = 0.1,
    weight_decay: Annotated[float, typer.Option("--weight-decay", help="AdamW weight decay.")] = 0.05,
    poly_power: Annotated[float, typer.Option("--poly-power", help="Poly schedule power.")] = 0.9,
    min_lr: Annotated[float, typer.Option("--min-lr", help="Poly schedule floor.")] = 1e-6,
    lambda_mask: Annotated[float, typer.Option("--lambda-mask", help="Weight of the mask loss.")] = 1.0,
    max_objects: Annotated[int, typer.Option("--max-objects", help="Most archive images per copy-paste scene.")] = 10,
    same_class_prob: Annotated[float, typer.Option("--same-class-prob", help="Chance that a scene draws from one archive.")] = 0.5,
    scale_min: Annotated[float, typer.Option("--scale-min", help="Smallest pasted object (fraction of the side).")] = 0.1,
    scale_max: Annotated[float, typer.Option("--scale-max", help="Largest pasted object (fraction of the side).")] = 1.0,
    canvas_min: Annotated[float, typer.Option("--canvas-min", help="Smallest scale of the canvas image (1 = full size, the official recipe).")] = 1.0,
    canvas_max: Annotated[float, typer.Option("--canvas-max", help="Largest scale of the canvas image.")] = 1.0,
    outside: Annotated[float, typer.Option("--outside", help="Largest share of a pasted object's box beyond the scene's edge, where it is cut off (0 = every object inside).")] = 0.0,
    crop_adapter_scenes: Annotated[int, typer.Option("--crop-adapter-scenes", help="Fit the crop classifier's adapter (`zutis predict --crop-weight`) on the objects of this many training scenes before training; saved in the checkpoint (0 = none). Not in the paper.")] = 1000,
    crop_adapter_decay: Annotated[float, typer.Option("--crop-adapter-decay", help="The crop adapter's penalty for leaving the identity: larger keeps more of what the training classes' names do not tell apart (colours, say), at some cost to naming those classes.")] = 0.01,
    crop_adapter_views: Annotated[int, typer.Option("--crop-adapter-views", help="Fit the crop adapter on this many recoloured views of each crop (any hue, or grey), so that it does not learn the colours CLIP left out of the archives as 'not this class' (0 = the crops as they are).")] = 3,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the scene stream and the initialisation.")] = 0,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Data workers (default: cores - 1, up to 8).", show_default=False)] = None,
    device: DeviceOpt = "auto",
    precision: Annotated[str, typer.Option("--precision", metavar="auto|fp32|bf16|fp16", help="Autocast precision; auto = fp16 on CUDA, bf16 on CPUs with bf16 units (AMX, AVX512-BF16), else fp32.")] = "auto",
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", help="Iterations between checkpoints.")] = 1000,
    log_every: Annotated[int, typer.Option("--log-every", help="Iterations between metrics.jsonl lines.")] = 10,
    max_minutes: Annotated[Optional[float], typer.Option("--max-minutes", help="Stop (and save) after this much training time.", show_default=False)] = None,
    eval_images: Annotated[Optional[str], typer.Option("--eval-images", metavar="DIR", help="Held-out set with ground truth (`zutis synth scenes` or `zutis evaluate prepare` output), segmented and scored like `zutis predict` + `zutis evaluate` every --eval-every iterations and at the end.", show_default=False)] = None,
    eval_gt: Annotated[Optional[str], typer.Option("--eval-gt", metavar="PATH", help="Ground truth of the held-out images (anything `zutis evaluate --gt` reads), when --eval-images holds only images.", show_default=False)] = None,
    eval_every: Annotated[int, typer.Option("--eval-every", help="Iterations between held-out evaluations (0 = only at the end of the run).")] = 0,
    eval_classes: Annotated[Optional[str], typer.Option("--eval-classes", metavar="A,B,...", help="Classes segmented in evaluation (default: the training classes).", show_default=False)] = None,
    output: OutputOpt = None,
    dry_run: DryRunOpt = False,
    json_mode: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train the ZUTIS model (semantic + instance) on pseudo-labels; resumable; torchrun for several GPUs.

    Example: zutis train data/pseudo --model shapes-clip --iterations 2 --batch-size 2 --crop 64 --num-queries 4 --decoder-layers 1 --crop-adapter-scenes 20 --workers 0 -o runs/train/demo
    """
    from zutiscli.errors import UsageError
    from zutiscli.pipeline.train import TrainConfig, load_recipe, plan_training, train as run_training

    reporter = Reporter(json_mode, quiet)
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(load_recipe(config_file))
    recipe = set(values)
    local = locals()
    flags: set[str] = set()
    for name in _FIELDS:
        source_kind = ctx.get_parameter_source(name)
        explicit = source_kind is not None and source_kind.name not in ("DEFAULT", "DEFAULT_MAP")
        if explicit:
            flags.add(name)
        if explicit or name not in values:
            values[name] = local[name]
    if source is not None:
        values["source"] = str(source)
    where = str(config_file) if config_file else "options"
    if resume is not None:
        # A resumed run keeps its own recipe; only --iterations (from a flag or a recipe) extends it.
        ignored = sorted((flags | recipe | ({"source"} if source is not None else set())) - {"iterations"})
        if ignored:
            reporter.warn(f"{', '.join('--' + n.replace('_', '-') for n in ignored)} ignored with --resume: "
                          f"the run continues with the options it was started with")
        extend = "iterations" in flags or "iterations" in recipe
        config = TrainConfig.from_dict({"iterations": values["iterations"]}, where=where) if extend else None
    else:
        config = TrainConfig.from_dict(values, where=where)
        if not config.source:
            raise UsageError("give the pseudo-label or dataset directory to train on (or --resume RUN_DIR)")
    if dry_run:
        print_dry_run(reporter, plan_training(config, output=output, resume=resume))
        return

    state = {"task": None, "progress": None}
    if reporter.show_progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        state["progress"] = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                     console=err_console, transient=True)

    def progress(iteration: int, total: int, losses: dict[str, float]) -> None:
        bar = state["progress"]
        if bar is None:
            return
        if state["task"] is None:
            state["task"] = bar.add_task("train", total=total, completed=iteration - 1, loss="")
        bar.update(state["task"], completed=iteration, total=total, loss=f"{losses.get('loss', float('nan')):.4f}")

    if state["progress"] is not None:
        state["progress"].start()
    try:
        result = run_training(config, output=output, resume=resume, progress=progress, log=reporter.log)
    finally:
        if state["progress"] is not None:
            state["progress"].stop()
    if not result.main:
        return
    reporter.log(f"{result.stopped}: iteration {result.iteration}, {result.iterations_per_second:.2f} it/s, "
                 f"final loss {result.last.get('loss', float('nan')):.4f}")
    reporter.result({"iteration": result.iteration, "stopped": result.stopped,
                     "iterations_per_second": round(result.iterations_per_second, 4),
                     "final": {k: round(v, 6) for k, v in result.last.items()}}, path=result.path)
