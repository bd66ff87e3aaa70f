import pytest

from zutiscli.artefacts.rundir import next_run_dir, numbered_runs, prepare_output_dir
from zutiscli.errors import ArtefactError


def test_numbers_count_up_from_highest(tmp_path):
    assert next_run_dir("index", tmp_path) == tmp_path / "index" / "1"
    assert next_run_dir("index", tmp_path) == tmp_path / "index" / "2"
    (tmp_path / "index" / "7").mkdir()
    (tmp_path / "index" / "notes").mkdir()
    assert next_run_dir("index", tmp_path) == tmp_path / "index" / "8"
    assert [p.name for p in numbered_runs("index", tmp_path)] == ["1", "2", "7", "8"]


def test_default_output_is_under_runs_in_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = prepare_output_dir(None, "retrieve")
    assert out.as_posix() == "runs/retrieve/1" and out.is_dir()


def test_explicit_output_must_be_empty_unless_resumable(tmp_path):
    out = tmp_path / "o"
    assert prepare_output_dir(out, "index") == out
    (out / "x").write_text("1")
    with pytest.raises(ArtefactError, match="not empty"):
        prepare_output_dir(out, "index")
    assert prepare_output_dir(out, "index", resumable=True) == out
    (tmp_path / "f").write_text("")
    with pytest.raises(ArtefactError, match="is a file"):
        prepare_output_dir(tmp_path / "f", "index")
