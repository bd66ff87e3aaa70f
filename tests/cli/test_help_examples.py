"""The ``Example:`` line of every command's ``--help`` works as written, and the table of ``--json``
keys in docs/cli.md matches what the commands print.

The leaf commands are enumerated from the Click tree, so a new command fails this file until its
docstring has exactly one ``Example: zutis ...`` line. The examples run in-process through
:func:`zutiscli.cli.app.main`, in pipeline order inside one temporary directory on the shapes world,
so each one finds what the earlier ones wrote (``data/pile`` -> ``data/index`` -> ``data/archives``
-> ``data/pseudo`` (and ``data/pseudo-all``, merged from two shards) -> ``runs/train/demo`` -> ``preds`` -> ``runs/metrics``). The inputs no example
writes (two index shards, a two-image VOC2012 tree) are built first with the project's own functions.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image

from zutiscli.cli.app import app, main
from zutiscli.artefacts.labelmap import write_label_png
from zutiscli.pipeline.index import IndexConfig, build_index
from zutiscli.pipeline.synth import SynthConfig, write_synth

README = Path(__file__).resolve().parents[2] / "README.md"
#: Where the ``--json`` keys of every command are documented.
JSON_TABLE = Path(__file__).resolve().parents[2] / "docs" / "cli.md"

#: Leaf commands in the order their examples run: each example reads what an earlier one wrote.
PIPELINE_ORDER = [
    "synth pile", "synth scenes", "synth pairs", "synth train-clip", "index build", "index merge",
    "retrieve", "cosegment", "pseudolabel run", "pseudolabel merge", "cluster", "hypotheses", "copypaste", "train", "predict run", "predict merge",
    "evaluate run", "evaluate prepare", "compare", "completions", "man", "demo",
]

#: Commands run just before an example, for inputs that only a variant of an earlier command writes.
BEFORE = {
    "pseudolabel merge": [
        "pseudolabel data/archives --size 64 --shard 0/2 -o data/pseudo-shards",
        "pseudolabel data/archives --size 64 --shard 1/2 -o data/pseudo-shards",
    ],
    "predict merge": [
        "predict data/scenes/images --checkpoint runs/train/demo --classes circle,star --shard 0/2 -o preds-shards",
        "predict data/scenes/images --checkpoint runs/train/demo --classes circle,star --shard 1/2 -o preds-shards",
    ],
}

#: Examples not run here, with where they are run instead.
NOT_RUN_HERE = {
    "demo": "tests/test_demo.py runs `zutis demo` (minutes)",
}


def _leaves(command, words=()):
    """``(words, click command)`` of every leaf command under ``command``."""
    sub = getattr(command, "commands", None)
    if not sub:
        return [(" ".join(words), command)]
    return [leaf for name, child in sub.items() for leaf in _leaves(child, (*words, name))]


LEAVES = dict(_leaves(typer.main.get_command(app)))


def _examples(command) -> list[str]:
    """The ``zutis ...`` commands of the ``Example:`` lines of ``command``'s help."""
    lines = (command.help or "").splitlines()
    return [line.strip()[len("Example:"):].strip() for line in lines if line.strip().startswith("Example:")]


def _argv(example: str) -> list[str]:
    """The arguments of ``example`` after ``zutis``, with ``~`` expanded as a shell would."""
    words = shlex.split(example)
    assert words[0] == "zutis", example
    return [os.path.expanduser(word) if word.startswith("~") else word for word in words[1:]]


def _voc_tree(root: Path) -> None:
    """A two-image PASCAL VOC2012 segmentation tree (a person and a dog per image) under ``root``."""
    classes = np.zeros((6, 8), dtype=np.uint8)
    classes[1:4, 1:4] = 15
    classes[1:4, 5:7] = 12
    objects = np.zeros_like(classes)
    objects[1:4, 1:4] = 1
    objects[1:4, 5:7] = 2
    for folder in ("JPEGImages", "SegmentationClass", "SegmentationObject", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for stem in ("2007_000001", "2007_000002"):
        Image.new("RGB", (8, 6), (10, 20, 30)).save(root / "JPEGImages" / f"{stem}.jpg")
        write_label_png(root / "SegmentationClass" / f"{stem}.png", classes)
        write_label_png(root / "SegmentationObject" / f"{stem}.png", objects)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000001\n2007_000002\n")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A working directory with the inputs that no example writes: two shards of an index of a
    small pile (for ``index merge``) and a VOC2012 tree (for ``evaluate prepare``)."""
    root = tmp_path_factory.mktemp("examples")
    shard_pile = write_synth(SynthConfig("pile", 12, seed=5, size=64), root / "shard-pile")
    for i in range(2):
        build_index(IndexConfig(sources=[str(shard_pile / "images")], model="shapes-clip", pretrained="builtin",
                                workers=0, shard=(i, 2)), root / "data" / "shards")
    _voc_tree(root / "VOCdevkit" / "VOC2012")
    (root / "home").mkdir()
    return root


@pytest.fixture(scope="module")
def ran(world):
    """Every example run as written, in pipeline order: ``{command: (example, exit status, stdout, stderr)}``."""
    patch = pytest.MonkeyPatch()
    patch.chdir(world)
    patch.setenv("HOME", str(world / "home"))
    patch.delenv("ZUTIS_CHECKPOINT", raising=False)
    results = {}
    try:
        for name in PIPELINE_ORDER:
            if name in NOT_RUN_HERE or name not in LEAVES:
                continue
            for before in BEFORE.get(name, []):
                code, _, err = _run_captured(shlex.split(before))
                assert code == 0, f"zutis {before}\nexit {code}\n{err[-2000:]}"
            example = _examples(LEAVES[name])[0]
            results[name] = (example, *_run_captured(_argv(example)))
    finally:
        patch.undo()
    return results


def _run_captured(argv: list[str]) -> tuple[int, str, str]:
    """``zutis argv`` in-process with stdout/stderr redirected to strings (usable in module fixtures)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return code, out.getvalue(), err.getvalue()


def test_every_leaf_has_exactly_one_example():
    assert set(LEAVES) == set(PIPELINE_ORDER), "list a new command in PIPELINE_ORDER, after what its example reads"
    for name, command in LEAVES.items():
        examples = _examples(command)
        assert len(examples) == 1, f"zutis {name} --help: {len(examples)} Example: lines, want one"
        # `zutis index DIR` is `zutis index build DIR`, `zutis pseudolabel ARCHIVES` is `zutis pseudolabel run
        # ARCHIVES`, and so for `zutis predict` and `zutis evaluate`.
        prefix = {"index build": "zutis index ", "evaluate run": "zutis evaluate ", "predict run": "zutis predict ",
                  "pseudolabel run": "zutis pseudolabel "}.get(name, f"zutis {name}")
        assert examples[0].startswith(prefix), f"zutis {name}: the example runs another command: {examples[0]}"


@pytest.mark.parametrize("name", [n for n in PIPELINE_ORDER if n not in NOT_RUN_HERE])
def test_example_runs(ran, name):
    example, code, out, err = ran[name]
    assert code == 0, f"{example}\nexit {code}\n{err[-2000:]}"


def test_examples_write_their_artefacts(ran, world):
    assert (world / "data" / "pile" / "manifest.json").is_file()
    assert (world / "data" / "index-all" / "manifest.json").is_file()
    assert (world / "data" / "pseudo-all" / "manifest.json").is_file()
    assert (world / "runs" / "train" / "demo" / "manifest.json").is_file()
    assert (world / "preds" / "manifest.json").is_file()
    assert (world / "runs" / "metrics" / "manifest.json").is_file()
    assert (world / "gt" / "voc" / "instances.json").is_file()
    assert (world / "home" / ".local" / "share" / "man" / "man1" / "zutis.1").is_file()


def readme_json_keys() -> dict[str, tuple[set[str], bool]]:
    """The ``--json`` table of docs/cli.md: command -> (documented keys, whether task objects follow)."""
    text = JSON_TABLE.read_text(encoding="utf-8")
    start = text.index("`--json` documents")
    rows = {}
    for line in text[start:].splitlines()[1:]:
        if rows and not line.startswith("|"):
            break
        match = re.match(r"\|\s*`zutis ([a-z -]+)`\s*\|(.*)\|\s*$", line)
        if match:
            keys_text = match.group(2)
            fixed, _, extra = keys_text.partition("plus")
            rows[match.group(1).strip()] = (set(re.findall(r"`([a-z_]+)`", fixed)), bool(extra.strip()))
    return rows


def test_readme_json_table_lists_every_command():
    documented = readme_json_keys()
    assert set(documented) == set(LEAVES) - {"completions"}, "completions has no --json; every other command a row"
    for name, (keys, _) in documented.items():
        assert "path" in keys, f"zutis {name}: the docs/cli.md row lacks `path`"


#: Commands rerun with ``--json`` (cheap ones, reading the examples' artefacts), as shell words after ``zutis``.
JSON_RUNS = {
    "synth pile": "synth pile -n 4 --size 64 -o json/pile",
    "index merge": "index merge data/shards/shard-0-of-2 data/shards/shard-1-of-2 -o json/index",
    "pseudolabel merge": "pseudolabel merge data/pseudo-shards/shard-0-of-2 data/pseudo-shards/shard-1-of-2 -o json/pseudo",
    "retrieve": "retrieve data/index --classes circle,square -k 4 -o json/archives",
    "copypaste": "copypaste data/pseudo -n 2 -o json/scenes",
    "evaluate run": "evaluate preds --gt data/scenes -o json/metrics",
    "evaluate prepare": "evaluate prepare voc2012 --root VOCdevkit/VOC2012 -o json/voc",
    "man": "man -o json/man",
    "cosegment": "cosegment data/archives -k 4 --preview 0 -o json/references",
    "cluster": "cluster data/pseudo -k 2 --contact 0 -o json/clusters",
    "compare": "compare data/scenes --run maskclip --model shapes-clip --pretrained builtin --picture 0 -o json/compare",
}


@pytest.mark.parametrize("name", list(JSON_RUNS))
def test_json_keys_match_readme(ran, world, monkeypatch, name):
    monkeypatch.chdir(world)
    code, out, err = _run_captured([*shlex.split(JSON_RUNS[name]), "--json"])
    assert code == 0, err[-2000:]
    document = json.loads(out)
    keys, task_objects = readme_json_keys()[name]
    actual = set(document)
    if task_objects:
        actual -= set(document.get("tasks", []))
    assert actual == keys, f"zutis {name} --json: printed {sorted(actual)}, docs/cli.md lists {sorted(keys)}"


def test_readme_stays_a_manual():
    # measurements, ablations and what was tried live in docs/ and benchmarks/README.md
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 300
