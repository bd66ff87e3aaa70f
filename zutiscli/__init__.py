"""zutis: zero-shot unsupervised transfer instance and semantic segmentation.

Give class names and a pile of unlabelled images; get a semantic and instance segmenter.
The command line (`zutis ...`) and this package share the same stage functions::

    import zutiscli as zs

    pile = zs.synth("pile", 500, "data/pile")
    predictor = zs.Predictor("runs/train/1", classes=["circle", "star"])
    segmentation = predictor("photo.jpg")     # .semantic (H, W), .masks (N, H, W), .scores, ...

The API (:mod:`zutiscli.api`) is imported on first use, so ``import zutiscli`` stays light and
does not import torch.
"""

import importlib as _importlib

from zutiscli._version import __version__

_API = ("synth", "index", "retrieve", "cosegment", "pseudolabel", "cluster", "copypaste", "train", "hypotheses",
        "train_reclip", "predict", "evaluate", "compare", "Predictor", "Segmentation")

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    """Import :mod:`zutiscli.api` when one of its names is first used and bind them all here."""
    if name in _API:
        api = _importlib.import_module("zutiscli.api")
        for attribute in _API:
            globals()[attribute] = getattr(api, attribute)
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
