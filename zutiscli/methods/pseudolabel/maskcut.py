"""``maskcut``: CutLER/U2Seg's MaskCut, up to ``--max-objects`` objects per image.

Normalised cuts on the cosine affinity of the keys, thresholded at ``--tau`` (default 0.15), each
cut removing its object from the graph before the next; the ViT sees a square input, and by
default (``--components split``) disconnected parts become separate objects. Maths in
:mod:`zutiscli.ops.maskcut`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zutiscli.methods.pseudolabel import PseudoLabeller, register

if TYPE_CHECKING:
    import numpy as np

    from zutiscli.methods.pseudolabel import Features, SoftMask


@register
class MaskCut(PseudoLabeller):
    name = "maskcut"
    summary = "CutLER/U2Seg: iterative normalised cuts on key affinities, several objects"
    default_size = 480
    square_input = True
    default_components = "split"
    options = ("max_objects", "tau")

    def propose(self, image: np.ndarray, features: Features | None, saliency: np.ndarray | None,
                config: Any) -> list[SoftMask]:
        from zutiscli.ops.maskcut import maskcut
        from zutiscli.ops.refine import upsample_mask

        size = image.shape[:2]
        return [(upsample_mask(mask, size), score)
                for mask, score in maskcut(features["keys"], n_objects=config.max_objects, tau=config.tau)]
