"""The clusters artefact: written, moved and read back whole; wrong kinds and damaged files refused."""

import json
import shutil

import numpy as np
import pytest

from zutiscli.artefacts.clusters import (
    CENTROIDS_NAME,
    CLUSTERS_NAME,
    FEATURES_NAME,
    KIND,
    ClusteredMask,
    ClusterInfo,
    contact_name,
    read_clusters,
    write_clusters,
)
from zutiscli.artefacts.manifest import write_manifest
from zutiscli.errors import ArtefactError


def _write(root):
    """A two-cluster artefact of three masks in ``root/clusters``, its images in ``root/images``."""
    out = root / "clusters"
    out.mkdir(parents=True)
    masks = [ClusteredMask(root / "images" / "a.png", 1, 0, 0.125, "object", "cat"),
             ClusteredMask(root / "images" / "a.png", 2, 1, 0.0, "object", None),
             ClusteredMask(root / "images" / "b.png", 7, 0, 0.5)]
    clusters = [ClusterInfo(0, 2, "cat", 1.0, 1, contact_name(0, 2)), ClusterInfo(1, 1, None, None, 0, None)]
    centroids = np.array([[1, 0, 0], [0, 1, 0]], dtype=np.float32)
    features = np.array([[1, 0, 0], [0, 1, 0], [0.6, 0.8, 0]], dtype=np.float32)
    write_clusters(out, features_kind="clip", masks=masks, clusters=clusters, centroids=centroids,
                   features=features, ground_truth=True)
    write_manifest(out, KIND, params={"features": "clip"}, summary={"k": 2, "masks": 3})
    return out, masks, clusters, centroids, features


def test_round_trip_and_relative_paths(tmp_path):
    out, masks, clusters, centroids, features = _write(tmp_path / "first")
    document = json.loads((out / CLUSTERS_NAME).read_text())
    assert document["masks"][0]["image"] == "../images/a.png"  # relative to the artefact
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "first", moved)
    shutil.rmtree(tmp_path / "first")
    read = read_clusters(moved / "clusters")
    assert read.k == 2 and read.features == "clip" and read.clusters == clusters
    assert [m.image for m in read.masks] == [moved / "images" / "a.png"] * 2 + [moved / "images" / "b.png"]
    assert [(m.annotation_id, m.cluster, m.distance, m.category, m.truth) for m in read.masks] == \
        [(m.annotation_id, m.cluster, m.distance, m.category, m.truth) for m in masks]
    np.testing.assert_array_equal(read.assignment, [0, 1, 0])
    np.testing.assert_array_equal(read.centroids, centroids)
    loaded = read.load_features()
    assert loaded.dtype == np.float16 and loaded.shape == (3, 3)
    np.testing.assert_array_equal(loaded, features.astype(np.float16))


def test_contact_names_sort_in_cluster_order():
    assert contact_name(3, 10) == "contact/cluster-03.jpg"
    assert contact_name(7, 800) == "contact/cluster-007.jpg"


def test_a_wrong_kind_or_an_unfinished_directory_is_refused(tmp_path):
    other = tmp_path / "pseudo"
    other.mkdir()
    write_manifest(other, "zutis.pseudolabels", params={"method": "x"}, summary={"images": 0, "masks": 0})
    with pytest.raises(ArtefactError, match=r"is a zutis.pseudolabels artefact; expected a zutis.clusters .*"
                                            r"`zutis cluster`"):
        read_clusters(other)
    out, *_ = _write(tmp_path / "unfinished")
    (out / "manifest.json").unlink()
    with pytest.raises(ArtefactError, match="not a finished zutis artefact"):
        read_clusters(out)


@pytest.mark.parametrize("damage, message", [
    (lambda d: d["masks"][1].update(cluster=2), r"masks\[1\]: field 'cluster' is 2, not in \[0, 2\)"),
    (lambda d: d["masks"][0].update(annotation_id="1"), r"masks\[0\]: field 'annotation_id' is '1'"),
    (lambda d: d.update(k=3), "field 'k' is 3 but 2 clusters are listed"),
    (lambda d: d.pop("masks"), "must be lists"),
])
def test_damaged_clusters_json_names_the_file_and_field(tmp_path, damage, message):
    out, *_ = _write(tmp_path)
    data = json.loads((out / CLUSTERS_NAME).read_text())
    damage(data)
    (out / CLUSTERS_NAME).write_text(json.dumps(data))
    with pytest.raises(ArtefactError, match=f"{CLUSTERS_NAME}: .*{message}"):
        read_clusters(out)


def test_arrays_that_do_not_fit_are_refused(tmp_path):
    out, *_ = _write(tmp_path)
    np.save(out / FEATURES_NAME, np.zeros((2, 3), np.float16))
    with pytest.raises(ArtefactError, match=f"{FEATURES_NAME}: holds float16 \\(2, 3\\), not float16 \\(3, 3\\)"):
        read_clusters(out).load_features()
    np.save(out / CENTROIDS_NAME, np.zeros((2, 4), np.float32))
    with pytest.raises(ArtefactError, match=f"{CENTROIDS_NAME}: holds float32 \\(2, 4\\)"):
        read_clusters(out)
