"""``zutis synth train-clip``: train ``shapes-clip`` into a directory, resumably, or plan it (``--dry-run``).

The directory holds ``shapes-clip.pt`` (fp16 weights), ``shapes-clip.json`` (recipe, loss curve,
metrics) and the manifest; while training, ``shapes-clip.pt.ckpt`` (the resumable state). A rerun
into the same directory with the same recipe resumes from that checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from zutiscli.errors import ArtefactError, UsageError
from zutiscli.pipeline.plan import Plan, output_plan
from zutiscli.shapes.clip_recipe import TrainClipConfig

STAGE = "synth"
WEIGHTS_NAME = "shapes-clip.pt"
REPORT_NAME = "shapes-clip.json"


def _check(config: TrainClipConfig) -> None:
    """The recipe, device and precision, checked before anything is written (usage errors)."""
    from zutiscli.models.device import resolve_device
    from zutiscli.shapes.clip_train import autocast_dtype

    try:
        config.validate()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    autocast_dtype(config.precision, resolve_device(config.device))


def _check_content(out: Path) -> None:
    """Refuse a directory that holds a finished training or anything but a checkpoint of one."""
    from zutiscli.artefacts.lock import content
    from zutiscli.artefacts.manifest import MANIFEST_NAME
    from zutiscli.shapes.clip_train import checkpoint_path

    if (out / MANIFEST_NAME).is_file():
        raise ArtefactError(f"{out}: holds a finished training; choose a new -o directory")
    checkpoint = checkpoint_path(out / WEIGHTS_NAME)
    if any(p != checkpoint for p in content(out)):
        raise ArtefactError(f"{out}: is not empty and holds no shapes-clip checkpoint; choose a new -o directory")


def plan_train_clip(config: TrainClipConfig, output: str | Path | None = None) -> Plan:
    """What ``zutis synth train-clip`` would do: the checks of a real run, the steps left, nothing built or written."""
    from zutiscli.pipeline.plan import input_entry
    from zutiscli.shapes.clip_train import checkpoint_path, checkpoint_step

    _check(config)
    writes = output_plan(output, STAGE, resumable=output is not None)
    out = Path(writes["path"])
    reads, notes, done = [], [], 0
    if writes["state"] == "existing":
        _check_content(out)
        checkpoint = checkpoint_path(out / WEIGHTS_NAME)
        step = checkpoint_step(checkpoint, config) if config.checkpoint_every else None
        if step is None:
            notes.append(f"{checkpoint}: a checkpoint of another recipe, unreadable, or --checkpoint-every 0; "
                         "training starts afresh")
        else:
            done = step
            reads.append(input_entry(checkpoint, "training checkpoint", steps_done=done))
    work = {"steps_done": done, "steps_to_run": config.steps - done,
            "pairs_to_draw": (config.steps - done) * config.batch_size, "evaluation_images": config.eval_pool}
    return Plan("synth train-clip", reads, writes, model={"name": config.model, "weights": "none", "source": "none"},
                params=config.recipe_key() | {"device": config.device, "precision": config.precision},
                work=work, notes=notes)


def train_clip(
    config: TrainClipConfig, output: str | Path | None = None,
    progress: Callable[[int, int, dict[str, Any]], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Train ``shapes-clip`` into ``output`` (``None``: a new ``runs/synth/N``); returns the directory
    and the report (:func:`zutiscli.shapes.clip_train.train_shapes_clip`). A directory holding a
    checkpoint of the same recipe is resumed; one holding anything else is refused."""
    from zutiscli.artefacts.atomic import atomic_write_json
    from zutiscli.artefacts.manifest import write_manifest
    from zutiscli.artefacts.rundir import check_output_dir, prepare_output_dir
    from zutiscli.shapes.clip_train import checkpoint_path, train_shapes_clip

    _check(config)
    out, state = check_output_dir(output, STAGE, resumable=output is not None)
    if state == "existing":
        _check_content(out)  # before the lock: a refused directory is left as it was
    out = prepare_output_dir(output, STAGE, resumable=output is not None)
    _check_content(out)  # again, now that this process holds the lock
    weights = out / WEIGHTS_NAME
    checkpoint = checkpoint_path(weights)
    if checkpoint.is_file() and log is not None:
        log(f"resuming from {checkpoint} (a different recipe starts afresh)")
    report = train_shapes_clip(config, weights, progress=progress)
    atomic_write_json(out / REPORT_NAME, report)
    summary = {"steps": report["steps"], "train_seconds": report["train_seconds"], "final_loss": report["final_loss"]}
    write_manifest(out, "zutis.synth", model={"name": config.model, "pretrained": "none"},
                   params={"kind": "clip", **config.to_json()}, summary=summary)
    return out, report
