"""`zutis train --method reclip`: ReCLIP++'s rectification stage, CLIP frozen.

SOURCE is a ``zutis hypotheses`` directory (its images, classes and label hypotheses), or an image
folder with ``--classes``: its hypotheses are then made first (``--window``, ``--threshold``, the
run's CLIP) into the run's ``hypotheses/``, where a person can read them. Images that hypothesise
no class teach nothing and are left out (counted in the manifest).

The model (:class:`zutiscli.models.reclip.Rectifier`) learns the Reference prompt, the projection
of the positional embedding and the mask decoder with SGD from the contrastive loss over each
crop's hypothesised classes (:class:`zutiscli.engine.reclip_trainer.ReclipTrainer`), on crops
drawn as :mod:`zutiscli.data.hypothesis_crops` says. The run directory is a ``zutis.run`` like any
training run's: ``config.json``, ``metrics.jsonl``, ``checkpoints/last.pt`` (``--resume``),
``model.pt`` for ``zutis predict --method reclip``, ``manifest.json`` last. Checkpoints hold the
learned parts only (``"method": "reclip"``); CLIP is named by the config, as for MaskCLIP.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch

from zutiscli.artefacts.checkpoint import load_checkpoint
from zutiscli.artefacts.lock import holding_locks, lock_directory
from zutiscli.artefacts.manifest import read_manifest, write_manifest
from zutiscli.artefacts.runs import CHECKPOINT, refuse_unfinished_run, resume_checkpoint_path
from zutiscli.engine.reclip_trainer import METHOD, ReclipDistilTrainer, ReclipTrainer
from zutiscli.engine.trainer import Progress, barrier, broadcast
from zutiscli.errors import ArtefactError, UsageError, ZutisError
from zutiscli.pipeline.plan import Plan, input_entry, output_plan, weights_plan
from zutiscli.pipeline.reclip_config import ReclipTrainConfig

HYPOTHESES_DIR = "hypotheses"


def is_hypotheses(source: str | Path) -> bool:
    """Whether ``source`` is a finished ``zutis hypotheses`` directory."""
    from zutiscli.artefacts.hypotheses import KIND

    path = Path(source)
    if not (path / "manifest.json").is_file():
        return False
    try:
        return read_manifest(path).kind == KIND
    except ArtefactError:
        return False


def _image_folder(config: ReclipTrainConfig) -> list[Path]:
    """The images of an image-folder SOURCE, checked before anything is written."""
    from zutiscli.data.images import discover_images

    if not config.classes:
        raise UsageError(f"{config.source}: an image folder needs --classes a,b,... (or give a `zutis hypotheses` "
                         f"directory as SOURCE)")
    found = discover_images([config.source])
    if not found.paths:
        why = f" ({found.problems[0][0]}: {found.problems[0][1]})" if found.problems else ""
        raise ZutisError(f"{config.source}: no images found{why}; give a folder of images or a `zutis hypotheses` "
                         f"directory")
    return list(found.paths)


def _queries(config: ReclipTrainConfig) -> list[Any]:
    from zutiscli.data.classes import parse_classes

    queries = parse_classes(config.classes, None)
    if len(queries) < 2:
        raise UsageError("give at least two classes (--classes a,b): the masks choose among them")
    return queries


def _make_hypotheses(config: ReclipTrainConfig, pretrained: str, run_dir: Path, say: Callable[[str], None]) -> Path:
    """Hypotheses of an image-folder SOURCE, written into the run (kept when already there: a resumed run)."""
    from zutiscli.pipeline.hypotheses import HypothesesConfig, hypotheses

    where = run_dir / HYPOTHESES_DIR
    if (where / "manifest.json").is_file():
        return where
    say(f"label hypotheses first (window {config.window:g}, threshold {config.threshold:g}), into {where.name}/")
    hypotheses(HypothesesConfig(inputs=(config.source,), classes=tuple(_queries(config)), window=config.window,
                                threshold=config.threshold, model=config.model, pretrained=pretrained,
                                device=config.device), where)
    return where


def training_images(directory: Path) -> tuple[list[str], list[str], list[Path], list[list[int]], int]:
    """``(class names, phrases, images, hypothesised channels, images left out)`` of a hypotheses
    directory: the images that were read and hypothesise at least one class (channel ``i`` = the
    ``i``-th class, 0 = background)."""
    from zutiscli.artefacts.hypotheses import read_hypotheses

    read = read_hypotheses(directory)
    phrases = read.manifest.params.get("phrases") or read.classes
    channel = {name: number for number, name in enumerate(read.classes, start=1)}
    paths, chosen = [], []
    for item in read.images:
        if item.failed is None and item.classes:
            paths.append(item.image)
            chosen.append([channel[name] for name in item.classes])
    if not paths:
        raise ZutisError(f"{directory}: no image hypothesises any class, so there is nothing to learn from; make "
                         f"hypotheses with a smaller --threshold or --window")
    return list(read.classes), [str(p) for p in phrases], paths, chosen, len(read.images) - len(paths)


def _recipe(config: ReclipTrainConfig | None, resume: str | Path | None
            ) -> tuple[ReclipTrainConfig, dict[str, Any] | None]:
    """The recipe of the run and, when resuming, the checkpoint it continues from (a larger
    ``config.iterations`` extends a resumed run)."""
    from zutiscli.pipeline.train import training_checkpoint

    if resume is None:
        if config is None:
            raise UsageError("give a training config, or a run directory to resume")
        return config, None
    checkpoint, where = training_checkpoint(resume)
    saved = ReclipTrainConfig.from_dict(checkpoint["train_config"], where=where)
    if config is not None and config.iterations > saved.iterations:
        saved.iterations = config.iterations
    return saved, checkpoint


def _pretrained(config: ReclipTrainConfig, checkpoint: dict[str, Any] | None) -> str:
    if checkpoint is not None:
        return checkpoint["config"]["backbone"]["pretrained"]
    from zutiscli.models.clip import default_pretrained

    return config.pretrained or default_pretrained(config.model)


def rectifier_config(config: ReclipTrainConfig, pretrained: str, context_tokens: int) -> Any:
    from zutiscli.models.reclip import RectifierConfig

    return RectifierConfig(backbone={"name": config.model, "pretrained": pretrained}, context_tokens=context_tokens,
                           bias=config.bias, position=config.position, decoder=config.mask_decoder,
                           gumbel_scale=config.gumbel_scale, gumbel_tau=config.gumbel_tau)


def _context_tokens(config: ReclipTrainConfig, backbone: Any, phrases: list[str]) -> int:
    """``--context-tokens``, or as many as the text context holds beside the longest class phrase."""
    from zutiscli.models.reclip import context_room, name_tokens

    room = context_room(int(backbone.model.positional_embedding.shape[0]),
                        name_tokens(backbone.tokenizer, ["background", *phrases]))
    if config.context_tokens is None:
        if room < 1:
            raise UsageError("a class name fills the text encoder's whole context; shorten it")
        return room
    if config.context_tokens > room:
        raise UsageError(f"--context-tokens {config.context_tokens} does not fit the text encoder's context beside "
                         f"the longest class name; use at most {room}")
    return config.context_tokens


@holding_locks
def train_reclip(config: ReclipTrainConfig | None, output: str | Path | None = None, *,
                 resume: str | Path | None = None, progress: Progress | None = None,
                 log: Callable[[str], None] | None = None) -> Any:
    """Run (or resume) a rectification run; returns a :class:`zutiscli.pipeline.train.TrainResult`."""
    from zutiscli.data.hypothesis_crops import HypothesisCrops, crop_loader
    from zutiscli.models.clip import ModelSpec, load_backbone, named_by
    from zutiscli.models.reclip import Rectifier, RectifierConfig
    from zutiscli.pipeline.train import TrainResult, _new_run_dir, resume_trainer, start_processes

    say = log or (lambda message: None)
    config, checkpoint = _recipe(config, resume)
    if checkpoint is not None and int(os.environ.get("RANK", "0")) == 0:
        lock_directory(resume)
    config.validate()
    teacher_path = _teacher_checkpoint(config)
    if teacher_path is not None and not config.source:
        config.source = _teacher_hypotheses(teacher_path)
    # a hypotheses directory is read once, here; an image folder's hypotheses are made in the run below
    given = training_images(Path(config.source)) if is_hypotheses(config.source) else None
    if teacher_path is not None:
        _check_teacher_source(config, teacher_path, given)
    if checkpoint is None and given is None:
        _image_folder(config)  # refused before anything is written
        phrases_asked = [q.phrase for q in _queries(config)]
    elif checkpoint is None:
        phrases_asked = given[1]
    info, device, amp = start_processes(config, output, checkpoint is None)
    teacher, teacher_classes = (None, None)
    if teacher_path is not None:
        from zutiscli.methods.predict.reclip import load_rectifier

        teacher, teacher_classes = load_rectifier(teacher_path, device)
        config.model, config.pretrained = teacher.config.backbone["name"], teacher.config.backbone["pretrained"]
    pretrained = _pretrained(config, checkpoint)
    with named_by(Path(resume) / CHECKPOINT, model="its recipe names model", weights="its recipe names weights") \
            if checkpoint is not None else contextlib.nullcontext():
        backbone = load_backbone(ModelSpec(config.model, pretrained), device=device, dtype=torch.float32)
    context_tokens = _context_tokens(config, backbone, phrases_asked) if checkpoint is None and teacher is None \
        else None
    run_dir = Path(resume) if checkpoint is not None else _new_run_dir(output, info)
    try:
        if given is not None:
            source_hypotheses = Path(config.source)
        else:
            made = _make_hypotheses(config, pretrained, run_dir, say) if info.main else None
            source_hypotheses = Path(broadcast(str(made) if made else None, info))
            given = training_images(source_hypotheses)
    except ZutisError:
        if checkpoint is None and info.main:  # a new run that cannot start leaves nothing behind
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    names, phrases, paths, chosen, left_out = given
    if config.background:
        chosen = [[0, *channels] for channels in chosen]
    if checkpoint is not None:
        model_config = RectifierConfig.from_dict(checkpoint["config"], where=str(Path(resume) / CHECKPOINT))
    elif teacher is not None:
        model_config = RectifierConfig(**(teacher.config.to_dict() | {"student": True}))
    else:
        model_config = rectifier_config(config, pretrained, context_tokens)
    torch.manual_seed(config.seed)  # the same initial weights whether or not hypotheses were made first
    if teacher is None:
        model = Rectifier(backbone, model_config, phrases).to(device)
        trainer = ReclipTrainer(model, names, config, info, device, amp)
    else:
        model = _student(backbone, model_config, teacher, device)
        trainer = ReclipDistilTrainer(model, teacher, names, config, info, device, amp)
    if checkpoint is not None:
        resume_trainer(trainer, checkpoint, Path(resume) / CHECKPOINT)
    say(f"{len(paths)} images with hypotheses ({left_out} without left out), {len(names)} classes, "
        f"{model_config.context_tokens} context tokens")
    start = trainer.iteration
    trainer.begin(run_dir, {"method": METHOD, "pretrained": pretrained, "classes": names,
                            "hypotheses": str(source_hypotheses)})
    dataset = HypothesisCrops(paths, chosen, config.crop, (config.resize_min, config.resize_max), config.seed)
    batches = crop_loader(dataset, start, config.iterations, config.batch_size, info.rank, info.world,
                          config.loader_workers, pin_memory=device.type == "cuda")
    stopped = trainer.run(batches, progress)
    seconds = trainer.seconds
    done = trainer.iteration - start
    rate = done / seconds if seconds > 0 else 0.0
    if info.main:
        trainer.save()
        trainer.save_final()
        write_manifest(run_dir, "zutis.run", model=ModelSpec(config.model, pretrained).describe(),
                       inputs=[config.source], params={"method": METHOD} | asdict(config),
                       summary={"method": METHOD, "iterations": trainer.iteration, "stopped": stopped,
                                "seconds_this_session": round(seconds, 2),
                                "iterations_per_second": round(rate, 4) if seconds > 0 else None,
                                "classes": names, "final": {k: round(v, 6) for k, v in trainer.last.items()},
                                "images": len(paths), "images_without_hypotheses": left_out,
                                "hypotheses": str(source_hypotheses.resolve()),
                                "context_tokens": model_config.context_tokens,
                                "processes": info.world, "device": str(device), "last_eval": None})
    barrier(info)
    return TrainResult(run_dir, trainer.iteration, stopped, seconds, rate, trainer.last, info.main)


def _teacher_checkpoint(config: ReclipTrainConfig) -> Path | None:
    """The teacher's ``model.pt`` (``--teacher``: a rectification run or its file), or ``None``."""
    if not config.teacher:
        return None
    from zutiscli.artefacts.checkpoint import check_method
    from zutiscli.artefacts.runs import resolve_checkpoint

    path = resolve_checkpoint(config.teacher)
    data = load_checkpoint(path, mmap=True)
    check_method(data, path, METHOD)
    if (data.get("config") or {}).get("student"):
        raise UsageError(f"--teacher {config.teacher}: a distilled student; distil from a rectification run")
    return path


def _check_teacher_source(config: ReclipTrainConfig, teacher: Path, given: tuple | None) -> None:
    """A distillation's SOURCE (``given``: its :func:`training_images`): hypotheses of the teacher's
    classes, in its order."""
    if given is None:
        raise UsageError(f"{config.source}: with --teacher, give a `zutis hypotheses` directory of the teacher's "
                         f"classes as SOURCE, or none (the teacher's own hypotheses)")
    names = given[0]
    trained = [str(c) for c in load_checkpoint(teacher, mmap=True)["classes"]]
    if names != trained:
        raise UsageError(f"{config.source}: hypotheses of {', '.join(names)}, but the teacher was trained for "
                         f"{', '.join(trained)}; distil on hypotheses of the teacher's classes")


def _teacher_hypotheses(teacher: Path) -> str:
    """The hypotheses the teacher's run trained on (its manifest says where)."""
    try:
        where = read_manifest(teacher.parent, "zutis.run").summary.get("hypotheses")
    except ArtefactError:
        where = None
    if not where or not is_hypotheses(where):
        raise UsageError(f"--teacher {teacher}: its run's hypotheses cannot be found; give SOURCE (a `zutis "
                         f"hypotheses` directory of the teacher's classes)")
    return str(where)


def _student(backbone: Any, config: Any, teacher: Any, device: Any) -> Any:
    """A student rectifier over ``backbone`` (learning) with the teacher's Query head, bias and decoder."""
    from zutiscli.models.reclip import Rectifier

    backbone.model.visual.train()
    model = Rectifier(backbone, config, teacher.phrases, query=teacher.query).to(device)
    missing, unexpected = model.load_state_dict(teacher.state_dict(), strict=False)
    if unexpected or any(not key.startswith("tower.") for key in missing):
        raise ArtefactError("the teacher's weights do not fit its own architecture; the file is damaged")
    return model


def plan_reclip(config: ReclipTrainConfig | None, output: str | Path | None = None,
                resume: str | Path | None = None) -> Plan:
    """What ``zutis train --method reclip`` would do (``--dry-run``): its checks, no weights loaded, nothing written."""
    start, notes = 0, []
    if resume is not None:
        checkpoint = load_checkpoint(resume_checkpoint_path(resume), mmap=True)
        saved = ReclipTrainConfig.from_dict(checkpoint["train_config"], where=str(Path(resume) / CHECKPOINT))
        if config is not None and config.iterations > saved.iterations:
            saved.iterations = config.iterations
        config, start = saved, int(checkpoint["iteration"])
        writes = {"path": str(resume), "state": "existing"}
    elif config is None:
        raise UsageError("give a training config, or a run directory to resume")
    else:
        refuse_unfinished_run(output)
        writes = output_plan(output, "train")
    config.validate()
    if is_hypotheses(config.source):
        names, _, paths, _, left_out = training_images(Path(config.source))
        read = input_entry(config.source, "zutis.hypotheses", classes=len(names), images=len(paths),
                           images_without_hypotheses=left_out)
    else:
        images = _image_folder(config) if resume is None else []
        names = [q.name for q in _queries(config)]
        read = input_entry(config.source, "images", images=len(images))
        notes.append("label hypotheses are made first, into the run's hypotheses/")
    from zutiscli.models.clip import default_pretrained
    from zutiscli.models.device import resolve_device

    device = resolve_device(config.device)
    model = weights_plan(config.model, config.pretrained or default_pretrained(config.model)) | {"device": str(device)}
    params = {"method": METHOD, "classes": names, "iterations": config.iterations, "batch_size": config.batch_size,
              "crop": config.crop, "lr": config.lr, "bias": config.bias, "position": config.position,
              "mask_decoder": config.mask_decoder}
    remaining = max(0, config.iterations - start)
    work = {"iterations_done": start, "iterations_to_run": remaining, "crops": remaining * config.batch_size}
    return Plan("train", [read], writes, model, params, work, notes)
