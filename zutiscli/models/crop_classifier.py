"""Mask-crop classification with a CLIP image encoder, and its adapter fitted on training scenes.

:class:`CropClassifier` names one object at a time (``zutis predict --crop-weight``; not in
ZUTIS): each mask is shown as a square crop around its box, the pixels outside the mask painted
with the encoder's normalisation mean.

CLIP learned from whole images; in scenes many objects are cut by the border or partly hidden by
others, and a crop of such a view is often misnamed. :class:`CropAdapter` is a linear map of the
crop embeddings (:mod:`zutiscli.ops.embedding_map`) that ``zutis train`` fits before training, on
masked crops of the objects of its own first training scenes (copy-paste scenes of pseudo-labelled
objects: occlusions and border cuts included, no human label), shown in recoloured views so that
it does not learn the colours missing from the archives as the absence of a class. The text side
is untouched, so the map applies to any class names. It belongs to one CLIP (model name and
weights) and is only used with that one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from zutiscli.data.classes import ClassQuery
from zutiscli.errors import ArtefactError
from zutiscli.ops.crops import colour_jittered, masked_square_crops
from zutiscli.ops.embedding_map import apply_embedding_map, fit_embedding_map

__all__ = ["CropAdapter", "CropClassifier", "fit_crop_adapter"]


@dataclass(frozen=True)
class CropAdapter:
    """A fitted ``(D, D)`` map of crop embeddings and what it was fitted for and on.

    ``model``/``pretrained`` name the CLIP whose embeddings it maps; ``scenes``/``objects`` count
    the fitting data; ``accuracy_before``/``accuracy_after`` are the shares of those objects the
    crop classifier named right without and with the map (a fraction in [0, 1]); ``decay`` is the
    penalty it was fitted with; ``classes`` the names the fitting crops were labelled with; ``views``
    the recoloured views of each crop it was fitted on (0: the crops as they are).
    """

    weight: torch.Tensor
    model: str
    pretrained: str
    scenes: int
    objects: int
    accuracy_before: float
    accuracy_after: float
    decay: float = 0.1
    classes: tuple[str, ...] = ()
    views: int = 0

    def summary(self) -> dict[str, Any]:
        """The plain values (no weight), for manifests and logs."""
        return {"scenes": self.scenes, "objects": self.objects, "accuracy_before": round(self.accuracy_before, 4),
                "accuracy_after": round(self.accuracy_after, 4), "decay": self.decay, "classes": list(self.classes),
                "views": self.views}

    def to_dict(self) -> dict[str, Any]:
        """Plain values and one tensor: loads with ``torch.load(weights_only=True)``."""
        return {"weight": self.weight.float().cpu(), "model": self.model, "pretrained": self.pretrained,
                **self.summary()}

    @classmethod
    def from_dict(cls, data: Any, *, where: str) -> "CropAdapter":
        """Read :meth:`to_dict`'s output back; :class:`ArtefactError` naming ``where`` if it is malformed."""
        try:
            weight = data["weight"]
            if not isinstance(weight, torch.Tensor) or weight.ndim != 2 or weight.shape[0] != weight.shape[1]:
                raise TypeError(f"weight of shape {tuple(getattr(weight, 'shape', ()))}, not (D, D)")
            return cls(weight.float(), str(data["model"]), str(data["pretrained"]), int(data["scenes"]),
                       int(data["objects"]), float(data["accuracy_before"]), float(data["accuracy_after"]),
                       float(data.get("decay", 0.1)), tuple(str(name) for name in data.get("classes", ())),
                       int(data.get("views", 0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtefactError(f"{where}: malformed crop adapter ({exc}); train the model again") from None

    def fits(self, model: str, pretrained: str, dim: int) -> bool:
        """Whether the map belongs to the CLIP ``(model, pretrained)`` of embedding width ``dim``."""
        return (self.model, self.pretrained) == (model, pretrained) and self.weight.shape[0] == dim


class CropClassifier:
    """A CLIP image encoder naming one object at a time (mask-crop classification, not in ZUTIS).

    Each mask is shown as a square crop around its box (``margin`` of context on each side), the
    pixels outside the mask painted with the encoder's normalisation mean, at the encoder's own
    input size; class probabilities = softmax over the classes of CLIP's logit scale x cosine with
    the classes' 85-template text embeddings. With ``adapter`` (a ``(D, D)`` map, see
    :class:`CropAdapter`) the crop embeddings are mapped first.
    """

    margin = 0.2
    batch_size = 64

    def __init__(self, backbone: Any, classes: Sequence[ClassQuery], adapter: torch.Tensor | None = None):
        self.backbone = backbone
        self.text = backbone.encode_text([q.phrase for q in classes], templates="ensemble").to(backbone.device)
        self.scale = float(backbone.model.logit_scale.exp())
        self.adapter = adapter

    def embed(self, pixels: torch.Tensor, masks: torch.Tensor,
              recolour: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """``(3, H, W)`` float RGB in [0, 1] and ``(N, H, W)`` bool masks -> ``(N, D)`` unit crop embeddings
        (without the adapter), in batches of :attr:`batch_size`. ``recolour``, if given, maps each
        batch of ``(n, 3, S, S)`` crops in [0, 1] to the crops to encode (the adapter's fitting
        shows it recoloured views)."""
        out = []
        for start in range(0, masks.shape[0], self.batch_size):
            crops = masked_square_crops(pixels, masks[start:start + self.batch_size], self.backbone.image_size[0],
                                        margin=self.margin, fill=self.backbone.mean)
            if recolour is not None:
                crops = recolour(crops)
            out.append(self.backbone.encode_images(self.backbone.normalise(crops)).float())
        return torch.cat(out) if out else torch.zeros(0, self.text.shape[1])

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``(N, D)`` crop embeddings -> ``(N, K)`` class logits (the adapter applied when set)."""
        if self.adapter is not None:
            embeddings = apply_embedding_map(embeddings, self.adapter)
        return self.scale * embeddings @ self.text.T.float()

    @torch.no_grad()
    def __call__(self, image: np.ndarray, masks: np.ndarray) -> torch.Tensor:
        """``(H, W, 3)`` uint8 RGB and ``(N, H, W)`` bool masks -> ``(N, K)`` class probabilities."""
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255)
        return self.logits(self.embed(pixels, torch.from_numpy(np.asarray(masks, dtype=bool)))).softmax(dim=-1)


#: Masks smaller than this (pixels) are left out of the fitting data: too few pixels to name.
MIN_FIT_PIXELS = 20


@torch.no_grad()
def fit_crop_adapter(
    backbone: Any,
    scenes: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    classes: Sequence[str],
    decay: float = 0.1,
    views: int = 0,
    seed: int = 0,
) -> CropAdapter | None:
    """Fit a :class:`CropAdapter` for ``backbone`` on labelled scenes.

    Args:
        backbone: the CLIP (:class:`zutiscli.models.clip.ClipBackbone`) the crop classifier will use,
            unchanged by training.
        scenes: ``(image, masks, labels)`` per scene: ``(3, H, W)`` float RGB in [0, 1], ``(N, H, W)``
            bool visible masks, ``(N,)`` int64 indices into ``classes``.
        classes: the class names the labels index.
        decay: the map's penalty for leaving the identity (:func:`fit_embedding_map`); larger
            keeps more of what the training classes' names do not tell apart (such as colours).
        views: 0 fits the map on the crops as they are; ``n >= 1`` on ``n`` recoloured views of
            each (:func:`zutiscli.ops.crops.colour_jittered`: any hue with probability 0.8, grey
            with probability 0.2). The training objects come from archives that CLIP chose, and
            CLIP leaves out the colours in which it does not know a class (in the shapes world, the
            green triangles: none reach the triangle archive); fitted on them as they are, the map
            learns that those colours are not that class.
        seed: seeds the recolouring.

    Returns:
        The adapter, or ``None`` when the scenes hold no object of at least :data:`MIN_FIT_PIXELS`.
        Its accuracies are measured on the crops as they are.
    """
    if views < 0:
        raise ValueError(f"views must be >= 0, got {views}")
    classifier = CropClassifier(backbone, [ClassQuery(name, name) for name in classes])
    generator = torch.Generator().manual_seed(seed)

    def recolour(crops: torch.Tensor) -> torch.Tensor:
        return colour_jittered(crops.cpu(), generator).to(crops)

    plain, seen, labels, count = [], [], [], 0
    for image, masks, objects in scenes:
        count += 1
        keep = masks.flatten(1).sum(1) >= MIN_FIT_PIXELS
        if keep.any():
            pixels, kept = image.float().cpu(), masks[keep].cpu()
            plain.append(classifier.embed(pixels, kept))
            seen.extend(classifier.embed(pixels, kept, recolour) for _ in range(views))
            labels.append(objects[keep].cpu())
    if not plain:
        return None
    x, y = torch.cat(plain).cpu(), torch.cat(labels)
    fit_x, fit_y = x, y
    if views:  # ``seen`` holds each scene's views one after another
        fit_x, fit_y = torch.cat(seen).cpu(), torch.cat([objects for objects in labels for _ in range(views)])

    def accuracy() -> float:
        return float((classifier.logits(x.to(classifier.text.device)).argmax(1).cpu() == y).float().mean())

    before = accuracy()
    weight = fit_embedding_map(fit_x, fit_y, classifier.text, classifier.scale, decay=decay)
    classifier.adapter = weight
    after = accuracy()
    spec = backbone.spec
    return CropAdapter(weight, spec.name, spec.pretrained, count, len(y), before, after, decay, tuple(classes), views)
