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

_API = ("synth", "index", "retrieve", "pseudolabel", "copypaste", "train", "predict", "evaluate",
        "Predictor", "Segmentation")

__all__ = ["__version__", *_API]

# ``zutiscli.synth`` is both the shapes-world subpackage and the API function ``synth``. Loading
# the subpackage now (its __init__ holds no code) means the import system never binds the name
# ``synth`` here again, so the attribute is the function. The subpackage is reached through
# ``sys.modules``: ``from zutiscli.synth.world import SHAPES`` and ``from zutiscli.synth import
# world`` work; forms that walk attributes (``import zutiscli.synth.world as world``, dotted
# strings for pytest's monkeypatch) reach the function instead and fail.
_importlib.import_module("zutiscli.synth")
del synth  # noqa: F821 -- bound by the import system as a side effect of the line above


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
