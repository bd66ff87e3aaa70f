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


@pytest.fixture(autouse=True)
def no_internal_error(request, monkeypatch):
    """Fail any test whose command-line run ends in "internal error": user input never reaches one.

    A test that provokes one on purpose is marked ``@pytest.mark.internal_error``. Child processes
    (``python -m zutiscli``) are checked where the tests read their stderr.
    """
    from zutiscli.cli import app

    said: list[str] = []
    report = app._error

    def recording(message: str) -> None:
        said.append(message)
        report(message)

    monkeypatch.setattr(app, "_error", recording)
    yield
    if request.node.get_closest_marker("internal_error") is None:
        internal = [message for message in said if message.startswith("internal error")]
        assert not internal, f"an input reached an internal error: {internal[0]}"
