"""Class names as users give them: ``--classes cat,dog`` or ``--classes-file FILE``.

A classes file holds one class per line, UTF-8 (a byte-order mark is accepted)::

    # ImageNet-S style list; blank lines and lines starting with '#' are ignored
    cat
    parking<TAB>parking lot

A line is ``name`` or ``name<TAB>search phrase``. The *name* is what an archive, a label and a
prediction are called; the *phrase* is what the text encoder embeds (it defaults to the name), as
ReCo does for Cityscapes (``parking`` retrieved with "parking lot"). Names and phrases are stripped
of surrounding white space and normalised to Unicode NFC, so ``café`` typed either way is one class.

Any Unicode name is valid (``café``, ``猫``, ``AC/DC``) except one holding control characters
(tab, newline, NUL, ...) or line separators: those cannot round-trip through a classes file.
Per-class files are named with :func:`safe_filename` / :func:`safe_filenames`.
"""

from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from zutiscli.errors import UsageError, ZutisError

#: Unicode categories refused in names and phrases: controls, surrogates, line/paragraph separators.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})
#: Characters replaced in file names: path separators and what Windows refuses.
_UNSAFE_IN_FILENAMES = frozenset('/\\<>:"|?*')
_WINDOWS_RESERVED = frozenset(
    {"con", "prn", "aux", "nul"} | {f"com{i}" for i in range(1, 10)} | {f"lpt{i}" for i in range(1, 10)}
)
#: Longest readable stem in UTF-8 bytes (file systems allow 255; room is left for suffixes).
_MAX_STEM_BYTES = 120


@dataclass(frozen=True)
class ClassQuery:
    """One class: ``name`` (what the archive is called) and ``phrase`` (the text that is embedded)."""

    name: str
    phrase: str


def _bad_character(text: str) -> str | None:
    """The first forbidden character of ``text`` as a readable escape (``'\\t'``), or None."""
    for char in text:
        if unicodedata.category(char) in _FORBIDDEN_CATEGORIES:
            return repr(char)
    return None


def _clean(text: str) -> str:
    return unicodedata.normalize("NFC", text.strip())


def _check_unique(queries: list[ClassQuery], where: list[str], source: str) -> None:
    seen: dict[str, int] = {}
    for position, query in enumerate(queries):
        if query.name in seen:
            first = seen[query.name]
            raise ZutisError(
                f"duplicate class name {query.name!r} ({where[first]} and {where[position]} of {source}); "
                f"give each class once"
            )
        seen[query.name] = position


def _from_option(classes: str) -> list[ClassQuery]:
    queries: list[ClassQuery] = []
    where: list[str] = []
    for position, item in enumerate(classes.split(","), start=1):
        name = _clean(item)
        if not name:
            continue  # "cat,dog," and "cat,,dog" are forgiven; a list of nothing is not (below)
        bad = _bad_character(name)
        if bad:
            raise UsageError(f"--classes: class name {name!r} contains the control character {bad}; remove it")
        queries.append(ClassQuery(name, name))
        where.append(f"item {position}")
    if not queries:
        raise UsageError(f"--classes {classes!r} names no class; give names separated by commas, e.g. --classes cat,dog")
    try:
        _check_unique(queries, where, "--classes")
    except ZutisError as exc:
        raise UsageError(str(exc)) from None
    return queries


def read_classes_file(path: str | Path) -> list[ClassQuery]:
    """Parse a classes file (format in the module docstring).

    Raises :class:`ZutisError`, naming the file and line, for a missing or undecodable file, a
    malformed line, a duplicate name, or a file with no class at all.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ZutisError(f"{path}: no such classes file") from None
    except IsADirectoryError:
        raise ZutisError(f"{path}: is a directory, not a classes file") from None
    except OSError as exc:
        raise ZutisError(f"{path}: cannot read the classes file ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ZutisError(f"{path}: line {line} is not UTF-8 text ({exc.reason}); save the classes file as UTF-8") from None
    queries: list[ClassQuery] = []
    where: list[str] = []
    # Split on \n only: str.splitlines() would also split on \x0b, \x1c, U+2028, ..., hiding them.
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw[:-1] if raw.endswith("\r") else raw
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) > 2:
            raise ZutisError(f"{path}: line {number} has {len(parts) - 1} tabs; write 'name' or 'name<TAB>search phrase'")
        name = _clean(parts[0])
        phrase = _clean(parts[1]) if len(parts) == 2 else ""
        if not name:
            raise ZutisError(f"{path}: line {number} has a search phrase but no class name before the tab")
        for label, value in (("class name", name), ("search phrase", phrase)):
            bad = _bad_character(value)
            if bad:
                raise ZutisError(f"{path}: line {number}: the {label} {value!r} contains the control character {bad}")
        queries.append(ClassQuery(name, phrase or name))
        where.append(f"line {number}")
    if not queries:
        raise ZutisError(f"{path}: the classes file names no class (only blank lines and # comments)")
    _check_unique(queries, where, str(path))
    return queries


def parse_classes(classes: str | None, classes_file: str | Path | None) -> list[ClassQuery]:
    """The classes of a command: from ``--classes a,b,c`` or from ``--classes-file FILE``, exactly one.

    Returns the classes in the order given, names stripped and NFC-normalised; a ``--classes``
    class is its own phrase. Raises :class:`UsageError` when neither or both are given or the
    ``--classes`` list is unusable, :class:`ZutisError` for a bad classes file.
    """
    if classes is not None and classes_file is not None:
        raise UsageError("--classes and --classes-file exclude each other; give one of them")
    if classes is None and classes_file is None:
        raise UsageError("no classes given; use --classes cat,dog or --classes-file FILE (one class per line)")
    if classes is not None:
        return _from_option(classes)
    return read_classes_file(classes_file)  # type: ignore[arg-type]


def with_stuff(queries: Sequence[ClassQuery], stuff: Sequence[str]) -> list[ClassQuery]:
    """``queries`` followed by each name of ``stuff`` not among them (by case-folded name), as its own phrase."""
    names = {q.name.casefold() for q in queries}
    added = [ClassQuery(name, name) for name in dict.fromkeys(map(_clean, stuff)) if name and name.casefold() not in names]
    return [*queries, *added]


def _digest(name: str) -> str:
    return hashlib.blake2b(name.encode("utf-8"), digest_size=4).hexdigest()


def safe_filename(name: str) -> str:
    """A readable file-name stem for a class name, without path separators or unsafe characters.

    A name that is already safe is returned as it is (``"cat"``, ``"traffic light"``, ``"猫"``).
    Otherwise unsafe characters (``/ \\ < > : " | ? *``, controls) become ``_``, leading dots and
    trailing dots or spaces are replaced, over-long names are cut at a character boundary, and an
    8-hex-digit hash of the original name is appended (``"AC/DC"`` -> ``"AC_DC-1f2e3d4c"``), so two
    different names never share a stem (up to case; see :func:`safe_filenames`). Add the extension.
    """
    name = unicodedata.normalize("NFC", name)
    chars = ["_" if c in _UNSAFE_IN_FILENAMES or unicodedata.category(c)[0] == "C" or c in "\u2028\u2029" else c
             for c in name]
    stem = "".join(chars)
    if stem.startswith("."):
        stem = "_" + stem[1:]
    if stem.endswith((".", " ")):
        stem = stem[:-1] + "_"
    encoded = stem.encode("utf-8")
    if len(encoded) > _MAX_STEM_BYTES:
        stem = encoded[:_MAX_STEM_BYTES].decode("utf-8", errors="ignore")
    if not stem:
        stem = "_"
    if stem.split(".")[0].lower() in _WINDOWS_RESERVED:
        stem = "_" + stem
    return stem if stem == name else f"{stem}-{_digest(name)}"


def safe_filenames(names: Sequence[str]) -> list[str]:
    """:func:`safe_filename` for a list of names, unique even on case-insensitive file systems.

    Stems of different names that collide when case is ignored (``"Cat"`` and ``"cat"``) all get
    the hash suffix, so a name's stem depends only on the set of names, not on their order. A name
    given several times gets ``-2``, ``-3``, ... on its later occurrences (in order).
    """
    normal = [unicodedata.normalize("NFC", name) for name in names]
    stems = {name: safe_filename(name) for name in normal}
    folded: dict[str, int] = {}
    for stem in stems.values():
        folded[stem.casefold()] = folded.get(stem.casefold(), 0) + 1
    for name, stem in stems.items():
        if folded[stem.casefold()] > 1 and not stem.endswith(_digest(name)):
            stems[name] = f"{stem}-{_digest(name)}"
    out: list[str] = []
    taken: set[str] = set()
    for name in normal:
        stem, number = stems[name], 1
        while stem.casefold() in taken:
            number += 1
            stem = f"{stems[name]}-{number}"
        taken.add(stem.casefold())
        out.append(stem)
    return out
