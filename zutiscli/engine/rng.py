"""The state of every random number generator (torch, numpy, Python's ``random``, CUDA), saved and put back.

A checkpoint stores it so that a resumed run draws the numbers the uninterrupted run would have
drawn; the work done beside the training (fitting the crop adapter, held-out evaluation) runs
inside :func:`preserved_rng`, so that a run with it trains exactly the weights of a run without.
"""

from __future__ import annotations

import contextlib
import json
import random
from typing import Any, Iterator

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    """Every random generator's state as tensors (a checkpoint loads it with ``weights_only=True``)."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": _as_bytes(_numpy_state()),
        "python": _as_bytes(random.getstate()[1]),
    }
    if torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Put back the generators as :func:`rng_state` saw them (CUDA's only on as many devices)."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = _from_bytes(state["numpy"])
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    random.setstate((3, tuple(_from_bytes(state["python"])), None))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run the block, then put every generator back as it was before it (also when it raises)."""
    state = rng_state()
    try:
        yield
    finally:
        restore_rng(state)


def _numpy_state() -> list:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def _as_bytes(value: Any) -> torch.Tensor:
    """``value`` as JSON in a uint8 tensor (a checkpoint holds tensors, not pickled objects)."""
    return torch.from_numpy(np.frombuffer(json.dumps(value).encode(), dtype=np.uint8).copy())


def _from_bytes(tensor: torch.Tensor) -> Any:
    return json.loads(bytes(tensor.numpy()).decode())
