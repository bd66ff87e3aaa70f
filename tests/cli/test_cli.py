"""The command line as a user meets it: exit codes, stdout/stderr discipline, one-line errors."""

import json
import subprocess
import sys

import pytest

from zutiscli import __version__
from zutiscli.cli.app import main

from helpers import run_cli as run  # noqa: E402


def test_version(capsys):
    code, out, err = run(capsys, "--version")
    assert code == 0 and out.strip() == f"zutis {__version__}" and err == ""


def test_help_lists_the_pipeline_commands(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    listed = out.split("Commands")[-1]
    for command in ("synth", "index", "retrieve", "pseudolabel", "copypaste", "train", "predict", "evaluate"):
        assert command in listed
    # every listed command answers --help
    for command in ("synth", "index", "retrieve", "pseudolabel", "copypaste", "train", "predict", "evaluate"):
        code, text, _ = run(capsys, command, "--help")
        assert code == 0 and "Usage:" in text


def test_ctrl_c_exits_130_with_one_line(capsys, monkeypatch, tmp_path):
    # a shell script chaining stages must see the interruption (Typer alone would return status 0)
    from zutiscli.pipeline import synth

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synth, "write_synth", interrupted)
    code, out, err = run(capsys, "synth", "pile", "-n", "1", "-o", str(tmp_path / "pile"))
    assert code == 130 and out == ""
    assert [line for line in err.splitlines() if line.strip()] == ["error: interrupted"]


def test_unknown_option_is_usage_error_in_one_line(capsys):
    code, out, err = run(capsys, "synth", "scenes", "--bogus")
    assert code == 2 and out == ""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "No such option: --bogus" in lines[0] and "zutis synth scenes --help" in lines[0]


def test_bad_value_is_usage_error(capsys):
    code, out, err = run(capsys, "synth", "scenes", "-n", "0", "-o", "unused")
    assert code == 2 and out == "" and "-n must be at least 1" in err


def test_runtime_error_is_exit_1_one_line(capsys, tmp_path):
    out_dir = tmp_path / "taken"
    out_dir.mkdir()
    (out_dir / "something").write_text("x")
    code, out, err = run(capsys, "synth", "scenes", "-n", "2", "-o", str(out_dir))
    assert code == 1 and out == ""
    assert err.strip().startswith("error:") and str(out_dir) in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_json_mode_prints_one_document_with_path(capsys, tmp_path):
    target = tmp_path / "scenes"
    code, out, err = run(capsys, "synth", "scenes", "-n", "3", "-o", str(target), "--json")
    assert code == 0
    document = json.loads(out)
    assert document["path"] == str(target) and document["images"] == 3 and document["kind"] == "scenes"


def test_default_output_is_numbered_run_and_last_stdout_line(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for expected in ("runs/synth/1", "runs/synth/2"):
        code, out, err = run(capsys, "synth", "pile", "-n", "2", "--quiet")
        assert code == 0 and out.splitlines()[-1] == expected and err == ""


@pytest.mark.internal_error
def test_internal_error_hides_traceback_unless_debug(monkeypatch, capsys, tmp_path):
    from zutiscli.pipeline import synth as stage

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(stage, "write_synth", broken)
    code, out, err = run(capsys, "synth", "pile", "-n", "1", "-o", str(tmp_path / "x"))
    assert code == 1 and "internal error: RuntimeError: boom" in err and "ZUTIS_DEBUG=1" in err
    assert "Traceback" not in err
    monkeypatch.setenv("ZUTIS_DEBUG", "1")
    with pytest.raises(RuntimeError, match="boom"):
        main(["synth", "pile", "-n", "1", "-o", str(tmp_path / "y")])


def test_module_entry_point_and_console_script_agree():
    result = subprocess.run([sys.executable, "-m", "zutiscli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == f"zutis {__version__}"
    result = subprocess.run([sys.executable, "-m", "zutiscli", "synth", "scenes", "--size", "3"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "--size must lie in 16..4096" in result.stderr
    assert "Traceback" not in result.stderr
