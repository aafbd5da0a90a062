"""The prefetching iterator (order, errors in place, early close stops the producer) and the Behind runner."""

import threading
import time

import pytest

from pipeline.prefetch import Behind, prefetched


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


def test_behind_runs_calls_in_order_off_the_calling_thread_with_bounded_waiting():
    done, threads, release = [], set(), threading.Event()

    def work(i):
        release.wait()
        threads.add(threading.current_thread().name)
        done.append(i)

    with Behind(depth=2) as after:
        after.submit(work, 0)
        after.submit(work, 1)
        blocked = threading.Thread(target=after.submit, args=(work, 2))
        blocked.start()
        time.sleep(0.1)
        assert blocked.is_alive()  # two waiting: a third submit waits for the first to finish
        release.set()
        blocked.join()
        for i in range(3, 10):
            after.submit(work, i)
    assert done == list(range(10))  # all finished on leaving the block, in order
    assert threading.current_thread().name not in threads and len(threads) == 1


def test_behind_raises_a_failed_call_and_drops_waiting_calls_when_the_block_fails():
    def fail(i):
        raise ValueError(f"bad batch {i}")

    with pytest.raises(ValueError, match="bad batch 0"):
        with Behind() as after:
            after.submit(fail, 0)
    done, started = [], threading.Event()

    def slow(i):
        started.set()
        time.sleep(0.2)
        done.append(i)

    with pytest.raises(KeyError):
        with Behind(depth=5) as after:
            for i in range(5):
                after.submit(slow, i)
            started.wait()
            raise KeyError("decode failed")
    assert done == [0]  # the running call finished; the waiting ones were dropped


def test_behind_with_depth_zero_runs_inline():
    threads = []
    with Behind(depth=0) as after:
        after.submit(lambda: threads.append(threading.current_thread().name))
        assert threads == [threading.current_thread().name]  # done before submit returned
