import json
import os

import numpy as np
import pytest

from zutiscli.artefacts.atomic import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_npy, atomic_write_text


def test_write_replaces_whole_file_and_leaves_no_temporaries(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"a": 2, "b": [1, 2]})
    assert json.loads(target.read_text()) == {"a": 2, "b": [1, 2]}
    assert os.listdir(tmp_path) == ["out.json"]


def test_failure_inside_block_keeps_old_file_and_removes_temporary(tmp_path):
    target = tmp_path / "data.bin"
    atomic_write_bytes(target, b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half-writ")
            raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["data.bin"]


def test_temporary_keeps_suffix_and_lives_beside_target(tmp_path):
    target = tmp_path / "sub" / "index.faiss"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent
        assert tmp.suffix == ".faiss"
        assert not target.exists()
        tmp.write_text("x")
    assert target.read_text() == "x"


def test_nan_is_refused_before_writing(tmp_path):
    target = tmp_path / "m.json"
    with pytest.raises(ValueError):
        atomic_write_json(target, {"x": float("nan")})
    assert not target.exists()


def test_text_is_utf8(tmp_path):
    target = tmp_path / "t.txt"
    atomic_write_text(target, "chat · Katze · 猫")
    assert target.read_bytes().decode("utf-8") == "chat · Katze · 猫"


def test_npy_round_trips_and_refuses_object_arrays_leaving_the_old_file(tmp_path):
    target = tmp_path / "a.npy"
    array = np.arange(6, dtype=np.float16).reshape(2, 3)
    atomic_write_npy(target, array)
    loaded = np.load(target, allow_pickle=False)
    assert loaded.dtype == np.float16 and np.array_equal(loaded, array)
    with pytest.raises(ValueError):
        atomic_write_npy(target, np.array([{"a": 1}], dtype=object))
    assert np.array_equal(np.load(target, allow_pickle=False), array)
    assert os.listdir(tmp_path) == ["a.npy"]
