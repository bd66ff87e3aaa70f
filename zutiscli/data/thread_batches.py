"""Batches of a dataset read by threads of this process, in order, a bounded number ahead.

Decoding an image is mostly work that lets go of Python's global lock: reading the file, the
JPEG decoder and PIL's resize, hashlib on more than 2 KiB, torch's tensor operations. Threads of
one process can therefore decode on every core, and a decoded batch reaches the model without
being pickled, copied through shared memory and unpickled as it is from a worker process. On a
CPU, where decoding and the model share the cores, that copying is CPU time taken from both; a
GPU's feeding, where many cores decode for one device, keeps worker processes
(:func:`zutiscli.data.workers.worker_loader`).

Items must not raise for bad input (return the failure instead, as the index's dataset does): an
exception here is a bug, and it is raised where the batch is consumed.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterator, Sequence

__all__ = ["thread_batches", "thread_items"]


def thread_batches(
    dataset: Sequence[Any],
    threads: int,
    batch_size: int,
    collate: Callable[[list[Any]], Any],
    ahead: int | None = None,
) -> Iterator[Any]:
    """Yield ``collate([dataset[i] for i in batch])`` for consecutive batches of ``batch_size``
    items (the last may be shorter), in order, each read in one of ``threads`` threads.

    Args:
        dataset: anything with ``len`` and integer indexing, safe to index from several threads.
        threads: ``0`` reads each batch in the calling thread when it is wanted; ``n >= 1`` keeps
            ``ahead`` batches in progress or done on ``n`` threads.
        batch_size: items per batch, >= 1.
        collate: list of items -> batch; runs in the reading thread.
        ahead: batches read before they are wanted (default ``2 * threads``); bounds memory.

    Raises:
        ValueError: ``threads < 0``, ``batch_size < 1`` or ``ahead < 1``.
        Whatever ``dataset`` or ``collate`` raise, when their batch's turn comes. When the caller
        stops early (an error, Ctrl-C, ``close()``), batches not yet started are dropped and those
        being read are waited for.
    """
    if threads < 0 or batch_size < 1:
        raise ValueError(f"threads must be >= 0 and batch_size >= 1 (got {threads}, {batch_size})")
    ahead = 2 * threads if ahead is None else ahead
    if threads and ahead < 1:
        raise ValueError(f"ahead must be >= 1 (got {ahead})")
    starts = iter(range(0, len(dataset), batch_size))

    def read(start: int) -> Any:
        return collate([dataset[item] for item in range(start, min(start + batch_size, len(dataset)))])

    if threads == 0:
        for start in starts:
            yield read(start)
        return

    pool = ThreadPoolExecutor(threads, thread_name_prefix="zutis-decode")
    waiting: deque[Future] = deque()
    try:
        for start in starts:
            waiting.append(pool.submit(read, start))
            if len(waiting) >= ahead:
                break
        for start in starts:
            done = waiting.popleft().result()
            waiting.append(pool.submit(read, start))
            yield done
        while waiting:
            yield waiting.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def thread_items(dataset: Sequence[Any], threads: int, ahead: int | None = None) -> Iterator[Any]:
    """``dataset[0], dataset[1], ...`` in order, each read in one of ``threads`` threads (0: in the
    calling thread), ``ahead`` items in front of the consumer: :func:`thread_batches` of one item."""
    return thread_batches(dataset, threads, 1, _only, ahead)


def _only(items: list[Any]) -> Any:
    return items[0]
