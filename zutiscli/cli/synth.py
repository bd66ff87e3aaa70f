"""`zutis synth`: generate the shapes world (unlabelled pile, evaluation scenes, caption pairs)."""

from __future__ import annotations

from typing import Annotated

import typer

from zutiscli.cli.from_config import ConfigValues, from_config
from zutiscli.cli.options import (CommandGroup, DeviceOpt, DryRunOpt, JsonOpt, OutputOpt, ProgressBar, QuietOpt,
                                  Reporter, complete_model_names, print_dry_run)
from zutiscli.pipeline.synth_config import SynthConfig, command_defaults
from zutiscli.shapes.clip_recipe import TrainClipConfig

app = typer.Typer(
    cls=CommandGroup,
    help=(
        "Generate the shapes world: coloured shapes on textured backgrounds with exact masks. "
        "It makes the whole pipeline runnable and measurable offline; real use needs real images."
    ),
    no_args_is_help=True,
)

SeedOpt = Annotated[int, typer.Option("--seed", help="Seed; same seed -> same bytes. Use one seed per split.")]
#: Options of scenes alone (a pile or pairs image draws its own number of objects).
_SCENES_ONLY = ("min_objects", "max_objects", "panoptic")


def _run(kind: str, options: dict, output, json_mode: bool, quiet: bool) -> None:
    from zutiscli.artefacts.manifest import read_manifest
    from zutiscli.pipeline.synth import write_synth

    reporter = Reporter(json_mode, quiet)
    config = SynthConfig(kind=kind, **options)
    config.validate()
    with ProgressBar(reporter, f"synth {kind}") as bar:
        out = write_synth(config, output, progress=bar)
    summary = read_manifest(out).summary
    reporter.log(f"wrote {summary['images']} images ({kind}) with {summary['objects']} objects "
                 f"in {summary['seconds']:.1f} s")
    reporter.result({"kind": kind, **summary}, path=out)


@app.command("pile")
@from_config(SynthConfig, into="options", exclude=_SCENES_ONLY, defaults=command_defaults("pile"))
def pile(
    options: ConfigValues = None,
    output: OutputOpt = None,
    json_mode: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """An unlabelled image collection to index (mostly one object; some two, some none).

    Ground truth is kept aside in hidden/instances.json.

    Example: zutis synth pile -n 60 --size 64 -o data/pile
    """
    _run("pile", options, output, json_mode, quiet)


@app.command("scenes")
@from_config(SynthConfig, into="options", defaults=command_defaults("scenes"))
def scenes(
    options: ConfigValues = None,
    output: OutputOpt = None,
    json_mode: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Evaluation scenes: several objects, occlusion, repeated instances.

    Writes COCO instances.json and semantic/ label PNGs (0 = background, 1..6 = shapes).

    Example: zutis synth scenes -n 4 --size 64 -o data/scenes
    """
    _run("scenes", options, output, json_mode, quiet)


@app.command("pairs")
@from_config(SynthConfig, into="options", exclude=(*_SCENES_ONLY, "split"), defaults=command_defaults("pairs"))
def pairs(
    options: ConfigValues = None,
    output: OutputOpt = None,
    json_mode: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Image-caption pairs (captions.jsonl); held-out colour-shape pairs never appear.

    Example: zutis synth pairs -n 20 --size 64 -o data/pairs
    """
    _run("pairs", options, output, json_mode, quiet)


_CLIP = TrainClipConfig()  # the shipped model's recipe: the defaults of `zutis synth train-clip`


@app.command("train-clip")
def train_clip(
    model: Annotated[str, typer.Option("--model", metavar="NAME", help="Architecture to train: a config in zutiscli/models/configs or any open_clip model name; it is trained at its own input size.", autocompletion=complete_model_names)] = _CLIP.model,
    init: Annotated[str, typer.Option("--init", metavar="none|builtin|FILE", help="Weights to start from: none (random initialisation, as the shipped weights were trained), builtin (the shipped weights) or a weights file of --model, e.g. an earlier run's: fine-tuning.")] = _CLIP.init,
    steps: Annotated[int, typer.Option("--steps", help="Optimiser steps (the shipped model's recipe is the default).")] = _CLIP.steps,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Image-caption pairs per step.")] = _CLIP.batch_size,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate (AdamW, warm-up then cosine).")] = _CLIP.lr,
    stuff: Annotated[float, typer.Option("--stuff", help="Share of training pairs drawn over named stuff (sky, grass, ...) and captioned with it.")] = _CLIP.stuff,
    varied: Annotated[float, typer.Option("--varied", help="Share of training pairs drawn over varied training backgrounds with clutter and lighting changes (never the shift split's looks).")] = _CLIP.varied,
    dense: Annotated[float, typer.Option("--dense", metavar="WEIGHT", help="Weight of a patch-aligned contrastive term: each caption also scored against the MaskCLIP value-path patch tokens most like it (PACL), so that the patches MaskCLIP reads carry what captions name; 0 = the pooled embedding alone, as CLIP.")] = _CLIP.dense,
    seed: SeedOpt = _CLIP.seed,
    device: DeviceOpt = _CLIP.device,
    precision: Annotated[str, typer.Option("--precision", metavar="auto|fp32|bf16|fp16", help="Autocast of the forward pass: auto (bf16 on CUDA, fp32 on the CPU as the shipped weights were trained), fp32, bf16, fp16 (CUDA).")] = _CLIP.precision,
    threads: Annotated[int, typer.Option("--threads", help="torch threads for training.")] = _CLIP.threads,
    workers: Annotated[int, typer.Option("--workers", help="Data-generation processes (0 = in the training process).")] = _CLIP.workers,
    eval_pool: Annotated[int, typer.Option("--eval-pool", help="Images for the retrieval/zero-shot evaluation afterwards, on the train and the shift split (0 = skip).")] = _CLIP.eval_pool,
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", help="Steps between resumable checkpoints (a multiple of 50; 0 = none); rerun the same command with the same -o to resume.")] = _CLIP.checkpoint_every,
    output: OutputOpt = None,
    dry_run: DryRunOpt = False,
    json_mode: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train `shapes-clip`, the shapes world's own CLIP, from scratch (or from --init weights).

    Writes OUTPUT/MODEL.pt (fp16 weights: OUTPUT/shapes-clip.pt, used with --model shapes-clip
    --pretrained FILE) and OUTPUT/MODEL.json (recipe, SHA-256 of the --init weights, loss curve, metrics).
    An interrupted run resumes where its last checkpoint left off when the same command is run again with
    the same -o (and the same --init weights).

    Example: zutis synth train-clip --steps 2 --batch-size 4 --workers 0 --eval-pool 0 --checkpoint-every 0 -o runs/clip-smoke
    """
    from zutiscli.artefacts.manifest import read_manifest
    from zutiscli.pipeline.train_clip import plan_train_clip, train_clip as run_train_clip

    reporter = Reporter(json_mode, quiet)
    config = TrainClipConfig(model=model, init=init, steps=steps, batch_size=batch_size, lr=lr, stuff=stuff,
                             varied=varied, dense=dense, seed=seed,
                             device=device, precision=precision, threads=threads, workers=workers,
                             eval_pool=eval_pool, warmup=min(200, max(1, steps // 10)),
                             checkpoint_every=checkpoint_every)
    if dry_run:
        print_dry_run(reporter, plan_train_clip(config, output))
        return
    with ProgressBar(reporter, "train shapes-clip", unit="steps") as bar:
        out, report = run_train_clip(config, output, progress=lambda step, total, stats: bar(step, total),
                                 log=reporter.log)
    summary = read_manifest(out).summary  # what train_clip recorded: steps, train_seconds, final_loss
    reporter.log(f"trained {report['steps']} steps in {report['train_seconds']:.0f} s; final loss {report['final_loss']:.4f}")
    reporter.result({**summary, "metrics": report.get("metrics") or {}, "metrics_shift": report.get("metrics_shift") or {}},
                    path=out)
