"""`zutis cluster` end to end on a few tiny shapes-world images, as a user runs it."""

from __future__ import annotations

import json

import pytest

from zutiscli.pipeline.synth import SynthConfig, write_synth

from helpers import unnamed_pseudolabels, run_cli as run  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Unnamed pseudo-labels (recording the builtin shapes-clip) of 12 pile images, and their ground truth."""
    root = tmp_path_factory.mktemp("cluster-cli")
    pile = write_synth(SynthConfig("pile", 12, seed=6, size=48), root / "pile")
    return unnamed_pseudolabels(root / "pseudo", pile), pile / "hidden" / "instances.json"


def test_json_run_then_human_run_with_a_table(tiny, tmp_path, capsys):
    pseudo, gt = tiny
    code, out, err = run(capsys, "cluster", pseudo, "-k", "3", "--ground-truth", gt, "--precision", "fp32",
                         "--json", "-o", tmp_path / "a")
    assert code == 0, err
    document = json.loads(out)
    assert document["k"] == 3 and document["features"] == "clip" and document["failed"] == 0
    assert sum(document["sizes"]) == document["masks"] == document["matched"]
    assert 0 < document["purity"] <= 1 and 0 <= document["nmi"] <= 1
    assert document["path"] == str(tmp_path / "a")
    assert (tmp_path / "a" / "contact" / "cluster-00.jpg").is_file()

    code, out, err = run(capsys, "cluster", pseudo, "-k", "3", "--ground-truth", gt, "--precision", "fp32",
                         "--contact", "0", "-o", tmp_path / "b")
    assert code == 0, err
    assert out.splitlines()[-1] == str(tmp_path / "b")  # the path alone, last on stdout
    assert "majority class" in err and "share" in err and f"purity {document['purity']:.3f}" in err
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["summary"]["sizes"] == document["sizes"]
    assert not (tmp_path / "b" / "contact").exists()


def test_quiet_dry_run_and_refusals(tiny, tmp_path, capsys, monkeypatch):
    pseudo, _ = tiny
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "cluster", pseudo, "-k", "2", "--quiet", "--contact", "0")
    assert code == 0 and err == "" and out.strip() == "runs/cluster/1"
    code, out, err = run(capsys, "cluster", pseudo, "-k", "2", "--dry-run")
    assert code == 0, err
    assert "dry run of zutis cluster:" in out and "masks to embed" in out and "runs/cluster/2 (new directory)" in out
    assert not (tmp_path / "runs" / "cluster" / "2").exists()
    code, out, err = run(capsys, "cluster", pseudo, "-k", "40", "-o", tmp_path / "big")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and out == "" and len(lines) == 1
    assert lines[0].startswith("error: -k 40: ") and "pseudolabels.json holds" in lines[0] and "give -k" in lines[0]
    assert not (tmp_path / "big").exists()
