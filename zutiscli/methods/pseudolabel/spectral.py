"""``spectral`` (the default): SelfMask's training-free core, one salient object per image.

Spectral clustering of the patch features (``--features keys|tokens``) for each k in ``--ks``
(default 2, 3, 4), the salient cluster of each (least border contact), a vote among them; the
score is the vote's agreement. Maths in :mod:`zutiscli.ops.spectral`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zutiscli.methods.pseudolabel import PseudoLabeller, register

if TYPE_CHECKING:
    import numpy as np

    from zutiscli.methods.pseudolabel import Features, SoftMask


@register
class Spectral(PseudoLabeller):
    name = "spectral"
    summary = "SelfMask: spectral clustering of patch features, vote for the salient cluster"
    default_size = 512
    options = ("features", "ks", "seed")

    def propose(self, image: np.ndarray, features: Features | None, saliency: np.ndarray | None,
                config: Any) -> list[SoftMask]:
        from zutiscli.ops.refine import upsample_mask
        from zutiscli.ops.spectral import spectral_saliency

        result = spectral_saliency(features[config.features], ks=config.ks, seed=config.seed)
        if result is None:
            return []
        return [(upsample_mask(result[0], image.shape[:2]), result[1])]
