"""The image table of an index in columns: a million records open in milliseconds, memory-mapped.

Layout of ``table/`` in an index directory (N rows, in the row order of the embeddings)::

    width.npy         (N,) int32    displayed width of the image, pixels
    height.npy        (N,) int32    displayed height, pixels
    bytes.npy         (N,) int64    file size, bytes
    mtime_ns.npy      (N,) int64    modification time, nanoseconds since the epoch
    hash.npy          (N,) S<w>     the record's hash, UTF-8 (BLAKE2b-64 hex: S16; b"" where unknown)
    path_offsets.npy  (N + 1,) int64  row i's path is paths.bin[offsets[i]:offsets[i + 1]]
    paths.bin         the paths (relative to the index directory), UTF-8, back to back
    active.npy        (N,) bool     False for rows superseded by a later row of the same path
    meta.json         {"schema": 1, "rows": N, "chunks": [[number, rows, jsonl_bytes], ...]}

The table is derived: each chunk's ``.jsonl`` stays the record that commits it, and ``meta.json``
names the chunks the table was made from (number, rows, byte size of the ``.jsonl``), so a reader
can tell a table that covers the committed chunks, or only the first of them (a later run added
chunks and was stopped before it wrote the table again), from one that does not fit them.

A table is written into a temporary sibling directory (``meta.json`` last) that then replaces
``table/``: a reader may find no table for a moment, never a half-written one.
"""

from __future__ import annotations

import json
import mmap
import os
import shutil
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Hashable, Iterable, Sequence

import numpy as np

from zutiscli.artefacts.atomic import disk_full, fsync_dir
from zutiscli.errors import DiskFullError

TABLE_DIR = "table"
META_NAME = "meta.json"
PATHS_NAME = "paths.bin"
SCHEMA = 1
#: name -> dtype of the fixed-width numeric columns
NUMBERS = {"width": np.dtype(np.int32), "height": np.dtype(np.int32), "bytes": np.dtype(np.int64),
           "mtime_ns": np.dtype(np.int64)}
_PREFIX, _SUFFIX = f".{TABLE_DIR}.", ".tmp"  # temporary directories: named as atomic-write temporaries are

#: (chunk number, rows, byte size of its ``.jsonl``): what a table records of each chunk it covers
Stamp = tuple[int, int, int]


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


class DamagedTable(Exception):
    """A table whose ``meta.json`` claims the committed chunks but whose files cannot be read as such."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class Columns:
    """The columns of an image table of N rows, in memory or memory-mapped (read-only).

    ``width``, ``height``: ``(N,)`` int32 pixels; ``bytes``: ``(N,)`` int64; ``mtime_ns``: ``(N,)``
    int64 nanoseconds; ``hash``: ``(N,)`` ``S<w>`` UTF-8; ``path_offsets``: ``(N + 1,)`` int64 byte
    offsets into ``paths``, the UTF-8 blob (``bytes`` or a read-only ``mmap``); ``active``: ``(N,)`` bool.
    """

    width: np.ndarray
    height: np.ndarray
    bytes: np.ndarray
    mtime_ns: np.ndarray
    hash: np.ndarray
    path_offsets: np.ndarray
    paths: bytes | mmap.mmap
    active: np.ndarray

    def __len__(self) -> int:
        return len(self.width)


# ---- pure functions -----------------------------------------------------------------------------
def active_rows(paths: Sequence[Hashable]) -> np.ndarray:
    """``(N,)`` bool: True at the last row of each distinct path (the row that supersedes the others)."""
    last = {path: row for row, path in enumerate(paths)}
    keep = np.zeros(len(paths), dtype=bool)
    keep[np.fromiter(last.values(), dtype=np.int64, count=len(last))] = True
    return keep


def pack_strings(strings: Sequence[str]) -> tuple[np.ndarray, bytes]:
    """``(offsets, blob)``: the UTF-8 of ``strings`` back to back, string i at ``blob[offsets[i]:offsets[i + 1]]``.

    ``offsets`` is ``(N + 1,)`` int64 in bytes. Lone surrogates (undecodable file names) survive the
    round trip through :func:`unpack_strings`.
    """
    encoded = [text.encode("utf-8", "surrogatepass") for text in strings]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)), out=offsets[1:])
    return offsets, b"".join(encoded)


def byte_slices(offsets: np.ndarray, blob: bytes | mmap.mmap, rows: Iterable[int] | np.ndarray) -> list[bytes]:
    """The raw UTF-8 of the strings ``rows`` (int indices) of a blob packed by :func:`pack_strings`."""
    rows = np.asarray(rows if isinstance(rows, np.ndarray) else list(rows), dtype=np.int64)
    starts = offsets[rows].tolist()
    ends = offsets[rows + 1].tolist()
    return [blob[start:end] for start, end in zip(starts, ends)]


def unpack_strings(offsets: np.ndarray, blob: bytes | mmap.mmap, rows: Iterable[int] | np.ndarray) -> list[str]:
    """The strings ``rows`` of a blob packed by :func:`pack_strings`, decoded; only those are read."""
    return [raw.decode("utf-8", "surrogatepass") for raw in byte_slices(offsets, blob, rows)]


def columns_of(records: Sequence[ImageRecord]) -> Columns:
    """The columns of ``records`` (in their order), the active mask computed from their paths."""
    paths = [record.path for record in records]
    offsets, blob = pack_strings(paths)
    numbers = {name: np.fromiter((getattr(r, name) for r in records), dtype=dtype, count=len(records))
               for name, dtype in NUMBERS.items()}
    hashes = [record.hash.encode("utf-8", "surrogatepass") for record in records]
    width = max(1, max(map(len, hashes), default=1))
    return Columns(hash=np.array(hashes, dtype=f"S{width}").reshape(len(records)), path_offsets=offsets, paths=blob,
                   active=active_rows(paths), **numbers)


def join_columns(parts: Sequence[Columns]) -> Columns:
    """One table of the rows of ``parts`` in order, in memory; the active mask recomputed over all of them."""
    blobs = [bytes(part.paths) for part in parts]
    starts = np.cumsum([0] + [len(blob) for blob in blobs])
    offsets = np.concatenate([np.zeros(1, np.int64)] + [np.asarray(part.path_offsets[1:]) + start
                                                         for part, start in zip(parts, starts[:-1].tolist())])
    blob = b"".join(blobs)
    total = len(offsets) - 1
    numbers = {name: np.concatenate([np.zeros(0, dtype)] + [np.asarray(getattr(part, name)) for part in parts])
               for name, dtype in NUMBERS.items()}
    hashes = np.concatenate([np.zeros(0, "S1")] + [np.asarray(part.hash) for part in parts])
    return Columns(hash=hashes, path_offsets=offsets, paths=blob,
                   active=active_rows(byte_slices(offsets, blob, np.arange(total))), **numbers)


# ---- the reader's façade ------------------------------------------------------------------------
class ImageTable:
    """Row access to an index's image records; paths and hashes are decoded only for the rows asked.

    ``stored`` tells whether the whole table came from ``table/`` (no ``.jsonl`` parsed).
    """

    def __init__(self, columns: Columns, stored: bool = False):
        self.columns = columns
        self.stored = stored

    def __len__(self) -> int:
        return len(self.columns)

    @property
    def active(self) -> np.ndarray:
        """``(N,)`` bool, read-only: False for rows superseded by a later row of the same path."""
        return self.columns.active

    def hash(self, row: int) -> str:
        """The hash of row ``row`` (``""`` where unknown)."""
        return self.columns.hash[row].decode("utf-8", "surrogatepass")

    def hashes(self, rows: Iterable[int] | np.ndarray) -> list[str]:
        """The hashes of ``rows`` (int indices), in their order."""
        rows = np.asarray(rows if isinstance(rows, np.ndarray) else list(rows), dtype=np.int64)
        return [raw.decode("utf-8", "surrogatepass") for raw in self.columns.hash[rows].tolist()]

    def path(self, row: int) -> str:
        """The path of row ``row``, relative to the index directory."""
        return unpack_strings(self.columns.path_offsets, self.columns.paths, [row])[0]

    def paths(self, rows: Iterable[int] | np.ndarray) -> list[str]:
        """The paths of ``rows`` (int indices), in their order, relative to the index directory."""
        return unpack_strings(self.columns.path_offsets, self.columns.paths, rows)

    def record(self, row: int) -> ImageRecord:
        """The whole record of row ``row``."""
        c = self.columns
        return ImageRecord(self.path(row), int(c.width[row]), int(c.height[row]), int(c.bytes[row]),
                           int(c.mtime_ns[row]), self.hash(row))

    def records(self) -> list[ImageRecord]:
        """Every record, in row order (all paths decoded: for callers that need them all)."""
        c = self.columns
        rows = np.arange(len(c))
        return [ImageRecord(*values) for values in zip(
            self.paths(rows), c.width.tolist(), c.height.tolist(), c.bytes.tolist(), c.mtime_ns.tolist(),
            self.hashes(rows))]


# ---- on disk ------------------------------------------------------------------------------------
def _temporary_dirs(directory: Path) -> list[Path]:
    return [entry for entry in directory.iterdir()
            if entry.name.startswith(_PREFIX) and entry.name.endswith(_SUFFIX) and entry.is_dir()]


def _write_file(path: Path, write) -> None:
    with open(path, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())


def write_table(directory: str | Path, columns: Columns, chunks: Sequence[Stamp]) -> Path:
    """Write ``columns`` as ``directory/table`` (replacing any), made from the committed ``chunks``.

    Call it while holding the index directory's lock: it also deletes the temporary directories
    that a killed writer left. Raises :class:`DiskFullError` naming the table when the disk is full.
    Returns the table directory.
    """
    directory = Path(directory)
    target = directory / TABLE_DIR
    for leftover in _temporary_dirs(directory):
        shutil.rmtree(leftover, ignore_errors=True)
    meta = {"schema": SCHEMA, "rows": len(columns), "chunks": [list(stamp) for stamp in chunks]}
    if sum(stamp[1] for stamp in chunks) != len(columns):
        raise ValueError(f"{len(columns)} rows of columns for chunks holding {sum(s[1] for s in chunks)}")
    fresh = old = None
    try:
        fresh = Path(tempfile.mkdtemp(prefix=_PREFIX, suffix=_SUFFIX, dir=directory))
        for field in fields(Columns):
            value = getattr(columns, field.name)
            if field.name == "paths":
                _write_file(fresh / PATHS_NAME, lambda handle: handle.write(value))
            else:
                _write_file(fresh / f"{field.name}.npy", lambda handle: np.save(handle, np.ascontiguousarray(value)))
        _write_file(fresh / META_NAME, lambda handle: handle.write(json.dumps(meta).encode("utf-8") + b"\n"))
        fsync_dir(fresh)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=_PREFIX, suffix=_SUFFIX, dir=directory))
            os.replace(target, old)  # onto an empty directory; from here to the next line there is no table
        os.replace(fresh, target)
        fresh = None
        fsync_dir(directory)
    except BaseException as exc:
        full = disk_full(exc, directory)
        if fresh is not None:
            shutil.rmtree(fresh, ignore_errors=True)
        if full:
            raise DiskFullError(target) from None
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return target


def remove_table(directory: str | Path) -> bool:
    """Delete ``directory/table`` (its chunks changed under it); returns whether there was one."""
    target = Path(directory) / TABLE_DIR
    if not target.exists():
        return False
    gone = Path(tempfile.mkdtemp(prefix=_PREFIX, suffix=_SUFFIX, dir=target.parent))
    os.replace(target, gone)
    shutil.rmtree(gone, ignore_errors=True)
    return True


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _stamps_of(meta: object, path: Path) -> tuple[int, list[Stamp]] | None:
    """``(rows, chunks)`` of a parsed ``meta.json``; None for another schema; :class:`DamagedTable` if malformed."""
    if not isinstance(meta, dict) or not isinstance(meta.get("schema"), int):
        raise DamagedTable(path, "not the meta data of an image table (no integer field 'schema')")
    if meta["schema"] != SCHEMA:
        return None  # written by another zutis: derive the table from the .jsonl instead
    rows, chunks = meta.get("rows"), meta.get("chunks")
    if not isinstance(rows, int) or not isinstance(chunks, list) or not all(
            isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) for v in c) for c in chunks):
        raise DamagedTable(path, "field 'rows' or 'chunks' is not what an image table records")
    stamps = [(c[0], c[1], c[2]) for c in chunks]
    if sum(stamp[1] for stamp in stamps) != rows:
        raise DamagedTable(path, f"its chunks hold {sum(s[1] for s in stamps)} rows, not the {rows} it counts")
    return rows, stamps


def _column(path: Path, rows: int, kind: str, dtype: np.dtype | None = None) -> np.ndarray:
    """A memory-mapped ``(rows,)`` column, checked: numpy kind ``kind`` (exactly ``dtype`` when given)."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DamagedTable(path, f"unreadable ({str(exc)[:120]})") from None
    if array.shape != (rows,) or array.dtype.kind != kind or (dtype is not None and array.dtype != dtype):
        raise DamagedTable(path, f"holds {array.dtype} {array.shape}, not ({rows},) {dtype or kind}")
    return array.view(np.ndarray)


def _blob(path: Path, size: int) -> bytes | mmap.mmap:
    try:
        with open(path, "rb") as handle:
            actual = os.fstat(handle.fileno()).st_size
            if actual != size:
                raise DamagedTable(path, f"holds {actual} bytes, not the {size} its offsets reach")
            return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
    except OSError as exc:
        raise DamagedTable(path, f"unreadable ({str(exc)[:120]})") from None


def _load(table: Path, chunks: Sequence[Stamp]) -> tuple[Columns, int] | None:
    meta_path = table / META_NAME
    try:
        text = meta_path.read_bytes()
    except FileNotFoundError:
        return None  # no table, or one not committed
    except OSError as exc:
        raise DamagedTable(meta_path, f"unreadable ({str(exc)[:120]})") from None
    try:
        meta = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DamagedTable(meta_path, f"not JSON ({str(exc)[:120]})") from None
    found = _stamps_of(meta, meta_path)
    if found is None:
        return None
    rows, stamps = found
    if list(chunks[:len(stamps)]) != stamps:
        return None  # made from other chunks than those committed now: not this index's table
    numbers = {name: _column(table / f"{name}.npy", rows, dtype.kind, dtype) for name, dtype in NUMBERS.items()}
    hashes = _column(table / "hash.npy", rows, "S")
    offsets = _column(table / "path_offsets.npy", rows + 1, "i", np.dtype(np.int64))
    if offsets[0] != 0 or (rows and np.any(offsets[1:] < offsets[:-1])):
        raise DamagedTable(table / "path_offsets.npy", "the offsets do not start at 0 and grow")
    active = _column(table / "active.npy", rows, "b", np.dtype(bool))
    blob = _blob(table / PATHS_NAME, int(offsets[-1]))
    return Columns(hash=hashes, path_offsets=offsets, paths=blob, active=active, **numbers), len(stamps)


def read_table(directory: str | Path, chunks: Sequence[Stamp]) -> tuple[Columns, int] | None:
    """The stored table of an index directory whose committed chunks are ``chunks``, memory-mapped.

    Returns ``(columns, covered)`` when the table was made from the first ``covered`` of ``chunks``
    (all of them, or fewer when later chunks were committed after it was written), and None when
    there is no table, or one of another schema or made from other chunks. Raises
    :class:`DamagedTable` for a table that fits the chunks but whose files are damaged (a table
    replaced while it was being read is treated as absent).
    """
    table = Path(directory) / TABLE_DIR
    before = _identity(table)
    if before is None:
        return None
    try:
        return _load(table, chunks)
    except DamagedTable:
        if _identity(table) != before:
            return None  # a writer replaced it under us: what we read mixes two tables
        raise

