"""`zutis synth train-clip` into a directory: resumed from its checkpoint, planned by --dry-run, and
refused where the directory holds a finished training or something else."""

from __future__ import annotations

import json

import pytest

from zutiscli.artefacts.manifest import read_manifest
from zutiscli.errors import ArtefactError, UsageError
from zutiscli.pipeline.train_clip import plan_train_clip, train_clip
from zutiscli.shapes.clip_recipe import TrainClipConfig
from zutiscli.shapes.clip_train import checkpoint_path


def _config(**overrides) -> TrainClipConfig:
    base = dict(model="zutis-tiny", image_size=32, seed=1, steps=6, batch_size=8, lr=3e-3, warmup=1, threads=1,
                workers=0, log_every=2, checkpoint_every=2)
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
    assert checkpoint_path(out / "shapes-clip.pt").is_file()
    plan = plan_train_clip(_config(), out)
    assert plan.work["steps_done"] == 4 and plan.work["steps_to_run"] == 2 and plan.notes == []
    assert plan.reads[0]["kind"] == "training checkpoint"
    other = plan_train_clip(_config(lr=1e-3), out)  # another recipe would start afresh: said, not hidden
    assert other.work["steps_done"] == 0 and "starts afresh" in other.notes[0]
    assert plan_train_clip(_config(device="cpu", precision="bf16"), out).work["steps_done"] == 4

    done, report = train_clip(_config(), out)
    assert done == out and report["resumed_from_step"] == 4
    assert not checkpoint_path(out / "shapes-clip.pt").exists()
    assert json.loads((out / "shapes-clip.json").read_text())["steps"] == 6
    assert read_manifest(out, "zutis.synth").summary["steps"] == 6
    for attempt in (plan_train_clip, train_clip):
        with pytest.raises(ArtefactError, match="holds a finished training"):
            attempt(_config(), out)


def test_a_foreign_directory_or_a_bad_recipe_is_refused_before_anything_is_written(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    for attempt in (plan_train_clip, train_clip):
        with pytest.raises(ArtefactError, match="holds no shapes-clip checkpoint"):
            attempt(_config(), foreign)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    for bad in (_config(steps=0), _config(precision="fp16", device="cpu")):
        with pytest.raises(UsageError):
            train_clip(bad, tmp_path / "never")
    assert not (tmp_path / "never").exists()
