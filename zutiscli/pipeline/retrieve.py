"""`zutis retrieve`: per-class archives, the top-k images of one or more indices for each class name.

Each class's text embedding (the mean of 85 prompt templates, or the bare name) is compared with
every image embedding of the indices by inner product (cosine similarity: both are unit vectors);
the k best images form the class's archive. The text model is the index's own model, read from
the index manifest; any other would embed text into a different space.

Search: an index without ``index.faiss`` is searched exactly, block by block from its memory-mapped
float16 chunks (:func:`zutiscli.ops.knn.topk_blocks`), in bounded memory; one with ``index.faiss``
(an approximate index built with a faiss factory string) is searched through faiss with ``nprobe``
lists (IVF). Several indices are searched one by one and merged by score into one top-k per class
(ties: earlier index, then lower row). Superseded rows (an image embedded again) never come back.
The active mask, hashes and paths come from each index's image table (``table/``, memory-mapped):
opening it costs milliseconds, and only the hits' paths and the candidates' hashes are decoded.

Exclusive archives (``exclude_duplicates``): one image is in at most one archive. An image is a
file content (the index's BLAKE2b hash), so copies in two indices or under two names are one image.
Rule: all (class, image, score) candidates are taken in descending score (ties: class order, then
rank); each goes to its class if the image is still free and the class has fewer than k images.
So an image lands in the class that scores it highest among those with room, and a class that
loses images to others is refilled with its next best. Candidates are fetched 2k deep per class and
the depth doubles for any class left short until the result equals this greedy rule over all images
(or the indices run out of images: then some archives are shorter, with a warning).

Output directory::

    archives.json      {"k": K, "indices": ["../index"], "classes": {name: {"phrase": ...,
                        "images": [{"path": "../data/images/0001.png", "score": 0.3141,
                                    "index": 0, "row": 17}, ...]}}}   ranked best first
    contact/<name>.jpg optional: a grid of each class's top hits with rank and score
    manifest.json      kind zutis.archives: model (the index's), inputs (the indices), params, summary

Image paths are relative to the archives directory and ``indices`` to it as well, so a tree holding
archives, indices and images can be moved as a whole. ``index`` numbers the ``indices`` list and
``row`` is the image's row in that index.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from zutiscli.artefacts.atomic import atomic_path, atomic_write_text
from zutiscli.artefacts.index_store import IndexReader
from zutiscli.artefacts.lock import holding_locks
from zutiscli.artefacts.manifest import norm_model_name, relative_to, same_model, write_manifest
from zutiscli.artefacts.rundir import check_output_dir, prepare_output_dir
from zutiscli.data.classes import ClassQuery, safe_filenames
from zutiscli.errors import ArtefactError, ModelError, UsageError
from zutiscli.ops import knn
from zutiscli.artefacts.archives import ARCHIVES_NAME, ArchiveHit, archives_text, read_archives  # noqa: F401
from zutiscli.pipeline.failures import send_warning
from zutiscli.pipeline.plan import Plan, input_entry, output_plan, weights_plan
from zutiscli.pipeline.retrieve_config import PROMPT_MODES, RetrieveConfig  # noqa: F401 - the stage's options

CONTACT_DIR = "contact"


@dataclass
class _Source:
    """One opened index: its reader, active mask, faiss index (if any), and what that search used."""

    reader: IndexReader
    active: np.ndarray
    faiss_index: Any = None
    search: dict[str, Any] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return int(self.active.sum())


# ---- model --------------------------------------------------------------------------------------
def describe_model(model: dict[str, Any]) -> str:
    """``"ViT-B-16 (openai)"`` for a manifest model record."""
    return f"{model.get('name')} ({model.get('pretrained')})"


def choose_model(readers: Sequence[IndexReader], model: str | None, pretrained: str | None):
    """The :class:`ModelSpec` to embed the class text with: the indices' model, checked.

    Raises :class:`ArtefactError` when the indices disagree about their model or record none, and
    :class:`UsageError` when an explicit ``model``/``pretrained`` is not the indices' model, or
    when the recorded checkpoint file no longer holds the weights the index was built with.
    """
    from zutiscli.models.clip import ModelSpec

    first = readers[0]
    reference = first.model
    if not reference.get("name"):
        raise ArtefactError(f"{first.directory}: the index manifest records no model; rebuild it with `zutis index`")
    for reader in readers[1:]:
        if not same_model(reference, reader.model):
            raise ArtefactError(
                f"indices embedded with different models: {first.directory} with {describe_model(reference)}, "
                f"{reader.directory} with {describe_model(reader.model)}; retrieve from indices of one model"
            )
    name = model if model is not None else str(reference["name"])
    if norm_model_name(name) != norm_model_name(reference["name"]):
        raise UsageError(
            f"--model {name} is not the model of index {first.directory} ({describe_model(reference)}); "
            f"the class text must be embedded by the index's own model: drop --model"
        )
    weights = pretrained if pretrained is not None else str(reference.get("pretrained", "none"))
    spec = ModelSpec(str(reference["name"]) if model is None else name, weights)
    file = spec.weights_file
    if pretrained is None and file is not None and not file.is_file():
        raise ModelError(
            f"index {first.directory} was embedded with the weights {file}, which no longer exist; "
            f"pass --pretrained /new/path/to/the/same/file (its fingerprint is checked)"
        )
    chosen = spec.describe()
    if not same_model(chosen, reference):
        if pretrained is not None:
            raise UsageError(
                f"--pretrained {pretrained} is not the weights index {first.directory} was embedded with "
                f"({describe_model(reference)}); the class text must be embedded by the index's own model: "
                f"drop --pretrained, or pass a copy of those weights"
            )
        raise UsageError(
            f"the weights file {file} has changed since index {first.directory} was embedded with it "
            f"(its fingerprint differs); restore the file, pass --pretrained with a copy of the original, or re-index"
        )
    return spec


def _named_by_index(config: RetrieveConfig, sources: Sequence[_Source]):
    """Errors about the model or weights an index names (not given as options) blame its manifest."""
    from zutiscli.models.clip import named_by

    return named_by(sources[0].reader.directory / "manifest.json",
                    model=None if config.model is not None else "its field 'model.name' names model",
                    weights=None if config.pretrained is not None else "its field 'model.pretrained' names weights")


def encode_classes(backbone: Any, classes: Sequence[ClassQuery], prompts: str, batch_size: int) -> np.ndarray:
    """``(C, D)`` float32 unit text embeddings of the classes' phrases (85-template mean or bare)."""
    import torch

    with torch.inference_mode():
        text = backbone.encode_text([c.phrase for c in classes], templates=prompts, batch_size=batch_size)
    return np.ascontiguousarray(text.float().cpu().numpy(), dtype=np.float32)


# ---- search -------------------------------------------------------------------------------------
def _open_sources(paths: Sequence[Path], warn: Callable[[str], None]) -> list[_Source]:
    sources = []
    for path in paths:
        reader = IndexReader(path)
        if not reader.complete:
            warn(f"{path}: the index is unfinished (its run was stopped); retrieving from the "
                 f"{len(reader):,} images it holds")
        active = reader.table().active if len(reader) else np.zeros(0, dtype=bool)
        sources.append(_Source(reader, active))
    dims = {s.reader.dim for s in sources if len(s.reader)}
    if len(dims) > 1:
        raise ArtefactError(f"indices of different embedding sizes ({sorted(dims)}); retrieve from indices of one model")
    return sources


def _load_faiss(source: _Source, k: int, nprobe: int | None) -> None:
    import faiss

    path = source.reader.faiss_path
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as exc:
        raise ArtefactError(f"{path}: not a faiss index faiss can read ({str(exc).splitlines()[-1][:120]}); "
                            f"rebuild it with `zutis index --faiss ...` or delete it for exact search") from None
    if index.d != source.reader.dim:
        raise ArtefactError(f"{path}: dimension {index.d} differs from the index's {source.reader.dim}; rebuild it")
    if index.ntotal > len(source.reader):
        raise ArtefactError(f"{path}: holds {index.ntotal:,} vectors but the index only {len(source.reader):,} rows; "
                            f"rebuild it or delete it for exact search")
    source.faiss_index = index
    factory = source.reader.manifest.summary.get("faiss")
    source.search = {"kind": "faiss", "factory": factory, **knn.configure_search(index, k, nprobe)}


def _search_source(source: _Source, queries: np.ndarray, depth: int, config: RetrieveConfig,
                   on_rows: Callable[[int], None]) -> tuple[np.ndarray, np.ndarray]:
    """Top-``depth`` of one index: ``(C, d)`` float32 scores and int64 rows (row -1 = no hit)."""
    if source.count == 0:
        return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
    depth = min(depth, source.count)
    try:
        if source.faiss_index is not None:
            if source.faiss_index.ntotal == 0:
                return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
            found = knn.search_index(source.faiss_index, queries, depth, active=source.active)
            on_rows(len(source.reader))
            return found
        rows = config.block_rows or knn.default_block_rows(source.reader.dim)
        return knn.topk_blocks(queries, source.reader.iter_embeddings(rows), depth,
                               active=source.active, block_rows=rows, on_block=on_rows)
    except ValueError as exc:
        raise ArtefactError(f"{source.reader.directory}: {exc}; the index is corrupt, re-index") from None


class _Searcher:
    """Searches all indices for some classes at some depth and merges the results by score."""

    def __init__(self, sources: list[_Source], queries: np.ndarray, config: RetrieveConfig,
                 progress: Callable[[int, int], None] | None):
        self.sources = sources
        self.queries = queries
        self.config = config
        self.progress = progress
        self.rows_per_pass = sum(len(s.reader) for s in sources)
        self.done = 0
        self.total = 0
        self.passes = 0

    def _tick(self, rows: int) -> None:
        self.done += rows
        if self.progress is not None:
            self.progress(self.done, self.total)

    def __call__(self, classes: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Merged ``(scores, sources, rows)`` ``(len(classes), depth')`` for the given class numbers."""
        self.total += self.rows_per_pass
        self.passes += 1
        queries = self.queries[classes]
        results = [_search_source(s, queries, depth, self.config, self._tick) for s in self.sources]
        return knn.merge_topk(results, depth)


def _image_keys(sources: list[_Source]) -> list[dict[int, Any]]:
    """Per source, a lazily filled map row -> image identity (content hash, or (source, row))."""
    return [dict() for _ in sources]


def _identity(digest: str, source: int, row: int) -> Any:
    return ("hash", digest) if digest else ("row", source, row)


def _key(sources: list[_Source], cache: list[dict[int, Any]], source: int, row: int) -> Any:
    known = cache[source].get(row)
    if known is None:
        known = cache[source][row] = _identity(sources[source].reader.table().hash(row), source, row)
    return known


def _fill_keys(sources: list[_Source], cache: list[dict[int, Any]], srcs: list[np.ndarray],
               rows: list[np.ndarray]) -> None:
    """Put the identity of every candidate (``srcs[c]``, ``rows[c]``: int64 per class) into ``cache``,
    reading the hashes of each index's new candidates in one go."""
    if not srcs:
        return
    flat_src, flat_row = np.concatenate(srcs), np.concatenate(rows)
    for number, source in enumerate(sources):
        known = cache[number]
        new = [row for row in np.unique(flat_row[(flat_src == number) & (flat_row >= 0)]).tolist() if row not in known]
        for row, digest in zip(new, source.reader.table().hashes(new)):
            known[row] = _identity(digest, number, row)


def _greedy_assign(scores: list[np.ndarray], srcs: list[np.ndarray], rows: list[np.ndarray], k: int,
                   key_of: Callable[[int, int], Any]) -> list[np.ndarray]:
    """The exclusive-archives rule over the candidates fetched so far.

    ``scores[c]``, ``srcs[c]``, ``rows[c]``: class c's candidates, ranked (1-D, same length).
    Returns, per class, the ranks (positions in its candidates) it keeps, ascending, at most ``k``.
    """
    count = len(scores)
    lengths = np.array([len(s) for s in scores], dtype=np.int64)
    if lengths.sum() == 0:
        return [np.zeros(0, np.int64) for _ in range(count)]
    flat_scores = np.concatenate(scores).astype(np.float64)
    flat_class = np.repeat(np.arange(count), lengths)
    flat_rank = np.concatenate([np.arange(n) for n in lengths])
    order = np.lexsort((flat_rank, flat_class, -flat_scores))
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    flat_src = np.concatenate(srcs)
    flat_row = np.concatenate(rows)
    taken: set[Any] = set()
    filled = np.zeros(count, dtype=np.int64)
    kept: list[list[int]] = [[] for _ in range(count)]
    for position in order.tolist():
        cls = int(flat_class[position])
        if filled[cls] >= k or flat_row[position] < 0:
            continue
        key = key_of(int(flat_src[position]), int(flat_row[position]))
        if key in taken:
            continue
        taken.add(key)
        filled[cls] += 1
        kept[cls].append(position - int(offsets[cls]))
    return [np.sort(np.asarray(ranks, dtype=np.int64)) for ranks in kept]


def _exclusive(searcher: _Searcher, sources: list[_Source], count: int, k: int, total: int,
               ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Disjoint archives by the rule of the module docstring; returns per-class (scores, sources, rows)."""
    depth = np.full(count, min(total, 2 * k), dtype=np.int64)
    scores: list[np.ndarray] = [np.zeros(0, np.float32)] * count
    srcs: list[np.ndarray] = [np.zeros(0, np.int64)] * count
    rows: list[np.ndarray] = [np.zeros(0, np.int64)] * count
    cache = _image_keys(sources)
    pending = np.arange(count)
    while True:
        for value in np.unique(depth[pending]):
            group = pending[depth[pending] == value]
            s, src, r = searcher(group, int(value))
            for position, cls in enumerate(group.tolist()):
                scores[cls], srcs[cls], rows[cls] = s[position], src[position], r[position]
        _fill_keys(sources, cache, srcs, rows)
        kept = _greedy_assign(scores, srcs, rows, k, lambda s, r: _key(sources, cache, s, r))
        short = np.array([len(kept[c]) < k and depth[c] < total for c in range(count)], dtype=bool)
        if not short.any():
            break
        pending = np.flatnonzero(short)
        depth[pending] = np.minimum(total, depth[pending] * 2)
    return ([scores[c][kept[c]] for c in range(count)], [srcs[c][kept[c]] for c in range(count)],
            [rows[c][kept[c]] for c in range(count)])


# ---- contact sheets -----------------------------------------------------------------------------
def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        return ImageFont.load_default()


def write_contact_sheet(path: Path, title: str, hits: Sequence[ArchiveHit], tile: int = 128, columns: int = 8) -> int:
    """Write a JPEG grid of ``hits`` (best first) with rank and score under each thumbnail.

    ``tile`` is the thumbnail side in pixels; images are scaled (up or down) to fit it. Images that cannot be read get a grey tile marked
    "unreadable". Returns how many images could not be read.
    """
    from PIL import Image, ImageDraw, ImageOps

    from zutiscli.data.images import load_image
    from zutiscli.errors import ImageLoadError

    label = 18
    header = 28
    rows = max(1, math.ceil(len(hits) / columns))
    sheet = Image.new("RGB", (columns * tile, header + rows * (tile + label)), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    draw.text((6, 5), title, fill=(255, 255, 255), font=_font(16))
    small = _font(12)
    failed = 0
    for rank, hit in enumerate(hits, start=1):
        x = ((rank - 1) % columns) * tile
        y = header + ((rank - 1) // columns) * (tile + label)
        try:
            image = ImageOps.contain(load_image(hit.path, draft_size=(tile, tile)), (tile - 4, tile - 4))
            sheet.paste(image, (x + (tile - image.width) // 2, y + (tile - image.height) // 2))
        except ImageLoadError:
            failed += 1
            draw.rectangle((x + 2, y + 2, x + tile - 3, y + tile - 3), fill=(90, 90, 90))
            draw.text((x + 8, y + tile // 2 - 6), "unreadable", fill=(255, 200, 200), font=small)
        draw.text((x + 4, y + tile + 2), f"#{rank}  {hit.score:.3f}", fill=(220, 220, 220), font=small)
    with atomic_path(path, fsync=False) as tmp:
        sheet.save(tmp, format="JPEG", quality=85)
    return failed


# ---- the stage ----------------------------------------------------------------------------------
def plan_retrieve(config: RetrieveConfig, output: str | Path | None = None) -> Plan:
    """What ``zutis retrieve`` would do (``--dry-run``): the checks of a real run, no weights loaded, nothing written."""
    from zutiscli.models.clip import ensemble_templates
    from zutiscli.models.device import resolve_device

    config.validate()
    notes: list[str] = []
    writes = output_plan(output, "retrieve")
    sources = _open_sources(config.indices, notes.append)
    spec = choose_model([s.reader for s in sources], config.model, config.pretrained)
    device = resolve_device(config.device)
    total = sum(s.count for s in sources)
    if total == 0:
        raise ArtefactError(f"the indices hold no images ({', '.join(str(p) for p in config.indices)}); index some first")
    k = min(config.k, total)
    if config.k > total:
        notes.append(f"-k {config.k} is more than the {total:,} images in the "
                     f"{'index' if len(sources) == 1 else 'indices'}; each archive gets at most {total:,}")
    count = len(config.classes)
    if config.exclude_duplicates and count * k > total:
        notes.append(f"{count} disjoint archives of {k} need {count * k:,} images but the indices hold {total:,}; "
                     f"some archives will be shorter")
    reads = [input_entry(s.reader.directory, "zutis.index", images=s.count,
                         search="faiss" if s.reader.faiss_path is not None else "exact") for s in sources]
    with _named_by_index(config, sources):
        model = weights_plan(spec.name, spec.pretrained) | {"device": str(device)}
    prompts = count * (len(ensemble_templates()) if config.prompts == "ensemble" else 1)
    params = {"classes": [q.name for q in config.classes], "k": k, "prompts": config.prompts,
              "exclude_duplicates": config.exclude_duplicates, "contact_sheet": config.contact_sheet}
    work = {"texts_to_embed": prompts, "images_to_search": total, "archives": count}
    return Plan("retrieve", reads, writes, model, params, work, notes)


@holding_locks
def retrieve(
    config: RetrieveConfig,
    output: str | Path | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
    warn: Callable[[str], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Build per-class archives from ``config.indices``; returns the archives directory.

    ``output``: the directory (must be empty or absent; default ``runs/retrieve/N``).
    ``progress(done, total)``: index rows scanned so far (several passes with exclusive archives).
    ``warn``/``log``: where warnings and status lines go (default: :func:`warnings.warn` / nowhere);
    warnings are also recorded in the manifest summary.
    """
    config.validate()
    start = time.perf_counter()
    notes: list[str] = []

    def say_warning(message: str) -> None:
        notes.append(message)
        send_warning(warn, message, stacklevel=3)

    say = log or (lambda message: None)
    check_output_dir(output, "retrieve")  # refuse an unusable -o before minutes of text encoding, create nothing yet
    sources = _open_sources(config.indices, say_warning)
    spec = choose_model([s.reader for s in sources], config.model, config.pretrained)
    total = sum(s.count for s in sources)
    if total == 0:
        raise ArtefactError(f"the indices hold no images ({', '.join(str(p) for p in config.indices)}); index some first")
    k = config.k
    if k > total:
        k = total
        say_warning(f"-k {config.k} is more than the {total:,} images in the "
                    f"{'index' if len(sources) == 1 else 'indices'}; each archive gets at most {total:,}")
    count = len(config.classes)
    if config.exclude_duplicates and count * k > total:
        say_warning(f"{count} disjoint archives of {k} need {count * k:,} images but the indices hold {total:,}; "
                    f"some archives will be shorter")
    for source in sources:
        if source.reader.faiss_path is not None and source.count:
            _load_faiss(source, k, config.nprobe)
        else:
            source.search = {"kind": "exact"}

    from zutiscli.models.clip import load_backbone
    from zutiscli.models.device import resolve_device

    device = resolve_device(config.device)
    say(f"embedding {count} class{'es' if count != 1 else ''} with {spec} "
        f"({'85 prompt templates' if config.prompts == 'ensemble' else 'bare names'}) on {device}")
    with _named_by_index(config, sources):
        backbone = load_backbone(spec, device=device)
    queries = encode_classes(backbone, config.classes, config.prompts, config.batch_size)
    del backbone
    dim = sources[0].reader.dim
    if queries.shape[1] != dim:
        raise ArtefactError(f"the text embeddings have {queries.shape[1]} dimensions but the index {dim}; "
                            f"the index was not embedded with {spec}")

    out = prepare_output_dir(output, "retrieve")
    searcher = _Searcher(sources, queries, config, progress)
    say(f"searching {total:,} images for the top {k} of each class")
    if config.exclude_duplicates:
        per_scores, per_sources, per_rows = _exclusive(searcher, sources, count, k, total)
    else:
        scores, srcs, rows = searcher(np.arange(count), k)
        per_scores = [scores[c][rows[c] >= 0] for c in range(count)]
        per_sources = [srcs[c][rows[c] >= 0] for c in range(count)]
        per_rows = [rows[c][rows[c] >= 0] for c in range(count)]

    index_paths = [relative_to(out, s.reader.directory) for s in sources]
    classes_out: dict[str, Any] = {}
    table: list[dict[str, Any]] = []
    hits_by_class: list[list[ArchiveHit]] = []
    image_classes: dict[Any, int] = {}
    keys = _image_keys(sources)
    _fill_keys(sources, keys, per_sources, per_rows)
    for position, query in enumerate(config.classes):
        hits: list[ArchiveHit] = []
        entries = []
        for score, src, row in zip(per_scores[position].tolist(), per_sources[position].tolist(),
                                   per_rows[position].tolist()):
            path = sources[src].reader.image_path(row)
            hits.append(ArchiveHit(path, score, src, row))
            entries.append({"path": relative_to(out, path), "score": round(score, 6), "index": src, "row": row})
            identity = _key(sources, keys, src, row)
            image_classes[identity] = image_classes.get(identity, 0) + 1
        hits_by_class.append(hits)
        classes_out[query.name] = {"phrase": query.phrase, "images": entries}
        values = per_scores[position]
        table.append({
            "name": query.name,
            "k": int(len(values)),
            "top": round(float(values[0]), 6) if len(values) else None,
            "median": round(float(np.median(values)), 6) if len(values) else None,
        })
    short = [row["name"] for row in table if row["k"] < k]
    if short:
        say_warning(f"{len(short)} archive{'s have' if len(short) > 1 else ' has'} fewer than {k} images "
                    f"(e.g. {short[0]!r})")
    atomic_write_text(out / ARCHIVES_NAME, archives_text(k, index_paths, classes_out))

    unreadable = 0
    if config.contact_sheet:
        names = safe_filenames([q.name for q in config.classes])
        say(f"drawing {count} contact sheet{'s' if count != 1 else ''} into {out / CONTACT_DIR}")
        for position, query in enumerate(config.classes):
            title = query.name if query.phrase == query.name else f"{query.name}  ({query.phrase})"
            unreadable += write_contact_sheet(out / CONTACT_DIR / f"{names[position]}.jpg", title,
                                              hits_by_class[position][: config.contact_count])
        if unreadable:
            say_warning(f"{unreadable} image{'s' if unreadable > 1 else ''} of the contact sheets could not be read")

    summary = {
        "classes": count,
        "k": k,
        "images": int(sum(row["k"] for row in table)),
        "unique_images": len(image_classes),
        "shared_images": sum(1 for n in image_classes.values() if n > 1),
        "indexed_images": total,
        "search": [s.search for s in sources],
        "passes": searcher.passes,
        "contact_sheets": count if config.contact_sheet else 0,
        "warnings": notes,
        "seconds": round(time.perf_counter() - start, 3),
        "archives": table,
    }
    params = {
        "k": config.k,
        "prompts": config.prompts,
        "exclude_duplicates": config.exclude_duplicates,
        "nprobe": config.nprobe,
        "contact_sheet": config.contact_sheet,
        "classes": [{"name": q.name, "phrase": q.phrase} for q in config.classes],
    }
    write_manifest(out, "zutis.archives", model=sources[0].reader.model, inputs=[s.reader.directory for s in sources],
                   params=params, summary=summary)
    return out
