"""The trainer: one process's share of a run, from one CPU to many GPUs under ``torchrun``.

:func:`init_distributed` joins the process group that ``torchrun`` describes (NCCL on GPUs, gloo
on CPUs; nothing to join in a single process). A :class:`Trainer` holds what a run changes as it
goes (the model, the AdamW optimiser with the encoder's and the heads' learning rates, the grad
scaler of fp16 autocast, the iteration) and knows how to take one :meth:`~Trainer.step`, save and
resume a checkpoint (every random generator included), log ``metrics.jsonl`` and run the loop
until the last iteration, the time budget, or a signal (SIGINT / SIGTERM: checkpoint, then
:class:`TrainingInterrupted`). Only rank 0 writes.

Learning rates follow the poly schedule by iteration (:func:`poly_lr`), each parameter group from
its own base: ``lr`` for the heads, ``lr x encoder_lr_mult`` for the CLIP image encoder.

:class:`Trainer` trains ZUTIS; a method trains otherwise by overriding its few method hooks (the
optimiser, a batch's losses, what the checkpoints hold of the model, the learning rates it logs):
ReCLIP++'s rectification is :class:`zutiscli.engine.reclip_trainer.ReclipTrainer`.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.distributed as dist

from zutiscli.artefacts.atomic import atomic_write_json, atomic_write_text
from zutiscli.artefacts.checkpoint import save_checkpoint
from zutiscli.artefacts.runs import CHECKPOINT, CONFIG, FINAL, METRICS
from zutiscli.engine.rng import restore_rng, rng_state
from zutiscli.errors import UsageError, ZutisError
from zutiscli.models.device import resolve_device
from zutiscli.models.losses import zutis_loss

DIVERGED = "checkpoints/diverged.pt"

Progress = Callable[[int, int, dict[str, float]], None]


# ---- processes ------------------------------------------------------------------------------
@dataclass
class DistInfo:
    """This process's place in a data-parallel run (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_spec: str) -> tuple[DistInfo, torch.device]:
    """This process's :class:`DistInfo` and device, after joining ``torchrun``'s process group if there is one."""
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


def broadcast(value: Any, info: DistInfo) -> Any:
    """Rank 0's ``value`` on every rank."""
    if info.world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(info: DistInfo) -> None:
    """Wait for every rank (nothing to wait for in a single process)."""
    if info.world > 1:
        dist.barrier()


# ---- stopping -------------------------------------------------------------------------------
class TrainingInterrupted(ZutisError):
    """Raised after a signal-triggered checkpoint; the message says how to resume."""

    def __init__(self, run_dir: Path, iteration: int, signum: int):
        self.run_dir, self.iteration, self.signum = run_dir, iteration, signum
        self.exit_code = 128 + signum
        name = signal.Signals(signum).name
        super().__init__(f"{name} at iteration {iteration}: checkpoint saved; continue with "
                         f"`zutis train --resume {run_dir}`")


class StopFlag:
    """SIGINT/SIGTERM set a flag (the loop checkpoints and stops) instead of killing the process."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopFlag":
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


# ---- schedule and precision -----------------------------------------------------------------
def poly_lr(base: float, iteration: int, total: int, power: float, floor: float) -> float:
    """Poly schedule: ``(base - floor) * (1 - t / T) ** power + floor``, never below ``floor``."""
    if base <= floor:
        return base
    return (base - floor) * (1.0 - min(iteration, total) / total) ** power + floor


def amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for training (``precision``: auto, fp32, bf16, fp16), or None for plain fp32."""
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


# ---- metrics log ----------------------------------------------------------------------------
def truncate_metrics(path: Path, iteration: int) -> None:
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
    atomic_write_text(path, "".join(line + "\n" for line in keep))


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    """One line of ``metrics.jsonl``."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


# ---- the trainer ----------------------------------------------------------------------------
class Trainer:
    """One process's share of a training run.

    Args:
        model: the :class:`zutiscli.models.zutis.ZutisModel` to train, on ``device``.
        classes: the training class names (the text embeddings the semantic branch is scored against).
        config: the run's :class:`zutiscli.pipeline.train.TrainConfig` (read, never changed here).
        info: this process's place in the run.
        device: where the model and the batches go.
        amp: the autocast dtype (:func:`amp_dtype`), or None for plain fp32.

    Builds the optimiser and the grad scaler; :meth:`resume` loads a checkpoint's state into them,
    :meth:`begin` starts (or continues) the run directory's files, :meth:`run` trains.
    """

    def __init__(self, model: Any, classes: list[str], config: Any, info: DistInfo, device: torch.device,
                 amp: torch.dtype | None):
        self.model, self.classes, self.config = model, classes, config
        self.info, self.device, self.amp = info, device, amp
        self.optimiser = self.make_optimiser()
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp is torch.float16)
        self.network: torch.nn.Module = model
        self.run_dir: Path | None = None
        self.iteration = 0
        self.last: dict[str, float] = {}
        self.eval_seconds = 0.0
        self.started = time.perf_counter()
        self._window = (self.started, 0)  # (start, iterations) of the it/s measured for the log

    # -- what a method defines (here: ZUTIS) -----------------------------------------------------
    def make_optimiser(self) -> torch.optim.Optimizer:
        """The optimiser over the model's trainable parameters, one named group per learning rate."""
        model, config = self.model, self.config
        self.text = model.text_embeddings(self.classes).to(self.device)
        # a learned class bank (training on clusters): its rows change every step, so they are read anew
        self.learned_classes = bool(model.config.class_bank_learned and model.class_bank is not None)
        return torch.optim.AdamW(
            [{"params": model.encoder_parameters(), "lr": config.lr * config.encoder_lr_mult, "name": "encoder"},
             {"params": model.head_parameters(), "lr": config.lr, "name": "heads"}],
            lr=config.lr, weight_decay=config.weight_decay,
        )

    def base_lr(self, group: dict[str, Any]) -> float:
        """The unscheduled learning rate of an optimiser parameter group."""
        return self.config.lr * (self.config.encoder_lr_mult if group["name"] == "encoder" else 1.0)

    def losses(self, batch: Any) -> dict[str, torch.Tensor] | None:
        """One batch's loss terms (``"loss"`` is optimised), or ``None`` when it has nothing to learn from."""
        images, semantic, masks, _ = batch
        images = self.model.backbone.normalise(images.to(self.device, non_blocking=True))
        semantic = semantic.to(self.device, non_blocking=True)
        masks = [m.to(self.device, non_blocking=True) for m in masks]
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            text = self.model.text_embeddings(self.classes).to(self.device) if self.learned_classes else self.text
            outputs = self.network(images, text)
        return zutis_loss(outputs, semantic, masks, self.config.lambda_mask, self.config.hard_pixels)

    def model_record(self) -> dict[str, Any]:
        """What ``model.pt`` and the checkpoints hold of the model: config, classes, weights and what
        travels with them (the crop adapter and the stuff probe, where set)."""
        model = self.model
        adapter = getattr(model, "crop_adapter", None)
        probe = getattr(model, "stuff_probe", None)
        return {"config": model.config.to_dict(), "classes": self.classes, "model": model.state_dict(),
                **({"crop_adapter": adapter.to_dict()} if adapter is not None else {}),
                **({"stuff_probe": probe.to_dict()} if probe is not None else {})}

    def learning_rates(self) -> dict[str, float]:
        """The learning rates ``metrics.jsonl`` logs."""
        groups = self.optimiser.param_groups
        return {"lr": groups[1]["lr"], "encoder_lr": groups[0]["lr"]}

    # -- state ------------------------------------------------------------------------------
    def resume(self, checkpoint: dict[str, Any]) -> None:
        """Continue from ``checkpoint``: weights, optimiser, scaler, random generators, iteration."""
        self.model.load_state_dict(checkpoint["model"])
        self.optimiser.load_state_dict(checkpoint["optimizer"])
        if checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        restore_rng(checkpoint["rng"])
        self.iteration = int(checkpoint["iteration"])

    def begin(self, run_dir: Path, record: dict[str, Any],
              drop_after: Callable[[Path, int], None] | None = None) -> None:
        """Start training into ``run_dir``: the model in training mode (wrapped for data parallelism
        across several processes); on rank 0, ``config.json`` written (the recipe and ``record``) and
        the ``metrics.jsonl`` lines past the iteration reached dropped (``drop_after(run_dir,
        iteration)`` drops more)."""
        self.run_dir = run_dir
        self.model.train()
        if self.info.world > 1:
            self.network = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if self.info.main:
            atomic_write_json(self.run_dir / CONFIG, asdict(self.config) | record)
            truncate_metrics(self.run_dir / METRICS, self.iteration)
            if drop_after is not None:
                drop_after(self.run_dir, self.iteration)

    def save(self, path: str = CHECKPOINT) -> None:
        """Rank 0 saves everything a ``--resume`` needs to ``run_dir / path``."""
        if not self.info.main:
            return
        save_checkpoint(self.run_dir / path, {
            **self.model_record(), "iteration": self.iteration, "optimizer": self.optimiser.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": rng_state(), "train_config": asdict(self.config),
            "inference": dict(getattr(self.config, "inference", {})),
        })

    def save_final(self) -> None:
        """Rank 0 saves the model for ``zutis predict`` (``model.pt``: weights, classes, inference settings)."""
        if not self.info.main:
            return
        save_checkpoint(self.run_dir / FINAL, {**self.model_record(), "iteration": self.iteration,
                                               "inference": dict(getattr(self.config, "inference", {}))})

    # -- one step ---------------------------------------------------------------------------
    def set_learning_rates(self) -> None:
        """Each parameter group's poly-scheduled learning rate at the current iteration."""
        config = self.config
        for group in self.optimiser.param_groups:
            group["lr"] = poly_lr(self.base_lr(group), self.iteration, config.iterations, config.poly_power,
                                  config.min_lr)

    def step(self, batch: Any) -> dict[str, float]:
        """One optimiser step on a batch; returns the loss terms and advances the iteration (a batch
        with nothing to learn from advances it without a step).

        A loss that is not finite saves the state to ``checkpoints/diverged.pt`` and raises.
        """
        self.set_learning_rates()
        losses = self.losses(batch)
        self.iteration += 1
        if losses is None:
            return self.last
        self.optimiser.zero_grad(set_to_none=True)
        self.scaler.scale(losses["loss"]).backward()
        self.scaler.step(self.optimiser)
        self.scaler.update()
        self.last = {k: float(v.detach()) for k, v in losses.items()}
        if not math.isfinite(self.last["loss"]):
            self.save(DIVERGED)
            raise ZutisError(f"the loss became {self.last['loss']} at iteration {self.iteration}; lower --lr or check "
                             f"the pseudo-labels (state saved to {self.run_dir / DIVERGED})")
        return self.last

    # -- the loop ---------------------------------------------------------------------------
    def run(self, batches: Iterable[Any], progress: Progress | None = None,
            evaluate: Callable[[int], Any] | None = None) -> str:
        """Train on ``batches`` (one per iteration left) until they end or the time budget is spent.

        Logs, checkpoints and (with ``evaluate(iteration)``, on rank 0) evaluates at the recipe's
        intervals. Returns ``"completed"`` or ``"budget"``; a signal saves a checkpoint and raises
        :class:`TrainingInterrupted`. :attr:`seconds` and :attr:`eval_seconds` time the session.
        """
        config = self.config
        self.started = time.perf_counter()
        self._window = (self.started, 0)
        with StopFlag() as stop:
            for batch in batches:
                self.step(batch)
                self._window = (self._window[0], self._window[1] + 1)
                if self.info.main and (self.iteration % config.log_every == 0 or self.iteration == config.iterations):
                    self.log_metrics()
                if progress is not None and self.info.main:
                    progress(self.iteration, config.iterations, self.last)
                if self.iteration % config.checkpoint_every == 0:
                    self.save()
                if evaluate is not None and config.eval_every and self.iteration % config.eval_every == 0:
                    self._evaluate(evaluate)
                signum, over_budget = self._agree(stop.signum, self._over_budget())
                stop.signum = signum
                if signum is not None:
                    self.save()
                    raise TrainingInterrupted(self.run_dir, self.iteration, signum)
                if over_budget:
                    return "budget"
        return "completed"

    @property
    def seconds(self) -> float:
        """Seconds since :meth:`run` started, held-out evaluation included."""
        return time.perf_counter() - self.started

    def log_metrics(self) -> None:
        """Rank 0 appends the iteration's loss terms, learning rates and speed to ``metrics.jsonl``."""
        now = time.perf_counter()
        window_start, window_iterations = self._window
        rate = window_iterations / max(now - window_start, 1e-9)
        self._window = (now, 0)
        append_metrics(self.run_dir / METRICS, {
            "iteration": self.iteration, **{k: round(v, 6) for k, v in self.last.items()}, **self.learning_rates(),
            "it_per_s": round(rate, 4), "seconds": round(now - self.started, 2)})

    def _evaluate(self, evaluate: Callable[[int], Any]) -> None:
        """Rank 0 evaluates while the other ranks wait; the time is not training time (budget, it/s)."""
        clock = time.perf_counter()
        if self.info.main:
            evaluate(self.iteration)
        barrier(self.info)
        spent = time.perf_counter() - clock
        self.eval_seconds += spent
        self._window = (self._window[0] + spent, self._window[1])

    def _over_budget(self) -> bool:
        minutes = self.config.max_minutes
        return minutes is not None and self.seconds - self.eval_seconds > minutes * 60

    def _agree(self, signum: int | None, over_budget: bool) -> tuple[int | None, bool]:
        """Every rank stops when one was signalled or ran out of time."""
        if self.info.world == 1:
            return signum, over_budget
        flags = torch.tensor([signum or 0, int(over_budget)], dtype=torch.int64)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return (int(flags[0]) or None), bool(flags[1])
