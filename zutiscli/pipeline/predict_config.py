"""The options of ``zutis predict run`` (:class:`PredictConfig`), importable without numpy or torch.

The command line builds ``zutis predict run --help`` from these fields; :mod:`zutiscli.pipeline.predict`
runs the stage (and exports :class:`PredictConfig` too).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from zutiscli.config_fields import (
    check_choices, device_option, join_commas, not_an_option, option, precision_option, split_commas,
)
from zutiscli.engine import inference
# by name: in PredictConfig's body its field ``inference`` hides the module
from zutiscli.engine.inference import NMS_METHODS, REFINERS, SEMANTIC_SOURCES, SOURCES
from zutiscli.errors import UsageError
from zutiscli.data.shards import check_shard, parse_shard
from zutiscli.data.workers import available_cores
from zutiscli.methods.predict import RECO_BACKGROUND_RULES

if TYPE_CHECKING:
    from zutiscli.data.classes import ClassQuery

TASKS = ("semantic", "instance", "panoptic", "all")


def _recipe(name: str, what: str) -> str:
    """Help of an inference setting: what it does, then where its value comes from by default.

    The paper's value is :data:`zutiscli.engine.inference.PAPER`'s, written once in
    :class:`~zutiscli.engine.inference.InferenceSettings`.
    """
    value = getattr(inference.PAPER, name)
    shown = {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value
    return f"{what} Default: the model's training recipe, else {shown} (the paper)."


def _setting(name: str, what: str, **presentation: Any) -> Any:
    """An inference setting's option: ``None`` = not given (the recipe's, else the paper's value)."""
    return option(None, _recipe(name, what), show_default=False, **presentation)


@dataclass
class PredictConfig:
    """Options of ``zutis predict`` (pixels for sizes; probabilities and IoUs in [0, 1]).

    The inference settings (``mask_threshold`` ... ``crf``, ``refine``, ``crop_weight``,
    ``semantic_from``) default to ``None``: the model's recipe (recorded by ``zutis train``), else
    the paper's (:class:`zutiscli.engine.inference.InferenceSettings`). ``inference="paper"``
    starts from the paper's settings whatever the recipe says.
    """

    inputs: Sequence[str] = not_an_option((), "the command's IMAGES arguments")
    classes: Sequence[ClassQuery] = not_an_option((), "read from --classes or --classes-file")
    stuff: Sequence[str] = option(
        (), "Classes that are stuff (sky, grass, ...): in the semantic map and as panoptic stuff segments, never "
        "instances; added to the classes when not among them.", metavar="A,B", parse=split_commas, text=join_commas,
        show_default=False)
    from_list: str | None = option(None, "Text file of image paths.", kind="path", show_default=False)
    checkpoint: str | None = option(
        None, "Run directory or model file (default: $ZUTIS_CHECKPOINT, else the newest ./runs/train run).",
        show_default=False)
    method: str = option(
        "zutis", "zutis: a trained ZUTIS model (--checkpoint); maskclip: the training-free MaskCLIP baseline "
        "(CLIP weights alone); reco: training-free ReCo, a semantic method (--references; instances are "
        "the connected components of each class).", metavar="zutis|maskclip|reco")
    model: str = option("ViT-B-16", "maskclip: open_clip model name.", kind="model")
    pretrained: str | None = option(None, "maskclip: weights (tag, file, builtin).", show_default=False)
    task: str = option("all", "What to predict.", choices=TASKS)
    device: str = device_option()
    precision: str = precision_option("fp32")
    max_size: int | None = option(
        None, "Cap the long side fed to the model (outputs stay at the original size).", show_default=False)
    inference: str = option(
        "recipe", "Start from the inference settings the model's training recipe recorded (recipe), or from the "
        "paper's (paper); options below override either.", choices=SOURCES)
    mask_threshold: float | None = _setting("mask_threshold", "Binarise query masks at this probability.")
    class_temperature: float | None = _setting("class_temperature", "Class probability = sigmoid(T x cosine).")
    score_threshold: float | None = _setting("score_threshold", "Drop instances scoring at or below this.")
    nms: str | None = _setting("nms", "Per-class mask NMS.", choices=NMS_METHODS)
    iou_threshold: float | None = _setting("iou_threshold", "NMS IoU threshold.")
    sigma: float | None = _setting("sigma", "Gaussian (soft/matrix) NMS sigma.")
    max_detections: int | None = _setting("max_detections", "Most instances per image.")
    crf: bool | None = _setting("crf", "DenseCRF on the semantic class probabilities.", flag="--crf/--no-crf")
    crf_iterations: int = option(10, "DenseCRF iterations.")
    crf_pos_w: float = option(3.0, "DenseCRF Gaussian kernel weight.")
    crf_pos_xy: float = option(1.0, "DenseCRF Gaussian kernel spatial sigma.")
    crf_bi_w: float = option(4.0, "DenseCRF bilateral kernel weight.")
    crf_bi_xy: float = option(67.0, "DenseCRF bilateral spatial sigma.")
    crf_bi_rgb: float = option(3.0, "DenseCRF bilateral colour sigma.")
    workers: int = option(0, "Processes for the CRF (0 = this process).")
    components: bool = option(False, "maskclip: split each class region into connected components.",
                              flag="--components/--no-components")
    references: str | None = option(
        None, "reco: references directory written by `zutis cosegment` (one per class to segment).", kind="path",
        show_default=False)
    context: Sequence[str] = option(
        (), "reco: context classes (in --references) whose similarity suppresses the classes' maps, as "
        "prod(1 - sigmoid(cos)) (ReCo's context elimination).", metavar="A,B", parse=split_commas,
        text=join_commas, show_default=False)
    text_gate: bool = option(
        True, "reco: multiply each class map by sigmoid(10 cos) of the references' CLIP's dense features with "
        "the class text (ReCo's language gate).", flag="--text-gate/--no-text-gate")
    background_threshold: float = option(
        0.9, "reco: background where no class holds this share of the class maps' sum (ZUTIS' comparison: 0.9), "
        "or with --background-rule match where no reference matches this well.")
    background_rule: str = option(
        "share", "reco: how the background is decided: share (no class holds --background-threshold of the maps' "
        "sum; ZUTIS' comparison) or match (no class's reference match sigmoid(reference . feature) reaches it). "
        "ReCo itself has no background.", choices=RECO_BACKGROUND_RULES)
    refine: str | None = _setting(
        "refine", "Snap each instance mask to the image's edges before classifying and NMS (bilateral solver, as "
        "for pseudo-masks; crf: DenseCRF). Not in the paper.", choices=REFINERS)
    crop_weight: float | None = _setting(
        "crop_weight", "Also name each instance by a CLIP image encoder shown a masked crop of it: class "
        "probability = dense^(1-w) x crop^w (0 = the paper's dense rule alone). Not in the paper.")
    crop_model: str | None = option(
        None, "The crop classifier's open_clip model (default: the checkpoint's CLIP before training).",
        kind="model", show_default=False)
    crop_pretrained: str | None = option(
        None, "The crop classifier's weights (tag, file, builtin; default: the checkpoint's).", show_default=False)
    crop_adapter: bool = option(
        True, "Map the crop embeddings with the adapter the checkpoint's training fitted for its CLIP (`zutis train "
        "--crop-adapter-scenes`), when it has one and the crop classifier is that CLIP.",
        flag="--crop-adapter/--no-crop-adapter")
    semantic_from: str | None = _setting(
        "semantic_from", "Semantic map from the dense embeddings (the paper) or painted from the instances (each "
        "pixel: the best-scoring instance covering it, else background).", choices=SEMANTIC_SOURCES)
    vis: bool = option(True, "Write overlay JPEGs to vis/.", flag="--vis/--no-vis")
    max_pixels: int | None = not_an_option(178_956_970, "Python API only: image files larger than this are refused")
    batch_size: int = option(
        1, "Images of one size sent through the model together (1 gives outputs bit-identical to one at a time; "
        "larger is faster on a GPU).", short="-b")
    chunk_size: int = option(
        256, "Images segmented between two commits of their results: a killed run loses at most this many; "
        "rerun the same command to go on.")
    loader_workers: int | None = option(
        None, "Processes decoding images (default: one per CPU but one, up to 4, from 16 images; 0 = this process).",
        show_default=False)
    shard: tuple[int, int] | None = option(
        None, "Segment slice I of N (0-based); default from SLURM array or torchrun. Writes OUTPUT/shard-I-of-N; "
        "join with `zutis predict merge`.", metavar="I/N", parse=parse_shard, show_default=False)

    def validate(self) -> None:
        """Check the options (the inference settings as given; :meth:`settings` checks them resolved)."""
        check_choices(self)
        from zutiscli.methods.predict import get

        if not self.classes:
            raise UsageError("give the classes to segment: --classes a,b,c or --classes-file FILE")
        names = {q.name.casefold() for q in self.classes}
        missing = [name for name in self.stuff if name.casefold() not in names]
        if missing:
            raise UsageError(f"--stuff {','.join(missing)}: not among the classes; list them in --classes too")
        if any(q.name.lower() == "background" for q in self.classes):
            raise UsageError("'background' is always a class of its own; leave it out of --classes")
        get(self.method)
        if self.max_size is not None and self.max_size < 32:
            raise UsageError(f"--max-size must be >= 32 (got {self.max_size})")
        if not 0.0 <= self.background_threshold <= 1.0:
            raise UsageError(f"--background-threshold must lie in [0, 1] (got {self.background_threshold})")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1 (got {self.batch_size})")
        if self.chunk_size < 1:
            raise UsageError(f"--chunk-size must be >= 1 (got {self.chunk_size})")
        if self.loader_workers is not None and self.loader_workers < 0:
            raise UsageError(f"--loader-workers must be >= 0 (got {self.loader_workers})")
        if self.shard is not None:
            check_shard(self.shard)
        self.settings({})  # the settings as given, over the paper's

    @property
    def stuff_ids(self) -> frozenset[int]:
        """The 1-based ids of the classes named by ``stuff``."""
        stuff = {name.casefold() for name in self.stuff}
        return frozenset(i for i, q in enumerate(self.classes, start=1) if q.name.casefold() in stuff)

    def overrides(self) -> dict[str, Any]:
        """The inference settings given as options (``None``: not given)."""
        return {name: getattr(self, name) for name in inference.FIELDS}

    def settings(self, recipe: dict[str, Any] | None) -> tuple[inference.InferenceSettings, dict[str, str]]:
        """The inference settings in effect for a model with ``recipe``, and where each came from."""
        settings, origin = inference.resolve(self.overrides(), recipe, self.inference)
        settings.validate(self.method)
        if (self.crop_model or self.crop_pretrained) and settings.crop_weight == 0:
            raise UsageError("--crop-model/--crop-pretrained choose the crop classifier; give --crop-weight "
                             "above 0 to use it")
        return settings, origin

    @property
    def tasks(self) -> set[str]:
        return {"semantic", "instance", "panoptic"} if self.task == "all" else {self.task}

    def wants_instances_with(self, settings: inference.InferenceSettings) -> bool:
        """Instances are computed: asked for, or the semantic map is drawn from them."""
        return bool(self.tasks & {"instance", "panoptic"}) or (
            settings.semantic_from == "instances" and "semantic" in self.tasks)

    def decode_workers(self, images: int) -> int:
        """Processes decoding images: ``loader_workers``, else one per CPU but one (at most 4) for 16
        images or more, none for fewer (starting a process costs more than it saves)."""
        if self.loader_workers is not None:
            return self.loader_workers
        cpus = available_cores()
        return max(0, min(4, cpus - 1)) if images >= 16 else 0
