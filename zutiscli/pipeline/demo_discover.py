"""``zutis demo --discover``: the chain with no class names (MaskDistill, U2Seg) on the demo's world.

The same pile and held-out scenes (both splits) as ``zutis demo``, then, under ``discover/``::

    pseudolabels/      zutis pseudolabel pile/images    masks in every pile image, unnamed
    kK/clusters/       zutis cluster -k K               the masks' CLIP features in K clusters, with purity
                                                        and NMI against the pile's hidden ground truth (the
                                                        first K embeds; the others re-cluster its features)
    kK/train/          zutis train kK/clusters          the model, its classes the K clusters
    kK/predict/        zutis predict (no --classes)     its clusters on the test scenes
    kK/evaluate-hungarian/, kK/evaluate-majority/       zutis evaluate --match ...
    kK/shift/...       the same on the shift split, and evaluate-test-mapping/: scored with the
                       test split's Hungarian mapping (do the clusters mean the same shapes there?)

With ``--discover-stuff-k S`` (default 6) the pile and both splits' scenes are drawn over named
stuff, each clustering also makes ``S`` stuff clusters of the patches outside the masks (``zutis
cluster --stuff-k``), the models carry them, and the scores include PQ over things and stuff
(the scenes' panoptic truth); MaskCLIP is given the shape and the stuff names.

The scores match clusters to the shapes on each split itself, as STEGO, MaskDistill and U2Seg
score (Hungarian one-to-one; U2Seg's majority vote, many-to-one). Names are used nowhere before
that matching.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zutiscli.errors import UsageError
from zutiscli.pipeline.demo_config import SHIFT, DemoConfig

#: How the demo matches clusters to classes, each scored.
MATCHES = ("hungarian", "majority")


def discovery_label(k: int, match: str, suffix: str = "") -> str:
    """The metrics name of the model trained on ``k`` clusters, matched by ``match``."""
    return f"discovery, k {k} ({match}){suffix}"


def run_discovery(stages: Any, config: DemoConfig, out: Path, pile: Path, scenes: Path, shifted: Path
                  ) -> tuple[dict[str, dict[str, Any]], dict[str, Any], list[tuple[int, Path]]]:
    """Pseudo-label the pile, then for each of ``config.discover_k``: cluster, train, predict and
    score on the test ``scenes`` and on the ``shifted`` ones (also with the test split's mapping).

    Returns ``(metrics per variant, cluster quality per k, [(k, training run)])``.
    """
    from zutiscli.pipeline.cluster import ClusterConfig, cluster
    from zutiscli.pipeline.pseudolabel import PseudolabelConfig, run_pseudolabel
    from zutiscli.pipeline.train import train

    shift = f", {SHIFT}"
    root = out / "discover"
    found_masks = stages.run("pseudolabel (the pile, no names)", run_pseudolabel, PseudolabelConfig(
        inputs=(str(pile / "images"),), method=config.method, model=config.model, pretrained=config.pretrained,
        size=config.pseudo_size, fill_holes=config.fill_holes, device=config.device, preview=12, seed=config.seed),
        root / "pseudolabels")
    pseudo = found_masks.path
    if max(config.discover_k) > found_masks.masks:  # before any k is clustered and trained
        raise UsageError(f"--discover-k {max(config.discover_k)}: the pile gave {found_masks.masks} masks "
                         f"({pseudo}), fewer than the clusters asked for; give cluster counts of at most "
                         f"{found_masks.masks}, or a larger --pile")
    metrics: dict[str, dict[str, Any]] = {}
    quality: dict[str, Any] = {}
    runs: list[tuple[int, Path]] = []
    embedded: Path | None = None
    for k in config.discover_k:
        where = root / f"k{k}"
        model = dict(model=config.model, pretrained=config.pretrained) if embedded is None else \
            dict(features_from=str(embedded))
        found = stages.run(f"cluster (k {k})", cluster, ClusterConfig(
            pseudolabels=str(pseudo), k=k, **model, seed=config.seed, stuff_k=config.discover_stuff_k,
            ground_truth=str(pile / "hidden" / "instances.json"), contact=8, device=config.device, precision="fp32"),
            where / "clusters")
        embedded = embedded or found.path
        quality[str(k)] = {"purity": found.purity, "nmi": found.nmi, "masks": found.masks, "matched": found.matched}
        line = f"    k {k}: purity {found.purity:.3f}, NMI {found.nmi:.3f} ({found.matched} of {found.masks} masks on " \
               f"a hidden object)"
        if found.stuff is not None:
            quality[str(k)]["stuff"] = {"k": found.stuff.k, "purity": found.stuff_purity, "nmi": found.stuff_nmi,
                                        "patches": found.stuff.samples}
            if found.stuff_purity is not None:
                line += f"; {found.stuff.k} stuff clusters: purity {found.stuff_purity:.3f}, NMI {found.stuff_nmi:.3f}"
        stages.log(line)
        run = stages.run(f"train (k {k})", train, config.training(found.path), where / "train", log=stages.log).path
        runs.append((k, run))
        metrics.update(_predict_and_score(stages, config, k, "", where, scenes, run))
        metrics.update(_predict_and_score(stages, config, k, shift, where / "shift", shifted, run))
        # do the clusters mean the same shapes on the other split?
        metrics[discovery_label(k, "hungarian, the test split's mapping", shift)] = _score_with_mapping(
            stages, k, shift, where / "shift", shifted, where / "evaluate-hungarian")
    return metrics, quality, runs


def _score_with_mapping(stages: Any, k: int, suffix: str, place: Path, scenes: Path, mapping: Path) -> dict[str, Any]:
    """Score ``place/predict`` with the cluster mapping found on another split (``zutis evaluate --mapping``)."""
    from zutiscli.pipeline.evaluate import EvaluateConfig, evaluate

    return stages.run(f"evaluate (k {k}, the test split's mapping{suffix})", evaluate, EvaluateConfig(
        pred=str(place / "predict"), **_truth(scenes), mapping=str(mapping)), place / "evaluate-test-mapping").metrics


def _truth(scenes: Path) -> dict[str, Any]:
    """``zutis evaluate``'s ground truth of the scenes ``pred`` is scored against: the scenes directory
    (instances, semantic maps and panoptic truth) when they were drawn over named stuff, else their
    instances and semantic maps."""
    if (scenes / "panoptic.json").is_file():
        return {"gt": str(scenes)}
    return {"gt": str(scenes / "instances.json"), "gt_semantic": str(scenes / "semantic")}


def _predict_and_score(stages: Any, config: DemoConfig, k: int, suffix: str, place: Path, scenes: Path,
                       run: Path) -> dict[str, dict[str, Any]]:
    """Predict ``run``'s clusters on ``scenes`` into ``place/predict``; score with each of :data:`MATCHES`."""
    from zutiscli.pipeline.evaluate import EvaluateConfig, evaluate
    from zutiscli.data.classes import with_stuff
    from zutiscli.pipeline.predict import PredictConfig, classes_to_segment, predict

    clusters, stuff = classes_to_segment(None, None, "zutis", str(run))
    stages.run(f"predict (k {k}{suffix})", predict, PredictConfig(
        inputs=[str(scenes / "images")], classes=tuple(with_stuff(clusters, stuff)), stuff=stuff, checkpoint=str(run),
        device=config.device, precision="fp32"), place / "predict", log=None)
    metrics = {}
    for match in MATCHES:
        result = stages.run(f"evaluate (k {k}, {match}{suffix})", evaluate, EvaluateConfig(
            pred=str(place / "predict"), **_truth(scenes), match=match, match_score=config.discover_match_score),
            place / f"evaluate-{match}")
        metrics[discovery_label(k, match, suffix)] = result.metrics
    return metrics


def describe_cluster_quality(quality: dict[str, Any]) -> str:
    """One line: purity and NMI of each k against the pile's hidden ground truth."""
    parts = [f"k {k} {values['purity']:.2f} / {values['nmi']:.2f}" for k, values in quality.items()
             if values.get("purity") is not None]
    return "cluster purity / NMI against the pile's hidden ground truth: " + ", ".join(parts)
