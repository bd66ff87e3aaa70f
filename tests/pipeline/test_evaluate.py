"""`zutis evaluate`: exact COCO AP, mIoU, PQ and cluster matching end to end; the dataset adapters."""

import contextlib
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from zutiscli.artefacts.groundtruth import load_ground_truth
from zutiscli.artefacts.labelmap import read_label_map, read_label_png, write_label_map, write_label_png
from zutiscli.artefacts.manifest import read_manifest, relative_to, write_manifest
from zutiscli.artefacts.predictions import PredImage, Prediction
from zutiscli.data.datasets import PrepareConfig, prepare_dataset
from zutiscli.engine.evaluator import AP_NAMES, headline, score
from zutiscli.errors import ZutisError
from zutiscli.ops.masks import decode_mask, encode_mask, rle_area, rle_bbox
from zutiscli.pipeline.evaluate import EvaluateConfig, evaluate
from zutiscli.pipeline.synth import SynthConfig, write_synth

from helpers import run_cli as run  # noqa: E402


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return write_synth(SynthConfig("scenes", 6, size=64), tmp_path_factory.mktemp("gt") / "scenes")


def _gt(scenes):
    return json.loads((scenes / "instances.json").read_text())


def make_prediction(gt_dir: Path, out: Path, *, names=None, drop=0.0, shift=0, seed=0, panoptic=False) -> Path:
    """A `zutis predict`-shaped directory built from the ground truth itself (score 1 = perfect)."""
    rng = np.random.default_rng(seed)
    data = _gt(gt_dir)
    (out / "semantic").mkdir(parents=True)
    names = names or [c["name"] for c in data["categories"]]
    results, images, pan_anns = [], [], []
    for img in data["images"]:
        stem = Path(img["file_name"]).stem
        labels = read_label_png(gt_dir / "semantic" / f"{stem}.png")
        if shift:
            labels = np.roll(labels, shift, axis=1)
        write_label_png(out / "semantic" / f"{stem}.png", labels)
        images.append({"id": img["id"], "file_name": relative_to(out, gt_dir / img["file_name"]),
                       "width": img["width"], "height": img["height"], "stem": stem,
                       "semantic": f"semantic/{stem}.png"})
    for ann in data["annotations"]:
        if rng.random() < drop:
            continue
        mask = decode_mask(ann["segmentation"])
        if shift:
            mask = np.roll(mask, shift, axis=1)
        rle = encode_mask(mask)
        results.append({"image_id": ann["image_id"], "category_id": ann["category_id"], "segmentation": rle,
                        "bbox": rle_bbox(rle), "area": rle_area(rle), "score": 1.0})
    (out / "predictions.json").write_text(json.dumps(results))
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
    (out / "images.json").write_text(json.dumps({"images": images, "categories": categories}))
    if panoptic:
        pan = make_panoptic(gt_dir, out / "panoptic", names=names)
        pan["images"] = images
        (out / "panoptic.json").write_text(json.dumps(pan))
    write_manifest(out, "zutis.predictions")
    return out


def make_panoptic(gt_dir: Path, folder: Path, names=None) -> dict:
    """COCO panoptic annotations of the shapes scenes: one segment per object, background as stuff."""
    data = _gt(gt_dir)
    folder.mkdir(parents=True, exist_ok=True)
    names = names or [c["name"] for c in data["categories"]]
    background = len(names) + 1
    categories = [{"id": i + 1, "name": n, "isthing": 1} for i, n in enumerate(names)]
    categories.append({"id": background, "name": "background", "isthing": 0})
    annotations = []
    for img in data["images"]:
        ids = np.zeros((img["height"], img["width"]), dtype=np.int64)
        segments = []
        for ann in data["annotations"]:
            if ann["image_id"] == img["id"]:
                ids[decode_mask(ann["segmentation"])] = ann["id"] + 1
                segments.append({"id": ann["id"] + 1, "category_id": ann["category_id"], "iscrowd": 0})
        ids[ids == 0] = 1  # the background stuff segment
        segments.append({"id": 1, "category_id": background, "iscrowd": 0})
        rgb = np.stack([ids % 256, (ids // 256) % 256, ids // 65536], axis=-1).astype(np.uint8)
        name = Path(img["file_name"]).stem + ".png"
        Image.fromarray(rgb).save(folder / name)
        annotations.append({"image_id": img["id"], "file_name": name, "segments_info": segments})
    images = [dict(img, file_name=relative_to(folder.parent, gt_dir / img["file_name"])) for img in data["images"]]
    return {"images": images, "annotations": annotations, "categories": categories}


def noisy_results(data, seed=0):
    """Imperfect detections: shifted masks, wrong classes, random scores, false positives."""
    rng = np.random.default_rng(seed)
    results = []
    for ann in data["annotations"]:
        mask = decode_mask(ann["segmentation"])
        mask = np.roll(mask, int(rng.integers(-3, 4)), axis=int(rng.integers(0, 2)))
        category = ann["category_id"] if rng.random() > 0.25 else int(rng.integers(1, 7))
        rle = encode_mask(mask)
        results.append({"image_id": ann["image_id"], "category_id": category, "segmentation": rle,
                        "bbox": rle_bbox(rle), "score": float(rng.random())})
    for img in data["images"]:
        mask = np.zeros((img["height"], img["width"]), dtype=bool)
        y, x = rng.integers(0, img["height"] - 20, size=2)
        mask[y:y + 15, x:x + 18] = True
        rle = encode_mask(mask)
        results.append({"image_id": img["id"], "category_id": int(rng.integers(1, 7)), "segmentation": rle,
                        "bbox": rle_bbox(rle), "score": float(rng.random())})
    return results


def pycocotools_stats(gt_path, results, iou_type, agnostic=False):
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(gt_path))
        if agnostic:
            coco.dataset["categories"] = [{"id": 1, "name": "object"}]
            for ann in coco.dataset["annotations"]:
                ann["category_id"] = 1
            coco.createIndex()
            results = [dict(r, category_id=1) for r in results]
        dt = coco.loadRes(json.loads(json.dumps(results)))
        evaluator = COCOeval(coco, dt, iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [None if v < 0 else float(v) for v in evaluator.stats]


# ---- exactness ------------------------------------------------------------------------------
def test_ap_equals_pycocotools_exactly(scenes, tmp_path):
    results = noisy_results(_gt(scenes))
    (tmp_path / "results.json").write_text(json.dumps(results))
    result = evaluate(EvaluateConfig(pred=str(tmp_path / "results.json"), gt=str(scenes / "instances.json")),
                      tmp_path / "m")
    instance = result.metrics["instance"]
    for iou_type in ("segm", "bbox"):
        ours = [instance[iou_type]["class_aware"][name] for name in AP_NAMES]
        assert ours == pycocotools_stats(scenes / "instances.json", results, iou_type)
        ours = [instance[iou_type]["class_agnostic"][name] for name in AP_NAMES]
        assert ours == pycocotools_stats(scenes / "instances.json", results, iou_type, agnostic=True)
    aware = instance["segm"]["class_aware"]
    assert 0 < aware["AP"] < 1 and set(aware["per_class"]) == {c["name"] for c in _gt(scenes)["categories"]}
    assert result.metrics["tasks"] == ["instance"]


def test_faster_coco_eval_backend_agrees_when_installed(scenes, tmp_path):
    pytest.importorskip("faster_coco_eval")
    results = noisy_results(_gt(scenes), seed=3)
    (tmp_path / "r.json").write_text(json.dumps(results))
    config = dict(pred=str(tmp_path / "r.json"), gt=str(scenes / "instances.json"))
    slow = evaluate(EvaluateConfig(**config), tmp_path / "a").metrics["instance"]
    fast = evaluate(EvaluateConfig(**config, backend="faster-coco-eval"), tmp_path / "b").metrics["instance"]
    for iou_type in ("segm", "bbox"):
        for name in AP_NAMES:
            a, b = slow[iou_type]["class_aware"][name], fast[iou_type]["class_aware"][name]
            assert (a is None and b is None) or a == pytest.approx(b, abs=1e-12)


# ---- end to end on the shapes world ---------------------------------------------------------
def test_perfect_prediction_scores_one(scenes, tmp_path):
    pred = make_prediction(scenes, tmp_path / "pred")
    result = evaluate(EvaluateConfig(pred=str(pred), gt=str(scenes)), tmp_path / "m")
    metrics = result.metrics
    assert metrics["tasks"] == ["instance", "semantic"]
    assert metrics["images"]["matched"] == 6 and metrics["images"]["by_path"] == 6
    for iou_type in ("segm", "bbox"):
        assert metrics["instance"][iou_type]["class_aware"]["AP"] == 1.0
        assert metrics["instance"][iou_type]["class_agnostic"]["AP"] == 1.0
    semantic = metrics["semantic"]
    assert semantic["mIoU"] == 1.0 and semantic["pixel_accuracy"] == 1.0 and semantic["ground_truth"] == "labels"
    assert set(semantic["per_class_iou"]) == {"background", "circle", "square", "triangle", "star", "cross", "ring"}
    manifest = read_manifest(result.path, "zutis.metrics")
    assert manifest.summary["mask_AP"] == 1.0 and manifest.summary["mIoU"] == 1.0
    assert json.loads((result.path / "metrics.json").read_text())["semantic"]["mIoU"] == 1.0


def test_corrupted_prediction_scores_lower(scenes, tmp_path):
    pred = make_prediction(scenes, tmp_path / "pred", drop=0.4, shift=4, seed=1)
    metrics = evaluate(EvaluateConfig(pred=str(pred), gt=str(scenes)), tmp_path / "m").metrics
    assert metrics["instance"]["segm"]["class_aware"]["AP"] < 0.9
    assert metrics["instance"]["segm"]["class_aware"]["AR100"] < 1.0
    assert metrics["semantic"]["mIoU"] < 0.95 and metrics["semantic"]["pixel_accuracy"] < 1.0


def test_semantic_ground_truth_rasterised_from_instances(scenes, tmp_path):
    pred = make_prediction(scenes, tmp_path / "pred")
    metrics = evaluate(EvaluateConfig(pred=str(pred), gt=str(scenes / "instances.json"), tasks=["semantic"]),
                       tmp_path / "m").metrics
    assert metrics["tasks"] == ["semantic"] and metrics["semantic"]["ground_truth"] == "instances"
    assert metrics["semantic"]["mIoU"] == 1.0


def test_semantic_confusions_say_where_a_class_went(scenes, tmp_path):
    pred = make_prediction(scenes, tmp_path / "pred")
    for png in (pred / "semantic").glob("*.png"):  # every circle written as a square
        labels = read_label_png(png)
        write_label_png(png, np.where(labels == 1, 2, labels).astype(np.uint8))
    config = EvaluateConfig(pred=str(pred), gt=str(scenes), tasks=["semantic"])
    semantic = evaluate(config, tmp_path / "m").metrics["semantic"]
    assert semantic["main_confusions"]["circle"] == {"correct": 0.0, "confused_with": "square", "fraction": 1.0}
    assert semantic["main_confusions"]["square"]["correct"] == 1.0
    confusion = semantic["confusion"]
    assert confusion["classes"] == ["background", "circle", "square", "triangle", "star", "cross", "ring", "unlabelled"]
    pixels = np.array(confusion["pixels"])
    assert pixels.shape == (7, 8) and pixels[1, 1] == 0 and pixels[1, 2] > 0 and pixels[:, 7].sum() == 0


def test_bias_measures_of_a_perfect_and_of_a_centre_only_prediction(scenes, tmp_path):
    from pycocotools import mask as mask_utils

    from zutiscli.ops.bias import object_distance

    pred = make_prediction(scenes, tmp_path / "pred")
    config = EvaluateConfig(pred=str(pred), gt=str(scenes), tasks=["semantic"])
    bias = evaluate(config, tmp_path / "m").metrics["semantic"]["bias"]
    assert bias["class_preference"] == {"score": 1.0, "largest_confusions": []}
    space = bias["space_preference"]
    assert space["score"] == pytest.approx(0.0, abs=1e-12)
    assert all(b["mIoU"] is None or b["mIoU"] == pytest.approx(1.0) for b in space["bins"])
    truth = json.loads((scenes / "instances.json").read_text())
    assert sum(b["objects"] for b in space["bins"]) == len(truth["annotations"])
    # objects away from the centre written as background: centred objects fare better, the score falls below 0
    images = {img["id"]: img for img in truth["images"]}
    for ann in truth["annotations"]:
        mask = mask_utils.decode(ann["segmentation"]).astype(bool)
        if object_distance(mask) >= 0.4:
            png = pred / "semantic" / (Path(images[ann["image_id"]]["file_name"]).stem + ".png")
            labels = read_label_png(png)
            labels[mask] = 0
            write_label_png(png, labels)
    space = evaluate(config, tmp_path / "m2").metrics["semantic"]["bias"]["space_preference"]
    assert space["score"] < 0 and space["bins"][0]["mIoU"] == pytest.approx(1.0)
    assert space["bins"][-1]["mIoU"] in (0.0, None)


def test_moved_ground_truth_is_matched_by_stem(scenes, tmp_path):
    pred = make_prediction(scenes, tmp_path / "pred")
    moved = tmp_path / "elsewhere"
    shutil.copytree(scenes, moved)
    metrics = evaluate(EvaluateConfig(pred=str(pred), gt=str(moved)), tmp_path / "m").metrics
    assert metrics["images"]["by_stem"] == 6 and metrics["instance"]["segm"]["class_aware"]["AP"] == 1.0


def test_mismatched_names_need_classes(scenes, tmp_path, capsys):
    names = ["disc", "square", "triangle", "star", "cross", "ring"]
    pred = make_prediction(scenes, tmp_path / "pred", names=names)
    code, out, err = run(capsys, "evaluate", pred, "--gt", scenes, "-o", tmp_path / "m1")
    assert code == 1 and out == ""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "'disc'" in lines[0] and "--classes disc=" in lines[0] and "Traceback" not in err
    code, out, err = run(capsys, "evaluate", pred, "--gt", scenes, "--classes", "disc=circle", "-o", tmp_path / "m2",
                         "--json")
    assert code == 0
    document = json.loads(out)
    assert document["semantic"]["mIoU"] == 1.0 and document["instance"]["segm"]["class_aware"]["AP"] == 1.0


def test_cli_json_and_plain_output(scenes, tmp_path, capsys):
    pred = make_prediction(scenes, tmp_path / "pred")
    code, out, err = run(capsys, "evaluate", pred, "--gt", scenes, "-o", tmp_path / "m", "--json", "--task", "semantic")
    assert code == 0
    document = json.loads(out)  # exactly one JSON document on stdout
    assert document["path"] == str(tmp_path / "m") and document["tasks"] == ["semantic"]
    assert document["semantic"]["mIoU"] == 1.0 and "IoU per class" in err
    code, out, err = run(capsys, "evaluate", pred, "--gt", scenes, "-o", tmp_path / "m2", "--no-agnostic",
                         "--iou-type", "segm")
    assert code == 0 and out.strip().splitlines() == [str(tmp_path / "m2")]
    assert "mask aware" in err and "agnostic" not in err
    metrics = json.loads((tmp_path / "m2" / "metrics.json").read_text())
    assert "bbox" not in metrics["instance"] and "class_agnostic" not in metrics["instance"]["segm"]
    code, out, err = run(capsys, "evaluate", pred, "--gt", scenes, "--task", "panoptic", "-o", tmp_path / "m3")
    assert code == 1 and "panoptic" in err and len(err.strip().splitlines()) == 1


def test_hungarian_matching_of_semantic_clusters(scenes, tmp_path):
    permutation = np.array([3, 0, 6, 1, 5, 2, 4])  # class c written as cluster permutation[c]
    clusters = tmp_path / "clusters"
    clusters.mkdir()
    for png in (scenes / "semantic").glob("*.png"):
        write_label_png(clusters / png.name, permutation[read_label_png(png)].astype(np.uint8))
    plain = evaluate(EvaluateConfig(pred=str(clusters), gt=str(scenes)), tmp_path / "a").metrics["semantic"]
    matched = evaluate(EvaluateConfig(pred=str(clusters), gt=str(scenes), match="hungarian"),
                       tmp_path / "b").metrics["semantic"]
    assert plain["mIoU"] < 0.5 and matched["mIoU"] == 1.0
    assert matched["cluster_mapping"]["mapping"]["3"] == "background"
    majority = evaluate(EvaluateConfig(pred=str(clusters), gt=str(scenes), match="majority"),
                        tmp_path / "c").metrics["semantic"]
    assert majority["mIoU"] == 1.0


def test_u2seg_majority_matching_of_instance_clusters(scenes, tmp_path):
    data = _gt(scenes)
    results = []
    for ann in data["annotations"]:
        rle = ann["segmentation"]
        for cluster in (100 + ann["category_id"], 200 + ann["category_id"]):  # two clusters per class
            results.append({"image_id": ann["image_id"], "category_id": cluster, "segmentation": rle,
                            "bbox": ann["bbox"], "score": 0.9 if cluster < 200 else 0.95})
        results.append({"image_id": ann["image_id"], "category_id": 999, "segmentation": rle,
                        "bbox": ann["bbox"], "score": 0.5})  # below 0.6: never votes, dropped
    (tmp_path / "clusters.json").write_text(json.dumps(results))
    metrics = evaluate(EvaluateConfig(pred=str(tmp_path / "clusters.json"), gt=str(scenes / "instances.json"),
                                      match="majority"), tmp_path / "m").metrics["instance"]
    mapping = metrics["cluster_mapping"]
    assert mapping["mapping"]["101"] == "circle" and mapping["mapping"]["201"] == "circle"
    assert mapping["mapping"]["999"] is None and mapping["kept_detections"] == 2 * len(data["annotations"])
    assert metrics["segm"]["class_aware"]["AP"] == 1.0  # duplicates rank below the first hit of each object
    one_to_one = evaluate(EvaluateConfig(pred=str(tmp_path / "clusters.json"), gt=str(scenes / "instances.json"),
                                         match="hungarian"), tmp_path / "h").metrics["instance"]
    assert one_to_one["cluster_mapping"]["mapped_clusters"] == 6


def test_panoptic_quality_end_to_end(scenes, tmp_path):
    gt_json = tmp_path / "gt" / "panoptic_scenes.json"
    gt_json.parent.mkdir()
    gt_json.write_text(json.dumps(make_panoptic(scenes, tmp_path / "gt" / "panoptic_scenes")))
    pred = make_prediction(scenes, tmp_path / "pred", panoptic=True)
    metrics = evaluate(EvaluateConfig(pred=str(pred), gt=str(gt_json)), tmp_path / "m").metrics
    assert metrics["tasks"] == ["panoptic"]
    panoptic = metrics["panoptic"]
    assert panoptic["PQ"] == 1.0 and panoptic["things"]["n"] == 6 and panoptic["stuff"]["n"] == 1
    assert panoptic["per_class"]["background"]["TP"] == 6


def held_in_memory(pred_dir: Path) -> Prediction:
    """The prediction of a predict-shaped directory rebuilt from its arrays, as a predict loop holds it."""
    sidecar = json.loads((pred_dir / "images.json").read_text())
    results = json.loads((pred_dir / "predictions.json").read_text())
    panoptic = json.loads((pred_dir / "panoptic.json").read_text())
    segments = {a["image_id"]: a for a in panoptic["annotations"]}
    images = []
    for record in sidecar["images"]:
        values, ignore = read_label_map(pred_dir / record["semantic"])
        with Image.open(pred_dir / "panoptic" / segments[record["id"]]["file_name"]) as png:
            rgb = np.asarray(png.convert("RGB")).astype(np.int64)
        instances = [{k: v for k, v in r.items() if k != "image_id"} for r in results if r["image_id"] == record["id"]]
        images.append(PredImage(record["id"], os.path.realpath(pred_dir / record["file_name"]), record["stem"],
                                semantic=np.where(values == ignore, -1, values),
                                panoptic=rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2],
                                segments=segments[record["id"]]["segments_info"], instances=instances))
    names = [c["name"] for c in sorted(sidecar["categories"], key=lambda c: c["id"])]
    if [c["name"] for c in panoptic["categories"]] == names:  # as `zutis predict` writes it: names are enough
        return Prediction("predictions in memory", images, names)
    return Prediction("predictions in memory", images, names, panoptic={"categories": panoptic["categories"]})


def test_in_memory_prediction_scores_as_its_directory(scenes, tmp_path):
    pred = make_prediction(scenes, tmp_path / "pred", drop=0.3, shift=3, seed=4, panoptic=True)
    for png in (pred / "panoptic").glob("*.png"):  # imperfect segments too
        Image.fromarray(np.roll(np.asarray(Image.open(png)), 2, axis=0)).save(png)
    gt_json = tmp_path / "gt" / "panoptic_scenes.json"
    gt_json.parent.mkdir()
    gt_json.write_text(json.dumps(make_panoptic(scenes, tmp_path / "gt" / "panoptic_scenes")))

    def same_scores(gt: Path, tasks: list[str], out: str) -> None:
        config = EvaluateConfig(pred=str(pred), gt=str(gt))
        on_disk = evaluate(config, tmp_path / out).metrics
        held = held_in_memory(pred)
        files = sorted(tmp_path.rglob("*"))
        in_memory = score(held, load_ground_truth(gt), config)
        assert sorted(tmp_path.rglob("*")) == files  # scoring writes nothing
        assert in_memory["tasks"] == tasks and on_disk["tasks"] == tasks
        glance = headline(on_disk)
        assert 0 <= glance.pop("PQ_stuff", 0.0) < 1  # 0 where a GT's stuff is never predicted
        assert all(0 < value < 1 for value in glance.values()), glance  # imperfect, so a slip would show
        on_disk.pop("seconds"), in_memory.pop("seconds")
        assert json.dumps(in_memory) == json.dumps(on_disk)

    same_scores(scenes, ["instance", "semantic"], "m1")
    same_scores(gt_json, ["panoptic"], "m2")  # the fixture adds a "background" stuff class to the names
    panoptic = json.loads((pred / "panoptic.json").read_text())
    background = panoptic["categories"].pop()["id"]
    for ann in panoptic["annotations"]:
        ann["segments_info"] = [s for s in ann["segments_info"] if s["category_id"] != background]
    (pred / "panoptic.json").write_text(json.dumps(panoptic))
    same_scores(gt_json, ["panoptic"], "m3")  # categories = the predicted names, as `zutis predict` writes


def test_sixteen_bit_label_maps_round_trip(tmp_path):
    labels = np.array([[0, 300], [919, 5]])
    ignore = np.array([[False, False], [False, True]])
    write_label_map(tmp_path / "a.png", labels, ignore)
    values, marker = read_label_map(tmp_path / "a.png")
    assert marker == 65535 and values.tolist() == [[0, 300], [919, 65535]]
    write_label_map(tmp_path / "b.png", np.array([[0, 7]]), np.array([[True, False]]))
    values, marker = read_label_map(tmp_path / "b.png")
    assert marker == 255 and values.tolist() == [[255, 7]]


# ---- dataset adapters on fake trees ---------------------------------------------------------
def _jpeg(path: Path, size=(8, 6)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (10, 20, 30)).save(path)


def test_prepare_coco_val2017_then_evaluate(scenes, tmp_path):
    data = _gt(scenes)
    root = tmp_path / "coco"
    remap = {c["id"]: 2 * c["id"] + 1 for c in data["categories"]}  # non-contiguous ids, like COCO's
    for img in data["images"]:
        (root / "val2017").mkdir(parents=True, exist_ok=True)
        shutil.copy(scenes / img["file_name"], root / "val2017" / Path(img["file_name"]).name)
    coco = {"images": [dict(i, file_name=Path(i["file_name"]).name) for i in data["images"]],
            "annotations": [dict(a, category_id=remap[a["category_id"]]) for a in data["annotations"]],
            "categories": [dict(c, id=remap[c["id"]]) for c in data["categories"]]}
    (root / "annotations").mkdir()
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(coco))
    result = prepare_dataset(PrepareConfig("coco-val2017", str(root)), tmp_path / "gt")
    assert result.images == 6 and result.classes == 7 and result.instances == len(data["annotations"])
    index = json.loads((tmp_path / "gt" / "gt.json").read_text())
    assert index["classes"][1] == "circle" and (tmp_path / "gt" / "classes.txt").read_text().startswith("background\n")
    first = Path(data["images"][0]["file_name"]).stem
    assert (read_label_png(tmp_path / "gt" / "semantic" / f"{first}.png") ==
            read_label_png(scenes / "semantic" / f"{first}.png")).all()
    pred = make_prediction(scenes, tmp_path / "pred")
    metrics = evaluate(EvaluateConfig(pred=str(pred), gt=str(tmp_path / "gt")), tmp_path / "m").metrics
    assert metrics["semantic"]["mIoU"] == 1.0 and metrics["instance"]["segm"]["class_aware"]["AP"] == 1.0


def test_prepare_coco20k_needs_the_file_list(tmp_path, capsys):
    root = tmp_path / "coco"
    names = [f"COCO_train2014_{i:012d}.jpg" for i in (9, 25, 30)]
    for name in names:
        _jpeg(root / "train2014" / name)
    rle = encode_mask(np.ones((6, 8), dtype=bool))
    coco = {"images": [{"id": i, "file_name": n, "width": 8, "height": 6} for i, n in zip((9, 25, 30), names)],
            "annotations": [{"id": k + 1, "image_id": i, "category_id": 1, "segmentation": rle, "area": 48,
                             "bbox": [0, 0, 8, 6], "iscrowd": 0} for k, i in enumerate((9, 25, 30))],
            "categories": [{"id": 1, "name": "person"}]}
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_train2014.json").write_text(json.dumps(coco))
    code, out, err = run(capsys, "evaluate", "prepare", "coco20k", "--root", root, "-o", tmp_path / "x")
    assert code == 2 and out == "" and "--file-list" in err and "coco_20k_filenames.txt" in err
    (tmp_path / "list.txt").write_text(f"train2014/{names[0]}\n{names[2]}\n")
    code, out, err = run(capsys, "evaluate", "prepare", "coco20k", "--root", root, "--file-list",
                         tmp_path / "list.txt", "-o", tmp_path / "gt", "--json")
    assert code == 0 and json.loads(out)["images"] == 2
    instances = json.loads((tmp_path / "gt" / "instances.json").read_text())
    assert sorted(i["id"] for i in instances["images"]) == [9, 30] and len(instances["annotations"]) == 2
    assert (tmp_path / "gt" / instances["images"][0]["file_name"]).resolve().is_file()


def test_prepare_voc2012(tmp_path):
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    classes = np.zeros((6, 8), dtype=np.uint8)
    classes[1:4, 1:4] = 15  # person
    classes[1:4, 5:7] = 12  # dog
    classes[0, :] = 255  # void border
    objects = np.zeros_like(classes)
    objects[1:4, 1:4] = 1
    objects[1:4, 5:7] = 2
    objects[0, :] = 255
    for stem in ("2007_000001", "2007_000002"):
        _jpeg(voc / "JPEGImages" / f"{stem}.jpg")
        for folder, array in (("SegmentationClass", classes), ("SegmentationObject", objects)):
            (voc / folder).mkdir(parents=True, exist_ok=True)
            write_label_png(voc / folder / f"{stem}.png", array)
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000001\n2007_000002\n")
    result = prepare_dataset(PrepareConfig("voc2012", str(tmp_path)), tmp_path / "gt")
    assert result.images == 2 and result.classes == 21 and result.instances == 4
    assert (read_label_png(tmp_path / "gt" / "semantic" / "2007_000001.png") == classes).all()
    instances = json.loads((tmp_path / "gt" / "instances.json").read_text())
    names = {c["id"]: c["name"] for c in instances["categories"]}
    assert sorted(names[a["category_id"]] for a in instances["annotations"]) == ["dog", "dog", "person", "person"]
    assert sorted(a["area"] for a in instances["annotations"][:2]) == [6, 9]


def test_prepare_coca(tmp_path):
    base = tmp_path / "CoCA"
    for cls in ("alarm clock", "Accordion"):
        _jpeg(base / "image" / cls / "x1.jpg")
        mask = np.zeros((6, 8), dtype=np.uint8)
        mask[2:4, 2:6] = 255
        (base / "binary" / cls).mkdir(parents=True)
        Image.fromarray(mask).save(base / "binary" / cls / "x1.png")
    result = prepare_dataset(PrepareConfig("coca", str(tmp_path)), tmp_path / "gt")
    index = json.loads((tmp_path / "gt" / "gt.json").read_text())
    assert result.images == 2 and index["classes"] == ["background", "Accordion", "alarm clock"]
    stems = [img["stem"] for img in index["images"]]
    assert len(set(stems)) == 2  # the same file name in two classes gets distinct stems
    labels = read_label_png(tmp_path / "gt" / "semantic" / f"{stems[1]}.png")
    assert set(np.unique(labels)) == {0, 2} and (labels == 2).sum() == 8


def test_prepare_imagenet_s919_decodes_r_plus_256g(tmp_path):
    base = tmp_path / "ImageNetS919"
    wnids = [f"n{i:08d}" for i in range(1, 920)]
    for wnid in wnids:
        (base / "validation-segmentation" / wnid).mkdir(parents=True)
    ids = np.full((6, 8), 300)
    ids[0, 0] = 1000  # ignore
    ids[5, :] = 0
    rgb = np.stack([ids % 256, ids // 256, np.zeros_like(ids)], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(base / "validation-segmentation" / wnids[299] / "ILSVRC2012_val_00000001.png")
    _jpeg(base / "validation" / wnids[299] / "ILSVRC2012_val_00000001.JPEG")
    names = tmp_path / "LOC_synset_mapping.txt"
    names.write_text("".join(f"{w} thing {i}, other name\n" for i, w in enumerate(wnids, start=1)))
    result = prepare_dataset(PrepareConfig("imagenet-s919", str(tmp_path), class_names=str(names)), tmp_path / "gt")
    assert result.images == 1 and result.classes == 920
    index = json.loads((tmp_path / "gt" / "gt.json").read_text())
    assert index["classes"][300] == "thing 300" and index["ignore_index"] == 65535
    values, ignore = read_label_map(tmp_path / "gt" / "semantic" / "ILSVRC2012_val_00000001.png")
    assert ignore == 65535 and values[0, 0] == 65535 and values[1, 1] == 300 and values[5, 0] == 0
    # a prediction of the right class everywhere but the ignored pixel: IoU 1 for class 300
    pred = tmp_path / "pred"
    pred.mkdir()
    write_label_map(pred / "ILSVRC2012_val_00000001.png", np.where(ids == 1000, 0, ids), sixteen_bit=True)
    metrics = evaluate(EvaluateConfig(pred=str(pred), gt=str(tmp_path / "gt")), tmp_path / "m").metrics
    assert metrics["semantic"]["per_class_iou"]["thing 300"] == 1.0 and metrics["semantic"]["mIoU"] == 1.0
    assert metrics["semantic"]["size_buckets"]["L"] == 1.0
    with pytest.raises(ZutisError, match="class folders"):
        shutil.rmtree(base / "validation-segmentation" / wnids[0])
        prepare_dataset(PrepareConfig("imagenet-s919", str(tmp_path)), tmp_path / "gt2")


def test_prepare_cub2011(tmp_path):
    base = tmp_path / "CUB_200_2011"
    rel = ["001.Black_footed_Albatross/a_1.jpg", "002.Laysan_Albatross/b_2.jpg"]
    for r in rel:
        _jpeg(base / "images" / r)
        mask = np.zeros((6, 8), dtype=np.uint8)
        mask[1:5, 1:5] = 204  # four of five annotators
        mask[0, 0] = 102  # two of five: below the 0.5 threshold
        (tmp_path / "segmentations" / Path(r).parent).mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(tmp_path / "segmentations" / Path(r).with_suffix(".png"))
    (base / "images.txt").write_text("1 " + rel[0] + "\n2 " + rel[1] + "\n")
    (base / "train_test_split.txt").write_text("1 1\n2 0\n")
    result = prepare_dataset(PrepareConfig("cub2011", str(tmp_path)), tmp_path / "gt")
    assert result.images == 1 and result.classes == 2  # only the test image
    labels = read_label_png(tmp_path / "gt" / "semantic" / "b_2.png")
    assert labels.sum() == 16 and labels[0, 0] == 0
    everything = prepare_dataset(PrepareConfig("cub2011", str(tmp_path), split="all"), tmp_path / "gt2")
    assert everything.images == 2


def test_panoptic_quality_of_cluster_ids_equals_that_of_their_classes(scenes, tmp_path):
    """PQ with --match hungarian on renamed (permuted) clusters equals PQ by name on the same segments."""
    gt_json = tmp_path / "gt" / "panoptic_scenes.json"
    gt_json.parent.mkdir()
    gt_json.write_text(json.dumps(make_panoptic(scenes, tmp_path / "gt" / "panoptic_scenes")))
    named = make_prediction(scenes, tmp_path / "named", drop=0.3, shift=3, seed=4, panoptic=True)
    for png in (named / "panoptic").glob("*.png"):  # imperfect segments: some match, some do not
        Image.fromarray(np.roll(np.asarray(Image.open(png)), 2, axis=0)).save(png)
    by_name = evaluate(EvaluateConfig(pred=str(named), gt=str(gt_json)), tmp_path / "m-names").metrics["panoptic"]

    clustered = tmp_path / "clustered"
    shutil.copytree(named, clustered)
    panoptic = json.loads((clustered / "panoptic.json").read_text())
    order = [5, 2, 6, 0, 3, 1, 4]  # the category at position k becomes cluster order[k], id order[k] + 1
    new_id = {c["id"]: order[k] + 1 for k, c in enumerate(panoptic["categories"])}
    truth = {f"cluster-{order[k]}": c["name"] for k, c in enumerate(panoptic["categories"])}
    panoptic["categories"] = [{"id": new_id[c["id"]], "name": f"cluster-{new_id[c['id']] - 1}",
                               "isthing": c.get("isthing", 1)} for c in panoptic["categories"]]
    for annotation in panoptic["annotations"]:
        for segment in annotation["segments_info"]:
            segment["category_id"] = new_id[segment["category_id"]]
    (clustered / "panoptic.json").write_text(json.dumps(panoptic))
    for match in ("hungarian", "majority"):
        ours = evaluate(EvaluateConfig(pred=str(clustered), gt=str(gt_json), match=match, tasks=("panoptic",)),
                        tmp_path / f"m-{match}").metrics["panoptic"]
        assert ours["cluster_mapping"]["mapping"] == truth, match
        for key in ("PQ", "SQ", "RQ"):
            assert ours[key] == pytest.approx(by_name[key], abs=1e-12), (match, key)
        assert ours["per_class"] == by_name["per_class"]
    assert 0.2 < by_name["PQ"] < 0.95  # imperfect, so matching has work to do


def _permuted_clusters(scenes: Path, out: Path, permutation: np.ndarray) -> Path:
    """The scenes' semantic ground truth written as cluster ids: class c becomes label permutation[c]."""
    out.mkdir()
    for png in (scenes / "semantic").glob("*.png"):
        write_label_png(out / png.name, permutation[read_label_png(png)].astype(np.uint8))
    return out


def test_a_written_cluster_mapping_scores_a_second_evaluation_without_matching_again(scenes, tmp_path):
    permutation = np.array([3, 0, 6, 1, 5, 2, 4])
    clusters = _permuted_clusters(scenes, tmp_path / "clusters", permutation)
    first = evaluate(EvaluateConfig(pred=str(clusters), gt=str(scenes), match="hungarian"), tmp_path / "a")
    written = json.loads((tmp_path / "a" / "cluster_mapping.json").read_text())
    assert written["kind"] == "zutis.cluster_mapping" and written["mode"] == "hungarian"
    assert written["tasks"]["semantic"] == first.metrics["semantic"]["cluster_mapping"]["mapping"]
    assert written["tasks"]["semantic"]["3"] == "background"
    again = evaluate(EvaluateConfig(pred=str(clusters), gt=str(scenes), mapping=str(tmp_path / "a")), tmp_path / "b")
    block = again.metrics["semantic"]
    assert block["mIoU"] == 1.0 and block["cluster_mapping"]["given"] and block["cluster_mapping"]["mode"] == "hungarian"
    # a mapping that swaps two clusters is applied as given: matching again would have undone the swap
    swapped = dict(written, tasks={"semantic": dict(written["tasks"]["semantic"], **{"0": "triangle", "1": "circle"})})
    (tmp_path / "swapped.json").write_text(json.dumps(swapped))
    wrong = evaluate(EvaluateConfig(pred=str(clusters), gt=str(scenes), mapping=str(tmp_path / "swapped.json")),
                     tmp_path / "c").metrics["semantic"]
    assert written["tasks"]["semantic"]["0"] == "circle" and written["tasks"]["semantic"]["1"] == "triangle"
    assert wrong["per_class_iou"]["circle"] == 0.0 and wrong["per_class_iou"]["triangle"] == 0.0
    assert wrong["per_class_iou"]["square"] == 1.0
    # a metrics.json holds the same mapping
    from_metrics = evaluate(EvaluateConfig(pred=str(clusters), gt=str(scenes),
                                           mapping=str(tmp_path / "a" / "metrics.json")), tmp_path / "d")
    assert from_metrics.metrics["semantic"]["mIoU"] == 1.0


def test_named_clusters_are_keyed_by_name_and_instance_and_panoptic_mappings_are_reused(scenes, tmp_path):
    data = _gt(scenes)
    results = []
    for ann in data["annotations"]:
        for cluster in (100 + ann["category_id"], 200 + ann["category_id"]):
            results.append({"image_id": ann["image_id"], "category_id": cluster, "segmentation": ann["segmentation"],
                            "bbox": ann["bbox"], "score": 0.9 if cluster < 200 else 0.95})
    (tmp_path / "clusters.json").write_text(json.dumps(results))
    config = dict(pred=str(tmp_path / "clusters.json"), gt=str(scenes / "instances.json"))
    first = evaluate(EvaluateConfig(**config, match="majority"), tmp_path / "m").metrics["instance"]
    again = evaluate(EvaluateConfig(**config, mapping=str(tmp_path / "m")), tmp_path / "m2").metrics["instance"]
    assert again["cluster_mapping"]["mapping"] == first["cluster_mapping"]["mapping"]
    assert again["segm"]["class_aware"]["AP"] == first["segm"]["class_aware"]["AP"] == 1.0
    assert again["cluster_mapping"]["given"] and again["cluster_mapping"]["mode"] == "majority"

    gt_json = tmp_path / "gt" / "panoptic_scenes.json"
    gt_json.parent.mkdir()
    gt_json.write_text(json.dumps(make_panoptic(scenes, tmp_path / "gt" / "panoptic_scenes")))
    named = make_prediction(scenes, tmp_path / "named", panoptic=True)
    panoptic = json.loads((named / "panoptic.json").read_text())
    truth = {f"cluster-{c['id']}": c["name"] for c in panoptic["categories"]}
    for category in panoptic["categories"]:
        category["name"] = f"cluster-{category['id']}"
    (named / "panoptic.json").write_text(json.dumps(panoptic))
    found = evaluate(EvaluateConfig(pred=str(named), gt=str(gt_json), match="hungarian", tasks=("panoptic",)),
                     tmp_path / "p").metrics["panoptic"]
    assert found["cluster_mapping"]["mapping"] == truth
    reused = evaluate(EvaluateConfig(pred=str(named), gt=str(gt_json), tasks=("panoptic",), mapping=str(tmp_path / "p")),
                      tmp_path / "p2").metrics["panoptic"]
    assert reused["PQ"] == found["PQ"] == 1.0 and reused["cluster_mapping"]["given"]


def test_a_zutis_prediction_names_its_clusters_in_the_mapping(scenes, tmp_path):
    pred = make_prediction(scenes, tmp_path / "pred", names=[f"cluster-{i:02d}" for i in range(6)])
    metrics = evaluate(EvaluateConfig(pred=str(pred), gt=str(scenes), match="hungarian", tasks=("semantic",)),
                       tmp_path / "m").metrics["semantic"]
    assert metrics["cluster_mapping"]["mapping"]["background"] == "background"
    assert metrics["cluster_mapping"]["mapping"]["cluster-00"] == "circle"


def test_bad_mappings_are_refused_in_one_line(scenes, tmp_path, capsys):
    clusters = _permuted_clusters(scenes, tmp_path / "clusters", np.array([3, 0, 6, 1, 5, 2, 4]))
    evaluate(EvaluateConfig(pred=str(clusters), gt=str(scenes)), tmp_path / "by-name")
    foreign = {"kind": "zutis.cluster_mapping", "mode": "hungarian", "tasks": {"semantic": {"0": "zebra"}}}
    (tmp_path / "foreign.json").write_text(json.dumps(foreign))
    (tmp_path / "instance-only.json").write_text(json.dumps(dict(foreign, tasks={"instance": {"1": "circle"}})))
    for mapping, words in ((tmp_path / "by-name", "maps no clusters"), (tmp_path / "nowhere", "no such file"),
                           (tmp_path / "foreign.json", "'zebra'"), (tmp_path / "instance-only.json", "not semantic")):
        code, out, err = run(capsys, "evaluate", clusters, "--gt", scenes, "--task", "semantic", "--mapping", mapping,
                             "-o", tmp_path / "out", "--quiet")
        assert code != 0 and words in err and len(err.strip().splitlines()) == 1, (mapping, err)
        assert not (tmp_path / "out").exists()


def test_class_agnostic_ap_of_clusters_counts_every_detection_matched_or_not(scenes, tmp_path):
    data = _gt(scenes)
    results = []
    for ann in data["annotations"]:  # two clusters per class: Hungarian (one-to-one) leaves one unmatched
        cluster = (100 if ann["id"] % 2 else 200) + ann["category_id"]
        results.append({"image_id": ann["image_id"], "category_id": cluster, "segmentation": ann["segmentation"],
                        "bbox": ann["bbox"], "score": 0.9})
    (tmp_path / "clusters.json").write_text(json.dumps(results))
    config = dict(pred=str(tmp_path / "clusters.json"), gt=str(scenes / "instances.json"), match_score=0.0)
    one = evaluate(EvaluateConfig(**config, match="hungarian"), tmp_path / "h").metrics["instance"]
    many = evaluate(EvaluateConfig(**config, match="majority"), tmp_path / "m").metrics["instance"]
    assert one["cluster_mapping"]["kept_detections"] < many["cluster_mapping"]["kept_detections"] == len(results)
    assert one["segm"]["class_aware"]["AP"] < many["segm"]["class_aware"]["AP"] == 1.0
    for metrics in (one, many):  # every object was found: the matching does not change that
        assert metrics["segm"]["class_agnostic"]["AP"] == 1.0
