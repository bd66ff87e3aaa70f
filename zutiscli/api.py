"""The Python API: ``import zutiscli as zs``.

One function per stage, each a thin layer over the pipeline function the command line calls:

========================================  ==========================  ==============================
function                                  options (keyword only)      returns
========================================  ==========================  ==============================
``synth(kind, n, output)``                :class:`SynthConfig`        ``Path`` of the data
``index(images, output)``                 :class:`IndexConfig`        :class:`IndexResult`
``retrieve(index, classes, output)``      :class:`RetrieveConfig`     ``Path`` of the archives
``cosegment(archives, output)``           :class:`CosegmentConfig`    :class:`CosegmentResult`
``pseudolabel(inputs, output)``           :class:`PseudolabelConfig`  :class:`PseudolabelResult`
``cluster(pseudolabels, output, k=)``     :class:`ClusterConfig`      :class:`ClusterResult`
``copypaste(pseudolabels, output, n=)``   :class:`CopyPasteConfig`    ``Path`` of the dataset
``train(dataset, output)``                :class:`TrainConfig`        :class:`TrainResult`
``hypotheses(images, classes, output)``   :class:`HypothesesConfig`   :class:`HypothesesResult`
``train_reclip(source, output)``          :class:`ReclipTrainConfig`  :class:`TrainResult`
``predict(images, classes, output)``      :class:`PredictConfig`      :class:`PredictResult`
``evaluate(pred, gt, output)``            :class:`EvaluateConfig`     :class:`EvaluateResult`
``compare(scenes, runs, output)``         :class:`CompareConfig`      :class:`CompareResult`
========================================  ==========================  ==============================

The keyword options are the fields of the stage's config dataclass, which are the command's
options (``--batch-size`` is ``batch_size=``), with the dataclass defaults; ``inspect.signature``
(and a notebook's ``zs.index?``) lists them with their defaults. An unknown keyword raises
``TypeError`` naming the valid ones. ``output=None`` writes a new ``runs/<stage>/<N>`` directory
as the command does. ``progress(done, total)`` and ``log(message)`` callbacks are optional.
User errors raise :class:`zutiscli.errors.ZutisError` (``UsageError`` for bad option values) with
the same one-line messages the command prints.

:class:`Predictor` loads a trained ZUTIS model once and segments images held in memory through the
predict engine of ``zutis predict`` (:mod:`zutiscli.engine.predict`), returning
:class:`Segmentation` arrays instead of files.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import itertools
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

from zutiscli.config_fields import field_default, split_commas
from zutiscli.data.classes import ClassQuery, _bad_character, _check_unique, _clean, parse_classes, with_stuff
from zutiscli.data.copypaste import CopyPasteConfig
from zutiscli.errors import UsageError
from zutiscli.pipeline.copypaste import copypaste as run_copypaste
from zutiscli.pipeline.cluster_config import ClusterConfig
from zutiscli.pipeline.compare_config import CompareConfig, RunSpec
from zutiscli.pipeline.copypaste_config import DATASET_DEFAULTS, CopyPasteDatasetConfig
from zutiscli.pipeline.cosegment_config import CosegmentConfig
from zutiscli.pipeline.evaluate import EvaluateConfig, EvaluateResult
from zutiscli.pipeline.index import IndexConfig, IndexResult
from zutiscli.pipeline.predict import PredictConfig, PredictResult
from zutiscli.pipeline.pseudolabel import PseudolabelConfig, PseudolabelResult
from zutiscli.pipeline.retrieve import RetrieveConfig
from zutiscli.pipeline.synth import SynthConfig
from zutiscli.pipeline.hypotheses_config import HypothesesConfig
from zutiscli.pipeline.reclip_config import ReclipTrainConfig
from zutiscli.pipeline.train import TrainConfig, TrainResult

__all__ = ["synth", "index", "retrieve", "cosegment", "pseudolabel", "cluster", "copypaste", "train", "hypotheses",
           "train_reclip", "predict", "evaluate", "compare", "Predictor", "Segmentation"]

PathLike = str | os.PathLike
ClassesLike = str | ClassQuery | Sequence[str | ClassQuery]

_POSITIONAL = inspect.Parameter.POSITIONAL_OR_KEYWORD
_KEYWORD = inspect.Parameter.KEYWORD_ONLY
_REQUIRED = inspect.Parameter.empty


# ---- signatures and options -----------------------------------------------------------------
def _field_options(cls: type, exclude: Iterable[str] = ()) -> list[inspect.Parameter]:
    """Keyword-only parameters for the fields of a config dataclass, with its defaults."""
    skip = set(exclude)
    parameters = []
    for field in dataclasses.fields(cls):  # options and not_an_option fields alike (zutiscli.config_fields)
        if field.name in skip:
            continue
        default = field_default(field)
        default = _REQUIRED if default is dataclasses.MISSING else default
        parameters.append(inspect.Parameter(field.name, _KEYWORD, default=default, annotation=field.type))
    return parameters


def _keywords(**defaults: Any) -> list[inspect.Parameter]:
    """Keyword-only parameters that are not config fields (class files, callbacks, ...)."""
    return [inspect.Parameter(name, _KEYWORD, default=default) for name, default in defaults.items()]


def _signature(*positional: tuple[str, Any], options: list[inspect.Parameter]) -> Callable:
    """Give a ``(*positional, **options)`` function the signature its options really have.

    The function body receives the options as ``**options``; :func:`_options` checks them
    against this signature, so the config dataclass is the one place each option is declared.
    """
    def attach(function: Callable) -> Callable:
        parameters = [inspect.Parameter(name, _POSITIONAL, default=default) for name, default in positional]
        function.__signature__ = inspect.Signature(parameters + options)  # type: ignore[attr-defined]
        return function

    return attach


def _options(function: Callable, given: dict[str, Any], where: str) -> dict[str, Any]:
    """The keyword options given to ``function``, checked against its signature.

    Raises ``TypeError`` for an unknown keyword, naming the valid ones (and the closest match).
    Path-like values become ``str``, as the configs store paths.
    """
    valid = [p.name for p in inspect.signature(function).parameters.values() if p.kind is _KEYWORD]
    unknown = [name for name in given if name not in valid]
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, valid, n=1)
            hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        what = "an unexpected keyword argument" if len(unknown) == 1 else "unexpected keyword arguments"
        raise TypeError(f"{where}() got {what} {', '.join(hints)}; valid options: {', '.join(valid)}")
    return {name: os.fspath(value) if isinstance(value, os.PathLike) else value for name, value in given.items()}


def _split_lists(opts: dict[str, Any], *names: str) -> None:
    """Options that hold names, given as one ``"a,b"`` string, become lists (as on the command line)."""
    for name in names:
        if isinstance(opts.get(name), str):
            opts[name] = split_commas(opts[name])


def _paths(items: PathLike | Iterable[PathLike] | None) -> list[str]:
    """One path or several as a list of ``str`` (``None`` -> ``[]``)."""
    if items is None:
        return []
    if isinstance(items, (str, os.PathLike)):
        return [os.fspath(items)]
    return [os.fspath(item) for item in items]


def _class_queries(classes: ClassesLike | None, classes_file: PathLike | None) -> list[ClassQuery]:
    """Classes as the commands take them: a comma string, a list of names (or ClassQuery), or a file.

    A list item is one name, commas included. Names are stripped and NFC-normalised; empty lists,
    control characters and duplicates are refused (:class:`UsageError` / :class:`ZutisError`).
    """
    if classes is None or isinstance(classes, str):
        return parse_classes(classes, None if classes_file is None else os.fspath(classes_file))
    if classes_file is not None:
        raise UsageError("classes and classes_file exclude each other; give one of them")
    items = [classes] if isinstance(classes, ClassQuery) else list(classes)
    queries: list[ClassQuery] = []
    for item in items:
        if isinstance(item, ClassQuery):
            queries.append(item)
            continue
        if not isinstance(item, str):
            raise TypeError(f"classes: expected class names (str) or ClassQuery, got {type(item).__name__}")
        name = _clean(item)
        if not name:
            raise UsageError(f"classes: {item!r} is not a class name")
        bad = _bad_character(name)
        if bad:
            raise UsageError(f"classes: class name {name!r} contains the control character {bad}; remove it")
        queries.append(ClassQuery(name, name))
    if not queries:
        raise UsageError("classes is empty; give at least one class name")
    _check_unique(queries, [f"item {number}" for number in range(1, len(queries) + 1)], "classes")
    return queries


# ---- stages ---------------------------------------------------------------------------------
@_signature(("kind", _REQUIRED), ("n", _REQUIRED), ("output", None),
            options=_field_options(SynthConfig, exclude=("kind", "count")) + _keywords(progress=None))
def synth(kind, n, output=None, **options):
    """Generate the shapes world (``zutis synth KIND -n N``).

    Args:
        kind: ``"pile"`` (unlabelled images to index), ``"scenes"`` (evaluation scenes with COCO
            instances and semantic PNGs) or ``"pairs"`` (image-caption pairs).
        n: number of images.
        output: directory to write (absent or empty); ``None`` = a new ``runs/synth/N``.
        **options: fields of :class:`zutiscli.pipeline.synth.SynthConfig`: ``seed``, ``size``
            (square side in pixels; ``None`` = the kind's default), ``min_objects`` /
            ``max_objects`` (scenes), ``image_format`` (``"png"`` or ``"jpg"``),
            ``jpeg_quality``, ``panoptic``, ``stuff``, ``split`` (``"train"`` or ``"shift"``),
            ``varied``; and ``progress(done, total)``. Note the seed defaults to 0 for
            every kind, while ``zutis synth scenes`` / ``pairs`` default to seeds 1 / 2.

    Returns:
        The directory written (images in ``images/``).
    """
    from zutiscli.pipeline.synth import write_synth

    opts = _options(synth, options, "synth")
    progress = opts.pop("progress", None)
    return write_synth(SynthConfig(kind=kind, count=n, **opts), output, progress=progress)


@_signature(("images", None), ("output", None),
            options=_field_options(IndexConfig, exclude=("sources",)) + _keywords(progress=None, log=None))
def index(images=None, output=None, **options):
    """Embed images once with CLIP into an index directory (``zutis index``); resumable.

    Args:
        images: an image file, directory (recursive) or glob, or a list of them; ``None`` with
            ``from_list=FILE``.
        output: index directory; an existing index is resumed or appended to. ``None`` = a new
            ``runs/index/N``.
        **options: fields of :class:`zutiscli.pipeline.index.IndexConfig` (``model``,
            ``pretrained``, ``batch_size``, ``workers``, ``device``, ``precision``, ``faiss``,
            ``shard`` as ``(i, n)`` or ``"i/n"``, ``chunk_size``, ``max_pixels``, ...); and
            ``progress(done, total)``, ``log(message)``.

    Returns:
        :class:`zutiscli.pipeline.index.IndexResult` (``.path`` is the index directory).
    """
    from zutiscli.data.shards import parse_shard
    from zutiscli.pipeline.index import build_index

    opts = _options(index, options, "index")
    progress, log = opts.pop("progress", None), opts.pop("log", None)
    if isinstance(opts.get("shard"), str):
        opts["shard"] = parse_shard(opts["shard"])
    return build_index(IndexConfig(sources=_paths(images), **opts), output, progress=progress, log=log)


@_signature(("index", _REQUIRED), ("classes", None), ("output", None),
            options=_field_options(RetrieveConfig, exclude=("indices", "classes"))
            + _keywords(classes_file=None, progress=None, log=None, warn=None))
def retrieve(index, classes=None, output=None, **options):
    """Per-class archives: the top-k images of one or more indices for each class (``zutis retrieve``).

    Args:
        index: an index directory written by :func:`index`, or a list of them (one model).
        classes: ``"cat,dog"``, ``["cat", "dog"]`` or :class:`ClassQuery` items (name and search
            phrase); or ``None`` with ``classes_file=FILE`` (one class per line).
        output: archives directory (absent or empty); ``None`` = a new ``runs/retrieve/N``.
        **options: fields of :class:`zutiscli.pipeline.retrieve.RetrieveConfig` (``k``,
            ``prompts``, ``exclude_duplicates``, ``contact_sheet``, ``device``, ``batch_size``,
            ``nprobe``, ...); ``classes_file``; ``progress``, ``log``, ``warn(message)`` (default:
            :func:`warnings.warn`).

    Returns:
        The archives directory (``archives.json``).
    """
    from zutiscli.pipeline.retrieve import retrieve as run_retrieve

    opts = _options(retrieve, options, "retrieve")
    queries = _class_queries(classes, opts.pop("classes_file", None))
    callbacks = {name: opts.pop(name, None) for name in ("progress", "log", "warn")}
    config = RetrieveConfig(indices=tuple(Path(p) for p in _paths(index)), classes=tuple(queries), **opts)
    return run_retrieve(config, output, progress=callbacks["progress"], warn=callbacks["warn"], log=callbacks["log"])


@_signature(("inputs", _REQUIRED), ("output", None),
            options=_field_options(PseudolabelConfig, exclude=("inputs",)) + _keywords(progress=None, log=None))
def pseudolabel(inputs, output=None, **options):
    """Find the objects in every archive image and name them after it, or in every image of a pile,
    unnamed (``zutis pseudolabel``); resumable.

    Args:
        inputs: an archives directory written by :func:`retrieve`, an index written by
            :func:`index`, or image files, directories and globs (a path or a list of them).
        output: pseudo-label directory (rerun with the same one to resume); ``None`` = a new
            ``runs/pseudolabel/N``.
        **options: fields of :class:`zutiscli.pipeline.pseudolabel.PseudolabelConfig`
            (``method``, ``model``, ``pretrained``, ``size`` in pixels, ``refine``,
            ``min_area`` as a fraction of the image, ``device``, ``workers``, ``preview``, ...);
            and ``progress``, ``log``.

    Returns:
        :class:`zutiscli.pipeline.pseudolabel.PseudolabelResult` (``.path``, mask counts).
    """
    from zutiscli.pipeline.pseudolabel import run_pseudolabel

    opts = _options(pseudolabel, options, "pseudolabel")
    progress, log = opts.pop("progress", None), opts.pop("log", None)
    given = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    return run_pseudolabel(PseudolabelConfig(inputs=tuple(map(os.fspath, given)), **opts), output,
                           progress=progress, log=log)


@_signature(("archives", _REQUIRED), ("output", None),
            options=_field_options(CosegmentConfig, exclude=("archives",)) + _keywords(progress=None, log=None))
def cosegment(archives, output=None, **options):
    """ReCo's reference embedding of each class, co-segmented from its archive (``zutis cosegment``).

    Args:
        archives: archives directory written by :func:`retrieve` (ReCo: ``k=50``).
        output: references directory (rerun with the same one to resume); ``None`` = a new
            ``runs/cosegment/N``.
        **options: fields of :class:`zutiscli.pipeline.cosegment.CosegmentConfig` (``k``,
            ``model``, ``pretrained``, ``size`` in pixels, ``text_gate``, ``context`` as names or
            ``"sky,road"``, ``preview``, ``device``, ...); and ``progress``, ``log``.

    Returns:
        :class:`zutiscli.pipeline.cosegment.CosegmentResult` (``.path``, classes, images used).
    """
    from zutiscli.pipeline.cosegment import cosegment as run_cosegment

    opts = _options(cosegment, options, "cosegment")
    progress, log = opts.pop("progress", None), opts.pop("log", None)
    _split_lists(opts, "context")
    return run_cosegment(CosegmentConfig(archives=os.fspath(archives), **opts), output, progress=progress, log=log)


@_signature(("pseudolabels", _REQUIRED), ("output", None),
            options=_field_options(ClusterConfig, exclude=("pseudolabels",)) + _keywords(progress=None, log=None))
def cluster(pseudolabels, output=None, **options):
    """Group the masks of a pseudo-label directory into ``k`` pseudo-classes (``zutis cluster``).

    Args:
        pseudolabels: pseudo-label directory written by :func:`pseudolabel` (named by archives or
            unnamed).
        output: clusters directory (absent or empty); ``None`` = a new ``runs/cluster/N``.
        **options: ``k`` (clusters, required); fields of
            :class:`zutiscli.pipeline.cluster_config.ClusterConfig` (``features`` ``"clip"`` or
            ``"cls"``, ``model``, ``pretrained``, ``features_from``, ``restarts``, ``iterations``,
            ``seed``, ``ground_truth`` (a COCO instances JSON), ``contact``, ``batch_size``,
            ``workers``, ``device``, ...); and ``progress(masks done, total)``, ``log``.

    Returns:
        :class:`zutiscli.pipeline.cluster.ClusterResult` (``.path``, per-cluster sizes, and with
        ground truth ``.purity`` and ``.nmi``); :func:`zutiscli.artefacts.clusters.read_clusters`
        reads the directory back.
    """
    from zutiscli.pipeline.cluster import cluster as run_cluster

    opts = _options(cluster, options, "cluster")
    progress, log = opts.pop("progress", None), opts.pop("log", None)
    return run_cluster(ClusterConfig(pseudolabels=os.fspath(pseudolabels), **opts), output, progress=progress, log=log)


_SCENE_DEFAULTS = CopyPasteConfig()


@_signature(("pseudolabels", _REQUIRED), ("output", None),
            options=_keywords(n=_REQUIRED)
            + _field_options(CopyPasteConfig, exclude=("scale_range", "canvas_scale"))
            + _keywords(scale_min=_SCENE_DEFAULTS.scale_range[0], scale_max=_SCENE_DEFAULTS.scale_range[1],
                        canvas_min=_SCENE_DEFAULTS.canvas_scale[0], canvas_max=_SCENE_DEFAULTS.canvas_scale[1],
                        **{name: getattr(DATASET_DEFAULTS, name) for name in ("seed", "workers", "image_format")},
                        progress=None))
def copypaste(pseudolabels, output=None, **options):
    """Write ``n`` copy-paste training scenes from pseudo-labels (``zutis copypaste``).

    Args:
        pseudolabels: pseudo-label directory written by :func:`pseudolabel`.
        output: dataset directory (absent or empty); ``None`` = a new ``runs/copypaste/N``.
        **options: ``n`` (number of scenes, required); fields of
            :class:`zutiscli.data.copypaste.CopyPasteConfig` (``size`` in pixels,
            ``max_objects``, ``same_class_prob``, ``hflip_prob``, ``jitter_prob``,
            ``grayscale_prob``, ``blur_prob``, ``min_visible_fraction``, ...), with the scale
            ranges as the command's ``scale_min`` / ``scale_max`` (fractions of the side) and
            ``canvas_min`` / ``canvas_max``;
            ``seed``, ``workers`` (processes), ``image_format`` (``"jpg"`` or ``"png"``); and
            ``progress``.

    Returns:
        The dataset directory (``images/``, ``instances.json``, ``semantic/``).
    """
    opts = _options(copypaste, options, "copypaste")
    if "n" not in opts:
        raise TypeError("copypaste() missing the keyword argument 'n' (number of scenes)")
    count = opts.pop("n")
    dataset = {name: opts.pop(name) for name in ("seed", "workers", "image_format", "progress") if name in opts}
    low, high = _SCENE_DEFAULTS.scale_range
    canvas_low, canvas_high = _SCENE_DEFAULTS.canvas_scale
    config = CopyPasteConfig(scale_range=(opts.pop("scale_min", low), opts.pop("scale_max", high)),
                             canvas_scale=(opts.pop("canvas_min", canvas_low), opts.pop("canvas_max", canvas_high)),
                             **opts)
    progress = dataset.pop("progress", None)
    return run_copypaste(CopyPasteDatasetConfig(count=count, source=os.fspath(pseudolabels), scene=config, **dataset),
                         output, progress=progress)


@_signature(("dataset", None), ("output", None),
            options=_field_options(TrainConfig, exclude=("source",))
            + _keywords(config_file=None, resume=None, progress=None, log=None))
def train(dataset=None, output=None, **options):
    """Train the ZUTIS model (``zutis train``); resumable.

    Args:
        dataset: pseudo-label directory (scenes made online by copy-paste) or a
            :func:`copypaste` dataset; ``None`` when resuming.
        output: run directory (absent or empty); ``None`` = a new ``runs/train/N``.
        **options: fields of :class:`zutiscli.pipeline.train.TrainConfig` (``model``,
            ``pretrained``, ``iterations``, ``batch_size``, ``crop`` in pixels, ``lr``,
            ``device``, ``precision``, ``max_minutes``, ...); ``config_file`` (a YAML or TOML
            recipe, or a shipped recipe's name: ``"official"``, ``"demo"``, ``"demo-fast"``; options
            given here override it); ``resume`` (a run directory to continue
            where it stopped); ``progress(iteration, total, losses)``, ``log(message)``.

    Returns:
        :class:`zutiscli.pipeline.train.TrainResult` (``.path`` holds ``model.pt``).
    """
    from zutiscli.pipeline.train import load_recipe, train as run_training

    opts = _options(train, options, "train")
    config_file, resume = opts.pop("config_file", None), opts.pop("resume", None)
    progress, log = opts.pop("progress", None), opts.pop("log", None)
    values: dict[str, Any] = load_recipe(config_file) if config_file is not None else {}
    values.update(opts)
    if dataset is not None:
        values["source"] = os.fspath(dataset)
    if resume is not None:
        # A resumed run keeps its own recipe; only an explicit ``iterations`` extends it.
        extend = {"iterations": values["iterations"]} if "iterations" in values else None
        config = TrainConfig.from_dict(extend, where=config_file or "options") if extend else None
        return run_training(config, output=output, resume=resume, progress=progress, log=log)
    config = TrainConfig.from_dict(values, where=config_file or "options")
    if not config.source:
        raise UsageError("give the pseudo-label or dataset directory (or resume=RUN_DIR)")
    return run_training(config, output=output, resume=resume, progress=progress, log=log)


@_signature(("images", None), ("classes", None), ("output", None),
            options=_field_options(HypothesesConfig, exclude=("inputs", "classes"))
            + _keywords(classes_file=None, progress=None, log=None))
def hypotheses(images=None, classes=None, output=None, **options):
    """ReCLIP++'s label hypotheses of unlabelled images (``zutis hypotheses``): the classes each holds.

    Args:
        images: image files, directories or globs (one or a list).
        classes: ``"a,b"``, a list of names, or :class:`ClassQuery` objects; or ``classes_file=``.
        output: the hypotheses directory; ``None`` = a new ``runs/hypotheses/N``.
        **options: fields of :class:`zutiscli.pipeline.hypotheses_config.HypothesesConfig` (``window``,
            ``threshold``, ``mode``, ``model``, ``pretrained``, ``ground_truth``, ...); ``progress(done,
            total)``, ``log(message)``.

    Returns:
        :class:`zutiscli.pipeline.hypotheses.HypothesesResult` (``.path``, ``.images``, ``.quality``).
    """
    from zutiscli.pipeline.hypotheses import hypotheses as run_hypotheses

    opts = _options(hypotheses, options, "hypotheses")
    classes_file, progress, log = opts.pop("classes_file", None), opts.pop("progress", None), opts.pop("log", None)
    config = HypothesesConfig(inputs=tuple(_paths(images)), classes=tuple(_class_queries(classes, classes_file)), **opts)
    config.validate()
    return run_hypotheses(config, output, progress=progress, log=log)


@_signature(("source", None), ("output", None),
            options=_field_options(ReclipTrainConfig, exclude=("source",)) + _keywords(resume=None, progress=None,
                                                                                     log=None))
def train_reclip(source=None, output=None, **options):
    """Train ReCLIP++'s rectified CLIP (``zutis train --method reclip``), or distil one (``teacher=RUN``).

    Args:
        source: a :func:`hypotheses` directory, or an image folder with ``classes="a,b"``; ``None``
            when resuming, or distilling on the teacher's hypotheses.
        output: run directory; ``None`` = a new ``runs/train/N``.
        **options: fields of :class:`zutiscli.pipeline.reclip_config.ReclipTrainConfig` with their
            ReCLIP++ defaults (``lr=0.01``, ``bias``, ``mask_decoder``, ``teacher``, ...); ``resume``
            (a run directory), ``progress(iteration, total, losses)``, ``log(message)``.

    Returns:
        :class:`zutiscli.pipeline.train.TrainResult` (``.path`` holds ``model.pt`` for
        ``predict(..., method="reclip", checkpoint=...)``).
    """
    from zutiscli.pipeline.train_reclip import train_reclip as run_reclip

    opts = _options(train_reclip, options, "train_reclip")
    resume, progress, log = opts.pop("resume", None), opts.pop("progress", None), opts.pop("log", None)
    if isinstance(opts.get("classes"), (list, tuple)):
        opts["classes"] = ",".join(opts["classes"])
    if resume is not None:
        extend = {"iterations": opts["iterations"]} if "iterations" in opts else None
        config = ReclipTrainConfig.from_dict(extend, where="options") if extend else None
    else:
        config = ReclipTrainConfig.from_dict(opts | {"source": os.fspath(source) if source is not None else ""},
                                             where="options")
    return run_reclip(config, output=output, resume=resume, progress=progress, log=log)


@_signature(("images", None), ("classes", None), ("output", None),
            options=_field_options(PredictConfig, exclude=("inputs", "classes"))
            + _keywords(classes_file=None, progress=None, log=None))
def predict(images=None, classes=None, output=None, **options):
    """Segment image files and write the ``zutis predict`` directory (label maps, COCO results).

    For images in memory and arrays back, use :class:`Predictor`.

    Args:
        images: an image file, directory or glob, or a list of them; ``None`` with
            ``from_list=FILE``.
        classes: ``"cat,dog"``, ``["cat", "dog"]`` or :class:`ClassQuery` items; or ``None``
            with ``classes_file=FILE``; ``None`` alone: a ZUTIS checkpoint's own classes (a model
            trained on clusters: its clusters).
        output: predictions directory (absent or empty); ``None`` = a new ``runs/predict/N``.
        **options: fields of :class:`zutiscli.pipeline.predict.PredictConfig` (``checkpoint``,
            ``method``, ``task``, ``device``, ``precision``, ``max_size`` in pixels,
            ``mask_threshold``, ``score_threshold``, ``nms``, ``iou_threshold``, ``crf``,
            ``vis``, ``stuff`` (names or ``"sky,grass"``, added to the classes), ``references``
            and ``context`` (names or ``"sky,grass"``) for ReCo, ...);
            ``classes_file``; ``progress``, ``log``.

    Returns:
        :class:`zutiscli.pipeline.predict.PredictResult` (``.path``, per-image summaries,
        failures, timing in seconds).
    """
    from zutiscli.pipeline.predict import predict as run_predict

    opts = _options(predict, options, "predict")
    _split_lists(opts, "stuff", "context")
    classes_file = opts.pop("classes_file", None)
    if classes is None and classes_file is None:  # a ZUTIS checkpoint's own classes (or clusters, and its stuff)
        from zutiscli.pipeline.predict import classes_to_segment

        given, opts["stuff"] = classes_to_segment(None, None, opts.get("method", PredictConfig.method),
                                                  opts.get("checkpoint"), opts.get("stuff", ()))
    else:
        given = _class_queries(classes, classes_file)
    queries = with_stuff(given, opts.get("stuff", ()))
    progress, log = opts.pop("progress", None), opts.pop("log", None)
    config = PredictConfig(inputs=_paths(images), classes=queries, **opts)
    if not config.inputs and not config.from_list:
        raise UsageError("give images (files, directories, globs) or from_list=FILE")
    return run_predict(config, output, progress=progress, log=log)


@_signature(("pred", _REQUIRED), ("gt", _REQUIRED), ("output", None),
            options=_field_options(EvaluateConfig, exclude=("pred", "gt")) + _keywords(progress=None, log=None))
def evaluate(pred, gt, output=None, **options):
    """Score predictions against ground truth and write ``metrics.json`` (``zutis evaluate``).

    Args:
        pred: a :func:`predict` directory, a COCO results JSON, a COCO panoptic JSON or a
            directory of label PNGs.
        gt: COCO instances or panoptic JSON, a prepared benchmark or ``synth("scenes")``
            directory, or a directory of label PNGs.
        output: metrics directory (absent or empty); ``None`` = a new ``runs/evaluate/N``.
        **options: fields of :class:`zutiscli.pipeline.evaluate.EvaluateConfig`; list options
            also take the command's text: ``tasks`` (``"auto"``, ``"all"`` or
            ``"instance,semantic"``), ``class_map`` (``"tv=television"`` or a dict),
            ``iou_types`` (``"segm,bbox"``), ``max_dets`` (``"1,10,100"``); and ``progress``,
            ``log``.

    Returns:
        :class:`zutiscli.pipeline.evaluate.EvaluateResult` (``.metrics``: AP, mIoU and PQ as
        fractions in [0, 1]).
    """
    from zutiscli.pipeline.evaluate import evaluate as run_evaluate
    from zutiscli.pipeline.evaluate_config import parse_class_map, parse_tasks

    opts = _options(evaluate, options, "evaluate")
    progress, log = opts.pop("progress", None), opts.pop("log", None)
    if isinstance(opts.get("tasks"), str):
        opts["tasks"] = parse_tasks(opts["tasks"])
    if isinstance(opts.get("class_map"), str):
        opts["class_map"] = parse_class_map(opts["class_map"])
    if isinstance(opts.get("iou_types"), str):
        opts["iou_types"] = split_commas(opts["iou_types"])
    if isinstance(opts.get("max_dets"), str):
        try:
            opts["max_dets"] = [int(value) for value in split_commas(opts["max_dets"])]
        except ValueError:
            raise UsageError(f"max_dets {opts['max_dets']!r}: give three integers, e.g. 1,10,100") from None
    config = EvaluateConfig(pred=os.fspath(pred), gt=os.fspath(gt), **opts)
    return run_evaluate(config, output, progress=progress, log=log)


@_signature(("scenes", _REQUIRED), ("runs", _REQUIRED), ("output", None),
            options=_field_options(CompareConfig, exclude=("images", "runs")) + _keywords(log=None, warn=None))
def compare(scenes, runs, output=None, **options):
    """Every method on the same scenes, scored alike: one table and one picture (``zutis compare``).

    Args:
        scenes: a :func:`synth` ``"scenes"`` directory (images and ground truth), or images with ``gt=``.
        runs: ``"maskclip"``, ``"reco:REFERENCES"``, ``"zutis:RUN"`` (``"LABEL=..."`` names a row),
            one or a list.
        output: comparison directory (absent or empty); ``None`` = a new ``runs/compare/N``.
        **options: fields of :class:`zutiscli.pipeline.compare.CompareConfig` (``gt``,
            ``classes``, ``stuff``, ``model``, ``pretrained``, ``background_threshold``,
            ``picture``, ``device``, ...); and ``log`` and ``warn`` (a run that labels every pixel
            background; default :func:`warnings.warn`).

    Returns:
        :class:`zutiscli.pipeline.compare.CompareResult` (``.path``, ``.rows`` per run label:
        metrics as fractions and seconds per image, a ``"warning"`` where there is one, ``.table``).
    """
    from zutiscli.pipeline.compare import compare as run_compare

    opts = _options(compare, options, "compare")
    log, warn = opts.pop("log", None), opts.pop("warn", None)
    if isinstance(opts.get("stuff"), str):
        opts["stuff"] = split_commas(opts["stuff"])
    specs = tuple(RunSpec.parse(os.fspath(run)) for run in ([runs] if isinstance(runs, (str, os.PathLike)) else runs))
    return run_compare(CompareConfig(images=os.fspath(scenes), runs=specs, **opts), output, log=log, warn=warn)


# ---- in-memory prediction -------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Segmentation:
    """Semantic and instance segmentation of one image of ``H x W`` pixels (``N`` instances).

    Attributes:
        semantic: ``(H, W)`` int64 index into :attr:`class_names`: 0 = background, ``i`` = the
            ``i``-th class given to the predictor. Every pixel is labelled (the 255 / 65535
            "ignore" value of label PNGs never occurs in a prediction).
        masks: ``(N, H, W)`` bool instance masks, best score first.
        scores: ``(N,)`` float32 scores in [0, 1] (mean mask probability x class probability).
        labels: ``(N,)`` int64 class of each instance, index into :attr:`class_names`, in
            ``1..K`` (never background); the ``category_id`` of ``zutis predict``'s
            ``predictions.json``.
        class_names: ``("background", *classes)``, length ``K + 1``.
        boxes: ``(N, 4)`` float32 ``(x0, y0, x1, y1)`` pixel boxes of the masks: ``x0, y0`` the
            first covered column and row, ``x1, y1`` one past the last (so ``x1 - x0`` is the
            COCO box width); all zero for a mask left empty by upsampling.
    """

    semantic: np.ndarray
    masks: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    boxes: np.ndarray

    def __len__(self) -> int:
        """Number of instances ``N``."""
        return int(self.scores.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` in pixels."""
        return int(self.semantic.shape[0]), int(self.semantic.shape[1])

    @property
    def names(self) -> list[str]:
        """Class name of each instance, in instance order."""
        return [self.class_names[int(label)] for label in self.labels]

    def __repr__(self) -> str:
        height, width = self.size
        shown = ", ".join(f"{name} {score:.2f}" for name, score in zip(self.names[:5], self.scores[:5]))
        more = f", ... {len(self) - 5} more" if len(self) > 5 else ""
        count = f"{len(self)} instance" + ("" if len(self) == 1 else "s")
        return f"Segmentation({height}x{width}, {count}" + (f": {shown}{more})" if len(self) else ")")


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """Tight boxes of masks: ``(N, H, W)`` bool -> ``(N, 4)`` float32 ``(x0, y0, x1, y1)`` pixels.

    ``x1, y1`` are one past the last covered column and row (COCO ``[x, y, w, h]`` is
    ``[x0, y0, x1 - x0, y1 - y0]``); an empty mask gets ``(0, 0, 0, 0)``.
    """
    masks = np.asarray(masks, dtype=bool)
    count, height, width = masks.shape
    rows, cols = masks.any(axis=2), masks.any(axis=1)
    boxes = np.stack([cols.argmax(1), rows.argmax(1), width - cols[:, ::-1].argmax(1),
                      height - rows[:, ::-1].argmax(1)], axis=1).astype(np.float32)
    boxes[~rows.any(1)] = 0
    return boxes.reshape(count, 4)


ImageLike = Any  # a path (str or os.PathLike), a PIL image, or an (H, W, 3) uint8 numpy array

# PredictConfig fields a Predictor takes: the model's device and precision, the input size and
# every post-processing option. The rest name files, the output, or other methods' options.
_NOT_PREDICTOR_OPTIONS = ("inputs", "from_list", "classes", "method", "checkpoint", "model", "pretrained", "task",
                          "workers", "components", "vis", "batch_size", "chunk_size", "loader_workers", "shard")


class Predictor:
    """A trained ZUTIS model, loaded once, that segments images for a fixed list of classes.

    The same predict engine as ``zutis predict`` (:mod:`zutiscli.engine.predict`: input resizing,
    forward pass, post-processing), so a :class:`Segmentation` holds exactly what ``zutis predict``
    writes to ``semantic/*.png`` and ``predictions.json``. Like the command, it uses the inference
    settings the model's training recipe recorded, unless an option overrides one
    (``inference="paper"``: the paper's settings).

    Args:
        checkpoint: a ``zutis train`` run directory or a model file; ``None`` = ``$ZUTIS_CHECKPOINT``,
            else the newest finished run under ``./runs/train``.
        classes: ``"cat,dog"``, ``["cat", "dog"]`` or :class:`ClassQuery` items (any names: the
            text encoder is open-vocabulary); ``None`` = the classes the model was trained on,
            or those of ``classes_file=FILE``. Encoded once.
        **options: ``device`` (``"auto"``, ``"cpu"``, ``"cuda:N"``), ``precision`` of the image
            encoder, ``max_size`` (cap on the long side fed to the model, pixels; outputs keep
            the image's size), ``max_pixels`` (files larger than this are refused), ``inference``
            (``"recipe"`` or ``"paper"``) and the post-processing fields of
            :class:`zutiscli.pipeline.predict.PredictConfig`: ``mask_threshold``,
            ``class_temperature``, ``score_threshold``, ``nms``, ``iou_threshold``, ``sigma``,
            ``max_detections``, ``crf`` and ``crf_*``, ``refine``, ``crop_weight``, ``crop_model``,
            ``crop_pretrained``, ``crop_adapter``, ``semantic_from`` (``None``: the recipe's).

    Attributes:
        classes: the class names, in order (``Segmentation.class_names[1:]``).
        checkpoint: the model file loaded.
        trained_classes: the names the model was trained on.
        device: where the model runs.
        config: the options given (a :class:`PredictConfig`).
        settings: the inference settings in effect (:class:`zutiscli.engine.inference.InferenceSettings`).
    """

    def __init__(self, checkpoint=None, classes=None, **options):
        from zutiscli.artefacts.runs import resolve_checkpoint
        from zutiscli.methods.predict.zutis import load_zutis
        from zutiscli.models.device import resolve_device, resolve_precision
        from zutiscli.pipeline.predict import open_engine

        opts = _options(Predictor.__init__, options, "Predictor")
        classes_file = opts.pop("classes_file", None)
        given = None if classes is None and classes_file is None else _class_queries(classes, classes_file)
        config = PredictConfig(classes=tuple(given or ()), method="zutis", task="all", vis=False, **opts)
        if given is not None:
            config.validate()  # refuse bad options before loading the model
        path = resolve_checkpoint(None if checkpoint is None else os.fspath(checkpoint))
        self.device = resolve_device(config.device)
        dtype = resolve_precision(config.precision, self.device)
        model, trained, recipe = load_zutis(path, self.device, dtype)
        if given is None:
            config = dataclasses.replace(config, classes=tuple(ClassQuery(name, name) for name in trained))
            config.validate()
        config.checkpoint = str(path)
        self.config = config
        self.checkpoint = path
        self.trained_classes = tuple(trained)
        self.classes = tuple(query.name for query in config.classes)
        self._class_names = ("background", *self.classes)
        self._engine, self.settings, _ = open_engine(config, self.device, dtype, lambda message: None, model=model,
                                                     recipe=recipe)

    def __repr__(self) -> str:
        return f"Predictor({str(self.checkpoint)!r}, classes={list(self.classes)!r}, device={str(self.device)!r})"

    @property
    def model(self) -> Any:
        """The loaded :class:`zutiscli.models.zutis.ZutisModel` (eval mode, no gradients)."""
        return self._engine.predictor.model

    def __call__(self, image: ImageLike) -> Segmentation:
        """Segment one image: a path, a PIL image, or an ``(H, W, 3)`` uint8 RGB array.

        Files are decoded as ``zutis predict`` decodes them (EXIF orientation applied, any mode
        converted to RGB, transparency over white); a PIL image is converted to RGB the same
        way but used in the orientation it has. Returns a :class:`Segmentation` at ``(H, W)``.
        """
        rgb = self._rgb(image)
        return self._segmentation(*self._engine.segment([rgb])[0])

    def predict_many(self, images: Iterable[ImageLike], batch_size: int = 1) -> Iterator[Segmentation]:
        """Segment an iterable of images lazily, yielding one :class:`Segmentation` per image, in order.

        Args:
            images: paths, PIL images or ``(H, W, 3)`` uint8 arrays (any mix).
            batch_size: images decoded together and sent through the network together when
                their model input sizes match (others of the batch run one by one). 1 gives
                results bit-identical to ``zutis predict``; larger batches are faster on a GPU
                and equal up to floating-point rounding of batched kernels.
        """
        if isinstance(images, (str, os.PathLike, np.ndarray, Image.Image)):
            raise TypeError("predict_many() takes an iterable of images; call the predictor itself for one image")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
        iterator = iter(images)
        while True:
            chunk = [self._rgb(image) for image in itertools.islice(iterator, batch_size)]
            if not chunk:
                return
            for semantic, instances in self._engine.segment(chunk):
                yield self._segmentation(semantic, instances)

    def _rgb(self, image: ImageLike) -> np.ndarray:
        """Any accepted image -> ``(H, W, 3)`` uint8 C-contiguous RGB array."""
        from zutiscli.data.images import load_image, to_rgb

        if isinstance(image, (str, os.PathLike)):
            return np.asarray(load_image(image, max_pixels=self.config.max_pixels))
        if isinstance(image, Image.Image):
            return np.asarray(to_rgb(image))
        if isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"an image array must be (H, W, 3) uint8 RGB; got {image.shape} {image.dtype} "
                                 f"(convert with PIL: np.asarray(Image.fromarray(a).convert('RGB')))")
            return np.ascontiguousarray(image)
        raise TypeError(f"an image is a path, a PIL image or an (H, W, 3) uint8 array, not {type(image).__name__}")

    def _segmentation(self, semantic: np.ndarray, instances: Any) -> Segmentation:
        return Segmentation(semantic=semantic, masks=instances.masks, scores=instances.scores,
                            labels=instances.labels, class_names=self._class_names, boxes=mask_boxes(instances.masks))


Predictor.__init__.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [inspect.Parameter("self", _POSITIONAL), inspect.Parameter("checkpoint", _POSITIONAL, default=None),
     inspect.Parameter("classes", _POSITIONAL, default=None)]
    + _keywords(classes_file=None) + _field_options(PredictConfig, exclude=_NOT_PREDICTOR_OPTIONS))
