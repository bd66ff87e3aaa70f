"""Kills, second writers, full disks and read-only directories, as a user's cluster job meets them.

Every case goes through the command line in a child process (``python -m zutiscli``), so the
process really dies, really holds its lock, really meets ENOSPC: what is asserted is the one
`error:` line, the exit status, that nothing committed is lost and that a rerun finishes with the
right counts. ``tests/faults.py`` kills a run just before a chosen atomic rename; the full disk
and the read-only file system are small tmpfs mounts in a private mount namespace (``unshare``),
and those tests are skipped where the machine does not allow one.
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

import numpy as np
import pytest

from zutiscli.artefacts.lock import LOCK_NAME, UNFINISHED_NAME, is_temporary
from zutiscli.pipeline.synth import SynthConfig, write_synth

from test_cli_errors import TINY_INDEX, TINY_TRAIN, fill, world  # noqa: F401 - world is a fixture

pytestmark = pytest.mark.slow

FAULTS = Path(__file__).resolve().parents[1] / "faults.py"


def zutis(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "zutiscli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert "internal error" not in done.stderr, done.stderr
    return done


def killed_before(name: str, nth: int, *args: str) -> subprocess.CompletedProcess:
    """Run zutis and SIGKILL it just before the ``nth`` atomic rename onto a file called ``name``."""
    done = subprocess.run([sys.executable, str(FAULTS), "kill-before", name, str(nth), "--", *args],
                          capture_output=True, text=True, timeout=300, env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert done.returncode == -signal.SIGKILL, f"the fault did not fire: {done.returncode}\n{done.stderr}"
    return done


def error_line(done: subprocess.CompletedProcess, status: int) -> str:
    """The single `error:` line of a failed run (and no traceback)."""
    assert done.returncode == status, done.stderr
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len([line for line in lines if line.startswith("error:")]) == 1 and lines[-1].startswith("error: "), lines
    return lines[-1]


def succeeded(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 0, done.stderr


def leftovers(root: Path) -> list[str]:
    """Temporaries, locks and unfinished-marks anywhere under ``root``."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if is_temporary(p.name) or p.name in (LOCK_NAME, UNFINISHED_NAME))


def index_rows(index: Path) -> tuple[int, int]:
    """(rows the manifest says, rows the chunks hold) of an index directory."""
    manifest = json.loads((index / "manifest.json").read_text())
    chunks = sum(np.load(p, mmap_mode="r").shape[0] for p in (index / "chunks").glob("*.npy"))
    return manifest["summary"]["rows"], chunks


@pytest.fixture(scope="module")
def pile(tmp_path_factory) -> Path:
    """24 images: six chunks of four in an index built with ``--chunk-size 4``."""
    return write_synth(SynthConfig("pile", 24, seed=8, size=32), tmp_path_factory.mktemp("pile") / "pile") / "images"


def index_args(world, images: Path, out: Path) -> list[str]:
    return [str(images), *fill(TINY_INDEX, world, out), "--chunk-size", "4", "--batch-size", "4", "-o", str(out)]


# ---- two writers ------------------------------------------------------------------------------

HOLD = ("import sys; from zutiscli.artefacts.lock import lock_directory; lock_directory(sys.argv[1]); "
        "print('locked', flush=True); sys.stdin.read()")


@pytest.mark.parametrize("command", ["index", "predict", "train --resume", "pseudolabel"])
def test_a_second_writer_is_refused_naming_the_holder_and_runs_once_it_is_gone(command, world, pile, tmp_path):
    out = tmp_path / "out"
    if command == "index":
        args = ["index", *index_args(world, pile, out)]
    elif command == "predict":
        args = ["predict", *fill(["{scenes}/images", "--classes", "circle,star", "--checkpoint", "{run}", "--no-vis", "-o", str(out)], world, out)]
    elif command == "pseudolabel":
        args = ["pseudolabel", *fill(["{archives}", "--size", "32", "--refine", "none", "-o", str(out)], world, out)]
    else:
        shutil.copytree(world["run"], out)
        args = ["train", "--resume", str(out), "--iterations", "2"]
    out.mkdir(exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = sorted((str(p), p.stat().st_mtime_ns) for p in out.rglob("*") if p.name != LOCK_NAME)
        line = error_line(zutis(*args), 1)
        assert f"PID {holder.pid}" in line and str(out) in line and "-o" in line, line
        assert sorted((str(p), p.stat().st_mtime_ns) for p in out.rglob("*") if p.name != LOCK_NAME) == before
    finally:
        holder.communicate("", timeout=30)
    succeeded(zutis(*args))
    assert (out / "manifest.json").is_file() and leftovers(out) == []


ORPHAN = ("import os, sys, time; from zutiscli.artefacts.lock import lock_directory; lock_directory(sys.argv[1]); "
          "pid = os.fork()\nif pid == 0:\n    null = os.open(os.devnull, os.O_RDWR)\n    for fd in (0, 1, 2): os.dup2(null, fd)\n"
          "    time.sleep(60); os._exit(0)\nprint(pid, flush=True); os.kill(os.getpid(), 9)")


def test_a_killed_writers_forked_workers_do_not_keep_its_lock(world, pile, tmp_path):
    """DataLoader workers are forked: when the main process is killed they live on a while, holding
    its open files; the lock must die with the main process all the same."""
    out = tmp_path / "index"
    out.mkdir()
    killed = subprocess.run([sys.executable, "-c", ORPHAN, str(out)], capture_output=True, text=True, timeout=60)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    orphan = int(killed.stdout)
    try:
        os.kill(orphan, 0)  # still alive, holding the lock file open
        assert (out / LOCK_NAME).is_file()
        succeeded(zutis("index", *index_args(world, pile, out)))
        assert index_rows(out) == (24, 24) and leftovers(out) == []
    finally:
        os.kill(orphan, signal.SIGKILL)


def test_two_index_runs_started_together_lose_no_image(world, tmp_path):
    """The race of two writers into one -o: each either finishes with all its images in, or is refused."""
    piles = [write_synth(SynthConfig("pile", 16, seed=seed, size=32), tmp_path / f"pile{seed}") / "images"
             for seed in (1, 2)]
    out = tmp_path / "index"
    runs = [subprocess.Popen([sys.executable, "-m", "zutiscli", "index", *index_args(world, images, out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for images in piles]
    results = [(run.wait(timeout=300), run.stderr.read()) for run in runs]
    finished = [images for images, (status, _) in zip(piles, results) if status == 0]
    assert finished, results
    for status, err in results:
        assert status == 0 or "is writing here" in err, err
    manifest_rows, chunk_rows = index_rows(out)
    assert manifest_rows == chunk_rows == 16 * len(finished)
    rows = [json.loads(line)["path"] for p in sorted((out / "chunks").glob("0*.jsonl")) if "failed" not in p.name
            for line in p.read_text().splitlines()]
    assert len(set(rows)) == len(rows) == manifest_rows
    assert leftovers(out) == []


# ---- kills at an atomic rename ------------------------------------------------------------------

def test_an_index_killed_before_its_first_manifest_resumes(world, pile, tmp_path):
    out = tmp_path / "index"
    killed_before("manifest.json", 1, "index", *index_args(world, pile, out))
    assert any(is_temporary(p.name) for p in out.iterdir()), "the kill came too late to leave a temporary"
    succeeded(zutis("index", *index_args(world, pile, out)))
    assert index_rows(out) == (24, 24)
    assert leftovers(out) == []


def test_an_index_killed_before_a_chunk_leaves_no_temporary_after_the_rerun(world, pile, tmp_path):
    out = tmp_path / "index"
    killed_before("000002.npy", 1, "index", *index_args(world, pile, out))
    assert any(is_temporary(p.name) for p in (out / "chunks").iterdir())
    assert len(list((out / "chunks").glob("0*.npy"))) == 2  # chunks 0 and 1 were committed before the kill
    succeeded(zutis("index", *index_args(world, pile, out)))
    assert index_rows(out) == (24, 24)
    assert leftovers(out) == []


def test_pseudolabels_killed_before_their_first_file_resume(world, tmp_path):
    out = tmp_path / "pseudo"
    args = ["pseudolabel", *fill(["{archives}", "--size", "32", "--refine", "none", "-o", str(out)], world, out)]
    killed_before("pseudolabels.json", 1, *args)
    succeeded(zutis(*args))
    assert json.loads((out / "manifest.json").read_text())["kind"] == "zutis.pseudolabels"
    assert leftovers(out) == []


def test_a_killed_training_run_is_pointed_to_resume_which_finishes_it(world, tmp_path):
    out = tmp_path / "run"
    args = ["train", *fill(["{pseudo}", *TINY_TRAIN, "--iterations", "2", "--checkpoint-every", "1"], world, out),
            "-o", str(out)]
    killed_before("model.pt", 1, *args)
    assert (out / "checkpoints" / "last.pt").is_file() and not (out / "model.pt").exists()
    line = error_line(zutis(*args), 1)
    assert f"zutis train --resume {out}" in line and "remove" not in line, line
    succeeded(zutis("train", "--resume", str(out)))
    assert (out / "model.pt").is_file() and json.loads((out / "manifest.json").read_text())["summary"]["iterations"] == 2
    assert leftovers(out) == []


def test_a_training_run_killed_before_any_checkpoint_starts_again(world, tmp_path):
    out = tmp_path / "run"
    args = ["train", *fill(["{pseudo}", *TINY_TRAIN], world, out), "-o", str(out)]
    killed_before("last.pt", 1, *args)
    assert not (out / "checkpoints" / "last.pt").exists()
    succeeded(zutis(*args))
    assert (out / "model.pt").is_file() and leftovers(out) == []


def test_predictions_killed_before_their_manifest_are_made_again_by_the_rerun(world, tmp_path):
    out = tmp_path / "pred"
    args = ["predict", *fill(["{scenes}/images", "--classes", "circle,star", "--checkpoint", "{run}", "--no-vis", "-o", str(out)], world, out)]
    killed_before("manifest.json", 1, *args)
    assert (out / UNFINISHED_NAME).is_file()
    succeeded(zutis(*args))
    assert json.loads((out / "manifest.json").read_text())["kind"] == "zutis.predictions"
    assert leftovers(out) == []
    other = tmp_path / "other"
    killed_before("manifest.json", 1, *args[:-1], str(other))
    line = error_line(zutis("synth", "pile", "-n", "2", "--size", "32", "-o", str(other)), 1)
    assert "unfinished output of `zutis predict`" in line, line  # another stage never empties it


def test_predictions_killed_after_a_commit_are_finished_by_the_rerun(world, tmp_path):
    whole, out = tmp_path / "whole", tmp_path / "pred"
    args = ["predict", *fill(["{scenes}/images", "--classes", "circle,star", "--checkpoint", "{run}", "--no-vis",
                              "--chunk-size", "1"], world, out)]
    succeeded(zutis(*args, "-o", str(whole)))
    killed_before("000001.jsonl", 1, *args, "-o", str(out))  # the first image committed, the second not
    assert sorted(p.name for p in (out / "parts").glob("0*.jsonl")) == ["000000.jsonl"]  # and a temporary
    done = zutis(*args, "-o", str(out), "--json")
    succeeded(done)
    assert "1 image(s) already segmented" in " ".join(done.stderr.split()), done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    images = json.loads((whole / "manifest.json").read_text())["summary"]["images"]
    assert images >= 2 and manifest["summary"]["resumed"] == 1 and manifest["summary"]["images"] == images
    for name in ("predictions.json", "images.json"):
        assert json.loads((out / name).read_text()) == json.loads((whole / name).read_text()), name
    assert leftovers(out) == [] and not (out / "parts").exists()


# ---- full disks and read-only file systems -----------------------------------------------------

def _namespaces_work() -> bool:
    if shutil.which("unshare") is None or sys.platform != "linux":
        return False
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d && umount $d && rmdir $d"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


needs_tmpfs = pytest.mark.skipif(not _namespaces_work(), reason="this machine cannot mount a private tmpfs")


def in_small_tmpfs(tmp_path: Path, script: str, free_kib: int) -> dict[str, str]:
    """Run ``script`` (sh) with ``$DISK`` a tmpfs that has ``free_kib`` KiB free (``$FILLER`` takes the rest).

    The script writes what the test reads into ``$REPORT`` (a directory on the normal disk).
    Returns the report's files by name.
    """
    report = tmp_path / "report"
    report.mkdir()
    disk = tmp_path / "disk"
    disk.mkdir()
    setup = (f"mount -t tmpfs -o size=64m tmpfs {disk} && "
             f"dd if=/dev/zero of={disk}/filler bs=1k count={64 * 1024 - free_kib} status=none; ")
    env = os.environ | {"DISK": str(disk), "FILLER": f"{disk}/filler", "REPORT": str(report),
                        "PY": sys.executable, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", setup + script],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    return {p.name: p.read_text() for p in report.iterdir()}


def full_then_freed(command: str) -> str:
    """sh: run ``command`` on the full disk, then free the space and run it again, recording both."""
    return (f"{command} > $REPORT/out1 2> $REPORT/err1; echo $? > $REPORT/status1; "
            f"ls -a -R $DISK > $REPORT/listing1; rm $FILLER; "
            f"{command} > $REPORT/out2 2> $REPORT/err2; echo $? > $REPORT/status2; ")


def assert_full_disk_line(report: dict[str, str]) -> str:
    assert report["status1"].strip() == "1", report["err1"]
    lines = [line for line in report["err1"].splitlines() if line.strip()]
    assert "Traceback" not in report["err1"] and "internal error" not in report["err1"], report["err1"]
    assert sum(line.startswith("error:") for line in lines) == 1 and lines[-1].startswith("error: "), lines
    assert "no space left" in lines[-1] and "run the same command again" in lines[-1], lines[-1]
    assert report["status2"].strip() == "0", report["err2"]
    return lines[-1]


@needs_tmpfs
def test_index_on_a_full_disk_names_the_file_and_finishes_after_space_is_freed(world, pile, tmp_path):
    args = " ".join(index_args(world, pile, Path("$DISK/index")))
    report = in_small_tmpfs(tmp_path, full_then_freed(f"$PY -m zutiscli index {args}") +
                            "$PY -c \"import json,sys; print(json.load(open(sys.argv[1]))['summary']['rows'])\" "
                            "$DISK/index/manifest.json > $REPORT/rows; ls -a -R $DISK/index > $REPORT/listing2",
                            free_kib=40)
    line = assert_full_disk_line(report)
    assert "/index/" in line, line
    assert report["rows"].strip() == "24"
    assert ".tmp" not in report["listing2"] and LOCK_NAME not in report["listing2"]


@needs_tmpfs
def test_predict_on_a_full_disk_leaves_nothing_that_blocks_the_rerun(world, tmp_path):
    args = " ".join(fill(["{scenes}/images", "--classes", "circle,star", "--checkpoint", "{run}", "-o", "$DISK/pred"], world, tmp_path))
    report = in_small_tmpfs(tmp_path, full_then_freed(f"$PY -m zutiscli predict {args}") +
                            "ls -a -R $DISK/pred > $REPORT/listing2", free_kib=24)
    line = assert_full_disk_line(report)
    assert "/pred" in line, line
    assert "manifest.json" in report["listing2"] and ".tmp" not in report["listing2"]


@needs_tmpfs
@pytest.mark.parametrize("free_kib", [200, 3000], ids=["before-a-checkpoint", "after-a-checkpoint"])
def test_training_on_a_full_disk_names_the_file_and_finishes_after_space_is_freed(world, tmp_path, free_kib):
    args = " ".join(fill(["{pseudo}", *TINY_TRAIN, "--iterations", "2", "--checkpoint-every", "1", "-o", "$DISK/run"],
                         world, tmp_path))
    # the same command again; where the full disk came after a checkpoint, that points to --resume: follow it
    script = (full_then_freed(f"$PY -m zutiscli train {args}") +
              "if grep -q -- '--resume' $REPORT/err2; then touch $REPORT/resumed; $PY -m zutiscli train --resume $DISK/run "
              "> $REPORT/out2 2> $REPORT/err2; echo $? > $REPORT/status2; fi; ls -a -R $DISK/run > $REPORT/listing2")
    report = in_small_tmpfs(tmp_path, script, free_kib=free_kib)
    assert ("resumed" in report) == (free_kib > 2200), "the checkpoint (2.2 MB) decides whether to resume"
    line = assert_full_disk_line(report)
    assert "$DISK" not in line and "/run/" in line, line
    assert "model.pt" in report["listing2"] and ".tmp" not in report["listing2"]


@needs_tmpfs
def test_no_output_option_in_a_read_only_directory_says_where_and_to_pass_o(world, tmp_path):
    script = ("mount -o remount,ro $DISK && cd $DISK && "
              "$PY -m zutiscli synth pile -n 2 --size 32 > $REPORT/out1 2> $REPORT/err1; echo $? > $REPORT/status1")
    report = in_small_tmpfs(tmp_path, script, free_kib=1024)
    assert report["status1"].strip() == "1", report["err1"]
    lines = [line for line in report["err1"].splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "runs/synth" in lines[0] and "Read-only" in lines[0] and "-o" in lines[0], lines


# ---- signals -----------------------------------------------------------------------------------

@pytest.mark.parametrize("after", [0.0, 1.0], ids=["building-the-command", "loading-data-and-model"])
def test_sigterm_during_training_start_up_is_told_in_one_line(world, tmp_path, after):
    out = tmp_path / "run"
    args = fill(["{pseudo}", *TINY_TRAIN, "--iterations", "50"], world, out)
    child = subprocess.Popen([sys.executable, "-m", "zutiscli", "train", *args, "-o", str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # inside start-up (imports, data and model loading), once the command line has taken SIGTERM over
    # (a fixed sleep sent it before that on a loaded machine, and Python's default handling answered)
    deadline = time.monotonic() + 60
    while not _catches_sigterm(child.pid) and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(after)
    assert child.poll() is None, "the run ended before it could be terminated"
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 143, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and lines[-1].startswith("error: terminated"), err
    assert sum(line.startswith("error:") for line in lines) == 1, err


def _catches_sigterm(pid: int) -> bool:
    """Whether process ``pid`` has a handler for SIGTERM (Linux: ``SigCgt`` in /proc; elsewhere assume so
    after a second)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        time.sleep(1.0)
        return True
    caught = next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught, 16) >> (signal.SIGTERM - 1) & 1)
