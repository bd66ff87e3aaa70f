"""`zutis train`: train the ZUTIS model on pseudo-labels, from one CPU to many GPUs.

Data: online copy-paste scenes from a pseudo-label directory (default), a copy-paste dataset
written by ``zutis copypaste``, or ``zutis synth scenes`` (supervised by their ground truth: the
reference that shows what the same model and budget reach without the unsupervised chain); see
:mod:`zutiscli.data.scenes` for the deterministic stream of scenes that makes a resumed or
distributed run see exactly the scenes of a single uninterrupted run.

Recipe: :class:`TrainConfig` (:mod:`zutiscli.pipeline.train_config`), whose defaults are the official ones (AdamW, lr 5e-5 for the heads
and 0.1x for the CLIP image encoder, weight decay 0.05, poly schedule (power 0.9, floor 1e-6) by
iteration, 20k iterations, batch 8, 384 px); recipes shipped as YAML files (``--config official``,
``demo``, ``demo-fast``: :mod:`zutiscli.recipes`) or given as files (:func:`load_recipe`).

This stage wires the pieces: the trainer (:mod:`zutiscli.engine.trainer`: devices, DDP under
``torchrun``, AMP, steps, checkpoints, resume, signals, ``metrics.jsonl``), the crop classifier's
adapter fitted before training (:mod:`zutiscli.engine.crop_adapter`) and the held-out evaluation
(:mod:`zutiscli.pipeline.held_out`).

Run directory (kind ``zutis.run``, :mod:`zutiscli.artefacts.runs`): ``config.json``,
``metrics.jsonl``, ``checkpoints/last.pt`` (everything needed for ``--resume``), ``model.pt`` (the
final model for ``zutis predict``), ``manifest.json`` (written when the run finishes), and with
held-out evaluation (``eval_images`` / ``eval_gt``, every ``eval_every`` iterations and at the end)
``evals/iter-NNNNNN/`` and ``{"iteration": N, "eval": headline}`` lines in ``metrics.jsonl``.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from zutiscli.artefacts.checkpoint import check_weights_fit, load_checkpoint
from zutiscli.artefacts.class_bank import SourceBank, source_class_bank
from zutiscli.artefacts.lock import holding_locks, lock_directory
from zutiscli.artefacts.manifest import read_manifest, write_manifest
from zutiscli.artefacts.rundir import check_output_dir, prepare_output_dir
from zutiscli.artefacts.runs import CHECKPOINT, METRICS, refuse_unfinished_run, resume_checkpoint_path, run_method
from zutiscli.data.copypaste import ObjectPool
from zutiscli.data.scenes import labelled_scenes, object_labels, scene_loader, source_manifest, training_scenes
from zutiscli.engine.crop_adapter import fit_on_scenes
from zutiscli.pipeline.held_out import HeldOut, drop_stale_evals, evaluate_model, held_out_set, last_eval
from zutiscli.engine.trainer import DistInfo, Progress, Trainer, amp_dtype, barrier, broadcast, init_distributed
from zutiscli.errors import ArtefactError, UsageError
from zutiscli.models.clip import ModelSpec, load_backbone, named_by
from zutiscli.models.crop_classifier import CropAdapter
from zutiscli.models.device import resolve_device
from zutiscli.models.zutis import ZutisConfig, ZutisModel
from zutiscli.pipeline.plan import Plan, input_entry, output_plan, weights_plan
from zutiscli.pipeline.train_config import TrainConfig, load_recipe  # noqa: F401 - exported here too


@dataclass
class TrainResult:
    """What a run did: directory, iterations done, why it stopped, timing, final loss terms."""

    path: Path
    iteration: int
    stopped: str
    seconds: float
    iterations_per_second: float
    last: dict[str, float] = field(default_factory=dict)
    main: bool = True  # False on the other ranks of a distributed run (they print nothing)


def _source_plan(config: TrainConfig) -> tuple[dict[str, Any], list[str]]:
    """The :attr:`Plan.reads` entry of a training source, checked as a run checks it, and its classes."""
    manifest = source_manifest(config.source)
    if manifest.kind in ("zutis.pseudolabels", "zutis.clusters"):
        labels = object_labels(config.source, manifest)
        pool = ObjectPool(labels)
        return input_entry(config.source, manifest.kind, classes=len(labels.classes), objects=len(labels.objects),
                           images=len(pool.image_objects)), list(labels.classes)
    coco, classes = labelled_scenes(config.source, manifest)
    return input_entry(config.source, manifest.kind, classes=len(classes), scenes=len(coco["images"]),
                       instances=len(coco["annotations"])), classes


def plan_training(config: TrainConfig | None, output: str | Path | None = None,
                  resume: str | Path | None = None) -> Plan:
    """What ``zutis train`` would do (``--dry-run``): the checks of a real run, no weights loaded, nothing written.

    ``config`` and ``resume`` mean what they mean to :func:`train`. A resumed run's checkpoint is
    memory-mapped for its iteration and recipe, not read.
    """
    start = 0
    notes: list[str] = []
    if resume is not None:
        run_dir = Path(resume)
        checkpoint = load_checkpoint(resume_checkpoint_path(run_dir), mmap=True)
        saved = TrainConfig.from_dict(checkpoint["train_config"], where=str(run_dir / CHECKPOINT))
        if config is not None and config.iterations > saved.iterations:
            saved.iterations = config.iterations
        config = saved
        start = int(checkpoint["iteration"])
        pretrained = checkpoint["config"]["backbone"]["pretrained"]
        writes = {"path": str(run_dir), "state": "existing"}
    elif config is None:
        raise UsageError("give a training config, or a run directory to resume")
    config.validate()
    held_out = held_out_set(config.eval_images, config.eval_gt, config.eval_classes)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(config.device)
    if config.batch_size % world:
        raise UsageError(f"--batch-size {config.batch_size} must be divisible by the {world} processes")
    amp = amp_dtype(config.precision, device)
    if resume is None:
        from zutiscli.pipeline.index import default_pretrained

        pretrained = config.pretrained or default_pretrained(config.model)
        refuse_unfinished_run(output)
        writes = output_plan(output, "train")
    read, classes = _source_plan(config)
    model = weights_plan(config.model, pretrained) | {
        "device": str(device), "autocast": {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(amp, "none")}
    remaining = max(0, config.iterations - start)
    if resume is not None and remaining == 0:
        notes.append(f"the run is already at iteration {start} of {config.iterations}; pass a larger --iterations to extend it")
    params = {"classes": classes, "iterations": config.iterations, "batch_size": config.batch_size,
              "crop": config.crop, "lr": config.lr, "processes": world,
              "crop_adapter_scenes": config.crop_adapter_scenes if resume is None else None,
              "workers": config.loader_workers}
    work = {"iterations_done": start, "iterations_to_run": remaining, "scenes": remaining * config.batch_size,
            "checkpoints": remaining // config.checkpoint_every + 1}
    reads = [read]
    if held_out is not None:
        reads.append(input_entry(held_out.gt, "held-out set", images=len(held_out.images)))
        params["eval_every"] = config.eval_every
        params["eval_classes"] = [q.name for q in held_out.queries] if held_out.queries else classes
        every = config.eval_every
        periodic = (config.iterations // every - start // every) if every else 0
        final = 0 if every and config.iterations % every == 0 and remaining else 1
        work["evaluations"] = periodic + final
    return Plan("train", reads, writes, model, params, work, notes)


@holding_locks
def train(
    config: TrainConfig | None,
    output: str | Path | None = None,
    *,
    resume: str | Path | None = None,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Run (or resume) a training run; returns the run directory and what happened.

    With ``resume`` (a run directory) the run continues with its own saved recipe; ``config`` may
    then be ``None``, and if given only its ``iterations`` count, extending the run when larger.
    ``progress(iteration, total, losses)`` is called after every step, ``log(message)`` with
    what happens beside the steps (the crop adapter, evaluations); both on rank 0 only.
    """
    say = log or (lambda message: None)
    method = run_method(resume) if resume is not None else config.method if config is not None else "zutis"
    if method != "zutis":
        raise UsageError(f"method {method!r} trains with zutiscli.pipeline.train_reclip.train_reclip "
                         f"(the Python API: zutiscli.train_reclip)")
    config, checkpoint = _recipe(config, resume)
    if checkpoint is not None and int(os.environ.get("RANK", "0")) == 0:
        lock_directory(resume)  # one writer per run; clears what a killed writer left half-written
    config.validate()
    held_out = held_out_set(config.eval_images, config.eval_gt, config.eval_classes)  # fails before anything loads
    info, device, amp = start_processes(config, output, checkpoint is None)
    pretrained = _pretrained(config, checkpoint)
    dataset, classes, kind = training_scenes(config.source, config.copypaste(), config.crop, config.seed,
                                             config.iterations * config.batch_size)
    bank = source_class_bank(config.source)  # clusters (or pseudo-labels re-mined from a model on clusters)
    with named_by(Path(resume) / CHECKPOINT, model="its recipe names model", weights="its recipe names weights") \
            if checkpoint is not None else contextlib.nullcontext():
        backbone = load_backbone(ModelSpec(config.model, pretrained), device=device, dtype=torch.float32)
    if checkpoint is not None:
        adapter = _saved_adapter(checkpoint, Path(resume) / CHECKPOINT)
    elif bank is not None:  # the adapter names crops by their classes' text, which clusters have not
        adapter = None
        if config.crop_adapter_scenes:
            say("clusters have no class names to fit the crop adapter on: none is fitted")
    else:  # fitted before the decoder is initialised, drawing no random number the training draws
        adapter = _fitted_adapter(config, backbone, dataset, classes, info, say)
    model_config = config.zutis(pretrained)
    if bank is not None:
        model_config.class_bank, model_config.class_bank_learned = list(classes), config.classifier == "learned"
    model = ZutisModel(backbone, model_config).to(device)
    if bank is not None and checkpoint is None:
        model.set_class_bank(cluster_classifier(config, pretrained, bank, len(classes), backbone.embed_dim).to(device))
    model.crop_adapter = adapter
    model.stuff_probe = _stuff_probe(config.source, checkpoint, Path(resume) / CHECKPOINT if resume else None)
    trainer = Trainer(model, classes, config, info, device, amp)
    if checkpoint is not None:
        _resume(trainer, checkpoint, Path(resume) / CHECKPOINT)
        run_dir = Path(resume)
    else:
        run_dir = _new_run_dir(output, info)
    start = trainer.iteration
    trainer.begin(run_dir, {"pretrained": pretrained, "classes": classes, "source_kind": kind},
                  drop_after=drop_stale_evals)
    batches = scene_loader(dataset, start, config.iterations, config.batch_size, info.rank, info.world,
                           config.loader_workers, pin_memory=device.type == "cuda")

    def evaluate(iteration: int) -> None:
        evaluate_model(model, held_out, classes, run_dir, iteration, device, say, inference=config.inference)

    stopped = trainer.run(batches, progress, evaluate if held_out is not None else None)
    seconds = trainer.seconds
    training_seconds = seconds - trainer.eval_seconds  # the rates count training steps, not held-out evaluation
    done = trainer.iteration - start
    rate = done / training_seconds if training_seconds > 0 else 0.0
    if info.main:
        trainer.save()
        trainer.save_final()
        evaluation = _final_evaluation(held_out, evaluate, run_dir, trainer.iteration)
        write_manifest(run_dir, "zutis.run", model=ModelSpec(config.model, pretrained).describe(),
                       inputs=[config.source], params=asdict(config),
                       summary={"iterations": trainer.iteration, "stopped": stopped,
                                "seconds_this_session": round(seconds, 2),
                                "iterations_per_second": round(rate, 4) if training_seconds > 0 else None,
                                "classes": classes, "final": {k: round(v, 6) for k, v in trainer.last.items()},
                                "processes": info.world, "device": str(device), "last_eval": evaluation,
                                "crop_adapter": adapter.summary() if adapter is not None else None})
    barrier(info)
    return TrainResult(run_dir, trainer.iteration, stopped, seconds, rate, trainer.last, info.main)


def start_processes(config: Any, output: str | Path | None, new_run: bool) -> tuple[DistInfo, torch.device, Any]:
    """This process's place in the run, its device and autocast dtype, the random seed set; a new
    run's ``-o`` refused (by rank 0) before the data and the model load."""
    info, device = init_distributed(config.device)
    if config.batch_size % info.world:
        raise UsageError(f"--batch-size {config.batch_size} must be divisible by the {info.world} processes")
    amp = amp_dtype(config.precision, device)
    torch.manual_seed(config.seed)
    if new_run and info.main:
        refuse_unfinished_run(output)
        check_output_dir(output, "train")
    return info, device, amp


def _recipe(config: TrainConfig | None, resume: str | Path | None) -> tuple[TrainConfig, dict[str, Any] | None]:
    """The recipe of the run and, when resuming, the checkpoint it continues from.

    A resumed run keeps its saved recipe; a larger ``config.iterations`` extends it.
    """
    if resume is None:
        if config is None:
            raise UsageError("give a training config, or a run directory to resume")
        return config, None
    checkpoint, where = training_checkpoint(resume)
    ZutisConfig.from_dict(checkpoint["config"], where=where)  # checked before its fields are read
    saved = TrainConfig.from_dict(checkpoint["train_config"], where=where)
    if config is not None and config.iterations > saved.iterations:
        saved.iterations = config.iterations  # a resumed run may be extended
    return saved, checkpoint


def training_checkpoint(run_dir: str | Path) -> tuple[dict[str, Any], str]:
    """The checkpoint a run directory resumes from, and its path for messages; refused when it is
    not a training checkpoint (a ``model.pt`` put in its place, say)."""
    path = resume_checkpoint_path(run_dir)
    checkpoint = load_checkpoint(path)
    lacking = [key for key in ("train_config", "optimizer", "rng", "iteration") if key not in checkpoint]
    if lacking:
        raise ArtefactError(f"{Path(run_dir) / CHECKPOINT}: has no {lacking[0]!r}, so it is not a training checkpoint "
                            f"(a model.pt, say); resume from the checkpoint the run wrote, or start a new run")
    return checkpoint, str(Path(run_dir) / CHECKPOINT)


def _resume(trainer: Trainer, checkpoint: dict[str, Any], path: Path) -> None:
    """Continue ``trainer`` from ``checkpoint`` (:func:`resume_trainer`), naming the config fields
    that differ when the weights do not fit."""
    saved = ZutisConfig.from_dict(checkpoint["config"], where=str(path))
    resume_trainer(trainer, checkpoint, path, saved.differences(trainer.model.config, "the weights' config",
                                                                "the recipe"))


def resume_trainer(trainer: Trainer, checkpoint: dict[str, Any], path: Path, differences: list[str] | None = None
                   ) -> None:
    """Continue ``trainer`` from ``checkpoint``; state that does not fit the run's model (a checkpoint
    of another run put in its place, say) is one error naming the file and what differs."""
    remedy = "resume a run only from the checkpoint it wrote itself, or start a new run"
    check_weights_fit(trainer.model, checkpoint["model"], path, model_from="its training recipe",
                      differences=differences, remedy=remedy)
    problem = _optimiser_misfit(trainer.optimiser, checkpoint["optimizer"])
    if problem:
        raise ArtefactError(f"{path}: its optimiser state does not fit the model: {problem}; {remedy}")
    try:
        trainer.resume(checkpoint)
    except (ValueError, RuntimeError, KeyError, TypeError, IndexError) as exc:
        raise ArtefactError(f"{path}: its optimiser or random-generator state cannot be restored "
                            f"({str(exc).splitlines()[0][:160]}); {remedy}") from None


def _optimiser_misfit(optimiser: torch.optim.Optimizer, saved: dict[str, Any]) -> str | None:
    """Why a saved optimiser state does not fit ``optimiser``'s parameters (None when it does)."""
    params = [param for group in optimiser.param_groups for param in group["params"]]
    try:
        ids = [number for group in saved["param_groups"] for number in group["params"]]
        if len(ids) != len(params):
            return f"it holds {len(ids)} parameters, the model {len(params)}"
        for number, param in zip(ids, params):
            for key, value in saved["state"].get(number, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() and value.shape != param.shape:
                    return (f"its {key} of parameter {number} is {list(value.shape)}, the parameter "
                            f"{list(param.shape)}")
    except (KeyError, TypeError, AttributeError):
        return "it is not the state of an optimiser"
    return None


def _pretrained(config: TrainConfig, checkpoint: dict[str, Any] | None) -> str:
    """The image encoder's weights: a resumed run's own, else ``--pretrained`` or the model's default."""
    if checkpoint is not None:
        return checkpoint["config"]["backbone"]["pretrained"]
    from zutiscli.pipeline.index import default_pretrained

    return config.pretrained or default_pretrained(config.model)


def cluster_classifier(config: TrainConfig, pretrained: str, bank: SourceBank, count: int, dim: int) -> torch.Tensor:
    """``(count, dim)`` first rows of the class bank of a run on clusters: the source's ``bank`` (the
    clusters' centroids, or the class bank re-mined pseudo-labels carry) when it holds CLIP image
    embeddings of the model being trained (``--classifier centroids``, or the start of ``learned``),
    else, for ``learned`` only, seeded random rows.

    Raises :class:`UsageError` for ``centroids`` of other features or of another model.
    """
    from zutiscli.artefacts.manifest import same_model

    usable = bank.features == "clip" and bank.rows.shape == (count, dim) and same_model(
        bank.model, {"name": config.model, "pretrained": pretrained})
    if usable:
        return torch.from_numpy(bank.rows)
    if config.classifier == "centroids":
        raise UsageError(f"{config.source}: its centroids are {bank.features} features of "
                         f"{bank.model.get('name')}/{bank.model.get('pretrained')}, not CLIP image embeddings of "
                         f"{config.model}/{pretrained}; train with that CLIP, or with --classifier learned")
    generator = torch.Generator().manual_seed(config.seed)
    return torch.randn(count, dim, generator=generator)


def _fitted_adapter(config: TrainConfig, backbone: Any, dataset: Any, classes: list[str], info: DistInfo,
                    say: Callable[[str], None]) -> CropAdapter | None:
    """A new run's crop adapter: fitted by rank 0 on the first ``crop_adapter_scenes`` scenes, if any."""
    if not info.main or config.crop_adapter_scenes == 0:
        return None
    return fit_on_scenes(backbone, dataset, classes, config.crop_adapter_scenes, config.crop_adapter_decay,
                         config.crop_adapter_views, config.seed, say)


def _new_run_dir(output: str | Path | None, info: DistInfo) -> Path:
    """A new run's directory, made by rank 0 and told to the other ranks."""
    if info.main:
        refuse_unfinished_run(output)
    run_dir = prepare_output_dir(output, "train") if info.main else None
    return Path(broadcast(str(run_dir) if run_dir else None, info))


def _stuff_probe(source: str, checkpoint: dict[str, Any] | None, where: Path | None) -> Any:
    """The stuff clusters that go with the model: a resumed run's, else the source's (clusters made
    with ``--stuff-k``); ``None`` for any other source."""
    from zutiscli.models.stuff_probe import StuffProbe

    if checkpoint is not None:
        saved = checkpoint.get("stuff_probe")
        return StuffProbe.from_dict(saved, where=str(where)) if saved is not None else None
    if read_manifest(source).kind != "zutis.clusters":
        return None
    from zutiscli.artefacts.clusters import read_clusters

    stuff = read_clusters(source).stuff
    return StuffProbe.from_clusters(stuff) if stuff is not None else None


def _saved_adapter(checkpoint: dict[str, Any], where: Path) -> CropAdapter | None:
    """The crop adapter a resumed run's checkpoint holds, if any."""
    saved = checkpoint.get("crop_adapter")
    return CropAdapter.from_dict(saved, where=str(where)) if saved is not None else None


def _final_evaluation(held_out: HeldOut | None, evaluate: Callable[[int], Any], run_dir: Path,
                      iteration: int) -> dict[str, Any] | None:
    """The run's last held-out evaluation, made now unless the loop just made it at ``iteration``."""
    evaluation = last_eval(run_dir / METRICS)
    if held_out is not None and (evaluation is None or evaluation["iteration"] != iteration):
        evaluate(iteration)
        evaluation = last_eval(run_dir / METRICS)
    return evaluation
