"""The stuff probe of a model trained on clusters: stuff clusters that travel with the checkpoint.

``zutis cluster --stuff-k`` clusters a frozen CLIP's patch tokens outside the discovered objects
(:mod:`zutiscli.pipeline.cluster_stuff`); ``zutis train`` on those clusters keeps the stuff
centroids with the model, and ``zutis predict`` labels each pixel no thing claims with its nearest
stuff centroid in the same features (a cluster probe, STEGO's without its trained head), merged as
U2Seg merges STEGO's stuff with its things (:func:`zutiscli.ops.panoptic.fill_stuff`).

In a checkpoint the probe is plain values and one tensor (``weights_only`` loading)::

    "stuff_probe": {"names": ["stuff-00", ...], "centroids": (S, E) float32 tensor, unit rows,
                    "model": CLIP name, "pretrained": its weights, "layer": blocks run before the tokens}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from zutiscli.errors import ArtefactError


@dataclass(frozen=True)
class StuffProbe:
    """Stuff cluster names, their centroids ``(S, E)`` float32 and the frozen CLIP features they live in."""

    names: tuple[str, ...]
    centroids: torch.Tensor
    model: str
    pretrained: str
    layer: int

    @classmethod
    def from_clusters(cls, stuff: Any) -> "StuffProbe":
        """The probe of a :class:`zutiscli.artefacts.clusters.StuffClusters`."""
        return cls(tuple(stuff.names), torch.from_numpy(stuff.centroids.copy()).float(), stuff.model["name"],
                   stuff.model["pretrained"], int(stuff.layer))

    def to_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "centroids": self.centroids.detach().cpu().float().contiguous(),
                "model": self.model, "pretrained": self.pretrained, "layer": self.layer}

    @classmethod
    def from_dict(cls, data: Any, *, where: str) -> "StuffProbe":
        """Read a checkpoint's ``stuff_probe``; :class:`ArtefactError` naming ``where`` when it is malformed."""
        remedy = "the file is damaged or was edited; train again on the clusters"
        if not isinstance(data, dict):
            raise ArtefactError(f"{where}: its stuff_probe is not a dict; {remedy}")
        names, centroids = data.get("names"), data.get("centroids")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names) \
                or len(set(names)) != len(names):
            raise ArtefactError(f"{where}: stuff_probe.names is not a list of distinct names; {remedy}")
        if not isinstance(centroids, torch.Tensor) or centroids.ndim != 2 or centroids.shape[0] != len(names):
            raise ArtefactError(f"{where}: stuff_probe.centroids is not a ({len(names)}, E) tensor; {remedy}")
        for key in ("model", "pretrained"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise ArtefactError(f"{where}: stuff_probe.{key} is not a string; {remedy}")
        layer = data.get("layer")
        if not isinstance(layer, int) or isinstance(layer, bool) or layer < 0:
            raise ArtefactError(f"{where}: stuff_probe.layer is not a block count; {remedy}")
        return cls(tuple(names), centroids.float().clone(), data["model"], data["pretrained"], layer)


class StuffScorer:
    """A probe with its frozen CLIP loaded: images -> cosine similarity to some of its stuff centroids."""

    def __init__(self, probe: StuffProbe, rows: list[int], device: torch.device, dtype: torch.dtype):
        from zutiscli.models.clip import ModelSpec, load_backbone

        self.backbone = load_backbone(ModelSpec(probe.model, probe.pretrained), device=device, dtype=dtype)
        if probe.layer > self.backbone.depth or self.backbone.width != probe.centroids.shape[1]:
            raise ArtefactError(f"the stuff probe's model {probe.model} ({probe.pretrained}) has {self.backbone.depth} "
                                f"blocks of width {self.backbone.width}, not the probe's layer {probe.layer} of width "
                                f"{probe.centroids.shape[1]}; give the weights the clusters were made with")
        self.layer = probe.layer
        self.centroids = F.normalize(probe.centroids[rows].float(), dim=-1).to(device)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, h, w)`` float RGB in [0, 1] -> ``(B, h', w', S)`` float32 cosine similarities on the
        probe's patch grid (the images are resized to whole patches of its CLIP when they are not)."""
        patch = self.backbone.patch_size
        height, width = images.shape[-2:]
        if height % patch or width % patch:
            size = (max(patch, height // patch * patch), max(patch, width // patch * patch))
            images = F.interpolate(images.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
        pixels = self.backbone.normalise(images.to(self.backbone.device, self.backbone.dtype))
        tokens = F.normalize(self.backbone.block_tokens(pixels, self.layer).float(), dim=-1)
        return tokens @ self.centroids.T
