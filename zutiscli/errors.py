"""Errors a user can cause and fix.

Every exception derived from :class:`ZutisError` is shown to command-line users as one line
(``error: <message>``) and exit status 1, without a traceback (``ZUTIS_DEBUG=1`` shows it).
A message says what is wrong, with which file, and what to do about it.
"""

from __future__ import annotations

from pathlib import Path


class ZutisError(Exception):
    """A problem the user can fix: bad input, missing weights, a wrong kind of artefact."""

    exit_code = 1

    def __reduce__(self):
        # Pickled (to cross from a worker process) with its message and attributes, without
        # calling ``__init__`` again: subclasses take other arguments than the message.
        return _rebuild, (type(self), self.args, self.__dict__)


def _rebuild(kind: type, args: tuple, state: dict) -> ZutisError:
    """A :class:`ZutisError` unpickled: of ``kind``, with message ``args`` and attributes ``state``."""
    error = kind.__new__(kind, *args)
    error.__dict__.update(state)
    return error


class UsageError(ZutisError):
    """Options that contradict each other or cannot be honoured (exit status 2, like Click)."""

    exit_code = 2


class ImageLoadError(ZutisError):
    """An image file that cannot be decoded: missing, empty, truncated, not an image, too large."""

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ArtefactError(ZutisError):
    """An artefact directory or file that is missing, of the wrong kind, or of an unknown schema."""


class ModelError(ZutisError):
    """A model that cannot be built or loaded: unknown name, missing or mismatched weights."""


class DiskFullError(ZutisError):
    """A write that failed because its file system is full (or the user's quota is spent)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        super().__init__(f"{self.path}: cannot be written, no space left on its device; free some space (or choose "
                         f"another -o) and run the same command again: what was already finished is kept")


class DeviceError(ZutisError):
    """A requested device that this machine does not have."""
