"""Train ``shapes-clip``, the small CLIP of the shapes world, from scratch on CPU.

The model is an ordinary open_clip architecture (``zutiscli/models/configs/shapes-clip.json``), built
through :func:`zutiscli.models.clip.load_backbone` exactly like ``ViT-B-16``. It learns from
image--caption pairs of :func:`zutiscli.shapes.world.caption_sample`, generated on the fly: batch
``b`` holds the samples ``b * batch_size ... (b + 1) * batch_size - 1`` of the training seed, so a
run is a pure function of its :class:`TrainClipConfig` (and of the torch build and thread count).

The loss is a *multi-positive* contrastive loss. Captions repeat inside a batch ("a circle", "a red
shape") and are partial descriptions, so the one-hot targets of InfoNCE would push true matches
apart. Instead every caption is parsed back into the object slots it describes (see
:func:`caption_slots`), and caption ``j`` is a positive of image ``i`` whenever it is a *true*
description of image ``i`` (:func:`positive_matrix`). The targets of each row (image -> captions)
and of each column (caption -> images) are the positives normalised to sum to one, and the loss is
the mean of the two soft-target cross-entropies (:func:`multi_positive_loss`).

Units: image sizes in pixels, learning rates per step, times in seconds.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from zutiscli.data.workers import worker_loader
from zutiscli.shapes.clip_recipe import POSITIVE_RULES, TrainClipConfig
from zutiscli.shapes.stuff import STUFF
from zutiscli.shapes.world import COLOURS, DEFAULT_HELD_OUT, SHAPES, ShapeObject, caption_sample, plural

#: A described object: ``(colour or None, shape or None)``; None = the caption does not say.
Slot = tuple[str | None, str | None]
#: ``progress(step, steps, stats)``: called every ``log_every`` steps and after the last one.
ProgressCallback = Callable[[int, int, dict[str, float]], None]

_SHAPE_WORDS: dict[str, str] = {s: s for s in SHAPES} | {plural(s): s for s in SHAPES}
_COLOUR_WORDS: frozenset[str] = frozenset(COLOURS)
#: Words by which captions name the materials of :data:`zutiscli.shapes.stuff.STUFF`.
_STUFF_WORDS: dict[str, str] = {name: name for name in STUFF} | {"wooden": "wood"}


# ---------------------------------------------------------------------------------------------
# Captions -> which images they truly describe.


def caption_slots(caption: str) -> tuple[Slot, ...]:
    """Parse a :func:`caption_sample` caption into the objects it describes.

    One slot per object the caption speaks of, with the colour and shape it names (None when
    unnamed). Size and position words are ignored. Examples::

        "a red circle"                    -> (("red", "circle"),)
        "a star shape"                    -> ((None, "star"),)
        "two blue shapes"                 -> (("blue", None), ("blue", None))
        "a cross and a ring"              -> ((None, "cross"), (None, "ring"))
        "an empty scene"                  -> ()

    Args:
        caption: lower-case caption in the grammar of :mod:`zutiscli.shapes.world`.

    Returns:
        A tuple of 0, 1 or 2 slots.
    """
    text = caption.replace(":", " ").replace(",", " ")
    words = text.split()
    if not any(w in _COLOUR_WORDS or w in _SHAPE_WORDS for w in words):
        return ()
    for joint in (" next to ", " and "):
        if joint in f" {text} ":
            left, right = f" {text} ".split(joint, 1)
            return (_slot(left.split()), _slot(right.split()))
    slot = _slot(words)
    return (slot, slot) if "two" in words else (slot,)


def _slot(words: Sequence[str]) -> Slot:
    colour = next((w for w in words if w in _COLOUR_WORDS), None)
    shape = next((_SHAPE_WORDS[w] for w in words if w in _SHAPE_WORDS), None)
    return colour, shape


def caption_stuff(caption: str) -> frozenset[str]:
    """The named stuff a caption speaks of, e.g. ``"a red star on sand"`` -> ``{"sand"}``,
    ``"the sky above wooden planks"`` -> ``{"sky", "wood"}``; empty when it names none."""
    words = caption.replace(",", " ").split()
    return frozenset(_STUFF_WORDS[w] for w in words if w in _STUFF_WORDS)


def names_objects(caption: str) -> bool:
    """False for a caption that names stuff and no object ("the sky above water"): it says nothing
    of the objects in front of the stuff. Captions that name objects, or an empty scene, say True."""
    return bool(caption_slots(caption)) or not caption_stuff(caption)


def _fits(obj: ShapeObject, slot: Slot) -> bool:
    return (slot[0] is None or slot[0] == obj.colour) and (slot[1] is None or slot[1] == obj.shape)


def describes(slots: Sequence[Slot], objects: Sequence[ShapeObject]) -> bool:
    """Whether a caption's slots truly describe an image's objects.

    True iff there are as many objects as slots and some one-to-one assignment of objects to
    slots agrees with every colour and shape the slots name.
    """
    if len(slots) != len(objects):
        return False
    if len(objects) == 0:
        return True
    if len(objects) == 1:
        return _fits(objects[0], slots[0])
    if len(objects) == 2:
        a, b = objects
        return (_fits(a, slots[0]) and _fits(b, slots[1])) or (_fits(b, slots[0]) and _fits(a, slots[1]))
    raise ValueError(f"captions describe at most two objects, got {len(objects)}")


def positive_matrix(
    objects: Sequence[Sequence[ShapeObject]],
    captions: Sequence[str],
    stuff: Sequence[frozenset[str]] | None = None,
) -> torch.Tensor:
    """``(B, B)`` bool: entry ``[i, j]`` is True iff caption ``j`` truly describes image ``i``.

    The objects are matched by the rule of :func:`describes`, vectorised; a caption that names
    stuff alone (:func:`names_objects` False) says nothing of the objects. Every material a
    caption names (:func:`caption_stuff`) must be in the image's ``stuff`` (``None``: no image
    shows named stuff). The diagonal is always True (each caption was written for its own image).
    """
    n = len(captions)
    if len(objects) != n:
        raise ValueError(f"{len(objects)} object lists for {n} captions")
    # Objects and slots as (B, 2) codes: colour/shape index, -1 = unnamed, -2 = absent.
    obj_c = np.full((n, 2), -2, dtype=np.int64)
    obj_s = np.full((n, 2), -2, dtype=np.int64)
    obj_n = np.zeros(n, dtype=np.int64)
    slot_c = np.full((n, 2), -2, dtype=np.int64)
    slot_s = np.full((n, 2), -2, dtype=np.int64)
    slot_n = np.zeros(n, dtype=np.int64)
    for i, objs in enumerate(objects):
        if len(objs) > 2:
            raise ValueError(f"captions describe at most two objects, got {len(objs)}")
        obj_n[i] = len(objs)
        for k, obj in enumerate(objs):
            obj_c[i, k] = COLOURS.index(obj.colour)
            obj_s[i, k] = SHAPES.index(obj.shape)
    for j, caption in enumerate(captions):
        slots = caption_slots(caption)
        slot_n[j] = len(slots)
        for k, (colour, shape) in enumerate(slots):
            slot_c[j, k] = -1 if colour is None else COLOURS.index(colour)
            slot_s[j, k] = -1 if shape is None else SHAPES.index(shape)

    def fits(a: int, b: int) -> np.ndarray:  # (B images, B captions): object a fits slot b
        oc, os_ = obj_c[:, a, None], obj_s[:, a, None]
        sc, ss = slot_c[None, :, b], slot_s[None, :, b]
        return ((sc == -1) | (sc == oc)) & ((ss == -1) | (ss == os_))

    same_count = obj_n[:, None] == slot_n[None, :]
    one = fits(0, 0)
    two = (one & fits(1, 1)) | (fits(0, 1) & fits(1, 0))
    count = obj_n[:, None]
    ok = same_count & ((count == 0) | ((count == 1) & one) | ((count == 2) & two))
    named = [caption_stuff(c) for c in captions]
    ok |= ((slot_n == 0) & np.array([bool(n) for n in named]))[None, :]  # stuff alone says nothing of objects
    shown = stuff if stuff is not None else [frozenset()] * n
    if len(shown) != n:
        raise ValueError(f"{len(shown)} stuff sets for {n} captions")
    ok &= np.array([[want <= have for want in named] for have in shown], dtype=bool).reshape(n, n)
    out = torch.from_numpy(ok)
    out.fill_diagonal_(True)
    return out


def content_positive_matrix(
    objects: Sequence[Sequence[ShapeObject]], stuff: Sequence[frozenset[str]] | None = None
) -> torch.Tensor:
    """``(B, B)`` bool: True where images ``i`` and ``j`` hold the same multiset of (colour, shape)
    over the same named stuff."""
    shown = stuff if stuff is not None else [frozenset()] * len(objects)
    keys = [(tuple(sorted((o.colour, o.shape) for o in objs)), tuple(sorted(s))) for objs, s in zip(objects, shown)]
    codes = {key: n for n, key in enumerate(dict.fromkeys(keys))}
    ids = torch.tensor([codes[k] for k in keys])
    return ids[:, None] == ids[None, :]


def caption_positive_matrix(captions: Sequence[str]) -> torch.Tensor:
    """``(B, B)`` bool: True where captions ``i`` and ``j`` are identical strings."""
    codes = {c: n for n, c in enumerate(dict.fromkeys(captions))}
    ids = torch.tensor([codes[c] for c in captions])
    return ids[:, None] == ids[None, :]


def batch_positives(
    rule: str,
    objects: Sequence[Sequence[ShapeObject]],
    captions: Sequence[str],
    stuff: Sequence[frozenset[str]] | None = None,
) -> torch.Tensor:
    """``(B, B)`` bool positives of a batch under ``rule`` (one of :data:`POSITIVE_RULES`);
    ``stuff``: the named stuff each image shows (None: none does)."""
    if rule == "truth":
        return positive_matrix(objects, captions, stuff)
    if rule == "content":
        return content_positive_matrix(objects, stuff)
    if rule == "caption":
        return caption_positive_matrix(captions)
    raise ValueError(f"unknown positives rule {rule!r}; expected one of {', '.join(POSITIVE_RULES)}")


def multi_positive_loss(
    image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor, positives: torch.Tensor
) -> torch.Tensor:
    """Symmetric soft-target contrastive loss with several positives per row and column.

    Args:
        image_emb: ``(B, D)`` float, L2-normalised image embeddings.
        text_emb: ``(B, D)`` float, L2-normalised caption embeddings.
        logit_scale: scalar tensor, the *log* of the inverse temperature.
        positives: ``(B, B)`` bool, ``[i, j]`` True iff caption ``j`` describes image ``i``; every
            row and column needs at least one True.

    Returns:
        Scalar float tensor: mean of the image->text and text->image cross-entropies against the
        positives normalised per row (resp. column). With an identity ``positives`` this is
        CLIP's InfoNCE loss.
    """
    logits = logit_scale.exp() * image_emb @ text_emb.t()
    return _soft_target_loss(logits, positives)


def _soft_target_loss(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Mean of the row (image -> caption) and column (caption -> image) cross-entropies of ``(B, B)``
    logits against the positives normalised per row and per column."""
    target = positives.to(logits.dtype)
    rows = target / target.sum(dim=1, keepdim=True)
    cols = target / target.sum(dim=0, keepdim=True)
    loss_i2t = -(rows * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    loss_t2i = -(cols * F.log_softmax(logits, dim=0)).sum(dim=0).mean()
    return 0.5 * (loss_i2t + loss_t2i)


def patch_aligned_loss(
    dense: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: torch.Tensor,
    positives: torch.Tensor,
    temperature: float = 0.05,
) -> torch.Tensor:
    """Contrastive loss on patch embeddings pooled for each caption (PACL, Mukhoti et al. 2023).

    For image ``i`` and caption ``j`` the patches' cosine similarities ``s_ijn`` to the caption are
    pooled by their own softmax over patches, ``score_ij = sum_n softmax_n(s_ijn / temperature) *
    s_ijn``: the caption is matched by the patches most like it. The scores then enter
    :func:`multi_positive_loss`'s soft-target cross-entropies.

    Args:
        dense: ``(B, N, D)`` or ``(B, h, w, D)`` float patch embeddings (any norm).
        text_emb: ``(B, D)`` float, L2-normalised caption embeddings.
        logit_scale: scalar tensor, the log of the inverse temperature of the scores.
        positives: ``(B, B)`` bool, ``[i, j]`` True iff caption ``j`` describes image ``i``.
        temperature: of the softmax over patches.

    Returns:
        Scalar float tensor.
    """
    patches = F.normalize(dense.flatten(1, -2), dim=-1)
    similarity = torch.einsum("bnd,td->btn", patches, text_emb)
    scores = (torch.softmax(similarity / temperature, dim=-1) * similarity).sum(dim=-1)
    logits = logit_scale.exp() * scores
    return _soft_target_loss(logits, positives)


# ---------------------------------------------------------------------------------------------
# The training stream.


_MIRROR = {"left": "right", "right": "left"}


def caption_batch(
    seed: int,
    step: int,
    batch_size: int,
    size: int = 64,
    held_out: frozenset[tuple[str, str]] = DEFAULT_HELD_OUT,
    hflip: float = 0.0,
    stuff: float = 0.0,
    varied: float = 0.0,
) -> tuple[np.ndarray, list[str], list[list[ShapeObject]], list[frozenset[str]]]:
    """Batch ``step`` of the training stream of ``seed``.

    Args:
        seed: training seed (also the :func:`caption_sample` seed).
        step: batch number, >= 0; the batch holds sample indices
            ``[step * batch_size, (step + 1) * batch_size)``.
        batch_size: samples per batch.
        size: image side, pixels.
        held_out: pairs never drawn.
        hflip: probability of mirroring each image left-right (decided by a generator seeded from
            ``(seed, step)``); a mirrored image's caption has "left" and "right" swapped.
        stuff: probability that a sample is drawn over named stuff (``caption_sample(stuff=True)``,
            decided by a generator seeded from ``(seed, step)``).
        varied: probability that a sample is drawn over a varied training background
            (``caption_sample(varied=True)``, decided by its own generator seeded from ``(seed, step)``).

    Returns:
        ``images`` ``(B, size, size, 3)`` uint8 RGB, ``captions`` (B strings), ``objects`` (B lists of
        the drawn objects; positions not mirrored, which the loss does not use), ``stuff`` (B sets
        of the materials each image shows, empty without named stuff).
    """
    images = np.empty((batch_size, size, size, 3), dtype=np.uint8)
    captions: list[str] = []
    objects: list[list[ShapeObject]] = []
    shown: list[frozenset[str]] = []
    flips = np.random.default_rng([seed, 0x5EED, step]).random(batch_size) < hflip
    over_stuff = np.random.default_rng([seed, 0x57FF, step]).random(batch_size) < stuff
    over_varied = np.random.default_rng([seed, 0x7A41, step]).random(batch_size) < varied
    for k in range(batch_size):
        sample = caption_sample(seed, step * batch_size + k, size=size, held_out=held_out,
                                stuff=bool(over_stuff[k]), varied=bool(over_varied[k]))
        caption = sample.caption or ""
        if flips[k]:
            images[k] = sample.image[:, ::-1]
            caption = " ".join(_MIRROR.get(w, w) for w in caption.split())
        else:
            images[k] = sample.image
        captions.append(caption)
        objects.append(sample.objects)
        labels = () if sample.stuff is None else np.unique(sample.stuff)
        shown.append(frozenset(STUFF[int(v) - 1] for v in labels if v > 0))
    return images, captions, objects, shown


def noise_vocabulary(tokenizer: Any) -> torch.Tensor:
    """Token ids that :func:`insert_noise_tokens` may insert: ``(K,)`` int64.

    Every id of an open_clip BPE tokenizer except the start/end tokens and the pieces of the
    shapes-world words that carry content (colour and shape names, their plurals, "two").
    """
    for attr in ("encode", "sot_token_id", "eot_token_id"):
        if not hasattr(tokenizer, attr):
            raise ValueError(f"text noise needs an open_clip BPE tokenizer (missing {attr})")
    words = set(COLOURS) | set(_SHAPE_WORDS) | {"two"}
    banned = {tokenizer.sot_token_id, tokenizer.eot_token_id}
    for word in words:
        banned.update(tokenizer.encode(word))
    size = len(getattr(tokenizer, "encoder", ())) or max(banned) + 1
    keep = torch.ones(size, dtype=torch.bool)
    keep[sorted(banned)] = False
    return keep.nonzero().flatten()


def insert_noise_tokens(
    tokens: torch.Tensor,
    rng: np.random.Generator,
    prob: float,
    vocabulary: torch.Tensor,
    eot_id: int,
    max_inserted: int = 3,
) -> torch.Tensor:
    """Insert random, content-free tokens into captions (text augmentation).

    Each caption, with probability ``prob``, gets 1 to ``max_inserted`` ids drawn uniformly from
    ``vocabulary`` inserted at uniformly random positions after the start token and before or
    after any word (never beyond the context: fewer are inserted when it is full). The text tower
    thereby learns that words it never saw in captions carry no colour or shape.

    Args:
        tokens: ``(B, L)`` int64 token ids (start token, words, end token ``eot_id``, zero padding).
        rng: generator that decides everything (deterministic augmentation).
        prob: probability that a caption is augmented.
        vocabulary: ``(K,)`` int64 ids allowed for insertion (see :func:`noise_vocabulary`).
        eot_id: the end-of-text id.
        max_inserted: most ids inserted into one caption.

    Returns:
        A new ``(B, L)`` int64 tensor.
    """
    out = tokens.clone()
    length = tokens.shape[1]
    chosen = rng.random(tokens.shape[0]) < prob
    for row in np.flatnonzero(chosen):
        ids = out[row].tolist()
        end = ids.index(eot_id) if eot_id in ids else length - 1
        room = length - 1 - end
        count = min(int(rng.integers(1, max_inserted + 1)), room)
        body = ids[1:end]
        for _ in range(count):
            position = int(rng.integers(0, len(body) + 1))
            body.insert(position, int(vocabulary[int(rng.integers(len(vocabulary)))]))
        row_ids = [ids[0]] + body + [eot_id]
        out[row] = torch.tensor(row_ids + [0] * (length - len(row_ids)), dtype=out.dtype)
    return out


class _Stream(torch.utils.data.IterableDataset):
    """Batches ``start .. steps - 1`` of a config's stream: ``(images, tokens, positives)``."""

    def __init__(self, config: TrainClipConfig, tokenizer: Callable[..., torch.Tensor], start: int = 0):
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.start = start
        self.vocabulary = noise_vocabulary(tokenizer) if config.text_noise > 0 else None

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        cfg = self.config
        worker = torch.utils.data.get_worker_info()
        shard, shards = (0, 1) if worker is None else (worker.id, worker.num_workers)
        for step in range(self.start + shard, cfg.steps, shards):
            images, captions, objects, stuff = caption_batch(
                cfg.seed, step, cfg.batch_size, cfg.image_size, cfg.held_out, cfg.hflip, cfg.stuff, cfg.varied
            )
            pixels = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
            tokens = self.tokenizer(captions)
            if self.vocabulary is not None:
                rng = np.random.default_rng([cfg.seed, 0x7E47, step])
                tokens = insert_noise_tokens(tokens, rng, cfg.text_noise, self.vocabulary,
                                             int(self.tokenizer.eot_token_id))
            yield pixels, tokens, batch_positives(cfg.positives, objects, captions, stuff)


def _batches(
    config: TrainClipConfig, tokenizer: Callable[..., torch.Tensor], start: int = 0, pin: bool = False
) -> Iterator[tuple[torch.Tensor, ...]]:
    stream = _Stream(config, tokenizer, start)
    if config.workers == 0:
        return iter(stream)
    # Workers take steps round-robin and the loader reads them round-robin: order is kept.
    loader = worker_loader(stream, config.workers, batch_size=None, prefetch_factor=4, pin_memory=pin)
    return iter(loader)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The forward pass's autocast dtype under ``precision`` on ``device`` (None: plain fp32)."""
    from zutiscli.errors import UsageError

    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if precision == "fp16" and device.type != "cuda":
        raise UsageError("--precision fp16 is for CUDA; on the CPU use bf16 or fp32")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


# ---------------------------------------------------------------------------------------------
# Optimisation.


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        exempt = (
            param.ndim < 2
            or "positional_embedding" in name
            or "class_embedding" in name
            or name.endswith(".bias")
            or "logit_scale" in name
        )
        (no_decay if exempt else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _adamw(groups: list[dict[str, Any]], config: TrainClipConfig) -> torch.optim.AdamW:
    """AdamW, with the fused (single-kernel) implementation where this torch build has it."""
    try:
        return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps)


def learning_rate(config: TrainClipConfig, step: int) -> float:
    """Learning rate of optimiser step ``step`` (0-based): linear warm-up, then cosine decay."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    span = max(1, config.steps - config.warmup)
    progress = min(1.0, (step - config.warmup) / span)
    floor = config.lr * config.min_lr_ratio
    return floor + (config.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _half_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        k: (v.detach().to("cpu", torch.float16) if v.is_floating_point() else v.detach().cpu()).clone()
        for k, v in model.state_dict().items()
    }


def checkpoint_path(output_path: str | Path) -> Path:
    """Where a run writing ``output_path`` keeps its resumable checkpoint (``<output>.ckpt``)."""
    output_path = Path(output_path)
    return output_path.with_name(output_path.name + ".ckpt")


def _save_checkpoint(
    path: Path,
    config: TrainClipConfig,
    init_digest: str | None,
    model: torch.nn.Module,
    optimiser: torch.optim.Optimizer,
    step: int,
    curve: list[list[float]],
    seconds: float,
) -> None:
    from zutiscli.artefacts.atomic import atomic_path

    state = {
        "recipe": config.recipe_key(),
        "init_sha256": init_digest,
        "step": step,
        "model": model.state_dict(),
        "optimiser": optimiser.state_dict(),
        "curve": curve,
        "seconds": seconds,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def init_sha256(config: TrainClipConfig) -> str | None:
    """SHA-256 (hex) of the weights file ``config.init`` names (``builtin``: the shipped weights of
    ``config.model``; a tag: its file where it is cached), or None for ``none`` or a tag not
    downloaded: what a training run started from, recorded with its weights and checked when it
    resumes. Raises ModelError where :func:`~zutiscli.models.clip.locate_pretrained` does."""
    import hashlib

    from zutiscli.models.clip import ModelSpec, locate_pretrained

    path, _, _ = locate_pretrained(ModelSpec(config.model, config.init))
    if path is None:
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_checkpoint(path: Path, config: TrainClipConfig, init_digest: str | None) -> dict[str, Any] | None:
    """The training state saved at ``path`` if it is readable, of ``config``'s recipe and started from
    weights of SHA-256 ``init_digest`` (a checkpoint that does not record it is taken), else None."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - an unreadable checkpoint is ignored, training restarts
        return None
    if not isinstance(state, dict) or state.get("recipe") != config.recipe_key():
        return None
    if state.get("init_sha256", init_digest) != init_digest:  # --init FILE rewritten since
        return None
    return state


def checkpoint_step(path: str | Path, config: TrainClipConfig) -> int | None:
    """The steps done by the checkpoint at ``path`` (:func:`checkpoint_path`), or None where it is
    missing, unreadable, of another recipe or of other starting weights (a run would start afresh)."""
    path = Path(path)
    state = _read_checkpoint(path, config, init_sha256(config)) if path.is_file() else None
    return None if state is None else int(state["step"])


def _resume(
    path: Path, config: TrainClipConfig, init_digest: str | None, model: torch.nn.Module,
    optimiser: torch.optim.Optimizer,
) -> tuple[int, list[list[float]], float]:
    """Load a checkpoint of the same recipe and starting weights if there is one: ``(first step,
    curve, seconds so far)``."""
    if not config.checkpoint_every or not path.is_file():
        return 0, [], 0.0
    state = _read_checkpoint(path, config, init_digest)
    if state is None:
        return 0, [], 0.0
    model.load_state_dict(state["model"])
    optimiser.load_state_dict(state["optimiser"])
    return int(state["step"]), [list(p) for p in state["curve"]], float(state["seconds"])


def train_shapes_clip(
    config: TrainClipConfig,
    output_path: str | Path,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Train ``config.model`` from ``config.init`` (random initialisation by default) and save its
    weights as fp16.

    Args:
        config: the recipe.
        output_path: where to write the weights: a float16 state dict (``torch.save``), written
            atomically; ``load_backbone(ModelSpec(config.model, str(output_path)))`` loads it (and
            casts it to the requested dtype).
        progress: optional ``progress(step, steps, stats)`` called every ``config.log_every`` steps
            and after the last; ``step`` counts completed steps, ``stats`` holds ``loss`` (mean
            over the interval), ``lr``, ``temperature`` (1 / logit scale), ``seconds`` (elapsed
            wall time) and ``seconds_per_step`` (over the interval).

    Returns:
        JSON-ready dict: ``config`` (the recipe), ``init_sha256`` (:func:`init_sha256` of the
        weights it started from), ``model``, ``weights`` (path), ``steps``,
        ``train_seconds`` (wall time of the optimisation loop), ``threads``, ``versions`` (torch,
        open_clip, numpy), ``final_loss`` (mean of the last ``log_every`` steps), ``loss_curve``
        (``[step, mean loss]`` pairs), ``final_temperature``, ``parameters``, and, only if
        ``config.eval_pool``, ``metrics`` and ``metrics_shift``
        (:func:`zutiscli.shapes.clip_eval.evaluate_shapes_clip` output on the train and the shift split).
    """
    import open_clip

    from zutiscli.artefacts.atomic import atomic_path
    from zutiscli.models.clip import ModelSpec, load_backbone
    from zutiscli.models.device import resolve_device

    config.validate()
    output_path = Path(output_path)
    device = resolve_device(config.device)
    amp = autocast_dtype(config.precision, device)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        torch.manual_seed(config.seed)
        init_digest = init_sha256(config)
        backbone = load_backbone(ModelSpec(config.model, config.init))
        model = backbone.model.to(device)
        model.train()
        for param in model.parameters():
            param.requires_grad_(True)
        size = backbone.image_size[0]
        if config.image_size not in (None, size):
            raise ValueError(f"image_size {config.image_size} differs from the model's {size}")
        trained = replace(config, image_size=size)  # the recipe as trained (the recipe key keeps None)
        optimiser = _adamw(_param_groups(model, config.weight_decay), config)
        scaler = torch.amp.GradScaler(device.type, enabled=amp is torch.float16)
        mean = torch.tensor(backbone.mean, device=device).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(backbone.std, device=device).view(1, 3, 1, 1) * 255.0
        checkpoint = checkpoint_path(output_path)
        first, curve, previous_seconds = _resume(checkpoint, config, init_digest, model, optimiser)
        window: list[float] = []
        start = time.perf_counter() - previous_seconds
        last_report = time.perf_counter()
        batches = _batches(trained, backbone.tokenizer, first, pin=device.type == "cuda")
        for step, (pixels, tokens, positives) in enumerate(batches, start=first):
            lr = learning_rate(config, step)
            for group in optimiser.param_groups:
                group["lr"] = lr
            pixels, tokens, positives = (t.to(device, non_blocking=True) for t in (pixels, tokens, positives))
            images = (pixels.float() - mean) / std
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                text = model.encode_text(tokens)
                pooled, dense = backbone.encode_with_dense(images) if config.dense else (model.encode_image(images), None)
            # the similarities and losses in fp32: bf16 cosines would be coarser than the logit scale's steps
            text_emb = F.normalize(text.float(), dim=-1)
            loss = multi_positive_loss(F.normalize(pooled.float(), dim=-1), text_emb, model.logit_scale, positives)
            if dense is not None:
                loss = loss + config.dense * patch_aligned_loss(dense.float(), text_emb, model.logit_scale, positives,
                                                                config.dense_temperature)
            optimiser.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if config.grad_clip > 0:
                scaler.unscale_(optimiser)
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            scaler.step(optimiser)
            scaler.update()
            with torch.no_grad():
                model.logit_scale.clamp_(0.0, math.log(100.0))
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"training diverged at step {step}: loss {value}")
            window.append(value)
            done = step + 1
            if done % config.log_every == 0 or done == config.steps:
                now = time.perf_counter()
                mean_loss = sum(window) / len(window)
                curve.append([done, round(mean_loss, 5)])
                if config.checkpoint_every and done % config.checkpoint_every == 0 and done < config.steps:
                    _save_checkpoint(checkpoint, config, init_digest, model, optimiser, done, curve, now - start)
                if progress is not None:
                    progress(done, config.steps, {
                        "loss": mean_loss,
                        "lr": lr,
                        "temperature": float(1.0 / model.logit_scale.detach().exp()),
                        "seconds": now - start,
                        "seconds_per_step": (now - last_report) / len(window),
                    })
                last_report = now
                window = []
        train_seconds = time.perf_counter() - start
        model.eval()
        for param in model.parameters():
            param.requires_grad_(False)
        with atomic_path(output_path) as tmp:
            torch.save(_half_state(model), tmp)
        checkpoint.unlink(missing_ok=True)
        result: dict[str, Any] = {
            "model": config.model,
            "weights": str(output_path),
            "config": trained.to_json(),
            "init_sha256": init_digest,
            "loss": "multi-positive contrastive (caption j positive for image i iff it truly describes it)",
            "steps": config.steps,
            "train_seconds": round(train_seconds, 1),
            "resumed_from_step": first or None,
            "threads": config.threads,
            "device": str(device),
            "autocast": {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(amp, "none"),
            "versions": {"torch": torch.__version__, "open_clip": open_clip.__version__, "numpy": np.__version__},
            "parameters": sum(p.numel() for p in model.parameters()),
            "final_loss": curve[-1][1] if curve else None,
            "final_temperature": round(float(1.0 / model.logit_scale.exp()), 5),
            "loss_curve": curve,
        }
        if config.eval_pool:
            from zutiscli.shapes.clip_eval import evaluate_shapes_clip

            reloaded = load_backbone(ModelSpec(config.model, str(output_path)))
            result["metrics"] = evaluate_shapes_clip(reloaded, pool_size=config.eval_pool)
            result["metrics_shift"] = evaluate_shapes_clip(reloaded, pool_size=config.eval_pool, split="shift")
        return result
    finally:
        torch.set_num_threads(previous_threads)
