"""The prefetching iterator: order, errors in place, early close stops the producer."""

import threading
import time

import pytest

from pipeline.prefetch import prefetched


def test_items_in_order_and_the_producers_error_after_them():
    def items():
        yield from range(5)
        raise ValueError("broken frame")

    seen = []
    with pytest.raises(ValueError, match="broken frame"):
        for item in prefetched(items()):
            seen.append(item)
    assert seen == [0, 1, 2, 3, 4]


def test_producer_runs_ahead_by_depth_and_stops_when_the_consumer_does():
    produced = []

    def items():
        for i in range(1000):
            produced.append(i)
            yield i

    stream = prefetched(items(), depth=2)
    assert next(stream) == 0
    time.sleep(0.2)
    assert len(produced) <= 4  # one handed out, two queued, one waiting to be queued
    stream.close()
    assert not [t for t in threading.enumerate() if t.name == "prefetch"]
    assert len(produced) <= 5
