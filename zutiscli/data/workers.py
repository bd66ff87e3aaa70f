"""Worker processes, started one way: quiet on Ctrl-C, one thread each, their errors brought home.

Every stage that decodes or generates in other processes (torch DataLoader workers, process
pools) starts them through this module, so that a user meets the same command line whatever
``--workers`` is:

* :func:`quiet_worker` is every worker's initialiser. Ctrl-C reaches all the processes of the
  terminal's process group; a worker ignores it and leaves it to the main process, which stops
  the run, saves what it saves, and reports ``error: interrupted`` once (no traceback per
  worker). A worker also uses one thread (several workers with several threads each would
  oversubscribe the cores).
* :func:`worker_loader` is a torch DataLoader whose workers start with :func:`quiet_worker` and
  hand a :class:`~zutiscli.errors.ZutisError` raised in a worker (an image that cannot be read, a
  corrupt artefact) back to the main process, where it is raised again as itself. torch would
  otherwise re-raise it as a ``RuntimeError`` holding the worker's traceback (it cannot rebuild an
  exception whose constructor takes several arguments), which the command line can only show as
  an internal error. Errors of other kinds (bugs) keep torch's treatment, traceback included.

Process pools (``multiprocessing``, ``concurrent.futures``) pickle a worker's exception and raise
it in the parent themselves; :class:`~zutiscli.errors.ZutisError` pickles with its attributes, so
they need only the initialiser.

:func:`available_cores` says how many cores this process may run on, which default worker and
thread counts start from.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from typing import Any, Callable, Iterator

from zutiscli.errors import ZutisError

__all__ = ["CarriedError", "WorkerTraceback", "as_is", "available_cores", "cores_per_process", "loader_processes",
           "quiet_worker", "worker_loader"]


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. as ``taskset`` or a cluster
    scheduler set it), else the machine's count; at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def cores_per_process() -> int:
    """The cores this process may use (:func:`available_cores`), shared out among the processes that
    torchrun starts on this machine (``LOCAL_WORLD_SIZE``); at least 1."""
    try:
        ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        ranks = 1
    return max(1, available_cores() // ranks)


def loader_processes(workers: int | None) -> int:
    """Data-loading processes of a training run: ``workers`` when given, else one per core of this
    process's share (:func:`cores_per_process`) but one (the training loop's), in 1..8."""
    return workers if workers is not None else max(1, min(8, cores_per_process() - 1))


def quiet_worker(*_: Any) -> None:
    """Initialise a worker process: Ctrl-C is ignored (the main process reports it), SIGTERM ends it
    at once (the main process reports that too), a lost
    connection to the main process is not reported (the main process hung up: it was interrupted,
    or stopped by an error that it reports), and torch, if this process has imported it, uses one
    thread. Takes and ignores any arguments (a DataLoader passes the worker's number)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a forked worker would inherit the command line's handler
    if sys.excepthook is not _report:
        _previous_hook[0] = sys.excepthook
        sys.excepthook = _report
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


_previous_hook: list[Callable[..., Any]] = [sys.excepthook]


def _report(kind: type[BaseException], error: BaseException, trace: Any) -> None:
    # E.g. multiprocessing's thread that hands a tensor's shared memory to the main process, when
    # Ctrl-C stops the main process in the middle of taking it.
    if issubclass(kind, (ConnectionError, EOFError)):
        return
    _previous_hook[0](kind, error, trace)


class WorkerTraceback(Exception):
    """Where in a worker process a carried error was raised (the ``__cause__`` of the error raised
    again in the main process; ``ZUTIS_DEBUG=1`` shows it)."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return "\n" + self.text


class CarriedError:
    """A :class:`ZutisError` raised in a worker, travelling to the main process as a data item."""

    __slots__ = ("error", "where")

    def __init__(self, error: ZutisError, where: str = ""):
        self.error = error
        self.where = where

    def __getstate__(self) -> tuple[ZutisError, str]:
        return self.error, self.where

    def __setstate__(self, state: tuple[ZutisError, str]) -> None:
        self.error, self.where = state

    def reraise(self) -> None:
        """Raise the error in this (the main) process, the worker's traceback as its cause."""
        raise self.error from WorkerTraceback(self.where) if self.where else None


def _carried() -> CarriedError:
    error = sys.exc_info()[1]
    assert isinstance(error, ZutisError)
    return CarriedError(error, "".join(traceback.format_exc()))


def _torch_data() -> Any:
    import torch.utils.data

    return torch.utils.data


class _Items:
    """A map-style dataset whose items are the wrapped one's, or the :class:`CarriedError` it raised."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: Any) -> Any:
        try:
            return self.dataset[index]
        except ZutisError:
            return _carried()


def _stream_class() -> type:
    """``_CarryingStream``: an iterable dataset yielding the wrapped one's items, then the
    :class:`CarriedError` it raised. Made on first use, so that this module imports torch only when
    a loader is built (pool workers import it for :func:`quiet_worker` alone)."""
    made = globals().get("_CarryingStream")
    if made is not None:
        return made

    class _CarryingStream(_torch_data().IterableDataset):
        def __init__(self, inner: Any):
            super().__init__()
            self.inner = inner

        def __iter__(self) -> Iterator[Any]:
            try:
                yield from self.inner
            except ZutisError:
                yield _carried()

    _CarryingStream.__module__ = __name__
    _CarryingStream.__qualname__ = "_CarryingStream"
    globals()["_CarryingStream"] = _CarryingStream
    return _CarryingStream


def __getattr__(name: str) -> Any:
    if name == "_CarryingStream":  # unpickled in a worker process that has not built a loader
        return _stream_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Collate:
    """A collate function that hands a batch's :class:`CarriedError` on instead of collating."""

    def __init__(self, collate: Callable[[Any], Any]):
        self.collate = collate

    def __call__(self, batch: Any) -> Any:
        if isinstance(batch, CarriedError):
            return batch
        if isinstance(batch, list):
            for item in batch:
                if isinstance(item, CarriedError):
                    return item
        return self.collate(batch)


class _Loader:
    """Iterates a DataLoader, raising a :class:`CarriedError` as its error."""

    def __init__(self, loader: Any):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        for item in self.loader:
            if isinstance(item, CarriedError):
                item.reraise()
            yield item


def as_is(item: Any) -> Any:
    """A DataLoader collate that hands each item over unchanged (with ``batch_size=None`` torch's
    default would turn numpy arrays into tensors)."""
    return item


def worker_loader(dataset: Any, workers: int, **options: Any) -> Any:
    """A torch DataLoader over ``dataset`` read by ``workers`` processes (0: in this one), started
    with :func:`quiet_worker`; a :class:`ZutisError` raised by ``dataset`` in a worker is raised
    again, as itself, where the loader is iterated. ``options`` are the DataLoader's (not
    ``num_workers`` nor ``worker_init_fn``). Returns an iterable with the loader's length."""
    data = _torch_data()
    if workers <= 0:
        return data.DataLoader(dataset, num_workers=0, **options)
    collate = options.pop("collate_fn", None)
    if collate is None:
        batched = options.get("batch_sampler") is not None or options.get("batch_size", 1) is not None
        collate = data.default_collate if batched else data.default_convert
    streaming = isinstance(dataset, data.IterableDataset)
    wrapped = _stream_class()(dataset) if streaming else _Items(dataset)
    loader = data.DataLoader(wrapped, num_workers=workers, worker_init_fn=quiet_worker, collate_fn=_Collate(collate),
                             **options)
    return _Loader(loader)
