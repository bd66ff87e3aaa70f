"""`zutis synth scenes --panoptic`: COCO panoptic ground truth in panopticapi's conventions, and
`zutis evaluate`'s PQ on it against an independent computation (panopticapi's definition)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from zutiscli.cli.app import main
from zutiscli.pipeline.synth import SynthConfig, write_synth
from zutiscli.shapes.stuff import STUFF
from zutiscli.shapes.world import SHAPES


def rgb2id(path: Path) -> np.ndarray:
    """panopticapi's decoding: id = R + 256 G + 256^2 B."""
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id2rgb(ids: np.ndarray) -> np.ndarray:
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)


@pytest.fixture(scope="module", params=[False, True], ids=["things", "things-and-stuff"])
def scenes(request, tmp_path_factory) -> Path:
    return write_synth(SynthConfig("scenes", 6, seed=11, size=64, panoptic=True, stuff=request.param),
                       tmp_path_factory.mktemp("pan") / "scenes")


def test_panoptic_files_follow_the_coco_panoptic_format(scenes):
    data = json.loads((scenes / "panoptic.json").read_text())
    assert set(data) >= {"images", "annotations", "categories"}
    stuff = (scenes / "classes.txt").is_file()
    expected = [(i + 1, n, 1) for i, n in enumerate(SHAPES)]
    expected += [(len(SHAPES) + 1 + i, n, 0) for i, n in enumerate(STUFF)] if stuff else []
    assert [(c["id"], c["name"], c["isthing"]) for c in data["categories"]] == expected
    isthing = {c["id"]: c["isthing"] for c in data["categories"]}
    instances = json.loads((scenes / "instances.json").read_text())
    assert [img["id"] for img in data["images"]] == [img["id"] for img in instances["images"]]
    for image, ann in zip(data["images"], data["annotations"]):
        assert ann["image_id"] == image["id"] and (scenes / image["file_name"]).is_file()
        ids = rgb2id(scenes / "panoptic" / ann["file_name"])
        assert ids.shape == (image["height"], image["width"])
        segments = {s["id"]: s for s in ann["segments_info"]}
        assert set(np.unique(ids)) - {0} == set(segments), "every segment id in the PNG is described, and only those"
        for sid, seg in segments.items():
            rows, cols = np.nonzero(ids == sid)
            assert seg["area"] == rows.size and seg["iscrowd"] == 0 and seg["isthing"] == isthing[seg["category_id"]]
            assert seg["bbox"] == [cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1]
        # the same scene as the other tasks: each segment is its instance's visible mask, with its class
        objects = [a for a in instances["annotations"] if a["image_id"] == image["id"]]
        for number, obj in enumerate(objects, start=1):
            visible = mask_utils.decode(obj["segmentation"]).astype(bool) & (ids == number)
            if number in segments:
                assert segments[number]["category_id"] == obj["category_id"]
                assert visible.sum() == segments[number]["area"]
        semantic = np.asarray(Image.open(scenes / "semantic" / f"{Path(ann['file_name']).stem}.png"))
        category = np.zeros_like(ids)
        for sid, seg in segments.items():
            category[ids == sid] = seg["category_id"]
        assert np.array_equal(category, semantic), "panoptic and semantic ground truth disagree"
        assert (category == 0).any() != stuff, "named stuff leaves no pixel unlabelled; plain scenes have background"


def test_only_scenes_take_panoptic(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        main(["synth", "scenes", "-n", "1", "--size", "32", "--panoptic", "-o", str(tmp_path / "ok")])
    assert done.value.code == 0
    with pytest.raises(Exception, match="only scenes"):
        SynthConfig("pile", 1, panoptic=True).validate()


def independent_pq(gt: dict, gt_dir: Path, pred: dict, pred_dir: Path, categories: list[int]) -> dict[str, float]:
    """PQ as panopticapi defines it: IoU > 0.5 matches, the union less the prediction's void pixels,
    unmatched predictions mostly (> 50%) on void not counted as false positives."""
    tp = {c: 0 for c in categories}
    fp, fn, iou_sum = dict(tp), dict(tp), {c: 0.0 for c in categories}
    predictions = {a["image_id"]: a for a in pred["annotations"]}
    for ga in gt["annotations"]:
        pa = predictions[ga["image_id"]]
        g_ids, p_ids = rgb2id(gt_dir / ga["file_name"]), rgb2id(pred_dir / pa["file_name"])
        g_cat = {s["id"]: s["category_id"] for s in ga["segments_info"] if s["category_id"] in tp}
        p_cat = {s["id"]: s["category_id"] for s in pa["segments_info"] if s["category_id"] in tp}
        matched_g, matched_p = set(), set()
        for g, gc in g_cat.items():
            for p, pc in p_cat.items():
                if gc != pc:
                    continue
                inter = np.sum((g_ids == g) & (p_ids == p))
                void = np.sum((g_ids == 0) & (p_ids == p))
                union = np.sum(g_ids == g) + np.sum(p_ids == p) - inter - void
                iou = inter / union
                if iou > 0.5:
                    tp[gc] += 1
                    iou_sum[gc] += iou
                    matched_g.add(g)
                    matched_p.add(p)
        for g, gc in g_cat.items():
            if g not in matched_g:
                fn[gc] += 1
        for p, pc in p_cat.items():
            if p not in matched_p and np.sum((g_ids == 0) & (p_ids == p)) / np.sum(p_ids == p) <= 0.5:
                fp[pc] += 1
    pq, sq, rq = [], [], []
    for c in categories:
        if tp[c] + fp[c] + fn[c] == 0:
            continue
        sq.append(iou_sum[c] / tp[c] if tp[c] else 0.0)
        rq.append(tp[c] / (tp[c] + 0.5 * fp[c] + 0.5 * fn[c]))
        pq.append(sq[-1] * rq[-1])
    return {"PQ": np.mean(pq), "SQ": np.mean(sq), "RQ": np.mean(rq)}


def perturbed_predictions(scenes: Path, out: Path) -> Path:
    """A COCO panoptic prediction made from the ground truth by hand: segments shifted by a few pixels,
    some dropped, some given the wrong class, some invented on the background."""
    rng = np.random.default_rng(0)
    gt = json.loads((scenes / "panoptic.json").read_text())
    folder = out / "pred"
    folder.mkdir(parents=True)
    annotations = []
    for ga in gt["annotations"]:
        ids = rgb2id(scenes / "panoptic" / ga["file_name"])
        new = np.zeros_like(ids)
        segments = []
        for seg in ga["segments_info"]:
            if rng.random() < 0.2:
                continue  # missed
            dy, dx = rng.integers(-3, 4, size=2)
            new[np.roll(ids == seg["id"], (dy, dx), axis=(0, 1)) & (new == 0)] = seg["id"]
            category = seg["category_id"] if rng.random() > 0.15 else seg["category_id"] % len(gt["categories"]) + 1
            segments.append({"id": seg["id"], "category_id": category})
        spare = 200
        y, x = rng.integers(0, ids.shape[0] - 8, size=2)
        box = np.zeros_like(ids, dtype=bool)
        box[y:y + 8, x:x + 8] = True
        new[box & (new == 0)] = spare  # a false positive wherever it lands
        if (new == spare).any():
            segments.append({"id": spare, "category_id": int(rng.integers(1, len(gt["categories"]) + 1))})
        segments = [s for s in segments if (new == s["id"]).any()]
        for s in segments:
            s["area"] = int((new == s["id"]).sum())
            s["iscrowd"] = 0
        Image.fromarray(id2rgb(new)).save(folder / ga["file_name"])
        annotations.append({"image_id": ga["image_id"], "file_name": ga["file_name"], "segments_info": segments})
    data = {"images": gt["images"], "annotations": annotations, "categories": gt["categories"]}
    (out / "pred.json").write_text(json.dumps(data))
    return out / "pred.json"


def test_evaluate_pq_on_synth_panoptic_equals_an_independent_computation(scenes, tmp_path, capsys):
    pred = perturbed_predictions(scenes, tmp_path)
    with pytest.raises(SystemExit) as done:
        main(["evaluate", str(pred), "--gt", str(scenes), "--task", "panoptic", "-o", str(tmp_path / "m"), "-q"])
    assert done.value.code == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    panoptic = metrics["panoptic"] if "panoptic" in metrics else metrics["tasks"]["panoptic"]
    gt = json.loads((scenes / "panoptic.json").read_text())
    predicted = json.loads(pred.read_text())
    groups = {"all": [c["id"] for c in gt["categories"]],
              "things": [c["id"] for c in gt["categories"] if c["isthing"]],
              "stuff": [c["id"] for c in gt["categories"] if not c["isthing"]]}
    for group, categories in groups.items():
        if not categories:
            assert panoptic[group]["n"] == 0
            continue
        expected = independent_pq(gt, scenes / "panoptic", predicted, tmp_path / "pred", categories)
        assert 0.2 < expected["PQ"] < 0.9, "the perturbation should leave a PQ that tells right from wrong"
        for key in ("PQ", "SQ", "RQ"):
            assert panoptic[group][key] == pytest.approx(expected[key], abs=1e-9), (group, key)
    assert panoptic["PQ"] == panoptic["all"]["PQ"]


def test_stuff_names_are_scored_as_semantic_classes_and_left_out_of_instance_ap(tmp_path, capsys):
    scenes = write_synth(SynthConfig("scenes", 3, seed=4, size=64, stuff=True), tmp_path / "scenes")
    names = ",".join((*SHAPES, *STUFF))
    for argv in (["predict", str(scenes / "images"), "--classes", names, "--method", "maskclip", "--model",
                  "shapes-clip", "--pretrained", "builtin", "--no-vis", "--device", "cpu", "-o", str(tmp_path / "p"), "-q"],
                 ["evaluate", str(tmp_path / "p"), "--gt", str(scenes), "-o", str(tmp_path / "m"), "-q"]):
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert metrics["instance"]["stuff_not_scored"] == list(STUFF)
    assert set(metrics["semantic"]["per_class_iou"]) == {"background", *SHAPES, *STUFF}


def test_predict_with_stuff_names_writes_stuff_segments_and_no_stuff_instances(tmp_path, capsys):
    scenes = write_synth(SynthConfig("scenes", 3, seed=4, size=64, stuff=True, panoptic=True), tmp_path / "scenes")
    argv = ["predict", str(scenes / "images"), "--classes", ",".join(SHAPES), "--stuff", ",".join(STUFF),
            "--method", "maskclip", "--model", "shapes-clip", "--pretrained", "builtin", "--components",
            "--no-vis", "--device", "cpu", "-o", str(tmp_path / "p"), "-q"]
    for args in (argv, ["evaluate", str(tmp_path / "p"), "--gt", str(scenes), "-o", str(tmp_path / "m"), "-q"]):
        with pytest.raises(SystemExit) as done:
            main(args)
        assert done.value.code == 0, capsys.readouterr().err
    stuff_ids = set(range(len(SHAPES) + 1, len(SHAPES) + len(STUFF) + 1))
    panoptic = json.loads((tmp_path / "p" / "panoptic.json").read_text())
    assert [c["name"] for c in panoptic["categories"]] == [*SHAPES, *STUFF]  # --stuff adds its names after --classes
    assert {c["id"] for c in panoptic["categories"] if not c["isthing"]} == stuff_ids
    segments = [s for a in panoptic["annotations"] for s in a["segments_info"]]
    assert all(s["isthing"] == (s["category_id"] not in stuff_ids) for s in segments)
    results = json.loads((tmp_path / "p" / "predictions.json").read_text())
    assert results and not {r["category_id"] for r in results} & stuff_ids
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    truth = json.loads((scenes / "panoptic.json").read_text())
    shown = {s["category_id"] for a in truth["annotations"] for s in a["segments_info"] if not s["isthing"]}
    assert metrics["panoptic"]["stuff"]["n"] == len(shown) > 0  # every material shown is scored as stuff


def test_stuff_must_be_a_class_of_the_python_config() -> None:
    from zutiscli.data.classes import ClassQuery
    from zutiscli.errors import UsageError
    from zutiscli.pipeline.predict_config import PredictConfig

    classes = [ClassQuery(n, n) for n in ("star", "Sky", "grass")]
    assert PredictConfig(classes=classes, stuff=("sky", "grass")).stuff_ids == {2, 3}
    with pytest.raises(UsageError, match="--stuff water: not among the classes"):
        PredictConfig(classes=classes, stuff=("water",)).validate()
