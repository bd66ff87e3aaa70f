"""Committed parts of a resumable stage: what a kill in the middle of a commit leaves is not a part."""

from __future__ import annotations

import pytest

from zutiscli.artefacts.parts import PARTS_DIR, count_parts, read_parts, write_part
from zutiscli.errors import ArtefactError


def test_rows_are_read_back_by_path_the_later_winning_and_a_kills_temporary_ignored(tmp_path):
    (tmp_path / PARTS_DIR).mkdir()
    write_part(tmp_path, 0, [{"path": "a.png", "n": 1}, {"path": "b.png", "n": 1}])
    write_part(tmp_path, 1, [{"path": "a.png", "n": 2}])
    # an atomic write killed before its rename: half a row, under a temporary name ending in .jsonl
    (tmp_path / PARTS_DIR / ".000002.jsonl.k3x9q2ab.tmp.jsonl").write_text('{"path": "c.png", "n"')
    assert read_parts(tmp_path) == {"a.png": {"path": "a.png", "n": 2}, "b.png": {"path": "b.png", "n": 1}}
    assert count_parts(tmp_path) == 2
    assert read_parts(tmp_path / "absent") == {} and count_parts(tmp_path / "absent") == 0


def test_a_broken_part_is_named(tmp_path):
    (tmp_path / PARTS_DIR).mkdir()
    (tmp_path / PARTS_DIR / "000000.jsonl").write_text('{"path": "a.png"}\nnot json\n')
    with pytest.raises(ArtefactError, match=r"000000.jsonl: line 2 is not a predictions row; delete the file"):
        read_parts(tmp_path, "predictions row")


def test_parts_go_on_only_with_the_settings_they_were_made_with(tmp_path):
    from zutiscli.artefacts.parts import committed_parts, record_run

    ours = {"model": {"name": "m"}, "params": {"size": 64, "refine": "bilateral"}}
    (tmp_path / PARTS_DIR).mkdir()
    record_run(tmp_path, ours)
    assert not committed_parts(tmp_path, {"model": {"name": "other"}}, "predict")  # no part: nothing to keep
    write_part(tmp_path, 0, [{"path": "a.png"}])
    assert committed_parts(tmp_path, ours, "predict")
    with pytest.raises(ArtefactError, match="`zutis predict` results made with another refine; rerun with the same"):
        committed_parts(tmp_path, {**ours, "params": {"size": 64, "refine": "none"}}, "predict")
    (tmp_path / PARTS_DIR / "run.json").unlink()
    with pytest.raises(ArtefactError, match="parts: holds results without the settings they were made with"):
        committed_parts(tmp_path, ours, "predict")
