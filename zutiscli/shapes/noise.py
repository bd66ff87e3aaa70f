"""Value noise shared by the shapes world's backgrounds and its named stuff."""

from __future__ import annotations

import numpy as np


def smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """``(size, size)`` float32 in [0, 1]: random lattice values, smoothstep-interpolated."""
    grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
    t = (np.arange(size, dtype=np.float32) + 0.5) * np.float32(cells / size)
    i = np.minimum(t.astype(np.int64), cells - 1)
    f = t - i
    f = f * f * (3.0 - 2.0 * f)
    rows = grid[i] * (1.0 - f)[:, None] + grid[i + 1] * f[:, None]  # (size, cells + 1)
    return rows[:, i] * (1.0 - f)[None, :] + rows[:, i + 1] * f[None, :]
