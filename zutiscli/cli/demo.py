"""`zutis demo`: the whole chain, offline on CPU, on the shapes world with shapes-clip."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from zutiscli.cli.options import DeviceOpt, JsonOpt, OutputOpt, ProgressBar, QuietOpt, Reporter


def demo(
    fast: Annotated[bool, typer.Option("--fast", help="A smaller recipe: 1,200 pile images, 300 training iterations, 100 test scenes (about 40% of the time).")] = False,
    ablation: Annotated[bool, typer.Option("--ablation", help="Also reproduce the paper's findings: no NMS, no stop-gradient (also at the paper's temperature 1), zero-shot to an untrained shape and to colour-shape names; and, beyond the paper, the crop adapter left out and the same model trained on ground-truth scenes, the bound of the chain.")] = False,
    pretrained: Annotated[str, typer.Option("--pretrained", help="shapes-clip weights: builtin (shipped) or a file from `zutis synth train-clip`.")] = "builtin",
    iterations: Annotated[Optional[int], typer.Option("--iterations", help="Training iterations (default: the recipe's).", show_default=False)] = None,
    pile: Annotated[Optional[int], typer.Option("--pile", help="Unlabelled images to index (default: the recipe's).", show_default=False)] = None,
    scenes: Annotated[Optional[int], typer.Option("--scenes", help="Held-out evaluation scenes (default: the recipe's).", show_default=False)] = None,
    k: Annotated[Optional[int], typer.Option("-k", help="Images retrieved per shape name (default: the recipe's).", show_default=False)] = None,
    zero_shot_class: Annotated[str, typer.Option("--zero-shot-class", help="--ablation: the shape left out of training.")] = "star",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the pile, of copy-paste and of training.")] = 0,
    workers: Annotated[int, typer.Option("--workers", help="Data-loading processes of training; with 0, the synthetic images and copy-paste scenes are written in this process too (else by one process per CPU, up to 4).")] = 1,
    device: DeviceOpt = "auto",
    output: OutputOpt = None,
    json_mode: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Run the whole chain on the shapes world: synth -> index -> retrieve -> pseudolabel -> copypaste -> train -> predict -> evaluate.

    Every stage writes its usual artefact under the output directory; summary.png shows a dozen
    held-out scenes (input, ground truth, prediction) with the metrics; metrics.json holds them all.

    Example: zutis demo --fast -o runs/demo-fast
    """
    from zutiscli.pipeline.demo import describe_stage_quality, preset, run_demo

    reporter = Reporter(json_mode, quiet)
    config = preset(fast, ablation=ablation, pretrained=pretrained, iterations=iterations, pile=pile, scenes=scenes,
                    k=k, zero_shot_class=zero_shot_class, seed=seed, workers=workers, device=device)
    with ProgressBar(reporter, "demo", unit="steps") as bar:
        def progress(stage: str, done: int, total: int) -> None:
            bar.describe(stage)
            bar(done, total or None)

        result = run_demo(config, output, log=reporter.log, progress=progress)
    table = format_table(result.metrics, result.seconds, result.summary_picture)
    reporter.result({"headline": result.metrics, "stage_quality": result.stage_quality, "seconds": result.seconds,
                     "summary_picture": str(result.summary_picture)},
                    path=result.path, text=describe_stage_quality(result.stage_quality) + "\n" + table)


def format_table(metrics: dict, seconds: dict, picture) -> str:
    """The metrics of every evaluated variant as an aligned text table, then where to look.

    A column no variant has (PQ, when nothing was scored panoptically) is left out.
    """
    columns = tuple(c for c in ("mIoU", "mask_AP", "mask_AP50", "mask_AP_agnostic", "PQ")
                    if any(values.get(c) is not None for values in metrics.values()))
    width = max(len(name) for name in metrics) + 2
    lines = ["variant".ljust(width) + "".join(c.rjust(18) for c in columns)]
    for name, values in metrics.items():
        cells = [values.get(c) for c in columns]
        lines.append(name.ljust(width) + "".join(("-" if v is None else f"{100 * v:.1f}").rjust(18) for v in cells))
    for name, values in metrics.items():
        went = values.get("unseen_class_pixels")
        if went and went.get("confused_with"):
            lines.append(f"{name}: {100 * went['correct']:.1f}% of its {went['class']} pixels labelled {went['class']}, "
                         f"{100 * went['fraction']:.1f}% {went['confused_with']}")
    lines.append(f"(percent; {sum(seconds.values()):.0f} s in all; open {picture} first)")
    return "\n".join(lines)
