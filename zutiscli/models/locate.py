"""Where a backbone's weights are, found without reading them (what a dry run reports)."""

from __future__ import annotations

from typing import Any


def weights_plan(name: str, pretrained: str) -> dict[str, Any]:
    """The :attr:`Plan.model` entry of a backbone: its name is checked and its weights located, not read.

    Handles open_clip models and zutis' own configs, and timm ViTs (``timm:NAME``, ``dino-vits8``),
    which load local files only.
    """
    from zutiscli.models.timm_vit import check_timm_model, is_timm_name, timm_weights_file

    if is_timm_name(name):
        check_timm_model(name)
        if pretrained.lower() == "none":
            return {"name": name, "pretrained": "none", "weights": None, "source": "none"}
        path = timm_weights_file(pretrained)
        return {"name": name, "pretrained": pretrained, "weights": str(path), "source": "file",
                "bytes": path.stat().st_size}
    from zutiscli.models.clip import ModelSpec, check_model_name, locate_pretrained

    check_model_name(name)
    path, _, where = locate_pretrained(ModelSpec(name, pretrained))
    entry: dict[str, Any] = {"name": name, "pretrained": pretrained, "weights": str(path) if path else None,
                             "source": where}
    if path is not None and path.is_file():
        entry["bytes"] = path.stat().st_size
    return entry
