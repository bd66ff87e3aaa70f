"""The crop classifier's adapter, fitted on a run's first training scenes before the training starts.

The fit itself is :func:`zutiscli.models.crop_classifier.fit_crop_adapter`; this module feeds it
the scenes of the run and leaves every random number generator as it found it, so that the
training that follows is the one a run without an adapter does.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from zutiscli.data.scenes import DiskScenes
from zutiscli.engine.rng import preserved_rng
from zutiscli.models.crop_classifier import CropAdapter, fit_crop_adapter


def fit_on_scenes(backbone: Any, dataset: Any, classes: list[str], scenes: int, decay: float, views: int,
                  seed: int, say: Callable[[str], None]) -> CropAdapter | None:
    """The adapter for the untrained ``backbone``, fitted on the first ``scenes`` items of ``dataset``.

    A scene directory gives at most its own number of scenes (a scene seen twice adds nothing).
    ``decay``, ``views`` and ``seed`` mean what they mean to ``fit_crop_adapter``. Says how the fit
    went; returns ``None`` when the scenes hold no object, or when the map names the scenes' crops
    (as they are) worse than the classifier without it: fitted on recoloured views of noisy
    pseudo-labels with a weak CLIP, it can collapse onto a few classes.
    """
    if isinstance(dataset, DiskScenes):
        scenes = min(scenes, len(dataset.images))
    was_training = backbone.training
    clock = time.perf_counter()
    backbone.eval()
    with preserved_rng():
        try:
            items = (dataset[index] for index in range(scenes))
            labelled = ((image, masks, labels) for image, _semantic, masks, labels in items)
            adapter = fit_crop_adapter(backbone, labelled, classes, decay, views, seed)
        finally:
            backbone.train(was_training)
    if adapter is None:
        say(f"crop adapter: the first {scenes} training scenes hold no object to fit it on; none saved")
        return None
    fitted = (f"crop adapter: fitted on {adapter.objects} objects of {adapter.scenes} training scenes in "
              f"{time.perf_counter() - clock:.1f} s; crops named right {adapter.accuracy_before:.1%} -> "
              f"{adapter.accuracy_after:.1%}")
    if adapter.accuracy_after < adapter.accuracy_before:
        say(f"{fitted}: it names its own crops worse, so none is saved and the crop classifier goes without it")
        return None
    say(fitted)
    return adapter
