"""The ZUTIS model: a CLIP image encoder trained to segment in CLIP's text space, plus a query decoder.

Semantic branch::

    tokens (B, h, w, width) = CLIP ViT patch tokens after ln_post (positions interpolated to any size)
    dense  (B, h, w, D)     = L2-normalise(LayerNorm(tokens @ W)),  W initialised from CLIP's projection
    logits (B, K, h, w)     = dense . text / temperature,  text = frozen CLIP text embeddings of
                              ["background", class_1, ..., class_C] (bare names), K = C + 1

Instance branch (patch tokens DETACHED by default: the decoder's gradients do not reach the encoder)::

    values (B, 2h * 2w, width) = MLP3(upsample_x2(tokens))   [+ Linear(sine positions) with positional_values]
    queries (L, B, Q, width)   = transformer decoder (Q learned queries, L layers) over the values
    masks  (L, B, Q, 2h, 2w)   = MLP3(queries) . values

The text encoder is frozen, so the classes can be swapped at inference (open vocabulary).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from zutiscli.models.clip import ClipBackbone
from zutiscli.models.decoder import MLP, QueryDecoder, sine_positions

if TYPE_CHECKING:
    from zutiscli.models.crop_classifier import CropAdapter

BACKGROUND = "background"


@dataclass
class ZutisConfig:
    """Architecture of a ZUTIS model (saved inside every checkpoint). Defaults = the official config."""

    backbone: dict[str, Any] = field(default_factory=lambda: {"name": "ViT-B-16", "pretrained": "openai"})
    num_queries: int = 100
    decoder_layers: int = 6
    decoder_heads: int = 8
    decoder_ffn: int = 2048
    decoder_dropout: float = 0.0
    mlp_hidden: int = 256
    temperature: float = 1.0
    stop_gradient: bool = True
    # Not in the paper: a learned projection of the sine positions added to the decoder's values.
    # A mask is ``query . value``, so without positions two instances that look alike get the same
    # logits; with them, a query can take one instance and leave the other.
    positional_values: bool = False
    background: str = BACKGROUND
    # Classes with no text (the clusters of `zutis cluster`): their names, whose embeddings are rows
    # of the model's class bank instead of text embeddings; learned in training, or fixed.
    class_bank: list[str] = field(default_factory=list)
    class_bank_learned: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str | None = None) -> "ZutisConfig":
        """The config saved in a checkpoint (unknown keys ignored). With ``where`` (the file), each
        known field's type is checked: a wrong one is an :class:`ArtefactError` naming the file and field."""
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        if where is not None:
            _check_config(values, where)
        return cls(**values)

    def differences(self, other: "ZutisConfig", mine: str, theirs: str) -> list[str]:
        """The fields that differ from ``other``, in words (``num_queries 6 in mine, 4 in theirs``)."""
        a, b = self.to_dict(), other.to_dict()
        return [f"{key} {a[key]!r} in {mine}, {b[key]!r} in {theirs}" for key in a if a[key] != b[key]]


def _check_config(values: dict[str, Any], where: str) -> None:
    from zutiscli.errors import ArtefactError

    def fail(name: str, expected: str) -> None:
        raise ArtefactError(f"{where}: its config field {name!r} is not {expected}; the file is damaged or was not "
                            f"written by `zutis train`")

    defaults = ZutisConfig()
    for name, value in values.items():
        default = getattr(defaults, name)
        if isinstance(default, bool):
            if not isinstance(value, bool):
                fail(name, "true or false")
        elif isinstance(default, int):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                fail(name, "an integer >= 1")
        elif isinstance(default, float):
            low = 0.0 if name == "decoder_dropout" else None  # the temperature must be > 0
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not (
                    value >= low if low is not None else value > 0) or value == float("inf"):
                fail(name, "a number >= 0" if low is not None else "a number > 0")
        elif isinstance(default, str):
            if not isinstance(value, str):
                fail(name, "a string")
        elif name == "class_bank":
            if not isinstance(value, list) or not all(isinstance(entry, str) and entry for entry in value) \
                    or len(set(value)) != len(value):
                fail(name, "a list of distinct class names")
        elif name == "backbone":
            if not isinstance(value, dict):
                fail(name, "a dict with the backbone's name and pretrained weights")
            for key in ("name", "pretrained"):
                if not isinstance(value.get(key), str) or not value.get(key):
                    fail(f"backbone.{key}", "a string")


class ZutisModel(nn.Module):
    """ZUTIS over a :class:`ClipBackbone` (whose image tower becomes trainable, text tower stays frozen)."""

    def __init__(self, backbone: ClipBackbone, config: ZutisConfig):
        super().__init__()
        self.config = config
        self.backbone = backbone
        width, dim = backbone.width, backbone.embed_dim
        visual = backbone.model.visual
        for param in visual.parameters():
            param.requires_grad_(True)
        visual.proj.requires_grad_(False)  # replaced by self.projection; kept for the text-space reference
        self.projection = nn.Parameter(visual.proj.detach().clone().float())
        self.norm = nn.LayerNorm(dim)
        self.pixel_mlp = MLP(width, config.mlp_hidden, width, layers=3)
        self.decoder = QueryDecoder(width, config.num_queries, config.decoder_layers, config.decoder_heads,
                                    config.decoder_ffn, config.decoder_dropout)
        self.query_mlp = MLP(width, config.mlp_hidden, width, layers=3)
        self.value_positions = nn.Linear(width, width) if config.positional_values else None
        self._text_cache: dict[tuple[str, ...], torch.Tensor] = {}
        bank = torch.zeros(len(config.class_bank), dim) if config.class_bank else None
        if bank is not None and config.class_bank_learned:
            self.class_bank = nn.Parameter(bank)
        else:  # fixed rows (or none): saved with the weights, never trained
            self.register_buffer("class_bank", bank)
        # the crop classifier's adapter fitted for this model's base CLIP (zutiscli.models.crop_classifier),
        # set by `zutis train` and by loading a checkpoint that holds one; not a parameter of the network
        self.crop_adapter: CropAdapter | None = None
        # stuff clusters that travel with a model trained on clusters (zutiscli.models.stuff_probe); not a parameter
        self.stuff_probe: Any = None

    # ---- parameter groups -------------------------------------------------------------------
    def encoder_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters of the CLIP image encoder (the 0.1x learning-rate group)."""
        return [p for p in self.backbone.model.visual.parameters() if p.requires_grad]

    def head_parameters(self) -> list[nn.Parameter]:
        """Projection, norm, MLPs, queries and decoder (the 1x learning-rate group)."""
        encoder = {id(p) for p in self.backbone.parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in encoder]

    # ---- text -------------------------------------------------------------------------------
    def set_class_bank(self, vectors: torch.Tensor) -> None:
        """Set the class bank's rows (``(B, D)`` float, one per name of ``config.class_bank``, e.g.
        the clusters' centroids in CLIP's image-embedding space); they are L2-normalised."""
        if self.class_bank is None or tuple(vectors.shape) != tuple(self.class_bank.shape):
            raise ValueError(f"class bank rows of shape {tuple(vectors.shape)} do not fit "
                             f"{None if self.class_bank is None else tuple(self.class_bank.shape)}")
        with torch.no_grad():
            self.class_bank.copy_(F.normalize(vectors.float(), dim=-1))

    def text_embeddings(self, classes: list[str]) -> torch.Tensor:
        """``(1 + C, D)`` float32 embeddings of ``[background] + classes``: a name of the class bank
        (``config.class_bank``) gets its row, L2-normalised (carrying gradients when the bank is
        learned); any other name its text embedding (bare name, cached)."""
        bank = {name: row for row, name in enumerate(self.config.class_bank)}
        if self.class_bank is None or not any(name in bank for name in classes):
            return self._text(list(classes))
        text = self._text([name for name in classes if name not in bank])  # background first
        rows, position = [text[0]], 1
        normalised = F.normalize(self.class_bank.float(), dim=-1)
        for name in classes:
            if name in bank:
                rows.append(normalised[bank[name]].to(text.device))
            else:
                rows.append(text[position])
                position += 1
        return torch.stack(rows)

    def _text(self, classes: list[str]) -> torch.Tensor:
        """``(1 + C, D)`` float32 text embeddings of ``[background] + classes`` (bare names), cached."""
        key = (self.config.background, *classes)
        if key not in self._text_cache:
            was_training = self.backbone.model.training
            self.backbone.model.eval()
            with torch.no_grad():
                self._text_cache[key] = self.backbone.encode_text(list(key), templates="names").detach()
            self.backbone.model.train(was_training)
        return self._text_cache[key]

    # ---- forward ----------------------------------------------------------------------------
    def dense_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens ``(B, h, w, width)`` -> text-space embeddings ``(B, h, w, D)`` float32, L2-normalised."""
        projected = tokens.to(self.projection.dtype) @ self.projection
        return F.normalize(self.norm(projected), dim=-1)

    def semantic_logits(self, dense: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """``(B, h, w, D)`` x ``(K, D)`` -> ``(B, K, h, w)`` cosine logits divided by the temperature."""
        return torch.einsum("bhwd,kd->bkhw", dense, text.to(dense.dtype)) / self.config.temperature

    def mask_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Per-layer query mask logits ``(L, B, Q, 2h, 2w)`` from tokens ``(B, h, w, width)``."""
        if self.config.stop_gradient:
            tokens = tokens.detach()
        tokens = tokens.to(self.pixel_mlp[0].weight.dtype)  # a bf16/fp16 encoder feeds float32 heads
        batch, height, width, channels = tokens.shape
        grid = F.interpolate(tokens.permute(0, 3, 1, 2), scale_factor=2, mode="bilinear", align_corners=False)
        values = self.pixel_mlp(grid.flatten(2).transpose(1, 2))  # (B, 4hw, width)
        positions = sine_positions(2 * height, 2 * width, channels, device=values.device, dtype=values.dtype)
        if self.value_positions is not None:
            values = values + self.value_positions(positions)
        queries = self.decoder(values, positions)  # (L, B, Q, width)
        embedded = self.query_mlp(queries)
        logits = torch.einsum("lbqc,bpc->lbqp", embedded, values)
        return logits.reshape(*logits.shape[:3], 2 * height, 2 * width)

    def forward(self, images: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        """``images (B, 3, H, W)`` normalised, ``text (K, D)`` -> ``dense``, ``semantic_logits``, ``mask_logits``.

        Shapes: dense ``(B, h, w, D)``, semantic_logits ``(B, K, h, w)``, mask_logits
        ``(L, B, Q, 2h, 2w)`` with ``h, w = H // p, W // p``.
        """
        tokens = self.backbone.dense_tokens(images)
        dense = self.dense_embeddings(tokens)
        return {
            "dense": dense,
            "semantic_logits": self.semantic_logits(dense, text),
            "mask_logits": self.mask_logits(tokens),
        }
