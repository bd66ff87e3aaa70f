"""``cluster_mapping.json``: which ground-truth class each predicted cluster was matched to.

``zutis evaluate --match hungarian|majority`` writes it beside ``metrics.json``; ``zutis evaluate
--mapping`` reads it back, so a second evaluation (the test split, the shift split) scores with the
mapping found on a first one (the validation split) instead of matching again::

    {"kind": "zutis.cluster_mapping", "mode": "hungarian", "pred": "...", "gt": "...",
     "tasks": {"semantic": {"background": "background", "cluster-00": "circle", ...},
               "instance": {"cluster-00": "circle", "cluster-01": null, ...},
               "panoptic": {...}}}

Keys are the predicted clusters as the prediction names them (a class name; a label value or
category id where the prediction names none), values the ground truth's class names (null: the
cluster was matched to no class, so its pixels and instances score as no class).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from zutiscli.errors import UsageError

FILE = "cluster_mapping.json"
KIND = "zutis.cluster_mapping"

Mapping = dict[str, dict[str, str | None]]  # task -> cluster -> class (None: no class)


def cluster_mapping_document(metrics: dict[str, Any], pred: str, gt: str) -> dict[str, Any] | None:
    """The document of ``cluster_mapping.json`` for ``metrics`` (as the evaluator returns them), or
    None when no task matched clusters."""
    tasks = {task: dict(block["cluster_mapping"]["mapping"]) for task in ("instance", "semantic", "panoptic")
             if isinstance(block := metrics.get(task), dict) and "cluster_mapping" in block}
    if not tasks:
        return None
    modes = {metrics[task]["cluster_mapping"]["mode"] for task in tasks}
    return {"kind": KIND, "mode": modes.pop() if len(modes) == 1 else "mixed", "pred": pred, "gt": gt,
            "tasks": tasks}


def read_cluster_mapping(path: str | Path) -> tuple[str, Mapping]:
    """``(mode, mapping)`` from ``cluster_mapping.json``, a ``zutis evaluate`` output directory, or its
    ``metrics.json``. Raises a one-line :class:`UsageError` for anything else."""
    path = Path(path)
    if path.is_dir():
        found = next((path / name for name in (FILE, "metrics.json") if (path / name).is_file()), None)
        if found is None:
            raise UsageError(f"--mapping {path}: holds no {FILE}; give a `zutis evaluate --match hungarian|majority` "
                             f"output directory or its {FILE}")
        path = found
    if not path.is_file():
        raise UsageError(f"--mapping {path}: no such file or directory")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UsageError(f"--mapping {path}: is not readable JSON ({error})") from None
    if not isinstance(document, dict):
        raise UsageError(f"--mapping {path}: is not a cluster mapping")
    if document.get("kind") == KIND:
        tasks, mode = document.get("tasks"), document.get("mode")
    else:  # a metrics.json: each task's block keeps its mapping
        blocks = {task: document[task]["cluster_mapping"] for task in ("instance", "semantic", "panoptic")
                  if isinstance(document.get(task), dict) and "cluster_mapping" in document[task]}
        tasks = {task: block.get("mapping") for task, block in blocks.items()}
        modes = {block.get("mode") for block in blocks.values()}
        mode = modes.pop() if len(modes) == 1 else "mixed"
    if not tasks or not isinstance(tasks, dict) or not all(
            isinstance(m, dict) and all(isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in m.items())
            for m in tasks.values()):
        raise UsageError(f"--mapping {path}: maps no clusters (was it evaluated by class name? map clusters with "
                         f"--match hungarian or majority first)")
    return str(mode), {str(task): dict(mapping) for task, mapping in tasks.items()}


def write_cluster_mapping(directory: Path, document: dict[str, Any]) -> Path:
    """Write ``document`` (:func:`cluster_mapping_document`) as ``directory/cluster_mapping.json``."""
    from zutiscli.artefacts.atomic import atomic_write_json

    atomic_write_json(directory / FILE, document)
    return directory / FILE
