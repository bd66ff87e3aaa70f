"""The models a stage over archives uses by default: the CLIP that retrieved them (their manifest's
``model``), unless ``--model`` / ``--pretrained`` name another."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zutiscli.artefacts.manifest import MANIFEST_NAME, read_manifest
from zutiscli.errors import ArtefactError, UsageError


def archive_model(archives_dir: Path) -> dict[str, Any]:
    """The ``model`` record (``{"name", "pretrained", ...}``) of a ``zutis.archives`` (or
    ``zutis.index``) directory's manifest."""
    return dict(read_manifest(archives_dir, ("zutis.archives", "zutis.index")).model or {})


def feature_model(model: str | None, pretrained: str | None, archives_dir: Path | None) -> tuple[str, str]:
    """``(name, pretrained)`` of the ViT a stage reads features from: ``model``, else the archives'
    (or index's) model; with no such directory (plain image files), ``model`` is required.

    ``model`` without ``pretrained`` takes that model's usual weights (a timm ViT has none: a
    :class:`UsageError` asks for a file); neither takes the archives' model and weights.
    """
    if archives_dir is None and not model:
        raise UsageError("image files record no model: give --model (and --pretrained) for the features, e.g. "
                         "--model dino-vits8 --pretrained FILE, or --model shapes-clip --pretrained builtin")
    recorded = archive_model(archives_dir) if archives_dir is not None else {}
    name = model or recorded.get("name")
    if not name:
        raise ArtefactError(f"{archives_dir / MANIFEST_NAME}: records no model (field 'model.name'), so the "
                            f"features are not known; give --model and --pretrained")
    if model and pretrained is None:
        return given_model(model, None)
    return name, pretrained or recorded.get("pretrained", "none")


def given_model(model: str, pretrained: str | None) -> tuple[str, str]:
    """``(model, weights)`` of a model named by ``--model``: ``pretrained``, else that model's usual
    weights (a timm ViT has none: a :class:`UsageError` asks for a file)."""
    if pretrained is not None:
        return model, pretrained
    from zutiscli.models.timm_vit import is_timm_name

    if is_timm_name(model):
        raise UsageError(f"--model {model}: timm ViTs load local weights; pass --pretrained FILE")
    from zutiscli.pipeline.index import default_pretrained

    return model, default_pretrained(model)


def named_by_manifest(model: str | None, pretrained: str | None, directory: Path | None):
    """A context in which errors about a model or weights that a directory's manifest names (the
    archives', an index's, pseudo-labels'; not given as options) blame that manifest (no
    directory: nothing to blame but the options)."""
    from contextlib import nullcontext

    from zutiscli.models.clip import named_by

    if directory is None:
        return nullcontext()
    return named_by(directory / MANIFEST_NAME,
                    model=None if model else "its field 'model.name' names model",
                    weights=None if model or pretrained else "its field 'model.pretrained' names weights")
