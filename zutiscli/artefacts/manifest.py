"""``manifest.json``: what every stage directory says about itself.

A stage writes its files first and its manifest last, atomically; a directory without a manifest
is an unfinished or foreign directory and every reader refuses it. The manifest records::

    {"kind": "zutis.index", "schema": 1, "created_by": "zutis 0.1.0",
     "created_at": "2026-11-22T02:00:00Z", "model": {...} | null,
     "inputs": [{"path": "../images", "fingerprint": "blake2b:...", "kind": null}],
     "params": {...}, "summary": {...}}

Input paths are relative to the artefact directory, so a tree of artefacts can be moved as a whole.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from zutiscli._version import __version__
from zutiscli.artefacts.atomic import atomic_write_json
from zutiscli.artefacts.lock import clear_unfinished_mark
from zutiscli.errors import ArtefactError

MANIFEST_NAME = "manifest.json"

#: kind -> (current schema version, the command that writes it)
KINDS: dict[str, tuple[int, str]] = {
    "zutis.synth": (1, "zutis synth"),
    "zutis.index": (1, "zutis index"),
    "zutis.archives": (1, "zutis retrieve"),
    "zutis.references": (1, "zutis cosegment"),
    "zutis.pseudolabels": (1, "zutis pseudolabel"),
    "zutis.clusters": (1, "zutis cluster"),
    "zutis.hypotheses": (1, "zutis hypotheses"),
    "zutis.dataset": (1, "zutis copypaste"),
    "zutis.run": (1, "zutis train"),
    "zutis.predictions": (1, "zutis predict"),
    "zutis.metrics": (1, "zutis evaluate"),
    "zutis.comparison": (1, "zutis compare"),
    "zutis.demo": (1, "zutis demo"),
}

def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


#: The JSON types a manifest field may have, by the name its messages give them.
_TYPES: dict[str, Any] = {
    "a string": lambda v: isinstance(v, str),
    "an integer": _is_int,
    "a boolean (true/false)": lambda v: isinstance(v, bool),
    "an object": lambda v: isinstance(v, dict),
    "a list": lambda v: isinstance(v, list),
    "null": lambda v: v is None,
    "a list of strings": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    "a shard [I, N] (0 <= I < N)": lambda v: (isinstance(v, list) and len(v) == 2 and all(map(_is_int, v))
                                              and 0 <= v[0] < v[1]),
}

#: Every manifest's top-level fields (``kind``, ``schema`` and ``created_by`` are required; ``schema``
#: is checked on its own).
_COMMON_FIELDS: dict[str, str] = {
    "kind": "a string", "created_by": "a string", "created_at": "a string",
    "model": "an object or null", "inputs": "a list", "params": "an object", "summary": "an object",
}

#: Per kind, the fields that zutis reads from its manifest (``section.key``), checked when present;
#: a top-level field listed here is checked whether present or not. Readers may rely on these types.
FIELDS: dict[str, dict[str, str]] = {
    "zutis.index": {
        "model.name": "a string", "model.pretrained": "a string", "model.precision": "a string",
        "model.image_size": "an integer", "model.weights_fingerprint": "a string or null",
        "params.faiss": "a string",
        "summary.rows": "an integer", "summary.images": "an integer", "summary.failed": "an integer",
        "summary.dim": "an integer", "summary.complete": "a boolean (true/false)", "summary.faiss": "a string or null",
    },
    "zutis.archives": {"model.name": "a string", "model.pretrained": "a string"},
    "zutis.pseudolabels": {
        "params.method": "a string", "params.shard": "a shard [I, N] (0 <= I < N) or null",
        "summary.images": "an integer", "summary.masks": "an integer",
    },
    "zutis.clusters": {
        "params.features": "a string", "summary.k": "an integer", "summary.masks": "an integer",
    },
    "zutis.predictions": {
        "model.checkpoint": "a string or null",
        "params.shard": "a shard [I, N] (0 <= I < N) or null", "summary.failed": "an integer",
    },
    "zutis.hypotheses": {"params.classes": "a list of strings"},
    "zutis.synth": {"params.kind": "a string", "summary.classes": "a list of strings"},
    "zutis.dataset": {"summary.classes": "a list of strings"},
}


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "an object"


def _check_type(file: Path, name: str, value: Any, expected: str, remedy: str) -> None:
    if not any(_TYPES[kind](value) for kind in expected.split(" or ") if kind in _TYPES):
        shown = json.dumps(value, ensure_ascii=False)
        shown = "" if value is None else f" ({shown})" if len(shown) <= 40 else f" ({shown[:37]}...)"
        raise ArtefactError(f"{file}: field {name!r} is {_type_name(value)}{shown}, not {expected}; {remedy}")


def _check_fields(file: Path, data: dict[str, Any], fields: dict[str, str], remedy: str, *,
                  absent_too: bool) -> None:
    """Check the type of each of ``fields`` (``key`` or ``section.key``) that ``data`` has; with
    ``absent_too``, a missing top-level field counts as null."""
    for name, expected in fields.items():
        section, _, key = name.partition(".")
        if not key:
            if absent_too or name in data:
                _check_type(file, name, data.get(name), expected, remedy)
        elif isinstance(data.get(section), dict) and key in data[section]:
            _check_type(file, name, data[section][key], expected, remedy)


def _check_inputs(file: Path, inputs: list[Any], remedy: str) -> list[InputRef]:
    refs = []
    for position, ref in enumerate(inputs):
        where = f"inputs[{position}]"
        _check_type(file, where, ref, "an object", remedy)
        unknown = sorted(set(ref) - {"path", "fingerprint", "kind"})
        if unknown:
            raise ArtefactError(f"{file}: field {where} has an unknown key {unknown[0]!r}; {remedy}")
        for key, expected in (("path", "a string"), ("fingerprint", "a string"), ("kind", "a string or null")):
            if key != "kind" or key in ref:
                _check_type(file, f"{where}.{key}", ref.get(key), expected, remedy)
        refs.append(InputRef(**ref))
    return refs


_FULL_HASH_LIMIT = 4 << 20  # files up to 4 MiB are hashed whole
_SAMPLE = 1 << 20  # larger ones: size + three 1 MiB samples (head, middle, tail)


@dataclass(frozen=True)
class InputRef:
    """One input of a stage: a path relative to the artefact, its fingerprint, its kind if an artefact."""

    path: str
    fingerprint: str
    kind: str | None = None


@dataclass
class Manifest:
    """The parsed ``manifest.json`` of one artefact directory (``root``)."""

    kind: str
    schema: int
    created_by: str
    created_at: str
    model: dict[str, Any] | None = None
    inputs: list[InputRef] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    root: Path | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("root")
        return data

    def input_paths(self) -> list[Path]:
        """Absolute-ish paths of the inputs, resolved against the artefact directory."""
        if self.root is None:
            raise ValueError("manifest has no root directory")
        return [resolve_relative(self.root, ref.path) for ref in self.inputs]


def read_json(path: str | Path, what: str, expect: type | None = None) -> Any:
    """A JSON file of an artefact; a missing, unreadable or unparsable one, or one whose top level
    is not of type ``expect`` (``dict`` or ``list``) when given, is an :class:`ArtefactError` naming
    the file and ``what`` it should hold."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtefactError(f"{path}: no such file ({what})") from None
    except OSError as exc:
        raise ArtefactError(f"{path}: cannot be read ({exc.strerror or exc}); expected {what}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtefactError(f"{path}: is not valid JSON ({exc}); expected {what}") from None
    if expect is not None and not isinstance(data, expect):
        wanted = "an object" if expect is dict else "a list" if expect is list else expect.__name__
        raise ArtefactError(f"{path}: its top level is {_type_name(data)}, not {wanted}; expected {what}")
    return data


def relative_to(root: str | Path, path: str | Path) -> str:
    """``path`` expressed relative to directory ``root``, in POSIX form (``..`` allowed)."""
    relative = os.path.relpath(path, root)  # both made absolute by relpath
    return relative if os.sep == "/" else Path(relative).as_posix()


def relative_paths(root: str | Path, paths: Iterable[str | Path]) -> list[str]:
    """:func:`relative_to` of each of ``paths``, for many at once: each folder's path relative to
    ``root`` is worked out once (a million images in a few folders cost a million joins, not a
    million ``os.path.relpath``)."""
    root = os.path.abspath(root)
    folders: dict[str, str] = {}
    relative = []
    for path in paths:
        folder, name = os.path.split(os.path.abspath(path))
        prefix = folders.get(folder)
        if prefix is None:
            prefix = folders[folder] = "" if folder == root else relative_to(root, folder) + "/"
        relative.append(prefix + name)
    return relative


def resolve_relative(root: str | Path, relative: str) -> Path:
    """Inverse of :func:`relative_to`: join and normalise (no symlink resolution)."""
    return Path(os.path.normpath(os.path.join(os.path.abspath(root), relative)))


def _hash_file(path: Path) -> str:
    size = path.stat().st_size
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        if size <= _FULL_HASH_LIMIT:
            digest.update(handle.read())
            return "blake2b:" + digest.hexdigest()
        digest.update(size.to_bytes(8, "little"))
        for offset in (0, size // 2 - _SAMPLE // 2, size - _SAMPLE):
            handle.seek(offset)
            digest.update(handle.read(_SAMPLE))
    return "blake2b-sampled:" + digest.hexdigest()


def fingerprint(path: str | Path) -> str:
    """A content fingerprint of a file or directory, stable across moves and copies.

    Files up to 4 MiB are hashed whole (BLAKE2b-128); larger files by size plus head, middle and
    tail samples. An artefact directory is fingerprinted by its manifest; any other directory by
    the sorted list of its entries' relative paths and sizes.
    """
    path = Path(path)
    if path.is_file():
        return _hash_file(path)
    if path.is_dir():
        manifest = path / MANIFEST_NAME
        if manifest.is_file():
            return _hash_file(manifest)
        digest = hashlib.blake2b(digest_size=16)
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            for name in sorted(filenames):
                full = Path(dirpath, name)
                digest.update(f"{full.relative_to(path).as_posix()}\0{full.stat().st_size}\n".encode())
        return "blake2b-listing:" + digest.hexdigest()
    raise ArtefactError(f"{path}: no such file or directory")


def _kind_of(path: Path) -> str | None:
    manifest = path / MANIFEST_NAME
    if path.is_dir() and manifest.is_file():
        try:
            return json.loads(manifest.read_text(encoding="utf-8")).get("kind")
        except (OSError, ValueError, AttributeError):
            return None
    return None


def write_manifest(
    directory: str | Path,
    kind: str,
    *,
    model: Mapping[str, Any] | None = None,
    inputs: Iterable[str | Path | InputRef] = (),
    params: Mapping[str, Any] | None = None,
    summary: Mapping[str, Any] | None = None,
) -> Manifest:
    """Write ``directory/manifest.json`` atomically and return it. Call it after every other file.

    ``inputs`` are paths (files or directories) the stage read; they are stored relative to
    ``directory`` with a fingerprint, and with their kind when they are zutis artefacts. A stage
    that has a cheaper fingerprint of its own (e.g. of millions of images it already listed) passes
    ready :class:`InputRef` objects instead, with paths already relative to ``directory``.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown artefact kind {kind!r}")
    directory = Path(directory)
    refs = [
        p if isinstance(p, InputRef) else InputRef(relative_to(directory, p), fingerprint(p), _kind_of(Path(p)))
        for p in inputs
    ]
    manifest = Manifest(
        kind=kind,
        schema=KINDS[kind][0],
        created_by=f"zutis {__version__}",
        created_at=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        model=dict(model) if model is not None else None,
        inputs=refs,
        params=dict(params or {}),
        summary=dict(summary or {}),
        root=directory,
    )
    atomic_write_json(directory / MANIFEST_NAME, manifest.to_json())
    clear_unfinished_mark(directory)
    return manifest


def _describe(kinds: Sequence[str]) -> str:
    return " or ".join(f"{k} (written by `{KINDS[k][1]}`)" if k in KINDS else k for k in kinds)


def read_manifest(path: str | Path, kind: str | Sequence[str] | None = None) -> Manifest:
    """Read and validate the manifest of an artefact directory (or of ``manifest.json`` itself).

    Raises :class:`ArtefactError`, naming the file, when the directory or manifest is missing,
    the JSON is malformed, the kind is not one of ``kind``, or the schema is newer than this
    version of zutis reads.
    """
    path = Path(path)
    root = path.parent if path.name == MANIFEST_NAME and path.is_file() else path
    wanted = [kind] if isinstance(kind, str) else list(kind or [])
    expected = f"; expected a {_describe(wanted)} directory" if wanted else ""
    if not root.exists():
        raise ArtefactError(f"{root}: no such directory{expected}")
    if not root.is_dir():
        raise ArtefactError(f"{root}: is a file, not an artefact directory{expected}")
    file = root / MANIFEST_NAME
    if not file.is_file():
        raise ArtefactError(
            f"{root}: has no {MANIFEST_NAME}, so it is not a finished zutis artefact{expected}"
        )
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ArtefactError(f"{file}: is not UTF-8 text ({exc.reason}); the artefact is corrupt") from None
    except json.JSONDecodeError as exc:
        raise ArtefactError(
            f"{file}: is not valid JSON (line {exc.lineno}: {exc.msg}); the artefact is corrupt"
        ) from None
    if not isinstance(data, dict):
        raise ArtefactError(f"{file}: is not a zutis manifest (top level is not an object)")
    missing = [k for k in ("kind", "schema", "created_by") if k not in data]
    if missing:
        raise ArtefactError(f"{file}: is not a zutis manifest (missing {', '.join(missing)})")
    writer = KINDS[data["kind"]][1] if isinstance(data["kind"], str) and data["kind"] in KINDS else None
    remedy = "the manifest is corrupt" + (f": make the artefact again with `{writer}` into a new -o directory"
                                          if writer else "")
    _check_fields(file, data, _COMMON_FIELDS, remedy, absent_too=False)
    found = data["kind"]
    if wanted and found not in wanted:
        raise ArtefactError(f"{root}: is a {found} artefact{expected}")
    if found not in KINDS:
        raise ArtefactError(f"{file}: unknown artefact kind {found!r}; it was written by {data['created_by']}")
    schema = data["schema"]
    current = KINDS[found][0]
    if not _is_int(schema) or schema < 1:
        raise ArtefactError(f"{file}: invalid schema version {schema!r} (field 'schema' must be an integer >= 1); "
                            f"{remedy}")
    if schema > current:
        raise ArtefactError(
            f"{file}: {found} schema {schema} was written by {data['created_by']}, newer than this "
            f"zutis {__version__} reads (schema {current}); upgrade zutis"
        )
    _check_fields(file, data, FIELDS.get(found, {}), remedy, absent_too=True)
    inputs = _check_inputs(file, data.get("inputs", []), remedy)
    return Manifest(
        kind=found,
        schema=schema,
        created_by=data["created_by"],
        created_at=data.get("created_at", ""),
        model=data.get("model"),
        inputs=inputs,
        params=data.get("params", {}),
        summary=data.get("summary", {}),
        root=root,
    )


def norm_model_name(name: Any) -> str:
    """A model name with ``/`` as ``-`` (``ViT-B/16`` = ``ViT-B-16``)."""
    return str(name or "").replace("/", "-")


def same_model(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two manifest model records name the same network and the same weights.

    Names compare with ``/`` and ``-`` alike (``ViT-B/16`` = ``ViT-B-16``). Weights in local files
    compare by content fingerprint when both records have one (a moved checkpoint is the same
    model); otherwise the ``pretrained`` values must be equal. Precision and image size are not
    part of the identity.
    """
    if norm_model_name(a.get("name")) != norm_model_name(b.get("name")):
        return False
    fa, fb = a.get("weights_fingerprint"), b.get("weights_fingerprint")
    if fa and fb:
        return fa == fb
    pa, pb = str(a.get("pretrained", "")), str(b.get("pretrained", ""))
    if pa.lower() in ("none", "builtin") or pb.lower() in ("none", "builtin"):
        return pa.lower() == pb.lower()
    return pa == pb
