"""`zutis train`: exact resume, DDP equals single process, safe checkpoints, recipes, budgets."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from zutiscli.artefacts.checkpoint import load_checkpoint, save_checkpoint
from zutiscli.artefacts.manifest import read_manifest
from zutiscli.cli.app import main
from zutiscli.errors import ArtefactError, UsageError
from zutiscli.artefacts.runs import CHECKPOINT, FINAL
from zutiscli.engine.trainer import TrainingInterrupted, poly_lr
from zutiscli.pipeline.train import TrainConfig, load_recipe, train

from helpers import make_pseudolabels  # noqa: E402


@pytest.fixture(scope="module")
def pseudo(tmp_path_factory):
    return make_pseudolabels(tmp_path_factory.mktemp("train"), count=24)


def small(pseudo, checkpoint, **overrides):
    values = dict(source=str(pseudo), model="zutis-tiny", pretrained=str(checkpoint), num_queries=6,
                  decoder_layers=2, decoder_heads=2, decoder_ffn=32, mlp_hidden=16, iterations=6, batch_size=2,
                  crop=48, lr=1e-3, workers=0, device="cpu", precision="fp32", checkpoint_every=2, log_every=1,
                  max_objects=4, crop_adapter_scenes=3)
    values.update(overrides)
    return TrainConfig(**values)


def weights(run):
    return load_checkpoint(run / FINAL)["model"]


def same(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for key in a:
        if atol:
            assert torch.allclose(a[key].float(), b[key].float(), atol=atol), key
        else:
            assert torch.equal(a[key], b[key]), key


def test_run_directory_contents(pseudo, tiny_checkpoint, tmp_path):
    result = train(small(pseudo, tiny_checkpoint), tmp_path / "run")
    assert result.iteration == 6 and result.stopped == "completed"
    manifest = read_manifest(result.path, "zutis.run")
    assert manifest.summary["iterations"] == 6 and manifest.inputs[0].kind == "zutis.pseudolabels"
    lines = [json.loads(line) for line in (result.path / "metrics.jsonl").read_text().splitlines()]
    assert [line["iteration"] for line in lines] == [1, 2, 3, 4, 5, 6]
    assert lines[0]["lr"] > lines[-1]["lr"] and lines[0]["encoder_lr"] == pytest.approx(lines[0]["lr"] * 0.1)
    # The losses of this seeded run, as recorded when the trainer got its own module: another
    # initialisation, scene stream or step would change them by far more than rounding.
    # (A new torch version may draw its initial weights differently: then record them again.)
    assert [line["loss"] for line in lines] == pytest.approx(
        [4.589691, 4.555476, 4.579762, 4.525479, 4.530048, 4.542955], abs=5e-4)
    final = load_checkpoint(result.path / FINAL)
    assert final["classes"] == ["circle", "square", "triangle", "star", "cross", "ring"]
    assert final["config"]["backbone"]["name"] == "zutis-tiny" and "optimizer" not in final


def test_crop_adapter_is_fitted_saved_and_leaves_the_training_untouched(pseudo, tiny_checkpoint, tmp_path, tiny_backbone):
    logged = []
    fitted = train(small(pseudo, tiny_checkpoint, crop_adapter_scenes=5), tmp_path / "fitted", log=logged.append).path
    none = train(small(pseudo, tiny_checkpoint, crop_adapter_scenes=0), tmp_path / "none").path
    same(weights(fitted), weights(none))  # fitting it draws no random number the training would have drawn
    final = load_checkpoint(fitted / FINAL)
    adapter = final["crop_adapter"]
    assert adapter["weight"].shape == (tiny_backbone.embed_dim,) * 2 and not torch.equal(
        adapter["weight"], torch.eye(tiny_backbone.embed_dim))
    assert (adapter["model"], adapter["pretrained"]) == ("zutis-tiny", str(tiny_checkpoint))
    assert adapter["scenes"] == 5 and adapter["objects"] >= 5
    assert load_checkpoint(fitted / CHECKPOINT)["crop_adapter"]["objects"] == adapter["objects"]
    assert read_manifest(fitted).summary["crop_adapter"]["objects"] == adapter["objects"]
    assert any(line.startswith("crop adapter: fitted on") for line in logged)
    assert "crop_adapter" not in load_checkpoint(none / FINAL) and read_manifest(none).summary["crop_adapter"] is None
    with pytest.raises(UsageError, match="--crop-adapter-scenes must be >= 0"):
        small(pseudo, tiny_checkpoint, crop_adapter_scenes=-1).validate()
    with pytest.raises(UsageError, match="--crop-adapter-decay must be >= 0"):
        small(pseudo, tiny_checkpoint, crop_adapter_decay=-0.5).validate()
    with pytest.raises(UsageError, match="--crop-adapter-views must be >= 0"):
        small(pseudo, tiny_checkpoint, crop_adapter_views=-1).validate()
    assert (adapter["decay"], adapter["views"]) == (0.01, 3)  # fitted on recoloured views by default


def test_resume_after_sigint_reproduces_uninterrupted_weights(pseudo, tiny_checkpoint, tmp_path):
    whole = train(small(pseudo, tiny_checkpoint), tmp_path / "whole").path

    def interrupt(iteration, total, losses):
        if iteration == 3:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted) as info:
        train(small(pseudo, tiny_checkpoint), tmp_path / "cut", progress=interrupt)
    assert info.value.iteration == 3 and info.value.exit_code == 130
    assert "--resume" in str(info.value)
    assert load_checkpoint(tmp_path / "cut" / CHECKPOINT)["iteration"] == 3
    resumed = train(small(pseudo, tiny_checkpoint), resume=tmp_path / "cut")
    assert resumed.iteration == 6
    same(weights(whole), weights(resumed.path))
    assert torch.equal(load_checkpoint(whole / FINAL)["crop_adapter"]["weight"],
                       load_checkpoint(resumed.path / FINAL)["crop_adapter"]["weight"])  # carried through the resume
    lines = [json.loads(line)["iteration"] for line in (resumed.path / "metrics.jsonl").read_text().splitlines()]
    assert lines == [1, 2, 3, 4, 5, 6]


def test_two_process_ddp_equals_single_process(pseudo, tiny_checkpoint, tmp_path):
    single = train(small(pseudo, tiny_checkpoint, batch_size=4, iterations=3), tmp_path / "single").path
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--module",
        "zutiscli", "train", str(pseudo), "--model", "zutis-tiny", "--pretrained", str(tiny_checkpoint),
        "--num-queries", "6", "--decoder-layers", "2", "--decoder-heads", "2", "--decoder-ffn", "32",
        "--mlp-hidden", "16", "--iterations", "3", "--batch-size", "4", "--crop", "48", "--lr", "1e-3",
        "--workers", "0", "--device", "cpu", "--precision", "fp32", "--max-objects", "4", "--crop-adapter-scenes", "3",
        "-o", str(tmp_path / "ddp"), "--quiet",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = weights(single), weights(tmp_path / "ddp")
    assert a.keys() == b.keys()
    for key in a:
        if key.endswith("in_proj_bias"):
            # the key bias has an exactly zero gradient (softmax is shift-invariant), so Adam turns
            # float noise into steps of up to lr; queries and values must agree like everything else
            third = a[key].shape[0] // 3
            assert torch.allclose(a[key][:third], b[key][:third], atol=1e-5), key
            assert torch.allclose(a[key][2 * third:], b[key][2 * third:], atol=1e-5), key
            assert torch.allclose(a[key][third:2 * third], b[key][third:2 * third], atol=2 * 1e-3 * 3), key
        else:
            assert torch.allclose(a[key], b[key], atol=1e-5), key
    assert read_manifest(tmp_path / "ddp").summary["processes"] == 2


def test_checkpoints_refuse_pickled_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo owned",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "zutis.checkpoint", "config": {}, "classes": [], "model": Payload()}, path)
    with pytest.raises(ArtefactError, match="weights_only=True"):
        load_checkpoint(path)
    torch.save({"just": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ArtefactError, match="not a zutis checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    save_checkpoint(tmp_path / "ok.pt", {"config": {"a": 1}, "classes": ["x"], "model": {"w": torch.ones(2)}})
    assert load_checkpoint(tmp_path / "ok.pt")["classes"] == ["x"]


def test_recipes_and_cli_overrides(pseudo, tiny_checkpoint, tmp_path, capsys):
    (tmp_path / "r.yaml").write_text("iterations: 3\nbatch-size: 2\ncrop: 48\nlr: 0.002\n")
    (tmp_path / "r.toml").write_text("iterations = 4\nnum_queries = 5\n")
    assert load_recipe(tmp_path / "r.yaml") == {"iterations": 3, "batch_size": 2, "crop": 48, "lr": 0.002}
    assert load_recipe(tmp_path / "r.toml") == {"iterations": 4, "num_queries": 5}
    (tmp_path / "bad.yaml").write_text("iterations: [unclosed\n")
    with pytest.raises(UsageError, match="cannot be parsed"):
        load_recipe(tmp_path / "bad.yaml")
    with pytest.raises(UsageError, match="unknown option"):
        TrainConfig.from_dict({"iterationz": 3})
    args = ["train", str(pseudo), "--config", str(tmp_path / "r.yaml"), "--model", "zutis-tiny", "--pretrained",
            str(tiny_checkpoint), "--num-queries", "6", "--decoder-layers", "1", "--decoder-heads", "2",
            "--decoder-ffn", "32", "--mlp-hidden", "16", "--workers", "0", "--device", "cpu", "--precision", "fp32",
            "--iterations", "2", "--crop-adapter-scenes", "2", "-o", str(tmp_path / "run"), "--json"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 0
    document = json.loads(capsys.readouterr().out)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert document["iteration"] == 2 and config["iterations"] == 2  # the flag beats the file
    assert config["batch_size"] == 2 and config["lr"] == 0.002  # the file beats the defaults



def test_shipped_recipes_by_name(pseudo, tmp_path, monkeypatch, capsys):
    from dataclasses import asdict

    from zutiscli import recipes

    assert recipes.names() == ["demo", "demo-fast", "official"]
    official = TrainConfig.from_dict(load_recipe("official"), where="official")
    defaults = asdict(TrainConfig())
    # the defaults are the paper's; the recipe names its weights and leaves out the crop adapter
    assert {k: v for k, v in asdict(official).items() if v != defaults[k]} == {"pretrained": "openai",
                                                                                "crop_adapter_scenes": 0}
    assert (official.model, official.iterations, official.batch_size, official.crop, official.lr,
            official.encoder_lr_mult, official.weight_decay, official.poly_power, official.min_lr,
            official.num_queries, official.decoder_layers) == ("ViT-B-16", 20_000, 8, 384, 5e-5, 0.1, 0.05, 0.9,
                                                               1e-6, 100, 6)
    assert official.inference == {}  # the paper's inference
    with pytest.raises(UsageError, match=r"^--config offical: no such file, nor a recipe shipped with zutis "
                                         r"\(demo, demo-fast, official\)$"):
        load_recipe("offical")
    with pytest.raises(UsageError, match="no such file$"):
        load_recipe(tmp_path / "official.yaml")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "official").write_text("iterations: 3\n")
    with pytest.raises(UsageError, match="use a .yaml"):  # a file of that name is read, not the shipped recipe
        load_recipe("official")
    (tmp_path / "official").unlink()
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(pseudo), "--config", "official", "--iterations", "7", "--dry-run", "--json"])
    assert exit_info.value.code == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["model"]["pretrained"] == "openai" and plan["params"]["crop"] == 384
    assert plan["params"]["iterations"] == 7 and plan["params"]["crop_adapter_scenes"] == 0  # flags still win
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(pseudo), "--config", "nope"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.strip().count("\n") == 0 and "demo, demo-fast, official" in err

def test_budget_stops_early_with_a_usable_model(pseudo, tiny_checkpoint, tmp_path):
    result = train(small(pseudo, tiny_checkpoint, iterations=50, max_minutes=1e-6), tmp_path / "b")
    assert result.stopped == "budget" and result.iteration == 1
    assert (result.path / FINAL).is_file()


def test_poly_schedule():
    assert poly_lr(5e-5, 0, 100, 0.9, 1e-6) == pytest.approx(5e-5)
    assert poly_lr(5e-5, 100, 100, 0.9, 1e-6) == pytest.approx(1e-6)
    assert poly_lr(5e-5, 50, 100, 0.9, 1e-6) == pytest.approx((5e-5 - 1e-6) * 0.5**0.9 + 1e-6)


def test_bad_sources_and_options(tmp_path, capsys, pseudo):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(tmp_path)])
    assert exit_info.value.code == 1 and "zutis pseudolabel" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(pseudo), "--iterations", "0"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["train"])
    assert exit_info.value.code == 2


# ---- periodic evaluation on a held-out set ----------------------------------------------------
@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    from zutiscli.pipeline.synth import SynthConfig, write_synth

    return write_synth(SynthConfig("scenes", 3, seed=9, size=48), tmp_path_factory.mktemp("held") / "scenes")


def metric_lines(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_periodic_evaluation_leaves_the_training_untouched(pseudo, tiny_checkpoint, held_out, tmp_path):
    plain = train(small(pseudo, tiny_checkpoint), tmp_path / "plain").path
    said = []
    evaluated = train(small(pseudo, tiny_checkpoint, eval_images=str(held_out), eval_every=4), tmp_path / "eval",
                      log=said.append).path
    evals = [line for line in metric_lines(evaluated) if "eval" in line]
    assert [line["iteration"] for line in evals] == [4, 6]  # every 4 iterations, and at the end
    assert {"mIoU", "mask_AP", "mask_AP50", "pixel_accuracy"} <= set(evals[0]["eval"])
    assert [line["iteration"] for line in metric_lines(evaluated) if "eval" not in line] == [1, 2, 3, 4, 5, 6]
    for iteration in (4, 6):
        folder = evaluated / "evals" / f"iter-{iteration:06d}"
        metrics = json.loads((folder / "metrics.json").read_text())
        assert set(metrics["tasks"]) >= {"instance", "semantic"}
        assert read_manifest(folder, "zutis.metrics").params["iteration"] == iteration
        assert metrics["images"]["matched"] == 3
        assert not (folder / "predictions").exists()  # scored in memory
    assert sorted(p.name for p in (evaluated / "evals").iterdir()) == ["iter-000004", "iter-000006"]
    assert any(m.startswith("eval at iteration 4: mIoU ") and "mask AP50" in m for m in said)
    assert read_manifest(evaluated, "zutis.run").summary["last_eval"] == evals[-1]
    assert read_manifest(plain, "zutis.run").summary["last_eval"] is None
    same(weights(plain), weights(evaluated))
    # the evaluation is `zutis predict` + `zutis evaluate` of the final model, through the same engine
    from zutiscli.data.classes import ClassQuery
    from zutiscli.pipeline.evaluate import EvaluateConfig, evaluate
    from zutiscli.pipeline.predict import PredictConfig, predict

    classes = read_manifest(evaluated / "evals" / "iter-000006").params["classes"]
    predicted = predict(PredictConfig(inputs=[str(held_out / "images")], classes=tuple(ClassQuery(c, c) for c in classes),
                                      checkpoint=str(evaluated), device="cpu", vis=False), tmp_path / "pred").path
    scored = evaluate(EvaluateConfig(pred=str(predicted), gt=str(held_out)), tmp_path / "scored").metrics
    final = json.loads((evaluated / "evals" / "iter-000006" / "metrics.json").read_text())
    for task in scored["tasks"]:
        assert final[task] == scored[task], task
    a, b = load_checkpoint(plain / CHECKPOINT)["rng"], load_checkpoint(evaluated / CHECKPOINT)["rng"]
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_keeps_evaluating(pseudo, tiny_checkpoint, held_out, tmp_path):
    def interrupt(iteration, total, losses):
        if iteration == 3:
            os.kill(os.getpid(), signal.SIGINT)

    config = small(pseudo, tiny_checkpoint, eval_images=str(held_out), eval_every=2, eval_classes="circle,square")
    with pytest.raises(TrainingInterrupted):
        train(config, tmp_path / "cut", progress=interrupt)
    stale = tmp_path / "cut" / "evals" / "iter-000004"  # as if the interrupted session had got further
    stale.mkdir()
    resumed = train(None, resume=tmp_path / "cut").path
    evals = [line for line in metric_lines(resumed) if "eval" in line]
    assert [line["iteration"] for line in evals] == [2, 4, 6]
    assert (resumed / "evals" / "iter-000004" / "metrics.json").is_file()
    assert read_manifest(resumed / "evals" / "iter-000006").params["classes"] == ["circle", "square"]
    assert read_manifest(resumed).summary["last_eval"]["iteration"] == 6


def test_bad_held_out_set_is_a_usage_error_before_training(pseudo, tiny_checkpoint, held_out, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(pseudo), "--model", "zutis-tiny", "--pretrained", str(tiny_checkpoint), "--device", "cpu",
              "--eval-images", str(tmp_path / "nowhere"), "--eval-every", "2", "-o", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert "--eval-images" in err and str(tmp_path / "nowhere") in err
    assert not (tmp_path / "run").exists()
    with pytest.raises(UsageError, match="holds no instances.json or gt.json"):
        train(small(pseudo, tiny_checkpoint, eval_images=str(held_out / "images")), tmp_path / "run")
    with pytest.raises(UsageError, match="--eval-gt .*no such file"):
        train(small(pseudo, tiny_checkpoint, eval_images=str(held_out), eval_gt=str(tmp_path / "gt.json")),
              tmp_path / "run")
    with pytest.raises(UsageError, match="--eval-every needs a held-out set"):
        train(small(pseudo, tiny_checkpoint, eval_every=2), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(pseudo), "--model", "zutis-tiny", "--pretrained", str(tiny_checkpoint), "--device", "cpu",
              "--eval-images", str(held_out), "--eval-every", "5", "--iterations", "12", "-o", str(tmp_path / "run"),
              "--dry-run", "--json"])
    assert exit_info.value.code == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["reads"][1] == {"path": str(held_out), "kind": "held-out set", "images": 3}
    assert plan["work"]["evaluations"] == 3 and plan["params"]["eval_every"] == 5


# ---- supervised reference: synthetic scenes with their ground truth --------------------------
def test_synth_scenes_train_the_model_on_their_ground_truth(tiny_checkpoint, held_out, tmp_path):
    from zutiscli.pipeline.synth import SynthConfig, write_synth
    from zutiscli.data.scenes import DiskScenes

    scenes = write_synth(SynthConfig("scenes", 4, seed=3, size=48), tmp_path / "scenes")
    dataset = DiskScenes(scenes, 48, 0)
    image, semantic, masks, classes = dataset[0]
    truth = json.loads((scenes / "instances.json").read_text())
    first = [a for a in truth["annotations"] if a["image_id"] == dataset.images[dataset._position(0)]["id"]]
    assert image.shape == (3, 48, 48) and masks.shape[0] == len(first) and len(first) > 0
    assert sorted((classes + 1).tolist()) == sorted(a["category_id"] for a in first)
    for mask, cls in zip(masks, classes):  # the semantic map agrees with every instance
        assert (semantic[mask] == cls + 1).all()
    run = train(small(scenes, tiny_checkpoint, crop_adapter_scenes=10), tmp_path / "run")
    assert read_manifest(run.path, "zutis.run").inputs[0].kind == "zutis.synth"
    assert read_manifest(run.path).summary["crop_adapter"]["scenes"] == 4  # each of the 4 scenes once
    assert load_checkpoint(run.path / FINAL)["classes"] == ["circle", "square", "triangle", "star", "cross", "ring"]


def test_a_synth_pile_is_not_a_training_source(tiny_checkpoint, tmp_path):
    from zutiscli.pipeline.synth import SynthConfig, write_synth

    pile = write_synth(SynthConfig("pile", 2, seed=3, size=32), tmp_path / "pile")
    with pytest.raises(UsageError, match="synth pile"):
        train(small(pile, tiny_checkpoint), tmp_path / "run")


def test_scenes_without_semantic_maps_are_refused_naming_the_file(tiny_checkpoint, tmp_path):
    from zutiscli.pipeline.synth import SynthConfig, write_synth

    scenes = write_synth(SynthConfig("scenes", 2, seed=3, size=48), tmp_path / "scenes")
    truth = json.loads((scenes / "instances.json").read_text())
    del truth["images"][1]["semantic"]
    (scenes / "instances.json").write_text(json.dumps(truth))
    with pytest.raises(ArtefactError, match=r"instances\.json: image images/000001\.png names no semantic map"):
        train(small(scenes, tiny_checkpoint), tmp_path / "run")
    assert not (tmp_path / "run" / FINAL).exists()
