"""The ZUTIS predictor: a trained ZUTIS checkpoint, for any class names (open vocabulary).

Semantic = argmax over ``[background] + classes`` of the cosine of the dense embeddings with the
class text embeddings (upsampled bilinearly), or painted from the instances. Instances = the last
decoder layer's query masks, binarised at ``mask_threshold``, each classified by the mean embedding
inside it (``sigmoid(class_temperature x cos)``, optionally combined with a crop classifier's
opinion), scored by mean mask probability x class probability, background dropped, per-class mask
NMS, then upsampled. The checkpoint's training recipe may choose these settings
(:mod:`zutiscli.engine.inference`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from zutiscli.artefacts.checkpoint import check_method, load_checkpoint
from zutiscli.artefacts.runs import CONFIG, resolve_checkpoint
from zutiscli.data.classes import ClassQuery
from zutiscli.errors import ArtefactError, ModelError, UsageError
from zutiscli.methods.predict import Predictor, RawPrediction
from zutiscli.methods.predict.common import CrfOptions, DenseSemantic
from zutiscli.models.crop_classifier import CropAdapter, CropClassifier


_INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
                   "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_",
                   "sparse_")
_init_state = threading.local()
_init_lock = threading.Lock()


@contextlib.contextmanager
def parameters_left_uninitialised() -> Iterator[None]:
    """Within the block, on this thread, ``torch.nn.init``'s initialisers leave ``nn.Parameter``
    tensors as allocated (uninitialised memory) instead of filling them with random values.

    For building a network whose every parameter a strict ``load_state_dict`` then overwrites:
    random initialisation of a ViT-B/16 CLIP costs ~1.9 s of CPU, the load ~0.1 s. Buffers (the
    text tower's causal mask, say, which no state dict holds) and plain tensors are initialised
    as usual, as are parameters that modules fill without ``torch.nn.init`` (``torch.randn`` in a
    constructor). Other threads, building their own networks meanwhile, are not affected.
    """
    with _init_lock:
        if not getattr(torch.nn.init, "_zutis_patched", False):
            for name in _INIT_FUNCTIONS:
                setattr(torch.nn.init, name, _skipping(getattr(torch.nn.init, name)))
            torch.nn.init._zutis_patched = True  # type: ignore[attr-defined]
    depth = getattr(_init_state, "depth", 0)
    _init_state.depth = depth + 1
    try:
        yield
    finally:
        _init_state.depth = depth


def _skipping(initialiser: Callable[..., Any]) -> Callable[..., Any]:
    """``initialiser`` unless called on a parameter inside :func:`parameters_left_uninitialised`."""

    @functools.wraps(initialiser)
    def initialise(tensor: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(tensor, torch.nn.Parameter) and getattr(_init_state, "depth", 0) > 0:
            return tensor
        return initialiser(tensor, *args, **kwargs)

    return initialise


def load_zutis(path: str | Path, device: torch.device, dtype: torch.dtype = torch.float32
               ) -> tuple[Any, list[str], dict[str, Any]]:
    """Build the ZUTIS model of a checkpoint file (its CLIP weights and crop adapter included).

    Returns ``(model, trained classes, inference recipe)``; the model is in eval mode with no
    gradients, its ViT in ``dtype`` (the heads stay float32). The network is built with its
    parameters uninitialised and the file memory-mapped, then every weight is copied from the file
    (a strict load): the model owns its memory and keeps nothing mapped.
    """
    from zutiscli.artefacts.checkpoint import check_weights_fit
    from zutiscli.models.clip import ModelSpec, load_backbone, named_by
    from zutiscli.models.zutis import ZutisConfig, ZutisModel

    data = load_checkpoint(path, mmap=True)
    check_method(data, path, "zutis")
    config = ZutisConfig.from_dict(data["config"], where=str(path))
    with parameters_left_uninitialised():  # every parameter is overwritten by the strict load below
        with named_by(path, model="its config names backbone", weights="its config names weights"):
            backbone = load_backbone(ModelSpec(config.backbone["name"], "none"), device="cpu")
        model = ZutisModel(backbone, config)
    check_weights_fit(model, data["model"], path, remedy="the file is damaged or was edited; predict with the "
                      "model.pt its training run wrote")
    model.load_state_dict(data["model"])
    if data.get("crop_adapter") is not None:
        adapter = CropAdapter.from_dict(data["crop_adapter"], where=str(path))
        model.crop_adapter = dataclasses.replace(adapter, weight=adapter.weight.clone())  # off the mapped file
    if data.get("stuff_probe") is not None:
        from zutiscli.models.stuff_probe import StuffProbe

        model.stuff_probe = StuffProbe.from_dict(data["stuff_probe"], where=str(path))
    model.to(device=device).eval()
    model.backbone.model.to(dtype=dtype)
    for param in model.parameters():
        param.requires_grad_(False)
    recipe = data.get("inference") or {}
    if recipe:
        from zutiscli.engine.inference import check_recipe

        recipe = check_recipe(recipe, where=f"{path} (inference recipe)")
    return model, list(data["classes"]), recipe


class ZutisPredictor(Predictor):
    """A trained ZUTIS model with a class list.

    Classes named by the model's stuff probe (``stuff-00``, ... of a model trained on clusters with
    stuff clusters) are not classified by the model: the pixels no thing claims take the nearest of
    them in the probe's frozen CLIP features (:func:`zutiscli.ops.panoptic.fill_stuff`). Every other
    class (``things``) is the model's, as usual.
    """

    method = "zutis"

    def __init__(self, model: Any, classes: Sequence[ClassQuery], *, crf: CrfOptions = CrfOptions(),
                 recipe: dict[str, Any] | None = None, record: dict[str, Any] | None = None,
                 inputs: list[Any] | None = None, stuff_scorer: Any = None):
        self.model = model
        self.backbone = model.backbone
        self.patch = model.backbone.patch_size
        probe = getattr(model, "stuff_probe", None)
        named = set(probe.names) if probe is not None else set()
        self.things = [q for q in classes if q.name not in named]
        # class-list id (1-based) of each thing label (1..T), 0 for background; and of each probe stuff column
        self.thing_ids = np.array([0] + [i for i, q in enumerate(classes, 1) if q.name not in named], np.int64)
        self.stuff_ids = np.array([i for i, q in enumerate(classes, 1) if q.name in named], np.int64)
        self.stuff_scorer = stuff_scorer
        self.text = model.text_embeddings([q.phrase for q in self.things]).to(self.backbone.device)
        self.recipe = dict(recipe or {})
        self.record = record or {}
        self.inputs = inputs or []
        self.crop_classifier: CropClassifier | None = None
        self._dense = DenseSemantic(crf)

    def forward(self, images: torch.Tensor) -> list[RawPrediction]:
        stuff = self.stuff_scorer(images) if self.stuff_scorer is not None else [None] * len(images)
        images = self.backbone.normalise(images.to(self.backbone.device, self.backbone.dtype))
        tokens = self.backbone.dense_tokens(images)
        dense = self.model.dense_embeddings(tokens)
        masks = self.model.mask_logits(tokens)[-1]
        return [RawPrediction(d.float(), m.float(), s) for d, m, s in zip(dense, masks, stuff)]

    def postprocess(self, raw: RawPrediction, image: np.ndarray, settings: Any, *, semantic: bool,
                    instances: bool) -> tuple[np.ndarray | None, Any]:
        from zutiscli.ops.instances import instances_from_queries

        height, width = image.shape[:2]
        from_instances = settings.semantic_from == "instances"
        labels = None
        if semantic and not from_instances:
            _, labels = self._dense(raw.dense, self.text, image, settings.crf)
        found = None
        if instances or (semantic and from_instances):
            crops = None if self.crop_classifier is None else functools.partial(self.crop_classifier, image)
            found = instances_from_queries(
                raw.mask_logits, raw.dense, self.text, mask_threshold=settings.mask_threshold,
                class_temperature=settings.class_temperature, score_threshold=settings.score_threshold,
                nms=settings.nms, iou_threshold=settings.iou_threshold, sigma=settings.sigma,
                max_detections=settings.max_detections, output_size=(height, width), refine=settings.refine,
                image=image, crop_classifier=crops, crop_weight=settings.crop_weight)
        if semantic and from_instances:
            from zutiscli.ops.panoptic import semantic_from_instances

            labels = semantic_from_instances(found, (height, width))
        if len(self.stuff_ids):  # the things' labels are not the class list's
            labels, found = self._in_class_list(labels, found, raw, (height, width))
        return labels, found

    def _in_class_list(self, labels: np.ndarray | None, found: Any, raw: RawPrediction,
                       size: tuple[int, int]) -> tuple[np.ndarray | None, Any]:
        """Thing labels (1..T) as class-list ids; with stuff columns, the rest of the semantic map
        filled with the nearest stuff (things first, U2Seg's merge)."""
        if found is not None and len(found.labels):
            found = dataclasses.replace(found, labels=self.thing_ids[found.labels])
        if labels is None:
            return None, found
        labels = self.thing_ids[labels]
        if raw.stuff is not None and len(self.stuff_ids):
            import torch.nn.functional as F

            from zutiscli.ops.panoptic import fill_stuff

            similarity = F.interpolate(raw.stuff.permute(2, 0, 1)[None].float(), size=size, mode="bilinear",
                                       align_corners=False)[0]
            labels = fill_stuff(labels, self.stuff_ids[similarity.argmax(0).cpu().numpy()])
        return labels, found

    def prepare(self, settings: Any, config: Any, device: torch.device, dtype: torch.dtype,
                log: Callable[[str], None] | None, *, wants_instances: bool) -> None:
        attach_crop_classifier(self, config, settings, device, dtype, log, wants_instances)

    def close(self) -> None:
        self._dense.close()


def load(config: Any, device: torch.device, dtype: torch.dtype, log: Callable[[str], None], *,
         model: Any = None) -> ZutisPredictor:
    """The ZUTIS predictor of ``config`` (a :class:`zutiscli.pipeline.predict.PredictConfig`).

    ``model`` is an in-memory model (``zutis train``'s held-out evaluation passes the one it is
    training), run as it is: the caller sets eval mode and gives its recipe
    (:func:`zutiscli.pipeline.predict.open_engine`).
    """
    if model is None:
        checkpoint = resolve_checkpoint(config.checkpoint)
        model, trained, recipe = load_zutis(checkpoint, device, dtype)
        record = {"checkpoint": str(checkpoint.resolve()), "trained_classes": trained,
                  "backbone": model.config.backbone}
        inputs: list[Any] = [checkpoint]
    else:
        recipe = {}
        record = {"checkpoint": None, "in_memory": True, "backbone": model.config.backbone}
        inputs = []
    probe = getattr(model, "stuff_probe", None)
    scorer = None
    # the probe's rows of the stuff classes asked for, in the class list's order (the predictor's stuff columns)
    wanted = [probe.names.index(q.name) for q in config.classes if q.name in probe.names] if probe is not None else []
    if wanted and config.tasks & {"semantic", "panoptic"}:
        from zutiscli.models.stuff_probe import StuffScorer

        scorer = StuffScorer(probe, wanted, device, dtype)
        record["stuff_probe"] = {"model": probe.model, "pretrained": probe.pretrained, "layer": probe.layer,
                                 "classes": [probe.names[row] for row in wanted]}
    return ZutisPredictor(model, config.classes, crf=CrfOptions.of(config), recipe=recipe, record=record,
                          inputs=inputs, stuff_scorer=scorer)


def attach_crop_classifier(predictor: ZutisPredictor, config: Any, settings: Any, device: torch.device,
                           dtype: torch.dtype, log: Callable[[str], None] | None, wants_instances: bool) -> None:
    """Load the crop classifier the settings ask for (none at crop weight 0 or with no instances):
    ``--crop-model/--crop-pretrained``, else the CLIP the model was trained from; with the model's
    crop adapter when ``config.crop_adapter`` and it belongs to that CLIP. Recorded in ``predictor.record``."""
    if settings.crop_weight <= 0 or not wants_instances:
        return
    from zutiscli.models.clip import ModelSpec, load_backbone

    model = predictor.model
    base = model.config.backbone
    spec = ModelSpec(*_crop_choice(config, base["name"], base["pretrained"]))
    with _as_crop_classifier_error():
        backbone = load_backbone(spec, device=device, dtype=dtype)
    adapter = model.crop_adapter if config.crop_adapter else None
    if adapter is not None and not adapter.fits(spec.name, spec.pretrained, backbone.embed_dim):
        if log is not None:
            fitted_for = f"{adapter.model} ({adapter.pretrained})"
            why = f"maps {adapter.weight.shape[0]}-wide embeddings, not {backbone.embed_dim}" \
                if fitted_for == f"{spec.name} ({spec.pretrained})" else \
                f"was fitted for {fitted_for}, not for the crop classifier's {spec.name} ({spec.pretrained})"
            log(f"the checkpoint's crop adapter {why}; naming the crops without it")
        adapter = None
    if adapter is not None and log is not None:
        _note_unfitted_names(adapter, config.classes, log)
    predictor.crop_classifier = CropClassifier(backbone, predictor.things,
                                               adapter=None if adapter is None else adapter.weight.to(device))
    predictor.record["crop_classifier"] = backbone.spec.describe()
    predictor.record["crop_adapter"] = model.crop_adapter.summary() if adapter is not None else None


def plan(config: Any) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """Dry run: ``(model entry, inference recipe, notes)`` from the checkpoint's run, loading no weights."""
    import os

    from zutiscli.models.locate import weights_plan

    checkpoint = resolve_checkpoint(config.checkpoint)
    if not os.access(checkpoint, os.R_OK):
        raise ArtefactError(f"{checkpoint}: the checkpoint file is not readable; check its permissions")
    model = {"name": "zutis", "pretrained": str(checkpoint), "weights": str(checkpoint), "source": "file",
             "bytes": checkpoint.stat().st_size}
    recorded = _run_config(checkpoint)
    recipe = dict(recorded.get("inference") or {}) if recorded else {}
    notes: list[str] = []
    if recorded is None:
        notes.append(f"inference recipe: the one inside {checkpoint.name} (no {CONFIG} beside it; not read by a dry run)")
    settings, _ = config.settings(recipe)
    if settings.crop_weight > 0 and config.wants_instances_with(settings):
        if config.crop_model and config.crop_pretrained:
            crop = (config.crop_model, config.crop_pretrained)
        elif recorded is not None and "model" in recorded and "pretrained" in recorded:
            crop = _crop_choice(config, str(recorded["model"]), str(recorded["pretrained"]))
        else:
            crop = None
        if crop is None:
            notes.append("crop classifier: the CLIP the checkpoint was trained from (named inside model.pt, "
                         "not read by a dry run)")
        else:
            with _as_crop_classifier_error():
                model["crop_classifier"] = weights_plan(*crop)
    return model, recipe, notes


def _run_config(checkpoint: Path) -> dict[str, Any] | None:
    """The run's ``config.json`` beside ``model.pt``, if readable."""
    try:
        data = json.loads((checkpoint.parent / CONFIG).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _note_unfitted_names(adapter: CropAdapter, classes: Sequence[ClassQuery], log: Callable[[str], None]) -> None:
    """One line when some query names are not among those the adapter was fitted on: it serves any
    names, but a map fitted without a name can send crops of the fitted classes toward it, and blurs
    what the fitted names do not tell apart (colours, say)."""
    fitted = {name.casefold() for name in adapter.classes}
    unfitted = [query.name for query in classes if query.name.casefold() not in fitted]
    if not fitted or not unfitted:
        return
    log(f"the crop adapter was fitted on {_listed(adapter.classes)}; {len(unfitted)} of the {len(classes)} names "
        f"queried were not among them ({_listed(unfitted)}): --no-crop-adapter leaves it out, if they hinge on "
        "what the fitted names do not tell apart")


def _listed(names: Sequence[str], most: int = 5) -> str:
    """``a, b, c`` or ``a, b, c, d, e and 3 more``."""
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


@contextlib.contextmanager
def _as_crop_classifier_error() -> Iterator[None]:
    """Errors of the crop classifier's model say so: they name --model/--pretrained, which the user
    gave as --crop-model/--crop-pretrained (or left to the checkpoint)."""
    try:
        yield
    except (ModelError, ArtefactError, UsageError) as exc:
        raise type(exc)(f"crop classifier (--crop-model/--crop-pretrained): {exc}") from None


def _crop_choice(config: Any, name: str, pretrained: str) -> tuple[str, str]:
    """The crop classifier's (model, pretrained): the options where given, else the base CLIP's."""
    return config.crop_model or name, config.crop_pretrained or pretrained
