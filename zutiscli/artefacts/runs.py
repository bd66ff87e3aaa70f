"""Training runs on disk (kind ``zutis.run``): their file names, and how a run or a checkpoint is found.

A run directory holds ``model.pt`` (the final model, written when the run finishes),
``checkpoints/last.pt`` (the state a ``--resume`` continues from), ``metrics.jsonl`` (one line per
logged iteration or held-out evaluation), ``evals/iter-NNNNNN/`` (held-out evaluations),
``config.json`` (the recipe, its inference settings included) and ``manifest.json``.

Both ``zutis train`` (resume) and ``zutis predict`` (which model) find runs through this module, so
neither stage imports the other.
"""

from __future__ import annotations

import os
from pathlib import Path

from zutiscli.artefacts.manifest import MANIFEST_NAME, read_manifest
from zutiscli.artefacts.rundir import DEFAULT_RUNS_ROOT, numbered_runs
from zutiscli.errors import ArtefactError, UsageError

CHECKPOINT = "checkpoints/last.pt"
FINAL = "model.pt"
METRICS = "metrics.jsonl"
EVALS = "evals"
CONFIG = "config.json"


def latest_run(root: str | Path = DEFAULT_RUNS_ROOT) -> Path | None:
    """The newest finished run under ``root/train`` (highest number with a manifest and a model), if any."""
    for run in reversed(numbered_runs("train", root)):
        if (run / MANIFEST_NAME).is_file() and (run / FINAL).is_file():
            return run
    return None


def resolve_checkpoint(checkpoint: str | os.PathLike | None) -> Path:
    """The model file to load: ``checkpoint`` (a run directory or a file), else ``$ZUTIS_CHECKPOINT``,
    else the newest finished run in ``./runs/train``. Errors say what the path is instead."""
    given = os.fspath(checkpoint) if checkpoint is not None else os.environ.get("ZUTIS_CHECKPOINT")
    if given:
        path = Path(given)
        if path.is_dir():
            if (path / FINAL).is_file():
                return path / FINAL
            if (path / MANIFEST_NAME).is_file() and read_manifest(path).kind != "zutis.run":
                raise ArtefactError(f"--checkpoint {path}: is a {read_manifest(path).kind} artefact, not a `zutis train` "
                                    f"run directory; pass a run directory or its {FINAL}")
            raise ArtefactError(f"--checkpoint {path}: has no {FINAL}, so it is not a finished `zutis train` run; "
                                f"pass a finished run directory or its {FINAL} (an unfinished run can be resumed "
                                f"with `zutis train --resume {path}`)")
        if path.is_file():
            return path
        raise ArtefactError(f"--checkpoint {path}: no such file or directory")
    run = latest_run()
    if run is None:
        raise UsageError("no checkpoint: pass --checkpoint RUN_DIR|FILE or set ZUTIS_CHECKPOINT, train one with "
                         "`zutis train`, or use --method maskclip (needs only CLIP weights)")
    return run / FINAL


def refuse_unfinished_run(output: str | Path | None) -> None:
    """Refuse to start a new run in ``output`` when it holds a resumable checkpoint of an unfinished run.

    Removing such a directory would throw training away, so the error points to ``--resume``.
    """
    if output is None:
        return
    out = Path(output)
    if (out / CHECKPOINT).is_file() and not (out / FINAL).is_file():
        raise ArtefactError(f"{out}: holds an unfinished training run ({CHECKPOINT}); continue it with "
                            f"`zutis train --resume {out}` (add --iterations N to change its length), "
                            f"or choose a new -o directory")


def resume_checkpoint_path(run_dir: str | Path) -> Path:
    """The checkpoint that ``--resume RUN_DIR`` continues from; errors say what ``RUN_DIR`` is instead."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        what = "is a file" if run_dir.exists() else "no such directory"
        raise ArtefactError(f"--resume {run_dir}: {what}; give the directory of a `zutis train` run")
    path = run_dir / CHECKPOINT
    if path.is_file():
        return path
    if (run_dir / MANIFEST_NAME).is_file():
        kind = read_manifest(run_dir).kind
        if kind != "zutis.run":
            raise ArtefactError(f"--resume {run_dir}: is a {kind} artefact, not a `zutis train` run directory; "
                                f"to train on it, give it as the source: `zutis train {run_dir}`")
    raise ArtefactError(f"--resume {run_dir}: has no {CHECKPOINT}, so there is nothing to resume; "
                        f"start a new run with `zutis train SOURCE`")


def run_method(run_dir: str | Path) -> str:
    """The method a training run trains (its checkpoint's ``"method"``; ZUTIS when it names none),
    read memory-mapped."""
    from zutiscli.artefacts.checkpoint import load_checkpoint

    method = load_checkpoint(resume_checkpoint_path(run_dir), mmap=True).get("method", "zutis")
    return method if isinstance(method, str) else "zutis"
