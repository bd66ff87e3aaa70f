"""`zutis train`: train the ZUTIS segmenter on pseudo-labels (online copy-paste) or a copy-paste dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from zutiscli.cli.from_config import ConfigValues, from_config
from zutiscli.cli.options import DryRunOpt, JsonOpt, OutputOpt, QuietOpt, Reporter, err_console, print_dry_run
from zutiscli.config_fields import option_fields
from zutiscli.pipeline.train_config import TrainConfig, load_recipe

#: The flag of each TrainConfig option (``stop_gradient`` -> ``--stop-grad``), for messages.
_FLAGS = {field.name: spec.names(field.name)[0].split("/")[0] for field, spec, _ in option_fields(TrainConfig)}


@from_config(TrainConfig, into="options")
def train(
    ctx: typer.Context,
    source: Annotated[Optional[Path], typer.Argument(help="Pseudo-label directory (online copy-paste), clusters (`zutis cluster`: the clusters are the classes, see --classifier), copy-paste dataset, `zutis synth scenes` (ground-truth supervision), or `zutis predict` output (its semantic maps and instances as labels: ReCo+).", show_default=False)] = None,
    config_file: Annotated[Optional[Path], typer.Option("--config", metavar="FILE|NAME", help="Recipe of option values: a .yaml/.toml file, or a recipe shipped with zutis (official = the paper's, demo, demo-fast); flags given here override it.", show_default=False)] = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue the run in this directory exactly where it stopped.", show_default=False)] = None,
    options: ConfigValues = None,
    output: OutputOpt = None,
    dry_run: DryRunOpt = False,
    json_mode: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train the ZUTIS model (semantic + instance) on pseudo-labels; resumable; torchrun for several GPUs.

    Example: zutis train data/pseudo --model shapes-clip --iterations 2 --batch-size 2 --crop 64 --num-queries 4 --decoder-layers 1 --crop-adapter-scenes 20 --workers 0 -o runs/train/demo
    """
    from zutiscli.errors import UsageError
    from zutiscli.pipeline.train import plan_training, train as run_training

    reporter = Reporter(json_mode, quiet)
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(load_recipe(config_file))
    recipe = set(values)
    flags: set[str] = set()
    for name, value in options.items():  # flags given here override the recipe; its values, the defaults
        source_kind = ctx.get_parameter_source(name)
        explicit = source_kind is not None and source_kind.name not in ("DEFAULT", "DEFAULT_MAP")
        if explicit:
            flags.add(name)
        if explicit or name not in values:
            values[name] = value
    if source is not None:
        values["source"] = str(source)
    where = str(config_file) if config_file else "options"
    if resume is not None:
        # A resumed run keeps its own recipe; only --iterations (from a flag or a recipe) extends it.
        ignored = sorted((flags | recipe | ({"source"} if source is not None else set())) - {"iterations"})
        if ignored:
            named = ", ".join(_FLAGS.get(name, "--" + name.replace("_", "-")) for name in ignored)
            reporter.warn(f"{named} ignored with --resume: "
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
