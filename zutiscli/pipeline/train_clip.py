"""``zutis synth train-clip``: train ``shapes-clip`` into a directory, resumably, or plan it (``--dry-run``).

The directory holds ``MODEL.pt`` (fp16 weights; ``shapes-clip.pt`` for the default model), ``MODEL.json``
(recipe, loss curve, metrics) and the manifest; while training, ``MODEL.pt.ckpt`` (the resumable
state). A rerun into the same directory with the same recipe resumes from that checkpoint.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any, Callable, Iterator

from zutiscli.errors import ArtefactError, ModelError, UsageError
from zutiscli.pipeline.plan import Plan, output_plan
from zutiscli.shapes.clip_recipe import TrainClipConfig

STAGE = "synth"


def weights_name(model: str) -> str:
    """The weights file a run of ``model`` writes: ``shapes-clip.pt`` for ``shapes-clip``; characters
    a file name should not hold (``/``, ``:``) become ``-``."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", model) + ".pt"


def report_name(model: str) -> str:
    """The recipe, loss curve and metrics beside the weights: ``shapes-clip.json`` for ``shapes-clip``."""
    return weights_name(model)[: -len(".pt")] + ".json"


@contextlib.contextmanager
def _speaking_of_init() -> Iterator[None]:
    """Model errors inside name ``--init``: the loaders speak of ``--pretrained``, which train-clip has not."""
    try:
        yield
    except ModelError as exc:
        raise ModelError(str(exc).replace("--pretrained", "--init")) from None


def _check(config: TrainClipConfig, load: bool = True) -> None:
    """The recipe, model, device and precision (and with ``load`` the starting weights, read), checked
    before anything is written."""
    from zutiscli.models.clip import ModelSpec, config_input_size, config_is_plain_vit, load_backbone
    from zutiscli.models.device import resolve_device
    from zutiscli.shapes.clip_train import autocast_dtype

    try:
        config.validate()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    autocast_dtype(config.precision, resolve_device(config.device))
    size = config_input_size(config.model)
    if config.dense and not config_is_plain_vit(config.model):
        raise UsageError(f"--dense trains MaskCLIP's patch tokens, which {config.model} has not (it needs a plain ViT "
                         "image tower, e.g. ViT-B-16); give --dense 0")
    if config.image_size not in (None, size):
        raise UsageError(f"image_size {config.image_size} differs from {config.model}'s input size {size}")
    if load and config.init != "none":
        with _speaking_of_init():  # unreadable or foreign weights fail here
            load_backbone(ModelSpec(config.model, config.init))


def _check_content(out: Path, model: str) -> None:
    """Refuse a directory that holds a finished training or anything but a checkpoint of one."""
    from zutiscli.artefacts.lock import content
    from zutiscli.artefacts.manifest import MANIFEST_NAME
    from zutiscli.shapes.clip_train import checkpoint_path

    if (out / MANIFEST_NAME).is_file():
        raise ArtefactError(f"{out}: holds a finished training; choose a new -o directory")
    checkpoint = checkpoint_path(out / weights_name(model))
    if any(p != checkpoint for p in content(out)):
        raise ArtefactError(f"{out}: is not empty and holds no {model} training checkpoint; choose a new -o directory")


def plan_train_clip(config: TrainClipConfig, output: str | Path | None = None) -> Plan:
    """What ``zutis synth train-clip`` would do: the checks of a real run, the steps left, nothing built or written."""
    from zutiscli.pipeline.plan import input_entry, weights_plan
    from zutiscli.shapes.clip_train import checkpoint_path, checkpoint_step

    _check(config, load=False)
    with _speaking_of_init():
        model = weights_plan(config.model, config.init)
    writes = output_plan(output, STAGE, resumable=output is not None)
    out = Path(writes["path"])
    reads, notes, done = [], [], 0
    if writes["state"] == "existing":
        _check_content(out, config.model)
        checkpoint = checkpoint_path(out / weights_name(config.model))
        step = checkpoint_step(checkpoint, config) if config.checkpoint_every else None
        if step is None:
            notes.append(f"{checkpoint}: a checkpoint of another recipe, unreadable, or --checkpoint-every 0; "
                         "training starts afresh")
        else:
            done = step
            reads.append(input_entry(checkpoint, "training checkpoint", steps_done=done))
    work = {"steps_done": done, "steps_to_run": config.steps - done,
            "pairs_to_draw": (config.steps - done) * config.batch_size, "evaluation_images": config.eval_pool}
    return Plan("synth train-clip", reads, writes, model=model,
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
        _check_content(out, config.model)  # before the lock: a refused directory is left as it was
    out = prepare_output_dir(output, STAGE, resumable=output is not None)
    _check_content(out, config.model)  # again, now that this process holds the lock
    weights = out / weights_name(config.model)
    checkpoint = checkpoint_path(weights)
    if checkpoint.is_file() and log is not None:
        log(f"resuming from {checkpoint} (a different recipe starts afresh)")
    report = train_shapes_clip(config, weights, progress=progress)
    atomic_write_json(out / report_name(config.model), report)
    summary = {"steps": report["steps"], "train_seconds": report["train_seconds"], "final_loss": report["final_loss"]}
    write_manifest(out, "zutis.synth", model={"name": config.model, "pretrained": config.init},
                   params={"kind": "clip", **config.to_json()}, summary=summary)
    return out, report
