"""Which features make stuff clusters that hold across renderers: `zutis cluster --stuff-k` at each layer.

Draws a pile over named stuff on the train split and another on the shift split (the same
materials in looks no training uses), takes each pile's true object masks as the pseudo-labels,
samples the patches outside them (as `zutis cluster --stuff-k` does) and embeds them with the
shipped shapes-clip: its MaskCLIP value path, and its patch tokens after 0..depth blocks. Per
feature and k it prints the purity of k-means stuff clusters of the train pile and the accuracy of
the shift pile's patches labelled through those clusters (nearest centroid, each cluster named by
its train-pile majority), i.e. how well the clusters transfer.

    python benchmarks/stuff_layers.py [--images 200] [--k 6,12]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    from helpers import unnamed_pseudolabels

    from zutiscli.artefacts.pseudolabels import load_pseudolabels
    from zutiscli.engine.mask_truth import stuff_truth_labels
    from zutiscli.engine.stuff_features import StuffImage, stuff_samples
    from zutiscli.models.clip import ModelSpec, load_backbone
    from zutiscli.ops.cluster_quality import contingency_table
    from zutiscli.ops.kmeans import spherical_kmeans
    from zutiscli.pipeline.synth import SynthConfig, write_synth

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--k", default="6,12")
    args = parser.parse_args()
    torch.set_num_threads(1)
    backbone = load_backbone(ModelSpec("shapes-clip", "builtin"))
    root = Path(tempfile.mkdtemp(prefix="stuff-layers-"))
    piles = {}
    for split, seed in (("train", 4), ("shift", 9)):
        pile = write_synth(SynthConfig("pile", args.images, seed=seed, stuff=True, split=split), root / split)
        labels = load_pseudolabels(unnamed_pseudolabels(root / f"{split}-pseudo", pile))
        masks: dict[Path, list] = {}
        for obj in labels.objects:
            masks.setdefault(Path(obj.image), []).append(obj.rle)
        piles[split] = ([StuffImage(path, tuple(rles)) for path, rles in masks.items()],
                        pile / "hidden" / "instances.json")

    def samples(split, encode):
        images, truth_file = piles[split]
        found = stuff_samples(images, encode, patch=backbone.patch_size, per_image=64)
        truth = stuff_truth_labels(truth_file, [i.path for i in images], found.grids, found.image, found.cell)
        return found.features, truth

    features = {"MaskCLIP value path": lambda px: backbone.maskclip_embeddings(backbone.normalise(px))}
    for blocks in range(backbone.depth + 1):
        features[f"tokens after {blocks} of {backbone.depth} blocks"] = \
            lambda px, blocks=blocks: backbone.block_tokens(backbone.normalise(px), blocks)
    print(f"{'features':<34}" + "".join(f"  purity k{k}  shift acc k{k}" for k in map(int, args.k.split(","))))
    with torch.no_grad():
        for name, encode in features.items():
            train, train_truth = samples("train", encode)
            shift, shift_truth = samples("shift", encode)
            cells = []
            for k in map(int, args.k.split(",")):
                result = spherical_kmeans(train, k, seed=0)
                known = train_truth.labels >= 0
                table = contingency_table(result.assignment[known], train_truth.labels[known], k,
                                          len(train_truth.classes))
                named = table.argmax(1)
                purity = (named[result.assignment[known]] == train_truth.labels[known]).mean()
                nearest = (shift @ result.centroids.T).argmax(1)
                seen = shift_truth.labels >= 0
                transfer = (named[nearest[seen]] == shift_truth.labels[seen]).mean()
                cells.append(f"  {100 * purity:9.1f}  {100 * transfer:12.1f}")
            print(f"{name:<34}" + "".join(cells))


if __name__ == "__main__":
    main()
