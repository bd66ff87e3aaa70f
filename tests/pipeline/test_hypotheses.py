"""`zutis hypotheses` (ReCLIP++'s label hypotheses): sliding windows, their votes, the artefact, the
classes of an image made of one class's crops, precision and recall, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from zutiscli.artefacts.hypotheses import read_hypotheses
from zutiscli.data.classes import parse_classes
from zutiscli.ops.windows import sliding_windows, voted_classes
from zutiscli.pipeline.hypotheses import HypothesesConfig, hypotheses, hypothesis_quality
from zutiscli.shapes.world import pile_sample

from helpers import run_cli  # noqa: E402

SHAPES = "circle,square,triangle,star,cross,ring"
FAST = dict(model="shapes-clip", pretrained="builtin", device="cpu", precision="fp32")


def test_windows_cover_the_image_with_half_window_strides():
    windows = sliding_windows(120, 60, 1 / 6)
    assert {(h, w) for _, _, h, w in windows} == {(20, 10)}
    tops = sorted({top for top, _, _, _ in windows})
    assert tops == list(range(0, 101, 10)) and len(windows) == 11 * 11
    covered = np.zeros((120, 60), bool)
    for top, left, h, w in windows:
        covered[top:top + h, left:left + w] = True
    assert covered.all()
    assert sliding_windows(50, 70, 1.0) == [(0, 0, 50, 70)]
    assert sliding_windows(64, 64, 1 / 3)[-1] == (43, 43, 21, 21)  # the last window ends at the edge
    with pytest.raises(ValueError):
        sliding_windows(10, 10, 0.0)


def test_a_class_is_kept_when_detected_in_more_than_the_threshold():
    kept, frequency = voted_classes(np.array([0, 0, 0, 2, 2, 1, 0, 0, 0, 0]), 4, 0.1)
    assert frequency.tolist() == [0.7, 0.1, 0.2, 0.0] and kept == [0, 2]  # 1 is at 0.1 exactly: not more
    assert voted_classes(np.array([3]), 4, 0.0)[0] == [3]


def test_precision_and_recall_count_only_listed_classes_and_paired_images():
    quality = hypothesis_quality([{"a", "b"}, {"a"}, {"c"}], [{"a", "sky"}, {"b"}, None], ["a", "b", "c"])
    assert quality["precision"] == pytest.approx(1 / 3) and quality["recall"] == pytest.approx(1 / 2)
    assert quality["images_scored"] == 2
    assert quality["per_class"]["a"] == {"precision": 0.5, "recall": 1.0}
    assert quality["per_class"]["c"] == {"precision": None, "recall": None}


def _one_shape_mosaic(path, shape="star"):
    """A 128 x 128 image of four 64 x 64 pile images, each of one large ``shape``."""
    tiles = []
    for index in range(2000):
        sample = pile_sample(11, index, 64)
        if len(sample.objects) == 1 and sample.objects[0].shape == shape and sample.masks[0].mean() > 0.12:
            tiles.append(sample.image)
        if len(tiles) == 4:
            break
    image = np.concatenate([np.concatenate(tiles[:2], 1), np.concatenate(tiles[2:], 1)], 0)
    Image.fromarray(image).save(path)


def test_an_image_of_one_class_s_crops_holds_that_class(tmp_path):
    (tmp_path / "in").mkdir()
    _one_shape_mosaic(tmp_path / "in" / "stars.png")
    config = HypothesesConfig(inputs=(str(tmp_path / "in"),), classes=tuple(parse_classes(SHAPES, None)),
                              window=1 / 2, **FAST)
    result = hypotheses(config, tmp_path / "out")
    (only,) = result.images
    assert "star" in only.classes and max(only.frequency, key=only.frequency.get) == "star"
    read = read_hypotheses(result.path)
    assert read.classes == SHAPES.split(",") and read.images[0].classes == only.classes
    assert read.images[0].image == (tmp_path / "in" / "stars.png")
    manifest = json.loads((result.path / "manifest.json").read_text())
    assert manifest["params"]["window"] == 0.5 and manifest["summary"]["images"] == 1


def test_the_command_line_scores_against_ground_truth_and_refuses_bad_input(tmp_path, capsys):
    from zutiscli.pipeline.synth import SynthConfig, write_synth

    scenes = write_synth(SynthConfig("scenes", 3, seed=2, size=96), tmp_path / "scenes")
    code, out, err = run_cli(capsys, "hypotheses", scenes / "images", "--classes", SHAPES, "--model", "shapes-clip",
                             "--pretrained", "builtin", "--window", "1/2", "--ground-truth", scenes / "instances.json",
                             "-o", tmp_path / "h", "--json", "--quiet")
    assert code == 0, err
    document = json.loads(out)
    assert document["images"] == 3 and 0 <= document["precision"] <= 1 and 0 <= document["recall"] <= 1
    lines = (tmp_path / "h" / "hypotheses.jsonl").read_text().splitlines()
    assert len(lines) == 3 and all(set(json.loads(line)["classes"]) <= set(SHAPES.split(",")) for line in lines)
    (tmp_path / "empty").mkdir()
    for args, message in ((("--classes", SHAPES), "no images found"), (("--classes", "star"), "at least two classes"),
                          (("--classes", SHAPES, "--window", "0"), "--window must lie in (0, 1]"),
                          (("--classes", SHAPES, "--window", "a/b"), "give a fraction"),
                          (("--classes", SHAPES, "--mode", "image"), "--mode image keeps")):
        target = tmp_path / "empty" if message == "no images found" else scenes / "images"
        code, out, err = run_cli(capsys, "hypotheses", target, *args, "--model", "shapes-clip", "--pretrained",
                                 "builtin", "-o", tmp_path / "bad")
        assert code != 0 and message in err and "Traceback" not in err, (args, err)
        assert not (tmp_path / "bad").exists()
