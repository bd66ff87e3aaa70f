"""`zutis cosegment`: ReCo's reference embedding of every class, co-segmented from its archive.

For each class of a ``zutis retrieve`` directory, the best ``k`` archive images (ReCo: 50) go
through the co-segmentation encoder (``--model``; ReCo: DeiT-S/16-SIN; default the archives'
CLIP) at a square input; their last-block patch tokens, L2-normalised, are co-segmented by
:mod:`zutiscli.ops.cosegment`: each patch's support is its mean best match over the archive, each
image's seed its best-supported patch, the class's reference the mean seed feature.

Two gates weigh each patch as a match (ReCo Sec. 3.2): the language gate (``--text-gate``, on by
default), ``sigmoid(10 cos)`` of the archives' CLIP's MaskCLIP dense features with the class's
text (85-template ensemble), resized to the encoder's grid; and context elimination (``--context
sky,road``): the context classes are co-segmented first (with the language gate only), then every
other class's patches are weighed by ``prod (1 - sigmoid(cos))`` with their references.

Writes a ``zutis.references`` directory (:mod:`zutiscli.artefacts.references`). Resumable: each
class is committed to ``classes/NAME.json`` as it finishes; a rerun with the same options skips it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from zutiscli.artefacts.lock import content, holding_locks
from zutiscli.artefacts.manifest import MANIFEST_NAME, relative_to, write_manifest
from zutiscli.artefacts.references import (
    CLASSES_DIR,
    KIND,
    PREVIEW_DIR,
    REFERENCES_NAME,
    VECTORS_NAME,
    ClassReference,
    read_class,
    write_class,
    write_references,
)
from zutiscli.errors import ArtefactError, UsageError, ZutisError
from zutiscli.pipeline.cosegment_config import CosegmentConfig  # noqa: F401 - exported here too

Log = Callable[[str], None]

#: Input side when the encoder does not say its own (timm ViTs).
FALLBACK_SIZE = 224


@dataclass
class CosegmentResult:
    """What a run wrote: the directory, the classes (context ones too), images used and skipped."""

    path: Path
    classes: list[str]
    images: int
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0


def _settings(config: CosegmentConfig, encoder: dict[str, Any], size: int) -> dict[str, Any]:
    """What decides a class's reference: a class committed under other settings is not reused."""
    return {"k": config.k, "size": size, "features": config.features, "text_gate": config.text_gate,
            "context": sorted(name.casefold() for name in config.context), "encoder": encoder}


def _square(path: Path, size: int) -> tuple[np.ndarray, torch.Tensor]:
    """An image, its short side resized to ``size`` and centre-cropped square: ``(uint8 (S, S, 3),
    float (3, S, S) in [0, 1])``; :class:`zutiscli.data.images.ImageLoadError` when unreadable."""
    from PIL import Image

    from zutiscli.data.images import load_image

    image = load_image(path)
    scale = size / min(image.size)
    resized = image.resize((max(size, round(image.width * scale)), max(size, round(image.height * scale))),
                           Image.BICUBIC)
    left, top = (resized.width - size) // 2, (resized.height - size) // 2
    array = np.asarray(resized.crop((left, top, left + size, top + size)))
    return array, torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255)


class _Cosegmenter:
    """The loaded models and the per-class computation."""

    def __init__(self, config: CosegmentConfig, encoder: Any, clip: Any | None, size: int):
        self.config, self.encoder, self.clip, self.size = config, encoder, clip, size
        self.device = encoder.device

    @property
    def shared(self) -> bool:
        """Whether the encoder is the gate's CLIP (then one forward pass gives both)."""
        return self.clip is self.encoder

    @torch.no_grad()
    def features(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(k, 3, S, S)`` -> ``(k, h, w, C)`` L2-normalised last-block tokens (or keys) of the
        encoder, and when it is the gate's CLIP its MaskCLIP features ``(k, h, w, D)`` (else None);
        float32, on the encoder's device."""
        out, dense = [], []
        for start in range(0, len(pixels), self.config.batch_size):
            batch = self.encoder.normalise(pixels[start:start + self.config.batch_size].to(self.device))
            found = self.encoder.last_block_features(batch)
            out.append(F.normalize(getattr(found, self.config.features).float(), dim=-1))
            if self.shared and self.config.text_gate:
                dense.append(self.encoder.maskclip_from_values(found.values))
        return torch.cat(out), (torch.cat(dense) if dense else None)

    @torch.no_grad()
    def text_gate(self, pixels: torch.Tensor, phrase: str, grid: tuple[int, int],
                  dense: torch.Tensor | None = None) -> torch.Tensor:
        """``(k, h, w)`` ReCo's language gate of ``phrase`` on the images, on the encoder's grid (from
        ``dense``, the images' MaskCLIP features on that grid, when the encoder gave them)."""
        from zutiscli.ops.cosegment import text_gate

        assert self.clip is not None
        text = self.clip.encode_text([phrase], templates="ensemble")[0].float().to(self.device)
        if dense is not None:
            return text_gate(dense, text)
        patch = self.clip.patch_size
        side = max(patch, self.size // patch * patch)
        gates = []
        for start in range(0, len(pixels), self.config.batch_size):
            batch = pixels[start:start + self.config.batch_size]
            if batch.shape[-1] != side:
                batch = F.interpolate(batch, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
            dense = self.clip.maskclip_embeddings(self.clip.normalise(batch.to(self.clip.device, self.clip.dtype)))
            gate = text_gate(dense.float().to(self.device), text)  # (b, h', w')
            gates.append(F.interpolate(gate[:, None], size=grid, mode="bilinear", align_corners=False)[:, 0])
        return torch.cat(gates)

    def cosegment(self, pixels: torch.Tensor, phrase: str, context: torch.Tensor | None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(reference (C,), seeds (k,), support at the seeds (k,), similarity maps (k, h, w))``."""
        from zutiscli.ops.cosegment import (
            context_weights,
            patch_support,
            reference_embedding,
            reference_probability,
            seed_patches,
        )

        tokens, dense = self.features(pixels)
        k, h, w, c = tokens.shape
        features = tokens.reshape(k, h * w, c)
        weights = torch.ones(k, h * w, device=features.device)
        if self.config.text_gate:
            weights = weights * self.text_gate(pixels, phrase, (h, w), dense).reshape(k, h * w)
        if context is not None and len(context):
            weights = weights * context_weights(features, context.to(features.device))
        support = patch_support(features, weights)  # on the encoder's device: a GPU computes it there
        seeds = seed_patches(support)
        reference = reference_embedding(features, seeds)
        maps = reference_probability(features, reference[None])[..., 0].reshape(k, h, w)
        return reference.cpu(), seeds.cpu(), support[torch.arange(k, device=support.device), seeds].cpu(), maps.cpu()


def _preview(path: Path, name: str, images: list[np.ndarray], maps: torch.Tensor, seeds: torch.Tensor,
             grid: tuple[int, int], tile: int = 160) -> None:
    """One JPEG: each image beside the reference's similarity over it, the seed patch boxed."""
    from PIL import Image, ImageDraw

    from zutiscli.artefacts.atomic import atomic_path

    columns = min(4, len(images))
    rows = (len(images) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * 2 * tile, 18 + rows * tile), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 3), f"{name}: archive image | sigmoid(reference . feature), seed boxed", fill=(0, 0, 0))
    h, w = grid
    for number, (image, similarity, seed) in enumerate(zip(images, maps, seeds.tolist())):
        row, column = divmod(number, columns)
        x, y = column * 2 * tile, 18 + row * tile
        picture = Image.fromarray(image).resize((tile, tile), Image.BILINEAR)
        low, high = 1 / (1 + np.e), 1 / (1 + np.exp(-1))  # sigmoid of cosines lies in between
        heat = ((similarity.numpy() - low) / (high - low)).clip(0, 1)
        heat_rgb = np.stack([heat, 0.25 * np.ones_like(heat), 1 - heat], axis=-1)
        heat_image = Image.fromarray((255 * heat_rgb).astype(np.uint8)).resize((tile, tile), Image.NEAREST)
        blended = Image.blend(picture, heat_image, 0.55)
        sheet.paste(picture, (x, y))
        sheet.paste(blended, (x + tile, y))
        r, c = divmod(seed, w)
        box = (x + tile + c * tile / w, y + r * tile / h, x + tile + (c + 1) * tile / w - 1, y + (r + 1) * tile / h - 1)
        draw.rectangle(box, outline=(255, 255, 0), width=2)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="JPEG", quality=90)


def _prepare_output(output: str | Path | None) -> Path:
    from zutiscli.artefacts.rundir import prepare_output_dir

    if output is not None and Path(output).is_dir():  # judged before the lock touches the directory
        if (Path(output) / MANIFEST_NAME).is_file():
            raise ArtefactError(f"{output}: is a finished artefact; choose a new -o directory or remove it")
        ours = {CLASSES_DIR, PREVIEW_DIR, REFERENCES_NAME, VECTORS_NAME}
        foreign = [entry.name for entry in content(Path(output)) if entry.name not in ours]
        if foreign:
            raise ArtefactError(f"{output}: is not empty (e.g. {foreign[0]}) and not a zutis references directory; "
                                f"choose a new -o directory")
    out = prepare_output_dir(output, "cosegment", resumable=output is not None)
    (out / CLASSES_DIR).mkdir(exist_ok=True)
    return out


def _context_classes(config: CosegmentConfig, archives: dict[str, Any], archives_dir: Path) -> list[str]:
    """The archive names of ``--context`` (matched case-folded); a :class:`UsageError` naming those with none."""
    by_folded = {name.casefold(): name for name in archives}
    missing = [name for name in config.context if name.casefold() not in by_folded]
    if missing:
        raise UsageError(f"--context {','.join(missing)}: no archive of that name in {archives_dir}; retrieve it "
                         f"with the classes (zutis retrieve ... --classes ...,{missing[0]})")
    return [by_folded[name.casefold()] for name in config.context]


def _checked_classes(config: CosegmentConfig, archives: dict[str, Any], archives_dir: Path) -> list[str]:
    """Refuse an archive listing fewer than two images (a :class:`UsageError` naming it), before
    anything is written; then :func:`_context_classes`."""
    small = [(name, len(hits)) for name, hits in archives.items() if len(hits) < 2]
    if small:
        name, count = small[0]
        raise UsageError(f"{archives_dir}: the archive of {name!r} lists {count} image(s); co-segmentation needs at "
                         f"least two per class (retrieve it with -k 2 or more)")
    return _context_classes(config, archives, archives_dir)


def plan_cosegment(config: CosegmentConfig, output: str | Path | None = None) -> Any:
    """What ``zutis cosegment`` would do (``--dry-run``): the checks of a real run, no weights loaded,
    nothing written."""
    from zutiscli.artefacts.archives import read_archives
    from zutiscli.models.device import precision_name, resolve_device, resolve_precision
    from zutiscli.pipeline.archive_models import archive_model, feature_model, named_by_manifest
    from zutiscli.pipeline.plan import Plan, input_entry, output_plan, weights_plan

    config.validate()
    archives_dir = Path(config.archives)
    archives = read_archives(archives_dir)
    _checked_classes(config, archives, archives_dir)
    name, pretrained = feature_model(config.model, config.pretrained, archives_dir)
    dtype = resolve_precision(config.precision, resolve_device(config.device))
    with named_by_manifest(config.model, config.pretrained, archives_dir):
        model = weights_plan(name, pretrained) | {"precision": precision_name(dtype)}
    recorded = archive_model(archives_dir)
    gate = f"{recorded.get('name')} ({recorded.get('pretrained')}), the archives' CLIP" if config.text_gate else "off"
    writes = output_plan(output, "cosegment", resumable=output is not None)
    done = 0
    if output is not None and (Path(output) / CLASSES_DIR).is_dir():
        done = len(list((Path(output) / CLASSES_DIR).glob("*.json")))
    params = {"k": config.k, "features": config.features, "size": config.size, "text_gate": gate,
              "context": list(config.context)}
    images = sum(min(config.k, len(hits)) for hits in archives.values())
    reads = [input_entry(archives_dir, "zutis.archives", classes=len(archives), images=images)]
    work = {"classes_done_before": done, "classes_to_cosegment": len(archives) - done}
    return Plan("cosegment", reads, writes, model, params, work)


@holding_locks
def cosegment(config: CosegmentConfig, output: str | Path | None = None, *,
              progress: Callable[[int, int], None] | None = None, log: Log | None = None) -> CosegmentResult:
    """Run ``zutis cosegment``; returns what it wrote (the directory is ``result.path``).

    ``progress(done, total)`` counts classes. Unreadable archive images are skipped (listed in the
    result and the manifest); a class left with fewer than two images stops the run with a
    :class:`ZutisError` naming it.
    """
    from zutiscli.artefacts.archives import archive_phrases, read_archives
    from zutiscli.data.classes import safe_filenames
    from zutiscli.data.images import ImageLoadError
    from zutiscli.models.backbones import describe_backbone, load_dense_backbone
    from zutiscli.models.device import resolve_device, resolve_precision
    from zutiscli.pipeline.archive_models import archive_model, feature_model, named_by_manifest

    config.validate()
    say = log or (lambda message: None)
    started = time.perf_counter()
    archives_dir = Path(config.archives)
    archives = read_archives(archives_dir)
    phrases = archive_phrases(archives_dir)
    context = _checked_classes(config, archives, archives_dir)
    order = [*context, *(name for name in archives if name not in context)]

    device = resolve_device(config.device)
    dtype = resolve_precision(config.precision, device)
    name, pretrained = feature_model(config.model, config.pretrained, archives_dir)
    with named_by_manifest(config.model, config.pretrained, archives_dir):
        encoder = load_dense_backbone(name, pretrained, device=device, dtype=dtype)
    encoder_record = describe_backbone(name, pretrained)
    clip = None
    clip_record: dict[str, Any] | None = None
    if config.text_gate:
        from zutiscli.models.clip import ModelSpec, load_backbone

        recorded = archive_model(archives_dir)
        if not recorded.get("name"):
            raise ArtefactError(f"{archives_dir / MANIFEST_NAME}: records no CLIP (field 'model.name') for the "
                                f"language gate; give --no-text-gate")
        spec = ModelSpec(recorded["name"], recorded.get("pretrained", "none"))
        clip_record = spec.describe()
        if clip_record == encoder_record and hasattr(encoder, "maskclip_embeddings"):
            clip = encoder
        else:
            with named_by_manifest(None, None, archives_dir):
                clip = load_backbone(spec, device=device, dtype=dtype)
    image_size = getattr(encoder, "image_size", None)
    size = config.size or (int(image_size[0]) if image_size else FALLBACK_SIZE)
    size = max(encoder.patch_size, size // encoder.patch_size * encoder.patch_size)
    settings = _settings(config, encoder_record, size)

    out = _prepare_output(output)
    worker = _Cosegmenter(config, encoder, clip, size)
    safe = dict(zip(archives, safe_filenames(list(archives))))
    done: dict[str, ClassReference] = {}
    failed: list[tuple[str, str]] = []
    grid: tuple[int, int] | None = None
    used = 0
    for number, name in enumerate(order):
        committed = out / CLASSES_DIR / f"{safe[name]}.json"
        if committed.is_file():
            previous = read_class(committed)
            if previous.settings != settings:
                raise ZutisError(f"{committed}: was co-segmented with other options or another encoder; use a new "
                                 f"-o directory or delete {out / CLASSES_DIR}")
            done[name] = previous
            grid = (int(previous.grid[0]), int(previous.grid[1])) if previous.grid else grid
            used += len(previous.images)
            say(f"{name}: done before, reused")
            if progress is not None:
                progress(number + 1, len(order))
            continue
        pictures, tensors, paths = [], [], []
        for hit in archives[name][:config.k]:
            try:
                picture, tensor = _square(hit.path, size)
            except ImageLoadError as exc:
                failed.append((str(hit.path), exc.reason))
                continue
            pictures.append(picture)
            tensors.append(tensor)
            paths.append(hit.path)
        if len(tensors) < 2:
            raise ZutisError(f"class {name!r}: {len(tensors)} readable archive image(s) of {len(archives[name])}; "
                             f"co-segmentation needs at least two (check the archive's images)")
        suppress = None
        if name not in context and context:
            suppress = torch.from_numpy(np.stack([done[c].vector for c in context])).float()
        reference, seeds, support, maps = worker.cosegment(torch.stack(tensors), phrases.get(name, name), suppress)
        grid = (int(maps.shape[1]), int(maps.shape[2]))
        images = [{"path": relative_to(out, path), "seed": [int(s) // grid[1], int(s) % grid[1]],
                   "support": round(float(v), 6)} for path, s, v in zip(paths, seeds.tolist(), support.tolist())]
        result = ClassReference(name, phrases.get(name, name), reference.numpy().astype(np.float32), images,
                                context=name in context, settings=settings, grid=list(grid))
        if config.preview:
            (out / PREVIEW_DIR).mkdir(exist_ok=True)
            shown = min(config.preview, len(pictures))
            _preview(out / PREVIEW_DIR / f"{safe[name]}.jpg", name, pictures[:shown], maps[:shown], seeds[:shown],
                     grid)
        write_class(out, safe[name], result)
        done[name] = result
        used += len(images)
        say(f"{name}: {len(images)} images, mean seed support {float(support.mean()):.3f}")
        if progress is not None:
            progress(number + 1, len(order))

    assert grid is not None
    classes = [done[name] for name in archives]
    write_references(out, classes, grid, size, config.features)
    seconds = round(time.perf_counter() - started, 2)
    params = {k: v for k, v in asdict(config).items() if k != "archives"} | {"size": size,
                                                                           "context": list(context)}
    write_manifest(out, KIND, model={"encoder": encoder_record, "clip": clip_record}, inputs=[archives_dir],
                   params=params, summary={"classes": len(classes), "images": used, "failed": len(failed),
                                           "seconds": seconds})
    return CosegmentResult(out, [c.name for c in classes], used, failed, seconds)
