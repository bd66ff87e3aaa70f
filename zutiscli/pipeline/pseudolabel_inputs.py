"""What ``zutis pseudolabel`` reads: archives (each mask named by its archive), or a pile of images
with no names (an index's images, or image files, directories and globs), as MaskCut/U2Seg and
MaskDistill discover objects over a whole collection.

Every source becomes the same thing, class name -> images in a canonical order, so the stage
treats them alike: archives keep their classes and ranks; a pile is one class,
:data:`UNNAMED` ("object"), its images in the order of their absolute paths (the order of
``zutis index``'s listing), so that a sharded run merges into the unsharded run's directory.
The masks of a pile are named later, by ``zutis cluster``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from zutiscli.artefacts.archives import ArchiveHit, read_archives
from zutiscli.artefacts.manifest import MANIFEST_NAME, InputRef, read_manifest, relative_to, resolve_relative
from zutiscli.errors import UsageError, ZutisError

#: The one class of a pile's masks (COCO category 1 of its ``pseudolabels.json``).
UNNAMED = "object"
#: Manifest kinds a directory given alone may be, and the source each makes.
SOURCE_KINDS = {"zutis.archives": "archives", "zutis.index": "index"}


@dataclass
class PseudolabelInputs:
    """The images of a run. ``archives``: class name -> images (``ArchiveHit``, paths absolute),
    canonical order. ``source``: ``archives``, ``index`` or ``images``. ``model_dir``: the
    directory whose manifest names the default feature model (archives, index), else None.
    ``sources``: the inputs as given. ``problems``: ``(entry, reason)`` for what a listing named
    but could not read (broken links...), skipped."""

    archives: dict[str, list[ArchiveHit]]
    source: str
    model_dir: Path | None
    sources: list[str]
    problems: list[tuple[str, str]] = field(default_factory=list)

    @property
    def named(self) -> bool:
        """Whether the masks are named by archives (else a pile: one unnamed class)."""
        return self.source == "archives"

    def refs(self, out: Path) -> list[Path | InputRef]:
        """The manifest's ``inputs``: an archives or index directory itself (fingerprinted as an
        artefact); for image sources, each source with one fingerprint of the whole listing."""
        if self.model_dir is not None:
            return [self.model_dir]
        digest = hashlib.blake2b(digest_size=16)
        for hit in self.archives[UNNAMED]:
            digest.update(str(hit.path).encode("utf-8") + b"\n")
        return [InputRef(path=relative_to(out, source), fingerprint=f"listing-blake2b:{digest.hexdigest()}")
                for source in self.sources]

    def describe(self) -> tuple[str, str]:
        """``(path, kind)`` for a plan's reads: the directory and its kind, or the image sources."""
        if self.model_dir is not None:
            return str(self.model_dir), f"zutis.{self.source}"
        return ", ".join(self.sources), "image files, unnamed"


def pile(paths: Sequence[Path]) -> dict[str, list[ArchiveHit]]:
    """The unnamed class over ``paths``: absolute, distinct, in the order of their posix strings."""
    absolute = sorted({Path(os.path.abspath(path)) for path in paths}, key=lambda path: path.as_posix())
    return {UNNAMED: [ArchiveHit(path, 0.0, 0, row) for row, path in enumerate(absolute)]}


def _index_images(directory: Path) -> list[Path]:
    from zutiscli.artefacts.index_store import IndexReader

    reader = IndexReader(directory)
    table = reader.table()
    return [resolve_relative(directory, record.path) for record, active in zip(table.records(), table.active)
            if active]


def read_inputs(inputs: Sequence[str | Path]) -> PseudolabelInputs:
    """Resolve the command's inputs (see the module docstring).

    One directory with a manifest is read as what it is (archives or an index; another zutis
    artefact is refused); anything else is listed as images (:func:`discover_images`).

    Raises:
        UsageError: no input, or an artefact directory given with other inputs.
        ArtefactError: a zutis directory of another kind (:func:`read_manifest`'s message), or an
            unreadable artefact.
        ZutisError: sources that name no image, or archives/an index that hold none.
    """
    from zutiscli.data.images import IMAGE_EXTENSIONS, discover_images

    sources = [os.fspath(source) for source in inputs]
    if not sources:
        raise UsageError("give an archives directory (zutis retrieve), an index (zutis index) or images to "
                         "discover objects in")
    artefacts = [source for source in sources if (Path(source) / MANIFEST_NAME).is_file()]
    if artefacts and len(sources) > 1:
        raise UsageError(f"{artefacts[0]}: a zutis directory is read alone; give it as the only input")
    if artefacts:
        directory = Path(artefacts[0])
        source = SOURCE_KINDS[read_manifest(directory, tuple(SOURCE_KINDS)).kind]
        archives = read_archives(directory) if source == "archives" else pile(_index_images(directory))
        if not any(archives.values()):
            raise ZutisError(f"{directory}: the {'archives' if source == 'archives' else 'index'} hold no images")
        return PseudolabelInputs(archives, source, directory, sources)
    found = discover_images(sources)
    if not found.paths:
        raise ZutisError(f"{', '.join(sources)}: no image files found (looked for "
                         f"{', '.join(sorted(IMAGE_EXTENSIONS))}); give image files or directories")
    return PseudolabelInputs(pile(found.paths), "images", None, sources, list(found.problems))


def model_record(model_dir: Path | None) -> dict[str, Any]:
    """The ``model`` record of the archives' or index's manifest (empty for image sources)."""
    if model_dir is None:
        return {}
    return dict(read_manifest(model_dir, tuple(SOURCE_KINDS)).model or {})


__all__ = ["PseudolabelInputs", "UNNAMED", "model_record", "pile", "read_inputs"]
