"""The index artefact on disk: image embeddings in memory-mappable float16 chunks plus an image table.

Layout of an index directory::

    manifest.json            kind zutis.index; model spec; summary with "complete" true/false
    chunks/000000.npy        (n0, D) float16, L2-normalised embeddings (np.save format: mmap-able)
    chunks/000000.jsonl      n0 image records, one JSON object per line, in the row order of the .npy
    chunks/000000.failed.jsonl  images of that chunk that could not be read: {"path", "reason"}
    failed.jsonl             all failures, gathered when the run finishes
    index.faiss              optional faiss index over all rows (absent for exact search)

A chunk is committed by its ``.jsonl`` file, written after its ``.npy``: a chunk without its
``.jsonl`` (a run killed mid-write) is ignored and overwritten by the next run. Rows are numbered
by concatenating the committed chunks in order; that number is the row id used by faiss.

Image paths are POSIX paths relative to the index directory, so an index moved together with its
images keeps working. When the same path was embedded twice (the file changed between runs), the
later row wins; earlier ones are marked inactive.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from zutiscli.artefacts.atomic import atomic_path, atomic_write_text, link_or_copy
from zutiscli.artefacts.manifest import Manifest, read_manifest, resolve_relative
from zutiscli.errors import ArtefactError

CHUNK_DIR = "chunks"
FAILED_NAME = "failed.jsonl"
FAISS_NAME = "index.faiss"
_CHUNK_RE = re.compile(r"^(\d{6,})\.jsonl$")


@dataclass(frozen=True)
class ImageRecord:
    """One indexed image. ``path`` is relative to the index directory; sizes in pixels and bytes.

    ``mtime_ns`` and ``bytes`` decide on a rerun whether a file is unchanged; ``hash`` is a
    BLAKE2b-64 of the file's bytes (hex), to find duplicates and check copies.
    """

    path: str
    width: int
    height: int
    bytes: int
    mtime_ns: int
    hash: str


@dataclass(frozen=True)
class FailedImage:
    """An image that could not be embedded: ``path`` relative to the index directory, and why."""

    path: str
    reason: str


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), fsync=True)


def _read_jsonl(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtefactError(f"{path}: unreadable ({exc}); the index is corrupt") from None


def committed_chunks(directory: str | Path) -> list[int]:
    """Numbers of the committed chunks of an index directory, ascending."""
    chunk_dir = Path(directory) / CHUNK_DIR
    if not chunk_dir.is_dir():
        return []
    numbers = []
    for entry in chunk_dir.iterdir():
        match = _CHUNK_RE.match(entry.name)
        if match and (chunk_dir / f"{match.group(1)}.npy").is_file():
            numbers.append(int(match.group(1)))
    return sorted(numbers)


class IndexWriter:
    """Appends committed chunks to an index directory (new or partly written)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        (self.directory / CHUNK_DIR).mkdir(parents=True, exist_ok=True)
        chunks = committed_chunks(self.directory)
        self._next = chunks[-1] + 1 if chunks else 0

    def write_chunk(self, records: list[ImageRecord], embeddings: np.ndarray, failures: list[FailedImage]) -> int:
        """Commit one chunk: ``embeddings`` ``(len(records), D)`` (stored as float16). Returns its number."""
        if embeddings.ndim != 2 or embeddings.shape[0] != len(records):
            raise ValueError(f"embeddings {embeddings.shape} do not match {len(records)} records")
        number = self._next
        stem = self.directory / CHUNK_DIR / f"{number:06d}"
        with atomic_path(stem.with_suffix(".npy")) as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, np.ascontiguousarray(embeddings, dtype=np.float16))
        _write_jsonl(Path(f"{stem}.failed.jsonl"), [asdict(f) for f in failures])
        _write_jsonl(stem.with_suffix(".jsonl"), [asdict(r) for r in records])
        self._next += 1
        return number

    def add_chunk_file(self, source: str | Path, records: list[ImageRecord], failures: list[FailedImage]) -> int:
        """Commit an existing ``.npy`` chunk of another index (hard-linked, or copied across devices)."""
        number = self._next
        stem = self.directory / CHUNK_DIR / f"{number:06d}"
        target = stem.with_suffix(".npy")
        link_or_copy(source, target)
        rows = np.load(target, mmap_mode="r").shape[0]
        if rows != len(records):
            target.unlink()
            raise ArtefactError(f"{source}: {rows} embeddings for {len(records)} records; the index is corrupt")
        _write_jsonl(Path(f"{stem}.failed.jsonl"), [asdict(f) for f in failures])
        _write_jsonl(stem.with_suffix(".jsonl"), [asdict(r) for r in records])
        self._next += 1
        return number


class IndexReader:
    """Read access to a finished or partly written index directory.

    Embeddings stay on disk (memory-mapped) until :meth:`iter_embeddings` hands out a chunk.
    """

    def __init__(self, directory: str | Path, manifest: Manifest | None = None):
        self.directory = Path(directory)
        self.manifest = manifest or read_manifest(self.directory, "zutis.index")
        self.chunks = committed_chunks(self.directory)
        self._records: list[ImageRecord] | None = None
        self._sizes: list[int] = []
        self.dim: int = int(self.manifest.summary.get("dim", 0))
        for number in self.chunks:
            array = self._open(number)
            if array.ndim != 2 or (self.dim and array.shape[1] != self.dim):
                raise ArtefactError(f"{self._chunk_path(number)}: shape {array.shape} does not match dim {self.dim}")
            self.dim = int(array.shape[1])
            self._sizes.append(int(array.shape[0]))

    @property
    def complete(self) -> bool:
        """Whether the run that wrote the index finished (a killed run leaves a valid partial index)."""
        return bool(self.manifest.summary.get("complete", False))

    @property
    def model(self) -> dict:
        return dict(self.manifest.model or {})

    def __len__(self) -> int:
        return sum(self._sizes)

    def _chunk_path(self, number: int) -> Path:
        return self.directory / CHUNK_DIR / f"{number:06d}.npy"

    def _open(self, number: int) -> np.ndarray:
        path = self._chunk_path(number)
        try:
            return np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise ArtefactError(f"{path}: unreadable embeddings ({exc}); the index is corrupt") from None

    def records(self) -> list[ImageRecord]:
        """Image records in row order (all rows, including inactive ones)."""
        if self._records is None:
            records: list[ImageRecord] = []
            for number, size in zip(self.chunks, self._sizes):
                path = self.directory / CHUNK_DIR / f"{number:06d}.jsonl"
                rows = _read_jsonl(path)
                if len(rows) != size:
                    raise ArtefactError(f"{path}: {len(rows)} records for {size} embeddings; the index is corrupt")
                try:
                    records.extend(ImageRecord(**row) for row in rows)
                except TypeError:
                    raise ArtefactError(f"{path}: malformed image record; the index is corrupt") from None
            self._records = records
        return self._records

    def failures(self) -> list[FailedImage]:
        """Images that could not be read, over all committed chunks."""
        out: list[FailedImage] = []
        for number in self.chunks:
            path = self.directory / CHUNK_DIR / f"{number:06d}.failed.jsonl"
            if path.is_file():
                out.extend(FailedImage(**row) for row in _read_jsonl(path))
        return out

    def active(self) -> np.ndarray:
        """``(N,)`` bool: False for rows superseded by a later row of the same path."""
        records = self.records()
        keep = np.ones(len(records), dtype=bool)
        seen: set[str] = set()
        for row in range(len(records) - 1, -1, -1):
            if records[row].path in seen:
                keep[row] = False
            seen.add(records[row].path)
        return keep

    def iter_embeddings(self, max_rows: int = 65536) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(first_row, block)`` with ``block`` a ``(n, D)`` float16 view, at most ``max_rows`` rows."""
        offset = 0
        for number, size in zip(self.chunks, self._sizes):
            array = self._open(number)
            for start in range(0, size, max_rows):
                yield offset + start, array[start:start + max_rows]
            offset += size

    def embeddings(self) -> np.ndarray:
        """All embeddings as one ``(N, D)`` float16 array in memory (for small indices and tests)."""
        blocks = [np.asarray(block) for _, block in self.iter_embeddings()]
        return np.concatenate(blocks) if blocks else np.zeros((0, self.dim), dtype=np.float16)

    def image_path(self, row: int) -> Path:
        """Absolute path of the image of row ``row``."""
        return resolve_relative(self.directory, self.records()[row].path)

    @property
    def faiss_path(self) -> Path | None:
        path = self.directory / FAISS_NAME
        return path if path.is_file() else None


def write_failed_summary(directory: str | Path, failures: list[FailedImage]) -> Path:
    """Gather all failures into the top-level ``failed.jsonl`` (atomically)."""
    path = Path(directory) / FAILED_NAME
    _write_jsonl(path, [asdict(f) for f in failures])
    return path


def remove_uncommitted(directory: str | Path) -> int:
    """Delete chunk files left by a killed run (an ``.npy`` without its ``.jsonl``); returns how many."""
    chunk_dir = Path(directory) / CHUNK_DIR
    if not chunk_dir.is_dir():
        return 0
    committed = {f"{n:06d}" for n in committed_chunks(directory)}
    removed = 0
    for entry in chunk_dir.iterdir():
        stem = entry.name.split(".")[0]
        if stem not in committed and not entry.name.startswith("."):
            os.unlink(entry)
            removed += 1
    return removed
