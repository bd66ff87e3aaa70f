"""`zutis pseudolabel`: COCO output, empty/failed reporting, resume, workers, previews, onnx, quality floors."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from zutiscli.artefacts.coco import load_coco
from zutiscli.artefacts.manifest import read_manifest, relative_to, write_manifest
from zutiscli.artefacts.pseudolabels import EMPTY_NAME, PSEUDOLABELS_NAME, load_pseudolabels
from zutiscli.cli.app import main
from zutiscli.errors import ArtefactError, UsageError, ZutisError
from zutiscli.ops.masks import decode_mask, mask_iou
from zutiscli.pipeline.pseudolabel import PseudolabelConfig, plan_pseudolabel, run_pseudolabel
from zutiscli.pipeline.synth import SynthConfig, write_synth
from zutiscli.shapes.world import SHAPES


def make_archives(root, model, count=36, size=96, seed=21):
    """Archives whose classes are the true shapes of single-object pile images; returns (dir, truth)."""
    pile = write_synth(SynthConfig("pile", count, seed=seed, size=size), root / "pile")
    truth = load_coco(pile / "hidden" / "instances.json")
    annotations = {}
    for ann in truth["annotations"]:
        annotations.setdefault(ann["image_id"], []).append(ann)
    archives = root / "archives"
    archives.mkdir()
    classes = {shape: {"phrase": shape, "images": []} for shape in SHAPES}
    masks = {}
    for image in truth["images"]:
        anns = annotations.get(image["id"], [])
        if len(anns) != 1:
            continue
        path = pile / image["file_name"]
        classes[SHAPES[anns[0]["category_id"] - 1]]["images"].append(
            {"path": relative_to(archives, path), "score": 0.3, "index": 0, "row": image["id"]})
        masks[path.resolve()] = decode_mask(anns[0]["segmentation"])
    (archives / "archives.json").write_text(json.dumps({"k": 500, "indices": [], "classes": classes}))
    write_manifest(archives, "zutis.archives", model=model)
    return archives, masks


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_checkpoint):
    root = tmp_path_factory.mktemp("pl")
    return make_archives(root, {"name": "zutis-tiny", "pretrained": str(tiny_checkpoint)})


def quality(out, truth):
    best = {}
    for obj in load_pseudolabels(out).objects:
        key = obj.image.resolve()
        best[key] = max(best.get(key, 0.0), mask_iou(decode_mask(obj.rle), truth[key]))
    return float(np.mean([best.get(key, 0.0) for key in truth]))


def small(archives, **overrides):
    values = dict(inputs=str(archives), size=96, device="cpu")
    values.update(overrides)
    return PseudolabelConfig(**values)


@pytest.mark.parametrize("method, floor", [("spectral", 0.6), ("maskcut", 0.45)])
def test_methods_find_the_objects(world, tmp_path, method, floor):
    archives, truth = world
    result = run_pseudolabel(small(archives, method=method), tmp_path / method)
    score = quality(result.path, truth)
    assert score >= floor, f"{method}: mean best IoU {score:.3f}"
    coco = COCO(str(result.path / PSEUDOLABELS_NAME))
    for ann in coco.loadAnns(coco.getAnnIds()):
        assert ann["area"] == decode_mask(ann["segmentation"]).sum() > 0
        image = coco.loadImgs(ann["image_id"])[0]
        assert SHAPES[ann["category_id"] - 1] == image["archive"]


def test_empty_images_are_reported_not_given_masks(tmp_path, tiny_checkpoint):
    archives, _ = make_archives(tmp_path, {"name": "zutis-tiny", "pretrained": str(tiny_checkpoint)}, count=8)
    data = json.loads((archives / "archives.json").read_text())
    flat = tmp_path / "flat.png"
    Image.new("RGB", (96, 96), (90, 90, 90)).save(flat)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    data["classes"]["circle"]["images"] += [{"path": relative_to(archives, flat), "score": 0.1, "index": 0, "row": 99},
                                            {"path": relative_to(archives, broken), "score": 0.1, "index": 0, "row": 98}]
    (archives / "archives.json").write_text(json.dumps(data))
    result = run_pseudolabel(small(archives), tmp_path / "out")
    empty = [json.loads(line) for line in (result.path / EMPTY_NAME).read_text().splitlines()]
    assert {"path": relative_to(result.path, flat), "class": "circle"} in empty
    failed = [json.loads(line) for line in (result.path / "failed.jsonl").read_text().splitlines()]
    assert failed and failed[0]["path"].endswith("broken.png")
    files = {img["file_name"] for img in load_coco(result.path / PSEUDOLABELS_NAME)["images"]}
    assert relative_to(result.path, flat) not in files
    manifest = read_manifest(result.path, "zutis.pseudolabels")
    assert manifest.summary["failed"] == 1 and manifest.summary["per_class"]["circle"]["failed"] == 1


def test_resume_and_workers_give_the_same_result(world, tmp_path):
    archives, _ = world
    whole = run_pseudolabel(small(archives, chunk_size=4), tmp_path / "whole").path

    def crash(done, total):
        if done == 10:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_pseudolabel(small(archives, chunk_size=4), tmp_path / "cut", progress=crash)
    assert not (tmp_path / "cut" / "manifest.json").exists()
    # the rows made so far are never mixed with rows of other settings, finished or not
    with pytest.raises(ArtefactError, match="pseudolabel` results made with another refine; rerun with the same"):
        run_pseudolabel(small(archives, chunk_size=4, refine="none"), tmp_path / "cut")
    resumed = run_pseudolabel(small(archives, chunk_size=4), tmp_path / "cut").path
    with pytest.raises(ArtefactError, match="made with another min_area"):
        plan_pseudolabel(small(archives, chunk_size=4, min_area=0.02), resumed)
    parallel = run_pseudolabel(small(archives, chunk_size=4, workers=2), tmp_path / "parallel").path
    reference = load_coco(whole / PSEUDOLABELS_NAME)
    for other in (resumed, parallel):
        assert load_coco(other / PSEUDOLABELS_NAME)["annotations"] == reference["annotations"]


def test_previews_and_cli(world, tmp_path, capsys):
    archives, _ = world
    with pytest.raises(SystemExit) as exit_info:
        main(["pseudolabel", str(archives), "--size", "96", "--device", "cpu", "--preview", "2", "--method", "maskcut",
              "-o", str(tmp_path / "p"), "--json"])
    assert exit_info.value.code == 0
    document = json.loads(capsys.readouterr().out)
    assert document["path"] == str(tmp_path / "p") and document["masks"] > 0
    previews = list((tmp_path / "p" / "preview").rglob("*.jpg"))
    assert previews and all(Image.open(p).size == (96, 96) for p in previews)


def test_bad_options(world, tmp_path, capsys):
    archives, _ = world
    with pytest.raises(UsageError):
        PseudolabelConfig(inputs=str(archives), method="magic").validate()
    with pytest.raises(UsageError, match="--saliency-model"):
        PseudolabelConfig(inputs=str(archives), method="onnx").validate()
    with pytest.raises(UsageError, match="local weights"):
        run_pseudolabel(small(archives, model="dino-vits8"), tmp_path / "x")
    with pytest.raises(SystemExit) as exit_info:
        main(["pseudolabel", str(tmp_path / "missing")])
    assert exit_info.value.code == 1 and "missing: no such file or directory" in capsys.readouterr().err


def test_onnx_saliency_network(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    # a "saliency network" that returns the mean of the three channels: bright = salient
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image", "axes"], ["saliency"], keepdims=1)],
        "brightness",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("saliency", TensorProto.FLOAT, [1, 1, 64, 64])],
        [helper.make_tensor("axes", TensorProto.INT64, [1], [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "bright.onnx")
    image = np.zeros((80, 100, 3), dtype=np.uint8)
    image[20:60, 30:70] = 255
    Image.fromarray(image).save(tmp_path / "square.png")
    archives = tmp_path / "archives"
    archives.mkdir()
    (archives / "archives.json").write_text(json.dumps({"k": 1, "indices": [], "classes": {"square": {
        "phrase": "square", "images": [{"path": "../square.png", "score": 1.0, "index": 0, "row": 0}]}}}))
    write_manifest(archives, "zutis.archives", model={"name": "zutis-tiny", "pretrained": "none"})
    config = PseudolabelConfig(inputs=str(archives), method="onnx", saliency_model=str(tmp_path / "bright.onnx"),
                               onnx_size=64, onnx_mean=(0.0, 0.0, 0.0), onnx_std=(1.0, 1.0, 1.0), refine="none")
    result = run_pseudolabel(config, tmp_path / "out")
    objects = load_pseudolabels(result.path).objects
    truth = np.zeros((80, 100), dtype=bool)
    truth[20:60, 30:70] = True
    assert len(objects) == 1 and mask_iou(decode_mask(objects[0].rle), truth) > 0.9
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(ZutisError, match="onnxruntime cannot load it"):
        run_pseudolabel(PseudolabelConfig(inputs=str(archives), method="onnx",
                                          saliency_model=str(tmp_path / "junk.onnx")), tmp_path / "junk")


@pytest.fixture(scope="module")
def shapes_clip_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("pl-shapes-clip")
    return make_archives(root, {"name": "shapes-clip", "pretrained": "builtin"}, count=48, size=64, seed=23)


# Measured mean best IoU on these 37 single-object 64 px images (pseudo-labels at 128 px with the
# shipped shapes-clip): spectral 0.695 (7 images left empty count as 0), maskcut 0.887, attention
# 0.386. The floors sit below with a margin that a broken eigenvector, a flipped foreground
# choice or a lost upsampling would not meet.
@pytest.mark.parametrize("method, floor", [("spectral", 0.6), ("maskcut", 0.78), ("attention", 0.3)])
def test_methods_find_the_objects_with_shapes_clip(shapes_clip_world, tmp_path, method, floor):
    archives, truth = shapes_clip_world
    result = run_pseudolabel(small(archives, method=method, size=128), tmp_path / method)
    score = quality(result.path, truth)
    assert score >= floor, f"{method}: mean best IoU {score:.3f}"


def test_methods_come_from_the_registry(world, tmp_path, monkeypatch):
    """A new method is one registered class: --method, defaults and the stage pick it up."""
    from zutiscli.methods import pseudolabel as registry
    from zutiscli.methods.pseudolabel import PseudoLabeller, get_labeller, labeller_names, register

    assert labeller_names()[:4] == ("spectral", "attention", "maskcut", "onnx")
    assert (get_labeller("maskcut").square_input, get_labeller("maskcut").default_components) == (True, "split")
    assert get_labeller("onnx").needs == "saliency"
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register
    class Centre(PseudoLabeller):
        name = "centre"
        default_size = 48
        default_components = "none"

        def propose(self, image, features, saliency, config):
            soft = np.zeros(image.shape[:2], dtype=np.float32)
            height, width = soft.shape
            soft[height // 4:3 * height // 4, width // 4:3 * width // 4] = 1.0
            return [(soft, 0.5)]

    config = small(world[0], method="centre", size=None, refine="none")
    config.validate()
    assert (config.input_size, config.component_mode) == (48, "none")
    result = run_pseudolabel(config, tmp_path / "centre")
    objects = load_pseudolabels(result.path).objects
    assert objects and all(obj.score == 0.5 for obj in objects)
    with pytest.raises(UsageError, match="centre"):
        PseudolabelConfig(inputs=str(world[0]), method="magic").validate()


def _content(directory):
    """What a pseudo-label directory says, with file names resolved (so directories may differ in depth)."""
    from zutiscli.artefacts.manifest import resolve_relative

    coco = load_coco(directory / PSEUDOLABELS_NAME)
    for image in coco["images"]:
        image["file_name"] = str(resolve_relative(directory, image["file_name"]))
    lines = {}
    for name in (EMPTY_NAME, "failed.jsonl"):
        rows = [json.loads(line) for line in (directory / name).read_text().splitlines()]
        lines[name] = [row | {"path": str(resolve_relative(directory, row["path"]))} for row in rows]
    return coco, lines


@pytest.fixture(scope="module")
def sharded(world, tmp_path_factory):
    """One archive image in two archives, an unreadable image; the unsharded run and a 2-shard run merged."""
    from zutiscli.pipeline.pseudolabel import merge_pseudolabels

    root = tmp_path_factory.mktemp("pl-shards")
    archives = root / "archives"
    shutil.copytree(world[0], archives)
    data = json.loads((archives / "archives.json").read_text())
    source = world[0]
    for entry in data["classes"].values():
        for hit in entry["images"]:
            hit["path"] = relative_to(archives, (source / hit["path"]).resolve())
    broken = root / "broken.png"
    broken.write_bytes(b"not a png")
    data["classes"]["square"]["images"].insert(1, dict(data["classes"]["circle"]["images"][0]))
    data["classes"]["circle"]["images"].append({"path": relative_to(archives, broken), "score": 0.1, "index": 0,
                                                "row": 97})
    (archives / "archives.json").write_text(json.dumps(data))
    write_manifest(archives, "zutis.archives", model=read_manifest(source).model)
    # one thread: a shard batches other images together than the whole run does, and multi-threaded
    # kernels may round a row differently by batch shape
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        whole = run_pseudolabel(small(archives, chunk_size=5), root / "whole").path
        shards = [run_pseudolabel(small(archives, chunk_size=5, shard=(i, 2)), root / "shards").path for i in (1, 0)]
    finally:
        torch.set_num_threads(threads)
    merged = merge_pseudolabels(shards, root / "merged")
    return archives, whole, shards, merged


def test_sharded_run_merged_equals_the_unsharded_run(sharded):
    archives, whole, shards, merged = sharded
    assert [s.name for s in shards] == ["shard-1-of-2", "shard-0-of-2"]
    sizes = [len(load_coco(s / PSEUDOLABELS_NAME)["images"]) for s in shards]
    assert all(sizes), sizes  # both shards did work
    shared = relative_to(whole, (archives / json.loads((archives / "archives.json").read_text())
                                 ["classes"]["circle"]["images"][0]["path"]).resolve())
    in_shards = [any(img["file_name"].endswith(Path(shared).name) for img in load_coco(s / PSEUDOLABELS_NAME)["images"])
                 for s in shards]
    assert sorted(in_shards) == [False, True]  # an image of two archives is in one shard only
    assert merged.images == read_manifest(whole).summary["images"] and merged.failed == 1
    assert _content(merged.path) == _content(whole)
    reference = read_manifest(whole)
    manifest = read_manifest(merged.path, "zutis.pseudolabels")
    assert manifest.params == reference.params and manifest.params["shard"] is None
    assert manifest.model == reference.model and manifest.summary["merged_from"] == 2
    for key in ("images", "masks", "empty", "failed", "per_class"):
        assert manifest.summary[key] == reference.summary[key], key
    assert [read_manifest(s).params["shard"] for s in shards] == [[1, 2], [0, 2]]
    objects = load_pseudolabels(merged.path).objects
    assert objects and all(obj.image.is_file() for obj in objects)


def test_merge_refuses_what_is_not_one_run(sharded, tmp_path):
    from zutiscli.errors import ArtefactError
    from zutiscli.pipeline.pseudolabel import merge_pseudolabels

    archives, whole, shards, _ = sharded
    cases = [
        ([shards[0]], "shard-0-of-2: shard 0/2 is missing"),
        ([shards[0], shards[0]], "given twice"),
        ([whole], "is not a shard"),
        ([archives], "zutis.archives"),
    ]

    def copy(name, params=None, archives_at=archives):
        """A copy of shard 0 under tmp_path/name, its manifest pointing at ``archives_at``, params changed."""
        target = tmp_path / name / "shard-0-of-2"
        shutil.copytree(shards[1], target)
        manifest = json.loads((target / "manifest.json").read_text())
        manifest["inputs"][0]["path"] = relative_to(target, archives_at)
        manifest["params"] |= params or {}
        (target / "manifest.json").write_text(json.dumps(manifest))
        return target

    cases.append(([shards[0], copy("other", {"refine": "densecrf"})], "refine = 'densecrf'"))
    cases.append(([shards[0], copy("three", {"shard": [0, 3]})], "one of 2 shards"))
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(archives, elsewhere)
    cases.append(([shards[0], copy("moved", archives_at=elsewhere)], "of the archives"))
    cases.append(([shards[0], copy("same"), shards[1]], "again"))
    holey = copy("holey")
    shutil.rmtree(holey / "parts")
    cases.append(([shards[0], holey], "in none of the shards"))
    unfinished = copy("unfinished")
    (unfinished / "manifest.json").unlink()
    cases.append(([shards[0], unfinished], "not a finished zutis artefact"))
    for given, fragment in cases:
        with pytest.raises((ArtefactError, UsageError), match=fragment) as info:
            merge_pseudolabels(given, tmp_path / "out")
        assert "\n" not in str(info.value)
        assert not (tmp_path / "out").exists()
    taken = tmp_path / "taken"
    shutil.copytree(whole, taken)
    with pytest.raises(ArtefactError, match="finished artefact"):
        merge_pseudolabels(shards, taken)


def test_sharded_runs_resume_and_need_an_output(sharded, tmp_path, monkeypatch):
    archives, _, shards, _ = sharded
    again = run_pseudolabel(small(archives, chunk_size=5, shard=(0, 2)), shards[1].parent)
    assert again.path == shards[1] and again.images == read_manifest(shards[1]).summary["images"]
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match="needs -o DIR"):
        run_pseudolabel(small(archives, shard=(0, 2)))
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    from_env = run_pseudolabel(small(archives, chunk_size=5), tmp_path / "env")
    assert from_env.path == tmp_path / "env" / "shard-1-of-2" and from_env.shard == (1, 2)
    assert load_coco(from_env.path / PSEUDOLABELS_NAME) == load_coco(shards[0] / PSEUDOLABELS_NAME) | {
        "images": [img | {"file_name": relative_to(from_env.path, shards[0] / img["file_name"])}
                   for img in load_coco(shards[0] / PSEUDOLABELS_NAME)["images"]]}
    assert not (tmp_path / "runs").exists()


def test_merge_command_and_its_dry_run(sharded, tmp_path, capsys):
    archives, whole, shards, _ = sharded
    argv = ["pseudolabel", "merge", *map(str, shards), "-o", str(tmp_path / "m")]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--dry-run", "--json"])
    assert exit_info.value.code == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["command"] == "pseudolabel merge" and plan["params"]["shards"] == 2
    assert plan["work"]["images"] == read_manifest(whole).summary["images"]
    assert [entry["kind"] for entry in plan["reads"]] == ["zutis.pseudolabels, shard 0/2",
                                                          "zutis.pseudolabels, shard 1/2", "zutis.archives"]
    assert not (tmp_path / "m").exists()
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--json"])
    assert exit_info.value.code == 0
    document = json.loads(capsys.readouterr().out)
    assert document["merged_from"] == 2 and document["path"] == str(tmp_path / "m")
    assert _content(tmp_path / "m") == _content(whole)
    with pytest.raises(SystemExit) as exit_info:
        main(["pseudolabel", "merge", str(shards[0]), "-o", str(tmp_path / "n")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 1 and len(err) == 1 and "shard-0-of-2: shard 0/2 is missing" in err[0]


def test_shard_as_text():
    assert PseudolabelConfig(inputs=("a",), shard="1/4").shard == (1, 4)
    with pytest.raises(UsageError, match="--shard"):
        PseudolabelConfig(inputs=("a",), shard="4/4")
