"""Default worker counts follow the cores this process may use, not the machine's."""

from __future__ import annotations

import os

from zutiscli.data.workers import cores_per_process, loader_processes
from zutiscli.pipeline.reclip_config import ReclipTrainConfig
from zutiscli.pipeline.train_config import TrainConfig


def test_training_loaders_default_to_this_processs_cores_but_one(monkeypatch):
    # a cluster job pinned to 3 of a 128-core node: os.cpu_count() says 128, the job may use 3
    monkeypatch.setattr(os, "cpu_count", lambda: 128)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2, 5}, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert (cores_per_process(), loader_processes(None)) == (3, 2)
    assert TrainConfig(source="pseudo").loader_workers == 2
    assert ReclipTrainConfig().loader_workers == 2
    assert TrainConfig(source="pseudo", workers=0).loader_workers == 0  # given: as given
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert loader_processes(None) == 8  # at most 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")  # torchrun: 16 ranks share the 64 cores
    assert (cores_per_process(), loader_processes(None)) == (4, 3)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "64")
    assert loader_processes(None) == 1  # the loop's own core only: still one loader
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "two")  # not a count: the machine's share is not divided
    assert cores_per_process() == 64
