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
    stuff_centroids.npy      (S, E) float32, unit rows: stuff cluster j's centroid (with --stuff-k)
    contact/stuff-XX.jpg     the images with most patches of stuff cluster j, the rest darkened

With ``zutis cluster --stuff-k S``, ``clusters.json`` also holds ``"stuff": {"k": S, "features":
"tokens", "layer": L, "dim": E, "model": {"name", "pretrained"}, "samples", "per_image", "cover",
"ground_truth": bool, "clusters": [{"cluster", "size", "majority", "share", "matched", "contact"},
...]}``: clusters of a frozen CLIP's patch tokens after ``L`` blocks, of the patches no mask covers
(:mod:`zutiscli.engine.stuff_features`), each a pseudo-class of stuff named ``stuff-XX``
(:func:`stuff_names`); ``size`` counts its patches, ``majority`` is the ground-truth label (thing
or stuff) most of them lie on.

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

from zutiscli.artefacts.atomic import atomic_path, atomic_write_json, atomic_write_npy
from zutiscli.artefacts.manifest import Manifest, read_manifest, relative_to, resolve_relative
from zutiscli.errors import ArtefactError

KIND = "zutis.clusters"
CLUSTERS_NAME = "clusters.json"
CENTROIDS_NAME = "centroids.npy"
STUFF_CENTROIDS_NAME = "stuff_centroids.npy"
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


@dataclass(frozen=True)
class StuffClusters:
    """The stuff clusters of a clusters directory.

    Attributes:
        k: number of stuff clusters.
        model: ``{"name", "pretrained"}`` of the CLIP whose patch tokens were clustered.
        layer: the blocks of its image tower run before the tokens were taken.
        clusters: one :class:`ClusterInfo` per stuff cluster (``size`` counts patches).
        centroids: ``(k, E)`` float32, unit rows.
        samples: patches clustered; ``per_image``: most drawn from one image; ``cover``: most of a
            patch under a mask.
    """

    k: int
    model: dict[str, str]
    layer: int
    clusters: list[ClusterInfo]
    centroids: np.ndarray
    samples: int
    per_image: int
    cover: float

    @property
    def names(self) -> list[str]:
        return stuff_names(self.k)


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
        stuff: the stuff clusters, or ``None`` (made without ``--stuff-k``).
    """

    path: Path
    manifest: Manifest
    k: int
    features: str
    masks: list[ClusteredMask]
    clusters: list[ClusterInfo]
    centroids: np.ndarray
    stuff: StuffClusters | None = None

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


def contact_name(cluster: int, k: int, prefix: str = "cluster") -> str:
    """``contact/cluster-XX.jpg`` (``contact/stuff-XX.jpg`` for ``prefix="stuff"``): the contact sheet
    of ``cluster``, numbered with as many digits as ``k - 1`` has (at least two), so the sheets sort
    in cluster order."""
    return f"{CONTACT_DIR}/{_number_name(prefix, cluster, k)}.jpg"


def write_contact_sheet(directory: str | Path, cluster: int, k: int, sheet: np.ndarray, prefix: str = "cluster"
                        ) -> str:
    """Write ``sheet`` (``(H, W, 3)`` uint8) as the cluster's JPEG atomically; returns its relative path."""
    from PIL import Image

    name = contact_name(cluster, k, prefix)
    with atomic_path(Path(directory) / name, fsync=False) as tmp:
        Image.fromarray(sheet).save(tmp, format="JPEG", quality=88)
    return name


def _info_record(c: ClusterInfo) -> dict[str, Any]:
    return {"cluster": c.cluster, "size": c.size, "majority": c.majority,
            "share": None if c.share is None else round(float(c.share), 6), "matched": c.matched, "contact": c.contact}


def write_clusters(directory: str | Path, *, features_kind: str, masks: list[ClusteredMask],
                   clusters: list[ClusterInfo], centroids: np.ndarray, features: np.ndarray,
                   ground_truth: bool, stuff: StuffClusters | None = None, stuff_truth: bool = False) -> None:
    """Write ``clusters.json``, ``centroids.npy`` and ``features.npy`` (and ``stuff_centroids.npy``
    with ``stuff``) atomically each; the manifest is the caller's, last.

    Args:
        directory: the clusters directory (image paths are written relative to it).
        features_kind: ``"clip"`` or ``"cls"``.
        masks: one per row of ``features``; ``image`` absolute or relative to the current directory.
        clusters: one per centroid, in order.
        centroids: ``(K, D)`` float, written as float32.
        features: ``(N, D)`` float, written as float16.
        ground_truth: whether ``truth`` and the majorities were computed.
        stuff: the stuff clusters, if any; ``stuff_truth``: whether their majorities were computed.
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
        "clusters": [_info_record(c) for c in clusters],
        "masks": [{"image": relative_to(directory, m.image), "annotation_id": m.annotation_id, "cluster": m.cluster,
                   "distance": round(float(m.distance), 6), "category": m.category, "truth": m.truth}
                  for m in masks],
    }
    if stuff is not None:
        stuff_centroids = np.asarray(stuff.centroids, dtype=np.float32)
        if stuff_centroids.shape[0] != stuff.k or len(stuff.clusters) != stuff.k:
            raise ValueError(f"{stuff.k} stuff clusters for {len(stuff.clusters)} infos and centroids of shape "
                             f"{stuff_centroids.shape}")
        document["stuff"] = {"k": stuff.k, "features": "tokens", "layer": stuff.layer,
                             "dim": int(stuff_centroids.shape[1]),
                             "model": dict(stuff.model), "samples": stuff.samples, "per_image": stuff.per_image,
                             "cover": stuff.cover, "ground_truth": stuff_truth,
                             "clusters": [_info_record(c) for c in stuff.clusters]}
        atomic_write_npy(directory / STUFF_CENTROIDS_NAME, stuff_centroids)
    atomic_write_npy(directory / CENTROIDS_NAME, centroids)
    atomic_write_npy(directory / FEATURES_NAME, features)
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
    clusters = _infos(file, "clusters", entries)
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
    centroids = _load_centroids(root / CENTROIDS_NAME, k, dim)
    stuff = _read_stuff(root, file, data.get("stuff"))
    return Clusters(root, manifest, k, kind, masks, clusters, centroids, stuff)


def _infos(file: Path, where: str, entries: list[Any]) -> list[ClusterInfo]:
    infos = []
    for position, entry in enumerate(entries):
        at = f"{where}[{position}]"
        share = _field(file, at, entry, "share", (int, float), nullable=True)
        infos.append(ClusterInfo(
            cluster=_field(file, at, entry, "cluster", (int,)), size=_field(file, at, entry, "size", (int,)),
            majority=_field(file, at, entry, "majority", (str,), nullable=True),
            share=None if share is None else float(share),
            matched=_field(file, at, entry, "matched", (int,)),
            contact=_field(file, at, entry, "contact", (str,), nullable=True)))
    return infos


def _load_centroids(file: Path, k: int, dim: int) -> np.ndarray:
    try:
        centroids = np.load(file, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ArtefactError(f"{file}: cannot be read ({exc}); {_REMEDY}") from None
    if centroids.dtype != np.float32 or centroids.shape != (k, dim):
        raise ArtefactError(f"{file}: holds {centroids.dtype} {centroids.shape}, not float32 ({k}, {dim}); {_REMEDY}")
    return centroids


def _read_stuff(root: Path, file: Path, record: Any) -> StuffClusters | None:
    """The ``"stuff"`` section of ``clusters.json`` (``None`` when absent) with its centroids."""
    if record is None:
        return None
    where = "stuff"
    k = _field(file, where, record, "k", (int,))
    dim = _field(file, where, record, "dim", (int,))
    model = record.get("model") if isinstance(record, dict) else None
    if not isinstance(model, dict) or not all(isinstance(model.get(key), str) for key in ("name", "pretrained")):
        raise ArtefactError(f"{file}: stuff: field 'model' is {model!r}, not {{'name', 'pretrained'}}; {_REMEDY}")
    entries = record.get("clusters")
    if not isinstance(entries, list) or k < 1 or len(entries) != k:
        raise ArtefactError(f"{file}: stuff: field 'k' is {k} but {entries if not isinstance(entries, list) else len(entries)} "
                            f"clusters are listed; {_REMEDY}")
    return StuffClusters(k, {"name": model["name"], "pretrained": model["pretrained"]},
                         _field(file, where, record, "layer", (int,)),
                         _infos(file, "stuff.clusters", entries),
                         _load_centroids(root / STUFF_CENTROIDS_NAME, k, dim),
                         _field(file, where, record, "samples", (int,)), _field(file, where, record, "per_image", (int,)),
                         float(_field(file, where, record, "cover", (int, float))))


def cluster_names(k: int) -> list[str]:
    """The class names of ``k`` clusters when they are trained on and predicted: ``cluster-00`` ...
    (as many digits as ``k - 1`` needs, at least two), the order of the cluster ids."""
    return _numbered("cluster", k)


def stuff_names(k: int) -> list[str]:
    """The class names of ``k`` stuff clusters: ``stuff-00`` ... (as many digits as ``k - 1`` needs,
    at least two), the order of the stuff cluster ids."""
    return _numbered("stuff", k)


def _numbered(prefix: str, k: int) -> list[str]:
    return [_number_name(prefix, number, k) for number in range(k)]


def _number_name(prefix: str, number: int, k: int) -> str:
    """``prefix-XX``: ``number`` with as many digits as ``k - 1`` has (at least two)."""
    return f"{prefix}-{number:0{max(2, len(str(max(0, k - 1))))}d}"


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
