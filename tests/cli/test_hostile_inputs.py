"""Inputs that go wrong at scale, as a user meets them on the command line.

Errors raised in worker processes, Ctrl-C with workers running, stages whose inputs all (or mostly)
fail, symbolic links that lead nowhere, and lists of paths that do not exist: each must end in one
`error:` line (or one warning), with the right exit status and counts, never a traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import zutiscli
from zutiscli.artefacts.archives import ARCHIVES_NAME, archives_text
from zutiscli.artefacts.manifest import relative_to, write_manifest
from zutiscli.cli.app import main
from zutiscli.data.copypaste import CopyPasteConfig
from zutiscli.pipeline.copypaste import write_dataset
from zutiscli.pipeline.synth import SynthConfig, write_synth

from helpers import make_pseudolabels  # noqa: E402

#: A one-epoch run of a tiny ZUTIS model on a 4-scene dataset (every scene is read once).
TINY_TRAIN = ["--model", "zutis-tiny", "--num-queries", "4", "--decoder-layers", "1", "--decoder-heads", "2",
              "--decoder-ffn", "16", "--mlp-hidden", "8", "--iterations", "2", "--batch-size", "2", "--crop", "32",
              "--precision", "fp32", "--crop-adapter-scenes", "0", "--device", "cpu"]


def write_archives(out: Path, images: list[Path], weights: Path, classes: tuple[str, ...] = ("circle", "square")) -> Path:
    """An archives directory holding ``images``, dealt round-robin to ``classes`` (as `zutis retrieve` writes it)."""
    out.mkdir(parents=True)
    entries = {name: {"phrase": name, "images": []} for name in classes}
    for row, image in enumerate(images):
        entries[classes[row % len(classes)]]["images"].append(
            {"path": relative_to(out, image), "score": 0.5, "index": 0, "row": row})
    (out / ARCHIVES_NAME).write_text(archives_text(len(images), ["index"], entries), encoding="utf-8")
    write_manifest(out, "zutis.archives", model={"name": "zutis-tiny", "pretrained": str(weights)})
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_checkpoint) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hostile")
    pile = write_synth(SynthConfig("pile", 24, seed=7, size=32), root / "pile")
    images = sorted((pile / "images").iterdir())
    pseudo = make_pseudolabels(root / "labels", count=6, size=32)
    dataset = write_dataset(pseudo, 4, CopyPasteConfig(size=32, max_objects=3), output=root / "dataset")
    return {"root": root, "pile": pile, "images": images, "pseudo": pseudo, "dataset": dataset,
            "weights": tiny_checkpoint, "archives": write_archives(root / "archives", images, tiny_checkpoint)}


def run(capfd, args: list[str]) -> tuple[int, str, str]:
    """``zutis ARGS`` in this process; stdout and stderr as the terminal gets them (workers' output included)."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(arg) for arg in args])
    out, err = capfd.readouterr()
    return exit_info.value.code, out, err


def lines_of(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


# ---- errors in worker processes, Ctrl-C with workers running --------------------------------------

def test_an_unreadable_scene_read_by_a_worker_is_one_error_line(world, tmp_path, capfd):
    dataset = tmp_path / "dataset"
    shutil.copytree(world["dataset"], dataset)
    missing = dataset / "images" / "000002.jpg"
    missing.unlink()
    code, out, err = run(capfd, ["train", dataset, *TINY_TRAIN, "--pretrained", world["weights"], "--workers", "1",
                                 "-o", tmp_path / "run", "-q"])
    assert code == 1, err
    assert lines_of(err) == [f"error: {missing}: does not exist"]


def run_subprocess(args: list, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m zutiscli ARGS`` in a new process (of this checkout), killed after ``timeout`` seconds."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(zutiscli.__file__).parents[1]),
                                                      os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "zutiscli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_an_unreadable_image_in_a_pool_worker_is_one_error_line(tmp_path):
    # copypaste's workers are a multiprocessing pool: the error comes back pickled, as itself
    pseudo = make_pseudolabels(tmp_path, count=6, size=32)
    first = json.loads((pseudo / "pseudolabels.json").read_text())["images"][0]["file_name"]
    missing = (pseudo / first).resolve()
    missing.unlink()
    done = run_subprocess(["copypaste", pseudo, "-n", "8", "--size", "32", "--workers", "2", "-o", tmp_path / "out",
                           "-q"])
    assert done.returncode == 1, done.stderr
    assert lines_of(done.stderr) == [f"error: {missing}: does not exist"]


def test_ctrl_c_with_workers_running_is_reported_once(world, tmp_path):
    # 16 images (one forward batch) keep the mask workers busy for a moment; then they wait for work
    # while the main process goes through 40,000 archive entries whose files are gone.
    gone = [tmp_path / "gone" / f"{n:05d}.jpg" for n in range(40_000)]
    archives = write_archives(tmp_path / "archives", world["images"][:16] + gone, world["weights"], ("circle",))
    out = tmp_path / "pseudo"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(zutiscli.__file__).parents[1]),
                                                      os.environ.get("PYTHONPATH", "")]))
    process = subprocess.Popen(
        [sys.executable, "-m", "zutiscli", "pseudolabel", str(archives), "--size", "32", "--workers", "2",
         "-o", str(out), "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
        deadline = time.monotonic() + 120
        # the image decoder and the two mask workers run: Ctrl-C reaches them all (the terminal's process group)
        while process.poll() is None and time.monotonic() < deadline and len(children.read_text().split()) < 3:
            time.sleep(0.02)
        time.sleep(1.0)
        assert process.poll() is None, "the run ended before it could be interrupted"
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr, stderr
    assert lines_of(stderr) == ["error: interrupted"]
    assert not (out / "manifest.json").exists()
