"""ReCLIP++'s rectification trainer (:class:`ReclipTrainer`): the :class:`~zutiscli.engine.trainer.Trainer`
loop (checkpoints, resume, signals, time budget, ``metrics.jsonl``, DDP) with ReCLIP++'s optimiser
and loss.

SGD (momentum, weight decay) over the Reference context, the positional projection and the mask
decoder, the poly schedule by iteration; each batch's loss is the contrastive loss of its images'
hard Gumbel-Softmax masks over their hypothesised classes
(:func:`zutiscli.models.reclip.hypothesis_loss`). A batch whose images hypothesise nothing is
skipped (the iteration still counts), as the official code skips such images.
"""

from __future__ import annotations

from typing import Any

import torch

from zutiscli.engine.trainer import Trainer
from zutiscli.models.reclip import hypothesis_loss

METHOD = "reclip"


class ReclipTrainer(Trainer):
    """One process's share of a rectification run; ``model`` is a :class:`zutiscli.models.reclip.Rectifier`."""

    def make_optimiser(self) -> torch.optim.Optimizer:
        config = self.config
        return torch.optim.SGD([{"params": self.model.trainable(), "lr": config.lr, "name": "rectifier"}],
                               lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)

    def base_lr(self, group: dict[str, Any]) -> float:
        return self.config.lr

    def losses(self, batch: Any) -> dict[str, torch.Tensor] | None:
        images, hypotheses = batch
        if not any(hypotheses):
            return None
        model = self.model
        images = model.backbone.normalise(images.to(self.device, non_blocking=True))
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            outputs = self.network(images)
        masks = model.hard_masks(outputs["output"].float())
        loss = hypothesis_loss(outputs["features"].float(), masks, model.query, hypotheses, model.scale)
        return {"loss": loss}

    def model_record(self) -> dict[str, Any]:
        model = self.model
        return {"method": METHOD, "config": model.config.to_dict(), "classes": self.classes,
                "phrases": list(model.phrases), "model": model.state_dict()}

    def learning_rates(self) -> dict[str, float]:
        return {"lr": self.optimiser.param_groups[0]["lr"]}
