"""The predict engine: one loop for `zutis predict`, `zs.Predictor` and training's evaluation; the
recipe a model carries; sharded runs merged equal to the unsharded run."""

import filecmp
import json

import numpy as np
import pytest

import zutiscli as zs
from zutiscli.artefacts.checkpoint import load_checkpoint
from zutiscli.artefacts.labelmap import read_label_png
from zutiscli.artefacts.manifest import read_manifest
from zutiscli.cli.app import main
from zutiscli.data.classes import ClassQuery
from zutiscli.errors import UsageError, ZutisError
from zutiscli.pipeline.predict import PredictConfig, merge_predictions, plan_predict, predict
from zutiscli.pipeline.synth import SynthConfig, write_synth

from helpers import train_tiny  # noqa: E402

RECIPE = {"class_temperature": 1.0, "iou_threshold": 0.5, "semantic_from": "instances", "score_threshold": 0.0}


@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory, tiny_checkpoint):
    """A tiny run whose recipe records inference settings, and six scenes of two sizes."""
    root = tmp_path_factory.mktemp("engine")
    run = train_tiny(root, tiny_checkpoint, iterations=2, crop_adapter_scenes=0, inference=RECIPE).path
    images = root / "images"
    images.mkdir()
    for size, seed in ((64, 3), (48, 4)):
        scenes = write_synth(SynthConfig("scenes", 3, seed=seed, size=size), root / f"scenes-{size}")
        for path in sorted((scenes / "images").iterdir()):
            (images / f"{size}-{path.name}").write_bytes(path.read_bytes())
    return run, images


def queries(*names):
    return tuple(ClassQuery(n, n) for n in names)


def config(run, images, **options):
    return PredictConfig(inputs=[str(images)], classes=queries("circle", "star"), checkpoint=str(run), device="cpu",
                         **options)


def test_the_run_records_its_recipe(recipe_run):
    run, _ = recipe_run
    assert load_checkpoint(run / "model.pt")["inference"] == RECIPE
    assert json.loads((run / "config.json").read_text())["inference"] == RECIPE


def test_predict_uses_the_recipe_unless_told_otherwise(recipe_run, tmp_path):
    run, images = recipe_run
    lines = []
    result = predict(config(run, images), tmp_path / "recipe", log=lines.append)
    params = read_manifest(result.path).params
    assert params["settings"]["iou_threshold"] == 0.5 and params["settings_from"]["iou_threshold"] == "recipe"
    assert params["settings"]["semantic_from"] == "instances" and params["settings"]["nms"] == "hard"
    assert any("iou-threshold 0.5 (recipe)" in line for line in lines)
    paper = read_manifest(predict(config(run, images, inference="paper"), tmp_path / "paper").path).params
    assert paper["settings"]["iou_threshold"] == 0.3 and paper["settings"]["semantic_from"] == "dense"
    option = read_manifest(predict(config(run, images, iou_threshold=0.4), tmp_path / "option").path).params
    assert option["settings"]["iou_threshold"] == 0.4 and option["settings_from"]["iou_threshold"] == "option"
    assert option["settings"]["class_temperature"] == 1.0
    # the dry run reads the recipe from the run's config.json without loading the model
    plan = plan_predict(config(run, images))
    assert plan.params["inference"]["semantic_from"] == "instances"


def test_a_recipe_conflicting_with_an_option_is_one_line(recipe_run, tmp_path):
    run, images = recipe_run
    with pytest.raises(UsageError, match="--crf smooths"):
        predict(config(run, images, crf=True), tmp_path / "x")
    predict(config(run, images, crf=True, semantic_from="dense"), tmp_path / "y")


def test_command_predictor_and_batches_agree(recipe_run, tmp_path):
    run, images = recipe_run
    out = predict(config(run, images), tmp_path / "one").path
    batched = predict(config(run, images, batch_size=4, loader_workers=1), tmp_path / "batched").path
    predictor = zs.Predictor(run, classes="circle,star", device="cpu")
    assert predictor.settings.iou_threshold == 0.5
    sidecar = json.loads((out / "images.json").read_text())
    results = json.loads((out / "predictions.json").read_text())
    paths = [images / (record["stem"] + ".png") for record in sidecar["images"]]
    for record, segmentation in zip(sidecar["images"], predictor.predict_many(paths)):
        assert np.array_equal(read_label_png(out / record["semantic"]), segmentation.semantic)
        mine = [r for r in results if r["image_id"] == record["id"]]
        assert [r["score"] for r in mine] == [round(float(s), 6) for s in segmentation.scores]
    # batched forward passes equal one image at a time up to rounding: same label maps on these scenes
    for record in sidecar["images"]:
        assert (read_label_png(out / record["semantic"]) == read_label_png(batched / record["semantic"])).mean() > 0.99


def test_sharded_runs_merged_equal_the_unsharded_run(recipe_run, tmp_path):
    run, images = recipe_run
    whole = predict(config(run, images), tmp_path / "whole").path
    shards = [predict(config(run, images, shard=(i, 2)), tmp_path / "sharded").path for i in range(2)]
    assert [p.name for p in shards] == ["shard-0-of-2", "shard-1-of-2"]
    merged = merge_predictions(shards[::-1], tmp_path / "merged")
    for name in ("predictions.json", "images.json", "panoptic.json"):
        assert json.loads((merged / name).read_text()) == json.loads((whole / name).read_text()), name
    for folder in ("semantic", "panoptic", "vis"):
        names = sorted(p.name for p in (whole / folder).iterdir())
        assert names == sorted(p.name for p in (merged / folder).iterdir())
        assert all(filecmp.cmp(whole / folder / n, merged / folder / n, shallow=False) for n in names)
    assert read_manifest(merged, "zutis.predictions").summary["images"] == 6


def test_merge_refuses_a_missing_or_foreign_shard(recipe_run, tmp_path):
    run, images = recipe_run
    zero = predict(config(run, images, shard=(0, 2)), tmp_path / "a").path
    with pytest.raises(UsageError, match="1/2 missing"):
        merge_predictions([zero], tmp_path / "m1")
    other = predict(config(run, images, shard=(1, 2), iou_threshold=0.7), tmp_path / "b").path
    with pytest.raises(ZutisError, match="another settings"):
        merge_predictions([zero, other], tmp_path / "m2")
    one = predict(config(run, images, shard=(1, 2)), tmp_path / "a").path
    (one / "shard.json").write_text("{not json")
    with pytest.raises(ZutisError, match=r"shard-1-of-2/shard.json: is not valid JSON"):
        merge_predictions([zero, one], tmp_path / "m4")
    (one / "shard.json").write_text('{"listed": 6}')
    with pytest.raises(ZutisError, match=r"shard-1-of-2: its images.json, predictions.json or shard.json is not"):
        merge_predictions([zero, one], tmp_path / "m5")
    assert not (tmp_path / "m4").exists() and not (tmp_path / "m5").exists()  # nothing half-written
    whole = predict(config(run, images), tmp_path / "c").path
    with pytest.raises(ZutisError, match="not a shard"):
        merge_predictions([whole], tmp_path / "m3")
    with pytest.raises(ZutisError, match="not the directory of a sharded run"):
        predict(config(run, images, shard=(0, 2)), whole)  # shards are not written into a finished artefact
    with pytest.raises(UsageError, match="needs -o DIR"):
        predict(config(run, images, shard=(0, 2)), None)


def command(args):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code


def test_predict_merge_command(recipe_run, tmp_path, capsys):
    run, images = recipe_run
    for i in range(2):
        assert command(["predict", str(images), "--checkpoint", str(run), "--classes", "circle,star", "--device",
                        "cpu", "--shard", f"{i}/2", "-o", str(tmp_path / "s"), "-q"]) == 0
    capsys.readouterr()
    assert command(["predict", "merge", str(tmp_path / "s" / "shard-0-of-2"), str(tmp_path / "s" / "shard-1-of-2"),
                    "-o", str(tmp_path / "all"), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["images"] == 6 and document["merged_from"] == 2


def test_in_memory_predictions_score_as_the_written_directory(recipe_run, tmp_path):
    from zutiscli.artefacts.groundtruth import load_ground_truth
    from zutiscli.engine.evaluator import score
    from zutiscli.pipeline.evaluate import EvaluateConfig, evaluate
    from zutiscli.pipeline.predict import predict_in_memory

    run, _ = recipe_run
    scenes = write_synth(SynthConfig("scenes", 4, seed=5, size=64), tmp_path / "scenes")
    options = dict(inputs=[str(scenes / "images")], classes=queries("circle", "square", "star"), checkpoint=str(run),
                   device="cpu")
    written = predict(PredictConfig(**options), tmp_path / "pred").path
    on_disk = evaluate(EvaluateConfig(pred=str(written), gt=str(scenes)), tmp_path / "metrics").metrics
    held = predict_in_memory(PredictConfig(**options, vis=False))
    in_memory = score(held, load_ground_truth(scenes), EvaluateConfig(pred="in memory", gt=str(scenes)))
    assert in_memory["tasks"] == on_disk["tasks"] and {"instance", "semantic"} <= set(on_disk["tasks"])
    for task in on_disk["tasks"]:
        assert in_memory[task] == on_disk[task], task


def test_a_shard_without_images_is_written_empty_and_merges(recipe_run, tmp_path):
    run, images = recipe_run
    whole = predict(config(run, images, vis=False), tmp_path / "whole").path
    shards = [predict(config(run, images, vis=False, shard=(i, 8)), tmp_path / "eight").path for i in range(8)]
    counts = [len(json.loads((p / "images.json").read_text())["images"]) for p in shards]
    assert sum(counts) == 6 and counts.count(0) >= 2  # six images over eight shards
    merged = merge_predictions(shards, tmp_path / "merged")
    for name in ("predictions.json", "images.json", "panoptic.json"):
        assert json.loads((merged / name).read_text()) == json.loads((whole / name).read_text()), name


def test_a_checkpoint_loads_without_random_initialisation_to_the_same_model(recipe_run):
    """load_zutis builds the network with its parameters uninitialised (the strict load overwrites
    them): the same weights, buffers and outputs as random initialisation followed by the load."""
    import threading

    import torch

    from zutiscli.models.clip import ModelSpec, load_backbone
    from zutiscli.models.zutis import ZutisConfig, ZutisModel
    from zutiscli.methods.predict.zutis import load_zutis, parameters_left_uninitialised

    run, _ = recipe_run
    data = load_checkpoint(run / "model.pt")
    config = ZutisConfig.from_dict(data["config"])
    former = ZutisModel(load_backbone(ModelSpec(config.backbone["name"], "none")), config)
    former.load_state_dict(data["model"])
    model, _, _ = load_zutis(run / "model.pt", torch.device("cpu"))
    ours, theirs = dict(model.named_buffers()) | model.state_dict(), dict(former.named_buffers()) | former.state_dict()
    assert ours.keys() == theirs.keys()  # the buffers no state dict holds (the causal text mask) included
    for name, tensor in theirs.items():
        assert torch.equal(ours[name], tensor), name
    former.eval()
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ours, theirs = (m.backbone.dense_tokens(m.backbone.normalise(image)) for m in (model, former))
        assert torch.equal(model.dense_embeddings(ours), former.dense_embeddings(theirs))
        assert torch.equal(model.mask_logits(ours)[-1], former.mask_logits(theirs)[-1])
    # outside the block, and on other threads meanwhile, initialisation is as usual
    torch.manual_seed(0)
    expected = torch.nn.Linear(8, 8).weight.clone()
    seen = {}
    with parameters_left_uninitialised():
        def other() -> None:
            torch.manual_seed(0)
            seen["other thread"] = torch.nn.Linear(8, 8).weight.clone()

        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    torch.manual_seed(0)
    assert torch.equal(torch.nn.Linear(8, 8).weight, expected)
    assert torch.equal(seen["other thread"], expected)


def test_decode_workers_leave_unresized_inputs_to_the_main_thread(recipe_run):
    """On the CPU a worker sends no float copy of an image the model takes as it is; the input the
    main thread makes from it is the one the worker would have sent."""
    import torch

    from zutiscli.engine.predict import _Decoded, resize_for_model

    _, images = recipe_run
    paths = sorted(images.iterdir())
    for max_size in (None, 32):
        shipped = _Decoded(paths, None, max_size, 8, always_input=True)
        lean = _Decoded(paths, None, max_size, 8, always_input=False)
        for number in range(len(paths)):
            _, _, rgb, tensor, _ = shipped[number]
            _, _, _, maybe, _ = lean[number]
            assert (maybe is None) == (max_size is None)
            assert torch.equal(resize_for_model(rgb, max_size, 8) if maybe is None else maybe, tensor)
