"""What a ViT backbone's last block exposes to mask discovery (saliency, MaskCut, MaskDistill, MaskCLIP)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LastBlockFeatures:
    """Per-patch features of a ViT's last transformer block for a batch of images.

    Shapes: ``B`` images, ``h x w`` patch grid, ``C`` channels (the ViT width), ``H`` heads.

    - ``tokens``: ``(B, h, w, C)`` block output after the final layer norm (the dense tokens).
    - ``queries``, ``keys``, ``values``: ``(B, h, w, C)`` the last block's attention projections
      of the patch tokens, heads concatenated (MaskCut and MaskDistill use the keys).
    - ``cls_attention``: ``(B, H, h, w)`` softmax attention of the [CLS] query to the patches
      (each head's map sums to 1 minus the [CLS]-to-[CLS] weight).

    All tensors are in the model's dtype and on its device.
    """

    tokens: torch.Tensor
    queries: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor
    cls_attention: torch.Tensor

    @property
    def grid(self) -> tuple[int, int]:
        return int(self.tokens.shape[1]), int(self.tokens.shape[2])
