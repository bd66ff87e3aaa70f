"""The masks' features of a `zutis cluster` run, committed as the embedding goes, so that a killed
run's rerun embeds only the rest.

In the clusters directory, while the run goes (removed when its manifest is written)::

    parts/run.json        what decides the features: the pseudo-labels' fingerprint, the model,
                          the features' kind, view size, margin and fill, the precision
    parts/NNNNNN.npy      (n, D) float16: the features of the part's masks, in the order of its rows
    parts/NNNNNN.jsonl    one row per image whose masks are all embedded: {"path" (relative to the
                          directory), "ids": the pseudo-labels' annotation ids of its masks}

A part's ``.npy`` is written before its ``.jsonl`` (each atomically), so a row is never without
its features. The features are stored as ``features.npy`` stores them (float16), and the run
clusters the float16 values in any case (:func:`zutiscli.pipeline.cluster._rounded`): a resumed run
clusters what an uninterrupted one does, up to the batches the encoder saw.

With ``--stuff-k``, the stuff samples (:mod:`zutiscli.engine.stuff_features`) are committed the same
way under ``stuff/`` (removed with ``parts/``)::

    stuff/parts/run.json      what decides the samples: the pseudo-labels' fingerprint, the model, the
                              layer, patches per image, cover, seed and precision
    stuff/parts/NNNNNN.npy    (n, D) float32: the sampled patches' embeddings, in the order of its rows
    stuff/parts/NNNNNN.jsonl  one row per image: {"path" (relative to stuff/), "grid": [rows, columns],
                              "cells": the patches drawn}

kept in float32, as the run clusters them, so a resumed run clusters the very vectors an
uninterrupted one does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from zutiscli.artefacts.atomic import atomic_write_npy
from zutiscli.artefacts.manifest import relative_to
from zutiscli.artefacts.parts import PARTS_DIR, committed_parts, count_parts, iter_parts, write_part
from zutiscli.errors import ArtefactError

__all__ = ["STUFF_DIR", "FeatureCommits", "StuffCommits", "committed_features", "committed_stuff"]

#: In the clusters directory while a run with ``--stuff-k`` goes: the stuff samples' parts.
STUFF_DIR = "stuff"


def _write_part(directory: Path, number: int, rows: Sequence[dict[str, Any]], array: np.ndarray) -> None:
    """Commit part ``number`` of ``directory``: its ``.npy`` (``array``, the rows' features in order)
    first, then its ``.jsonl`` rows, each atomically, so a row is never without its features."""
    atomic_write_npy(directory / PARTS_DIR / f"{number:06d}.npy", array)
    write_part(directory, number, rows)


def committed_features(out: Path, identity: dict[str, Any], position_of: dict[int, int]) -> dict[int, np.ndarray]:
    """``position -> (D,) float16 feature`` that an interrupted run into ``out`` committed, for the
    masks (annotation id -> position, ``position_of``) of these pseudo-labels; nothing when it
    committed nothing. Raises :class:`ArtefactError` when it was run with other
    settings than ``identity`` (naming the first), or a part is damaged."""
    if not committed_parts(out, identity, "cluster"):
        return {}
    features: dict[int, np.ndarray] = {}
    for part, rows in iter_parts(out, "mask-features row"):
        try:
            array = np.load(part.with_suffix(".npy"), allow_pickle=False)
            ids = [[int(i) for i in row["ids"]] for row in rows]
            if array.ndim != 2 or len(array) != sum(map(len, ids)):
                raise ValueError
        except (OSError, ValueError, KeyError, TypeError):
            raise ArtefactError(f"{part.with_suffix('.npy')}: does not hold the features of {part.name}'s masks; "
                                f"delete both files and rerun to embed their images again") from None
        offset = 0
        for row, row_ids in zip(rows, ids):
            for annotation in row_ids:
                if annotation in position_of:
                    features[position_of[annotation]] = array[offset]
                offset += 1
    return features


class FeatureCommits:
    """``embedded(positions, features)`` for :func:`zutiscli.engine.mask_features.embed_masks`: keeps
    the features of the masks as they come and commits, every ``chunk`` masks or more, those of the
    images whose masks are all embedded (one part).

    Args:
        out: the clusters directory (its ``parts/`` exists).
        groups: the images still to embed (:func:`zutiscli.engine.mask_features.group_by_image`).
        annotation_ids: the annotation id of each mask, by position.
        chunk: masks per part, at least.
    """

    def __init__(self, out: Path, groups: Sequence[Any], annotation_ids: Sequence[int], chunk: int):
        self.out, self.chunk, self.annotation_ids = out, chunk, annotation_ids
        self.image_of = {position: number for number, group in enumerate(groups) for position in group.positions}
        self.left = [len(group.positions) for group in groups]
        self.groups = groups
        self.buffer: dict[int, np.ndarray] = {}
        self.complete: list[int] = []  # images whose masks are all in the buffer
        self.waiting = 0  # masks of those images
        self.part = count_parts(out)

    def __call__(self, positions: Sequence[int], features: np.ndarray) -> None:
        for position, feature in zip(positions, features):
            self.buffer[position] = feature.astype(np.float16)
            number = self.image_of[position]
            self.left[number] -= 1
            if not self.left[number]:
                self.complete.append(number)
                self.waiting += len(self.groups[number].positions)
        if self.waiting >= self.chunk:
            self.commit()

    def commit(self) -> None:
        """Commit the complete images' features as one part (nothing when there are none)."""
        if not self.complete:
            return
        rows, rows_features = [], []
        for number in self.complete:
            group = self.groups[number]
            rows.append({"path": relative_to(self.out, group.path),
                         "ids": [int(self.annotation_ids[p]) for p in group.positions]})
            rows_features.extend(self.buffer.pop(p) for p in group.positions)
        _write_part(self.out, self.part, rows, np.stack(rows_features))
        self.part += 1
        self.complete, self.waiting = [], 0


def committed_stuff(directory: Path, identity: dict[str, Any], index_of: dict[str, int]) -> dict[int, Any]:
    """``image position -> (grid, cells, (n, D) float32 features)`` that an interrupted run committed
    under ``directory`` (the run's ``stuff/``), for the images (path relative to ``directory`` ->
    position, ``index_of``); nothing when it committed nothing. Raises :class:`ArtefactError` when
    the samples were drawn with other settings than ``identity`` (naming the first) or a part is
    damaged."""
    if not committed_parts(directory, identity, "cluster"):
        return {}
    found: dict[int, Any] = {}
    for part, rows in iter_parts(directory, "stuff-samples row"):
        try:
            array = np.load(part.with_suffix(".npy"), allow_pickle=False)
            cells = [np.asarray(row["cells"], dtype=np.int64).reshape(-1) for row in rows]
            grids = [(int(row["grid"][0]), int(row["grid"][1])) for row in rows]
            if array.ndim != 2 or array.dtype != np.float32 or len(array) != sum(map(len, cells)):
                raise ValueError
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            raise ArtefactError(f"{part.with_suffix('.npy')}: does not hold the stuff samples of {part.name}'s "
                                f"images; delete both files and rerun to sample their images again") from None
        offset = 0
        for row, grid, chosen in zip(rows, grids, cells):
            if row["path"] in index_of:
                found[index_of[row["path"]]] = (grid, chosen, array[offset:offset + len(chosen)])
            offset += len(chosen)
    return found


class StuffCommits:
    """``embedded(new)`` for :func:`zutiscli.engine.stuff_features.stuff_samples`: keeps the images'
    samples as they come and commits them, every ``chunk`` images or more, as one part of
    ``directory`` (the run's ``stuff/``, its ``parts/`` made); ``paths`` names the image of each
    position."""

    def __init__(self, directory: Path, paths: Sequence[Path], chunk: int):
        self.directory, self.paths, self.chunk = directory, paths, chunk
        self.waiting: list[tuple[int, Any]] = []
        self.part = count_parts(directory)

    def __call__(self, new: Sequence[tuple[int, Any]]) -> None:
        self.waiting.extend(new)
        if len(self.waiting) >= self.chunk:
            self.commit()

    def commit(self) -> None:
        """Commit the waiting images' samples as one part (nothing when none wait)."""
        if not self.waiting:
            return
        rows = [{"path": relative_to(self.directory, self.paths[index]), "grid": [int(v) for v in grid],
                 "cells": [int(c) for c in cells]} for index, (grid, cells, _) in self.waiting]
        features = np.concatenate([np.asarray(rows_, dtype=np.float32) for _, (_, _, rows_) in self.waiting])
        _write_part(self.directory, self.part, rows, features)
        self.part += 1
        self.waiting = []
