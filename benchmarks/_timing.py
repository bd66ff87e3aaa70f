"""Wall-clock and CPU-time measurement shared by the benchmarks (import as ``from _timing import ...``)."""

from __future__ import annotations

import resource
import time


def cpu_seconds() -> float:
    """User + system CPU time of this process, all threads (a load-robust measure of work)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Timer:
    """Wall and CPU seconds of a ``with`` block: ``timer.wall``, ``timer.cpu`` after it ends."""

    def __enter__(self) -> "Timer":
        self.wall, self.cpu = time.perf_counter(), cpu_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, cpu_seconds() - self.cpu
