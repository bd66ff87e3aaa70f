"""`zutis pseudolabel` over a pile (image files and directories, or an index): unnamed masks, the same
masks the archives get, sharding and merging, and the refusals."""

import json
import shutil

import pytest
import torch

from zutiscli.artefacts.coco import load_coco
from zutiscli.artefacts.manifest import read_manifest, relative_to, resolve_relative
from zutiscli.artefacts.pseudolabels import EMPTY_NAME, PSEUDOLABELS_NAME
from zutiscli.cli.app import main
from zutiscli.errors import ArtefactError, UsageError, ZutisError
from zutiscli.pipeline.index import IndexConfig, build_index
from zutiscli.pipeline.pseudolabel import PseudolabelConfig, merge_pseudolabels, run_pseudolabel
from zutiscli.pipeline.pseudolabel_inputs import UNNAMED, read_inputs

from tests.pipeline.test_pseudolabel import make_archives


@pytest.fixture(scope="module")
def piles(tmp_path_factory, tiny_checkpoint):
    """Archives of single-object pile images, the pile directory (with multi-object and empty images too)
    and the tiny model the archives record."""
    root = tmp_path_factory.mktemp("pile")
    model = {"name": "zutis-tiny", "pretrained": str(tiny_checkpoint)}
    archives, truth = make_archives(root, model, count=24)
    return archives, root / "pile" / "images", truth, model


def config(inputs, model=None, **overrides):
    values = dict(inputs=inputs, size=96, device="cpu")
    if model is not None:
        values |= {"model": model["name"], "pretrained": model["pretrained"]}
    return PseudolabelConfig(**(values | overrides))


def masks_by_image(directory):
    """Absolute image path -> its masks' RLE counts, in the artefact's order."""
    coco = load_coco(directory / PSEUDOLABELS_NAME)
    files = {image["id"]: resolve_relative(directory, image["file_name"]) for image in coco["images"]}
    found = {}
    for ann in coco["annotations"]:
        found.setdefault(files[ann["image_id"]], []).append(ann["segmentation"]["counts"])
    return found


def test_a_pile_gets_unnamed_masks_the_same_as_the_archives_give(piles, tmp_path):
    archives, images, truth, model = piles
    named = run_pseudolabel(config(str(archives)), tmp_path / "named").path
    unnamed = run_pseudolabel(config(str(images), model), tmp_path / "unnamed").path
    coco = load_coco(unnamed / PSEUDOLABELS_NAME)
    assert [c["name"] for c in coco["categories"]] == [UNNAMED]
    assert {a["category_id"] for a in coco["annotations"]} == {1}
    every = sorted(images.iterdir())
    seen = {resolve_relative(unnamed, i["file_name"]) for i in coco["images"]}
    seen |= {resolve_relative(unnamed, json.loads(line)["path"])
             for line in (unnamed / EMPTY_NAME).read_text().splitlines()}
    assert seen == {path.resolve() for path in every}  # every image of the pile, with masks or reported empty
    assert len(every) > len(truth)  # the pile has multi-object images the archives leave out
    manifest = read_manifest(unnamed, "zutis.pseudolabels")
    assert manifest.params["source"] == "images" and read_manifest(named).params["source"] == "archives"
    assert manifest.inputs[0].fingerprint.startswith("listing-blake2b:")
    # class-agnostic discovery: an image gets the same masks whether an archive or the pile holds it
    theirs, ours = masks_by_image(named), masks_by_image(unnamed)
    assert theirs and all(ours[path] == masks for path, masks in theirs.items())


def test_an_index_is_a_pile_with_its_model(piles, tmp_path):
    archives, images, _, model = piles
    index = build_index(IndexConfig(sources=[str(images)], model=model["name"], pretrained=model["pretrained"],
                                    precision="fp32", device="cpu", workers=0), tmp_path / "index").path
    found = read_inputs([str(index)])
    assert found.source == "index" and found.model_dir == index
    assert [hit.path for hit in found.archives[UNNAMED]] == sorted(p.resolve() for p in images.iterdir())
    from_index = run_pseudolabel(config(str(index)), tmp_path / "from-index").path  # model: the index's
    from_files = run_pseudolabel(config(str(images), model), tmp_path / "from-files").path
    assert masks_by_image(from_index) == masks_by_image(from_files)
    assert read_manifest(from_index).inputs[0].kind == "zutis.index"


def test_a_sharded_pile_merges_into_the_unsharded_run(piles, tmp_path):
    _, images, _, model = piles
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # shards batch other images together; one thread rounds alike
    try:
        whole = run_pseudolabel(config(str(images), model, chunk_size=5), tmp_path / "whole").path
        shards = [run_pseudolabel(config(str(images), model, chunk_size=5, shard=(i, 2)), tmp_path / "shards").path
                  for i in (0, 1)]
    finally:
        torch.set_num_threads(threads)
    merged = merge_pseudolabels(shards, tmp_path / "merged").path
    ours, theirs = load_coco(merged / PSEUDOLABELS_NAME), load_coco(whole / PSEUDOLABELS_NAME)
    assert ours["annotations"] == theirs["annotations"] and ours["images"] == theirs["images"]
    assert read_manifest(merged).params == read_manifest(whole).params
    assert read_manifest(merged).inputs[0].fingerprint == read_manifest(whole).inputs[0].fingerprint


def test_what_a_pile_cannot_be(piles, tmp_path, capsys):
    archives, images, _, model = piles
    with pytest.raises(UsageError, match="image files record no model: give --model"):
        run_pseudolabel(config(str(images)), tmp_path / "no-model")
    named = run_pseudolabel(config(str(archives)), tmp_path / "named").path
    with pytest.raises(ArtefactError, match="is a zutis.pseudolabels artefact; expected a zutis.archives .* or zutis.index"):
        read_inputs([str(named)])
    with pytest.raises(UsageError, match="a zutis directory is read alone"):
        read_inputs([str(archives), str(images)])
    (tmp_path / "words").mkdir()
    (tmp_path / "words" / "notes.txt").write_text("no images here")
    with pytest.raises(ZutisError, match="no image files found"):
        read_inputs([str(tmp_path / "words")])
    for bad in ([str(images)], [str(tmp_path / "words")]):
        with pytest.raises(SystemExit) as exit_info:
            main(["pseudolabel", *bad, "--device", "cpu", "-o", str(tmp_path / "refused")])
        assert exit_info.value.code != 0 and not (tmp_path / "refused").exists()
        error = capsys.readouterr().err
        assert error.startswith("error: ") and "Traceback" not in error


def test_the_command_line_takes_several_image_sources(piles, tmp_path, capsys):
    _, images, _, model = piles
    first, second = sorted(images.iterdir())[:2]
    with pytest.raises(SystemExit) as exit_info:
        main(["pseudolabel", str(first), str(second), "--model", model["name"], "--pretrained", model["pretrained"],
              "--size", "96", "--device", "cpu", "-o", str(tmp_path / "two"), "--json"])
    assert exit_info.value.code == 0
    document = json.loads(capsys.readouterr().out)
    assert document["images"] == 2 and list(document["per_class"]) == [UNNAMED]
    files = {relative_to(tmp_path / "two", path) for path in (first, second)}
    coco = load_coco(tmp_path / "two" / PSEUDOLABELS_NAME)
    assert {image["file_name"] for image in coco["images"]} <= files
    shutil.rmtree(tmp_path / "two")
