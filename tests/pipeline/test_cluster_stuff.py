"""`zutis cluster --stuff-k`: the patches outside the masks of a pile drawn over named stuff, clustered
into stuff clusters far purer than chance, written with their centroids and contact sheets, the same
whatever --workers; bad input refused with nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from zutiscli.artefacts.clusters import read_clusters, stuff_names
from zutiscli.artefacts.manifest import read_manifest
from zutiscli.engine.stuff_features import StuffImage, cell_shares, stuff_samples
from zutiscli.errors import UsageError
from zutiscli.pipeline.cluster import ClusterConfig, cluster
from zutiscli.pipeline.synth import SynthConfig, write_synth

from helpers import unnamed_pseudolabels  # noqa: E402

FAST = dict(model="shapes-clip", pretrained="builtin", device="cpu", precision="fp32", contact=0, workers=0)


@pytest.fixture(scope="module")
def pile(tmp_path_factory):
    """40 pile images over named stuff and their true masks as unnamed pseudo-labels."""
    root = tmp_path_factory.mktemp("stuff")
    pile = write_synth(SynthConfig("pile", 40, seed=4, stuff=True), root / "pile")
    return {"root": root, "pseudo": unnamed_pseudolabels(root / "pseudo", pile),
            "gt": pile / "hidden" / "instances.json"}


@pytest.fixture(scope="module")
def first(pile):
    config = ClusterConfig(pseudolabels=str(pile["pseudo"]), k=3, stuff_k=6, ground_truth=str(pile["gt"]),
                           **(FAST | {"contact": 4}))
    return cluster(config, pile["root"] / "first")


def test_cell_shares_average_the_pixels_of_each_cell():
    mask = np.zeros((8, 8), bool)
    mask[:4, :2] = True
    np.testing.assert_allclose(cell_shares(mask, (2, 2)), [[0.5, 0.0], [0.0, 0.0]])


def test_stuff_clusters_are_far_purer_than_the_commonest_material(pile, first):
    stuff = first.stuff
    assert stuff is not None and stuff.k == 6 and stuff.layer == 2  # half of shapes-clip's 4 blocks
    read = read_clusters(first.path).stuff
    assert read.names == stuff_names(6) == ["stuff-00", "stuff-01", "stuff-02", "stuff-03", "stuff-04", "stuff-05"]
    assert sum(c.size for c in read.clusters) == read.samples == stuff.samples
    majority_shares = [c.share for c in read.clusters]
    assert all(s is not None for s in majority_shares)
    matched = sum(c.matched for c in read.clusters)
    commonest = max(sum(c.matched for c in read.clusters if c.majority == m) for m in {c.majority for c in read.clusters})
    assert first.stuff_purity >= 0.5 and first.stuff_purity >= commonest / matched + 0.15, first.stuff_purity
    assert first.stuff_nmi >= 0.3
    # stuff patches lie on stuff, not on the objects the masks cover
    assert {c.majority for c in read.clusters} <= {"sky", "grass", "water", "sand", "brick", "wood"}
    np.testing.assert_allclose(np.linalg.norm(read.centroids, axis=1), 1, atol=1e-5)
    summary = json.loads((first.path / "manifest.json").read_text())["summary"]["stuff"]
    assert summary["k"] == 6 and summary["patches"] == stuff.samples and summary["purity"] == pytest.approx(
        first.stuff_purity, abs=1e-6)
    for info in read.clusters:
        assert (first.path / info.contact).is_file() and info.contact.startswith("contact/stuff-")


def test_samples_leave_out_the_masks_and_are_capped_per_image(tmp_path):
    from PIL import Image

    from zutiscli.ops.masks import encode_masks

    image = np.full((32, 32, 3), 120, np.uint8)
    Image.fromarray(image).save(tmp_path / "a.png")
    mask = np.zeros((1, 32, 32), bool)
    mask[0, :16, :] = True  # the top half: cells of rows 0-1 on a 4 x 4 grid of 8 px patches
    rle = encode_masks(mask)[0]
    seen = []

    def encode(pixels):
        seen.append(tuple(pixels.shape))
        grid = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
        import torch

        return torch.from_numpy(np.concatenate([grid, np.ones_like(grid)], -1)).expand(len(pixels), -1, -1, -1)

    every = stuff_samples([StuffImage(tmp_path / "a.png", (rle,))], encode, patch=8, per_image=64)
    assert seen == [(1, 3, 32, 32)] and every.grids == [(4, 4)]
    assert every.cell.tolist() == list(range(8, 16))  # the bottom two rows only
    capped = stuff_samples([StuffImage(tmp_path / "a.png", (rle,))], encode, patch=8, per_image=3, seed=1)
    assert len(capped.cell) == 3 and set(capped.cell.tolist()) <= set(range(8, 16))
    again = stuff_samples([StuffImage(tmp_path / "a.png", (rle,))], encode, patch=8, per_image=3, seed=1)
    assert again.cell.tolist() == capped.cell.tolist()


def test_the_same_stuff_clusters_whatever_the_workers(pile, first, tmp_path):
    again = cluster(ClusterConfig(pseudolabels=str(pile["pseudo"]), k=3, stuff_k=6,
                                  **(FAST | {"workers": 3, "batch_size": 5})), tmp_path / "again")
    assert (again.path / "stuff_centroids.npy").read_bytes() == (first.path / "stuff_centroids.npy").read_bytes()
    assert [c.size for c in again.stuff.clusters] == [c.size for c in first.stuff.clusters]


@pytest.mark.parametrize("change, message", [
    (dict(stuff_k=1), "--stuff-k must be 0"),
    (dict(stuff_k=100000), "patches outside the masks"),
    (dict(stuff_k=4, stuff_layer=9), "--stuff-layer 9: the image tower has 4 blocks"),
    (dict(stuff_k=4, stuff_patches=0), "--stuff-patches must be >= 1"),
])
def test_bad_stuff_options_are_refused_and_leave_no_artefact(pile, tmp_path, change, message):
    with pytest.raises(UsageError, match=message):
        cluster(ClusterConfig(pseudolabels=str(pile["pseudo"]), k=3, **(FAST | change)), tmp_path / "out")
    if message.startswith("--stuff-k must") or message.startswith("--stuff-patches must"):
        assert not (tmp_path / "out").exists()  # refused by the options alone, before anything
    else:  # found once the masks are embedded: their features are kept for the rerun, the directory is no artefact
        assert not (tmp_path / "out" / "manifest.json").exists()
        done = cluster(ClusterConfig(pseudolabels=str(pile["pseudo"]), k=3, **FAST), tmp_path / "out")
        assert read_manifest(done.path).summary["resumed"] == done.masks


def test_features_from_reuses_the_stuff_clusters_of_the_same_options(pile, first, tmp_path, monkeypatch):
    import zutiscli.pipeline.cluster_stuff as step

    def refuse(*args, **kwargs):
        raise AssertionError("the stuff was computed again")

    monkeypatch.setattr(step, "find_stuff", refuse)
    again = cluster(ClusterConfig(pseudolabels=str(pile["pseudo"]), k=4, stuff_k=6, features_from=str(first.path),
                                  ground_truth=str(pile["gt"]), **{**FAST, "contact": 4, "model": None,
                                                                   "pretrained": None}), tmp_path / "again")
    assert (again.path / "stuff_centroids.npy").read_bytes() == (first.path / "stuff_centroids.npy").read_bytes()
    assert again.stuff_purity == pytest.approx(first.stuff_purity, abs=1e-6)
    for info in again.stuff.clusters:
        assert (again.path / info.contact).read_bytes() == (first.path / info.contact).read_bytes()
    # other stuff options: computed anew
    monkeypatch.undo()
    other = cluster(ClusterConfig(pseudolabels=str(pile["pseudo"]), k=4, stuff_k=5, features_from=str(first.path),
                                  **{**FAST, "model": None, "pretrained": None}), tmp_path / "other")
    assert other.stuff.k == 5 and all(info.contact is None for info in other.stuff.clusters)


class _Killed(Exception):
    """Stands for a kill in the middle of the stuff sampling."""


def test_a_run_killed_while_sampling_stuff_is_finished_by_the_rerun(pile, first, tmp_path, monkeypatch):
    import zutiscli.pipeline.cluster_parts as parts
    from zutiscli.errors import ArtefactError
    from zutiscli.pipeline.cluster import plan_cluster

    config = ClusterConfig(pseudolabels=str(pile["pseudo"]), k=3, stuff_k=6, chunk_size=10, batch_size=8, **FAST)
    commit = parts.StuffCommits.commit

    def killed_after_one_part(self):
        commit(self)
        raise _Killed

    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        patch.setattr(parts.StuffCommits, "commit", killed_after_one_part)
        with pytest.raises(_Killed):
            cluster(config, out)
    assert not (out / "manifest.json").exists() and (out / "stuff" / "parts" / "000000.jsonl").is_file()
    work = plan_cluster(config, out).work  # --dry-run
    sampled = work["stuff_images_already_sampled"]
    images = work["images_to_decode"]  # those with masks: the stuff is sampled around them
    assert 10 <= sampled < images and work["images_to_decode_for_stuff"] == images - sampled
    with pytest.raises(ArtefactError, match="made with another patches; rerun with the same"):
        cluster(ClusterConfig(**(vars(config) | {"stuff_patches": 7})), out)
    import zutiscli.engine.stuff_features as features

    logs, read = [], []
    read_image = features._Inputs.__getitem__
    monkeypatch.setattr(features._Inputs, "__getitem__", lambda self, n: read.append(n) or read_image(self, n))
    done = cluster(config, out, log=logs.append)
    assert any(f"stuff: {sampled} images already sampled" in line for line in logs), logs
    assert len(read) == images - sampled  # only the rest was decoded and embedded
    # the samples kept and the rest drawn give the uninterrupted run's clusters, to the byte
    assert (done.path / "stuff_centroids.npy").read_bytes() == (first.path / "stuff_centroids.npy").read_bytes()
    assert [c.size for c in done.stuff.clusters] == [c.size for c in first.stuff.clusters]
    assert not (out / "stuff").exists() and not (out / "parts").exists()
