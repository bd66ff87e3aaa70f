"""The Python API (`import zutiscli as zs`): same results as the commands, typed arrays, strict keywords."""

import dataclasses
import inspect
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import zutiscli as zs
from zutiscli.artefacts.index_store import IndexReader
from zutiscli.artefacts.labelmap import read_label_png
from zutiscli.data.classes import ClassQuery
from zutiscli.errors import UsageError, ZutisError
from zutiscli.ops.masks import decode_mask
from zutiscli.pipeline.index import IndexConfig, IndexResult
from zutiscli.pipeline.predict import PredictConfig, predict
from zutiscli.pipeline.retrieve import read_archives
from zutiscli.pipeline.synth import SynthConfig, write_synth
from zutiscli.pipeline.train import TrainConfig
from zutiscli.pipeline.hypotheses_config import HypothesesConfig
from zutiscli.pipeline.reclip_config import ReclipTrainConfig
from zutiscli.artefacts.manifest import read_manifest

from helpers import train_tiny  # noqa: E402

CLASSES = ["circle", "star", "ring"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_checkpoint):
    """A 3-iteration ZUTIS run on the tiny CLIP and two 64 x 64 evaluation scenes."""
    root = tmp_path_factory.mktemp("api")
    run = train_tiny(root, tiny_checkpoint).path
    scenes = write_synth(SynthConfig("scenes", 2, seed=9, size=64), root / "scenes")
    return run, sorted((scenes / "images").glob("*.png"))


@pytest.fixture(scope="module")
def predictor(trained):
    run, _ = trained
    return zs.Predictor(run, classes=CLASSES, device="cpu", score_threshold=0.0)


def test_import_is_light_and_lists_the_api():
    code = ("import json, sys, zutiscli\n"
            "state = ['torch' in sys.modules, 'zutiscli.api' in sys.modules, dir(zutiscli), zutiscli.__all__]\n"
            "import zutiscli.shapes.world as world\n"
            "print(json.dumps(state + [callable(zutiscli.synth), len(world.SHAPES)]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    torch_loaded, api_loaded, names, exported, synth_callable, shapes = json.loads(out.stdout)
    assert not torch_loaded and not api_loaded
    api = {"synth", "index", "retrieve", "cosegment", "pseudolabel", "cluster", "copypaste", "train", "hypotheses",
           "train_reclip", "predict", "evaluate", "compare", "Predictor", "Segmentation"}
    assert api <= set(names) and api <= set(exported)
    # the shapes-world subpackage and the API function `synth` do not share a name
    assert synth_callable and shapes == 6
    assert callable(zs.synth) and zs.synth.__module__ == "zutiscli.api"


#: Inference options beyond the paper's: refined masks, a crop classifier, the semantic map from the instances.
DEMO_INFERENCE = dict(refine="bilateral", crop_weight=0.5, semantic_from="instances")


@pytest.mark.parametrize("extra", [{}, DEMO_INFERENCE], ids=["paper", "refined-crops"])
def test_predictor_matches_zutis_predict(trained, predictor, tmp_path, extra):
    run, images = trained
    config = PredictConfig(inputs=[str(p) for p in images], classes=[ClassQuery(n, n) for n in CLASSES],
                           checkpoint=str(run), device="cpu", score_threshold=0.0, vis=False, **extra)
    if extra:
        predictor = zs.Predictor(run, classes=CLASSES, device="cpu", score_threshold=0.0, **extra)
    out = predict(config, tmp_path / "out").path
    sidecar = json.loads((out / "images.json").read_text())
    results = json.loads((out / "predictions.json").read_text())
    assert results, "the comparison needs instances"
    for record in sidecar["images"]:
        segmentation = predictor(images[record["id"] - 1])
        np.testing.assert_array_equal(segmentation.semantic, read_label_png(out / record["semantic"]))
        written = [r for r in results if r["image_id"] == record["id"]]
        assert len(segmentation) == len(written)
        for k, result in enumerate(written):
            np.testing.assert_array_equal(segmentation.masks[k], decode_mask(result["segmentation"]))
            assert segmentation.labels[k] == result["category_id"]
            assert segmentation.scores[k] == pytest.approx(result["score"], abs=1e-6)
            x, y, w, h = result["bbox"]
            assert segmentation.boxes[k].tolist() == ([x, y, x + w, y + h] if w and h else [0, 0, 0, 0])


def test_segmentation_arrays_have_the_documented_shapes_and_types(trained, predictor):
    _, images = trained
    segmentation = predictor(images[0])
    height, width = Image.open(images[0]).size[::-1]
    count = len(segmentation)
    assert segmentation.size == (height, width)
    assert segmentation.semantic.shape == (height, width) and segmentation.semantic.dtype == np.int64
    assert 0 <= segmentation.semantic.min() and segmentation.semantic.max() <= len(CLASSES)
    assert segmentation.masks.shape == (count, height, width) and segmentation.masks.dtype == bool
    assert segmentation.scores.shape == (count,) and segmentation.scores.dtype == np.float32
    assert np.all(np.diff(segmentation.scores) <= 0) and np.all((segmentation.scores >= 0) & (segmentation.scores <= 1))
    assert segmentation.labels.shape == (count,) and segmentation.labels.dtype == np.int64
    assert np.all((segmentation.labels >= 1) & (segmentation.labels <= len(CLASSES)))
    assert segmentation.class_names == ("background", *CLASSES) and predictor.classes == tuple(CLASSES)
    assert segmentation.names == [segmentation.class_names[label] for label in segmentation.labels]
    assert segmentation.boxes.shape == (count, 4) and segmentation.boxes.dtype == np.float32
    for mask, (x0, y0, x1, y1) in zip(segmentation.masks, segmentation.boxes.astype(int)):
        if mask.any():
            assert mask[y0:y1, x0:x1].sum() == mask.sum()  # the box holds the whole mask ...
            assert mask[y0, x0:x1].any() and mask[y1 - 1, x0:x1].any()  # ... and is tight
            assert mask[y0:y1, x0].any() and mask[y0:y1, x1 - 1].any()
    with pytest.raises(dataclasses.FrozenInstanceError):
        segmentation.semantic = None


def test_path_pil_and_numpy_inputs_give_identical_results(trained, predictor):
    _, images = trained
    path = images[1]
    pil = Image.open(path)
    array = np.asarray(Image.open(path).convert("RGB"))
    results = [predictor(path), predictor(str(path)), predictor(pil), predictor(array),
               predictor(np.asfortranarray(array))]
    for other in results[1:]:
        np.testing.assert_array_equal(other.semantic, results[0].semantic)
        np.testing.assert_array_equal(other.masks, results[0].masks)
        np.testing.assert_array_equal(other.scores, results[0].scores)
        np.testing.assert_array_equal(other.labels, results[0].labels)
        np.testing.assert_array_equal(other.boxes, results[0].boxes)
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        predictor(array.astype(np.float32))
    with pytest.raises(TypeError, match="path, a PIL image"):
        predictor([1, 2, 3])


def test_predict_many_yields_in_order_and_batches_same_sizes(trained, predictor):
    _, images = trained
    odd = np.asarray(Image.open(images[0]).convert("RGB").resize((80, 48)))  # another model input size
    inputs = [images[0], odd, images[1], images[0]]
    singles = [predictor(image) for image in inputs]
    for batch_size in (1, 2, 4):
        many = list(predictor.predict_many(iter(inputs), batch_size=batch_size))
        assert [m.size for m in many] == [s.size for s in singles]
        for one, single in zip(many, singles):
            np.testing.assert_array_equal(one.labels, single.labels)
            np.testing.assert_allclose(one.scores, single.scores, atol=1e-5)
            assert (one.masks == single.masks).mean() > 0.999 and (one.semantic == single.semantic).mean() > 0.999
    with pytest.raises(TypeError, match="iterable of images"):
        next(predictor.predict_many(images[0]))


def test_classes_default_to_the_trained_ones_and_take_any_form(trained):
    run, images = trained
    default = zs.Predictor(str(run), device="cpu")
    assert default.classes == default.trained_classes and len(default.classes) == 6
    as_string = zs.Predictor(run, classes="circle, star,ring", device="cpu", score_threshold=0.0)
    assert as_string.classes == tuple(CLASSES)
    with pytest.raises(ZutisError, match="duplicate"):
        zs.Predictor(run, classes=["star", "star"], device="cpu")
    with pytest.raises(UsageError, match="background"):
        zs.Predictor(run, classes=["background", "star"], device="cpu")


def test_unknown_keywords_raise_type_error_naming_the_valid_ones(trained, tmp_path):
    run, _ = trained
    with pytest.raises(TypeError) as info:
        zs.index(tmp_path, tmp_path / "index", batchsize=4)
    message = str(info.value)
    assert "'batchsize'" in message and "did you mean 'batch_size'" in message
    assert all(f.name in message for f in dataclasses.fields(IndexConfig) if f.name != "sources")
    with pytest.raises(TypeError, match="mask_threshold"):
        zs.Predictor(run, classes=CLASSES, mask_treshold=0.4)
    with pytest.raises(TypeError, match="'task'"):
        zs.Predictor(run, classes=CLASSES, task="semantic")
    with pytest.raises(TypeError, match="'n'"):
        zs.copypaste(tmp_path)
    with pytest.raises(TypeError, match="unexpected keyword arguments 'k', 'top_k'"):
        zs.predict(tmp_path, CLASSES, k=1, top_k=2)


def test_signatures_carry_the_config_defaults():
    from zutiscli.data.copypaste import CopyPasteConfig
    from zutiscli.pipeline.evaluate import EvaluateConfig
    from zutiscli.pipeline.pseudolabel import PseudolabelConfig
    from zutiscli.pipeline.retrieve import RetrieveConfig

    checks = [(zs.synth, SynthConfig, {"kind", "count"}), (zs.index, IndexConfig, {"sources"}),
              (zs.retrieve, RetrieveConfig, {"indices", "classes"}), (zs.pseudolabel, PseudolabelConfig, {"inputs"}),
              (zs.copypaste, CopyPasteConfig, {"scale_range", "canvas_scale"}), (zs.train, TrainConfig, {"source"}),
              (zs.predict, PredictConfig, {"inputs", "classes"}), (zs.evaluate, EvaluateConfig, {"pred", "gt"}),
              (zs.hypotheses, HypothesesConfig, {"inputs", "classes"}), (zs.train_reclip, ReclipTrainConfig, {"source"})]
    for function, config, positional in checks:
        parameters = inspect.signature(function).parameters
        for field in dataclasses.fields(config):
            if field.name in positional:
                continue
            default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
            assert parameters[field.name].kind is inspect.Parameter.KEYWORD_ONLY
            assert parameters[field.name].default == default, (function.__name__, field.name)
    copypaste = inspect.signature(zs.copypaste).parameters
    assert (copypaste["scale_min"].default, copypaste["scale_max"].default) == CopyPasteConfig().scale_range
    assert (copypaste["canvas_min"].default, copypaste["canvas_max"].default) == CopyPasteConfig().canvas_scale
    predictor = inspect.signature(zs.Predictor).parameters
    assert list(predictor)[:2] == ["checkpoint", "classes"]
    assert predictor["device"].default == "auto" and predictor["precision"].default == "fp32"


def test_hypotheses_then_reclip_then_predict(tmp_path):
    """ReCLIP++ from Python: hypotheses, a rectification run, its prediction of its own classes; the
    ZUTIS trainer refuses the method instead of training ZUTIS."""
    scenes = zs.synth("scenes", 4, tmp_path / "scenes", size=64, seed=2)
    clip = dict(model="shapes-clip", pretrained="builtin", device="cpu")
    found = zs.hypotheses(scenes / "images", ["circle", "square", "star"], tmp_path / "hyp", window=0.5, **clip)
    assert len(found.images) == 4
    run = zs.train_reclip(found.path, tmp_path / "rec", iterations=2, batch_size=2, crop=64, workers=0,
                          precision="fp32", **clip)
    assert run.iteration == 2
    preds = zs.predict(scenes / "images", None, tmp_path / "pred", method="reclip", checkpoint=run.path, device="cpu")
    assert read_manifest(preds.path).params["classes"] == ["circle", "square", "star"]
    with pytest.raises(UsageError, match="train_reclip"):
        zs.train(found.path, tmp_path / "bad", method="reclip")
    with pytest.raises(UsageError, match="train_reclip"):  # nor does it resume a ReCLIP++ run as ZUTIS
        zs.train(resume=run.path)


def test_synth_and_index_run_end_to_end(tiny_checkpoint, tmp_path):
    pile = zs.synth("pile", 5, tmp_path / "pile", size=32, seed=3)
    assert sorted(p.name for p in (pile / "images").iterdir()) == [f"{i:06d}.png" for i in range(5)]
    seen = []
    result = zs.index(pile / "images", tmp_path / "index", model="zutis-tiny", pretrained=tiny_checkpoint,
                      device="cpu", workers=0, batch_size=2, shard=None, progress=lambda done, total: seen.append(done))
    assert isinstance(result, IndexResult) and result.embedded == 5 and result.failed == 0
    assert len(IndexReader(result.path)) == 5 and seen[-1] == 5
    again = zs.index([pile / "images"], tmp_path / "index", model="zutis-tiny", pretrained=str(tiny_checkpoint),
                     device="cpu", workers=0)
    assert (again.embedded, again.skipped) == (0, 5)
    archives = zs.retrieve(result.path, ["circle", "red star"], tmp_path / "archives", k=2, device="cpu",
                           prompts="names")
    assert {name: len(hits) for name, hits in read_archives(archives).items()} == {"circle": 2, "red star": 2}


def test_copypaste_and_evaluate_take_the_commands_forms(trained, predictor, tmp_path):
    run, images = trained
    dataset = zs.copypaste(run.parent / "pseudo", tmp_path / "cp", n=2, size=48, scale_min=0.3, canvas_min=0.5, seed=5)
    params = json.loads((dataset / "manifest.json").read_text())["params"]
    assert (params["count"], params["seed"], params["size"], tuple(params["scale_range"])) == (2, 5, 48, (0.3, 1.0))
    assert tuple(params["canvas_scale"]) == (0.5, 1.0)
    preds = zs.predict(images, CLASSES, tmp_path / "pred", checkpoint=run, device="cpu", vis=False)
    result = zs.evaluate(preds.path, images[0].parent.parent, tmp_path / "metrics", tasks="instance,semantic",
                         iou_types="segm", max_dets="1,10,100")
    assert result.metrics["tasks"] == ["instance", "semantic"] and "bbox" not in result.metrics["instance"]


def test_name_lists_given_as_one_string_are_split_as_on_the_command_line(monkeypatch, tmp_path):
    import zutiscli.pipeline.cosegment as cosegment_stage
    import zutiscli.pipeline.predict as predict_stage

    seen = {}
    monkeypatch.setattr(predict_stage, "predict", lambda config, *a, **k: seen.setdefault("predict", config))
    monkeypatch.setattr(cosegment_stage, "cosegment", lambda config, *a, **k: seen.setdefault("cosegment", config))
    zs.predict(tmp_path / "a.png", "circle", tmp_path / "p", method="reco", references="refs", context="sky, grass",
               stuff="sand")
    zs.cosegment(tmp_path / "archives", tmp_path / "r", context="sky,grass")
    assert list(seen["predict"].context) == ["sky", "grass"] and list(seen["predict"].stuff) == ["sand"]
    assert [q.name for q in seen["predict"].classes] == ["circle", "sand"]
    assert list(seen["cosegment"].context) == ["sky", "grass"]
