"""ReCo (Shin, Xie & Albanie 2022): training-free segmentation by similarity to co-segmented references.

Each class's reference embedding (``zutis cosegment``) scores every patch of the co-segmentation
encoder by ``sigmoid(reference . feature)`` (ReCo's Eq. 2); the language gate (``--text-gate``)
multiplies it by ``sigmoid(10 cos)`` of the references' CLIP's MaskCLIP dense features with the
class text (Eq. 3, the official code's temperature); context elimination (``--context sky,road``)
multiplies it by ``prod (1 - sigmoid(context . feature))`` over the context classes' references.

ReCo labels every pixel with its best class; the benchmarks with a background class need a rule
for it. By default (``--background-rule share``), as ZUTIS' comparison (following NamedMask), a
pixel is background when its largest class share (the maps divided by their sum over the classes)
is below ``--background-threshold`` (0.9 there). With ``--background-rule match`` it is background
when no class's reference matches it, ``max_k sigmoid(reference_k . feature)`` below the threshold:
an absolute rule, for encoders whose gated maps are alike over objects and background (then no
class ever holds a large share; docs/reco.md). ReCo is a semantic method: its instances are the
connected components of each class's region, scored by the mean share inside.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from zutiscli.data.classes import ClassQuery
from zutiscli.methods.predict import RECO_BACKGROUND_RULES, Predictor
from zutiscli.methods.predict.common import CrfOptions, DenseSemantic


@dataclass
class RecoRaw:
    """ReCo's outputs for one image on the encoder's grid, float32: ``maps`` ``(K, h, w)`` the class
    probabilities; ``match`` ``(h, w)`` the best reference match ``max_k sigmoid(reference_k . feature)``,
    before the gate and the context (what ``background_rule="match"`` thresholds)."""

    maps: torch.Tensor
    match: torch.Tensor | None = None


class RecoPredictor(Predictor):
    """ReCo over an encoder, its class references and (for the gate) a CLIP."""

    method = "reco"

    def __init__(self, encoder: Any, references: torch.Tensor, *, clip: Any | None = None,
                 text: torch.Tensor | None = None, context: torch.Tensor | None = None,
                 background_threshold: float = 0.9, background_rule: str = "share", components: bool = True,
                 crf: CrfOptions = CrfOptions(), record: dict[str, Any] | None = None, features: str = "tokens"):
        """``references`` ``(K, C)``, ``text`` ``(K, E)`` (with ``clip``), ``context`` ``(m, C)``; all normalised."""
        self.encoder, self.clip = encoder, clip
        self.patch = encoder.patch_size
        self.references = F.normalize(references.float(), dim=-1)
        self.gate_text = None if text is None else F.normalize(text.float(), dim=-1)
        self.context = None if context is None or not len(context) else F.normalize(context.float(), dim=-1)
        self.background_threshold = background_threshold
        if background_rule not in RECO_BACKGROUND_RULES:
            raise ValueError(f"background_rule must be one of {RECO_BACKGROUND_RULES}, got {background_rule!r}")
        self.background_rule = background_rule
        self.features = features  # the encoder's last-block tokens or keys, as the references were made
        self.components = components
        self.recipe: dict[str, Any] = {}
        self.record = record or {}
        self.inputs: list[Any] = []
        self._dense = DenseSemantic(crf)

    def forward(self, images: torch.Tensor) -> list[RecoRaw]:
        from zutiscli.ops.cosegment import context_weights, reference_probability, text_gate

        device = self.encoder.device
        found = self.encoder.last_block_features(self.encoder.normalise(images.to(device, self.encoder.dtype)))
        features = F.normalize(getattr(found, self.features).float(), dim=-1).cpu()  # (B, h, w, C)
        maps = reference_probability(features, self.references)  # (B, h, w, K)
        match = maps.amax(dim=-1)  # (B, h, w)
        if self.context is not None:
            maps = maps * context_weights(features, self.context)[..., None]
        if self.gate_text is not None and self.clip is self.encoder:
            # the encoder is the CLIP: its MaskCLIP features come from the same forward pass
            maps = maps * text_gate(self.clip.maskclip_from_values(found.values).cpu(), self.gate_text)
        elif self.clip is not None and self.gate_text is not None:
            grid = features.shape[1:3]
            patch = self.clip.patch_size
            side = (max(patch, images.shape[-2] // patch * patch), max(patch, images.shape[-1] // patch * patch))
            pixels = images if tuple(images.shape[-2:]) == side else F.interpolate(
                images, size=side, mode="bilinear", align_corners=False, antialias=True)
            dense = self.clip.maskclip_embeddings(self.clip.normalise(pixels.to(self.clip.device, self.clip.dtype)))
            gate = text_gate(dense.float().cpu(), self.gate_text)  # (B, h', w', K)
            if tuple(gate.shape[1:3]) != tuple(grid):
                gate = F.interpolate(gate.permute(0, 3, 1, 2), size=grid, mode="bilinear",
                                     align_corners=False).permute(0, 2, 3, 1)
            maps = maps * gate
        return [RecoRaw(m.permute(2, 0, 1).contiguous(), best) for m, best in zip(maps, match)]

    def postprocess(self, raw: RecoRaw, image: np.ndarray, settings: Any, *, semantic: bool,
                    instances: bool) -> tuple[np.ndarray | None, Any]:
        from zutiscli.methods.predict.maskclip import region_instances

        probs = reco_probabilities(raw.maps, image.shape[:2], self.background_threshold,
                                   match=raw.match if self.background_rule == "match" else None)
        labels = probs.argmax(0).numpy().astype(np.int64)
        if settings.crf:
            labels = self._dense.crf_labels(image, probs)
        found = region_instances(labels, probs, self.components) if instances else None
        return (labels if semantic else None), found

    def close(self) -> None:
        self._dense.close()


def reco_probabilities(maps: torch.Tensor, size: tuple[int, int], background_threshold: float, *,
                       match: torch.Tensor | None = None) -> torch.Tensor:
    """``(1 + K, H, W)`` float32: ReCo's maps ``(K, h, w)`` upsampled (bilinear) to ``size``, each
    class's share of their sum, and the background, all over their sum.

    Without ``match`` the background scores ``background_threshold``: the argmax is background
    exactly where no class's share reaches it. With ``match`` ``(h, w)`` (the best reference match,
    upsampled alike) it scores ``max share x threshold / match``: background exactly where the match
    is below the threshold, with a margin that grows with the distance from it.
    """
    up = F.interpolate(maps[None].float(), size=tuple(size), mode="bilinear", align_corners=False)[0]
    shares = up / up.sum(dim=0, keepdim=True).clamp_min(1e-12)
    if match is None:
        background = torch.full_like(shares[:1], background_threshold)
    else:
        best = F.interpolate(match[None, None].float(), size=tuple(size), mode="bilinear", align_corners=False)[0]
        background = shares.amax(dim=0, keepdim=True) * background_threshold / best.clamp_min(1e-12)
    scores = torch.cat([background, shares])
    return scores / scores.sum(dim=0, keepdim=True)


def _matching(references: Any, names: Sequence[str], what: str) -> list[Any]:
    """The references of ``names`` (case-folded); a :class:`UsageError` naming those with none."""
    from zutiscli.errors import UsageError

    found = [references.get(name) for name in names]
    missing = [name for name, item in zip(names, found) if item is None]
    if missing:
        raise UsageError(f"{what} {', '.join(missing)}: no reference in {references.path} (it holds "
                         f"{', '.join(references.names)}); retrieve and co-segment them first")
    return found


def _references(config: Any) -> Any:
    """The references ``config.references`` names; a :class:`UsageError` when it names none."""
    from zutiscli.artefacts.references import read_references
    from zutiscli.errors import UsageError

    if not config.references:
        raise UsageError("--method reco needs --references DIR (written by `zutis cosegment`)")
    return read_references(config.references)


def _check_models(config: Any, where: Any, encoder: dict[str, Any], clip: dict[str, Any] | None) -> None:
    """A :class:`UsageError` when the references' models are not the ones asked for, or their
    weights changed since the co-segmentation (the references live in those features' space)."""
    from zutiscli.artefacts.manifest import norm_model_name, same_model
    from zutiscli.errors import UsageError
    from dataclasses import fields

    from zutiscli.models.backbones import describe_backbone

    default = next(f.default for f in fields(config) if f.name == "model")  # maskclip's, unless asked for
    asked = config.model != default or config.pretrained is not None
    gate = clip or encoder
    other_weights = config.pretrained is not None and not same_model(
        describe_backbone(config.model, config.pretrained), gate)
    if asked and (norm_model_name(config.model) != norm_model_name(gate.get("name")) or other_weights):
        raise UsageError(f"--model {config.model} --pretrained {config.pretrained}: {where} was co-segmented with "
                         f"{gate.get('name')} ({gate.get('pretrained')}); drop --model/--pretrained or co-segment "
                         f"again with them")
    for role, record in (("encoder", encoder), ("CLIP", clip)):
        if record and record.get("weights_fingerprint") and not same_model(
                describe_backbone(record["name"], record["pretrained"]), record):
            raise UsageError(f"{where}: its {role} weights {record['pretrained']} changed since the co-segmentation; "
                             f"run `zutis cosegment` again")


def load(config: Any, device: torch.device, dtype: torch.dtype, log: Callable[[str], None], *,
         model: Any = None) -> RecoPredictor:
    """ReCo with ``config.references`` for ``config.classes`` (each must have a reference there)."""
    from zutiscli.errors import UsageError
    from zutiscli.models.backbones import load_dense_backbone
    from zutiscli.models.clip import ModelSpec, load_backbone

    if model is not None:
        raise UsageError("an in-memory model is a ZUTIS model; it cannot run --method reco")
    references = _references(config)
    classes: Sequence[ClassQuery] = config.classes
    chosen = _matching(references, [q.name for q in classes], "--classes")
    context = _matching(references, list(config.context), "--context")
    encoder_record = references.model.get("encoder") or {}
    clip_record = references.model.get("clip")
    _check_models(config, references.path, encoder_record, clip_record)
    encoder = load_dense_backbone(encoder_record["name"], encoder_record["pretrained"], device=device, dtype=dtype)
    clip = text = None
    if config.text_gate:
        if not clip_record:
            raise UsageError(f"{config.references}: was co-segmented without a CLIP; give --no-text-gate")
        from zutiscli.artefacts.manifest import same_model

        clip = encoder if same_model(clip_record, encoder_record) and hasattr(encoder, "maskclip_from_values") else \
            load_backbone(ModelSpec(clip_record["name"], clip_record["pretrained"]), device=device, dtype=dtype)
        text = clip.encode_text([q.phrase for q in classes], templates="ensemble").float().cpu()
    vectors = torch.from_numpy(np.stack([c.vector for c in chosen]))
    suppress = torch.from_numpy(np.stack([c.vector for c in context])) if context else None
    record = {"method": "reco", "references": str(references.path), "encoder": encoder_record,
              "clip": clip_record if config.text_gate else None}
    predictor = RecoPredictor(encoder, vectors, clip=clip, text=text, context=suppress,
                              background_threshold=config.background_threshold,
                              background_rule=config.background_rule, components=True,
                              crf=CrfOptions.of(config), record=record, features=references.features)
    predictor.inputs = [references.path]
    return predictor


def plan(config: Any) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """Dry run: the references directory and the encoder it names; ReCo has no recipe."""
    references = _references(config)
    return {"references": str(references.path), **(references.model.get("encoder") or {})}, {}, []
