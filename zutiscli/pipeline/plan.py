"""What a stage would do: the plan that ``--dry-run`` prints instead of running.

A stage's ``plan_*`` function makes the checks of a real run (options, inputs and their kinds,
model name and weights file, output directory) and counts the work, but loads no weights and
creates nothing: not the output directory, not a numbered run directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zutiscli.artefacts.rundir import check_output_dir
from zutiscli.models.locate import weights_plan  # noqa: F401 - the stages plan their weights through here

#: What a weights ``source`` means, for people (see :func:`zutiscli.models.clip.locate_pretrained`).
WEIGHT_SOURCES = {
    "none": "random initialisation",
    "builtin": "shipped with zutis",
    "file": "local file",
    "cached": "in the local cache",
    "download": "not cached here; a real run downloads them, which needs the network",
}


@dataclass
class Plan:
    """A dry run's findings.

    ``reads``: the inputs, each ``{"path", "kind", ...counts}``; ``writes``: the output directory
    (``{"path", "state"}`` with state new, empty or existing); ``model``: the network and weights
    that would be loaded; ``params``: the key options; ``work``: the estimate of what a real run
    would do (images to embed, iterations, ...); ``notes``: warnings a real run would print.
    """

    command: str
    reads: list[dict[str, Any]]
    writes: dict[str, Any]
    model: dict[str, Any] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    work: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The JSON document of ``--dry-run --json``."""
        return {"dry_run": True, "command": self.command, "reads": self.reads, "writes": self.writes,
                "model": self.model, "params": self.params, "work": self.work, "notes": self.notes}


def input_entry(path: str | Path, kind: str, **counts: Any) -> dict[str, Any]:
    """One entry of :attr:`Plan.reads`: a path, what it is, and what it holds."""
    return {"path": str(path), "kind": kind, **counts}


def output_plan(output: str | Path | None, stage: str, *, resumable: bool = False) -> dict[str, Any]:
    """The :attr:`Plan.writes` entry of a stage's output, checked like a real run checks it."""
    out, state = check_output_dir(output, stage, resumable=resumable)
    return {"path": str(out), "state": state}
