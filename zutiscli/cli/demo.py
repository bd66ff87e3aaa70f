"""`zutis demo`: the whole chain, offline on CPU, on the shapes world with shapes-clip-v2."""

from __future__ import annotations

from typing import Annotated

import typer

from zutiscli.cli.from_config import ConfigValues, from_config
from zutiscli.cli.options import JsonOpt, OutputOpt, ProgressBar, QuietOpt, Reporter
from zutiscli.pipeline.demo_config import COMMAND_DEFAULTS, DemoConfig, preset


# --help lists --fast, then DemoConfig's options (those --fast presets default to the preset's).
@from_config(DemoConfig, into="options", defaults=COMMAND_DEFAULTS)
def demo(
    fast: Annotated[bool, typer.Option("--fast", help="A smaller recipe: 1,200 pile images, 300 training iterations, 100 test scenes (about 40% of the time).")] = False,
    options: ConfigValues = None,
    output: OutputOpt = None,
    json_mode: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Run the whole chain on the shapes world: synth -> index -> retrieve -> pseudolabel -> copypaste -> train -> predict -> evaluate.

    Every stage writes its usual artefact under the output directory; summary.png shows a dozen
    held-out scenes (input, ground truth, prediction) with the metrics; metrics.json holds them all.

    Example: zutis demo --fast -o runs/demo-fast
    """
    from zutiscli.pipeline.demo import describe_stage_quality, run_demo

    reporter = Reporter(json_mode, quiet)
    config = preset(fast, **options)
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
    columns = tuple(c for c in ("mIoU", "mask_AP", "mask_AP50", "mask_AP_agnostic", "PQ", "PQ_things", "PQ_stuff")
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
