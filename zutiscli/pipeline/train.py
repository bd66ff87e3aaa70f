"""`zutis train`: train the ZUTIS model on pseudo-labels, from one CPU to many GPUs.

Data: online copy-paste scenes from a pseudo-label directory (default), a copy-paste dataset
written by ``zutis copypaste``, or ``zutis synth scenes`` (supervised by their ground truth: the
reference that shows what the same model and budget reach without the unsupervised chain).
Iteration ``t`` uses items ``t * batch + 0 .. t * batch + batch-1`` of a deterministic stream,
split across data-parallel ranks, so a resumed or distributed run sees exactly the scenes of a
single uninterrupted run.

Optimisation (official defaults): AdamW, lr 5e-5 for the heads and 0.1x for the CLIP image
encoder, weight decay 0.05, poly schedule (power 0.9, floor 1e-6) by iteration, 20k iterations,
batch 8, 384 px. CUDA runs use autocast (fp16 with a grad scaler, or bf16), pinned memory and
non-blocking copies; ``torchrun`` gives DistributedDataParallel (NCCL on GPUs, gloo on CPUs) with
only rank 0 writing.

Run directory (kind ``zutis.run``): ``config.json``, ``metrics.jsonl``, ``checkpoints/last.pt``
(everything needed for ``--resume``), ``model.pt`` (the final model for ``zutis predict``),
``manifest.json`` (written when the run finishes), and with periodic evaluation
``evals/iter-NNNNNN/`` (``predictions/`` as ``zutis predict`` writes them, ``metrics.json`` as
``zutis evaluate`` writes it).

Periodic evaluation (``eval_images`` / ``eval_gt``): every ``eval_every`` iterations and at the
end, rank 0 runs the model being trained through :func:`zutiscli.pipeline.predict.predict`
(the post-processing of ``zutis predict``) on a held-out set, scores it with
:func:`zutiscli.pipeline.evaluate.evaluate`, and appends ``{"iteration": N, "eval": headline}``
to ``metrics.jsonl``. The random number generators are saved before and restored after, so a run
with evaluation trains exactly the weights of a run without.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist

from zutiscli.artefacts.atomic import atomic_write_json
from zutiscli.artefacts.checkpoint import load_checkpoint, save_checkpoint
from zutiscli.artefacts.coco import load_coco
from zutiscli.artefacts.labelmap import read_label_png
from zutiscli.artefacts.manifest import MANIFEST_NAME, read_manifest, resolve_relative, write_manifest
from zutiscli.artefacts.pseudolabels import load_pseudolabels
from zutiscli.artefacts.rundir import check_output_dir, prepare_output_dir
from zutiscli.artefacts.runs import CHECKPOINT, EVALS, FINAL, METRICS, latest_run, resume_checkpoint_path  # noqa: F401
from zutiscli.data.copypaste import CopyPasteConfig, CopyPasteDataset, ObjectPool
from zutiscli.engine.inference import check_recipe
from zutiscli.errors import ArtefactError, UsageError, ZutisError
from zutiscli.models.clip import ModelSpec, load_backbone
from zutiscli.models.crop_classifier import CropAdapter, fit_crop_adapter
from zutiscli.models.device import resolve_device
from zutiscli.models.losses import zutis_loss
from zutiscli.models.zutis import ZutisConfig, ZutisModel
from zutiscli.ops.masks import decode_mask
from zutiscli.pipeline.plan import Plan, input_entry, output_plan, weights_plan



@dataclass
class TrainConfig:
    """Every option of ``zutis train`` (saved in the run directory and in checkpoints)."""

    source: str = ""
    model: str = "ViT-B-16"
    pretrained: str | None = None
    num_queries: int = 100
    decoder_layers: int = 6
    decoder_heads: int = 8
    decoder_ffn: int = 2048
    mlp_hidden: int = 256
    temperature: float = 1.0
    stop_gradient: bool = True
    positional_values: bool = False
    iterations: int = 20_000
    batch_size: int = 8
    crop: int = 384
    lr: float = 5e-5
    encoder_lr_mult: float = 0.1
    weight_decay: float = 0.05
    poly_power: float = 0.9
    min_lr: float = 1e-6
    lambda_mask: float = 1.0
    max_objects: int = 10
    same_class_prob: float = 0.5
    scale_min: float = 0.1
    scale_max: float = 1.0
    canvas_min: float = 1.0
    canvas_max: float = 1.0
    outside: float = 0.0
    crop_adapter_scenes: int = 1000
    crop_adapter_decay: float = 0.01
    crop_adapter_views: int = 3
    seed: int = 0
    workers: int | None = None
    device: str = "auto"
    precision: str = "auto"
    checkpoint_every: int = 1000
    log_every: int = 10
    max_minutes: float | None = None
    eval_images: str | None = None
    eval_gt: str | None = None
    eval_every: int = 0
    eval_classes: str | None = None
    inference: dict[str, Any] = field(default_factory=dict)

    @property
    def evaluates(self) -> bool:
        """Whether the run evaluates on a held-out set (periodically with ``eval_every``, always at the end)."""
        return bool(self.eval_images or self.eval_gt)

    @property
    def loader_workers(self) -> int:
        """Data-loading processes: ``workers``, or by default one per CPU but one, in 1..8."""
        return self.workers if self.workers is not None else max(1, min(8, (os.cpu_count() or 2) - 1))

    def validate(self) -> None:
        positive = ("iterations", "batch_size", "crop", "num_queries", "decoder_layers", "decoder_heads",
                    "decoder_ffn", "mlp_hidden", "checkpoint_every", "log_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(self, name)})")
        for name in ("lr", "temperature"):
            if not getattr(self, name) > 0:
                raise UsageError(f"--{name} must be > 0 (got {getattr(self, name)})")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise UsageError(f"--precision must be auto, fp32, bf16 or fp16 (got {self.precision!r})")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise UsageError(f"--max-minutes must be > 0 (got {self.max_minutes})")
        if self.eval_every < 0:
            raise UsageError(f"--eval-every must be >= 0 (got {self.eval_every})")
        if self.crop_adapter_scenes < 0:
            raise UsageError(f"--crop-adapter-scenes must be >= 0 (got {self.crop_adapter_scenes}); 0 fits no adapter")
        if not self.crop_adapter_decay >= 0:
            raise UsageError(f"--crop-adapter-decay must be >= 0 (got {self.crop_adapter_decay})")
        if self.crop_adapter_views < 0:
            raise UsageError(f"--crop-adapter-views must be >= 0 (got {self.crop_adapter_views}); 0 fits the adapter "
                             "on the crops as they are")
        if (self.eval_every or self.eval_classes is not None) and not self.evaluates:
            given = "--eval-every" if self.eval_every else "--eval-classes"
            raise UsageError(f"{given} needs a held-out set: --eval-images DIR (or --eval-gt)")
        check_recipe(self.inference, where="inference")
        self.copypaste().validate()

    def copypaste(self) -> CopyPasteConfig:
        return CopyPasteConfig(size=self.crop, max_objects=self.max_objects, same_class_prob=self.same_class_prob,
                               scale_range=(self.scale_min, self.scale_max),
                               canvas_scale=(self.canvas_min, self.canvas_max), outside=self.outside)

    def zutis(self, pretrained: str) -> ZutisConfig:
        return ZutisConfig(
            backbone={"name": self.model, "pretrained": pretrained},
            num_queries=self.num_queries, decoder_layers=self.decoder_layers, decoder_heads=self.decoder_heads,
            decoder_ffn=self.decoder_ffn, mlp_hidden=self.mlp_hidden, temperature=self.temperature,
            stop_gradient=self.stop_gradient, positional_values=self.positional_values,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "config") -> "TrainConfig":
        """A config from option values (a recipe file, flags, a checkpoint), each checked against its type.

        Integers are accepted for float options; anything else of the wrong type (``iterations:
        abc`` in a recipe) is a :class:`UsageError` naming ``where`` and the option.
        """
        kinds = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(data) - set(kinds))
        if unknown:
            raise UsageError(f"{where}: unknown option(s) {', '.join(unknown)}")
        values = {name: _typed(value, kinds[name], name, where) for name, value in data.items() if name != "inference"}
        if "inference" in data:
            values["inference"] = check_recipe(data["inference"] or {}, where=where)
        return cls(**values)


_TYPE_NAMES = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}


def _typed(value: Any, annotation: Any, name: str, where: str) -> Any:
    """``value`` checked against a :class:`TrainConfig` field annotation (``"int"``, ``"float | None"``, ...)."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    parts = [part.strip() for part in text.split("|")]
    optional = "None" in parts
    base = next((part for part in parts if part != "None"), "str")
    if value is None and optional:
        return value
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if base == "float" and is_number:
        return float(value)
    if base == "int" and is_number and float(value).is_integer():
        return int(value)
    if (base == "bool" and isinstance(value, bool)) or (base == "str" and isinstance(value, str)):
        return value
    wanted = _TYPE_NAMES.get(base, base) + (" or nothing" if optional else "")
    raise UsageError(f"{where}: {name.replace('_', '-')} must be {wanted} (got {value!r})")


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a training recipe (YAML or TOML) into a flat dict of :class:`TrainConfig` fields.

    Keys may use dashes or underscores (``batch-size`` = ``batch_size``).
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--config {path}: no such file")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            raise UsageError(f"--config {path}: use a .yaml, .yml or .toml file")
    except UsageError:
        raise
    except Exception as exc:  # noqa: BLE001 - YAML and TOML parsers raise their own types
        raise UsageError(f"--config {path}: cannot be parsed ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UsageError(f"--config {path}: must hold a mapping of option names to values")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


# ---- distributed ----------------------------------------------------------------------------
@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_spec: str) -> tuple[DistInfo, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), resolve_device(device_spec)
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    device = resolve_device(device_spec)
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return info, device


def _broadcast(value: Any, info: DistInfo) -> Any:
    if info.world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ---- data -----------------------------------------------------------------------------------
class IterationBatches(torch.utils.data.Sampler):
    """Index lists of iterations ``start .. total-1``: this rank's share of ``t * batch + j``."""

    def __init__(self, start: int, total: int, batch: int, rank: int = 0, world: int = 1):
        self.start, self.total, self.batch, self.rank, self.world = start, total, batch, rank, world

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    def __iter__(self):
        for iteration in range(self.start, self.total):
            yield [iteration * self.batch + j for j in range(self.rank, self.batch, self.world)]


def load_scenes(directory: Path) -> dict[str, Any]:
    """The COCO file of a scene directory (``zutis copypaste`` or ``zutis synth scenes``), checked for training.

    Raises :class:`ArtefactError` naming the file when it lists no image or an image names no
    semantic map (its ``semantic`` field).
    """
    path = directory / "instances.json"
    coco = load_coco(path)
    if not coco["images"]:
        raise ArtefactError(f"{directory}: the dataset holds no images")
    unnamed = next((image for image in coco["images"] if "semantic" not in image), None)
    if unnamed is not None:
        raise ArtefactError(f"{path}: image {unnamed['file_name']} names no semantic map; "
                            "write the scenes again with this version of zutis")
    return coco


class DiskScenes(torch.utils.data.Dataset):
    """A ``zutis copypaste`` dataset read back; global item ``g`` walks seeded per-epoch permutations."""

    def __init__(self, directory: Path, size: int, seed: int):
        self.directory = directory
        coco = load_scenes(directory)
        self.images = sorted(coco["images"], key=lambda img: img["id"])
        self.categories = coco["categories"]
        self.annotations: dict[int, list[dict]] = {}
        for ann in coco["annotations"]:
            self.annotations.setdefault(ann["image_id"], []).append(ann)
        self.size = size
        self.seed = seed
        self._perms: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return 2**62

    def _position(self, index: int) -> int:
        epoch, offset = divmod(index, len(self.images))
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(len(self.images))}
        return int(self._perms[epoch][offset])

    def __getitem__(self, index: int):
        import torch.nn.functional as F

        from zutiscli.data.images import load_image

        record = self.images[self._position(index)]
        image = torch.from_numpy(np.asarray(load_image(resolve_relative(self.directory, record["file_name"]))).copy())
        image = image.permute(2, 0, 1).float().div_(255)
        semantic = torch.from_numpy(read_label_png(resolve_relative(self.directory, record["semantic"])).astype(np.int64))
        anns = self.annotations.get(record["id"], [])
        masks = torch.from_numpy(np.stack([decode_mask(a["segmentation"]) for a in anns])) if anns else \
            torch.zeros((0, *semantic.shape), dtype=torch.bool)
        classes = torch.tensor([a["category_id"] - 1 for a in anns], dtype=torch.int64)
        if image.shape[-1] != self.size or image.shape[-2] != self.size:
            image = F.interpolate(image[None], size=(self.size, self.size), mode="bilinear", align_corners=False)[0]
            semantic = F.interpolate(semantic[None, None].float(), size=(self.size, self.size), mode="nearest")[0, 0].long()
            masks = F.interpolate(masks[None].float(), size=(self.size, self.size), mode="nearest")[0] > 0.5
        return image, semantic, masks, classes


def _collate(items):
    images = torch.stack([item[0] for item in items])
    semantic = torch.stack([item[1] for item in items])
    return images, semantic, [item[2] for item in items], [item[3] for item in items]


def _ignore_sigint(_: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _source(config: TrainConfig, total_items: int):
    """(dataset, class names, source kind) for a pseudo-label or dataset directory."""
    manifest = _source_manifest(config)
    if manifest.kind == "zutis.pseudolabels":
        labels = load_pseudolabels(config.source)
        pool = ObjectPool(labels)
        return CopyPasteDataset(pool, config.copypaste(), config.seed, total_items), labels.classes, manifest.kind
    dataset = DiskScenes(Path(config.source), config.crop, config.seed)
    return dataset, _scene_classes(manifest, dataset.categories), manifest.kind


def _scene_classes(manifest: Any, categories: list[dict[str, Any]]) -> list[str]:
    """A scene directory's class names: its manifest's, else its COCO categories' in id order."""
    return list(manifest.summary.get("classes") or []) or [c["name"] for c in sorted(categories, key=lambda c: c["id"])]


def _source_manifest(config: TrainConfig):
    """The source's manifest: pseudo-labels, a copy-paste dataset, or ``zutis synth scenes`` (ground truth)."""
    manifest = read_manifest(config.source, ("zutis.pseudolabels", "zutis.dataset", "zutis.synth"))
    if manifest.kind == "zutis.synth":
        kind = manifest.params.get("kind")
        if kind != "scenes":
            raise UsageError(f"{config.source}: is a `zutis synth {kind}` directory; training reads pseudo-labels, "
                             "a copy-paste dataset, or `zutis synth scenes` (supervised by their ground truth)")
    return manifest


# ---- periodic evaluation --------------------------------------------------------------------
@dataclass
class HeldOut:
    """A checked held-out set: the images to segment, the ground truth to score them against, the classes."""

    images: list[str]
    gt: str
    queries: list[Any] | None  # ClassQuery list from ``eval_classes``; None = the training classes


def _readable(path: Path, option: str) -> None:
    """A :class:`UsageError` naming ``path`` unless it can be read (and, for a directory, listed)."""
    mode = os.R_OK | (os.X_OK if path.is_dir() else 0)
    if not os.access(path, mode):
        raise UsageError(f"{option} {path}: is not readable; check its permissions")


def held_out_set(config: TrainConfig) -> HeldOut | None:
    """The held-out set of ``config``, checked before any training; ``None`` when the run does not evaluate.

    ``eval_images`` alone is a directory holding its own ground truth (``zutis synth scenes``:
    ``images/``, ``instances.json``, optional ``semantic/``; ``zutis evaluate prepare``:
    ``gt.json``), and the images segmented are those its ground truth lists. With ``eval_gt`` (any
    ground truth ``zutis evaluate`` reads) the images are ``eval_images/images`` (or
    ``eval_images`` itself), or, without ``eval_images``, those ``eval_gt`` lists. Every problem
    (a missing or unreadable path, no ground truth, no images, bad ``eval_classes``) is a one-line
    :class:`UsageError` naming the option and the path.
    """
    if not config.evaluates:
        return None
    from zutiscli.artefacts.groundtruth import load_ground_truth
    from zutiscli.data.classes import parse_classes
    from zutiscli.data.images import discover_images

    folder = Path(config.eval_images) if config.eval_images else None
    if folder is not None:
        if not folder.is_dir():
            what = "is a file, not a directory" if folder.exists() else "no such directory"
            raise UsageError(f"--eval-images {folder}: {what}")
        _readable(folder, "--eval-images")
        if config.eval_gt is None and not any((folder / name).is_file() for name in ("instances.json", "gt.json")):
            raise UsageError(f"--eval-images {folder}: holds no instances.json or gt.json; give a `zutis synth "
                             f"scenes` or `zutis evaluate prepare` directory, or its ground truth with --eval-gt")
    option, gt = ("--eval-gt", Path(config.eval_gt)) if config.eval_gt else ("--eval-images", folder)
    assert gt is not None
    if not gt.exists():
        raise UsageError(f"{option} {gt}: no such file or directory")
    _readable(gt, option)
    try:
        truth = load_ground_truth(gt)
    except ZutisError as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        message = message.replace(f"--gt {gt}: ", "", 1)
        raise UsageError(f"{option} {message}" if message.startswith(str(gt)) else f"{option} {gt}: {message}") from None
    if folder is not None and config.eval_gt is not None:
        source = folder / "images" if (folder / "images").is_dir() else folder
        try:
            images = [str(path) for path in discover_images([source]).paths]
        except ZutisError as exc:
            raise UsageError(f"--eval-images {folder}: {str(exc).splitlines()[0]}") from None
        if not images:
            raise UsageError(f"--eval-images {source}: holds no images")
    else:
        if any(image.path is None for image in truth.images):
            raise UsageError(f"{option} {gt}: does not say where its images are; give them with --eval-images DIR")
        images = [str(image.path) for image in truth.images]
        if not images:
            raise UsageError(f"{option} {gt}: lists no images")
        for image in images:
            if not Path(image).is_file():
                raise UsageError(f"{option} {gt}: its image {image} does not exist")
            _readable(Path(image), option)
    queries = None
    if config.eval_classes is not None:
        try:
            queries = parse_classes(config.eval_classes, None)
        except ZutisError as exc:
            raise UsageError(str(exc).replace("--classes", "--eval-classes")) from None
        if any(query.name.lower() == "background" for query in queries):
            raise UsageError("--eval-classes: 'background' is always a class of its own; leave it out")
    return HeldOut(images, str(gt), queries)


def _eval_dir(run_dir: Path, iteration: int) -> Path:
    return run_dir / EVALS / f"iter-{iteration:06d}"


def _evaluate_model(model: ZutisModel, held_out: HeldOut, classes: list[str], run_dir: Path, iteration: int,
                    device: torch.device, say: Callable[[str], None]) -> dict[str, Any] | None:
    """Segment and score the held-out set with the model as it is at ``iteration``; returns the metrics line.

    Writes ``evals/iter-NNNNNN/`` (``predictions/``, ``metrics.json``, a ``zutis.metrics``
    manifest) and appends ``{"iteration": N, "eval": headline}`` to ``metrics.jsonl``. The model's
    train/eval mode and every random number generator are put back as they were, so the training
    that follows is the one a run without evaluation does. A failed evaluation is logged and
    yields ``None``; the training goes on.
    """
    from zutiscli.data.classes import ClassQuery
    from zutiscli.engine.evaluator import headline
    from zutiscli.pipeline.evaluate import EvaluateConfig, evaluate
    from zutiscli.pipeline.predict import PredictConfig, predict

    states = _rng_state()
    was_training = model.training
    out = _eval_dir(run_dir, iteration)
    scoring = out.with_name(f".{out.name}.scoring")  # evaluate() wants an empty directory of its own
    queries = held_out.queries or [ClassQuery(name, name) for name in classes]
    try:
        for stale in (out, scoring):
            if stale.exists():
                shutil.rmtree(stale)
        model.eval()
        predictions = predict(PredictConfig(inputs=held_out.images, classes=queries, method="zutis",
                                            device=str(device), task="all", vis=False),
                              out / "predictions", model=model).path
        scored = evaluate(EvaluateConfig(pred=str(predictions), gt=held_out.gt), scoring)
        summary = headline(scored.metrics)
        os.replace(scoring / "metrics.json", out / "metrics.json")
        write_manifest(out, "zutis.metrics", inputs=[predictions, held_out.gt],
                       params=read_manifest(scoring).params | {"iteration": iteration}, summary=summary)
        shutil.rmtree(scoring)
    except ZutisError as exc:
        say(f"evaluation at iteration {iteration} failed: {str(exc).splitlines()[0]}")
        return None
    finally:
        model.train(was_training)
        _restore_rng(states)
    record = {"iteration": iteration, "eval": summary}
    with open(run_dir / METRICS, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")

    def number(key: str) -> str:
        return f"{summary[key]:.4f}" if isinstance(summary.get(key), (int, float)) else "n/a"

    say(f"eval at iteration {iteration}: mIoU {number('mIoU')}, mask AP50 {number('mask_AP50')}")
    return record


def _last_eval(path: Path) -> dict[str, Any] | None:
    """The last ``{"iteration", "eval"}`` line of a ``metrics.jsonl``, if any."""
    if not path.is_file():
        return None
    last = None
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "eval" in record:
            last = record
    return last


def _drop_stale_evals(run_dir: Path, iteration: int) -> None:
    """Remove evaluations past ``iteration`` (left by an interrupted run that is being resumed)."""
    folder = run_dir / EVALS
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        name = entry.name.lstrip(".").split(".")[0]
        if entry.is_dir() and name.startswith("iter-") and name[5:].isdigit() and \
                (int(name[5:]) > iteration or entry.name.startswith(".")):
            shutil.rmtree(entry)


# ---- the loop -------------------------------------------------------------------------------
class TrainingInterrupted(ZutisError):
    """Raised after a signal-triggered checkpoint; the message says how to resume."""

    def __init__(self, run_dir: Path, iteration: int, signum: int):
        self.run_dir, self.iteration, self.signum = run_dir, iteration, signum
        self.exit_code = 128 + signum
        name = signal.Signals(signum).name
        super().__init__(f"{name} at iteration {iteration}: checkpoint saved; continue with "
                         f"`zutis train --resume {run_dir}`")


class _StopFlag:
    """SIGINT/SIGTERM set a flag (the loop checkpoints and stops) instead of killing the process."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopFlag":
        try:
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous.clear()
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def poly_lr(base: float, iteration: int, total: int, power: float, floor: float) -> float:
    """Poly schedule: ``(base - floor) * (1 - t / T) ** power + floor``, never below ``floor``."""
    if base <= floor:
        return base
    return (base - floor) * (1.0 - min(iteration, total) / total) ** power + floor


def _amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for training, or None for plain fp32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device.type != "cuda":
            raise UsageError("--precision fp16 is for CUDA; on the CPU use bf16 or fp32")
        return torch.float16
    if device.type == "cuda":
        return torch.float16
    # auto on the CPU: bf16 autocast where the CPU has bf16 matrix units. Measured there, it is
    # 1.17x faster than fp32 for ViT-B-16 at 384 px and for shapes-clip at 128 px, with the same
    # loss after 300 iterations (2.603 vs 2.622); elsewhere fp32.
    from zutiscli.models.device import cpu_has_bf16_units

    return torch.bfloat16 if device.type == "cpu" and cpu_has_bf16_units() else None


def _rng_state() -> dict[str, Any]:
    """Every random generator's state as tensors (a checkpoint loads it with ``weights_only=True``)."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np.frombuffer(json.dumps(_numpy_state()).encode(), dtype=np.uint8).copy()),
        "python": torch.from_numpy(np.frombuffer(json.dumps(random.getstate()[1]).encode(), dtype=np.uint8).copy()),
    }
    if torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _numpy_state() -> list:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def _restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = json.loads(bytes(state["numpy"].numpy()).decode())
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    random.setstate((3, tuple(json.loads(bytes(state["python"].numpy()).decode())), None))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


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
    """The :attr:`Plan.reads` entry of a training source, checked as :func:`_source` checks it, and its classes."""
    manifest = _source_manifest(config)
    if manifest.kind == "zutis.pseudolabels":
        labels = load_pseudolabels(config.source)
        pool = ObjectPool(labels)
        return input_entry(config.source, manifest.kind, classes=len(labels.classes), objects=len(labels.objects),
                           images=len(pool.image_objects)), list(labels.classes)
    coco = load_scenes(Path(config.source))
    classes = _scene_classes(manifest, coco["categories"])
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
    held_out = held_out_set(config)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(config.device)
    if config.batch_size % world:
        raise UsageError(f"--batch-size {config.batch_size} must be divisible by the {world} processes")
    amp = _amp_dtype(config.precision, device)
    if resume is None:
        from zutiscli.pipeline.index import default_pretrained

        pretrained = config.pretrained or default_pretrained(config.model)
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


def train(
    config: TrainConfig | None,
    output: str | Path | None = None,
    resume: str | Path | None = None,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Run (or resume) a training run; returns the run directory and what happened.

    With ``resume`` (a run directory) the run continues with its own saved recipe; ``config`` may
    then be ``None``, and if given only its ``iterations`` count, extending the run when larger.
    """
    say = log or (lambda message: None)
    checkpoint = None
    if resume is not None:
        run_dir = Path(resume)
        checkpoint = load_checkpoint(resume_checkpoint_path(run_dir))
        saved = TrainConfig.from_dict(checkpoint["train_config"], where=str(run_dir / CHECKPOINT))
        if config is not None and config.iterations > saved.iterations:
            saved.iterations = config.iterations  # a resumed run may be extended
        config = saved
    elif config is None:
        raise UsageError("give a training config, or a run directory to resume")
    config.validate()
    held_out = held_out_set(config)  # a bad held-out set fails here, before any data or weights load
    info, device = _init_distributed(config.device)
    if config.batch_size % info.world:
        raise UsageError(f"--batch-size {config.batch_size} must be divisible by the {info.world} processes")
    amp = _amp_dtype(config.precision, device)
    torch.manual_seed(config.seed)
    start_iteration = int(checkpoint["iteration"]) if checkpoint else 0

    from zutiscli.pipeline.index import default_pretrained

    if checkpoint is None and info.main:
        check_output_dir(output, "train")  # refuse an unusable -o before the data and the model load
    pretrained = checkpoint["config"]["backbone"]["pretrained"] if checkpoint else \
        (config.pretrained or default_pretrained(config.model))
    dataset, classes, kind = _source(config, config.iterations * config.batch_size)
    backbone = load_backbone(ModelSpec(config.model, pretrained), device=device, dtype=torch.float32)
    if checkpoint is not None:
        adapter = CropAdapter.from_dict(checkpoint["crop_adapter"], where=str(run_dir / CHECKPOINT)) \
            if checkpoint.get("crop_adapter") is not None else None
    elif info.main and config.crop_adapter_scenes > 0:
        adapter = _fit_crop_adapter(backbone, dataset, classes, config.crop_adapter_scenes,
                                    config.crop_adapter_decay, config.crop_adapter_views, config.seed, say)
    else:
        adapter = None
    model = ZutisModel(backbone, config.zutis(pretrained)).to(device)
    model.crop_adapter = adapter
    adapter_record = {"crop_adapter": adapter.to_dict()} if adapter is not None else {}
    text = model.text_embeddings(classes).to(device)
    optimiser = torch.optim.AdamW(
        [{"params": model.encoder_parameters(), "lr": config.lr * config.encoder_lr_mult, "name": "encoder"},
         {"params": model.head_parameters(), "lr": config.lr, "name": "heads"}],
        lr=config.lr, weight_decay=config.weight_decay,
    )
    scaler = torch.amp.GradScaler("cuda", enabled=amp is torch.float16)
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimiser.load_state_dict(checkpoint["optimizer"])
        if checkpoint.get("scaler"):
            scaler.load_state_dict(checkpoint["scaler"])
        _restore_rng(checkpoint["rng"])
    else:
        run_dir = prepare_output_dir(output, "train") if info.main else None
        run_dir = Path(_broadcast(str(run_dir) if run_dir else None, info))
    model.train()
    network: torch.nn.Module = model
    if info.world > 1:
        network = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    if info.main:
        atomic_write_json(run_dir / "config.json", asdict(config) | {"pretrained": pretrained, "classes": classes,
                                                                      "source_kind": kind})
        _truncate_metrics(run_dir / METRICS, start_iteration)
        _drop_stale_evals(run_dir, start_iteration)
    workers = config.loader_workers
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=IterationBatches(start_iteration, config.iterations, config.batch_size, info.rank,
                                                info.world),
        num_workers=workers, collate_fn=_collate, pin_memory=device.type == "cuda",
        worker_init_fn=_ignore_sigint if workers else None, prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )

    def save(iteration: int, path: str = CHECKPOINT) -> None:
        if info.main:
            save_checkpoint(run_dir / path, {
                "config": model.config.to_dict(), "classes": classes, "model": model.state_dict(),
                "iteration": iteration, "optimizer": optimiser.state_dict(), "scaler": scaler.state_dict(),
                "rng": _rng_state(), "train_config": asdict(config), "inference": dict(config.inference),
                **adapter_record,
            })

    def evaluate_now(iteration: int) -> None:
        """Rank 0 evaluates on the held-out set while the other ranks wait; its time is not training time."""
        nonlocal eval_seconds, window_start
        clock = time.perf_counter()
        if info.main:
            _evaluate_model(model, held_out, classes, run_dir, iteration, device, say)
        if info.world > 1:
            dist.barrier()
        spent = time.perf_counter() - clock
        eval_seconds += spent
        window_start += spent  # it/s counts training steps only

    started = time.perf_counter()
    window_start, window_iterations = started, 0
    eval_seconds = 0.0
    iteration = start_iteration
    stopped = "completed"
    last: dict[str, float] = {}
    with _StopFlag() as stop:
        for images, semantic, masks, _ in loader:
            for group in optimiser.param_groups:
                base = config.lr * (config.encoder_lr_mult if group["name"] == "encoder" else 1.0)
                group["lr"] = poly_lr(base, iteration, config.iterations, config.poly_power, config.min_lr)
            images = backbone.normalise(images.to(device, non_blocking=True))
            semantic = semantic.to(device, non_blocking=True)
            masks = [m.to(device, non_blocking=True) for m in masks]
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                outputs = network(images, text)
            losses = zutis_loss(outputs, semantic, masks, config.lambda_mask)
            optimiser.zero_grad(set_to_none=True)
            scaler.scale(losses["loss"]).backward()
            scaler.step(optimiser)
            scaler.update()
            iteration += 1
            window_iterations += 1
            last = {k: float(v.detach()) for k, v in losses.items()}
            if not math.isfinite(last["loss"]):
                save(iteration, "checkpoints/diverged.pt")
                raise ZutisError(f"the loss became {last['loss']} at iteration {iteration}; lower --lr or check the "
                                 f"pseudo-labels (state saved to {run_dir / 'checkpoints/diverged.pt'})")
            if info.main and (iteration % config.log_every == 0 or iteration == config.iterations):
                now = time.perf_counter()
                rate = window_iterations / max(now - window_start, 1e-9)
                window_start, window_iterations = now, 0
                record = {"iteration": iteration, **{k: round(v, 6) for k, v in last.items()},
                          "lr": optimiser.param_groups[1]["lr"], "encoder_lr": optimiser.param_groups[0]["lr"],
                          "it_per_s": round(rate, 4), "seconds": round(now - started, 2)}
                with open(run_dir / METRICS, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(record) + "\n")
            if progress is not None and info.main:
                progress(iteration, config.iterations, last)
            if iteration % config.checkpoint_every == 0:
                save(iteration)
            if held_out is not None and config.eval_every and iteration % config.eval_every == 0:
                evaluate_now(iteration)
            over_budget = config.max_minutes is not None and \
                time.perf_counter() - started - eval_seconds > config.max_minutes * 60
            if info.world > 1:
                flags = torch.tensor([stop.signum or 0, int(over_budget)], dtype=torch.int64)
                dist.all_reduce(flags, op=dist.ReduceOp.MAX)
                stop.signum, over_budget = (int(flags[0]) or None), bool(flags[1])
            if stop.signum is not None:
                save(iteration)
                raise TrainingInterrupted(run_dir, iteration, stop.signum)
            if over_budget:
                stopped = "budget"
                break
    seconds = time.perf_counter() - started
    training_seconds = seconds - eval_seconds  # the rates count training steps, not held-out evaluation
    if info.main:
        save(iteration)
        save_checkpoint(run_dir / FINAL, {"config": model.config.to_dict(), "classes": classes,
                                          "model": model.state_dict(), "iteration": iteration,
                                          "inference": dict(config.inference), **adapter_record})
        last_eval = _last_eval(run_dir / METRICS)
        if held_out is not None and (last_eval is None or last_eval["iteration"] != iteration):
            _evaluate_model(model, held_out, classes, run_dir, iteration, device, say)
            last_eval = _last_eval(run_dir / METRICS)
        done = iteration - start_iteration
        write_manifest(
            run_dir, "zutis.run", model=ModelSpec(config.model, pretrained).describe(), inputs=[config.source],
            params=asdict(config),
            summary={"iterations": iteration, "stopped": stopped, "seconds_this_session": round(seconds, 2),
                     "iterations_per_second": round(done / training_seconds, 4) if training_seconds > 0 else None,
                     "classes": classes, "final": {k: round(v, 6) for k, v in last.items()},
                     "processes": info.world, "device": str(device), "last_eval": last_eval,
                     "crop_adapter": adapter.summary() if adapter is not None else None},
        )
    if info.world > 1:
        dist.barrier()
    done = iteration - start_iteration
    return TrainResult(run_dir, iteration, stopped, seconds, done / training_seconds if training_seconds > 0 else 0.0,
                       last, info.main)


def _fit_crop_adapter(backbone: Any, dataset: Any, classes: list[str], scenes: int, decay: float, views: int,
                      seed: int, say: Callable[[str], None]) -> CropAdapter | None:
    """The crop classifier's adapter for the untrained ``backbone``
    (:func:`zutiscli.models.crop_classifier.fit_crop_adapter`), fitted on the first ``scenes``
    training scenes (at most the dataset's, for scenes read from disk). The random number generators
    are put back as they were: the training that follows is the one a run without it does."""
    if isinstance(dataset, DiskScenes):
        scenes = min(scenes, len(dataset.images))  # a scene seen twice adds nothing
    states = _rng_state()
    was_training = backbone.training
    clock = time.perf_counter()
    backbone.eval()
    try:
        items = (dataset[index] for index in range(scenes))
        labelled = ((image, masks, labels) for image, _semantic, masks, labels in items)
        adapter = fit_crop_adapter(backbone, labelled, classes, decay, views, seed)
    finally:
        backbone.train(was_training)
        _restore_rng(states)
    if adapter is None:
        say(f"crop adapter: the first {scenes} training scenes hold no object to fit it on; none saved")
    else:
        say(f"crop adapter: fitted on {adapter.objects} objects of {adapter.scenes} training scenes in "
            f"{time.perf_counter() - clock:.1f} s; crops named right {adapter.accuracy_before:.1%} -> "
            f"{adapter.accuracy_after:.1%}")
    return adapter


def _truncate_metrics(path: Path, iteration: int) -> None:
    """Drop metric lines past ``iteration`` (left by an interrupted run that is being resumed)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["iteration"] <= iteration:
                keep.append(line)
        except (ValueError, KeyError):
            continue
    from zutiscli.artefacts.atomic import atomic_write_text

    atomic_write_text(path, "".join(line + "\n" for line in keep))

