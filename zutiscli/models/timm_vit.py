"""Self-supervised ViTs through timm (DINO ViT-S/8 and kin) for dense features at any input size.

Mask discovery in the papers runs on DINO ViTs: SelfMask and MaskDistill on ViT-S/8 and ViT-S/16,
MaskCut on ViT-B/8. Name one as ``timm:<timm model name>`` (e.g. ``timm:vit_small_patch8_224``) or
by alias (``dino-vits8``, ``dino-vits16``, ``dino-vitb8``, ``dino-vitb16``), with
``pretrained`` = a local checkpoint file (DINO's released ``*_pretrain.pth`` state dicts use timm's
parameter names) or ``none``. Positional embeddings are resampled to every input's patch grid.

Shapes as in :mod:`zutiscli.models.clip`: images ``(B, 3, H, W)`` normalised with ImageNet mean/std
(:meth:`TimmViTBackbone.normalise`), dense tokens ``(B, H // p, W // p, width)``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from zutiscli.errors import ModelError
from zutiscli.models.features import LastBlockFeatures

DINO_ALIASES = {
    "dino-vits8": "vit_small_patch8_224",
    "dino-vits16": "vit_small_patch16_224",
    "dino-vitb8": "vit_base_patch8_224",
    "dino-vitb16": "vit_base_patch16_224",
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def is_timm_name(name: str) -> bool:
    """Whether a ``--model`` name refers to a timm ViT rather than an open_clip model."""
    return name.startswith("timm:") or name in DINO_ALIASES


def timm_name(name: str) -> str:
    return DINO_ALIASES.get(name, name.removeprefix("timm:"))


class TimmViTBackbone(torch.nn.Module):
    """A timm VisionTransformer exposing dense tokens and last-block features."""

    def __init__(self, model: torch.nn.Module, name: str, pretrained: str):
        super().__init__()
        self.model = model
        self.name = name
        self.pretrained = pretrained
        self.patch_size = int(model.patch_embed.patch_size[0])
        self.width = int(model.embed_dim)
        self.prefix_tokens = int(getattr(model, "num_prefix_tokens", 1))
        self.mean = IMAGENET_MEAN
        self.std = IMAGENET_STD

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` RGB in [0, 1] -> normalised with ImageNet mean and std."""
        mean = torch.tensor(self.mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        return (images - mean) / std

    def _embed(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        model = self.model
        images = images.to(device=self.device, dtype=self.dtype)
        height, width = images.shape[-2:]
        grid = (height // self.patch_size, width // self.patch_size)
        if 0 in grid:
            raise ValueError(f"input {(height, width)} is smaller than one {self.patch_size}px patch")
        images = images[..., : grid[0] * self.patch_size, : grid[1] * self.patch_size]
        x = model.patch_embed(images)
        x = model._pos_embed(x)
        x = model.patch_drop(x)
        return model.norm_pre(x), grid

    def dense_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Patch tokens after the final norm: ``(B, H // p, W // p, width)`` in the model dtype."""
        x, grid = self._embed(images)
        x = self.model.norm(self.model.blocks(x))
        return x[:, self.prefix_tokens:].reshape(x.shape[0], *grid, -1)

    def cls_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """The [CLS] token after the final norm (DINO's image representation): ``(B, width)``
        float32, not normalised; input ``(B, 3, H, W)`` normalised, any size.

        Raises :class:`ModelError` for a ViT without a [CLS] token.
        """
        if getattr(self.model, "cls_token", None) is None:
            raise ModelError(f"model {self.name} has no [CLS] token; use --features clip with a CLIP model")
        x, _ = self._embed(images)
        x = self.model.norm(self.model.blocks(x))
        return x[:, 0].float()

    def last_block_features(self, images: torch.Tensor) -> LastBlockFeatures:
        """Tokens, queries, keys, values and [CLS] attention of the last block."""
        x, grid = self._embed(images)
        blocks = list(self.model.blocks)
        for block in blocks[:-1]:
            x = block(x)
        last = blocks[-1]
        attention = last.attn
        if not hasattr(attention, "qkv") or getattr(attention, "gate", None) is not None:
            raise ModelError(f"model {self.name}: its last block is not standard attention; cannot read keys")
        batch, length, _ = x.shape
        heads, head_dim = attention.num_heads, attention.head_dim
        qkv = attention.qkv(last.norm1(x)).reshape(batch, length, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = attention.q_norm(q), attention.k_norm(k)
        weights = torch.softmax((q[:, :, :1].float() @ k.float().transpose(-1, -2)) * attention.scale, dim=-1)
        tokens = self.model.norm(last(x))
        start = self.prefix_tokens

        def grid_of(t: torch.Tensor) -> torch.Tensor:  # (B, heads, L, hd) -> (B, h, w, heads * hd)
            return t[:, :, start:].transpose(1, 2).reshape(batch, *grid, heads * head_dim)

        return LastBlockFeatures(
            tokens=tokens[:, start:].reshape(batch, *grid, -1),
            queries=grid_of(q),
            keys=grid_of(k),
            values=grid_of(v),
            cls_attention=weights[:, :, 0, start:].reshape(batch, heads, *grid).to(x.dtype),
        )


def check_timm_model(name: str) -> str:
    """The timm model name of ``name`` (alias, ``timm:...`` or bare); :class:`ModelError` if timm lacks it."""
    import timm

    model_name = timm_name(name)
    if model_name not in timm.list_models():
        raise ModelError(f"--model {name!r}: timm has no model {model_name!r} (aliases: {', '.join(DINO_ALIASES)})")
    return model_name


def timm_weights_file(pretrained: str) -> Path:
    """The local checkpoint file named by ``--pretrained`` for a timm ViT; :class:`ModelError` if absent."""
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise ModelError(
            f"--pretrained {pretrained}: no such checkpoint file (timm ViTs load local files only; "
            f"e.g. DINO's dino_deitsmall8_pretrain.pth)"
        )
    return path


def load_timm_vit(name: str, pretrained: str = "none", device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32, **overrides: object) -> TimmViTBackbone:
    """Build timm ViT ``name`` (alias, ``timm:...`` or bare timm name) and load a local checkpoint.

    ``overrides`` go to timm's constructor (e.g. ``depth=2, embed_dim=48`` for small test models).
    """
    import timm

    model_name = check_timm_model(name)
    try:
        model = timm.create_model(model_name, pretrained=False, num_classes=0, dynamic_img_size=True, **overrides)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"cannot build timm model {model_name}: {str(exc).splitlines()[0][:200]}") from exc
    if not hasattr(model, "patch_embed") or not hasattr(model, "blocks"):
        raise ModelError(f"--model {name}: not a plain ViT; dense features need one")
    if pretrained.lower() != "none":
        from zutiscli.models.clip import load_state_dict

        path = timm_weights_file(pretrained)
        state, _ = load_state_dict(path)
        for key in ("teacher", "student"):  # DINO training checkpoints hold both networks
            if any(k.startswith(f"{key}.backbone.") for k in state):
                state = {k[len(f"{key}.backbone."):]: v for k, v in state.items() if k.startswith(f"{key}.backbone.")}
                break
        state = {k: v for k, v in state.items() if not k.startswith(("head.", "fc_norm."))}
        if "pos_embed" in state and state["pos_embed"].shape != model.pos_embed.shape:
            from timm.layers import resample_abs_pos_embed

            old = int((state["pos_embed"].shape[1] - model.num_prefix_tokens) ** 0.5)
            state["pos_embed"] = resample_abs_pos_embed(
                state["pos_embed"], new_size=model.patch_embed.grid_size, old_size=(old, old),
                num_prefix_tokens=model.num_prefix_tokens,
            )
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            parts = []
            if result.missing_keys:
                parts.append(f"{len(result.missing_keys)} weights missing (e.g. {result.missing_keys[0]})")
            if result.unexpected_keys:
                parts.append(f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[0]})")
            raise ModelError(f"{path}: does not fit {model_name}: {'; '.join(parts)}; is --model right?")
    model.to(device=torch.device(device), dtype=dtype).eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return TimmViTBackbone(model, name, pretrained)

