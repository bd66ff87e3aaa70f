"""What the predictors share: the dense semantic map (with DenseCRF), CRF worker pools."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class CrfOptions:
    """DenseCRF kernels (pixels for ``*_xy``, 0-255 intensity for ``bi_rgb``) and where it runs.

    ``workers`` processes run it (0 = in this process).
    """

    iterations: int = 10
    pos_w: float = 3.0
    pos_xy: float = 1.0
    bi_w: float = 4.0
    bi_xy: float = 67.0
    bi_rgb: float = 3.0
    workers: int = 0

    @classmethod
    def of(cls, config: Any) -> "CrfOptions":
        """The CRF options of a :class:`zutiscli.pipeline.predict.PredictConfig`."""
        return cls(config.crf_iterations, config.crf_pos_w, config.crf_pos_xy, config.crf_bi_w, config.crf_bi_xy,
                   config.crf_bi_rgb, config.workers)


class DenseSemantic:
    """Semantic maps from dense embeddings: per-pixel softmax over ``[background] + classes``,
    optionally smoothed by DenseCRF (in a process pool when ``crf.workers > 0``)."""

    def __init__(self, crf: CrfOptions):
        self.crf = crf
        self._pool: Any = None

    def __call__(self, dense: Any, text: Any, image: np.ndarray, use_crf: bool) -> tuple[np.ndarray, np.ndarray]:
        """``(h, w, D)`` dense, ``(1 + K, D)`` text, ``(H, W, 3)`` uint8 image ->
        ``(probs (1 + K, H, W) float32, labels (H, W) int64)``."""
        from zutiscli.ops.instances import semantic_from_dense

        probs, labels = semantic_from_dense(dense, text, image.shape[:2])
        if use_crf:
            labels = self.crf_labels(image, probs)
        return probs, np.asarray(labels, dtype=np.int64)

    def crf_labels(self, image: np.ndarray, probs: Any) -> np.ndarray:
        """``(H, W)`` int64 labels of DenseCRF over ``(1 + K, H, W)`` class probabilities of ``image``."""
        from zutiscli.ops.crf import dense_crf_labels

        probs = probs.numpy() if hasattr(probs, "numpy") else np.asarray(probs)
        c = self.crf
        kwargs = dict(iterations=c.iterations, pos_w=c.pos_w, pos_xy=c.pos_xy, bi_w=c.bi_w, bi_xy=c.bi_xy,
                      bi_rgb=c.bi_rgb)
        if c.workers > 0:
            if self._pool is None:
                import concurrent.futures as futures

                from zutiscli.data.workers import quiet_worker

                self._pool = futures.ProcessPoolExecutor(c.workers, initializer=quiet_worker)
            refined = self._pool.submit(dense_crf_labels, image, probs, **kwargs).result()
        else:
            refined = dense_crf_labels(image, probs, **kwargs)
        return np.asarray(refined).argmax(0).astype(np.int64)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
