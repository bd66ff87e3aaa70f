"""`zutis index`: failures reported, resume byte-identical, shard + merge = single run, moves."""

import json
import shutil

import numpy as np
import pytest

from zutiscli.artefacts.index_store import IndexReader
from zutiscli.artefacts.manifest import read_manifest
from zutiscli.cli.app import main
from zutiscli.errors import ArtefactError, UsageError
from zutiscli.data.shards import parse_shard, shard_from_environment, shard_of
from zutiscli.pipeline.index import IndexConfig, build_index, default_pretrained, merge_indices
from zutiscli.pipeline.synth import SynthConfig, write_synth


@pytest.fixture(scope="module")
def pile(tmp_path_factory):
    root = tmp_path_factory.mktemp("pile")
    write_synth(SynthConfig("pile", 40, seed=11, size=40), root / "pile")
    return root / "pile" / "images"


def _config(sources, checkpoint, **overrides):
    base = dict(sources=[str(s) for s in sources], model="zutis-tiny", pretrained=str(checkpoint), batch_size=4,
                chunk_size=8, workers=0, precision="fp32", device="cpu")
    base.update(overrides)
    return IndexConfig(**base)


def _table(directory):
    """File name -> float32 embedding of each active row."""
    reader = IndexReader(directory)
    records = reader.records()
    active = reader.active()
    embeddings = reader.embeddings()
    return {r.path.split("/")[-1]: embeddings[i].astype(np.float32) for i, r in enumerate(records) if active[i]}


def _same(first, second):
    """The same images with the same embeddings, up to the rounding of a forward pass whose batches
    were made up otherwise (multi-threaded kernels round by batch shape; 1e-3 is a few float16 steps
    of these unit vectors, another image's embedding differs by ~0.1)."""
    return first.keys() == second.keys() and all(np.allclose(first[k], second[k], rtol=0, atol=1e-3) for k in first)


def test_corrupt_files_are_reported_and_the_rest_indexed(tmp_path, pile, tiny_checkpoint):
    images = tmp_path / "images"
    shutil.copytree(pile, images)
    (images / "empty.jpg").write_bytes(b"")
    (images / "text.png").write_text("not an image")
    good = (images / "000001.png").read_bytes()
    (images / "truncated.png").write_bytes(good[: len(good) // 2])
    result = build_index(_config([images], tiny_checkpoint), tmp_path / "index")
    failed = [json.loads(line) for line in (result.path / "failed.jsonl").read_text().splitlines()]
    assert sorted(f["path"].split("/")[-1] for f in failed) == ["empty.jpg", "text.png", "truncated.png"]
    assert all(f["reason"] for f in failed)
    reader = IndexReader(result.path)
    assert len(reader) == 40 and reader.complete and reader.dim == 32
    assert result.failed == 3 and read_manifest(result.path).summary["failed"] == 3
    norms = np.linalg.norm(reader.embeddings().astype(np.float32), axis=1)
    assert np.allclose(norms, 1.0, atol=2e-3)


def test_resume_after_crash_is_byte_identical(tmp_path, pile, tiny_checkpoint):
    whole = build_index(_config([pile], tiny_checkpoint), tmp_path / "whole").path

    def crash(done, total):
        if done >= 20:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_index(_config([pile], tiny_checkpoint), tmp_path / "resumed", progress=crash)
    partial = IndexReader(tmp_path / "resumed")
    assert 0 < len(partial) < 40 and not partial.complete  # a valid, partial index
    again = build_index(_config([pile], tiny_checkpoint), tmp_path / "resumed")
    assert again.skipped == len(partial) and again.embedded == 40 - len(partial)
    assert _same(_table(whole), _table(again.path))
    assert IndexReader(again.path).complete


def test_rerun_appends_new_and_changed_images_only(tmp_path, pile, tiny_checkpoint):
    images = tmp_path / "images"
    shutil.copytree(pile, images)
    first = build_index(_config([images], tiny_checkpoint), tmp_path / "index")
    assert first.embedded == 40
    shutil.copy(images / "000003.png", images / "extra.png")
    shutil.copy(images / "000005.png", images / "000004.png")  # content change
    second = build_index(_config([images], tiny_checkpoint), tmp_path / "index")
    assert second.embedded == 2 and second.skipped == 39
    reader = IndexReader(second.path)
    assert len(reader) == 42 and reader.active().sum() == 41
    assert reader.table().stored  # written by the run, covering both runs' chunks
    table = _table(second.path)
    assert np.allclose(table["000004.png"], table["000005.png"], rtol=0, atol=1e-3)
    assert read_manifest(second.path).summary["images"] == 41


def test_other_model_on_existing_index_is_refused(tmp_path, pile, tiny_checkpoint):
    build_index(_config([pile], tiny_checkpoint), tmp_path / "index")
    with pytest.raises(ArtefactError, match="was built with zutis-tiny.*use a new -o"):
        build_index(_config([pile], tiny_checkpoint, precision="bf16"), tmp_path / "index")


def test_shards_merge_to_single_run(tmp_path, pile, tiny_checkpoint):
    single = build_index(_config([pile], tiny_checkpoint), tmp_path / "single").path
    parts = [build_index(_config([pile], tiny_checkpoint, shard=(i, 3)), tmp_path / "sharded").path for i in range(3)]
    assert [p.name for p in parts] == ["shard-0-of-3", "shard-1-of-3", "shard-2-of-3"]
    sizes = [len(IndexReader(p)) for p in parts]
    assert sum(sizes) == 40 and all(sizes)
    merged = merge_indices(parts, tmp_path / "merged")
    assert _same(_table(merged), _table(single))
    assert read_manifest(merged).summary["images"] == 40
    for path in IndexReader(merged).records():
        assert path.path.startswith("../")
    assert IndexReader(merged).table().stored


def test_an_index_without_a_table_gets_one_from_the_next_run(tmp_path, pile, tiny_checkpoint):
    out = build_index(_config([pile], tiny_checkpoint), tmp_path / "index").path
    records = IndexReader(out).records()
    shutil.rmtree(out / "table")  # as zutis wrote an index before it had image tables
    reader = IndexReader(out)
    assert not reader.table().stored and reader.records() == records and reader.active().all()
    again = build_index(_config([pile], tiny_checkpoint), out)
    assert again.embedded == 0 and again.skipped == 40
    reader = IndexReader(out)
    assert reader.table().stored and reader.records() == records and reader.active().all()


def test_merge_refuses_different_models(tmp_path, pile, tiny_checkpoint):
    a = build_index(_config([pile], tiny_checkpoint), tmp_path / "a").path
    b = build_index(_config([pile], tiny_checkpoint, precision="bf16"), tmp_path / "b").path
    with pytest.raises(ArtefactError, match="only indices of one model can be merged"):
        merge_indices([a, b], tmp_path / "m")


def test_moving_index_with_images_keeps_paths_valid(tmp_path, pile, tiny_checkpoint):
    tree = tmp_path / "tree"
    shutil.copytree(pile, tree / "images")
    build_index(_config([tree / "images"], tiny_checkpoint), tree / "index")
    moved = tmp_path / "elsewhere"
    shutil.move(str(tree), str(moved))
    reader = IndexReader(moved / "index")
    assert all(reader.image_path(i).is_file() for i in range(len(reader)))
    assert reader.image_path(0).parent == moved / "images"


def test_faiss_factory_index_holds_active_rows(tmp_path, pile, tiny_checkpoint):
    import faiss

    out = build_index(_config([pile], tiny_checkpoint, faiss="IVF2,Flat", faiss_train_size=40), tmp_path / "i").path
    index = faiss.read_index(str(out / "index.faiss"))
    assert index.ntotal == 40
    assert read_manifest(out).summary["faiss"] == "IVF2,Flat"
    with pytest.raises(UsageError, match="not a faiss factory string"):
        build_index(_config([pile], tiny_checkpoint, faiss="Nonsense99"), tmp_path / "j")


def test_shard_helpers(monkeypatch):
    assert parse_shard("2/5") == (2, 5)
    for bad in ("5/5", "x/2", "1", "-1/3"):
        with pytest.raises(UsageError):
            parse_shard(bad)
    env = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "4"}
    assert shard_from_environment(env) == (3, 4)
    assert shard_from_environment({"RANK": "1", "WORLD_SIZE": "2"}) == (1, 2)
    assert shard_from_environment({}) is None
    with pytest.raises(UsageError, match="SLURM array task"):
        shard_from_environment({"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_COUNT": "4"})
    counts = np.bincount([shard_of(f"/data/img{i}.jpg", 4) for i in range(400)], minlength=4)
    assert counts.min() > 60  # a usable spread


def test_default_pretrained():
    assert default_pretrained("ViT-B-16") == "openai"
    assert default_pretrained("ViT-L-14-336") == "openai"
    with pytest.raises(UsageError, match="no known pretrained weights"):
        default_pretrained("zutis-tiny")


def test_cli_index_json_and_errors(tmp_path, pile, tiny_checkpoint, capsys):
    out = tmp_path / "index"
    with pytest.raises(SystemExit) as exit_info:
        main(["index", str(pile), "--model", "zutis-tiny", "--pretrained", str(tiny_checkpoint), "-o", str(out),
              "--json", "--workers", "1", "--batch-size", "8", "--precision", "fp32"])
    captured = capsys.readouterr()
    assert exit_info.value.code == 0
    document = json.loads(captured.out)
    assert document["images"] == 40 and document["path"] == str(out) and document["dim"] == 32
    with pytest.raises(SystemExit) as exit_info:
        main(["index", str(tmp_path / "nothing-here"), "--model", "zutis-tiny", "--pretrained", "none"])
    captured = capsys.readouterr()
    assert exit_info.value.code == 1 and "no such file or directory" in captured.err
    with pytest.raises(SystemExit) as exit_info:
        main(["index", str(pile), "--model", "zutis-tiny", "--pretrained", "none", "--shard", "3/3"])
    assert exit_info.value.code == 2


def test_cli_merge(tmp_path, pile, tiny_checkpoint, capsys):
    parts = [build_index(_config([pile], tiny_checkpoint, shard=(i, 2)), tmp_path / "s").path for i in range(2)]
    with pytest.raises(SystemExit) as exit_info:
        main(["index", "merge", *map(str, parts), "-o", str(tmp_path / "all"), "--quiet"])
    captured = capsys.readouterr()
    assert exit_info.value.code == 0 and captured.out.strip().splitlines()[-1] == str(tmp_path / "all")
    assert len(IndexReader(tmp_path / "all")) == 40


def test_torchrun_ranks_take_disjoint_slices(tmp_path, pile, tiny_checkpoint):
    import subprocess
    import sys

    out = tmp_path / "ranks"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "--module", "zutiscli", "index", str(pile), "--model", "zutis-tiny", "--pretrained", str(tiny_checkpoint),
        "--workers", "0", "--precision", "fp32", "--batch-size", "4", "--chunk-size", "8", "-o", str(out), "--quiet",
    ]
    env = dict(__import__("os").environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    parts = sorted(out.glob("shard-*-of-2"))
    assert [p.name for p in parts] == ["shard-0-of-2", "shard-1-of-2"]
    single = build_index(_config([pile], tiny_checkpoint), tmp_path / "single").path
    assert _same(_table(merge_indices(parts, tmp_path / "merged")), _table(single))
