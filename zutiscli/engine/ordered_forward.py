"""Forward passes over a stream of batches, spread over CPU cores by slices, results in order.

torch divides each operation of a forward pass among its intra-op threads and waits at the end of
it for the slowest one. When other processes share the cores (the workers decoding the next
images), the thread whose core was taken keeps the others waiting, spinning, at every operation:
with a small model on 2 cores that wait took most of the time. Here each batch is instead cut
into slices along its first dimension, each slice runs on a thread of its own with torch's
intra-op threads set to 1, and a thread that finishes takes the next slice (of this batch or the
next one) at once. No thread waits for another, so the operating system can give any idle core
to whichever thread or process has work, and the cores stay busy whether decoding or the model
is the slower part.

The model must give each image's output independently of the other images of its batch (true
of an encoder in evaluation mode): slicing then changes no result beyond the rounding of
kernels whose blocking depends on the batch size.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np
import torch

__all__ = ["forward_in_order"]

Tag = TypeVar("Tag")


def forward_in_order(
    batches: Iterable[tuple[Tag, torch.Tensor | None]],
    forward: Callable[[torch.Tensor], np.ndarray],
    threads: int,
) -> Iterator[tuple[Tag, np.ndarray | None]]:
    """Apply ``forward`` to each batch of ``batches``, in ``threads`` threads, yielding in order.

    Args:
        batches: ``(tag, tensor)`` pairs; ``tensor`` is ``(B, ...)`` (any dtype and device) or
            ``None`` (a batch with nothing to run; its tag is still yielded in its place).
        forward: ``(b, ...)`` tensor -> ``(b, ...)`` numpy array, one row per input row; run
            under ``torch.inference_mode``. It must be safe to call from several threads at
            once (a module in evaluation mode is).
        threads: ``0``: run ``forward`` on whole batches in the calling thread, torch's threads
            untouched (for a GPU, which does the work itself). ``n >= 1``: cut each batch into
            ``n`` slices of (nearly) equal size, run them in ``n`` threads with torch's intra-op
            threads set to 1 (restored at the end), and keep the next batch's slices queued
            while the calling thread handles one batch's result.

    Yields:
        ``(tag, output)`` in the order of ``batches``: ``output`` is ``(B, ...)``, the slices'
        outputs concatenated, or ``None`` where the batch was ``None``. Batches are read from
        ``batches`` one ahead of what has been yielded.

    Raises:
        Whatever ``forward`` raises, when its batch's turn comes. When the caller stops early
        (an error, Ctrl-C, ``close()``), slices not yet started are dropped and running ones are
        waited for.
    """
    if threads < 0:
        raise ValueError(f"threads must be >= 0, not {threads}")
    if threads == 0:
        for tag, tensor in batches:
            yield tag, None if tensor is None else _run(forward, tensor)
        return

    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # threads started from now on take this value
    pool = ThreadPoolExecutor(threads, thread_name_prefix="zutis-forward")
    pending: deque[tuple[Tag, list[Future]]] = deque()
    try:
        for tag, tensor in batches:
            slices = [] if tensor is None else [part for part in tensor.tensor_split(threads) if len(part)]
            pending.append((tag, [pool.submit(_run, forward, part) for part in slices]))
            if len(pending) > 1:
                yield _joined(*pending.popleft())
        while pending:
            yield _joined(*pending.popleft())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(previous)


def _run(forward: Callable[[torch.Tensor], np.ndarray], tensor: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():  # thread-local: each thread enters it
        return forward(tensor)


def _joined(tag: Tag, futures: list[Future]) -> tuple[Tag, np.ndarray | None]:
    outputs = [future.result() for future in futures]
    if not outputs:
        return tag, None
    return tag, outputs[0] if len(outputs) == 1 else np.concatenate(outputs)
