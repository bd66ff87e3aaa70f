"""What several test modules build: small artefacts made from the shapes world's ground truth."""

import pytest

from zutiscli.artefacts.coco import CocoBuilder, load_coco
from zutiscli.artefacts.manifest import relative_to, write_manifest
from zutiscli.artefacts.pseudolabels import PSEUDOLABELS_NAME
from zutiscli.pipeline.synth import SynthConfig, write_synth
from zutiscli.shapes.world import SHAPES


def make_pseudolabels(root, count=30, seed=4, size=64):
    """A pseudo-label directory whose masks are the shapes world's true masks (archive = shape)."""
    pile = write_synth(SynthConfig("pile", count, seed=seed, size=size), root / "pile")
    truth = load_coco(pile / "hidden" / "instances.json")
    out = root / "pseudo"
    out.mkdir()
    builder = CocoBuilder(list(SHAPES))
    images = {img["id"]: img for img in truth["images"]}
    new_ids = {}
    for ann in truth["annotations"]:
        image = images[ann["image_id"]]
        if image["id"] not in new_ids:
            new_ids[image["id"]] = builder.add_image(relative_to(out, pile / image["file_name"]), image["width"],
                                                     image["height"], archive=SHAPES[ann["category_id"] - 1])
        builder.add_mask(new_ids[image["id"]], ann["category_id"], ann["segmentation"], score=1.0)
    builder.write(out / PSEUDOLABELS_NAME)
    write_manifest(out, "zutis.pseudolabels", params={"method": "ground-truth"})
    return out


#: The manifest ``model`` record of the builtin shapes-world CLIP.
SHAPES_CLIP = {"name": "shapes-clip", "pretrained": "builtin"}


def unnamed_pseudolabels(out, pile, model=SHAPES_CLIP):
    """The pile's true masks as an unnamed pseudo-label directory (one category, "object"), as `zutis
    pseudolabel` writes over a plain image folder; its manifest records ``model``."""
    truth = load_coco(pile / "hidden" / "instances.json")
    out.mkdir(parents=True)
    builder = CocoBuilder(["object"])
    images = {image["id"]: image for image in truth["images"]}
    ids: dict[int, int] = {}
    for ann in truth["annotations"]:
        image = images[ann["image_id"]]
        if image["id"] not in ids:
            ids[image["id"]] = builder.add_image(relative_to(out, pile / image["file_name"]), image["width"],
                                                 image["height"])
        builder.add_mask(ids[image["id"]], "object", ann["segmentation"], score=0.9)
    builder.write(out / PSEUDOLABELS_NAME)
    write_manifest(out, "zutis.pseudolabels", model=model, params={"method": "spectral"},
                   summary={"images": len(ids), "masks": len(builder.annotations)})
    return out


#: A ZUTIS model small enough to train in seconds on the tiny CLIP (``zutis-tiny``).
TINY_ZUTIS = dict(model="zutis-tiny", num_queries=6, decoder_layers=1, decoder_heads=2, decoder_ffn=32, mlp_hidden=16,
                  iterations=3, batch_size=2, crop=48, workers=0, device="cpu", precision="fp32",
                  crop_adapter_scenes=4)


def train_tiny(root, weights, **changes):
    """A tiny ZUTIS run on the true masks of 16 pile images (``changes`` override
    :data:`TINY_ZUTIS`); returns the :class:`zutiscli.pipeline.train.TrainResult` (``.path``: the run)."""
    from zutiscli.pipeline.train import TrainConfig, train

    pseudo = make_pseudolabels(root, count=16)
    config = TrainConfig(source=str(pseudo), pretrained=str(weights), **(TINY_ZUTIS | changes))
    return train(config, root / "run")


def run_cli(capsys, *args):
    """Run the command line with ``args`` (any objects, passed as strings); ``(exit status, stdout, stderr)``."""
    from zutiscli.cli.app import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err
