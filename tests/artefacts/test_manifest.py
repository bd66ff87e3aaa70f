import json
import shutil
from pathlib import Path

import pytest

from zutiscli import __version__
from zutiscli.artefacts.manifest import (
    KINDS,
    MANIFEST_NAME,
    fingerprint,
    read_manifest,
    relative_paths,
    relative_to,
    resolve_relative,
    write_manifest,
)
from zutiscli.errors import ArtefactError


def _index(tmp_path, name="index"):
    out = tmp_path / name
    out.mkdir()
    (out / "embeddings.bin").write_bytes(b"\x00" * 16)
    return write_manifest(out, "zutis.index", model={"name": "zutis-tiny"}, params={"k": 3})


def test_round_trip(tmp_path):
    written = _index(tmp_path)
    read = read_manifest(tmp_path / "index", "zutis.index")
    assert read.kind == "zutis.index"
    assert read.schema == KINDS["zutis.index"][0]
    assert read.created_by == f"zutis {__version__}"
    assert read.model == {"name": "zutis-tiny"}
    assert read.params == {"k": 3}
    assert read.created_at == written.created_at
    # the manifest file itself may also be named
    assert read_manifest(tmp_path / "index" / MANIFEST_NAME).kind == "zutis.index"


def test_inputs_are_relative_and_survive_moving_the_tree(tmp_path):
    tree = tmp_path / "project"
    images = tree / "images"
    images.mkdir(parents=True)
    (images / "a.jpg").write_bytes(b"abc")
    index = tree / "runs" / "index"
    index.mkdir(parents=True)
    write_manifest(index, "zutis.index", inputs=[images])
    manifest = read_manifest(index)
    assert manifest.inputs[0].path == "../../images"
    moved = tmp_path / "moved"
    shutil.move(str(tree), str(moved))
    again = read_manifest(moved / "runs" / "index")
    assert again.input_paths()[0] == moved / "images"
    assert again.inputs[0].fingerprint == fingerprint(moved / "images")


def test_input_artefact_records_its_kind(tmp_path):
    _index(tmp_path)
    out = tmp_path / "archives"
    out.mkdir()
    manifest = write_manifest(out, "zutis.archives", inputs=[tmp_path / "index"])
    assert manifest.inputs[0].kind == "zutis.index"
    assert read_manifest(out).inputs[0].kind == "zutis.index"


def test_wrong_kind_names_directory_and_producer(tmp_path):
    _index(tmp_path)
    with pytest.raises(ArtefactError) as err:
        read_manifest(tmp_path / "index", "zutis.archives")
    message = str(err.value)
    assert str(tmp_path / "index") in message
    assert "zutis.index" in message and "zutis retrieve" in message


def test_several_acceptable_kinds(tmp_path):
    _index(tmp_path)
    assert read_manifest(tmp_path / "index", ("zutis.archives", "zutis.index")).kind == "zutis.index"


def test_newer_schema_is_refused_with_upgrade_hint(tmp_path):
    _index(tmp_path)
    path = tmp_path / "index" / MANIFEST_NAME
    data = json.loads(path.read_text())
    data["schema"] = KINDS["zutis.index"][0] + 1
    path.write_text(json.dumps(data))
    with pytest.raises(ArtefactError, match="upgrade zutis"):
        read_manifest(tmp_path / "index", "zutis.index")


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("{not json", "not valid JSON"),
        ("[]", "top level is not an object"),
        ('{"kind": "zutis.index"}', "missing schema, created_by"),
        ('{"kind": "zutis.bogus", "schema": 1, "created_by": "zutis 9"}', "unknown artefact kind"),
        ('{"kind": "zutis.index", "schema": "1", "created_by": "zutis 9"}', "invalid schema"),
        (b"\xff\xfe\x00", "not UTF-8"),
    ],
)
def test_malformed_manifests_are_named(tmp_path, content, fragment):
    root = tmp_path / "broken"
    root.mkdir()
    file = root / MANIFEST_NAME
    file.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ArtefactError) as err:
        read_manifest(root)
    assert fragment in str(err.value)
    assert str(root) in str(err.value)


def test_missing_directory_and_missing_manifest(tmp_path):
    with pytest.raises(ArtefactError, match="no such directory"):
        read_manifest(tmp_path / "nope", "zutis.index")
    (tmp_path / "half").mkdir()
    with pytest.raises(ArtefactError, match="not a finished zutis artefact.*zutis index"):
        read_manifest(tmp_path / "half", "zutis.index")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ArtefactError, match="is a file"):
        read_manifest(tmp_path / "file")


def test_unknown_kind_cannot_be_written(tmp_path):
    with pytest.raises(ValueError):
        write_manifest(tmp_path, "zutis.nonsense")


def test_fingerprint_follows_content_not_name(tmp_path):
    a = tmp_path / "a.bin"
    b = tmp_path / "b.bin"
    a.write_bytes(b"same bytes")
    b.write_bytes(b"same bytes")
    assert fingerprint(a) == fingerprint(b)
    b.write_bytes(b"other bytes")
    assert fingerprint(a) != fingerprint(b)


def test_large_file_fingerprint_sees_middle_changes(tmp_path):
    big = tmp_path / "big.bin"
    data = bytearray(9 << 20)
    big.write_bytes(bytes(data))
    before = fingerprint(big)
    assert before.startswith("blake2b-sampled:")
    data[len(data) // 2] = 1
    big.write_bytes(bytes(data))
    assert fingerprint(big) != before


def test_relative_helpers_invert(tmp_path):
    root = tmp_path / "a" / "b"
    target = tmp_path / "c" / "d.png"
    rel = relative_to(root, target)
    assert rel == "../../c/d.png"
    assert resolve_relative(root, rel) == target


def test_relative_paths_of_many_files_are_those_of_relative_to(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "runs" / "index"
    paths = [tmp_path / "images" / "a.jpg", tmp_path / "images" / "sub" / "b.png", root / "c.jpg",
             root / "deep" / "d.jpg", Path("images/e.jpg"), Path("./images/../images/f.jpg"), Path("/g.jpg"),
             tmp_path / "images" / "a.jpg", root.parent / "x" / ".." / "index" / "h.jpg"]
    assert relative_paths(root, paths) == [relative_to(root, path) for path in paths]
    assert relative_paths(Path("runs/index"), paths) == [relative_to(root, path) for path in paths]
    assert relative_paths(root, paths)[2:4] == ["c.jpg", "deep/d.jpg"]
    assert relative_paths(root, []) == []
