"""Training on clusters (`zutis train CLUSTERS`): the clusters are the classes, their class embeddings
the centroids (fixed) or learned from them; the model carries them to `zutis predict`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from zutiscli.artefacts.checkpoint import load_checkpoint
from zutiscli.artefacts.clusters import cluster_labels, cluster_names, read_clusters
from zutiscli.engine.evaluator import headline
from zutiscli.errors import UsageError
from zutiscli.models.zutis import ZutisConfig, ZutisModel
from zutiscli.pipeline.cluster import ClusterConfig, cluster
from zutiscli.pipeline.train import TrainConfig, train

from helpers import make_pseudolabels, run_cli  # noqa: E402

TINY = dict(num_queries=6, decoder_layers=2, decoder_heads=2, decoder_ffn=32, mlp_hidden=16)


@pytest.fixture(scope="module")
def clustered(tmp_path_factory, tiny_checkpoint):
    """Shapes-world true masks clustered into 4 clusters with the tiny model's CLIP features."""
    root = tmp_path_factory.mktemp("train-clusters")
    pseudo = make_pseudolabels(root, count=16, seed=3, size=64)
    config = ClusterConfig(pseudolabels=str(pseudo), k=4, model="zutis-tiny", pretrained=str(tiny_checkpoint),
                           device="cpu", precision="fp32", contact=0, workers=0)
    return pseudo, cluster(config, root / "clusters").path


def small(source, checkpoint, **overrides):
    values = dict(source=str(source), model="zutis-tiny", pretrained=str(checkpoint), iterations=3, batch_size=2,
                  crop=48, lr=1e-2, workers=0, device="cpu", precision="fp32", checkpoint_every=3, log_every=1,
                  max_objects=3, crop_adapter_scenes=0, **TINY)
    return TrainConfig(**(values | overrides))


def test_cluster_names_sort_as_their_ids():
    assert cluster_names(3) == ["cluster-00", "cluster-01", "cluster-02"]
    assert cluster_names(800)[799] == "cluster-799" and sorted(cluster_names(120)) == cluster_names(120)


def test_the_masks_become_objects_of_their_cluster(clustered):
    pseudo, clusters_dir = clustered
    clusters = read_clusters(clusters_dir)
    labels = cluster_labels(clusters)
    assert labels.classes == cluster_names(4) and labels.directory == pseudo
    by_id = {mask.annotation_id: mask.cluster for mask in clusters.masks}
    assert len(labels.objects) == len(by_id)
    assert all(obj.class_index == by_id[obj.annotation_id] for obj in labels.objects)


def test_bank_names_get_their_rows_and_other_names_their_text(tiny_backbone):
    config = ZutisConfig(backbone={"name": "zutis-tiny", "pretrained": "none"}, class_bank=["c0", "c1"], **TINY)
    model = ZutisModel(tiny_backbone, config)
    rows = torch.randn(2, tiny_backbone.embed_dim)
    model.set_class_bank(rows)
    text = model.text_embeddings(["c1", "a red circle", "c0"])
    plain = model.text_embeddings(["a red circle"])  # background + the text
    assert text.shape == (4, tiny_backbone.embed_dim)
    assert torch.allclose(text[0], plain[0]) and torch.allclose(text[2], plain[1])
    normalised = torch.nn.functional.normalize(rows, dim=-1)
    assert torch.allclose(text[1], normalised[1]) and torch.allclose(text[3], normalised[0])
    assert "class_bank" not in dict(model.named_parameters())  # fixed: a buffer, saved but not trained
    assert "class_bank" in model.state_dict()
    with pytest.raises(ValueError, match="do not fit"):
        model.set_class_bank(torch.zeros(3, tiny_backbone.embed_dim))


def test_a_learned_bank_takes_gradients(tiny_backbone):
    config = ZutisConfig(backbone={"name": "zutis-tiny", "pretrained": "none"}, class_bank=["c0", "c1"],
                         class_bank_learned=True, **TINY)
    model = ZutisModel(tiny_backbone, config)
    model.set_class_bank(torch.randn(2, tiny_backbone.embed_dim))
    assert any(p is model.class_bank for p in model.head_parameters())
    model.text_embeddings(["c0", "c1"])[1:].sum().backward()
    assert model.class_bank.grad is not None and model.class_bank.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def cluster_run(clustered, tiny_checkpoint, tmp_path_factory):
    """The tiny model trained 3 iterations on the 4 clusters (centroids as its classifier)."""
    return train(small(clustered[1], tiny_checkpoint), tmp_path_factory.mktemp("cluster-run") / "run")


def test_training_on_clusters_keeps_the_centroids_and_predicts_cluster_ids(clustered, cluster_run, tmp_path, capsys):
    import zutiscli as zs

    _, clusters_dir = clustered
    run = cluster_run
    saved = load_checkpoint(run.path / "model.pt")
    assert saved["classes"] == cluster_names(4)
    assert saved["config"]["class_bank"] == cluster_names(4) and not saved["config"]["class_bank_learned"]
    centroids = read_clusters(clusters_dir).centroids
    assert np.allclose(saved["model"]["class_bank"].numpy(), centroids, atol=1e-6)  # fixed: untouched by training
    images = sorted((clustered[0].parent / "pile" / "images").iterdir())[:2]
    predicted = zs.predict(images, ",".join(cluster_names(4)), tmp_path / "pred", checkpoint=run.path,
                           device="cpu", vis=False)
    categories = json.loads((predicted.path / "images.json").read_text())["categories"]
    assert [c["name"] for c in categories] == cluster_names(4)
    assert len(list((predicted.path / "semantic").glob("*.png"))) == len(images)
    # with no classes given, the model's own clusters are segmented: the same prediction
    default = zs.predict(images, None, tmp_path / "pred-default", checkpoint=run.path, device="cpu", vis=False)
    assert json.loads((default.path / "images.json").read_text())["categories"] == categories
    assert (default.path / "predictions.json").read_bytes() == (predicted.path / "predictions.json").read_bytes()
    code, out, err = run_cli(capsys, "predict", *map(str, images), "--checkpoint", run.path, "--device", "cpu",
                             "--no-vis", "-o", tmp_path / "pred-cli", "--quiet")
    assert code == 0, err
    assert (tmp_path / "pred-cli" / "predictions.json").read_bytes() == (predicted.path / "predictions.json").read_bytes()


def test_a_learned_classifier_moves_from_the_centroids(clustered, tiny_checkpoint, tmp_path):
    _, clusters_dir = clustered
    run = train(small(clusters_dir, tiny_checkpoint, classifier="learned"), tmp_path / "learned")
    saved = load_checkpoint(run.path / "model.pt")
    assert saved["config"]["class_bank_learned"]
    assert not np.allclose(saved["model"]["class_bank"].numpy(), read_clusters(clusters_dir).centroids, atol=1e-4)


def test_centroids_of_another_model_are_refused_before_training(clustered, tmp_path):
    _, clusters_dir = clustered
    with pytest.raises(UsageError, match="not CLIP image embeddings of zutis-tiny/none; train with that CLIP"):
        train(small(clusters_dir, "none"), tmp_path / "other")
    assert not (tmp_path / "other" / "model.pt").exists()
    run = train(small(clusters_dir, "none", classifier="learned", iterations=1, checkpoint_every=1), tmp_path / "ok")
    assert (run.path / "model.pt").is_file()


def test_compare_scores_a_cluster_run_as_evaluate_does_with_the_same_matching(cluster_run, tiny_checkpoint, tmp_path):
    import zutiscli as zs
    from zutiscli.pipeline.synth import SynthConfig, write_synth

    scenes = write_synth(SynthConfig("scenes", 3, seed=5, size=64, panoptic=True, workers=0), tmp_path / "scenes")
    compared = zs.compare(scenes, [f"found=zutis:{cluster_run.path}"], tmp_path / "cmp", match="majority",
                          match_score=0.0, device="cpu", picture=2)
    row = compared.rows["found"]
    assert row["method"] == "zutis (clusters, majority)"
    predicted = zs.predict(scenes / "images", None, tmp_path / "pred", checkpoint=cluster_run.path, device="cpu",
                           vis=False)
    evaluated = zs.evaluate(predicted.path, scenes, tmp_path / "ev", match="majority", match_score=0.0)
    expected = headline(evaluated.metrics)
    for key in ("mIoU", "pixel_accuracy", "mask_AP", "mask_AP50", "mask_AP_agnostic", "PQ"):
        assert row["metrics"][key] == pytest.approx(expected[key], abs=1e-4), key
    assert (tmp_path / "cmp" / "compare.png").is_file()


def test_kept_scores_take_the_threshold_and_the_best_fraction():
    from zutiscli.pipeline.pseudolabel_predictions import kept_scores

    scores = np.array([0.2, 0.9, 0.5, 0.95, 0.5, 0.1])
    assert kept_scores(scores, 0.7, None).tolist() == [False, True, False, True, False, False]
    assert kept_scores(scores, 0.0, 0.5).tolist() == [False, True, True, True, False, False]  # ties: the first
    assert kept_scores(scores, 0.3, 1.0).tolist() == [False, True, True, True, True, False]
    assert not kept_scores(scores, 0.99, 0.5).any()


def test_confident_predictions_of_a_cluster_model_are_the_next_rounds_clusters(clustered, cluster_run, tiny_checkpoint,
                                                                               tmp_path, capsys):
    import zutiscli as zs
    from zutiscli.artefacts.manifest import read_manifest
    from zutiscli.artefacts.pseudolabels import load_pseudolabels

    images = sorted((clustered[0].parent / "pile" / "images").iterdir())[:4]
    predicted = zs.predict(images, None, tmp_path / "pred", checkpoint=cluster_run.path, device="cpu", vis=False,
                           score_threshold=0.0, mask_threshold=0.2)
    results = json.loads((predicted.path / "predictions.json").read_text())
    assert results, "the tiny model predicts instances"
    remined = zs.pseudolabel(predicted.path, tmp_path / "remined", min_score=0.0, top_fraction=0.5)
    labels = load_pseudolabels(remined.path)
    assert labels.classes == cluster_names(4)
    assert len(labels.objects) == int(np.ceil(0.5 * len(results)))
    best = sorted((r["score"] for r in results), reverse=True)[len(labels.objects) - 1]
    assert min(o.score for o in labels.objects) >= best
    assert read_manifest(remined.path).params["source"] == "predictions"
    bank = np.load(remined.path / "class_bank.npy")
    saved = load_checkpoint(cluster_run.path / "model.pt")
    assert np.array_equal(bank, saved["model"]["class_bank"].numpy())  # the model's clusters, in category order
    # the next round trains on them with the same classifier
    run = train(small(remined.path, tiny_checkpoint), tmp_path / "round-2")
    again = load_checkpoint(run.path / "model.pt")
    assert again["classes"] == cluster_names(4) and again["config"]["class_bank"] == cluster_names(4)
    assert np.allclose(again["model"]["class_bank"].numpy(), bank, atol=1e-6)
    # a threshold nothing reaches: one line, nothing written
    code, out, err = run_cli(capsys, "pseudolabel", predicted.path, "--min-score", "1.0", "-o", tmp_path / "none")
    assert code == 1 and "no instance scores >= 1.0" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "none").exists()


def test_copypaste_writes_scenes_of_clusters(clustered, tmp_path):
    from zutiscli.pipeline.copypaste import CopyPasteConfig, write_dataset

    _, clusters_dir = clustered
    out = write_dataset(clusters_dir, 3, CopyPasteConfig(size=48, max_objects=2), 0, tmp_path / "scenes", workers=0)
    coco = json.loads((out / "instances.json").read_text())
    assert [c["name"] for c in coco["categories"]] == cluster_names(4)
    assert len(coco["images"]) == 3 and coco["annotations"]
    by_id = {mask.annotation_id: mask.cluster for mask in read_clusters(clusters_dir).masks}
    assert {a["category_id"] - 1 for a in coco["annotations"]} <= set(by_id.values())
