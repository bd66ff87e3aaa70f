"""The options of ``zutis pseudolabel run`` (:class:`PseudolabelConfig`), importable without numpy or torch.

The command line builds ``zutis pseudolabel run --help`` from these fields; the method choices and
the default input sizes come from the pseudo-labeller registry (:mod:`zutiscli.methods.pseudolabel`).
:mod:`zutiscli.pipeline.pseudolabel` runs the stage (and exports :class:`PseudolabelConfig` too).
"""

from __future__ import annotations

from dataclasses import dataclass

from zutiscli.config_fields import check_choices, device_option, not_an_option, option, precision_option
from zutiscli.data.shards import check_shard, parse_shard
from zutiscli.errors import UsageError
from zutiscli.methods.pseudolabel import PseudoLabeller, get_labeller, labeller_names

REFINERS = ("bilateral", "densecrf", "none")
FEATURES = ("keys", "tokens")
COMPONENTS = ("largest", "split", "none")


def _size_help() -> str:
    """``--size``'s help: which methods take a square input, and each feature method's default size."""
    names = labeller_names()
    square = ", ".join(f"{name}: square side" for name in names if get_labeller(name).square_input)
    sizes = ", ".join(f"{get_labeller(name).default_size} {name}" for name in names
                      if get_labeller(name).needs == "features")
    return f"Input short side in pixels ({square}); default {sizes}."


@dataclass
class PseudolabelConfig:
    """Options of ``zutis pseudolabel`` (sizes in pixels; fractions of the image area).

    ``inputs``: one archives directory (masks named by their archives), one index, or image files,
    directories and globs (a pile: masks unnamed); see :mod:`zutiscli.pipeline.pseudolabel_inputs`.
    Or one ``zutis predict`` directory: its confident instances become the pseudo-labels, named by
    their predicted class (re-mining, self-training; :mod:`zutiscli.pipeline.pseudolabel_predictions`).

    ``shard``: ``(i, n)`` or ``"i/n"`` to process slice i of n (0-based); None = the environment's
    (SLURM array, torchrun), else the whole run.
    """

    inputs: tuple[str, ...] = not_an_option(
        (), "the command's INPUT arguments: an archives directory, an index, or image files, directories and globs")
    method: str = option("spectral", "Mask discovery method.", choices=labeller_names)
    model: str | None = option(
        None, "ViT for features: open_clip name, timm:NAME or dino-vits8 etc. (default: the archives' or index's "
        "model; required for image files).",
        kind="model", show_default=False)
    pretrained: str | None = option(None, "Weights of --model (a local file for timm/DINO).", show_default=False)
    size: int | None = option(None, _size_help(), show_default=False)
    features: str = option("keys", "Patch features for spectral clustering.", choices=FEATURES)
    ks: tuple[int, ...] = not_an_option((2, 3, 4), "Python API only: the cluster counts spectral votes over")
    top_k: float = option(0.4, "attention: fraction of patches kept by [CLS] attention.")
    max_objects: int = option(3, "maskcut: objects per image.")
    tau: float = option(0.15, "maskcut: affinity threshold.")
    refine: str = option("bilateral", "Edge-aware refinement of each mask.", choices=REFINERS)
    components: str | None = option(
        None, "Keep the largest component or split components (default: split for maskcut, else largest).",
        choices=COMPONENTS, show_default=False)
    fill_holes: bool = option(True, "Fill holes inside masks.", flag="--fill-holes/--keep-holes")
    min_area: float = option(0.005, "Drop masks below this fraction of the image.")
    min_score: float = option(
        0.7, "From predictions: keep the instances scoring at least this (U2Seg's self-training: 0.7; MaskDistill's "
        "re-mining: 0.9).")
    top_fraction: float | None = option(
        None, "From predictions: keep only this fraction of the instances, the best scoring (for models whose scores "
        "never reach --min-score's scale; use with --min-score 0).", show_default=False)
    saliency_model: str | None = option(
        None, "onnx: single-channel saliency network (.onnx).", kind="path", show_default=False)
    onnx_size: int = option(320, "onnx: square input side.")
    onnx_mean: tuple[float, float, float] = not_an_option((0.485, 0.456, 0.406), "Python API only: onnx input mean")
    onnx_std: tuple[float, float, float] = not_an_option((0.229, 0.224, 0.225), "Python API only: onnx input std")
    device: str = device_option()
    precision: str = precision_option("fp32")
    workers: int = option(0, "Processes for clustering and refinement (0 = this process).")
    chunk_size: int = not_an_option(64, "Python API only: images per committed chunk")
    preview: int = option(0, "Write overlay JPEGs of N random results per class.")
    seed: int = option(0, "Seed of clustering and preview choice.")
    shard: tuple[int, int] | None = option(
        None, "Process slice I of N of the distinct images (0-based); default from SLURM array or torchrun. "
        "Writes OUTPUT/shard-I-of-N; join with `zutis pseudolabel merge`.", metavar="I/N", parse=parse_shard,
        show_default=False)

    def __post_init__(self) -> None:
        if isinstance(self.inputs, (str, bytes)) or hasattr(self.inputs, "__fspath__"):
            self.inputs = (str(self.inputs),)  # one path, as the Python API may give it
        self.inputs = tuple(str(entry) for entry in self.inputs)
        if isinstance(self.shard, str):  # "I/N", as the command line and the Python API take it
            self.shard = parse_shard(self.shard)

    def validate(self) -> None:
        check_choices(self)
        if self.size is not None and self.size < 16:
            raise UsageError(f"--size must be >= 16 pixels (got {self.size})")
        if not 0 < self.top_k <= 1:
            raise UsageError(f"--top-k must lie in (0, 1] (got {self.top_k})")
        if not 0 <= self.min_score <= 1:
            raise UsageError(f"--min-score must lie in [0, 1] (got {self.min_score})")
        if self.top_fraction is not None and not 0 < self.top_fraction <= 1:
            raise UsageError(f"--top-fraction must lie in (0, 1] (got {self.top_fraction})")
        if self.max_objects < 1:
            raise UsageError(f"--max-objects must be >= 1 (got {self.max_objects})")
        if not 0 <= self.min_area < 1:
            raise UsageError(f"--min-area must lie in [0, 1) (got {self.min_area})")
        if any(k < 2 for k in self.ks):
            raise UsageError("--ks values must be >= 2")
        if self.chunk_size < 1 or self.workers < 0 or self.preview < 0:
            raise UsageError("--chunk-size must be >= 1, --workers and --preview >= 0")
        if self.shard is not None:
            check_shard(tuple(self.shard))
        self.labeller.validate(self)

    @property
    def labeller(self) -> PseudoLabeller:
        """The registered method called :attr:`method`."""
        return get_labeller(self.method)

    @property
    def input_size(self) -> int:
        """Input short side (square side for square-input methods) in pixels: --size, else the method's default."""
        return self.size or self.labeller.default_size

    @property
    def component_mode(self) -> str:
        """--components, else the method's default."""
        return self.components or self.labeller.default_components
