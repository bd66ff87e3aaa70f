"""Splitting an image collection into N shards for N independent jobs (cluster arrays, torchrun).

A shard is written ``I/N`` with ``0 <= I < N``. An image belongs to shard
``blake2b(absolute path) mod N`` (:func:`shard_of`): the assignment depends on the path alone, so it
is stable when images are added and the same on every machine that sees the same paths. Without an
explicit ``--shard``, :func:`shard_from_environment` reads a SLURM array task or a torchrun rank.
A sharded stage writes into ``OUTPUT/shard-I-of-N`` (:func:`shard_dir_name`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Mapping, Sequence

from zutiscli.errors import UsageError

__all__ = ["parse_shard", "shard_from_environment", "shard_of", "shard_entries", "shard_dir_name", "shard_output", "check_shard",
           "distinct_directories"]


def check_shard(shard: tuple[int, int], option: str = "--shard") -> None:
    """Refuse a shard outside ``0 <= I < N`` (a :class:`UsageError` naming ``option``)."""
    index, count = shard
    if count < 1 or not 0 <= index < count:
        raise UsageError(f"{option} {index}/{count}: need 0 <= I < N")


def parse_shard(text: str) -> tuple[int, int]:
    """``"3/8"`` -> ``(3, 8)``; I is 0-based."""
    try:
        left, right = text.split("/")
        shard = (int(left), int(right))
    except ValueError:
        raise UsageError(f"--shard {text!r}: expected I/N, e.g. 0/8") from None
    if shard[1] < 1 or not 0 <= shard[0] < shard[1]:
        raise UsageError(f"--shard {text}: need 0 <= I < N")
    return shard


def shard_from_environment(environ: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """The shard implied by a SLURM array task or a torchrun rank, if any."""
    env = os.environ if environ is None else environ
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        count = int(env["SLURM_ARRAY_TASK_COUNT"])
        index = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
        if count > 1:
            if not 0 <= index < count:
                raise UsageError(
                    f"SLURM array task {env['SLURM_ARRAY_TASK_ID']} is outside 0..{count - 1} after "
                    f"subtracting SLURM_ARRAY_TASK_MIN; pass --shard I/N explicitly"
                )
            return index, count
    if int(env.get("WORLD_SIZE", "1")) > 1 and "RANK" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"])
    return None


def shard_of(path: str | Path, count: int) -> int:
    """Shard number of an image: a hash of its absolute path, modulo ``count`` (stable under appends)."""
    digest = hashlib.blake2b(os.path.abspath(path).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % count


def shard_entries(entries: Sequence[tuple[str, str]], shard: tuple[int, int] | None) -> list[tuple[str, str]]:
    """The ``(path, note)`` pairs of ``shard`` (all of them when None or N = 1), e.g. the inputs of a
    listing that name no readable file, which each shard reports for its own paths."""
    if shard is None or shard[1] <= 1:
        return list(entries)
    return [(path, note) for path, note in entries if shard_of(path, shard[1]) == shard[0]]


def shard_dir_name(shard: tuple[int, int]) -> str:
    """``(i, n)`` -> ``"shard-i-of-n"``, the sub-directory a sharded run writes into."""
    return f"shard-{shard[0]}-of-{shard[1]}"


def distinct_directories(directories: Sequence[str | Path], what: str, example: str) -> list[Path]:
    """The directories to merge, each given once: a one-line :class:`UsageError` for none given
    (``example`` shows what to give) or for one given twice (under any name, links resolved);
    ``what`` names them (``"index"``, ``"shard directory"``)."""
    if not directories:
        raise UsageError(f"give the {what} directories to merge (e.g. {example})")
    seen: dict[str, Path] = {}
    for directory in map(Path, directories):
        key = os.path.realpath(directory)
        if key in seen:
            raise UsageError(f"{directory}: the same {what} is given twice (also as {seen[key]}); give each {what} once")
        seen[key] = directory
    return [Path(d) for d in directories]


def shard_output(output: str | Path | None, shard: tuple[int, int], stage: str) -> Path:
    """Where shard ``(i, n)`` of a sharded ``stage`` run writes: ``output/shard-i-of-n``, created by
    the caller. ``output`` is required (each shard's job would otherwise number a run directory of
    its own) and may hold the other shards, but must not be a finished artefact itself; both are
    one-line errors naming the directory."""
    from zutiscli.artefacts.manifest import MANIFEST_NAME
    from zutiscli.artefacts.rundir import check_output_dir
    from zutiscli.errors import ArtefactError

    if output is None:
        raise UsageError(f"a sharded run (shard {shard[0]}/{shard[1]}) needs -o DIR: every shard writes "
                         f"into DIR/shard-I-of-N; `zutis {stage} merge` joins them")
    parent, _ = check_output_dir(output, stage, resumable=True)
    if (parent / MANIFEST_NAME).is_file():
        raise ArtefactError(f"{parent}: is a finished artefact, not the directory of a sharded run; "
                            f"choose a new -o directory")
    return parent / shard_dir_name(shard)
