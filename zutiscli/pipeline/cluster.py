"""`zutis cluster`: the masks of a pseudo-label directory grouped into ``k`` pseudo-classes.

MaskDistill (Van Gansbeke et al. 2022) and U2Seg (Niu et al. 2024) name class-agnostic object masks
by clustering: one feature per mask, k-means over all of them, each cluster a pseudo-class. Here:

1. each mask's feature (:mod:`zutiscli.engine.mask_features`), L2-normalised: ``clip`` (default)
   = the CLIP image embedding of a square crop around the mask, the outside painted in the model's
   mean colour (zeros after its normalisation); ``cls`` = a ViT's [CLS] token of the whole image,
   the outside of the mask painted the same way (MaskDistill's masked image);
2. the features rounded to float16 (as ``features.npy`` stores them) and renormalised, so that
   ``--features-from`` clusters exactly what a first run clustered;
3. spherical k-means (:func:`zutiscli.ops.kmeans.spherical_kmeans`, faiss): per mask its cluster
   and cosine distance to the centroid; the same seed gives the same clusters, whatever
   ``--workers`` and the machine's cores;
4. with ``--ground-truth``, each mask's class (:mod:`zutiscli.engine.mask_truth`) and the
   clusters' purity and NMI (:mod:`zutiscli.ops.cluster_quality`).

The categories of the pseudo-labels (archive classes, or the single "object" of an unnamed pile)
play no part in the clustering; they are recorded per mask for reporting.

Writes a ``zutis.clusters`` directory (:mod:`zutiscli.artefacts.clusters`), created once the
inputs and options are checked. The embedding is resumable: the masks' features (and with
``--stuff-k`` the stuff samples) are committed as they come (:mod:`zutiscli.pipeline.cluster_parts`),
and a rerun of the same command into a killed run's directory embeds only the rest (with other
settings it is refused, naming the setting).
Until the manifest is written, last, the directory is marked unfinished: readers refuse it.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from zutiscli.artefacts.clusters import KIND, ClusteredMask, ClusterInfo
from zutiscli.artefacts.lock import holding_locks
from zutiscli.artefacts.manifest import MANIFEST_NAME
from zutiscli.artefacts.parts import PARTS_DIR
from zutiscli.errors import ArtefactError, UsageError, ZutisError
from zutiscli.pipeline.archive_models import given_model, named_by_manifest
from zutiscli.pipeline.cluster_config import DEFAULT_FEATURES, MATCH_IOU, ClusterConfig
from zutiscli.pipeline.cluster_parts import STUFF_DIR
from zutiscli.pipeline.cluster_steps import check_k, cluster_quality, decode_workers

__all__ = ["ClusterConfig", "ClusterResult", "cluster", "plan_cluster"]

Log = Callable[[str], None]

#: Input side of a model that does not say its own (timm ViTs).
FALLBACK_SIZE = 224
#: Side of a contact sheet's tiles, pixels.
TILE = 96


@dataclass
class ClusterResult:
    """What a run wrote: the directory, the clusters, masks clustered, images that could not be read,
    and with ground truth the purity, NMI and the number of masks matched to an instance."""

    path: Path
    k: int
    masks: int
    features: str
    clusters: list[ClusterInfo]
    failed: list[tuple[str, str]] = field(default_factory=list)
    purity: float | None = None
    nmi: float | None = None
    matched: int | None = None
    seconds: float = 0.0
    stuff: Any = None  # zutiscli.artefacts.clusters.StuffClusters, with --stuff-k
    stuff_purity: float | None = None
    stuff_nmi: float | None = None


# ---- inputs -----------------------------------------------------------------------------------
def _pseudolabels(config: ClusterConfig) -> Any:
    """The pseudo-labels, refused when they hold no mask or fewer than ``k``."""
    from zutiscli.artefacts.pseudolabels import PSEUDOLABELS_NAME, load_pseudolabels

    directory = Path(config.pseudolabels)
    labels = load_pseudolabels(directory)
    if not labels.objects:
        raise ZutisError(f"{directory / PSEUDOLABELS_NAME}: holds no masks, so there is nothing to cluster; "
                         f"pseudo-label images in which objects are found first (zutis pseudolabel)")
    check_k(config.k, len(labels.objects), directory / PSEUDOLABELS_NAME)
    return labels


def _embedding_model(config: ClusterConfig, labels: Any, kind: str) -> tuple[str, str]:
    """``(name, pretrained)`` of the model that embeds the masks: ``--model``, else the pseudo-labels'."""
    from zutiscli.models.timm_vit import is_timm_name

    manifest = labels.directory / MANIFEST_NAME
    if config.model:
        if kind == "clip" and is_timm_name(config.model):
            raise UsageError(f"--model {config.model}: a timm ViT has no CLIP image embedding; give a CLIP model or "
                             f"--features cls")
        return given_model(config.model, config.pretrained)
    recorded = dict(labels.manifest.model or {})
    name = recorded.get("name")
    if not isinstance(name, str) or not name:
        raise UsageError(f"{manifest}: records no model that embeds images (field 'model.name'), so the masks' "
                         f"features need one: give --model and --pretrained (e.g. --model ViT-B-16 --pretrained "
                         f"openai)")
    if kind == "clip" and is_timm_name(name):
        raise UsageError(f"{manifest}: the pseudo-labels' model {name} is a timm ViT, not a CLIP; give --model "
                         f"(e.g. ViT-B-16 --pretrained openai) or --features cls")
    return name, config.pretrained or str(recorded.get("pretrained", "none"))


def _feature_source(config: ClusterConfig, labels: Any) -> Any:
    """The earlier clusters directory of ``--features-from``, checked to hold features of these pseudo-labels."""
    from zutiscli.artefacts.clusters import read_clusters
    from zutiscli.artefacts.manifest import fingerprint

    source = read_clusters(config.features_from)
    ours = fingerprint(labels.directory)
    made_from = [ref for ref in source.manifest.inputs if ref.kind == "zutis.pseudolabels"]
    if not made_from or made_from[0].fingerprint != ours:
        raise ArtefactError(f"--features-from {config.features_from}: its features are of other pseudo-labels "
                         f"({made_from[0].path if made_from else 'none recorded'}), not of {labels.directory}; give a "
                         f"clusters directory made from {labels.directory}")
    if config.features is not None and config.features != source.features:
        raise UsageError(f"--features {config.features}: --features-from {config.features_from} holds "
                         f"{source.features} features; leave out --features or embed the masks again")
    return source


def _input_size(backbone: Any, kind: str, config: ClusterConfig) -> int:
    """The side of the views: CLIP's own input for clip features; ``--size`` or the model's for cls."""
    own = getattr(backbone, "image_size", None)
    if own is None:
        img_size = getattr(getattr(getattr(backbone, "model", None), "patch_embed", None), "img_size", None)
        own = img_size if img_size is not None else (FALLBACK_SIZE, FALLBACK_SIZE)
    own_side = int(own[0]) if isinstance(own, (tuple, list)) else int(own)
    if kind == "clip":
        if config.size is not None and config.size != own_side:
            raise UsageError(f"--size {config.size}: CLIP's image embedding takes its own input size ({own_side} px); "
                             f"--size sets the input of --features cls")
        return own_side
    size = config.size or own_side
    patch = int(getattr(backbone, "patch_size", 1) or 1)
    return max(patch, size // patch * patch)


# ---- features -----------------------------------------------------------------------------------
@dataclass
class _Embedder:
    """The model that embeds the masks, loaded: ``encode`` views -> features, its manifest ``record``,
    the views' ``settings`` (size, margin, fill) and its ``name``."""

    encode: Callable[[Any], Any]
    record: dict[str, Any]
    settings: dict[str, Any]
    name: str


def _embedder(config: ClusterConfig, labels: Any, kind: str) -> _Embedder:
    """Load the model that embeds the masks (``--model``, else the pseudo-labels') and check that it
    gives the feature before any image is decoded."""
    import torch

    from zutiscli.models.backbones import describe_backbone, load_dense_backbone
    from zutiscli.models.device import resolve_device, resolve_precision

    name, pretrained = _embedding_model(config, labels, kind)
    device = resolve_device(config.device)
    dtype = resolve_precision(config.precision, device)
    with named_by_manifest(config.model, config.pretrained, labels.directory):
        if kind == "clip":
            from zutiscli.models.clip import ModelSpec, load_backbone

            backbone = load_backbone(ModelSpec(name, pretrained), device=device, dtype=dtype)
        else:
            backbone = load_dense_backbone(name, pretrained, device=device, dtype=dtype)
    size = _input_size(backbone, kind, config)

    def encode(pixels: torch.Tensor) -> torch.Tensor:
        pixels = backbone.normalise(pixels.to(device))
        return backbone.encode_images(pixels) if kind == "clip" else backbone.cls_tokens(pixels)

    with torch.no_grad():
        encode(torch.zeros(1, 3, size, size))  # a model that cannot give the feature says so before any decoding
    fill = [float(v) for v in backbone.mean]
    return _Embedder(encode, describe_backbone(name, pretrained),
                     {"size": size, "margin": config.margin, "fill": [round(v, 6) for v in fill]}, name)


def _embed(config: ClusterConfig, labels: Any, kind: str, embedder: _Embedder, out: Path, say: Log,
           progress: Callable[[int, int], None] | None) -> tuple[Any, int]:
    """Embed every mask not committed by an interrupted run into ``out`` with ``embedder``,
    committing as it goes: ``(MaskFeatures of all the masks, masks reused)``."""
    from zutiscli.artefacts.lock import restart_unfinished
    from zutiscli.artefacts.manifest import fingerprint
    from zutiscli.artefacts.parts import PARTS_DIR, record_run
    from zutiscli.engine.mask_features import MaskFeatures, embed_masks, group_by_image
    from zutiscli.pipeline.cluster_parts import FeatureCommits, committed_features

    identity = {"model": embedder.record, "params": {"pseudolabels": fingerprint(labels.directory), "features": kind,
                                                     **embedder.settings, "precision": config.precision}}
    objects = labels.objects
    position_of = {obj.annotation_id: position for position, obj in enumerate(objects)}
    committed = committed_features(out, identity, position_of)
    if not committed:
        restart_unfinished(out)  # what a killed run left before its first commit (the lock and mark stay)
    (out / PARTS_DIR).mkdir(exist_ok=True)
    record_run(out, identity)
    groups = group_by_image([obj.image for obj in objects], [obj.rle for obj in objects])
    todo = [group for group in groups if any(position not in committed for position in group.positions)]
    if committed:
        say(f"{len(committed)} masks already embedded by an interrupted run into {out}")
    say(f"embedding {sum(len(g.positions) for g in todo)} masks of {len(todo)} images ({kind} features of "
        f"{embedder.name}, {embedder.settings['size']} px)")
    commits = FeatureCommits(out, todo, [obj.annotation_id for obj in objects], config.chunk_size)
    found = embed_masks(todo, embedder.encode, size=embedder.settings["size"], view="crop" if kind == "clip" else
                        "image", fill=embedder.settings["fill"], margin=config.margin, batch_size=config.batch_size,
                        workers=decode_workers(config), progress=progress, embedded=commits)
    commits.commit()  # the last masks too: what fails after the embedding (k-means, stuff) keeps them all
    if committed:
        positions = np.array(sorted(set(committed) | set(found.positions.tolist())), dtype=np.int64)
        new = {int(p): row for p, row in zip(found.positions, found.features)}
        features = np.stack([committed[p] if p in committed else new[p] for p in positions.tolist()])
        found = MaskFeatures(features, positions, found.failed)
    return found, len(committed)


def _view_settings(params: dict[str, Any]) -> dict[str, Any]:
    """``{size, margin, fill}`` of an earlier run's manifest params (what its contact sheets reuse);
    values of the wrong type fall back to None, 0.2 and grey."""
    size, margin, fill = params.get("size"), params.get("margin"), params.get("fill")
    good_fill = isinstance(fill, list) and len(fill) == 3 and all(isinstance(v, (int, float)) for v in fill)
    return {"size": size if isinstance(size, int) else None,
            "margin": float(margin) if isinstance(margin, (int, float)) and margin >= 0 else 0.2,
            "fill": [float(v) for v in fill] if good_fill else [0.5, 0.5, 0.5]}


def _rounded(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(float16 features as stored, the float32 unit vectors clustered)``: the stored values
    renormalised, so a rerun from ``features.npy`` clusters the very same vectors."""
    stored = np.asarray(features).astype(np.float16)
    vectors = stored.astype(np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return stored, vectors / np.where(norms > 0, norms, 1)


# ---- the output directory ----------------------------------------------------------------------
def _check_output(output: str | Path | None) -> tuple[Path, str]:
    """Where the clusters would go and its state, creating nothing: an existing directory must be
    what a killed run of ``zutis cluster`` left (to be resumed); a finished one, or one holding
    anything else, is refused (:func:`zutiscli.artefacts.rundir.check_resumable_dir`)."""
    from zutiscli.artefacts.clusters import (CENTROIDS_NAME, CLUSTERS_NAME, CONTACT_DIR, FEATURES_NAME,
                                             STUFF_CENTROIDS_NAME)
    from zutiscli.artefacts.rundir import check_resumable_dir

    own = {PARTS_DIR, STUFF_DIR, CLUSTERS_NAME, CENTROIDS_NAME, STUFF_CENTROIDS_NAME, FEATURES_NAME, CONTACT_DIR}
    return check_resumable_dir(output, "cluster", own, "clusters")


def _open_output(output: str | Path | None) -> Path:
    """The run's directory (:func:`_check_output`), created and locked, marked unfinished until the
    manifest is written."""
    from zutiscli.artefacts.rundir import prepare_output_dir

    _check_output(output)
    return prepare_output_dir(output, "cluster", resumable=True, mark=True)


def _committed_stuff_images(out: Path) -> int:
    """Images whose stuff samples an interrupted run into ``out`` committed (settings not checked: a dry run's count)."""
    from zutiscli.artefacts.parts import iter_parts

    return sum(len(rows) for _, rows in iter_parts(out / STUFF_DIR, "stuff-samples row"))


def _committed_masks(out: Path) -> int:
    """Masks whose features an interrupted run into ``out`` committed (settings not checked: a dry run's count)."""
    from zutiscli.artefacts.parts import iter_parts

    return sum(len(row.get("ids") or ()) for _, rows in iter_parts(out, "mask-features row") for row in rows)


# ---- contact sheets -----------------------------------------------------------------------------
class _Sheets:
    """Cluster -> its contact sheet ``(H, W, 3)`` uint8: the masks nearest its centroid, as crops."""

    def __init__(self, members: list[np.ndarray], titles: list[str], paths: Sequence[Path],
                 rles: Sequence[dict[str, Any]], distance: np.ndarray, settings: dict[str, Any]):
        self.members, self.titles, self.paths, self.rles = members, titles, paths, rles
        self.distance, self.settings = distance, settings

    def __len__(self) -> int:
        return len(self.members)

    def __getitem__(self, cluster: int) -> tuple[int, np.ndarray]:
        from zutiscli.engine.mask_features import image_views
        from zutiscli.errors import ImageLoadError
        from zutiscli.ops.contact_sheet import tile_sheet

        chosen = self.members[cluster]
        tiles = np.full((len(chosen), TILE, TILE, 3), 90, dtype=np.uint8)
        by_image: dict[Path, list[int]] = {}
        for slot, position in enumerate(chosen):
            by_image.setdefault(Path(self.paths[position]), []).append(slot)
        for path, slots in by_image.items():
            try:
                crops = image_views(path, [self.rles[chosen[s]] for s in slots], TILE, "crop", self.settings["fill"],
                                    self.settings["margin"])
            except ImageLoadError:
                continue  # a grey tile: the image went away (or changed) since it was embedded
            tiles[slots] = (crops.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
        captions = [f"{self.distance[p]:.3f}" for p in chosen]
        return cluster, tile_sheet(tiles, self.titles[cluster], columns=8, captions=captions)


def _nearest_members(assignment: np.ndarray, distance: np.ndarray, k: int, count: int) -> list[np.ndarray]:
    """Per cluster, the positions of its ``count`` masks nearest the centroid (ties: earlier mask first)."""
    order = np.lexsort((np.arange(len(distance)), distance))
    members: list[list[int]] = [[] for _ in range(k)]
    for position in order:
        group = members[assignment[position]]
        if len(group) < count:
            group.append(int(position))
    return [np.asarray(group, dtype=np.int64) for group in members]


def _titles(k: int, sizes: np.ndarray, infos: list[ClusterInfo]) -> list[str]:
    titles = []
    for cluster in range(k):
        title = f"cluster {cluster}: {int(sizes[cluster])} mask{'s' if sizes[cluster] != 1 else ''}"
        info = infos[cluster]
        if info.majority is not None and info.share is not None:
            title += f", {info.share:.0%} of {info.matched} matched are {info.majority}"
        titles.append(title + " (nearest the centroid first, cosine distance)")
    return titles


# ---- the stage ----------------------------------------------------------------------------------
def plan_cluster(config: ClusterConfig, output: str | Path | None = None) -> Any:
    """What ``zutis cluster`` would do (``--dry-run``): the checks of a real run, no weights loaded,
    nothing written."""
    from zutiscli.models.device import precision_name, resolve_device, resolve_precision
    from zutiscli.pipeline.plan import Plan, input_entry, weights_plan

    config.validate()
    labels = _pseudolabels(config)
    out, state = _check_output(output)
    writes = {"path": str(out), "state": state}
    images = len({obj.image for obj in labels.objects})
    reads = [input_entry(labels.directory, "zutis.pseudolabels", images=images, masks=len(labels.objects),
                         categories=len(labels.classes))]
    if config.features_from:
        source = _feature_source(config, labels)
        kind, model = source.features, dict(source.manifest.model or {})
        reads.append(input_entry(source.path, "zutis.clusters", masks=len(source.masks)))
        work = {"masks_to_embed": 0, "masks_reused": len(source.masks)}
        check_k(config.k, len(source.masks), source.path, "masks with features")
    else:
        kind = config.features or DEFAULT_FEATURES
        name, pretrained = _embedding_model(config, labels, kind)
        dtype = resolve_precision(config.precision, resolve_device(config.device))
        with named_by_manifest(config.model, config.pretrained, labels.directory):
            model = weights_plan(name, pretrained) | {"precision": precision_name(dtype)}
        reused = _committed_masks(out) if state == "existing" else 0
        work = {"masks_to_embed": len(labels.objects) - reused, "images_to_decode": images}
        if reused:
            work["masks_already_embedded"] = reused
    if config.ground_truth:
        from zutiscli.engine.mask_truth import truth_labels

        truth = truth_labels(config.ground_truth, [o.image for o in labels.objects], [o.rle for o in labels.objects],
                             MATCH_IOU)
        reads.append(input_entry(config.ground_truth, "COCO instances", images_paired=truth.images_paired,
                                 classes=len(truth.classes)))
        work["masks_matched_to_ground_truth"] = int((truth.labels >= 0).sum())
    params = {"k": config.k, "features": kind, "restarts": config.restarts, "iterations": config.iterations,
              "seed": config.seed, "contact": config.contact}
    work["clusters"] = config.k
    if config.stuff_k:
        from zutiscli.pipeline.cluster_stuff import stuff_model

        name, pretrained = stuff_model(config, labels)
        with named_by_manifest(config.model, config.pretrained, labels.directory):
            model = dict(model) | {"stuff": weights_plan(name, pretrained)}
        params |= {"stuff_k": config.stuff_k, "stuff_patches": config.stuff_patches, "stuff_layer": config.stuff_layer}
        work["stuff_clusters"] = config.stuff_k
        sampled = _committed_stuff_images(out) if state == "existing" and not config.features_from else 0
        work["images_to_decode_for_stuff"] = images - sampled
        if sampled:
            work["stuff_images_already_sampled"] = sampled
    return Plan("cluster", reads, writes, model, params, work)


@dataclass
class _Features:
    """The masks' features, embedded now or reused: what the rest of a run needs of them.

    ``positions``: ``(M,)`` int64, the pseudo-label object of each row; ``stored``: ``(M, D)`` float16
    as written; ``vectors``: the float32 unit rows clustered; ``settings``: the views' size, margin
    and fill; ``failed``: unreadable images of this run, ``failed_count`` with a reused run's."""

    kind: str
    positions: np.ndarray
    stored: np.ndarray
    vectors: np.ndarray
    model: dict[str, Any]
    settings: dict[str, Any]
    failed: list[tuple[str, str]] = field(default_factory=list)
    failed_count: int = 0
    source: Path | None = None
    reused: int = 0  # masks whose features an interrupted run into the directory committed


def _reused_features(config: ClusterConfig, labels: Any, say: Log) -> _Features:
    """The features of ``--features-from``, their rows matched to the pseudo-labels by annotation id."""
    source = _feature_source(config, labels)
    position_of = {obj.annotation_id: number for number, obj in enumerate(labels.objects)}
    missing = [m.annotation_id for m in source.masks if m.annotation_id not in position_of]
    if missing:
        raise ArtefactError(f"--features-from {source.path}: annotation {missing[0]} is not in {labels.directory}; "
                            f"embed the masks again (leave out --features-from)")
    positions = np.array([position_of[m.annotation_id] for m in source.masks], dtype=np.int64)
    stored, vectors = _rounded(source.load_features())
    failed = source.manifest.summary.get("failed")
    say(f"reusing the {source.features} features of {len(positions)} masks from {source.path}")
    return _Features(source.features, positions, stored, vectors, dict(source.manifest.model or {}),
                     _view_settings(source.manifest.params), [], failed if isinstance(failed, int) else 0, source.path)


def _new_features(config: ClusterConfig, labels: Any, embedder: _Embedder, out: Path, say: Log,
                  progress: Callable[[int, int], None] | None) -> _Features:
    """Every mask embedded (or committed by an interrupted run); a :class:`ZutisError` when no image
    could be read."""
    kind = config.features or DEFAULT_FEATURES
    found, reused = _embed(config, labels, kind, embedder, out, say, progress)
    model, settings = embedder.record, embedder.settings
    if not len(found.positions):
        example = f"e.g. {found.failed[0][0]}: {found.failed[0][1]}" if found.failed else "no masks"
        raise ZutisError(f"none of the {len({o.image for o in labels.objects})} images of {labels.directory} could "
                         f"be read ({example}); no clusters were made")
    stored, vectors = _rounded(found.features)
    return _Features(kind, found.positions, stored, vectors, model, settings, found.failed, len(found.failed),
                     reused=reused)


def _contact_sheets(out: Path, config: ClusterConfig, labels: Any, features: _Features, result: Any,
                    infos: list[ClusterInfo]) -> list[ClusterInfo]:
    """Draw each non-empty cluster's contact sheet into ``out``; the infos with their paths."""
    from zutiscli.artefacts.clusters import write_contact_sheet
    from zutiscli.data.thread_batches import thread_items

    k = len(infos)
    members = _nearest_members(result.assignment, result.distance, k, config.contact)
    objects = [labels.objects[p] for p in features.positions]
    sheets = _Sheets(members, _titles(k, result.sizes, infos), [o.image for o in objects], [o.rle for o in objects],
                     result.distance, features.settings)
    contact: dict[int, str] = {}
    for number, sheet in thread_items(sheets, decode_workers(config)):
        if len(members[number]):
            contact[number] = write_contact_sheet(out, number, k, sheet)
    return [ClusterInfo(i.cluster, i.size, i.majority, i.share, i.matched, contact.get(i.cluster)) for i in infos]


def _params(config: ClusterConfig, out: Path, features: _Features) -> dict[str, Any]:
    """The manifest's ``params``: what decided the clusters (paths relative to the artefact)."""
    from zutiscli.artefacts.manifest import relative_to
    from zutiscli.ops.kmeans import KMEANS_THREADS

    return {"k": config.k, "features": features.kind, **features.settings, "restarts": config.restarts,
            "iterations": config.iterations, "seed": config.seed,
            "kmeans": {"spherical": True, "max_points_per_centroid": 256, "threads": KMEANS_THREADS},
            "contact": config.contact, "match_iou": MATCH_IOU, "stuff_k": config.stuff_k,
            "stuff_patches": config.stuff_patches, "stuff_layer": config.stuff_layer, "batch_size": config.batch_size,
            "precision": config.precision,
            "ground_truth": relative_to(out, config.ground_truth) if config.ground_truth else None,
            "features_from": relative_to(out, features.source) if features.source else None}


@holding_locks
def cluster(config: ClusterConfig, output: str | Path | None = None, *,
            progress: Callable[[int, int], None] | None = None, log: Log | None = None) -> ClusterResult:
    """Run ``zutis cluster``; returns what it wrote (the directory is ``result.path``).

    ``progress(done, total)`` counts masks embedded. Masks whose image cannot be read are left out
    (listed in the result, counted in the manifest); when fewer than ``k`` masks remain the run
    stops with a :class:`UsageError`, having written nothing.
    """
    from zutiscli.artefacts.clusters import write_clusters
    from zutiscli.artefacts.manifest import write_manifest
    from zutiscli.ops.kmeans import spherical_kmeans

    config.validate()
    say = log or (lambda message: None)
    started = time.perf_counter()
    labels = _pseudolabels(config)
    _check_output(output)  # refused now, before any model loads
    objects = labels.objects
    truth = None
    if config.ground_truth:
        from zutiscli.engine.mask_truth import truth_labels

        truth = truth_labels(config.ground_truth, [o.image for o in objects], [o.rle for o in objects], MATCH_IOU)
        say(f"ground truth: {truth.images_paired} of {truth.images} images paired, "
            f"{int((truth.labels >= 0).sum())} of {len(objects)} masks matched to an instance")
    # the features reused, or the model loaded (and shown to give the feature), before the directory is made
    if config.features_from:
        from zutiscli.artefacts.lock import restart_unfinished

        features = _reused_features(config, labels, say)
        out = _open_output(output)
        restart_unfinished(out)  # nothing of a killed run's is kept when the features come from elsewhere
    else:
        embedder = _embedder(config, labels, config.features or DEFAULT_FEATURES)
        out = _open_output(output)
        features = _new_features(config, labels, embedder, out, say, progress)
    check_k(config.k, len(features.positions), labels.directory, "masks whose image could be read")

    say(f"k-means: {config.k} clusters of {len(features.positions)} masks ({config.restarts} restarts, "
        f"{config.iterations} iterations, seed {config.seed})")
    result = spherical_kmeans(features.vectors, config.k, iterations=config.iterations, restarts=config.restarts,
                              seed=config.seed)
    infos, quality, truth_of = cluster_quality(result.assignment, result.sizes, truth, features.positions)
    stuff = None
    if config.stuff_k:
        from zutiscli.pipeline.cluster_stuff import find_stuff, reused_stuff

        if features.source is not None:
            from zutiscli.artefacts.clusters import read_clusters

            stuff = reused_stuff(config, labels, read_clusters(features.source))
            if stuff is not None:
                say(f"reusing the {config.stuff_k} stuff clusters of {features.source}")
        stuff = stuff or find_stuff(config, labels, say, None, out)

    if config.contact:
        infos = _contact_sheets(out, config, labels, features, result, infos)
    stuff_clusters = None
    if stuff is not None:
        from zutiscli.pipeline.cluster_stuff import stuff_contact_sheets, without_sheets

        stuff_clusters = stuff_contact_sheets(out, config, stuff) if config.contact else without_sheets(stuff.clusters)
    masks = []
    for row, position in enumerate(features.positions.tolist()):
        obj = objects[position]
        category = labels.classes[obj.class_index] if 0 <= obj.class_index < len(labels.classes) else None
        masks.append(ClusteredMask(image=obj.image, annotation_id=obj.annotation_id,
                                   cluster=int(result.assignment[row]), distance=float(result.distance[row]),
                                   category=category, truth=truth_of[row]))
    write_clusters(out, features_kind=features.kind, masks=masks, clusters=infos, centroids=result.centroids,
                   features=features.stored, ground_truth=truth is not None, stuff=stuff_clusters,
                   stuff_truth=bool(stuff is not None and stuff.quality))
    inputs = [labels.directory, *([features.source] if features.source else []),
              *([Path(config.ground_truth)] if config.ground_truth else [])]
    seconds = round(time.perf_counter() - started, 2)
    summary = {"k": config.k, "masks": len(masks), "images": len({str(m.image) for m in masks}),
               "failed": features.failed_count, "sizes": [int(s) for s in result.sizes],
               "mean_similarity": round(result.similarity, 6)}
    summary |= {key: (round(value, 6) if isinstance(value, float) else value) for key, value in quality.items()}
    if stuff is not None:
        summary["stuff"] = {"k": config.stuff_k, "patches": stuff.clusters.samples,
                            "sizes": [c.size for c in stuff.clusters.clusters], "model": stuff.clusters.model,
                            "failed": stuff.failed} | {
            key: (round(value, 6) if isinstance(value, float) else value) for key, value in stuff.quality.items()}
    if features.reused:
        summary["resumed"] = features.reused
    write_manifest(out, KIND, model=features.model, inputs=inputs, params=_params(config, out, features),
                   summary=summary | {"seconds": seconds})
    shutil.rmtree(out / PARTS_DIR, ignore_errors=True)  # features.npy holds every feature now
    shutil.rmtree(out / STUFF_DIR, ignore_errors=True)  # and stuff_centroids.npy the stuff clusters
    return ClusterResult(out, config.k, len(masks), features.kind, infos, features.failed, quality.get("purity"),
                         quality.get("nmi"), quality.get("matched"), seconds, stuff_clusters,
                         stuff.quality.get("purity") if stuff else None, stuff.quality.get("nmi") if stuff else None)
