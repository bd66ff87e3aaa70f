"""`zutis evaluate PRED --gt GT`: score predictions; `zutis evaluate prepare NAME`: benchmark ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from zutiscli.cli.options import DefaultCommandGroup, JsonOpt, OutputOpt, ProgressBar, QuietOpt, Reporter


class _RunByDefault(DefaultCommandGroup):
    default_command = "run"


app = typer.Typer(
    cls=_RunByDefault,
    no_args_is_help=True,
    help=(
        "Score predictions: COCO mask/box AP (class-aware and agnostic), mIoU with ImageNet-S size buckets, "
        "PQ; Hungarian or majority matching for unsupervised cluster ids. "
        "`zutis evaluate PRED --gt GT` scores; `zutis evaluate prepare NAME --root DIR` writes a benchmark's "
        "ground truth (coco20k, coco-val2017, voc2012, coca, imagenet-s919, cub2011)."
    ),
)


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


def _split_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


@app.command("run")
def run(
    pred: Annotated[Path, typer.Argument(help="A `zutis predict` directory, a COCO results JSON, a COCO panoptic JSON or a directory of label PNGs.", show_default=False)],
    gt: Annotated[Path, typer.Option("--gt", help="Ground truth: COCO instances or panoptic JSON, a `zutis evaluate prepare` or `zutis synth scenes` directory, or a directory of label PNGs.", show_default=False)],
    gt_semantic: Annotated[Optional[Path], typer.Option("--gt-semantic", help="Directory of ground-truth label PNGs (named by image stem; classes.txt names the labels).", show_default=False)] = None,
    gt_panoptic_dir: Annotated[Optional[Path], typer.Option("--gt-panoptic-dir", help="PNG folder of a COCO panoptic GT JSON (default: the folder named like the JSON).", show_default=False)] = None,
    task: Annotated[str, typer.Option("--task", metavar="auto|all|instance,semantic,panoptic", help="What to score; auto = whatever the inputs allow.")] = "auto",
    classes: Annotated[Optional[str], typer.Option("--classes", metavar="PRED=GT,...", help="Rename predicted classes to ground-truth names, e.g. tv=television.", show_default=False)] = None,
    agnostic: Annotated[bool, typer.Option("--agnostic/--no-agnostic", help="Also score instances class-agnostically (all categories merged).")] = True,
    match: Annotated[str, typer.Option("--match", metavar="names|hungarian|majority", help="How predicted ids meet GT classes: by name, or (cluster ids) one-to-one Hungarian or many-to-one majority (U2Seg).")] = "names",
    match_score: Annotated[float, typer.Option("--match-score", help="Instance cluster matching: only detections scoring at least this vote (U2Seg: 0.6).")] = 0.6,
    match_iou: Annotated[float, typer.Option("--match-iou", help="Instance cluster matching: a vote needs IoU above this with a GT instance (U2Seg: 0.7).")] = 0.7,
    match_iou_type: Annotated[str, typer.Option("--match-iou-type", metavar="bbox|segm", help="IoU of boxes (U2Seg) or masks for the vote.")] = "bbox",
    iou_type: Annotated[str, typer.Option("--iou-type", metavar="segm,bbox", help="COCOeval IoU types.")] = "segm,bbox",
    max_dets: Annotated[str, typer.Option("--max-dets", metavar="1,10,100", help="COCOeval maxDets (AP uses the last).")] = "1,10,100",
    backend: Annotated[str, typer.Option("--backend", metavar="pycocotools|faster-coco-eval", help="COCOeval implementation.")] = "pycocotools",
    output: OutputOpt = None,
    json_mode: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Score predictions against ground truth; writes metrics.json (+ manifest).

    Example: zutis evaluate preds --gt data/scenes -o runs/metrics
    """
    from zutiscli.errors import UsageError
    from zutiscli.pipeline.evaluate import EvaluateConfig, evaluate, parse_class_map

    reporter = Reporter(json_mode, quiet)
    tasks = [] if task.strip() in ("auto", "") else (
        ["instance", "semantic", "panoptic"] if task.strip() == "all" else _split_list(task))
    try:
        dets = [int(d) for d in _split_list(max_dets)]
    except ValueError:
        raise UsageError(f"--max-dets {max_dets!r}: give three integers, e.g. 1,10,100") from None
    config = EvaluateConfig(
        pred=str(pred), gt=str(gt), gt_semantic=str(gt_semantic) if gt_semantic else None,
        gt_panoptic_dir=str(gt_panoptic_dir) if gt_panoptic_dir else None, tasks=tasks,
        class_map=parse_class_map(classes), agnostic=agnostic, match=match, match_score=match_score,
        match_iou=match_iou, match_iou_type=match_iou_type, iou_types=_split_list(iou_type), max_dets=dets,
        backend=backend,
    )
    config.validate()
    with ProgressBar(reporter, "evaluate") as bar:
        result = evaluate(config, output, progress=bar, log=reporter.log)
    for warning in result.warnings:
        reporter.warn(warning)
    if not quiet:
        for table in _tables(result.metrics):
            reporter.console.print(table)
        reporter.log(f"evaluated in {result.seconds:.1f} s; metrics in {result.path / 'metrics.json'}")
    reporter.result(result.metrics, path=result.path)


@app.command("prepare")
def prepare(
    name: Annotated[str, typer.Argument(metavar="NAME", help="coco20k, coco-val2017, voc2012, coca, imagenet-s919 (or -s300, -s50), cub2011.", show_default=False)],
    root: Annotated[Path, typer.Option("--root", help="Your local copy of the dataset.", show_default=False)],
    file_list: Annotated[Optional[Path], typer.Option("--file-list", help="coco20k: LOST's coco_20k_filenames.txt (required).", show_default=False)] = None,
    split: Annotated[Optional[str], typer.Option("--split", help="Split (default: val2017 / train2014 / val / validation / test).", show_default=False)] = None,
    class_names: Annotated[Optional[Path], typer.Option("--class-names", help="imagenet-s: names in class-id order, or LOC_synset_mapping.txt (default: WordNet ids).", show_default=False)] = None,
    threshold: Annotated[float, typer.Option("--threshold", help="coca, cub2011: binarise masks above this fraction of white.")] = 0.5,
    output: OutputOpt = None,
    json_mode: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Write a benchmark's ground truth in zutis form (gt.json, classes.txt, semantic/ PNGs, instances.json).

    Example: zutis evaluate prepare voc2012 --root VOCdevkit/VOC2012 -o gt/voc
    """
    from zutiscli.pipeline.evaluate import PrepareConfig, prepare_dataset

    reporter = Reporter(json_mode, quiet)
    config = PrepareConfig(name=name, root=str(root), file_list=str(file_list) if file_list else None, split=split,
                           class_names=str(class_names) if class_names else None, threshold=threshold)
    config.validate()
    with ProgressBar(reporter, f"prepare {name}") as bar:
        result = prepare_dataset(config, output, progress=bar, log=reporter.log)
    reporter.log(f"wrote {name}: {result.images} images, {result.classes} classes"
                 + (f", {result.instances} instances" if result.instances is not None else ""))
    reporter.result({"dataset": name, "images": result.images, "classes": result.classes,
                     "instances": result.instances, "semantic": result.semantic}, path=result.path)
