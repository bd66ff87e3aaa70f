"""The options of ``zutis train`` (:class:`TrainConfig`) and its recipes, importable without torch.

The command line builds ``zutis train --help`` from these fields, and reads ``--config`` recipes
with :func:`load_recipe`; :mod:`zutiscli.pipeline.train` trains (and exports both too). The
copy-paste options of online training take their defaults from
:class:`zutiscli.data.copypaste_config.CopyPasteConfig`, where ``zutis copypaste`` reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zutiscli.config_fields import PRECISION_CHOICES, check_choices, device_option, not_an_option, option
from zutiscli.data.copypaste_config import CopyPasteConfig
from zutiscli.engine.inference import check_recipe
from zutiscli.errors import UsageError

if TYPE_CHECKING:
    from zutiscli.models.zutis import ZutisConfig

#: The copy-paste defaults (:class:`CopyPasteConfig`), those of online training too.
_PASTE = CopyPasteConfig()


#: What ``zutis train`` trains (``--method``).
TRAINERS = ("zutis", "reclip")

#: Class embeddings of a run on clusters: the centroids as they are, or learned from them.
CLASSIFIERS = ("centroids", "learned")


@dataclass
class TrainConfig:
    """Every option of ``zutis train`` (saved in the run directory and in checkpoints)."""

    source: str = not_an_option("", "the command's SOURCE argument")
    method: str = option(
        "zutis", "zutis: the ZUTIS segmenter on pseudo-labels, clusters or scenes; reclip: ReCLIP++'s rectification "
        "of a frozen CLIP on unlabelled images (SOURCE: images with --classes, or `zutis hypotheses`), with its own "
        "options (listed apart) and its own defaults for the others (the paper's SGD recipe; --dry-run shows them).",
        choices=TRAINERS)
    model: str = option("ViT-B-16", "open_clip ViT of the image encoder.", kind="model")
    pretrained: str | None = option(
        None, "Tag, checkpoint file, builtin or none (default: shipped weights, else openai).", show_default=False)
    num_queries: int = option(100, "Learned queries of the instance decoder.")
    decoder_layers: int = option(6, "Transformer decoder layers.")
    decoder_heads: int = option(8, "Attention heads per decoder layer.")
    decoder_ffn: int = option(2048, "Decoder feed-forward width.")
    mlp_hidden: int = option(256, "Hidden width of the pixel and query MLPs.")
    temperature: float = option(1.0, "Semantic logits = cosine / temperature (1 = raw cosines, as the official code).")
    stop_gradient: bool = option(True, "Detach patch tokens before the instance decoder (the paper's default).",
                                 flag="--stop-grad/--no-stop-grad")
    positional_values: bool = option(
        False, "Add learned sine positions to the decoder's pixel values, so masks (query . value) can tell "
        "identical-looking instances apart (off = the paper's decoder).", flag="--positional-values/--no-positional-values")
    iterations: int = option(20_000, "Optimiser steps.")
    batch_size: int = option(8, "Global batch (split across processes).")
    crop: int = option(_PASTE.size, "Training scene side in pixels.")
    lr: float = option(5e-5, "Learning rate of the heads.")
    encoder_lr_mult: float = option(0.1, "Encoder learning rate = lr x this.")
    weight_decay: float = option(0.05, "AdamW weight decay.")
    poly_power: float = option(0.9, "Poly schedule power.")
    min_lr: float = option(1e-6, "Poly schedule floor.")
    lambda_mask: float = option(1.0, "Weight of the mask loss.")
    hard_pixels: float = option(
        1.0, "Semantic loss on this fraction of each batch's pixels, the hardest (MaskDistill's hard-pixel mining: "
        "0.2; 1 = every pixel, the paper's).")
    max_objects: int = option(_PASTE.max_objects, "Most archive images per copy-paste scene.")
    same_class_prob: float = option(_PASTE.same_class_prob, "Chance that a scene draws from one archive.")
    scale_min: float = option(_PASTE.scale_range[0], "Smallest pasted object (fraction of the side).")
    scale_max: float = option(_PASTE.scale_range[1], "Largest pasted object (fraction of the side).")
    canvas_min: float = option(
        _PASTE.canvas_scale[0], "Smallest scale of the canvas image (1 = full size, the official recipe).")
    canvas_max: float = option(_PASTE.canvas_scale[1], "Largest scale of the canvas image.")
    outside: float = option(
        _PASTE.outside, "Largest share of a pasted object's box beyond the scene's edge, where it is cut off "
        "(0 = every object inside).")
    crop_adapter_scenes: int = option(
        1000, "Fit the crop classifier's adapter (`zutis predict --crop-weight`) on the objects of this many "
        "training scenes before training; saved in the checkpoint (0 = none). Not in the paper.")
    crop_adapter_decay: float = option(
        0.01, "The crop adapter's penalty for leaving the identity: larger keeps more of what the training classes' "
        "names do not tell apart (colours, say), at some cost to naming those classes.")
    crop_adapter_views: int = option(
        3, "Fit the crop adapter on this many recoloured views of each crop (any hue, or grey), so that it does not "
        "learn the colours CLIP left out of the archives as 'not this class' (0 = the crops as they are).")
    classifier: str = option(
        "centroids", "Training on clusters (`zutis cluster`): each cluster's class embedding is its centroid, fixed "
        "(MaskDistill's CLIP-space classifier; the clusters must be CLIP features of --model), or learned from it "
        "(from random rows for other features).", choices=CLASSIFIERS)
    seed: int = option(0, "Seed of the scene stream and the initialisation.")
    workers: int | None = option(None, "Data-loading processes (default: the cores this process may use, shared among torchrun's ranks, but one; 1 to 8).", show_default=False)
    device: str = device_option()
    precision: str = option(
        "auto", "Autocast precision; auto = fp16 on CUDA, bf16 on CPUs with bf16 units (AMX, AVX512-BF16), else fp32.",
        choices=PRECISION_CHOICES)
    checkpoint_every: int = option(1000, "Iterations between checkpoints.")
    log_every: int = option(10, "Iterations between metrics.jsonl lines.")
    max_minutes: float | None = option(None, "Stop (and save) after this much training time.", show_default=False)
    eval_images: str | None = option(
        None, "Held-out set with ground truth (`zutis synth scenes` or `zutis evaluate prepare` output), segmented "
        "and scored like `zutis predict` + `zutis evaluate` every --eval-every iterations and at the end.",
        metavar="DIR", show_default=False)
    eval_gt: str | None = option(
        None, "Ground truth of the held-out images (anything `zutis evaluate --gt` reads), when --eval-images holds "
        "only images.", metavar="PATH", show_default=False)
    eval_every: int = option(0, "Iterations between held-out evaluations (0 = only at the end of the run).")
    eval_classes: str | None = option(
        None, "Classes segmented in evaluation (default: the training classes).", metavar="A,B,...",
        show_default=False)
    inference: dict[str, Any] = not_an_option(
        default_factory=dict, why="set by a recipe only: how the trained model is read (zutis predict's settings)")

    @property
    def evaluates(self) -> bool:
        """Whether the run evaluates on a held-out set (periodically with ``eval_every``, always at the end)."""
        return bool(self.eval_images or self.eval_gt)

    @property
    def loader_workers(self) -> int:
        """Data-loading processes (:func:`~zutiscli.data.workers.loader_processes`)."""
        from zutiscli.data.workers import loader_processes

        return loader_processes(self.workers)

    def validate(self) -> None:
        check_choices(self)
        positive = ("iterations", "batch_size", "crop", "num_queries", "decoder_layers", "decoder_heads",
                    "decoder_ffn", "mlp_hidden", "checkpoint_every", "log_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(self, name)})")
        for name in ("lr", "temperature"):
            if not getattr(self, name) > 0:
                raise UsageError(f"--{name} must be > 0 (got {getattr(self, name)})")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise UsageError(f"--max-minutes must be > 0 (got {self.max_minutes})")
        if self.eval_every < 0:
            raise UsageError(f"--eval-every must be >= 0 (got {self.eval_every})")
        if self.crop_adapter_scenes < 0:
            raise UsageError(f"--crop-adapter-scenes must be >= 0 (got {self.crop_adapter_scenes}); 0 fits no adapter")
        if not self.crop_adapter_decay >= 0:
            raise UsageError(f"--crop-adapter-decay must be >= 0 (got {self.crop_adapter_decay})")
        if self.crop_adapter_views < 0:
            raise UsageError(f"--crop-adapter-views must be >= 0 (got {self.crop_adapter_views}); 0 fits the adapter "
                             "on the crops as they are")
        if (self.eval_every or self.eval_classes is not None) and not self.evaluates:
            given = "--eval-every" if self.eval_every else "--eval-classes"
            raise UsageError(f"{given} needs a held-out set: --eval-images DIR (or --eval-gt)")
        if not 0 < self.hard_pixels <= 1:
            raise UsageError(f"--hard-pixels must lie in (0, 1] (got {self.hard_pixels})")
        check_recipe(self.inference, where="inference")
        self.copypaste().validate()

    def copypaste(self) -> CopyPasteConfig:
        return CopyPasteConfig(size=self.crop, max_objects=self.max_objects, same_class_prob=self.same_class_prob,
                               scale_range=(self.scale_min, self.scale_max),
                               canvas_scale=(self.canvas_min, self.canvas_max), outside=self.outside)

    def zutis(self, pretrained: str) -> ZutisConfig:
        from zutiscli.models.zutis import ZutisConfig

        return ZutisConfig(
            backbone={"name": self.model, "pretrained": pretrained},
            num_queries=self.num_queries, decoder_layers=self.decoder_layers, decoder_heads=self.decoder_heads,
            decoder_ffn=self.decoder_ffn, mlp_hidden=self.mlp_hidden, temperature=self.temperature,
            stop_gradient=self.stop_gradient, positional_values=self.positional_values,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "config") -> "TrainConfig":
        """A config from option values (a recipe file, flags, a checkpoint), each checked against its type.

        Integers are accepted for float options; anything else of the wrong type (``iterations:
        abc`` in a recipe) is a :class:`UsageError` naming ``where`` and the option.
        """
        kinds = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(data) - set(kinds))
        if unknown:
            raise UsageError(f"{where}: unknown option(s) {', '.join(unknown)}")
        values = {name: _typed(value, kinds[name], name, where) for name, value in data.items() if name != "inference"}
        if "inference" in data:
            values["inference"] = check_recipe(data["inference"] or {}, where=where)
        return cls(**values)


_TYPE_NAMES = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}


def _typed(value: Any, annotation: Any, name: str, where: str) -> Any:
    """``value`` checked against a :class:`TrainConfig` field annotation (``"int"``, ``"float | None"``, ...)."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    parts = [part.strip() for part in text.split("|")]
    optional = "None" in parts
    base = next((part for part in parts if part != "None"), "str")
    if value is None and optional:
        return value
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if base == "float" and is_number:
        return float(value)
    if base == "int" and is_number and float(value).is_integer():
        return int(value)
    if (base == "bool" and isinstance(value, bool)) or (base == "str" and isinstance(value, str)):
        return value
    wanted = _TYPE_NAMES.get(base, base) + (" or nothing" if optional else "")
    raise UsageError(f"{where}: {name.replace('_', '-')} must be {wanted} (got {value!r})")


def load_recipe(recipe: str | Path) -> dict[str, Any]:
    """Read a training recipe into a flat dict of :class:`TrainConfig` fields.

    ``recipe`` is a YAML or TOML file, or the bare name of a recipe shipped with zutis
    (:mod:`zutiscli.recipes`: ``official``, ``demo``, ``demo-fast``): a name without a suffix or a
    folder, when no file of that name exists. Keys may use dashes or underscores (``batch-size`` =
    ``batch_size``). Every problem is a one-line :class:`UsageError` naming ``--config``.
    """
    from zutiscli import recipes

    path = Path(recipe)
    if path.is_file():
        text, suffix = path.read_text(encoding="utf-8"), path.suffix.lower()
    elif not path.suffix and len(path.parts) == 1:
        shipped = recipes.read(str(path))
        if shipped is None:
            raise UsageError(f"--config {path}: no such file, nor a recipe shipped with zutis "
                             f"({', '.join(recipes.names())})")
        text, suffix = shipped, recipes.SUFFIX
    else:
        raise UsageError(f"--config {path}: no such file")
    try:
        if suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            raise UsageError(f"--config {path}: use a .yaml, .yml or .toml file")
    except UsageError:
        raise
    except Exception as exc:  # noqa: BLE001 - YAML and TOML parsers raise their own types
        raise UsageError(f"--config {path}: cannot be parsed ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UsageError(f"--config {path}: must hold a mapping of option names to values")
    return {str(k).replace("-", "_"): v for k, v in data.items()}
