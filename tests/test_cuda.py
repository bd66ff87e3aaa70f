"""CUDA paths: the predict engine in fp16 against fp32, its pinned-memory decode workers, and a short
`zutis train` with mixed precision (AMP). Skipped without a CUDA GPU (benchmarks/gpu_check.sh runs them)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zutiscli.artefacts.labelmap import read_label_png
from zutiscli.data.classes import ClassQuery
from zutiscli.pipeline.predict import PredictConfig, open_engine, predict
from zutiscli.pipeline.synth import SynthConfig, write_synth

from helpers import train_tiny  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CLASSES = tuple(ClassQuery(name, name) for name in ("circle", "star", "square"))


@pytest.fixture(scope="module")
def cuda_run(tmp_path_factory, tiny_checkpoint):
    """A tiny ZUTIS run trained for 2 iterations with AMP (fp16) on the GPU, and 18 scenes of 64 px."""
    root = tmp_path_factory.mktemp("cuda")
    result = train_tiny(root, tiny_checkpoint, iterations=2, device="cuda", precision="fp16", crop_adapter_scenes=0)
    scenes = write_synth(SynthConfig("scenes", 18, seed=5, size=64), root / "scenes")
    return result, scenes / "images"


def _config(run, images, **options):
    return PredictConfig(inputs=[str(images)], classes=CLASSES, checkpoint=str(run), device="cuda", **options)


def test_train_with_amp_on_the_gpu(cuda_run):
    result, _ = cuda_run
    assert result.iteration == 2
    assert result.last and all(np.isfinite(value) for value in result.last.values())
    assert (result.path / "model.pt").is_file()


def test_fp16_forward_matches_fp32(cuda_run):
    """Raw outputs of the predictor in fp16 (the ViT) are those of fp32 up to half-precision rounding,
    and fp32 on the GPU is the CPU's up to float rounding."""
    result, images = cuda_run
    outputs = {}
    for device, precision in (("cpu", "fp32"), ("cuda", "fp32"), ("cuda", "fp16")):
        config = _config(result.path, images, precision=precision)
        engine, _, _ = open_engine(config, torch.device(device), torch.float16 if precision == "fp16" else torch.float32,
                                   lambda message: None)
        image = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            outputs[(device, precision)] = [(raw.dense.float().cpu(), raw.mask_logits.float().cpu())
                                            for raw in engine.predictor.forward(image)]
        engine.predictor.close()
    for ours, theirs, tolerance in ((("cuda", "fp32"), ("cpu", "fp32"), 1e-3), (("cuda", "fp16"), ("cuda", "fp32"), 3e-2)):
        for (dense, logits), (dense_ref, logits_ref) in zip(outputs[ours], outputs[theirs]):
            assert torch.allclose(dense, dense_ref, atol=tolerance), (ours, (dense - dense_ref).abs().max())
            scale = logits_ref.abs().max().clamp_min(1)
            assert torch.allclose(logits / scale, logits_ref / scale, atol=tolerance), (ours, (logits - logits_ref).abs().max())


def test_predict_fp16_agrees_with_fp32_and_pinned_workers_change_nothing(cuda_run, tmp_path):
    """`zutis predict` on the GPU: fp16 label maps agree with fp32 on nearly every pixel; decoding in
    a worker process (pinned memory) gives exactly the outputs of decoding in the main process."""
    result, images = cuda_run
    fp32 = predict(_config(result.path, images, precision="fp32", loader_workers=0), tmp_path / "fp32").path
    pinned = predict(_config(result.path, images, precision="fp32", loader_workers=1, batch_size=4),
                     tmp_path / "pinned").path
    plain = predict(_config(result.path, images, precision="fp32", loader_workers=0, batch_size=4),
                    tmp_path / "plain").path
    fp16 = predict(_config(result.path, images, precision="fp16", loader_workers=1), tmp_path / "fp16").path
    agree = []
    for png in sorted((fp32 / "semantic").iterdir()):
        assert np.array_equal(read_label_png(pinned / "semantic" / png.name), read_label_png(plain / "semantic" / png.name))
        agree.append((read_label_png(png) == read_label_png(fp16 / "semantic" / png.name)).mean())
    assert len(agree) == 18 and float(np.mean(agree)) > 0.95, agree
    assert (pinned / "predictions.json").read_text() == (plain / "predictions.json").read_text()
