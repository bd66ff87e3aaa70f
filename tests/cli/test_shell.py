"""Shell completion and manual pages: generated from the command tree, committed, never drifting."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from zutiscli.cli.shell import roff_argument, roff_escape

from helpers import run_cli as run  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
REGENERATE = "tools/regenerate_shell_files.sh"
SCRIPTS = {"bash": "zutis.bash", "zsh": "_zutis", "fish": "zutis.fish"}


def complete(capsys, monkeypatch, shell, words, cword):
    """Run one completion request through the entry point, as the shell scripts do; its output lines."""
    monkeypatch.setenv("_ZUTIS_COMPLETE", f"{shell}_complete")
    monkeypatch.setenv("COMP_WORDS", words)
    monkeypatch.setenv("COMP_CWORD", str(cword))
    code, out, err = run(capsys)
    assert code == 0 and err == ""
    return out.splitlines()


def bash_values(lines):
    """The values of ``plain,VALUE`` lines (bash protocol)."""
    assert all(line.partition(",")[0] in ("plain", "file", "dir") for line in lines), lines
    return [line.partition(",")[2] for line in lines if line.startswith("plain,")]


# ---- the committed files are what the commands generate -------------------------------------------

@pytest.mark.parametrize("shell", sorted(SCRIPTS))
def test_committed_completion_script_matches_the_commands(capsys, tmp_path, shell):
    target = tmp_path / SCRIPTS[shell]
    code, out, err = run(capsys, "completions", shell, "-o", str(target))
    assert code == 0 and out.splitlines()[-1] == str(target)
    committed = ROOT / "completions" / SCRIPTS[shell]
    assert committed.is_file() and committed.read_bytes() == target.read_bytes(), (
        f"completions/{SCRIPTS[shell]} differs from `zutis completions {shell}`; regenerate with {REGENERATE}"
    )


def test_committed_man_pages_match_the_commands(capsys, tmp_path):
    target = tmp_path / "man"
    code, out, err = run(capsys, "man", "-o", str(target), "--quiet")
    assert code == 0 and out.splitlines()[-1] == str(target) and err == ""
    fresh = {path.name: path.read_bytes() for path in target.glob("*.1")}
    committed = {path.name: path.read_bytes() for path in (ROOT / "man").glob("*.1")}
    hint = f"man/ differs from `zutis man`; regenerate with {REGENERATE}"
    assert sorted(committed) == sorted(fresh), hint
    for name, data in fresh.items():
        assert committed[name] == data, f"man/{name}: {hint}"


def test_completions_prints_the_script_that_the_source_request_prints(capsys, monkeypatch):
    code, script, err = run(capsys, "completions", "zsh")
    assert code == 0 and err == "" and script.startswith("#compdef zutis\n")
    monkeypatch.setenv("_ZUTIS_COMPLETE", "zsh_source")
    code, sourced, err = run(capsys)
    assert code == 0 and sourced == script


def test_unknown_shell_is_a_one_line_usage_error(capsys):
    code, out, err = run(capsys, "completions", "tcsh")
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "tcsh" in lines[0]


def test_malformed_completion_request_is_a_usage_error(capsys, monkeypatch):
    monkeypatch.setenv("_ZUTIS_COMPLETE", "complete_bash")
    code, out, err = run(capsys)
    assert code == 2 and out == "" and err.startswith("error:") and "_ZUTIS_COMPLETE" in err


# ---- the completion protocol --------------------------------------------------------------------

def test_bash_protocol_offers_the_matching_subcommands(capsys, monkeypatch):
    values = bash_values(complete(capsys, monkeypatch, "bash", "zutis pre", 1))
    assert "predict" in values and "index" not in values
    assert all(value.startswith("pre") for value in values)
    assert "index" in bash_values(complete(capsys, monkeypatch, "bash", "zutis ", 1))


def test_option_names_of_a_default_subcommand_complete_after_its_group(capsys, monkeypatch):
    lines = complete(capsys, monkeypatch, "zsh", "zutis index --mo", 2)
    assert lines[:2] == ["plain", "--model"] and len(lines) == 3


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash on this machine")
def test_committed_bash_script_completes_in_bash():
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "zutis").exists():
        pytest.skip(f"no zutis entry point in {bin_dir}")
    env = {key: value for key, value in os.environ.items() if key != "_ZUTIS_COMPLETE"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    script = (
        f"source {ROOT / 'completions' / 'zutis.bash'}\n"
        "COMP_WORDS=(zutis pre); COMP_CWORD=1\n"
        "_zutis_completion zutis\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    done = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["predict"]


def test_classes_complete_from_the_classes_file(capsys, monkeypatch, tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("# shapes\ncat\ndog\tdoggy dog\ntraffic light\n", encoding="utf-8")
    base = f"zutis predict --classes-file {classes} --classes"
    assert bash_values(complete(capsys, monkeypatch, "bash", base, 5)) == ["cat", "dog", "traffic light"]
    assert bash_values(complete(capsys, monkeypatch, "bash", f"{base} d", 5)) == ["dog"]
    assert bash_values(complete(capsys, monkeypatch, "bash", f"{base} cat,", 5)) == ["cat,dog", "cat,traffic light"]
    # zsh shows the search phrase as the description
    assert complete(capsys, monkeypatch, "zsh", f"{base} do", 5) == ["plain", "dog", "doggy dog"]
    # retrieve's short -c works the same way
    retrieve = f"zutis retrieve runs/index/1 --classes-file {classes} -c t"
    assert bash_values(complete(capsys, monkeypatch, "bash", retrieve, 6)) == ["traffic light"]


def test_classes_offer_nothing_without_a_readable_classes_file(capsys, monkeypatch, tmp_path):
    assert complete(capsys, monkeypatch, "bash", "zutis predict --classes c", 3) == []
    missing = tmp_path / "missing.txt"
    assert complete(capsys, monkeypatch, "bash", f"zutis predict --classes-file {missing} --classes c", 5) == []


def test_model_completes_open_clip_names_and_zutis_configs(capsys, monkeypatch):
    values = bash_values(complete(capsys, monkeypatch, "bash", "zutis predict --model ViT-B-1", 3))
    assert "ViT-B-16" in values and all(value.startswith("ViT-B-1") for value in values)
    # through the default subcommand of `zutis index`, and with bash's split of --model=VALUE
    values = bash_values(complete(capsys, monkeypatch, "bash", "zutis index --model = shapes", 4))
    assert values == ["shapes-clip", "shapes-clip-v2"]
    values = bash_values(complete(capsys, monkeypatch, "bash", "zutis index --model =", 3))
    assert "=shapes-clip" in values and all(value.startswith("=") for value in values)
    fish = complete(capsys, monkeypatch, "fish", "zutis train --model=zutis-t", "--model=zutis-t")
    assert fish == ["plain,--model=zutis-tiny\tzutis model config"]


# ---- manual pages -------------------------------------------------------------------------------

def test_every_man_page_has_the_standard_sections():
    pages = sorted((ROOT / "man").glob("*.1"))
    names = {page.name for page in pages}
    assert {"zutis.1", "zutis-predict-run.1", "zutis-index-merge.1", "zutis-synth-scenes.1",
            "zutis-evaluate-prepare.1", "zutis-completions.1", "zutis-man.1"} <= names
    for page in pages:
        text = page.read_text(encoding="ascii")
        for needed in (".TH ", ".SH NAME\n", ".SH SYNOPSIS\n", ".SH OPTIONS\n", ".SH SEE ALSO\n"):
            assert needed in text, f"{page.name} lacks {needed.strip()}"
        assert "\n.TH " in text and '"zutis ' in text.split("\n.TH ", 1)[1].splitlines()[0]


def test_man_pages_describe_options_examples_environment_and_exit_status():
    predict = (ROOT / "man" / "zutis-predict-run.1").read_text(encoding="ascii")
    assert "\\fB\\-\\-classes\\-file\\fR \\fI<path>\\fR" in predict
    assert "Example:" in predict and "zutis predict data/scenes/images \\-\\-checkpoint runs/train/demo \\-\\-classes" in predict
    assert "[default: ViT\\-B\\-16]" in predict
    overview = (ROOT / "man" / "zutis.1").read_text(encoding="ascii")
    for needed in (".SH ENVIRONMENT", "ZUTIS_DEBUG", "ZUTIS_CHECKPOINT", "ZUTIS_CACHE_DIR", "NO_COLOR", ".SH EXIT STATUS",
                   "\\fBzutis index merge\\fR", "\\fBzutis\\-synth\\-scenes\\fR(1)"):
        assert needed in overview


def _renderer():
    for name, command in (("groff", ["groff", "-man", "-Tutf8", "-ww", "-z"]),
                          ("mandoc", ["mandoc", "-Tlint", "-Wwarning"]),
                          ("man", ["man", "--warnings", "-l"])):
        if shutil.which(name):
            return command
    return None


@pytest.mark.skipif(_renderer() is None, reason="no groff, mandoc or man on this machine")
def test_man_pages_render_without_warnings():
    command = _renderer()
    env = {**os.environ, "MANPAGER": "cat", "PAGER": "cat", "MANWIDTH": "80"}
    for page in sorted((ROOT / "man").glob("*.1")):
        done = subprocess.run([*command, str(page)], capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 0 and done.stderr == "", f"{page.name}: {done.stderr}"


def test_roff_escaping():
    assert roff_escape(".hidden\n'quoted\nback\\slash") == "\\&.hidden\n\\&'quoted\nback\\eslash"
    assert roff_escape("--model ViT-B-16") == "\\-\\-model ViT\\-B\\-16"
    assert roff_escape("café 猫") == "caf\\[u00E9] \\[u732B]"
    assert roff_argument('say "hi"\nthere') == '"say \\(dqhi\\(dq there"'


@pytest.mark.parametrize("request_env", [
    {},  # `zutis --help`
    {"_ZUTIS_COMPLETE": "bash_complete", "COMP_WORDS": "zutis predict --de", "COMP_CWORD": "2"},  # one TAB
    {"_ZUTIS_COMPLETE": "bash_complete", "COMP_WORDS": "zutis predict --model ViT-B-1", "COMP_CWORD": "3"},
])
def test_help_and_completion_do_not_import_torch(request_env):
    # torch takes seconds to import; the command tree, --help and completion (model names included)
    # must not wait for it
    probe = ("import sys\nfrom zutiscli.cli.app import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
             "sys.stderr.write('torch imported' if 'torch' in sys.modules else 'no torch')\n")
    env = {key: value for key, value in os.environ.items() if not key.startswith("_ZUTIS_COMPLETE")}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env | request_env,
                          timeout=120)
    assert done.stderr.endswith("no torch"), done.stderr[-2000:]
    assert done.stdout.strip()
