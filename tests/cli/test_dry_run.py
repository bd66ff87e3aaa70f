"""`--dry-run`: the checks of a real run, the counts of what it would do, and nothing written or loaded."""

from __future__ import annotations

import itertools
import json

import pytest

from zutiscli.artefacts.rundir import check_output_dir
from zutiscli.errors import ArtefactError

from helpers import run_cli as run  # noqa: E402
from test_cli_errors import TINY_INDEX, TINY_TRAIN, fill, snapshot, world  # noqa: F401 - world is a fixture

#: Per command: arguments of a dry run, and (in the JSON document) the work estimate it must show.
DRY_RUNS = {
    "index": (["index", "{pile}/images", *TINY_INDEX], {"images_to_embed": 4, "already_indexed": 0}),
    "index resumed": (["index", "{pile}/images", *TINY_INDEX, "-o", "{index}"],
                      {"images_to_embed": 0, "already_indexed": 4}),
    "retrieve": (["retrieve", "{index}", "--classes", "circle,star,猫", "-k", "3"],
                 {"images_to_search": 4, "archives": 3, "texts_to_embed": 3 * 85}),
    "pseudolabel": (["pseudolabel", "{archives}", "--size", "32"], {"already_processed": 0}),
    "pseudolabel sharded": (["pseudolabel", "{archives}", "--size", "32", "--shard", "1/2", "-o", "{out}"],
                            {"already_processed": 0}),
    "copypaste": (["copypaste", "{pseudo}", "-n", "7", "--size", "32"], {"scenes": 7}),
    "cluster": (["cluster", "{pseudo}", "-k", "3", "--model", "zutis-tiny", "--pretrained", "{weights}"],
                {"clusters": 3, "images_to_decode": 6}),
    "train": (["train", "{pseudo}", *TINY_TRAIN, "--iterations", "5"], {"iterations_to_run": 5, "scenes": 10}),
    "train on a dataset": (["train", "{dataset}", *TINY_TRAIN], {"iterations_to_run": 1}),
    "train resumed": (["train", "--resume", "{run}", "--iterations", "4"],
                      {"iterations_done": 1, "iterations_to_run": 3}),
    "predict": (["predict", "{scenes}/images", "--classes", "circle,star", "--checkpoint", "{run}"],
                {"images_to_segment": 2}),
    "predict with the crop classifier": (["predict", "{scenes}/images", "--classes", "circle", "--checkpoint", "{run}",
                                          "--crop-weight", "0.5", "--refine", "bilateral"], {"images_to_segment": 2}),
    "predict maskclip": (["predict", "{scenes}/images", "--classes", "circle", "--method", "maskclip", "--model",
                          "zutis-tiny", "--pretrained", "{weights}"], {"images_to_segment": 2}),
    "hypotheses": (["hypotheses", "{scenes}/images", "--classes", "circle,star", "--model", "zutis-tiny", "--pretrained",
                    "{weights}", "--window", "1/2"], {"images_to_vote_on": 2}),
    "synth train-clip": (["synth", "train-clip", "--steps", "3", "--batch-size", "4", "--eval-pool", "0"],
                         {"steps_to_run": 3, "steps_done": 0, "pairs_to_draw": 12}),
    "compare": (["compare", "{scenes}", "--run", "maskclip", "--run", "mine=zutis:{run}", "--model", "zutis-tiny",
                 "--pretrained", "{weights}", "--classes", "circle,star"], {"runs": 2, "images_to_segment": 4}),
}
#: Dry runs with nothing to read: the command draws its own data.
GENERATES_ITS_DATA = {"synth train-clip"}


@pytest.fixture
def no_weights(monkeypatch):
    """Make loading any model weights fail the test: a dry run must not load them."""
    def refuse(*args, **kwargs):
        raise AssertionError("a dry run loaded model weights")

    monkeypatch.setattr("zutiscli.models.clip.load_backbone", refuse)
    monkeypatch.setattr("zutiscli.models.clip.load_state_dict", refuse)
    monkeypatch.setattr("zutiscli.models.timm_vit.load_timm_vit", refuse)
    monkeypatch.setattr("zutiscli.methods.predict.zutis.load_zutis", refuse)


@pytest.mark.parametrize("name", sorted(DRY_RUNS))
def test_dry_run_counts_and_writes_nothing(name, world, tmp_path, monkeypatch, capsys, no_weights):
    monkeypatch.chdir(tmp_path)
    args, expected = DRY_RUNS[name]
    before = snapshot(world["root"]), snapshot(tmp_path)
    code, out, err = run(capsys, *[*fill(args, world, tmp_path / "out"), "--dry-run", "--json"])
    assert code == 0, err
    document = json.loads(out)
    command = " ".join(itertools.takewhile(lambda word: not word.startswith("-") and "{" not in word, args))
    assert document["dry_run"] is True and document["command"] == command
    assert (document["reads"] or name in GENERATES_ITS_DATA) and document["writes"]["path"]
    assert {key: document["work"][key] for key in expected} == expected
    code, text, err = run(capsys, *[*fill(args, world, tmp_path / "out"), "--dry-run"])
    assert code == 0, err
    assert text.startswith(f"dry run of zutis {command}:") and "nothing was written" in text
    for key, value in expected.items():  # the human report shows the same counts
        assert f"{value:,} {key.replace('_', ' ')}" in text, text
    assert (snapshot(world["root"]), snapshot(tmp_path)) == before  # no output directory, no runs/N


def test_predict_plan_names_the_crop_classifier_weights(world, tmp_path, monkeypatch, capsys, no_weights):
    monkeypatch.chdir(tmp_path)
    args = ["predict", "{scenes}/images", "--classes", "circle", "--checkpoint", "{run}", "--crop-weight", "0.5"]
    code, out, err = run(capsys, *[*fill(args, world, tmp_path / "out"), "--dry-run", "--json"])
    assert code == 0, err
    crop = json.loads(out)["model"]["crop_classifier"]
    assert crop["name"] == "zutis-tiny" and crop["weights"] == str(world["weights"])  # the run's own CLIP
    code, out, err = run(capsys, *[*fill([*args, "--crop-pretrained", "{missing}.pt"], world, tmp_path / "out"),
                                  "--dry-run"])
    assert code == 1 and "crop classifier (--crop-model/--crop-pretrained): " in err and "no such checkpoint file" in err


def test_human_report_names_inputs_model_and_output(world, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, *fill(["index", "{pile}/images", *TINY_INDEX, "--dry-run"], world, tmp_path))
    assert code == 0, err
    lines = out.splitlines()
    assert any(line.startswith("  read ") and "4 images" in line for line in lines)
    assert any(line.startswith("  model ") and "zutis-tiny" in line and str(world["weights"]) in line for line in lines)
    assert any(line.startswith("  write ") and "runs/index/1 (new directory)" in line for line in lines)
    assert any(line.startswith("  work ") and "4 images to embed" in line for line in lines)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args, expected, fragment", [
    (["retrieve", "{pile}", "--classes", "cat"], 1, "zutis.synth artefact"),
    (["retrieve", "{index}", "--classes", "cat,cat"], 2, "duplicate class name"),
    (["index", "{pile}/images", "--model", "zutis-tiny", "--pretrained", "{missing}.pt"], 1, "no such checkpoint file"),
    (["index", "{pile}/images", *TINY_INDEX, "-o", "{archives}"], 1, "zutis.archives artefact"),
    (["pseudolabel", "{archives}", "-o", "{scenes}/images"], 1, "not a zutis pseudo-label directory"),
    (["pseudolabel", "{archives}", "--model", "dino-vits8"], 2, "pass --pretrained FILE"),
    (["pseudolabel", "{archives}", "--model", "timm:no_such_vit", "--pretrained", "{weights}"], 1, "timm has no model"),
    (["copypaste", "{dataset}"], 1, "zutis.dataset artefact"),
    (["copypaste", "{pseudo}", "-o", "{pile}"], 1, "finished artefact"),
    (["train", "{pseudo}", *TINY_TRAIN, "-o", "{pile}"], 1, "finished artefact"),
    (["train", "--resume", "{pseudo}"], 1, "not a `zutis train` run directory"),
    (["train", "{pseudo}", "--model", "ViT-B-61"], 1, "not an open_clip model name"),
    (["predict", "{scenes}/images", "--classes", "cat", "--checkpoint", "{pseudo}"], 1, "not a `zutis train` run"),
    (["compare", "{scenes}", "--run", "maskclip", "--run", "zutis:{pseudo}", "--model", "zutis-tiny", "--pretrained",
      "{weights}"], 1, "not a `zutis train` run"),
    (["predict", "{scenes}/images", "--classes", "cat", "--checkpoint", "{run}", "--device", "tpu"], 2, "--device"),
])
def test_dry_run_refuses_what_a_real_run_refuses(args, expected, fragment, world, tmp_path, monkeypatch, capsys,
                                                  no_weights):
    monkeypatch.chdir(tmp_path)
    before = snapshot(world["root"])
    code, out, err = run(capsys, *[*fill(args, world, tmp_path / "out"), "--dry-run"])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == expected and out == "", err
    assert lines[-1].startswith("error:") and fragment in lines[-1], err
    assert snapshot(world["root"]) == before and not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()


def test_check_output_dir_creates_nothing(tmp_path):
    assert check_output_dir(None, "index", root=tmp_path / "runs") == (tmp_path / "runs" / "index" / "1", "new")
    (tmp_path / "runs" / "index" / "4").mkdir(parents=True)
    assert check_output_dir(None, "index", root=tmp_path / "runs")[0] == tmp_path / "runs" / "index" / "5"
    assert check_output_dir(tmp_path / "a" / "b", "index") == (tmp_path / "a" / "b", "new")
    assert not (tmp_path / "a").exists() and not (tmp_path / "runs" / "index" / "5").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert check_output_dir(tmp_path / "full", "index", resumable=True)[1] == "existing"
    with pytest.raises(ArtefactError, match="not empty"):
        check_output_dir(tmp_path / "full", "index")
    with pytest.raises(ArtefactError, match="is a file"):
        check_output_dir(tmp_path / "full" / "x" / "y", "index")
