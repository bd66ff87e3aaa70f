"""The predict engine: one streaming loop for ``zutis predict``, :class:`zutiscli.api.Predictor` and
``zutis train``'s held-out evaluation.

Images are decoded (and resized for the model) in DataLoader workers, consecutive images of one
model input size go through the network together (up to ``batch_size``), each image's outputs are
post-processed by its predictor (:mod:`zutiscli.methods.predict`), and a sink receives them on a
writer thread, so decoding, the forward pass and writing overlap. Every caller gets the same
outputs for the same image: the same resizing, forward pass and post-processing.

Units: sides in pixels; images ``(H, W, 3)`` uint8 RGB; model inputs ``(3, h, w)`` float in [0, 1].
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from zutiscli.data.workers import as_is, worker_loader
from zutiscli.engine.inference import InferenceSettings


def model_size(height: int, width: int, max_size: int | None, patch: int) -> tuple[int, int]:
    """``(h, w)`` the model sees for an image of ``height x width`` pixels: long side capped at
    ``max_size`` (``None``: no cap), sides rounded down to multiples of ``patch`` (at least one patch)."""
    scale = min(1.0, max_size / max(height, width)) if max_size else 1.0
    return (max(patch, int(round(height * scale)) // patch * patch),
            max(patch, int(round(width * scale)) // patch * patch))


def resize_for_model(image: np.ndarray, max_size: int | None, patch: int) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``(3, h, w)`` float32 in [0, 1] at :func:`model_size`."""
    height, width = image.shape[:2]
    new_h, new_w = model_size(height, width, max_size, patch)
    tensor = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255)
    if (new_h, new_w) != (height, width):
        tensor = F.interpolate(tensor[None], size=(new_h, new_w), mode="bilinear", align_corners=False,
                               antialias=True)[0]
    return tensor


@dataclass
class Segmented:
    """One image's outputs, as a sink receives them.

    Attributes:
        number: the image's position in the input list (0-based).
        path: its file (``None`` for an image given in memory).
        image: ``(H, W, 3)`` uint8 RGB as decoded.
        semantic: ``(H, W)`` int64 (0 = background, ``i`` = the ``i``-th class) or ``None``.
        instances: :class:`zutiscli.ops.instances.Instances` or ``None``.
    """

    number: int
    path: Path | None
    image: np.ndarray
    semantic: np.ndarray | None
    instances: Any


class Sink(Protocol):
    """Receives each image's outputs in input order (on the writer thread) and the failures."""

    def add(self, item: Segmented) -> None: ...

    def failed(self, path: Path, reason: str) -> None: ...


@dataclass
class Timing:
    """Seconds spent per step: ``decode`` (waiting for decoded images), ``model``, ``post``, ``write``."""

    decode: float = 0.0
    model: float = 0.0
    post: float = 0.0
    write: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {"decode": self.decode, "model": self.model, "post": self.post, "write": self.write}


class _Decoded(torch.utils.data.Dataset):
    """Image files -> ``(number, path, rgb, model input, failure reason)`` (decoded in a worker).

    Unless ``always_input``, the model input is ``None`` when it is the image itself (no resizing):
    the caller converts it, which costs less CPU than sending a float32 copy (4x the image's bytes)
    from a worker process (256 x 256: 2.2 instead of 4 ms an image). With a GPU the workers convert
    every image, into pinned memory, and the main thread keeps feeding the GPU.
    """

    def __init__(self, paths: Sequence[Path], max_pixels: int | None, max_size: int | None, patch: int,
                 always_input: bool = True):
        self.paths, self.max_pixels, self.max_size, self.patch = list(paths), max_pixels, max_size, patch
        self.always_input = always_input

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, number: int) -> tuple[int, Path, Any, Any, str | None]:
        from zutiscli.data.images import ImageLoadError, load_image

        path = self.paths[number]
        try:
            rgb = np.asarray(load_image(path, max_pixels=self.max_pixels))
        except ImageLoadError as exc:
            return number, path, None, None, exc.reason
        if not self.always_input and model_size(*rgb.shape[:2], self.max_size, self.patch) == rgb.shape[:2]:
            return number, path, rgb, None, None
        return number, path, rgb, resize_for_model(rgb, self.max_size, self.patch), None


class _Writer:
    """Runs a sink's ``add`` on one background thread, in order; re-raises its first error in the caller."""

    def __init__(self, sink: Sink, timing: Timing, depth: int = 8):
        self.sink, self.timing = sink, timing
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="zutis-predict-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if self.error is not None:
                continue  # drain: the caller stops at its next put
            clock = time.perf_counter()
            try:
                self.sink.add(item)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                self.error = exc
            self.timing.write += time.perf_counter() - clock

    def put(self, item: Segmented) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(item)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


class PredictEngine:
    """A predictor with its settings, run over images.

    Args:
        predictor: a loaded :class:`zutiscli.methods.predict.Predictor`.
        settings: the inference settings in effect.
        semantic: compute semantic maps.
        instances: compute instances (also needed when the semantic map is drawn from them).
        max_size: cap on the long side fed to the model (``None``: the image's own size).
        stuff: class ids (1-based) that are stuff: in the semantic map, never instances.
    """

    def __init__(self, predictor: Any, settings: InferenceSettings, *, semantic: bool = True,
                 instances: bool = True, max_size: int | None = None, stuff: frozenset[int] = frozenset()):
        self.predictor = predictor
        self.settings = settings
        self.semantic = semantic
        self.instances = instances
        self.max_size = max_size
        self.stuff = frozenset(stuff)

    def model_input(self, rgb: np.ndarray) -> torch.Tensor:
        """``(H, W, 3)`` uint8 -> the model input ``(3, h, w)`` float in [0, 1]."""
        return resize_for_model(rgb, self.max_size, self.predictor.patch)

    def forward(self, inputs: Sequence[torch.Tensor]) -> list[Any]:
        """Raw outputs for model inputs; inputs of one size share a forward pass."""
        outputs: list[Any] = [None] * len(inputs)
        groups: dict[tuple[int, ...], list[int]] = {}
        for position, tensor in enumerate(inputs):
            groups.setdefault(tuple(tensor.shape), []).append(position)
        with torch.inference_mode():
            for positions in groups.values():
                batch = torch.stack([inputs[p] for p in positions]) if len(positions) > 1 else inputs[positions[0]][None]
                for position, raw in zip(positions, self.predictor.forward(batch)):
                    outputs[position] = raw
        return outputs

    def postprocess(self, raw: Any, rgb: np.ndarray) -> tuple[np.ndarray | None, Any]:
        """One image's raw outputs -> ``(semantic, instances)`` at the image's size (no stuff instance)."""
        semantic, found = self.predictor.postprocess(raw, rgb, self.settings, semantic=self.semantic,
                                                     instances=self.instances)
        if found is not None and self.stuff:
            found = found.without(self.stuff)
        return semantic, found

    def segment(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray | None, Any]]:
        """Decoded ``(H, W, 3)`` uint8 images -> ``(semantic, instances)`` each (same-size ones batched)."""
        raws = self.forward([self.model_input(rgb) for rgb in images])
        return [self.postprocess(raw, rgb) for raw, rgb in zip(raws, images)]

    def run(self, paths: Sequence[Path], sink: Sink, *, batch_size: int = 1, workers: int = 0,
            max_pixels: int | None = None, progress: Callable[[int, int], None] | None = None,
            timing: Timing | None = None) -> Timing:
        """Segment image files, streaming: decoded in ``workers`` processes (0 = here), batched by
        model input size up to ``batch_size``, handed to ``sink`` in input order on a writer thread.

        Unreadable files go to ``sink.failed(path, reason)``; ``progress(done, total)`` counts
        images handled. Returns the seconds spent per step.
        """
        timing = timing or Timing()
        device = getattr(getattr(self.predictor, "text", None), "device", torch.device("cpu"))
        dataset = _Decoded(paths, max_pixels, self.max_size, self.predictor.patch, always_input=device.type == "cuda")
        loader = worker_loader(
            dataset, workers, batch_size=None, shuffle=False, collate_fn=as_is, pin_memory=device.type == "cuda",
            prefetch_factor=2 * max(1, batch_size) if workers else None)
        writer = _Writer(sink, timing)
        pending: list[tuple[int, Path, np.ndarray, torch.Tensor]] = []
        done = 0

        def flush() -> None:
            nonlocal done
            clock = time.perf_counter()
            raws = self.forward([item[3] for item in pending])
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            timing.model += time.perf_counter() - clock
            for (number, path, rgb, _), raw in zip(pending, raws):
                clock = time.perf_counter()
                semantic, instances = self.postprocess(raw, rgb)
                timing.post += time.perf_counter() - clock
                writer.put(Segmented(number, path, rgb, semantic, instances))
                done += 1
                if progress is not None:
                    progress(done, len(paths))
            pending.clear()

        try:
            clock = time.perf_counter()
            for number, path, rgb, tensor, reason in loader:
                if reason is None and tensor is None:
                    tensor = self.model_input(rgb)
                timing.decode += time.perf_counter() - clock
                if reason is not None:
                    if pending:
                        flush()  # keep the sink's order: failures are reported between their neighbours
                    sink.failed(path, reason)
                    done += 1
                    if progress is not None:
                        progress(done, len(paths))
                else:
                    if pending and tuple(tensor.shape) != tuple(pending[0][3].shape):
                        flush()  # a batch holds one input size
                    pending.append((number, path, rgb, tensor))
                    if len(pending) >= batch_size:
                        flush()
                clock = time.perf_counter()
            if pending:
                flush()
        finally:
            writer.close()
        return timing
