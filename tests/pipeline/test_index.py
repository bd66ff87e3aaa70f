"""`zutis index`: failures reported, resume byte-identical, shard + merge = single run, moves;
decoding and embedding on several cores give what one image at a time through load_image gives."""

import hashlib
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from zutiscli.artefacts.index_store import IndexReader
from zutiscli.artefacts.manifest import read_manifest
from zutiscli.artefacts.index_store import ImageRecord, IndexWriter
from zutiscli.artefacts.manifest import relative_to, write_manifest
from zutiscli.cli.app import main
from zutiscli.data.classes import ClassQuery
from zutiscli.data.images import load_image
from zutiscli.errors import ArtefactError, UsageError
from zutiscli.data.shards import parse_shard, shard_from_environment, shard_of
from zutiscli.pipeline import index_config
from zutiscli.pipeline.index import IndexConfig, _ImageFiles, _slice_bounds, build_index, default_pretrained, merge_indices
from zutiscli.pipeline.retrieve import RetrieveConfig, read_archives, retrieve
from zutiscli.pipeline.synth import SynthConfig, write_synth
from zutiscli.shapes.world import scene_sample


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


# ---- decoding on several cores: the same tensors, embeddings and retrieved lists ------------------
@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Shapes-world scenes as a user's files: JPEGs of several sizes (decoded at 1/2, 1/4 and 1/8
    for the 32-pixel tiny model), JPEGs turned by EXIF orientation 6 and 3, and PNGs (one with alpha)."""
    root = tmp_path_factory.mktemp("photos")
    scenes = [scene_sample(7, number, size=640).image for number in range(14)]
    for number, (width, height) in enumerate([(160, 120), (200, 150), (97, 131), (640, 480), (320, 240),
                                              (90, 70), (250, 400), (640, 360), (128, 128), (300, 200)]):
        Image.fromarray(scenes[number][:height, :width]).save(root / f"photo{number:02d}.jpg", quality=90)
    for number, orientation in ((10, 6), (11, 3)):
        exif = Image.Exif()
        exif[0x0112] = orientation
        Image.fromarray(scenes[number][:150, :220]).save(root / f"turned{orientation}.jpg", quality=85, exif=exif.tobytes())
    Image.fromarray(scenes[12][:100, :140]).save(root / "plain.png")
    rgba = np.dstack([scenes[13][:90, :90], np.tile(np.arange(90, dtype=np.uint8) * 2, (90, 1))])
    Image.fromarray(rgba, "RGBA").save(root / "alpha.png")
    return root


def _decoded_one_at_a_time(backbone, paths):
    """What `zutis index` computed before decoding went to read_image: per file its tensor (load_image
    with the model's draft size, then the model's transform) and its record fields."""
    size = backbone.image_size[0]
    transform = backbone.transform()
    tensors, fields = [], []
    for path in paths:
        tensors.append(transform(load_image(path, draft_size=(size, size))))
        with Image.open(path) as header:
            width, height = header.size
            if header.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                width, height = height, width
        stat = path.stat()
        fields.append({"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "width": width, "height": height,
                       "hash": hashlib.blake2b(path.read_bytes(), digest_size=8).hexdigest()})
    return tensors, fields


def test_decoding_workers_give_the_tensors_and_records_of_load_image(photos, tiny_backbone):
    paths = sorted(photos.iterdir())
    tensors, fields = _decoded_one_at_a_time(tiny_backbone, paths)
    dataset = _ImageFiles(paths, tiny_backbone.transform(), tiny_backbone.image_size[0], None)
    for item, path in enumerate(paths):
        number, tensor, meta = dataset[item]
        assert number == item and torch.equal(tensor, tensors[item]), path.name
        assert meta == fields[item], path.name
    turned = fields[paths.index(photos / "turned6.jpg")]
    assert (turned["width"], turned["height"]) == (150, 220)  # stored 220 x 150, shown turned
    assert tuple(tensors[0].shape) == (3, 32, 32)


@pytest.mark.parametrize("decode_in, threads", [("threads", 2), ("processes", 1)])
def test_index_on_several_cores_retrieves_what_one_image_at_a_time_does(tmp_path, photos, tiny_backbone,
                                                                         tiny_checkpoint, decode_in, threads):
    paths = sorted(photos.iterdir())
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    with torch.inference_mode():  # this process uses OpenMP with several threads before the workers fork
        torch.nn.functional.conv2d(torch.rand(8, 3, 64, 64), torch.rand(64, 3, 8, 8))
    torch.set_num_threads(before)
    built = build_index(_config([photos], tiny_checkpoint, workers=2, batch_size=4, decode_in=decode_in,
                                threads=None if decode_in == "processes" else threads), tmp_path / "index")
    assert (built.extra["workers"], built.extra["threads"], built.extra["decode_in"]) == (2, threads, decode_in)
    assert built.embedded == len(paths)
    # the reference index: each file through load_image, all embedded in one forward pass, one thread
    tensors, fields = _decoded_one_at_a_time(tiny_backbone, paths)
    with torch.inference_mode():
        embeddings = tiny_backbone.encode_images(torch.stack(tensors)).numpy()
    reference = tmp_path / "reference"
    IndexWriter(reference).write_chunk([ImageRecord(path=relative_to(reference, p), **f) for p, f in zip(paths, fields)],
                                       embeddings, [])
    write_manifest(reference, "zutis.index", model=read_manifest(built.path).model, params={},
                   summary={"images": len(paths), "rows": len(paths), "failed": 0, "dim": 32, "complete": True,
                            "faiss": None})
    assert sorted(IndexReader(built.path).records(), key=lambda r: r.path) == IndexReader(reference).records()
    assert _same(_table(built.path), _table(reference))

    names = ("red circle", "blue square", "green star", "a triangle")
    queries = tuple(ClassQuery(name, name) for name in names)
    archives = [read_archives(retrieve(RetrieveConfig(indices=(index,), classes=queries, k=6, prompts="names",
                                                      device="cpu"), tmp_path / f"archives-{index.name}"))
                for index in (built.path, reference)]
    for name in names:
        ours, theirs = archives[0][name], archives[1][name]
        assert [hit.path for hit in ours] == [hit.path for hit in theirs], name
        assert np.allclose([hit.score for hit in ours], [hit.score for hit in theirs], rtol=0, atol=1e-3), name


def test_decoding_workers_and_model_threads_follow_the_cores_unless_given(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2, 5}, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    config = IndexConfig(sources=["pile"])
    # CPU default: one worker process per core, each decoding and embedding on one torch thread
    assert (config.decode_threads("cpu"), config.decode_threads("cuda")) == (False, False)
    assert (config.decode_workers("cpu"), config.model_threads("cpu"), config.model_threads("cuda")) == (3, 1, 0)
    assert (config.decode_workers("cpu", cores=16), config.model_threads("cpu", cores=16)) == (16, 1)
    assert config.decode_workers("cuda", cores=16) == 8  # processes feeding a GPU stop at 8
    assert config.model_threads("cpu", workers=0) == 3  # one batch or less is embedded here, on every core
    # fewer workers than cores: still one thread each (OpenMP cannot start more in a forked process)
    assert IndexConfig(sources=["pile"], workers=1).model_threads("cpu", cores=4) == 1
    # threads: decoders and model threads, one of each per core; giving --threads chooses them
    threads = IndexConfig(sources=["pile"], decode_in="threads")
    assert (threads.decode_threads("cpu"), threads.decode_threads("cuda")) == (True, True)
    assert (threads.decode_workers("cpu", cores=16), threads.model_threads("cpu", cores=16)) == (16, 16)
    given = IndexConfig(sources=["pile"], workers=0, threads=5)
    assert (given.decode_threads("cpu"), given.decode_threads("cuda")) == (True, False)
    assert (given.decode_workers("cpu"), given.model_threads("cpu"), given.model_threads("cuda")) == (0, 5, 0)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun: two ranks of this machine share its cores
    assert (config.decode_workers("cpu"), config.model_threads("cpu")) == (1, 1)
    assert (threads.decode_workers("cpu"), threads.model_threads("cpu")) == (1, 1)
    assert (given.decode_workers("cpu"), given.model_threads("cpu")) == (0, 5)
    # where processes cannot be forked, auto decodes in threads on CPU
    monkeypatch.setattr(index_config, "can_fork", lambda: False)
    assert (config.decode_threads("cpu"), config.decode_threads("cuda")) == (True, False)
    with pytest.raises(UsageError, match="--threads must be >= 1"):
        IndexConfig(sources=["pile"], threads=0).validate()
    with pytest.raises(UsageError, match="--decode-in .* is not one of auto, threads, processes"):
        IndexConfig(sources=["pile"], decode_in="forks").validate()
    with pytest.raises(UsageError, match="--threads 2 needs --decode-in threads: a worker process runs the model on one"):
        IndexConfig(sources=["pile"], decode_in="processes", threads=2).validate()
    IndexConfig(sources=["pile"], decode_in="processes", threads=1).validate()


@pytest.mark.parametrize("count, workers, size", [(100, 2, 16), (2000, 2, 16), (500, 2, 16), (5, 2, 16), (64, 4, 8),
                                                  (1, 3, 2), (97, 3, 32), (33, 1, 32), (1001, 16, 4), (0, 2, 16)])
def test_slices_cover_the_images_once_and_end_on_every_worker_together(count, workers, size):
    bounds = _slice_bounds(count, workers, size)
    sizes = np.diff(bounds)
    assert bounds[0] == 0 and bounds[-1] == count and (sizes >= 0).all()
    assert sizes.max() <= size and sizes.max() - sizes.min() <= 1
    assert len(sizes) % workers == 0  # taken in turns, the last round has a slice for every worker
    assert len(sizes) == workers * max(1, -(-count // (workers * size)))  # and no more slices than needed
    totals = [sizes[worker::workers].sum() for worker in range(workers)]
    assert max(totals) - min(totals) <= 1  # every worker ends with the others


def test_a_run_records_its_workers_and_threads_and_leaves_torch_as_it_was(tmp_path, pile, tiny_checkpoint):
    before = torch.get_num_threads()
    result = build_index(_config([pile], tiny_checkpoint, workers=1, threads=3), tmp_path / "index")
    summary = read_manifest(result.path).summary
    assert (summary["workers"], summary["threads"]) == (1, 3) and summary["embed_cpu_seconds"] > 0
    assert torch.get_num_threads() == before
