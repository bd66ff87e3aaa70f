"""`zutis cluster` on shapes-world masks whose classes are known: clusters by shape far better than
chance, the same clusters every time (and whatever --workers), features reused, bad input refused
with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import zutiscli as zs
from zutiscli.artefacts.clusters import read_clusters
from zutiscli.artefacts.coco import CocoBuilder, load_coco
from zutiscli.artefacts.manifest import relative_to, write_manifest
from zutiscli.artefacts.pseudolabels import PSEUDOLABELS_NAME
from zutiscli.errors import ArtefactError, ModelError, UsageError, ZutisError
from zutiscli.pipeline.cluster import ClusterConfig, cluster
from zutiscli.pipeline.synth import SynthConfig, write_synth

from helpers import SHAPES_CLIP, make_pseudolabels, unnamed_pseudolabels  # noqa: E402

#: The options of every run here: the builtin shapes-clip on CPU in fp32, no contact sheets.
FAST = dict(model="shapes-clip", pretrained="builtin", device="cpu", precision="fp32", contact=0, workers=0)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """60 pile images: their true masks as named pseudo-labels (archive = shape) and as unnamed ones."""
    root = tmp_path_factory.mktemp("cluster")
    named = make_pseudolabels(root, count=60, seed=4, size=64)
    unnamed = unnamed_pseudolabels(root / "unnamed", root / "pile")
    return {"root": root, "named": named, "unnamed": unnamed, "gt": root / "pile" / "hidden" / "instances.json"}


@pytest.fixture(scope="module")
def first(shapes):
    """One run over the named pseudo-labels: 6 clusters, ground truth, contact sheets."""
    config = ClusterConfig(pseudolabels=str(shapes["named"]), k=6, ground_truth=str(shapes["gt"]),
                           **(FAST | {"contact": 4}))
    return cluster(config, shapes["root"] / "first")


def _placed(directory: Path) -> list[tuple]:
    return [(m.image, m.annotation_id, m.cluster, m.distance) for m in read_clusters(directory).masks]


def test_shapes_cluster_by_shape_far_better_than_chance(shapes, first):
    truth = load_coco(shapes["gt"])
    counts = np.bincount([ann["category_id"] for ann in truth["annotations"]])
    majority_share = counts.max() / counts.sum()  # what one cluster per mask's majority class would score
    assert first.masks == len(truth["annotations"]) and first.matched == first.masks  # true masks: all match
    assert first.purity >= majority_share + 0.3, (first.purity, majority_share)
    assert first.nmi >= 0.35
    manifest = json.loads((first.path / "manifest.json").read_text())
    assert manifest["kind"] == "zutis.clusters" and manifest["model"] == SHAPES_CLIP
    summary = manifest["summary"]
    assert summary["k"] == 6 and sum(summary["sizes"]) == summary["masks"] == first.masks
    assert summary["purity"] == pytest.approx(first.purity, abs=1e-6)
    assert [ref["kind"] for ref in manifest["inputs"]] == ["zutis.pseudolabels", None]
    assert manifest["params"]["fill"] == pytest.approx([0.481455, 0.457827, 0.408211])  # CLIP's mean colour


def test_the_artefact_holds_every_mask_its_cluster_and_contact_sheets(shapes, first):
    from PIL import Image

    read = read_clusters(first.path)
    pseudo = json.loads((shapes["named"] / PSEUDOLABELS_NAME).read_text())
    assert [m.annotation_id for m in read.masks] == [ann["id"] for ann in pseudo["annotations"]]
    assert all(m.image.is_file() for m in read.masks)
    assert {m.category for m in read.masks} <= {"circle", "square", "triangle", "star", "cross", "ring"}
    features = read.load_features().astype(np.float32)
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1, atol=2e-3)
    np.testing.assert_allclose(np.linalg.norm(read.centroids, axis=1), 1, atol=1e-5)
    # each mask's cluster is its most similar centroid, at the recorded cosine distance
    similarity = features / np.linalg.norm(features, axis=1, keepdims=True) @ read.centroids.T
    np.testing.assert_array_equal(similarity.argmax(axis=1), read.assignment)
    np.testing.assert_allclose([m.distance for m in read.masks], 1 - similarity.max(axis=1), atol=1e-5)
    for info in read.clusters:
        assert info.size == int((read.assignment == info.cluster).sum())
        sheet = Image.open(first.path / info.contact)
        assert sheet.format == "JPEG" and sheet.width == 4 * 96 + 5 * 2  # up to --contact 4 tiles a row


def test_same_seed_same_clusters_twice_and_whatever_the_workers(shapes, first, tmp_path):
    again = cluster(ClusterConfig(pseudolabels=str(shapes["named"]), k=6, ground_truth=str(shapes["gt"]),
                                  **(FAST | {"workers": 2, "batch_size": 7})), tmp_path / "again")
    threads = cluster(ClusterConfig(pseudolabels=str(shapes["named"]), k=6, **(FAST | {"workers": 3})),
                      tmp_path / "threads")
    for other in (again, threads):
        assert _placed(other.path) == _placed(first.path)
        assert (other.path / "centroids.npy").read_bytes() == (first.path / "centroids.npy").read_bytes()
    assert (threads.path / "features.npy").read_bytes() == (first.path / "features.npy").read_bytes()
    assert (again.purity, again.nmi) == (first.purity, first.nmi)


def test_features_from_clusters_again_without_a_model(shapes, first, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("--features-from loaded a model")

    # zs.cluster's first call imports the API and the stages it names (train among them), which bind
    # load_backbone at import: imported now, they keep the real one after the patch is undone
    import zutiscli.api  # noqa: F401

    monkeypatch.setattr("zutiscli.models.clip.load_backbone", refuse)
    same = zs.cluster(shapes["named"], tmp_path / "same", k=6, features_from=str(first.path), contact=0)
    assert _placed(same.path) == _placed(first.path)
    fewer = zs.cluster(shapes["named"], tmp_path / "fewer", k=3, seed=5, features_from=str(first.path), contact=2)
    assert fewer.k == 3 and sum(info.size for info in fewer.clusters) == first.masks
    manifest = json.loads((fewer.path / "manifest.json").read_text())
    assert manifest["model"] == SHAPES_CLIP
    assert manifest["params"]["features_from"] == relative_to(fewer.path, first.path)
    assert [ref["kind"] for ref in manifest["inputs"]] == ["zutis.pseudolabels", "zutis.clusters"]
    with pytest.raises(ArtefactError, match="its features are of other pseudo-labels"):
        cluster(ClusterConfig(pseudolabels=str(shapes["unnamed"]), k=3, features_from=str(first.path)),
                tmp_path / "other")
    with pytest.raises(UsageError, match="holds clip features"):
        cluster(ClusterConfig(pseudolabels=str(shapes["named"]), k=3, features="cls", features_from=str(first.path)),
                tmp_path / "cls")
    assert not (tmp_path / "other").exists() and not (tmp_path / "cls").exists()


def test_unnamed_pseudolabels_use_their_model_and_their_category_is_ignored(shapes, first, tmp_path):
    config = ClusterConfig(pseudolabels=str(shapes["unnamed"]), k=6, device="cpu", precision="fp32", contact=0)
    result = cluster(config, tmp_path / "unnamed")  # no --model: the pseudo-labels' shapes-clip
    read = read_clusters(result.path)
    assert {m.category for m in read.masks} == {"object"}
    # the same masks in the same order: the same features and clusters as the named pseudo-labels'
    assert [(m.image, m.cluster) for m in read.masks] == [(m.image, m.cluster) for m in read_clusters(first.path).masks]


def test_cls_tokens_of_the_masked_images(shapes, tiny_checkpoint, tmp_path):
    config = ClusterConfig(pseudolabels=str(shapes["named"]), k=4, features="cls", model="zutis-tiny",
                           pretrained=str(tiny_checkpoint), size=32, device="cpu", precision="fp32", contact=1)
    result = cluster(config, tmp_path / "cls")
    read = read_clusters(result.path)
    assert read.features == "cls" and read.centroids.shape == (4, 32)  # the ViT's width: no projection
    assert len(list((result.path / "contact").glob("cluster-*.jpg"))) == sum(i.size > 0 for i in read.clusters)
    with pytest.raises(ModelError, match="pools its patch tokens"):  # shapes-clip averages its patches
        cluster(ClusterConfig(pseudolabels=str(shapes["named"]), k=4, features="cls", **FAST), tmp_path / "avg")
    assert not (tmp_path / "avg").exists()


def _empty_pseudolabels(out: Path) -> Path:
    out.mkdir()
    CocoBuilder(["object"]).write(out / PSEUDOLABELS_NAME)
    write_manifest(out, "zutis.pseudolabels", model=SHAPES_CLIP, params={"method": "spectral"},
                   summary={"images": 0, "masks": 0})
    return out


@pytest.mark.parametrize("case, error, message", [
    ("k above the masks", UsageError, r"-k 500: .*pseudolabels.json holds \d+ masks, fewer than the clusters"),
    ("k of one", UsageError, "-k must be >= 2"),
    ("no masks", ZutisError, "pseudolabels.json: holds no masks"),
    ("not pseudo-labels", ArtefactError, "is a zutis.synth artefact; expected a zutis.pseudolabels"),
    ("no model recorded", UsageError, "records no model that embeds images .* give --model"),
    ("a timm model for clip", UsageError, "a timm ViT has no CLIP image embedding"),
    ("other images' ground truth", UsageError, "none of its .* images is one of the"),
])
def test_bad_input_is_refused_with_nothing_written(shapes, tmp_path, case, error, message):
    named = str(shapes["named"])
    options = dict(pseudolabels=named, k=3, **FAST)
    if case == "k above the masks":
        options["k"] = 500
    elif case == "k of one":
        options["k"] = 1
    elif case == "no masks":
        options["pseudolabels"] = str(_empty_pseudolabels(tmp_path / "empty"))
    elif case == "not pseudo-labels":
        options["pseudolabels"] = str(shapes["root"] / "pile")
    elif case == "no model recorded":
        options.pop("model"), options.pop("pretrained")
    elif case == "a timm model for clip":
        options["model"] = "dino-vits16"
    else:
        scenes = write_synth(SynthConfig("scenes", 2, seed=9, size=48), tmp_path / "scenes")
        options["ground_truth"] = str(scenes / "instances.json")
    with pytest.raises(error, match=message):
        cluster(ClusterConfig(**options), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not (Path.cwd() / "runs" / "cluster").exists()


def test_unreadable_images_are_left_out_and_counted(tmp_path):
    pseudo = make_pseudolabels(tmp_path, count=8, seed=2, size=48)
    lost = sorted((tmp_path / "pile" / "images").iterdir())[0]
    lost.unlink()
    result = cluster(ClusterConfig(pseudolabels=str(pseudo), k=2, **FAST), tmp_path / "out")
    assert [path for path, _ in result.failed] == [str(lost)]
    read = read_clusters(result.path)
    assert lost not in {m.image for m in read.masks} and read.manifest.summary["failed"] == 1
    assert len(read.masks) == result.masks == len(read.load_features())


def test_a_run_that_dies_before_its_manifest_leaves_no_artefact_and_a_rerun_finishes(shapes, first, tmp_path,
                                                                                     monkeypatch):
    import zutiscli.artefacts.manifest as manifest_module

    def dies(*args, **kwargs):
        raise KeyboardInterrupt

    config = ClusterConfig(pseudolabels=str(shapes["named"]), k=4, features_from=str(first.path), contact=1)
    with monkeypatch.context() as patch:
        patch.setattr(manifest_module, "write_manifest", dies)
        with pytest.raises(KeyboardInterrupt):
            cluster(config, tmp_path / "out")
    assert (tmp_path / "out" / "clusters.json").is_file()  # written, but no manifest: not an artefact
    with pytest.raises(ArtefactError, match="not a finished zutis artefact"):
        read_clusters(tmp_path / "out")
    result = cluster(config, tmp_path / "out")  # the same command again starts the directory afresh
    assert read_clusters(result.path).k == 4


class _Killed(Exception):
    """Stands for a kill in the middle of the embedding."""


def test_a_run_killed_while_embedding_is_finished_by_the_rerun(shapes, first, tmp_path, capsys):
    from zutiscli.artefacts.lock import UNFINISHED_NAME
    from zutiscli.pipeline.cluster import plan_cluster

    named = str(shapes["named"])
    config = ClusterConfig(pseudolabels=named, k=6, ground_truth=str(shapes["gt"]), chunk_size=10, batch_size=8,
                           **FAST)

    def killed(done, total):
        if done >= total // 2:
            raise _Killed

    out = tmp_path / "out"
    with pytest.raises(_Killed):
        cluster(config, out, progress=killed)
    assert (out / UNFINISHED_NAME).is_file() and not (out / "manifest.json").exists()
    with pytest.raises(ArtefactError, match="unfinished output of `zutis cluster`"):  # other stages keep off it
        write_synth(SynthConfig("pile", 2, seed=1, size=32), out)
    kept = plan_cluster(config, out).work  # --dry-run
    assert kept["masks_already_embedded"] >= 10 and kept["masks_to_embed"] == first.masks - kept[
        "masks_already_embedded"]
    with pytest.raises(ArtefactError, match="`zutis cluster` results made with another margin; rerun with the same"):
        cluster(ClusterConfig(**(vars(config) | {"margin": 0.3})), out)
    logs, seen = [], []
    result = cluster(config, out, progress=lambda done, total: seen.append(total), log=logs.append)
    assert seen and seen[-1] == first.masks - kept["masks_already_embedded"]  # only the rest was embedded
    assert any(f"{kept['masks_already_embedded']} masks already embedded" in line for line in logs), logs
    # what an uninterrupted run clusters (its features rounded as stored; other batches, the same float16)
    assert np.abs(read_clusters(out).load_features().astype(np.float32) -
                  read_clusters(first.path).load_features().astype(np.float32)).max() <= 2e-3
    assert [m.cluster for m in read_clusters(out).masks] == [m.cluster for m in read_clusters(first.path).masks]
    assert result.purity == pytest.approx(first.purity)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["summary"]["resumed"] == kept["masks_already_embedded"]
    assert not (out / "parts").exists() and not (out / UNFINISHED_NAME).exists()
    with pytest.raises(ArtefactError, match="is a finished artefact"):
        cluster(config, out)
