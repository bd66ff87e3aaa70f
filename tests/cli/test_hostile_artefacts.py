"""Damaged and tampered artefacts, as a user meets them through the command line.

Every case is one `error:` line that names the file (and the field) and says what to do, with
exit status 1; never an internal error, never a silently smaller result. Cases: index chunks
missing or cut short and a damaged image table (and the repair by rerunning `zutis index build`),
manifest fields and artefact records of the wrong type, and checkpoints whose config or weights do
not fit.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from zutiscli.cli.app import main
from zutiscli.pipeline.synth import SynthConfig, write_synth


def zutis(capsys, *args) -> tuple[int, str, str]:
    """Run `zutis ARGS` in-process: ``(exit status, stdout, stderr)``."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def error_line(code: int, out: str, err: str, expected: int = 1) -> str:
    """The one `error:` line of a refused command (checked: status, nothing on stdout, no traceback)."""
    assert code == expected, err
    assert out == "", out
    assert "Traceback" not in err and "internal error" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), err
    assert sum(line.startswith("error:") for line in lines) == 1, err
    return lines[-1]


# ---- index chunks ---------------------------------------------------------------------------------

IMAGES = 12
CHUNK = 2  # 6 chunks


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, tiny_checkpoint) -> dict[str, Path]:
    """A pile of 12 tiny images and its index of 6 chunks, built through the CLI."""
    root = tmp_path_factory.mktemp("chunks")
    pile = write_synth(SynthConfig("pile", IMAGES, seed=7, size=32), root / "pile")
    return {"root": root, "images": pile / "images", "index": _index(root / "index", pile / "images", tiny_checkpoint),
            "weights": tiny_checkpoint}


def _index_args(images: Path, weights: Path, out: Path) -> list:
    return ["index", "build", images, "--model", "zutis-tiny", "--pretrained", weights, "--workers", "0",
            "--precision", "fp32", "--device", "cpu", "--chunk-size", CHUNK, "--batch-size", CHUNK, "-o", out]


def _index(out: Path, images: Path, weights: Path) -> Path:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in _index_args(images, weights, out)])
    assert exit_info.value.code == 0
    assert len(list((out / "chunks").glob("*.npy"))) == IMAGES // CHUNK
    return out


def _retrieve(capsys, index: Path, out: Path) -> tuple[int, str, str]:
    return zutis(capsys, "retrieve", index, "--classes", "circle,star", "-k", "2", "--prompts", "names",
                 "--device", "cpu", "--json", "-o", out)


def _drop_npy(chunks: Path) -> None:
    (chunks / "000002.npy").unlink()


def _drop_whole_middle_chunk(chunks: Path) -> None:
    for path in chunks.glob("000003.*"):
        path.unlink()


def _drop_whole_last_chunk(chunks: Path) -> None:
    for path in chunks.glob("000005.*"):
        path.unlink()


def _cut_rows(chunks: Path) -> None:
    array = np.load(chunks / "000001.npy")
    np.save(chunks / "000001.npy", array[:1])


def _truncate(chunks: Path) -> None:
    data = (chunks / "000004.npy").read_bytes()
    (chunks / "000004.npy").write_bytes(data[: len(data) - 7])


def _drop_table(chunks: Path) -> None:
    (chunks / "000002.jsonl").unlink()


DAMAGE = {
    "missing .npy": (_drop_npy, "chunks/000002.npy: missing (its image table 000002.jsonl is there)"),
    "missing middle chunk": (_drop_whole_middle_chunk, "chunks/000003.npy: missing, with its image table"),
    "missing last chunk": (_drop_whole_last_chunk, f"chunks/000005.npy: missing: {{index}}/manifest.json counts "
                                                   f"{IMAGES} rows but the chunks hold {IMAGES - CHUNK}"),
    "fewer rows": (_cut_rows, "chunks/000001.npy: holds 1 embeddings but its image table 000001.jsonl lists 2"),
    "truncated .npy": (_truncate, "chunks/000004.npy: unreadable embeddings"),
    "missing .jsonl": (_drop_table, "chunks/000002.jsonl: missing (its embeddings 000002.npy are there)"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_index_is_refused_and_rerunning_index_repairs_it(damage, indexed, capsys):
    spoil, fragment = DAMAGE[damage]
    index = indexed["root"] / f"index-{damage.replace(' ', '-').replace('.', '')}"  # beside the original: same paths
    shutil.copytree(indexed["index"], index)
    spoil(index / "chunks")
    archives = index.parent / f"{index.name}-archives"

    line = error_line(*_retrieve(capsys, index, archives))
    assert fragment.format(index=index) in line
    assert f"run `zutis index build` on the same images with -o {index} again to repair it" in line
    assert not archives.exists()

    code, out, err = zutis(capsys, *_index_args(indexed["images"], indexed["weights"], index), "--json")
    assert code == 0, err
    assert json.loads(out)["embedded"] <= CHUNK  # only the lost images are embedded again
    assert sorted(p.name for p in (index / "chunks").glob("*.npy")) == [f"{n:06d}.npy" for n in range(len(
        list((index / "chunks").glob("*.npy"))))]  # numbered without a gap again
    code, out, err = _retrieve(capsys, index, archives)
    assert code == 0, err
    assert json.loads(out)["indexed_images"] == IMAGES


# ---- checkpoints ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_checkpoint) -> dict[str, Path]:
    """Two tiny finished runs of different shapes: ``six`` (6 queries, as TINY_ZUTIS) and ``four``."""
    from helpers import train_tiny

    root = tmp_path_factory.mktemp("runs")
    (root / "six").mkdir()
    (root / "four").mkdir()
    six = train_tiny(root / "six", tiny_checkpoint, iterations=1, crop_adapter_scenes=0).path
    four = train_tiny(root / "four", tiny_checkpoint, iterations=1, crop_adapter_scenes=0, num_queries=4).path
    return {"six": six, "four": four, "images": root / "six" / "pile" / "images"}


def _edited(source: Path, target: Path, edit) -> Path:
    import torch

    data = torch.load(source, weights_only=True)
    edit(data)
    torch.save(data, target)
    return target


def _predict(capsys, runs, checkpoint: Path, out: Path) -> tuple[int, str, str]:
    return zutis(capsys, "predict", "run", runs["images"] / "000000.png", "--classes", "circle", "--checkpoint",
                 checkpoint, "--device", "cpu", "--no-vis", "-o", out)


def test_a_checkpoint_that_names_an_unknown_backbone_is_blamed_not_the_options(runs, tmp_path, capsys):
    def rename(data):
        data["config"]["backbone"]["name"] = "no-such-model"

    model = _edited(runs["six"] / "model.pt", tmp_path / "model.pt", rename)
    line = error_line(*_predict(capsys, runs, model, tmp_path / "out"))
    assert f"{model}: its config names backbone 'no-such-model', which is not an open_clip model name" in line
    assert "--model" not in line


@pytest.mark.parametrize("field, value, fragment", [
    ("num_queries", "six", "its config field 'num_queries' is not an integer >= 1"),
    ("backbone", ["ViT-B-16"], "its config field 'backbone' is not a dict"),
    ("temperature", 0, "its config field 'temperature' is not a number > 0"),
])
def test_a_checkpoint_config_of_the_wrong_type_is_named(runs, tmp_path, capsys, field, value, fragment):
    model = _edited(runs["six"] / "model.pt", tmp_path / "model.pt", lambda data: data["config"].update({field: value}))
    line = error_line(*_predict(capsys, runs, model, tmp_path / "out"))
    assert f"{model}: {fragment}" in line


def test_predict_names_the_first_weight_that_does_not_fit_the_config(runs, tmp_path, capsys):
    model = _edited(runs["six"] / "model.pt", tmp_path / "model.pt", lambda data: data["config"].update(num_queries=4))
    line = error_line(*_predict(capsys, runs, model, tmp_path / "out"))
    assert f"{model}: its weights do not fit the model its config describes: decoder.query_feat.weight is [6, 32] " \
           f"in the file but [4, 32] in the model" in line
    assert "Error(s) in loading state_dict" not in line


def _resume_with(runs, tmp_path, edit) -> Path:
    """A copy of run ``six`` whose checkpoints/last.pt was edited by ``edit(own, other)``."""
    import torch

    run = tmp_path / "run"
    shutil.copytree(runs["six"], run)
    other = torch.load(runs["four"] / "checkpoints" / "last.pt", weights_only=True)
    _edited(run / "checkpoints" / "last.pt", run / "checkpoints" / "last.pt", lambda data: edit(data, other))
    return run


RESUMES = {
    "weights of another run": (lambda own, other: own.update(model=other["model"], config=other["config"]),
                               "checkpoints/last.pt: its weights do not fit the model its training recipe describes "
                               "(num_queries 4 in the weights' config, 6 in the recipe): decoder.query_feat.weight is "
                               "[4, 32] in the file but [6, 32] in the model"),
    "optimiser of another run": (lambda own, other: own.update(optimizer=other["optimizer"]),
                                 "checkpoints/last.pt: its optimiser state does not fit the model: its exp_avg of "
                                 "parameter"),
    "unknown model in the recipe": (lambda own, other: own["train_config"].update(model="no-such-model"),
                                    "checkpoints/last.pt: its recipe names model 'no-such-model', which is not an "
                                    "open_clip model name"),
    "a model.pt in its place": (lambda own, other: [own.pop(k) for k in ("optimizer", "rng", "train_config")],
                                "checkpoints/last.pt: has no 'train_config', so it is not a training checkpoint"),
}


@pytest.mark.parametrize("case", sorted(RESUMES))
def test_resuming_from_a_checkpoint_that_does_not_fit_is_one_line(runs, tmp_path, capsys, case):
    edit, fragment = RESUMES[case]
    run = _resume_with(runs, tmp_path, edit)
    line = error_line(*zutis(capsys, "train", "--resume", run, "--iterations", "2"))
    assert f"{run}/{fragment}" in line
    assert "--model" not in line and "Error(s)" not in line


# ---- manifests and records of the wrong type ------------------------------------------------------

@pytest.fixture(scope="module")
def world(indexed, runs, tmp_path_factory) -> dict[str, Path]:
    """One small artefact of each kind a command reads, made by the stage functions."""
    from helpers import make_pseudolabels
    from zutiscli.data.classes import ClassQuery
    from zutiscli.pipeline.predict import PredictConfig, predict
    from zutiscli.pipeline.retrieve import RetrieveConfig, retrieve

    root = indexed["root"]  # the index's image paths are relative: its copies stay beside it
    classes = (ClassQuery("circle", "circle"), ClassQuery("star", "star"))
    archives = retrieve(RetrieveConfig(indices=(indexed["index"],), classes=classes, k=2, prompts="names",
                                       device="cpu"), root / "archives", warn=lambda m: None)
    pseudo = make_pseudolabels(tmp_path_factory.mktemp("labels"), count=4, size=32)
    scenes = write_synth(SynthConfig("scenes", 2, seed=5, size=48), root / "scenes")
    settings = dict(inputs=[str(scenes / "images")], classes=[classes[0]], checkpoint=str(runs["six"]), device="cpu",
                    vis=False)
    pred = predict(PredictConfig(**settings), root / "pred").path
    shards = [predict(PredictConfig(**settings, shard=(i, 2)), root / "shards").path for i in range(2)]
    from zutiscli.pipeline.cluster import ClusterConfig, cluster

    clusters = cluster(ClusterConfig(pseudolabels=str(pseudo), k=2, model="zutis-tiny",
                                     pretrained=str(indexed["weights"]), device="cpu", precision="fp32", contact=0,
                                     workers=0), root / "clusters").path
    return {"root": root, "index": indexed["index"], "archives": archives, "pseudo": pseudo, "scenes": scenes,
            "pred": pred, "shard0": shards[0], "shard1": shards[1], "weights": indexed["weights"], "clusters": clusters}


#: Per artefact, the commands that read its manifest ({out} a fresh output directory, {name} a path of world).
READERS = {
    "index": [["retrieve", "{index}", "--classes", "circle", "-k", "1", "--prompts", "names", "--device", "cpu",
               "-o", "{out}"],
              ["index", "merge", "{index}", "-o", "{out}"]],
    "archives": [["pseudolabel", "run", "{archives}", "--size", "32", "--refine", "none", "--device", "cpu", "-o",
                  "{out}"]],
    "pseudo": [["copypaste", "{pseudo}", "-n", "1", "--size", "32", "-o", "{out}"],
               ["cluster", "{pseudo}", "-k", "2", "--model", "zutis-tiny", "--pretrained", "{weights}", "--contact",
                "0", "--device", "cpu", "-o", "{out}"]],
    "clusters": [["cluster", "{pseudo}", "-k", "2", "--features-from", "{clusters}", "--contact", "1", "-o", "{out}"]],
    "pred": [["evaluate", "run", "{pred}", "--gt", "{scenes}", "-o", "{out}"]],
    "shard1": [["predict", "merge", "{shard0}", "{shard1}", "-o", "{out}"]],
}

GARBAGE = [[], "garbage", 12.5, None, {"garbage": 1}]

#: The JSON types each top-level manifest field may have.
VALID = {"kind": (str,), "schema": (int,), "created_by": (str,), "created_at": (str,), "model": (dict, type(None)),
         "inputs": (list,), "params": (dict,), "summary": (dict,)}


def _fill(args: list[str], world: dict[str, Path], out: Path) -> list[str]:
    return [arg.format(out=out, **world) for arg in args]


def _with_manifest(capsys, world, artefact: str, manifest: dict, tmp_path: Path) -> list[tuple[list[str], int, str]]:
    """Run each reader of ``artefact`` with ``manifest`` in place of its own: ``[(argv, status, stderr)]``."""
    file = world[artefact] / "manifest.json"
    original = file.read_text()
    results = []
    try:
        file.write_text(json.dumps(manifest))
        for number, args in enumerate(READERS[artefact]):
            argv = _fill(args, world, tmp_path / f"out-{number}-{len(list(tmp_path.iterdir()))}")
            code, out, err = zutis(capsys, *argv)
            results.append((argv, code, err))
    finally:
        file.write_text(original)
    return results


@pytest.mark.parametrize("artefact", sorted(READERS))
def test_every_manifest_field_of_the_wrong_type_is_one_line_naming_file_and_field(artefact, world, tmp_path, capsys):
    file = world[artefact] / "manifest.json"
    real = json.loads(file.read_text())
    for field in real:
        for garbage in GARBAGE:
            for argv, code, err in _with_manifest(capsys, world, artefact, real | {field: garbage}, tmp_path):
                where = f"{field} = {garbage!r}: zutis {' '.join(argv)}\n{err}"
                assert "internal error" not in err and "Traceback" not in err, where
                if isinstance(garbage, VALID[field]) and not (field == "kind" and garbage != real["kind"]):
                    assert code in (0, 1), where  # a value of the right type: the command goes on as far as it can
                    continue
                line = error_line(code, "", err)
                assert str(file) in line or str(world[artefact]) in line, where
                assert f"'{field}'" in line or (field == "kind" and "is a garbage artefact" in line), where


@pytest.mark.parametrize("artefact", sorted(READERS))
def test_every_field_a_reader_uses_is_checked_by_type(artefact, world, tmp_path, capsys):
    from zutiscli.artefacts.manifest import FIELDS

    file = world[artefact] / "manifest.json"
    real = json.loads(file.read_text())
    for name, expected in FIELDS.get(real["kind"], {}).items():
        section, _, key = name.partition(".")
        for garbage in ([], "garbage", 12.5, {"garbage": 1}):
            if ("a string" in expected and isinstance(garbage, str)) or (not key and isinstance(garbage, dict)):
                continue
            manifest = json.loads(json.dumps(real))
            manifest.setdefault(section, {})
            if isinstance(manifest[section], dict) and key:
                manifest[section][key] = garbage
            else:
                manifest[section] = garbage
            for argv, code, err in _with_manifest(capsys, world, artefact, manifest, tmp_path):
                line = error_line(code, "", err)
                assert f"{file}: field '{name}' is " in line and f"not {expected}" in line, f"{name}: {line}"


def test_the_reported_garbage_manifest_of_an_index(world, tmp_path, capsys):
    file = world["index"] / "manifest.json"
    manifest = json.loads(file.read_text()) | {"model": "garbage", "summary": []}
    [(argv, code, err)] = _with_manifest(capsys, world, "index", manifest, tmp_path)[:1]
    line = error_line(code, "", err)
    assert line.startswith(f"error: {file}: field 'model' is a string (\"garbage\"), not an object or null; "
                           f"the manifest is corrupt: make the artefact again with `zutis index`")


def test_a_pseudo_label_mask_with_garbage_counts_is_named(world, tmp_path, capsys):
    pseudo = world["pseudo"].parent / "pseudo-garbage"
    shutil.copytree(world["pseudo"], pseudo)
    labels = json.loads((pseudo / "pseudolabels.json").read_text())
    labels["annotations"][1]["segmentation"]["counts"] = "garbage"
    (pseudo / "pseudolabels.json").write_text(json.dumps(labels))
    line = error_line(*zutis(capsys, "copypaste", pseudo, "-n", "1", "--size", "32", "-o", tmp_path / "out"))
    assert f"{pseudo}/pseudolabels.json: annotation {labels['annotations'][1]['id']}: field 'segmentation' has " \
           f"counts with characters outside the compressed RLE alphabet" in line
    assert "make them again with `zutis pseudolabel`" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("counts, fragment", [
    ("0", "has runs that do not add up to its size"),  # decoding it would read memory past the mask
    ("PPPPPP", "has runs that do not add up to its size"),  # ... or write past it
    ([3, 4], "has runs of 7 pixels in all"),
    (17, "has counts that are neither a compressed RLE string nor a list of run lengths"),
])
def test_masks_that_do_not_decode_to_their_size_are_refused(world, tmp_path, capsys, counts, fragment):
    pseudo = tmp_path / "pseudo"
    shutil.copytree(world["pseudo"], pseudo)
    labels = json.loads((pseudo / "pseudolabels.json").read_text())
    for image in labels["images"]:  # the images stay where they are: their paths were relative to the original
        image["file_name"] = str((world["pseudo"] / image["file_name"]).resolve())
    labels["annotations"][0]["segmentation"]["counts"] = counts
    (pseudo / "pseudolabels.json").write_text(json.dumps(labels))
    line = error_line(*zutis(capsys, "copypaste", pseudo, "-n", "1", "--size", "32", "-o", tmp_path / "out"))
    assert f"annotation {labels['annotations'][0]['id']}: field 'segmentation' {fragment}" in line


@pytest.mark.parametrize("file, edit, fragment", [
    ("predictions.json", lambda d: d[0]["segmentation"].update(counts="garbage"),
     "predictions.json: result 0: field 'segmentation' has counts with characters outside"),
    ("predictions.json", lambda d: d[0].update(score="high"), "predictions.json: result 0: field 'score' is 'high'"),
    ("images.json", lambda d: d["images"][0].update(file_name=7),
     "images.json: images[0]: field 'file_name' is 7, not a string"),
])
def test_prediction_records_of_the_wrong_type_are_named(world, tmp_path, capsys, file, edit, fragment):
    pred = world["root"] / f"pred-{tmp_path.name}"  # beside the original: its image paths are relative
    shutil.copytree(world["pred"], pred)
    data = json.loads((pred / file).read_text())
    edit(data)
    (pred / file).write_text(json.dumps(data))
    line = error_line(*zutis(capsys, "evaluate", "run", pred, "--gt", world["scenes"], "-o", tmp_path / "out"))
    assert f"{pred}/{fragment}" in line and "predict again" in line


def test_an_index_image_record_of_the_wrong_type_is_named(world, tmp_path, capsys):
    index = world["root"] / "index-record"
    shutil.copytree(world["index"], index)
    table = index / "chunks" / "000001.jsonl"
    rows = [json.loads(line) for line in table.read_text().splitlines()]
    rows[1]["path"] = 12
    table.write_text("".join(json.dumps(row) + "\n" for row in rows))
    line = error_line(*zutis(capsys, "retrieve", index, "--classes", "circle", "--prompts", "names", "--device", "cpu",
                             "-o", tmp_path / "out"))
    assert f"{table}: line 2 is not an image record (field 'path')" in line
    assert "zutis index build" in line


def test_a_damaged_image_table_is_refused_and_rerunning_index_writes_it_again(indexed, capsys):
    index = indexed["root"] / "index-table"  # beside the original: same image paths
    shutil.copytree(indexed["index"], index)
    np.save(index / "table" / "width.npy", np.zeros(3, np.int32))
    archives = indexed["root"] / "index-table-archives"
    line = error_line(*_retrieve(capsys, index, archives))
    assert f"{index}/table/width.npy: holds int32 (3,), not ({IMAGES},) int32" in line
    assert f"run `zutis index build` on the same images with -o {index} again to repair it" in line
    code, out, err = zutis(capsys, *_index_args(indexed["images"], indexed["weights"], index), "--json")
    assert code == 0, err
    assert json.loads(out)["embedded"] == 0
    code, out, err = _retrieve(capsys, index, archives)
    assert code == 0, err
    assert json.loads(out)["indexed_images"] == IMAGES


def test_a_damaged_shard_is_repaired_by_its_own_sharded_run(indexed, tmp_path, capsys):
    sharded = tmp_path / "sharded"
    code, out, err = zutis(capsys, *_index_args(indexed["images"], indexed["weights"], sharded), "--shard", "1/2")
    assert code == 0, err
    shard = sharded / "shard-1-of-2"
    (shard / "chunks" / "000000.npy").unlink()
    line = error_line(*zutis(capsys, "index", "merge", shard, "-o", tmp_path / "merged"))
    assert f"{shard}/chunks/000000.npy: missing" in line
    assert f"with --shard 1/2 -o {sharded} again to repair it" in line
    code, out, err = zutis(capsys, *_index_args(indexed["images"], indexed["weights"], sharded), "--shard", "1/2")
    assert code == 0, err
    code, out, err = zutis(capsys, "index", "merge", shard, "-o", tmp_path / "merged", "--json")
    assert code == 0, err


def test_the_repair_rebuilds_an_approximate_index_whose_row_ids_it_shifted(indexed, capsys):
    index = indexed["root"] / "index-ivf"
    args = [*_index_args(indexed["images"], indexed["weights"], index), "--faiss", "IVF1,Flat"]
    assert zutis(capsys, *args)[0] == 0
    _drop_whole_middle_chunk(index / "chunks")
    archives = indexed["root"] / "index-ivf-archives"
    assert "chunks/000003.npy: missing" in error_line(*_retrieve(capsys, index, archives))
    code, out, err = zutis(capsys, *args)
    assert code == 0, err
    assert (index / "index.faiss").is_file()
    code, out, err = _retrieve(capsys, index, archives)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["indexed_images"] == IMAGES and summary["search"][0]["kind"] == "faiss"
