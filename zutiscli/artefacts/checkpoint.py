"""ZUTIS checkpoints: self-describing files that load with ``torch.load(weights_only=True)``.

A checkpoint is a dict of plain values and tensors only::

    {"format": "zutis.checkpoint", "schema": 1, "created_by": "zutis 0.1.0",
     "method": "zutis" (or absent) | "reclip" (ReCLIP++'s rectifier: its config, its learned weights),
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


def trained_classes(path: str | Path) -> tuple[list[str], bool, list[str]]:
    """``(classes, clusters, stuff)`` of a checkpoint: the class names it was trained on, whether they
    are clusters (a class bank: ``zutis train CLUSTERS``) rather than names for the text encoder, and
    the stuff clusters that travel with it (``stuff-00``, ...; empty without). Reads the file
    memory-mapped, so only these few values are paid for."""
    data = load_checkpoint(path, mmap=True)
    classes = [str(name) for name in data.get("classes") or []]
    probe = data.get("stuff_probe")
    stuff = [str(name) for name in probe.get("names") or []] if isinstance(probe, dict) else []
    return classes, bool((data.get("config") or {}).get("class_bank")), stuff


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
    schema = data.get("schema", 0)
    if not isinstance(schema, int) or isinstance(schema, bool):
        raise ArtefactError(f"{path}: its field 'schema' is {type(schema).__name__} {schema!r}, not an integer; "
                            f"the file is damaged")
    if schema > SCHEMA:
        raise ArtefactError(
            f"{path}: checkpoint schema {data.get('schema')} is newer than this zutis {__version__} reads; upgrade zutis"
        )
    for key in ("config", "classes", "model"):
        if key not in data:
            raise ArtefactError(f"{path}: zutis checkpoint without {key!r}; the file is incomplete")
    for key, (check, expected) in _FIELDS.items():
        if key in data and not check(data[key]):
            raise ArtefactError(f"{path}: its field {key!r} is {type(data[key]).__name__}, not {expected}; the file "
                                f"is damaged or was not written by `zutis train`")
    return data


def check_method(data: dict[str, Any], path: str | Path, method: str) -> None:
    """An :class:`ArtefactError` unless checkpoint ``data`` was trained by ``method`` (``"method"``;
    ZUTIS when it names none: the checkpoints written before there were others)."""
    own = data.get("method", "zutis")
    if own != method:
        raise ArtefactError(f"{path}: a checkpoint of --method {own}, not of --method {method}; predict with "
                            f"--method {own}, or give a checkpoint that --method {method} trained")


def _is_state(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


#: The fields a checkpoint's readers use, with the type each must have when present.
_FIELDS: dict[str, tuple[Any, str]] = {
    "config": (lambda v: isinstance(v, dict), "a dict"),
    "classes": (lambda v: isinstance(v, list) and all(isinstance(c, str) for c in v), "a list of class names"),
    "model": (_is_state, "a state dict (parameter name -> tensor)"),
    "iteration": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an integer >= 0"),
    "optimizer": (lambda v: isinstance(v, dict), "a dict"),
    "scaler": (lambda v: isinstance(v, dict), "a dict"),
    "rng": (lambda v: isinstance(v, dict), "a dict"),
    "train_config": (lambda v: isinstance(v, dict), "a dict"),
    "inference": (lambda v: v is None or isinstance(v, dict), "a dict"),
    "crop_adapter": (lambda v: v is None or isinstance(v, dict), "a dict"),
}


def check_weights_fit(model: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path, *,
                      model_from: str = "its config", differences: list[str] | None = None, remedy: str) -> None:
    """Raise one :class:`ArtefactError` naming ``path`` unless ``state`` has exactly ``model``'s
    parameters in their shapes (what a strict ``load_state_dict`` needs).

    ``model`` was built from what ``model_from`` names. The message gives ``differences`` (the
    config fields that differ, in words) when there are some, the first parameter that is missing,
    extra or of another shape (both shapes), how many more differ, then ``remedy``.
    """
    own = model.state_dict()
    problems = []
    for key, tensor in own.items():
        if key not in state:
            problems.append(f"it lacks {key} {list(tensor.shape)}")
        elif tuple(state[key].shape) != tuple(tensor.shape):
            problems.append(f"{key} is {list(state[key].shape)} in the file but {list(tensor.shape)} in the model")
    problems += [f"it holds {key}, which the model has not" for key in state if key not in own]
    if not problems:
        return
    more = f" (and {len(problems) - 1} more parameter(s) differ)" if len(problems) > 1 else ""
    what = f" ({', '.join(differences)})" if differences else ""
    raise ArtefactError(f"{path}: its weights do not fit the model {model_from} describes{what}: {problems[0]}{more}; "
                        f"{remedy}")
