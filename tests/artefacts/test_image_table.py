"""The index's image table: columns equal the chunks' .jsonl, old indices, stale and damaged tables."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from zutiscli.artefacts import image_table, index_store
from zutiscli.artefacts.image_table import (
    TABLE_DIR,
    active_rows,
    columns_of,
    join_columns,
    pack_strings,
    read_table,
    unpack_strings,
    write_table,
)
from zutiscli.artefacts.index_store import ImageRecord, IndexReader, IndexWriter, repair_chunks, write_image_table
from zutiscli.artefacts.lock import is_temporary
from zutiscli.artefacts.manifest import write_manifest
from zutiscli.errors import ArtefactError

DIM = 4


def _records(count: int, start: int = 0) -> list[ImageRecord]:
    """Records with paths of several lengths (one not ASCII), hashes, and one hash unknown."""
    out = [ImageRecord(f"images/{'sub/' * (i % 3)}é{i:05d}.jpg", 640 + i, 480 - i, 10_000 + i,
                       1_700_000_000_000_000_000 + i, f"{i:016x}") for i in range(start, start + count)]
    out[0] = ImageRecord(out[0].path, 1, 2, 3, -4, "")
    return out


def _index(directory: Path, chunks: list[list[ImageRecord]], table: bool = True) -> Path:
    """An index directory of the given chunks' records (random embeddings), with or without its table."""
    writer = IndexWriter(directory)
    rng = np.random.default_rng(0)
    for records in chunks:
        writer.write_chunk(records, rng.standard_normal((len(records), DIM)).astype(np.float32), [])
    rows = sum(len(c) for c in chunks)
    write_manifest(directory, "zutis.index", model={"name": "test"}, summary={"rows": rows, "dim": DIM})
    if table:
        write_image_table(IndexReader(directory))
    return directory


def _from_jsonl(directory: Path) -> tuple[list[ImageRecord], np.ndarray]:
    """Records and active mask read straight from the chunks' .jsonl (later row of a path wins)."""
    records = []
    for path in sorted((directory / "chunks").glob("[0-9]*[0-9].jsonl")):
        records += [ImageRecord(**json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines()]
    active = np.ones(len(records), dtype=bool)
    seen: set[str] = set()
    for row in range(len(records) - 1, -1, -1):
        active[row] = records[row].path not in seen
        seen.add(records[row].path)
    return records, active


def _check_equal(directory: Path) -> IndexReader:
    reader = IndexReader(directory)
    records, active = _from_jsonl(directory)
    table = reader.table()
    assert len(table) == len(records) == len(reader)
    assert [table.record(row) for row in range(len(table))] == records == reader.records()
    assert table.paths([2, 0, 2]) == [records[2].path, records[0].path, records[2].path]
    assert table.hashes(np.array([1, 0])) == [records[1].hash, ""]
    assert np.array_equal(table.active, active) and np.array_equal(reader.active(), active)
    return reader


# ---- pure functions -----------------------------------------------------------------------------
def test_active_rows_keeps_the_last_row_of_each_path():
    assert active_rows(["a", "b", "a", "c", "b", "a"]).tolist() == [False, False, False, True, True, True]
    assert active_rows([]).dtype == bool and len(active_rows([])) == 0


def test_packed_strings_round_trip_and_decode_only_the_rows_asked():
    strings = ["", "a/b.png", "ünï/çødé.jpg", "bad\udcffname.png"]
    offsets, blob = pack_strings(strings)
    assert offsets.dtype == np.int64 and offsets.tolist()[0] == 0 and offsets[-1] == len(blob)
    assert unpack_strings(offsets, blob, range(4)) == strings
    assert unpack_strings(offsets, blob, np.array([3, 1])) == [strings[3], strings[1]]


def test_joined_columns_recompute_the_active_mask():
    first, second = _records(4), _records(3, start=2)  # rows 2, 3 of the first are superseded
    joined = join_columns([columns_of(first), columns_of(second)])
    assert joined.active.tolist() == [True, True, False, False, True, True, True]
    assert image_table.ImageTable(joined).records() == first + second


# ---- the table of an index ----------------------------------------------------------------------
def test_the_table_round_trips_every_field_and_the_active_mask(tmp_path):
    chunks = [_records(5), _records(4, start=5), _records(2, start=3)]  # rows 3, 4 embedded again
    index = _index(tmp_path / "index", chunks)
    assert sorted(p.name for p in (index / TABLE_DIR).iterdir()) == [
        "active.npy", "bytes.npy", "hash.npy", "height.npy", "meta.json", "mtime_ns.npy", "path_offsets.npy",
        "paths.bin", "width.npy"]
    reader = _check_equal(index)
    assert reader.table().stored
    assert reader.active().tolist() == [True] * 3 + [False] * 2 + [True] * 6
    assert np.load(index / TABLE_DIR / "hash.npy").dtype == np.dtype("S16")
    assert reader.image_path(7) == index / "images" / "sub" / f"é{7:05d}.jpg"


def test_the_table_is_read_without_parsing_any_jsonl(tmp_path, monkeypatch):
    index = _index(tmp_path / "index", [_records(3), _records(3, start=3)])
    monkeypatch.setattr(index_store, "_records_of", lambda *args: pytest.fail("a .jsonl was parsed"))
    reader = IndexReader(index)
    assert reader.table().stored and reader.table().path(4) == _records(6)[4].path


def test_an_index_without_a_table_reads_its_jsonl_and_gets_one_written(tmp_path):
    index = _index(tmp_path / "index", [_records(4), _records(2, start=1)], table=False)
    reader = _check_equal(index)
    assert not reader.table().stored and not (index / TABLE_DIR).exists()
    assert write_image_table(reader) == index / TABLE_DIR
    assert _check_equal(index).table().stored
    assert write_image_table(IndexReader(index)) is None  # already up to date


def test_chunks_committed_after_the_table_are_read_from_their_jsonl(tmp_path, monkeypatch):
    index = _index(tmp_path / "index", [_records(4), _records(3, start=4)])
    IndexWriter(index).write_chunk(_records(2, start=1), np.ones((2, DIM), np.float32), [])  # a run stopped here
    parsed = []
    real = index_store._records_of
    monkeypatch.setattr(index_store, "_records_of",
                        lambda path, directory: parsed.append(path.name) or real(path, directory))
    reader = _check_equal(index)
    assert parsed == ["000002.jsonl"] and not reader.table().stored
    assert reader.active().tolist()[:4] == [True, False, False, True]
    write_image_table(reader)
    assert IndexReader(index).table().stored


def test_a_table_made_from_other_chunks_is_ignored(tmp_path):
    index = _index(tmp_path / "index", [_records(3), _records(3, start=3)])
    (index / "chunks" / "000001.jsonl").write_text("".join(
        json.dumps(record.__dict__ | {"path": record.path + ".png"}, ensure_ascii=False) + "\n"
        for record in _records(3, start=3)), encoding="utf-8")
    reader = _check_equal(index)
    assert not reader.table().stored and reader.table().path(3).endswith(".jpg.png")


def test_a_table_of_another_schema_is_ignored(tmp_path):
    index = _index(tmp_path / "index", [_records(3)])
    meta = json.loads((index / TABLE_DIR / "meta.json").read_text())
    (index / TABLE_DIR / "meta.json").write_text(json.dumps(meta | {"schema": 99}))
    assert not _check_equal(index).table().stored


def _short_column(table: Path) -> None:
    np.save(table / "width.npy", np.load(table / "width.npy")[:-1])


def _garbage_column(table: Path) -> None:
    (table / "hash.npy").write_bytes(b"not numpy")


def _missing_column(table: Path) -> None:
    (table / "active.npy").unlink()


def _wrong_dtype(table: Path) -> None:
    np.save(table / "active.npy", np.load(table / "active.npy").astype(np.int8))


def _short_blob(table: Path) -> None:
    (table / "paths.bin").write_bytes((table / "paths.bin").read_bytes()[:-3])


def _shuffled_offsets(table: Path) -> None:
    np.save(table / "path_offsets.npy", np.load(table / "path_offsets.npy")[::-1].copy())


def _garbage_meta(table: Path) -> None:
    (table / "meta.json").write_text("{not json")


def _miscounted_meta(table: Path) -> None:
    meta = json.loads((table / "meta.json").read_text())
    (table / "meta.json").write_text(json.dumps(meta | {"rows": meta["rows"] + 1}))


DAMAGE = {
    "short column": (_short_column, "table/width.npy: holds int32 (5,), not (6,) int32"),
    "garbage column": (_garbage_column, "table/hash.npy: unreadable"),
    "missing column": (_missing_column, "table/active.npy: unreadable"),
    "wrong dtype": (_wrong_dtype, "table/active.npy: holds int8 (6,), not (6,) bool"),
    "short paths": (_short_blob, "table/paths.bin: holds"),
    "offsets": (_shuffled_offsets, "table/path_offsets.npy: the offsets do not start at 0 and grow"),
    "garbage meta": (_garbage_meta, "table/meta.json: not JSON"),
    "miscounted meta": (_miscounted_meta, "table/meta.json: its chunks hold 6 rows, not the 7 it counts"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_table_is_refused_in_one_line_and_the_repair_removes_it(tmp_path, damage):
    spoil, fragment = DAMAGE[damage]
    index = _index(tmp_path / "index", [_records(3), _records(3, start=3)])
    spoil(index / TABLE_DIR)
    with pytest.raises(ArtefactError) as info:
        IndexReader(index).table()
    message = str(info.value)
    assert "\n" not in message and f"{index}/{fragment}" in message, message
    assert f"run `zutis index build` on the same images with -o {index} again to repair it" in message
    said = repair_chunks(index)
    assert len(said) == 1 and "removed the image table" in said[0] and not (index / TABLE_DIR).exists()
    assert not _check_equal(index).table().stored


def test_the_repair_drops_the_table_of_renumbered_chunks(tmp_path):
    index = _index(tmp_path / "index", [_records(2), _records(2, start=2), _records(2, start=4)])
    (index / "chunks" / "000001.npy").unlink()
    assert repair_chunks(index) and not (index / TABLE_DIR).exists()
    kept = _records(6)[:2] + _records(6)[4:]
    assert [r.path for r in IndexReader(index).records()] == [r.path for r in kept]


def test_a_record_whose_number_does_not_fit_its_column_is_named(tmp_path):
    index = _index(tmp_path / "index", [[ImageRecord("a.jpg", 1 << 31, 1, 1, 1, "")]], table=False)
    with pytest.raises(ArtefactError, match=r"000000.jsonl: line 1 is not an image record \(field 'width'\)"):
        IndexReader(index).records()


def test_writing_leaves_no_temporary_and_clears_those_of_a_killed_writer(tmp_path, monkeypatch):
    index = _index(tmp_path / "index", [_records(3)])
    leftover = index / ".table.abcd1234.tmp"
    leftover.mkdir()
    (leftover / "width.npy").write_bytes(b"half")
    assert is_temporary(leftover.name)
    reader = IndexReader(index)
    write_table(index, reader.table().columns, reader.stamps())
    assert sorted(p.name for p in index.iterdir()) == ["chunks", "manifest.json", "table"]

    def fail(*args, **kwargs):
        raise OSError("boom")

    monkeypatch.setattr(image_table.np, "save", fail)
    with pytest.raises(OSError, match="boom"):
        write_table(index, reader.table().columns, reader.stamps())
    assert sorted(p.name for p in index.iterdir()) == ["chunks", "manifest.json", "table"]
    assert IndexReader(index).table().stored  # the old table is untouched


def test_a_table_replaced_while_it_is_read_counts_as_absent(tmp_path, monkeypatch):
    index = _index(tmp_path / "index", [_records(3)])
    reader = IndexReader(index)
    columns, stamps = reader.table().columns, reader.stamps()
    real = image_table._load

    def replaced_meanwhile(table, chunks):
        write_table(index, columns, stamps)
        raise image_table.DamagedTable(table / "width.npy", "vanished")

    monkeypatch.setattr(image_table, "_load", replaced_meanwhile)
    assert read_table(index, stamps) is None
    monkeypatch.setattr(image_table, "_load", real)
    assert read_table(index, stamps)[1] == 1


def test_a_table_of_no_rows(tmp_path):
    write_table(tmp_path, columns_of([]), [(0, 0, 0)])
    columns, covered = read_table(tmp_path, [(0, 0, 0)])
    assert covered == 1 and len(columns) == 0 and columns.hash.dtype == np.dtype("S1")
    assert image_table.ImageTable(columns).records() == []


def test_a_moved_index_keeps_its_table(tmp_path):
    index = _index(tmp_path / "index", [_records(3)])
    moved = tmp_path / "elsewhere" / "index"
    shutil.copytree(index, moved)
    reader = IndexReader(moved)
    assert reader.table().stored and reader.image_path(1) == moved / _records(3)[1].path
