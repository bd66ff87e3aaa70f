"""Every subcommand's error paths, as a user meets them: exit status, one `error:` line, nothing written.

The leaf commands are enumerated from the Click tree, so a new command fails this file until its
error cases are listed in ``CASES`` (and its ``--device``/``--classes`` base arguments in
``BASE``). Each case runs in-process through :func:`zutiscli.cli.app.main` against tiny artefacts
built once with the project's own stage functions.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import typer

from zutiscli.cli.app import app
from zutiscli.data.classes import ClassQuery
from zutiscli.data.copypaste import CopyPasteConfig
from zutiscli.pipeline.copypaste import write_dataset
from zutiscli.pipeline.index import IndexConfig, build_index
from zutiscli.pipeline.predict import PredictConfig, predict
from zutiscli.pipeline.retrieve import RetrieveConfig, retrieve
from zutiscli.pipeline.synth import SynthConfig, write_synth
from zutiscli.pipeline.train import TrainConfig, train

from helpers import make_pseudolabels, run_cli as run  # noqa: E402

#: Options of a tiny ZUTIS model and a one-iteration run (placeholders filled by ``fill``).
TINY_TRAIN = ["--model", "zutis-tiny", "--pretrained", "{weights}", "--num-queries", "4", "--decoder-layers", "1",
              "--decoder-heads", "2", "--decoder-ffn", "16", "--mlp-hidden", "8", "--iterations", "1",
              "--batch-size", "2", "--crop", "32", "--workers", "0", "--precision", "fp32", "--crop-adapter-scenes", "2"]
#: Options of a one-iteration ReCLIP++ rectification run on zutis-tiny.
TINY_RECLIP = ["--model", "zutis-tiny", "--pretrained", "{weights}", "--window", "1/2", "--iterations", "1",
               "--batch-size", "1", "--crop", "32", "--workers", "0", "--precision", "fp32"]
TINY_INDEX = ["--model", "zutis-tiny", "--pretrained", "{weights}", "--workers", "0", "--precision", "fp32"]

EXPECTED_LEAVES = {
    "demo", "synth pile", "synth scenes", "synth pairs", "synth train-clip", "index build", "index merge",
    "retrieve", "pseudolabel run", "pseudolabel merge", "copypaste", "train", "predict run", "predict merge",
    "evaluate run", "evaluate prepare", "completions", "man", "cosegment", "compare", "cluster", "hypotheses",
}

#: Per leaf command: (arguments, expected exit status, fragment of the error line). Placeholders:
#: {pile} {scenes} {index} {archives} {pseudo} {dataset} {run} {pred} are tiny artefacts, {weights}
#: a zutis-tiny weights file, {text} a text file, {empty} an empty directory, {missing} a path that
#: does not exist, {bad_recipe} a YAML recipe with a mistyped value, {out} a fresh output directory.
CASES: dict[str, list[tuple[list[str], int, str]]] = {
    "demo": [
        (["--pretrained", "{missing}.pt"], 1, "no such checkpoint file"),
        (["--iterations", "0"], 2, "--iterations"),
        (["--zero-shot-class", "dragon"], 2, "--zero-shot-class"),
        (["--model", "ViT-B-16"], 2, "is not one of shapes-clip-v2, shapes-clip"),
        (["--discover", "--ablation"], 2, "separate runs"),
        (["--discover", "--discover-k", "1,6"], 2, "distinct cluster counts >= 2"),
        (["--discover", "--discover-k", "6,6"], 2, "distinct cluster counts >= 2"),
        (["--discover", "--discover-k", "six"], 2, "whole numbers"),
    ],
    "synth pile": [
        (["-n", "0", "-o", "{out}"], 2, "-n"),
        (["--size", "4", "-o", "{out}"], 2, "--size"),
        (["--format", "gif", "-o", "{out}"], 2, "--format"),
        (["--workers", "-1", "-o", "{out}"], 2, "--workers"),
        (["-n", "1", "-o", "{text}"], 1, "is a file"),
        (["-n", "1", "-o", "{pile}"], 1, "finished artefact"),
    ],
    "synth scenes": [
        (["--min-objects", "5", "--max-objects", "2", "-o", "{out}"], 2, "--min-objects"),
        (["-n", "1", "-o", "{index}"], 1, "finished artefact"),
    ],
    "synth pairs": [
        (["-n", "-3", "-o", "{out}"], 2, "-n"),
        (["-n", "1", "-o", "{text}"], 1, "is a file"),
    ],
    "synth train-clip": [
        (["--steps", "0", "-o", "{out}"], 2, "steps"),
        (["--steps", "1", "--eval-pool", "0", "-o", "{text}"], 1, "is a file"),
        (["--steps", "1", "--device", "cpu", "--precision", "fp16", "-o", "{out}"], 2, "fp16 is for CUDA"),
        (["--steps", "1", "--precision", "half", "-o", "{out}"], 2, "precision must be one of"),
        (["--steps", "1", "--varied", "1.5", "-o", "{out}"], 2, "must be probabilities"),
        (["--steps", "1", "--model", "no-such-model", "-o", "{out}"], 1, "not an open_clip model name"),
        (["--steps", "1", "--model", "RN50", "--dense", "1", "-o", "{out}"], 2, "--dense trains MaskCLIP's patch tokens"),
        (["--steps", "1", "--model", "zutis-tiny", "--init", "{missing}.pt", "-o", "{out}"], 1,
         "no such checkpoint file"),
        (["--steps", "1", "--model", "zutis-tiny", "--init", "builtin", "-o", "{out}"], 1,
         "--init builtin: zutis ships no weights"),
    ],
    "index build": [
        ([], 2, "give at least one image"),
        (["{missing}", *TINY_INDEX, "-o", "{out}"], 1, "no such file or directory"),
        (["{archives}", *TINY_INDEX, "-o", "{out}"], 1, "no images found"),
        (["{pile}/images", "--model", "zutis-tiny", "--pretrained", "{missing}.pt", "-o", "{out}"], 1,
         "no such checkpoint file"),
        (["{pile}/images", "--model", "no-such-model", "--pretrained", "none", "-o", "{out}"], 1,
         "not an open_clip model name"),
        (["{pile}/images", "--model", "ViT-B-61", "-o", "{out}"], 1, "not an open_clip model name"),
        (["{pile}/images", *TINY_INDEX, "-o", "{archives}"], 1, "zutis.archives artefact"),
        (["{pile}/images", *TINY_INDEX, "-o", "{scenes}/images"], 1, "not a zutis index"),
        (["--from-list", "{missing}", *TINY_INDEX], 1, "does not exist"),
        (["{pile}/images", "--shard", "3/2", *TINY_INDEX], 2, "--shard"),
        (["{pile}/images", "--batch-size", "0", *TINY_INDEX], 2, "--batch-size"),
    ],
    "index merge": [
        ([], 2, "Missing argument"),
        (["{missing}", "-o", "{out}"], 1, "no such directory"),
        (["{pile}", "-o", "{out}"], 1, "zutis.synth artefact"),
        (["{index}", "{index}", "-o", "{out}"], 2, "given twice"),
        (["{index}", "-o", "{pile}"], 1, "finished artefact"),
    ],
    "retrieve": [
        ([], 2, "Missing argument"),
        (["{index}"], 2, "no classes given"),
        (["{missing}", "--classes", "cat", "-o", "{out}"], 1, "no such directory"),
        (["{pile}", "--classes", "cat", "-o", "{out}"], 1, "zutis.synth artefact"),
        (["{archives}", "--classes", "cat", "-o", "{out}"], 1, "zutis.archives artefact"),
        (["{index}", "--classes", "cat", "--classes-file", "{text}"], 2, "exclude each other"),
        (["{index}", "--classes-file", "{missing}", "-o", "{out}"], 1, "no such classes file"),
        (["{index}", "--classes", "cat", "--model", "ViT-B-16", "-o", "{out}"], 2, "drop --model"),
        (["{index}", "--classes", "cat", "-k", "0"], 2, "-k"),
        (["{index}", "--classes", "cat", "-o", "{pile}"], 1, "finished artefact"),
    ],
    "pseudolabel run": [
        ([], 2, "Missing argument"),
        (["{missing}", "-o", "{out}"], 1, "no such file or directory"),
        (["{index}", "{archives}", "-o", "{out}"], 2, "a zutis directory is read alone"),
        (["{pseudo}", "-o", "{out}"], 1, "zutis.pseudolabels artefact"),
        (["{scenes}/images", "-o", "{out}"], 2, "image files record no model: give --model"),
        (["{archives}", "--method", "magic", "-o", "{out}"], 2, "--method"),
        (["{archives}", "--method", "onnx", "-o", "{out}"], 2, "--saliency-model"),
        (["{archives}", "--pretrained", "{missing}.pt", "-o", "{out}"], 1, "no such checkpoint file"),
        (["{archives}", "--size", "32", "-o", "{scenes}/images"], 1, "not a zutis pseudo-label directory"),
        (["{archives}", "--size", "32", "-o", "{index}"], 1, "zutis.index artefact"),
        (["{archives}", "--shard", "2/2", "-o", "{out}"], 2, "--shard"),
        (["{archives}", "--shard", "half", "-o", "{out}"], 2, "--shard"),
        (["{archives}", "--size", "32", "--shard", "0/2"], 2, "needs -o DIR"),
        (["{archives}", "--size", "32", "--shard", "0/2", "-o", "{pseudo}"], 1, "not the directory of a sharded run"),
    ],
    "pseudolabel merge": [
        ([], 2, "Missing argument"),
        (["{missing}", "-o", "{out}"], 1, "no such directory"),
        (["{archives}", "-o", "{out}"], 1, "zutis.archives artefact"),
        (["{pseudo}", "-o", "{out}"], 1, "is not a shard"),
        (["{pseudo}", "{pseudo}", "-o", "{out}"], 2, "given twice"),
    ],
    "copypaste": [
        ([], 2, "Missing argument"),
        (["{missing}", "-o", "{out}"], 1, "no such directory"),
        (["{archives}", "-o", "{out}"], 1, "zutis.archives artefact"),
        (["{dataset}", "-o", "{out}"], 1, "zutis.dataset artefact"),
        (["{pseudo}", "-n", "0", "-o", "{out}"], 2, "--n"),
        (["{pseudo}", "--format", "gif", "-o", "{out}"], 2, "--format 'gif' is not one of jpg, png"),
        (["{pseudo}", "--workers", "-1", "-o", "{out}"], 2, "--workers must be >= 0"),
        (["{pseudo}", "--scale-min", "0.9", "--scale-max", "0.1", "-o", "{out}"], 2, "--scale-min/--scale-max must satisfy"),
        (["{pseudo}", "-n", "1", "-o", "{pile}"], 1, "finished artefact"),
    ],
    "train": [
        ([], 2, "give the pseudo-label or dataset directory"),
        (["{missing}", *TINY_TRAIN, "-o", "{out}"], 1, "no such directory"),
        (["{index}", *TINY_TRAIN, "-o", "{out}"], 1, "zutis.index artefact"),
        (["{archives}", *TINY_TRAIN, "-o", "{out}"], 1, "zutis.archives artefact"),
        (["{pile}", *TINY_TRAIN, "-o", "{out}"], 2, "is a `zutis synth pile` directory"),
        (["--resume", "{pseudo}"], 1, "not a `zutis train` run directory"),
        (["--resume", "{missing}"], 1, "no such directory"),
        (["--resume", "{empty}"], 1, "nothing to resume"),
        (["{pseudo}", "--config", "{bad_recipe}", "-o", "{out}"], 2, "iterations must be an integer"),
        (["{pseudo}", "--config", "{text}", "-o", "{out}"], 2, "use a .yaml, .yml or .toml file"),
        (["{pseudo}", "--config", "{missing}.yaml", "-o", "{out}"], 2, "no such file"),
        (["{pseudo}", "--iterations", "0", "-o", "{out}"], 2, "--iterations"),
        (["{pseudo}", "--model", "ViT-B-61", "-o", "{out}"], 1, "not an open_clip model name"),
        (["{pseudo}", *TINY_TRAIN, "-o", "{pile}"], 1, "finished artefact"),
        (["{pseudo}", "--bias", "add", "-o", "{out}"], 2, "option(s) of --method reclip"),
        (["--method", "reclip", "{empty}", "--classes", "a,b", *TINY_RECLIP, "-o", "{out}"], 1, "no images found"),
        (["--method", "reclip", "{scenes}/images", *TINY_RECLIP, "-o", "{out}"], 2, "needs --classes"),
        (["--method", "reclip", "{scenes}/images", "--classes", "a,b", "--num-queries", "3", *TINY_RECLIP,
          "-o", "{out}"], 2, "option(s) of ZUTIS training"),
        (["--method", "reclip", "{scenes}/images", "--classes", "a,b", *TINY_RECLIP, "--window", "2", "-o", "{out}"],
         2, "--window"),
        (["--method", "reclip", "{scenes}/images", "--classes", "a,b", *TINY_RECLIP, "--threshold", "0.9",
          "-o", "{out}"], 1, "no image hypothesises any class"),
    ],
    "predict merge": [
        ([], 2, "Missing argument"),
        (["{missing}", "-o", "{out}"], 1, "no such directory"),
        (["{pred}", "-o", "{out}"], 1, "not a shard"),
        (["{pile}", "-o", "{out}"], 1, "zutis.synth artefact"),
    ],
    "predict run": [
        ([], 2, "no classes given"),
        (["--classes", "cat"], 2, "give the images"),
        (["{missing}", "--classes", "cat", "--checkpoint", "{run}", "-o", "{out}"], 1, "no such file or directory"),
        (["{scenes}/images", "--classes", "cat", "--checkpoint", "{pseudo}", "-o", "{out}"], 1,
         "zutis.pseudolabels artefact, not a `zutis train` run"),
        (["{scenes}/images", "--classes", "cat", "--checkpoint", "{empty}", "-o", "{out}"], 1, "has no model.pt"),
        (["{scenes}/images", "--classes", "cat", "--checkpoint", "{weights}", "-o", "{out}"], 1,
         "not a zutis checkpoint"),
        (["{scenes}/images", "--classes", "cat", "--checkpoint", "{text}", "-o", "{out}"], 1, "not a zutis checkpoint"),
        (["{scenes}/images", "--classes", "cat", "--checkpoint", "{missing}", "-o", "{out}"], 1, "no such file"),
        (["{text}", "--classes", "cat", "--checkpoint", "{run}", "-o", "{out}"], 1, "nothing was written"),
        (["{scenes}/images", "--classes", "background", "--checkpoint", "{run}", "-o", "{out}"], 2, "background"),
        (["{scenes}/images", "--classes", "cat", "--task", "depth", "--checkpoint", "{run}", "-o", "{out}"], 2,
         "--task"),
        (["{scenes}/images", "--classes", "cat", "--class-temperature", "-1", "--checkpoint", "{run}", "-o", "{out}"],
         2, "--class-temperature must be > 0"),
        (["{scenes}/images", "--classes", "cat", "--crop-weight", "1.5", "--checkpoint", "{run}", "-o", "{out}"],
         2, "--crop-weight must lie in [0, 1]"),
        (["{scenes}/images", "--classes", "cat", "--crop-model", "ViT-B-16", "--checkpoint", "{run}", "-o", "{out}"],
         2, "give --crop-weight"),
        (["{scenes}/images", "--classes", "cat", "--refine", "sharpen", "--checkpoint", "{run}", "-o", "{out}"],
         2, "--refine 'sharpen'"),
        (["{scenes}/images", "--classes", "cat", "--semantic-from", "instances", "--method", "maskclip", "-o",
          "{out}"], 2, "needs the query masks"),
        (["{scenes}/images", "--classes", "cat", "--semantic-from", "instances", "--crf", "--checkpoint", "{run}",
          "-o", "{out}"], 2, "--crf smooths"),
        (["{scenes}/images", "--classes", "cat", "--crop-weight", "0.5", "--crop-pretrained", "{missing}.pt",
          "--checkpoint", "{run}", "-o", "{out}"], 1, "crop classifier (--crop-model/--crop-pretrained): "),
        (["{scenes}/images", "--classes", "cat", "--crop-weight", "0.5", "--crop-model", "NoSuchNet", "--checkpoint",
          "{run}", "-o", "{out}"], 1, "crop classifier (--crop-model/--crop-pretrained): --model 'NoSuchNet'"),
        (["{scenes}/images", "--classes", "cat", "--checkpoint", "{run}", "-o", "{pile}"], 1, "finished artefact"),
    ],
    "evaluate run": [
        ([], 2, "Missing argument"),
        (["{pred}"], 2, "Missing option '--gt'"),
        (["{missing}", "--gt", "{scenes}", "-o", "{out}"], 1, "no such file or directory"),
        (["{index}", "--gt", "{scenes}", "-o", "{out}"], 1, "zutis.index artefact"),
        (["{scenes}", "--gt", "{scenes}", "-o", "{out}"], 1, "zutis.synth artefact"),
        (["{text}", "--gt", "{scenes}", "-o", "{out}"], 1, "is not valid JSON"),
        (["{empty}", "--gt", "{scenes}", "-o", "{out}"], 1, "expected a `zutis predict` directory"),
        (["{pred}", "--gt", "{index}", "-o", "{out}"], 1, "holds no gt.json"),
        (["{pred}", "--gt", "{missing}", "-o", "{out}"], 1, "no such file or directory"),
        (["{pred}", "--gt", "{scenes}", "--task", "depth", "-o", "{out}"], 2, "--task"),
        (["{pred}", "--gt", "{scenes}", "--max-dets", "a,b", "-o", "{out}"], 2, "--max-dets"),
        (["{pred}", "--gt", "{scenes}", "--match", "psychic", "-o", "{out}"], 2, "--match"),
        (["{pred}", "--gt", "{scenes}", "-o", "{pile}"], 1, "finished artefact"),
    ],
    "evaluate prepare": [
        ([], 2, "Missing argument"),
        (["voc2012"], 2, "Missing option '--root'"),
        (["atlantis", "--root", "{pile}", "-o", "{out}"], 2, "unknown dataset"),
        (["voc2012", "--root", "{missing}", "-o", "{out}"], 1, "no such directory"),
        (["voc2012", "--root", "{pile}", "-o", "{out}"], 1, "no JPEGImages/"),
        (["coco20k", "--root", "{pile}", "-o", "{out}"], 2, "--file-list"),
        (["cub2011", "--root", "{pile}", "-o", "{out}"], 1, "no images.txt"),
        (["voc2012", "--root", "{pile}", "--threshold", "2", "-o", "{out}"], 2, "--threshold"),
    ],
    "completions": [
        ([], 2, "Missing argument"),
        (["tcsh"], 2, "tcsh"),
        (["bash", "-o", "{empty}"], 1, "is a directory"),
        (["bash", "-o", "{text}/zutis.bash"], 1, "is a file"),
    ],
    "man": [
        (["-o", "{text}"], 1, "is a file"),
    ],
    "cosegment": [
        ([], 2, "Missing argument"),
        (["{missing}", "-o", "{out}"], 1, "no such directory"),
        (["{index}", "-o", "{out}"], 1, "zutis.index artefact"),
        (["{archives}", "-k", "1", "-o", "{out}"], 2, "-k must be >= 2"),
        (["{archives}", "--context", "road", "-o", "{out}"], 2, "--context road"),
        (["{archives}", "--model", "timm:vit_small_patch16_224", "-o", "{out}"], 2, "pass --pretrained FILE"),
        (["{archives}", "-o", "{pile}"], 1, "finished artefact"),
    ],
    "cluster": [
        ([], 2, "Missing argument"),
        (["{pseudo}", "-o", "{out}"], 2, "Missing option '-k'"),
        (["{missing}", "-k", "2", "-o", "{out}"], 1, "no such directory"),
        (["{index}", "-k", "2", "-o", "{out}"], 1, "zutis.index artefact"),
        (["{pseudo}", "-k", "1", "-o", "{out}"], 2, "-k must be >= 2"),
        (["{pseudo}", "-k", "999", "--model", "zutis-tiny", "--pretrained", "{weights}", "-o", "{out}"], 2,
         "fewer than the clusters asked for; give -k"),
        (["{pseudo}", "-k", "2", "-o", "{out}"], 2, "records no model that embeds images"),
        (["{pseudo}", "-k", "2", "--model", "dino-vits16", "-o", "{out}"], 2, "no CLIP image embedding"),
        (["{pseudo}", "-k", "2", "--model", "zutis-tiny", "--pretrained", "{missing}.pt", "-o", "{out}"], 1,
         "no such checkpoint file"),
        (["{pseudo}", "-k", "2", "--model", "zutis-tiny", "--pretrained", "{weights}", "--ground-truth", "{text}",
          "-o", "{out}"], 1, "is not valid JSON"),
        (["{pseudo}", "-k", "2", "--features-from", "{index}", "-o", "{out}"], 1, "zutis.index artefact"),
        (["{pseudo}", "-k", "2", "--features-from", "{index}", "--model", "zutis-tiny", "-o", "{out}"], 2,
         "leave out --model"),
        (["{pseudo}", "-k", "2", "--model", "zutis-tiny", "--pretrained", "{weights}", "-o", "{pile}"], 1,
         "finished artefact"),
    ],
    "hypotheses": [
        ([], 2, "Missing argument"),
        (["{scenes}/images", "--classes", "circle", "-o", "{out}"], 2, "at least two classes"),
        (["{missing}", "--classes", "circle,star", "-o", "{out}"], 1, "no such file or directory"),
        (["{scenes}/images", "--classes", "circle,star", "--window", "2", "-o", "{out}"], 2, "--window must lie in"),
        (["{scenes}/images", "--classes", "circle,star", "--threshold", "1", "-o", "{out}"], 2, "--threshold must lie"),
        (["{scenes}/images", "--classes", "circle,star", "--mode", "image", "--model", "zutis-tiny", "--pretrained",
          "{weights}", "-o", "{out}"], 2, "--mode image keeps"),
        (["{scenes}/images", "--classes", "circle,star", "--model", "zutis-tiny", "--pretrained", "{missing}.pt",
          "-o", "{out}"], 1, "no such checkpoint file"),
        (["{scenes}/images", "--classes", "circle,star", "--model", "zutis-tiny", "--pretrained", "{weights}",
          "--ground-truth", "{text}", "-o", "{out}"], 1, "is not valid JSON"),
        (["{scenes}/images", "--classes", "circle,star", "--model", "zutis-tiny", "--pretrained", "{weights}",
          "-o", "{pile}"], 1, "finished artefact"),
    ],
    "compare": [
        ([], 2, "Missing argument"),
        (["{scenes}", "-o", "{out}"], 2, "give the methods"),
        (["{scenes}", "--run", "sam", "-o", "{out}"], 2, "not one of"),
        (["{scenes}", "--run", "zutis", "-o", "{out}"], 2, "needs its checkpoint"),
        (["{missing}", "--run", "maskclip", "-o", "{out}"], 2, "no such file"),
        (["{scenes}/images", "--run", "maskclip", "-o", "{out}"], 2, "give --gt"),
        (["{scenes}", "--run", "reco:{missing}", "-o", "{out}"], 1, "no such directory"),
        (["{scenes}", "--run", "a=maskclip", "--run", "a=zutis:{run}", "-o", "{out}"], 2, "two runs are labelled"),
        (["{scenes}", "--run", "maskclip", "--classes", "chat", "-o", "{out}"], 2, "--classes chat: not in the ground"),
        (["{scenes}", "--run", "maskclip", "-o", "{pile}"], 1, "finished artefact"),
    ],
}

#: Valid arguments of the commands with --device or --classes (they run for real with good values).
BASE: dict[str, list[str]] = {
    "demo": ["--iterations", "1"],
    "synth train-clip": ["--steps", "1", "--batch-size", "4", "--workers", "0", "--eval-pool", "0", "--checkpoint-every",
                         "0", "-o", "{out}"],
    "index build": ["{pile}/images", *TINY_INDEX, "-o", "{out}"],
    "retrieve": ["{index}", "-k", "2", "--prompts", "names", "-o", "{out}"],
    "pseudolabel run": ["{archives}", "--size", "32", "--refine", "none", "-o", "{out}"],
    "train": ["{pseudo}", *TINY_TRAIN, "-o", "{out}"],
    "predict run": ["{scenes}/images", "--checkpoint", "{run}", "--no-vis", "-o", "{out}"],
    "evaluate run": ["{pred}", "--gt", "{scenes}", "-o", "{out}"],
    "cosegment": ["{archives}", "-k", "2", "--preview", "0", "-o", "{out}"],
    "cluster": ["{pseudo}", "-k", "2", "--model", "zutis-tiny", "--pretrained", "{weights}", "--contact", "0",
                "-o", "{out}"],
    "hypotheses": ["{scenes}/images", "--classes", "circle,star", "--model", "zutis-tiny", "--pretrained", "{weights}",
                   "--window", "1/2", "-o", "{out}"],
    "compare": ["{scenes}", "--run", "maskclip", "--model", "zutis-tiny", "--pretrained", "{weights}", "--picture",
                "0", "-o", "{out}"],
}

#: Valid arguments where --classes belongs to another way of running the command than BASE's.
CLASS_BASE: dict[str, list[str]] = {
    "train": ["--method", "reclip", "{scenes}/images", *TINY_RECLIP, "-o", "{out}"],
}

#: Class lists that are mistakes (usage errors), and one that must be accepted.
BAD_CLASSES = ["", "cat,cat", ",,,"]
GOOD_CLASSES = "chat,chien,猫"
#: `evaluate --classes` renames predicted classes (PRED=GT,...): its own mistakes and good value.
BAD_CLASS_MAPS = ["", "cat", ",,,", "circle=square,circle=star"]
GOOD_CLASS_MAP = "猫=circle,chien=star"


def leaf_commands() -> dict[str, object]:
    """Every leaf command of the `zutis` tree, keyed by its words after `zutis` ("index build")."""
    leaves: dict[str, object] = {}

    def walk(command, words: tuple[str, ...]) -> None:
        children = getattr(command, "commands", None)
        if children is None:
            leaves[" ".join(words)] = command
            return
        for name, child in children.items():
            walk(child, (*words, name))

    walk(typer.main.get_command(app), ())
    return leaves


def group_commands() -> list[str]:
    """The command groups (`zutis` itself included), by their words after `zutis`."""
    groups: list[str] = []

    def walk(command, words: tuple[str, ...]) -> None:
        children = getattr(command, "commands", None)
        if children is not None:
            groups.append(" ".join(words))
            for name, child in children.items():
                walk(child, (*words, name))

    walk(typer.main.get_command(app), ())
    return groups


def option_names(command) -> set[str]:
    return {opt for param in command.params for opt in getattr(param, "opts", [])}


LEAVES = leaf_commands()


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_checkpoint) -> dict[str, Path]:
    """Tiny artefacts of every kind, made by the stage functions, plus odd files and directories."""
    root = tmp_path_factory.mktemp("errors")
    pile = write_synth(SynthConfig("pile", 4, seed=3, size=32), root / "pile")
    scenes = write_synth(SynthConfig("scenes", 2, seed=5, size=48), root / "scenes")
    index = build_index(IndexConfig(sources=[str(pile / "images")], model="zutis-tiny", pretrained=str(tiny_checkpoint),
                                    workers=0, device="cpu", precision="fp32"), root / "index").path
    archives = retrieve(RetrieveConfig(indices=(index,), classes=(ClassQuery("circle", "circle"),
                                                                   ClassQuery("star", "star")),
                                       k=2, prompts="names", device="cpu"), root / "archives", warn=lambda m: None)
    pseudo = make_pseudolabels(root / "labels", count=6, size=32)
    dataset = write_dataset(pseudo, 2, CopyPasteConfig(size=32, max_objects=3), output=root / "dataset")
    run = train(TrainConfig(source=str(pseudo), model="zutis-tiny", pretrained=str(tiny_checkpoint), num_queries=4,
                            decoder_layers=1, decoder_heads=2, decoder_ffn=16, mlp_hidden=8, iterations=1,
                            batch_size=2, crop=32, workers=0, device="cpu", precision="fp32",
                            crop_adapter_scenes=2), root / "run").path
    pred = predict(PredictConfig(inputs=[str(scenes / "images")], classes=[ClassQuery("circle", "circle")],
                                 checkpoint=str(run), device="cpu", vis=False), root / "pred").path
    text = root / "notes.txt"
    text.write_text("not an image, not JSON, not a checkpoint\n")
    (root / "empty").mkdir()
    recipe = root / "recipe.yaml"
    recipe.write_text("iterations: lots\n")
    return {"root": root, "pile": pile, "scenes": scenes, "index": index, "archives": archives, "pseudo": pseudo,
            "dataset": dataset, "run": run, "pred": pred, "weights": tiny_checkpoint, "text": text,
            "empty": root / "empty", "bad_recipe": recipe, "missing": root / "no-such-thing"}


def fill(args: list[str], world: dict[str, Path], out: Path) -> list[str]:
    """``args`` with their {placeholders} replaced by the paths of ``world`` (and {out})."""
    names = {**{k: str(v) for k, v in world.items()}, "out": str(out)}
    return [re.sub(r"\{(\w+)\}", lambda m: names[m.group(1)], arg) for arg in args]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and directory under ``root``: relative path -> (size, mtime_ns)."""
    return {str(p.relative_to(root)): (p.stat().st_size if p.is_file() else -1, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def assert_error(code: int, out: str, err: str, expected: int, fragment: str, args: list[str]) -> None:
    """A user mistake: the expected status, nothing on stdout, one `error:` line last, no traceback."""
    where = f"zutis {' '.join(args)}\n{err}"
    assert code == expected, where
    assert out == "", where
    assert "Traceback" not in err, where
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), where
    assert sum(line.startswith("error:") for line in lines) == 1, where
    assert fragment in lines[-1], where


def check_case(capsys, world, tmp_path, words: str, args: list[str], expected: int, fragment: str) -> None:
    """Run one failing invocation and check the message and that nothing was written anywhere."""
    out = tmp_path / "out"
    before = snapshot(world["root"])
    argv = [*words.split(), *fill(args, world, out)]
    code, stdout, err = run(capsys, *argv)
    assert_error(code, stdout, err, expected, fragment, argv)
    assert not (out / "manifest.json").exists(), f"{argv}: half-written output"
    assert not out.exists() or not any(out.iterdir()), f"{argv}: files left in the output directory"
    assert not (tmp_path / "runs").exists(), f"{argv}: a numbered run directory was created"
    assert snapshot(world["root"]) == before, f"{argv}: changed an input or an existing directory"


# ---- the command tree ----------------------------------------------------------------------------

def test_enumeration_finds_every_command():
    assert EXPECTED_LEAVES <= set(LEAVES), sorted(EXPECTED_LEAVES - set(LEAVES))


def test_every_command_has_error_cases():
    missing = sorted(set(LEAVES) - set(CASES))
    assert not missing, f"add error cases of {missing} to CASES in {__file__}"
    for words, command in LEAVES.items():
        options = option_names(command)
        if "--device" in options or "--classes" in options:
            assert words in BASE, f"add valid base arguments of `zutis {words}` to BASE in {__file__}"


# ---- the cases -----------------------------------------------------------------------------------

@pytest.mark.parametrize("words", sorted(CASES))
def test_error_cases(words, world, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for args, expected, fragment in CASES[words]:
        check_case(capsys, world, tmp_path, words, args, expected, fragment)


@pytest.mark.parametrize("words", sorted(LEAVES))
def test_unknown_option_is_a_usage_error(words, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = [*words.split(), "--no-such-option"]
    code, out, err = run(capsys, *argv)
    assert_error(code, out, err, 2, "No such option: --no-such-option", argv)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("words", group_commands())
def test_a_group_without_a_command_is_a_usage_error_with_help_on_stderr(words, capsys):
    argv = words.split()
    code, out, err = run(capsys, *argv)
    assert_error(code, out, err, 2, "missing a command", argv)
    assert "Usage:" in err and f"zutis {words}".strip() + " --help" in err


@pytest.mark.parametrize("words", sorted(w for w, c in LEAVES.items() if "--device" in option_names(c)))
def test_devices_this_machine_lacks(words, world, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    devices = [("cuda:7", 1), ("tpu", 2)] + ([] if torch.cuda.is_available() else [("cuda", 1)])
    for device, expected in devices:
        check_case(capsys, world, tmp_path, words, [*BASE[words], "--device", device], expected, "--device")


@pytest.mark.parametrize("words", sorted(w for w, c in LEAVES.items() if "--classes" in option_names(c)))
def test_class_lists(words, world, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    renames = words == "evaluate run"
    base = CLASS_BASE.get(words, BASE[words])
    for classes in BAD_CLASS_MAPS if renames else BAD_CLASSES:
        check_case(capsys, world, tmp_path, words, [*base, "--classes", classes], 2, "--classes")
    good = GOOD_CLASS_MAP if renames else "circle,star" if words == "compare" else GOOD_CLASSES  # compare: GT names
    argv = [*words.split(), *fill([*base, "--classes", good, "--json"], world, tmp_path / "out")]
    code, out, err = run(capsys, *argv)
    assert code == 0, f"{argv}\n{err}"
    assert "--classes" not in err and "error" not in err
    document = json.loads(out)
    assert Path(document["path"]) == tmp_path / "out"


# ---- fixed mistakes, one by one ------------------------------------------------------------------

def test_resuming_a_finished_run_does_not_extend_it_to_the_default_iterations(world, tmp_path, capsys):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(world["run"], run_dir)
    code, out, err = run(capsys, *["train", "--resume", str(run_dir), "--json", "--device", "cpu", "--stop-grad"])
    assert code == 0, err
    assert json.loads(out)["iteration"] == 1
    assert "--device, --stop-grad ignored with --resume" in err  # each flag as typed


def test_predict_reads_no_model_for_an_unusable_output(world, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    argv = ["predict", str(world["scenes"] / "images"), "--classes", "circle", "--checkpoint", str(world["text"]),
            "-o", str(taken)]
    code, out, err = run(capsys, *argv)
    assert_error(code, out, err, 1, "not empty", argv)  # the output is refused before the checkpoint is read
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]


def test_evaluate_refuses_its_output_before_scoring(world, capsys):
    argv = ["evaluate", str(world["pred"]), "--gt", str(world["scenes"]), "-o", str(world["pile"])]
    code, out, err = run(capsys, *argv)
    assert_error(code, out, err, 1, "finished artefact", argv)
    assert len([line for line in err.splitlines() if line.strip()]) == 1  # no scoring logs before it
