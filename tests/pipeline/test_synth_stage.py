import json

import numpy as np
from PIL import Image
from pycocotools.coco import COCO

from zutiscli.artefacts.labelmap import read_label_png
from zutiscli.artefacts.manifest import read_manifest
from zutiscli.pipeline import synth
from zutiscli.pipeline.synth import SynthConfig, semantic_map, write_synth
from zutiscli.shapes.world import SHAPES, scene_sample


def test_scenes_artefact_is_consistent(tmp_path):
    out = write_synth(SynthConfig("scenes", 4, seed=3, size=96), tmp_path / "scenes")
    manifest = read_manifest(out, "zutis.synth")
    assert manifest.params["kind"] == "scenes" and manifest.summary["images"] == 4
    coco = COCO(str(out / "instances.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(SHAPES)
    for image in coco.loadImgs(coco.getImgIds()):
        pixels = np.array(Image.open(out / image["file_name"]))
        assert pixels.shape == (96, 96, 3)
        labels = read_label_png(out / "semantic" / (image["file_name"].split("/")[-1]))
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]])):
            mask = coco.annToMask(ann).astype(bool)
            # the semantic map agrees with every instance mask, category ids are 1 + shape index
            assert (labels[mask] == ann["category_id"]).all()
            assert ann["colour"] in ann["colour_shape"]
        assert (labels > 0).sum() == sum(a["area"] for a in coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]])))


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = write_synth(SynthConfig("pile", 3, seed=5), tmp_path / "a")
    b = write_synth(SynthConfig("pile", 3, seed=5), tmp_path / "b")
    c = write_synth(SynthConfig("pile", 3, seed=6), tmp_path / "c")
    name = "images/000001.png"
    assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / name).read_bytes() != (c / name).read_bytes()
    assert (a / "hidden" / "instances.json").is_file() and not (a / "instances.json").exists()


def test_worker_processes_write_the_same_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(synth, "_MIN_PARALLEL", 16)  # worker processes for a small count, over several chunks
    pools = []

    class CountedPool(synth.ProcessPoolExecutor):
        def __init__(self, *args, **kwargs):
            pools.append(args)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(synth, "ProcessPoolExecutor", CountedPool)
    one = write_synth(SynthConfig("scenes", 70, seed=3, size=32, max_objects=3), tmp_path / "one")
    assert not pools
    two = write_synth(SynthConfig("scenes", 70, seed=3, size=32, max_objects=3, workers=2), tmp_path / "two")
    assert pools == [(2,)]
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file() and p.name != "manifest.json")
    assert len(files) == 2 * 70 + 1
    assert files == sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file() and p.name != "manifest.json")
    assert all((one / f).read_bytes() == (two / f).read_bytes() for f in files)
    assert read_manifest(one).params == read_manifest(two).params  # the process count is not a property of the data
    assert "workers" not in read_manifest(two).params


def test_pairs_captions_and_jpeg(tmp_path):
    out = write_synth(SynthConfig("pairs", 5, image_format="jpg"), tmp_path / "p")
    lines = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    assert len(lines) == 5 and all(line["caption"] for line in lines)
    assert all((out / line["file_name"]).suffix == ".jpg" for line in lines)
    with Image.open(out / lines[0]["file_name"]) as image:
        assert image.format == "JPEG"


def test_semantic_map_uses_shape_indices():
    sample = scene_sample(0, 0, 64)
    labels = semantic_map(sample)
    for obj, mask in zip(sample.objects, sample.masks):
        assert (labels[mask] == SHAPES.index(obj.shape) + 1).all()
    assert (labels[~sample.masks.any(0)] == 0).all()


def test_train_clip_command_writes_loadable_weights(tmp_path, capsys):
    import torch

    from zutiscli.cli.app import main
    from zutiscli.models.clip import ModelSpec, load_backbone

    out = tmp_path / "clip"
    try:
        main(["synth", "train-clip", "--steps", "2", "--batch-size", "8", "--eval-pool", "0", "--workers", "0",
              "--threads", "1", "-o", str(out), "--json"])
    except SystemExit as exit_info:
        assert exit_info.code == 0
    document = json.loads(capsys.readouterr().out)
    assert document["steps"] == 2 and document["path"] == str(out)
    backbone = load_backbone(ModelSpec("shapes-clip", str(out / "shapes-clip.pt")))
    assert backbone.encode_text(["red circle"]).shape[0] == 1
    assert torch.isfinite(backbone.encode_images(torch.zeros(1, 3, 64, 64))).all()


def test_a_pile_over_stuff_hides_its_semantic_maps_beside_its_instances(tmp_path):
    from zutiscli.pipeline.synth import semantic_classes
    from zutiscli.shapes.world import pile_sample

    out = write_synth(SynthConfig("pile", 3, seed=2, stuff=True), tmp_path / "pile")
    hidden = out / "hidden"
    assert not (out / "semantic").exists() and not (out / "classes.txt").exists()
    assert (hidden / "classes.txt").read_text().split() == semantic_classes(True)
    coco = json.loads((hidden / "instances.json").read_text())
    for number, image in enumerate(coco["images"]):
        labels = read_label_png(hidden / image["semantic"])
        assert np.array_equal(labels, semantic_map(pile_sample(2, number, labels.shape[0], stuff=True)))
        assert labels.min() >= 1  # every pixel is an object or named stuff
