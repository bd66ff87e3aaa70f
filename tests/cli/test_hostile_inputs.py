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
from typing import Callable

import numpy as np
import pytest
from PIL import Image

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
    return {"root": root, "images": images, "dataset": dataset, "weights": tiny_checkpoint}


def run(capfd, args: list[str]) -> tuple[int, str, str]:
    """``zutis ARGS`` in this process; stdout and stderr as the terminal gets them (workers' output included)."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(arg) for arg in args])
    out, err = capfd.readouterr()
    return exit_info.value.code, out, err


def this_checkout() -> dict[str, str]:
    """The environment of a ``python -m zutiscli`` that runs this checkout."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(zutiscli.__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")]))


def run_subprocess(args: list, timeout: float = 120) -> subprocess.CompletedProcess:
    """``zutis ARGS`` in a new process, killed after ``timeout`` seconds (a hang fails, not blocks, the test)."""
    return subprocess.run([sys.executable, "-m", "zutiscli", *map(str, args)], capture_output=True, text=True,
                          env=this_checkout(), timeout=timeout)


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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="watches the run's worker processes in /proc")
def test_ctrl_c_with_workers_running_is_reported_once(world, tmp_path):
    # 16 images (one forward batch) keep the mask workers busy for a moment; then they wait for work
    # while the main process goes through 40,000 archive entries whose files are gone.
    gone = [tmp_path / "gone" / f"{n:05d}.jpg" for n in range(40_000)]
    archives = write_archives(tmp_path / "archives", world["images"][:16] + gone, world["weights"], ("circle",))
    out = tmp_path / "pseudo"
    # the image decoder and the two mask workers run: Ctrl-C reaches them all (the terminal's process group)
    ctrl_c_with_workers([sys.executable, "-m", "zutiscli", "pseudolabel", str(archives), "--size", "32", "--workers",
                         "2", "-o", str(out), "-q"], workers=3, after=1.0)
    assert not (out / "manifest.json").exists()


def ctrl_c_with_workers(command: list[str], workers: int, after: float, ready: Callable[[], bool] = lambda: True) -> None:
    """Start ``command`` in a process group of its own, press Ctrl-C (SIGINT to the group, as a
    terminal does) ``after`` seconds once it has ``workers`` child processes and ``ready()`` holds,
    and check that it ends with status 130 and the one line ``error: interrupted``."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=this_checkout(), start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline and (
                len(children.read_text().split()) < workers or not ready()):
            time.sleep(0.02)
        time.sleep(after)
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



@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="watches the run's worker processes in /proc")
def test_ctrl_c_while_index_workers_embed_is_reported_once_and_the_rerun_finishes(world, tmp_path):
    # 240 names of one large PNG (no reduced-scale decoding for PNG): a few seconds of work for the
    # two worker processes, which decode and embed
    images = tmp_path / "images"
    images.mkdir()
    noise = np.random.default_rng(0).integers(0, 256, (1000, 1000, 3), dtype=np.uint8)
    Image.fromarray(noise).save(images / "00000.png", compress_level=1)
    for number in range(1, 240):
        os.link(images / "00000.png", images / f"{number:05d}.png")
    out = tmp_path / "index"
    command = [sys.executable, "-m", "zutiscli", "index", str(images), "--model", "zutis-tiny", "--pretrained",
               str(world["weights"]), "--precision", "fp32", "--device", "cpu", "--workers", "2",
               "--decode-in", "processes", "--batch-size", "8", "--chunk-size", "16", "-o", str(out), "-q"]
    # once the first chunk is committed (on a loaded machine a fixed wait could come before it)
    ctrl_c_with_workers(command, workers=2, after=0.2, ready=(out / "manifest.json").is_file)
    assert not json.loads((out / "manifest.json").read_text())["summary"]["complete"]
    done = subprocess.run([*command[:-1], "--json"], capture_output=True, text=True, env=this_checkout(), timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["skipped"] > 0 and report["skipped"] + report["embedded"] == 240, report

# ---- stages whose inputs all, or mostly, fail -----------------------------------------------------

TINY_INDEX = ["--model", "zutis-tiny", "--workers", "0", "--precision", "fp32", "--device", "cpu"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_checkpoint) -> Path:
    """A tiny trained ZUTIS run, for `zutis predict`."""
    from helpers import train_tiny

    return train_tiny(tmp_path_factory.mktemp("predict-run"), tiny_checkpoint).path


def failed_rows(directory: Path) -> list[dict]:
    return [json.loads(line) for line in (directory / "failed.jsonl").read_text().splitlines()]


def test_pseudolabel_with_every_image_missing_fails_and_finishes_nothing(world, tmp_path, capfd):
    gone = [tmp_path / "gone" / f"{n}.png" for n in range(6)]
    archives = write_archives(tmp_path / "archives", gone, world["weights"])
    out = tmp_path / "pseudo"
    code, stdout, err = run(capfd, ["pseudolabel", archives, "--size", "32", "--refine", "none", "-o", out, "-q"])
    assert code == 1 and stdout == ""
    assert lines_of(err) == [f"error: none of the 6 archive images could be read (first: {gone[0]}: does not exist); "
                             f"the list is in {out / 'failed.jsonl'}; nothing was finished: fix the files or their "
                             f"paths and rerun"]
    assert not (out / "manifest.json").exists()
    assert len(failed_rows(out)) == 6
    # the images come back: the same command tries them again and finishes
    (tmp_path / "gone").mkdir()
    for path, image in zip(gone, world["images"]):
        shutil.copy(image, path)
    code, stdout, err = run(capfd, ["pseudolabel", archives, "--size", "32", "--refine", "none", "-o", out, "-q"])
    assert code == 0, err
    assert json.loads((out / "manifest.json").read_text())["summary"]["failed"] == 0
    assert failed_rows(out) == []


def test_pseudolabel_with_most_images_missing_warns_even_when_quiet(world, tmp_path, capfd):
    gone = [tmp_path / "gone" / f"{n}.png" for n in range(4)]
    archives = write_archives(tmp_path / "archives", world["images"][:2] + gone, world["weights"])
    out = tmp_path / "pseudo"
    code, stdout, err = run(capfd, ["pseudolabel", archives, "--size", "32", "--refine", "none", "-o", out, "-q"])
    assert code == 0, err
    assert stdout == f"{out}\n"
    # in archive order: circle's images (rows 0, 2, 4), then square's (1, 3, 5)
    assert lines_of(err) == [f"warning: most archive images could not be read: 4 of 6 were skipped ({gone[0]}: does "
                             f"not exist; {gone[2]}, {gone[1]}, ...); the list is in {out / 'failed.jsonl'}; check "
                             f"the inputs"]
    assert json.loads((out / "manifest.json").read_text())["summary"]["failed"] == 4
    assert len(failed_rows(out)) == 4


def test_index_with_every_image_unreadable_fails_and_finishes_nothing(world, tmp_path, capfd):
    images = tmp_path / "images"
    images.mkdir()
    for n in range(3):
        (images / f"{n}.png").write_bytes(b"not a png")
    out = tmp_path / "index"
    code, stdout, err = run(capfd, ["index", images, *TINY_INDEX, "--pretrained", world["weights"], "-o", out, "-q"])
    assert code == 1 and stdout == ""
    assert lines_of(err) == [f"error: none of the 3 images could be read (first: {images / '0.png'}: is not an image "
                             f"PIL can read); the list is in {out / 'failed.jsonl'}; nothing was finished: fix the "
                             f"files or their paths and rerun"]
    assert not (out / "manifest.json").exists()
    assert len(failed_rows(out)) == 3
    # fixed, the same command finishes the index
    for n in range(3):
        shutil.copy(world["images"][n], images / f"{n}.png")
    code, stdout, err = run(capfd, ["index", images, *TINY_INDEX, "--pretrained", world["weights"], "-o", out, "-q"])
    assert code == 0, err
    summary = json.loads((out / "manifest.json").read_text())["summary"]
    assert (summary["images"], summary["failed"], summary["complete"]) == (3, 0, True)


def test_index_with_most_images_unreadable_warns_even_when_quiet(world, tmp_path, capfd):
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(world["images"][0], images / "0.png")
    for n in range(1, 4):
        (images / f"{n}.png").write_bytes(b"")
    out = tmp_path / "index"
    code, stdout, err = run(capfd, ["index", images, *TINY_INDEX, "--pretrained", world["weights"], "-o", out, "-q"])
    assert code == 0, err
    [line] = lines_of(err)
    assert line.startswith("warning: most images could not be read: 3 of 4 were skipped (")
    assert "1.png: is empty (0 bytes)" in line and line.endswith(f"the list is in {out / 'failed.jsonl'}; check the inputs")
    summary = json.loads((out / "manifest.json").read_text())["summary"]
    assert (summary["images"], summary["failed"], summary["complete"]) == (1, 3, True)
    assert len(failed_rows(out)) == 3


def test_predict_with_every_image_unreadable_fails_and_finishes_nothing(world, run_dir, tmp_path, capfd):
    images = tmp_path / "images"
    images.mkdir()
    for n in range(3):
        (images / f"{n}.png").write_bytes(b"\x89PNG broken")
    out = tmp_path / "pred"
    code, stdout, err = run(capfd, ["predict", images, "--checkpoint", run_dir, "--classes", "circle", "--no-vis",
                                    "--device", "cpu", "-o", out, "-q"])
    assert code == 1 and stdout == ""
    [line] = lines_of(err)
    assert line.startswith(f"error: none of the 3 images could be read (first: {images / '0.png'}: ")
    assert line.endswith(f"the list is in {out / 'failed.jsonl'}; nothing was finished: fix the files or their paths "
                         f"and rerun")
    assert sorted(p.name for p in out.iterdir()) == [".zutis-unfinished", "failed.jsonl"]  # a rerun starts it afresh
    assert len(failed_rows(out)) == 3
    # fixed, the same command starts the directory afresh and finishes
    for n in range(3):
        shutil.copy(world["images"][n], images / f"{n}.png")
    code, stdout, err = run(capfd, ["predict", images, "--checkpoint", run_dir, "--classes", "circle", "--no-vis",
                                    "--device", "cpu", "-o", out, "-q"])
    assert code == 0, err
    assert json.loads((out / "manifest.json").read_text())["kind"] == "zutis.predictions"
    assert not (out / "failed.jsonl").read_text().strip() and not (out / ".zutis-unfinished").exists()


# ---- lists of paths that do not exist -------------------------------------------------------------

def path_list(tmp_path: Path, real: list[Path], missing: int) -> tuple[Path, list[Path]]:
    """A --from-list file naming ``missing`` paths that do not exist, then the ``real`` images."""
    gone = [tmp_path / "nowhere" / f"{n:05d}.jpg" for n in range(missing)]
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{path}\n" for path in [*gone, *real]))
    return listing, gone


def test_predict_from_a_list_of_10000_missing_paths_says_it_in_one_line(world, run_dir, tmp_path, capfd):
    listing, gone = path_list(tmp_path, world["images"][:2], 10_000)
    out = tmp_path / "pred"
    code, stdout, err = run(capfd, ["predict", "--from-list", listing, "--checkpoint", run_dir, "--classes", "circle",
                                    "--no-vis", "--device", "cpu", "-o", out, "-q"])
    assert code == 0, err
    assert lines_of(err) == [f"warning: most images could not be read: 10,000 of 10,002 were skipped ({gone[0]}: no "
                             f"such file or directory; {gone[1]}, {gone[2]}, ...); the list is in "
                             f"{out / 'failed.jsonl'}; check the inputs"]
    assert len(failed_rows(out)) == 10_000
    assert json.loads((out / "manifest.json").read_text())["summary"]["failed"] == 10_000
    # the dry run says the same in one line
    code, stdout, err = run(capfd, ["predict", "--from-list", listing, "--checkpoint", run_dir, "--classes", "circle",
                                    "--device", "cpu", "-o", tmp_path / "dry", "--dry-run"])
    assert code == 0, err
    assert sum("could not be read" in line for line in lines_of(err)) == 1
    assert len(lines_of(err)) < 10


def test_predict_from_a_list_of_only_missing_paths_fails_in_one_line(run_dir, tmp_path, capfd):
    listing, gone = path_list(tmp_path, [], 10_000)
    out = tmp_path / "pred"
    code, stdout, err = run(capfd, ["predict", "--from-list", listing, "--checkpoint", run_dir, "--classes", "circle",
                                    "--no-vis", "--device", "cpu", "-o", out])
    assert code == 1 and stdout == ""
    assert lines_of(err)[-1] == (f"error: none of the 10,000 images could be read (first: {gone[0]}: no such file or "
                                 f"directory); the list is in {out / 'failed.jsonl'}; nothing was finished: fix the "
                                 f"files or their paths and rerun")
    assert not any("nowhere" in line for line in lines_of(err)[:-1])
    assert len(failed_rows(out)) == 10_000 and not (out / "manifest.json").exists()


def test_index_from_a_list_of_10000_missing_paths_says_it_in_one_line(world, tmp_path, capfd):
    listing, gone = path_list(tmp_path, world["images"][:2], 10_000)
    out = tmp_path / "index"
    code, stdout, err = run(capfd, ["index", "--from-list", listing, *TINY_INDEX, "--pretrained", world["weights"],
                                    "-o", out])
    assert code == 0, err
    assert not any("nowhere" in line for line in lines_of(err) if not line.startswith("warning:"))
    [warning] = [line for line in lines_of(err) if line.startswith("warning:")]
    assert warning == (f"warning: most images could not be read: 10,000 of 10,002 were skipped ({gone[0]}: no such "
                       f"file or directory; {gone[1]}, {gone[2]}, ...); the list is in {out / 'failed.jsonl'}; check "
                       f"the inputs")
    assert len(failed_rows(out)) == 10_000
    summary = json.loads((out / "manifest.json").read_text())["summary"]
    assert (summary["images"], summary["failed"]) == (2, 10_000)
    # a rerun finds the same missing paths: still 10,000 failures, no new chunk for them
    chunks = sorted((out / "chunks").iterdir())
    code, stdout, err = run(capfd, ["index", "--from-list", listing, *TINY_INDEX, "--pretrained", world["weights"],
                                    "-o", out, "-q"])
    assert code == 0, err
    assert len(lines_of(err)) == 1 and len(failed_rows(out)) == 10_000
    assert sorted((out / "chunks").iterdir()) == chunks


# ---- symbolic links that lead nowhere -------------------------------------------------------------

def bad_links(folder: Path) -> dict[str, str]:
    """Symbolic links in ``folder`` that lead nowhere, by name, with the reason each is reported for."""
    (folder / "self.jpg").symlink_to("self.jpg")
    (folder / "a.jpg").symlink_to("b.jpg")
    (folder / "b.jpg").symlink_to("a.jpg")
    (folder / "dangling.png").symlink_to("nothing-here.png")
    (folder / "dirloop").symlink_to(".")
    return {"a.jpg": "is a symbolic link loop", "b.jpg": "is a symbolic link loop",
            "dangling.png": "is a broken symbolic link (to nothing-here.png, which does not exist)",
            "dirloop": "is a symbolic link loop (to ., a directory that contains it)",
            "self.jpg": "is a symbolic link loop"}


def test_bad_links_in_an_indexed_folder_are_listed_as_failures(world, tmp_path, capfd):
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    for image in world["images"][:4]:
        shutil.copy(image, images)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(world["images"][4], elsewhere / "far.png")
    (images / "sub" / "more").symlink_to(elsewhere)  # a good link to a directory: walked
    (images / "sub" / "up").symlink_to("..")  # a loop through the parent: reported, not walked
    expected = bad_links(images) | {"sub/up": "is a symbolic link loop (to .., a directory that contains it)"}
    out = tmp_path / "index"
    code, stdout, err = run(capfd, ["index", images, *TINY_INDEX, "--pretrained", world["weights"], "-o", out, "-q"])
    assert code == 0, err
    [line] = lines_of(err)
    assert line.startswith("warning: most images could not be read: 6 of 11 were skipped (")
    reasons = {row["path"]: row["reason"] for row in failed_rows(out)}
    assert reasons == {f"../images/{name}": reason for name, reason in expected.items()}
    summary = json.loads((out / "manifest.json").read_text())["summary"]
    assert (summary["images"], summary["failed"]) == (5, 6)


def test_a_recursive_glob_over_link_loops_ends(world, tmp_path):
    # glob's own ** follows every link: two loops make its walk grow exponentially, to depth ~40
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    for image in world["images"][:3]:
        shutil.copy(image, images)
    bad_links(images)
    (images / "sub" / "up").symlink_to("..")
    done = run_subprocess(["index", f"{images}/**", *TINY_INDEX, "--pretrained", world["weights"], "-o",
                           tmp_path / "index", "--dry-run", "--json"], timeout=60)
    assert done.returncode == 0, done.stderr
    [read] = json.loads(done.stdout)["reads"]
    assert (read["images"], read["unreadable_entries"]) == (3, 6)
    [line] = lines_of(done.stderr)
    assert line.startswith("warning: most images could not be read: 6 of 9 were skipped (")


def test_a_folder_of_bad_links_only_fails_in_one_line(run_dir, tmp_path, capfd):
    images = tmp_path / "images"
    images.mkdir()
    expected = bad_links(images)
    out = tmp_path / "pred"
    code, stdout, err = run(capfd, ["predict", images, "--checkpoint", run_dir, "--classes", "circle", "--no-vis",
                                    "--device", "cpu", "-o", out, "-q"])
    assert code == 1 and stdout == ""
    assert lines_of(err) == [f"error: none of the 5 images could be read (first: {images / 'dirloop'}: "
                             f"{expected['dirloop']}); the list is in {out / 'failed.jsonl'}; nothing was finished: "
                             f"fix the files or their paths and rerun"]
    assert {row["path"]: row["reason"] for row in failed_rows(out)} == \
        {f"../images/{name}": reason for name, reason in expected.items()}
