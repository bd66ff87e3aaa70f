"""``attention``: MaskDistill's object mask from a ViT's [CLS] attention, one object per image.

The top ``--top-k`` fraction (default 40%) of patches by [CLS] attention, the source patch = the
most attended one, diffused over the key affinity. Maths in :mod:`zutiscli.ops.attention_masks`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zutiscli.methods.pseudolabel import PseudoLabeller, register

if TYPE_CHECKING:
    import numpy as np

    from zutiscli.methods.pseudolabel import Features, SoftMask


@register
class Attention(PseudoLabeller):
    name = "attention"
    summary = "MaskDistill: [CLS]-attention source patch, key-affinity diffusion"
    default_size = 640
    options = ("top_k",)

    def propose(self, image: np.ndarray, features: Features | None, saliency: np.ndarray | None,
                config: Any) -> list[SoftMask]:
        from zutiscli.ops.attention_masks import maskdistill_mask
        from zutiscli.ops.refine import upsample_mask

        result = maskdistill_mask(features["cls_attention"], features["keys"], top_k=config.top_k)
        if result is None:
            return []
        return [(upsample_mask(result[0], image.shape[:2]), result[1])]
