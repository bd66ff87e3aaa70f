"""Inference settings: how a ZUTIS model's outputs become semantic maps and instances.

A training recipe may choose its own (the demo's model is read best with refined masks, a second
opinion from crops and the semantic map drawn from the instances); the run records them in its
checkpoint, and ``zutis predict`` and :class:`zutiscli.api.Predictor` use them unless an option
overrides one, or ``--inference paper`` asks for the paper's. :class:`InferenceSettings`'
defaults *are* the paper's inference (each default is written here once).

Probabilities and IoUs are in [0, 1]; temperatures scale a cosine.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Mapping

from zutiscli.errors import UsageError

NMS_METHODS = ("hard", "linear", "gaussian", "matrix", "none")
SEMANTIC_SOURCES = ("dense", "instances")
REFINERS = ("none", "bilateral", "crf")  # zutiscli.ops.instances.REFINERS (a test holds them equal)
SOURCES = ("recipe", "paper")


@dataclass(frozen=True)
class InferenceSettings:
    """Post-processing of a ZUTIS model (defaults: the paper's inference).

    Attributes:
        mask_threshold: a query's mask probability above which a pixel is in its mask.
        class_temperature: ``T`` of the class probability ``sigmoid(T x cos)`` of an instance.
        score_threshold: instances scoring below it are dropped.
        nms: per-class mask NMS: ``hard``, ``linear``/``gaussian`` (Soft-NMS), ``matrix``, ``none``.
        iou_threshold: mask IoU at which ``hard``/``linear`` NMS suppresses.
        sigma: the Gaussian of ``gaussian``/``matrix`` NMS.
        max_detections: instances kept per image, best first.
        refine: snap the instance masks to the image's edges: ``none``, ``bilateral``, ``crf``.
        semantic_from: ``dense`` (argmax of the dense embeddings) or ``instances`` (painted from them).
        crop_weight: weight of the crop classifier's class probabilities (0 = dense embeddings alone).
        crf: DenseCRF on the dense class probabilities of the semantic map.
    """

    mask_threshold: float = 0.5
    class_temperature: float = 5.0
    score_threshold: float = 0.001
    nms: str = "hard"
    iou_threshold: float = 0.3
    sigma: float = 0.5
    max_detections: int = 100
    refine: str = "none"
    semantic_from: str = "dense"
    crop_weight: float = 0.0
    crf: bool = False

    def validate(self, method: str = "zutis") -> None:
        """Refuse values out of range, and settings ``method`` cannot apply (one-line :class:`UsageError`)."""
        if self.nms not in NMS_METHODS:
            raise UsageError(f"--nms {self.nms!r} is not one of {', '.join(NMS_METHODS)}")
        for name in ("mask_threshold", "iou_threshold"):
            if not 0 < getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must lie in (0, 1)")
        if self.max_detections < 1:
            raise UsageError("--max-detections must be >= 1")
        if not self.class_temperature > 0:
            raise UsageError(f"--class-temperature must be > 0 (got {self.class_temperature}); it scales the "
                             "cosine in sigmoid(T x cos), and a negative one would favour the least likely class")
        if self.refine not in REFINERS:
            raise UsageError(f"--refine {self.refine!r} is not one of {', '.join(REFINERS)}")
        if self.semantic_from not in SEMANTIC_SOURCES:
            raise UsageError(f"--semantic-from {self.semantic_from!r} is not one of {', '.join(SEMANTIC_SOURCES)}")
        if not 0 <= self.crop_weight <= 1:
            raise UsageError(f"--crop-weight must lie in [0, 1] (got {self.crop_weight}); 0 = the dense "
                             "embeddings alone, 1 = the crop classifier alone")
        if self.semantic_from == "instances" and self.crf:
            raise UsageError("--crf smooths the dense class probabilities; --semantic-from instances does not "
                             "use them (give --refine for the instance masks instead)")
        if method != "zutis":
            if self.refine != "none":
                raise UsageError("--refine refines the instance masks of --method zutis")
            if self.semantic_from == "instances":
                raise UsageError("--semantic-from instances needs the query masks of --method zutis")
            if self.crop_weight > 0:
                raise UsageError("--crop-weight re-classifies the instances of --method zutis; MaskCLIP's "
                                 "instances are its semantic regions")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PAPER = InferenceSettings()
FIELDS = tuple(f.name for f in fields(InferenceSettings))
_TYPES = {f.name: type(getattr(PAPER, f.name)) for f in fields(InferenceSettings)}


def check_recipe(data: Mapping[str, Any], *, where: str) -> dict[str, Any]:
    """A recipe's inference mapping (``{"refine": "bilateral", ...}``) checked: known names, right types.

    Keys may use dashes (``crop-weight``). Returns the mapping with underscore keys and numbers as
    their field's type; raises a :class:`UsageError` naming ``where`` otherwise.
    """
    if not isinstance(data, Mapping):
        raise UsageError(f"{where}: inference must be a mapping of settings to values (got {data!r})")
    checked: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in _TYPES:
            raise UsageError(f"{where}: unknown inference setting {key!r}; known: {', '.join(FIELDS)}")
        kind = _TYPES[name]
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind is float and number:
            value = float(value)
        elif kind is int and number and float(value).is_integer():
            value = int(value)
        elif not isinstance(value, kind):
            raise UsageError(f"{where}: inference setting {name.replace('_', '-')} must be {kind.__name__} "
                             f"(got {value!r})")
        checked[name] = value
    replace(PAPER, **checked).validate()
    return checked


def resolve(overrides: Mapping[str, Any], recipe: Mapping[str, Any] | None, source: str = "recipe"
            ) -> tuple[InferenceSettings, dict[str, str]]:
    """The settings in effect, and where each came from.

    Args:
        overrides: values given explicitly (options; ``None`` values are "not given").
        recipe: the inference settings a model's training recipe recorded (``None``: none recorded).
        source: ``"recipe"`` to start from the recipe, ``"paper"`` to start from the paper's settings.

    Returns:
        ``(settings, origin)``: ``origin`` maps each field to ``"option"``, ``"recipe"`` or ``"paper"``.
    """
    if source not in SOURCES:
        raise UsageError(f"--inference {source!r} is not one of {', '.join(SOURCES)}")
    values: dict[str, Any] = {}
    origin = {name: "paper" for name in FIELDS}
    if source == "recipe" and recipe:
        for name, value in recipe.items():
            if name in _TYPES:
                values[name], origin[name] = value, "recipe"
    for name, value in overrides.items():
        if value is not None and name in _TYPES:
            values[name], origin[name] = value, "option"
    return replace(PAPER, **values), origin


def describe(settings: InferenceSettings, origin: Mapping[str, str]) -> str:
    """One log line: the settings that differ from the paper's, and where they came from."""
    changed = [f"{name.replace('_', '-')} {getattr(settings, name)} ({origin[name]})"
               for name in FIELDS if getattr(settings, name) != getattr(PAPER, name)]
    if not changed:
        return "inference: the paper's settings"
    return "inference: " + ", ".join(changed) + "; the rest the paper's"
