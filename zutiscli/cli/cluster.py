"""`zutis cluster`: group the masks of a pseudo-label directory into pseudo-classes (MaskDistill, U2Seg)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from zutiscli.cli.from_config import ConfigValues, from_config
from zutiscli.cli.options import DryRunOpt, JsonOpt, OutputOpt, ProgressBar, QuietOpt, Reporter, print_dry_run
from zutiscli.pipeline.cluster_config import ClusterConfig

#: Clusters listed in the table at most (the largest first); clusters.json lists them all.
TABLE_ROWS = 30


def _table(reporter: Reporter, clusters: list[Any], title: str, purity: float | None, nmi: float | None,
           unit: str = "masks") -> None:
    """The clusters, largest first: size, and with ground truth the majority class and its share."""
    from rich.table import Table

    truth = purity is not None or any(info.matched for info in clusters)
    if truth:
        title += f": purity {_score(purity)}, NMI {_score(nmi)}"
    table = Table(title=title, title_justify="left", header_style="bold")
    table.add_column("cluster", justify="right")
    table.add_column(unit, justify="right")
    if truth:
        table.add_column("majority class")
        table.add_column("share", justify="right")
        table.add_column("matched", justify="right")
    shown = sorted(clusters, key=lambda info: (-info.size, info.cluster))
    for info in shown[:TABLE_ROWS]:
        row = [str(info.cluster), f"{info.size:,}"]
        if truth:
            row += [info.majority or "-", "-" if info.share is None else f"{info.share:.0%}", f"{info.matched:,}"]
        table.add_row(*row)
    if len(shown) > TABLE_ROWS:
        table.caption = f"the {TABLE_ROWS} largest of {len(shown)}; all in clusters.json"
    reporter.console.print(table)


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


@from_config(ClusterConfig, into="options")
def cluster(
    pseudolabels: Annotated[Path, typer.Argument(
        metavar="PSEUDO",
        help="Pseudo-label directory written by `zutis pseudolabel` (named by archives, or unnamed).")],
    options: ConfigValues = None,
    output: OutputOpt = None,
    dry_run: DryRunOpt = False,
    json_mode: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Group the masks of pseudo-labels into -k pseudo-classes by spherical k-means of a feature per mask (MaskDistill).

    Example: zutis cluster data/pseudo -k 3 --ground-truth data/pile/hidden/instances.json -o data/clusters
    """
    from rich.markup import escape

    from zutiscli.pipeline.cluster import cluster as run_cluster, plan_cluster

    reporter = Reporter(json_mode, quiet)
    config = ClusterConfig(pseudolabels=str(pseudolabels), **options)
    config.validate()
    if dry_run:
        print_dry_run(reporter, plan_cluster(config, output))
        return
    with ProgressBar(reporter, "cluster", unit="masks") as bar:
        result = run_cluster(config, output, progress=bar, log=reporter.log)
    if result.failed:
        reporter.warn(escape(f"{len(result.failed)} image(s) could not be read and their masks were left out, e.g. "
                             f"{result.failed[0][0]}: {result.failed[0][1]}"))
    if not reporter.quiet and not reporter.json_mode:
        _table(reporter, result.clusters, f"{result.k} clusters of {result.masks} masks", result.purity, result.nmi)
        if result.stuff is not None:
            _table(reporter, result.stuff.clusters, f"{result.stuff.k} stuff clusters of {result.stuff.samples} "
                   "patches", result.stuff_purity, result.stuff_nmi, unit="patches")
    line = f"{result.k} clusters of {result.masks} masks ({result.features} features) in {result.seconds:.1f} s"
    if result.purity is not None:
        line += f"; purity {_score(result.purity)}, NMI {_score(result.nmi)} over {result.matched} matched masks"
    stuff = None
    if result.stuff is not None:
        line += f"; {result.stuff.k} stuff clusters of {result.stuff.samples} patches"
        if result.stuff_purity is not None:
            line += f" (purity {_score(result.stuff_purity)}, NMI {_score(result.stuff_nmi)})"
        stuff = {"k": result.stuff.k, "patches": result.stuff.samples,
                 "sizes": [info.size for info in result.stuff.clusters], "purity": result.stuff_purity,
                 "nmi": result.stuff_nmi}
    reporter.log(line)
    reporter.result({"k": result.k, "masks": result.masks, "features": result.features,
                     "sizes": [info.size for info in result.clusters], "failed": len(result.failed),
                     "purity": result.purity, "nmi": result.nmi, "matched": result.matched,
                     "seconds": result.seconds, "stuff": stuff}, path=result.path)
