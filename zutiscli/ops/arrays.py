"""Array plumbing shared by the ops: torch tensors or numpy arrays in, numpy out."""

from __future__ import annotations

from typing import Any

import numpy as np


def to_numpy(array: Any) -> np.ndarray:
    """A numpy view of ``array``; torch tensors are detached and moved to the CPU first.

    bfloat16 and float16 tensors become float32 (numpy has no bfloat16); other dtypes are kept.
    """
    if hasattr(array, "detach"):
        array = array.detach().cpu()
        if str(array.dtype) in ("torch.bfloat16", "torch.float16"):
            array = array.float()
        array = array.numpy()
    return np.asarray(array)
