"""ReCo's class references (kind ``zutis.references``): what ``zutis cosegment`` writes and ``zutis
predict --method reco`` reads.

A references directory holds:

- ``references.json``: ``{"grid": [h, w], "size": S, "features": "tokens" | "keys", "classes":
  [{"name", "phrase", "context", "images": [{"path", "seed": [row, col], "support"}, ...]}, ...]}``:
  for each class (the context
  classes flagged ``"context": true``), its co-segmented archive images (paths relative to the
  directory), the seed patch of each on the ``h x w`` grid of the ``S`` px input, and the seed's
  support (mean best-match similarity over the archive, [-1, 1]);
- ``references.npy``: ``(K, C)`` float32, row ``i`` the L2-normalised reference embedding of class ``i``;
- ``classes/NAME.json``: the same for one class, written as each class finishes (a rerun resumes);
- ``preview/NAME.jpg`` (``--preview``): archive images with the reference's similarity and the seed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zutiscli.artefacts.atomic import atomic_write_json, atomic_write_npy
from zutiscli.artefacts.manifest import read_manifest, resolve_relative
from zutiscli.errors import ArtefactError

KIND = "zutis.references"
REFERENCES_NAME = "references.json"
VECTORS_NAME = "references.npy"
CLASSES_DIR = "classes"
PREVIEW_DIR = "preview"


@dataclass
class ClassReference:
    """One class's co-segmentation: its reference embedding and the seed of each archive image.

    Attributes:
        name, phrase: the class and the text its language gate embedded.
        vector: ``(C,)`` float32, L2-normalised.
        images: ``{"path" (relative to the directory), "seed": [row, col], "support": float}`` each.
        context: a context class (its reference suppresses its regions in the others' co-segmentation).
        settings: what decided the reference (``classes/*.json`` only: a rerun reuses a class made alike).
        grid: ``[h, w]`` patch grid of the seeds.
    """

    name: str
    phrase: str
    vector: np.ndarray
    images: list[dict[str, Any]] = field(default_factory=list)
    context: bool = False
    settings: dict[str, Any] = field(default_factory=dict)
    grid: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "phrase": self.phrase, "context": self.context, "settings": self.settings,
                "grid": self.grid, "vector": [float(v) for v in self.vector], "images": self.images}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ClassReference":
        return cls(str(data["name"]), str(data["phrase"]), np.asarray(data["vector"], dtype=np.float32),
                   list(data["images"]), bool(data.get("context", False)), dict(data.get("settings") or {}),
                   list(data.get("grid") or []))


@dataclass
class References:
    """A read references directory: the classes in order and their ``(K, C)`` embeddings."""

    path: Path
    classes: list[ClassReference]
    grid: tuple[int, int]
    size: int
    model: dict[str, Any]
    features: str = "tokens"  # which last-block features of the encoder the references live among

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def vectors(self) -> np.ndarray:
        """``(K, C)`` float32, row ``i`` = class ``i``."""
        return np.stack([c.vector for c in self.classes]).astype(np.float32)

    def get(self, name: str) -> ClassReference | None:
        """The class called ``name`` (case-folded), or ``None``."""
        wanted = name.casefold()
        return next((c for c in self.classes if c.name.casefold() == wanted), None)


def write_class(out: Path, safe_name: str, reference: ClassReference) -> Path:
    """``classes/SAFE_NAME.json`` of one finished class (atomic)."""
    return atomic_write_json(out / CLASSES_DIR / f"{safe_name}.json", reference.to_json(), indent=None)


def read_class(path: Path) -> ClassReference:
    """One ``classes/*.json`` file; :class:`ArtefactError` naming it when unreadable."""
    try:
        return ClassReference.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtefactError(f"{path}: unreadable class reference ({exc}); delete it to co-segment the class "
                            f"again") from None


def write_references(out: Path, classes: list[ClassReference], grid: tuple[int, int], size: int,
                     features: str = "tokens") -> None:
    """``references.json`` and ``references.npy`` of the finished classes, in order (atomic each)."""
    atomic_write_json(out / REFERENCES_NAME, {
        "grid": list(grid), "size": size, "features": features,
        "classes": [{k: v for k, v in c.to_json().items() if k not in ("vector", "settings", "grid")}
                    for c in classes]})
    atomic_write_npy(out / VECTORS_NAME, np.stack([c.vector for c in classes]).astype(np.float32))


def read_references(directory: str | Path) -> References:
    """Read a finished ``zutis.references`` directory.

    Raises :class:`ArtefactError` (naming the file) when it is not one, or is corrupt.
    """
    manifest = read_manifest(directory, KIND)
    root = Path(manifest.root or directory)
    path = root / REFERENCES_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        vectors = np.load(root / VECTORS_NAME, allow_pickle=False)
        entries = data["classes"]
        if vectors.ndim != 2 or len(vectors) != len(entries):
            raise ValueError(f"{VECTORS_NAME} holds {vectors.shape} vectors for {len(entries)} classes")
        classes = [ClassReference(str(e["name"]), str(e["phrase"]), vectors[i].astype(np.float32),
                                  [dict(image, path=str(resolve_relative(root, image["path"])))
                                   for image in e["images"]], bool(e.get("context", False)))
                   for i, e in enumerate(entries)]
        grid = (int(data["grid"][0]), int(data["grid"][1]))
        return References(root, classes, grid, int(data["size"]), dict(manifest.model or {}),
                          str(data.get("features", "tokens")))
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise ArtefactError(f"{path}: unreadable references ({exc}); the artefact is corrupt") from None
