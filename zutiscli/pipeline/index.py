"""`zutis index`: embed an image collection once with CLIP, resumably, at any scale.

The stage discovers images, keeps those of its shard, skips those already embedded (same path,
size and modification time), decodes, preprocesses and embeds the rest, and commits embeddings
chunk by chunk (see :mod:`zutiscli.artefacts.index_store`). Each file is read once
(:func:`zutiscli.data.images.read_image`); a JPEG is decoded at the smallest DCT scale that keeps
both sides at least the model's input size.

Where the work runs (``decode_in``, :class:`~zutiscli.pipeline.index_config.IndexConfig`):

* CPU, ``processes`` (the default where processes can be forked and ``threads`` is not given): one
  worker process per core, each decoding *and* embedding slices of the images on its core and on
  one torch thread (:class:`_EmbeddedSlices`), and sending back only embeddings and file records.
  No core ever waits for another's output, no decoded pixels cross between processes, and Python's
  global interpreter lock is not shared, so the stage runs near the bound of the cores, N / (CPU
  time of decoding + of the model per image), whether decoding or the model is the larger part.
* CPU, ``threads``: decoding threads of this process (:mod:`zutiscli.data.thread_batches`) and
  ``threads`` model threads, each embedding a slice of every batch on one core
  (:mod:`zutiscli.engine.ordered_forward`); no worker process is started.
* CUDA: DataLoader worker processes decode and the model runs in this process, on the device.

A killed run leaves a valid, partial index; rerunning the same command finishes it, and rerunning
with more images appends only what is new. A run that finishes writes the index's image table
(``table/``, the records of every committed chunk in memory-mapped columns), even when it had
nothing to embed: an index written before tables existed gets one on its next run.

Cluster scale: ``shard=(i, n)`` keeps the images whose path hashes to ``i`` modulo ``n`` (stable
under appends) and writes into ``<output>/shard-i-of-n``; :func:`merge_indices` joins the shards.
Without an explicit shard, SLURM array variables and torchrun's RANK/WORLD_SIZE choose it (the
rules live in :mod:`zutiscli.data.shards`, shared with ``zutis pseudolabel``).
"""

from __future__ import annotations

import hashlib
import os
import time
from contextlib import closing, nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from zutiscli.artefacts.index_store import (
    CHUNK_DIR,
    FAILED_NAME,
    FAISS_NAME,
    FailedImage,
    ImageRecord,
    IndexReader,
    IndexWriter,
    committed_chunks,
    repair_chunks,
    write_failed_summary,
    write_image_table,
)
from zutiscli.artefacts.image_table import TABLE_DIR
from zutiscli.artefacts.manifest import (
    MANIFEST_NAME,
    InputRef,
    Manifest,
    read_manifest,
    relative_paths,
    relative_to,
    resolve_relative,
    write_manifest,
)
from zutiscli.artefacts.lock import check_unlocked, content, holding_locks, lock_directory
from zutiscli.artefacts.rundir import check_output_dir, prepare_output_dir
from zutiscli.data.images import discover_images
from zutiscli.data.shards import (check_shard, distinct_directories, shard_dir_name, shard_entries,  # noqa: F401
                                  shard_from_environment, shard_of)
from zutiscli.data.thread_batches import thread_batches
from zutiscli.data.workers import as_is, worker_loader
from zutiscli.engine.ordered_forward import forward_in_order
from zutiscli.errors import ArtefactError, UsageError, ZutisError
from zutiscli.models.clip import ModelSpec, load_backbone
from zutiscli.models.device import precision_name, resolve_device, resolve_precision
from zutiscli.models.clip import default_pretrained  # noqa: F401 - the stages import it from here too
from zutiscli.pipeline.failures import check_failures, summary as failure_summary
from zutiscli.pipeline.index_config import DEFAULT_MODEL, IndexConfig, parse_shard  # noqa: F401 - the stage's options
from zutiscli.pipeline.plan import Plan, input_entry, output_plan, weights_plan




# ---- decoding, in threads or DataLoader workers -----------------------------------------------
class _ImageFiles(torch.utils.data.Dataset):
    """Reads, fingerprints, decodes and preprocesses one image; failures are returned, not raised.

    An item is ``(number, tensor, meta)``: ``tensor`` is ``transform``'s output (``(3, S, S)``
    float32 for a CLIP transform) and ``meta`` holds ``bytes``, ``mtime_ns``, ``hash`` (blake2b,
    16 hex digits) and the full-resolution displayed ``width`` and ``height`` in pixels; or
    ``(number, None, reason)``. The file is read once; a JPEG is decoded at the smallest DCT
    scale (1/2, 1/4, 1/8) that keeps both sides >= ``draft`` pixels.
    """

    def __init__(self, paths: list[Path], transform: Callable[[Any], torch.Tensor], draft: int, max_pixels: int | None):
        self.paths = paths
        self.transform = transform
        self.draft = draft
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: int) -> tuple[int, torch.Tensor | None, dict[str, Any] | str]:
        from zutiscli.data.images import ImageLoadError, read_image

        path = self.paths[item]
        try:
            loaded = read_image(path, max_pixels=self.max_pixels, draft_size=(self.draft, self.draft))
            meta = {"bytes": loaded.stat.st_size, "mtime_ns": loaded.stat.st_mtime_ns,
                    "hash": hashlib.blake2b(loaded.data, digest_size=8).hexdigest(),
                    "width": loaded.size[0], "height": loaded.size[1]}
            return item, self.transform(loaded.image), meta
        except ImageLoadError as exc:
            return item, None, exc.reason
        except OSError as exc:
            return item, None, f"cannot be read: {exc.strerror or exc}"
        except Exception as exc:  # noqa: BLE001 - a broken file must not stop a 2.6M-image job
            return item, None, f"cannot be decoded: {type(exc).__name__}: {exc}"


class _EmbeddedSlices(torch.utils.data.Dataset):
    """Slices of the images, each decoded and embedded in one worker process (CPU, ``decode_in``
    ``processes``): item ``k`` holds the images ``bounds[k]:bounds[k + 1]`` of ``files``.

    An item is ``(items, embeddings, metas, bad)`` as :func:`_collate` gives them, with
    ``embeddings`` the ``(n, D)`` float16 array of ``embed`` (``None`` where no image of the slice
    could be read). Only these cross back to the main process (a few hundred bytes per image,
    pickled: no shared memory). A worker runs torch on one thread (:func:`~zutiscli.data.workers.
    quiet_worker`): GNU OpenMP cannot start more in a forked process once its parent has used it.
    """

    def __init__(self, files: _ImageFiles, bounds: list[int], embed: Callable[[torch.Tensor], np.ndarray]):
        self.files = files
        self.bounds = bounds
        self.embed = embed

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def __getitem__(self, item: int):
        items, tensor, metas, bad = _collate([self.files[i] for i in range(self.bounds[item], self.bounds[item + 1])])
        with torch.inference_mode():
            return items, None if tensor is None else self.embed(tensor), metas, bad


def _slice_bounds(count: int, workers: int, size: int) -> list[int]:
    """Bounds of slices of ``count`` images, each of at most ``size`` (>= 1), for ``workers``
    processes that take slices in turn (slice ``k`` goes to worker ``k % workers``).

    As few rounds as ``size`` allows, a slice for every worker in each; each worker's images add up
    to ``count / workers`` (give or take one) and its slices differ by at most one, so every worker
    ends at about the same time (100 images, 2 workers, size 16: 2 x 4 slices of 12 or 13 adding up
    to 50 each; not 6 of 16 and one of 4, nor 48 against 52).
    """
    rounds = max(1, -(-count // (workers * size)))
    shares = [count // workers + (worker < count % workers) for worker in range(workers)]
    bounds = [0]
    for round_ in range(rounds):
        for share in shares:
            bounds.append(bounds[-1] + share // rounds + (round_ < share % rounds))
    return bounds


def _collate(batch: list[tuple[int, torch.Tensor | None, Any]]):
    good = [(i, t, m) for i, t, m in batch if t is not None]
    bad = [(i, m) for i, t, m in batch if t is None]
    tensor = torch.stack([t for _, t, _ in good]) if good else None
    return [i for i, _, _ in good], tensor, [m for _, _, m in good], bad


def _cpu_seconds() -> float:
    """CPU seconds (user + system) used so far by this process's threads and by its child processes
    that have ended (DataLoader workers are, once their loader is exhausted)."""
    try:
        import resource
    except ImportError:  # not on Windows: this process only
        return time.process_time()
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


# ---- the stage ------------------------------------------------------------------------------
@dataclass
class IndexResult:
    """What one run did: the directory, counts and timing (seconds, images per second).

    ``extra`` (also in the manifest's summary): ``seconds`` (the whole run), ``embed_seconds`` (the
    embedding loop, wall), ``embed_cpu_seconds`` (CPU seconds of the loop: this process's threads
    and the worker processes), ``workers`` (decoding threads or processes), ``decode_in``
    (``threads`` or ``processes``), ``threads`` (model threads, 1 in each worker process on CPU; 0:
    in the calling thread, on CUDA), ``device``, ``shard``.
    """

    path: Path
    embedded: int
    skipped: int
    failed: int
    total: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        """Throughput of the embedding loop (decoding, model, writing), without model loading."""
        seconds = self.extra.get("embed_seconds", self.seconds)
        return self.embedded / seconds if seconds > 0 else 0.0


def _model_record(spec: ModelSpec, dtype: torch.dtype, image_size: int) -> dict[str, Any]:
    return spec.describe() | {"precision": precision_name(dtype), "image_size": image_size}


def _check_existing(out: Path, model: dict[str, Any]) -> None:
    """Refuse an existing ``out`` that is not an index of ``model`` (compared on the keys ``model`` has)."""
    if not (out / MANIFEST_NAME).is_file():  # new, or a run that was stopped or read no image
        if any(p.name not in (CHUNK_DIR, TABLE_DIR, FAILED_NAME) for p in content(out)):
            raise ArtefactError(f"{out}: is not empty and not a zutis index; choose a new -o directory")
        return
    previous = read_manifest(out, "zutis.index").model or {}
    keys = [k for k in ("name", "pretrained", "weights_fingerprint", "precision", "image_size") if k in model]
    if any(previous.get(k) != model.get(k) for k in keys):
        was = f"{previous.get('name')} ({previous.get('pretrained')}, {previous.get('precision')})"
        now = f"{model.get('name')} ({model.get('pretrained')}, {model.get('precision')})"
        raise ArtefactError(f"{out}: was built with {was}, not {now}; use a new -o directory to index with another model")


def _precheck_output(output: str | Path | None, shard: tuple[int, int] | None, model: dict[str, Any]) -> None:
    """Refuse an unusable ``output`` before the model loads and before anything (a lock) is written there."""
    out, state = check_output_dir(output, "index", resumable=True)
    if shard is not None:
        out = out / shard_dir_name(shard)
        state = "existing" if out.is_dir() and content(out) else "new"
    if state == "existing":
        check_unlocked(out)
        _check_existing(out, model)


def _write_index_manifest(out: Path, model: dict[str, Any], config: IndexConfig, inputs: list[InputRef],
                          reader_summary: dict[str, Any]) -> None:
    # not asdict(config): it would deep-copy every source (a shell glob can pass thousands) at each commit
    params = {f.name: getattr(config, f.name) for f in fields(config) if f.name not in ("sources", "from_list", "device")}
    write_manifest(out, "zutis.index", model=model, inputs=inputs, params=params, summary=reader_summary)


class _Tally:
    """Running counts of an index directory, kept in memory so a commit costs O(chunk), not O(index)."""

    def __init__(self, reader: IndexReader | None, dim: int):
        self.dim = dim
        self.rows = 0
        self.paths: set[str] = set()
        self.failed: dict[str, str] = {}
        if reader is not None:
            records = reader.records()
            self.rows = len(records)
            self.paths = {r.path for r in records}
            self.failed = {f.path: f.reason for f in reader.failures() if f.path not in self.paths}

    def add(self, records: list[ImageRecord], failures: list[FailedImage]) -> None:
        self.rows += len(records)
        for record in records:
            self.paths.add(record.path)
            self.failed.pop(record.path, None)
        for failure in failures:
            if failure.path not in self.paths:
                self.failed[failure.path] = failure.reason

    def summary(self, complete: bool, faiss_factory: str | None, extra: dict[str, Any]) -> dict[str, Any]:
        return {
            "images": len(self.paths),
            "rows": self.rows,
            "failed": len(self.failed),
            "dim": self.dim,
            "complete": complete,
            "faiss": faiss_factory,
            **extra,
        }

    def failures(self) -> list[FailedImage]:
        return [FailedImage(path, reason) for path, reason in self.failed.items()]


def _input_refs(out: Path, config: IndexConfig, listing: list[Path]) -> list[InputRef]:
    digest = hashlib.blake2b(digest_size=16)
    for path in listing:
        digest.update(os.path.abspath(path).encode("utf-8") + b"\n")
    refs = []
    for source in list(config.sources) + ([config.from_list] if config.from_list else []):
        refs.append(InputRef(path=source if any(c in str(source) for c in "*?[") else relative_to(out, source),
                             fingerprint=f"listing-blake2b:{digest.hexdigest()}"))
    return refs


def build_faiss_index(directory: Path, factory: str, train_size: int, seed: int = 0) -> Path | None:
    """Build ``index.faiss`` with a faiss factory string (``Flat`` = exact search, no file written).

    Non-flat indices are trained on a random sample of at most ``train_size`` rows; ids are row ids,
    and superseded rows are left out.
    """
    import faiss

    path = directory / FAISS_NAME
    if factory.strip().lower() == "flat":
        if path.exists():
            path.unlink()
        return None
    reader = IndexReader(directory)
    count = len(reader)
    try:
        index = faiss.index_factory(reader.dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise UsageError(f"--faiss {factory!r} is not a faiss factory string faiss accepts ({str(exc).splitlines()[-1][:120]})") from None
    active = reader.table().active
    if not index.is_trained:
        rng = np.random.default_rng(seed)
        take = np.sort(rng.choice(count, size=min(train_size, count), replace=False))
        sample = np.asarray(reader.embeddings()[take], dtype=np.float32) if count <= 2 * train_size else _gather(reader, take)
        try:
            index.train(sample)
        except RuntimeError as exc:
            raise ZutisError(
                f"faiss could not train {factory!r} on {len(sample)} vectors ({str(exc).splitlines()[-1][:160]}); "
                f"use fewer lists/centroids or more images"
            ) from None
    index = faiss.IndexIDMap2(index) if not isinstance(index, faiss.IndexIDMap) else index
    for first, block in reader.iter_embeddings():
        rows = np.arange(first, first + len(block))
        keep = active[rows]
        if keep.any():
            index.add_with_ids(np.asarray(block[keep], dtype=np.float32), rows[keep].astype(np.int64))
    from zutiscli.artefacts.atomic import atomic_path

    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))
    return path


def _gather(reader: IndexReader, rows: np.ndarray) -> np.ndarray:
    out = np.empty((len(rows), reader.dim), dtype=np.float32)
    position = 0
    for first, block in reader.iter_embeddings():
        lo = np.searchsorted(rows, first)
        hi = np.searchsorted(rows, first + len(block))
        if hi > lo:
            out[position:position + hi - lo] = block[rows[lo:hi] - first]
            position += hi - lo
    return out


def _discover(config: IndexConfig) -> tuple[Any, list[Path], tuple[int, int] | None]:
    """The images of a run: ``(everything found, this shard's listing, the shard)``."""
    shard = config.shard or shard_from_environment()
    found = discover_images(list(config.sources), from_list=config.from_list)
    listing = found.paths
    if shard is not None and shard[1] > 1:
        listing = [p for p in listing if shard_of(p, shard[1]) == shard[0]]
    if not found.paths and not found.problems:
        where = ", ".join([*map(str, config.sources), *([str(config.from_list)] if config.from_list else [])])
        raise ZutisError(f"no images found in {where} (looked for .jpg, .png, .webp and other image files)")
    return found, listing, shard


def _indexed(out: Path) -> dict[str, tuple[int, int]]:
    """What an index directory already holds: image path -> (bytes, mtime_ns) of its committed chunks."""
    if not out.is_dir() or not committed_chunks(out):
        return {}
    previous = IndexReader(out, manifest=_provisional_manifest(out), strict=False)
    return {record.path: (record.bytes, record.mtime_ns) for record in previous.records()}


def _pending(out: Path, listing: list[Path], done: dict[str, tuple[int, int]]) -> tuple[list[Path], list[str]]:
    """The images of ``listing`` still to embed, new or changed (size or mtime) since indexed: their
    paths and the same relative to ``out`` (as the index records them)."""
    todo: list[Path] = []
    names: list[str] = []
    for path, rel in zip(listing, relative_paths(out, listing)):
        if rel in done:
            try:
                stat = path.stat()
            except OSError:
                continue
            if done[rel] == (stat.st_size, stat.st_mtime_ns):
                continue
        todo.append(path)
        names.append(rel)
    return todo, names


def plan_index(config: IndexConfig, output: str | Path | None = None) -> Plan:
    """What ``zutis index`` would do (``--dry-run``): the checks of a real run, no weights loaded, nothing written."""
    config.validate()
    found, listing, shard = _discover(config)
    device = resolve_device(config.device)
    dtype = resolve_precision(config.precision, device)
    pretrained = config.pretrained or default_pretrained(config.model)
    model = weights_plan(config.model, pretrained) | {"device": str(device), "precision": precision_name(dtype)}
    writes = output_plan(output, "index", resumable=True)
    out = Path(writes["path"])
    if shard is not None and shard[1] > 1:
        out = out / shard_dir_name(shard)
        state = "new" if not out.exists() else "existing" if content(out) else "empty"
        writes = {"path": str(out), "state": state}
    if writes["state"] == "existing":  # the real run's check, without the image size only a built model knows
        _check_existing(out, ModelSpec(config.model, pretrained).describe() | {"precision": precision_name(dtype)})
    todo, _ = _pending(out, listing, _indexed(out))
    sources = [*map(str, config.sources), *([str(config.from_list)] if config.from_list else [])]
    counts = {"images": len(found.paths)} | ({"unreadable_entries": len(found.problems)} if found.problems else {})
    reads = [input_entry(", ".join(sources), "images", **counts)]
    work = {"images_in_shard": len(listing)} if shard is not None and shard[1] > 1 else {}
    work |= {"already_indexed": len(listing) - len(todo), "images_to_embed": len(todo),
             "chunks": -(-len(todo) // config.chunk_size)}
    params = {"batch_size": config.batch_size, "chunk_size": config.chunk_size, "faiss": config.faiss,
              "workers": config.decode_workers(device.type),
              "decode_in": "threads" if config.decode_threads(device.type) else "processes"}
    if device.type == "cpu":
        params["threads"] = config.model_threads(device.type)
    if shard is not None:
        params["shard"] = f"{shard[0]}/{shard[1]}"
    problems = shard_entries(found.problems, shard)
    notes = [failure_summary(problems, len(listing) + len(problems))] if problems else []
    return Plan("index", reads, writes, model, params, work, notes)


@holding_locks
def build_index(config: IndexConfig, output: str | Path | None = None, *,
                progress: Callable[[int, int], None] | None = None,
                log: Callable[[str], None] | None = None,
                warn: Callable[[str], None] | None = None) -> IndexResult:
    """Run ``zutis index``: returns what was done; the index directory is ``result.path``.

    What cannot be read (an image, a ``from_list`` entry naming nothing, a broken symbolic link) is
    skipped and listed in ``failed.jsonl``; when the index would hold no image the run stops with
    :class:`ZutisError` and writes no manifest, when some inputs fail ``warn`` gets one line
    (:func:`zutiscli.pipeline.failures.check_failures`).
    """
    config.validate()
    say = log or (lambda message: None)
    start = time.perf_counter()
    found, listing, shard = _discover(config)
    device = resolve_device(config.device)
    if shard is not None and device.type == "cuda" and "LOCAL_RANK" in os.environ and config.device == "auto":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    dtype = resolve_precision(config.precision, device)
    spec = ModelSpec(config.model, config.pretrained or default_pretrained(config.model))
    sharded = shard is not None and shard[1] > 1
    _precheck_output(output, shard if sharded else None, spec.describe() | {"precision": precision_name(dtype)})

    backbone = load_backbone(spec, device=device, dtype=dtype)
    out = prepare_output_dir(output, "index", resumable=True, lock=not sharded)
    if sharded:
        out = out / shard_dir_name(shard)
        out.mkdir(parents=True, exist_ok=True)
        lock_directory(out)

    model_record = _model_record(spec, dtype, backbone.image_size[0])
    _check_existing(out, model_record)
    for note in repair_chunks(out):
        say(note)

    previous = IndexReader(out, manifest=_provisional_manifest(out), strict=False) if committed_chunks(out) else None
    tally = _Tally(previous, backbone.embed_dim)
    done = {r.path: (r.bytes, r.mtime_ns) for r in previous.records()} if previous is not None else {}
    del previous
    todo, names = _pending(out, listing, done)
    skipped = len(listing) - len(todo)
    if skipped:
        say(f"{skipped} image(s) already indexed; embedding {len(todo)} more")

    inputs = _input_refs(out, config, listing)
    extra = {"shard": list(shard) if shard else None}
    workers = config.decode_workers(device.type)
    in_threads = config.decode_threads(device.type)
    dataset = _ImageFiles(todo, backbone.transform(), backbone.image_size[0], config.max_pixels)
    decoders = workers if len(todo) > config.batch_size else 0  # one batch or less: decoded here
    threads = config.model_threads(device.type, workers=decoders)
    writer = IndexWriter(out)
    pending_records: list[ImageRecord] = []
    pending_embeddings: list[np.ndarray] = []
    # what the listing could not even name (recorded once: a rerun finds the same again)
    pending_failures = [FailedImage(rel, reason) for rel, reason in
                        ((relative_to(out, entry), reason) for entry, reason in shard_entries(found.problems, shard))
                        if tally.failed.get(rel) != reason]
    embedded = 0
    failed = len(pending_failures)

    def commit() -> None:
        nonlocal pending_records, pending_embeddings, pending_failures
        if not pending_records and not pending_failures:
            return
        dim = backbone.embed_dim
        array = np.concatenate(pending_embeddings) if pending_embeddings else np.zeros((0, dim), np.float16)
        writer.write_chunk(pending_records, array, pending_failures)
        tally.add(pending_records, pending_failures)
        if tally.rows:  # an index of no image has no manifest, not even an unfinished one
            _write_index_manifest(out, model_record, config, inputs, tally.summary(False, None, extra))
        pending_records, pending_embeddings, pending_failures = [], [], []

    def embed(tensor: torch.Tensor) -> np.ndarray:  # (b, 3, S, S) -> (b, D) float16, in any thread or worker
        return backbone.encode_images(tensor.to(device, non_blocking=True)).cpu().numpy().astype(np.float16)

    loop_start, loop_cpu = time.perf_counter(), _cpu_seconds()
    with closing(_embedded(dataset, embed, config.batch_size, decoders, threads, in_threads, device)) as batches:
        for items, metas, bad, embeddings in batches:
            for item, reason in bad:
                pending_failures.append(FailedImage(names[item], reason))
                failed += 1
            if embeddings is not None:
                for item, meta in zip(items, metas):
                    pending_records.append(ImageRecord(path=names[item], **meta))
                pending_embeddings.append(embeddings)
                embedded += len(items)
            if progress is not None:
                progress(embedded + failed, len(todo))
            if len(pending_records) + len(pending_failures) >= config.chunk_size:
                commit()
        commit()
    embed_seconds = time.perf_counter() - loop_start
    embed_cpu_seconds = _cpu_seconds() - loop_cpu

    failures = tally.failures()
    listed = write_failed_summary(out, failures)
    check_failures([(str(resolve_relative(out, f.path)), f.reason) for f in failures],
                   len(tally.paths) + len(failures), listed, warn=warn)
    faiss_factory = None if config.faiss.strip().lower() == "flat" else config.faiss
    if tally.rows:
        # also where this run embedded nothing: so an index written before tables existed gets one
        write_image_table(IndexReader(out, manifest=_provisional_manifest(out)))
        build_faiss_index(out, config.faiss, config.faiss_train_size, config.seed)
    seconds = time.perf_counter() - start
    extra |= {"seconds": round(seconds, 3), "embed_seconds": round(embed_seconds, 3),
              "embed_cpu_seconds": round(embed_cpu_seconds, 3), "workers": workers, "threads": threads,
              "decode_in": "threads" if in_threads else "processes", "device": str(device)}
    _write_index_manifest(out, model_record, config, inputs, tally.summary(True, faiss_factory, extra))
    return IndexResult(out, embedded, skipped, failed, len(listing), seconds, extra)


def _embedded(dataset: _ImageFiles, embed: Callable[[torch.Tensor], np.ndarray], batch_size: int, workers: int,
              threads: int, in_threads: bool, device: torch.device):
    """``(items, metas, bad, embeddings)`` of consecutive batches of ``dataset``, in order, decoded
    and embedded where the module's docstring says (``workers`` 0: decoded in the calling thread;
    ``threads``: model threads; worker processes run one torch thread each).
    Closing the generator stops the threads or processes it started."""
    if workers and not in_threads and device.type == "cpu":
        bounds = _slice_bounds(len(dataset), workers, -(-batch_size // workers))
        loader = worker_loader(_EmbeddedSlices(dataset, bounds, embed), workers, batch_size=None,
                               shuffle=False, collate_fn=as_is, persistent_workers=False, prefetch_factor=2,
                               multiprocessing_context="fork")  # the model reaches the workers by forking
        for items, embeddings, metas, bad in loader:
            yield items, metas, bad, embeddings
        return
    if in_threads:
        loader = thread_batches(dataset, workers, batch_size, _collate, ahead=4 * workers or None)
    else:
        loader = worker_loader(dataset, workers, batch_size=batch_size, shuffle=False, collate_fn=_collate,
                               pin_memory=device.type == "cuda", persistent_workers=False,
                               prefetch_factor=4 if workers else None)
    batches = (((items, metas, bad), tensor) for items, tensor, metas, bad in loader)
    with closing(forward_in_order(batches, embed, threads)) as forwarded, \
            closing(loader) if in_threads else nullcontext():  # decoding threads stop with the loop
        for (items, metas, bad), embeddings in forwarded:
            yield items, metas, bad, embeddings


def _provisional_manifest(out: Path):
    """The manifest if one was written, else a stand-in so a reader can list chunks of a fresh run."""
    if (out / MANIFEST_NAME).is_file():
        return read_manifest(out, "zutis.index")
    return Manifest(kind="zutis.index", schema=1, created_by="", created_at="", root=out)


@holding_locks
def merge_indices(shards: Sequence[str | Path], output: str | Path | None = None, faiss_factory: str | None = None,
                  faiss_train_size: int = 100_000, log: Callable[[str], None] | None = None) -> Path:
    """Join index directories built with the same model (e.g. shards) into one index.

    Embedding chunks are hard-linked when possible (copied otherwise); image paths are rewritten
    relative to the new directory. Returns the merged directory.
    """
    say = log or (lambda message: None)
    readers = [IndexReader(s) for s in distinct_directories(shards, "index", "runs/index/1/shard-*")]
    check_output_dir(output, "index")
    model = readers[0].model
    for reader in readers[1:]:
        if reader.model != model:
            raise ArtefactError(
                f"{reader.directory}: built with {reader.model.get('name')} ({reader.model.get('pretrained')}, "
                f"{reader.model.get('precision')}), but {readers[0].directory} with {model.get('name')} "
                f"({model.get('pretrained')}, {model.get('precision')}); only indices of one model can be merged"
            )
    for reader in readers:
        if not reader.complete:
            say(f"warning: {reader.directory} is an unfinished index; merging what it holds")
    out = prepare_output_dir(output, "index")
    writer = IndexWriter(out)
    tally = _Tally(None, readers[0].dim)

    def rebase(path: str, reader: IndexReader) -> str:
        return relative_to(out, resolve_relative(reader.directory, path))

    for reader in readers:
        records = reader.records()
        failures = [FailedImage(rebase(f.path, reader), f.reason) for f in reader.failures()]
        offset = 0
        for position, number in enumerate(reader.chunks):
            source = reader.directory / CHUNK_DIR / f"{number:06d}.npy"
            size = int(np.load(source, mmap_mode="r").shape[0])
            rows = [ImageRecord(**(asdict(r) | {"path": rebase(r.path, reader)})) for r in records[offset:offset + size]]
            offset += size
            chunk_failures = failures if position == len(reader.chunks) - 1 else []
            writer.add_chunk_file(source, rows, chunk_failures)
            tally.add(rows, chunk_failures)
    params = dict(readers[0].manifest.params)
    factory = faiss_factory or params.get("faiss", "Flat")
    params["faiss"] = factory
    write_failed_summary(out, tally.failures())
    if tally.rows:
        write_image_table(IndexReader(out, manifest=_provisional_manifest(out)))
        build_faiss_index(out, factory, faiss_train_size)
    complete = all(r.complete for r in readers)
    summary = tally.summary(complete, None if factory.strip().lower() == "flat" else factory,
                            {"merged_from": len(readers)})
    write_manifest(out, "zutis.index", model=model, inputs=[r.directory for r in readers], params=params,
                   summary=summary)
    return out
