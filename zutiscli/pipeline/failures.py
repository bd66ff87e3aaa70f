"""Inputs a stage could not read: one rule for what a run says about them.

``zutis index``, ``zutis pseudolabel`` and ``zutis predict`` skip an input they cannot read (a
missing, empty, corrupt or unreadable image, a ``--from-list`` entry that names nothing, a
symbolic link that leads nowhere) and go on with the rest. Each lists what it skipped in its
directory's ``failed.jsonl`` (one JSON object a line, with ``path`` and ``reason``) and, once the
inputs are counted and before its manifest is written, calls :func:`check_failures`:

* every input failed: nothing is left to build on, so the stage stops with one line (exit status
  1) saying how many failed, the first and why, and where the list is; no manifest is written, so
  no finished artefact claims a result. Rerunning the same command (``-o`` the same directory)
  tries the failed inputs again.
* some failed: one warning, which ``--quiet`` does not hide: how many of how many, the first few
  and where the list is; when more than half failed it says that most did.

A run never prints a line per failure: 10,000 missing paths make one line. :func:`summary` is
that line, for the places that only report (a dry run's notes, an in-memory prediction's log).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Sequence

from zutiscli.errors import ZutisError

#: Failed inputs named in one line; the others are in the list file.
SHOWN = 3

__all__ = ["SHOWN", "check_failures", "summary"]


def _examples(failures: Sequence[tuple[str, str]]) -> str:
    """``first: its reason; second, third, ...``: the first failures, the first with its reason."""
    (path, reason), others = failures[0], [str(p) for p, _ in failures[1:SHOWN]]
    text = f"{path}: {reason}"
    if others:
        text += "; " + ", ".join(others)
    return text + (", ..." if len(failures) > SHOWN else "")


def summary(failures: Sequence[tuple[str, str]], total: int, listing: str | Path | None = None,
            what: str = "images") -> str:
    """One line about ``failures`` (``(path, reason)`` pairs) among ``total`` inputs: how many, the
    first few, and where the full list is (``listing``, when one was written)."""
    count = len(failures)
    where = f"; the list is in {listing}" if listing is not None else ""
    if count > total / 2:
        return (f"most {what} could not be read: {count:,} of {total:,} were skipped ({_examples(failures)}){where}; "
                f"check the inputs")
    return f"{count:,} of {total:,} {what} could not be read and were skipped ({_examples(failures)}){where}"


def check_failures(failures: Sequence[tuple[str, str]], total: int, listing: str | Path | None, *,
                   what: str = "images", warn: Callable[[str], None] | None = None) -> None:
    """Apply the rule to a stage's ``failures`` among its ``total`` inputs (see the module's text).

    ``listing`` is the ``failed.jsonl`` that lists them all (``None`` when none was written: then
    nothing was). Raises :class:`ZutisError` when every input failed; otherwise, when some did,
    gives :func:`summary` to ``warn`` (default: :func:`warnings.warn`). Call it before writing the
    stage's manifest.
    """
    if not failures:
        return
    if len(failures) >= total:
        path, reason = failures[0]
        if listing is None:
            if len(failures) == 1:
                raise ZutisError(f"{path}: {reason}; no image could be read, nothing was written")
            raise ZutisError(f"none of the {len(failures):,} {what} could be read (first: {path}: {reason}); "
                             f"nothing was written")
        raise ZutisError(f"none of the {len(failures):,} {what} could be read (first: {path}: {reason}); "
                         f"the list is in {listing}; nothing was finished: fix the files or their paths and rerun")
    send_warning(warn, summary(failures, total, listing, what), stacklevel=2)


def send_warning(warn: Callable[[str], None] | None, message: str, stacklevel: int = 1) -> None:
    """Give a stage's warning to ``warn`` (the command line's one ``warning:`` line), else to
    :func:`warnings.warn` with ``stacklevel`` counted from the caller of this function."""
    if warn is not None:
        warn(message)
    else:
        warnings.warn(message, stacklevel=stacklevel + 1)
