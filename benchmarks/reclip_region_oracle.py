"""Can ReCLIP++'s contrastive loss find the truth with this CLIP? The region oracle.

ReCLIP++ learns its bias and decoder by asking each hypothesised class's mask-pooled dense feature
to be closest to that class's Query text feature. With the ground truth as masks, the loss is at
its best only if the pooled feature of every true region is closest to its own class: this script
measures how often that holds (per region, over a `zutis synth scenes` directory, "background"
counted as a class), with MaskCLIP's dense features and with the last layer's projected tokens.
Near 1 for a real CLIP on real objects; near chance, the loss's optimum is not the truth and
rectification cannot be expected to help.

    python benchmarks/reclip_region_oracle.py SCENES [--model shapes-clip --pretrained builtin]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from zutiscli.models.clip import ModelSpec, load_backbone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenes", type=Path, help="a `zutis synth scenes` directory (images/, semantic/, instances.json)")
    parser.add_argument("--model", default="shapes-clip")
    parser.add_argument("--pretrained", default="builtin")
    parser.add_argument("--limit", type=int, default=100, help="scenes to use")
    args = parser.parse_args()
    torch.set_num_threads(1)
    categories = sorted(json.loads((args.scenes / "instances.json").read_text())["categories"], key=lambda c: c["id"])
    names = ["background"] + [c["name"] for c in categories]
    label_of = {0: 0} | {c["id"]: number for number, c in enumerate(categories, start=1)}
    backbone = load_backbone(ModelSpec(args.model, args.pretrained))
    with torch.no_grad():
        text = backbone.encode_text(names, templates="ensemble")
    images = sorted((args.scenes / "images").iterdir())[:args.limit]
    confusion = {kind: np.zeros((len(names), len(names)), np.int64) for kind in ("maskclip", "tokens")}
    for path in images:
        semantic = np.asarray(Image.open(args.scenes / "semantic" / (path.stem + ".png")))
        rgb = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).float()[None] / 255
        with torch.no_grad():
            inputs = backbone.normalise(rgb)
            features = {"maskclip": backbone.maskclip_embeddings(inputs)[0], "tokens": backbone.dense_embeddings(inputs)[0]}
        grid = features["maskclip"].shape[:2]
        labels = F.interpolate(torch.from_numpy(semantic.astype(np.float32))[None, None], size=grid, mode="nearest")[0, 0]
        for value in labels.unique().tolist():
            if int(value) not in label_of:
                continue
            region = (labels == value).float()[..., None]
            truth = label_of[int(value)]
            for kind, dense in features.items():
                pooled = (dense * region).sum((0, 1)) / region.sum()
                confusion[kind][truth, int((pooled @ text.T).argmax())] += 1
    print(f"{len(images)} scenes of {args.scenes}, {args.model} ({args.pretrained}); regions classified by their "
          f"mask-pooled dense feature against the Query embeddings (chance {1 / len(names):.2f}):")
    for kind, table in confusion.items():
        per_class = {name: round(float(table[i, i] / table[i].sum()), 2) for i, name in enumerate(names) if table[i].sum()}
        print(f"  {kind:9s} accuracy {np.trace(table) / table.sum():.3f}  per class {per_class}")


if __name__ == "__main__":
    main()
