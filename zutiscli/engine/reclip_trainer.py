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


class ReclipDistilTrainer(ReclipTrainer):
    """ReCLIP++'s distillation (Sec. III-E): a student rectifier (``model``, CLIP's image tower learning)
    taught by a frozen rectified CLIP (``teacher``).

    Loss: ``L_mask`` (cross-entropy of the student's logits, upsampled to the crop, against the
    teacher's argmax there) ``+ feat_weight * L_feat`` (L1 between the student's and CLIP's dense
    features, upsampled to the crop) ``+ text_weight * L_text`` (the contrastive loss of the
    student's own hard masks and features over the hypothesised classes). Unlike the official code,
    which detaches the student's features before ``L_feat`` and ``L_text`` (so only ``L_mask``
    trains it) and pools ``L_text`` under the teacher's labels, every term here trains the student,
    as the paper writes them.
    """

    def __init__(self, model: Any, teacher: Any, classes: list[str], config: Any, info: Any, device: Any,
                 amp: Any):
        self.teacher = teacher
        super().__init__(model, classes, config, info, device, amp)

    def losses(self, batch: Any) -> dict[str, torch.Tensor] | None:
        import torch.nn.functional as F

        images, hypotheses = batch
        model, config = self.model, self.config
        images = model.backbone.normalise(images.to(self.device, non_blocking=True))
        size = images.shape[-2:]
        with torch.no_grad():
            taught = self.teacher(images)
            labels = F.interpolate(taught["output"], size=size, mode="bilinear", align_corners=False).argmax(1)
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            outputs = self.network(images)
        logits = F.interpolate(outputs["output"].float(), size=size, mode="bilinear", align_corners=False)
        terms = {"mask": F.cross_entropy(logits, labels)}
        if config.feat_weight:
            ours = F.interpolate(outputs["features"].float(), size=size, mode="bilinear", align_corners=False)
            theirs = F.interpolate(taught["features"], size=size, mode="bilinear", align_corners=False)
            terms["feat"] = F.l1_loss(ours, theirs)
        if config.text_weight and any(hypotheses):
            masks = model.hard_masks(outputs["output"].float())
            terms["text"] = hypothesis_loss(outputs["features"].float(), masks, model.query, hypotheses, model.scale)
        loss = terms["mask"] + config.feat_weight * terms.get("feat", 0.0) + config.text_weight * terms.get("text", 0.0)
        return {"loss": loss, **terms}

    def model_record(self) -> dict[str, Any]:
        return super().model_record() | {"teacher": getattr(self.config, "teacher", None)}
