"""`zutis retrieve`: archives equal brute force, exclusive archives, model checks, moves, the CLI."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch
from PIL import Image

from zutiscli.artefacts import index_store
from zutiscli.artefacts.index_store import ImageRecord, IndexReader, IndexWriter, write_image_table
from zutiscli.artefacts.manifest import read_manifest, relative_to, resolve_relative, write_manifest
from zutiscli.data.classes import ClassQuery
from zutiscli.data.images import load_image
from zutiscli.errors import ArtefactError, ModelError, UsageError
from zutiscli.models.clip import ModelSpec, load_backbone, save_weights
from zutiscli.pipeline.retrieve import RetrieveConfig, encode_classes, read_archives, retrieve
from zutiscli.pipeline.synth import SynthConfig, write_synth

from helpers import run_cli as run  # noqa: E402

DIM = 32  # zutis-tiny's embedding size
NAMES = ("cat", "dog", "bird", "fish", "horse")


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint):
    """The manifest model record of indices embedded with the session's tiny model."""
    return ModelSpec("zutis-tiny", str(tiny_checkpoint)).describe() | {"precision": "fp32", "image_size": 32}


def write_index(directory: Path, records: list[ImageRecord], embeddings: np.ndarray, model: dict,
                chunk: int = 16, complete: bool = True, factory: str | None = None) -> Path:
    """An index directory as `zutis index` writes it: float16 chunks, record tables, manifest."""
    writer = IndexWriter(directory)
    for start in range(0, len(records), chunk):
        writer.write_chunk(records[start:start + chunk], embeddings[start:start + chunk], [])
    write_manifest(directory, "zutis.index", model=model, params={"chunk_size": chunk},
                   summary={"images": len({r.path for r in records}), "rows": len(records), "failed": 0,
                            "dim": embeddings.shape[1], "complete": complete, "faiss": factory})
    return directory


def random_index(directory: Path, model: dict, count: int = 60, seed: int = 0, superseded: int = 0,
                 duplicates: int = 0, tag: str = "a", **kwargs) -> Path:
    """``count`` random unit embeddings; the first ``superseded`` paths are embedded again at the end
    (their first rows become inactive); the last ``duplicates`` rows share the file hash of the first."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((count + superseded, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    records = [ImageRecord(f"images/{tag}{i:04d}.png", 64, 64, 100, 0, f"{tag}{i:015x}") for i in range(count)]
    for i in range(duplicates):
        row = count - duplicates + i
        records[row] = ImageRecord(records[row].path, 64, 64, 100, 0, records[i].hash)
    records += [ImageRecord(records[i].path, 64, 64, 100, 1, f"{tag}new{i:012x}") for i in range(superseded)]
    return write_index(directory, records, vectors.astype(np.float16), model, **kwargs)


def expected_archives(backbone, queries: list[ClassQuery], indices: list[Path], k: int, prompts: str = "names"):
    """Brute force over the concatenated indices: per class [(index, row, score)], ties by (index, row)."""
    text = encode_classes(backbone, queries, prompts, 64).astype(np.float64)
    scores, index_of, row_of = [], [], []
    for number, path in enumerate(indices):
        reader = IndexReader(path)
        s = text @ reader.embeddings().astype(np.float64).T
        keep = np.flatnonzero(reader.active())
        scores.append(s[:, keep])
        index_of.append(np.full(len(keep), number))
        row_of.append(keep)
    scores, index_of, row_of = np.concatenate(scores, 1), np.concatenate(index_of), np.concatenate(row_of)
    out = []
    for c in range(len(queries)):
        order = np.lexsort((row_of, index_of, -scores[c]))[:k]
        out.append([(int(index_of[i]), int(row_of[i]), float(scores[c, i])) for i in order])
    return out, scores, index_of, row_of


def hits_of(archives_dir: Path) -> dict[str, list[tuple[int, int, float]]]:
    data = json.loads((archives_dir / "archives.json").read_text(encoding="utf-8"))
    return {name: [(h["index"], h["row"], h["score"]) for h in entry["images"]] for name, entry in data["classes"].items()}


def same_hits(got, want):
    assert [(i, r) for i, r, _ in got] == [(i, r) for i, r, _ in want]
    assert [s for _, _, s in got] == pytest.approx([s for _, _, s in want], abs=1e-5)


def config(indices, names=NAMES, **kwargs) -> RetrieveConfig:
    kwargs.setdefault("prompts", "names")
    kwargs.setdefault("device", "cpu")
    return RetrieveConfig(indices=tuple(Path(i) for i in indices), classes=tuple(ClassQuery(n, n) for n in names), **kwargs)


# ---- search results -----------------------------------------------------------------------------
def test_two_indices_merge_by_score_and_skip_superseded_rows(tmp_path, tiny_model, tiny_backbone):
    first = random_index(tmp_path / "a", tiny_model, count=70, seed=1, superseded=6, tag="a")
    second = random_index(tmp_path / "b", tiny_model, count=45, seed=2, tag="b", chunk=7)
    out = retrieve(config([first, second], k=25), tmp_path / "archives")
    want, *_ = expected_archives(tiny_backbone, [ClassQuery(n, n) for n in NAMES], [first, second], 25)
    got = hits_of(out)
    assert list(got) == list(NAMES)
    for name, expected in zip(NAMES, want):
        same_hits(got[name], expected)
        assert not any(index == 0 and row < 6 for index, row, _ in got[name])  # superseded rows
    assert {index for hits in got.values() for index, _, _ in hits} == {0, 1}


def test_ensemble_prompts_and_search_phrases(tmp_path, tiny_model, tiny_backbone):
    index = random_index(tmp_path / "index", tiny_model, count=50)
    classes = (ClassQuery("parking", "parking lot"), ClassQuery("road", "road"))
    out = retrieve(RetrieveConfig((index,), classes, k=8, device="cpu"), tmp_path / "archives")
    want, *_ = expected_archives(tiny_backbone, [ClassQuery("x", "parking lot"), ClassQuery("road", "road")],
                                 [index], 8, prompts="ensemble")
    got = hits_of(out)
    assert list(got) == ["parking", "road"]
    same_hits(got["parking"], want[0])
    same_hits(got["road"], want[1])
    data = json.loads((out / "archives.json").read_text(encoding="utf-8"))
    assert data["classes"]["parking"]["phrase"] == "parking lot" and data["k"] == 8
    manifest = read_manifest(out, "zutis.archives")
    assert manifest.params["prompts"] == "ensemble"
    assert manifest.params["classes"][0] == {"name": "parking", "phrase": "parking lot"}


def test_k_beyond_the_images_is_clamped_with_a_warning(tmp_path, tiny_model):
    index = random_index(tmp_path / "index", tiny_model, count=30, superseded=4)
    with pytest.warns(UserWarning, match=r"-k 500 is more than the 30 images in the index; each archive gets at most 30"):
        out = retrieve(config([index], names=("cat", "dog"), k=500), tmp_path / "archives")
    got = hits_of(out)
    assert [len(h) for h in got.values()] == [30, 30]
    summary = read_manifest(out).summary
    assert summary["k"] == 30 and any("more than the 30 images" in w for w in summary["warnings"])


def test_faiss_index_is_used_with_nprobe_and_never_returns_inactive_rows(tmp_path, tiny_model, tiny_backbone):
    index = random_index(tmp_path / "index", tiny_model, count=200, superseded=10, factory="IVF4,Flat")
    reader = IndexReader(index)
    vectors = reader.embeddings().astype(np.float32)
    ivf = faiss.index_factory(DIM, "IVF4,Flat", faiss.METRIC_INNER_PRODUCT)
    ivf.train(vectors)
    wrapped = faiss.IndexIDMap2(ivf)
    wrapped.add_with_ids(vectors, np.arange(len(vectors)))  # superseded rows included: retrieve must drop them
    faiss.write_index(wrapped, str(index / "index.faiss"))
    out = retrieve(config([index], k=15, nprobe=4), tmp_path / "archives")
    want, *_ = expected_archives(tiny_backbone, [ClassQuery(n, n) for n in NAMES], [index], 15)
    got = hits_of(out)
    for name, expected in zip(NAMES, want):
        same_hits(got[name], expected)  # nprobe = nlist: the IVF search is exact
    assert read_manifest(out).summary["search"] == [{"kind": "faiss", "factory": "IVF4,Flat", "nprobe": 4}]


def test_unfinished_index_is_used_with_a_warning(tmp_path, tiny_model):
    index = random_index(tmp_path / "index", tiny_model, count=20, complete=False)
    messages = []
    out = retrieve(config([index], names=("cat",), k=5), tmp_path / "archives", warn=messages.append)
    assert len(hits_of(out)["cat"]) == 5
    assert len(messages) == 1 and "unfinished" in messages[0] and str(index) in messages[0]


# ---- exclusive archives -------------------------------------------------------------------------
def greedy_reference(scores, index_of, row_of, keys, k):
    """The documented rule, spelled out over the full score matrix: best pairs first; an image goes
    to a class while the image is free and the class has room. Ties: class order, then rank."""
    count = scores.shape[0]
    ranks = [np.lexsort((row_of, index_of, -scores[c])) for c in range(count)]
    pairs = [(-scores[c, i], c, rank, i) for c in range(count) for rank, i in enumerate(ranks[c])]
    taken, archives = set(), [[] for _ in range(count)]
    for _, c, _, i in sorted(pairs):
        if len(archives[c]) < k and keys[i] not in taken:
            taken.add(keys[i])
            archives[c].append((int(index_of[i]), int(row_of[i])))
    return archives


@pytest.mark.parametrize("k", [4, 11, 14])
def test_exclusive_archives_follow_the_greedy_rule_and_are_disjoint(tmp_path, tiny_model, tiny_backbone, k):
    # Two indices whose images partly share file contents (same hash): one image, whatever its copies.
    first = random_index(tmp_path / "a", tiny_model, count=40, seed=3, duplicates=5, superseded=3, tag="a")
    second = random_index(tmp_path / "b", tiny_model, count=25, seed=4, tag="b")
    records_b = IndexReader(second).records()
    records_a = IndexReader(first).records()
    # make 4 images of the second index copies of the first index's images
    shutil.rmtree(second)
    copies = [ImageRecord(r.path, 64, 64, 100, 0, records_a[10 + i].hash) if i < 4 else r for i, r in enumerate(records_b)]
    vectors = np.random.default_rng(4).standard_normal((25, DIM)).astype(np.float32)
    write_index(second, copies, (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float16), tiny_model)

    queries = [ClassQuery(n, n) for n in NAMES]
    messages = []
    out = retrieve(config([first, second], k=k, exclude_duplicates=True), tmp_path / "archives", warn=messages.append)
    _, scores, index_of, row_of = expected_archives(tiny_backbone, queries, [first, second], k)
    tables = [IndexReader(first).records(), IndexReader(second).records()]
    keys = [tables[i][r].hash for i, r in zip(index_of, row_of)]
    want = greedy_reference(scores, index_of, row_of, keys, k)
    got = hits_of(out)
    for name, expected in zip(NAMES, want):
        assert [(i, r) for i, r, _ in got[name]] == expected
        assert [s for _, _, s in got[name]] == sorted([s for _, _, s in got[name]], reverse=True)
    contents = [tables[i][r].hash for hits in got.values() for i, r, _ in hits]
    assert len(contents) == len(set(contents))  # disjoint, by content
    # 65 active rows; copies: rows 38, 39 of a (of rows 3, 4) and rows 0-3 of b (of a's 10-13).
    # (Rows 35-37 copied rows 0-2, which were superseded by new contents, so they count.)
    distinct = len(set(keys))
    assert distinct == 59
    assert sum(len(h) for h in got.values()) == min(distinct, len(NAMES) * k)
    summary = read_manifest(out).summary
    assert summary["passes"] > 1  # candidates were fetched deeper for classes left short
    assert summary["shared_images"] == 0 and summary["unique_images"] == sum(len(h) for h in got.values())
    if len(NAMES) * k > distinct:
        assert any("fewer than" in m for m in messages)
    else:
        assert all(len(h) == k for h in got.values())


@pytest.mark.parametrize("exclusive", [True, False])
def test_archives_from_the_image_table_are_those_from_the_jsonl(tmp_path, tiny_model, monkeypatch, exclusive):
    # write_index writes the old form (no table/), as zutis did before image tables
    first = random_index(tmp_path / "a", tiny_model, count=50, seed=5, duplicates=6, superseded=4, tag="a")
    second = random_index(tmp_path / "b", tiny_model, count=30, seed=6, duplicates=2, tag="b", chunk=7)
    before = retrieve(config([first, second], k=9, exclude_duplicates=exclusive), tmp_path / "before")
    for index in (first, second):
        write_image_table(IndexReader(index))
    monkeypatch.setattr(index_store, "_records_of", lambda *args: pytest.fail("retrieve parsed a .jsonl"))
    after = retrieve(config([first, second], k=9, exclude_duplicates=exclusive), tmp_path / "after")
    assert (after / "archives.json").read_bytes() == (before / "archives.json").read_bytes()
    summaries = [read_manifest(out).summary for out in (before, after)]
    assert [{k: v for k, v in s.items() if k != "seconds"} for s in summaries] == [
        {k: v for k, v in summaries[0].items() if k != "seconds"}] * 2


def test_without_exclusion_an_image_can_be_in_several_archives(tmp_path, tiny_model):
    index = random_index(tmp_path / "index", tiny_model, count=12)
    out = retrieve(config([index], k=10), tmp_path / "archives")
    summary = read_manifest(out).summary
    assert summary["images"] == 50 and summary["unique_images"] <= 12 and summary["shared_images"] > 0


# ---- the model ----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def other_checkpoint(tmp_path_factory):
    torch.manual_seed(99)
    backbone = load_backbone(ModelSpec("zutis-tiny", "none"))
    return save_weights(backbone, tmp_path_factory.mktemp("other") / "other.pt")


def test_indices_of_different_models_are_refused(tmp_path, tiny_model):
    first = random_index(tmp_path / "a", tiny_model, count=10)
    second = random_index(tmp_path / "b", {"name": "zutis-tiny", "pretrained": "none"}, count=10)
    with pytest.raises(ArtefactError, match="indices embedded with different models") as info:
        retrieve(config([first, second], k=3), tmp_path / "archives")
    assert str(first) in str(info.value) and str(second) in str(info.value)
    assert not (tmp_path / "archives" / "manifest.json").exists()


def test_an_explicit_model_other_than_the_index_is_refused(tmp_path, tiny_model, tiny_checkpoint, other_checkpoint):
    index = random_index(tmp_path / "index", tiny_model, count=10)
    with pytest.raises(UsageError, match=rf"--model ViT-B-16 is not the model of index {index}"):
        retrieve(config([index], k=3, model="ViT-B-16"), tmp_path / "one")
    with pytest.raises(UsageError, match=rf"--pretrained .*other.pt is not the weights index {index}"):
        retrieve(config([index], k=3, pretrained=str(other_checkpoint)), tmp_path / "two")
    with pytest.raises(UsageError, match="--pretrained none is not the weights"):
        retrieve(config([index], k=3, pretrained="none"), tmp_path / "three")
    # the same weights under another path (a moved checkpoint) are the same model
    moved = shutil.copy(tiny_checkpoint, tmp_path / "moved.pt")
    out = retrieve(config([index], k=3, model="zutis-tiny", pretrained=str(moved)), tmp_path / "four")
    assert read_manifest(out).model == tiny_model


def test_a_changed_or_missing_checkpoint_is_caught(tmp_path, tiny_checkpoint, other_checkpoint):
    weights = Path(shutil.copy(tiny_checkpoint, tmp_path / "weights.pt"))
    model = ModelSpec("zutis-tiny", str(weights)).describe()
    index = random_index(tmp_path / "index", model, count=10)
    shutil.copy(other_checkpoint, weights)
    with pytest.raises(UsageError, match="has changed since index"):
        retrieve(config([index], k=3), tmp_path / "one")
    weights.unlink()
    with pytest.raises(ModelError, match="no longer exist; pass --pretrained"):
        retrieve(config([index], k=3), tmp_path / "two")
    out = retrieve(config([index], k=3, pretrained=str(tiny_checkpoint)), tmp_path / "three")
    assert len(hits_of(out)["cat"]) == 3


# ---- real images, moves, the command line --------------------------------------------------------
@pytest.fixture(scope="module")
def pile_tree(tmp_path_factory, tiny_backbone, tiny_model):
    """tree/data/pile (shapes-world images) and tree/index (embedded with the tiny model)."""
    tree = tmp_path_factory.mktemp("tree")
    pile = write_synth(SynthConfig("pile", 40, seed=5), tree / "data" / "pile")
    index_dir = tree / "index"
    paths = sorted((pile / "images").glob("*.png"))
    transform = tiny_backbone.transform()
    with torch.inference_mode():
        embeddings = tiny_backbone.encode_images(torch.stack([transform(load_image(p)) for p in paths])).numpy()
    records = [
        ImageRecord(relative_to(index_dir, p), 64, 64, p.stat().st_size, p.stat().st_mtime_ns,
                    hashlib.blake2b(p.read_bytes(), digest_size=8).hexdigest())
        for p in paths
    ]
    write_index(index_dir, records, embeddings, tiny_model, chunk=16)
    return tree


def test_archives_survive_moving_the_tree(tmp_path, pile_tree):
    tree = tmp_path / "tree"
    shutil.copytree(pile_tree, tree)
    out = retrieve(config([tree / "index"], names=("red circle", "blue star"), k=6), tree / "archives")
    before = {name: [h.path.relative_to(tree) for h in hits] for name, hits in read_archives(out).items()}
    data = json.loads((out / "archives.json").read_text(encoding="utf-8"))
    assert data["indices"] == ["../index"]
    assert data["classes"]["red circle"]["images"][0]["path"].startswith("../data/pile/images/")
    moved = tmp_path / "elsewhere" / "moved"
    shutil.move(str(tree), moved)
    after = read_archives(moved / "archives")
    for name, hits in after.items():
        assert [h.path.relative_to(moved) for h in hits] == before[name]
        assert all(h.path.is_file() for h in hits)
    manifest = read_manifest(moved / "archives")
    assert manifest.input_paths() == [moved / "index"]
    assert resolve_relative(moved / "archives", data["indices"][0]) == moved / "index"


def test_cli_end_to_end_json_manifest_and_contact_sheets(tmp_path, capsys, pile_tree, tiny_model):
    out_dir = tmp_path / "archives"
    code, out, err = run(capsys, "retrieve", pile_tree / "index", "--classes", "red circle,blue square,AC/DC",
                         "-k", "5", "--contact-sheet", "--json", "-o", out_dir, "--device", "cpu")
    assert code == 0, err
    document = json.loads(out)
    assert document["path"] == str(out_dir)
    assert document["classes"] == 3 and document["k"] == 5 and document["images"] == 15
    assert [row["name"] for row in document["archives"]] == ["red circle", "blue square", "AC/DC"]
    assert all(row["k"] == 5 and row["top"] >= row["median"] for row in document["archives"])
    manifest = read_manifest(out_dir, "zutis.archives")
    assert manifest.model == tiny_model
    assert [(ref.path, ref.kind) for ref in manifest.inputs] == [(relative_to(out_dir, pile_tree / "index"), "zutis.index")]
    assert manifest.params["k"] == 5 and manifest.params["contact_sheet"] is True
    archives = read_archives(out_dir)
    assert all(len(hits) == 5 and all(h.path.is_file() for h in hits) for hits in archives.values())
    sheets = sorted(p.name for p in (out_dir / "contact").iterdir())
    assert len(sheets) == 3 and "red circle.jpg" in sheets and any(s.startswith("AC_DC-") for s in sheets)
    with Image.open(out_dir / "contact" / "red circle.jpg") as sheet:
        assert sheet.format == "JPEG" and sheet.width == 8 * 128 and sheet.height > 128
        pixels = np.asarray(sheet.convert("RGB"))
    assert pixels[40:150, :128].std() > 10  # the first thumbnail is drawn, not a blank tile


def test_cli_human_output_table_and_path_last(tmp_path, capsys, pile_tree):
    out_dir = tmp_path / "archives"
    classes = tmp_path / "classes.txt"
    classes.write_text("# shapes\nround\tred circle\nstar\n", encoding="utf-8")
    code, out, err = run(capsys, "retrieve", pile_tree / "index", "--classes-file", classes, "-k", "100",
                         "-o", out_dir, "--device", "cpu", "--prompts", "names")
    assert code == 0, err
    assert out.strip().splitlines()[-1] == str(out_dir)
    assert "top score" in err and "round" in err and "median" in err
    assert "warning:" in err and "-k 100 is more than the 40 images" in err
    assert set(read_archives(out_dir)) == {"round", "star"}


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["-k", "3"], 2, "no classes given"),
        (["--classes", ",,"], 2, "names no class"),
        (["--classes", "cat,cat"], 2, "duplicate class name 'cat'"),
        (["--classes", "cat", "-k", "0"], 2, "-k must be at least 1"),
        (["--classes", "cat", "--prompts", "fancy"], 2, "--prompts 'fancy' is not one of ensemble, names"),
        (["--classes", "cat", "--model", "ViT-B-16"], 2, "is not the model of index"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, capsys, pile_tree, args, code, message):
    got, out, err = run(capsys, "retrieve", pile_tree / "index", *args, "-o", tmp_path / "archives")
    assert got == code and out == ""
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_refuses_a_directory_that_is_not_an_index(tmp_path, capsys, pile_tree):
    code, out, err = run(capsys, "retrieve", pile_tree / "data" / "pile", "--classes", "cat", "-o", tmp_path / "x")
    assert code == 1 and "zutis.synth artefact" in err and "zutis index" in err


def test_bf16_index_retrieves_what_fp32_retrieves_on_the_shapes_world(tmp_path):
    """Embeddings from bf16 weights give the same top-50 per shape name as fp32 (overlap >= 0.98)."""
    from zutiscli.pipeline.index import IndexConfig, build_index
    from zutiscli.shapes.world import SHAPES

    pile = write_synth(SynthConfig("pile", 600, seed=31), tmp_path / "pile")
    classes = tuple(ClassQuery(shape, shape) for shape in SHAPES)
    hits = {}
    for precision in ("fp32", "bf16"):
        index = build_index(IndexConfig(sources=[str(pile / "images")], model="shapes-clip", device="cpu",
                                        precision=precision, workers=0), tmp_path / f"index-{precision}").path
        archives = retrieve(RetrieveConfig(indices=(index,), classes=classes, k=50, device="cpu"),
                            tmp_path / f"archives-{precision}")
        hits[precision] = {name: {hit.path.name for hit in found} for name, found in read_archives(archives).items()}
    overlaps = {name: len(hits["fp32"][name] & hits["bf16"][name]) / 50 for name in SHAPES}
    assert min(overlaps.values()) >= 0.98, overlaps
