"""ReCLIP++'s rectified CLIP (Wang & Kang, Sec. III-A to III-D): a frozen CLIP, a learned bias, a mask decoder.

For an image, MaskCLIP's dense features ``Z`` (the value path, L2-normalised, ``(B, D, h, w)``)
against the classes' fixed **Query** text features ``W_q`` (85-template ensemble, ``(C, D)``,
class 0 = "background") give the Query logits ``M_q = Z . W_q`` (cosines). The bias is learned
apart from the image: a **Reference** prompt of ``L`` learned word embeddings shared by the classes
(CoOp), ``[SOS][v_1]..[v_L][class name][EOS]`` through CLIP's frozen text encoder, gives ``W_r``
(``(C, D)``, divided by its Frobenius norm as the official code does) for the class-preference
bias; a 1x1 convolution of the ViT's positional embedding gives ``W_p`` (``(n, D)``) for the
space-preference bias; ``M_b = W_p . W_r^T`` (``(C, h, w)``). The rectified logits ``M = M_q - M_b``
and ``Z`` go through the mask decoder (5x5 convolution + batch norm) to ``M_o``; training takes
hard Gumbel-Softmax masks of ``M_o`` (straight-through gradients), prediction its argmax.

Variants for the paper's ablations (:class:`RectifierConfig`): the bias added instead of
subtracted (Table V) or left out, no positional term (one learned vector for every patch: a class
bias only), no mask decoder (``M_o = M``).

Only the Reference context, the positional projection and the decoder learn; CLIP stays frozen
and is not saved with them (its weights are named by ``backbone``, as for MaskCLIP).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from zutiscli.errors import ArtefactError, ModelError

#: How the bias logits meet the Query logits: ReCLIP++ subtracts them; the others are its ablations.
BIAS_MODES = ("subtract", "add", "none")


@dataclass
class RectifierConfig:
    """The architecture of a rectified CLIP (saved in its checkpoints).

    Attributes:
        backbone: ``{"name": open_clip model, "pretrained": its weights}``.
        context_tokens: learned word embeddings of the Reference prompt (``L``).
        bias: ``subtract`` (ReCLIP++), ``add`` or ``none`` (no Reference, no positional term).
        position: whether the bias has the positional term ``W_p`` (else one learned vector for
            every patch).
        decoder: whether the mask decoder runs (else ``M_o = M``).
        gumbel_scale: the decoder's logits are multiplied by this before the Gumbel-Softmax (the
            official code's 100).
        gumbel_tau: the Gumbel-Softmax temperature ``tau_1``.
        student: a distilled student (Sec. III-E): CLIP's image tower learns (its positional
            embedding excepted, so the bias logits stay the teacher's) and is saved as ``tower``;
            the Query head, bias and decoder are the teacher's, frozen.
    """

    backbone: dict[str, Any] = field(default_factory=lambda: {"name": "ViT-B-16", "pretrained": "openai"})
    context_tokens: int = 8
    bias: str = "subtract"
    position: bool = True
    decoder: bool = True
    gumbel_scale: float = 100.0
    gumbel_tau: float = 1.0
    student: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, *, where: str) -> "RectifierConfig":
        """A config from a checkpoint's dict; :class:`ArtefactError` naming ``where`` when it is not one."""
        try:
            config = cls(**data)
            ok = (isinstance(config.backbone, dict) and isinstance(config.backbone.get("name"), str)
                  and isinstance(config.context_tokens, int) and config.context_tokens >= 1
                  and config.bias in BIAS_MODES)
        except TypeError:
            ok = False
        if not ok:
            raise ArtefactError(f"{where}: its 'config' is not a ReCLIP++ rectifier's; the file is damaged or "
                                f"of another method")
        return config


def name_tokens(tokenizer: Any, names: Sequence[str]) -> list[list[int]]:
    """Each name's token ids between CLIP's start and end tokens (``[name ids..., EOS]``)."""
    tokens = tokenizer(list(names))
    rows = []
    for row in tokens.tolist():
        end = int(torch.tensor(row).argmax())  # EOS has the largest id of CLIP's vocabulary
        rows.append(row[1:end + 1])
    return rows


def context_room(context_length: int, tokens: Sequence[Sequence[int]]) -> int:
    """How many Reference context tokens fit CLIP's text context beside ``[SOS]``, the longest name and ``[EOS]``."""
    return context_length - 1 - max(len(row) for row in tokens)


class ReferenceEncoder(torch.nn.Module):
    """CLIP's frozen text encoder with ``L`` learned context embeddings before each class name.

    ``forward()`` -> ``W_r`` ``(C, D)`` float32 (not normalised).
    """

    def __init__(self, clip: Any, tokenizer: Any, names: Sequence[str], context_tokens: int):
        super().__init__()
        needed = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection")
        if not all(hasattr(clip, name) for name in needed):
            raise ModelError("ReCLIP++'s Reference prompt needs CLIP's own text transformer (an open_clip CLIP "
                             "model); this model's text tower is another kind")
        pool = getattr(clip, "text_pool_type", "argmax")
        if pool not in ("argmax", "eos"):
            raise ModelError(f"ReCLIP++'s Reference prompt reads the end-of-text token; this text tower pools {pool!r}")
        self._clip = [clip]  # not a submodule: its weights are CLIP's, frozen and not saved here
        length = int(clip.positional_embedding.shape[0])
        tokens = name_tokens(tokenizer, names)
        room = context_room(length, tokens)
        if context_tokens > room:
            raise ModelError(f"{context_tokens} Reference context tokens do not fit the text encoder's context of "
                             f"{length} with the longest class name; use at most {room}")
        start = int(tokenizer([""])[0, 0])
        ids = torch.zeros(len(names), length, dtype=torch.long)
        ends = []
        for row, name_ids in enumerate(tokens):
            ids[row, 0] = start
            ids[row, 1 + context_tokens:1 + context_tokens + len(name_ids)] = torch.tensor(name_ids)
            ends.append(context_tokens + len(name_ids))
        self.register_buffer("ids", ids, persistent=False)
        self.register_buffer("ends", torch.tensor(ends, dtype=torch.long), persistent=False)
        width = int(clip.token_embedding.weight.shape[1])
        generator = torch.Generator().manual_seed(0)
        # CoOp's initialisation: N(0, 0.02) word embeddings
        self.context = torch.nn.Parameter(torch.randn(context_tokens, width, generator=generator) * 0.02)

    def forward(self) -> torch.Tensor:
        clip = self._clip[0]
        length = self.ids.shape[1]
        count = self.context.shape[0]
        words = clip.token_embedding(self.ids).float()
        context = self.context.float().unsqueeze(0).expand(len(self.ids), -1, -1)
        x = torch.cat([words[:, :1], context, words[:, 1 + count:]], dim=1)
        x = x + clip.positional_embedding[:length].float()
        transformer = clip.transformer
        mask = getattr(clip, "attn_mask", None)
        if getattr(transformer, "batch_first", True):
            x = transformer(x, attn_mask=mask)
        else:
            x = transformer(x.transpose(0, 1), attn_mask=mask).transpose(0, 1)
        x = clip.ln_final(x)
        pooled = x[torch.arange(len(self.ids), device=x.device), self.ends.to(x.device)]
        projection = clip.text_projection
        return (projection(pooled) if isinstance(projection, torch.nn.Module) else pooled @ projection).float()


class Rectifier(torch.nn.Module):
    """ReCLIP++'s rectification stage over a frozen :class:`zutiscli.models.clip.ClipBackbone`.

    Args:
        backbone: the frozen CLIP (a ViT: the positional term needs its positional embedding).
        config: the architecture.
        classes: the class phrases, background excluded; channel 0 is "background", ``i`` the
            ``i``-th class.
        query: ``(1 + K, D)`` Query text features; computed from ``classes`` when not given.
    """

    def __init__(self, backbone: Any, config: RectifierConfig, classes: Sequence[str],
                 query: torch.Tensor | None = None):
        super().__init__()
        backbone._require_vit()
        self._backbone = [backbone]  # frozen, not saved with the rectifier
        self.config = config
        self.phrases = list(classes)
        names = ["background", *classes]
        if query is None:
            with torch.no_grad():
                query = backbone.encode_text(names, templates="ensemble")
        self.register_buffer("query", query.detach().float().clone())
        dim, width, count = backbone.embed_dim, backbone.width, len(names)
        if config.bias != "none":
            self.reference = ReferenceEncoder(backbone.model, backbone.tokenizer, names, config.context_tokens)
            if config.position:
                self.position = torch.nn.Conv2d(width, dim, kernel_size=1)
            else:
                self.constant = torch.nn.Parameter(torch.zeros(1, dim, 1, 1))
        if config.decoder:
            self.decoder = torch.nn.Sequential(torch.nn.Conv2d(dim + count, count, kernel_size=5, padding=2),
                                               torch.nn.BatchNorm2d(count))
            torch.nn.init.kaiming_normal_(self.decoder[0].weight, mode="fan_out", nonlinearity="relu")
        self.scale = float(backbone.model.logit_scale.exp())
        if config.student:
            self.tower = backbone.model.visual  # the student's image tower: learned and saved
            for param in self.parameters():
                param.requires_grad_(False)
            for name, param in self.tower.named_parameters():
                param.requires_grad_(name != "positional_embedding")

    def train(self, mode: bool = True) -> "Rectifier":
        """A student's inherited decoder keeps the teacher's batch-norm statistics (eval mode)."""
        super().train(mode)
        if self.config.student and self.config.decoder:
            self.decoder.eval()
        return self

    @property
    def backbone(self) -> Any:
        return self._backbone[0]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` normalised images -> MaskCLIP's dense features ``Z`` ``(B, D, h, w)`` float32,
        L2-normalised (no gradients unless this is a student: CLIP is frozen)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.config.student):
            return self.backbone.maskclip_embeddings(images).permute(0, 3, 1, 2).float().contiguous()

    def bias_logits(self, grid: tuple[int, int]) -> torch.Tensor | None:
        """``M_b`` ``(C, h, w)`` float32 for a patch grid, or ``None`` without a bias.

        While the bias is not learning (prediction, a teacher, a student's inherited bias) it is
        computed once per grid and kept until its weights change, instead of running CLIP's text
        encoder on every batch.
        """
        if self.config.bias == "none":
            return None
        learned = [*self.reference.parameters(),
                   *(self.position.parameters() if self.config.position else [self.constant])]
        if torch.is_grad_enabled() and any(param.requires_grad for param in learned):
            return self._bias_logits(grid)
        key = (tuple(grid), torch.is_autocast_enabled(self.query.device.type),
               tuple((param.device, param.data_ptr(), param._version) for param in learned))
        cached = getattr(self, "_bias_cache", None)
        if cached is None or cached[0] != key:
            with torch.no_grad():
                self._bias_cache = cached = (key, self._bias_logits(grid))
        return cached[1]

    def _bias_logits(self, grid: tuple[int, int]) -> torch.Tensor:
        reference = self.reference()
        reference = reference / reference.norm()
        if self.config.position:
            with torch.no_grad():
                pos = self.backbone.positional_embedding(grid)[1:].float()
            pos = pos.T.reshape(1, -1, *grid).to(reference.device)
            positional = self.position(pos)[0]  # (D, h, w)
        else:
            positional = self.constant[0].expand(-1, *grid)
        return torch.einsum("dhw,cd->chw", positional, reference)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(B, 3, H, W)`` normalised images -> ``{"features" Z (B, D, h, w), "query" M_q, "bias" M_b
        (C, h, w) or absent, "rectified" M, "output" M_o}`` (logits ``(B, C, h, w)`` float32)."""
        features = self.features(images)
        query = torch.einsum("bdhw,cd->bchw", features, self.query)
        bias = self.bias_logits(tuple(features.shape[-2:]))
        out = {"features": features, "query": query}
        if bias is None:
            rectified = query
        else:
            out["bias"] = bias
            rectified = query - bias if self.config.bias == "subtract" else query + bias
        out["rectified"] = rectified
        out["output"] = self.decoder(torch.cat([features, rectified], dim=1)) if self.config.decoder else rectified
        return out

    def hard_masks(self, output: torch.Tensor) -> torch.Tensor:
        """Hard Gumbel-Softmax masks ``(B, C, h, w)`` of decoder logits: one-hot over the classes in
        the forward pass, the soft sample's gradients in the backward pass."""
        return F.gumbel_softmax(output * self.config.gumbel_scale, tau=self.config.gumbel_tau, hard=True, dim=1)

    def trainable(self) -> list[torch.nn.Parameter]:
        return [param for param in self.parameters() if param.requires_grad]


def hypothesis_loss(features: torch.Tensor, masks: torch.Tensor, query: torch.Tensor,
                    hypotheses: Sequence[Sequence[int]], scale: float) -> torch.Tensor | None:
    """ReCLIP++'s contrastive loss (Eq. 7) over each image's hypothesised classes.

    For image ``b`` and each class ``k`` of ``hypotheses[b]`` (channel indices, 1-based: 0 is the
    background), the mask-pooled feature ``z_k = mean_{h,w} Z[b] * masks[b, k]`` (averaged over
    every patch, as the official code does: a larger mask gives a larger feature) is scored against
    every Query feature, ``scale * z_k . W_q[j]``, and cross-entropy asks it to pick ``k``. Images
    without hypotheses are left out; the result is their mean, or ``None`` when no image has one.

    Args:
        features: ``(B, D, h, w)`` float, L2-normalised per patch.
        masks: ``(B, C, h, w)`` masks (hard Gumbel-Softmax samples).
        query: ``(C, D)`` Query text features.
        hypotheses: per image, the hypothesised channels.
        scale: CLIP's logit scale (``1 / tau``).
    """
    losses = []
    for b, chosen in enumerate(hypotheses):
        if not chosen:
            continue
        index = torch.as_tensor(list(chosen), dtype=torch.long, device=features.device)
        pooled = torch.einsum("dhw,khw->kd", features[b], masks[b, index]) / (features.shape[2] * features.shape[3])
        losses.append(F.cross_entropy(scale * pooled @ query.T, index))
    return torch.stack(losses).mean() if losses else None
