"""`zutis train --method reclip` and `zutis predict --method reclip`: the run, exact resume, the crops,
classes in any order, other classes and other methods' checkpoints refused, bad input in one line."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch

from zutiscli.artefacts.checkpoint import load_checkpoint
from zutiscli.artefacts.manifest import read_manifest
from zutiscli.artefacts.runs import FINAL
from zutiscli.data.hypothesis_crops import HypothesisCrops

from helpers import run_cli  # noqa: E402

SHAPES = "circle,square,triangle,star,cross,ring"
FAST = ["--model", "shapes-clip", "--pretrained", "builtin", "--device", "cpu", "--precision", "fp32",
        "--workers", "0"]
SMALL = ["--iterations", "4", "--batch-size", "2", "--crop", "64", "--checkpoint-every", "2", "--log-every", "1"]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("reclip")
    from zutiscli.cli.app import main

    with pytest.raises(SystemExit) as done:
        main(["synth", "scenes", "-n", "8", "--size", "64", "--seed", "3", "-o", str(root / "scenes"), "-q"])
    assert done.value.code == 0
    return root / "scenes"


@pytest.fixture(scope="module")
def run(scenes, tmp_path_factory):
    out = tmp_path_factory.mktemp("reclip-run") / "run"
    from zutiscli.cli.app import main

    with pytest.raises(SystemExit) as done:
        main(["train", "--method", "reclip", str(scenes / "images"), "--classes", SHAPES, "--window", "1/2", *FAST,
              *SMALL, "-o", str(out), "-q"])
    assert done.value.code == 0
    return out


def test_a_run_makes_hypotheses_then_a_rectifier(run):
    manifest = read_manifest(run, "zutis.run")
    assert manifest.summary["method"] == "reclip" and manifest.summary["iterations"] == 4
    assert manifest.summary["images"] + manifest.summary["images_without_hypotheses"] == 8
    assert read_manifest(run / "hypotheses", "zutis.hypotheses").params["window"] == 0.5
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["iteration"] for line in lines] == [1, 2, 3, 4] and lines[0]["lr"] > lines[-1]["lr"]
    saved = load_checkpoint(run / FINAL)
    assert saved["method"] == "reclip" and saved["classes"] == SHAPES.split(",")
    # only the learned parts travel: no CLIP weights
    assert not any(key.startswith(("backbone", "model.")) for key in saved["model"])
    assert saved["config"]["context_tokens"] == 16 - 1 - 2  # shapes-clip's context: start, one-token name, end


def test_resume_after_sigint_continues_exactly(scenes, run, tmp_path, capsys):
    """A run from the first run's hypotheses, interrupted at iteration 2 and resumed, ends with the
    weights of the uninterrupted run (same crops, Gumbel noise, optimiser state)."""
    from zutiscli.engine.trainer import TrainingInterrupted
    from zutiscli.pipeline.reclip_config import ReclipTrainConfig
    from zutiscli.pipeline.train_reclip import train_reclip

    config = ReclipTrainConfig(source=str(run / "hypotheses"), model="shapes-clip", pretrained="builtin",
                               device="cpu", precision="fp32", workers=0, iterations=4, batch_size=2, crop=64,
                               checkpoint_every=2, log_every=1)

    def interrupt(iteration, total, losses):
        if iteration == 2:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted) as info:
        train_reclip(config, tmp_path / "r", progress=interrupt)
    assert info.value.iteration == 2
    code, _, err = run_cli(capsys, "train", "--resume", tmp_path / "r", "-q")
    assert code == 0, err
    ours, theirs = load_checkpoint(tmp_path / "r" / FINAL)["model"], load_checkpoint(run / FINAL)["model"]
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key


def test_crops_are_a_function_of_the_sample_number(scenes):
    paths = sorted((scenes / "images").iterdir())
    crops = HypothesisCrops(paths, [[1]] * len(paths), 48, (1.0, 2.0), seed=5)
    first, again = crops[13], crops[13]
    assert torch.equal(first[0], again[0]) and first[0].shape == (3, 48, 48)
    assert not torch.equal(crops[13][0], crops[14][0])
    # each epoch visits every image once
    assert sorted(crops.image_of(n) for n in range(len(paths))) == list(range(len(paths)))


def test_predict_in_any_class_order_labels_the_same_pixels(scenes, run, tmp_path, capsys):
    image = sorted((scenes / "images").iterdir())[0]
    maps = {}
    for name, classes in (("a", SHAPES), ("b", ",".join(reversed(SHAPES.split(","))))):
        code, _, err = run_cli(capsys, "predict", image, "--method", "reclip", "--checkpoint", run, "--classes",
                               classes, "--task", "semantic", "--device", "cpu", "-o", tmp_path / name, "-q")
        assert code == 0, err
        maps[name] = np.load(next((tmp_path / name).rglob("*.npy"))) if list((tmp_path / name).rglob("*.npy")) \
            else np.asarray(__import__("PIL.Image").Image.open(next((tmp_path / name / "semantic").iterdir())))
    a, b = maps["a"].astype(int), maps["b"].astype(int)
    flipped = np.where((b > 0) & (b < 7), 7 - b, b)  # class i of the reversed list is class 7 - i
    assert np.array_equal(a, flipped)


def test_without_classes_the_trained_ones_are_segmented(scenes, run, tmp_path, capsys):
    image = sorted((scenes / "images").iterdir())[0]
    code, out, err = run_cli(capsys, "predict", image, "--method", "reclip", "--checkpoint", run, "--task", "semantic",
                             "--device", "cpu", "-o", tmp_path / "p", "--json")
    assert code == 0, err
    assert read_manifest(tmp_path / "p").params["classes"] == SHAPES.split(",")


def test_other_classes_and_other_methods_are_refused(scenes, run, tmp_path, capsys):
    image = sorted((scenes / "images").iterdir())[0]
    code, _, err = run_cli(capsys, "predict", image, "--method", "reclip", "--checkpoint", run, "--classes",
                           "circle,dog", "-o", tmp_path / "p1")
    assert code != 0 and "not open-vocabulary" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "predict", image, "--method", "zutis", "--checkpoint", run, "--classes", SHAPES,
                           "-o", tmp_path / "p2")
    assert code != 0 and "--method reclip" in err and "Traceback" not in err
    assert not (tmp_path / "p1").exists() and not (tmp_path / "p2").exists()


def test_a_zutis_checkpoint_is_refused_by_reclip(tmp_path, capsys):
    from zutiscli.artefacts.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "model.pt", {"config": {}, "classes": ["a", "b"], "model": {}})
    code, _, err = run_cli(capsys, "predict", tmp_path / "model.pt", "--method", "reclip", "--checkpoint",
                           tmp_path / "model.pt", "-o", tmp_path / "p")
    assert code != 0 and "checkpoint of --method zutis" in err and not (tmp_path / "p").exists()


@pytest.mark.parametrize("args, message", [
    (["EMPTY", "--classes", "a,b"], "no images found"),
    (["IMAGES"], "needs --classes"),
    (["IMAGES", "--classes", "circle"], "at least two classes"),
    (["IMAGES", "--classes", "a,b", "--num-queries", "4"], "--num-queries: option(s) of ZUTIS training"),
    (["IMAGES", "--classes", "a,b", "--context-tokens", "40"], "--context-tokens 40 does not fit"),
])
def test_bad_input_is_one_line_and_writes_nothing(scenes, tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    args = [str(tmp_path / "empty") if a == "EMPTY" else str(scenes / "images") if a == "IMAGES" else a for a in args]
    code, _, err = run_cli(capsys, "train", "--method", "reclip", *args, *FAST, *SMALL, "-o", tmp_path / "out")
    assert code != 0 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_reclip_options_are_refused_for_zutis(scenes, tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", str(scenes), "--bias", "add", "-o", tmp_path / "out")
    assert code != 0 and "--bias: option(s) of --method reclip" in err and not (tmp_path / "out").exists()


def test_distillation_trains_the_students_tower_only(scenes, run, tmp_path, capsys):
    """--teacher: the student inherits the teacher's Query head, bias and decoder unchanged, learns
    CLIP's image tower (positional embedding excepted), logs the three loss terms, and predicts."""
    code, _, err = run_cli(capsys, "train", "--method", "reclip", "--teacher", run, *FAST[4:], "--iterations", "2",
                           "--batch-size", "2", "--crop", "64", "--log-every", "1", "-o", tmp_path / "d", "-q")
    assert code == 0, err
    student, teacher = load_checkpoint(tmp_path / "d" / FINAL), load_checkpoint(run / FINAL)
    assert student["config"]["student"] and student["teacher"] == str(run)
    for key, value in teacher["model"].items():
        assert torch.equal(student["model"][key], value), key  # inherited and frozen
    from zutiscli.models.clip import ModelSpec, load_backbone

    clip = load_backbone(ModelSpec("shapes-clip", "builtin")).model.visual.state_dict()
    tower = {key[len("tower."):]: value for key, value in student["model"].items() if key.startswith("tower.")}
    assert tower.keys() == clip.keys()
    assert torch.equal(tower["positional_embedding"], clip["positional_embedding"])
    assert not torch.equal(tower["conv1.weight"], clip["conv1.weight"])
    line = json.loads((tmp_path / "d" / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"loss", "mask", "feat", "text"} <= set(line)
    assert line["loss"] == pytest.approx(line["mask"] + 0.5 * line["feat"] + 0.5 * line["text"], abs=1e-5)
    image = sorted((scenes / "images").iterdir())[0]
    code, _, err = run_cli(capsys, "predict", image, "--method", "reclip", "--checkpoint", tmp_path / "d", "--task",
                           "semantic", "--device", "cpu", "-o", tmp_path / "p", "-q")
    assert code == 0, err
    assert read_manifest(tmp_path / "p").model["student"] is True


def test_a_student_is_no_teacher(run, tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--method", "reclip", "--teacher", run, *FAST[4:], *SMALL,
                           "-o", tmp_path / "d")
    assert code == 0, err
    code, _, err = run_cli(capsys, "train", "--method", "reclip", "--teacher", tmp_path / "d", *FAST[4:], *SMALL,
                           "-o", tmp_path / "e")
    assert code != 0 and "a distilled student" in err and not (tmp_path / "e").exists()


def test_two_process_ddp_runs_on_gloo(run, tmp_path):
    """Under torchrun (gloo on CPUs) two processes split each batch and rank 0 writes the run. (Not
    equal to one process: each rank draws its own Gumbel noise and batch-norm statistics.)"""
    import subprocess
    import sys

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--module",
               "zutiscli", "train", "--method", "reclip", str(run / "hypotheses"), *FAST, *SMALL,
               "-o", str(tmp_path / "ddp"), "--quiet"]
    result = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = read_manifest(tmp_path / "ddp", "zutis.run")
    assert manifest.summary["processes"] == 2 and manifest.summary["iterations"] == 4
