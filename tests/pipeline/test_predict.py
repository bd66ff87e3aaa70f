"""`zutis predict`: outputs that open in pycocotools, failures reported, both predictors, errors."""

import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from zutiscli.artefacts.labelmap import read_label_png
from zutiscli.artefacts.manifest import read_manifest
from zutiscli.cli.app import main
from zutiscli.data.classes import ClassQuery
from zutiscli.errors import UsageError
from zutiscli.artefacts.runs import resolve_checkpoint
from zutiscli.pipeline.predict import PredictConfig, plan_predict, predict
from zutiscli.pipeline.synth import SynthConfig, write_synth

from helpers import train_tiny  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_checkpoint):
    root = tmp_path_factory.mktemp("predict")
    run = train_tiny(root, tiny_checkpoint).path
    scenes = write_synth(SynthConfig("scenes", 3, seed=9, size=64), root / "scenes")
    return run, scenes


def queries(*names):
    return [ClassQuery(n, n) for n in names]


def test_outputs_round_trip_through_pycocotools(trained, tmp_path):
    run, scenes = trained
    config = PredictConfig(inputs=[str(scenes / "images")], classes=queries("circle", "star", "blue thing"),
                           checkpoint=str(run), device="cpu", score_threshold=0.0)
    result = predict(config, tmp_path / "out")
    out = result.path
    sidecar = json.loads((out / "images.json").read_text())
    assert [c["name"] for c in sidecar["categories"]] == ["circle", "star", "blue thing"]
    ground = COCO()
    ground.dataset = {"images": sidecar["images"], "categories": sidecar["categories"], "annotations": []}
    ground.createIndex()
    predictions = json.loads((out / "predictions.json").read_text())
    if predictions:
        loaded = ground.loadRes(str(out / "predictions.json"))
        assert len(loaded.getAnnIds()) == len(predictions)
        assert all(1 <= p["category_id"] <= 3 for p in predictions)
    for image in sidecar["images"]:
        labels = read_label_png(out / image["semantic"])
        assert labels.shape == (image["height"], image["width"]) and labels.max() <= 3
        assert (out / "vis" / f"{image['stem']}.jpg").is_file()
        assert (out / "panoptic" / f"{image['stem']}.png").is_file()
    assert read_manifest(out, "zutis.predictions").summary["images"] == 3


def test_unreadable_image_is_reported_and_the_rest_done(trained, tmp_path):
    run, scenes = trained
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG broken")
    listing = tmp_path / "list.txt"
    listing.write_text(f"{scenes / 'images' / '000000.png'}\n{bad}\n{tmp_path / 'missing.png'}\n")
    result = predict(PredictConfig(from_list=str(listing), classes=queries("circle"), checkpoint=str(run),
                                   device="cpu", task="semantic", vis=False), tmp_path / "out")
    assert len(result.images) == 1
    reasons = dict(result.failed)
    assert str(bad) in reasons and any("missing.png" in p for p in reasons)


def test_maskclip_needs_no_checkpoint(tiny_checkpoint, trained, tmp_path):
    _, scenes = trained
    config = PredictConfig(inputs=[str(scenes / "images" / "000001.png")], classes=queries("circle", "square"),
                           method="maskclip", model="zutis-tiny", pretrained=str(tiny_checkpoint), device="cpu",
                           task="all", components=True)
    result = predict(config, tmp_path / "mc")
    labels = read_label_png(result.path / "semantic" / "000001.png")
    predictions = json.loads((result.path / "predictions.json").read_text())
    # every instance is a connected part of its class's semantic region
    from zutiscli.ops.masks import decode_mask

    for p in predictions:
        assert (labels[decode_mask(p["segmentation"])] == p["category_id"]).all()


def test_max_size_keeps_output_size(trained, tmp_path):
    run, scenes = trained
    result = predict(PredictConfig(inputs=[str(scenes / "images" / "000002.png")], classes=queries("ring"),
                                   checkpoint=str(run), device="cpu", max_size=32, task="semantic"), tmp_path / "o")
    assert read_label_png(result.path / "semantic" / "000002.png").shape == (64, 64)


def test_errors(tmp_path, monkeypatch, trained, capsys):
    _, scenes = trained
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ZUTIS_CHECKPOINT", raising=False)
    with pytest.raises(UsageError, match="no checkpoint"):
        resolve_checkpoint(None)
    with pytest.raises(UsageError, match="background"):
        PredictConfig(inputs=["x"], classes=queries("cat", "background")).validate()
    for args, code, fragment in [
        (["predict", str(scenes / "images"), "--classes", "circle"], 2, "no checkpoint"),
        (["predict", str(scenes / "images"), "--classes", ",,"], 2, ""),
        (["predict", str(scenes / "images"), "--classes", "a,a", "--checkpoint", "x"], 2, "a"),
        (["predict", str(scenes / "images"), "--classes", "a", "--checkpoint", str(tmp_path / "nope")], 1, "no such"),
        (["predict", str(scenes / "images"), "--classes", "a", "--device", "cuda:7", "--method", "maskclip"], 1, "CUDA"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        err = capsys.readouterr().err
        assert exit_info.value.code == code, (args, err)
        assert fragment in err and "Traceback" not in err


def test_cli_json_and_default_checkpoint_from_runs(trained, tmp_path, monkeypatch, capsys):
    import shutil

    run, scenes = trained
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ZUTIS_CHECKPOINT", raising=False)
    shutil.copytree(run, tmp_path / "runs" / "train" / "4")
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", str(scenes / "images" / "000000.png"), "--classes", "circle,star", "--device", "cpu",
              "--task", "instance", "--json", "--no-vis"])
    assert exit_info.value.code == 0
    document = json.loads(capsys.readouterr().out)
    assert document["path"].startswith("runs/predict/") and len(document["images"]) == 1
    assert set(document["timing"]) == {"decode", "model", "post", "write"}


def test_many_classes_get_16_bit_label_maps(tiny_checkpoint, trained, tmp_path):
    from zutiscli.artefacts.labelmap import read_label_map

    _, scenes = trained
    names = [f"class {i}" for i in range(300)]
    config = PredictConfig(inputs=[str(scenes / "images" / "000000.png")], classes=queries(*names), method="maskclip",
                           model="zutis-tiny", pretrained=str(tiny_checkpoint), device="cpu", task="semantic",
                           vis=False)
    result = predict(config, tmp_path / "many")
    values, ignore = read_label_map(result.path / "semantic" / "000000.png")
    assert ignore == 65535 and values.shape == (64, 64) and 0 <= values.min() and values.max() <= 300


def test_refined_crop_classified_instances_and_their_semantic_map(trained, tiny_checkpoint, tmp_path):
    from zutiscli.ops.masks import decode_mask
    from zutiscli.ops.panoptic import semantic_from_instances

    run, scenes = trained
    config = PredictConfig(inputs=[str(scenes / "images")], classes=queries("circle", "star", "ring"),
                           checkpoint=str(run), device="cpu", score_threshold=0.0, refine="bilateral",
                           crop_weight=0.5, semantic_from="instances", vis=False)
    result = predict(config, tmp_path / "out")
    manifest = read_manifest(result.path, "zutis.predictions")
    # the crop classifier defaults to the checkpoint's own CLIP before training
    assert manifest.model["crop_classifier"]["pretrained"] == str(tiny_checkpoint.resolve())
    assert manifest.model["crop_adapter"]["scenes"] == 4  # fitted by the training for that CLIP, and used
    assert manifest.params["refine"] == "bilateral" and manifest.params["semantic_from"] == "instances"
    sidecar = json.loads((result.path / "images.json").read_text())
    predictions = json.loads((result.path / "predictions.json").read_text())
    assert predictions and {p["category_id"] for p in predictions} <= {1, 2, 3}
    for image in sidecar["images"]:
        mine = [p for p in predictions if p["image_id"] == image["id"]]
        size = (image["height"], image["width"])
        masks = np.stack([decode_mask(p["segmentation"]) for p in mine]) if mine else np.zeros((0, *size), bool)
        expected = semantic_from_instances(
            (masks, np.array([p["score"] for p in mine]), np.array([p["category_id"] for p in mine])), size)
        np.testing.assert_array_equal(read_label_png(result.path / image["semantic"]), expected)
    # a semantic-only run draws the same map from the same instances
    alone = predict(PredictConfig(**{**vars(config), "task": "semantic"}), tmp_path / "semantic")
    for image in sidecar["images"]:
        np.testing.assert_array_equal(read_label_png(alone.path / image["semantic"]),
                                      read_label_png(result.path / image["semantic"]))
    assert not (alone.path / "predictions.json").read_text().strip("[]\n")


def test_crop_adapter_is_used_only_for_its_own_clip(trained, tiny_checkpoint, tmp_path):
    run, scenes = trained
    common = dict(inputs=[str(scenes / "images")], classes=queries("circle", "star", "ring"), checkpoint=str(run),
                  device="cpu", score_threshold=0.0, crop_weight=1.0, task="instance", vis=False)

    def scores(result):
        return [p["score"] for p in json.loads((result.path / "predictions.json").read_text())]

    with_adapter = predict(PredictConfig(**common), tmp_path / "with")
    without = predict(PredictConfig(**common, crop_adapter=False), tmp_path / "without")
    assert read_manifest(without.path).model["crop_adapter"] is None
    assert read_manifest(without.path).params["crop_adapter"] is False
    assert scores(with_adapter) != scores(without)
    # the same weights under another name are another CLIP as far as the adapter knows: not used, and said so
    copy = tmp_path / "copy.pt"
    copy.write_bytes(tiny_checkpoint.read_bytes())
    logged = []
    other = predict(PredictConfig(**common, crop_pretrained=str(copy)), tmp_path / "other", log=logged.append)
    assert read_manifest(other.path).model["crop_adapter"] is None
    assert scores(other) == scores(without)
    assert any("crop adapter was fitted for zutis-tiny" in line for line in logged)


def test_names_the_crop_adapter_was_not_fitted_on_are_pointed_out_once(trained, tmp_path):
    run, scenes = trained
    common = dict(inputs=[str(scenes / "images")], checkpoint=str(run), device="cpu", crop_weight=0.5,
                  task="instance", vis=False)
    logged = []
    predict(PredictConfig(**common, classes=queries("Circle", "star")), tmp_path / "fitted", log=logged.append)
    assert not any("fitted on" in line for line in logged)  # names compared without case
    logged.clear()
    predict(PredictConfig(**common, classes=queries("circle", "hexagon", "red star")), tmp_path / "new",
            log=logged.append)
    notes = [line for line in logged if "crop adapter was fitted on" in line]
    assert len(notes) == 1 and "2 of the 3 names" in notes[0] and "(hexagon, red star)" in notes[0]
    assert "--no-crop-adapter" in notes[0]


class _Stopped(Exception):
    """Stands for a kill in the middle of a run."""


def test_an_interrupted_run_is_finished_by_the_rerun_as_if_never_stopped(trained, tmp_path, monkeypatch):
    from zutiscli.artefacts.lock import UNFINISHED_NAME
    from zutiscli.artefacts.prediction_writer import PredictionsWriter
    from zutiscli.errors import ArtefactError
    from zutiscli.pipeline.synth import SynthConfig, write_synth

    run, scenes = trained
    config = PredictConfig(inputs=[str(scenes / "images")], classes=queries("circle", "star"), checkpoint=str(run),
                           device="cpu", task="all", score_threshold=0.0, chunk_size=1)
    whole = predict(config, tmp_path / "whole").path
    add, seen = PredictionsWriter.add, []

    def stopped_at_the_third(self, item):
        if len(seen) == 2:
            raise _Stopped
        seen.append(item.path)
        add(self, item)

    out = tmp_path / "resumed"
    monkeypatch.setattr(PredictionsWriter, "add", stopped_at_the_third)
    with pytest.raises(_Stopped):
        predict(config, out)
    assert len(list((out / "parts").glob("*.jsonl"))) == 2 and not (out / "manifest.json").exists()
    plan = plan_predict(config, out)  # --dry-run
    assert plan.writes["state"] == "existing" and plan.work == {"already_segmented": 2, "images_to_segment": 1}
    with pytest.raises(ArtefactError, match="unfinished output of `zutis predict`"):  # other stages keep off it
        write_synth(SynthConfig("pile", 2, seed=1, size=32), out)
    with pytest.raises(ArtefactError, match="holds `zutis predict` results made with another classes; rerun with the same settings"):
        predict(PredictConfig(**(vars(config) | {"classes": queries("circle")})), out)

    def counted(self, item):
        seen.append(item.path)
        add(self, item)

    seen.clear()
    monkeypatch.setattr(PredictionsWriter, "add", counted)
    logs = []
    result = predict(PredictConfig(**(vars(config) | {"batch_size": 2, "chunk_size": 5})), out, log=logs.append)
    assert [p.name for p in seen] == ["000002.png"]  # only what the interrupted run had not committed
    assert any("2 image(s) already segmented" in line for line in logs), logs
    for name in ("predictions.json", "images.json", "panoptic.json"):
        assert json.loads((out / name).read_text()) == json.loads((whole / name).read_text()), name
    for name in ("semantic/000000.png", "semantic/000002.png", "panoptic/000001.png"):
        assert (out / name).read_bytes() == (whole / name).read_bytes(), name
    assert [(i.image_id, i.path.name) for i in result.images] == [(1, "000000.png"), (2, "000001.png"),
                                                                  (3, "000002.png")]
    assert read_manifest(out, "zutis.predictions").summary["resumed"] == 2
    assert not (out / "parts").exists() and not (out / UNFINISHED_NAME).exists()
    with pytest.raises(ArtefactError, match="is a finished artefact"):
        predict(config, out)
    # Ctrl-C (or SIGTERM) commits what was segmented since the last commit
    seen.clear()

    def interrupted_at_the_third(self, item):
        if len(seen) == 2:
            raise KeyboardInterrupt
        seen.append(item.path)
        add(self, item)

    monkeypatch.setattr(PredictionsWriter, "add", interrupted_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        predict(PredictConfig(**(vars(config) | {"chunk_size": 5})), tmp_path / "ctrl-c")
    assert plan_predict(config, tmp_path / "ctrl-c").work == {"already_segmented": 2, "images_to_segment": 1}
    # resumed with a listing that leaves out a committed image: its row and its files go
    seen.clear()
    monkeypatch.setattr(PredictionsWriter, "add", stopped_at_the_third)
    with pytest.raises(_Stopped):
        predict(config, tmp_path / "shorter")
    monkeypatch.setattr(PredictionsWriter, "add", add)
    (tmp_path / "shorter" / "semantic" / ".000002.png.tmp").write_bytes(b"cut short by a kill")
    images = [str(scenes / "images" / name) for name in ("000001.png", "000002.png")]
    shorter = predict(PredictConfig(**(vars(config) | {"inputs": images})), tmp_path / "shorter")
    assert [i.path.name for i in shorter.images] == ["000001.png", "000002.png"]
    for folder in ("semantic", "panoptic", "vis"):
        assert sorted(p.name for p in (shorter.path / folder).iterdir()) == sorted(
            p.name for p in (whole / folder).iterdir() if not p.name.startswith("000000")), folder
    # stopped before its first commit: nothing to keep, so a rerun with other settings starts afresh
    seen.clear()
    monkeypatch.setattr(PredictionsWriter, "add", stopped_at_the_third)
    with pytest.raises(_Stopped):
        predict(PredictConfig(**(vars(config) | {"chunk_size": 5})), tmp_path / "early")
    assert (tmp_path / "early" / "parts" / "run.json").is_file() and (tmp_path / "early" / "semantic").is_dir()
    monkeypatch.setattr(PredictionsWriter, "add", add)
    fresh = predict(PredictConfig(**(vars(config) | {"classes": queries("circle"), "task": "semantic"})),
                    tmp_path / "early").path
    assert sorted(p.name for p in fresh.iterdir()) == ["failed.jsonl", "images.json", "manifest.json",
                                                       "predictions.json", "semantic", "vis"]
