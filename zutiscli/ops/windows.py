"""Sliding windows over an image and the classes they vote for (ReCLIP++'s label hypotheses).

ReCLIP++ (Wang & Kang, Sec. III-D) slides a window of ``r`` times the image's sides over it with a
stride of half the window, classifies each crop by CLIP's global embedding, and keeps the classes
detected in more than a fraction ``t`` of the crops. Pure functions over integers and numpy arrays.
"""

from __future__ import annotations

import numpy as np

__all__ = ["sliding_windows", "voted_classes"]


def _starts(length: int, window: int) -> list[int]:
    """Window starts every ``window // 2`` pixels from 0; the last window ends at the edge."""
    stride = max(1, window // 2)
    starts = list(range(0, max(1, length - window + 1), stride))
    if starts[-1] + window < length:
        starts.append(length - window)
    return starts


def sliding_windows(height: int, width: int, ratio: float) -> list[tuple[int, int, int, int]]:
    """``(top, left, window height, window width)`` of each window, row by row.

    Windows are ``ratio`` times the image's sides (at least one pixel, at most the side), the
    stride half a window; the last row and column of windows end at the image's edge, so every
    pixel is covered. ``ratio`` 1 gives the whole image once.
    """
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio must lie in (0, 1], got {ratio}")
    if height < 1 or width < 1:
        raise ValueError(f"an image of {width} x {height} pixels has no windows")
    window_h = min(height, max(1, round(height * ratio)))
    window_w = min(width, max(1, round(width * ratio)))
    return [(top, left, window_h, window_w) for top in _starts(height, window_h) for left in _starts(width, window_w)]


def voted_classes(votes: np.ndarray, classes: int, threshold: float) -> tuple[list[int], np.ndarray]:
    """The classes detected in more than ``threshold`` of the windows.

    Args:
        votes: ``(N,)`` int, the class (``0..classes-1``) each window detected.
        classes: number of classes.
        threshold: fraction in ``[0, 1)``; a class is kept when its frequency ``f > threshold``.

    Returns:
        ``(kept class indices ascending, (classes,) float64 frequencies)``.
    """
    votes = np.asarray(votes, dtype=np.int64).reshape(-1)
    if votes.size == 0:
        raise ValueError("no window voted")
    frequency = np.bincount(votes, minlength=classes)[:classes] / votes.size
    return [int(k) for k in np.flatnonzero(frequency > threshold)], frequency
