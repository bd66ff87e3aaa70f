"""Shared fixtures: a tiny random-init CLIP (built once per test session) and its checkpoint file."""

from __future__ import annotations

import pytest
import torch

from zutiscli.models.clip import ModelSpec, load_backbone, save_weights

TINY = "zutis-tiny"

# The test models are tiny: one thread avoids OpenMP start-up and spin costs that dominate them.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_backbone():
    torch.manual_seed(1234)
    return load_backbone(ModelSpec(TINY, "none"))


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_backbone, tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    return save_weights(tiny_backbone, path)
