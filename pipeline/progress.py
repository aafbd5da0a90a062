"""The driver's progress bar: clips done (those of shards done before included), moving per clip as workers
finish them, with frames/s and the time left; log lines print above it, never through it."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Mapping, Sequence

log = logging.getLogger(__name__)


class ShardProgress:
    """A tqdm bar over the items of the selected tasks (those already done count from the start), moving per
    item, with frames/s and the time left. `watch()`, polled on a thread about once a second, says how many
    items of each running task (by name) have finished so far and their frames; a task's result (call the bar
    with (task, frames) as each finishes) settles its count, so an item is never counted twice and a task
    retried elsewhere never moves the bar past its items. While the bar shows, log lines go above it."""

    def __init__(self, tasks: Sequence[Any], todo: Sequence[Any], *, enabled: bool, desc: str | None = None,
                 watch: Callable[[], Mapping[str, tuple[int, int]]] | None = None, interval: float = 1.0) -> None:
        from tqdm import tqdm

        total = sum(len(task.items) for task in tasks)
        self._bar = tqdm(total=total, initial=total - sum(len(task.items) for task in todo), unit="clip",
                         disable=not enabled, dynamic_ncols=True, desc=desc)
        self._frames, self._started = 0, time.perf_counter()
        self._sizes = {task.name: len(task.items) for task in todo}
        self._shown: dict[str, tuple[int, int]] = {}  # task → (items, frames) on the bar so far
        self._settled: set[str] = set()
        self._lock = threading.Lock()
        self._watch, self._interval = (watch if enabled else None), interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="progress", daemon=True)
        self._redirect = None

    def __call__(self, task: Any, frames: int) -> None:
        """`task` finished with `frames`: the rest of its items go on the bar."""
        with self._lock:
            items, counted = self._shown.pop(task.name, (0, 0))
            self._settled.add(task.name)
            self._advance(len(task.items) - items, frames - counted)

    def refresh(self) -> None:
        """Read the watch once: the items finished since, of the tasks not settled yet, go on the bar (never
        back, never past a task's items)."""
        try:
            moved = self._watch() if self._watch is not None else {}
        except OSError as exc:  # a folder gone or unreadable for a moment: the results still settle its tasks
            log.debug("progress not read: %s", exc)
            return
        with self._lock:
            for name, (items, frames) in moved.items():
                if name in self._settled or name not in self._sizes:
                    continue
                before = self._shown.get(name, (0, 0))
                now = (min(max(items, before[0]), self._sizes[name]), max(frames, before[1]))
                self._shown[name] = now
                self._advance(now[0] - before[0], now[1] - before[1])

    @property
    def done(self) -> int:
        """The items on the bar now."""
        return self._bar.n

    def _poll(self) -> None:
        while not self._stop.wait(self._interval):
            started = time.perf_counter()
            self.refresh()
            self._stop.wait(5 * (time.perf_counter() - started))  # a slow folder is listed less often

    def _advance(self, items: int, frames: int) -> None:
        self._frames += frames
        self._bar.update(items)
        self._bar.set_postfix(frames_per_s=f"{self._frames / (time.perf_counter() - self._started):.1f}")

    def __enter__(self) -> "ShardProgress":
        if not self._bar.disable:
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._redirect = logging_redirect_tqdm()
            self._redirect.__enter__()
        if self._watch is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._bar.close()
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)
