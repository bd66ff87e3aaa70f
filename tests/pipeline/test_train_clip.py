"""`zutis synth train-clip` into a directory: resumed from its checkpoint, planned by --dry-run, and
refused where the directory holds a finished training or something else."""

from __future__ import annotations

import json

import pytest

from zutiscli.artefacts.manifest import read_manifest
from zutiscli.errors import ArtefactError, ModelError, UsageError
from zutiscli.pipeline.train_clip import plan_train_clip, report_name, train_clip, weights_name
from zutiscli.shapes.clip_recipe import TrainClipConfig
from zutiscli.shapes.clip_train import checkpoint_path


def _config(**overrides) -> TrainClipConfig:
    base = dict(model="zutis-tiny", seed=1, steps=6, batch_size=8, lr=3e-3, warmup=1, threads=1,
                workers=0, log_every=2, checkpoint_every=2, eval_pool=0)
    return TrainClipConfig(**(base | overrides))


def test_a_stopped_training_is_planned_and_resumed(tmp_path):
    out = tmp_path / "clip"
    plan = plan_train_clip(_config(), out)
    assert plan.writes["state"] == "new" and plan.work["steps_to_run"] == 6 and plan.reads == []
    assert not out.exists()

    def stop(step, steps, stats):
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_clip(_config(), out, progress=stop)
    assert checkpoint_path(out / "zutis-tiny.pt").is_file()
    plan = plan_train_clip(_config(), out)
    assert plan.work["steps_done"] == 4 and plan.work["steps_to_run"] == 2 and plan.notes == []
    assert plan.reads[0]["kind"] == "training checkpoint"
    other = plan_train_clip(_config(lr=1e-3), out)  # another recipe would start afresh: said, not hidden
    assert other.work["steps_done"] == 0 and "starts afresh" in other.notes[0]
    assert plan_train_clip(_config(device="cpu", precision="bf16"), out).work["steps_done"] == 4

    done, report = train_clip(_config(), out)
    assert done == out and report["resumed_from_step"] == 4
    assert not checkpoint_path(out / "zutis-tiny.pt").exists()
    assert json.loads((out / "zutis-tiny.json").read_text())["steps"] == 6
    assert read_manifest(out, "zutis.synth").summary["steps"] == 6
    for attempt in (plan_train_clip, train_clip):
        with pytest.raises(ArtefactError, match="holds a finished training"):
            attempt(_config(), out)


def test_a_foreign_directory_or_a_bad_recipe_is_refused_before_anything_is_written(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    for attempt in (plan_train_clip, train_clip):
        with pytest.raises(ArtefactError, match="holds no zutis-tiny training checkpoint"):
            attempt(_config(), foreign)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    for bad in (_config(steps=0), _config(precision="fp16", device="cpu")):
        with pytest.raises(UsageError):
            train_clip(bad, tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_the_files_are_named_after_the_model():
    assert (weights_name("shapes-clip"), report_name("shapes-clip")) == ("shapes-clip.pt", "shapes-clip.json")
    assert weights_name("hf-hub:org/clip") == "hf-hub-org-clip.pt"


def test_training_starts_from_init_weights_at_the_models_own_size(tmp_path):
    import torch

    first, report = train_clip(_config(checkpoint_every=0), tmp_path / "a")
    assert report["config"]["image_size"] == 32 and report["config"]["init"] == "none"  # zutis-tiny's input size
    weights = first / "zutis-tiny.pt"
    plan = plan_train_clip(_config(init=str(weights)), tmp_path / "b")
    assert plan.model["weights"] == str(weights) and plan.model["source"] == "file"
    # at a vanishing learning rate a run from those weights keeps them; from random it does not
    still = _config(init=str(weights), steps=2, lr=1e-12, checkpoint_every=0)
    kept = torch.load(train_clip(still, tmp_path / "b")[0] / "zutis-tiny.pt", weights_only=True)
    fresh = torch.load(train_clip(_config(steps=2, lr=1e-12, checkpoint_every=0), tmp_path / "c")[0]
                       / "zutis-tiny.pt", weights_only=True)
    start = torch.load(weights, weights_only=True)
    assert all(torch.equal(kept[k], start[k]) for k in start)
    assert not all(torch.equal(fresh[k], start[k]) for k in start)
    assert read_manifest(tmp_path / "b", "zutis.synth").model["pretrained"] == str(weights)


def test_init_weights_that_do_not_fit_are_refused_naming_init(tmp_path):
    for init, says in (("builtin", "--init builtin: zutis ships no weights for zutis-tiny"),
                       (str(tmp_path / "absent.pt"), "--init .*absent.pt: no such checkpoint file")):
        for attempt in (plan_train_clip, train_clip):
            with pytest.raises(ModelError, match=says):
                attempt(_config(init=init), tmp_path / "never")
    with pytest.raises(UsageError, match="image_size 48 differs"):
        train_clip(_config(image_size=48, init="none"), tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_the_starting_weights_are_fingerprinted_and_a_rewritten_init_file_is_not_resumed(tmp_path):
    import hashlib

    import torch

    from zutiscli.shapes.clip_train import checkpoint_step, init_sha256

    first, report = train_clip(_config(checkpoint_every=0), tmp_path / "a")
    assert report["init_sha256"] is None  # random initialisation
    weights = first / "zutis-tiny.pt"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert init_sha256(_config(init=str(weights))) == digest

    def stop_at_4(step, steps, stats):
        if step == 4:
            raise KeyboardInterrupt

    config = _config(init=str(weights), steps=8)
    with pytest.raises(KeyboardInterrupt):
        train_clip(config, tmp_path / "b", progress=stop_at_4)
    assert plan_train_clip(config, tmp_path / "b").work["steps_done"] == 4
    # the same file resumes; the file rewritten with other weights starts afresh (plan and run agree)
    state = torch.load(weights, weights_only=True)
    torch.save({k: v + 1 for k, v in state.items()}, weights)
    assert plan_train_clip(config, tmp_path / "b").work["steps_done"] == 0
    assert checkpoint_step(tmp_path / "b" / "zutis-tiny.pt.ckpt", config) is None
    _, resumed = train_clip(config, tmp_path / "b")
    assert resumed["resumed_from_step"] is None
    assert resumed["init_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest() != digest
    assert json.loads((tmp_path / "b" / "zutis-tiny.json").read_text())["init_sha256"] == resumed["init_sha256"]
