"""One entry point for every backbone that gives dense ViT features: open_clip models and timm ViTs."""

from __future__ import annotations

from typing import Any, Protocol

import torch

from zutiscli.models.features import LastBlockFeatures


class DenseBackbone(Protocol):
    """What mask discovery needs from a backbone (both :class:`ClipBackbone` and :class:`TimmViTBackbone`)."""

    patch_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def normalise(self, images: torch.Tensor) -> torch.Tensor: ...

    def last_block_features(self, images: torch.Tensor) -> LastBlockFeatures: ...


def load_dense_backbone(name: str, pretrained: str, device: torch.device | str = "cpu",
                        dtype: torch.dtype = torch.float32) -> Any:
    """Load ``name`` as a timm ViT (``timm:...`` or a DINO alias) or an open_clip model."""
    from zutiscli.models.timm_vit import is_timm_name, load_timm_vit

    if is_timm_name(name):
        return load_timm_vit(name, pretrained, device=device, dtype=dtype)
    from zutiscli.models.clip import ModelSpec, load_backbone

    return load_backbone(ModelSpec(name, pretrained), device=device, dtype=dtype)


def describe_backbone(name: str, pretrained: str) -> dict[str, Any]:
    """Manifest description of a backbone (file weights recorded with their fingerprint)."""
    from zutiscli.models.clip import ModelSpec

    return ModelSpec(name, pretrained).describe()
