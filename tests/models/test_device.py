import pytest
import torch

from zutiscli.errors import DeviceError, UsageError
from zutiscli.models import device as dev


def test_cpu_and_auto():
    assert dev.resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert dev.resolve_device("auto").type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "CUDA:3"])
def test_cuda_without_gpu_is_a_clear_error(spec):
    with pytest.raises(DeviceError, match="no CUDA GPU.*--device cpu"):
        dev.resolve_device(spec)


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "tpu", "cuda:-1"])
def test_malformed_device_is_usage_error(spec):
    with pytest.raises(UsageError):
        dev.resolve_device(spec)


def test_precision_auto_rules(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(dev, "cpu_has_bf16_units", lambda: True)
    assert dev.resolve_precision("auto", cpu) is torch.bfloat16
    monkeypatch.setattr(dev, "cpu_has_bf16_units", lambda: False)
    assert dev.resolve_precision("auto", cpu) is torch.float32
    assert dev.resolve_precision("auto", torch.device("cuda")) is torch.float16
    assert dev.resolve_precision("fp32", cpu) is torch.float32
    assert dev.resolve_precision("BF16", cpu) is torch.bfloat16
    with pytest.raises(UsageError, match="fp16 is for CUDA"):
        dev.resolve_precision("fp16", cpu)
    with pytest.raises(UsageError):
        dev.resolve_precision("int8", cpu)
    assert dev.precision_name(torch.bfloat16) == "bf16"
