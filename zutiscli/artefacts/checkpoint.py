"""ZUTIS checkpoints: self-describing files that load with ``torch.load(weights_only=True)``.

A checkpoint is a dict of plain values and tensors only::

    {"format": "zutis.checkpoint", "schema": 1, "created_by": "zutis 0.1.0",
     "config": ZutisConfig as a dict (backbone spec included), "classes": [training class names],
     "model": state dict, "iteration": int,
     # training checkpoints (checkpoints/last.pt) add, for an exact --resume:
     "optimizer": optimiser state, "scaler": grad-scaler state or {}, "rng": {...},
     "train_config": TrainConfig as a dict}

No Python objects are pickled, so a checkpoint from an untrusted source cannot run code.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import torch

from zutiscli._version import __version__
from zutiscli.artefacts.atomic import atomic_path
from zutiscli.errors import ArtefactError

FORMAT = "zutis.checkpoint"
SCHEMA = 1


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus format, schema and version) atomically with ``torch.save``."""
    data = {"format": FORMAT, "schema": SCHEMA, "created_by": f"zutis {__version__}", **payload}
    with atomic_path(path) as tmp:
        torch.save(data, tmp)
    return Path(path)


def _load_failure(exc: BaseException) -> str:
    """The telling line of a torch.load failure (torch prefaces it with a paragraph about its defaults)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if line.startswith(("Trying to load unsupported", "Unsupported", "WeightsUnpickler error:")) and \
                line != "WeightsUnpickler error:":
            return line.removeprefix("WeightsUnpickler error:").strip()[:160]
    return (lines[0] if lines else type(exc).__name__)[:160]


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", *, mmap: bool = False) -> dict[str, Any]:
    """Read a ZUTIS checkpoint safely; errors name the file and say what is wrong.

    ``mmap``: map the tensors' storage instead of reading it, for a look at the plain values
    (iteration, config, classes) that costs no more than they do.
    """
    path = Path(path)
    if not path.is_file():
        raise ArtefactError(f"{path}: no such checkpoint file")
    if not zipfile.is_zipfile(path):  # what torch.save writes (and so `zutis train`)
        raise ArtefactError(f"{path}: not a zutis checkpoint (not a file written by torch.save); "
                            f"use one written by `zutis train`")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:  # noqa: BLE001 - refused pickles, truncated files, foreign formats
        raise ArtefactError(
            f"{path}: not a checkpoint that loads with torch.load(weights_only=True) ({_load_failure(exc)}); "
            f"zutis loads only checkpoints of plain values and tensors, as `zutis train` writes them"
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ArtefactError(f"{path}: not a zutis checkpoint (written by `zutis train`)")
    if int(data.get("schema", 0)) > SCHEMA:
        raise ArtefactError(
            f"{path}: checkpoint schema {data.get('schema')} is newer than this zutis {__version__} reads; upgrade zutis"
        )
    for key in ("config", "classes", "model"):
        if key not in data:
            raise ArtefactError(f"{path}: zutis checkpoint without {key!r}; the file is incomplete")
    return data
