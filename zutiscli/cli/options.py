"""Conventions every `zutis` subcommand follows, written down once.

- Results go to stdout, everything else (logs, progress, warnings) to stderr.
- ``--json`` prints exactly one JSON document on stdout and nothing else there.
- ``--quiet`` silences logs and progress (errors still print).
- ``--dry-run`` (commands that do long work) checks options and inputs as a real run would,
  prints what would be read and written (:func:`print_dry_run`), and writes nothing.
- ``--device auto|cpu|cuda|cuda:N``; ``auto`` is CUDA when available.
- ``-o/--output`` is optional: without it a stage writes ``./runs/<stage>/<N>``, a new number each
  run, and the artefact path is the last line on stdout, so shell scripts can chain stages::

      INDEX=$(zutis index ./images | tail -n 1)

- Exit status 0 on success, 1 for a runtime or input error, 2 for a usage error. A user mistake
  prints one line, ``error: ...``, never a traceback (``ZUTIS_DEBUG=1`` shows it).
- ``NO_COLOR`` turns colour off.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from typer.core import TyperGroup

from zutiscli.config_fields import DEVICE_HELP, PRECISION_CHOICES, PRECISION_HELP
from zutiscli.models.device import DEVICE_CHOICES

#: stderr console for logs and progress; rich honours NO_COLOR and non-terminals by itself.
err_console = Console(stderr=True, highlight=False)


def check_device(ctx: typer.Context, value: str) -> str:
    """``--device`` callback: refuse a device this machine lacks while the options are parsed.

    So a command stops before it prints, reads or writes anything: a malformed name is a usage
    error (exit 2), a missing GPU a runtime error (exit 1). Shell completion parses options
    resiliently and is never refused.
    """
    if not ctx.resilient_parsing:
        from zutiscli.models.device import resolve_device

        resolve_device(value)
    return value


JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout, nothing else.")]
ClassesFileOpt = Annotated[Optional[Path], typer.Option(
    "--classes-file", help="One class per line (name or name<TAB>phrase).", show_default=False)]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No logs or progress on stderr.")]
DeviceOpt = Annotated[str, typer.Option("--device", metavar=DEVICE_CHOICES, callback=check_device, help=DEVICE_HELP)]
DryRunOpt = Annotated[
    bool,
    typer.Option("--dry-run", help="Check the inputs and options, print what would be read and written, write nothing."),
]
PrecisionOpt = Annotated[
    str,
    typer.Option("--precision", metavar="|".join(PRECISION_CHOICES), help=PRECISION_HELP),
]
OutputOpt = Annotated[
    Optional[Path],
    typer.Option("--output", "-o", help="Output directory (default: a new ./runs/<stage>/<N>)."),
]


class CommandGroup(TyperGroup):
    """A command group that, called without arguments, shows its help on stderr and fails (exit 2).

    Click would print the help on stdout; a usage error keeps stdout empty, so that
    ``$(zutis index | tail -n 1)`` never captures a line of help as a path.
    """

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if not args and self.no_args_is_help and not ctx.resilient_parsing:
            from typer._click.exceptions import UsageError as ClickUsageError

            with contextlib.redirect_stdout(sys.stderr):  # rich prints the help itself, to sys.stdout
                text = ctx.get_help()
            if text:
                sys.stderr.write(text.rstrip("\n") + "\n")
            raise ClickUsageError("missing a command or its arguments", ctx=ctx)
        return super().parse_args(ctx, args)


class DefaultCommandGroup(CommandGroup):
    """A command group whose first argument, when it names no subcommand, goes to a default one.

    So `zutis index IMAGES...` runs `zutis index build IMAGES...` while `zutis index merge ...`
    still reaches `merge`. Subclass and set ``default_command``.
    """

    default_command = ""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)

    def shell_complete(self, ctx: Any, incomplete: str) -> list[Any]:
        """Shell completion: the subcommands, and for an option name also the default subcommand's options."""
        results = super().shell_complete(ctx, incomplete)
        default = self.get_command(ctx, self.default_command)
        if default is not None and incomplete.startswith("-"):
            offered = {item.value for item in results}
            with default.make_context(self.default_command, [], parent=ctx, resilient_parsing=True) as sub_ctx:
                results.extend(item for item in default.shell_complete(sub_ctx, incomplete) if item.value not in offered)
        return results


def group_with_default(name: str, default: str, help: str) -> typer.Typer:
    """The command group ``zutis NAME`` whose first argument, when it names no subcommand, goes to
    ``default`` (``zutis index IMAGES`` = ``zutis index build IMAGES``); its help ends by saying
    where the default command's options are listed."""
    group = type(f"_{default.title()}ByDefault", (DefaultCommandGroup,), {"default_command": default})
    return typer.Typer(cls=group, no_args_is_help=True,
                       help=f"{help} `zutis {name} {default} --help` lists its options.")



class Reporter:
    """Prints for one command invocation, honouring ``--json`` and ``--quiet``."""

    def __init__(self, json_mode: bool = False, quiet: bool = False):
        self.json_mode = json_mode
        self.quiet = quiet

    @property
    def console(self) -> Console:
        return err_console

    @property
    def show_progress(self) -> bool:
        return not self.quiet

    def log(self, message: str) -> None:
        """A progress or status line on stderr (silenced by --quiet)."""
        if not self.quiet:
            err_console.print(message)

    def warn(self, message: str) -> None:
        """A warning on stderr, one line however long (the terminal wraps it, not rich); shown even with --quiet."""
        err_console.print(f"[yellow]warning:[/yellow] {message}", soft_wrap=True)

    def result(self, data: dict[str, Any], *, path: Path | None = None, text: str | None = None) -> None:
        """Print the command's result on stdout.

        With ``--json``: one JSON document (``data``, plus ``"path"`` when given). Otherwise the
        human ``text`` if any, then the artefact path alone on the last line.
        """
        if self.json_mode:
            payload = dict(data)
            if path is not None:
                payload.setdefault("path", str(path))
            sys.stdout.write(json.dumps(payload, ensure_ascii=False, allow_nan=False) + "\n")
        else:
            if text:
                sys.stdout.write(text.rstrip("\n") + "\n")
            if path is not None:
                sys.stdout.write(f"{path}\n")
        sys.stdout.flush()


def _amount(value: Any) -> str:
    """A count with thousands separators, a float briefly, a list joined by commas, anything else as is."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) or "-"
    return str(value)


def _fields(data: dict[str, Any], skip: tuple[str, ...] = (), counts: bool = False) -> str:
    """``{"batch_size": 64}`` -> ``batch size 64``; with ``counts``, ``{"images": 12}`` -> ``12 images``."""
    items = [(key.replace("_", " "), _amount(value)) for key, value in data.items() if key not in skip]
    return ", ".join(f"{value} {key}" if counts else f"{key} {value}" for key, value in items)


def print_dry_run(reporter: Reporter, plan: Any) -> None:
    """Print a dry run's plan (:class:`zutiscli.pipeline.plan.Plan`) on stdout, as the command's result.

    With ``--json``: the one document ``{"dry_run": true, "reads": ..., "writes": ..., ...}``.
    Otherwise one line per input, the model, the output, the key options and the work, then a
    reminder that nothing was written; warnings a real run would print go to stderr as warnings.
    """
    from zutiscli.pipeline.plan import WEIGHT_SOURCES

    data = plan.to_json()
    for note in plan.notes:
        reporter.warn(note)
    if reporter.json_mode:
        reporter.result(data)
        return
    lines = [f"dry run of zutis {plan.command}:"]
    for item in plan.reads:
        counts = _fields(item, skip=("path", "kind"), counts=True)
        lines.append(f"  read   {item['path']} ({item['kind']})" + (f": {counts}" if counts else ""))
    if plan.model:
        model = plan.model
        weights = model.get("weights") or model.get("pretrained")
        where = WEIGHT_SOURCES.get(model.get("source"), model.get("source"))
        extra = _fields(model, skip=("name", "pretrained", "weights", "source", "bytes"))
        lines.append(f"  model  {model.get('name')}, weights {weights} ({where})" + (f", {extra}" if extra else ""))
    state = {"new": "new directory", "empty": "empty directory", "existing": "existing directory, continued"}
    lines.append(f"  write  {plan.writes['path']} ({state.get(plan.writes['state'], plan.writes['state'])})")
    if plan.params:
        lines.append(f"  with   {_fields(plan.params)}")
    if plan.work:
        lines.append(f"  work   {_fields(plan.work, counts=True)}")
    lines.append("nothing was written (--dry-run)")
    reporter.result(data, text="\n".join(lines))


class ProgressBar:
    """A rich progress bar on stderr (nothing when quiet), used as ``callback(done, total)``.

    The bar appears at the first report, so a command that fails before reporting progress
    leaves stderr to its one error line.
    """

    def __init__(self, reporter: Reporter, description: str, unit: str = "images"):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.unit = unit
        self._progress = None
        self._task = None
        self._started = False
        if reporter.show_progress:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=err_console,
                transient=True,
            )
            self._task = self._progress.add_task(description, total=None, rate="")

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc: object) -> None:
        if self._started:
            self._progress.stop()

    def _start(self) -> None:
        if self._progress is not None and not self._started:
            self._progress.start()
            self._started = True

    def describe(self, description: str) -> None:
        """Change the label in front of the bar (for commands that run several stages)."""
        if self._progress is not None and self._progress.tasks[0].description != description:
            self._start()
            self._progress.reset(self._task, description=description, total=None)

    def __call__(self, done: int, total: int | None = None) -> None:
        if self._progress is None:
            return
        self._start()
        task = self._progress.tasks[0]
        elapsed = task.elapsed or 0.0
        rate = f"{done / elapsed:,.1f} {self.unit}/s" if elapsed > 0 else ""
        self._progress.update(self._task, completed=done, total=total, rate=rate)


def complete_model_names(incomplete: str) -> list[str | tuple[str, str]]:
    """Shell completion of ``--model``: open_clip model names and zutis' own configs starting with ``incomplete``.

    Both are the names of config files (what ``open_clip.list_models()`` lists), read without
    importing open_clip or torch, so that a TAB answers at once.
    """
    import importlib.util

    from zutiscli.models import CONFIG_DIR

    own = {path.stem for path in CONFIG_DIR.glob("*.json")}
    spec = importlib.util.find_spec("open_clip")
    folders = [Path(folder) / "model_configs" for folder in (spec.submodule_search_locations or [])] if spec else []
    names = own | {path.stem for folder in folders for path in folder.glob("*.json")}
    return [(name, "zutis model config") if name in own else name
            for name in sorted(names) if name.startswith(incomplete)]


def complete_class_names(ctx: typer.Context, incomplete: str) -> list[str | tuple[str, str]]:
    """Shell completion of ``--classes``: the names of the ``--classes-file`` given before it.

    The last comma-separated item is completed (``cat,d`` -> ``cat,dog``) and names already listed
    are not offered again. Without a readable classes file there is nothing to offer.
    """
    from zutiscli.data.classes import read_classes_file
    from zutiscli.errors import ZutisError

    path = ctx.params.get("classes_file")
    if not path:
        return []
    try:
        queries = read_classes_file(path)
    except ZutisError:
        return []
    head, comma, last = incomplete.rpartition(",")
    given = {item.strip() for item in head.split(",")} if comma else set()
    offered: list[str | tuple[str, str]] = []
    for query in queries:
        if "," in query.name or query.name in given or not query.name.startswith(last):
            continue
        value = f"{head}{comma}{query.name}"
        offered.append((value, query.phrase) if query.phrase != query.name else value)
    return offered
