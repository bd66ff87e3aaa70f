"""forward_in_order: batches cut into slices on several threads, results whole and in order."""

import threading
import time

import numpy as np
import pytest
import torch

from zutiscli.engine.ordered_forward import forward_in_order


def _batches(sizes, dim=3):
    generator = torch.Generator().manual_seed(0)
    return [(number, None if size is None else torch.randn(size, dim, generator=generator))
            for number, size in enumerate(sizes)]


def _double(tensor):
    return (tensor * 2).numpy()


@pytest.mark.parametrize("threads", [0, 1, 2, 3])
def test_each_batch_comes_back_whole_and_in_order(threads):
    batches = _batches([5, 1, None, 2, 7, 3])
    out = list(forward_in_order(iter(batches), _double, threads))
    assert [tag for tag, _ in out] == [tag for tag, _ in batches]
    for (_, tensor), (_, result) in zip(batches, out):
        if tensor is None:
            assert result is None
        else:
            assert result.shape == tuple(tensor.shape) and np.array_equal(result, tensor.numpy() * 2)


def test_slices_run_at_once_on_threads_with_one_torch_thread_each():
    seen = {}
    both_running = threading.Barrier(2, timeout=10)

    def forward(tensor):
        seen[threading.get_ident()] = (len(tensor), torch.get_num_threads(), torch.is_inference_mode_enabled())
        both_running.wait()  # raises BrokenBarrierError unless the two slices run concurrently
        return tensor.numpy()

    before = torch.get_num_threads()
    out = list(forward_in_order(_batches([6]), forward, 2))
    assert len(seen) == 2 and sorted(v[0] for v in seen.values()) == [3, 3]
    assert all(v[1:] == (1, True) for v in seen.values())
    assert out[0][1].shape == (6, 3)
    assert torch.get_num_threads() == before  # restored


def test_a_model_gives_the_same_outputs_sliced_as_whole(tiny_backbone):
    images = torch.randn(10, 3, 32, 32, generator=torch.Generator().manual_seed(3))

    def embed(tensor):
        return tiny_backbone.encode_images(tensor).numpy()

    with torch.inference_mode():
        whole = embed(images)
    (_, sliced), = list(forward_in_order([(0, images)], embed, 3))
    assert np.allclose(sliced, whole, rtol=0, atol=1e-6)


def test_an_error_in_forward_reaches_the_caller_and_threads_are_restored():
    before = torch.get_num_threads()

    def forward(tensor):
        if len(tensor) == 2:
            raise RuntimeError("out of memory")
        return tensor.numpy()

    results = forward_in_order(_batches([4, 2, 4]), forward, 1)
    assert next(results)[0] == 0
    with pytest.raises(RuntimeError, match="out of memory"):
        next(results)
    assert torch.get_num_threads() == before


def test_stopping_early_drops_queued_slices():
    started = []

    def forward(tensor):
        started.append(len(tensor))
        time.sleep(0.05)
        return tensor.numpy()

    results = forward_in_order(_batches([1] * 20), forward, 1)
    next(results)
    results.close()  # as when the caller's loop ends in an error
    count = len(started)
    time.sleep(0.2)
    assert count <= 3 and len(started) == count  # nothing runs after close()


def test_threads_must_not_be_negative():
    with pytest.raises(ValueError):
        list(forward_in_order([], _double, -1))
