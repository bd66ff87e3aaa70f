"""Device and numeric precision selection.

``--device``: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``, ``cuda:N``.
``--precision``: ``auto``, ``fp32``, ``bf16``, ``fp16``. ``auto`` picks fp16 on CUDA, bf16 on
CPUs with bf16 matrix units (AMX or AVX512-BF16), else fp32. On such CPUs a ViT with weights
cast to bf16 runs several times faster than fp32, while autocast is slower than fp32: zutis
casts the weights, it does not autocast.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING

from zutiscli.errors import DeviceError, UsageError

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions: the command line imports this module for its option
# names, and `zutis --help` or a shell completion should not wait for torch.
DEVICE_CHOICES = "auto|cpu|cuda|cuda:N"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """Turn a device string into a :class:`torch.device` that exists on this machine."""
    import torch

    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if not match:
        raise UsageError(f"--device {spec!r} is not one of {DEVICE_CHOICES}")
    if not torch.cuda.is_available():
        raise DeviceError(f"--device {spec}: no CUDA GPU is available on this machine; use --device cpu")
    index = int(match.group(1) or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceError(f"--device {spec}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    return torch.device("cuda", index)


@functools.lru_cache(maxsize=1)
def cpu_has_bf16_units() -> bool:
    """Whether this CPU has bf16 matrix instructions (Intel AMX-BF16 or AVX512-BF16)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = handle.read()
    except OSError:
        return False
    return bool(re.search(r"\b(amx_bf16|avx512_bf16)\b", flags))


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The floating dtype for model weights and inputs under ``--precision`` on ``device``."""
    import torch

    precision = (precision or "auto").lower()
    if precision not in PRECISIONS:
        raise UsageError(f"--precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type == "cuda":
            return torch.float16
        if device.type == "cpu" and cpu_has_bf16_units():
            return torch.bfloat16
        return torch.float32
    dtype = getattr(torch, _DTYPE_NAMES[precision])
    if dtype is torch.float16 and device.type == "cpu":
        raise UsageError("--precision fp16 is for CUDA; on the CPU use bf16 or fp32")
    return dtype


def precision_name(dtype: torch.dtype) -> str:
    """Inverse of the precision table: ``torch.bfloat16`` -> ``"bf16"``."""
    import torch

    for name, attribute in _DTYPE_NAMES.items():
        if getattr(torch, attribute) is dtype:
            return name
    raise ValueError(f"unsupported dtype {dtype}")
