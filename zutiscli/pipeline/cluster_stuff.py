"""The stuff step of ``zutis cluster --stuff-k S``: the pile's background grouped into ``S`` stuff clusters.

U2Seg gives every pixel that no discovered object covers a "stuff" label from STEGO (k-means of
DINO's dense features through a trained head). Here, without the head: a frozen CLIP's patch
tokens after ``--stuff-layer`` blocks (default half its depth), of the patches outside every
discovered mask (:mod:`zutiscli.engine.stuff_features`), spherical k-means into ``S`` clusters (the seed, restarts
and iterations of the masks' k-means), and with ground truth that has semantic maps (``zutis synth
pile --stuff``) each cluster's majority label and the clusters' purity and NMI over the patches.
The centroids travel with a model trained on the clusters, and ``zutis predict`` labels each pixel
no thing claims with its nearest one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from zutiscli.errors import UsageError, ZutisError

Log = Callable[[str], None]

#: Side of a stuff contact sheet's tiles, pixels; the patches of other clusters are darkened to this share.
TILE = 96
DARKEN = 0.25


@dataclass
class StuffFound:
    """The stuff of a run before anything is written: the clusters (contact sheets not yet drawn),
    the samples they were made of, the images sampled, and with ground truth the quality; or the
    stuff of an earlier run reused whole (``reused_from``: its directory; no samples)."""

    clusters: Any  # zutiscli.artefacts.clusters.StuffClusters
    samples: Any  # zutiscli.engine.stuff_features.StuffSamples, or None when reused
    assignment: np.ndarray | None
    images: list[Path]
    quality: dict[str, Any]
    failed: int = 0
    reused_from: Path | None = None


#: The options that decide the stuff clusters: a ``--features-from`` run made with the same ones has them.
_DECIDING = ("stuff_k", "stuff_patches", "stuff_layer", "seed", "restarts", "iterations")


def reused_stuff(config: Any, labels: Any, source: Any) -> StuffFound | None:
    """The stuff clusters of ``--features-from``'s run when it made them from the same pseudo-labels
    with the same deciding options and model (they do not depend on ``-k``), else ``None``."""
    params = source.manifest.params
    if source.stuff is None or any(params.get(name) != getattr(config, name) for name in _DECIDING):
        return None
    name, pretrained = stuff_model(config, labels)
    if source.stuff.model != {"name": name, "pretrained": pretrained}:
        return None
    summary = dict(source.manifest.summary.get("stuff") or {})
    quality = {key: summary[key] for key in ("purity", "nmi", "matched", "unmatched") if key in summary}
    return StuffFound(source.stuff, None, None, [], quality, int(summary.get("failed", 0)), source.path)


def stuff_model(config: Any, labels: Any) -> tuple[str, str]:
    """``(name, pretrained)`` of the CLIP whose dense embeddings are clustered: ``--model`` when it is
    a CLIP, else the pseudo-labels' model; a :class:`UsageError` when neither is a CLIP."""
    from zutiscli.models.timm_vit import is_timm_name
    from zutiscli.pipeline.archive_models import given_model

    if config.model and not is_timm_name(config.model):
        return given_model(config.model, config.pretrained)
    recorded = dict(labels.manifest.model or {})
    name = recorded.get("name")
    if isinstance(name, str) and name and not is_timm_name(name):
        # --pretrained goes with --model; without --model it replaces the recorded weights, as for the masks
        given = config.pretrained if not config.model else None
        return name, given or str(recorded.get("pretrained", "none"))
    raise UsageError(f"--stuff-k {config.stuff_k}: stuff is clustered in a CLIP's patch tokens, and "
                     f"{config.model or name or 'no model'} is not a CLIP; pseudo-label with a CLIP or leave out "
                     f"--stuff-k")


def stuff_layer(config: Any, backbone: Any) -> int:
    """The blocks run before the stuff features are taken: ``--stuff-layer``, else half the tower's depth."""
    if config.stuff_layer is None:
        return backbone.depth // 2
    if config.stuff_layer > backbone.depth:
        raise UsageError(f"--stuff-layer {config.stuff_layer}: the image tower has {backbone.depth} blocks; give "
                         f"0..{backbone.depth}")
    return config.stuff_layer


def find_stuff(config: Any, labels: Any, say: Log, progress: Callable[[int, int], None] | None,
               out: Path | None = None) -> StuffFound:
    """Sample, embed and cluster the stuff of the pseudo-labelled images. With ``out`` (the run's
    directory) the samples are committed under ``out/stuff`` as they come, and those an interrupted
    run committed there with the same settings are taken instead of drawn again
    (:mod:`zutiscli.pipeline.cluster_parts`); without it nothing is written."""
    import torch

    from zutiscli.artefacts.clusters import ClusterInfo, StuffClusters
    from zutiscli.engine.stuff_features import STUFF_COVER, StuffImage, stuff_samples
    from zutiscli.models.clip import ModelSpec, load_backbone
    from zutiscli.models.device import resolve_device, resolve_precision
    from zutiscli.ops.kmeans import spherical_kmeans
    from zutiscli.pipeline.archive_models import named_by_manifest
    from zutiscli.pipeline.cluster_steps import check_k, cluster_quality, decode_workers

    name, pretrained = stuff_model(config, labels)
    device = resolve_device(config.device)
    dtype = resolve_precision(config.precision, device)
    with named_by_manifest(config.model, config.pretrained, labels.directory):
        backbone = load_backbone(ModelSpec(name, pretrained), device=device, dtype=dtype)
    masks: dict[Path, list[dict[str, Any]]] = {}
    for obj in labels.objects:
        masks.setdefault(Path(obj.image), []).append(obj.rle)
    images = [StuffImage(path, tuple(rles)) for path, rles in masks.items()]

    layer = stuff_layer(config, backbone)

    def encode(pixels: torch.Tensor) -> torch.Tensor:
        return backbone.block_tokens(backbone.normalise(pixels.to(device, dtype)), layer)

    say(f"stuff: the patches outside the masks of {len(images)} images (at most {config.stuff_patches} each), "
        f"{name}'s tokens after {layer} of its {backbone.depth} blocks")
    done, commits = {}, None
    if out is not None:
        from zutiscli.artefacts.manifest import fingerprint, relative_to
        from zutiscli.artefacts.parts import PARTS_DIR, record_run
        from zutiscli.pipeline.cluster_parts import STUFF_DIR, StuffCommits, committed_stuff

        directory = out / STUFF_DIR
        identity = {"model": {"name": name, "pretrained": pretrained},
                    "params": {"pseudolabels": fingerprint(labels.directory), "layer": layer,
                               "patches": config.stuff_patches, "cover": STUFF_COVER, "seed": config.seed,
                               "precision": config.precision}}
        done = committed_stuff(directory, identity, {relative_to(directory, image.path): number
                                                     for number, image in enumerate(images)})
        if done:
            say(f"stuff: {len(done)} images already sampled by an interrupted run into {out}")
        (directory / PARTS_DIR).mkdir(parents=True, exist_ok=True)
        record_run(directory, identity)
        commits = StuffCommits(directory, [image.path for image in images], config.chunk_size)
    samples = stuff_samples(images, encode, patch=backbone.patch_size, per_image=config.stuff_patches,
                            cover=STUFF_COVER, seed=config.seed, batch_size=config.batch_size,
                            workers=decode_workers(config), progress=progress, done=done, embedded=commits)
    if commits is not None:
        commits.commit()  # the last images too: what fails after the sampling (k-means) keeps them all
    if not len(samples.features):
        raise ZutisError(f"{labels.directory}: no patch outside the masks could be sampled (every image unreadable "
                         f"or covered by its masks); leave out --stuff-k")
    check_k(config.stuff_k, len(samples.features), labels.directory, "patches outside the masks")
    say(f"k-means: {config.stuff_k} stuff clusters of {len(samples.features)} patches")
    result = spherical_kmeans(samples.features, config.stuff_k, iterations=config.iterations,
                              restarts=config.restarts, seed=config.seed)
    truth = None
    if config.ground_truth:
        from zutiscli.engine.mask_truth import stuff_truth_labels

        truth = stuff_truth_labels(config.ground_truth, [image.path for image in images], samples.grids,
                                   samples.image, samples.cell)
        if truth is None:
            say(f"stuff: {config.ground_truth} has no semantic maps with named labels; stuff purity not measured")
    infos, quality, _ = cluster_quality(result.assignment, result.sizes, truth, np.arange(len(samples.features)))
    clusters = StuffClusters(config.stuff_k, {"name": name, "pretrained": pretrained}, layer,
                             [ClusterInfo(i.cluster, i.size, i.majority, i.share, i.matched) for i in infos],
                             result.centroids, len(samples.features), config.stuff_patches, STUFF_COVER)
    return StuffFound(clusters, samples, result.assignment, [image.path for image in images], quality,
                      len(samples.failed))


def stuff_contact_sheets(out: Path, config: Any, found: StuffFound) -> Any:
    """Draw each stuff cluster's sheet (the ``config.contact`` images with most of its patches, the
    others' patches darkened); the stuff clusters with their sheets' paths."""
    from dataclasses import replace

    from zutiscli.artefacts.clusters import write_contact_sheet
    from zutiscli.data.images import load_image
    from zutiscli.errors import ImageLoadError
    from zutiscli.ops.contact_sheet import tile_sheet

    if found.reused_from is not None:  # the earlier run's sheets, copied
        import shutil

        (out / "contact").mkdir(exist_ok=True)
        for info in found.clusters.clusters:
            if info.contact is not None:
                shutil.copyfile(found.reused_from / info.contact, out / info.contact)
        return found.clusters
    samples, k = found.samples, found.clusters.k
    infos = []
    for cluster, info in enumerate(found.clusters.clusters):
        mine = found.assignment == cluster
        counts = np.bincount(samples.image[mine], minlength=len(found.images))
        chosen = [int(i) for i in np.argsort(-counts, kind="stable")[:config.contact] if counts[i] > 0]
        if not chosen:
            infos.append(info)
            continue
        tiles = np.full((len(chosen), TILE, TILE, 3), 90, dtype=np.uint8)
        for slot, image in enumerate(chosen):
            try:
                rgb = load_image(found.images[image]).convert("RGB").resize((TILE, TILE))
            except ImageLoadError:
                continue  # a grey tile: the image went away since it was embedded
            rows, columns = samples.grids[image]
            grid = np.zeros(rows * columns, dtype=bool)
            grid[samples.cell[mine & (samples.image == image)]] = True
            cell_of = np.arange(TILE)
            keep = grid.reshape(rows, columns)[(cell_of * rows // TILE)[:, None], (cell_of * columns // TILE)[None, :]]
            pixels = np.asarray(rgb, dtype=np.float32)
            pixels[~keep] *= DARKEN
            tiles[slot] = pixels.round().astype(np.uint8)
        title = f"stuff {cluster}: {info.size} patches"
        if info.majority is not None and info.share is not None:
            title += f", {info.share:.0%} of {info.matched} matched lie on {info.majority}"
        sheet = tile_sheet(tiles, title, columns=8, captions=[f"{int(counts[i])} patches" for i in chosen])
        infos.append(replace(info, contact=write_contact_sheet(out, cluster, k, sheet, prefix="stuff")))
    return replace(found.clusters, clusters=infos)


def without_sheets(clusters: Any) -> Any:
    """The stuff clusters with no contact sheet named (``--contact 0``, or reused ones not copied)."""
    from dataclasses import replace

    return replace(clusters, clusters=[replace(info, contact=None) for info in clusters.clusters])
