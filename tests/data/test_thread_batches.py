import threading

import pytest

from zutiscli.data.thread_batches import thread_batches, thread_items


class Recording:
    """A dataset of ``size`` integers that records which items were read, and can fail on one."""

    def __init__(self, size: int, fail_at: int | None = None):
        self.size, self.fail_at = size, fail_at
        self.read: set[int] = set()
        self.lock = threading.Lock()

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, item: int) -> int:
        if item == self.fail_at:
            raise ValueError(f"item {item} is broken")
        with self.lock:
            self.read.add(item)
        return item * 10


@pytest.mark.parametrize("threads", [0, 1, 3])
def test_batches_come_in_order_with_a_short_last_one(threads):
    batches = list(thread_batches(Recording(23), threads, 5, list))
    assert batches == [[10 * i for i in range(start, min(start + 5, 23))] for start in range(0, 23, 5)]


def test_no_batches_from_an_empty_dataset():
    assert list(thread_batches(Recording(0), 2, 4, list)) == []


def test_reading_runs_at_most_ahead_batches_in_front_of_the_consumer():
    dataset = Recording(200)
    batches = thread_batches(dataset, 2, 10, list, ahead=3)
    assert next(batches) == [10 * i for i in range(10)]
    # batch 0 was taken: batches 1..3 may be read (3 ahead), nothing from batch 4 on
    assert max(dataset.read) < 40
    batches.close()


def test_an_error_is_raised_at_its_batch_after_the_batches_before_it():
    batches = thread_batches(Recording(40, fail_at=25), 2, 10, list)
    assert next(batches)[0] == 0 and next(batches)[0] == 100
    with pytest.raises(ValueError, match="item 25 is broken"):
        next(batches)


def test_closing_stops_the_reading_threads():
    dataset = Recording(10_000)
    batches = thread_batches(dataset, 2, 10, list, ahead=2)
    next(batches)
    batches.close()  # waits for the batches being read, drops the rest
    read = len(dataset.read)
    assert read <= 40 and not any(t.name.startswith("zutis-decode") for t in threading.enumerate())
    assert len(dataset.read) == read


@pytest.mark.parametrize("threads, batch_size, ahead", [(-1, 4, None), (1, 0, None), (2, 4, 0)])
def test_bad_arguments_are_refused(threads, batch_size, ahead):
    with pytest.raises(ValueError):
        next(thread_batches(Recording(8), threads, batch_size, list, ahead=ahead))


@pytest.mark.parametrize("threads", [0, 2])
def test_items_come_one_by_one_in_order(threads):
    assert list(thread_items(Recording(7), threads)) == [10 * i for i in range(7)]
