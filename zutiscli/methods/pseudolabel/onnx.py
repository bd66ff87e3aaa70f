"""``onnx``: any single-channel saliency network (U2-Net, IS-Net, ...) run with onnxruntime.

The network (``--saliency-model FILE.onnx``) sees the image resized to an ``--onnx-size`` square,
normalised with ``onnx_mean``/``onnx_std``; its output is min-max normalised (as U2-Net does) and
resized back to the image. One object per image, scored by the map's maximum. onnxruntime is an
optional dependency (``pip install 'zutis[onnx]'``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from zutiscli.errors import UsageError, ZutisError
from zutiscli.methods.pseudolabel import PseudoLabeller, register

if TYPE_CHECKING:
    import numpy as np

    from zutiscli.methods.pseudolabel import Features, SoftMask

_INSTALL = "--method onnx needs onnxruntime: pip install 'zutis[onnx]'"


class OnnxSaliency:
    """A single-channel saliency network through onnxruntime: ``(H, W, 3) uint8 -> (H, W) float32``.

    Args:
        path: the ``.onnx`` file (one image input ``(1, 3, size, size)``).
        size: square input side in pixels.
        mean, std: per-channel normalisation of RGB values in [0, 1].
    """

    def __init__(self, path: str, size: int, mean: tuple[float, float, float], std: tuple[float, float, float]):
        import numpy as np

        try:
            import onnxruntime as ort
        except ImportError:
            raise ZutisError(_INSTALL) from None
        if not Path(path).is_file():
            raise ZutisError(f"--saliency-model {path}: no such file")
        try:
            self.session = ort.InferenceSession(str(path), providers=ort.get_available_providers())
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise ZutisError(f"--saliency-model {path}: onnxruntime cannot load it ({str(exc).splitlines()[0][:160]})") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ZutisError(f"--saliency-model {path}: expected one image input, found {len(inputs)}")
        self.input_name = inputs[0].name
        self.size = size
        self.mean = np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1)
        self.std = np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """``(H, W, 3)`` uint8 -> ``(H, W)`` float32 saliency in [0, 1] (min-max normalised, as U2-Net does)."""
        import numpy as np
        import torch
        import torch.nn.functional as F

        height, width = image.shape[:2]
        tensor = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float().div_(255)
        tensor = F.interpolate(tensor, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        array = (tensor.numpy() - self.mean) / self.std
        output = self.session.run(None, {self.input_name: array.astype(np.float32)})[0]
        output = np.asarray(output, dtype=np.float32)
        if output.ndim == 4:
            output = output[0, 0]
        elif output.ndim == 3:
            output = output[0]
        if output.ndim != 2:
            raise ZutisError(f"--saliency-model: expected a single-channel map, got output shape {output.shape}")
        low, high = float(output.min()), float(output.max())
        output = (output - low) / (high - low) if high > low else np.zeros_like(output)
        resized = F.interpolate(torch.from_numpy(output)[None, None], size=(height, width), mode="bilinear",
                                align_corners=False)
        return resized[0, 0].numpy()


@register
class Onnx(PseudoLabeller):
    name = "onnx"
    summary = "a single-channel saliency network (U2-Net, IS-Net, ...) through onnxruntime"
    default_size = 320
    needs = "saliency"
    options = ("saliency_model", "onnx_size", "onnx_mean", "onnx_std")

    def validate(self, config: Any) -> None:
        if not config.saliency_model:
            raise UsageError("--method onnx needs --saliency-model FILE.onnx")

    def propose(self, image: np.ndarray, features: Features | None, saliency: np.ndarray | None,
                config: Any) -> list[SoftMask]:
        import numpy as np

        assert saliency is not None
        return [(saliency.astype(np.float32), float(saliency.max()))]

    def load_saliency(self, config: Any) -> Callable[[np.ndarray], np.ndarray]:
        return OnnxSaliency(config.saliency_model, config.onnx_size, config.onnx_mean, config.onnx_std)

    def describe_saliency(self, config: Any) -> dict[str, Any]:
        return {"saliency_model": str(Path(config.saliency_model).resolve())}

    def plan_saliency(self, config: Any) -> dict[str, Any]:
        path = Path(config.saliency_model)
        if importlib.util.find_spec("onnxruntime") is None:
            raise ZutisError(_INSTALL)
        if not path.is_file():
            raise ZutisError(f"--saliency-model {path}: no such file")
        return {"name": "saliency network", "pretrained": str(path), "weights": str(path), "source": "file",
                "bytes": path.stat().st_size}
