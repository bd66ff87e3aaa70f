"""Inference settings: the paper's defaults, a recipe's choices, options over both."""

import pytest

from zutiscli.engine import inference
from zutiscli.engine.inference import PAPER, check_recipe, resolve
from zutiscli.errors import UsageError
from zutiscli.ops.instances import REFINERS
from zutiscli.ops.mask_nms import NMS_METHODS


def test_choices_match_the_ops():
    # written again in engine/inference.py, which --help imports without torch
    assert inference.REFINERS == REFINERS and inference.NMS_METHODS == NMS_METHODS


def test_paper_defaults_are_the_papers():
    assert (PAPER.mask_threshold, PAPER.class_temperature, PAPER.iou_threshold, PAPER.nms) == (0.5, 5.0, 0.3, "hard")
    assert (PAPER.refine, PAPER.semantic_from, PAPER.crop_weight, PAPER.crf) == ("none", "dense", 0.0, False)


def test_option_beats_recipe_beats_paper():
    recipe = {"refine": "bilateral", "crop_weight": 0.5, "iou_threshold": 0.5}
    settings, origin = resolve({"iou_threshold": 0.4, "nms": None}, recipe)
    assert settings.refine == "bilateral" and origin["refine"] == "recipe"
    assert settings.iou_threshold == 0.4 and origin["iou_threshold"] == "option"
    assert settings.nms == "hard" and origin["nms"] == "paper"
    paper, origin = resolve({"iou_threshold": 0.4}, recipe, "paper")
    assert paper.refine == "none" and paper.crop_weight == 0.0 and paper.iou_threshold == 0.4
    assert origin["refine"] == "paper"
    assert "refine bilateral (recipe)" in inference.describe(settings, resolve({}, recipe)[1] | {"refine": "recipe"})


def test_recipe_is_checked():
    assert check_recipe({"crop-weight": 1, "max_detections": 50.0}, where="r.yaml") == {
        "crop_weight": 1.0, "max_detections": 50}
    with pytest.raises(UsageError, match="r.yaml: unknown inference setting 'cropweight'"):
        check_recipe({"cropweight": 0.5}, where="r.yaml")
    with pytest.raises(UsageError, match="refine must be str"):
        check_recipe({"refine": 3}, where="r.yaml")
    with pytest.raises(UsageError, match="--crop-weight must lie in"):
        check_recipe({"crop_weight": 2}, where="r.yaml")
    with pytest.raises(UsageError, match="--inference 'best'"):
        resolve({}, None, "best")


def test_method_limits():
    with pytest.raises(UsageError, match="--refine refines"):
        resolve({"refine": "bilateral"}, None)[0].validate("maskclip")
    resolve({"refine": "bilateral"}, None)[0].validate("zutis")
