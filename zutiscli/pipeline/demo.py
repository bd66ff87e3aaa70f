"""``zutis demo``: the whole chain, end to end, on the shapes world with ``shapes-clip-v2``.

The demo calls the very stage functions the subcommands call, and writes the very same artefacts,
one directory per stage under the demo's output::

    pile/         zutis synth pile        unlabelled images (their hidden ground truth kept aside)
    scenes/       zutis synth scenes      held-out evaluation scenes (another seed)
    index/        zutis index             shapes-clip-v2 embeddings of the pile
    archives/     zutis retrieve          top-k pile images per shape name
    pseudolabels/ zutis pseudolabel       one saliency mask per archive image
    copypaste/    zutis copypaste         synthetic multi-object training scenes
    train/        zutis train             the ZUTIS model
    predict/      zutis predict           predictions on the held-out scenes
    evaluate/     zutis evaluate          mask AP, mIoU, PQ
    paper-inference/  predict + evaluate of the same model with the paper's inference alone
    baseline/     predict + evaluate of the training-free MaskCLIP baseline on the same scenes
    references/   zutis cosegment         ReCo's reference of each shape, from its best 50 archive images
    reco/         predict + evaluate of training-free ReCo (``--method reco``) on the same scenes
    shift/        the same objects drawn over the shift split (``zutis synth scenes --split shift``:
                  backgrounds, stuff looks and lighting no training uses): scenes/, and predict +
                  evaluate of the model (predict/, evaluate/), of the baseline (baseline/) and of ReCo (reco/)
    stuff/        scenes over named stuff with COCO panoptic ground truth (``zutis synth scenes --stuff
                  --panoptic``), on the test split (scenes/) and the shift split (shift/scenes/); on each,
                  predict + evaluate of MaskCLIP with the shape and stuff names (``zutis predict --stuff``:
                  semantic, PQ over things and stuff; maskclip/) and of the model with the shape names
                  (its things; zutis/)
    compare/      zutis compare           the model, MaskCLIP and ReCo on the test scenes in one table
                  (compare.txt) and one picture (compare.png)
    summary.png   input | ground truth | semantic | instances, for a dozen scenes, four of the shift
                  split and four over named stuff (MaskCLIP's), with the metrics
    metrics.json  the headline numbers of every evaluated variant, and the time of every stage

``--ablation`` adds the paper's findings, each as its own predict/evaluate (and train) directories
under ``ablation/``: no NMS, no crop adapter (``zutis predict --no-crop-adapter``; not a finding of the
paper), no stop-gradient (at the demo's temperature, and both arms again at the
paper's raw cosine logits and inference, ``ablation/paper-temperature``), and zero-shot transfer to
a shape name never trained on (scored with the demo's inference and with the paper's), and to
colour--shape names, held out from shapes-clip's own training captions;
and the same model trained on ground-truth scenes instead of the chain's pseudo-labels
(``ablation/supervised``), the upper bound of what the chain can reach with this model and budget;
and ReCo+ (``ablation/recoplus``): the same model trained on ReCo's predictions over unlabelled scenes.

``--discover`` runs the chain with no class names instead, on the same pile and scenes
(:mod:`zutiscli.pipeline.demo_discover`: ``discover/``), beside MaskCLIP (``baseline/``), and ends with
``compare/`` of them; its picture is ``compare/compare.png``.

Units: image sides in pixels, times in seconds, metrics as fractions.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from zutiscli.artefacts.lock import holding_locks
from zutiscli.data.workers import available_cores
from zutiscli.pipeline.demo_config import FAST, SHIFT, DemoConfig, preset  # noqa: F401 - exported here too

Log = Callable[[str], None]
Progress = Callable[[str, int, int], None]


@dataclass
class DemoResult:
    """Where the demo wrote everything, its headline metrics, and the seconds spent per stage."""

    path: Path
    metrics: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)
    stage_quality: dict[str, Any] = field(default_factory=dict)
    picture: Path | None = None  # the picture to open first, when not summary.png

    @property
    def summary_picture(self) -> Path:
        return self.picture or self.path / "summary.png"


class _Stages:
    """Runs named stages, timing each and reporting it on the log."""

    def __init__(self, log: Log, progress: Progress | None):
        self.log = log
        self.progress = progress
        self.seconds: dict[str, float] = {}

    def run(self, name: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self.log(f"[{len(self.seconds) + 1}] {name}")
        if self.progress is not None and "progress" not in kwargs:
            kwargs["progress"] = lambda done, total=None, *_: self.progress(name, done, total or 0)
        start = time.perf_counter()
        value = function(*args, **kwargs)
        self.seconds[name] = round(time.perf_counter() - start, 2)
        self.log(f"    {name}: {self.seconds[name]:.1f} s")
        return value


def _shape_queries(names: list[str]):
    from zutiscli.data.classes import ClassQuery

    return tuple(ClassQuery(name, name) for name in names)


def _train_config(config: DemoConfig, source: Path, **changes: Any):
    """The demo's training on ``source`` (:meth:`DemoConfig.training`), with ``changes``."""
    return config.training(source, **changes)


def _scene_paste(config: DemoConfig):
    """How the demo's copy-paste training scenes are made: the training recipe's size and geometry,
    without photometric augmentation unless ``config.photometric``."""
    photometric = {} if config.photometric else {"jitter_prob": 0.0, "grayscale_prob": 0.0, "blur_prob": 0.0}
    return replace(config.training().copypaste(), **photometric)


def _predict_and_evaluate(stages: _Stages, label: str, out: Path, scenes: Path, classes: list[str],
                          gt: Path | None = None, **predict_options: Any) -> dict[str, Any]:
    """Predict the held-out scenes into ``out/predict``, evaluate into ``out/evaluate``; the metrics."""
    from zutiscli.pipeline.evaluate import EvaluateConfig, evaluate
    from zutiscli.pipeline.predict import PredictConfig, predict

    config = PredictConfig(inputs=[str(scenes / "images")], classes=_shape_queries(classes), **predict_options)
    stages.run(f"predict ({label})", predict, config, out / "predict", log=None)
    gt_semantic = str(scenes / "semantic") if gt is None else None
    result = stages.run(f"evaluate ({label})", evaluate,
                        EvaluateConfig(pred=str(out / "predict"), gt=str(gt or scenes / "instances.json"),
                                       gt_semantic=gt_semantic), out / "evaluate")
    return result.metrics


def _predict_zutis(stages: _Stages, config: DemoConfig, label: str, out: Path, scenes: Path, classes: list[str],
                   run: Path, **options: Any) -> dict[str, Any]:
    """:func:`_predict_and_evaluate` of a trained ZUTIS run with the inference its recipe recorded
    (``zutis predict --checkpoint RUN`` with no inference option); ``options`` override it."""
    values: dict[str, Any] = dict(checkpoint=str(run), device=config.device, precision="fp32") | options
    return _predict_and_evaluate(stages, label, out, scenes, classes, **values)


#: How the demo's metrics name the scenes over named stuff (``zutis synth scenes --stuff --panoptic``).
NAMED_STUFF = "named stuff"

#: ``zutis predict --inference paper``: the paper's inference whatever the recipe recorded: dense semantic
#: map, instances classified by their mean dense embedding with sigmoid(5 cos), no refinement, hard NMS at IoU 0.3.
PAPER_INFERENCE: dict[str, Any] = dict(inference="paper")


def _generation_workers(config: DemoConfig) -> int:
    """Processes writing the synthetic images and the copy-paste scenes (nothing else runs meanwhile):
    the CPUs this process may use, up to 4; none with one CPU or ``--workers 0``."""
    cpus = available_cores()
    return 0 if cpus < 2 or config.workers == 0 else min(cpus, 4)


def _zero_shot_variant(config: DemoConfig) -> str:
    """The metrics name of the ablation trained without ``config.zero_shot_class``."""
    return f"zutis, {config.zero_shot_class} never trained"


def _pipeline_to_dataset(stages: _Stages, config: DemoConfig, out: Path, index: Path, classes: list[str],
                         label: str = "") -> Path:
    """retrieve -> pseudolabel -> copypaste for ``classes``; returns the copy-paste dataset directory."""
    from zutiscli.pipeline.copypaste import write_dataset
    from zutiscli.pipeline.pseudolabel import PseudolabelConfig, run_pseudolabel
    from zutiscli.pipeline.retrieve import RetrieveConfig, retrieve

    suffix = f" ({label})" if label else ""
    stages.run("retrieve" + suffix, retrieve,
               RetrieveConfig(indices=(index,), classes=_shape_queries(classes), k=config.k, exclude_duplicates=True,
                              contact_sheet=True, contact_count=48, device=config.device),
               out / "archives", warn=stages.log)
    stages.run("pseudolabel" + suffix, run_pseudolabel,
               PseudolabelConfig(inputs=(str(out / "archives"),), method=config.method, model=config.model,
                                 pretrained=config.pretrained, size=config.pseudo_size, fill_holes=config.fill_holes,
                                 device=config.device, preview=12, seed=config.seed),
               out / "pseudolabels")
    stages.run("copypaste" + suffix, write_dataset, out / "pseudolabels", config.copypaste, _scene_paste(config),
               config.seed, out / "copypaste", workers=_generation_workers(config))
    return out / "copypaste"


def _named_stuff(stages: _Stages, config: DemoConfig, out: Path, classes: list[str], run: Path,
                 maskclip: dict[str, Any]) -> tuple[dict[str, Any], Path]:
    """Scenes over named stuff on both splits (under ``out``), each scored for MaskCLIP with the
    shape and stuff names and for the model ``run`` with the shape names; returns the metrics
    and the test split's scenes."""
    from zutiscli.pipeline.synth import SynthConfig, write_synth
    from zutiscli.shapes.stuff import STUFF

    metrics: dict[str, Any] = {}
    first: Path | None = None
    for split, where, suffix in (("train", out, ""), ("shift", out / "shift", f", {SHIFT}")):
        scenes = stages.run(f"synth scenes ({NAMED_STUFF}{suffix})", write_synth, SynthConfig(
            "scenes", config.stuff_scenes, seed=config.eval_seed, size=config.scene_size,
            min_objects=config.min_objects, max_objects=config.max_objects, stuff=True, panoptic=True, split=split,
            workers=_generation_workers(config)), where / "scenes")
        first = first or scenes
        metrics[f"maskclip, {NAMED_STUFF}{suffix}"] = _predict_and_evaluate(
            stages, f"maskclip baseline, {NAMED_STUFF}{suffix}", where / "maskclip", scenes, [*classes, *STUFF],
            gt=scenes, stuff=tuple(STUFF), **maskclip)
        metrics[f"zutis, {NAMED_STUFF}{suffix}"] = _predict_zutis(
            stages, config, f"zutis, {NAMED_STUFF}{suffix}", where / "zutis", scenes, classes, run, gt=scenes)
    assert first is not None
    return metrics, first


@holding_locks
def run_demo(config: DemoConfig, output: str | Path | None = None, *, progress: Progress | None = None,
             log: Log | None = None) -> DemoResult:
    """Run the chain (and with ``config.ablation`` the ablations); returns where it all went.

    ``log(message)`` receives one line per stage; ``progress(stage, done, total)`` the progress of
    the stage running.
    """
    from zutiscli.artefacts.rundir import prepare_output_dir
    from zutiscli.models.clip import ModelSpec, load_backbone
    from zutiscli.pipeline.compare import CompareConfig, RunSpec, compare
    from zutiscli.pipeline.cosegment import CosegmentConfig, cosegment
    from zutiscli.pipeline.index import IndexConfig, build_index
    from zutiscli.pipeline.synth import SynthConfig, write_synth
    from zutiscli.pipeline.train import train
    from zutiscli.shapes.world import SHAPES

    config.validate()
    load_backbone(ModelSpec(config.model, config.pretrained))  # bad or missing weights fail before any writing
    say = log or (lambda message: None)
    out = prepare_output_dir(output, "demo")
    stages = _Stages(say, progress)
    classes = list(SHAPES)

    stuff = config.discover and config.discover_stuff_k > 0  # --discover's world of things and named stuff
    over = " (over named stuff)" if stuff else ""
    pile = stages.run("synth pile" + over + (" (varied looks)" if config.varied else ""), write_synth, SynthConfig(
        "pile", config.pile, seed=config.seed, size=config.pile_size, stuff=stuff, varied=config.varied,
        workers=_generation_workers(config)), out / "pile")
    scenes = stages.run("synth scenes" + over, write_synth,
                        SynthConfig("scenes", config.scenes, seed=config.eval_seed, size=config.scene_size,
                                    min_objects=config.min_objects, max_objects=config.max_objects, stuff=stuff,
                                    panoptic=stuff, workers=_generation_workers(config)), out / "scenes")
    # the same objects over backgrounds, stuff looks and lighting that no training uses
    shifted = stages.run("synth scenes (shift split)" + over, write_synth,
                         SynthConfig("scenes", config.scenes, seed=config.eval_seed, size=config.scene_size,
                                     min_objects=config.min_objects, max_objects=config.max_objects, split="shift",
                                     stuff=stuff, panoptic=stuff, workers=_generation_workers(config)),
                         out / "shift" / "scenes")
    if config.discover:
        return _discover(stages, config, out, pile, scenes, shifted)
    index = stages.run("index", build_index, IndexConfig(
        sources=[str(pile / "images")], model=config.model, pretrained=config.pretrained, device=config.device,
        precision="fp32", workers=0, batch_size=256), out / "index").path
    dataset = _pipeline_to_dataset(stages, config, out, index, classes)
    quality = measure_stage_quality(out / "pile", out / "archives", out / "pseudolabels")
    say("    " + describe_stage_quality(quality))
    run = stages.run("train", train, _train_config(config, dataset), out / "train", log=say)
    metrics: dict[str, Any] = {}
    metrics["zutis"] = _predict_zutis(stages, config, "zutis", out, scenes, classes, run.path)
    metrics["zutis, paper's inference"] = _predict_zutis(stages, config, "zutis, paper's inference",
                                                         out / "paper-inference", scenes, classes, run.path,
                                                         **PAPER_INFERENCE)
    maskclip = _maskclip_options(config)
    metrics["maskclip"] = _predict_and_evaluate(stages, "maskclip baseline", out / "baseline", scenes, classes,
                                                **maskclip)
    references = stages.run("cosegment", cosegment, CosegmentConfig(archives=str(out / "archives"), preview=8,
                                                                    device=config.device), out / "references").path
    reco = dict(method="reco", references=str(references), background_threshold=config.reco_threshold,
                background_rule=config.reco_rule, device=config.device)
    metrics["reco"] = _predict_and_evaluate(stages, "reco", out / "reco", scenes, classes, **reco)
    metrics[f"zutis, {SHIFT}"] = _predict_zutis(stages, config, f"zutis, {SHIFT}", out / "shift", shifted, classes,
                                                run.path)
    metrics[f"maskclip, {SHIFT}"] = _predict_and_evaluate(stages, f"maskclip baseline, {SHIFT}",
                                                          out / "shift" / "baseline", shifted, classes, **maskclip)
    metrics[f"reco, {SHIFT}"] = _predict_and_evaluate(stages, f"reco, {SHIFT}", out / "shift" / "reco", shifted,
                                                      classes, **reco)
    stuff_section = None
    if config.stuff_scenes:
        named, stuff_scenes = _named_stuff(stages, config, out / "stuff", classes, run.path, maskclip)
        metrics.update(named)
        stuff_section = (stuff_scenes, out / "stuff" / "maskclip" / "predict")
    if config.ablation:
        metrics.update(_ablations(stages, config, out, index, scenes, run.path, classes, reco))
    compared = stages.run("compare", compare, CompareConfig(
        images=str(scenes), runs=(RunSpec("zutis", "zutis", str(run.path)), RunSpec("maskclip", "maskclip", None),
                                  RunSpec("reco", "reco", str(references))),
        model=config.model, pretrained=config.pretrained, background_threshold=config.reco_threshold,
        background_rule=config.reco_rule, device=config.device), out / "compare")
    say(compared.table)

    headlines = {name: _headline(m) for name, m in metrics.items()}
    if config.ablation:
        # where the pixels of the shape never trained on went (the text table prints it too)
        for unseen in (_zero_shot_variant(config), _zero_shot_variant(config) + ", paper's inference"):
            went = (metrics[unseen].get("semantic") or {}).get("main_confusions", {}).get(config.zero_shot_class)
            headlines[unseen]["unseen_class_pixels"] = {"class": config.zero_shot_class, **went} if went else None
    stuff = None if stuff_section is None else (*stuff_section, headlines[f"maskclip, {NAMED_STUFF}"])
    write_summary_picture(out / "summary.png", scenes, out / "predict", classes, headlines["zutis"],
                          shift=(shifted, out / "shift" / "predict", headlines[f"zutis, {SHIFT}"]), stuff=stuff)
    return _finish(out, config, stages, headlines, quality)


def _maskclip_options(config: DemoConfig) -> dict[str, Any]:
    """``zutis predict`` options of the training-free MaskCLIP baseline with the demo's CLIP."""
    return dict(method="maskclip", model=config.model, pretrained=config.pretrained, device=config.device,
                precision="fp32", components=True)


def _finish(out: Path, config: DemoConfig, stages: _Stages, headlines: dict[str, Any], quality: dict[str, Any],
            picture: Path | None = None) -> DemoResult:
    """Write ``metrics.json`` and the demo's manifest; the result."""
    from zutiscli.artefacts.atomic import atomic_write_json
    from zutiscli.artefacts.manifest import write_manifest

    seconds = dict(stages.seconds)
    report = {"config": asdict(config), "headline": headlines, "stage_quality": quality, "seconds": seconds,
              "total_seconds": round(sum(seconds.values()), 2)}
    atomic_write_json(out / "metrics.json", report)
    write_manifest(out, "zutis.demo", model={"name": config.model, "pretrained": config.pretrained},
                   inputs=[], params=asdict(config),
                   summary={"headline": headlines, "total_seconds": report["total_seconds"]})
    return DemoResult(out, headlines, seconds, quality, picture=picture)


def _discover(stages: _Stages, config: DemoConfig, out: Path, pile: Path, scenes: Path, shifted: Path) -> DemoResult:
    """``--discover``: the chain with no names (:mod:`zutiscli.pipeline.demo_discover`) beside MaskCLIP
    with the names, on both splits; ``zutis compare`` of them all on the test split."""
    from zutiscli.pipeline.compare import CompareConfig, RunSpec, compare
    from zutiscli.pipeline.demo_discover import describe_cluster_quality, run_discovery
    from zutiscli.shapes.world import SHAPES

    from zutiscli.shapes.stuff import STUFF

    classes = list(SHAPES)
    # over named stuff: MaskCLIP with the shape and stuff names, scored with PQ against the scenes' panoptic truth
    stuff = tuple(STUFF) if config.discover_stuff_k else ()
    maskclip = _maskclip_options(config) | ({"stuff": stuff} if stuff else {})
    metrics: dict[str, Any] = {}
    for label, where, held_out in (("maskclip", out / "baseline", scenes),
                                   (f"maskclip, {SHIFT}", out / "shift" / "baseline", shifted)):
        metrics[label] = _predict_and_evaluate(stages, label.replace("maskclip", "maskclip baseline"), where,
                                               held_out, [*classes, *stuff], gt=held_out if stuff else None, **maskclip)
    found, clusters, runs = run_discovery(stages, config, out, pile, scenes, shifted)
    metrics.update(found)
    stages.log("    " + describe_cluster_quality(clusters))
    compared = stages.run("compare", compare, CompareConfig(
        images=str(scenes), runs=(RunSpec("maskclip", "maskclip", None),
                                  *(RunSpec(f"discovery, k {k}", "zutis", str(run)) for k, run in runs)),
        stuff=stuff, model=config.model, pretrained=config.pretrained, match="hungarian",
        match_score=config.discover_match_score, device=config.device), out / "compare")
    stages.log(compared.table)
    headlines = {name: _headline(m) for name, m in metrics.items()}
    return _finish(out, config, stages, headlines, {"clusters": clusters}, picture=compared.path / "compare.png")


def measure_stage_quality(pile: Path, archives: Path, pseudolabels: Path) -> dict[str, Any]:
    """Retrieval precision and pseudo-mask IoU per shape, against the pile's hidden ground truth."""
    from zutiscli.pipeline.stage_quality import HiddenTruth, pseudolabel_quality, retrieval_precision

    truth = HiddenTruth(pile)
    return {"retrieval_precision": retrieval_precision(archives, truth),
            "pseudolabels": pseudolabel_quality(pseudolabels, truth)}


def describe_stage_quality(quality: dict[str, Any]) -> str:
    """One line: mean and worst retrieval precision and pseudo-mask IoU over the classes (with
    ``--discover``: the clusters' purity and NMI)."""
    if "clusters" in quality:
        from zutiscli.pipeline.demo_discover import describe_cluster_quality

        return describe_cluster_quality(quality["clusters"])
    precision = quality["retrieval_precision"]
    ious = {name: values["mean_iou"] for name, values in quality["pseudolabels"].items()}
    parts = []
    for label, values in (("retrieval precision", precision), ("pseudo-mask IoU", ious)):
        if values:
            worst = min(values, key=values.get)
            parts.append(f"{label} {np.mean(list(values.values())):.2f} (lowest: {worst} {values[worst]:.2f})")
    return "; ".join(parts) + " against the pile's hidden ground truth"


def _ablations(stages: _Stages, config: DemoConfig, out: Path, index: Path, scenes: Path, run: Path,
               classes: list[str], reco: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The paper's findings on this world: each as its own predict/evaluate (and train) directories.

    Also a reference that is not a finding of the paper: the same model, recipe and budget trained
    on as many ground-truth scenes (another seed) as the chain had copy-paste scenes, which bounds
    what the unsupervised chain can reach here.
    """
    from zutiscli.pipeline.predict import PredictConfig, predict
    from zutiscli.pipeline.synth import SynthConfig, write_synth
    from zutiscli.pipeline.train import train

    root = out / "ablation"
    metrics: dict[str, dict[str, Any]] = {}
    metrics["zutis, no NMS"] = _predict_zutis(stages, config, "no NMS", root / "no-nms", scenes, classes, run,
                                              nms="none")
    metrics["zutis, no crop adapter"] = _predict_zutis(stages, config, "no crop adapter", root / "no-crop-adapter",
                                                       scenes, classes, run, crop_adapter=False)
    unstopped = stages.run("train (no stop-gradient)", train,
                           _train_config(config, out / "copypaste", stop_gradient=False),
                           root / "no-stop-gradient" / "train", log=stages.log)
    metrics["zutis, no stop-gradient"] = _predict_zutis(stages, config, "no stop-gradient", root / "no-stop-gradient",
                                                        scenes, classes, unstopped.path)
    # The same pair at the paper's raw cosine logits (temperature 1) and its inference (class
    # probability sigmoid(5 cos)): there the pixel loss is weak beside the mask loss, and the
    # decoder's gradients reach the encoder unopposed.
    for label, stop in (("stop-gradient", True), ("no stop-gradient", False)):
        directory = root / "paper-temperature" / label.replace(" ", "-")
        paper_run = stages.run(f"train ({label}, temperature 1)", train,
                               _train_config(config, out / "copypaste", temperature=1.0, stop_gradient=stop),
                               directory / "train", log=stages.log)
        metrics[f"zutis, temperature 1, {label}"] = _predict_zutis(
            stages, config, f"{label}, temperature 1", directory, scenes, classes, paper_run.path,
            **PAPER_INFERENCE)
    seen = [name for name in classes if name != config.zero_shot_class]
    zero = root / "zero-shot"
    dataset = _pipeline_to_dataset(stages, config, zero, index, seen, label=f"without {config.zero_shot_class}")
    unseen_run = stages.run(f"train (without {config.zero_shot_class})", train, _train_config(config, dataset),
                            zero / "train", log=stages.log)
    metrics[_zero_shot_variant(config)] = _predict_zutis(
        stages, config, "zero-shot", zero, scenes, classes, unseen_run.path)
    # the crop classifier is CLIP itself, which was never told what not to see: the paper's
    # inference shows what the trained model alone carries over
    metrics[_zero_shot_variant(config) + ", paper's inference"] = _predict_zutis(
        stages, config, "zero-shot, paper's inference", zero / "paper-inference", scenes, classes,
        unseen_run.path, **PAPER_INFERENCE)
    supervised = root / "supervised"
    truth = stages.run("synth scenes (supervised reference)", write_synth,
                       SynthConfig("scenes", config.copypaste, seed=config.eval_seed + 1, size=config.training().crop,
                                   min_objects=config.min_objects, max_objects=config.max_objects,
                                   workers=_generation_workers(config)), supervised / "scenes")
    reference = stages.run("train (supervised reference)", train, _train_config(config, truth), supervised / "train",
                           log=stages.log)
    metrics["same model, ground-truth scenes"] = _predict_zutis(
        stages, config, "supervised reference", supervised, scenes, classes, reference.path)
    # ReCo+: ReCo's predictions over as many unlabelled scenes (another seed) as the chain had copy-paste
    # scenes, as the training source of the same model, recipe and budget
    recoplus = root / "recoplus"
    unlabelled = stages.run("synth scenes (ReCo+)", write_synth,
                            SynthConfig("scenes", config.copypaste, seed=config.eval_seed + 2,
                                        size=config.training().crop, min_objects=config.min_objects,
                                        max_objects=config.max_objects, workers=_generation_workers(config)),
                            recoplus / "scenes")
    stages.run("predict (reco, ReCo+'s training scenes)", predict,
               PredictConfig(inputs=[str(unlabelled / "images")], classes=_shape_queries(classes), vis=False, **reco),
               recoplus / "labels", log=None)
    reco_run = stages.run("train (ReCo+)", train, _train_config(config, recoplus / "labels"), recoplus / "train",
                          log=stages.log)
    metrics["reco+"] = _predict_zutis(stages, config, "ReCo+", recoplus, scenes, classes, reco_run.path)
    pairs_gt = colour_shape_ground_truth(scenes / "instances.json", root / "colour-shape" / "instances.json")
    pair_names = sorted({c["name"] for c in json.loads(pairs_gt.read_text())["categories"]})
    metrics["zutis, colour-shape names"] = _predict_zutis(
        stages, config, "colour-shape names", root / "colour-shape", scenes, pair_names, run, gt=pairs_gt)
    return metrics


def colour_shape_ground_truth(source: Path, target: Path) -> Path:
    """Rewrite a shapes-world COCO file so that categories are ``"colour shape"`` pairs.

    ``zutis synth scenes`` stores each object's colour beside its shape; this turns those into the
    category names, so that predictions for prompts like "purple star" can be scored. Only pairs
    present in the scenes become categories.
    """
    from zutiscli.artefacts.atomic import atomic_write_json

    coco = json.loads(source.read_text(encoding="utf-8"))
    names = sorted({ann["colour_shape"] for ann in coco["annotations"]})
    ids = {name: number + 1 for number, name in enumerate(names)}
    images = [dict(image) for image in coco["images"]]
    for image in images:
        image["file_name"] = str((source.parent / image["file_name"]).resolve())
        image.pop("semantic", None)
    annotations = [dict(ann, category_id=ids[ann["colour_shape"]]) for ann in coco["annotations"]]
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(target, {"images": images, "annotations": annotations,
                               "categories": [{"id": ids[n], "name": n} for n in names]}, indent=None)
    return target


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    from zutiscli.engine.evaluator import headline

    # unrounded, as `zutis evaluate` writes them: the table rounds once (rounded here first, 0.246549
    # became 0.2465 and then the table's 24.6 or 24.7 by the float's last bit)
    out = dict(headline(metrics))
    per_class = (metrics.get("semantic") or {}).get("per_class_iou") or {}
    if per_class:
        out["per_class_IoU"] = dict(per_class)
    return out


def _relabel(labels: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    """Map label values through ``mapping`` (others, such as 255 = ignore, become 0 = background)."""
    table = np.zeros(256 if labels.dtype == np.uint8 else int(labels.max()) + 1, dtype=np.int64)
    for source, target in mapping.items():
        if source < len(table):
            table[source] = target
    return table[labels]


# ---- the summary picture --------------------------------------------------------------------
def write_summary_picture(path: Path, scenes: Path, predictions: Path, classes: list[str],
                          metrics: dict[str, Any], count: int = 12, tile: int = 192,
                          shift: tuple[Path, Path, dict[str, Any]] | None = None, shift_count: int = 4,
                          stuff: tuple[Path, Path, dict[str, Any]] | None = None) -> Path:
    """One PNG a person opens first: rows of input | ground truth | semantic | instances, and the metrics.

    Shows the first ``count`` scenes, two scenes per row, each tile ``tile`` pixels square
    (nearest-neighbour upscaling, so the masks' pixels stay visible), then, given ``shift`` =
    ``(scenes, predictions, metrics)`` of the shift split, its first ``shift_count`` scenes under a
    heading with their metrics, and given ``stuff`` = ``(scenes, predictions, metrics)`` of
    MaskCLIP over named stuff, as many of those, classes and materials alike. The ground-truth and
    the predicted semantic maps share one colour per class; instances are drawn as ``zutis predict
    --vis`` draws them. Predicted instances scoring below 0.5 are left out of the picture (not out
    of the metrics).
    """
    from PIL import Image, ImageDraw

    from zutiscli.artefacts.atomic import atomic_path
    from zutiscli.shapes.stuff import STUFF

    sections = [("held-out shapes-world scenes", scenes, predictions, classes, metrics, count)]
    if shift is not None:
        sections.append((f"the same objects, {SHIFT} (backgrounds and lighting no training uses)", shift[0],
                         shift[1], classes, shift[2], shift_count))
    if stuff is not None:
        sections.append((f"MaskCLIP over {NAMED_STUFF} (PQ things / stuff)", stuff[0], stuff[1], [*classes, *STUFF],
                         stuff[2], shift_count))
    columns, heading, label = 8, 58, 16
    shown = [_summary_images(section[1], section[5]) for section in sections]
    rows = [(len(images) + 1) // 2 for images in shown]
    canvas = Image.new("RGB", (columns * tile, sum(heading + r * (tile + label) for r in rows)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    top = 0
    for (title, where, predicted, names, numbers, _), images, count_rows in zip(sections, shown, rows):
        draw.text((8, top + 6), f"zutis demo: {title}, classes " + ", ".join(names), fill=(0, 0, 0))
        draw.text((8, top + 22), "   ".join(f"{k} {v:.3f}" for k, v in numbers.items() if isinstance(v, float)),
                  fill=(0, 0, 0))
        titles = ("input", "ground truth", "predicted semantic", "predicted instances (score >= 0.5)")
        for column in range(columns):
            draw.text((column * tile + 4, top + 40), titles[column % 4], fill=(80, 80, 80))
        _draw_scenes(canvas, draw, top + heading, where, predicted, names, images, tile, label)
        top += heading + count_rows * (tile + label)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path


def _summary_images(scenes: Path, count: int) -> list[dict[str, Any]]:
    from zutiscli.artefacts.coco import load_coco

    return sorted(load_coco(scenes / "instances.json")["images"], key=lambda image: image["id"])[:count]


def _draw_scenes(canvas: Any, draw: Any, top: int, scenes: Path, predictions: Path, classes: list[str],
                 images: list[dict[str, Any]], tile: int, label: int) -> None:
    """Paste rows of input | ground truth | semantic | instances of the scenes' COCO ``images``, from ``top``."""
    from PIL import Image

    from zutiscli.artefacts.labelmap import read_label_png
    from zutiscli.artefacts.manifest import resolve_relative
    from zutiscli.data.images import load_image
    from zutiscli.ops.masks import decode_mask
    from zutiscli.ops.overlay import render_overlay
    from zutiscli.pipeline.synth import semantic_classes

    # label PNG value (as `zutis synth` writes them: background, the shapes, the stuff) -> 1 + index in ``classes``
    written = semantic_classes(stuff=True)
    gt_label = {written.index(name): number + 1 for number, name in enumerate(classes) if name in written}
    predicted = json.loads((predictions / "images.json").read_text(encoding="utf-8"))
    pred_by_name = {Path(record["file_name"]).name: record for record in predicted["images"]}
    results = json.loads((predictions / "predictions.json").read_text(encoding="utf-8"))
    pred_label = {c["id"]: classes.index(c["name"]) + 1 for c in predicted["categories"] if c["name"] in classes}
    results_by_image: dict[int, list[dict]] = {}
    for result in results:
        if result["score"] >= 0.5:
            results_by_image.setdefault(result["image_id"], []).append(result)

    def enlarge(array: np.ndarray) -> np.ndarray:
        """Nearest-neighbour upscaling to the tile (masks stay exact; overlays drawn at tile size)."""
        return np.asarray(Image.fromarray(array).resize((tile, tile), Image.NEAREST))

    def instances(anns: list[dict]):
        if not anns:
            return np.zeros((0, tile, tile), dtype=bool), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        masks = np.stack([enlarge(decode_mask(a["segmentation"])) for a in anns])
        return masks, np.array([pred_label[a["category_id"]] for a in anns]), \
            np.array([a["score"] for a in anns], dtype=np.float32)

    for number, record in enumerate(images):
        image = enlarge(np.asarray(load_image(resolve_relative(scenes, record["file_name"]))))
        truth_map = enlarge(read_label_png(scenes / "semantic" / (Path(record["file_name"]).stem + ".png")))
        tiles = [image, render_overlay(image, classes, _relabel(truth_map, gt_label), None, None, None)]
        mine = pred_by_name.get(Path(record["file_name"]).name)
        if mine is not None and mine.get("semantic"):
            semantic = enlarge(read_label_png(resolve_relative(predictions, mine["semantic"])))
            tiles.append(render_overlay(image, classes, np.where(semantic == 255, 0, semantic), None, None, None))
        else:
            tiles.append(np.full_like(image, 255))
        masks, labels, scores = instances(results_by_image.get(mine["id"], []) if mine is not None else [])
        tiles.append(render_overlay(image, classes, None, masks, labels, scores))
        row, half = divmod(number, 2)
        for offset, array in enumerate(tiles):
            canvas.paste(Image.fromarray(array), ((half * 4 + offset) * tile, top + row * (tile + label)))
        draw.text((half * 4 * tile + 4, top + row * (tile + label) + tile + 2), Path(record["file_name"]).name,
                  fill=(80, 80, 80))
