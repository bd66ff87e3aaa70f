"""Training recipes shipped with zutis: ``zutis train --config NAME`` reads ``NAME.yaml`` from here.

- ``official``: the paper's recipe (the official implementation's configs), ViT-B/16 at 384 px.
- ``demo``: the recipe ``zutis demo`` trains shapes-clip with on the shapes world (CPU, minutes).
- ``demo-fast``: the same for ``zutis demo --fast``, with fewer iterations.

A recipe is a mapping of ``zutis train`` options (``TrainConfig`` fields) to values, and may hold an
``inference:`` mapping, the inference settings recorded with the trained model.
"""

from __future__ import annotations

from importlib import resources

SUFFIX = ".yaml"


def names() -> list[str]:
    """The shipped recipes' names, sorted."""
    return sorted(entry.name[: -len(SUFFIX)] for entry in resources.files(__name__).iterdir()
                  if entry.name.endswith(SUFFIX))


def read(name: str) -> str | None:
    """The text of the shipped recipe ``name`` (without ``.yaml``), or None when there is none."""
    if name not in names():
        return None
    return resources.files(__name__).joinpath(name + SUFFIX).read_text(encoding="utf-8")
