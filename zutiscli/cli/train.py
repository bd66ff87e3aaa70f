"""`zutis train`: train the ZUTIS segmenter on pseudo-labels (online copy-paste) or a copy-paste dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from zutiscli.cli.from_config import ConfigValues, from_config
from zutiscli.cli.options import DryRunOpt, JsonOpt, OutputOpt, QuietOpt, Reporter, err_console, print_dry_run
from zutiscli.config_fields import option_fields
from zutiscli.pipeline.reclip_config import SHARED, ReclipTrainConfig
from zutiscli.pipeline.train_config import TrainConfig, load_recipe

#: The flag of each TrainConfig option (``stop_gradient`` -> ``--stop-grad``), for messages.
_FLAGS = {field.name: spec.names(field.name)[0].split("/")[0]
          for config in (TrainConfig, ReclipTrainConfig) for field, spec, _ in option_fields(config)}


def _named(names: set[str]) -> str:
    return ", ".join(_FLAGS.get(name, "--" + name.replace("_", "-")) for name in sorted(names))


@from_config(TrainConfig, into="options")
@from_config(ReclipTrainConfig, into="reclip_options")
def train(
    ctx: typer.Context,
    source: Annotated[Optional[Path], typer.Argument(help="Pseudo-label directory (online copy-paste), clusters (`zutis cluster`: the clusters are the classes, see --classifier), copy-paste dataset, `zutis synth scenes` (ground-truth supervision), or `zutis predict` output (its semantic maps and instances as labels: ReCo+). With --method reclip: an image folder (with --classes) or a `zutis hypotheses` directory.", show_default=False)] = None,
    config_file: Annotated[Optional[Path], typer.Option("--config", metavar="FILE|NAME", help="Recipe of option values: a .yaml/.toml file, or a recipe shipped with zutis (official = the paper's, demo, demo-fast); flags given here override it.", show_default=False)] = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue the run in this directory exactly where it stopped.", show_default=False)] = None,
    options: ConfigValues = None,
    reclip_options: ConfigValues = None,
    output: OutputOpt = None,
    dry_run: DryRunOpt = False,
    json_mode: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train the ZUTIS model (semantic + instance) on pseudo-labels, or ReCLIP++'s rectified CLIP (--method reclip); resumable; torchrun for several GPUs.

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

    def explicit(name: str) -> bool:
        source_kind = ctx.get_parameter_source(name)
        return source_kind is not None and source_kind.name not in ("DEFAULT", "DEFAULT_MAP")

    method = values.get("method", options["method"]) if not explicit("method") else options["method"]
    if resume is not None:
        from zutiscli.artefacts.runs import run_method

        method = run_method(resume)
    reclip_given = {name for name in reclip_options if explicit(name)}
    if method == "reclip":
        return _train_reclip(source, values, recipe, options, reclip_options, explicit, resume, output, dry_run,
                             reporter)
    if reclip_given:
        raise UsageError(f"{_named(reclip_given)}: option(s) of --method reclip, not of ZUTIS training")
    for name, value in options.items():  # flags given here override the recipe; its values, the defaults
        if explicit(name):
            flags.add(name)
        if explicit(name) or name not in values:
            values[name] = value
    if source is not None:
        values["source"] = str(source)
    where = str(config_file) if config_file else "options"
    if resume is not None:
        # A resumed run keeps its own recipe; only --iterations (from a flag or a recipe) extends it.
        ignored = (flags | recipe | ({"source"} if source is not None else set())) - {"iterations", "method"}
        if ignored:
            reporter.warn(f"{_named(ignored)} ignored with --resume: "
                          f"the run continues with the options it was started with")
        extend = "iterations" in flags or "iterations" in recipe
        config = TrainConfig.from_dict({"iterations": values["iterations"]}, where=where) if extend else None
    else:
        config = TrainConfig.from_dict(values, where=where)
        if not config.source:
            raise UsageError("give the pseudo-label or dataset directory to train on (or --resume RUN_DIR)")
    _execute(reporter, dry_run, plan_training, run_training, config, output, resume)


def _execute(reporter: Reporter, dry_run: bool, plan: Any, run: Any, config: Any, output: Any, resume: Any) -> None:
    """Print ``plan``'s dry run, or ``run`` the training with a progress bar and report it."""
    if dry_run:
        print_dry_run(reporter, plan(config, output=output, resume=resume))
        return
    result = _run(reporter, lambda progress: run(config, output=output, resume=resume, progress=progress,
                                                  log=reporter.log))
    _report(reporter, result)


def _run(reporter: Reporter, run: Any) -> Any:
    """``run(progress)`` with a progress bar on the terminal."""
    state: dict[str, Any] = {"task": None, "progress": None}
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
        return run(progress)
    finally:
        if state["progress"] is not None:
            state["progress"].stop()


def _report(reporter: Reporter, result: Any) -> None:
    if not result.main:
        return
    reporter.log(f"{result.stopped}: iteration {result.iteration}, {result.iterations_per_second:.2f} it/s, "
                 f"final loss {result.last.get('loss', float('nan')):.4f}")
    reporter.result({"iteration": result.iteration, "stopped": result.stopped,
                     "iterations_per_second": round(result.iterations_per_second, 4),
                     "final": {k: round(v, 6) for k, v in result.last.items()}}, path=result.path)


def _train_reclip(source: Optional[Path], values: dict[str, Any], recipe: set[str],
                  options: dict[str, Any], reclip_options: dict[str, Any], explicit: Any, resume: Optional[Path],
                  output: Optional[Path], dry_run: bool, reporter: Reporter) -> None:
    """``zutis train --method reclip``: its options are its own and the shared ones given (flags beat the
    recipe, the recipe beats ReCLIP++'s defaults); ZUTIS-only options are refused by name."""
    from zutiscli.errors import UsageError
    from zutiscli.pipeline.train_reclip import plan_reclip, train_reclip

    zutis_only = {name for name in options if explicit(name) and name not in SHARED and name != "method"}
    zutis_only |= {name for name in recipe if name not in SHARED and name not in reclip_options and name != "method"}
    if zutis_only:
        raise UsageError(f"{_named(zutis_only)}: option(s) of ZUTIS training, not of --method reclip")
    chosen = {name: value for name, value in values.items() if name != "method"}
    chosen |= {name: options[name] for name in SHARED if explicit(name)}
    chosen |= {name: value for name, value in reclip_options.items() if explicit(name)}
    if resume is not None:
        ignored = (set(chosen) | ({"source"} if source is not None else set())) - {"iterations"}
        if ignored:
            reporter.warn(f"{_named(ignored)} ignored with --resume: the run continues with the options it was "
                          f"started with")
        config = ReclipTrainConfig.from_dict({"iterations": chosen["iterations"]}, where="options") \
            if "iterations" in chosen else None
    else:
        if source is None and not chosen.get("teacher"):
            raise UsageError("give the images (with --classes) or the `zutis hypotheses` directory to train on "
                             "(or --resume RUN_DIR)")
        config = ReclipTrainConfig.from_dict(chosen | {"source": str(source or "")}, where="options")
    _execute(reporter, dry_run, plan_reclip, train_reclip, config, output, resume)
