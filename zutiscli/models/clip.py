"""The CLIP backbone: any open_clip ViT, with dense patch tokens at any input size.

A model is named by a :class:`ModelSpec`: an open_clip model name (``ViT-B-16``, ``ViT-L-14-336``,
``hf-hub:org/repo``, or one of zutis' own configs such as ``zutis-tiny``) and where its weights come
from: an open_clip pretrained tag (``openai``, ``laion2b_s34b_b88k``), a local checkpoint file, or
``none`` (random initialisation, for tests).

OpenAI's CLIP weights were trained with QuickGELU; open_clip's plain model names use GELU and only
warn on a mismatch. zutis builds the model with QuickGELU whenever the tag says so, and whenever a
local file is an OpenAI TorchScript archive. For an OpenAI state dict in a plain file, name the
model ``ViT-B-16-quickgelu`` (open_clip's QuickGELU variant).

Shapes: images ``(B, 3, H, W)`` float, normalised with the model's mean/std; pooled embeddings
``(B, D)``; text embeddings ``(C, D)``; dense tokens ``(B, H // p, W // p, width)`` and dense
embeddings ``(B, H // p, W // p, D)``, with ``p`` the patch size (pixels beyond a multiple of ``p``
are not seen, as with any stride-``p`` patch embedding). Embeddings are returned as float32.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import urllib.parse
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from zutiscli.errors import ModelError, UsageError
from zutiscli.models import CONFIG_DIR

if TYPE_CHECKING:
    from zutiscli.models.features import LastBlockFeatures

#: Weights shipped inside the package, by model name: ``--pretrained builtin``.
BUILTIN_DIR = Path(__file__).with_name("weights")
_REGISTERED = False

#: The 5 templates MaskCLIP added to CLIP's 80 ImageNet templates ("{}" = class name).
SCENE_TEMPLATES: tuple[str, ...] = (
    "there is a {} in the scene.",
    "there is the {} in the scene.",
    "this is a {} in the scene.",
    "this is the {} in the scene.",
    "this is one {} in the scene.",
)


def _openai_imagenet_templates() -> tuple[str, ...]:
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return tuple(template("{}") for template in OPENAI_IMAGENET_TEMPLATES)


def ensemble_templates() -> tuple[str, ...]:
    """The 85-template prompt ensemble of MaskCLIP, ReCo and ZUTIS: 80 CLIP ImageNet + 5 scene."""
    return _openai_imagenet_templates() + SCENE_TEMPLATES


def register_configs() -> None:
    """Make zutis' own model configs (``models/configs/*.json``) known to open_clip by name."""
    global _REGISTERED
    if not _REGISTERED:
        import open_clip

        open_clip.add_model_config(CONFIG_DIR)
        _REGISTERED = True


@dataclass(frozen=True)
class ModelSpec:
    """Which network and which weights: ``name`` (open_clip model name) + ``pretrained``.

    ``pretrained`` is an open_clip tag, a path to a local checkpoint file, ``"builtin"`` (weights
    shipped in the package, see :func:`builtin_weights`), or ``"none"``.
    """

    name: str
    pretrained: str = "none"

    @property
    def weights_file(self) -> Path | None:
        """The local checkpoint file, when ``pretrained`` is a path rather than a tag or none."""
        if self.pretrained.lower() in ("none", "builtin"):
            return None
        if os.sep in self.pretrained or self.pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")):
            return Path(self.pretrained).expanduser()
        candidate = Path(self.pretrained).expanduser()
        return candidate if candidate.is_file() else None

    def describe(self) -> dict[str, Any]:
        """JSON-ready description for manifests; a local file is recorded with its fingerprint."""
        out: dict[str, Any] = {"name": self.name, "pretrained": self.pretrained}
        file = self.weights_file
        if file is not None:
            from zutiscli.artefacts.manifest import fingerprint

            out["pretrained"] = str(file.resolve())
            out["weights_fingerprint"] = fingerprint(file) if file.is_file() else None
        return out

    def __str__(self) -> str:
        return f"{self.name} ({self.pretrained})"


def builtin_weights(name: str) -> Path:
    """The weights file shipped in the package for model ``name`` (``models/weights/<name>.pt``)."""
    path = BUILTIN_DIR / f"{name}.pt"
    if not path.is_file():
        shipped = sorted(p.stem for p in BUILTIN_DIR.glob("*.pt")) if BUILTIN_DIR.is_dir() else []
        which = f"only {', '.join(shipped)} ha{'s' if len(shipped) == 1 else 've'} them" if shipped else "none are shipped"
        raise ModelError(f"--pretrained builtin: zutis ships no weights for {name} ({which})")
    return path


def check_model_name(name: str) -> None:
    """Raise :class:`ModelError`, with similar names, unless ``name`` is an open_clip or zutis model name."""
    import open_clip

    register_configs()
    if name.startswith(("hf-hub:", "local-dir:")):
        return
    if name.replace("/", "-") not in open_clip.list_models():
        close = [m for m in open_clip.list_models() if name.lower().replace("/", "-") in m.lower()][:5]
        hint = f" (similar: {', '.join(close)})" if close else "; `python -c 'import open_clip; print(open_clip.list_models())'` lists them"
        raise ModelError(f"--model {name!r} is not an open_clip model name{hint}")


def vision_config(name: str) -> dict[str, Any]:
    """The image tower's config of the model a config names (zutis' or open_clip's), without building
    it. Raises :class:`ModelError` for hub names (``hf-hub:``, ``local-dir:``), which have no local
    config, and for unknown names."""
    import open_clip

    if name.startswith(("hf-hub:", "local-dir:")):
        raise ModelError(f"--model {name!r}: give the name of a model config (open_clip.list_models()), "
                         "not a hub or directory model")
    check_model_name(name)
    return dict(open_clip.get_model_config(name.replace("/", "-"))["vision_cfg"])


def config_input_size(name: str) -> int:
    """The square input side, in pixels, of the model a config names (:func:`vision_config`)."""
    size = vision_config(name)["image_size"]
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def config_is_plain_vit(name: str) -> bool:
    """Whether the config names a plain ViT image tower (no attention pooling, not a ResNet or a timm
    tower): the towers :class:`ClipBackbone` gives dense features of."""
    vision = vision_config(name)
    return isinstance(vision.get("layers"), int) and not vision.get("attentional_pool") and \
        not vision.get("timm_model_name")


@contextlib.contextmanager
def named_by(where: str | Path, model: str | None = None, weights: str | None = None) -> Iterator[None]:
    """Within the block, errors about a model named by a file, not by the user, blame that file.

    ``where`` is the file (a checkpoint, a manifest); ``model`` and ``weights`` say how it names
    the model and its weights (``"its config names backbone"``), for the messages that would
    otherwise name the ``--model``/``--pretrained`` option the user did not give (None: that
    option was the user's, its messages stay as they are). Other model errors get ``where:`` in front.
    """
    try:
        yield
    except ModelError as exc:
        message = str(exc)
        match = re.match(r"--(model|pretrained) ('[^']*'|\S+?)(:?) (.*)", message, re.S)
        words = {"model": model, "pretrained": weights}.get(match.group(1)) if match else None
        if match and words is None:
            raise
        if match:
            value, colon, rest = match.group(2), match.group(3), match.group(4)
            joint = ", which " if not colon and rest.startswith(("is ", "has ")) else ": "
            message = f"{words} {value}{joint}{rest}"
        raise ModelError(f"{where}: {message}") from None


def _hf_cache_lookup(cfg: dict[str, Any], cache_dir: str | None) -> str | None:
    hub = cfg.get("hf_hub", "")
    if not hub:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    model_id, filename = os.path.split(hub)
    filename = filename or "open_clip_pytorch_model.bin"
    candidates = [filename]
    if filename == "open_clip_pytorch_model.bin":
        candidates.insert(0, "open_clip_model.safetensors")
    elif filename.endswith((".bin", ".pth")):
        candidates.insert(0, filename[:-4] + ".safetensors")
    for candidate in candidates:
        found = try_to_load_from_cache(repo_id=model_id, filename=candidate, cache_dir=cache_dir)
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None


def _url_cache_lookup(cfg: dict[str, Any], cache_dir: str | None) -> str | None:
    url = cfg.get("url", "")
    if not url:
        return None
    target = Path(cache_dir or os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
    return str(target) if target.is_file() else None


def _reachable(cfg: dict[str, Any], timeout: float = 3.0) -> bool:
    hosts = []
    if cfg.get("hf_hub"):
        hosts.append(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    if cfg.get("url"):
        hosts.append(cfg["url"])
    for address in hosts:
        host = urllib.parse.urlparse(address).hostname
        if not host:
            continue
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            return True
        except OSError:
            continue
    return False


#: Environment variable naming zutis' cache root; model weights live in its ``models`` folder.
CACHE_ENV = "ZUTIS_CACHE_DIR"


def model_cache_dir(cache_dir: str | None = None) -> str | None:
    """The cache directory for open_clip/Hugging Face weights: ``cache_dir`` when given, else
    ``$ZUTIS_CACHE_DIR/models`` when that variable is set, else ``None`` (the libraries' own defaults:
    ``~/.cache/huggingface`` and ``~/.cache/clip``)."""
    if cache_dir is not None:
        return cache_dir
    root = os.environ.get(CACHE_ENV, "").strip()
    return str(Path(root).expanduser() / "models") if root else None


def locate_pretrained(spec: ModelSpec, cache_dir: str | None = None) -> tuple[Path | None, dict[str, Any], str]:
    """Where the weights of ``spec`` are, without reading, building or downloading anything.

    Returns ``(path, pretrained config of the tag or {}, source)`` with source ``"none"`` (random
    init, no path), ``"builtin"``, ``"file"`` (a readable local file), ``"cached"`` (a tag found
    in the open_clip/Hugging Face caches) or ``"download"`` (a tag not cached here; no path).
    Raises :class:`ModelError` for a missing or unreadable file or an unknown tag.
    """
    import open_clip

    cache_dir = model_cache_dir(cache_dir)
    if spec.pretrained.lower() == "none" or spec.name.startswith(("hf-hub:", "local-dir:")):
        return None, {}, "none"
    if spec.pretrained.lower() == "builtin":
        return builtin_weights(spec.name), {}, "builtin"
    file = spec.weights_file
    if file is not None:
        if not file.is_file():
            raise ModelError(f"--pretrained {file}: no such checkpoint file")
        if not os.access(file, os.R_OK):
            raise ModelError(f"--pretrained {file}: the checkpoint file is not readable; check its permissions")
        return file, {}, "file"
    name = spec.name.replace("/", "-")
    cfg = open_clip.get_pretrained_cfg(name, spec.pretrained)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(name)
        known = f"known tags for {name}: {', '.join(tags)}" if tags else f"open_clip has no pretrained tags for {name}"
        raise ModelError(
            f"--pretrained {spec.pretrained!r} is neither a checkpoint file nor a tag of {name} ({known})"
        )
    if cfg.get("file"):
        return Path(cfg["file"]), cfg, "file"
    cached = _hf_cache_lookup(cfg, cache_dir) or _url_cache_lookup(cfg, cache_dir)
    if cached:
        return Path(cached), cfg, "cached"
    return None, cfg, "download"


def resolve_pretrained(spec: ModelSpec, cache_dir: str | None = None) -> tuple[Path | None, dict[str, Any]]:
    """Find the weights file of ``spec`` without building a model.

    Returns ``(path or None for random init, pretrained config of the tag or {})``. A tag is looked
    up in the open_clip/Hugging Face caches first; it is downloaded only when not cached and the
    network answers. Raises :class:`ModelError` with what to do otherwise.
    """
    import open_clip

    cache_dir = model_cache_dir(cache_dir)
    path, cfg, source = locate_pretrained(spec, cache_dir)
    if source != "download":
        return path, cfg
    name = spec.name.replace("/", "-")
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false") or not _reachable(cfg)
    if offline:
        raise ModelError(
            f"weights {name}/{spec.pretrained} are not in the local cache and cannot be downloaded "
            f"(no network); copy the checkpoint file here and pass --pretrained /path/to/file.pt"
        )
    try:
        return Path(open_clip.download_pretrained(cfg, cache_dir=cache_dir)), cfg
    except Exception as exc:  # noqa: BLE001 - any download failure is the same advice
        raise ModelError(
            f"could not download weights {name}/{spec.pretrained} ({type(exc).__name__}); "
            f"pass --pretrained /path/to/file.pt"
        ) from exc


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in archive.namelist())


def load_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], bool]:
    """Read model weights from a checkpoint file, safely.

    Handles safetensors, ``torch.save`` files (loaded with ``weights_only=True``; a top-level
    ``state_dict``/``model`` entry is unwrapped and a DDP ``module.`` prefix stripped) and OpenAI's
    TorchScript archives (read as an archive of tensors, never unpickled as Python).
    Returns ``(state_dict, is_openai_torchscript)``.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu"), False
        except Exception as exc:  # noqa: BLE001
            raise ModelError(f"{path}: not a readable safetensors file ({exc})") from None
    if _is_torchscript(path):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                state = torch.jit.load(str(path), map_location="cpu").state_dict()
        except Exception as exc:  # noqa: BLE001
            raise ModelError(f"{path}: a TorchScript archive that torch cannot read ({exc})") from None
        for key in ("input_resolution", "context_length", "vocab_size"):
            state.pop(key, None)
        return dict(state), True
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"{path}: not a checkpoint that loads with torch.load(weights_only=True) ({reason[:160]})"
        ) from None
    if isinstance(data, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(data.get(key), dict):
                data = data[key]
                break
    if not isinstance(data, dict) or not data or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ModelError(f"{path}: holds no state dict of tensors")
    if all(k.startswith("module.") for k in data):
        data = {k[len("module."):]: v for k, v in data.items()}
    return data, False


def _load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, name: str) -> None:
    from open_clip.convert import convert_state_dict
    from open_clip.model import resize_pos_embed

    state = convert_state_dict(model, dict(state))
    positions = state.get("visual.positional_embedding")
    if positions is not None and positions.is_floating_point():
        # in fp32: fp16 files (the shipped weights, train-clip's) could not have their positions resized;
        # the rest stays as stored, load_state_dict casts it into the model's parameters
        state["visual.positional_embedding"] = positions.float()
    persistent = set(model.state_dict())
    for buffer, _ in model.named_buffers():
        if buffer not in persistent:  # e.g. the text attention mask, saved by TorchScript archives
            state.pop(buffer, None)
    if "logit_scale" in state and state["logit_scale"].ndim != model.logit_scale.ndim:
        state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            resize_pos_embed(state, model)
        result = model.load_state_dict(state, strict=False)
    except (RuntimeError, ValueError) as exc:  # tensors of another architecture's shapes
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        first = next((line for line in lines if "size mismatch" in line), lines[0] if lines else type(exc).__name__)
        raise ModelError(f"{path}: does not fit model {name}: {first[:200]}; is --model right?") from None
    missing = [k for k in result.missing_keys if not k.endswith("logit_bias")]
    if missing or result.unexpected_keys:
        parts = []
        if missing:
            parts.append(f"{len(missing)} weights missing (e.g. {missing[0]})")
        if result.unexpected_keys:
            parts.append(f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[0]})")
        raise ModelError(f"{path}: does not fit model {name}: {'; '.join(parts)}; is --model right?")


class ClipBackbone(torch.nn.Module):
    """An open_clip CLIP model with pooled, text and dense (per-patch) encoders.

    Build it with :func:`load_backbone`. The positional embedding is interpolated bicubically to
    the patch grid of each input size; the result is cached per grid size while the weights do
    not change (it is recomputed when they are being trained).
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Callable[..., torch.Tensor], spec: ModelSpec,
                 preprocess_cfg: dict[str, Any]):
        super().__init__()
        from open_clip.transformer import VisionTransformer

        self.model = model
        self.tokenizer = tokenizer
        self.spec = spec
        visual = model.visual
        self.is_vit = isinstance(visual, VisionTransformer) and visual.attn_pool is None
        self.image_size: tuple[int, int] = tuple(visual.image_size) if hasattr(visual, "image_size") else (224, 224)
        self.patch_size: int = int(visual.patch_size[0]) if self.is_vit else 0
        self.width: int = int(visual.conv1.out_channels) if self.is_vit else 0
        self.embed_dim: int = int(visual.output_dim)
        self.mean = tuple(float(v) for v in preprocess_cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)))
        self.std = tuple(float(v) for v in preprocess_cfg.get("std", (0.26862954, 0.26130258, 0.27577711)))
        self.preprocess_cfg = dict(preprocess_cfg)
        self._pos_cache: dict[tuple, torch.Tensor] = {}

    # ---- properties -------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.visual.conv1.weight.dtype if self.is_vit else next(self.model.parameters()).dtype

    def transform(self) -> Callable[[Any], torch.Tensor]:
        """The model's evaluation preprocessing for pooled embeddings (resize, centre crop, normalise)."""
        from open_clip.transform import image_transform

        return image_transform(
            self.image_size,
            is_train=False,
            mean=self.mean,
            std=self.std,
            resize_mode=self.preprocess_cfg.get("resize_mode"),
            interpolation=self.preprocess_cfg.get("interpolation"),
        )

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` float RGB in [0, 1] -> normalised with the model's mean and std."""
        mean = torch.tensor(self.mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        return (images - mean) / std

    # ---- encoders ---------------------------------------------------------------------------
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled image embeddings ``(B, D)`` float32, L2-normalised; input ``(B, 3, H, W)`` normalised."""
        images = images.to(device=self.device, dtype=self.dtype)
        return F.normalize(self.model.encode_image(images).float(), dim=-1)

    def encode_text(
        self,
        names: Sequence[str],
        templates: str | Sequence[str] = "ensemble",
        batch_size: int = 256,
    ) -> torch.Tensor:
        """Text embeddings ``(C, D)`` float32, L2-normalised, one per name.

        ``templates``: ``"ensemble"`` (85 templates), ``"names"`` (bare names), or a sequence of
        templates with ``{}`` for the name. With several templates each prompt embedding is
        L2-normalised, the C prompts' mean taken and renormalised (CLIP's zero-shot recipe).
        """
        if templates == "ensemble":
            chosen: Sequence[str] = ensemble_templates()
        elif templates == "names":
            chosen = ("{}",)
        elif isinstance(templates, str):
            raise ValueError(f"templates must be 'ensemble', 'names' or a sequence, got {templates!r}")
        else:
            chosen = tuple(templates)
        if not chosen:
            raise ValueError("at least one template is needed")
        prompts = [t.replace("{}", name) for name in names for t in chosen]
        chunks = []
        for start in range(0, len(prompts), batch_size):
            tokens = self.tokenizer(prompts[start:start + batch_size]).to(self.device)
            chunks.append(F.normalize(self.model.encode_text(tokens).float(), dim=-1))
        if not chunks:
            return torch.zeros(0, self.embed_dim)
        per_prompt = torch.cat(chunks).view(len(names), len(chosen), -1)
        return F.normalize(per_prompt.mean(dim=1), dim=-1)

    def positional_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        """Positional embedding ``(1 + gh * gw, width)`` for a ``grid = (gh, gw)`` patch grid."""
        visual = self.model.visual
        pos = visual.positional_embedding
        base = visual.grid_size
        if tuple(grid) == tuple(base):
            return pos
        trainable = torch.is_grad_enabled() and pos.requires_grad
        key = (tuple(grid), pos.dtype, pos.device, pos.data_ptr(), pos._version)
        if not trainable and key in self._pos_cache:
            return self._pos_cache[key]
        cls_pos, grid_pos = pos[:1], pos[1:]
        grid_pos = grid_pos.reshape(1, base[0], base[1], -1).permute(0, 3, 1, 2).float()
        grid_pos = F.interpolate(grid_pos, size=tuple(grid), mode="bicubic", align_corners=False)
        grid_pos = grid_pos.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1).to(pos.dtype)
        result = torch.cat([cls_pos, grid_pos], dim=0)
        if not trainable:
            self._pos_cache = {k: v for k, v in self._pos_cache.items() if k[3:] == key[3:]}
            self._pos_cache[key] = result
        return result

    def _require_vit(self) -> None:
        if not self.is_vit:
            raise ModelError(
                f"model {self.spec.name} has no plain ViT image tower; dense features need one (e.g. ViT-B-16)"
            )

    def _embed(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch embedding + [CLS] + positions + pre-norm: ``(B, 1 + gh * gw, width)`` and the grid."""
        self._require_vit()
        visual = self.model.visual
        images = images.to(device=self.device, dtype=self.dtype)
        x = visual.conv1(images)
        batch, _, gh, gw = x.shape
        if gh == 0 or gw == 0:
            raise ValueError(f"input {tuple(images.shape[-2:])} is smaller than one {self.patch_size}px patch")
        x = x.flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(batch, 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding((gh, gw)).to(x.dtype)
        x = visual.patch_dropout(x)
        return visual.ln_pre(x), (gh, gw)

    def dense_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Patch tokens after the final layer norm: ``(B, H // p, W // p, width)`` in the model dtype."""
        x, (gh, gw) = self._embed(images)
        x = self.model.visual.transformer(x)
        x = self.model.visual.ln_post(x[:, 1:])
        return x.reshape(x.shape[0], gh, gw, -1)

    @property
    def depth(self) -> int:
        """Blocks of the image tower (a ViT's transformer layers)."""
        self._require_vit()
        return len(self.model.visual.transformer.resblocks)

    def block_tokens(self, images: torch.Tensor, blocks: int) -> torch.Tensor:
        """Patch tokens after the first ``blocks`` blocks of the image tower (0: the patch embedding with
        its positions and pre-norm): ``(B, H // p, W // p, width)`` in the model dtype, not normalised;
        input ``(B, 3, H, W)`` normalised. The stuff features of ``zutis cluster --stuff-k``."""
        if not 0 <= blocks <= self.depth:
            raise ValueError(f"blocks must lie in [0, {self.depth}], got {blocks}")
        x, (gh, gw) = self._embed(images)
        transformer = self.model.visual.transformer
        batch_first = getattr(transformer, "batch_first", True)
        if not batch_first:
            x = x.transpose(0, 1)
        for block in transformer.resblocks[:blocks]:
            x = block(x)
        if not batch_first:
            x = x.transpose(0, 1)
        return x[:, 1:].reshape(x.shape[0], gh, gw, -1)

    def cls_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """The [CLS] token of the last layer after the final layer norm, before CLIP's projection:
        ``(B, width)`` float32, not normalised; input ``(B, 3, H, W)`` normalised, any size.

        Raises :class:`ModelError` for a tower that pools its patch tokens instead (its [CLS] token
        was never trained to describe the image).
        """
        visual = self.model.visual
        pool = getattr(visual, "pool_type", "tok")
        if pool != "tok" or getattr(visual, "final_ln_after_pool", False):
            raise ModelError(f"model {self.spec.name} pools its patch tokens ({pool}), so its [CLS] token does "
                             f"not describe the image; use its image embedding instead (--features clip)")
        x, _ = self._embed(images)
        x = visual.transformer(x)
        return visual.ln_post(x[:, 0]).float()

    def last_block_features(self, images: torch.Tensor) -> "LastBlockFeatures":
        """Tokens, queries, keys, values and [CLS] attention of the last block (see :class:`LastBlockFeatures`)."""
        from zutiscli.models.features import LastBlockFeatures

        x, (gh, gw) = self._embed(images)
        transformer = self.model.visual.transformer
        batch_first = getattr(transformer, "batch_first", True)
        blocks = transformer.resblocks
        last = blocks[-1]
        attention = getattr(last, "attn", None)
        if not isinstance(attention, torch.nn.MultiheadAttention) or getattr(attention, "in_proj_weight", None) is None:
            raise ModelError(f"model {self.spec.name}: its last block is not standard attention; cannot read keys")
        if not batch_first:
            x = x.transpose(0, 1)
        for block in blocks[:-1]:
            x = block(x)
        if not batch_first:
            x = x.transpose(0, 1)
        batch, length, width = x.shape
        heads = attention.num_heads
        q, k, v = F.linear(last.ln_1(x), attention.in_proj_weight, attention.in_proj_bias).chunk(3, dim=-1)
        qh = q[:, :1].reshape(batch, 1, heads, width // heads).transpose(1, 2)
        kh = k.reshape(batch, length, heads, width // heads).transpose(1, 2)
        weights = torch.softmax((qh.float() @ kh.float().transpose(-1, -2)) * (width // heads) ** -0.5, dim=-1)
        out = last(x if batch_first else x.transpose(0, 1))
        out = out if batch_first else out.transpose(0, 1)
        tokens = self.model.visual.ln_post(out[:, 1:])

        def grid(t: torch.Tensor) -> torch.Tensor:
            return t[:, 1:].reshape(batch, gh, gw, -1)

        return LastBlockFeatures(
            tokens=tokens.reshape(batch, gh, gw, -1),
            queries=grid(q),
            keys=grid(k),
            values=grid(v),
            cls_attention=weights[:, :, 0, 1:].reshape(batch, heads, gh, gw).to(x.dtype),
        )

    def encode_with_dense(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The pooled embedding and MaskCLIP's dense embeddings of the same forward pass.

        The tower runs once up to the input ``x`` of its last block; the block then gives the
        pooled embedding as usual, and each patch's value path: the last attention's value
        projection of ``ln_1(x)``, its output projection (and layer scale), the final layer norm and
        CLIP's projection, i.e. the query--key mixing, the residual and the last MLP skipped
        (MaskCLIP, Zhou et al. 2022). Gradients flow when enabled (training uses both outputs).

        Args:
            images: ``(B, 3, H, W)`` normalised images.

        Returns:
            ``pooled`` ``(B, D)`` and ``dense`` ``(B, H // p, W // p, D)``, neither normalised, in
            the model dtype.

        Raises:
            ModelError: the tower pools otherwise than by its [CLS] token or by averaging, or its
                last block is not standard attention.
        """
        visual = self.model.visual
        x, (gh, gw) = self._embed(images)
        transformer = visual.transformer
        last = transformer.resblocks[-1]
        attention = getattr(last, "attn", None)
        pool = getattr(visual, "pool_type", "tok")
        if pool not in ("tok", "avg") or getattr(visual, "final_ln_after_pool", False) \
                or not isinstance(attention, torch.nn.MultiheadAttention) \
                or getattr(attention, "in_proj_weight", None) is None:
            raise ModelError(f"model {self.spec.name}: MaskCLIP needs a ViT pooled by [CLS] or by averaging "
                             "whose last block is standard attention")
        batch_first = getattr(transformer, "batch_first", True)
        if not batch_first:
            x = x.transpose(0, 1)
        for block in transformer.resblocks[:-1]:
            x = block(x)
        out = last(x)
        if not batch_first:
            x, out = x.transpose(0, 1), out.transpose(0, 1)
        width = x.shape[-1]
        values = F.linear(last.ln_1(x[:, 1:]), attention.in_proj_weight[2 * width:],
                          None if attention.in_proj_bias is None else attention.in_proj_bias[2 * width:])
        out = visual.ln_post(out)
        pooled = out[:, 0] if pool == "tok" else out[:, 1:].mean(dim=1)
        return self.project(pooled), self._value_path(values).reshape(x.shape[0], gh, gw, -1)

    def _value_path(self, values: torch.Tensor) -> torch.Tensor:
        """The last attention's value projections ``(..., width)`` -> MaskCLIP's embeddings ``(..., D)``:
        output projection, layer scale, final layer norm and CLIP's projection."""
        last = self.model.visual.transformer.resblocks[-1]
        return self.project(self.model.visual.ln_post(last.ls_1(last.attn.out_proj(values))))

    def maskclip_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """MaskCLIP's dense features: ``(B, H // p, W // p, D)`` float32, L2-normalised, in the text space
        (the value path of :meth:`encode_with_dense`)."""
        return F.normalize(self.encode_with_dense(images)[1].float(), dim=-1)

    def maskclip_from_values(self, values: torch.Tensor) -> torch.Tensor:
        """:meth:`maskclip_embeddings` from the ``values`` of :meth:`last_block_features` of the same
        images (``(B, h, w, width)``), without a second forward pass."""
        return F.normalize(self._value_path(values).float(), dim=-1)

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens ``(..., width)`` -> text space ``(..., D)`` through CLIP's visual projection."""
        return tokens @ self.model.visual.proj.to(tokens.dtype)

    def dense_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """Patch embeddings in the text space, ``(B, H // p, W // p, D)`` float32, L2-normalised."""
        return F.normalize(self.project(self.dense_tokens(images)).float(), dim=-1)


def load_backbone(
    spec: ModelSpec,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    cache_dir: str | None = None,
) -> ClipBackbone:
    """Build the open_clip model of ``spec``, load its weights, move it to ``device``/``dtype``.

    The model is returned in eval mode. Errors that a user can fix raise :class:`ModelError`.
    """
    import open_clip

    register_configs()
    check_model_name(spec.name)
    cache_dir = model_cache_dir(cache_dir)
    path, tag_cfg = resolve_pretrained(spec, cache_dir)
    state: dict[str, torch.Tensor] | None = None
    openai_archive = False
    if path is not None:
        state, openai_archive = load_state_dict(path)
    quick_gelu = bool(tag_cfg.get("quick_gelu", False)) or openai_archive
    preprocess = {k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg}
    logging.getLogger("open_clip").setLevel(logging.ERROR)
    root_level = logging.getLogger().level
    try:
        logging.getLogger().setLevel(max(root_level, logging.ERROR))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = open_clip.create_model(
                spec.name,
                pretrained=None,
                force_quick_gelu=quick_gelu,
                force_preprocess_cfg=preprocess or None,
                cache_dir=cache_dir,
            )
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - open_clip raises RuntimeError/ValueError/OSError alike
        raise ModelError(f"cannot build model {spec.name}: {str(exc).splitlines()[0][:200]}") from exc
    finally:
        logging.getLogger().setLevel(root_level)
    if state is not None:
        _load_weights(model, state, path, spec.name)
    from open_clip.model import get_model_preprocess_cfg

    preprocess_cfg = get_model_preprocess_cfg(model)
    tokenizer = open_clip.get_tokenizer(spec.name, cache_dir=cache_dir)
    backbone = ClipBackbone(model, tokenizer, spec, preprocess_cfg)
    backbone.model.to(device=torch.device(device), dtype=dtype)
    backbone.eval()
    for param in backbone.parameters():
        param.requires_grad_(False)
    return backbone


def save_weights(backbone: ClipBackbone, path: str | Path) -> Path:
    """Save the backbone's weights as a plain state dict (float32), atomically.

    The file loads back through ``ModelSpec(name, pretrained=path)`` and through open_clip itself.
    """
    from zutiscli.artefacts.atomic import atomic_path

    state = {k: v.detach().to("cpu", torch.float32) if v.is_floating_point() else v.detach().cpu()
             for k, v in backbone.model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def default_pretrained(model: str) -> str:
    """Weights to use when ``--pretrained`` is not given: shipped weights, else ``openai``, else the first tag."""
    import open_clip

    check_model_name(model)  # a misspelt name is told as such, not as a model without weights
    if (BUILTIN_DIR / f"{model}.pt").is_file():
        return "builtin"
    tags = open_clip.list_pretrained_tags_by_model(model.replace("/", "-"))
    if "openai" in tags:
        return "openai"
    if tags:
        return tags[0]
    raise UsageError(f"--model {model} has no known pretrained weights; pass --pretrained TAG|FILE|none")
