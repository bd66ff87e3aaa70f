"""Stuff clusters that travel with a model trained on clusters: `zutis train CLUSTERS` keeps them,
`zutis predict` labels what no thing claims with the nearest of them (things first, U2Seg's merge),
panoptic output has them as stuff segments, and nothing else about the prediction changes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import zutiscli as zs
from zutiscli.artefacts.checkpoint import load_checkpoint, trained_classes
from zutiscli.artefacts.clusters import cluster_names, read_clusters, stuff_names
from zutiscli.artefacts.labelmap import read_label_png
from zutiscli.errors import ArtefactError
from zutiscli.models.stuff_probe import StuffProbe
from zutiscli.ops.panoptic import fill_stuff
from zutiscli.pipeline.cluster import ClusterConfig, cluster
from zutiscli.pipeline.synth import SynthConfig, write_synth
from zutiscli.pipeline.train import TrainConfig, train

from helpers import run_cli, unnamed_pseudolabels  # noqa: E402

TINY = dict(num_queries=6, decoder_layers=1, decoder_heads=2, decoder_ffn=32, mlp_hidden=16)


@pytest.fixture(scope="module")
def stuff_run(tmp_path_factory, tiny_checkpoint):
    """The tiny model trained 3 iterations on 3 clusters of a pile over stuff, with 3 stuff clusters."""
    root = tmp_path_factory.mktemp("stuff-probe")
    pile = write_synth(SynthConfig("pile", 16, seed=3, stuff=True), root / "pile")
    pseudo = unnamed_pseudolabels(root / "pseudo", pile)
    clusters = cluster(ClusterConfig(pseudolabels=str(pseudo), k=3, stuff_k=3, model="zutis-tiny",
                                     pretrained=str(tiny_checkpoint), device="cpu", precision="fp32", contact=0,
                                     workers=0), root / "clusters").path
    config = TrainConfig(source=str(clusters), model="zutis-tiny", pretrained=str(tiny_checkpoint), iterations=3,
                         batch_size=2, crop=48, workers=0, device="cpu", precision="fp32", checkpoint_every=3,
                         log_every=1, max_objects=3, crop_adapter_scenes=0, **TINY)
    run = train(config, root / "run").path
    scenes = write_synth(SynthConfig("scenes", 3, seed=5, size=64, stuff=True, panoptic=True), root / "scenes")
    return {"root": root, "clusters": clusters, "run": run, "scenes": scenes, "tiny": tiny_checkpoint}


def test_the_checkpoint_carries_the_stuff_clusters(stuff_run):
    saved = load_checkpoint(stuff_run["run"] / "model.pt")
    stuff = read_clusters(stuff_run["clusters"]).stuff
    probe = StuffProbe.from_dict(saved["stuff_probe"], where="model.pt")
    assert probe.names == tuple(stuff_names(3)) and probe.layer == stuff.layer == 1  # half of zutis-tiny's 2 blocks
    assert probe.model == "zutis-tiny" and probe.pretrained == str(stuff_run["tiny"])
    np.testing.assert_array_equal(probe.centroids.numpy(), stuff.centroids)
    assert trained_classes(stuff_run["run"] / "model.pt") == (cluster_names(3), True, stuff_names(3))
    # the resumable checkpoint has it too
    assert load_checkpoint(stuff_run["run"] / "checkpoints" / "last.pt")["stuff_probe"]["names"] == stuff_names(3)


def _stuff_of(image: np.ndarray, probe: StuffProbe, backbone) -> np.ndarray:
    """An independent nearest-stuff-centroid map: ``(H, W)`` row of the nearest centroid."""
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div(255)[None]
    with torch.no_grad():
        tokens = F.normalize(backbone.block_tokens(backbone.normalise(pixels), probe.layer).float(), dim=-1)
    similarity = (tokens @ F.normalize(probe.centroids, dim=-1).T)[0].permute(2, 0, 1)[None]
    return F.interpolate(similarity, size=image.shape[:2], mode="bilinear", align_corners=False)[0].argmax(0).numpy()


def test_predict_fills_what_no_thing_claims_with_the_nearest_stuff(stuff_run, tiny_backbone, tmp_path, capsys):
    from PIL import Image

    images = sorted((stuff_run["scenes"] / "images").iterdir())
    things = zs.predict(images, ",".join(cluster_names(3)), tmp_path / "things", checkpoint=stuff_run["run"],
                        device="cpu", vis=False)
    code, _, err = run_cli(capsys, "predict", stuff_run["scenes"] / "images", "--checkpoint", stuff_run["run"],
                           "--device", "cpu", "--no-vis", "-o", tmp_path / "all", "--quiet")
    assert code == 0, err
    manifest = json.loads((tmp_path / "all" / "manifest.json").read_text())
    assert manifest["params"]["classes"] == cluster_names(3) + stuff_names(3)
    assert manifest["params"]["stuff"] == stuff_names(3)
    assert manifest["model"]["stuff_probe"]["classes"] == stuff_names(3)
    probe = StuffProbe.from_dict(load_checkpoint(stuff_run["run"] / "model.pt")["stuff_probe"], where="model.pt")
    for path in images:
        thing_map = read_label_png(things.path / "semantic" / f"{path.stem}.png")
        expected = fill_stuff(thing_map, 4 + _stuff_of(np.asarray(Image.open(path).convert("RGB")), probe,
                                                           tiny_backbone))
        np.testing.assert_array_equal(read_label_png(tmp_path / "all" / "semantic" / f"{path.stem}.png"), expected)
    # the instances do not change with the stuff
    assert json.loads((tmp_path / "all" / "predictions.json").read_text()) == \
        json.loads((things.path / "predictions.json").read_text())
    panoptic = json.loads((tmp_path / "all" / "panoptic.json").read_text())
    kinds = {c["id"]: c["isthing"] for c in panoptic["categories"]}
    assert kinds == {1: 1, 2: 1, 3: 1, 4: 0, 5: 0, 6: 0}
    segments = [s for a in panoptic["annotations"] for s in a["segments_info"]]
    assert any(not s["isthing"] for s in segments)
    assert all(s["isthing"] == kinds[s["category_id"]] for s in segments)


def test_a_class_list_in_another_order_labels_the_same_pixels(stuff_run, tmp_path):
    images = sorted((stuff_run["scenes"] / "images").iterdir())[:2]
    usual = zs.predict(images, None, tmp_path / "usual", checkpoint=stuff_run["run"], device="cpu", vis=False,
                       task="semantic")
    order = ["stuff-02", "cluster-01", "stuff-00", "cluster-00", "stuff-01", "cluster-02"]
    shuffled = zs.predict(images, ",".join(order), tmp_path / "shuffled", checkpoint=stuff_run["run"], device="cpu",
                          vis=False, task="semantic", stuff="stuff-00,stuff-01,stuff-02")
    names_usual = ["background"] + cluster_names(3) + stuff_names(3)
    names_shuffled = ["background"] + order
    for path in images:
        a = np.asarray(names_usual)[read_label_png(usual.path / "semantic" / f"{path.stem}.png")]
        b = np.asarray(names_shuffled)[read_label_png(shuffled.path / "semantic" / f"{path.stem}.png")]
        np.testing.assert_array_equal(a, b)


def test_instances_alone_load_no_stuff_model(stuff_run, tmp_path):
    images = sorted((stuff_run["scenes"] / "images").iterdir())[:1]
    alone = zs.predict(images, None, tmp_path / "inst", checkpoint=stuff_run["run"], device="cpu", vis=False,
                       task="instance")
    assert "stuff_probe" not in json.loads((alone.path / "manifest.json").read_text())["model"]


@pytest.mark.parametrize("change, message", [
    (dict(names="stuff-00"), "names is not a list"),
    (dict(centroids=torch.zeros(2, 4)), r"centroids is not a \(1, E\) tensor"),
    (dict(layer=-1), "layer is not a block count"),
    (dict(model=""), "stuff_probe.model is not a string"),
])
def test_a_malformed_stuff_probe_is_refused_by_name(change, message):
    good = {"names": ["stuff-00"], "centroids": torch.ones(1, 4), "model": "m", "pretrained": "p", "layer": 1}
    assert StuffProbe.from_dict(good, where="x.pt").to_dict()["names"] == ["stuff-00"]
    with pytest.raises(ArtefactError, match=message):
        StuffProbe.from_dict(good | change, where="x.pt")
