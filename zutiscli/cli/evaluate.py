"""`zutis evaluate PRED --gt GT`: score predictions; `zutis evaluate prepare NAME`: benchmark ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from zutiscli.cli.from_config import ConfigValues, from_config
from zutiscli.cli.options import JsonOpt, OutputOpt, ProgressBar, QuietOpt, Reporter, group_with_default
from zutiscli.data.prepare_config import PrepareConfig
from zutiscli.pipeline.evaluate_config import EvaluateConfig


app = group_with_default("evaluate", "run", (
        "Score predictions: COCO mask/box AP (class-aware and agnostic), mIoU with ImageNet-S size buckets, "
        "PQ; Hungarian or majority matching for unsupervised cluster ids. "
        "`zutis evaluate PRED --gt GT` scores; `zutis evaluate prepare NAME --root DIR` writes a benchmark's "
        "ground truth (coco20k, coco-val2017, voc2012, coca, imagenet-s919, cub2011)."
    ))


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * float(value):.1f}"


def _tables(metrics: dict[str, Any]) -> list[Any]:
    """Rich tables summarising a metrics document (numbers in percent, as the papers print them)."""
    from rich.table import Table

    tables: list[Any] = []
    instance = metrics.get("instance")
    if instance:
        columns = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100")
        table = Table(title=f"instance: {instance['images']} images, {instance['detections']} detections, "
                            f"{instance['ground_truth_instances']} GT instances", title_justify="left")
        table.add_column("", no_wrap=True)
        for name in columns:
            table.add_column(name, justify="right")
        for iou_type in ("segm", "bbox"):
            for variant in ("class_aware", "class_agnostic"):
                block = instance.get(iou_type, {}).get(variant)
                if block:
                    label = f"{'mask' if iou_type == 'segm' else 'box'} {variant.replace('class_', '')}"
                    table.add_row(label, *(_pct(block[name]) for name in columns))
        tables.append(table)
        per_class = instance.get("segm", instance.get("bbox", {})).get("class_aware", {}).get("per_class", {})
        if 0 < len(per_class) <= 30:
            small = Table(title="AP per class", title_justify="left")
            small.add_column("class")
            small.add_column("AP", justify="right")
            for name, value in per_class.items():
                small.add_row(name, _pct(value))
            tables.append(small)
    semantic = metrics.get("semantic")
    if semantic:
        table = Table(title=f"semantic: {semantic['images']} images, {semantic['classes_present']} of "
                            f"{semantic['classes']} classes present", title_justify="left")
        heads = ("mIoU", "pixel acc", "mean acc", "S", "MS", "ML", "L")
        for name in heads:
            table.add_column(name, justify="right")
        buckets = semantic["size_buckets"]
        table.add_row(_pct(semantic["mIoU"]), _pct(semantic["pixel_accuracy"]), _pct(semantic["mean_accuracy"]),
                      *(_pct(buckets[k]) for k in ("S", "MS", "ML", "L")))
        tables.append(table)
        per_class = semantic["per_class_iou"]
        confusions = semantic.get("main_confusions", {})
        if 0 < len(per_class) <= 30:
            small = Table(title="IoU per class", title_justify="left")
            small.add_column("class")
            small.add_column("IoU", justify="right")
            small.add_column("pixels right", justify="right")
            small.add_column("most often taken for")
            for name, value in per_class.items():
                where = confusions.get(name)
                taken = f"{where['confused_with']} ({_pct(where['fraction'])})" if where and where["confused_with"] else ""
                small.add_row(name, _pct(value), _pct(where["correct"]) if where else "", taken)
            tables.append(small)
    panoptic = metrics.get("panoptic")
    if panoptic:
        table = Table(title=f"panoptic: {panoptic['images']} images", title_justify="left")
        for name in ("", "PQ", "SQ", "RQ", "classes"):
            table.add_column(name, justify="right" if name else "left")
        for group in ("all", "things", "stuff"):
            block = panoptic[group]
            table.add_row(group, _pct(block["PQ"]), _pct(block["SQ"]), _pct(block["RQ"]), str(block["n"]))
        tables.append(table)
    return tables


@app.command("run")
@from_config(EvaluateConfig, into="options")
def run(
    pred: Annotated[Path, typer.Argument(help="A `zutis predict` directory, a COCO results JSON, a COCO panoptic JSON or a directory of label PNGs.", show_default=False)],
    options: ConfigValues = None,
    output: OutputOpt = None,
    json_mode: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Score predictions against ground truth; writes metrics.json (+ manifest; cluster_mapping.json with --match).

    Example: zutis evaluate preds --gt data/scenes -o runs/metrics
    """
    from zutiscli.pipeline.evaluate import evaluate

    reporter = Reporter(json_mode, quiet)
    config = EvaluateConfig(pred=str(pred), **options)
    config.validate()
    with ProgressBar(reporter, "evaluate") as bar:
        result = evaluate(config, output, progress=bar, log=reporter.log)
    for warning in result.warnings:
        reporter.warn(warning)
    if not quiet:
        for table in _tables(result.metrics):
            reporter.console.print(table)
        reporter.log(f"evaluated in {result.seconds:.1f} s; metrics in {result.path / 'metrics.json'}")
        if (result.path / "cluster_mapping.json").is_file():
            reporter.log(f"cluster mapping in {result.path / 'cluster_mapping.json'} (reuse it: --mapping {result.path})")
    reporter.result(result.metrics, path=result.path)


@app.command("prepare")
@from_config(PrepareConfig, into="options")
def prepare(
    name: Annotated[str, typer.Argument(metavar="NAME", help="coco20k, coco-val2017, voc2012, coca, imagenet-s919 (or -s300, -s50), cub2011.", show_default=False)],
    options: ConfigValues = None,
    output: OutputOpt = None,
    json_mode: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Write a benchmark's ground truth in zutis form (gt.json, classes.txt, semantic/ PNGs, instances.json).

    Example: zutis evaluate prepare voc2012 --root VOCdevkit/VOC2012 -o gt/voc
    """
    from zutiscli.pipeline.evaluate import prepare_dataset

    reporter = Reporter(json_mode, quiet)
    config = PrepareConfig(name=name, **options)
    config.validate()
    with ProgressBar(reporter, f"prepare {name}") as bar:
        result = prepare_dataset(config, output, progress=bar, log=reporter.log)
    reporter.log(f"wrote {name}: {result.images} images, {result.classes} classes"
                 + (f", {result.instances} instances" if result.instances is not None else ""))
    reporter.result({"dataset": name, "images": result.images, "classes": result.classes,
                     "instances": result.instances, "semantic": result.semantic}, path=result.path)
