"""The clusters artefact (kind ``zutis.clusters``): the masks of a pseudo-label directory grouped into
pseudo-classes, what ``zutis cluster`` writes.

Layout::

    manifest.json    kind zutis.clusters; model; inputs (the pseudo-label directory, the ground
                     truth); params; summary {"k", "masks", "sizes", "failed", and with ground truth
                     "purity", "nmi", "matched"}
    clusters.json    {"k": K, "features": "clip" | "cls", "dim": D, "ground_truth": bool,
                      "clusters": [{"cluster", "size", "majority", "share", "matched", "contact"}, ...],
                      "masks": [{"image", "annotation_id", "cluster", "distance", "category",
                                 "truth"}, ...]}
    centroids.npy    (K, D) float32, unit rows: cluster i's centroid
    features.npy     (N, D) float16, row n the feature of masks[n] (unit length before rounding)
    contact/cluster-XX.jpg   the masks nearest each centroid, masked crops tiled

Per mask: ``image`` is its image's path relative to this directory, ``annotation_id`` the id of its
annotation in the pseudo-labels' ``pseudolabels.json``, ``cluster`` in ``[0, K)``, ``distance`` its
cosine distance ``1 - cos`` to its centroid, ``category`` the pseudo-labels' category of the mask
(an archive's class, or "object"), ``truth`` the ground-truth class it was matched to (``null``
when unmatched or without ground truth). Per cluster: ``majority`` and ``share`` are its most
frequent ground-truth class among its ``matched`` masks (``null`` without), ``contact`` its
contact sheet's path (``null`` when none was drawn). Masks are in the pseudo-labels' annotation
order; those whose image could not be read are left out (counted in ``summary.failed``).

Every file is written atomically and the manifest last: a directory without one is unfinished.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from zutiscli.artefacts.atomic import atomic_path, atomic_write_json
from zutiscli.artefacts.manifest import Manifest, read_manifest, relative_to, resolve_relative
from zutiscli.errors import ArtefactError

KIND = "zutis.clusters"
CLUSTERS_NAME = "clusters.json"
CENTROIDS_NAME = "centroids.npy"
FEATURES_NAME = "features.npy"
CONTACT_DIR = "contact"

_REMEDY = "the clusters are damaged: make them again with `zutis cluster` into a new -o directory"


@dataclass(frozen=True)
class ClusteredMask:
    """One mask's place: its image (absolute path once read), annotation id, cluster, distance,
    pseudo-label category, and matched ground-truth class (or ``None``)."""

    image: Path
    annotation_id: int
    cluster: int
    distance: float
    category: str | None = None
    truth: str | None = None


@dataclass(frozen=True)
class ClusterInfo:
    """One cluster: its id, size, majority ground-truth class and share among its ``matched`` masks
    (``None`` without ground truth), and its contact sheet (path relative to the directory, or ``None``)."""

    cluster: int
    size: int
    majority: str | None = None
    share: float | None = None
    matched: int = 0
    contact: str | None = None


@dataclass
class Clusters:
    """A read ``zutis.clusters`` directory.

    Attributes:
        path: the directory.
        manifest: its manifest.
        k: number of clusters.
        features: what the features are (``"clip"`` or ``"cls"``).
        masks: the clustered masks, in the order of the rows of ``features.npy``.
        clusters: one :class:`ClusterInfo` per cluster, in cluster order.
        centroids: ``(k, D)`` float32.
    """

    path: Path
    manifest: Manifest
    k: int
    features: str
    masks: list[ClusteredMask]
    clusters: list[ClusterInfo]
    centroids: np.ndarray

    @property
    def assignment(self) -> np.ndarray:
        """``(N,)`` int64: the cluster of each mask."""
        return np.array([mask.cluster for mask in self.masks], dtype=np.int64)

    def load_features(self) -> np.ndarray:
        """``(N, D)`` float16 features, row ``n`` of ``masks[n]``; :class:`ArtefactError` naming the
        file when it is missing or does not fit the masks and centroids."""
        file = self.path / FEATURES_NAME
        try:
            features = np.load(file, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ArtefactError(f"{file}: cannot be read ({exc}); {_REMEDY}") from None
        expected = (len(self.masks), self.centroids.shape[1])
        if features.dtype != np.float16 or features.shape != expected:
            raise ArtefactError(f"{file}: holds {features.dtype} {features.shape}, not float16 {expected} (one row per "
                                f"mask of {CLUSTERS_NAME}); {_REMEDY}")
        return features


def contact_name(cluster: int, k: int) -> str:
    """``contact/cluster-XX.jpg``: the contact sheet of ``cluster``, numbered with as many digits as
    ``k - 1`` has (at least two), so the sheets sort in cluster order."""
    digits = max(2, len(str(max(k - 1, 0))))
    return f"{CONTACT_DIR}/cluster-{cluster:0{digits}d}.jpg"


def write_contact_sheet(directory: str | Path, cluster: int, k: int, sheet: np.ndarray) -> str:
    """Write ``sheet`` (``(H, W, 3)`` uint8) as the cluster's JPEG atomically; returns its relative path."""
    from PIL import Image

    name = contact_name(cluster, k)
    with atomic_path(Path(directory) / name, fsync=False) as tmp:
        Image.fromarray(sheet).save(tmp, format="JPEG", quality=88)
    return name


def _save_array(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, array, allow_pickle=False)


def write_clusters(directory: str | Path, *, features_kind: str, masks: list[ClusteredMask],
                   clusters: list[ClusterInfo], centroids: np.ndarray, features: np.ndarray,
                   ground_truth: bool) -> None:
    """Write ``clusters.json``, ``centroids.npy`` and ``features.npy`` (atomic each); the manifest is
    the caller's, last.

    Args:
        directory: the clusters directory (image paths are written relative to it).
        features_kind: ``"clip"`` or ``"cls"``.
        masks: one per row of ``features``; ``image`` absolute or relative to the current directory.
        clusters: one per centroid, in order.
        centroids: ``(K, D)`` float, written as float32.
        features: ``(N, D)`` float, written as float16.
        ground_truth: whether ``truth`` and the majorities were computed.
    """
    directory = Path(directory)
    centroids = np.asarray(centroids, dtype=np.float32)
    features = np.asarray(features, dtype=np.float16)
    if centroids.ndim != 2 or len(clusters) != len(centroids):
        raise ValueError(f"{len(clusters)} clusters for centroids of shape {centroids.shape}")
    if features.shape != (len(masks), centroids.shape[1]):
        raise ValueError(f"features {features.shape} do not fit {len(masks)} masks of dimension {centroids.shape[1]}")
    document = {
        "k": len(clusters), "features": features_kind, "dim": int(centroids.shape[1]), "ground_truth": ground_truth,
        "clusters": [{"cluster": c.cluster, "size": c.size, "majority": c.majority,
                      "share": None if c.share is None else round(float(c.share), 6), "matched": c.matched,
                      "contact": c.contact} for c in clusters],
        "masks": [{"image": relative_to(directory, m.image), "annotation_id": m.annotation_id, "cluster": m.cluster,
                   "distance": round(float(m.distance), 6), "category": m.category, "truth": m.truth}
                  for m in masks],
    }
    _save_array(directory / CENTROIDS_NAME, centroids)
    _save_array(directory / FEATURES_NAME, features)
    atomic_write_json(directory / CLUSTERS_NAME, document, indent=None)


def _field(file: Path, where: str, record: Any, name: str, kinds: tuple[type, ...], nullable: bool = False) -> Any:
    value = record.get(name) if isinstance(record, dict) else None
    if value is None and nullable:
        return None
    if not isinstance(value, kinds) or isinstance(value, bool):
        expected = " or ".join(k.__name__ for k in kinds)
        raise ArtefactError(f"{file}: {where}: field {name!r} is {value!r}, not {expected}; {_REMEDY}")
    return value


def read_clusters(directory: str | Path) -> Clusters:
    """Read a finished ``zutis.clusters`` directory (features are read on demand:
    :meth:`Clusters.load_features`).

    Raises :class:`ArtefactError`, naming the file (and the record and field), when the directory
    is not a clusters artefact, or its files are missing, malformed or do not fit each other.
    """
    manifest = read_manifest(directory, KIND)
    root = Path(manifest.root or directory)
    file = root / CLUSTERS_NAME
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtefactError(f"{file}: no such file; {_REMEDY}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtefactError(f"{file}: cannot be read as JSON ({exc}); {_REMEDY}") from None
    if not isinstance(data, dict):
        raise ArtefactError(f"{file}: is not a clusters document (top level is not an object); {_REMEDY}")
    k = _field(file, "top level", data, "k", (int,))
    kind = _field(file, "top level", data, "features", (str,))
    dim = _field(file, "top level", data, "dim", (int,))
    entries, rows = data.get("clusters"), data.get("masks")
    if not isinstance(entries, list) or not isinstance(rows, list):
        raise ArtefactError(f"{file}: fields 'clusters' and 'masks' must be lists; {_REMEDY}")
    if k < 1 or len(entries) != k:
        raise ArtefactError(f"{file}: field 'k' is {k} but {len(entries)} clusters are listed; {_REMEDY}")
    clusters = []
    for position, entry in enumerate(entries):
        where = f"clusters[{position}]"
        share = _field(file, where, entry, "share", (int, float), nullable=True)
        clusters.append(ClusterInfo(
            cluster=_field(file, where, entry, "cluster", (int,)), size=_field(file, where, entry, "size", (int,)),
            majority=_field(file, where, entry, "majority", (str,), nullable=True),
            share=None if share is None else float(share),
            matched=_field(file, where, entry, "matched", (int,)),
            contact=_field(file, where, entry, "contact", (str,), nullable=True)))
    masks = []
    for position, row in enumerate(rows):
        where = f"masks[{position}]"
        cluster = _field(file, where, row, "cluster", (int,))
        if not 0 <= cluster < k:
            raise ArtefactError(f"{file}: {where}: field 'cluster' is {cluster}, not in [0, {k}); {_REMEDY}")
        masks.append(ClusteredMask(
            image=resolve_relative(root, _field(file, where, row, "image", (str,))),
            annotation_id=_field(file, where, row, "annotation_id", (int,)), cluster=cluster,
            distance=float(_field(file, where, row, "distance", (int, float))),
            category=_field(file, where, row, "category", (str,), nullable=True),
            truth=_field(file, where, row, "truth", (str,), nullable=True)))
    centroids_file = root / CENTROIDS_NAME
    try:
        centroids = np.load(centroids_file, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ArtefactError(f"{centroids_file}: cannot be read ({exc}); {_REMEDY}") from None
    if centroids.dtype != np.float32 or centroids.shape != (k, dim):
        raise ArtefactError(f"{centroids_file}: holds {centroids.dtype} {centroids.shape}, not float32 ({k}, {dim}); "
                            f"{_REMEDY}")
    return Clusters(root, manifest, k, kind, masks, clusters, centroids)


def cluster_names(k: int) -> list[str]:
    """The class names of ``k`` clusters when they are trained on and predicted: ``cluster-00`` ...
    (as many digits as ``k - 1`` needs, at least two), the order of the cluster ids."""
    digits = max(2, len(str(max(0, k - 1))))
    return [f"cluster-{number:0{digits}d}" for number in range(k)]


def cluster_labels(clusters: Clusters):
    """The clustered masks as pseudo-labels whose classes are the clusters (:func:`cluster_names`):
    the masks of the pseudo-label directory the clusters were made from, each of class its
    cluster; masks left out of the clusters (unreadable images) are left out here too.

    Returns :class:`zutiscli.artefacts.pseudolabels.PseudoLabels` (``directory`` the pseudo-labels').
    Raises :class:`ArtefactError` when that directory is gone or its masks no longer match.
    """
    from zutiscli.artefacts.pseudolabels import PseudoLabels, load_pseudolabels

    sources = [ref for ref in clusters.manifest.inputs if ref.kind == "zutis.pseudolabels"]
    if not sources:
        raise ArtefactError(f"{clusters.path / 'manifest.json'}: names no pseudo-label directory among its inputs; "
                            f"{_REMEDY}")
    pseudo = resolve_relative(clusters.path, sources[0].path)
    labels = load_pseudolabels(pseudo)
    cluster_of = {mask.annotation_id: mask.cluster for mask in clusters.masks}
    objects = [replace(obj, class_index=cluster_of[obj.annotation_id]) for obj in labels.objects
               if obj.annotation_id in cluster_of]
    if len(objects) != len(cluster_of):
        raise ArtefactError(f"{pseudo}: holds other masks than {clusters.path} clustered ({len(objects)} of "
                            f"{len(cluster_of)} found); cluster these pseudo-labels again")
    return PseudoLabels(labels.directory, labels.manifest, cluster_names(clusters.k), objects)
