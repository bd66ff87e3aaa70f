"""`zutis retrieve`: per-class archives, the top-k images of one or more indices for each class name."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from zutiscli.cli.from_config import ConfigValues, from_config
from zutiscli.cli.options import (
    DryRunOpt,
    JsonOpt,
    OutputOpt,
    ProgressBar,
    QuietOpt,
    Reporter,
    complete_class_names,
    err_console,
    print_dry_run,
)
from zutiscli.pipeline.retrieve_config import RetrieveConfig

IndicesArg = Annotated[
    list[Path],
    typer.Argument(metavar="INDEX_DIR", help="Index directories written by `zutis index` (one model); results are merged by score.",
                   show_default=False),
]


def _table(rows: list[dict[str, Any]], limit: int = 40) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(show_edge=False, pad_edge=False, header_style="bold")
    table.add_column("class")
    table.add_column("k", justify="right")
    table.add_column("top score", justify="right")
    table.add_column("median score", justify="right")
    shown = rows if len(rows) <= limit else rows[: limit - 1]
    for row in shown:
        top = "-" if row["top"] is None else f"{row['top']:.3f}"
        median = "-" if row["median"] is None else f"{row['median']:.3f}"
        table.add_row(escape(row["name"]), str(row["k"]), top, median)
    if len(shown) < len(rows):
        table.add_row(f"... {len(rows) - len(shown)} more in archives.json", "", "", "")
    err_console.print(table)


@from_config(RetrieveConfig, into="options")
def retrieve(
    indices: IndicesArg,
    classes: Annotated[
        Optional[str], typer.Option("--classes", "-c", help="Class names separated by commas, e.g. cat,dog.",
                                    autocompletion=complete_class_names)
    ] = None,
    classes_file: Annotated[
        Optional[Path],
        typer.Option("--classes-file", help="One class per line, or 'name<TAB>search phrase'; blank lines and # comments ignored."),
    ] = None,
    options: ConfigValues = None,
    output: OutputOpt = None,
    dry_run: DryRunOpt = False,
    json_mode: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Build per-class archives: the top-k images of the indices for each class name.

    The class text is embedded by the index's own model, read from the index manifest.

    Writes archives.json (class -> ranked images, scores, paths relative to it) and manifest.json.

    --exclude-duplicates: an image (same file content) joins at most one archive, its best-scoring class with room.

    A class that loses images to others is refilled from its next best candidates.

    -k larger than the number of images in the indices is clamped to that number, with a warning.

    Example: zutis retrieve data/index --classes circle,square,star -k 10 -o data/archives
    """
    from rich.markup import escape

    from zutiscli.data.classes import parse_classes
    from zutiscli.pipeline.retrieve import plan_retrieve, retrieve as run_retrieve

    reporter = Reporter(json_mode, quiet)
    queries = parse_classes(classes, classes_file)
    config = RetrieveConfig(indices=tuple(indices), classes=tuple(queries), **options)
    config.validate()
    if dry_run:
        print_dry_run(reporter, plan_retrieve(config, output))
        return
    with ProgressBar(reporter, "retrieve") as bar:
        out = run_retrieve(config, output, progress=bar, warn=lambda m: reporter.warn(escape(m)),
                           log=lambda m: reporter.log(escape(m)))
    from zutiscli.artefacts.manifest import read_manifest

    summary = read_manifest(out).summary
    if not json_mode and not quiet:
        _table(summary["archives"])
        reporter.log(f"{summary['classes']} archives of up to {summary['k']} images "
                     f"({summary['unique_images']:,} distinct) in {summary['seconds']:.1f} s")
    reporter.result(summary, path=out)
