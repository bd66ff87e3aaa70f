"""The index artefact on disk: image embeddings in memory-mappable float16 chunks plus an image table.

Layout of an index directory::

    manifest.json            kind zutis.index; model spec; summary with "complete" true/false
    chunks/000000.npy        (n0, D) float16, L2-normalised embeddings (np.save format: mmap-able)
    chunks/000000.jsonl      n0 image records, one JSON object per line, in the row order of the .npy
    chunks/000000.failed.jsonl  images of that chunk that could not be read: {"path", "reason"}
    table/                   the image records of all committed chunks in memory-mappable columns
                             and the active mask (see :mod:`zutiscli.artefacts.image_table`)
    failed.jsonl             all failures, gathered when the run finishes
    index.faiss              optional faiss index over all rows (absent for exact search)

A chunk is committed by its ``.jsonl`` file, written after its ``.npy``: a chunk without its
``.jsonl`` (a run killed mid-write) is ignored and overwritten by the next run. Rows are numbered
by concatenating the committed chunks in order; that number is the row id used by faiss.

Committed chunks are numbered 0, 1, 2... without gaps, and the manifest's ``summary.rows`` counts
their rows when it was written (a run killed between a commit and its manifest leaves more rows,
never fewer). A reader refuses a directory where that does not hold (a chunk file deleted or cut
short, a ``.jsonl`` without its ``.npy``) rather than search what is left, and says to rerun
``zutis index build`` on it: :func:`repair_chunks`, run first by the build, removes the damaged
chunks, renumbers the rest and leaves the images they held to be embedded again.

Image paths are POSIX paths relative to the index directory, so an index moved together with its
images keeps working. When the same path was embedded twice (the file changed between runs), the
later row wins; earlier ones are marked inactive.

``table/`` is derived from the chunks' ``.jsonl`` and written when a run finishes
(:func:`write_image_table`): a reader takes its records from it in milliseconds where a million
lines of JSON take seconds to parse. Where there is no table (an index of an older zutis) or it
does not fit the committed chunks, the reader parses the ``.jsonl`` (only those of the chunks
committed after the table was written, when it covers the first ones); a table that fits them but
cannot be read is refused with the repair hint, and the repair deletes it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from zutiscli.artefacts.atomic import atomic_write_json, atomic_write_npy, atomic_write_text, link_or_copy
from zutiscli.artefacts.image_table import (
    DamagedTable,
    ImageRecord,
    ImageTable,
    Stamp,
    columns_of,
    join_columns,
    read_table,
    remove_table,
    write_table,
)
from zutiscli.artefacts.manifest import MANIFEST_NAME, Manifest, read_manifest, resolve_relative
from zutiscli.errors import ArtefactError

CHUNK_DIR = "chunks"
FAILED_NAME = "failed.jsonl"
FAISS_NAME = "index.faiss"
_CHUNK_RE = re.compile(r"^(\d{6,})\.jsonl$")
_CHUNK_FILE_RE = re.compile(r"^(\d{6,})\.(npy|jsonl)$")
_RECORD_TYPES = {"path": str, "width": int, "height": int, "bytes": int, "mtime_ns": int, "hash": str}
#: the values an integer field may take: those of its column in the image table
_RECORD_RANGES = {"width": (0, 1 << 31), "height": (0, 1 << 31), "bytes": (0, 1 << 63), "mtime_ns": (-1 << 63, 1 << 63)}


def repair_hint(directory: str | Path) -> str:
    """What to do about a damaged index directory (a shard's is rebuilt by its own sharded run)."""
    directory = Path(directory)
    shard = re.fullmatch(r"shard-(\d+)-of-(\d+)", directory.name)
    where = f"--shard {shard.group(1)}/{shard.group(2)} -o {directory.parent}" if shard else f"-o {directory}"
    return (f"run `zutis index build` on the same images with {where} again to repair it (it embeds only the "
            f"missing images)")


@dataclass(frozen=True)
class FailedImage:
    """An image that could not be embedded: ``path`` relative to the index directory, and why."""

    path: str
    reason: str


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), fsync=True)


def _read_jsonl(path: Path, directory: Path) -> list[dict]:
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtefactError(f"{path}: unreadable ({exc}); the index is damaged: {repair_hint(directory)}") from None
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise ArtefactError(f"{path}: line {number} is not a JSON object; the index is damaged: "
                                f"{repair_hint(directory)}")
    return rows


def _misfit(value: object, kind: type, key: str) -> bool:
    """Whether ``value`` is not a value of record field ``key`` (of type ``kind``)."""
    if not isinstance(value, kind):
        return True
    if kind is int:
        low, high = _RECORD_RANGES[key]
        return isinstance(value, bool) or not low <= value < high
    return False


def _records_of(path: Path, directory: Path) -> list[ImageRecord]:
    """The image records of one chunk's ``.jsonl``, every field of the type (and range) it should have."""
    records = []
    for number, row in enumerate(_read_jsonl(path, directory), 1):
        wrong = sorted(set(row) ^ set(_RECORD_TYPES)) or [
            key for key, kind in _RECORD_TYPES.items() if _misfit(row[key], kind, key)]
        if wrong:
            raise ArtefactError(f"{path}: line {number} is not an image record (field {wrong[0]!r}); the index is "
                                f"damaged: {repair_hint(directory)}")
        records.append(ImageRecord(**row))
    return records


def _failures_of(path: Path, directory: Path) -> list[FailedImage]:
    """The failed images of one chunk's ``.failed.jsonl``."""
    failures = []
    for number, row in enumerate(_read_jsonl(path, directory), 1):
        if set(row) != {"path", "reason"} or not all(isinstance(v, str) for v in row.values()):
            raise ArtefactError(f"{path}: line {number} is not a failed image ({{\"path\", \"reason\"}}); the index "
                                f"is damaged: {repair_hint(directory)}")
        failures.append(FailedImage(**row))
    return failures


def _line_count(path: Path) -> int:
    with open(path, "rb") as handle:
        return sum(1 for line in handle if line.strip())


def _chunk_files(directory: Path) -> tuple[set[int], set[int]]:
    """Numbers of the chunks that have an ``.npy``, and of those that have a ``.jsonl``."""
    arrays: set[int] = set()
    tables: set[int] = set()
    chunk_dir = directory / CHUNK_DIR
    if chunk_dir.is_dir():
        for entry in chunk_dir.iterdir():
            match = _CHUNK_FILE_RE.match(entry.name)
            if match:
                (arrays if match.group(2) == "npy" else tables).add(int(match.group(1)))
    return arrays, tables


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
        atomic_write_npy(stem.with_suffix(".npy"), np.ascontiguousarray(embeddings, dtype=np.float16))
        _write_jsonl(Path(f"{stem}.failed.jsonl"), [vars(f) for f in failures])
        _write_jsonl(stem.with_suffix(".jsonl"), [vars(r) for r in records])  # flat records: asdict's copies not needed
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
    A damaged directory (see the module docstring) is refused with an :class:`ArtefactError` that
    names the missing or short file. ``strict=False`` is for the run that builds the index (and
    its dry run): damaged chunks are then left out, as that run embeds their images again, and the
    row count of the manifest is not checked.
    """

    def __init__(self, directory: str | Path, manifest: Manifest | None = None, *, strict: bool = True):
        self.directory = Path(directory)
        self.manifest = manifest or read_manifest(self.directory, "zutis.index")
        self.chunks = committed_chunks(self.directory)
        if strict:
            self._check_chunk_numbers()
        else:
            damaged = damaged_chunks(self.directory)
            self.chunks = [number for number in self.chunks if number not in damaged]
        self._records: list[ImageRecord] | None = None
        self._table: ImageTable | None = None
        self._stamps: list[Stamp] | None = None
        self._sizes: list[int] = []
        self.dim: int = int(self.manifest.summary.get("dim", 0))
        for number in self.chunks:
            array = self._open(number)
            if array.ndim != 2 or (self.dim and array.shape[1] != self.dim):
                raise ArtefactError(f"{self._chunk_path(number)}: shape {array.shape} does not match dim {self.dim}; "
                                    f"the index is damaged: {repair_hint(self.directory)}")
            self.dim = int(array.shape[1])
            self._sizes.append(int(array.shape[0]))
        if strict:
            self._check_row_count()

    def _check_chunk_numbers(self) -> None:
        """Refuse a ``.jsonl`` without its ``.npy``, and a gap in the chunk numbers."""
        arrays, tables = _chunk_files(self.directory)
        orphans = sorted(tables - arrays)
        if orphans:
            number = orphans[0]
            raise ArtefactError(
                f"{self._chunk_path(number)}: missing (its image table {number:06d}.jsonl is there), so "
                f"{self._chunk_rows(number)} images of the index have no embeddings; {repair_hint(self.directory)}")
        gaps = sorted(set(range(len(self.chunks))) - set(self.chunks))
        if gaps:
            number = gaps[0]
            what = (f"{self._chunk_path(number).with_suffix('.jsonl')}: missing (its embeddings {number:06d}.npy are "
                    f"there)" if number in arrays else
                    f"{self._chunk_path(number)}: missing, with its image table {number:06d}.jsonl")
            raise ArtefactError(f"{what}, and later chunks are there, so the images of chunk {number:06d} are not "
                                f"in the index; {repair_hint(self.directory)}")

    def _chunk_rows(self, number: int) -> int:
        try:
            return _line_count(self._chunk_path(number).with_suffix(".jsonl"))
        except OSError:
            return 0

    def _check_row_count(self) -> None:
        """Refuse chunks that hold fewer rows than the manifest counts, naming the short or missing file."""
        expected = self.manifest.summary.get("rows")
        if not isinstance(expected, int) or len(self) >= expected:
            return
        for number, size in zip(self.chunks, self._sizes):
            listed = self._chunk_rows(number)
            if listed != size:
                raise ArtefactError(
                    f"{self._chunk_path(number)}: holds {size} embeddings but its image table {number:06d}.jsonl "
                    f"lists {listed} images; {repair_hint(self.directory)}")
        manifest = self.directory / "manifest.json"
        raise ArtefactError(
            f"{self._chunk_path(len(self.chunks))}: missing: {manifest} counts {expected:,} rows but the chunks hold "
            f"{len(self):,}; {repair_hint(self.directory)}")

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
            raise ArtefactError(f"{path}: unreadable embeddings ({str(exc)[:160]}); the index is damaged: "
                                f"{repair_hint(self.directory)}") from None

    def _chunk_records(self, number: int, size: int) -> list[ImageRecord]:
        """The records of one chunk's ``.jsonl``, refused unless there are as many as its embeddings."""
        path = self.directory / CHUNK_DIR / f"{number:06d}.jsonl"
        rows = _records_of(path, self.directory)
        if len(rows) != size:
            raise ArtefactError(f"{path}: lists {len(rows)} images but {number:06d}.npy holds {size} "
                                f"embeddings; the index is damaged: {repair_hint(self.directory)}")
        return rows

    def stamps(self) -> list[Stamp]:
        """``(number, rows, byte size of its .jsonl)`` of each committed chunk: what its image table must cover."""
        if self._stamps is None:
            self._stamps = [_stamp(self.directory, number, size) for number, size in zip(self.chunks, self._sizes)]
        return self._stamps

    def table(self) -> ImageTable:
        """The image records of all rows in columns: from ``table/`` where it fits, else from the ``.jsonl``.

        Raises :class:`ArtefactError` with the repair hint for a table that fits the chunks but is damaged.
        """
        if self._table is None:
            stamps = self.stamps()
            try:
                stored = read_table(self.directory, stamps)
            except DamagedTable as exc:
                raise ArtefactError(f"{exc}; the index's image table is damaged: "
                                    f"{repair_hint(self.directory)}") from None
            covered = stored[1] if stored is not None else 0
            if stored is not None and covered == len(stamps):
                self._table = ImageTable(stored[0], stored=True)
            else:
                parsed = [record for number, size in zip(self.chunks[covered:], self._sizes[covered:])
                          for record in self._chunk_records(number, size)]
                columns = columns_of(parsed) if stored is None else join_columns([stored[0], columns_of(parsed)])
                self._table = ImageTable(columns)
        return self._table

    def records(self) -> list[ImageRecord]:
        """Image records in row order (all rows, including inactive ones)."""
        if self._records is None:
            self._records = self.table().records()
        return self._records

    def failures(self) -> list[FailedImage]:
        """Images that could not be read, over all committed chunks."""
        out: list[FailedImage] = []
        for number in self.chunks:
            path = self.directory / CHUNK_DIR / f"{number:06d}.failed.jsonl"
            if path.is_file():
                out.extend(_failures_of(path, self.directory))
        return out

    def active(self) -> np.ndarray:
        """``(N,)`` bool, read-only: False for rows superseded by a later row of the same path."""
        return self.table().active

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
        return resolve_relative(self.directory, self.table().path(row))

    @property
    def faiss_path(self) -> Path | None:
        path = self.directory / FAISS_NAME
        return path if path.is_file() else None


def _stamp(directory: Path, number: int, rows: int) -> Stamp:
    try:
        size = os.stat(directory / CHUNK_DIR / f"{number:06d}.jsonl").st_size
    except OSError:
        size = -1
    return number, rows, size


def write_image_table(reader: IndexReader) -> Path | None:
    """Bring ``table/`` of the reader's index up to date with its committed chunks (under the directory's lock).

    Writes nothing when the stored table already covers every chunk; returns the table written, or None.
    """
    table = reader.table()
    if table.stored:
        return None
    return write_table(reader.directory, table.columns, reader.stamps())


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


def damaged_chunks(directory: str | Path) -> dict[int, str]:
    """The chunks of an index directory that cannot be read as they should: number -> what is wrong.

    A chunk is damaged when its ``.jsonl`` has no ``.npy``, when either file cannot be read, or
    when they disagree on the number of rows. (An ``.npy`` without its ``.jsonl`` is an
    uncommitted chunk of an interrupted run, see :func:`remove_uncommitted`.)
    """
    directory = Path(directory)
    arrays, tables = _chunk_files(directory)
    damaged: dict[int, str] = {}
    for number in sorted(tables):
        stem = directory / CHUNK_DIR / f"{number:06d}"
        if number not in arrays:
            damaged[number] = f"{stem}.npy is missing"
            continue
        try:
            rows = np.load(stem.with_suffix(".npy"), mmap_mode="r").shape
        except (OSError, ValueError) as exc:
            damaged[number] = f"{stem}.npy is unreadable ({str(exc)[:120]})"
            continue
        try:
            listed = len(_records_of(stem.with_suffix(".jsonl"), directory))
            if Path(f"{stem}.failed.jsonl").is_file():
                _failures_of(Path(f"{stem}.failed.jsonl"), directory)
        except ArtefactError as exc:
            damaged[number] = str(exc).split("; the index is damaged")[0]
            continue
        if len(rows) != 2 or rows[0] != listed:
            damaged[number] = f"{stem}.npy holds {rows[0] if rows else 0} embeddings for {listed} images"
    return damaged


def repair_chunks(directory: str | Path) -> list[str]:
    """Make an index directory readable again before a run adds to it; returns what was done, in words.

    Removes the files of damaged chunks (their images are then embedded again by the run) and of
    uncommitted ones, renumbers the remaining chunks without gaps, and, when rows were lost, drops
    ``index.faiss`` (its row ids are stale) and rewrites the manifest's ``summary`` to count what is
    left as an unfinished index, so that the directory is a valid partial index at every moment.
    The image table goes when chunks were removed or renumbered, or when it cannot be read; the
    run writes it again when it finishes.
    """
    directory = Path(directory)
    chunk_dir = directory / CHUNK_DIR
    said: list[str] = []
    for number, reason in damaged_chunks(directory).items():
        for entry in chunk_dir.glob(f"{number:06d}.*"):
            if entry.name.split(".")[0] == f"{number:06d}":
                os.unlink(entry)
        said.append(f"{reason}: removed chunk {number:06d}; its images are embedded again")
    lost = bool(said)
    removed = remove_uncommitted(directory)
    if removed:
        said.append(f"removed {removed} unfinished chunk file(s) of an interrupted run")
    committed = committed_chunks(directory)
    moved = [(old, new) for new, old in enumerate(committed) if old != new]
    for old, new in moved:  # ascending: each target number is free (below its source, above the last moved)
        source, target = chunk_dir / f"{old:06d}", chunk_dir / f"{new:06d}"
        for suffix in (".npy", ".failed.jsonl", ".jsonl"):  # the .jsonl last: it commits the chunk
            if Path(f"{source}{suffix}").exists():
                os.replace(f"{source}{suffix}", f"{target}{suffix}")
    if moved:
        said.append(f"renumbered {len(moved)} chunk(s) to close the gap")
    if (lost or moved) and (directory / FAISS_NAME).exists():
        (directory / FAISS_NAME).unlink()  # its row ids are stale; the run builds it again
    if lost or moved:
        remove_table(directory)  # its rows are no longer those of the chunks
    else:
        damage = _table_damage(directory)
        if damage:
            remove_table(directory)
            said.append(f"{damage}: removed the image table; it is written again")
    _recount_manifest(directory)
    return said


def _table_damage(directory: Path) -> str | None:
    """What is wrong with an image table that fits the committed chunks but cannot be read, or None."""
    chunk_dir = directory / CHUNK_DIR
    stamps = [_stamp(directory, number, int(np.load(chunk_dir / f"{number:06d}.npy", mmap_mode="r").shape[0]))
              for number in committed_chunks(directory)]
    try:
        read_table(directory, stamps)
    except DamagedTable as exc:
        return str(exc)
    return None


def _recount_manifest(directory: Path) -> None:
    """After a repair: a manifest counting more rows than the chunks hold becomes that of an unfinished index."""
    path = directory / MANIFEST_NAME
    if not path.is_file():
        return
    data = json.loads(path.read_text(encoding="utf-8"))
    summary = data.get("summary")
    if not isinstance(summary, dict) or not isinstance(summary.get("rows"), int):
        return
    rows = sum(int(np.load(directory / CHUNK_DIR / f"{n:06d}.npy", mmap_mode="r").shape[0])
               for n in committed_chunks(directory))
    if rows >= summary["rows"]:
        return
    faiss_file = directory / FAISS_NAME
    if faiss_file.exists():
        faiss_file.unlink()
    data["summary"] = summary | {"rows": rows, "complete": False, "faiss": None}
    atomic_write_json(path, data)
