"""Overlap the steps around inference: `prefetched` runs the decoder a bounded number of batches ahead on a
thread, `Behind` runs the work after inference on another (PyAV, torch and numpy release the GIL as they work)."""

from __future__ import annotations

import queue
import threading
from collections import deque
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
_END = object()


def prefetched(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Yield the items of `items`, produced on a thread at most `depth` ahead; the producer's exception is
    raised here, in order, after the items before it. Closing the generator early stops the thread."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                slots.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((_END, None))
        except BaseException as exc:  # handed to the consumer
            put((_END, exc))

    thread = threading.Thread(target=produce, name="prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, error = slots.get()
            if item is _END:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        thread.join()


class Behind:
    """Run calls on one background thread, in the order submitted, at most `depth` waiting, so that the work
    after inference (RLE encoding, tracking) overlaps the next batch's inference. A call's exception is raised
    by a later `submit` or on leaving the `with` block; leaving because of an exception drops what waits.
    `depth=0` runs each call inline instead."""

    def __init__(self, depth: int = 2) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="behind") if depth else None
        self._pending: deque = deque()
        self._depth = depth

    def submit(self, fn: Callable[..., object], *args: object) -> None:
        if self._pool is None:  # inline: where threads only compete for the same cores
            fn(*args)
            return
        while len(self._pending) >= self._depth:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(fn, *args))

    def drain(self) -> None:
        """Wait for every call submitted so far (raising the first exception among them)."""
        while self._pending:
            self._pending.popleft().result()

    def __enter__(self) -> "Behind":
        return self

    def __exit__(self, exc_type, *rest: object) -> None:
        try:
            while self._pending and exc_type is None:
                self._pending.popleft().result()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
